//! The HTTP surface: `router(state)` joins the route families and the middleware every route shares.

mod access;
pub mod admin;
pub mod body;
mod classify;
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
mod unread_body;
pub use ops::OPENAPI_YAML;
mod v1;
pub mod v2;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;

use crate::metrics::Metrics;
use crate::model_toml::TaskKind;
use crate::service::{load_wait, ApiError, AppState};
use crate::tasks::image::OutputFormat;
use extract::MetricsLabel;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
        .layer(middleware::from_fn(time_load_wait))
        .layer(middleware::from_fn_with_state(state.clone(), access::guard))
        .layer(middleware::from_fn(unread_body::close_if_unread))
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

/// Names the wait for an on-demand model's load in the answer (`Server-Timing: load;dur=<ms>`), when the
/// request waited for one.
async fn time_load_wait(request: Request, next: Next) -> Response {
    let (mut response, wait) = load_wait::recording(next.run(request)).await;
    if let Some(wait) = wait {
        let timing = format!("load;dur={:.1};desc=\"on-demand model load\"", wait.as_secs_f64() * 1000.0);
        if let Ok(value) = HeaderValue::from_str(&timing) {
            response.headers_mut().insert(HeaderName::from_static("server-timing"), value);
        }
    }
    response
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
