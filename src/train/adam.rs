//! Adam (Kingma & Ba) whose moments can be saved and restored, so `--resume` continues
//! the same optimisation rather than restarting it (candle-nn's `AdamW` keeps its
//! moments private).

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Result, Tensor, Var};

#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW); 0 for plain Adam.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-7,
            weight_decay: 0.0,
        }
    }
}

pub struct Adam {
    config: AdamConfig,
    /// Named parameters, in a fixed order.
    params: Vec<(String, Var)>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    step: u64,
}

impl Adam {
    pub fn new(mut params: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |(_, var): &(String, Var)| var.zeros_like();
        Ok(Self {
            first: params.iter().map(zeros).collect::<Result<_>>()?,
            second: params.iter().map(zeros).collect::<Result<_>>()?,
            params,
            config,
            step: 0,
        })
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update at learning rate `lr` from the gradients of `grads`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let AdamConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let step = self.step as i32;
        let correction1 = 1.0 - beta1.powi(step);
        let correction2 = 1.0 - beta2.powi(step);
        for (index, (_, var)) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let first = ((&self.first[index] * beta1)? + (grad * (1.0 - beta1))?)?;
            let second = ((&self.second[index] * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let update = ((&first / correction1)? / ((&second / correction2)?.sqrt()? + eps)?)?;
            let mut value = var.as_tensor().clone();
            if weight_decay > 0.0 {
                value = (&value * (1.0 - lr * weight_decay))?;
            }
            var.set(&(value - (update * lr)?)?)?;
            self.first[index] = first;
            self.second[index] = second;
        }
        Ok(())
    }

    /// Moments and step count as named tensors (`adam.m.<param>`, `adam.v.<param>`, `adam.step`).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut state = HashMap::new();
        for (index, (name, _)) in self.params.iter().enumerate() {
            state.insert(format!("adam.m.{name}"), self.first[index].clone());
            state.insert(format!("adam.v.{name}"), self.second[index].clone());
        }
        let step = Tensor::new(&[self.step as f64], &candle_core::Device::Cpu)?;
        state.insert("adam.step".into(), step);
        Ok(state)
    }

    /// Restores what [`Adam::state`] saved; every parameter's moments must be there.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let find = |key: String, like: &Tensor| -> Result<Tensor> {
            let tensor = state
                .get(&key)
                .ok_or_else(|| candle_core::Error::Msg(format!("the checkpoint lacks {key}")))?;
            if tensor.dims() != like.dims() {
                candle_core::bail!(
                    "{key} has shape {:?}, expected {:?}",
                    tensor.dims(),
                    like.dims()
                );
            }
            Ok(tensor.clone())
        };
        for (index, (name, var)) in self.params.iter().enumerate() {
            self.first[index] = find(format!("adam.m.{name}"), var.as_tensor())?;
            self.second[index] = find(format!("adam.v.{name}"), var.as_tensor())?;
        }
        let step = state
            .get("adam.step")
            .ok_or_else(|| candle_core::Error::Msg("the checkpoint lacks adam.step".into()))?;
        self.step = step.to_vec1::<f64>()?[0] as u64;
        Ok(())
    }
}
