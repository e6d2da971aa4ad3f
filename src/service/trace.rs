//! Continuing a client's trace from whatever carries its W3C context: HTTP's headers, gRPC's metadata.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::tracing_on;

/// Makes the client's trace (the carrier's `traceparent`, `tracestate`) the parent of `span`, when tracing is on.
pub fn continue_trace(span: &Span, carrier: &dyn Extractor) {
    if tracing_on() {
        let parent = TraceContextPropagator::new().extract(carrier);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
}
