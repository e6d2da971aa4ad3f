//! `POST /v1/models/{name}/classify` and `POST /v1/classify`: an image in, the top k labels out.

use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::body::read_image_upload;
use super::v1::on_default_model;
use super::{decode_off_runtime, wrong_backend, AppState};
use crate::config::TaskKind;
use crate::http::error::ApiError;
use crate::tasks::classify::Prediction;
use crate::tasks::Backend;

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

pub async fn named(State(state): State<AppState>, Path(name): Path<String>, request: Request) -> Response {
    let result = classify(&state, &name, request).await;
    state.with_model_label(&name, result)
}

pub async fn default(State(state): State<AppState>, request: Request) -> Response {
    on_default_model(state, TaskKind::ImageClassification, |state, name| named(State(state), Path(name), request)).await
}

async fn classify(state: &AppState, name: &str, request: Request) -> Result<Json<ClassifyResponse>, ApiError> {
    let loaded = state.ready_model(name, TaskKind::ImageClassification)?;
    // ready_model checked the task, so the backend is the image-classification one.
    let Backend::ImageClassification(pool) = &loaded.backend else {
        return Err(wrong_backend(name, TaskKind::ImageClassification));
    };
    let upload = read_image_upload(request, state.limits.body).await?;
    let params: ClassifyParams = upload.params()?;
    let classifier = pool.task().clone();
    let top_k = classifier.validate_top_k(params.top_k)?;

    pool.check_room()?;
    // Decoding and resizing take milliseconds of CPU: keep them off the async workers.
    let probe = state.probe_image(&upload.image)?;
    let preparer = classifier.clone();
    let input = decode_off_runtime(state, &[probe], move || preparer.prepare(&upload.image, probe)).await?;

    let probabilities = pool.infer(input, state.limits.request_timeout).await?;
    Ok(Json(ClassifyResponse {
        model: name.to_string(),
        version: loaded.version,
        predictions: classifier.top_k(&probabilities, top_k),
    }))
}
