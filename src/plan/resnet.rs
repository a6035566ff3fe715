//! The ResNet plan: [`crate::models::resnet::ResNet`] compiled for inference.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::{on_pool_thread, Arena, Conv2d, Dense, Epilogue, FeatureMap, Precision, Scratch};
use crate::kernels::im2col::Window;
use crate::kernels::{pool, Threads};
use crate::models::resnet::{Bottleneck, ConvBn, ResNet};
use crate::weights::int8::Int8Weights;

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

/// Lays out one layer, its BatchNorm folded in as the weights are laid out.
fn conv(layer: &ConvBn, precision: Precision) -> Result<Conv2d> {
    let fold = layer.batch_norm_fold()?;
    Conv2d::from_candle(layer.conv(), fold.as_ref(), precision)
        .with_context(|| format!("layer {}", layer.name()))
}

impl BottleneckPlan {
    /// Every convolution of a block reads a ReLU's output, so all of them can be int8.
    fn new(block: &Bottleneck, conv: &impl Fn(&ConvBn) -> Result<Conv2d>) -> Result<Self> {
        Ok(Self {
            reduce: conv(block.reduce())?,
            spatial: conv(block.spatial())?,
            expand: conv(block.expand())?,
            downsample: block.downsample().map(conv).transpose()?,
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
                shortcut.data()
            }
            None => x.data(),
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
    /// Compiles a ResNet, folding its BatchNorms layer by layer, and frees each layer once
    /// laid out (loading never holds the model and its plan whole side by side). With int8,
    /// the stem (whose input is signed) and the classifier (1 % of the work) stay f32.
    pub fn new(model: ResNet, precision: Precision) -> Result<Self> {
        Self::build(model, |layer| conv(layer, precision))
    }

    /// Compiles a folded ResNet at int8 with the blocks' kernels as `weights` store them
    /// (the model may hold placeholders for them: see
    /// [`Int8Weights::with_conv_placeholders`]); the stem must be stored in f32.
    pub fn from_int8(model: ResNet, weights: &Int8Weights) -> Result<Self> {
        let kernel_of = |layer: &ConvBn| {
            let name = format!("{}.weight", layer.name());
            weights.kernel(&name).map(|kernel| (name, kernel))
        };
        if let Some((name, _)) = kernel_of(model.stem()) {
            bail!("the int8 weights store the stem {name} in int8: it runs in f32 and needs its f32 kernel");
        }
        Self::build(model, |layer| {
            let (name, kernel) = kernel_of(layer).with_context(|| {
                format!(
                    "the int8 weights have no int8 kernel {}.weight",
                    layer.name()
                )
            })?;
            Conv2d::from_int8(layer.conv(), kernel).with_context(|| format!("tensor {name}"))
        })
    }

    fn build(model: ResNet, block_conv: impl Fn(&ConvBn) -> Result<Conv2d> + Sync) -> Result<Self> {
        let feature_dim = model.config().feature_dim();
        let (stem, blocks, fc) = model.into_layers();
        Ok(Self {
            stem: conv(&stem, Precision::F32)?,
            // One block per core at a time: laying out 100 MB of weights is start-up time.
            blocks: blocks
                .into_par_iter()
                .map(|block| BottleneckPlan::new(&block, &block_conv))
                .collect::<Result<_>>()?,
            fc: fc.as_ref().map(Dense::from_candle).transpose()?,
            feature_dim,
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

    /// The ImageNet classifier, when the network has one.
    pub fn classifier(&self) -> Option<&Dense> {
        self.fc.as_ref()
    }

    fn run(
        &self,
        chw: &[f32],
        height: usize,
        width: usize,
        threads: Threads,
        classify: bool,
    ) -> Vec<f32> {
        on_pool_thread(threads, || {
            self.arena.with(|ws| {
                ws.shortcut.load_chw(chw, (3, height, width), threads);
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
                pool::max_pool(&window, ws.spatial.data(), ws.x.data_mut(), threads);
                for block in &self.blocks {
                    block.forward(ws, threads);
                }
                ws.pooled.resize(ws.x.channels, 0.0);
                pool::global_average(ws.x.data(), ws.x.channels, &mut ws.pooled);
                match &self.fc {
                    Some(fc) if classify => fc.forward(&ws.pooled, threads),
                    _ => ws.pooled.clone(),
                }
            })
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
        super::super::randomize_for_tests(&varmap, 0.5);
        model
    }

    #[test]
    fn the_plan_computes_what_the_candle_module_computes() {
        for variant in [Variant::V1, Variant::V1_5] {
            let model = small_resnet(variant);
            let plan = ResNetPlan::new(model.clone(), Precision::F32).unwrap();
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

    /// The plan built from stored int8 kernels (on a structure holding placeholders) is the
    /// plan built from their dequantized values, and an int8 stem is refused.
    #[test]
    fn stored_int8_kernels_plan_like_their_dequantized_values() {
        use crate::weights::int8::{ChannelAxis, Int8Weights};
        use crate::weights::CheckedWeights;
        let folded = small_resnet(Variant::V1).fold_batch_norm().unwrap();
        let config = folded.config().clone();
        let quantize = |exact: &[&str]| {
            let tensors = folded.folded_tensors().unwrap();
            Int8Weights::quantize(tensors, ChannelAxis::First, exact, Default::default()).unwrap()
        };
        let build = |tensors| {
            CheckedWeights::from_tensors(std::path::Path::new("test"), tensors)
                .build(|vb| ResNet::new_folded(&config, vb))
                .unwrap()
        };
        let weights = quantize(&["conv1.weight"]);
        let dequantized = build(weights.dequantized().unwrap());
        let expected = ResNetPlan::new(dequantized, Precision::Int8).unwrap();
        let structure = build(weights.with_conv_placeholders().unwrap());
        let planned = ResNetPlan::from_int8(structure, &weights).unwrap();
        let chw: Vec<f32> = (0..3 * 41 * 33).map(|i| (i as f32 * 0.7).sin()).collect();
        let (ours, theirs) = (
            planned.forward(&chw, 41, 33, Threads(2)),
            expected.forward(&chw, 41, 33, Threads(2)),
        );
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }

        let all_int8 = quantize(&[]);
        let structure = build(all_int8.with_conv_placeholders().unwrap());
        let error = ResNetPlan::from_int8(structure, &all_int8).unwrap_err();
        assert!(error.to_string().contains("stem conv1.weight"), "{error}");
    }

    #[test]
    fn an_unfolded_model_plans_as_its_folded_form() {
        let model = small_resnet(Variant::V1);
        let unfolded = ResNetPlan::new(model.clone(), Precision::F32).unwrap();
        let folded = ResNetPlan::new(model.fold_batch_norm().unwrap(), Precision::F32).unwrap();
        let chw: Vec<f32> = (0..3 * 41 * 33).map(|i| (i as f32 * 0.7).sin()).collect();
        assert_eq!(
            unfolded.forward(&chw, 41, 33, Threads(1)),
            folded.forward(&chw, 41, 33, Threads(1))
        );
    }
}
