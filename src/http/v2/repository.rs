//! The protocol's model repository extension (Triton's): the index of models, and load / unload. It changes what
//! the server serves, so it sits behind the admin token like /admin (404 while the admin API is off).

use axum::extract::{Request, State};
use axum::middleware;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

// load and unload are the admin API's own handlers: the extension is another address for them.
use super::super::admin::{load, require_token, unload};
use super::super::body::{parse_params, read_limited};
use super::AppState;
use crate::http::error::ApiError;
use crate::registry::ModelState;

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/v2/repository/models/{name}/unload", post(unload))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    /// Only the models that are ready.
    #[serde(default)]
    ready: bool,
}

/// `[{name, version, state, reason}]`, states as Triton names them: READY, LOADING, UNAVAILABLE.
async fn index(State(state): State<AppState>, request: Request) -> Result<Json<Vec<Value>>, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_limited(body, &parts.headers, state.limits.body).await?;
    let params = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(params)) => params,
            _ => {
                return Err(ApiError::bad_request("the index request must be a JSON object such as {\"ready\": true}"))
            }
        }
    };
    let request: IndexRequest = parse_params(params).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let models = index_of(&state, request.ready).into_iter().map(
        |entry| json!({"name": entry.name, "version": entry.version, "state": entry.state, "reason": entry.reason}),
    );
    Ok(Json(models.collect()))
}

/// One model of the repository index.
pub(crate) struct IndexEntry {
    pub name: String,
    /// The version served (or that would be); empty if none.
    pub version: String,
    /// READY, LOADING or UNAVAILABLE.
    pub state: &'static str,
    /// Why it is unavailable.
    pub reason: String,
}

/// Every model by name, or only the ready ones.
pub(crate) fn index_of(state: &AppState, ready_only: bool) -> Vec<IndexEntry> {
    let mut names = state.registry.names();
    names.sort();
    let mut models = Vec::with_capacity(names.len());
    for name in names {
        let Some(entry) = state.registry.get(&name) else { continue };
        let current = entry.current();
        let (status, version, reason) = match &current.state {
            ModelState::Ready(loaded) => ("READY", Some(loaded.version), String::new()),
            ModelState::Loading => ("LOADING", current.spec.served_version(), String::new()),
            ModelState::Failed(message) => ("UNAVAILABLE", current.spec.served_version(), message.clone()),
            ModelState::Unloaded => ("UNAVAILABLE", current.spec.served_version(), "unloaded".to_string()),
        };
        if ready_only && status != "READY" {
            continue;
        }
        let version = version.map(|v| v.to_string()).unwrap_or_default();
        models.push(IndexEntry { name, version, state: status, reason });
    }
    models
}
