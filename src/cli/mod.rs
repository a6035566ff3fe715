//! The `classify` command line: clap arguments, validated into settings, then handed to
//! the library. Exit codes: 0 success, 1 some inputs could not be classified,
//! 2 a usage or start-up error (bad arguments, a model that does not load).

mod bench;
mod eval;
mod healthcheck;
mod predict;
mod quantize;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::manifest::{default_manifest_path, Manifest};
use crate::server::settings::ServeSettings;

const AFTER_HELP: &str =
    "Exit codes: 0 success, 1 some inputs could not be classified, 2 usage or start-up error.";

#[derive(Debug, Parser)]
#[command(name = "classify", version, about = "Image classification on the edge: ResNet-50 and dogs vs. cats, natively in Rust", after_help = AFTER_HELP)]
pub struct Args {
    /// The model manifest (default: weights/models.toml here, beside the binary, or in the source tree).
    #[arg(long, global = true, env = "CLASSIFY_MANIFEST", value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// A second manifest's folder (DIR/models.toml, e.g. a mounted volume) whose models
    /// join the built-in ones; where `train` adds new models.
    #[arg(long, global = true, env = "models_dir", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the models as an OpenFaaS-compatible HTTP function (port 8080).
    Serve(ServeSettings),
    /// Classify image files and print the top predictions.
    Predict(predict::PredictArgs),
    /// Measure load time, latency, throughput and memory on this machine.
    Bench(bench::BenchArgs),
    /// Train a classifier for your own labelled folders (a head on a frozen backbone), or retrain the small CNN.
    Train(train::TrainArgs),
    /// Write a model's int8 weights file (what the ARM images carry).
    Quantize(quantize::QuantizeArgs),
    /// Score a model on labelled folders: accuracy, per-class precision/recall, confusion.
    Eval(eval::EvalArgs),
    /// Ask the function on this host for /_/health (the images' HEALTHCHECK): exit 0 or 1.
    Healthcheck(healthcheck::HealthcheckArgs),
}

/// Exit code for inputs that could not all be classified.
pub const EXIT_SOME_FAILED: u8 = 1;
/// Exit code for usage and start-up errors.
pub const EXIT_ERROR: u8 = 2;

/// Parses the process arguments, runs the command and reports any error.
pub fn main() -> ExitCode {
    let args = Args::parse();
    if !matches!(args.command, Command::Serve(_)) {
        end_quietly_on_closed_pipe();
    }
    if matches!(args.command, Command::Train(_)) {
        crate::memory::configure_allocator_for_training();
    } else {
        crate::memory::configure_allocator();
    }
    // The function logs every request; one-shot commands only warnings.
    init_logging(
        if matches!(args.command, Command::Serve(_) | Command::Train(_)) {
            "info"
        } else {
            "warn"
        },
    );
    match run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("classify: error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let manifest_path = args.manifest.unwrap_or_else(default_manifest_path);
    // Loaded by the commands that use models; the health check only asks the function.
    let models_dir = args.models_dir.filter(|dir| !dir.as_os_str().is_empty());
    if let (Some(dir), Command::Train(_)) = (&models_dir, &args.command) {
        // Training makes the models dir it adds to.
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the models dir {}", dir.display()))?;
    }
    let manifest = || -> anyhow::Result<Manifest> {
        let built_in = Manifest::load(&manifest_path)?;
        Ok(match &models_dir {
            Some(dir) => built_in.with_models_dir(dir),
            None => built_in,
        })
    };
    if !matches!(args.command, Command::Healthcheck(_)) {
        // A bad EDGE_KERNELS stops every command that computes, before any work.
        crate::kernels::table::select()?;
    }
    match args.command {
        Command::Serve(settings) => {
            crate::server::serve(&manifest()?, settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict(predict) => predict::run(&manifest()?, predict),
        Command::Bench(bench) => bench::run(&manifest()?, bench),
        Command::Train(train) => train::run(&manifest()?, train),
        Command::Eval(eval) => eval::run(&manifest()?, eval),
        Command::Quantize(quantize) => quantize::run(&manifest()?, quantize),
        Command::Healthcheck(check) => Ok(healthcheck::run(check)),
    }
}

/// A one-shot command whose output is piped into a reader that stops early (`| head`)
/// ends as other Unix tools do, by SIGPIPE, rather than panicking in `println!` (Rust
/// ignores the signal, so the write fails). Not for `serve`: a client that hangs up
/// must cost its request, not the server.
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default action, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: `default_level`).
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
