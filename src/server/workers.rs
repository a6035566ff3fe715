//! The inference pool: a fixed number of threads share the loaded models read-only and
//! take jobs from one bounded queue. A worker that finds several queued jobs for the
//! same model runs them as one batch. Decoding happens here too, so the memory held by
//! decoded pictures is bounded by the number of workers, not of clients.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::classifier::{Classifier, ClassifyError};
use crate::predictions::Prediction;
use crate::preprocess::{self, ResizeMode};

use super::metrics::Metrics;

/// One image to classify, and where its answer goes.
pub struct Job {
    pub model: Arc<Classifier>,
    pub body: Vec<u8>,
    pub resize: Option<ResizeMode>,
    pub top: usize,
    pub max_pixels: u64,
    /// Set by the requester when it stopped waiting (exec_timeout): skip the job.
    pub abandoned: Arc<AtomicBool>,
    pub reply: Sender<Result<Vec<Prediction>, ClassifyError>>,
}

pub struct WorkerPool {
    queue: Sender<Job>,
}

/// The queue is full: the caller should answer 429.
#[derive(Debug)]
pub struct QueueFull;

impl WorkerPool {
    pub fn start(
        workers: usize,
        queue_capacity: usize,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (queue, jobs) = crossbeam_channel::bounded::<Job>(queue_capacity);
        let activity = Arc::new(PoolActivity::default());
        for index in 0..workers {
            let jobs = jobs.clone();
            let metrics = Arc::clone(&metrics);
            let activity = Arc::clone(&activity);
            std::thread::Builder::new()
                .name(format!("inference-{index}"))
                .spawn(move || work(&jobs, max_batch, &metrics, &activity))
                .expect("can spawn inference workers");
        }
        Self { queue }
    }

    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        self.queue.try_send(job).map_err(|error| match error {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => QueueFull,
        })
    }
}

/// Once the whole pool has been idle this long, free memory goes back to the system.
/// Not after every batch, nor while another worker runs: trimming then made forwards
/// fault their activation pages in again (about a fifth of the throughput, measured).
const IDLE_BEFORE_TRIM: Duration = Duration::from_millis(250);

/// What the workers know of each other, to trim only when all of them are idle.
#[derive(Default)]
struct PoolActivity {
    busy: AtomicUsize,
    /// Memory was used since the last trim.
    dirty: AtomicBool,
}

fn work(jobs: &Receiver<Job>, max_batch: usize, metrics: &Metrics, activity: &PoolActivity) {
    loop {
        let first = match jobs.recv_timeout(IDLE_BEFORE_TRIM) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                if activity.busy.load(Ordering::SeqCst) == 0
                    && activity.dirty.swap(false, Ordering::SeqCst)
                {
                    crate::memory::release_free_memory();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        activity.busy.fetch_add(1, Ordering::SeqCst);
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch.retain(|job| !job.abandoned.load(Ordering::Relaxed));
        while !batch.is_empty() {
            // One forward per model; jobs of other models wait for the next round.
            let model = Arc::clone(&batch[0].model);
            let (same, rest): (Vec<Job>, Vec<Job>) = batch
                .into_iter()
                .partition(|job| Arc::ptr_eq(&job.model, &model));
            run_batch(&model, same, metrics);
            batch = rest;
        }
        activity.dirty.store(true, Ordering::SeqCst);
        activity.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Preprocesses each job, answers those whose input is bad, and classifies the rest in
/// one forward pass.
fn run_batch(model: &Classifier, jobs: Vec<Job>, metrics: &Metrics) {
    let started = Instant::now();
    let mut inputs = Vec::with_capacity(jobs.len());
    let mut ready = Vec::with_capacity(jobs.len());
    for job in jobs {
        match preprocess::prepare(&job.body, &model.spec().input, job.resize, job.max_pixels) {
            Ok(input) => {
                inputs.push(input);
                ready.push(job);
            }
            Err(error) => {
                let _ = job.reply.send(Err(ClassifyError::Input(error)));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    let probabilities = model.probability_rows(&inputs);
    let seconds_each = started.elapsed().as_secs_f64() / ready.len() as f64;
    match probabilities {
        Ok(rows) => {
            for (job, row) in ready.into_iter().zip(rows) {
                metrics
                    .inference_seconds
                    .with_label_values(&[model.name()])
                    .observe(seconds_each);
                let _ =
                    job.reply
                        .send(Ok(crate::predictions::top_k(&row, model.labels(), job.top)));
            }
        }
        Err(error) => {
            tracing::error!(model = model.name(), "inference failed: {error:#}");
            for job in ready {
                let _ = job
                    .reply
                    .send(Err(ClassifyError::Inference(anyhow::anyhow!("{error:#}"))));
            }
        }
    }
}
