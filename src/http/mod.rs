//! The HTTP surface: `router(state)` joins the route families and the middleware every route shares.

pub mod admin;
pub(crate) mod body;
mod classify;
pub mod decode_memory;
mod docs;
pub mod error;
pub(crate) mod extract;
mod generate;
mod openai;
pub(crate) mod ops;
mod sentiment;
mod style_transfer;
mod stylize;
pub(crate) mod trace;
pub use ops::OPENAPI_YAML;
mod v1;
pub(crate) mod v2;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::{Instrument, Level};

pub use body::{BodyFlags, BodyLimit};
use decode_memory::DecodeMemory;

use crate::config::{ServeConfig, TaskKind};
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::registry::{Loaded, ModelEntry, ModelState, Registry};
use crate::tasks::image::{self, ImageLimits, Probe};
use crate::tasks::style::OutputFormat;
use crate::train::upload::UnpackLimits;
use error::ApiError;
use extract::MetricsLabel;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request limits that handlers enforce.
#[derive(Debug, Clone)]
pub struct Limits {
    pub body: BodyLimit,
    pub image: ImageLimits,
    pub max_response_bytes: usize,
    pub request_timeout: Duration,
}

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub decode_memory: Arc<DecodeMemory>,
    /// Present only when an admin token is set.
    pub admin: Option<admin::Admin>,
}

impl AppState {
    /// The state the routes share, from the server's flags: the limits, the decode-memory budget, and the admin
    /// API (its fine-tuning runner starts here) when a token is set.
    pub fn new(config: &ServeConfig, registry: Arc<Registry>, metrics: Arc<Metrics>) -> AppState {
        let limits = Limits {
            body: BodyLimit {
                max_bytes: config.max_body_bytes,
                read_timeout: config.body_read_timeout(),
                flags: BodyFlags::Request,
            },
            image: ImageLimits { max_pixels: config.max_image_pixels, max_aspect: config.max_image_aspect },
            max_response_bytes: config.max_response_bytes,
            request_timeout: config.request_timeout(),
        };
        let admin = config.admin_token.as_ref().map(|token| admin::Admin {
            token: token.0.clone(),
            jobs: Jobs::start(Arc::clone(&registry), Arc::clone(&metrics), config.fine_tune_queue),
            upload: BodyLimit {
                max_bytes: config.max_upload_bytes,
                read_timeout: config.upload_read_timeout(),
                flags: BodyFlags::Upload,
            },
            unpack: UnpackLimits { max_bytes: config.max_fine_tune_bytes, max_entries: 1_000_000 },
        });
        let decode_memory = Arc::new(DecodeMemory::new(config.max_decode_bytes));
        AppState { registry, metrics, limits, decode_memory, admin }
    }

    /// The named model, or a 404 that lists the models there are.
    fn model(&self, name: &str) -> Result<Arc<ModelEntry>, ApiError> {
        self.registry.get(name).ok_or_else(|| {
            ApiError::not_found(format!("model `{name}` does not exist; models: {}", self.registry.names().join(", ")))
        })
    }

    /// The named model's loaded version, if the model exists, does `task` and is ready.
    fn ready_model(&self, name: &str, task: TaskKind) -> Result<Arc<Loaded>, ApiError> {
        let entry = self.model(name)?;
        let actual = entry.spec().config.task;
        if actual != task {
            return Err(ApiError::bad_request(format!(
                "model `{name}` is a {actual} model; this route needs a {task} model"
            )));
        }
        serving(name, entry.state())
    }

    /// The model behind a task's short route.
    fn default_model(&self, task: TaskKind) -> Result<String, ApiError> {
        self.registry.default_for(task).map(str::to_string).ok_or_else(|| {
            ApiError::not_found(format!("no model serves {task}: set `default = true` in one such model's model.toml"))
        })
    }
}

/// The loaded version of a model in `state`, or a 503 that says why it does not answer and what to do.
fn serving(name: &str, state: ModelState) -> Result<Arc<Loaded>, ApiError> {
    match state {
        ModelState::Ready(loaded) => Ok(loaded),
        ModelState::Loading => Err(ApiError::unavailable(format!(
            "model `{name}` is still loading; retry when GET /health/ready answers 200"
        ))),
        ModelState::Failed(message) => {
            Err(ApiError::unavailable(format!("model `{name}` is not available: {message}")))
        }
        ModelState::Unloaded => Err(ApiError::unavailable(format!(
            "model `{name}` is unloaded; an operator can serve it again with POST /admin/models/{name}/load"
        ))),
    }
}

/// Runs CPU work of a request (decoding, resizing, tokenising, encoding: milliseconds) on tokio's blocking pool,
/// off the async workers; `what` names the work in the error if it panics.
pub(crate) async fn off_runtime<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    let finished = tokio::task::spawn_blocking(work).await;
    finished.map_err(|e| ApiError::internal(format!("{what} stopped: {e}")))?.map_err(Into::into)
}

impl AppState {
    /// Reads an uploaded image's header and checks it against the image limits (no pixel is decoded yet).
    fn probe_image(&self, bytes: &[u8]) -> Result<Probe, ApiError> {
        Ok(image::probe(bytes, self.limits.image)?)
    }
}

/// `off_runtime` for reading a request (parsing, decoding, preprocessing, tokenising), traced as `decode`.
pub(crate) async fn decoding<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    off_runtime(what, work).instrument(tracing::info_span!("decode", what)).await
}

/// `off_runtime` for writing an answer (image or tensor encoding), traced as `encode`.
pub(crate) async fn encoding<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    off_runtime(what, work).instrument(tracing::info_span!("encode", what)).await
}

/// Decodes and preprocesses images on the blocking pool within `--max-decode-bytes`: what the `probes`' images
/// may take is reserved before `work` starts and released when it returns.
async fn decode_off_runtime<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    state: &AppState,
    probes: &[Probe],
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    let bytes = probes.iter().fold(0u64, |sum, probe| sum.saturating_add(probe.decode_bytes()));
    let reservation = state.decode_memory.reserve(bytes, state.limits.request_timeout).await?;
    state.metrics.decode_reserved_bytes.set(state.decode_memory.reserved_bytes() as i64);
    let result = decoding("image preprocessing", move || {
        let _reservation = reservation;
        work()
    })
    .await;
    state.metrics.decode_reserved_bytes.set(state.decode_memory.reserved_bytes() as i64);
    result
}

/// An image answer, with the model that made it in `ember-model` / `ember-model-version` headers.
fn image_response(bytes: Vec<u8>, format: OutputFormat, model: &str, version: u64) -> Response {
    (
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (HeaderName::from_static("ember-model"), model.to_string()),
            (HeaderName::from_static("ember-model-version"), version.to_string()),
        ],
        bytes,
    )
        .into_response()
}

/// A ready model whose backend is not its task's: `ready_model` checked the task, so this is a bug in ember.
fn wrong_backend(name: &str, task: TaskKind) -> ApiError {
    ApiError::internal(format!("model `{name}` is not running a {task} backend"))
}

pub fn router(state: AppState) -> Router {
    let metrics = Arc::clone(&state.metrics);
    Router::new()
        .merge(v1::routes())
        .merge(openai::routes())
        .merge(admin::routes(state.clone()))
        .merge(v2::routes(state.clone()))
        .merge(ops::routes())
        .merge(docs::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(metrics, record_request))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(trace::request_span)
                        // One line per request at info: status and latency, inside the span above.
                        .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(LatencyUnit::Micros))
                        // Not also an error line per 5xx: a 503 while models load is expected, and a 500 is
                        // logged with its cause by error::report_internal_errors.
                        .on_failure(()),
                )
                .layer(middleware::from_fn(trace::trace_response))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(middleware::from_fn(|request, next| error::report_internal_errors(REQUEST_ID, request, next)))
                .layer(CatchPanicLayer::custom(|panic: Box<dyn std::any::Any + Send>| {
                    let message = crate::engine::panic_message(panic.as_ref());
                    ApiError::internal(format!("the handler panicked: {message}")).into_response()
                }))
                .layer(CompressionLayer::new()),
        )
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}; see GET /openapi.yaml", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{method} is not allowed on {}; see GET /openapi.yaml", uri.path()))
}

/// Counts every request by model, route template and status, and times it.
async fn record_request(State(metrics): State<Arc<Metrics>>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    // The handler's extractors name the model (extract::MetricsLabel).
    let label = MetricsLabel::default();
    request.extensions_mut().insert(label.clone());
    let response = next.run(request).await;
    let model = label.get().unwrap_or_default();
    metrics.observe_request(&model, &route, response.status().as_str(), started.elapsed());
    response
}
