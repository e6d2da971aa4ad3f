//! TLS on both ports (`--tls-cert`, `--tls-key`, optionally `--tls-client-ca`): rustls with its `ring` provider,
//! TLS 1.2 and 1.3 only.
//!
//! `identity` reads and checks the files (each error names its file: unreadable, no PEM block, a key that is not
//! the certificate's, a certificate outside its validity); `reload` re-reads them when they change, so that a
//! rotated certificate (cert-manager writes it in place) serves new connections while the open ones go on;
//! `handshake` bounds a connection's handshake in time and answers a plain-HTTP request on the TLS port.

mod handshake;
mod identity;
mod reload;

use std::path::PathBuf;

pub use handshake::{handshake, HandshakeFailure};
pub use identity::Identity;
pub use reload::Tls;

/// The files of the server's TLS identity, as the flags name them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, PEM: the server's certificate first, then its intermediates.
    pub cert: PathBuf,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Certificates of the CAs whose client certificates are accepted, PEM: set, every client must present one.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key].into_iter().chain(self.client_ca.as_ref())
    }
}

/// Which port a configuration is for: the protocols offered in the handshake (ALPN) differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// HTTP/1.1 (the REST, v2 HTTP and OpenAI routes).
    Http,
    /// HTTP/2 (gRPC).
    Grpc,
}

impl Port {
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Port::Http => vec![b"http/1.1".to_vec()],
            Port::Grpc => vec![b"h2".to_vec()],
        }
    }
}
