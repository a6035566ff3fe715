//! Training the small CNN from scratch: augmented, shuffled mini-batches, Adam with a
//! cosine schedule, weight averaging, validation after every epoch (as the model serves:
//! with its mirror image when the manifest says `flip_average`), the best epoch's
//! weights kept, early stopping, and a checkpoint after every epoch that `--resume`
//! continues from.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::adam::{Adam, AdamConfig};
use super::average::WeightAverage;
use super::data::{self, Augmentation, DecodedImages};
use super::record::{self, DataRecord, EpochRecord, TestRecord, TrainRecord};
use super::{cosine_learning_rate, plot, progress_bar, TrainOptions};
use crate::manifest::ModelSpec;
use crate::models::layers::binary_cross_entropy_with_logits;
use crate::models::small_cnn::SmallCnn;
use crate::preprocess::InputSpec;

const EVAL_BATCH: usize = 64;

/// What the checkpoint's JSON half holds (the tensors are in its safetensors half).
#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    seed: u64,
    data: DataRecord,
    history: Vec<EpochRecord>,
    best_epoch: usize,
    best_val_accuracy: f64,
    seconds: f64,
    /// The averaging's decay (0: none) and steps so far.
    #[serde(default)]
    weight_average: f64,
    #[serde(default)]
    average_steps: u64,
    #[serde(default = "original_dropout")]
    dropout: f32,
}

fn original_dropout() -> f32 {
    crate::models::small_cnn::DROPOUT
}

/// Trains `spec` (a `small-cnn` model) as `options` say and writes the weights, record,
/// plot and checkpoint.
pub fn train(spec: &ModelSpec, options: &TrainOptions) -> Result<TrainRecord> {
    let started = Instant::now();
    let labels = crate::labels::Labels::load(&spec.labels)?;
    if labels.len() != 2 {
        bail!(
            "the small CNN is binary; {} lists {} labels",
            spec.labels.display(),
            labels.len()
        );
    }
    let splits = super::load_splits(options, &labels)?;
    let data_record = DataRecord::of(&options.data, &splits, &labels)?;
    tracing::info!(
        train = splits.train.len(),
        val = splits.val.len(),
        test = splits.test.len(),
        "decoding the photos"
    );
    let (train_samples, val_samples) = (&splits.train, &splits.val);
    let train_images = DecodedImages::decode(train_samples, &spec.input)?;
    let val_images = DecodedImages::decode(val_samples, &spec.input)?;

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let network = SmallCnn::with_input(spec.input.size as usize, vb)?;
    // Initial weights from the seed, not from candle's unseeded generator.
    reseed_initial_weights(&varmap, options.seed)?;
    let mut adam = Adam::from_varmap(&varmap, AdamConfig::default())?;
    let mut average = match options.weight_average {
        0.0 => None,
        decay => Some(WeightAverage::new(&varmap, decay)?),
    };
    let flip = spec.flip_average;

    let checkpoint_tensors = options.beside("checkpoint.safetensors");
    let checkpoint_json = options.beside("checkpoint.json");
    let mut progress = Progress {
        seed: options.seed,
        data: data_record.clone(),
        history: Vec::new(),
        best_epoch: 0,
        best_val_accuracy: -1.0,
        seconds: 0.0,
        weight_average: options.weight_average,
        average_steps: 0,
        dropout: options.dropout,
    };
    if options.resume {
        let text = std::fs::read_to_string(&checkpoint_json).with_context(|| {
            format!(
                "--resume: cannot read the checkpoint {}",
                checkpoint_json.display()
            )
        })?;
        let saved: Progress = serde_json::from_str(&text).with_context(|| {
            format!("the checkpoint {} is not valid", checkpoint_json.display())
        })?;
        if saved.seed != options.seed || saved.data != data_record {
            bail!(
                "--resume: the checkpoint {} was made with another seed or other data",
                checkpoint_json.display()
            );
        }
        if saved.weight_average != options.weight_average {
            bail!(
                "--resume: the checkpoint {} was made with --weight-average {}",
                checkpoint_json.display(),
                saved.weight_average
            );
        }
        if saved.dropout != options.dropout {
            bail!(
                "--resume: the checkpoint {} was made with --dropout {}",
                checkpoint_json.display(),
                saved.dropout
            );
        }
        let tensors = candle_core::safetensors::load(&checkpoint_tensors, &Device::Cpu)
            .with_context(|| format!("cannot read {}", checkpoint_tensors.display()))?;
        restore(&varmap, &mut adam, &tensors)?;
        if let Some(average) = &mut average {
            average.restore(&tensors, saved.average_steps)?;
        }
        tracing::info!(epochs = saved.history.len(), "resuming");
        progress = saved;
    }

    let mut epochs_without_gain = progress.history.len().saturating_sub(progress.best_epoch);
    let resumed_seconds = progress.seconds;
    let run_started = Instant::now();
    for epoch in progress.history.len()..options.epochs {
        if epochs_without_gain >= options.patience {
            tracing::info!(
                epoch,
                "validation accuracy stopped improving: stopping early"
            );
            break;
        }
        let epoch_started = Instant::now();
        let learning_rate = cosine_learning_rate(options.learning_rate, epoch, options.epochs);
        let epoch_seed = options.seed.wrapping_add(epoch as u64 * 1_000_003);
        let (train_loss, train_accuracy) = std::thread::scope(|scope| {
            let batches = data::epoch_batches(
                scope,
                &train_images,
                &spec.input,
                options.batch_size,
                &Augmentation::KERAS_LIKE,
                epoch_seed,
            );
            let mut dropout = ChaCha8Rng::seed_from_u64(epoch_seed ^ 0xD0);
            let bar = progress_bar(
                train_images.len(),
                format!("epoch {}/{}", epoch + 1, options.epochs),
            );
            let mut totals = Totals::default();
            for batch in batches {
                let batch = batch?;
                let logits = network.forward_train(&batch.inputs, options.dropout, &mut dropout)?;
                let loss = binary_cross_entropy_with_logits(&logits, &batch.targets)?;
                adam.step(&loss.backward()?, learning_rate)?;
                if let Some(average) = &mut average {
                    average.update()?;
                }
                totals.add(&logits, &batch.targets, &loss, batch.len)?;
                bar.inc(batch.len as u64);
                bar.set_message(format!(
                    "loss {:.4} acc {:.3} {:.0} img/s",
                    totals.loss(),
                    totals.accuracy(),
                    totals.count as f64 / epoch_started.elapsed().as_secs_f64()
                ));
            }
            bar.finish_and_clear();
            anyhow::Ok((totals.loss(), totals.accuracy()))
        })?;
        // Validated (and kept) are the averaged weights.
        if let Some(average) = &mut average {
            average.swap()?;
        }
        let (val_loss, val_accuracy) = evaluate(&network, &val_images, &spec.input, flip)?;
        let improved = val_accuracy > progress.best_val_accuracy;
        if improved {
            save_weights(&varmap, &options.out)?;
        }
        if let Some(average) = &mut average {
            average.swap()?;
        }
        let record = EpochRecord {
            epoch: epoch + 1,
            learning_rate,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            val_mean_recall: None,
            seconds: epoch_started.elapsed().as_secs_f64(),
        };
        eprintln!(
            "epoch {}/{}: lr {:.2e}  train loss {:.4} acc {:.4}  val loss {:.4} acc {:.4}  ({:.0} s, {:.1} img/s)",
            record.epoch,
            options.epochs,
            learning_rate,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            record.seconds,
            train_images.len() as f64 / record.seconds
        );
        progress.history.push(record);
        if improved {
            progress.best_val_accuracy = val_accuracy;
            progress.best_epoch = epoch + 1;
            epochs_without_gain = 0;
        } else {
            epochs_without_gain += 1;
        }
        progress.seconds = resumed_seconds + run_started.elapsed().as_secs_f64();
        progress.average_steps = average.as_ref().map_or(0, WeightAverage::steps);
        save_checkpoint(
            &varmap,
            &adam,
            average.as_ref(),
            &progress,
            &checkpoint_tensors,
            &checkpoint_json,
        )?;
    }
    if progress.best_epoch == 0 {
        bail!(
            "no epoch ran (--epochs {} already reached?)",
            options.epochs
        );
    }

    // The kept weights, once, on photos no choice looked at.
    let test = if splits.test.is_empty() {
        None
    } else {
        let mut varmap = varmap;
        varmap
            .load(&options.out)
            .with_context(|| format!("cannot reload {}", options.out.display()))?;
        let test_images = DecodedImages::decode(&splits.test, &spec.input)?;
        let predicted = predict_classes(&network, &test_images, &spec.input, flip)?;
        let test = TestRecord::score(&predicted, &test_images.classes, labels.len());
        // The other way of scoring, for the record of what flip averaging buys.
        let other = predict_classes(&network, &test_images, &spec.input, !flip)?;
        let other = TestRecord::score(&other, &test_images.classes, labels.len());
        eprintln!(
            "test split ({} photos, never used to choose): accuracy {:.4} ({} flip averaging: {:.4})",
            test.images,
            test.accuracy,
            if flip { "without" } else { "with" },
            other.accuracy
        );
        Some(test)
    };
    let best = &progress.history[progress.best_epoch - 1];
    let record = TrainRecord {
        model: spec.name.clone(),
        architecture: "small-cnn".into(),
        command: record::command_line(),
        seed: options.seed,
        batch_size: options.batch_size,
        learning_rate: options.learning_rate,
        epochs_planned: options.epochs,
        epochs_run: progress.history.len(),
        best_epoch: progress.best_epoch,
        train_accuracy: best.train_accuracy,
        val_accuracy: best.val_accuracy,
        data: data_record,
        test,
        weight_decay: None,
        weight_average: (options.weight_average > 0.0).then_some(options.weight_average),
        dropout: Some(options.dropout),
        flip_average: flip,
        backbone_sha256: None,
        weights_sha256: crate::weights::file_sha256(&options.out)?,
        seconds: resumed_seconds + run_started.elapsed().as_secs_f64(),
        feature_seconds: None,
        threads: rayon::current_num_threads(),
        history: progress.history.clone(),
    };
    record.save(&options.beside("json"))?;
    plot::learning_curves(
        &record.history,
        &format!("{}: small CNN trained from scratch", spec.name),
        &options.beside("png"),
    )?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "training finished"
    );
    Ok(record)
}

/// Replaces candle's (unseeded) initial values with Glorot-uniform draws from `seed`,
/// keeping each tensor's bound; biases stay zero.
fn reseed_initial_weights(varmap: &VarMap, seed: u64) -> Result<()> {
    use rand::Rng;
    let data = varmap.data().lock().expect("no panics under the lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        if name.ends_with("bias") {
            continue;
        }
        let dims = var.dims();
        let (fan_in, fan_out) = match dims {
            [3, 3, inputs, outputs] => (9 * inputs, 9 * outputs),
            [inputs, outputs] => (*inputs, *outputs),
            _ => bail!("unexpected parameter {name} {dims:?}"),
        };
        let bound = (6.0 / (fan_in + fan_out) as f32).sqrt();
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu)?)?;
    }
    Ok(())
}

/// Loss and accuracy sums over an epoch.
#[derive(Default)]
struct Totals {
    loss_sum: f64,
    correct: usize,
    count: usize,
}

impl Totals {
    fn add(&mut self, logits: &Tensor, targets: &Tensor, loss: &Tensor, len: usize) -> Result<()> {
        let predicted = logits.ge(0f32)?.to_dtype(DType::F32)?;
        let correct = predicted.eq(targets)?.to_dtype(DType::F32)?.sum_all()?;
        self.correct += correct.to_scalar::<f32>()? as usize;
        self.loss_sum += f64::from(loss.to_scalar::<f32>()?) * len as f64;
        self.count += len;
        Ok(())
    }

    fn loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.count.max(1) as f64
    }
}

/// The logits serving gives a batch: with `flip`, the mean of the image's and its mirror
/// image's (as `Classifier` does for `flip_average` models).
fn serving_logits(network: &SmallCnn, inputs: &Tensor, flip: bool) -> Result<Tensor> {
    let logits = network.forward(inputs)?;
    if !flip {
        return Ok(logits);
    }
    let mirrored = network.forward(&crate::preprocess::mirrored_batch(inputs)?)?;
    Ok(((logits + mirrored)? * 0.5)?)
}

/// Loss and accuracy over decoded images, unaugmented (as serving sees them).
fn evaluate(
    network: &SmallCnn,
    images: &DecodedImages,
    spec: &InputSpec,
    flip: bool,
) -> Result<(f64, f64)> {
    let mut totals = Totals::default();
    let indices: Vec<usize> = (0..images.len()).collect();
    for chunk in indices.chunks(EVAL_BATCH) {
        let batch = data::make_batch(images, chunk, spec, None)?;
        let logits = serving_logits(network, &batch.inputs, flip)?;
        let loss = binary_cross_entropy_with_logits(&logits, &batch.targets)?;
        totals.add(&logits, &batch.targets, &loss, batch.len)?;
    }
    Ok((totals.loss(), totals.accuracy()))
}

/// The class (0 or 1) the network gives each image, unaugmented.
fn predict_classes(
    network: &SmallCnn,
    images: &DecodedImages,
    spec: &InputSpec,
    flip: bool,
) -> Result<Vec<usize>> {
    let mut classes = Vec::with_capacity(images.len());
    let indices: Vec<usize> = (0..images.len()).collect();
    for chunk in indices.chunks(EVAL_BATCH) {
        let batch = data::make_batch(images, chunk, spec, None)?;
        let logits = serving_logits(network, &batch.inputs, flip)?.to_vec1::<f32>()?;
        classes.extend(logits.iter().map(|&z| usize::from(z >= 0.0)));
    }
    Ok(classes)
}

fn save_weights(varmap: &VarMap, path: &std::path::Path) -> Result<()> {
    // An interrupted save never leaves half a file.
    crate::files::write_with(path, |partial| Ok(varmap.save(partial)?))
}

fn save_checkpoint(
    varmap: &VarMap,
    adam: &Adam,
    average: Option<&WeightAverage>,
    progress: &Progress,
    tensors_path: &std::path::Path,
    json_path: &std::path::Path,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = adam.state()?;
    tensors.extend(average.map(WeightAverage::state).unwrap_or_default());
    for (name, var) in varmap
        .data()
        .lock()
        .expect("no panics under the lock")
        .iter()
    {
        tensors.insert(format!("model.{name}"), var.as_tensor().clone());
    }
    crate::files::write_with(tensors_path, |partial| {
        Ok(candle_core::safetensors::save(&tensors, partial)?)
    })
    .and_then(|()| {
        crate::files::write(
            json_path,
            serde_json::to_string_pretty(progress)?.as_bytes(),
        )
    })
    .context("cannot write the checkpoint")
}

fn restore(varmap: &VarMap, adam: &mut Adam, tensors: &HashMap<String, Tensor>) -> Result<()> {
    for (name, var) in varmap
        .data()
        .lock()
        .expect("no panics under the lock")
        .iter()
    {
        let saved = tensors
            .get(&format!("model.{name}"))
            .with_context(|| format!("the checkpoint lacks model.{name}"))?;
        var.set(saved)
            .with_context(|| format!("restoring {name}"))?;
    }
    adam.restore(tensors)?;
    Ok(())
}
