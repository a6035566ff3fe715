//! `classify serve`: the OpenFaaS-compatible HTTP function on tiny_http.
//!
//! One acceptor thread answers the cheap routes (health, readiness, metrics, the upload
//! page) itself, so probes stay fast while every worker is busy. Classification requests
//! get a short-lived handler thread that reads the (bounded) body under a deadline and
//! queues the image for the fixed inference pool ([`workers`]); a slow client therefore
//! holds a handler, never a worker. See `settings` for every limit.

mod api;
pub mod metrics;
pub mod multipart;
pub mod request;
pub mod settings;
pub mod watchdog;
mod workers;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::classifier::Classifier;
use crate::manifest::{Manifest, ModelSpec};
use metrics::Metrics;
use settings::ServeSettings;
use watchdog::Watchdog;
use workers::WorkerPool;

/// The loaded models and the pool that runs them; exists once loading succeeded.
struct Models {
    by_name: HashMap<String, Arc<Classifier>>,
    /// In the manifests' order, the default first.
    order: Vec<Arc<Classifier>>,
    default: Arc<Classifier>,
    /// Why models of the models dir are not served (the built-in ones always are).
    refused: Vec<String>,
    pool: WorkerPool,
}

/// Everything the request handlers share.
struct State {
    settings: ServeSettings,
    models: OnceLock<Models>,
    load_error: Mutex<Option<String>>,
    shutting_down: AtomicBool,
    /// Classification requests between acceptance and answer (`max_inflight`).
    inflight: AtomicUsize,
    /// Live handler threads (`max_connections`).
    handlers: AtomicUsize,
    metrics: Arc<Metrics>,
    watchdog: Arc<Watchdog>,
}

/// Loads the models, then serves until SIGTERM or SIGINT; returns once in-flight
/// requests are answered (or `write_timeout` has passed).
pub fn serve(manifest: &Manifest, mut settings: ServeSettings) -> Result<()> {
    // Before anything is announced: a signal right after "listening" must stop us cleanly,
    // not kill us with the default action.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }

    settings.precision = Some(manifest.precision(settings.precision));
    let specs: Vec<ModelSpec> = selected_models(manifest, &settings.models)?
        .into_iter()
        .cloned()
        .collect();
    let refused = manifest.refused.clone();
    let listener =
        TcpListener::bind((settings.bind.as_str(), settings.port)).with_context(|| {
            format!(
                "cannot listen on {}:{} (is the port taken?)",
                settings.bind, settings.port
            )
        })?;
    let address = listener.local_addr()?;
    tiny_http::limits::set(
        settings.max_connections as usize * OPEN_CONNECTIONS_PER_HANDLER,
        settings::limit(settings.read_timeout),
    );
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| anyhow::anyhow!("cannot start the HTTP server on {address}: {e}"))?;
    eprintln!("classify: listening on http://{address}");

    let state = Arc::new(State {
        settings,
        models: OnceLock::new(),
        load_error: Mutex::new(None),
        shutting_down: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
        handlers: AtomicUsize::new(0),
        metrics: Arc::new(Metrics::new()),
        watchdog: Watchdog::start(),
    });
    {
        let state = Arc::clone(&state);
        std::thread::Builder::new()
            .name("model-loader".into())
            .spawn(move || load_models(&state, &specs, refused))
            .context("cannot start the model loader")?;
    }

    while !stop.load(Ordering::Relaxed) {
        if let Some(error) = state
            .load_error
            .lock()
            .expect("no panics under the lock")
            .take()
        {
            bail!("{error}");
        }
        if let Some(request) = server
            .recv_timeout(Duration::from_millis(50))
            .context("the HTTP server failed")?
        {
            api::dispatch(&state, request);
        }
    }

    // Shutting down: unhealthy at once, no new work, in-flight requests finish.
    state.shutting_down.store(true, Ordering::SeqCst);
    remove_lock_file(&state.settings.lock_file);
    tracing::info!("shutting down: finishing in-flight requests");
    let grace = settings::limit(state.settings.write_timeout).unwrap_or(Duration::from_secs(3600));
    let deadline = Instant::now() + grace;
    while state.handlers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(20)) {
            api::dispatch(&state, request);
        }
    }
    let unfinished = state.handlers.load(Ordering::SeqCst);
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "write_timeout passed with requests still in flight"
        );
    }
    Ok(())
}

/// Open sockets allowed per handled connection (`max_connections`): the extra room is
/// for idle keep-alive connections, which cost a thread but no body. Beyond it, new
/// connections are closed at once; an open connection must deliver each request head
/// within `read_timeout` (idle time included), so slow or silent clients free their slot.
const OPEN_CONNECTIONS_PER_HANDLER: usize = 2;

fn selected_models<'a>(manifest: &'a Manifest, names: &[String]) -> Result<Vec<&'a ModelSpec>> {
    if names.is_empty() {
        return Ok(manifest.models.iter().collect());
    }
    names
        .iter()
        .map(|name| manifest.model(name.trim()))
        .collect()
}

fn load_models(state: &State, specs: &[ModelSpec], mut refused: Vec<String>) {
    let mut by_name = HashMap::new();
    let mut order = Vec::new();
    for spec in specs {
        match Classifier::load_with(spec, state.settings.precision.unwrap_or_default()) {
            Ok(classifier) => {
                state
                    .metrics
                    .model_load_seconds
                    .with_label_values(&[classifier.name()])
                    .set(classifier.load_seconds());
                let classifier = Arc::new(classifier);
                order.push(Arc::clone(&classifier));
                by_name.insert(spec.name.clone(), classifier);
            }
            // A models dir's model that does not load is left out; the function serves
            // the others.
            Err(error) if spec.from_models_dir => {
                tracing::warn!("not serving {:?}: {error:#}", spec.name);
                refused.push(format!("model {:?}: {error:#}", spec.name));
            }
            Err(error) => {
                *state.load_error.lock().expect("no panics under the lock") =
                    Some(format!("{error:#}"));
                return;
            }
        }
    }
    if order.is_empty() {
        *state.load_error.lock().expect("no panics under the lock") =
            Some(format!("no model could be loaded: {}", refused.join("; ")));
        return;
    }
    let settings = &state.settings;
    let pool = WorkerPool::start(
        settings.workers(),
        settings.queue as usize,
        settings.max_batch as usize,
        Arc::clone(&state.metrics),
    );
    let models = Models {
        by_name,
        default: Arc::clone(&order[0]),
        order,
        refused,
        pool,
    };
    if state.models.set(models).is_err() {
        unreachable!("models are loaded once");
    }
    write_lock_file(&settings.lock_file);
    let names: Vec<&str> = state
        .models
        .get()
        .map(|m| m.order.iter().map(|c| c.name()).collect())
        .unwrap_or_default();
    tracing::info!(models = ?names, "ready");
}

/// Swarm's health check looks for this file; failing to write it is worth a warning,
/// not a refusal to serve (the HTTP probes still work).
fn write_lock_file(path: &Path) {
    if let Err(error) = std::fs::write(path, b"") {
        tracing::warn!(path = %path.display(), "cannot write the lock file: {error}");
    }
}

fn remove_lock_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), "cannot remove the lock file: {error}")
        }
    }
}
