//! `POST /v1/models/{name}/stylize` and `POST /v1/stylize?style=`: an image in (as for classify), the image
//! restyled by one pass of a fast style network out, as PNG or JPEG.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;

use super::body::ImageUpload;
use super::extract::{MetricsLabel, Serving, TaskRoute};
use super::{image_response, wrong_backend};
use crate::model_toml::TaskKind;
use crate::registry::Loaded;
use crate::service::offload::{decode_images, encoding};
use crate::service::{ApiError, AppState};
use crate::tasks::image::OutputFormat;
use crate::tasks::style::{StylizeParams, Stylizer};
use crate::tasks::Backend;

pub struct Stylize;

impl TaskRoute for Stylize {
    const TASK: TaskKind = TaskKind::StyleTransfer;
}

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

pub async fn named(
    State(state): State<AppState>,
    Serving { name, loaded, .. }: Serving<Stylize>,
    upload: ImageUpload,
) -> Result<Response, ApiError> {
    let params: StylizeRequest = upload.params()?;
    if params.style.is_some() {
        return Err(ApiError::validation(format!(
            "style: only POST /v1/stylize takes it; this route already names the model `{name}`"
        )));
    }
    stylize(&state, &name, &loaded, upload.image, params).await
}

/// The short route: the model named by `style` (query or body, like every other parameter), else the default
/// style-transfer model. The body is read first, since it may name the model.
pub async fn default(
    State(state): State<AppState>,
    label: MetricsLabel,
    upload: ImageUpload,
) -> Result<Response, ApiError> {
    let params: StylizeRequest = upload.params()?;
    let name = match &params.style {
        Some(style) => style_model(&state, style)?,
        None => state.default_model(Stylize::TASK)?,
    };
    label.set(&state, &name);
    let loaded = state.ready_model(&name, Stylize::TASK).await?;
    stylize(&state, &name, &loaded, upload.image, params).await
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

async fn stylize(
    state: &AppState,
    name: &str,
    loaded: &Arc<Loaded>,
    image: Bytes,
    request: StylizeRequest,
) -> Result<Response, ApiError> {
    let Backend::StyleTransfer(pool) = &loaded.backend else {
        return Err(wrong_backend(name, Stylize::TASK));
    };
    let config = &pool.task().config;
    let params = StylizeParams::validate(request.strength, request.max_size, request.format, config)?;

    pool.check_room()?;
    let probe = state.probe_image(&image)?;
    let original = decode_images(state, &[probe], move || Stylizer::prepare(&image, probe, params.max_size)).await?;
    let styled = pool.infer(original.shallow_clone(), state.limits.request_timeout).await?;
    let encoded = encoding("image encoding", move || Stylizer::finish(&original, &styled, params)).await?;
    Ok(image_response(encoded, params.format, name, loaded.version))
}
