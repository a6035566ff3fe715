//! tract (sonos/tract: hand-written NEON kernels for armv7 and aarch64) running our
//! ResNet-50, exported to ONNX by `bench/peers/export_onnx.py`. Prints one JSON line in
//! the shape of `classify bench --format json`, so `bench/peers.sh` tables it beside the
//! others, and runs unchanged under qemu for `bench/insncount.sh`.
//!
//!   tract-peer MODEL.onnx [--iters N] [--warmup N] [--name NAME]

use std::time::Instant;

use anyhow::{bail, Context, Result};
use tract_onnx::prelude::*;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model_path = args
        .next()
        .context("usage: tract-peer MODEL.onnx [--iters N] [--warmup N] [--name NAME]")?;
    let (mut iters, mut warmup, mut name) = (20usize, 2usize, "tract f32".to_string());
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--iters" => iters = value.parse().context("--iters")?,
            "--warmup" => warmup = value.parse().context("--warmup")?,
            "--name" => name = value,
            _ => bail!("unknown flag {flag}"),
        }
    }
    let started = Instant::now();
    let model = tract_onnx::onnx()
        .model_for_path(&model_path)
        .with_context(|| format!("loading {model_path}"))?
        .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())?
        .into_optimized()?
        .into_runnable()?;
    let load_s = started.elapsed().as_secs_f64();
    // A fixed, image-like input: the cost of a forward does not depend on the values.
    let input: Tensor = tract_ndarray::Array4::from_shape_fn((1, 3, 224, 224), |(_, c, y, x)| {
        ((c * 31 + y * 7 + x * 3) % 255) as f32 - 120.0
    })
    .into();
    for _ in 0..warmup {
        model.run(tvec!(input.clone().into()))?;
    }
    let mut times = Vec::with_capacity(iters);
    let mut top1 = 0;
    for _ in 0..iters {
        let started = Instant::now();
        let outputs = model.run(tvec!(input.clone().into()))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        let logits = outputs[0].to_plain_array_view::<f32>()?;
        top1 = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "1".into());
    println!(
        "{{\"model\":\"{name}\",\"threads\":{threads},\"iters\":{iters},\"median_ms\":{median:.3},\"load_s\":{load_s:.3},\"top1\":{top1}}}"
    );
    Ok(())
}
