//! Transfer learning: the frozen ResNet-50's pooled 2048-d features of every photo,
//! extracted once and cached on disk (keyed by the photos' and the backbone's hashes and
//! the preprocessing), then a logistic-regression head trained on them in seconds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::adam::{Adam, AdamConfig};
use super::data::{self, Sample};
use super::record::{self, DataRecord, EpochRecord, TrainRecord};
use super::{cosine_learning_rate, plot, progress_bar, TrainOptions};
use crate::classifier::load_backbone;
use crate::kernels::Threads;
use crate::labels::Labels;
use crate::manifest::ModelSpec;
use crate::models::layers::binary_cross_entropy_with_logits;
use crate::plan::resnet::ResNetPlan;
use crate::plan::Precision;
use crate::preprocess;

/// Bump when the way features are computed changes, so old caches are not reused.
const FEATURE_FORMAT: &str = "pooled-f32-v1";
/// L2 penalty on the head's weights (decoupled, per step).
const WEIGHT_DECAY: f64 = 1e-4;

/// The best epoch so far (1-based), its validation accuracy and a copy of its weights.
type Best = (usize, f64, Vec<(String, Tensor)>);

/// Features and 0/1 targets of one split.
struct Split {
    features: Tensor,
    targets: Tensor,
}

/// Trains the head of `spec` (a `resnet50-head` model) and writes the weights, record and
/// plot beside `options.out`.
pub fn train(spec: &ModelSpec, options: &TrainOptions) -> Result<TrainRecord> {
    let started = Instant::now();
    let labels = Labels::load(&spec.labels)?;
    if labels.len() != 2 {
        bail!(
            "the head is binary; {} lists {} labels",
            spec.labels.display(),
            labels.len()
        );
    }
    let backbone_spec = spec
        .backbone
        .as_ref()
        .context("a resnet50-head without a backbone")?;
    let (train_samples, val_samples) = super::cnn::load_splits(options, &labels)?;
    let data_record = DataRecord {
        folder: options.data.display().to_string(),
        train_images: train_samples.len(),
        val_images: val_samples.len(),
        train_sha256: data::content_hash(&train_samples)?,
        val_sha256: data::content_hash(&val_samples)?,
    };

    let key = cache_key(&data_record, &backbone_spec.sha256, &spec.input);
    let cache_file = options
        .cache_dir
        .join(format!("features-{}.safetensors", &key[..32]));
    let feature_started = Instant::now();
    let (train, val, extracted) = match read_cache(&cache_file) {
        Some((train, val)) => {
            tracing::info!(file = %cache_file.display(), "features from the cache");
            (train, val, false)
        }
        None => {
            let backbone = load_backbone(backbone_spec, Precision::F32)?;
            let train = extract(&backbone, &train_samples, spec, "train features")?;
            let val = extract(&backbone, &val_samples, spec, "val features")?;
            write_cache(&cache_file, &train, &val)?;
            (train, val, true)
        }
    };
    let feature_seconds = if extracted {
        feature_started.elapsed().as_secs_f64()
    } else {
        0.0
    };

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let head = candle_nn::linear(train.features.dim(D::Minus1)?, 1, vb.pp("head"))?;
    for var in varmap.all_vars() {
        var.set(&var.zeros_like()?)?;
    }
    let mut adam = Adam::from_varmap(
        &varmap,
        AdamConfig {
            weight_decay: WEIGHT_DECAY,
            ..AdamConfig::default()
        },
    )?;

    let mut history: Vec<EpochRecord> = Vec::new();
    let mut best: Option<Best> = None;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let rows = train.features.dim(0)?;
    for epoch in 0..options.epochs {
        let epoch_started = Instant::now();
        let learning_rate = cosine_learning_rate(options.learning_rate, epoch, options.epochs);
        let mut order: Vec<u32> = (0..rows as u32).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(options.batch_size) {
            let index = Tensor::new(chunk, &Device::Cpu)?;
            let features = train.features.index_select(&index, 0)?;
            let targets = train.targets.index_select(&index, 0)?;
            let logits = head.forward(&features)?.squeeze(D::Minus1)?;
            let loss = binary_cross_entropy_with_logits(&logits, &targets)?;
            adam.step(&loss.backward()?, learning_rate)?;
        }
        let (train_loss, train_accuracy) = measure(&head, &train)?;
        let (val_loss, val_accuracy) = measure(&head, &val)?;
        history.push(EpochRecord {
            epoch: epoch + 1,
            learning_rate,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            seconds: epoch_started.elapsed().as_secs_f64(),
        });
        // Ties go to the lower validation loss.
        let better = best.as_ref().is_none_or(|(at, accuracy, _)| {
            val_accuracy > *accuracy
                || (val_accuracy == *accuracy && val_loss < history[*at - 1].val_loss)
        });
        if better {
            let snapshot = varmap
                .data()
                .lock()
                .expect("no panics under the lock")
                .iter()
                .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?)))
                .collect::<candle_core::Result<_>>()?;
            best = Some((epoch + 1, val_accuracy, snapshot));
        } else if epoch + 1 - best.as_ref().map_or(0, |b| b.0) >= options.patience {
            break;
        }
    }
    let (best_epoch, _, weights) = best.context("no epoch ran (--epochs 0?)")?;
    let tensors: std::collections::HashMap<String, Tensor> = weights.into_iter().collect();
    candle_core::safetensors::save(&tensors, &options.out)
        .with_context(|| format!("cannot write {}", options.out.display()))?;
    let chosen = &history[best_epoch - 1];
    eprintln!(
        "head: best epoch {best_epoch}/{}: train acc {:.4}, val acc {:.4} (val loss {:.4}); features {:.0} s",
        history.len(),
        chosen.train_accuracy,
        chosen.val_accuracy,
        chosen.val_loss,
        feature_seconds
    );
    let record = TrainRecord {
        model: spec.name.clone(),
        architecture: "resnet50-head".into(),
        command: record::command_line(),
        seed: options.seed,
        batch_size: options.batch_size,
        learning_rate: options.learning_rate,
        epochs_planned: options.epochs,
        epochs_run: history.len(),
        best_epoch,
        train_accuracy: chosen.train_accuracy,
        val_accuracy: chosen.val_accuracy,
        data: data_record,
        backbone_sha256: Some(backbone_spec.sha256.clone()),
        weights_sha256: crate::weights::file_sha256(&options.out)?,
        seconds: started.elapsed().as_secs_f64(),
        feature_seconds: Some(feature_seconds),
        threads: rayon::current_num_threads(),
        history,
    };
    record.save(&options.beside("json"))?;
    plot::learning_curves(
        &record.history,
        &format!("{}: logistic head on frozen ResNet-50 features", spec.name),
        &options.beside("png"),
    )?;
    Ok(record)
}

/// Loss and accuracy of the head over a whole split.
fn measure(head: &candle_nn::Linear, split: &Split) -> Result<(f64, f64)> {
    let logits = head.forward(&split.features)?.squeeze(D::Minus1)?;
    let loss = binary_cross_entropy_with_logits(&logits, &split.targets)?.to_scalar::<f32>()?;
    let predicted = logits.ge(0f32)?.to_dtype(DType::F32)?;
    let correct = predicted
        .eq(&split.targets)?
        .to_dtype(DType::F32)?
        .mean_all()?;
    Ok((f64::from(loss), f64::from(correct.to_scalar::<f32>()?)))
}

/// What the cached features depend on: the photos, the backbone and the preprocessing.
fn cache_key(data: &DataRecord, backbone_sha256: &str, input: &preprocess::InputSpec) -> String {
    let mut hasher = Sha256::new();
    for part in [
        FEATURE_FORMAT,
        &data.train_sha256,
        &data.val_sha256,
        backbone_sha256,
        &format!("{input:?}"),
    ] {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Pooled features of every sample, preprocessed exactly as serving does.
fn extract(
    backbone: &ResNetPlan,
    samples: &[Sample],
    spec: &ModelSpec,
    what: &str,
) -> Result<Split> {
    let bar = progress_bar(samples.len(), what.to_string());
    let threads = Threads(std::thread::available_parallelism().map_or(1, usize::from));
    let mut features = Vec::with_capacity(samples.len() * backbone.feature_dim());
    for sample in samples {
        let bytes = std::fs::read(&sample.path)
            .with_context(|| format!("cannot read {}", sample.path.display()))?;
        let input = preprocess::prepare(&bytes, &spec.input, None, preprocess::DEFAULT_MAX_PIXELS)
            .with_context(|| format!("cannot use {}", sample.path.display()))?;
        let (_, height, width) = input.dims3()?;
        let chw = input.flatten_all()?.to_vec1::<f32>()?;
        features.extend(backbone.features(&chw, height, width, threads));
        bar.inc(1);
        let done = bar.position() as usize;
        if done.is_multiple_of(500) || done == samples.len() {
            tracing::info!(
                done,
                of = samples.len(),
                seconds = bar.elapsed().as_secs_f64(),
                "{what}"
            );
        }
    }
    bar.finish_and_clear();
    let targets: Vec<f32> = samples.iter().map(|s| s.class as f32).collect();
    Ok(Split {
        features: Tensor::from_vec(
            features,
            (samples.len(), backbone.feature_dim()),
            &Device::Cpu,
        )?,
        targets: Tensor::from_vec(targets, samples.len(), &Device::Cpu)?,
    })
}

fn read_cache(path: &Path) -> Option<(Split, Split)> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
    let mut take = |name: &str| tensors.remove(name);
    Some((
        Split {
            features: take("train.features")?,
            targets: take("train.targets")?,
        },
        Split {
            features: take("val.features")?,
            targets: take("val.targets")?,
        },
    ))
}

fn write_cache(path: &Path, train: &Split, val: &Split) -> Result<()> {
    let folder = path.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create the feature cache {}", folder.display()))?;
    let tensors = std::collections::HashMap::from([
        ("train.features".to_string(), train.features.clone()),
        ("train.targets".to_string(), train.targets.clone()),
        ("val.features".to_string(), val.features.clone()),
        ("val.targets".to_string(), val.targets.clone()),
    ]);
    let partial = path.with_extension("partial");
    candle_core::safetensors::save(&tensors, &partial)?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("cannot write the feature cache {}", path.display()))
}
