//! Open Inference Protocol (KServe v2): server metadata, server liveness and readiness, and model readiness.
//! Model metadata and inference over v2 are not served yet.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::ops::readiness;
use super::AppState;
use crate::engine::ModelState;
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_version_ready))
}

async fn server_metadata() -> Json<Value> {
    // Extensions are listed only once implemented (binary tensor data, model repository: not yet).
    Json(json!({"name": "ember", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
}

async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

/// 200 when every model is loaded and warm (as /health/ready); 503 naming those that are not.
async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    readiness(&state)?;
    Ok(Json(json!({"ready": true})))
}

async fn model_ready(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    version_ready(&state, &name, None)
}

async fn model_version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let number = version
        .parse::<u64>()
        .map_err(|_| ApiError::BadRequest(format!("model version `{version}` is not a positive integer")))?;
    version_ready(&state, &name, Some(number))
}

/// 200 when `name` (at `version`, if given) answers requests; 404 for a model or version that does not exist;
/// 503 for one that is loading, failed, unloaded, or (a version on disk) not the one served.
fn version_ready(state: &AppState, name: &str, version: Option<u64>) -> Result<Json<Value>, ApiError> {
    let entry = state.model(name)?;
    let current = entry.current();
    if let Some(version) = version.filter(|v| !current.spec.versions.contains(v)) {
        return Err(ApiError::NotFound(format!(
            "model `{name}` has no version {version}; versions: {:?}",
            current.spec.versions
        )));
    }
    match &current.state {
        ModelState::Ready(loaded) if version.is_none_or(|v| v == loaded.version) => {
            Ok(Json(json!({"name": name, "version": loaded.version.to_string(), "ready": true})))
        }
        ModelState::Ready(loaded) => Err(ApiError::Unavailable(format!(
            "model `{name}` serves version {}, not version {}",
            loaded.version,
            version.unwrap_or_default()
        ))),
        other => Err(ApiError::Unavailable(format!("model `{name}` is {}", other.name()))),
    }
}
