//! ResNet-50 — "Deep Residual Learning for Image Recognition", He, Zhang, Ren, Sun, 2015.
//! <https://arxiv.org/abs/1512.03385>; reference code: torchvision `models/resnet.py`.
//!
//! Two layouts share one set of tensor names (torchvision's):
//! - [`Variant::V1`], the paper's and Keras' layout: the first block of layer2..4
//!   downsamples with stride 2 on its 1x1 `conv1`;
//! - [`Variant::V1_5`], torchvision's layout: the stride sits on the 3x3 `conv2`.
//!
//! Loading the wrong layout succeeds (the shapes are the same) but predicts nonsense,
//! so the variant comes from the model manifest.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Linear, VarBuilder};
use serde::Deserialize;

/// BatchNorm epsilon of both torchvision and our converted Keras weights.
pub const BATCH_NORM_EPS: f64 = 1e-5;

/// Where the downsampling stride of a stage's first bottleneck sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Variant {
    /// Stride on the 1x1 `conv1` (original paper, Keras, Caffe).
    #[serde(rename = "v1")]
    V1,
    /// Stride on the 3x3 `conv2` (torchvision).
    #[serde(rename = "v1.5")]
    V1_5,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub variant: Variant,
    /// Bottleneck blocks in layer1..layer4.
    pub blocks_per_stage: [usize; 4],
    /// Width of the stem and of the first stage's bottleneck (64 in ResNet-50).
    pub base_width: usize,
    /// Output classes of `fc`; `None` for a feature extractor without a head.
    pub num_classes: Option<usize>,
}

/// Channel expansion of the last 1x1 conv of a bottleneck.
const EXPANSION: usize = 4;

impl Config {
    pub fn resnet50(variant: Variant, num_classes: Option<usize>) -> Self {
        Self {
            variant,
            blocks_per_stage: [3, 4, 6, 3],
            base_width: 64,
            num_classes,
        }
    }

    /// Size of the pooled feature vector that feeds `fc` (2048 in ResNet-50).
    pub fn feature_dim(&self) -> usize {
        self.base_width * 8 * EXPANSION
    }
}

/// A bias-free convolution followed by BatchNorm; the pair every ResNet layer is made of.
/// For inference the BatchNorm can be folded into the convolution's weights and bias.
#[derive(Debug, Clone)]
pub struct ConvBn {
    /// The convolution's tensor-name prefix (`layer1.0.conv1`): a folded network is
    /// saved under its convolutions' names.
    name: String,
    conv: Conv2d,
    /// `None` once folded into `conv`.
    bn: Option<BatchNorm>,
}

/// A BatchNorm folded into the convolution before it: `conv(x) * scale + bias` per output
/// channel, i.e. the kernel's output channels scaled and a new bias.
#[derive(Debug, Clone)]
pub struct ChannelFold {
    pub scale: Tensor,
    pub bias: Tensor,
}

impl ChannelFold {
    /// The BatchNorm `bn` after a convolution with bias `conv_bias` (none: zero):
    /// `scale = gamma / sqrt(var + eps)`, `bias = beta + scale * (conv_bias - mean)`.
    pub fn of(bn: &BatchNorm, conv_bias: Option<&Tensor>) -> Result<Self> {
        let Some((gamma, beta)) = bn.weight_and_bias() else {
            candle_core::bail!("a BatchNorm without weight and bias");
        };
        let scale = gamma.div(&(bn.running_var() + bn.eps())?.sqrt()?)?;
        let shifted_bias = match conv_bias {
            Some(bias) => bias.sub(bn.running_mean())?,
            None => bn.running_mean().neg()?,
        };
        Ok(Self {
            bias: beta.add(&scale.mul(&shifted_bias)?)?,
            scale,
        })
    }
}

/// How a network's normalization is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Bias-free convolutions, each followed by its BatchNorm (the trained network).
    WithBatchNorm,
    /// Each BatchNorm folded into its convolution's weights and bias (the inference form,
    /// which `classify quantize` stores).
    Folded,
}

/// The geometry of one convolution, named so that call sites cannot swap the numbers.
#[derive(Debug, Clone, Copy)]
struct ConvShape {
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
}

impl ConvBn {
    fn new(shape: ConvShape, form: Form, conv_vb: VarBuilder, bn_vb: VarBuilder) -> Result<Self> {
        let config = Conv2dConfig {
            padding: shape.kernel / 2,
            stride: shape.stride,
            ..Default::default()
        };
        let name = conv_vb.prefix();
        let (in_channels, out_channels, kernel) =
            (shape.in_channels, shape.out_channels, shape.kernel);
        if form == Form::Folded {
            let conv = candle_nn::conv2d(in_channels, out_channels, kernel, config, conv_vb)?;
            return Ok(Self {
                name,
                conv,
                bn: None,
            });
        }
        let conv = candle_nn::conv2d_no_bias(in_channels, out_channels, kernel, config, conv_vb)?;
        let bn_config = BatchNormConfig {
            eps: BATCH_NORM_EPS,
            ..Default::default()
        };
        let bn = candle_nn::batch_norm(out_channels, bn_config, bn_vb)?;
        Ok(Self {
            name,
            conv,
            bn: Some(bn),
        })
    }

    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }

    /// The convolution's tensor-name prefix (`layer1.0.conv1`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The BatchNorm, unless it was folded into the convolution.
    pub fn bn(&self) -> Option<&BatchNorm> {
        self.bn.as_ref()
    }

    /// The same function for inference as one convolution with bias: saves a pass over
    /// every activation. The result can no longer train its statistics.
    pub fn fold_batch_norm(&self) -> Result<Self> {
        let Some(fold) = self.batch_norm_fold()? else {
            return Ok(self.clone());
        };
        let weight = self.conv.weight();
        let scale = fold.scale.reshape((weight.dim(0)?, 1, 1, 1))?;
        Ok(Self {
            name: self.name.clone(),
            conv: Conv2d::new(
                weight.broadcast_mul(&scale)?,
                Some(fold.bias),
                *self.conv.config(),
            ),
            bn: None,
        })
    }

    /// The BatchNorm as its convolution absorbs it, unless it is folded already: a compiler
    /// can then scale the kernel as it lays it out, never holding a folded copy.
    pub fn batch_norm_fold(&self) -> Result<Option<ChannelFold>> {
        let Some(bn) = &self.bn else {
            return Ok(None);
        };
        ChannelFold::of(bn, self.conv.bias())
            .map(Some)
            .map_err(|e| e.context(self.name.clone()))
    }

    /// A folded layer's tensors under its convolution's name.
    fn folded_tensors(&self) -> Result<[(String, Tensor); 2]> {
        if self.bn.is_some() {
            candle_core::bail!(
                "{}: fold BatchNorm before saving the folded form",
                self.name
            );
        }
        let bias = self.conv.bias().expect("a folded convolution has a bias");
        Ok([
            (format!("{}.weight", self.name), self.conv.weight().clone()),
            (format!("{}.bias", self.name), bias.clone()),
        ])
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self.conv.forward(xs)?;
        match &self.bn {
            Some(bn) => xs.apply_t(bn, train),
            None => Ok(xs),
        }
    }
}

/// 1x1 reduce, 3x3, 1x1 expand, plus the (possibly projected) shortcut.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    reduce: ConvBn,
    spatial: ConvBn,
    expand: ConvBn,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn new(
        in_channels: usize,
        width: usize,
        stride: usize,
        variant: Variant,
        form: Form,
        vb: VarBuilder,
    ) -> Result<Self> {
        let out_channels = width * EXPANSION;
        let (reduce_stride, spatial_stride) = match variant {
            Variant::V1 => (stride, 1),
            Variant::V1_5 => (1, stride),
        };
        let reduce = ConvBn::new(
            ConvShape {
                in_channels,
                out_channels: width,
                kernel: 1,
                stride: reduce_stride,
            },
            form,
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let spatial = ConvBn::new(
            ConvShape {
                in_channels: width,
                out_channels: width,
                kernel: 3,
                stride: spatial_stride,
            },
            form,
            vb.pp("conv2"),
            vb.pp("bn2"),
        )?;
        let expand = ConvBn::new(
            ConvShape {
                in_channels: width,
                out_channels,
                kernel: 1,
                stride: 1,
            },
            form,
            vb.pp("conv3"),
            vb.pp("bn3"),
        )?;
        let downsample = if stride != 1 || in_channels != out_channels {
            let shape = ConvShape {
                in_channels,
                out_channels,
                kernel: 1,
                stride,
            };
            let vb = vb.pp("downsample");
            Some(ConvBn::new(shape, form, vb.pp(0), vb.pp(1))?)
        } else {
            None
        };
        Ok(Self {
            reduce,
            spatial,
            expand,
            downsample,
        })
    }

    fn fold_batch_norm(&self) -> Result<Self> {
        Ok(Self {
            reduce: self.reduce.fold_batch_norm()?,
            spatial: self.spatial.fold_batch_norm()?,
            expand: self.expand.fold_batch_norm()?,
            downsample: self
                .downsample
                .as_ref()
                .map(ConvBn::fold_batch_norm)
                .transpose()?,
        })
    }

    pub fn reduce(&self) -> &ConvBn {
        &self.reduce
    }

    pub fn spatial(&self) -> &ConvBn {
        &self.spatial
    }

    pub fn expand(&self) -> &ConvBn {
        &self.expand
    }

    pub fn downsample(&self) -> Option<&ConvBn> {
        self.downsample.as_ref()
    }

    /// The block's layers in order: reduce, spatial, expand, then the shortcut projection.
    pub fn layers(&self) -> impl Iterator<Item = &ConvBn> {
        [&self.reduce, &self.spatial, &self.expand]
            .into_iter()
            .chain(self.downsample.as_ref())
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(downsample) => downsample.forward_t(xs, train)?,
            None => xs.clone(),
        };
        let ys = self.reduce.forward_t(xs, train)?.relu()?;
        let ys = self.spatial.forward_t(&ys, train)?.relu()?;
        let ys = self.expand.forward_t(&ys, train)?;
        (ys + shortcut)?.relu()
    }
}

#[derive(Debug, Clone)]
pub struct ResNet {
    config: Config,
    stem: ConvBn,
    stages: Vec<Vec<Bottleneck>>,
    fc: Option<Linear>,
}

impl ResNet {
    /// The trained network: torchvision's tensors, every convolution with its BatchNorm.
    pub fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        Self::build(config, Form::WithBatchNorm, vb)
    }

    /// The inference form that [`Self::fold_batch_norm`] gives and
    /// [`Self::folded_tensors`] saves: convolutions with bias, no BatchNorm tensors.
    pub fn new_folded(config: &Config, vb: VarBuilder) -> Result<Self> {
        Self::build(config, Form::Folded, vb)
    }

    fn build(config: &Config, form: Form, vb: VarBuilder) -> Result<Self> {
        let stem = ConvBn::new(
            ConvShape {
                in_channels: 3,
                out_channels: config.base_width,
                kernel: 7,
                stride: 2,
            },
            form,
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let mut in_channels = config.base_width;
        let mut stages = Vec::with_capacity(config.blocks_per_stage.len());
        for (stage, &blocks) in config.blocks_per_stage.iter().enumerate() {
            let width = config.base_width << stage;
            let first_stride = if stage == 0 { 1 } else { 2 };
            let stage_vb = vb.pp(format!("layer{}", stage + 1));
            let mut stage_blocks = Vec::with_capacity(blocks);
            for block in 0..blocks {
                let stride = if block == 0 { first_stride } else { 1 };
                stage_blocks.push(Bottleneck::new(
                    in_channels,
                    width,
                    stride,
                    config.variant,
                    form,
                    stage_vb.pp(block),
                )?);
                in_channels = width * EXPANSION;
            }
            stages.push(stage_blocks);
        }
        let fc = match config.num_classes {
            Some(classes) => Some(candle_nn::linear(in_channels, classes, vb.pp("fc"))?),
            None => None,
        };
        Ok(Self {
            config: config.clone(),
            stem,
            stages,
            fc,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The network for inference, every BatchNorm folded into its convolution.
    pub fn fold_batch_norm(&self) -> Result<Self> {
        Ok(Self {
            config: self.config.clone(),
            stem: self.stem.fold_batch_norm()?,
            stages: self
                .stages
                .iter()
                .map(|stage| stage.iter().map(Bottleneck::fold_batch_norm).collect())
                .collect::<Result<_>>()?,
            fc: self.fc.clone(),
        })
    }

    /// Every tensor of a folded network by name, as [`Self::new_folded`] reads them.
    pub fn folded_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut tensors = Vec::new();
        let layers = std::iter::once(&self.stem)
            .chain(self.stages.iter().flatten().flat_map(Bottleneck::layers));
        for layer in layers {
            tensors.extend(layer.folded_tensors()?);
        }
        if let Some(fc) = &self.fc {
            tensors.push(("fc.weight".to_string(), fc.weight().clone()));
            if let Some(bias) = fc.bias() {
                tensors.push(("fc.bias".to_string(), bias.clone()));
            }
        }
        Ok(tensors)
    }

    pub fn stem(&self) -> &ConvBn {
        &self.stem
    }

    /// The stem, the blocks in order and the classifier, taken out of the network (a
    /// compiler frees each one as soon as it has laid it out).
    pub fn into_layers(self) -> (ConvBn, Vec<Bottleneck>, Option<Linear>) {
        let blocks = self.stages.into_iter().flatten().collect();
        (self.stem, blocks, self.fc)
    }

    pub fn stages(&self) -> &[Vec<Bottleneck>] {
        &self.stages
    }

    pub fn fc(&self) -> Option<&Linear> {
        self.fc.as_ref()
    }

    /// The globally average-pooled features, `[batch, feature_dim]`.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self.stem.forward_t(xs, train)?.relu()?;
        let xs = xs.pad_with_same(3, 1, 1)?.pad_with_same(2, 1, 1)?;
        let mut xs = xs.max_pool2d_with_stride(3, 2)?;
        for block in self.stages.iter().flatten() {
            xs = block.forward_t(&xs, train)?;
        }
        xs.mean((2, 3))
    }
}

impl ModuleT for ResNet {
    /// Logits `[batch, num_classes]`, or the pooled features when there is no head.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.features_t(xs, train)?;
        match &self.fc {
            Some(fc) => fc.forward(&features),
            None => Ok(features),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn random_input(shape: (usize, usize, usize, usize)) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    /// The block written out with explicit strides, from the block's own weights.
    fn bottleneck_slow(
        block: &Bottleneck,
        xs: &Tensor,
        strides: [usize; 3],
        shortcut_stride: usize,
    ) -> Tensor {
        let conv_bn = |layer: &ConvBn, xs: &Tensor, stride: usize| {
            let weight = layer.conv().weight();
            let padding = weight.dim(3).unwrap() / 2;
            xs.conv2d(weight, padding, stride, 1, 1)
                .unwrap()
                .apply_t(layer.bn().unwrap(), false)
                .unwrap()
        };
        let layers: Vec<&ConvBn> = block.layers().collect();
        let ys = conv_bn(layers[0], xs, strides[0]).relu().unwrap();
        let ys = conv_bn(layers[1], &ys, strides[1]).relu().unwrap();
        let ys = conv_bn(layers[2], &ys, strides[2]);
        let shortcut = conv_bn(layers[3], xs, shortcut_stride);
        (ys + shortcut).unwrap().relu().unwrap()
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn v1_strides_the_1x1_conv_and_v1_5_the_3x3() {
        let xs = random_input((2, 8, 9, 9));
        for (variant, strides) in [(Variant::V1, [2, 1, 1]), (Variant::V1_5, [1, 2, 1])] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let block = Bottleneck::new(8, 4, 2, variant, Form::WithBatchNorm, vb).unwrap();
            let ys = block.forward_t(&xs, false).unwrap();
            assert_eq!(ys.dims(), [2, 16, 5, 5]);
            let expected = bottleneck_slow(&block, &xs, strides, 2);
            assert!(max_difference(&ys, &expected) < 1e-5, "{variant:?}");
        }
    }

    #[test]
    fn the_same_weights_give_different_answers_in_the_two_layouts() {
        let varmap = VarMap::new();
        let build = |variant| {
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let config = Config {
                variant,
                blocks_per_stage: [1, 2, 1, 1],
                base_width: 4,
                num_classes: Some(7),
            };
            ResNet::new(&config, vb).unwrap()
        };
        let v1 = build(Variant::V1);
        // The second build finds every tensor the first one created: same weights.
        let v1_5 = build(Variant::V1_5);
        // (stem + 5 blocks x 3 + 4 projections) conv+bn pairs of 5 tensors each, plus fc.
        assert_eq!(varmap.all_vars().len(), (1 + 5 * 3 + 4) * 5 + 2);
        let xs = random_input((1, 3, 64, 64));
        let a = v1.forward_t(&xs, false).unwrap();
        let b = v1_5.forward_t(&xs, false).unwrap();
        assert_eq!(a.dims(), [1, 7]);
        assert_eq!(b.dims(), [1, 7]);
        assert!(
            max_difference(&a, &b) > 1e-4,
            "the layouts computed the same thing"
        );
        assert_eq!(
            v1.features_t(&xs, false).unwrap().dims(),
            [1, v1.config().feature_dim()]
        );
    }

    #[test]
    fn folding_batch_norm_keeps_the_function() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let config = Config {
            variant: Variant::V1,
            blocks_per_stage: [1, 1, 1, 1],
            base_width: 4,
            num_classes: Some(5),
        };
        let net = ResNet::new(&config, vb).unwrap();
        // Give the statistics values a fresh VarMap does not have.
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.ends_with("running_var")
                || name.ends_with("running_mean")
                || name.ends_with("bn1.weight")
            {
                let fresh = Tensor::rand(0.5f32, 1.5, var.shape(), &Device::Cpu).unwrap();
                var.set(&fresh).unwrap();
            }
        }
        let xs = random_input((2, 3, 40, 40));
        let slow = net.forward_t(&xs, false).unwrap();
        let folded = net.fold_batch_norm().unwrap();
        assert!(folded.stem().bn().is_none());
        let fast = folded.forward_t(&xs, false).unwrap();
        assert!(
            max_difference(&slow, &fast) < 1e-4,
            "{}",
            max_difference(&slow, &fast)
        );

        // Saved and rebuilt in the folded form, it is the same network.
        let tensors: std::collections::HashMap<String, Tensor> =
            folded.folded_tensors().unwrap().into_iter().collect();
        assert_eq!(tensors.len(), (1 + 4 * 3 + 4) * 2 + 2);
        assert!(net.folded_tensors().is_err(), "an unfolded network");
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let rebuilt = ResNet::new_folded(&config, vb).unwrap();
        let again = rebuilt.forward_t(&xs, false).unwrap();
        assert_eq!(max_difference(&fast, &again), 0.0);
    }

    #[test]
    fn identity_blocks_have_no_projection() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let block = Bottleneck::new(16, 4, 1, Variant::V1, Form::WithBatchNorm, vb).unwrap();
        assert_eq!(block.layers().count(), 3);
    }
}
