//! The RPCs of `inference.GRPCInferenceService`, each a thin adapter over the service layer: the same registry,
//! queues, batches, limits, deadlines, admin token and metrics as the REST and /v2 routes, and the same messages.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use opentelemetry::propagation::Extractor;
use tonic::metadata::{KeyRef, MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::model_metadata_response::TensorMetadata;
use super::proto::repository_index_response::ModelIndex;
use super::proto::*;
use super::status::to_status;
use super::tensors;
use crate::engine::panic_message;
use crate::rng::{fresh_seed, Rng};
use crate::service::inference::{self, Metadata, ServerMetadata, SERVER_METADATA};
use crate::service::models::optional_version;
use crate::service::offload::{decoding, encoding};
use crate::service::repository::{self, readiness, IndexEntry};
use crate::service::trace::continue_trace;
use crate::service::{ApiError, AppState};
use crate::signature::TensorSpec;

pub struct Inference {
    pub state: AppState,
}

/// The prefix of the `route` label of gRPC requests in the request metrics.
const SERVICE: &str = "/inference.GRPCInferenceService/";

impl Inference {
    /// Runs one RPC: a request id (the client's `x-request-id`, else a fresh one) sent back in the answer's
    /// metadata and used for the log; a `request` span; the request metrics; errors as statuses. `model` labels the metrics if such
    /// a model exists (names clients invent never become labels).
    async fn call<T>(
        &self,
        rpc: &str,
        model: Option<&str>,
        metadata: &MetadataMap,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let request_id = match metadata.get("x-request-id").and_then(|v| v.to_str().ok()) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => fresh_request_id(),
        };
        // The RPC's span: what an HTTP request's is (`request`, the client's trace continued), named by its method.
        let route = format!("{SERVICE}{rpc}");
        let span = tracing::info_span!("request", method = "POST", uri = %route, request_id = %request_id);
        continue_trace(&span, &TraceCarrier(metadata));
        // A panic in the call fails the call, as over HTTP (CatchPanicLayer), not the connection's other calls.
        let guarded = AssertUnwindSafe(work).catch_unwind().instrument(span);
        let budget = deadline(metadata, self.state.limits.request_timeout);
        let result = match tokio::time::timeout(budget, guarded).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(ApiError::internal(format!("the call panicked: {}", panic_message(panic.as_ref())))),
            Err(_) => Err(ApiError::timeout(format!(
                "{rpc} did not finish within its deadline of {} ms (the client's grpc-timeout or \
                 --request-timeout-ms)",
                budget.as_millis()
            ))),
        };
        let label = model.filter(|name| self.state.registry.get(name).is_some()).unwrap_or("");
        // Counted under the outcome's status number, as HTTP requests are (`ErrorKind::status_code`).
        let status = match &result {
            Ok(_) => "200".to_string(),
            Err(error) => error.kind.status_code().to_string(),
        };
        let result = result.map_err(|e| to_status(e, &request_id));
        self.state.metrics.observe_request(label, &route, &status, started.elapsed());
        let id = MetadataValue::try_from(request_id.as_str()).ok();
        match result {
            Ok(answer) => {
                let mut response = Response::new(answer);
                if let Some(id) = id {
                    response.metadata_mut().insert("x-request-id", id);
                }
                Ok(response)
            }
            Err(mut status) => {
                if let Some(id) = id {
                    status.metadata_mut().insert("x-request-id", id);
                }
                Err(status)
            }
        }
    }

    /// The admin token from the `authorization` metadata, as the admin API checks it.
    fn authorize(&self, metadata: &MetadataMap) -> Result<(), ApiError> {
        let authorization = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.state.authorize_admin(authorization)
    }
}

/// A call's metadata as a carrier of the client's trace context (`traceparent`, `tracestate`).
struct TraceCarrier<'a>(&'a MetadataMap);

impl Extractor for TraceCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// A request id for a call whose client sent none.
fn fresh_request_id() -> String {
    let mut rng = Rng::new(fresh_seed());
    format!("grpc-{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}

/// The call's deadline: the client's `grpc-timeout` (`<digits><unit>`, unit H M S m u n), less a margin, if it
/// is sooner than `--request-timeout-ms`. The margin (1%, at least 2 ms) makes ember's DEADLINE_EXCEEDED the
/// answer: tonic's own timer fires at the client's deadline and answers CANCELLED "Timeout expired", and an
/// answer after the client's deadline is of no use to it anyway.
fn deadline(metadata: &MetadataMap, request_timeout: Duration) -> Duration {
    let Some(value) = metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()) else { return request_timeout };
    let (digits, unit) = value.split_at(value.len().saturating_sub(1));
    let Ok(amount) = digits.parse::<u64>() else { return request_timeout };
    let client = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return request_timeout,
    };
    let margin = (client / 100).max(Duration::from_millis(2));
    client.saturating_sub(margin).min(request_timeout)
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|spec| TensorMetadata {
            name: spec.name.clone(),
            datatype: spec.datatype.name().to_string(),
            shape: spec.shape.clone(),
        })
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, request: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        self.call("ServerLive", None, request.metadata(), async { Ok(ServerLiveResponse { live: true }) }).await
    }

    /// Ready when every model is loaded and warm, as /health/ready; not an error when it is not.
    async fn server_ready(
        &self,
        request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = readiness(&self.state).is_ok();
        self.call("ServerReady", None, request.metadata(), async { Ok(ServerReadyResponse { ready }) }).await
    }

    /// `ready: false` (not an error) for a model or version that does not exist or does not serve now, as the
    /// HTTP clients report a 404 or 503 of /v2/models/{name}/ready; a malformed version is an error.
    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.call("ModelReady", Some(&message.name), &metadata, async {
            let version = optional_version(&message.version)?;
            Ok(ModelReadyResponse { ready: self.state.served_now(&message.name, version).is_ok() })
        })
        .await
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.call("ServerMetadata", None, request.metadata(), async {
            let ServerMetadata { name, version, extensions } = SERVER_METADATA;
            Ok(ServerMetadataResponse {
                name: name.to_string(),
                version: version.to_string(),
                extensions: extensions.iter().map(|e| e.to_string()).collect(),
            })
        })
        .await
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.call("ModelMetadata", Some(&message.name), &metadata, async {
            let version = optional_version(&message.version)?;
            let Metadata { versions, signature, platform, .. } =
                inference::metadata(&self.state, &message.name, version)?;
            Ok(ModelMetadataResponse {
                name: message.name.clone(),
                versions: versions.iter().map(u64::to_string).collect(),
                platform: platform.to_string(),
                inputs: tensor_metadata(&signature.inputs),
                outputs: tensor_metadata(&signature.outputs),
            })
        })
        .await
    }

    /// Decoded and checked off the async workers, run through the model's queue within the call's deadline,
    /// encoded off the async workers. A client that cancels drops this future, and with it its place in the
    /// queue, as an HTTP client that disconnects does.
    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let timeout = deadline(request.metadata(), self.state.limits.request_timeout);
        let (metadata, _, message) = request.into_parts();
        let name = message.model_name.clone();
        self.call("ModelInfer", Some(&name), &metadata, async {
            let version = optional_version(&message.model_version)?;
            let loaded = self.state.served(&name, version, timeout).await?;
            let message = Arc::new(message);
            let (for_decoding, request) = (Arc::clone(&loaded), Arc::clone(&message));
            let decoded =
                decoding("decoding the infer request", move || tensors::decode(&request, &for_decoding.signature))
                    .await?;
            let outputs = inference::run(&name, &loaded, decoded.inputs, timeout).await?;
            let (for_encoding, wanted) = (Arc::clone(&loaded), decoded.outputs);
            let max_bytes = self.state.limits.max_response_bytes;
            let encoded = encoding("encoding the infer answer", move || {
                tensors::encode(&for_encoding.signature, &outputs, &wanted, max_bytes)
            })
            .await?;
            Ok(ModelInferResponse {
                model_name: name.clone(),
                model_version: loaded.version.to_string(),
                id: message.id.clone(),
                parameters: Default::default(),
                outputs: encoded.outputs,
                raw_output_contents: encoded.raw,
            })
        })
        .await
    }

    /// The models with their states as Triton names them (READY, LOADING, UNAVAILABLE); admin token.
    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.call("RepositoryIndex", None, &metadata, async {
            self.authorize(&metadata)?;
            let models = repository::index(&self.state, message.ready)
                .into_iter()
                .map(|IndexEntry { name, version, state, reason }| ModelIndex {
                    name,
                    version,
                    state: state.to_string(),
                    reason,
                })
                .collect();
            Ok(RepositoryIndexResponse { models })
        })
        .await
    }

    /// Loads (or reloads) a model, as POST /v2/repository/models/{name}/load; admin token. Parameters (a
    /// config or files to write) are refused: ember serves what is in its repository folder.
    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let name = message.model_name.clone();
        self.call("RepositoryModelLoad", Some(&name), &metadata, async {
            self.authorize(&metadata)?;
            if let Some(key) = message.parameters.keys().next() {
                return Err(ApiError::bad_request(format!(
                    "parameter `{key}`: ember loads models from its repository folder and takes no config or files \
                     with a load"
                )));
            }
            repository::load(&self.state, &name, false).await?;
            Ok(RepositoryModelLoadResponse {})
        })
        .await
    }

    /// Unloads a model, as POST /v2/repository/models/{name}/unload; admin token. `unload_dependents` (which
    /// tritonclient always sends) is accepted: ember's models have no dependents.
    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let name = message.model_name.clone();
        self.call("RepositoryModelUnload", Some(&name), &metadata, async {
            self.authorize(&metadata)?;
            repository::unload(&self.state, &name).await?;
            Ok(RepositoryModelUnloadResponse {})
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_shortens_the_deadline_and_never_lengthens_it() {
        let limit = Duration::from_secs(30);
        let with = |value: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            deadline(&metadata, limit)
        };
        assert_eq!(with("2500m"), Duration::from_millis(2475));
        assert_eq!(with("1n"), Duration::ZERO);
        assert_eq!(with("7S"), Duration::from_millis(6930));
        assert_eq!(with("10M"), limit);
        assert_eq!(with("99999999H"), limit);
        assert_eq!(with("junk"), limit);
        assert_eq!(deadline(&MetadataMap::new(), limit), limit);
    }
}
