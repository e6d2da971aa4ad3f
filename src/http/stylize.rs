//! `POST /v1/models/{name}/stylize` and `POST /v1/stylize?style=`: an image in (as for classify), the image
//! restyled by one pass of a fast style network out, as PNG or JPEG.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::body::read_image_upload;
use super::{decode_off_runtime, image_response, off_runtime, wrong_backend, AppState};
use crate::config::TaskKind;
use crate::http::error::ApiError;
use crate::tasks::style::{OutputFormat, StylizeParams, Stylizer};
use crate::tasks::Backend;

/// Names a style model by its full name or without the `style_` prefix (`?style=starry_night`).
const STYLE_MODEL_PREFIX: &str = "style_";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StylizeRequest {
    strength: Option<f64>,
    max_size: Option<i64>,
    format: Option<OutputFormat>,
    /// Only on the short route, where it picks the model (query or body).
    style: Option<String>,
}

pub async fn named(State(state): State<AppState>, Path(name): Path<String>, request: Request) -> Response {
    let result = async {
        let (image, params) = read_stylize_request(&state, request).await?;
        if params.style.is_some() {
            return Err(ApiError::validation(format!(
                "style: only POST /v1/stylize takes it; this route already names the model `{name}`"
            )));
        }
        stylize(&state, &name, image, params).await
    };
    state.with_model_label(&name, result.await)
}

/// The short route: the model named by `style` (query or body, like every other parameter), else the default
/// style-transfer model.
pub async fn default(State(state): State<AppState>, request: Request) -> Response {
    let (image, params) = match read_stylize_request(&state, request).await {
        Ok(read) => read,
        Err(e) => return e.into_response(),
    };
    let name = match &params.style {
        Some(style) => style_model(&state, style),
        None => state.default_model(TaskKind::StyleTransfer),
    };
    match name {
        Ok(name) => {
            let result = stylize(&state, &name, image, params).await;
            state.with_model_label(&name, result)
        }
        Err(e) => e.into_response(),
    }
}

async fn read_stylize_request(state: &AppState, request: Request) -> Result<(Bytes, StylizeRequest), ApiError> {
    let upload = read_image_upload(request, state.limits.body).await?;
    let params = upload.params()?;
    Ok((upload.image, params))
}

/// The model a `style` parameter names; a 404 lists the styles there are.
fn style_model(state: &AppState, style: &str) -> Result<String, ApiError> {
    let is_style_model =
        |name: &str| state.registry.get(name).is_some_and(|entry| entry.spec().config.task == TaskKind::StyleTransfer);
    let prefixed = format!("{STYLE_MODEL_PREFIX}{style}");
    let found = [style, prefixed.as_str()].into_iter().find(|name| is_style_model(name)).map(str::to_string);
    found.ok_or_else(|| {
        let styles: Vec<String> = state
            .registry
            .entries()
            .into_iter()
            .filter(|entry| entry.spec().config.task == TaskKind::StyleTransfer)
            .map(|entry| entry.name.clone())
            .collect();
        ApiError::not_found(format!("style `{style}` does not exist; styles: {}", styles.join(", ")))
    })
}

async fn stylize(state: &AppState, name: &str, image: Bytes, request: StylizeRequest) -> Result<Response, ApiError> {
    let loaded = state.ready_model(name, TaskKind::StyleTransfer)?;
    let Backend::StyleTransfer(pool) = &loaded.backend else {
        return Err(wrong_backend(name, TaskKind::StyleTransfer));
    };
    let config = &pool.task().config;
    let params = StylizeParams::validate(request.strength, request.max_size, request.format, config)?;

    pool.check_room()?;
    let probe = state.probe_image(&image)?;
    let original =
        decode_off_runtime(state, &[probe], move || Stylizer::prepare(&image, probe, params.max_size)).await?;
    let styled = pool.infer(original.shallow_clone(), state.limits.request_timeout).await?;
    let encoded = off_runtime("image encoding", move || Stylizer::finish(&original, &styled, params)).await?;
    Ok(image_response(encoded, params.format, name, loaded.version))
}
