//! The one error type every HTTP handler returns, and its mapping to a status code and JSON body.
//!
//! Every error a client sees is `{"error": "<what and why>", "error_type": "<kind>"}`; the message names
//! the field, the limit and the value wherever there is one.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Well-formed request whose values are out of range or of the wrong type (422).
    #[error("{0}")]
    Validation(String),
    /// Malformed request: unparseable JSON, corrupt image, missing multipart field (400).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Unauthorized(String),
    /// The model's queue is full; the client should retry after `retry_after_secs`.
    #[error("{message}")]
    Overloaded { message: String, retry_after_secs: u64 },
    /// The model exists but cannot answer now (loading, failed to load, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// The client took too long to send its request (408); the connection is closed after the answer.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

/// The JSON every error answers with (also the data of a stream's `error` event).
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: String,
    pub error_type: &'static str,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "validation",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The same error with its message rewritten, e.g. prefixed with the field it concerns.
    pub fn map_message(self, rewrite: impl FnOnce(String) -> String) -> ApiError {
        match self {
            ApiError::Validation(m) => ApiError::Validation(rewrite(m)),
            ApiError::BadRequest(m) => ApiError::BadRequest(rewrite(m)),
            ApiError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(rewrite(m)),
            ApiError::PayloadTooLarge(m) => ApiError::PayloadTooLarge(rewrite(m)),
            ApiError::NotFound(m) => ApiError::NotFound(rewrite(m)),
            ApiError::MethodNotAllowed(m) => ApiError::MethodNotAllowed(rewrite(m)),
            ApiError::Unauthorized(m) => ApiError::Unauthorized(rewrite(m)),
            ApiError::Overloaded { message, retry_after_secs } => {
                ApiError::Overloaded { message: rewrite(message), retry_after_secs }
            }
            ApiError::Unavailable(m) => ApiError::Unavailable(rewrite(m)),
            ApiError::RequestTimeout(m) => ApiError::RequestTimeout(rewrite(m)),
            ApiError::Timeout(m) => ApiError::Timeout(rewrite(m)),
            ApiError::Internal(m) => ApiError::Internal(rewrite(m)),
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: self.to_string(), error_type: self.error_type() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        if matches!(self, ApiError::Internal(_)) {
            tracing::error!(error = %body.error, "internal error");
        }
        let mut response = (self.status(), Json(body)).into_response();
        match self {
            ApiError::Overloaded { retry_after_secs, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            // The rest of the body may still be on its way: the connection cannot carry another request.
            ApiError::RequestTimeout(_) => {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let message = err.to_string();
        match err {
            EngineError::QueueFull { retry_after_secs, .. } => ApiError::Overloaded { message, retry_after_secs },
            EngineError::DeadlineExceeded { .. } => ApiError::Timeout(message),
            EngineError::Stopped { .. } => ApiError::Unavailable(message),
            EngineError::Inference { .. } | EngineError::WorkerLost { .. } => ApiError::Internal(message),
            EngineError::Load { .. } => ApiError::Unavailable(message),
            EngineError::NotFound { .. } => ApiError::NotFound(message),
            EngineError::Rejected { .. } => ApiError::BadRequest(message),
        }
    }
}
