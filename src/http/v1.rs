//! The task routes (`/v1/...`) and the model listing.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::body::read_image_upload;
use super::AppState;
use crate::config::BatchingConfig;
use crate::engine::{device, ModelEntry, ModelState};
use crate::error::ApiError;
use crate::tasks::classify::{Prediction, DEFAULT_TOP_K};
use crate::tasks::{Backend, TaskKind};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{name}", get(describe_model))
        .route("/v1/models/{name}/classify", post(classify_named))
        .route("/v1/classify", post(classify_default))
}

#[derive(Serialize)]
struct ModelInfo {
    name: String,
    task: TaskKind,
    description: String,
    /// Versions on disk, ascending.
    versions: Vec<u64>,
    /// The version answering requests (null until loaded).
    served_version: Option<u64>,
    /// loading | ready | failed
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    device: Option<String>,
    default: bool,
    batching: BatchingInfo,
}

#[derive(Serialize)]
struct BatchingInfo {
    max_batch_size: usize,
    max_delay_ms: u64,
    queue_capacity: usize,
    workers: usize,
    intra_op_threads: usize,
    borrow_idle_threads: bool,
}

impl From<&BatchingConfig> for BatchingInfo {
    fn from(b: &BatchingConfig) -> Self {
        BatchingInfo {
            max_batch_size: b.max_batch_size,
            max_delay_ms: b.max_delay_ms,
            queue_capacity: b.queue_capacity,
            workers: b.workers,
            intra_op_threads: b.intra_op_threads,
            borrow_idle_threads: b.borrow_idle_threads,
        }
    }
}

fn model_info(state: &AppState, entry: &ModelEntry) -> ModelInfo {
    let spec = &entry.spec;
    let model_state = entry.state();
    let (served_version, device, error) = match &model_state {
        ModelState::Ready(loaded) => (Some(loaded.version), Some(device::name(loaded.device)), None),
        ModelState::Failed(message) => (None, None, Some(message.clone())),
        ModelState::Loading => (None, None, None),
    };
    ModelInfo {
        name: spec.name.clone(),
        task: spec.config.task,
        description: spec.config.description.clone(),
        versions: spec.versions.clone(),
        served_version,
        state: model_state.name(),
        error,
        device,
        default: state.registry.default_for(spec.config.task) == Some(spec.name.as_str()),
        batching: BatchingInfo::from(&spec.config.batching),
    }
}

#[derive(Serialize)]
struct ModelList {
    models: Vec<ModelInfo>,
}

async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList { models: state.registry.entries().map(|entry| model_info(&state, entry)).collect() })
}

async fn describe_model(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let result = state.model(&name).map(|entry| Json(model_info(&state, entry)));
    state.with_model_label(&name, result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyParams {
    top_k: Option<i64>,
}

#[derive(Serialize)]
struct ClassifyResponse {
    model: String,
    version: u64,
    predictions: Vec<Prediction>,
}

async fn classify_named(State(state): State<AppState>, Path(name): Path<String>, request: Request) -> Response {
    let result = classify(&state, &name, request).await;
    state.with_model_label(&name, result)
}

async fn classify_default(State(state): State<AppState>, request: Request) -> Response {
    match state.default_model(TaskKind::ImageClassification) {
        Ok(name) => classify_named(State(state), Path(name), request).await,
        Err(e) => e.into_response(),
    }
}

async fn classify(state: &AppState, name: &str, request: Request) -> Result<Json<ClassifyResponse>, ApiError> {
    let loaded = state.ready_model(name, TaskKind::ImageClassification)?;
    // ready_model checked the task, so the backend is the image-classification one.
    let Backend::ImageClassification(pool) = &loaded.backend;
    let upload = read_image_upload(request, state.limits.max_body_bytes).await?;
    let params: ClassifyParams = upload.params()?;
    let classifier = pool.task().clone();
    let top_k = classifier.validate_top_k(params.top_k.unwrap_or(DEFAULT_TOP_K))?;

    pool.check_room()?;
    // Decoding and resizing take milliseconds of CPU: keep them off the async workers.
    let max_pixels = state.limits.max_image_pixels;
    let preparer = classifier.clone();
    let input = tokio::task::spawn_blocking(move || preparer.prepare(&upload.image, max_pixels))
        .await
        .map_err(|e| ApiError::Internal(format!("image preprocessing stopped: {e}")))??;

    let probabilities = pool.infer(input, state.limits.request_timeout).await?;
    Ok(Json(ClassifyResponse {
        model: name.to_string(),
        version: loaded.version,
        predictions: classifier.top_k(&probabilities, top_k),
    }))
}
