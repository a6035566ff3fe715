//! EfficientNet-Lite0 compiled for inference: NHWC maps; the stem and every 1x1
//! convolution as the plan's products (BatchNorm folded, bias and residual in the
//! accumulator's start, `max(x, 0)` in the stores); the depthwise convolutions by the
//! depthwise kernel, which completes the ReLU6 of the product before (`min(x, 6)` as it
//! reads) and applies its own; the head's ReLU6 completed before the pool.

use anyhow::{Context, Result};

use super::{
    on_pool_thread, with_f32_values, Arena, Conv2d, Dense, Epilogue, FeatureMap, Precision, Scratch,
};
use crate::kernels::depthwise::{self, same_padding, DepthwiseGeometry, DepthwiseWeights};
use crate::kernels::{pool, Threads};
use crate::models::efficientnet_lite::{ConvBn, EfficientNetLite, MbConv};

/// ReLU6's ceiling.
const RELU6: f32 = 6.0;

#[derive(Debug)]
struct DepthwisePlan {
    weights: DepthwiseWeights,
    stride: usize,
}

#[derive(Debug)]
struct BlockPlan {
    expand: Option<Conv2d>,
    depthwise: DepthwisePlan,
    project: Conv2d,
    residual: bool,
}

#[derive(Debug, Default)]
struct Workspace {
    x: FeatureMap,
    expanded: FeatureMap,
    filtered: FeatureMap,
    out: FeatureMap,
    scratch: Scratch,
    pooled: Vec<f32>,
}

#[derive(Debug)]
pub struct EfficientNetLitePlan {
    stem: Conv2d,
    stem_kernel: usize,
    stem_stride: usize,
    blocks: Vec<BlockPlan>,
    head: Conv2d,
    fc: Dense,
    arena: Arena<Workspace>,
}

/// A convolution with its BatchNorm folded, as the plan's product (unpadded: the plan
/// pads "SAME" itself where it must).
fn product(layer: &ConvBn) -> Result<Conv2d> {
    Conv2d::from_candle(
        layer.conv(),
        Some(&layer.batch_norm_fold()?),
        Precision::F32,
    )
}

fn depthwise_plan(layer: &ConvBn) -> Result<DepthwisePlan> {
    let fold = layer.batch_norm_fold()?;
    let scale = fold.scale.to_vec1::<f32>()?;
    let taps = layer.kernel * layer.kernel;
    let folded: Vec<f32> = with_f32_values(layer.conv().weight(), |stored| {
        let filters = stored.chunks_exact(taps).zip(&scale);
        filters
            .flat_map(|(filter, s)| filter.iter().map(move |w| w * s))
            .collect()
    })?;
    let weights =
        DepthwiseWeights::from_stored(&folded, scale.len(), layer.kernel, fold.bias.to_vec1()?);
    Ok(DepthwisePlan {
        weights,
        stride: layer.stride,
    })
}

impl BlockPlan {
    fn new(block: &MbConv) -> Result<Self> {
        Ok(Self {
            expand: block.expand.as_ref().map(product).transpose()?,
            depthwise: depthwise_plan(&block.depthwise)?,
            project: product(&block.project)?,
            residual: block.residual,
        })
    }

    fn forward(&self, ws: &mut Workspace, threads: Threads) {
        let Workspace {
            x,
            expanded,
            filtered,
            out,
            scratch,
            ..
        } = ws;
        let hidden = match &self.expand {
            Some(expand) => {
                expand.forward(x, Epilogue::Relu, expanded, scratch, threads);
                &*expanded
            }
            // The first block filters the stem's output (ReLU6 completed by the kernel).
            None => &*x,
        };
        let weights = &self.depthwise.weights;
        let geometry = DepthwiseGeometry::same(
            hidden.channels,
            hidden.height,
            hidden.width,
            weights.kernel,
            self.depthwise.stride,
        );
        filtered.reset(geometry.out_height, geometry.out_width, geometry.channels);
        depthwise::depthwise(
            &geometry,
            hidden.data(),
            weights,
            RELU6,
            filtered.data_mut(),
            threads,
        );
        let epilogue = match self.residual {
            true => Epilogue::Add(x.data()),
            false => Epilogue::Linear,
        };
        self.project
            .forward(filtered, epilogue, out, scratch, threads);
        std::mem::swap(x, out);
    }
}

impl EfficientNetLitePlan {
    pub fn new(model: &EfficientNetLite) -> Result<Self> {
        Ok(Self {
            stem: product(&model.stem).context("the stem")?,
            stem_kernel: model.stem.kernel,
            stem_stride: model.stem.stride,
            blocks: model
                .blocks
                .iter()
                .enumerate()
                .map(|(i, block)| BlockPlan::new(block).with_context(|| format!("block {i}")))
                .collect::<Result<_>>()?,
            head: product(&model.head).context("the head")?,
            fc: Dense::from_candle(&model.fc)?,
            arena: Arena::default(),
        })
    }

    /// The logits of one planar `[3, height, width]` image.
    pub fn forward(&self, chw: &[f32], height: usize, width: usize, threads: Threads) -> Vec<f32> {
        let features = self.features(chw, height, width, threads);
        self.fc.forward(&features, threads)
    }

    /// The pooled 1280 features of one planar image.
    pub fn features(&self, chw: &[f32], height: usize, width: usize, threads: Threads) -> Vec<f32> {
        on_pool_thread(threads, || {
            self.arena.with(|ws| {
                // The stem reads the image "SAME"-padded: zero rows and columns around it.
                let (top, bottom) = same_padding(height, self.stem_kernel, self.stem_stride);
                let (left, right) = same_padding(width, self.stem_kernel, self.stem_stride);
                ws.out.load_chw(chw, (3, height, width), threads);
                pad(&ws.out, (top, bottom, left, right), &mut ws.filtered);
                self.stem.forward(
                    &ws.filtered,
                    Epilogue::Relu,
                    &mut ws.x,
                    &mut ws.scratch,
                    threads,
                );
                for block in &self.blocks {
                    block.forward(ws, threads);
                }
                self.head
                    .forward(&ws.x, Epilogue::Relu, &mut ws.out, &mut ws.scratch, threads);
                // The head's ReLU6 completed (its stores applied max(x, 0)), then the pool.
                for value in ws.out.data_mut() {
                    *value = value.min(RELU6);
                }
                ws.pooled.resize(ws.out.channels, 0.0);
                pool::global_average(ws.out.data(), ws.out.channels, &mut ws.pooled);
                ws.pooled.clone()
            })
        })
    }

    pub fn feature_dim(&self) -> usize {
        crate::models::efficientnet_lite::FEATURE_DIM
    }

    /// The ImageNet classifier.
    pub fn classifier(&self) -> &Dense {
        &self.fc
    }

    pub fn release_memory(&self) {
        self.arena.clear();
    }
}

/// `input` with zero rows above and below and zero columns left and right.
fn pad(
    input: &FeatureMap,
    (top, bottom, left, right): (usize, usize, usize, usize),
    out: &mut FeatureMap,
) {
    let channels = input.channels;
    let width = input.width + left + right;
    out.reset(input.height + top + bottom, width, channels);
    let data = out.data_mut();
    data.fill(0.0);
    let row_len = input.width * channels;
    for (y, row) in input.data().chunks_exact(row_len).enumerate() {
        let start = ((y + top) * width + left) * channels;
        data[start..start + row_len].copy_from_slice(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    fn module_logits(model: &EfficientNetLite, input: &Tensor) -> Vec<f32> {
        model
            .forward(input)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Lite0 with random weights (BatchNorm variances positive) and 10 classes.
    fn random_lite0() -> EfficientNetLite {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = EfficientNetLite::lite0(10, vb).unwrap();
        super::super::randomize_for_tests(&varmap, 0.4);
        model
    }

    #[test]
    fn the_plan_computes_what_the_candle_module_computes() {
        let model = random_lite0();
        let plan = EfficientNetLitePlan::new(&model).unwrap();
        // Odd and even sizes: "SAME" pads differently.
        for (height, width) in [(64, 64), (45, 38)] {
            let input = Tensor::rand(-2f32, 2.0, (1, 3, height, width), &Device::Cpu).unwrap();
            let expected = module_logits(&model, &input);
            let chw = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for threads in [1, 2] {
                let got = plan.forward(&chw, height, width, Threads(threads));
                let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (g, e) in got.iter().zip(&expected) {
                    assert!(
                        (g - e).abs() <= 1e-4 * scale,
                        "{height}x{width}, {threads} threads: {g} vs {e}"
                    );
                }
            }
        }
    }
}
