//! Weight averaging during training (Polyak averaging, an exponential moving average of
//! the weights after every step): the averaged weights are what validation chooses
//! among and what is written. They sit in a flatter part of the loss than the last
//! step's weights, and generalise better for the same training.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{Tensor, Var};
use candle_nn::VarMap;

const PREFIX: &str = "average.";

pub struct WeightAverage {
    /// How much of the average each step keeps (e.g. 0.999: about the last 1,000 steps).
    decay: f64,
    steps: u64,
    /// Each trained variable and its average, in name order.
    averages: Vec<(String, Var, Tensor)>,
}

impl WeightAverage {
    /// Starts the averages at the variables' current values.
    pub fn new(varmap: &VarMap, decay: f64) -> Result<Self> {
        let data = varmap.data().lock().expect("no panics under the lock");
        let mut averages = data
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.clone(), var.as_tensor().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        averages.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            decay,
            steps: 0,
            averages,
        })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Folds the variables' values after a training step into the averages. Early on the
    /// decay is smaller, so the first random weights do not linger in the average.
    pub fn update(&mut self) -> Result<()> {
        self.steps += 1;
        let steps = self.steps as f64;
        let decay = self.decay.min((1.0 + steps) / (10.0 + steps));
        for (_, var, average) in &mut self.averages {
            *average = ((&*average * decay)? + (var.as_tensor() * (1.0 - decay))?)?;
        }
        Ok(())
    }

    /// Exchanges the variables' values with the averages: call once to evaluate or save
    /// the averaged weights, and again to go on training.
    pub fn swap(&mut self) -> Result<()> {
        for (name, var, average) in &mut self.averages {
            // A deep copy: `Var::set` writes into the variable's own storage.
            let live = var.as_tensor().copy()?;
            var.set(average)
                .with_context(|| format!("swapping in the average of {name}"))?;
            *average = live;
        }
        Ok(())
    }

    /// The averages, named for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.averages
            .iter()
            .map(|(name, _, average)| (format!("{PREFIX}{name}"), average.clone()))
            .collect()
    }

    /// Takes the averages and step count back from a checkpoint.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (name, var, average) in &mut self.averages {
            let saved = tensors.get(&format!("{PREFIX}{name}")).with_context(|| {
                format!(
                    "the checkpoint lacks the average of {name} (made without --weight-average?)"
                )
            })?;
            anyhow::ensure!(
                saved.dims() == var.dims(),
                "the checkpoint's average of {name} has the wrong shape"
            );
            *average = saved.clone();
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn values(tensor: &Tensor) -> Vec<f32> {
        tensor.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn the_average_follows_the_weights_and_swaps_in_and_out() {
        let varmap = VarMap::new();
        varmap
            .get(
                (2,),
                "w",
                candle_nn::Init::Const(0.0),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let var = varmap.data().lock().unwrap()["w"].clone();
        assert_eq!(values(var.as_tensor()), [0.0, 0.0]);
        let mut average = WeightAverage::new(&varmap, 0.5).unwrap();
        var.set(&Tensor::new(&[2f32, 4.0], &Device::Cpu).unwrap())
            .unwrap();
        average.update().unwrap();
        // Step 1: decay min(0.5, 2/11) = 2/11.
        let expected = [2.0 * 9.0 / 11.0, 4.0 * 9.0 / 11.0];
        average.swap().unwrap();
        let swapped = values(var.as_tensor());
        for (got, want) in swapped.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{swapped:?}");
        }
        average.swap().unwrap();
        assert_eq!(values(var.as_tensor()), [2.0, 4.0]);
        // Checkpointed and restored, it goes on where it was.
        let state = average.state();
        let mut restored = WeightAverage::new(&varmap, 0.5).unwrap();
        restored.restore(&state, average.steps()).unwrap();
        assert_eq!(restored.steps(), 1);
        restored.swap().unwrap();
        assert_eq!(values(var.as_tensor()), swapped);
        let missing = restored
            .restore(&HashMap::new(), 1)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("lacks the average of w"), "{missing}");
    }
}
