//! `classify predict`: classify files and print one answer per image.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::EXIT_SOME_FAILED;
use crate::classifier::{Classifier, ClassifyOptions};
use crate::manifest::Manifest;
use crate::plan::Precision;
use crate::predictions::{keras_line, Prediction, DEFAULT_TOP, MAX_TOP};
use crate::preprocess::{ResizeMode, DEFAULT_MAX_PIXELS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per image per line.
    Json,
    /// The original Keras service's `Predicted: [...]` line.
    Text,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Model name from the manifest (default: its first model).
    #[arg(long)]
    model: Option<String>,
    /// Weights and arithmetic: f32, or int8 (the int8 file, else quantized at load). Default: the
    /// manifest's `precision`, else f32.
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// How many predictions to print per image (1..=20).
    #[arg(long, default_value_t = DEFAULT_TOP)]
    top: usize,
    /// Spatial transform (default: the model's, centre-crop for ResNet-50).
    #[arg(long, value_enum)]
    resize: Option<ResizeMode>,
    /// Output format (default: json when stdout is not a terminal, text when it is).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Image files (JPEG, PNG, WebP, BMP, GIF).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Answer<'a> {
    file: String,
    model: &'a str,
    predictions: Vec<Prediction>,
    elapsed_ms: f64,
}

pub fn run(manifest: &Manifest, args: PredictArgs) -> Result<ExitCode> {
    if !(1..=MAX_TOP).contains(&args.top) {
        bail!("--top must be between 1 and {MAX_TOP}, got {}", args.top);
    }
    let spec = match &args.model {
        Some(name) => manifest.model(name)?,
        None => manifest.default_model(),
    };
    let format = args.format.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Text
    } else {
        Format::Json
    });
    let classifier = Classifier::load_with(spec, manifest.precision(args.precision))?;
    let options = ClassifyOptions {
        resize: args.resize,
        top: args.top,
        max_pixels: args.max_pixels,
    };
    let mut failures = 0usize;
    let mut stdout = std::io::stdout().lock();
    for path in &args.images {
        let started = Instant::now();
        let predictions = std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(classifier.classify_bytes(&bytes, &options)?));
        let predictions = match predictions {
            Ok(predictions) => predictions,
            Err(error) => {
                eprintln!("classify: {}: {error:#}", path.display());
                failures += 1;
                continue;
            }
        };
        let line = match format {
            Format::Text => keras_line(&predictions),
            Format::Json => serde_json::to_string(&Answer {
                file: path.display().to_string(),
                model: classifier.name(),
                predictions,
                elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
            })?,
        };
        if let Err(error) = writeln!(stdout, "{line}") {
            // A closed pipe (`classify predict ... | head -1`) is the reader's choice.
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(error.into());
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SOME_FAILED)
    })
}
