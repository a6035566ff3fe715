//! `classify quantize`: writes a model's int8 weights file and the manifest lines that
//! name it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::labels::Labels;
use crate::manifest::Manifest;

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
}

pub fn run(manifest: &Manifest, args: QuantizeArgs) -> Result<ExitCode> {
    let spec = match &args.model {
        Some(name) => manifest.model(name)?,
        None => manifest.default_model(),
    };
    let Target::Int8 = args.to;
    let classes = Labels::load(&spec.labels)?.len();
    let weights = crate::quantize::quantize(spec, classes)
        .with_context(|| format!("cannot quantize the model {:?}", spec.name))?;
    let bytes = weights.to_bytes()?;
    // Written beside the target, then renamed: a reader never sees half a file.
    let partial = args.out.with_extension("partial");
    std::fs::write(&partial, &bytes)
        .and_then(|()| std::fs::rename(&partial, &args.out))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let sha256 = crate::weights::sha256_hex(&bytes);
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
         [model.int8]\nweights = \"{file_name}\"\nsha256 = \"{sha256}\"",
        args.out.display(),
        bytes.len() as f64 / 1e6,
        spec.name,
        manifest.path.display()
    );
    Ok(ExitCode::SUCCESS)
}
