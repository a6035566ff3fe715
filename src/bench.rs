//! The on-device benchmark behind `classify bench`: model load time, forward latency
//! (median, p90, p99) per thread count, end-to-end throughput (decode, preprocess,
//! forward) with concurrent callers, and the process's peak memory. It needs nothing
//! but the binary and its weights, so it runs unchanged on a Raspberry Pi.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use image::{ImageFormat, Rgb, RgbImage};
use serde::Serialize;

use crate::classifier::{Classifier, ClassifyOptions};
use crate::preprocess;

/// One measured configuration; a JSON line with `--format json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub precision: &'static str,
    /// Threads one forward pass may use.
    pub threads: usize,
    /// Callers classifying at once (end-to-end throughput).
    pub concurrency: usize,
    pub iters: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Forward passes per second of one caller (1000 / median).
    pub forward_per_s: f64,
    /// Whole images (decode + preprocess + forward) per second over all callers.
    pub images_per_s: f64,
    pub load_s: f64,
    pub peak_rss_mb: f64,
    /// The kernel table's level (`EDGE_KERNELS` forces one).
    pub kernel_level: &'static str,
    /// The kernel that ran each operation.
    pub kernels: std::collections::BTreeMap<&'static str, &'static str>,
}

pub struct BenchOptions {
    pub threads: usize,
    pub concurrency: usize,
    pub iters: usize,
    pub warmup: usize,
}

/// A photo-like test image (smooth gradients plus texture), JPEG-encoded, so the
/// benchmark needs no file; `--image` replaces it.
pub fn synthetic_jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        let texture = ((x * 7 + y * 13) % 31) as u8;
        Rgb([
            (x * 255 / width) as u8 ^ texture,
            (y * 255 / height) as u8,
            ((x + y) % 256) as u8 / 2 + texture,
        ])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Jpeg)
        .expect("encoding into memory cannot fail");
    bytes
}

/// Measures one configuration at the model's current thread count.
pub fn run(model: &Arc<Classifier>, image: &[u8], options: &BenchOptions) -> Result<BenchResult> {
    let input = preprocess::prepare(image, &model.spec().input, None, u64::MAX)
        .context("the benchmark image cannot be preprocessed")?
        .unsqueeze(0)?;
    let forward = |input: &Tensor| -> Result<f64> {
        let started = Instant::now();
        model.logits(input)?;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    for _ in 0..options.warmup {
        forward(&input)?;
    }
    let mut latencies = (0..options.iters)
        .map(|_| forward(&input))
        .collect::<Result<Vec<f64>>>()?;
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let median_ms = percentile(0.5);

    // End to end with concurrent callers: each classifies `iters` images.
    let classify_options = ClassifyOptions::default();
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let callers: Vec<_> = (0..options.concurrency)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    for _ in 0..options.iters {
                        model.classify_bytes(image, &classify_options)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for caller in callers {
            caller.join().expect("benchmark callers do not panic")?;
        }
        Ok(())
    })?;
    let images_per_s =
        (options.concurrency * options.iters) as f64 / started.elapsed().as_secs_f64();

    let kernels = crate::kernels::table();
    Ok(BenchResult {
        model: model.name().to_string(),
        precision: model.precision().name(),
        threads: options.threads,
        concurrency: options.concurrency,
        iters: options.iters,
        median_ms,
        p90_ms: percentile(0.9),
        p99_ms: percentile(0.99),
        forward_per_s: 1e3 / median_ms,
        images_per_s,
        load_s: model.load_seconds(),
        peak_rss_mb: peak_rss_mb().unwrap_or(f64::NAN),
        kernel_level: kernels.level,
        kernels: kernels.entries().into_iter().collect(),
    })
}

/// The process's peak resident memory (`VmHWM`), where the OS tells it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_image_decodes_to_its_size() {
        let bytes = synthetic_jpeg(500, 375);
        assert_eq!(preprocess::dimensions(&bytes).unwrap(), (500, 375));
        assert!(preprocess::decode_rgb(&bytes, 1 << 20).is_ok());
    }
}
