//! The JSON record a training run leaves beside its weights: what was trained on what,
//! with which settings, how long it took and how each epoch went.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{data, Splits};
use crate::labels::Labels;

/// One epoch's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// The mean of the classes' recalls on val, which chooses a head's epoch: every
    /// class counts the same, however few photos it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_mean_recall: Option<f64>,
    pub seconds: f64,
}

/// The data a run saw, identified by content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataRecord {
    pub folder: String,
    /// The classes, in the order of the model's outputs.
    #[serde(default)]
    pub classes: Vec<String>,
    pub train_images: usize,
    pub val_images: usize,
    /// The held-out test split: never used to choose anything.
    #[serde(default)]
    pub test_images: usize,
    pub train_sha256: String,
    pub val_sha256: String,
    #[serde(default)]
    pub test_sha256: String,
    /// Files of the class folders that were not images (`path: reason`).
    #[serde(default)]
    pub skipped: Vec<String>,
}

impl DataRecord {
    /// What `splits` of `folder` hold, hashed by content.
    pub fn of(folder: &Path, splits: &Splits, labels: &Labels) -> Result<Self> {
        Ok(Self {
            folder: folder.display().to_string(),
            classes: labels.names().map(String::from).collect(),
            train_images: splits.train.len(),
            val_images: splits.val.len(),
            test_images: splits.test.len(),
            train_sha256: data::content_hash(&splits.train)?,
            val_sha256: data::content_hash(&splits.val)?,
            test_sha256: data::content_hash(&splits.test)?,
            skipped: splits.skipped.clone(),
        })
    }
}

/// How the kept weights score on the held-out test split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TestRecord {
    pub images: usize,
    pub accuracy: f64,
    /// Recall of each class, in the order of [`DataRecord::classes`].
    pub recall: Vec<f64>,
    /// Photos of each class.
    #[serde(default)]
    pub counts: Vec<usize>,
}

impl TestRecord {
    /// Scores predicted classes against the truth (one entry per photo).
    pub fn score(predicted: &[usize], truth: &[usize], classes: usize) -> Self {
        let mut hits = vec![0usize; classes];
        let mut counts = vec![0usize; classes];
        for (&p, &t) in predicted.iter().zip(truth) {
            counts[t] += 1;
            hits[t] += usize::from(p == t);
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Self {
            images: truth.len(),
            accuracy: ratio(hits.iter().sum(), truth.len()),
            recall: hits
                .iter()
                .zip(&counts)
                .map(|(&h, &c)| ratio(h, c))
                .collect(),
            counts,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainRecord {
    pub model: String,
    pub architecture: String,
    /// The command line that produced the weights.
    pub command: String,
    pub seed: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub epochs_planned: usize,
    pub epochs_run: usize,
    /// The epoch whose weights were kept (best validation accuracy), 1-based.
    pub best_epoch: usize,
    pub train_accuracy: f64,
    pub val_accuracy: f64,
    pub data: DataRecord,
    /// The kept weights on the held-out test split (none when it is empty).
    #[serde(default)]
    pub test: Option<TestRecord>,
    /// The L2 penalty val chose (heads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// The decay of the weight averaging whose weights were kept (the CNN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_average: Option<f64>,
    /// The CNN's dropout rate before its logit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f32>,
    /// Whether val and test were scored as the model serves: averaged with the mirror
    /// image (the manifest's `flip_average`).
    #[serde(default)]
    pub flip_average: bool,
    /// The frozen backbone's weights, for transfer models.
    pub backbone_sha256: Option<String>,
    /// The weights file written.
    pub weights_sha256: String,
    /// Wall-clock seconds of training (including feature extraction when it ran).
    pub seconds: f64,
    /// Seconds spent extracting features (0 when they came from the cache).
    pub feature_seconds: Option<f64>,
    pub threads: usize,
    pub history: Vec<EpochRecord>,
}

impl TrainRecord {
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write the training record {}", path.display()))
    }
}

/// The command line as typed, for the record.
pub fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(program) = args.first_mut() {
        *program = "classify".into();
    }
    args.join(" ")
}
