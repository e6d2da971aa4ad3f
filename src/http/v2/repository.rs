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
use crate::service::repository::{self, IndexEntry};
use crate::service::{ApiError, AppState};

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
    let models = repository::index(&state, request.ready).into_iter().map(|IndexEntry { name, version, state, reason }| {
        json!({"name": name, "version": version, "state": state, "reason": reason})
    });
    Ok(Json(models.collect()))
}
