//! `classify bench`: the on-device benchmark, one line per configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::bench::{self, BenchOptions};
use crate::classifier::Classifier;
use crate::manifest::Manifest;
use crate::plan::Precision;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per configuration per line.
    Json,
    /// An aligned table.
    Table,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model name from the manifest (default: its first model).
    #[arg(long)]
    model: Option<String>,
    /// Precisions to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Precision>,
    /// Thread counts to measure, comma-separated (default: 1 and every core).
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Concurrent callers for the end-to-end throughput, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    concurrency: Vec<usize>,
    /// Timed forward passes per configuration (and images per caller).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed passes first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Image to classify (default: a generated 500x375 JPEG).
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

pub fn run(manifest: &Manifest, args: BenchArgs) -> Result<ExitCode> {
    if args.iters == 0 || args.threads.contains(&0) || args.concurrency.contains(&0) {
        bail!("--iters, --threads and --concurrency must be positive");
    }
    let spec = match &args.model {
        Some(name) => manifest.model(name)?,
        None => manifest.default_model(),
    };
    let image = match &args.image {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => bench::synthetic_jpeg(500, 375),
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut threads = args.threads.clone();
    if threads.is_empty() {
        threads = if cores > 1 { vec![1, cores] } else { vec![1] };
    }
    if args.format == Format::Table {
        let kernels = crate::kernels::table();
        let entries: Vec<String> = kernels
            .entries()
            .iter()
            .map(|(op, kernel)| format!("{op} {kernel}"))
            .collect();
        println!("kernels ({}): {}", kernels.level, entries.join(", "));
        println!(
            "{:<10} {:>9} {:>7} {:>11} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7} {:>8}  kernel",
            "model",
            "precision",
            "threads",
            "concurrency",
            "median_ms",
            "p90_ms",
            "p99_ms",
            "forward/s",
            "images/s",
            "load_s",
            "peak_MB"
        );
    }
    for &precision in &args.precision {
        let model = Arc::new(Classifier::load_with(spec, precision)?);
        for &thread_count in &threads {
            model.set_threads(thread_count);
            for &concurrency in &args.concurrency {
                let options = BenchOptions {
                    threads: thread_count,
                    concurrency,
                    iters: args.iters,
                    warmup: args.warmup,
                };
                let result = bench::run(&model, &image, &options)?;
                match args.format {
                Format::Json => println!("{}", serde_json::to_string(&result)?),
                Format::Table => println!(
                    "{:<10} {:>9} {:>7} {:>11} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>10.2} {:>7.2} {:>8.0}  {}",
                    result.model,
                    result.precision,
                    result.threads,
                    result.concurrency,
                    result.median_ms,
                    result.p90_ms,
                    result.p99_ms,
                    result.forward_per_s,
                    result.images_per_s,
                    result.load_s,
                    result.peak_rss_mb,
                    result.kernels[result.precision]
                ),
            }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
