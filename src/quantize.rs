//! Int8 models: a manifest model's f32 weights quantized (what `classify quantize`
//! writes, and what loading at int8 does when the manifest names no int8 file), and the
//! int8 weights a model loads — its int8 file, checked against the f32 weights it was
//! made from, or the f32 file quantized now. Both give the same numbers.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::manifest::{Architecture, Backbone, ModelSpec, WeightsFile};
use crate::models::resnet::{self, ResNet};
use crate::models::small_cnn::SmallCnn;
use crate::plan::resnet::ResNetPlan;
use crate::plan::small_cnn::SmallCnnPlan;
use crate::weights::int8::{ChannelAxis, Int8Weights};
use crate::weights::{CheckedWeights, Expected};

/// The int8 weights of a manifest model. A head is refused: its backbone is what gets
/// quantized (the head's 2,049 numbers stay f32).
pub fn quantize(spec: &ModelSpec, classes: usize) -> Result<Int8Weights> {
    match spec.architecture {
        Architecture::Resnet50 => quantize_resnet(&spec.as_backbone(), classes),
        Architecture::SmallCnn => quantize_small_cnn(&spec.weights, spec.expected()),
        Architecture::EfficientNetLite0 => bail!(
            "{}: int8 weights for efficientnet-lite0 are not made yet (it runs at f32)",
            spec.name
        ),
        Architecture::Head => bail!(
            "model {:?} is a head on {:?}: quantize the backbone (the head stays f32)",
            spec.name,
            spec.backbone.as_ref().map_or("?", |b| b.name.as_str())
        ),
    }
}

/// The ResNet-50 compiled at int8 from its int8 file, or from its f32 weights quantized
/// now: the plan takes the stored i8 kernels as they are (no f32 copy of them is made).
pub fn resnet_int8_plan(resnet: &Backbone, classes: usize) -> Result<ResNetPlan> {
    let (weights, path) = match &resnet.int8 {
        Some(file) => {
            let weights = load_checked(file, "resnet50", &resnet.sha256)?;
            let variant = weights.require("variant")?;
            ensure!(
                variant == variant_name(resnet.variant),
                "{} holds a ResNet-50 {variant}, the manifest says {}",
                file.path.display(),
                variant_name(resnet.variant)
            );
            (weights, &file.path)
        }
        None => (quantize_resnet(resnet, classes)?, &resnet.weights),
    };
    let config = resnet::Config::resnet50(resnet.variant, Some(classes));
    let structure = CheckedWeights::from_tensors(path, weights.with_conv_placeholders()?)
        .build(|vb| ResNet::new_folded(&config, vb))?;
    ResNetPlan::from_int8(structure, &weights)
        .with_context(|| format!("cannot plan the int8 weights {}", path.display()))
}

/// The small CNN's int8 plan, from its int8 file or quantized from f32 now.
pub fn small_cnn_int8_plan(spec: &ModelSpec) -> Result<SmallCnnPlan> {
    let (weights, path) = match &spec.int8 {
        Some(file) => (load_checked(file, "small-cnn", &spec.sha256)?, &file.path),
        None => (
            quantize_small_cnn(&spec.weights, spec.expected())?,
            &spec.weights,
        ),
    };
    let structure = CheckedWeights::from_tensors(path, weights.with_conv_placeholders()?)
        .build(|vb| SmallCnn::with_input(spec.input.size as usize, vb))?;
    SmallCnnPlan::from_int8(&structure, &weights)
        .with_context(|| format!("cannot plan the int8 weights {}", path.display()))
}

/// BatchNorm folded first, so the quantized kernels are the ones the plan multiplies by.
/// The stem stays f32: it reads signed pixels, so the plan runs it in f32 anyway, and
/// rounding its kernels alone cost 0.8 points of top-1 agreement with f32 (37 KB).
fn quantize_resnet(resnet: &Backbone, classes: usize) -> Result<Int8Weights> {
    let config = resnet::Config::resnet50(resnet.variant, Some(classes));
    let network = CheckedWeights::load(&resnet.weights, resnet.expected())?
        .build(|vb| ResNet::new(&config, vb))?
        .fold_batch_norm()?;
    let mut metadata = source_metadata("resnet50", &resnet.weights, &resnet.sha256);
    metadata.insert("variant".into(), variant_name(resnet.variant).into());
    metadata.insert("batch_norm".into(), "folded into the convolutions".into());
    Int8Weights::quantize(
        network.folded_tensors()?,
        ChannelAxis::First,
        &[STEM_WEIGHT],
        metadata,
    )
}

/// The CNN's Keras-layout kernels have their output channels last.
fn quantize_small_cnn(weights: &Path, expected: Expected) -> Result<Int8Weights> {
    let tensors = CheckedWeights::load(weights, expected)?.into_tensors();
    let metadata = source_metadata("small-cnn", weights, expected.sha256);
    Int8Weights::quantize(tensors, ChannelAxis::Last, &[], metadata)
}

fn source_metadata(architecture: &str, weights: &Path, sha256: &str) -> BTreeMap<String, String> {
    let file_name = weights
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    BTreeMap::from([
        ("architecture".into(), architecture.into()),
        ("source".into(), file_name),
        ("source_sha256".into(), sha256.into()),
    ])
}

/// Reads an int8 file and checks that it is this architecture, made from these f32
/// weights (a retrained model whose int8 file was not remade would otherwise serve the
/// old network).
fn load_checked(file: &WeightsFile, architecture: &str, f32_sha256: &str) -> Result<Int8Weights> {
    let weights = Int8Weights::load(&file.path, file.expected())?;
    let context = || format!("the int8 weights file {}", file.path.display());
    let found = weights.require("architecture").with_context(context)?;
    ensure!(
        found == architecture,
        "{} holds a {found}, the manifest says {architecture}",
        context()
    );
    let source = weights.require("source_sha256").with_context(context)?;
    ensure!(
        source.eq_ignore_ascii_case(f32_sha256),
        "{} was made from weights with sha256 {source}, not from the manifest's f32 weights \
         ({f32_sha256}): run `classify quantize` again",
        context()
    );
    Ok(weights)
}

/// The first convolution of a ResNet (torchvision's name).
const STEM_WEIGHT: &str = "conv1.weight";

fn variant_name(variant: resnet::Variant) -> &'static str {
    match variant {
        resnet::Variant::V1 => "v1",
        resnet::Variant::V1_5 => "v1.5",
    }
}
