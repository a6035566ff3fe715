//! `classify quantize`: writes a model's int8 weights file and the manifest lines that
//! name it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::{Args, ValueEnum};

use crate::classifier::Classifier;
use crate::eval::{self, Agreement};
use crate::labels::Labels;
use crate::manifest::{Manifest, ModelSpec};
use crate::plan::Precision;

/// The precisions a weights file can be quantized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Symmetric per-output-channel i8 weights, f32 scales and biases.
    Int8,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Model name from the manifest (default: its first model).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, value_enum, default_value = "int8")]
    to: Target,
    /// Where to write the safetensors file (the same model always gives the same bytes).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Photos (a folder, subfolders included) to check the int8 model on before it is
    /// written. Activation scales need no calibration set (each lowered row gets its own
    /// at run time); these photos measure the quantized model against f32 instead: its
    /// top-1 agreement is recorded in the file's metadata, and below --min-agreement
    /// nothing is written.
    #[arg(long, value_name = "DIR")]
    calibrate: Option<PathBuf>,
    /// The lowest top-1 agreement with f32 accepted on the --calibrate photos (0 to 1).
    #[arg(long, default_value_t = 0.99, value_parser = share, requires = "calibrate")]
    min_agreement: f64,
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a share from 0 to 1")),
    }
}

pub fn run(manifest: &Manifest, args: QuantizeArgs) -> Result<ExitCode> {
    let spec = match &args.model {
        Some(name) => manifest.model(name)?,
        None => manifest.default_model(),
    };
    let Target::Int8 = args.to;
    let classes = Labels::load(&spec.labels)?.len();
    let mut weights = crate::quantize::quantize(spec, classes)
        .with_context(|| format!("cannot quantize the model {:?}", spec.name))?;
    if let Some(dir) = &args.calibrate {
        let agreement = check_on_photos(spec, dir)?;
        let share = agreement.share();
        println!(
            "int8 agrees with f32 on {} of {} photos under {} ({share:.4}); the f32 top-1 \
             probability changes by {:.4} at most{}",
            agreement.agreeing,
            agreement.photos,
            dir.display(),
            agreement.largest_change,
            match agreement.unreadable.len() {
                0 => String::new(),
                n => format!(
                    "; {n} files skipped, unreadable as images (first: {})",
                    agreement.unreadable[0]
                ),
            }
        );
        ensure!(
            share >= args.min_agreement,
            "int8 agrees with f32 on {share:.4} of the photos, below --min-agreement {}: \
             {} not written",
            args.min_agreement,
            args.out.display()
        );
        weights.set_metadata("checked_on_photos", agreement.photos.to_string());
        weights.set_metadata("top1_agreement_with_f32", format!("{share:.4}"));
    }
    let bytes = weights.to_bytes()?;
    crate::files::write(&args.out, &bytes)?;
    let digests = crate::weights::digests(&bytes);
    let f32_size = std::fs::metadata(&spec.weights).map(|m| m.len()).ok();
    let ratio = f32_size.map_or_else(String::new, |size| {
        format!(
            ", {:.1}x smaller than f32",
            size as f64 / bytes.len() as f64
        )
    });
    let file_name = args
        .out
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    println!(
        "wrote {} ({:.1} MB{ratio})\n\nTo serve it, add to the model {:?} in {}:\n\n\
         [model.int8]\nweights = \"{file_name}\"\nsha256 = \"{}\"\nblake3 = \"{}\"",
        args.out.display(),
        bytes.len() as f64 / 1e6,
        spec.name,
        manifest.path.display(),
        digests.sha256,
        digests.blake3
    );
    Ok(ExitCode::SUCCESS)
}

/// The model at f32 against the same model quantized now (loaded at int8 with no int8
/// file, which quantizes through the code that wrote `weights`: the same numbers).
fn check_on_photos(spec: &ModelSpec, dir: &Path) -> Result<Agreement> {
    let exact = Classifier::load_with(spec, Precision::F32)?;
    let quantized_now = ModelSpec {
        int8: None,
        ..spec.clone()
    };
    let int8 = Classifier::load_with(&quantized_now, Precision::Int8)?;
    eval::agreement(&exact, &int8, dir)
}
