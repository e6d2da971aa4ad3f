//! The service layer's errors as gRPC statuses: one table from `ErrorKind` to a code, the messages HTTP clients
//! read.

use tonic::{Code, Status};

use crate::service::error::internal_message;
use crate::service::{ApiError, ErrorKind};

/// The code a gRPC client gets for each kind of error (HTTP's status in the comment).
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        // 422, 400, 415
        ErrorKind::Validation | ErrorKind::BadRequest | ErrorKind::UnsupportedMediaType => Code::InvalidArgument,
        // 413 (a limit on what the request may ask for), 429 (a full queue, a client's rate limit; retry later)
        ErrorKind::PayloadTooLarge | ErrorKind::Overloaded | ErrorKind::RateLimited => Code::ResourceExhausted,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::MethodNotAllowed => Code::Unimplemented,
        ErrorKind::Unauthorized => Code::Unauthenticated,
        ErrorKind::Unavailable => Code::Unavailable,
        // 408, 504
        ErrorKind::RequestTimeout | ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The status for `error`. As over HTTP, an internal error's details go to the log under the request's id and
/// the client reads only that id.
pub fn to_status(error: ApiError, request_id: &str) -> Status {
    let code = code_of(error.kind);
    if error.kind == ErrorKind::Internal {
        tracing::error!(request_id = %request_id, error = %error.message, "internal error (gRPC)");
        return Status::new(code, internal_message(request_id));
    }
    Status::new(code, error.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_the_code_a_grpc_client_expects() {
        let code = |e: ApiError| to_status(e, "r1").code();
        assert_eq!(code(ApiError::validation("x")), Code::InvalidArgument);
        assert_eq!(code(ApiError::overloaded("x", 1)), Code::ResourceExhausted);
        assert_eq!(code(ApiError::not_found("x")), Code::NotFound);
        assert_eq!(code(ApiError::unauthorized("x")), Code::Unauthenticated);
        assert_eq!(code(ApiError::unavailable("x")), Code::Unavailable);
        assert_eq!(code(ApiError::timeout("x")), Code::DeadlineExceeded);
        let internal = to_status(ApiError::internal("libtorch: secret.cpp:12"), "r1");
        assert_eq!(internal.code(), Code::Internal);
        assert!(internal.message().contains("request id r1") && !internal.message().contains("secret"));
        assert_eq!(to_status(ApiError::validation("shape [3] is wrong"), "r1").message(), "shape [3] is wrong");
    }
}
