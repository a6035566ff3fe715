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

    /// Over every variable of a candle `VarMap`, by their names.
    pub fn from_varmap(varmap: &candle_nn::VarMap, config: AdamConfig) -> Result<Self> {
        let params = varmap
            .data()
            .lock()
            .expect("no panics under the lock")
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        Self::new(params, config)
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
            // Detached: a gradient carries the graph that computed it, and moments that
            // kept it would chain every step's graph to the next (memory without bound).
            let grad = grad.detach();
            let first = ((&self.first[index] * beta1)? + (&grad * (1.0 - beta1))?)?.detach();
            let second =
                ((&self.second[index] * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?.detach();
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn quadratic_steps(adam: &mut Adam, x: &Var, steps: usize) {
        for _ in 0..steps {
            let loss = (x.as_tensor() - 3.0)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            adam.step(&loss.backward().unwrap(), 0.1).unwrap();
        }
    }

    /// Minimises (x - 3)^2; an interrupted run restored from its state ends exactly where
    /// an uninterrupted one does.
    #[test]
    fn converges_and_resumes_from_its_state() {
        let start = Tensor::new(&[0f32, 10.0], &Device::Cpu).unwrap();
        let straight = Var::from_tensor(&start).unwrap();
        let mut adam =
            Adam::new(vec![("x".into(), straight.clone())], AdamConfig::default()).unwrap();
        quadratic_steps(&mut adam, &straight, 200);
        let values: Vec<f32> = straight.as_tensor().to_vec1().unwrap();
        assert!(values.iter().all(|v| (v - 3.0).abs() < 0.05), "{values:?}");

        let resumed = Var::from_tensor(&start).unwrap();
        let mut first =
            Adam::new(vec![("x".into(), resumed.clone())], AdamConfig::default()).unwrap();
        quadratic_steps(&mut first, &resumed, 120);
        let state = first.state().unwrap();
        let saved = resumed.as_tensor().copy().unwrap();
        let restored = Var::from_tensor(&saved).unwrap();
        let mut second =
            Adam::new(vec![("x".into(), restored.clone())], AdamConfig::default()).unwrap();
        second.restore(&state).unwrap();
        assert_eq!(second.steps(), 120);
        quadratic_steps(&mut second, &restored, 80);
        let a: Vec<f32> = straight.as_tensor().to_vec1().unwrap();
        let b: Vec<f32> = restored.as_tensor().to_vec1().unwrap();
        assert_eq!(a, b);
        // The moments hold values, not the graphs that computed them.
        assert!(state.values().all(|t| !t.track_op()));
    }
}
