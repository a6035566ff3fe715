//! `classify healthcheck`: asks a running `classify serve` on this host whether it is
//! healthy. Container images have no shell and no curl, so Docker's `HEALTHCHECK` and
//! Swarm call this instead; exit 0 healthy, 1 not.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::server::settings::parse_duration;

/// Largest answer read: the status line is all we need.
const MAX_ANSWER_BYTES: u64 = 4096;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Port of the function on 127.0.0.1 (the same `port` variable `serve` reads).
    #[arg(long, env = "port", default_value_t = 8080)]
    port: u16,
    /// Endpoint to ask: /_/health (alive), or /_/ready (models loaded, below max_inflight).
    #[arg(long, default_value = "/_/health", value_parser = parse_endpoint)]
    path: String,
    /// Time allowed for connecting and for the whole answer.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
}

fn parse_endpoint(text: &str) -> Result<String, String> {
    match text {
        "/_/health" | "/_/ready" => Ok(text.to_string()),
        _ => Err(format!("{text:?} is not /_/health or /_/ready")),
    }
}

/// Exit 0 when the function answers 200, 1 otherwise (the reason on stderr).
pub fn run(args: HealthcheckArgs) -> ExitCode {
    match status_of(&args) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("classify: unhealthy: {} answered {status}", args.path);
            ExitCode::from(super::EXIT_SOME_FAILED)
        }
        Err(error) => {
            eprintln!("classify: unhealthy: {error:#}");
            ExitCode::from(super::EXIT_SOME_FAILED)
        }
    }
}

fn status_of(args: &HealthcheckArgs) -> Result<u16> {
    let timeout = if args.timeout.is_zero() {
        Duration::from_secs(3)
    } else {
        args.timeout
    };
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        args.path, args.port
    )
    .with_context(|| format!("cannot send the request to {address}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .with_context(|| format!("no answer from {address} within {timeout:?}"))?;
    parse_status(&answer).with_context(|| format!("{address} did not answer HTTP"))
}

/// The status code of an HTTP/1.x answer's status line.
fn parse_status(answer: &[u8]) -> Result<u16> {
    let line_end = answer
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .unwrap_or(answer.len());
    let line = std::str::from_utf8(&answer[..line_end]).context("status line is not text")?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/1.") => Ok(status),
        _ => bail!("unexpected status line {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_lines_are_read_and_garbage_refused() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\nOK").unwrap(), 200);
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n").unwrap(),
            503
        );
        for garbage in [
            &b""[..],
            b"SSH-2.0-OpenSSH\r\n",
            b"HTTP/1.1 abc\r\n",
            b"\xff\xfe",
        ] {
            assert!(parse_status(garbage).is_err(), "{garbage:?}");
        }
    }
}
