//! The identity in force, read again when its files change (`crate::watched`): new handshakes use the new
//! certificate; open connections keep theirs. Files that do not make a good identity (half-written, a key that
//! does not fit the certificate yet) leave the last good one in force, and the log says so.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::{Identity, Port, TlsFiles};
use crate::metrics::TlsMetrics;
use crate::watched::Watched;

/// The server's TLS identity, kept current with its files.
pub struct Tls {
    identity: Arc<Watched<Identity>>,
}

impl Tls {
    /// Reads the identity (an error naming the file when it cannot serve) and watches its files.
    pub fn open(files: TlsFiles, metrics: TlsMetrics) -> anyhow::Result<Tls> {
        let paths = files.paths().cloned().collect();
        let cert = files.cert.clone();
        let identity = Watched::open(paths, move || Identity::read(&files))?;
        let first = identity.get();
        metrics.expires_at.set(first.expires_at_unix());
        tracing::info!(certificate = %cert.display(), subject = %first.subject, expires = first.expires_at_unix(),
            "TLS on (1.2 and 1.3){}", if first.client_auth { "; client certificates required" } else { "" });
        identity.watch(move |reloaded| match reloaded {
            Ok(identity) => {
                metrics.expires_at.set(identity.expires_at_unix());
                tracing::info!(certificate = %cert.display(), subject = %identity.subject,
                    expires = identity.expires_at_unix(), "TLS certificate reloaded: new connections use it");
            }
            Err(e) => {
                metrics.reload_failures.inc();
                tracing::error!(
                    error = format!("{e:#}"),
                    "the TLS files changed but do not make a usable \
                    certificate and key; the previous ones stay in force until they do"
                );
            }
        });
        Ok(Tls { identity })
    }

    pub fn acceptor(&self, port: Port) -> TlsAcceptor {
        TlsAcceptor::from(self.identity.get().config(port))
    }
}
