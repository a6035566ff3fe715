//! The ResNet plan: [`crate::models::resnet::ResNet`] compiled for inference.

use anyhow::{ensure, Result};

use super::{Arena, Conv2d, Dense, Epilogue, FeatureMap, Precision, Scratch};
use crate::kernels::im2col::Window;
use crate::kernels::{pool, Threads};
use crate::models::resnet::{Bottleneck, ConvBn, ResNet};

#[derive(Debug)]
struct BottleneckPlan {
    reduce: Conv2d,
    spatial: Conv2d,
    expand: Conv2d,
    downsample: Option<Conv2d>,
}

/// Buffers of one forward pass; see [`Arena`].
#[derive(Debug, Default)]
struct Workspace {
    x: FeatureMap,
    reduced: FeatureMap,
    spatial: FeatureMap,
    shortcut: FeatureMap,
    scratch: Scratch,
    pooled: Vec<f32>,
}

#[derive(Debug)]
pub struct ResNetPlan {
    stem: Conv2d,
    blocks: Vec<BottleneckPlan>,
    fc: Option<Dense>,
    feature_dim: usize,
    arena: Arena<Workspace>,
}

fn conv(layer: &ConvBn, precision: Precision) -> Result<Conv2d> {
    ensure!(
        layer.bn().is_none(),
        "fold BatchNorm into the convolutions before planning"
    );
    Conv2d::from_candle(layer.conv(), precision)
}

impl BottleneckPlan {
    /// Every convolution of a block reads a ReLU's output, so all of them can be int8.
    fn new(block: &Bottleneck, precision: Precision) -> Result<Self> {
        Ok(Self {
            reduce: conv(block.reduce(), precision)?,
            spatial: conv(block.spatial(), precision)?,
            expand: conv(block.expand(), precision)?,
            downsample: block
                .downsample()
                .map(|layer| conv(layer, precision))
                .transpose()?,
        })
    }

    /// `x = relu(expand(spatial(reduce(x))) + shortcut(x))`, in place.
    fn forward(&self, ws: &mut Workspace, threads: Threads) {
        let Workspace {
            x,
            reduced,
            spatial,
            shortcut,
            scratch,
            ..
        } = ws;
        self.reduce
            .forward(x, Epilogue::Relu, reduced, scratch, threads);
        self.spatial
            .forward(reduced, Epilogue::Relu, spatial, scratch, threads);
        let shortcut: &[f32] = match &self.downsample {
            Some(downsample) => {
                downsample.forward(x, Epilogue::Linear, shortcut, scratch, threads);
                &shortcut.data
            }
            None => &x.data,
        };
        // `reduced` is free again: it takes the block's output.
        self.expand.forward(
            spatial,
            Epilogue::AddRelu(shortcut),
            reduced,
            scratch,
            threads,
        );
        std::mem::swap(x, reduced);
    }
}

impl ResNetPlan {
    /// Compiles a ResNet whose BatchNorms are folded. With int8, the stem (whose input
    /// is signed) and the classifier (1 % of the work) stay f32.
    pub fn new(model: &ResNet, precision: Precision) -> Result<Self> {
        Ok(Self {
            stem: conv(model.stem(), Precision::F32)?,
            blocks: model
                .stages()
                .iter()
                .flatten()
                .map(|block| BottleneckPlan::new(block, precision))
                .collect::<Result<_>>()?,
            fc: model.fc().map(Dense::from_candle).transpose()?,
            feature_dim: model.config().feature_dim(),
            arena: Arena::default(),
        })
    }

    /// Length of [`Self::forward`]'s output: classes, or the feature size without a head.
    pub fn outputs(&self) -> usize {
        self.fc.as_ref().map_or(self.feature_dim, Dense::outputs)
    }

    /// Logits (or pooled features) of one `[3, height, width]` image.
    pub fn forward(&self, chw: &[f32], height: usize, width: usize, threads: Threads) -> Vec<f32> {
        self.run(chw, height, width, threads, true)
    }

    /// The pooled features of one image, whatever head the network has (transfer learning
    /// shares one backbone between models).
    pub fn features(&self, chw: &[f32], height: usize, width: usize, threads: Threads) -> Vec<f32> {
        self.run(chw, height, width, threads, false)
    }

    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    fn run(
        &self,
        chw: &[f32],
        height: usize,
        width: usize,
        threads: Threads,
        classify: bool,
    ) -> Vec<f32> {
        self.arena.with(|ws| {
            ws.shortcut.load_chw(chw, 3, height, width);
            self.stem.forward(
                &ws.shortcut,
                Epilogue::Relu,
                &mut ws.spatial,
                &mut ws.scratch,
                threads,
            );
            let window = Window {
                height: ws.spatial.height,
                width: ws.spatial.width,
                channels: ws.spatial.channels,
                kernel: 3,
                stride: 2,
                padding: 1,
            };
            ws.x.reset(window.out_height(), window.out_width(), window.channels);
            pool::max_pool(&window, &ws.spatial.data, &mut ws.x.data);
            for block in &self.blocks {
                block.forward(ws, threads);
            }
            ws.pooled.resize(ws.x.channels, 0.0);
            pool::global_average(&ws.x.data, ws.x.channels, &mut ws.pooled);
            match &self.fc {
                Some(fc) if classify => fc.forward(&ws.pooled, threads),
                _ => ws.pooled.clone(),
            }
        })
    }

    /// Frees the idle buffers.
    pub fn release_memory(&self) {
        self.arena.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::resnet::{Config, Variant};
    use candle_core::{DType, Device, ModuleT, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    /// A narrow ResNet with random weights and non-trivial BatchNorm statistics.
    fn small_resnet(variant: Variant) -> ResNet {
        let config = Config {
            variant,
            blocks_per_stage: [1, 2, 1, 1],
            base_width: 8,
            num_classes: Some(10),
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = ResNet::new(&config, vb).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let shape = var.shape().clone();
            let value = if name.ends_with("running_var") {
                Tensor::rand(0.5f32, 2.0, shape, &Device::Cpu)
            } else {
                Tensor::rand(-0.5f32, 0.5, shape, &Device::Cpu)
            };
            var.set(&value.unwrap()).unwrap();
        }
        model
    }

    #[test]
    fn the_plan_computes_what_the_candle_module_computes() {
        for variant in [Variant::V1, Variant::V1_5] {
            let model = small_resnet(variant);
            let plan = ResNetPlan::new(&model.fold_batch_norm().unwrap(), Precision::F32).unwrap();
            let input = Tensor::rand(-2f32, 2.0, (1, 3, 45, 37), &Device::Cpu).unwrap();
            let expected = model
                .forward_t(&input, false)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let chw = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for threads in [1, 2, 3] {
                let ours = plan.forward(&chw, 45, 37, Threads(threads));
                assert_eq!(ours.len(), expected.len());
                for (a, b) in ours.iter().zip(&expected) {
                    assert!(
                        (a - b).abs() < 1e-3 * (1.0 + b.abs()),
                        "{variant:?}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_unfolded_model_is_refused() {
        let error = ResNetPlan::new(&small_resnet(Variant::V1), Precision::F32).unwrap_err();
        assert!(error.to_string().contains("fold BatchNorm"), "{error}");
    }
}
