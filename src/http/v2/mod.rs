//! The Open Inference Protocol (KServe v2) over HTTP: server metadata, liveness and readiness, model metadata and
//! readiness, inference (JSON and the binary tensor data extension, framed by `codec`), and the model repository
//! extension (admin token).
//!
//! Every model answers here with its model-level tensors (`tasks::tensor::signature`); the routes are adapters
//! over the service layer (`service::inference`, `service::tensors`, `service::repository`), which the gRPC
//! service calls too, so requests join the same per-model queue and batches as the REST routes and gRPC calls.

pub mod codec;
mod repository;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::body::read_limited;
use super::extract::ModelName;
use crate::service::inference::{self, Metadata, ServerMetadata, SERVER_METADATA};
use crate::service::models::positive_integer;
use crate::service::offload::{decoding, encoding};
use crate::service::repository::readiness;
use crate::service::{ApiError, AppState};

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_version_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_version_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_version))
        .merge(repository::routes(state))
}

async fn server_metadata() -> Json<Value> {
    let ServerMetadata { name, version, extensions } = SERVER_METADATA;
    Json(json!({"name": name, "version": version, "extensions": extensions}))
}

async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

/// 200 when every model is loaded and warm (as /health/ready); 503 naming those that are not.
async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    readiness(&state)?;
    Ok(Json(json!({"ready": true})))
}

/// A `{version}` path segment: a positive integer.
fn parse_version(version: &str) -> Result<u64, ApiError> {
    positive_integer("model version", version)
}

async fn model_metadata(State(state): State<AppState>, ModelName(name): ModelName) -> Result<Json<Value>, ApiError> {
    metadata(&state, &name, None)
}

async fn model_version_metadata(
    State(state): State<AppState>,
    ModelName(name): ModelName,
    Path((_, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    metadata(&state, &name, Some(parse_version(&version)?))
}

/// Name, versions, platform and the tensors of `version` (default: the one served, else the one that would be).
fn metadata(state: &AppState, name: &str, version: Option<u64>) -> Result<Json<Value>, ApiError> {
    let Metadata { versions, task, signature, platform } = inference::metadata(state, name, version)?;
    Ok(Json(json!({
        "name": name,
        "versions": versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": platform,
        "task": task,
        "inputs": signature.inputs,
        "outputs": signature.outputs,
    })))
}

async fn model_ready(State(state): State<AppState>, ModelName(name): ModelName) -> Result<Json<Value>, ApiError> {
    ready_answer(&state, &name, None)
}

async fn model_version_ready(
    State(state): State<AppState>,
    ModelName(name): ModelName,
    Path((_, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    ready_answer(&state, &name, Some(parse_version(&version)?))
}

/// Ready: the model serves (the version), or is an on-demand model that a request loads (whether it is in
/// memory now is GET /v1/models/{name}'s `state`: KServe's answer has no field for it).
fn ready_answer(state: &AppState, name: &str, version: Option<u64>) -> Result<Json<Value>, ApiError> {
    let loaded = state.served_now(name, version)?;
    let version = match &loaded {
        Some(loaded) => Some(loaded.version),
        None => version.or(state.model(name)?.spec().served_version()),
    };
    let version = version.map(|v| v.to_string()).unwrap_or_default();
    Ok(Json(json!({"name": name, "version": version, "ready": true})))
}

async fn infer(
    State(state): State<AppState>,
    ModelName(name): ModelName,
    request: Request,
) -> Result<Response, ApiError> {
    run_infer(&state, &name, None, request).await
}

async fn infer_version(
    State(state): State<AppState>,
    ModelName(name): ModelName,
    Path((_, version)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    run_infer(&state, &name, Some(parse_version(&version)?), request).await
}

async fn run_infer(state: &AppState, name: &str, version: Option<u64>, request: Request) -> Result<Response, ApiError> {
    let loaded = state.served(name, version, state.limits.request_timeout).await?;
    let (parts, body): (_, Body) = request.into_parts();
    let header_length = match parts.headers.get(codec::HEADER_LENGTH) {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| {
            ApiError::bad_request(format!("{} must be a byte count, got {value:?}", codec::HEADER_LENGTH))
        })?),
    };
    let body = read_limited(body, &parts.headers, state.limits.body).await?;
    // Parsing a large JSON tensor takes milliseconds of CPU: off the async workers.
    let for_decoding = Arc::clone(&loaded);
    let decoded =
        decoding("decoding the infer request", move || codec::decode(&body, header_length, &for_decoding.signature))
            .await?;
    let outputs = inference::run(name, &loaded, decoded.inputs, state.limits.request_timeout).await?;
    let (model, version, id, wanted) = (name.to_string(), loaded.version, decoded.id, decoded.outputs);
    let for_encoding = Arc::clone(&loaded);
    let max_response_bytes = state.limits.max_response_bytes;
    let encoded = encoding("encoding the infer answer", move || {
        let answer = codec::Answer { model: &model, version, id: id.as_deref() };
        codec::encode(answer, &for_encoding.signature, &outputs, &wanted, max_response_bytes)
    })
    .await?;
    let content_type = if encoded.header_length.is_some() { "application/octet-stream" } else { "application/json" };
    let mut response = ([(header::CONTENT_TYPE, content_type)], encoded.body).into_response();
    if let Some(length) = encoded.header_length {
        response.headers_mut().insert(HeaderName::from_static(codec::HEADER_LENGTH), HeaderValue::from(length));
    }
    Ok(response)
}
