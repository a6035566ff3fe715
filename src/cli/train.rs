//! `classify train`: trains a dogs-vs-cats model of the manifest on labelled folders.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::manifest::{Architecture, Manifest};
use crate::train::{self, TrainOptions};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The model to train: a small-cnn or resnet50-head model of the manifest
    /// (catsdogs-cnn, catsdogs).
    #[arg(long)]
    model: String,
    /// Folder with train/<class>/ and val/<class>/ photos (classes as the model's labels name them).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Weights file to write (default: the one the manifest names); the record (.json),
    /// plot (.png) and checkpoint (.checkpoint.*) go beside it.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Epochs at most (default: 40 for the CNN, 60 for the head).
    #[arg(long)]
    epochs: Option<usize>,
    /// Mini-batch size (default: 32 for the CNN, 256 for the head).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Initial learning rate (cosine decay to a twentieth; default 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Seed for the initial weights, shuffling, augmentation and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop after this many epochs without a better validation accuracy.
    #[arg(long, default_value_t = 8)]
    patience: usize,
    /// Continue from the checkpoint beside the weights (CNN).
    #[arg(long)]
    resume: bool,
    /// Use at most this many photos per class of each split (smoke runs).
    #[arg(long, value_name = "N")]
    limit_per_class: Option<usize>,
    /// Where extracted features are cached (head).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

pub fn run(manifest: &Manifest, args: TrainArgs) -> Result<ExitCode> {
    let spec = manifest.model(&args.model)?;
    let cnn = match spec.architecture {
        Architecture::SmallCnn => true,
        Architecture::Resnet50Head => false,
        Architecture::Resnet50 => bail!(
            "{:?} is a pretrained ImageNet ResNet-50; train trains the small-cnn and resnet50-head models",
            spec.name
        ),
    };
    let epochs = args.epochs.unwrap_or(if cnn { 40 } else { 60 });
    let batch_size = args.batch_size.unwrap_or(if cnn { 32 } else { 256 });
    if epochs == 0 || batch_size == 0 {
        bail!("--epochs and --batch-size must be positive");
    }
    if !(args.learning_rate.is_finite() && args.learning_rate > 0.0) {
        bail!("--learning-rate must be a positive number");
    }
    if args.limit_per_class == Some(0) {
        bail!("--limit-per-class must be positive");
    }
    if args.resume && !cnn {
        bail!("--resume is for the CNN; the head trains in seconds from cached features");
    }
    let options = TrainOptions {
        data: args.data,
        out: args.out.unwrap_or_else(|| spec.weights.clone()),
        epochs,
        batch_size,
        learning_rate: args.learning_rate,
        seed: args.seed,
        patience: args.patience.max(1),
        resume: args.resume,
        limit_per_class: args.limit_per_class,
        cache_dir: args.cache_dir.unwrap_or_else(train::default_cache_dir),
    };
    if let Some(folder) = options.out.parent().filter(|f| !f.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let record = if cnn {
        train::cnn::train(spec, &options)?
    } else {
        train::head::train(spec, &options)?
    };
    println!("{}", serde_json::to_string_pretty(&record)?);
    eprintln!(
        "classify: wrote {} (sha256 {}): best epoch {}, val accuracy {:.4}; put the sha256 in the manifest to serve it",
        options.out.display(),
        record.weights_sha256,
        record.best_epoch,
        record.val_accuracy
    );
    Ok(ExitCode::SUCCESS)
}
