//! Prometheus metrics under the of-watchdog's names (`http_requests_total`,
//! `http_request_duration_seconds`, `http_requests_in_flight`) plus our own per-model
//! inference time and model load time, and which kernel runs each operation
//! (`classify_kernel_info{op,kernel} 1`). One registry per server, not a global.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub in_flight: Gauge,
    pub inference_seconds: HistogramVec,
    pub model_load_seconds: GaugeVec,
    pub kernel_info: IntGaugeVec,
}

/// Latency buckets from a fast int8 forward on x86 to a slow Pi 3 under load.
const SECONDS_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests served, by status code and method",
            ),
            &["code", "method"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Seconds from request to answer",
            )
            .buckets(SECONDS_BUCKETS.to_vec()),
            &["code", "method"],
        )
        .expect("valid metric");
        let in_flight = Gauge::new(
            "http_requests_in_flight",
            "Classification requests being handled",
        )
        .expect("valid metric");
        let inference_seconds = HistogramVec::new(
            HistogramOpts::new(
                "classify_inference_seconds",
                "Seconds of decoding, preprocessing and forward pass per image",
            )
            .buckets(SECONDS_BUCKETS.to_vec()),
            &["model"],
        )
        .expect("valid metric");
        let model_load_seconds = GaugeVec::new(
            Opts::new(
                "classify_model_load_seconds",
                "Seconds it took to load each model",
            ),
            &["model"],
        )
        .expect("valid metric");
        let kernel_info = IntGaugeVec::new(
            Opts::new(
                "classify_kernel_info",
                "1 for the kernel that runs each operation on this CPU (EDGE_KERNELS forces a level)",
            ),
            &["op", "kernel"],
        )
        .expect("valid metric");
        for (op, kernel) in crate::kernels::table().entries() {
            kernel_info.with_label_values(&[op, kernel]).set(1);
        }
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(inference_seconds.clone()),
            Box::new(model_load_seconds.clone()),
            Box::new(kernel_info.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            request_seconds,
            in_flight,
            inference_seconds,
            model_load_seconds,
            kernel_info,
        }
    }

    pub fn observe_request(&self, code: u16, method: &str, seconds: f64) {
        let code = code.to_string();
        self.requests
            .with_label_values(&[code.as_str(), method])
            .inc();
        self.request_seconds
            .with_label_values(&[code.as_str(), method])
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
