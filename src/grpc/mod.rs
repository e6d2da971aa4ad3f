//! The Open Inference Protocol over gRPC: KServe v2's `inference.GRPCInferenceService` (proto/kserve_v2.proto)
//! on its own port (`--grpc-port`, default 8081), beside the HTTP server and sharing its state.
//!
//! This is a front end beside the HTTP one, over the same service layer (`crate::service`): the RPCs call the
//! same functions as the /v2 routes (model lookup, tensor checks, the model's queue, the repository extension,
//! the admin token), so a gRPC client meets the same limits, batches, deadlines and messages; only the framing
//! and the status codes differ (`status`). RPCs that are not in the proto (Triton's statistics, config, ...) answer UNIMPLEMENTED.

mod access;
mod connections;
mod service;
mod status;
mod tensors;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;

use crate::service::AppState;
use crate::tls::Tls;

/// The messages and the service trait generated from proto/kserve_v2.proto by build.rs.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::GrpcInferenceServiceServer;

/// HTTP/2 flow-control windows of the gRPC server, in bytes: a stream's, and a connection's (its streams together).
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// Concurrent calls (HTTP/2 streams) on one connection; a client needing more opens another connection.
const STREAMS_PER_CONNECTION: u32 = 256;
/// A connection whose peer does not answer a ping within the timeout is closed (a vanished client).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the gRPC service on `listener` until `shutdown` completes, then finishes the calls in flight. At most
/// `max_connections` connections are served at once (`--max-connections`, as on the HTTP port).
/// With `tls` (the identity, and the time a handshake may take), the port speaks TLS (HTTP/2 by ALPN).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    max_connections: usize,
    tls: Option<(Arc<Tls>, Duration)>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // The longest a call may take from its headers to its answer: reading its message (`--body-read-timeout-ms`)
    // plus `--request-timeout-ms`, so a client that sends slowly cannot hold a stream.
    let call_timeout = state.limits.body.read_timeout + state.limits.request_timeout;
    // A message is a request body: --max-body-bytes bounds it, as over HTTP. Answers are bounded by
    // --max-response-bytes before they are encoded (tensors::encode); the framing adds little to that.
    let max_request = state.limits.body.max_bytes;
    let max_answer = state.limits.max_response_bytes.saturating_mul(2).max(max_request);
    let guard = access::GuardLayer::new(Arc::clone(&state.access));
    let handshake_failures = state.metrics.tls.handshake_failures.clone();
    let service = GrpcInferenceServiceServer::new(service::Inference { state })
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(max_answer)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    let server = Server::builder()
        .timeout(call_timeout)
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // A tensor request is often larger than HTTP/2's default 64 KiB window (MobileNetV2's is 602 KB): with
        // windows of a few requests the sender need not wait for window updates mid-message.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .layer(guard);
    let mut server = server;
    let router = server.add_service(service);
    let incoming = connections::capped(listener, max_connections);
    match tls {
        None => router.serve_with_incoming_shutdown(incoming, shutdown).await?,
        Some((tls, within)) => {
            let secured = connections::secured(incoming, tls, within, handshake_failures);
            router.serve_with_incoming_shutdown(secured, shutdown).await?
        }
    }
    Ok(())
}
