//! Transfer learning for any set of classes: the frozen backbone's pooled features and
//! ImageNet log-probabilities of every photo ([`BackbonePlan::head_features`]),
//! extracted once and cached on disk (keyed by the photos' and the backbone's hashes,
//! its precision and the preprocessing), then a softmax head with class-balanced loss
//! trained on them in seconds.

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
use super::data::Sample;
use super::record::{self, DataRecord, EpochRecord, TestRecord, TrainRecord};
use super::{cosine_learning_rate, plot, progress_bar, TrainOptions};
use crate::classifier::load_backbone;
use crate::kernels::Threads;
use crate::labels::Labels;
use crate::manifest::{Architecture, Backbone};
use crate::plan::BackbonePlan;
use crate::plan::Precision;
use crate::preprocess;

/// Bump when the way features are computed changes, so old caches are not reused.
const FEATURE_FORMAT: &str = "pooled-and-imagenet-log-probabilities-v4";
/// The decoupled L2 penalties tried (per step, times the learning rate), weakest first;
/// val chooses.
const WEIGHT_DECAYS: [f64; 4] = [1e-4, 1e-2, 1.0, 10.0];

/// The best epoch so far (1-based), its validation mean recall and a copy of its weights.
type Best = (usize, f64, Vec<(String, Tensor)>);

/// Features and class-index targets (as f32) of one split.
struct Split {
    features: Tensor,
    targets: Tensor,
}

impl Split {
    fn classes(&self) -> Result<Vec<usize>> {
        Ok(self
            .targets
            .to_vec1::<f32>()?
            .into_iter()
            .map(|t| t as usize)
            .collect())
    }
}

/// What a head is trained for: its classes, the frozen backbone and how photos become
/// its input.
pub struct HeadTask<'a> {
    pub name: &'a str,
    pub labels: &'a Labels,
    pub backbone: &'a Backbone,
    pub input: &'a preprocess::InputSpec,
    /// The backbone's precision when extracting (a head runs at its backbone's).
    pub precision: Precision,
}

/// Trains a softmax head for `task` and writes the weights (`head.weight` `[classes,
/// features]`, `head.bias`), record and plot beside `options.out`.
pub fn train(task: &HeadTask, options: &TrainOptions) -> Result<TrainRecord> {
    let started = Instant::now();
    let classes = task.labels.len();
    let splits = super::load_splits(options, task.labels)?;
    let mut data_record = DataRecord::of(&options.data, &splits, task.labels)?;

    let key = cache_key(&data_record, task);
    let cache_file = options
        .cache_dir
        .join(format!("features-{}.safetensors", &key[..32]));
    let feature_started = Instant::now();
    let (train, val, test, extracted) = match read_cache(&cache_file) {
        Some([train, val, test]) => {
            tracing::info!(file = %cache_file.display(), "features from the cache");
            (train, val, test, false)
        }
        None => {
            let backbone = load_backbone(task.backbone, task.precision)?;
            let mut extract = |samples: &[Sample], what: &str| -> Result<Split> {
                let (split, failed) = extract(&backbone, samples, task.input, what)?;
                data_record.skipped.extend(failed);
                Ok(split)
            };
            let train = extract(&splits.train, "train features")?;
            let val = extract(&splits.val, "val features")?;
            let test = extract(&splits.test, "test features")?;
            write_cache(&cache_file, [&train, &val, &test])?;
            (train, val, test, true)
        }
    };
    let feature_seconds = if extracted {
        feature_started.elapsed().as_secs_f64()
    } else {
        0.0
    };
    for split in [&train, &val] {
        if split.features.dim(0)? == 0 {
            bail!("no photo of the train or val split could be read");
        }
    }
    // The L2 strength is chosen on val (never on test): a head on a few hundred photos
    // of a broad class ("other") generalises better held close to zero.
    let class_weights = balanced_class_weights(&train.classes()?, classes)?;
    let mut fits = Vec::with_capacity(WEIGHT_DECAYS.len());
    for weight_decay in WEIGHT_DECAYS {
        let fit = fit(&train, &val, &class_weights, options, weight_decay)?;
        tracing::info!(
            weight_decay,
            best_epoch = fit.best_epoch,
            val_mean_recall = fit.val_mean_recall,
            "head fitted"
        );
        fits.push(fit);
    }
    // The best val mean recall; ties go to the stronger decay (listed last).
    let Fit {
        best_epoch,
        tensors,
        history,
        weight_decay,
        ..
    } = fits
        .into_iter()
        .reduce(|best, fit| {
            if fit.val_mean_recall >= best.val_mean_recall {
                fit
            } else {
                best
            }
        })
        .context("no weight decay to try")?;
    crate::files::write_with(&options.out, |partial| {
        Ok(candle_core::safetensors::save(&tensors, partial)?)
    })?;
    let test = if test.features.dim(0)? == 0 {
        None
    } else {
        let kept = candle_nn::Linear::new(
            tensors["head.weight"].clone(),
            Some(tensors["head.bias"].clone()),
        );
        let predicted = predicted_classes(&kept.forward(&test.features)?)?;
        Some(TestRecord::score(&predicted, &test.classes()?, classes))
    };
    let chosen = &history[best_epoch - 1];
    eprintln!(
        "head: best epoch {best_epoch}/{}: train acc {:.4}, val acc {:.4} (val loss {:.4}){}; features {:.0} s",
        history.len(),
        chosen.train_accuracy,
        chosen.val_accuracy,
        chosen.val_loss,
        test.as_ref().map_or(String::new(), |t| format!(
            ", test acc {:.4} ({} photos never used to choose)",
            t.accuracy, t.images
        )),
        feature_seconds
    );
    let record = TrainRecord {
        model: task.name.to_string(),
        architecture: Architecture::Head.name().into(),
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
        test,
        weight_decay: Some(weight_decay),
        weight_average: None,
        dropout: None,
        flip_average: false,
        backbone_sha256: Some(task.backbone.sha256.clone()),
        weights_sha256: crate::weights::file_sha256(&options.out)?,
        seconds: started.elapsed().as_secs_f64(),
        feature_seconds: Some(feature_seconds),
        threads: rayon::current_num_threads(),
        history,
    };
    record.save(&options.beside("json"))?;
    plot::learning_curves(
        &record.history,
        &format!(
            "{}: {classes}-class softmax head on frozen {} features",
            task.name, task.backbone.name
        ),
        &options.beside("png"),
    )?;
    Ok(record)
}

/// One head trained with one weight decay: its kept epoch and weights.
struct Fit {
    weight_decay: f64,
    best_epoch: usize,
    val_mean_recall: f64,
    tensors: std::collections::HashMap<String, Tensor>,
    history: Vec<EpochRecord>,
}

/// Trains a head from zero on `train` (Adam, cosine schedule, class-balanced loss) and
/// keeps the epoch with the best val mean recall; stops after `patience` epochs
/// without a better one.
fn fit(
    train: &Split,
    val: &Split,
    class_weights: &Tensor,
    options: &TrainOptions,
    weight_decay: f64,
) -> Result<Fit> {
    let classes = class_weights.dim(0)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let head = candle_nn::linear(train.features.dim(D::Minus1)?, classes, vb.pp("head"))?;
    for var in varmap.all_vars() {
        var.set(&var.zeros_like()?)?;
    }
    let mut adam = Adam::from_varmap(
        &varmap,
        AdamConfig {
            weight_decay,
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
            let loss = weighted_cross_entropy(&head.forward(&features)?, &targets, class_weights)?;
            adam.step(&loss.backward()?, learning_rate)?;
        }
        let (train_loss, train_accuracy, _) = measure(&head, train, class_weights)?;
        let (val_loss, val_accuracy, val_mean_recall) = measure(&head, val, class_weights)?;
        history.push(EpochRecord {
            epoch: epoch + 1,
            learning_rate,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            val_mean_recall: Some(val_mean_recall),
            seconds: epoch_started.elapsed().as_secs_f64(),
        });
        // Chosen by the mean recall, so a small class counts; ties go to the lower loss.
        let better = best.as_ref().is_none_or(|(at, recall, _)| {
            val_mean_recall > *recall
                || (val_mean_recall == *recall && val_loss < history[*at - 1].val_loss)
        });
        if better {
            let snapshot = varmap
                .data()
                .lock()
                .expect("no panics under the lock")
                .iter()
                .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?)))
                .collect::<candle_core::Result<_>>()?;
            best = Some((epoch + 1, val_mean_recall, snapshot));
        } else if epoch + 1 - best.as_ref().map_or(0, |b| b.0) >= options.patience {
            break;
        }
    }
    let (best_epoch, val_mean_recall, weights) = best.context("no epoch ran (--epochs 0?)")?;
    Ok(Fit {
        weight_decay,
        best_epoch,
        val_mean_recall,
        tensors: weights.into_iter().collect(),
        history,
    })
}

/// Per-class loss weights `n / (classes * count)`: every class weighs the same in the
/// loss however many photos it has (e.g. a small "other" class beside big ones).
fn balanced_class_weights(targets: &[usize], classes: usize) -> Result<Tensor> {
    let mut counts = vec![0usize; classes];
    for &t in targets {
        counts[t] += 1;
    }
    let n = targets.len() as f32;
    let weights: Vec<f32> = counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                n / (classes as f32 * c as f32)
            }
        })
        .collect();
    Ok(Tensor::new(weights, &Device::Cpu)?)
}

/// Softmax cross-entropy, each row weighted by its class's weight.
fn weighted_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    class_weights: &Tensor,
) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?;
    let log_probabilities = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_probabilities
        .gather(&targets.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let weights = class_weights.index_select(&targets, 0)?;
    Ok(((picked * &weights)?.sum_all()? / weights.sum_all()?.to_scalar::<f32>()? as f64)?.neg()?)
}

/// Weighted loss, plain accuracy and mean per-class recall of the head over a split.
fn measure(
    head: &candle_nn::Linear,
    split: &Split,
    class_weights: &Tensor,
) -> Result<(f64, f64, f64)> {
    let classes = class_weights.dim(0)?;
    let logits = head.forward(&split.features)?;
    let loss =
        weighted_cross_entropy(&logits, &split.targets, class_weights)?.to_scalar::<f32>()?;
    let score = TestRecord::score(&predicted_classes(&logits)?, &split.classes()?, classes);
    let present: Vec<f64> = score
        .recall
        .iter()
        .zip(&score.counts)
        .filter(|(_, &n)| n > 0)
        .map(|(&r, _)| r)
        .collect();
    let mean_recall = present.iter().sum::<f64>() / present.len().max(1) as f64;
    Ok((f64::from(loss), score.accuracy, mean_recall))
}

/// The class of each row of `logits`: its largest output.
fn predicted_classes(logits: &Tensor) -> Result<Vec<usize>> {
    let classes = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(classes.into_iter().map(|c| c as usize).collect())
}

/// What the cached features depend on: the photos, the backbone, its precision and the
/// preprocessing.
fn cache_key(data: &DataRecord, task: &HeadTask) -> String {
    let mut hasher = Sha256::new();
    for part in [
        FEATURE_FORMAT,
        &data.train_sha256,
        &data.val_sha256,
        &data.test_sha256,
        &task.backbone.sha256,
        task.precision.name(),
        &format!("{:?}", task.input),
    ] {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Pooled features of every sample, preprocessed exactly as serving does; photos that
/// do not decode are left out and returned as `path: reason`.
fn extract(
    backbone: &BackbonePlan,
    samples: &[Sample],
    input: &preprocess::InputSpec,
    what: &str,
) -> Result<(Split, Vec<String>)> {
    let bar = progress_bar(samples.len(), what.to_string());
    let threads = Threads(std::thread::available_parallelism().map_or(1, usize::from));
    let mut features = Vec::with_capacity(samples.len() * backbone.head_feature_dim());
    let (mut targets, mut failed) = (Vec::new(), Vec::new());
    for sample in samples {
        let prepared = std::fs::read(&sample.path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| {
                Ok(preprocess::prepare(
                    &bytes,
                    input,
                    None,
                    preprocess::DEFAULT_MAX_PIXELS,
                )?)
            });
        bar.inc(1);
        let input = match prepared {
            Ok(input) => input,
            Err(error) => {
                tracing::warn!("skipped {}: {error:#}", sample.path.display());
                failed.push(format!("{}: {error:#}", sample.path.display()));
                continue;
            }
        };
        let (_, height, width) = input.dims3()?;
        let chw = input.flatten_all()?.to_vec1::<f32>()?;
        features.extend(backbone.head_features(&chw, height, width, threads));
        targets.push(sample.class as f32);
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
    let rows = targets.len();
    Ok((
        Split {
            features: Tensor::from_vec(
                features,
                (rows, backbone.head_feature_dim()),
                &Device::Cpu,
            )?,
            targets: Tensor::from_vec(targets, rows, &Device::Cpu)?,
        },
        failed,
    ))
}

const SPLIT_NAMES: [&str; 3] = ["train", "val", "test"];

fn read_cache(path: &Path) -> Option<[Split; 3]> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
    let mut take = |split: &str| {
        Some(Split {
            features: tensors.remove(&format!("{split}.features"))?,
            targets: tensors.remove(&format!("{split}.targets"))?,
        })
    };
    let [train, val, test] = SPLIT_NAMES;
    Some([take(train)?, take(val)?, take(test)?])
}

fn write_cache(path: &Path, splits: [&Split; 3]) -> Result<()> {
    let folder = path.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create the feature cache {}", folder.display()))?;
    let mut tensors = std::collections::HashMap::new();
    for (name, split) in SPLIT_NAMES.iter().zip(splits) {
        tensors.insert(format!("{name}.features"), split.features.clone());
        tensors.insert(format!("{name}.targets"), split.targets.clone());
    }
    crate::files::write_with(path, |partial| {
        Ok(candle_core::safetensors::save(&tensors, partial)?)
    })
    .context("cannot write the feature cache")
}
