//! The dogs-vs-cats CNN of the original project (Keras' "small convnet" from
//! *Building powerful image classification models using very little data*):
//! three 3x3 convolutions with 32, 32 and 64 filters, each followed by ReLU and 2x2 max
//! pooling, then dense 64 + ReLU, dropout 0.5 and one logit (sigmoid: the dog's
//! probability). Channels-last with Keras-layout kernels, so a Keras `.h5` of the same
//! network maps tensor for tensor.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{self, ConvReluPool, Dense};

/// Input side the network is built for (its dense layer fixes it).
pub const INPUT_SIZE: usize = 150;
/// The original network's dropout before the logit.
pub const DROPOUT: f32 = 0.5;
/// The weights' names of the convolution blocks and the dense layers, in order (each
/// holds a `kernel` and a `bias`).
pub const CONV_BLOCKS: [&str; 3] = ["conv1", "conv2", "conv3"];
pub const DENSE_LAYERS: [&str; 2] = ["dense1", "dense2"];

#[derive(Debug, Clone)]
pub struct SmallCnn {
    input_side: usize,
    conv1: ConvReluPool,
    conv2: ConvReluPool,
    conv3: ConvReluPool,
    dense1: Dense,
    dense2: Dense,
}

impl SmallCnn {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Self::with_input(INPUT_SIZE, vb)
    }

    /// The same network for another input side (small ones keep tests fast).
    pub fn with_input(size: usize, vb: VarBuilder) -> Result<Self> {
        let side = (0..3).fold(size, |side, _| ConvReluPool::output_side(side));
        if side == 0 {
            candle_core::bail!("the small CNN needs inputs of at least 22x22, got {size}");
        }
        Ok(Self {
            input_side: size,
            conv1: ConvReluPool::new(3, 32, vb.pp(CONV_BLOCKS[0]))?,
            conv2: ConvReluPool::new(32, 32, vb.pp(CONV_BLOCKS[1]))?,
            conv3: ConvReluPool::new(32, 64, vb.pp(CONV_BLOCKS[2]))?,
            dense1: Dense::new(side * side * 64, 64, vb.pp(DENSE_LAYERS[0]))?,
            dense2: Dense::new(64, 1, vb.pp(DENSE_LAYERS[1]))?,
        })
    }

    /// The side of the square images it takes.
    pub fn input_side(&self) -> usize {
        self.input_side
    }

    /// The three convolution blocks, in order.
    pub fn conv_blocks(&self) -> [&ConvReluPool; 3] {
        [&self.conv1, &self.conv2, &self.conv3]
    }

    /// The hidden dense layer (its inputs: the last block's map flattened, `[h, w, c]`)
    /// and the logit's.
    pub fn dense_layers(&self) -> [&Dense; 2] {
        [&self.dense1, &self.dense2]
    }

    /// One logit per image of an NCHW batch `[n, 3, size, size]`, with a `rate` share of
    /// the hidden units dropped, drawn from `rng` (seeded, so a run repeats).
    pub fn forward_train(
        &self,
        images: &Tensor,
        rate: f32,
        rng: &mut impl rand::Rng,
    ) -> Result<Tensor> {
        self.forward_with(images, Some((rate, rng)))
    }

    fn forward_with(
        &self,
        images: &Tensor,
        dropout: Option<(f32, &mut impl rand::Rng)>,
    ) -> Result<Tensor> {
        let x = layers::to_channels_last(images)?
            .apply(&self.conv1)?
            .apply(&self.conv2)?
            .apply(&self.conv3)?;
        let x = self.dense1.forward(&x.flatten_from(1)?)?.relu()?;
        let x = match dropout {
            Some((rate, rng)) if rate > 0.0 => {
                let keep = 1.0 - rate;
                let mask: Vec<f32> = (0..x.elem_count())
                    .map(|_| {
                        if rng.random::<f32>() < keep {
                            1.0 / keep
                        } else {
                            0.0
                        }
                    })
                    .collect();
                (x.clone() * Tensor::from_vec(mask, x.shape(), x.device())?)?
            }
            _ => x,
        };
        layers::squeeze_logit(&self.dense2.forward(&x)?)
    }
}

impl Module for SmallCnn {
    fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_with(images, None::<(f32, &mut rand_chacha::ChaCha8Rng)>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::layers::binary_cross_entropy_with_logits;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// The whole network's gradients (every layer, the loss) against finite differences,
    /// on a tiny input so the check runs in a moment.
    #[test]
    fn gradients_match_finite_differences() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let network = SmallCnn::with_input(23, vb).unwrap();
        let mut rng = crate::kernels::gemm::tests::Lcg(9);
        let images = Tensor::from_vec(rng.vec(3 * 3 * 23 * 23), (3, 3, 23, 23), &Device::Cpu)
            .unwrap()
            .affine(2.0, 0.0)
            .unwrap();
        let targets = Tensor::new(&[1f32, 0.0, 1.0], &Device::Cpu).unwrap();
        let loss = || binary_cross_entropy_with_logits(&network.forward(&images)?, &targets);
        let vars = varmap.all_vars();
        let vars: Vec<&candle_core::Var> = vars.iter().collect();
        assert_eq!(vars.len(), 10, "five layers, kernel and bias each");
        crate::train::gradient_check::assert_gradients(loss, &vars, 2e-2, 60);
    }

    #[test]
    fn too_small_inputs_are_refused() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let error = SmallCnn::with_input(20, vb).unwrap_err().to_string();
        assert!(error.contains("at least 22x22"), "{error}");
    }
}
