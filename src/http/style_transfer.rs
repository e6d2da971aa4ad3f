//! `POST /v1/style-transfer`: multipart `content` and `style` images in; out, the content image optimised
//! against the feature network until it carries the style (tasks/style_transfer.rs). Each request costs seconds
//! of CPU, so it runs on the style-features model's own bounded pool, with its own timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::Bytes;

use super::body::{parse_params, read_multipart_images};
use super::extract::{Serving, TaskRoute};
use super::{image_response, wrong_backend};
use crate::model_toml::TaskKind;
use crate::service::offload::{decode_images, encoding};
use crate::service::{ApiError, AppState};
use crate::tasks::image;
use crate::tasks::style_transfer::{OptimizationJob, OptimizationParams};
use crate::tasks::Backend;
use crate::tasks::TaskError;

const CONTENT: &str = "content";
const STYLE: &str = "style";

pub struct StyleTransfer;

impl TaskRoute for StyleTransfer {
    const TASK: TaskKind = TaskKind::StyleFeatures;
}

/// Runs on the default style-features model. The body is a multipart form of two images, which
/// `read_multipart_images` reads from the request itself.
pub async fn style_transfer(
    State(state): State<AppState>,
    Serving { name, loaded, .. }: Serving<StyleTransfer>,
    request: Request,
) -> Result<Response, ApiError> {
    let Backend::StyleFeatures(pool) = &loaded.backend else {
        return Err(wrong_backend(&name, StyleTransfer::TASK));
    };
    let ([content_bytes, style_bytes], params) =
        read_multipart_images(request, state.limits.body, [CONTENT, STYLE]).await?;
    let params: OptimizationParams = parse_params(params)?;
    let config = &pool.task().config;
    let settings = params.validate(config)?;
    let format = params.format.unwrap_or_default();

    pool.check_room()?;
    let in_field = |field: &'static str| move |e: TaskError| e.map_message(|message| format!("{field}: {message}"));
    let probes = [
        image::probe(&content_bytes, state.limits.image).map_err(in_field(CONTENT))?,
        image::probe(&style_bytes, state.limits.image).map_err(in_field(STYLE))?,
    ];
    let (content, style) = decode_images(&state, &probes, move || {
        let prepare = |bytes: Bytes, probe, field| {
            let decoded = image::decode_probed(&bytes, probe).map_err(in_field(field))?;
            Ok::<_, TaskError>(image::to_unit_tensor(&image::fit_within(decoded, settings.size)?))
        };
        Ok::<_, TaskError>((prepare(content_bytes, probes[0], CONTENT)?, prepare(style_bytes, probes[1], STYLE)?))
    })
    .await?;

    // The job watches this: when the handler is dropped (client gone) or returns (timed out), it stops.
    // It lives until this function returns.
    let caller = Arc::new(());
    let job = OptimizationJob { content, style, settings, caller: Some(Arc::downgrade(&caller)) };
    let timeout = Duration::from_millis(config.timeout_ms);
    let result = pool.infer(job, timeout).await?;
    let steps = result.steps;
    let seconds = result.seconds;
    let encoded =
        encoding("image encoding", move || image::encode(&image::from_unit_tensor(&result.image)?, format)).await?;
    let mut response = image_response(encoded, format, &name, loaded.version);
    let headers = response.headers_mut();
    headers.insert("ember-steps", HeaderValue::from(steps));
    if let Ok(value) = HeaderValue::from_str(&format!("{seconds:.3}")) {
        headers.insert("ember-seconds", value);
    }
    Ok(response)
}
