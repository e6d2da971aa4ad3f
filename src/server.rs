//! Starting and stopping the HTTP server: bind, load models in the background, serve until a shutdown
//! signal, finish in-flight requests, stop the workers.
//!
//! The accept loop is ember's own (axum's `serve` sets no header-read timer and takes every connection):
//! at most `--max-connections` are served at once, further clients wait in the listen backlog; a client gets
//! `--header-read-timeout-ms` to send its headers (and an idle keep-alive connection stays that long); bodies
//! have their own deadline where handlers read them (`http::body`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::engine::{cuda, device};
use crate::flags::ServeConfig;
use crate::http::router;
use crate::metrics::Metrics;
use crate::model_toml::DeviceChoice;
use crate::registry::Registry;
use crate::repository::Repository;
use crate::service::AppState;
use crate::tls::{self, Port, Tls};

/// How connections are accepted and timed.
struct Connections {
    max: usize,
    header_read_timeout: Duration,
    /// How long shutdown waits for open connections: every one of them is bounded by a timeout by then.
    drain_timeout: Duration,
}

/// A server bound to its port, with its models loading in the background.
pub struct Server {
    listener: TcpListener,
    /// The gRPC port's, unless `--grpc-port 0`.
    grpc_listener: Option<TcpListener>,
    state: AppState,
    connections: Connections,
    /// With `--tls-cert`: both ports speak TLS.
    tls: Option<Arc<Tls>>,
}

impl Server {
    /// Scans the repository (an invalid model.toml stops here, naming the file), binds the port, and starts
    /// loading every model. Liveness answers at once; readiness once every model is warm.
    pub async fn bind(config: &ServeConfig) -> anyhow::Result<Server> {
        let repository = Repository::scan(&config.repo.model_repo)?;
        if repository.models.is_empty() {
            tracing::warn!(repo = %config.repo.model_repo.display(), "the model repository holds no model (no */model.toml)");
        }
        crate::train::sweep_leftovers(&config.repo.model_repo);
        // CUDA is loaded (or not) before any model: libtorch decides once whether it exists.
        cuda::prepare(config.device, repository.models.iter().map(|model| model.config.device));
        if let DeviceChoice::Cuda(_) = config.device {
            // Asked for explicitly: a machine without it is a deployment mistake, not a per-model failure.
            device::resolve(config.device, config.device).map_err(anyhow::Error::msg).context("--device")?;
        }
        let metrics = Arc::new(Metrics::new());
        // Before any model loads: a certificate that cannot serve is a start-up error that names its file.
        let tls = match config.tls_files() {
            Some(files) => Some(Arc::new(Tls::open(files, metrics.tls.clone())?)),
            None => None,
        };
        let mut registry = Registry::new(repository, config.device, Arc::clone(&metrics))
            .with_load_limit(config.max_concurrent_loads as usize);
        let memory_limit = crate::memory_limit::cgroup_limit();
        if let Some(limit) = memory_limit {
            tracing::info!(bytes = limit, "memory limit {}", crate::memory_limit::describe(Some(limit)));
        }
        if let Some(budget) = config.model_memory_budget {
            crate::memory_limit::check_budget(budget.0, memory_limit).map_err(anyhow::Error::msg)?;
            // A load waits for busy models to drain at most half a request's deadline, so that the requests
            // waiting for it still get the 503 (and its Retry-After) rather than a 504.
            registry = registry.with_memory_budget(budget.0, config.request_timeout() / 2);
            tracing::info!(
                bytes = budget.0,
                "model memory budget {}: on-demand models load on their first request",
                crate::registry::mib(budget.0)
            );
        }
        let registry = Arc::new(registry);
        let address = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&address).await.with_context(|| format!("cannot listen on {address}"))?;
        let grpc_listener = match config.grpc_port {
            0 => None,
            port => {
                let address = format!("{}:{port}", config.host);
                let listener = TcpListener::bind(&address)
                    .await
                    .with_context(|| format!("cannot listen on {address} for gRPC (--grpc-port; 0 turns it off)"))?;
                Some(listener)
            }
        };
        registry.load_all();
        if config.watch_interval_ms > 0 {
            registry.watch_repository(Duration::from_millis(config.watch_interval_ms));
        }
        let connections = Connections {
            max: connection_cap(config.max_connections),
            header_read_timeout: config.header_read_timeout(),
            drain_timeout: config.header_read_timeout()
                + config.body_read_timeout().max(config.upload_read_timeout())
                + config.request_timeout(),
        };
        let state = AppState::new(config, registry, metrics)?;
        if state.admin.is_some() {
            tracing::info!("admin API on (/admin/...)");
        }
        Ok(Server { listener, grpc_listener, state, connections, tls })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The gRPC port's address, unless it is off.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_listener.as_ref().map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// Serves until `shutdown` completes, then answers every request already received, then lets the
    /// workers finish their queues.
    /// Stops with an error, after the same drain, when the server cannot serve as configured (the models loaded
    /// at start exceed `--model-memory-budget`).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Server { listener, grpc_listener, state, connections, tls } = self;
        let registry = Arc::clone(&state.registry);
        let mut fatal = registry.fatal_errors();
        let shutdown = async move {
            tokio::select! {
                () = shutdown => None,
                Ok(error) = fatal.wait_for(Option::is_some) => error.clone(),
            }
        };
        // gRPC stops taking calls when HTTP stops taking connections, and finishes its calls in flight as HTTP does.
        let (stop_grpc, grpc_stopping) = tokio::sync::watch::channel(false);
        let grpc = grpc_listener.map(|listener| {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "Open Inference Protocol over gRPC on {address}");
            }
            let mut stopping = grpc_stopping.clone();
            let stopped = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            let tls = tls.as_ref().map(|tls| (Arc::clone(tls), connections.header_read_timeout));
            tokio::spawn(crate::grpc::serve(listener, state.clone(), connections.max, tls, stopped))
        });
        let jobs = state.admin.as_ref().map(|admin| admin.jobs.clone());
        let metrics = Arc::clone(&state.metrics);
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %listener.local_addr()?, max_connections = connections.max, "listening on {scheme}://{}", listener.local_addr()?);
        let app = router(state);
        let slots = Arc::new(Semaphore::new(connections.max));
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(connections.header_read_timeout);
        tokio::pin!(shutdown);
        let fatal_error;
        loop {
            // A free slot first, then a connection: beyond the cap, clients wait in the listen backlog.
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => slot.context("the connection slots closed")?,
                error = &mut shutdown => { fatal_error = error; break },
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors (EMFILE) or a connection reset before accept: wait, go on.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                error = &mut shutdown => { fatal_error = error; break },
            };
            let _ = stream.set_nodelay(true);
            let open = metrics.open_connections.clone();
            open.inc();
            let connection = Connection { http: http.clone(), app: app.clone(), graceful: graceful.watcher(), peer };
            let (tls, handshake_failures) = (tls.clone(), metrics.tls.handshake_failures.clone());
            let handshake_within = connections.header_read_timeout;
            tokio::spawn(async move {
                match tls {
                    None => connection.serve(stream).await,
                    Some(tls) => {
                        match tls::handshake(tls.acceptor(Port::Http), stream, Port::Http, handshake_within).await {
                            Ok(stream) => connection.serve(stream).await,
                            Err(failure) => {
                                handshake_failures.with_label_values(&["http", failure.reason()]).inc();
                                tracing::debug!(%peer, ?failure, "TLS handshake failed; connection closed");
                            }
                        }
                    }
                }
                open.dec();
                drop(slot);
            });
        }
        drop(listener);
        let _ = stop_grpc.send(true);
        tracing::info!("shutting down: no new connections; finishing the requests received");
        let grpc_done = async {
            if let Some(grpc) = grpc {
                match grpc.await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "the gRPC server stopped with an error"),
                    Err(e) => tracing::warn!(error = %e, "the gRPC server task failed"),
                    Ok(Ok(())) => {}
                }
            }
        };
        tokio::select! {
            ((), ()) = async { tokio::join!(graceful.shutdown(), grpc_done) } => {}
            () = tokio::time::sleep(connections.drain_timeout) => {
                tracing::warn!(seconds = connections.drain_timeout.as_secs(), "connections still open after the drain timeout; closing them");
            }
        }
        tracing::info!("HTTP server stopped; draining model queues");
        tokio::task::spawn_blocking(move || {
            if let Some(jobs) = jobs {
                jobs.shutdown();
            }
            registry.shutdown();
        })
        .await?;
        match fatal_error {
            Some(error) => Err(anyhow::anyhow!(error)),
            None => Ok(()),
        }
    }
}

/// One accepted HTTP connection: what serving it takes.
struct Connection {
    http: hyper::server::conn::http1::Builder,
    app: axum::Router,
    graceful: Watcher,
    peer: SocketAddr,
}

impl Connection {
    /// Serves HTTP/1.1 over `io` (a TCP stream, or TLS over one) until it closes; its requests carry the peer's
    /// address (`ConnectInfo`: the rate limit of clients without keys).
    async fn serve<IO>(self, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { http, app, graceful, peer } = self;
        let app = app.map_request(move |mut request: axum::extract::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        if let Err(e) = graceful.watch(http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app))).await {
            tracing::debug!(%peer, error = %e, "connection closed with an error");
        }
    }
}

/// `--max-connections`, lowered to what the open-file limit leaves room for (raised to its hard limit first).
fn connection_cap(wanted: u32) -> usize {
    let wanted = u64::from(wanted);
    let Some(files) = crate::fd_limit::raise() else { return wanted as usize };
    if files.now != files.before {
        tracing::info!(from = files.before, to = files.now, "raised the open-file limit to its hard limit");
    }
    if wanted > files.connections() {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = files.now,
            "--max-connections is more than the open-file limit allows; serving at most {} connections",
            files.connections()
        );
    }
    wanted.min(files.connections()) as usize
}
