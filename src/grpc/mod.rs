//! The Open Inference Protocol over gRPC: KServe v2's `inference.GRPCInferenceService` (proto/kserve_v2.proto)
//! on its own port (`--grpc-port`, default 8081), beside the HTTP server and sharing its state.
//!
//! This is a second front end over the HTTP layer's `AppState`: the RPCs call the same functions as the /v2
//! routes (model lookup, tensor checks, the model's queue, the repository extension, the admin token), so a
//! gRPC client meets the same limits, batches, deadlines and messages; only the framing and the status codes
//! differ (`status`). RPCs that are not in the proto (Triton's statistics, config, ...) answer UNIMPLEMENTED.

mod service;
mod status;
mod tensors;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::http::AppState;

/// The messages and the service trait generated from proto/kserve_v2.proto by build.rs.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::GrpcInferenceServiceServer;

/// HTTP/2 flow-control windows of the gRPC server, in bytes: a stream's, and a connection's (its streams together).
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// Serves the gRPC service on `listener` until `shutdown` completes, then finishes the calls in flight.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // A message is a request body: --max-body-bytes bounds it, as over HTTP. Answers are bounded by
    // --max-response-bytes before they are encoded (tensors::encode); the framing adds little to that.
    let max_request = state.limits.body.max_bytes;
    let max_answer = state.limits.max_response_bytes.saturating_mul(2).max(max_request);
    let service = GrpcInferenceServiceServer::new(service::Inference { state })
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(max_answer)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    Server::builder()
        // A tensor request is often larger than HTTP/2's default 64 KiB window (MobileNetV2's is 602 KB): with
        // windows of a few requests the sender need not wait for window updates mid-message.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await?;
    Ok(())
}
