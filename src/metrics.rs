//! Every Prometheus metric ember exports, defined once. Names start with `ember_`; durations are in seconds.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request and inference latencies span sub-millisecond (health) to tens of seconds (style optimisation).
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 18).expect("static bucket layout")
}

pub struct Metrics {
    registry: Registry,
    requests_total: IntCounterVec,
    request_duration: HistogramVec,
    queue_duration: HistogramVec,
    inference_duration: HistogramVec,
    batch_size: HistogramVec,
    queue_depth: IntGaugeVec,
    pub model_info: IntGaugeVec,
    model_load_duration: HistogramVec,
    generated_tokens_total: IntCounterVec,
    active_sequences: IntGaugeVec,
    pub fine_tune_jobs: IntGaugeVec,
    pub model_load_failures: IntCounterVec,
    pub model_loads: IntCounterVec,
    pub model_resident_bytes: IntGaugeVec,
    pub model_evictions: IntCounterVec,
    pub model_memory_budget_bytes: IntGauge,
    pub model_load_wait: HistogramVec,
    pub open_connections: IntGauge,
    pub decode_reserved_bytes: IntGauge,
    trace_spans_exported: IntCounter,
    trace_spans_dropped: IntCounterVec,
    pub access: AccessMetrics,
    pub tls: TlsMetrics,
}

/// The series of the door (the `access` module): API keys and rate limits.
#[derive(Clone)]
pub struct AccessMetrics {
    /// `ember_rate_limited_total{client}`: a key's name, or `address` for clients without keys (one series, not
    /// one per address: addresses are unbounded).
    pub rate_limited: IntCounterVec,
    /// `ember_api_key_refusals_total{reason}`: `missing`, `malformed` or `invalid`.
    pub key_refusals: IntCounterVec,
    /// `ember_rate_limit_clients`: clients whose buckets are kept.
    pub tracked_clients: IntGauge,
}

/// The series of TLS (the `tls` module).
#[derive(Clone)]
pub struct TlsMetrics {
    /// `ember_tls_certificate_expiry_timestamp_seconds`: when the certificate in force expires.
    pub expires_at: IntGauge,
    /// `ember_tls_reload_failures_total`: changed files that did not make a usable certificate.
    pub reload_failures: IntCounter,
    /// `ember_tls_handshake_failures_total{port,reason}`: `timeout`, `plain_http`, `client_certificate`, `protocol`
    /// or `connection`.
    pub handshake_failures: IntCounterVec,
}

/// The series of a text-generation model's scheduler.
#[derive(Clone)]
pub struct GenerationMetrics {
    pub tokens: IntCounter,
    pub active_sequences: IntGauge,
}

/// The per-model series a worker pool updates, resolved once so the hot path does no label lookups.
#[derive(Clone)]
pub struct ModelMetrics {
    pub queue_duration: Histogram,
    pub inference_duration: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: IntGauge,
    pub load_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let vec = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
            registry.register(Box::new(vec.clone())).expect("metric registered once");
            vec
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(vec.clone())).expect("metric registered once");
            vec
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(vec.clone())).expect("metric registered once");
            vec
        };
        let single_gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(gauge.clone())).expect("metric registered once");
            gauge
        };
        let metrics = Metrics {
            requests_total: counter(
                "ember_requests_total",
                "Requests answered, by model, route (HTTP route template or gRPC method) and HTTP status (for gRPC, the code \
                 HTTP answers the same outcome with).",
                &["model", "route", "status"],
            ),
            request_duration: histogram(
                "ember_request_duration_seconds",
                "Time from receiving a request to sending its response head, in seconds.",
                &["model", "route"],
                latency_buckets(),
            ),
            queue_duration: histogram(
                "ember_queue_duration_seconds",
                "Time a request waited in its model's queue before its batch started, in seconds.",
                &["model"],
                latency_buckets(),
            ),
            inference_duration: histogram(
                "ember_inference_duration_seconds",
                "Time one batch spent in the model (forward pass and output copy), in seconds.",
                &["model"],
                latency_buckets(),
            ),
            batch_size: histogram(
                "ember_batch_size",
                "Requests per executed batch.",
                &["model"],
                vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0],
            ),
            queue_depth: gauge("ember_queue_depth", "Requests waiting in the model's queue.", &["model"]),
            model_info: gauge(
                "ember_model_info",
                "1 for each model version being served, with its device and the format that serves it.",
                &["model", "version", "device", "format"],
            ),
            model_load_duration: histogram(
                "ember_model_load_duration_seconds",
                "Time a model version took to load and warm up, in seconds (once per copy of its weights).",
                &["model"],
                exponential_buckets(0.05, 2.0, 12).expect("static bucket layout"),
            ),
            generated_tokens_total: counter("ember_generated_tokens_total", "Tokens generated, by model.", &["model"]),
            active_sequences: gauge(
                "ember_active_sequences",
                "Sequences a text-generation model is advancing together (its continuous batch).",
                &["model"],
            ),
            fine_tune_jobs: gauge("ember_fine_tune_jobs", "Fine-tuning jobs, by state.", &["state"]),
            model_load_failures: counter(
                "ember_model_load_failures_total",
                "Loads of a model version that failed (the model keeps serving its previous version, if any).",
                &["model"],
            ),
            model_loads: counter(
                "ember_model_loads_total",
                "Model versions loaded and warmed up, by why: start (at start-up), swap (the repository changed: a new \
                 version, a pin, a new folder, a published fine-tune), admin (an operator's load or reload), demand \
                 (the first request of an on-demand model not in memory).",
                &["model", "reason"],
            ),
            model_resident_bytes: gauge(
                "ember_model_resident_bytes",
                "What the version a model serves costs: the process's resident memory grew by this much from before \
                 its load to after its warm-up, in bytes (exact with --max-concurrent-loads 1).",
                &["model"],
            ),
            model_evictions: counter(
                "ember_model_evictions_total",
                "On-demand models unloaded to make room under --model-memory-budget (idle and least recently used).",
                &["model"],
            ),
            model_memory_budget_bytes: single_gauge(
                "ember_model_memory_budget_bytes",
                "--model-memory-budget in bytes: what the loaded models may take together (0 when unset: no budget).",
            ),
            model_load_wait: histogram(
                "ember_model_load_wait_seconds",
                "Time requests for an on-demand model not in memory waited for its load, in seconds, by model.",
                &["model"],
                latency_buckets(),
            ),
            open_connections: single_gauge(
                "ember_open_connections",
                "HTTP connections open now (at most --max-connections).",
            ),
            decode_reserved_bytes: single_gauge(
                "ember_decode_reserved_bytes",
                "Memory reserved by image decodes in flight, in bytes (at most --max-decode-bytes).",
            ),
            trace_spans_exported: counter(
                "ember_trace_spans_exported_total",
                "Spans the OTLP collector took (with --otlp-endpoint).",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            trace_spans_dropped: counter(
                "ember_trace_spans_dropped_total",
                "Spans lost, by reason: queue_full (the export queue was full: a slow or absent collector), \
                 export_failed (the collector did not take their batch).",
                &["reason"],
            ),
            access: AccessMetrics {
                rate_limited: counter(
                    "ember_rate_limited_total",
                    "Requests refused 429 by --rate-limit, by client: the API key's name, or `address` for clients \
                     counted by their address (without --api-keys-file).",
                    &["client"],
                ),
                key_refusals: counter(
                    "ember_api_key_refusals_total",
                    "Requests refused 401 for their API key, by reason: missing (no Authorization header), malformed \
                     (not `Bearer <key>`), invalid (not a key of --api-keys-file).",
                    &["reason"],
                ),
                tracked_clients: single_gauge(
                    "ember_rate_limit_clients",
                    "Clients whose rate-limit buckets are held now (at most --rate-limit-clients).",
                ),
            },
            tls: TlsMetrics {
                expires_at: single_gauge(
                    "ember_tls_certificate_expiry_timestamp_seconds",
                    "When the TLS certificate in force expires, in seconds since the Unix epoch (with --tls-cert).",
                ),
                reload_failures: counter(
                    "ember_tls_reload_failures_total",
                    "Changes of the TLS files that did not make a usable certificate and key (the previous ones \
                     stay in force).",
                    &[],
                )
                .with_label_values(&[] as &[&str]),
                handshake_failures: counter(
                    "ember_tls_handshake_failures_total",
                    "Connections closed before a TLS handshake finished, by port (http, grpc) and reason: timeout \
                     (none within --header-read-timeout-ms), plain_http (a plain-HTTP request), client_certificate \
                     (none or a refused one, with --tls-client-ca), protocol (a TLS version or message the server \
                     refuses), connection (reset or closed mid-handshake).",
                    &["port", "reason"],
                ),
            },
            registry,
        };
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector registered once");
        metrics
    }

    pub fn for_model(&self, model: &str) -> ModelMetrics {
        ModelMetrics {
            queue_duration: self.queue_duration.with_label_values(&[model]),
            inference_duration: self.inference_duration.with_label_values(&[model]),
            batch_size: self.batch_size.with_label_values(&[model]),
            queue_depth: self.queue_depth.with_label_values(&[model]),
            load_duration: self.model_load_duration.with_label_values(&[model]),
        }
    }

    pub fn for_generation(&self, model: &str) -> GenerationMetrics {
        GenerationMetrics {
            tokens: self.generated_tokens_total.with_label_values(&[model]),
            active_sequences: self.active_sequences.with_label_values(&[model]),
        }
    }

    /// Counts one answered request (HTTP, or a gRPC call) and its duration.
    pub fn observe_request(&self, model: &str, route: &str, status: &str, took: std::time::Duration) {
        self.requests_total.with_label_values(&[model, route, status]).inc();
        self.request_duration.with_label_values(&[model, route]).observe(took.as_secs_f64());
    }

    /// Brings the span counters up to the export pipeline's counts since the process started.
    pub fn observe_spans(&self, exported: u64, dropped_queue_full: u64, dropped_export_failed: u64) {
        let catch_up = |counter: &IntCounter, total: u64| counter.inc_by(total.saturating_sub(counter.get()));
        catch_up(&self.trace_spans_exported, exported);
        catch_up(&self.trace_spans_dropped.with_label_values(&["queue_full"]), dropped_queue_full);
        catch_up(&self.trace_spans_dropped.with_label_values(&["export_failed"]), dropped_export_failed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
