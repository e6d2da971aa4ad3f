//! Extractors: what a handler takes from a request, each refusing with an `ApiError` (the statuses and messages
//! the routes have always given), so that handlers read as their arguments and return `Result<_, ApiError>`.
//!
//! Axum runs the parts extractors (`Serving`, `ModelName`, `MetricsLabel`) before the body one, so a request for
//! a model that does not exist or is not ready is refused before its body is read.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::body::{read_image_upload, read_json_body, ImageUpload};
use crate::model_toml::TaskKind;
use crate::registry::Loaded;
use crate::service::{ApiError, AppState};

/// The model a request concerns, for the `model` label of the request metrics. `record_request` puts an empty
/// one on every request and reads it back from the answer's side; extractors fill it in.
#[derive(Clone, Default)]
pub struct MetricsLabel(Arc<Mutex<Option<String>>>);

impl MetricsLabel {
    /// Labels the request with `name` if such a model exists. Names of models that do not exist come from
    /// clients and are left out, so that nobody can grow the metrics without bound by asking for them.
    pub fn set(&self, state: &AppState, name: &str) {
        if state.registry.get(name).is_some() {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(name.to_string());
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for MetricsLabel {
    type Rejection = ApiError;

    /// The request's label; a fresh one that nobody reads where no middleware put one (a router under test).
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(parts.extensions.get::<MetricsLabel>().cloned().unwrap_or_default())
    }
}

/// The path's `{name}`, labelling the request's metrics with it.
pub struct ModelName(pub String);

impl FromRequestParts<AppState> for ModelName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match path_model_name(parts, state).await? {
            Some(name) => Ok(ModelName(name)),
            None => Err(ApiError::internal("a route that takes ModelName has no {name} in its path")),
        }
    }
}

/// `{name}` of the path if the route has one, after labelling the request with it.
async fn path_model_name(parts: &mut Parts, state: &AppState) -> Result<Option<String>, ApiError> {
    let params = Option::<Path<HashMap<String, String>>>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    let name = params.and_then(|Path(mut params)| params.remove("name"));
    if let Some(name) = &name {
        MetricsLabel::from_request_parts(parts, state).await?.set(state, name);
    }
    Ok(name)
}

/// The routes of one task (`/v1/models/{name}/<task>` and its short route), for `Serving`.
pub trait TaskRoute: Send + Sync + 'static {
    const TASK: TaskKind;
}

/// The model a task route runs on: the path's `{name}`, or on the task's short route the task's default model.
/// It exists, does the route's task and is ready; the request's metrics carry its name.
pub struct Serving<T> {
    pub name: String,
    pub loaded: Arc<Loaded>,
    task: PhantomData<T>,
}

impl<T: TaskRoute> FromRequestParts<AppState> for Serving<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let name = match path_model_name(parts, state).await? {
            Some(name) => name,
            None => {
                let name = state.default_model(T::TASK)?;
                MetricsLabel::from_request_parts(parts, state).await?.set(state, &name);
                name
            }
        };
        let loaded = state.ready_model(&name, T::TASK).await?;
        Ok(Serving { name, loaded, task: PhantomData })
    }
}

/// An uploaded image in any of the accepted shapes (raw, multipart, JSON with base64), within `--max-body-bytes`.
impl FromRequest<AppState> for ImageUpload {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        read_image_upload(request, state.limits.body).await
    }
}

/// A JSON body whose 415 shows what the route expects.
pub trait JsonShape {
    /// An example body, e.g. `{"prompt": "...", "max_tokens": 200}`.
    const SHAPE: &'static str;
}

/// A JSON object body parsed into `P`, within `--max-body-bytes`: a syntax error is a 400, a wrong type or an
/// unknown field a 422 naming the field, another Content-Type a 415.
pub struct JsonBody<P>(pub P);

impl<P: DeserializeOwned + JsonShape + Send + 'static> FromRequest<AppState> for JsonBody<P> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        Ok(JsonBody(read_json_body(request, state.limits.body, P::SHAPE).await?))
    }
}
