//! The JSON record a training run leaves beside its weights: what was trained on what,
//! with which settings, how long it took and how each epoch went.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One epoch's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub seconds: f64,
}

/// The data a run saw, identified by content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataRecord {
    pub folder: String,
    pub train_images: usize,
    pub val_images: usize,
    pub train_sha256: String,
    pub val_sha256: String,
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
