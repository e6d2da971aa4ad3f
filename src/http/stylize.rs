//! `POST /v1/models/{name}/stylize` and `POST /v1/stylize?style=`: an image in (as for classify), the image
//! restyled by one pass of a fast style network out, as PNG or JPEG.

use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::body::{parse_params, read_image_upload};
use super::{wrong_backend, AppState};
use crate::error::ApiError;
use crate::tasks::style::{OutputFormat, StylizeParams, Stylizer};
use crate::tasks::{Backend, TaskKind};

/// Names a style model by its full name or without the `style_` prefix (`?style=starry_night`).
const STYLE_MODEL_PREFIX: &str = "style_";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StylizeRequest {
    strength: Option<f64>,
    max_size: Option<i64>,
    format: Option<OutputFormat>,
    /// Only on the short route, where it picks the model.
    style: Option<String>,
}

pub async fn named(State(state): State<AppState>, Path(name): Path<String>, request: Request) -> Response {
    let result = stylize(&state, &name, request, false).await;
    state.with_model_label(&name, result)
}

/// The short route: the model named by `?style=`, else the default style-transfer model.
pub async fn default(State(state): State<AppState>, request: Request) -> Response {
    let style = request.uri().query().and_then(|query| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .ok()?
            .into_iter()
            .find_map(|(key, value)| (key == "style").then_some(value))
    });
    let name = match style {
        Some(style) => style_model(&state, &style),
        None => state.default_model(TaskKind::StyleTransfer),
    };
    match name {
        Ok(name) => {
            let result = stylize(&state, &name, request, true).await;
            state.with_model_label(&name, result)
        }
        Err(e) => e.into_response(),
    }
}

/// The model a `style` parameter names; a 404 lists the styles there are.
fn style_model(state: &AppState, style: &str) -> Result<String, ApiError> {
    let is_style_model =
        |name: &str| state.registry.get(name).is_some_and(|entry| entry.spec.config.task == TaskKind::StyleTransfer);
    let prefixed = format!("{STYLE_MODEL_PREFIX}{style}");
    let found = [style, prefixed.as_str()].into_iter().find(|name| is_style_model(name)).map(str::to_string);
    found.ok_or_else(|| {
        let styles: Vec<&str> = state
            .registry
            .entries()
            .filter(|entry| entry.spec.config.task == TaskKind::StyleTransfer)
            .map(|entry| entry.spec.name.as_str())
            .collect();
        ApiError::NotFound(format!("style `{style}` does not exist; styles: {}", styles.join(", ")))
    })
}

async fn stylize(state: &AppState, name: &str, request: Request, short_route: bool) -> Result<Response, ApiError> {
    let loaded = state.ready_model(name, TaskKind::StyleTransfer)?;
    let Backend::StyleTransfer(pool) = &loaded.backend else {
        return Err(wrong_backend(name, TaskKind::StyleTransfer));
    };
    let upload = read_image_upload(request, state.limits.max_body_bytes).await?;
    let request: StylizeRequest = parse_params(upload.params.clone())?;
    if request.style.is_some() && !short_route {
        return Err(ApiError::Validation(format!(
            "style: only POST /v1/stylize takes it; this route already names the model `{name}`"
        )));
    }
    let config = &pool.task().config;
    let params = StylizeParams::validate(request.strength, request.max_size, request.format, config)?;

    pool.check_room()?;
    let max_pixels = state.limits.max_image_pixels;
    let original = blocking(move || Stylizer::prepare(&upload.image, max_pixels, params.max_size)).await?;
    let styled = pool.infer(original.shallow_clone(), state.limits.request_timeout).await?;
    let encoded = blocking(move || Stylizer::finish(&original, &styled, params)).await?;
    Ok(image_response(encoded, params.format, name, loaded.version))
}

/// Runs CPU work (decoding, resizing, encoding: milliseconds) off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::Internal(format!("image processing stopped: {e}")))?
}

/// The image, with the model that made it in `ember-model` / `ember-model-version` headers.
pub fn image_response(bytes: Vec<u8>, format: OutputFormat, model: &str, version: u64) -> Response {
    (
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (header::HeaderName::from_static("ember-model"), model.to_string()),
            (header::HeaderName::from_static("ember-model-version"), version.to_string()),
        ],
        bytes,
    )
        .into_response()
}
