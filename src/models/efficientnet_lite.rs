//! EfficientNet-Lite0 — "EfficientNet: Rethinking Model Scaling for Convolutional Neural
//! Networks", Tan and Le, 2019 (<https://arxiv.org/abs/1905.11946>), in the "Lite" form
//! TensorFlow made for mobile and edge CPUs and int8 (`tensorflow/tpu`,
//! `models/official/efficientnet/lite`): no squeeze-and-excitation, ReLU6 instead of
//! Swish, the stem and head kept at 32 and 1280 channels.
//!
//! Two details decide whether the weights work: every convolution pads as TensorFlow's
//! "SAME" does (asymmetric at stride 2: symmetric padding loads fine and loses 7 points
//! of top-1), and BatchNorm's epsilon is 1e-3. Tensor names are those of the PyTorch
//! port (`_blocks.N._depthwise_conv.weight`, ...).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Linear, VarBuilder};

use super::resnet::ChannelFold;
use crate::kernels::depthwise::same_padding;

pub const BATCH_NORM_EPS: f64 = 1e-3;
/// Channels of the stem and of the head's 1x1 convolution (fixed in the Lite models).
const STEM_CHANNELS: usize = 32;
pub const FEATURE_DIM: usize = 1280;

/// One row of the paper's table: `repeats` MBConv blocks, the first with `stride`.
#[derive(Debug, Clone, Copy)]
struct Stage {
    kernel: usize,
    stride: usize,
    expand: usize,
    channels: usize,
    repeats: usize,
}

const fn stage(
    kernel: usize,
    stride: usize,
    expand: usize,
    channels: usize,
    repeats: usize,
) -> Stage {
    Stage {
        kernel,
        stride,
        expand,
        channels,
        repeats,
    }
}

/// EfficientNet-B0's table, which Lite0 keeps (width and depth multipliers 1.0).
const LITE0: [Stage; 7] = [
    stage(3, 1, 1, 16, 1),
    stage(3, 2, 6, 24, 2),
    stage(5, 2, 6, 40, 2),
    stage(3, 2, 6, 80, 3),
    stage(5, 1, 6, 112, 3),
    stage(5, 2, 6, 192, 4),
    stage(3, 1, 6, 320, 1),
];

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// Zero rows and columns so that a following unpadded convolution is "SAME".
fn pad_same(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (_, _, height, width) = x.dims4()?;
    let (top, bottom) = same_padding(height, kernel, stride);
    let (left, right) = same_padding(width, kernel, stride);
    x.pad_with_zeros(2, top, bottom)?
        .pad_with_zeros(3, left, right)
}

/// A bias-free convolution ("SAME"-padded; depthwise when `groups` is its channels), its
/// BatchNorm, and optionally ReLU6.
#[derive(Debug, Clone)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    pub kernel: usize,
    pub stride: usize,
    relu6: bool,
}

/// A [`ConvBn`]'s shape.
#[derive(Debug, Clone, Copy)]
struct ConvShape {
    inputs: usize,
    outputs: usize,
    kernel: usize,
    stride: usize,
    depthwise: bool,
    relu6: bool,
}

impl ConvBn {
    fn new(shape: ConvShape, conv: VarBuilder, bn: VarBuilder) -> Result<Self> {
        let config = Conv2dConfig {
            stride: shape.stride,
            groups: if shape.depthwise { shape.inputs } else { 1 },
            ..Default::default()
        };
        let (inputs, outputs, kernel) = (shape.inputs, shape.outputs, shape.kernel);
        Ok(Self {
            conv: candle_nn::conv2d_no_bias(inputs, outputs, kernel, config, conv)?,
            bn: candle_nn::batch_norm(outputs, BatchNormConfig::from(BATCH_NORM_EPS), bn)?,
            kernel,
            stride: shape.stride,
            relu6: shape.relu6,
        })
    }

    /// The convolution, unpadded (`forward` pads "SAME" before it).
    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }

    /// The BatchNorm as the convolution absorbs it.
    pub fn batch_norm_fold(&self) -> Result<ChannelFold> {
        ChannelFold::of(&self.bn, None)
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.conv.forward(&pad_same(x, self.kernel, self.stride)?)?;
        let x = self.bn.forward_t(&x, false)?;
        if self.relu6 {
            relu6(&x)
        } else {
            Ok(x)
        }
    }
}

/// Mobile inverted bottleneck: expand 1x1 (+ ReLU6), depthwise k x k (+ ReLU6), project
/// 1x1 (linear), and the input added back when the shape allows.
#[derive(Debug, Clone)]
pub struct MbConv {
    pub expand: Option<ConvBn>,
    pub depthwise: ConvBn,
    pub project: ConvBn,
    pub residual: bool,
}

impl MbConv {
    fn new(inputs: usize, stage: &Stage, stride: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = inputs * stage.expand;
        let pointwise = |inputs, outputs, relu6| ConvShape {
            inputs,
            outputs,
            kernel: 1,
            stride: 1,
            depthwise: false,
            relu6,
        };
        let expand = (stage.expand != 1)
            .then(|| {
                ConvBn::new(
                    pointwise(inputs, hidden, true),
                    vb.pp("_expand_conv"),
                    vb.pp("_bn0"),
                )
            })
            .transpose()?;
        let depthwise = ConvShape {
            inputs: hidden,
            outputs: hidden,
            kernel: stage.kernel,
            stride,
            depthwise: true,
            relu6: true,
        };
        Ok(Self {
            expand,
            depthwise: ConvBn::new(depthwise, vb.pp("_depthwise_conv"), vb.pp("_bn1"))?,
            project: ConvBn::new(
                pointwise(hidden, stage.channels, false),
                vb.pp("_project_conv"),
                vb.pp("_bn2"),
            )?,
            residual: stride == 1 && inputs == stage.channels,
        })
    }
}

impl Module for MbConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = match &self.expand {
            Some(expand) => expand.forward(x)?,
            None => x.clone(),
        };
        let out = self.project.forward(&self.depthwise.forward(&hidden)?)?;
        if self.residual {
            out + x
        } else {
            Ok(out)
        }
    }
}

#[derive(Debug, Clone)]
pub struct EfficientNetLite {
    pub stem: ConvBn,
    pub blocks: Vec<MbConv>,
    pub head: ConvBn,
    pub fc: Linear,
}

impl EfficientNetLite {
    /// EfficientNet-Lite0 with `classes` outputs.
    pub fn lite0(classes: usize, vb: VarBuilder) -> Result<Self> {
        let stem = ConvShape {
            inputs: 3,
            outputs: STEM_CHANNELS,
            kernel: 3,
            stride: 2,
            depthwise: false,
            relu6: true,
        };
        let stem = ConvBn::new(stem, vb.pp("_conv_stem"), vb.pp("_bn0"))?;
        let mut blocks = Vec::new();
        let mut channels = STEM_CHANNELS;
        for stage in &LITE0 {
            for repeat in 0..stage.repeats {
                let stride = if repeat == 0 { stage.stride } else { 1 };
                let vb = vb.pp(format!("_blocks.{}", blocks.len()));
                blocks.push(MbConv::new(channels, stage, stride, vb)?);
                channels = stage.channels;
            }
        }
        let head = ConvShape {
            inputs: channels,
            outputs: FEATURE_DIM,
            kernel: 1,
            stride: 1,
            depthwise: false,
            relu6: true,
        };
        let head = ConvBn::new(head, vb.pp("_conv_head"), vb.pp("_bn1"))?;
        let fc = candle_nn::linear(FEATURE_DIM, classes, vb.pp("_fc"))?;
        Ok(Self {
            stem,
            blocks,
            head,
            fc,
        })
    }

    /// The pooled 1280 features of a batch `[n, 3, height, width]`: `[n, 1280]`.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(x)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.head.forward(&x)?.mean((2, 3))
    }
}

impl Module for EfficientNetLite {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc.forward(&self.features(x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_sixteen_blocks_ending_at_320_channels() {
        assert_eq!(LITE0.iter().map(|s| s.repeats).sum::<usize>(), 16);
        assert_eq!(LITE0.last().unwrap().channels, 320);
    }
}
