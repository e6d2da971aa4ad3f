//! The admin API's token (`--admin-token` / `EMBER_ADMIN_TOKEN`), checked the same way for the HTTP admin and
//! repository routes and the gRPC repository calls: a bearer token, compared in constant time.

use super::error::ApiError;
use super::{AppState, BodyLimit};
use crate::jobs::Jobs;
use crate::train::upload::UnpackLimits;

/// What the admin API needs beyond the rest of the server.
#[derive(Clone)]
pub struct Admin {
    pub token: String,
    pub jobs: Jobs,
    /// `--max-upload-bytes` and `--upload-read-timeout-ms`.
    pub upload: BodyLimit,
    pub unpack: UnpackLimits,
}

impl AppState {
    /// The admin API, or a 404 while it is off.
    pub fn admin(&self) -> Result<&Admin, ApiError> {
        self.admin.as_ref().ok_or_else(|| {
            ApiError::not_found("the admin API is off: start ember with --admin-token or EMBER_ADMIN_TOKEN")
        })
    }

    /// Whether an `Authorization` value (HTTP's header, gRPC's metadata) carries the admin token: a 404 while
    /// the admin API is off, a 401 without the token or with another one.
    pub fn authorize_admin(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let admin = self.admin()?;
        match authorization.and_then(bearer_token) {
            Some(token) if constant_time_eq(token.as_bytes(), admin.token.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::unauthorized("the bearer token is wrong")),
            None => Err(ApiError::unauthorized("send the admin token as `Authorization: Bearer <token>`")),
        }
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 7235).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Equal-length inputs take the same time whatever they hold; the length of the token is not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(super::bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(super::bearer_token("bearer abc"), Some("abc"));
        assert_eq!(super::bearer_token("Basic abc"), None);
        assert_eq!(super::bearer_token("Bearer"), None);
    }

    #[test]
    fn tokens_compare_by_content_and_length() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
