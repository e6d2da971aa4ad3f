//! Operations routes: health probes, Prometheus metrics, the OpenAPI spec.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;
use crate::http::error::ApiError;
use crate::registry::ModelState;

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

/// Every model that should serve is loaded and warm; else a 503 naming each one that is not, and why.
pub(crate) fn readiness(state: &AppState) -> Result<(), ApiError> {
    let waiting = state.registry.not_ready();
    if waiting.is_empty() {
        return Ok(());
    }
    let reasons: Vec<String> = waiting
        .iter()
        .map(|(name, model_state)| match model_state {
            ModelState::Failed(message) => format!("`{name}` failed: {message}"),
            other => format!("`{name}` is {}", other.name()),
        })
        .collect();
    Err(ApiError::unavailable(format!("not ready: {}", reasons.join("; "))))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let spans = crate::telemetry::span_counts();
    state.metrics.observe_spans(spans.exported, spans.dropped_queue_full, spans.dropped_export_failed);
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], state.metrics.render()).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}
