//! How the HTTP front end answers the service layer's `ApiError`: the one table that turns its kind into a status
//! and an `error_type`, and its headers.
//!
//! Handlers name a kind for what they check themselves (`ApiError::validation(...)`); what the layers below say
//! is converted to a kind by `service::error`, so no other module of http/ chooses a status. Every error a
//! client sees is `{"error": "<what and why>", "error_type": "<kind>"}`; the message names the field, the limit
//! and the value wherever there is one. A 500 is the exception: the client gets a short message and the
//! request's id, and the details go to the log once, from `report_internal_errors`.

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::service::error::{internal_message, ApiError, ErrorKind, INTERNAL_MESSAGE};

/// The table: each kind's status and the `error_type` clients see. The status is the outcome's number, which the
/// service layer keeps because the request metrics of every front end count by it.
pub fn status_and_type(kind: ErrorKind) -> (StatusCode, &'static str) {
    let error_type = match kind {
        ErrorKind::Validation => "validation",
        ErrorKind::BadRequest => "bad_request",
        ErrorKind::UnsupportedMediaType => "unsupported_media_type",
        ErrorKind::PayloadTooLarge => "payload_too_large",
        ErrorKind::NotFound => "not_found",
        ErrorKind::MethodNotAllowed => "method_not_allowed",
        ErrorKind::Unauthorized => "unauthorized",
        ErrorKind::Overloaded => "overloaded",
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::RequestTimeout => "request_timeout",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Internal => "internal",
    };
    let status = StatusCode::from_u16(kind.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, error_type)
}

/// The JSON every error answers with (also the data of a stream's `error` event).
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: String,
    pub error_type: &'static str,
}

/// How a route's clients expect errors to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorShape {
    /// ember's own: `{"error": "...", "error_type": "..."}`.
    #[default]
    Ember,
    /// OpenAI's, on the OpenAI-compatible routes: `{"error": {"message", "type", "param", "code"}}`, with ember's
    /// `error_type` as the `code`.
    OpenAi,
}

impl ErrorShape {
    fn render(self, kind: ErrorKind, message: String) -> serde_json::Value {
        let error_type = status_and_type(kind).1;
        match self {
            ErrorShape::Ember => serde_json::json!({"error": message, "error_type": error_type}),
            ErrorShape::OpenAi => serde_json::json!({"error": {
                "message": message, "type": openai_type(kind), "param": null, "code": error_type,
            }}),
        }
    }
}

/// The `type` OpenAI's clients know for each kind.
fn openai_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unauthorized => "authentication_error",
        ErrorKind::Overloaded | ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Internal => "server_error",
        _ => "invalid_request_error",
    }
}

/// The details of a 500, carried from `into_response` to `report_internal_errors`, which logs them.
#[derive(Clone)]
struct InternalDetail {
    detail: String,
    shape: ErrorShape,
}

/// How the HTTP front end answers a service error.
impl ApiError {
    pub fn status(&self) -> StatusCode {
        status_and_type(self.kind).0
    }

    pub fn error_type(&self) -> &'static str {
        status_and_type(self.kind).1
    }

    /// What the client reads: the message, except a 500's (see the module's doc).
    pub fn body(&self) -> ErrorBody {
        let error = match self.kind {
            ErrorKind::Internal => INTERNAL_MESSAGE.to_string(),
            _ => self.message.clone(),
        };
        ErrorBody { error, error_type: self.error_type() }
    }
}

impl ApiError {
    /// The data of a stream's `error` event. A stream has already answered 200, so no middleware sees this
    /// error: a 500's details are logged here instead.
    pub fn event_body(&self) -> ErrorBody {
        if self.kind == ErrorKind::Internal {
            tracing::error!(error = %self.message, "internal error in a stream");
        }
        self.body()
    }

    /// `event_body` in the shape the route's clients expect.
    pub fn event_body_as(&self, shape: ErrorShape) -> serde_json::Value {
        let body = self.event_body();
        shape.render(self.kind, body.error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_as(ErrorShape::Ember)
    }
}

impl ApiError {
    /// The response in the shape the route's clients expect.
    pub fn into_response_as(self, shape: ErrorShape) -> Response {
        let body = self.body();
        let mut response = (self.status(), Json(shape.render(self.kind, body.error))).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        match self.kind {
            // The rest of the body may still be on its way: the connection cannot carry another request.
            ErrorKind::RequestTimeout => {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ErrorKind::Internal => {
                response.extensions_mut().insert(InternalDetail { detail: self.message, shape });
            }
            _ => {}
        }
        response
    }
}

/// Middleware: logs each 500's details once, with the request's id, and answers the client that id instead.
/// `request_id` names the header `SetRequestIdLayer` put on the request (outside this middleware).
pub async fn report_internal_errors(request_id: HeaderName, request: Request, next: Next) -> Response {
    let id = request.headers().get(&request_id).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let response = next.run(request).await;
    let Some(InternalDetail { detail, shape }) = response.extensions().get::<InternalDetail>().cloned() else {
        return response;
    };
    tracing::error!(request_id = %id, error = %detail, "internal error");
    let body = shape.render(ErrorKind::Internal, internal_message(&id));
    // A fresh response: the handler's may already be compressed.
    (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::{to_bytes, Body};
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

    async fn answer(error: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let app = Router::new()
            // A fallback, not a route: tests/openapi.rs reads every route of src/http/ as part of the API.
            .fallback(move || async move { error })
            .layer(axum::middleware::from_fn(|request, next| report_internal_errors(REQUEST_ID, request, next)));
        let request = axum::http::Request::get("/").header(&REQUEST_ID, "abc-123").body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        let retry_after = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_string());
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, retry_after, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_500_names_the_request_id_and_keeps_its_details_for_the_log() {
        let (status, _, body) = answer(ApiError::internal("RuntimeError: at /opt/libtorch/secret.cpp:12")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error_type"], "internal");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("request id abc-123"), "{message}");
        assert!(!message.contains("secret.cpp"), "{message}");
    }

    #[tokio::test]
    async fn other_errors_keep_their_message_and_headers() {
        let (status, retry_after, body) = answer(ApiError::overloaded("queue full", 7)).await;
        assert_eq!((status, retry_after.as_deref()), (StatusCode::TOO_MANY_REQUESTS, Some("7")));
        assert_eq!(body, serde_json::json!({"error": "queue full", "error_type": "overloaded"}));
    }

    #[test]
    fn lower_layers_errors_map_to_their_statuses() {
        use crate::engine::EngineError;
        use crate::jobs::JobError;
        use crate::tasks::TaskError;
        let status = |e: ApiError| e.status().as_u16();
        assert_eq!(status(TaskError::Invalid("x".into()).into()), 422);
        assert_eq!(status(TaskError::Unreadable("x".into()).into()), 400);
        assert_eq!(status(TaskError::TooLarge("x".into()).into()), 413);
        assert_eq!(status(TaskError::Failed("x".into()).into()), 500);
        assert_eq!(status(JobError::QueueFull { waiting: 4 }.into()), 429);
        assert_eq!(status(JobError::NotFound { id: 3 }.into()), 404);
        assert_eq!(status(EngineError::queue_full("m", 8).into()), 429);
        assert_eq!(status(EngineError::Stopped { model: "m".into() }.into()), 503);
        assert_eq!(status(EngineError::Rejected { model: "m".into(), message: "x".into() }.into()), 400);
        assert_eq!(status(EngineError::LargerThanQueue { model: "m".into(), entries: 9, capacity: 8 }.into()), 413);
        assert_eq!(status(EngineError::WorkerLost { model: "m".into() }.into()), 500);
    }
}
