//! Training: labelled photo folders split into train, validation and a held-out test
//! split, with augmentation ([`data`]), the optimiser ([`adam`]), the small CNN's loop
//! with checkpoints and early stopping ([`cnn`]), the softmax head on a frozen
//! backbone's cached features for any set of classes ([`head`]), and the records they
//! leave beside the weights ([`record`], [`plot`]).

pub mod adam;
pub mod average;
pub mod cnn;
pub mod data;
pub mod gradient_check;
pub mod head;
pub mod plot;
pub mod record;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// What `classify train` was asked for.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Holds `train/<class>/`, and optionally `val/<class>/` and `test/<class>/`.
    pub data: PathBuf,
    /// Without `val/`: the share of each class's training photos held out for validation.
    pub val_fraction: f64,
    /// Without `test/`: the share of each class's training photos held out as the test
    /// split, which no choice (early stopping, tuning) ever looks at.
    pub test_fraction: f64,
    /// The weights file to write; the record (`.json`), plot (`.png`) and checkpoint
    /// (`.checkpoint.*`) go beside it.
    pub out: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// Epochs without a better validation accuracy before stopping.
    pub patience: usize,
    /// The CNN's weight averaging: the share of the average each step keeps (0: none).
    pub weight_average: f64,
    /// The CNN's dropout rate before its logit (the original network: 0.5).
    pub dropout: f32,
    /// Continue from the checkpoint beside `out`.
    pub resume: bool,
    /// Use at most this many images per class of each split (smoke runs).
    pub limit_per_class: Option<usize>,
    /// Where extracted features are cached.
    pub cache_dir: PathBuf,
}

impl TrainOptions {
    /// A file beside the weights: `weights/x.safetensors` -> `weights/x.<extension>`.
    pub fn beside(&self, extension: &str) -> PathBuf {
        self.out.with_extension(extension)
    }
}

/// The photos of one training run.
#[derive(Debug)]
pub struct Splits {
    pub train: Vec<data::Sample>,
    /// Chooses the epoch kept (and early stopping).
    pub val: Vec<data::Sample>,
    /// Only measured, once, with the weights kept.
    pub test: Vec<data::Sample>,
    /// Files of the class folders that are not images, with the reason.
    pub skipped: Vec<String>,
}

/// The splits of `options.data` for the classes of `labels`: `train/`, and `val/` and
/// `test/` when present, else held out of `train/` (stratified, seeded); limited per
/// class for smoke runs.
pub fn load_splits(options: &TrainOptions, labels: &crate::labels::Labels) -> Result<Splits> {
    let mut skipped = Vec::new();
    let mut listed = |split: &str| -> Result<Option<Vec<data::Sample>>> {
        let folder = options.data.join(split);
        if split != "train" && !folder.is_dir() {
            return Ok(None);
        }
        let listing = data::list_folders(&folder, labels)?;
        skipped.extend(listing.skipped);
        Ok(Some(listing.samples))
    };
    let train = listed("train")?.expect("train is always listed");
    let (val, test) = (listed("val")?, listed("test")?);
    let (train, test) = match test {
        Some(test) => (train, test),
        None => data::hold_out(train, options.test_fraction, options.seed ^ 0x7e57),
    };
    let (train, val) = match val {
        Some(val) => (train, val),
        None => data::hold_out(train, options.val_fraction, options.seed ^ 0x0a1),
    };
    if val.is_empty() {
        bail!(
            "no validation photos: add {}/val/<class>/ or give --val-fraction",
            options.data.display()
        );
    }
    let limit = |samples: Vec<data::Sample>| match options.limit_per_class {
        Some(limit) => data::limit_per_class(samples, limit, options.seed),
        None => samples,
    };
    Ok(Splits {
        train: limit(train),
        val: limit(val),
        test: limit(test),
        skipped,
    })
}

/// The default feature cache: `$XDG_CACHE_HOME/edge-classify`, `~/.cache/edge-classify`,
/// else `.cache/edge-classify` here.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("edge-classify")
}

/// A progress bar on stderr (hidden when stderr is not a terminal; the per-epoch log
/// lines carry the same figures).
fn progress_bar(len: usize, prefix: String) -> ProgressBar {
    let bar = ProgressBar::new(len as u64).with_prefix(prefix);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

/// The learning rate of `epoch` (0-based): cosine decay from `base` to `base / 20` over
/// `epochs`.
pub fn cosine_learning_rate(base: f64, epoch: usize, epochs: usize) -> f64 {
    let floor = base / 20.0;
    let progress = epoch as f64 / epochs.max(1) as f64;
    floor + 0.5 * (base - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_decays_from_base_towards_a_twentieth() {
        assert!((cosine_learning_rate(1e-3, 0, 30) - 1e-3).abs() < 1e-12);
        let late = cosine_learning_rate(1e-3, 29, 30);
        assert!(late > 5e-5 && late < 6e-5, "{late}");
        assert!(cosine_learning_rate(1e-3, 10, 30) > cosine_learning_rate(1e-3, 11, 30));
    }
}
