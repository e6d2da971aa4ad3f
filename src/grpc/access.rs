//! The gRPC port's door (`crate::access`), as the HTTP routes': a tower layer that checks a call's
//! `authorization` metadata and its client's rate before its message is read. Health RPCs are the operator's
//! (open unless `--protect-ops`); the repository RPCs take the admin token, not an API key.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use tonic::codegen::http;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use super::status::to_status;
use crate::access::{Access, Door};
use crate::service::ApiError;

/// Which door a method (`/inference.GRPCInferenceService/ModelInfer`) goes through.
fn door(path: &str) -> Door {
    match path.rsplit('/').next().unwrap_or_default() {
        "ServerLive" | "ServerReady" => Door::Ops,
        "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => Door::Admin,
        _ => Door::Api,
    }
}

#[derive(Clone)]
pub struct GuardLayer {
    access: Arc<Access>,
}

impl GuardLayer {
    pub fn new(access: Arc<Access>) -> GuardLayer {
        GuardLayer { access }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner, access: Arc::clone(&self.access) }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    access: Arc<Access>,
}

impl<S, B> Service<http::Request<B>> for Guard<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !self.access.guards(door(request.uri().path())) {
            return Either::Right(self.inner.call(request));
        }
        let peer = request.extensions().get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr);
        let authorization = request.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        match self.access.check(authorization, peer.map(|address| address.ip())) {
            Ok(_) => Either::Right(self.inner.call(request)),
            Err(refusal) => {
                let retry_after = refusal.retry_after_secs();
                let mut response = to_status(ApiError::from(refusal), "").into_http::<tonic::body::Body>();
                if let Some(seconds) = retry_after {
                    response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
                }
                Either::Left(future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_the_operators_and_the_repository_the_admins() {
        let method = |name: &str| door(&format!("/inference.GRPCInferenceService/{name}"));
        assert_eq!(method("ServerLive"), Door::Ops);
        assert_eq!(method("ServerReady"), Door::Ops);
        assert_eq!(method("RepositoryModelLoad"), Door::Admin);
        for name in ["ModelInfer", "ModelReady", "ModelMetadata", "ServerMetadata", "Unknown"] {
            assert_eq!(method(name), Door::Api, "{name}");
        }
    }
}
