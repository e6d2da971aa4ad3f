//! The HTTP routes' door (`crate::access`): API keys and rate limits, checked before a handler reads the body.
//! Which routes it guards: every route but the admin API's (its own token) and, unless `--protect-ops`, the
//! operator's (health, metrics, the spec, /docs), which orchestrators and scrapers reach without a key.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ErrorShape;
use crate::access::Door;
use crate::service::{ApiError, AppState};

/// Which door a path goes through.
fn door(path: &str) -> Door {
    // On every request: a prefix and a segment boundary, without allocating.
    let under = |prefix: &str| path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if under("/admin") || under("/v2/repository") {
        Door::Admin
    } else if under("/health") || under("/v2/health") || under("/docs") || path == "/metrics" || path == "/openapi.yaml"
    {
        Door::Ops
    } else {
        Door::Api
    }
}

pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let access = &state.access;
    if !access.guards(door(request.uri().path())) {
        return next.run(request).await;
    }
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let authorization = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    match access.check(authorization, peer) {
        Ok(_) => next.run(request).await,
        Err(refusal) => {
            let unauthorized = refusal.retry_after_secs().is_none();
            let shape = if request.uri().path() == "/v1/completions" { ErrorShape::OpenAi } else { ErrorShape::Ember };
            let mut response = ApiError::from(refusal).into_response_as(shape);
            if unauthorized {
                let challenge = HeaderValue::from_static("Bearer realm=\"ember\"");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_ops_routes_have_their_own_doors() {
        for path in ["/admin/jobs", "/admin/models/m/load", "/v2/repository/index"] {
            assert_eq!(door(path), Door::Admin, "{path}");
        }
        for path in ["/health/live", "/health/ready", "/v2/health/ready", "/metrics", "/openapi.yaml", "/docs"] {
            assert_eq!(door(path), Door::Ops, "{path}");
        }
        for path in ["/v1/classify", "/v1/models", "/v1/completions", "/v2/models/m/infer", "/v2", "/docsx", "/"] {
            assert_eq!(door(path), Door::Api, "{path}");
        }
    }
}
