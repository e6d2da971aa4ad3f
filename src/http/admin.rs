//! The admin API's routes (only with `--admin-token` / `EMBER_ADMIN_TOKEN`): load, unload and reload models, and
//! fine-tuning jobs. Every route needs `Authorization: Bearer <token>` (`service::admin` checks it).

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::body::read_multipart_images;
use crate::jobs::JobData;
use crate::model_toml::TaskKind;
use crate::registry::Reloaded;
use crate::service::models::positive_integer;
use crate::service::offload::off_runtime;
use crate::service::{repository, ApiError, AppState, ErrorKind};
use crate::train::publish::UPLOAD_PREFIX;
use crate::train::upload;
use crate::train::{self, DataSource, TrainSettings};

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/models/{name}/load", post(load))
        .route("/admin/models/{name}/unload", post(unload))
        .route("/admin/models/{name}/reload", post(reload))
        .route("/admin/models/{name}/fine-tune", post(fine_tune))
        .route("/admin/jobs", get(list_jobs))
        .route("/admin/jobs/{id}", get(job).delete(cancel_job))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

pub(super) async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match state.authorize_admin(authorization) {
        Ok(()) => next.run(request).await,
        Err(e) if e.kind == ErrorKind::Unauthorized => {
            let mut response = e.into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Loads (or swaps to) what the repository names for `name`, and says what is served now.
async fn change(state: AppState, name: String, force: bool) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(match repository::load(&state, &name, force).await? {
        Reloaded::Swapped { version, previous } => {
            json!({"model": name, "version": version, "previous_version": previous, "changed": true})
        }
        Reloaded::Unchanged { version } => json!({"model": name, "version": version, "changed": false}),
    }))
}

pub(super) async fn load(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    change(state, name, false).await
}

async fn reload(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    change(state, name, true).await
}

pub(super) async fn unload(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    repository::unload(&state, &name).await?;
    Ok(Json(json!({"model": name, "state": "unloaded"})))
}

/// multipart: `data` (zip or tar.gz of an image folder or text files, or one CSV / JSONL / text file) and an
/// optional `settings` JSON object with the settings of `ember train`; `publish=false` (query or field) saves the
/// version without serving it. Answers 202 with the job.
async fn fine_tune(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let admin = state.admin()?.clone();
    let entry = state.model(&name)?;
    let task = entry.spec().config.task;
    let single_file = match task {
        TaskKind::ImageClassification | TaskKind::StyleTransfer => None,
        TaskKind::TextClassification => Some("data.csv"),
        TaskKind::TextGeneration => Some("data.txt"),
        other => {
            return Err(ApiError::validation(format!(
                "model `{name}` is a {other} model: ember cannot fine-tune those yet"
            )))
        }
    };
    // Training runs the TorchScript module: a version served only as ONNX or a package is refused before the
    // upload is read.
    let spec = entry.spec();
    if let Some(version) = spec.served_version() {
        crate::train::torchscript_file(&spec, version).map_err(|e| ApiError::validation(e.to_string()))?;
    }
    let ([data], mut params) = read_multipart_images(request, admin.upload, ["data"]).await?;
    let settings: TrainSettings = match params.remove("settings") {
        None => TrainSettings::default(),
        Some(serde_json::Value::String(text)) => {
            let mut deserializer = serde_json::Deserializer::from_str(&text);
            serde_path_to_error::deserialize(&mut deserializer)
                .map_err(|e| ApiError::validation(format!("settings: {e}")))?
        }
        Some(other) => return Err(ApiError::validation(format!("settings must be a JSON object, got {other}"))),
    };
    let publish = match params.remove("publish") {
        None => true,
        Some(serde_json::Value::Bool(publish)) => publish,
        Some(other) => return Err(ApiError::validation(format!("publish must be true or false, got {other}"))),
    };
    if let Some(field) = params.keys().next() {
        return Err(ApiError::validation(format!(
            "unknown parameter `{field}`: send `data`, `settings` and `publish`"
        )));
    }
    settings.validate().map_err(|e| ApiError::validation(format!("settings: {e}")))?;
    let limits = admin.unpack;
    let model = name.clone();
    let checked_settings = settings.clone();
    let job_data = off_runtime("unpacking the upload", move || {
        // Named by this process, so that a restart can tell an abandoned upload from a live one.
        let folder = tempfile::Builder::new()
            .prefix(&format!("{}{}-", UPLOAD_PREFIX, std::process::id()))
            .tempdir()
            .map_err(|e| ApiError::internal(format!("cannot create a folder for the upload: {e}")))?;
        let name = match single_file {
            Some(name) if data.trim_ascii_start().starts_with(b"{") && name == "data.csv" => "data.jsonl",
            Some(name) => name,
            None => "data.bin",
        };
        let unpacked =
            upload::unpack(&data, name, folder.path(), limits).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if single_file.is_none() && matches!(unpacked, upload::Unpacked::File(_)) {
            return Err(ApiError::bad_request(format!(
                "model `{model}` learns from images: upload a zip or tar.gz of a folder (one subfolder per label for a \
                 classifier; style.jpg and content/ for a style)"
            )));
        }
        let source = DataSource { path: unpacked.path().to_path_buf(), class_names: None };
        train::check_data_size(task, &source, &checked_settings).map_err(|e| ApiError::validation(e.to_string()))?;
        Ok(JobData { source, folder })
    })
    .await?;
    let status = admin.jobs.submit(&name, job_data, settings, publish)?;
    let location = format!("/admin/jobs/{}", status.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(status)).into_response())
}

async fn list_jobs(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({"jobs": state.admin()?.jobs.list()})))
}

async fn job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.admin()?.jobs.get(positive_integer("job id", &id)?)?).into_response())
}

async fn cancel_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(state.admin()?.jobs.cancel(positive_integer("job id", &id)?)?).into_response())
}
