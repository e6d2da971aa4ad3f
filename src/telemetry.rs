//! Logging and tracing. Logs: human-readable text or JSON lines, filtered by `EMBER_LOG` (or `RUST_LOG`), default
//! `info`. Traces (with `--otlp-endpoint`): ember's spans exported over OTLP/HTTP to a collector.
//!
//! What is traced is what a request does in ember: a `request` span per HTTP request (its parent is the client's
//! W3C `traceparent` when it sends one), and under it `decode`, `queue_wait`, `batch_forward` (with the batch's
//! size) and `encode`. Health probes and /metrics are `probe` spans, which are logged but never exported.
//!
//! Exporting must never slow or fail a request: ended spans go into a bounded queue and one background thread
//! exports them in batches; when the queue is full (a collector that is down or slow) a span is dropped and
//! counted (`ember_trace_spans_dropped_total`), as is every span of a batch the collector did not take.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Spans waiting to be exported, at most; beyond it they are dropped and counted.
const QUEUE_SPANS: usize = 4096;
/// Spans per export request, at most.
const BATCH_SPANS: usize = 512;
/// How long an ended span waits at most before its batch is sent.
const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
/// How long one export may take before its spans count as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Spans lost because the queue was full, and because the collector did not take them.
static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static TRACING_ON: AtomicBool = AtomicBool::new(false);

/// Counts of the export pipeline since the process started, for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanCounts {
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
}

pub fn span_counts() -> SpanCounts {
    SpanCounts {
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped_queue_full: DROPPED_QUEUE_FULL.load(Ordering::Relaxed),
        dropped_export_failed: DROPPED_EXPORT_FAILED.load(Ordering::Relaxed),
    }
}

/// Whether spans are exported (`--otlp-endpoint` was given): the HTTP layer reads `traceparent` and answers
/// `traceresponse` only then.
pub fn tracing_on() -> bool {
    TRACING_ON.load(Ordering::Relaxed)
}

/// The span names that are exported (a `probe` span, and anything else, is only logged).
const EXPORTED_SPANS: [&str; 5] = ["request", "decode", "queue_wait", "batch_forward", "encode"];
/// The spans only traces need; the logs leave them out, so that without `--otlp-endpoint` nothing listens to
/// them and `info_span!` makes none (every request, and every job in a batch, would otherwise build them).
const TRACE_ONLY_SPANS: [&str; 4] = ["decode", "queue_wait", "batch_forward", "encode"];

/// What `init` set up; `shutdown` sends the spans still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "exporting the last spans failed");
            }
        }
    }
}

/// How log lines are written (`--log-format`): text for people, JSON for log collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging only, for the commands that serve nothing (train, eval).
pub fn init_logging(format: LogFormat) {
    let _ = install(format, None);
}

/// Logging, and with `otlp_endpoint` (a collector's base URL, `http://host:4318`, or the full URL of its traces
/// path) the export of ember's spans over OTLP/HTTP.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let provider = otlp_endpoint.map(tracer_provider).transpose()?;
    install(format, provider.clone());
    if let (Some(endpoint), Some(_)) = (otlp_endpoint, &provider) {
        TRACING_ON.store(true, Ordering::Relaxed);
        tracing::info!(endpoint = %traces_url(endpoint), "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

fn install(format: LogFormat, provider: Option<SdkTracerProvider>) -> Option<()> {
    let filter = EnvFilter::try_from_env("EMBER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        // ONNX Runtime logs every session's options at info (through the `ort` crate's target): warnings only.
        .unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    };
    let traces = provider.map(|provider| {
        let only_ours = filter_fn(|meta| meta.is_span() && EXPORTED_SPANS.contains(&meta.name()));
        tracing_opentelemetry::layer().with_tracer(provider.tracer("ember")).with_filter(only_ours)
    });
    let logged = filter.and(filter_fn(|meta| !(meta.is_span() && TRACE_ONLY_SPANS.contains(&meta.name()))));
    // try_init: a second call (tests starting several servers) keeps the first subscriber.
    tracing_subscriber::registry().with(logs.with_filter(logged)).with(traces).try_init().ok()
}

/// The URL spans are posted to: the endpoint as given if it has a path, else the OTLP/HTTP traces path on it.
fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    let path = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest).split_once('/').map(|(_, p)| p);
    match path {
        Some(path) if !path.is_empty() => endpoint.to_string(),
        _ => format!("{endpoint}/v1/traces"),
    }
}

fn tracer_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let url = traces_url(endpoint);
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("--otlp-endpoint {endpoint}: cannot export to {url}"))?;
    let resource = Resource::builder().with_service_name("ember").build();
    let processor = BoundedExport::start(exporter)?;
    Ok(SdkTracerProvider::builder().with_resource(resource).with_span_processor(processor).build())
}

/// What the export thread is told.
enum Message {
    Span(Box<SpanData>),
    /// Export everything queued, then answer.
    Flush(SyncSender<()>),
    /// Export everything queued, then stop.
    Stop(SyncSender<()>),
}

/// A span processor with a bounded queue and one export thread (the SDK's batch processor drops without saying
/// how many): `on_end` never blocks, and what is lost is counted.
#[derive(Debug)]
struct BoundedExport {
    queue: SyncSender<Message>,
    exporter: Arc<Mutex<SpanExporter>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl BoundedExport {
    fn start(exporter: SpanExporter) -> anyhow::Result<BoundedExport> {
        let (queue, spans) = mpsc::sync_channel(QUEUE_SPANS);
        let exporter = Arc::new(Mutex::new(exporter));
        let for_thread = Arc::clone(&exporter);
        let thread = std::thread::Builder::new()
            .name("ember-otlp-export".into())
            .spawn(move || export_loop(&spans, &for_thread))
            .context("cannot start the span export thread")?;
        Ok(BoundedExport { queue, exporter, thread: Mutex::new(Some(thread)) })
    }

    /// Sends a control message and waits (at most `timeout`) for the export thread to act on it.
    fn ask(&self, message: impl FnOnce(SyncSender<()>) -> Message, timeout: Duration) -> OTelSdkResult {
        let (done, answered) = mpsc::sync_channel(1);
        self.queue.send(message(done)).map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answered.recv_timeout(timeout).map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        match self.queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Message::Flush, EXPORT_TIMEOUT * 2)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.ask(Message::Stop, timeout);
        if let Some(thread) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            if result.is_ok() {
                let _ = thread.join();
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.lock().unwrap_or_else(PoisonError::into_inner).set_resource(resource);
    }
}

/// Collects spans into batches of at most `BATCH_SPANS`, sending each when full or `EXPORT_INTERVAL` after its
/// first span. The exporter's HTTP client is async: the thread runs it on its own small runtime.
fn export_loop(spans: &Receiver<Message>, exporter: &Mutex<SpanExporter>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        tracing::error!("cannot start the span export runtime; spans will not be exported");
        return;
    };
    let export = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let exporter = exporter.lock().unwrap_or_else(PoisonError::into_inner);
        match runtime.block_on(exporter.export(std::mem::take(batch))) {
            Ok(()) => EXPORTED.fetch_add(count, Ordering::Relaxed),
            Err(e) => {
                tracing::debug!(error = %e, spans = count, "the collector did not take a batch of spans");
                DROPPED_EXPORT_FAILED.fetch_add(count, Ordering::Relaxed)
            }
        };
    };
    let mut batch: Vec<SpanData> = Vec::new();
    let mut due: Option<Instant> = None;
    loop {
        let message = match due {
            None => spans.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(due) => spans.recv_timeout(due.saturating_duration_since(Instant::now())),
        };
        match message {
            Ok(Message::Span(span)) => {
                due.get_or_insert_with(|| Instant::now() + EXPORT_INTERVAL);
                batch.push(*span);
                if batch.len() >= BATCH_SPANS {
                    export(&mut batch);
                    due = None;
                }
            }
            Ok(Message::Flush(done)) => {
                export(&mut batch);
                due = None;
                let _ = done.send(());
            }
            Ok(Message::Stop(done)) => {
                export(&mut batch);
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                export(&mut batch);
                due = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&mut batch);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_to_a_bare_endpoint_only() {
        assert_eq!(traces_url("http://collector:4318"), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("http://collector:4318/"), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("http://gateway/otlp/v1/traces"), "http://gateway/otlp/v1/traces");
    }
}
