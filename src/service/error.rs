//! The one error type of the service layer and both front ends: what went wrong (`ErrorKind`) and the message
//! that says what and why, naming the field, the limit and the value wherever there is one.
//!
//! What the layers below say (`TaskError`, `EngineError`, `JobError`) is converted here, so every front end reads
//! the same kinds and messages; how a client sees a kind is each front end's one table: `http/error.rs` (status
//! and `error_type`), `grpc/status.rs` (code).

use crate::access::Refusal;
use crate::engine::EngineError;
use crate::jobs::JobError;
use crate::tasks::TaskError;

/// What went wrong, as far as a client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A well-formed request whose values are out of range or of the wrong type.
    Validation,
    /// A malformed request: unparseable JSON, a corrupt image, a missing multipart field.
    BadRequest,
    UnsupportedMediaType,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    /// A queue is full; the client should retry after `ApiError::retry_after_secs`.
    Overloaded,
    /// The client is over its rate limit (`--rate-limit`); it may retry after `ApiError::retry_after_secs`.
    RateLimited,
    /// The model exists but cannot answer now (loading, failed to load, shutting down).
    Unavailable,
    /// The client took too long to send its request; the connection is closed after the answer.
    RequestTimeout,
    /// The model took too long to answer.
    Timeout,
    /// ember failed: a bug, or the model failed on a request that passed every check.
    Internal,
}

impl ErrorKind {
    /// The outcome as a status number, HTTP's. The HTTP front end answers with it, and every front end counts
    /// its requests under it (`ember_requests_total{status}`), so that dashboards and alerts (5xx, 429) read a
    /// gRPC call as they read an HTTP request; the route label tells them apart.
    pub fn status_code(self) -> u16 {
        match self {
            ErrorKind::Validation => 422,
            ErrorKind::BadRequest => 400,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Overloaded | ErrorKind::RateLimited => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::Timeout => 504,
            ErrorKind::Internal => 500,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// When the client may retry (kind `Overloaded`, and `Unavailable` under the memory budget): HTTP's
    /// Retry-After.
    pub retry_after_secs: Option<u64>,
}

macro_rules! constructors {
    ($($name:ident => $kind:ident),* $(,)?) => {
        $(
            pub fn $name(message: impl Into<String>) -> ApiError {
                ApiError { kind: ErrorKind::$kind, message: message.into(), retry_after_secs: None }
            }
        )*
    };
}

impl ApiError {
    constructors! {
        validation => Validation,
        bad_request => BadRequest,
        unsupported_media_type => UnsupportedMediaType,
        payload_too_large => PayloadTooLarge,
        not_found => NotFound,
        method_not_allowed => MethodNotAllowed,
        unauthorized => Unauthorized,
        unavailable => Unavailable,
        request_timeout => RequestTimeout,
        timeout => Timeout,
        internal => Internal,
    }

    pub fn overloaded(message: impl Into<String>, retry_after_secs: u64) -> ApiError {
        ApiError { kind: ErrorKind::Overloaded, message: message.into(), retry_after_secs: Some(retry_after_secs) }
    }

    /// The same error with its message rewritten, e.g. prefixed with the field it concerns.
    pub fn map_message(self, rewrite: impl FnOnce(String) -> String) -> ApiError {
        ApiError { message: rewrite(self.message), ..self }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        let (kind, retry_after_secs) = match refusal.retry_after_secs() {
            Some(seconds) => (ErrorKind::RateLimited, Some(seconds)),
            None => (ErrorKind::Unauthorized, None),
        };
        ApiError { kind, message: refusal.message(), retry_after_secs }
    }
}

/// What a client reads instead of an internal error's details, which go to the log once, under the request's id.
pub const INTERNAL_MESSAGE: &str = "internal error: ember failed this request; the server log has the details";

/// `INTERNAL_MESSAGE` with where in the log the details are.
pub fn internal_message(request_id: &str) -> String {
    format!("{INTERNAL_MESSAGE} under request id {request_id}")
}

impl From<TaskError> for ApiError {
    fn from(err: TaskError) -> Self {
        match err {
            TaskError::Invalid(message) => ApiError::validation(message),
            TaskError::Unreadable(message) => ApiError::bad_request(message),
            TaskError::TooLarge(message) => ApiError::payload_too_large(message),
            TaskError::Failed(message) => ApiError::internal(message),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let message = err.to_string();
        match err {
            EngineError::QueueFull { retry_after_secs, .. } => ApiError::overloaded(message, retry_after_secs),
            EngineError::LargerThanQueue { .. } => ApiError::payload_too_large(message),
            EngineError::DeadlineExceeded { .. } => ApiError::timeout(message),
            EngineError::Stopped { .. } | EngineError::Load { .. } => ApiError::unavailable(message),
            EngineError::Inference { .. } | EngineError::WorkerLost { .. } => ApiError::internal(message),
            EngineError::NotFound { .. } => ApiError::not_found(message),
            EngineError::NoRoom { retry_after_secs, .. } | EngineError::LoadBackingOff { retry_after_secs, .. } => {
                ApiError { retry_after_secs: Some(retry_after_secs), ..ApiError::unavailable(message) }
            }
            EngineError::LoadWaitExceeded { .. } => ApiError::timeout(message),
            EngineError::Rejected { .. } => ApiError::bad_request(message),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(err: JobError) -> Self {
        let message = err.to_string();
        match err {
            JobError::QueueFull { .. } => ApiError::overloaded(message, JobError::RETRY_AFTER_SECS),
            JobError::NotFound { .. } => ApiError::not_found(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_layers_errors_map_to_their_kinds() {
        let kind = |e: ApiError| e.kind;
        assert_eq!(kind(TaskError::Invalid("x".into()).into()), ErrorKind::Validation);
        assert_eq!(kind(TaskError::Unreadable("x".into()).into()), ErrorKind::BadRequest);
        assert_eq!(kind(TaskError::TooLarge("x".into()).into()), ErrorKind::PayloadTooLarge);
        assert_eq!(kind(TaskError::Failed("x".into()).into()), ErrorKind::Internal);
        assert_eq!(kind(JobError::QueueFull { waiting: 4 }.into()), ErrorKind::Overloaded);
        assert_eq!(kind(JobError::NotFound { id: 3 }.into()), ErrorKind::NotFound);
        assert_eq!(kind(EngineError::queue_full("m", 8).into()), ErrorKind::Overloaded);
        assert_eq!(kind(EngineError::Stopped { model: "m".into() }.into()), ErrorKind::Unavailable);
        assert_eq!(
            kind(EngineError::Rejected { model: "m".into(), message: "x".into() }.into()),
            ErrorKind::BadRequest
        );
        let larger = EngineError::LargerThanQueue { model: "m".into(), entries: 9, capacity: 8 };
        assert_eq!(kind(larger.into()), ErrorKind::PayloadTooLarge);
        assert_eq!(kind(EngineError::WorkerLost { model: "m".into() }.into()), ErrorKind::Internal);
    }
}
