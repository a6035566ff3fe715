//! `classify serve` settings: every option has a flag and the environment variable the
//! OpenFaaS watchdogs read (`port`, `read_timeout`, `write_timeout`, `exec_timeout`,
//! `max_inflight`), plus our own limits. Durations are Go durations (`10s`, `1m30s`,
//! `500ms`) or plain seconds, as the watchdogs accept them.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::plan::Precision;
use crate::preprocess::DEFAULT_MAX_PIXELS;

/// Default body limit: 16 MiB, far above any photo worth classifying.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// Default inference workers per core. Measured with candle's own convolution, which left
/// the cores partly idle (single-threaded copies between its multi-threaded GEMMs): on 2
/// cores, one caller got 1.7-2.0 images/s and eight concurrent callers 3.0-3.2 (`classify
/// bench --concurrency`). The inference plan splits each forward into bands over every
/// core, so this is to be measured again (`bench/http_throughput.sh`). Override: `workers`.
pub const WORKERS_PER_CORE: usize = 2;

#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Weights and arithmetic of every served model: f32, or int8 (the model's int8 file,
    /// else quantized at load; a quarter of the memory). Default: the manifest's `precision`, else f32.
    #[arg(long, env = "precision", value_enum)]
    pub precision: Option<Precision>,
    /// Address to listen on.
    #[arg(long, env = "bind", default_value = "0.0.0.0")]
    pub bind: String,
    /// TCP port (0 picks a free one and logs it).
    #[arg(long, env = "port", default_value_t = 8080)]
    pub port: u16,
    /// Models to load and serve, comma-separated (default: every model in the manifest;
    /// the first is what `POST /` uses).
    #[arg(long, env = "models", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Time allowed to receive a request body (0: no limit).
    #[arg(long, env = "read_timeout", default_value = "10s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// Time allowed to send an answer; also the grace period for in-flight requests on
    /// SIGTERM (0: no limit).
    #[arg(long, env = "write_timeout", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// Time allowed from a complete request to its answer; over it, 504 (0: no limit).
    #[arg(long, env = "exec_timeout", default_value = "10s", value_parser = parse_duration)]
    pub exec_timeout: Duration,
    /// Classification requests handled at once; more get 429 at once (0: no limit).
    #[arg(long, env = "max_inflight", default_value_t = 0)]
    pub max_inflight: usize,
    /// Largest request body accepted; larger gets 413.
    #[arg(long, env = "max_body_bytes", default_value_t = DEFAULT_MAX_BODY_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_body_bytes: u64,
    /// Largest image accepted, in pixels, checked from the header before decoding; larger gets 413.
    #[arg(long, env = "max_pixels", default_value_t = DEFAULT_MAX_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: u64,
    /// Inference worker threads sharing the loaded models (default: two per core).
    #[arg(long, env = "workers", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub workers: Option<u64>,
    /// Most queued requests of one model a worker runs as one batch.
    #[arg(long, env = "max_batch", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_batch: u64,
    /// Requests waiting for a worker; beyond it, 429.
    #[arg(long, env = "queue", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub queue: u64,
    /// Connections handled at once (each holds at most one body); beyond it, 503.
    #[arg(long, env = "max_connections", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_connections: u64,
    /// File written when the models are loaded and removed on SIGTERM (Swarm's health check).
    #[arg(long, env = "lock_file", default_value = "/tmp/.lock")]
    pub lock_file: PathBuf,
}

impl ServeSettings {
    pub fn workers(&self) -> usize {
        self.workers.map(|w| w as usize).unwrap_or_else(|| {
            WORKERS_PER_CORE * std::thread::available_parallelism().map_or(1, usize::from)
        })
    }
}

/// `Duration::ZERO` means "no limit"; this turns it into `None`.
pub fn limit(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// Parses a Go duration (`300ms`, `1.5s`, `2m30s`, `1h`) or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || format!("{text:?} is not a duration (use e.g. 10s, 1m30s, 500ms, or seconds)");
    if text.is_empty() {
        return Err(invalid());
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(seconds).ok_or_else(invalid);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let value: f64 = rest[..number_end].parse().map_err(|_| invalid())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += value * seconds_per_unit;
        rest = &rest[unit_end..];
    }
    seconds_to_duration(total).ok_or_else(invalid)
}

/// Durations above a day are configuration mistakes, not timeouts.
fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && (0.0..=86_400.0).contains(&seconds))
        .then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_and_plain_seconds() {
        for (text, millis) in [
            ("10s", 10_000),
            ("10", 10_000),
            ("1.5", 1_500),
            ("500ms", 500),
            ("1m30s", 90_000),
            ("1h", 3_600_000),
            ("2.5s", 2_500),
            ("0", 0),
            ("0s", 0),
            (" 3s ", 3_000),
        ] {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_millis(millis),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for text in [
            "", "s", "10x", "-5s", "-1", "1e400", "ten", "5s5", "1..2s", "NaN", "inf", "100000h",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains("not a duration"), "{text}: {err}");
        }
    }

    #[test]
    fn zero_means_no_limit() {
        assert_eq!(limit(Duration::ZERO), None);
        assert_eq!(limit(Duration::from_secs(1)), Some(Duration::from_secs(1)));
    }
}
