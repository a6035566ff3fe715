//! Routes and answers: `POST /[model]` classifies, `GET /` is the upload page, plus
//! `/_/health`, `/_/ready` and `/metrics`. Every error is JSON `{"error", "detail"}`
//! with the status that names the client's mistake; 500 only for our own failures.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tiny_http::{Header, Method, Request, Response};

use super::multipart;
use super::request::{self, Query};
use super::settings::limit;
use super::workers::Job;
use super::State;
use crate::classifier::{Classifier, ClassifyError};
use crate::predictions::{keras_line, Prediction};
use crate::preprocess::{self, PreprocessError};

/// The upload page: one self-contained file, no external assets.
const PAGE: &str = include_str!("page.html");

/// Bodies up to this size were read by tiny_http with the headers; larger ones are read
/// (or drained) from the socket, which can block on a slow client.
const BUFFERED_BODY_BYTES: usize = 1024;

/// Handler threads do no heavy work (decoding runs on the workers).
const HANDLER_STACK_BYTES: usize = 512 * 1024;

/// An answer before it is written.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// The model that answered, for the request log.
    model: Option<String>,
    allow: Option<&'static str>,
}

impl Answer {
    fn json(status: u16, value: &impl Serialize) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).expect("answers serialise"),
            model: None,
            allow: None,
        }
    }

    fn error(status: u16, error: &str, detail: impl std::fmt::Display) -> Self {
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            error: &'a str,
            detail: String,
        }
        Self::json(
            status,
            &ErrorBody {
                error,
                detail: detail.to_string(),
            },
        )
    }

    fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            model: None,
            allow: None,
        }
    }

    fn method_not_allowed(allow: &'static str) -> Self {
        let mut answer = Self::error(405, "method_not_allowed", format!("use {allow}"));
        answer.allow = Some(allow);
        answer
    }
}

/// What the acceptor thread hands to a handler, or answers itself.
enum Route {
    Now(Answer),
    Classify {
        model: Option<String>,
        query: String,
    },
}

/// Routes one request: cheap answers inline, classification on a handler thread.
pub(super) fn dispatch(state: &Arc<State>, request: Request) {
    let started = Instant::now();
    let route = route(state, &request);
    let small_body = body_is_buffered(&request);
    match route {
        // Answering drops the request, which drains an unread body: only do that here
        // when the body was already buffered.
        Route::Now(answer) if small_body => respond(state, request, answer, started),
        route => {
            let previous = state.handlers.fetch_add(1, Ordering::SeqCst);
            if previous >= state.settings.max_connections as usize {
                state.handlers.fetch_sub(1, Ordering::SeqCst);
                let answer = Answer::error(
                    503,
                    "overloaded",
                    "too many connections at once; retry later",
                );
                if !small_body {
                    // Do not drain a body here: end the connection instead.
                    if let Some(peer) = request.remote_addr() {
                        super::watchdog::shutdown_connection(*peer);
                    }
                }
                respond(state, request, answer, started);
                return;
            }
            let handler_state = Arc::clone(state);
            let spawned = std::thread::Builder::new()
                .name("request".into())
                .stack_size(HANDLER_STACK_BYTES)
                .spawn(move || {
                    let state = handler_state;
                    let (answer, request) = match route {
                        Route::Now(answer) => (answer, request),
                        Route::Classify { model, query } => {
                            classify(&state, request, model, &query)
                        }
                    };
                    let guard = state.watchdog.watch(
                        request.remote_addr().copied(),
                        limit(state.settings.write_timeout),
                    );
                    respond(&state, request, answer, started);
                    drop(guard);
                    state.handlers.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(error) = spawned {
                tracing::error!("cannot spawn a request handler: {error}");
                state.handlers.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Whether tiny_http has already read the whole body (or there is none), so that
/// answering and dropping the request cannot block on the client.
fn body_is_buffered(request: &Request) -> bool {
    let streamed = header(request, "Transfer-Encoding").is_some()
        || header(request, "Expect").is_some()
        || header(request, "Connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade"));
    !streamed
        && request
            .body_length()
            .is_none_or(|n| n <= BUFFERED_BODY_BYTES)
}

fn route(state: &State, request: &Request) -> Route {
    let (path, query) = request.url().split_once('?').unwrap_or((request.url(), ""));
    let method = request.method();
    let is_get = matches!(method, Method::Get | Method::Head);
    match path {
        "/_/health" if is_get => Route::Now(health(state)),
        "/_/ready" if is_get => Route::Now(ready(state)),
        "/metrics" if is_get => Route::Now(Answer::text(
            200,
            "text/plain; version=0.0.4",
            state.metrics.render(),
        )),
        "/_/models" if is_get => Route::Now(list_models(state)),
        "/_/health" | "/_/ready" | "/_/models" | "/metrics" => {
            Route::Now(Answer::method_not_allowed("GET"))
        }
        "/" if is_get => Route::Now(Answer::text(200, "text/html; charset=utf-8", PAGE)),
        _ => {
            let name = path.trim_matches('/');
            if name.contains('/')
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Route::Now(Answer::error(
                    404,
                    "not_found",
                    format!("no route {path:?}"),
                ));
            }
            let known = name.is_empty()
                || state
                    .models
                    .get()
                    .is_none_or(|m| m.by_name.contains_key(name));
            if !known {
                return Route::Now(unknown_model(state, name));
            }
            match method {
                Method::Post => Route::Classify {
                    model: (!name.is_empty()).then(|| name.to_string()),
                    query: query.to_string(),
                },
                _ if name.is_empty() => Route::Now(Answer::method_not_allowed("GET, POST")),
                _ => Route::Now(Answer::method_not_allowed("POST")),
            }
        }
    }
}

fn health(state: &State) -> Answer {
    if state.shutting_down.load(Ordering::SeqCst) {
        Answer::error(503, "shutting_down", "the function is shutting down")
    } else {
        Answer::text(200, "text/plain", "OK")
    }
}

fn ready(state: &State) -> Answer {
    if state.shutting_down.load(Ordering::SeqCst) {
        return Answer::error(503, "shutting_down", "the function is shutting down");
    }
    if state.models.get().is_none() {
        return Answer::error(503, "loading", "the models are still loading");
    }
    if at_capacity(state) {
        return Answer::error(429, "busy", "max_inflight requests are running");
    }
    Answer::text(200, "text/plain", "OK")
}

/// `GET /_/models`: every model served, the default first, and why models of the
/// models dir were refused.
fn list_models(state: &State) -> Answer {
    #[derive(Serialize)]
    struct Listed<'a> {
        name: &'a str,
        description: &'a str,
        architecture: &'static str,
        backbone: Option<&'a str>,
        classes: usize,
        labels: Vec<&'a str>,
        input: Input,
        precision: &'static str,
        /// The weights file in use (the int8 file's at int8, when there is one).
        sha256: &'a str,
        from_models_dir: bool,
        default: bool,
    }
    #[derive(Serialize)]
    struct Input {
        size: u32,
        resize: crate::preprocess::ResizeMode,
    }
    #[derive(Serialize)]
    struct Listing<'a> {
        models: Vec<Listed<'a>>,
        refused: &'a [String],
    }
    let Some(models) = state.models.get() else {
        return Answer::error(503, "loading", "the models are still loading");
    };
    let listed = models
        .order
        .iter()
        .map(|classifier| {
            let spec = classifier.spec();
            let labels = classifier.labels();
            let int8_file = spec
                .int8
                .as_ref()
                .filter(|_| classifier.precision() == crate::plan::Precision::Int8);
            Listed {
                name: &spec.name,
                description: &spec.description,
                architecture: spec.architecture.name(),
                backbone: spec.backbone.as_ref().map(|b| b.name.as_str()),
                classes: labels.len(),
                labels: labels.names().collect(),
                input: Input {
                    size: spec.input.size,
                    resize: spec.input.resize,
                },
                precision: classifier.precision().name(),
                sha256: int8_file.map_or(&spec.sha256, |file| &file.sha256),
                from_models_dir: spec.from_models_dir,
                default: Arc::ptr_eq(classifier, &models.default),
            }
        })
        .collect();
    Answer::json(
        200,
        &Listing {
            models: listed,
            refused: &models.refused,
        },
    )
}

fn at_capacity(state: &State) -> bool {
    let max = state.settings.max_inflight;
    max > 0 && state.inflight.load(Ordering::SeqCst) >= max
}

fn unknown_model(state: &State, name: &str) -> Answer {
    let known: Vec<&str> = state
        .models
        .get()
        .map(|m| {
            let mut names: Vec<&str> = m.by_name.keys().map(String::as_str).collect();
            names.sort_unstable();
            names
        })
        .unwrap_or_default();
    Answer::error(
        404,
        "unknown_model",
        format!(
            "no model {name:?}; this function serves {}",
            known.join(", ")
        ),
    )
}

/// The whole classification exchange; returns the request so the caller answers it.
fn classify(
    state: &State,
    mut request: Request,
    path_model: Option<String>,
    query: &str,
) -> (Answer, Request) {
    if state.shutting_down.load(Ordering::SeqCst) {
        return (
            Answer::error(503, "shutting_down", "the function is shutting down"),
            request,
        );
    }
    let Some(models) = state.models.get() else {
        return (
            Answer::error(
                503,
                "loading",
                "the models are still loading; retry shortly",
            ),
            request,
        );
    };
    let query = match request::parse_query(query)
        .map_err(|detail| Answer::error(400, "bad_query", detail))
    {
        Ok(query) => query,
        Err(answer) => return (answer, request),
    };
    let model = match path_model.or_else(|| query.model.clone()) {
        None => Arc::clone(&models.default),
        Some(name) => match models.by_name.get(&name) {
            Some(model) => Arc::clone(model),
            None => return (unknown_model(state, &name), request),
        },
    };
    // Count ourselves in before checking, so two racing requests cannot both slip in.
    let inflight = state.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    state.metrics.in_flight.inc();
    let _inflight = InflightGuard(state);
    if state.settings.max_inflight > 0 && inflight > state.settings.max_inflight {
        return (
            Answer::error(
                429,
                "too_many_requests",
                "max_inflight requests are running; retry later",
            ),
            request,
        );
    }

    let guard = state.watchdog.watch(
        request.remote_addr().copied(),
        limit(state.settings.read_timeout),
    );
    let body = match read_body(&mut request, state.settings.max_body_bytes) {
        Ok(body) => body,
        Err(answer) => return (answer, request),
    };
    drop(guard);
    let image = match content_type(&request).as_deref().map(multipart::boundary) {
        Some(Ok(Some(boundary))) => match multipart::file_part(&body, boundary) {
            Ok(part) => part.to_vec(),
            Err(error) => return (Answer::error(400, "bad_multipart", error), request),
        },
        Some(Err(error)) => return (Answer::error(400, "bad_multipart", error), request),
        _ => body,
    };
    let mut answer = run(state, &model, image, &query, wants_text(&request));
    answer.model = Some(model.name().to_string());
    (answer, request)
}

struct InflightGuard<'a>(&'a State);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.in_flight.dec();
    }
}

/// Queues the image, waits up to `exec_timeout`, and shapes the answer.
fn run(
    state: &State,
    model: &Arc<Classifier>,
    image: Vec<u8>,
    query: &Query,
    text: bool,
) -> Answer {
    // Refuse bombs and junk from the header alone, before queueing any work.
    if let Err(error) = preprocess::check_pixel_budget(&image, state.settings.max_pixels) {
        return input_error(error);
    }
    let started = Instant::now();
    let (reply, answer) = crossbeam_channel::bounded(1);
    let abandoned = Arc::new(AtomicBool::new(false));
    let job = Job {
        model: Arc::clone(model),
        body: image,
        resize: query.resize,
        top: query.top,
        max_pixels: state.settings.max_pixels,
        abandoned: Arc::clone(&abandoned),
        reply,
    };
    let models = state.models.get().expect("checked by the caller");
    if models.pool.submit(job).is_err() {
        return Answer::error(
            429,
            "too_many_requests",
            "the inference queue is full; retry later",
        );
    }
    let outcome = match limit(state.settings.exec_timeout) {
        Some(timeout) => answer.recv_timeout(timeout).ok(),
        None => answer.recv().ok(),
    };
    let Some(outcome) = outcome else {
        abandoned.store(true, Ordering::Relaxed);
        return Answer::error(
            504,
            "timeout",
            format!(
                "no answer within exec_timeout ({:?})",
                state.settings.exec_timeout
            ),
        );
    };
    match outcome {
        Ok(predictions) if text => Answer::text(
            200,
            "text/plain; charset=utf-8",
            keras_line(&predictions) + "\n",
        ),
        Ok(predictions) => {
            #[derive(Serialize)]
            struct Classified<'a> {
                model: &'a str,
                predictions: Vec<Prediction>,
                elapsed_ms: f64,
            }
            Answer::json(
                200,
                &Classified {
                    model: model.name(),
                    predictions,
                    elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
                },
            )
        }
        Err(ClassifyError::Input(error)) => input_error(error),
        Err(ClassifyError::Inference(error)) => {
            Answer::error(500, "inference_failed", format!("{error:#}"))
        }
    }
}

fn input_error(error: PreprocessError) -> Answer {
    match error {
        PreprocessError::TooManyPixels { .. } => Answer::error(413, "image_too_large", error),
        PreprocessError::Empty => Answer::error(
            400,
            "empty_body",
            "send the image bytes as the request body",
        ),
        PreprocessError::Unsupported(_) | PreprocessError::Invalid(_) => {
            Answer::error(400, "invalid_image", error)
        }
    }
}

fn read_body(request: &mut Request, max_bytes: u64) -> Result<Vec<u8>, Answer> {
    let too_large = || {
        Answer::error(
            413,
            "body_too_large",
            format!("the body is larger than max_body_bytes ({max_bytes} bytes)"),
        )
    };
    let declared = request.body_length();
    if declared.is_some_and(|n| n as u64 > max_bytes) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    let read = request
        .as_reader()
        .take(max_bytes + 1)
        .read_to_end(&mut body);
    if let Err(error) = read {
        return Err(Answer::error(
            400,
            "bad_body",
            format!("the body could not be read: {error}"),
        ));
    }
    if body.len() as u64 > max_bytes {
        return Err(too_large());
    }
    if let Some(declared) = declared {
        if body.len() < declared {
            return Err(Answer::error(
                400,
                "incomplete_body",
                format!("the body ended after {} of {declared} bytes (client gone or read_timeout passed)", body.len()),
            ));
        }
    }
    Ok(body)
}

fn header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn content_type(request: &Request) -> Option<String> {
    header(request, "Content-Type").map(str::to_string)
}

fn wants_text(request: &Request) -> bool {
    request::wants_text(header(request, "Accept"))
}

/// The caller's `X-Call-Id` when it is a sane token, or a fresh one.
fn call_id(request: &Request) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    request::sane_call_id(header(request, "X-Call-Id"))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            format!(
                "{:x}-{:x}",
                since_epoch.as_micros(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        })
}

fn respond(state: &State, request: Request, answer: Answer, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    let call_id = call_id(&request);
    let method = request.method().to_string();
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let mut response = Response::from_data(answer.body)
        .with_status_code(answer.status)
        .with_header(header_of("Content-Type", answer.content_type))
        .with_header(header_of("X-Call-Id", &call_id))
        .with_header(header_of("X-Duration-Seconds", &format!("{seconds:.6}")));
    if let Some(allow) = answer.allow {
        response.add_header(header_of("Allow", allow));
    }
    let result = request.respond(response);
    state
        .metrics
        .observe_request(answer.status, &method, seconds);
    let model = answer.model.as_deref().unwrap_or("-");
    let duration_ms = seconds * 1e3;
    if path.starts_with("/_/") || path == "/metrics" {
        tracing::debug!(
            call_id,
            method,
            path,
            status = answer.status,
            duration_ms,
            "request"
        );
    } else {
        tracing::info!(
            call_id,
            method,
            path,
            model,
            status = answer.status,
            duration_ms,
            "request"
        );
    }
    if let Err(error) = result {
        tracing::debug!(call_id, "the answer could not be sent: {error}");
    }
}

fn header_of(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values are ASCII")
}
