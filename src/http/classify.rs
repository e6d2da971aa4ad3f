//! `POST /v1/models/{name}/classify` and `POST /v1/classify`: an image in, the top k labels out.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::body::ImageUpload;
use super::extract::{Serving, TaskRoute};
use super::wrong_backend;
use crate::model_toml::TaskKind;
use crate::service::offload::decode_images;
use crate::service::{ApiError, AppState};
use crate::tasks::classify::Prediction;
use crate::tasks::Backend;

pub struct Classification;

impl TaskRoute for Classification {
    const TASK: TaskKind = TaskKind::ImageClassification;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyParams {
    top_k: Option<i64>,
}

#[derive(Serialize)]
pub(super) struct ClassifyResponse {
    model: String,
    version: u64,
    predictions: Vec<Prediction>,
}

pub async fn classify(
    State(state): State<AppState>,
    Serving { name, loaded, .. }: Serving<Classification>,
    upload: ImageUpload,
) -> Result<Json<ClassifyResponse>, ApiError> {
    // Serving checked the task, so the backend is the image-classification one.
    let Backend::ImageClassification(pool) = &loaded.backend else {
        return Err(wrong_backend(&name, Classification::TASK));
    };
    let params: ClassifyParams = upload.params()?;
    let classifier = pool.task().clone();
    let top_k = classifier.validate_top_k(params.top_k)?;

    pool.check_room()?;
    // Decoding and resizing take milliseconds of CPU: keep them off the async workers.
    let probe = state.probe_image(&upload.image)?;
    let preparer = classifier.clone();
    let input = decode_images(&state, &[probe], move || preparer.prepare(&upload.image, probe)).await?;

    let probabilities = pool.infer(input, state.limits.request_timeout).await?;
    Ok(Json(ClassifyResponse {
        model: name,
        version: loaded.version,
        predictions: classifier.top_k(&probabilities, top_k),
    }))
}
