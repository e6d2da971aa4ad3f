//! Starting and stopping the HTTP server: bind, load models in the background, serve until a shutdown
//! signal, finish in-flight requests, stop the workers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::ServeConfig;
use crate::engine::Registry;
use crate::http::admin::Admin;
use crate::http::{router, AppState, Limits};
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::repository::Repository;
use crate::train::upload::UnpackLimits;

/// A server bound to its port, with its models loading in the background.
pub struct Server {
    listener: TcpListener,
    state: AppState,
}

impl Server {
    /// Scans the repository (an invalid model.toml stops here, naming the file), binds the port, and starts
    /// loading every model. Liveness answers at once; readiness once every model is warm.
    pub async fn bind(config: &ServeConfig) -> anyhow::Result<Server> {
        let repository = Repository::scan(&config.repo.model_repo)?;
        if repository.models.is_empty() {
            tracing::warn!(repo = %config.repo.model_repo.display(), "the model repository holds no model (no */model.toml)");
        }
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new(repository, config.device, Arc::clone(&metrics)));
        let address = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&address).await.with_context(|| format!("cannot listen on {address}"))?;
        registry.load_all();
        if config.watch_interval_ms > 0 {
            registry.watch_repository(std::time::Duration::from_millis(config.watch_interval_ms));
        }
        let limits = Limits {
            max_body_bytes: config.max_body_bytes,
            max_image_pixels: config.max_image_pixels,
            request_timeout: config.request_timeout(),
        };
        let admin = config.admin_token.as_ref().map(|token| Admin {
            token: token.0.clone(),
            jobs: Jobs::start(Arc::clone(&registry), Arc::clone(&metrics), config.fine_tune_queue),
            max_upload_bytes: config.max_upload_bytes,
            unpack: UnpackLimits { max_bytes: config.max_fine_tune_bytes, max_entries: 1_000_000 },
        });
        if admin.is_some() {
            tracing::info!("admin API on (/admin/...)");
        }
        Ok(Server { listener, state: AppState { registry, metrics, limits, admin } })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then answers every request already received, then lets the
    /// workers finish their queues.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let registry = Arc::clone(&self.state.registry);
        tracing::info!(address = %self.local_addr(), "listening on http://{}", self.local_addr());
        axum::serve(self.listener, router(self.state)).with_graceful_shutdown(shutdown).await?;
        tracing::info!("HTTP server stopped; draining model queues");
        tokio::task::spawn_blocking(move || registry.shutdown()).await?;
        Ok(())
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes and Docker send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received: shutting down"),
        _ = terminate => tracing::info!("SIGTERM received: shutting down"),
    }
}
