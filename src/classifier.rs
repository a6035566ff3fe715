//! A loaded model ready to answer: network, labels and input specification, built once
//! from a manifest entry and shared read-only by every request.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, D};

use crate::kernels::Threads;
use crate::labels::Labels;
use crate::manifest::{Architecture, Backbone, ModelSpec, WeightsFile};
use crate::models::efficientnet_lite::EfficientNetLite;
use crate::models::resnet::{self, ResNet};
use crate::models::small_cnn::SmallCnn;
use crate::plan::efficientnet_lite::EfficientNetLitePlan;
use crate::plan::{self, resnet::ResNetPlan, small_cnn::SmallCnnPlan, BackbonePlan, Precision};
use crate::predictions::{top_k, Prediction, DEFAULT_TOP};
use crate::preprocess::{self, PreprocessError, ResizeMode};
use crate::quantize;
use crate::weights::{CheckedWeights, Expected};

/// The network behind a model, compiled for inference.
#[derive(Debug)]
enum Network {
    ResNet(Arc<ResNetPlan>),
    SmallCnn(Box<SmallCnnPlan>),
    EfficientNet(Arc<EfficientNetLitePlan>),
    /// A softmax head on a shared backbone's [`BackbonePlan::head_features`]: `weight` is
    /// `[classes, features]`, row-major.
    Head {
        backbone: BackbonePlan,
        weight: Vec<f32>,
        bias: Vec<f32>,
    },
}

/// ResNets already compiled, by weights hash, classes and precision: a head and the
/// ResNet-50 it sits on share one copy.
type ResNetKey = (String, usize, Precision);
static RESNETS: Mutex<Vec<(ResNetKey, Weak<ResNetPlan>)>> = Mutex::new(Vec::new());

/// The compiled ResNet-50 of a weights file, shared with every model that loaded it
/// before and still holds it.
fn shared_resnet(
    resnet: &Backbone,
    classes: usize,
    precision: Precision,
) -> Result<Arc<ResNetPlan>> {
    // Keyed by the file the weights come from: an int8 file, or the f32 file.
    let source = match (&resnet.int8, precision) {
        (Some(file), Precision::Int8) => &file.sha256,
        _ => &resnet.sha256,
    };
    let key = (source.clone(), classes, precision);
    cached(&RESNETS, key, || {
        Ok(match precision {
            Precision::F32 => {
                let config = resnet::Config::resnet50(resnet.variant, Some(classes));
                // The plan folds each BatchNorm as it lays its layer out.
                let network = f32_weights(&resnet.weights, resnet.expected(), &resnet.int8)?
                    .build(|vb| ResNet::new(&config, vb))?;
                ResNetPlan::new(network, precision)?
            }
            Precision::Int8 => quantize::resnet_int8_plan(resnet, classes)?,
        })
    })
}

/// EfficientNet-Lite0 plans already compiled, by weights hash and classes (f32 only).
type LiteKey = (String, usize);
static LITES: Mutex<Vec<(LiteKey, Weak<EfficientNetLitePlan>)>> = Mutex::new(Vec::new());

/// The compiled EfficientNet-Lite0 of a weights file, shared like [`shared_resnet`]'s.
fn shared_lite(network: &Backbone, classes: usize) -> Result<Arc<EfficientNetLitePlan>> {
    cached(&LITES, (network.sha256.clone(), classes), || {
        let module = CheckedWeights::load(&network.weights, network.expected())?
            .build(|vb| EfficientNetLite::lite0(classes, vb))?;
        EfficientNetLitePlan::new(&module)
    })
}

/// The plan `cache` holds for `key` while some model still uses it, else a new one from
/// `build`, kept for the next caller.
fn cached<K: PartialEq, T>(
    cache: &Mutex<Vec<(K, Weak<T>)>>,
    key: K,
    build: impl FnOnce() -> Result<T>,
) -> Result<Arc<T>> {
    let mut cache = cache.lock().expect("no panics under the lock");
    cache.retain(|(_, plan)| plan.strong_count() > 0);
    if let Some(plan) = cache
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, p)| p.upgrade())
    {
        return Ok(plan);
    }
    let plan = Arc::new(build()?);
    cache.push((key, Arc::downgrade(&plan)));
    Ok(plan)
}

/// A model's f32 weights; when only its int8 file is installed (the ARM images), the
/// error says so.
fn f32_weights(
    path: &Path,
    expected: Expected,
    int8: &Option<WeightsFile>,
) -> Result<CheckedWeights> {
    let loaded = CheckedWeights::load(path, expected);
    match int8 {
        Some(file) if !path.exists() && file.path.exists() => loaded
            .context("only the int8 weights of this model are installed: use --precision int8"),
        _ => loaded,
    }
}

/// The network a transfer head sits on, with its ImageNet classifier (whose
/// log-probabilities the head reads beside the pooled features). EfficientNet-Lite0 runs
/// at f32 whatever `precision` says (it has no int8 path yet).
pub fn load_backbone(backbone: &Backbone, precision: Precision) -> Result<BackbonePlan> {
    let plan = match backbone.architecture {
        Architecture::EfficientNetLite0 => {
            shared_lite(backbone, IMAGENET_CLASSES).map(BackbonePlan::EfficientNet)
        }
        _ => shared_resnet(backbone, IMAGENET_CLASSES, precision).map(BackbonePlan::ResNet),
    };
    plan.with_context(|| format!("cannot load the backbone {:?}", backbone.name))
}

/// The outputs of the ImageNet networks every backbone was trained with.
const IMAGENET_CLASSES: usize = 1000;

/// Per-request choices.
#[derive(Debug, Clone, Copy)]
pub struct ClassifyOptions {
    /// Replaces the manifest's spatial transform.
    pub resize: Option<ResizeMode>,
    /// How many predictions to return.
    pub top: usize,
    /// Refuse images with more pixels than this (checked from the header).
    pub max_pixels: u64,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        Self {
            resize: None,
            top: DEFAULT_TOP,
            max_pixels: preprocess::DEFAULT_MAX_PIXELS,
        }
    }
}

/// Why an image got no predictions.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// The input is at fault.
    #[error(transparent)]
    Input(#[from] PreprocessError),
    /// We are: the network failed on a valid input.
    #[error("inference failed: {0:#}")]
    Inference(anyhow::Error),
}

#[derive(Debug)]
pub struct Classifier {
    spec: ModelSpec,
    network: Network,
    labels: Labels,
    load_seconds: f64,
    precision: Precision,
    /// Threads one forward pass may use.
    threads: AtomicUsize,
}

impl Classifier {
    /// Loads the weights and labels a manifest entry names, checking hash, tensor names
    /// and shapes, and that the labels match the network's outputs.
    pub fn load(spec: &ModelSpec) -> Result<Self> {
        Self::load_with(spec, Precision::F32)
    }

    /// Loads a model at a precision (int8 reads the model's int8 file, or quantizes the
    /// f32 weights at load when the manifest names none).
    pub fn load_with(spec: &ModelSpec, precision: Precision) -> Result<Self> {
        let started = Instant::now();
        let asked = precision;
        let precision = spec.runs_at(asked);
        if precision != asked {
            tracing::warn!(model = %spec.name, "efficientnet-lite0 has no int8 path yet: it runs at f32");
        }
        let load = || -> Result<Self> {
            let labels = Labels::load(&spec.labels)?;
            let network = match spec.architecture {
                Architecture::Resnet50 => {
                    Network::ResNet(shared_resnet(&spec.as_backbone(), labels.len(), precision)?)
                }
                Architecture::SmallCnn => {
                    check_binary(&labels)?;
                    Network::SmallCnn(Box::new(match precision {
                        Precision::F32 => {
                            let network = f32_weights(&spec.weights, spec.expected(), &spec.int8)?
                                .build(|vb| SmallCnn::with_input(spec.input.size as usize, vb))?;
                            SmallCnnPlan::new(&network)?
                        }
                        Precision::Int8 => quantize::small_cnn_int8_plan(spec)?,
                    }))
                }
                Architecture::EfficientNetLite0 => {
                    Network::EfficientNet(shared_lite(&spec.as_backbone(), labels.len())?)
                }
                Architecture::Head => {
                    let backbone = spec
                        .backbone
                        .as_ref()
                        .context("a head model without a backbone")?;
                    let backbone = load_backbone(backbone, precision)?;
                    let weights = CheckedWeights::load(&spec.weights, spec.expected())?;
                    // Shapes are checked against the labels: one output per class.
                    let head = weights.build(|vb| {
                        candle_nn::linear(backbone.head_feature_dim(), labels.len(), vb.pp("head"))
                    })?;
                    Network::Head {
                        weight: head.weight().flatten_all()?.to_vec1()?,
                        bias: head.bias().context("a head with a bias")?.to_vec1()?,
                        backbone,
                    }
                }
            };
            Ok(Self {
                spec: spec.clone(),
                network,
                labels,
                load_seconds: 0.0,
                precision,
                threads: AtomicUsize::new(default_threads()),
            })
        };
        let mut classifier =
            load().with_context(|| format!("cannot load the model {:?}", spec.name))?;
        classifier.load_seconds = started.elapsed().as_secs_f64();
        tracing::info!(model = %spec.name, precision = precision.name(), seconds = classifier.load_seconds, "model loaded");
        Ok(classifier)
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Threads each forward pass uses (default: every core).
    pub fn threads(&self) -> Threads {
        Threads(self.threads.load(Ordering::Relaxed))
    }

    pub fn set_threads(&self, threads: usize) {
        self.threads.store(threads.max(1), Ordering::Relaxed);
    }

    /// Frees buffers kept for the next forward pass (call when idle).
    pub fn release_memory(&self) {
        match &self.network {
            Network::ResNet(net) => net.release_memory(),
            Network::Head { backbone, .. } => backbone.release_memory(),
            Network::SmallCnn(net) => net.release_memory(),
            Network::EfficientNet(net) => net.release_memory(),
        }
    }

    /// Seconds it took to read, verify and build the model.
    pub fn load_seconds(&self) -> f64 {
        self.load_seconds
    }

    /// Raw network outputs for a preprocessed batch `[n, 3, size, size]`.
    pub fn logits(&self, batch: &Tensor) -> Result<Tensor> {
        let size = self.spec.input.size as usize;
        match batch.dims() {
            [_, 3, h, w] if *h == size && *w == size => {}
            dims => bail!(
                "model {:?} takes [n, 3, {size}, {size}] inputs, got {dims:?}",
                self.spec.name
            ),
        }
        let threads = self.threads();
        let (images, _, height, width) = batch.dims4()?;
        // The images as the batch holds them (no copy when it is contiguous f32).
        let logits = plan::with_f32_values(batch, |values| {
            let mut logits = Vec::new();
            for image in values.chunks_exact(3 * height * width) {
                let mut row = self.image_logits(image, height, width, threads)?;
                if self.spec.flip_average {
                    let mirrored = preprocess::mirrored(image, height, width);
                    let other = self.image_logits(&mirrored, height, width, threads)?;
                    for (logit, other) in row.iter_mut().zip(other) {
                        *logit = (*logit + other) / 2.0;
                    }
                }
                logits.extend(row);
            }
            anyhow::Ok(logits)
        })??;
        let outputs = logits.len() / images.max(1);
        Ok(Tensor::from_vec(logits, (images, outputs), batch.device())?)
    }

    /// The network's outputs for one preprocessed image (`[3, height, width]` values).
    fn image_logits(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        threads: Threads,
    ) -> Result<Vec<f32>> {
        Ok(match &self.network {
            Network::ResNet(net) => net.forward(image, height, width, threads),
            Network::Head {
                backbone,
                weight,
                bias,
            } => {
                let features = backbone.head_features(image, height, width, threads);
                weight
                    .chunks_exact(features.len())
                    .zip(bias)
                    .map(|(row, b)| b + row.iter().zip(&features).map(|(w, f)| w * f).sum::<f32>())
                    .collect()
            }
            Network::SmallCnn(net) => vec![0.0, net.forward(image, height, width, threads)],
            Network::EfficientNet(net) => net.forward(image, height, width, threads),
        })
    }

    /// Class probabilities for a preprocessed batch, `[n, classes]`.
    pub fn probabilities(&self, batch: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(&self.logits(batch)?, D::Minus1)?)
    }

    /// Class probabilities, one row per preprocessed `[3, size, size]` image, computed
    /// in one forward pass.
    pub fn probability_rows(&self, inputs: &[Tensor]) -> Result<Vec<Vec<f32>>> {
        let batch = Tensor::stack(inputs, 0)?;
        Ok(self.probabilities(&batch)?.to_vec2()?)
    }

    /// Decodes, preprocesses and classifies one encoded image.
    pub fn classify_bytes(
        &self,
        bytes: &[u8],
        options: &ClassifyOptions,
    ) -> Result<Vec<Prediction>, ClassifyError> {
        let input =
            preprocess::prepare(bytes, &self.spec.input, options.resize, options.max_pixels)?;
        self.classify_tensor(&input, options.top)
            .map_err(ClassifyError::Inference)
    }

    /// Classifies one preprocessed `[3, size, size]` image.
    pub fn classify_tensor(&self, input: &Tensor, top: usize) -> Result<Vec<Prediction>> {
        let rows = self.probability_rows(std::slice::from_ref(input))?;
        Ok(top_k(&rows[0], &self.labels, top))
    }
}

fn check_binary(labels: &Labels) -> Result<()> {
    if labels.len() != 2 {
        bail!(
            "a binary model needs two labels (class 0, class 1), got {}",
            labels.len()
        );
    }
    Ok(())
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
