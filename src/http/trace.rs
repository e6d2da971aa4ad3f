//! Each request's span: `request` (exported with `--otlp-endpoint`), or `probe` for health checks and /metrics
//! (logged, never exported: a scrape every few seconds would bury the traces). With tracing on, a client's W3C
//! `traceparent` becomes the span's parent, so the trace continues, and the answer carries `traceresponse` with
//! the trace and span ids ember used.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::REQUEST_ID;
use crate::service::trace::continue_trace;
use crate::telemetry::tracing_on;

/// Paths that are polled, not used: their spans are never exported.
fn is_probe(path: &str) -> bool {
    path.starts_with("/health/") || path.starts_with("/v2/health/") || path == "/metrics"
}

pub fn request_span(request: &Request) -> Span {
    let id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (method, uri) = (request.method(), request.uri());
    if is_probe(uri.path()) {
        return tracing::info_span!("probe", method = %method, uri = %uri, request_id = %id);
    }
    let span = tracing::info_span!("request", method = %method, uri = %uri, request_id = %id, status = Empty,
        "otel.kind" = "server");
    continue_trace(&span, &Headers(request.headers()));
    span
}

/// HTTP headers as a carrier of the client's trace context.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Middleware inside the request's span: records the answer's status on it and, with tracing on, answers
/// `traceresponse: 00-<trace id>-<span id>-<flags>` (W3C Trace Context
/// level 2), so a client can find its request's trace.
pub async fn trace_response(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    Span::current().record("status", i64::from(response.status().as_u16()));
    if tracing_on() {
        let context = Span::current().context();
        let span = context.span();
        let ids = span.span_context();
        if ids.is_valid() {
            let value = format!("00-{}-{}-{:02x}", ids.trace_id(), ids.span_id(), ids.trace_flags().to_u8());
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert("traceresponse", value);
            }
        }
    }
    response
}
