//! The task routes (`/v1/...`, one module per task family) and the model listing.

use std::path::Path;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::extract::ModelName;
use super::openai::OpenAiModel;
use super::{classify, generate, sentiment, style_transfer, stylize};
use crate::engine::device;
use crate::model_toml::{LoadPolicy, ModelToml, TaskKind};
use crate::registry::{ModelEntry, ModelState};
use crate::service::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{name}", get(describe_model))
        // A task's short route runs the same handler: `Serving` picks the task's default model.
        .route("/v1/models/{name}/classify", post(classify::classify))
        .route("/v1/classify", post(classify::classify))
        .route("/v1/models/{name}/sentiment", post(sentiment::sentiment))
        .route("/v1/sentiment", post(sentiment::sentiment))
        .route("/v1/models/{name}/generate", post(generate::generate))
        .route("/v1/generate", post(generate::generate))
        .route("/v1/models/{name}/stylize", post(stylize::named))
        .route("/v1/stylize", post(stylize::default))
        .route("/v1/style-transfer", post(style_transfer::style_transfer))
}

#[derive(Serialize)]
struct ModelInfo {
    /// `id`, `object`, `created` and `owned_by`: what OpenAI's clients read from a model.
    #[serde(flatten)]
    openai: OpenAiModel,
    name: String,
    task: TaskKind,
    description: String,
    /// Versions on disk, ascending.
    versions: Vec<u64>,
    /// The version answering requests (null until loaded).
    served_version: Option<u64>,
    /// loading | ready | failed | unloaded
    state: &'static str,
    /// When the model loads: start, or on-demand (on its first request; only with --model-memory-budget).
    load: &'static str,
    /// Why the model failed, or why a newer version could not replace the one serving.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    device: Option<String>,
    /// The format serving (torchscript | onnx | aoti; null until loaded) and the formats the version on offer
    /// holds files of.
    format: Option<&'static str>,
    formats: Vec<&'static str>,
    /// What the version serving costs in resident memory, measured across its load and warm-up (null until
    /// loaded).
    resident_bytes: Option<u64>,
    /// When a request last used the version serving, in Unix seconds (null until one has).
    last_used: Option<u64>,
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
    cpus: usize,
    configured: ConfiguredThreads,
    share_weights: bool,
    borrow_idle_threads: bool,
}

/// model.toml's own words for the thread counts: a number or "auto".
#[derive(Serialize)]
struct ConfiguredThreads {
    workers: String,
    intra_op_threads: String,
}

impl From<&ModelToml> for BatchingInfo {
    fn from(config: &ModelToml) -> Self {
        let (b, sizing) = (&config.batching, config.sizing());
        BatchingInfo {
            max_batch_size: b.max_batch_size,
            max_delay_ms: b.max_delay_ms,
            queue_capacity: b.queue_capacity,
            workers: sizing.workers,
            intra_op_threads: sizing.intra_op_threads,
            cpus: sizing.cpus,
            configured: ConfiguredThreads {
                workers: b.workers.to_string(),
                intra_op_threads: b.intra_op_threads.to_string(),
            },
            share_weights: b.share_weights,
            borrow_idle_threads: b.borrow_idle_threads,
        }
    }
}

fn model_info(state: &AppState, entry: &ModelEntry) -> ModelInfo {
    let current = entry.current();
    let spec = &current.spec;
    let loaded = current.state.loaded();
    let served_version = loaded.map(|loaded| loaded.version);
    let device = loaded.map(|loaded| device::name(loaded.device));
    let format = loaded.map(|loaded| loaded.format.name());
    let error = match &current.state {
        ModelState::Failed(message) => Some(message.clone()),
        _ => current.last_error.clone(),
    };
    // The version on offer: the one serving, else the newest on disk.
    let version = served_version.or(spec.versions.last().copied());
    let created = version.map_or(0, |v| modified_secs(&spec.dir.join(v.to_string())));
    ModelInfo {
        openai: OpenAiModel::new(spec.name.clone(), created),
        name: spec.name.clone(),
        task: spec.config.task,
        description: spec.config.description.clone(),
        versions: spec.versions.clone(),
        served_version,
        state: current.state.name(),
        load: if state.registry.is_on_demand(entry) { LoadPolicy::OnDemand.name() } else { LoadPolicy::Start.name() },
        error,
        device,
        format,
        formats: version.map(|v| spec.formats(v).iter().map(|f| f.name()).collect()).unwrap_or_default(),
        resident_bytes: loaded.map(|loaded| loaded.resident_bytes),
        last_used: loaded.and_then(|loaded| loaded.last_used_ms()).map(|ms| ms / 1000),
        default: state.registry.default_for(spec.config.task) == Some(spec.name.as_str()),
        batching: BatchingInfo::from(&spec.config),
    }
}

/// When a file or folder was last modified, in Unix seconds (0 if that cannot be read).
fn modified_secs(path: &Path) -> u64 {
    let modified = std::fs::metadata(path).and_then(|m| m.modified());
    modified.ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs())
}

/// ember's list (`models`) and OpenAI's (`object`, `data`) in one answer, so that both kinds of clients read
/// `GET /v1/models` without asking for a shape.
#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<OpenAiModel>,
    models: Vec<ModelInfo>,
}

async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    let models: Vec<ModelInfo> = state.registry.entries().iter().map(|entry| model_info(&state, entry)).collect();
    let data = models.iter().map(|model| model.openai.clone()).collect();
    Json(ModelList { object: "list", data, models })
}

async fn describe_model(
    State(state): State<AppState>,
    ModelName(name): ModelName,
) -> Result<Json<ModelInfo>, ApiError> {
    let entry = state.model(&name)?;
    Ok(Json(model_info(&state, &entry)))
}
