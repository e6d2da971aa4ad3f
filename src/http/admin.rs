//! The admin API (only with `--admin-token` / `EMBER_ADMIN_TOKEN`): load, unload and reload models, and fine-tuning
//! jobs. Every route needs `Authorization: Bearer <token>`, compared in constant time.

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::body::{positive_integer, read_multipart_images, BodyLimit};
use super::{off_runtime, AppState};
use crate::config::TaskKind;
use crate::http::error::{ApiError, ErrorKind};
use crate::jobs::{JobData, Jobs};
use crate::registry::Reloaded;
use crate::train::publish::UPLOAD_PREFIX;
use crate::train::upload::{self, UnpackLimits};
use crate::train::{self, DataSource, TrainSettings};

/// What the admin routes need beyond the rest of the server.
#[derive(Clone)]
pub struct Admin {
    pub token: String,
    pub jobs: Jobs,
    /// `--max-upload-bytes` and `--upload-read-timeout-ms`.
    pub upload: BodyLimit,
    pub unpack: UnpackLimits,
}

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

fn admin(state: &AppState) -> Result<&Admin, ApiError> {
    state
        .admin
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the admin API is off: start ember with --admin-token or EMBER_ADMIN_TOKEN"))
}

pub(super) async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match authorize(&state, authorization) {
        Ok(()) => next.run(request).await,
        Err(e) if e.kind == ErrorKind::Unauthorized => {
            let mut response = e.into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Whether an `Authorization` value (HTTP's header, gRPC's metadata) carries the admin token: a 404 while the
/// admin API is off, a 401 without the token or with another one.
pub(crate) fn authorize(state: &AppState, authorization: Option<&str>) -> Result<(), ApiError> {
    let admin = admin(state)?;
    match authorization.and_then(bearer_token) {
        Some(token) if constant_time_eq(token.as_bytes(), admin.token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("the bearer token is wrong")),
        None => Err(ApiError::unauthorized("send the admin token as `Authorization: Bearer <token>`")),
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 7235).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Equal-length inputs take the same time whatever they hold; the length of the token is not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Loads (or swaps to) what the repository names for `name`, and says what is served now.
async fn change(state: AppState, name: String, force: bool) -> Result<Json<serde_json::Value>, ApiError> {
    let registry = std::sync::Arc::clone(&state.registry);
    let model = name.clone();
    let reloaded =
        off_runtime("loading the model", move || registry.reload(&model, force).map_err(ApiError::from)).await?;
    Ok(Json(match reloaded {
        Reloaded::Swapped { version, previous } => {
            json!({"model": name, "version": version, "previous_version": previous, "changed": true})
        }
        Reloaded::Unchanged { version } => json!({"model": name, "version": version, "changed": false}),
    }))
}

pub(crate) async fn load(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    change(state, name, false).await
}

async fn reload(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    change(state, name, true).await
}

pub(crate) async fn unload(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Waits for a load or swap of the same model to finish (seconds): off the async workers.
    let registry = std::sync::Arc::clone(&state.registry);
    let model = name.clone();
    off_runtime("unloading the model", move || registry.unload(&model).map_err(ApiError::from)).await?;
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
    let admin = admin(&state)?.clone();
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
    Ok(Json(json!({"jobs": admin(&state)?.jobs.list()})))
}

async fn job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(admin(&state)?.jobs.get(positive_integer("job id", &id)?)?).into_response())
}

async fn cancel_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(admin(&state)?.jobs.cancel(positive_integer("job id", &id)?)?).into_response())
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(super::bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(super::bearer_token("bearer abc"), Some("abc"));
        assert_eq!(super::bearer_token("Basic abc"), None);
        assert_eq!(super::bearer_token("Bearer"), None);
    }

    #[test]
    fn tokens_compare_by_content_and_length() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
