//! Operations routes: health probes, Prometheus metrics, the OpenAPI spec.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::service::repository::readiness;
use crate::service::{ApiError, AppState};

/// The committed spec, served as is so that it cannot drift from what is in the repository.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.yaml", get(openapi))
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

/// 200 only once every model in the repository is loaded and warmed up.
async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    readiness(&state)?;
    Ok(Json(json!({"status": "ready"})))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let spans = crate::telemetry::span_counts();
    state.metrics.observe_spans(spans.exported, spans.dropped_queue_full, spans.dropped_export_failed);
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], state.metrics.render()).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}
