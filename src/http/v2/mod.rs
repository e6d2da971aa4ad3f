//! Open Inference Protocol (KServe v2): server metadata, liveness and readiness, model metadata and readiness,
//! inference (JSON and the binary tensor data extension), and the model repository extension (admin token).
//!
//! Every model answers here with its model-level tensors (`tasks::tensor::signature`, the `signature` module's types); requests join the same
//! per-model queue and batches as the REST routes.

pub(crate) mod codec;
pub(crate) mod repository;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::body::{positive_integer, read_limited};
use super::ops::readiness;
use super::{decoding, encoding, serving, AppState};
use crate::http::error::ApiError;
use crate::http::extract::ModelName;
use crate::registry::{Loaded, ModelState};
use crate::tasks::tensor;

/// The protocol extensions ember implements (`GET /v2`).
pub(crate) const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "model_repository"];

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
    Json(json!({"name": "ember", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS}))
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

/// A version field of a gRPC message or similar: empty means "the one served", else a positive integer.
pub(crate) fn optional_version(version: &str) -> Result<Option<u64>, ApiError> {
    if version.is_empty() {
        Ok(None)
    } else {
        parse_version(version).map(Some)
    }
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

/// What model metadata says, whichever protocol carries it.
pub(crate) struct Metadata {
    pub versions: Vec<u64>,
    pub task: crate::config::TaskKind,
    pub signature: crate::signature::Signature,
    /// The format serving the version, in Triton's platform names (`onnxruntime_onnx`, ...).
    pub platform: &'static str,
}

/// Name, versions, platform and the tensors of `version` (default: the one served, else the one that would be).
fn metadata(state: &AppState, name: &str, version: Option<u64>) -> Result<Json<Value>, ApiError> {
    let Metadata { versions, task, signature, platform } = metadata_of(state, name, version)?;
    Ok(Json(json!({
        "name": name,
        "versions": versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": platform,
        "task": task,
        "inputs": signature.inputs,
        "outputs": signature.outputs,
    })))
}

/// The versions, task and tensors of `version` of a model (default: the one served, else the one that would
/// be); 404 for a model or version that does not exist.
pub(crate) fn metadata_of(state: &AppState, name: &str, version: Option<u64>) -> Result<Metadata, ApiError> {
    let spec = state.model(name)?.spec();
    let version = match version.or_else(|| spec.served_version()) {
        Some(version) if spec.versions.contains(&version) => version,
        other => {
            return Err(ApiError::not_found(format!(
                "model `{name}` has no version {}; versions: {:?}",
                other.map_or("to serve".to_string(), |v| v.to_string()),
                spec.versions
            )))
        }
    };
    // The loaded version's signature is in memory; another version's is read from its folder (its labels and
    // image size may differ from the model's: a fine-tune).
    let (signature, format) = match served(state, name, Some(version)) {
        Ok(loaded) => (loaded.signature.clone(), loaded.format),
        Err(_) => (
            tensor::signature(&spec.at_version(version).map_err(|e| ApiError::unavailable(e.to_string()))?),
            spec.expected_format(version),
        ),
    };
    Ok(Metadata { versions: spec.versions.clone(), task: spec.config.task, signature, platform: format.platform() })
}

async fn model_ready(State(state): State<AppState>, ModelName(name): ModelName) -> Result<Json<Value>, ApiError> {
    let loaded = served(&state, &name, None)?;
    Ok(Json(json!({"name": name, "version": loaded.version.to_string(), "ready": true})))
}

async fn model_version_ready(
    State(state): State<AppState>,
    ModelName(name): ModelName,
    Path((_, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let loaded = served(&state, &name, Some(parse_version(&version)?))?;
    Ok(Json(json!({"name": name, "version": loaded.version.to_string(), "ready": true})))
}

/// The loaded version of `name` (which must be `version`, if given). 404 for a model or version that does not
/// exist; 503 for one that is loading, failed, unloaded, or (a version on disk) not the one served.
pub(crate) fn served(state: &AppState, name: &str, version: Option<u64>) -> Result<Arc<Loaded>, ApiError> {
    let current = state.model(name)?.current();
    if let Some(version) = version.filter(|v| !current.spec.versions.contains(v)) {
        return Err(ApiError::not_found(format!(
            "model `{name}` has no version {version}; versions: {:?}",
            current.spec.versions
        )));
    }
    match (&current.state, version) {
        (ModelState::Ready(loaded), Some(version)) if loaded.version != version => Err(ApiError::unavailable(format!(
            "model `{name}` serves version {}, not version {version}",
            loaded.version
        ))),
        _ => serving(name, current.state),
    }
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

/// Runs checked inputs through the model's queue and batches within `timeout`; the outputs are the signature's.
pub(crate) async fn run(
    name: &str,
    loaded: &Loaded,
    inputs: Vec<tch::Tensor>,
    timeout: std::time::Duration,
) -> Result<Vec<tch::Tensor>, ApiError> {
    let outputs = loaded.backend.infer_tensors(inputs, timeout).await?;
    let expected = loaded.signature.outputs.len();
    if outputs.len() != expected {
        return Err(ApiError::internal(format!(
            "model `{name}` returned {} tensors; its signature has {expected} outputs",
            outputs.len()
        )));
    }
    Ok(outputs)
}

async fn run_infer(state: &AppState, name: &str, version: Option<u64>, request: Request) -> Result<Response, ApiError> {
    let loaded = served(state, name, version)?;
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
    let outputs = run(name, &loaded, decoded.inputs, state.limits.request_timeout).await?;
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
