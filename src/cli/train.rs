//! `classify train`: trains a model on labelled folders. A new name becomes a softmax
//! head on a frozen backbone for the classes the folders name, added to the manifest
//! (or the models dir's); a listed small-cnn or head model is retrained with `--force`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::labels::Labels;
use crate::manifest::edit::{self, Entry};
use crate::manifest::{check_model_name, Architecture, Manifest, ModelSpec};
use crate::plan::Precision;
use crate::train::head::HeadTask;
use crate::train::{self, data, TrainOptions};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The model: a new name (a head for the classes of --data), or a small-cnn or
    /// head model of the manifest to retrain (with --force).
    #[arg(long)]
    model: String,
    /// The frozen network a new head sits on: a resnet50 or efficientnet-lite0 model of
    /// the manifest [default: resnet50]. A listed head keeps its own.
    #[arg(long)]
    backbone: Option<String>,
    /// Folder with train/<class>/ photos, and optionally val/<class>/ and test/<class>/.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Without DIR/val/: the share of each class's training photos held out to choose
    /// the epoch kept.
    #[arg(long, default_value_t = 0.15, value_name = "FRACTION")]
    val_fraction: f64,
    /// Without DIR/test/: the share of each class's training photos held out as a test
    /// split that no choice ever looks at (0: none).
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    test_fraction: f64,
    /// Replace a model the manifest already lists.
    #[arg(long)]
    force: bool,
    /// A trial run: write the weights (and the record, plot and labels beside them) here
    /// and leave the manifest alone.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// A head's features come from the backbone at this precision (the head then serves
    /// best at it too).
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// The licence the manifest names for a new model's weights.
    #[arg(long, default_value = "unspecified")]
    licence: String,
    /// Epochs at most (default: 40 for the CNN, 60 for the head).
    #[arg(long)]
    epochs: Option<usize>,
    /// Mini-batch size (default: 32 for the CNN, 256 for the head).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Initial learning rate (cosine decay to a twentieth; default 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Seed for the splits, initial weights, shuffling, augmentation and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop after this many epochs without a better validation accuracy.
    #[arg(long, default_value_t = 8)]
    patience: usize,
    /// The CNN's weight averaging: the averaged weights after every step are validated
    /// and kept; DECAY is the share of the average each step keeps (0: off).
    #[arg(long, value_name = "DECAY", default_value_t = 0.999)]
    weight_average: f64,
    /// The CNN's dropout rate before its logit (the original network's: 0.5).
    #[arg(long, value_name = "RATE", default_value_t = crate::models::small_cnn::DROPOUT)]
    dropout: f32,
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

/// The backbone of a new head when `--backbone` names none.
const DEFAULT_BACKBONE: &str = "resnet50";

/// What is trained: a model the manifest lists, or a new head.
enum Target<'a> {
    Listed(&'a ModelSpec),
    NewHead { backbone: &'a ModelSpec },
}

/// `manifest` holds the built-in models and, with `--models-dir`, the models dir's;
/// a new model goes into the models dir when there is one.
pub fn run(manifest: &Manifest, args: TrainArgs) -> Result<ExitCode> {
    check_model_name(&args.model)?;
    let target_manifest = manifest
        .models_dir
        .clone()
        .unwrap_or_else(|| manifest.path.clone());
    let listed = manifest.models.iter().find(|m| m.name == args.model);
    let target = match listed {
        Some(spec) if manifest.models_dir.is_some() && !spec.from_models_dir => bail!(
            "{:?} is a built-in model ({}); the models dir cannot hold another model of that name",
            spec.name,
            manifest.path.display()
        ),
        Some(spec) if spec.architecture.is_backbone() => {
            bail!(
                "{:?} is a pretrained ImageNet {}; train trains small-cnn and head models",
                spec.name,
                spec.architecture.name()
            )
        }
        Some(spec) => {
            let listed_backbone = spec.backbone.as_ref().map(|b| b.name.as_str());
            match &args.backbone {
                Some(asked) if Some(asked.as_str()) != listed_backbone => bail!(
                    "{:?} is listed {}; retraining keeps what it is: train a new name on {asked:?}, or remove its entry first",
                    spec.name,
                    listed_backbone.map_or("as a small CNN".to_string(), |b| format!("on the backbone {b:?}"))
                ),
                _ => Target::Listed(spec),
            }
        }
        None => {
            let backbone_name = args.backbone.as_deref().unwrap_or(DEFAULT_BACKBONE);
            let backbone = manifest
                .models
                .iter()
                .find(|m| m.name == backbone_name && m.architecture.is_backbone())
                .with_context(|| {
                    let backbones: Vec<String> =
                        manifest.backbones().into_iter().map(|b| b.name).collect();
                    format!(
                        "no backbone {:?}: this build's backbones are {}",
                        backbone_name,
                        backbones.join(", ")
                    )
                })?;
            Target::NewHead { backbone }
        }
    };
    let cnn = matches!(target, Target::Listed(spec) if spec.architecture == Architecture::SmallCnn);
    let epochs = args.epochs.unwrap_or(if cnn { 40 } else { 60 });
    let batch_size = args.batch_size.unwrap_or(if cnn { 32 } else { 256 });
    if epochs == 0 || batch_size == 0 {
        bail!("--epochs and --batch-size must be positive");
    }
    if !(args.learning_rate.is_finite() && args.learning_rate > 0.0) {
        bail!("--learning-rate must be a positive number");
    }
    let fraction = |f: f64| f.is_finite() && (0.0..0.9).contains(&f);
    if !fraction(args.val_fraction)
        || !fraction(args.test_fraction)
        || args.val_fraction + args.test_fraction >= 0.9
    {
        bail!("--val-fraction and --test-fraction must be at least 0 and leave photos to train on");
    }
    if !(args.weight_average.is_finite() && (0.0..1.0).contains(&args.weight_average)) {
        bail!("--weight-average must be at least 0 and below 1");
    }
    if !(args.dropout.is_finite() && (0.0..1.0).contains(&args.dropout)) {
        bail!("--dropout must be at least 0 and below 1");
    }
    if args.limit_per_class == Some(0) {
        bail!("--limit-per-class must be positive");
    }
    if args.resume && !cnn {
        bail!("--resume is for the CNN; a head trains in seconds from cached features");
    }
    if args.precision == Precision::Int8 && cnn {
        bail!("--precision int8 is for heads (their backbone's precision); the CNN trains at f32");
    }
    let features_from = match &target {
        Target::Listed(spec) => spec,
        Target::NewHead { backbone } => backbone,
    };
    if features_from.runs_at(args.precision) != args.precision {
        bail!("--precision int8: efficientnet-lite0 has no int8 path yet (it runs at f32)");
    }
    if let Target::Listed(spec) = &target {
        if !args.force && args.out.is_none() {
            bail!(
                "{} already lists a model {:?}: choose another name, --force to retrain and replace it, or --out FILE for a trial run",
                target_manifest.display(),
                spec.name
            );
        }
    }
    let target_folder = target_manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let out = match (&args.out, &target) {
        (Some(out), _) => out.clone(),
        (None, Target::Listed(spec)) => spec.weights.clone(),
        (None, Target::NewHead { .. }) => target_folder.join(format!("{}.safetensors", args.model)),
    };
    if let Some(folder) = out.parent().filter(|f| !f.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let options = TrainOptions {
        data: args.data.clone(),
        val_fraction: args.val_fraction,
        test_fraction: args.test_fraction,
        out: out.clone(),
        epochs,
        batch_size,
        learning_rate: args.learning_rate,
        seed: args.seed,
        patience: args.patience.max(1),
        weight_average: args.weight_average,
        dropout: args.dropout,
        resume: args.resume,
        limit_per_class: args.limit_per_class,
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(train::default_cache_dir),
    };

    let (record, entry) = match target {
        Target::Listed(spec) if cnn => (train::cnn::train(spec, &options)?, entry_of(spec)),
        Target::Listed(spec) => {
            let labels = Labels::load(&spec.labels)?;
            let backbone = spec
                .backbone
                .as_ref()
                .context("a head without a backbone")?;
            let task = HeadTask {
                name: &spec.name,
                labels: &labels,
                backbone,
                input: &spec.input,
                precision: args.precision,
            };
            (train::head::train(&task, &options)?, entry_of(spec))
        }
        Target::NewHead { backbone } => {
            let classes = data::discover_classes(&args.data.join("train"))?;
            let labels = Labels::parse(&label_lines(&classes))?;
            let task = HeadTask {
                name: &args.model,
                labels: &labels,
                backbone: &backbone.as_backbone(),
                input: &backbone.input,
                precision: args.precision,
            };
            let record = train::head::train(&task, &options)?;
            let labels_file = beside(&out, "labels.tsv");
            crate::files::write(&labels_file, label_lines(&classes).as_bytes())?;
            let entry = Entry {
                name: args.model.clone(),
                description: format!(
                    "{}: a softmax head on the frozen {}'s pooled features and ImageNet scores",
                    classes.join(", "),
                    backbone.name
                ),
                architecture: Architecture::Head,
                backbone: Some(backbone.name.clone()),
                weights: out.clone(),
                sha256: String::new(),
                blake3: String::new(),
                labels: labels_file,
                source: String::new(),
                licence: args.licence.clone(),
                input: backbone.input.clone(),
            };
            (record, entry)
        }
    };
    println!("{}", serde_json::to_string_pretty(&record)?);
    let test = record.test.as_ref().map_or(String::new(), |t| {
        format!(
            ", test accuracy {:.4} on {} held-out photos",
            t.accuracy, t.images
        )
    });
    eprintln!(
        "classify: wrote {} (sha256 {}): best epoch {}, val accuracy {:.4}{test}",
        out.display(),
        record.weights_sha256,
        record.best_epoch,
        record.val_accuracy
    );
    if args.out.is_some() {
        eprintln!(
            "classify: a trial run (--out): {} was left as it was",
            target_manifest.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let digests = crate::weights::file_digests(&out)?;
    let entry = Entry {
        sha256: digests.sha256,
        blake3: digests.blake3,
        source: format!(
            "trained by `{}` on {} (see {})",
            record.command,
            args.data.display(),
            beside(&out, "json")
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        ),
        ..entry
    };
    let backbones = if manifest.models_dir.is_some() {
        manifest.backbones()
    } else {
        Vec::new()
    };
    if edit::upsert(&target_manifest, &entry, args.force, &backbones)? {
        eprintln!(
            "classify: the int8 file quantized from the old weights is no longer named; \
             `classify quantize --model {} --out FILE` makes a new one",
            entry.name
        );
    }
    eprintln!(
        "classify: {} now lists {:?}",
        target_manifest.display(),
        entry.name
    );
    Ok(ExitCode::SUCCESS)
}

/// A listed model's entry, as retraining updates it.
fn entry_of(spec: &ModelSpec) -> Entry {
    Entry {
        name: spec.name.clone(),
        description: spec.description.clone(),
        architecture: spec.architecture,
        backbone: spec.backbone.as_ref().map(|b| b.name.clone()),
        weights: spec.weights.clone(),
        sha256: spec.sha256.clone(),
        blake3: spec.blake3.clone().unwrap_or_default(),
        labels: spec.labels.clone(),
        source: spec.source.clone(),
        licence: spec.licence.clone(),
        input: spec.input.clone(),
    }
}

/// `index<TAB>id<TAB>name` lines: the folder name is both.
fn label_lines(classes: &[String]) -> String {
    classes
        .iter()
        .enumerate()
        .map(|(i, class)| format!("{i}\t{class}\t{class}\n"))
        .collect()
}

/// `dir/x.safetensors` -> `dir/x.<suffix>` (`x-labels.tsv` for "labels.tsv").
fn beside(weights: &Path, suffix: &str) -> PathBuf {
    let stem = weights
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    match suffix.split_once('.') {
        Some((part, extension)) => weights.with_file_name(format!("{stem}-{part}.{extension}")),
        None => weights.with_extension(suffix),
    }
}
