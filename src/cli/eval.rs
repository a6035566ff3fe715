//! `classify eval`: scores a model on labelled folders.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::EXIT_SOME_FAILED;
use crate::classifier::Classifier;
use crate::manifest::Manifest;
use crate::plan::Precision;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Text,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model name from the manifest (default: its first model).
    #[arg(long)]
    model: Option<String>,
    /// Folder of class folders (DIR/cat, DIR/dog, or ImageNet wnids/names for ResNet-50).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Weights and arithmetic: f32, or int8 (the int8 file, else quantized at load). Default: the
    /// manifest's `precision`, else f32.
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Exit 0 when every photo was classified, 1 when some could not be read.
pub fn run(manifest: &Manifest, args: EvalArgs) -> Result<ExitCode> {
    let spec = match &args.model {
        Some(name) => manifest.model(name)?,
        None => manifest.default_model(),
    };
    let classifier = Classifier::load_with(spec, manifest.precision(args.precision))?;
    let report = crate::eval::evaluate(&classifier, &args.data)?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Text => print!("{}", report.text()),
    }
    Ok(if report.unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SOME_FAILED)
    })
}
