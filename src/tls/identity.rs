//! The server's TLS identity read from its files and checked before it serves: every error names the file and
//! what is wrong with it, at start-up as on a reload.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::{Port, TlsFiles};

/// A checked certificate and key (and client CAs), as a rustls configuration per port.
pub struct Identity {
    http: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
    /// When the server's certificate expires.
    pub not_after: SystemTime,
    /// The certificate's subject, for the log.
    pub subject: String,
    /// Whether clients must present a certificate (`--tls-client-ca`).
    pub client_auth: bool,
}

impl Identity {
    /// Reads and checks `files`.
    pub fn read(files: &TlsFiles) -> anyhow::Result<Identity> {
        let chain = certificates(&files.cert, "certificate")?;
        let (subject, not_after) = check_validity(&files.cert, &chain[0], SystemTime::now())?;
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key, "key")?).map_err(|e| {
            anyhow::anyhow!(
                "the TLS key {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                files.key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .context("TLS 1.2 and 1.3 with the ring provider")?;
        let builder = match &files.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in certificates(path, "client CA")? {
                    roots.add(certificate).with_context(|| format!("the TLS client CA {}", path.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .with_context(|| format!("the TLS client CA {}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            anyhow::anyhow!(
                "the TLS key {} does not fit the certificate {} ({e}): is it the certificate's own key?",
                files.key.display(),
                files.cert.display()
            )
        })?;
        let for_port = |port: Port| {
            let mut config = config.clone();
            config.alpn_protocols = port.alpn();
            Arc::new(config)
        };
        let client_auth = files.client_ca.is_some();
        Ok(Identity { http: for_port(Port::Http), grpc: for_port(Port::Grpc), not_after, subject, client_auth })
    }

    pub fn config(&self, port: Port) -> Arc<ServerConfig> {
        Arc::clone(match port {
            Port::Http => &self.http,
            Port::Grpc => &self.grpc,
        })
    }

    /// Seconds since the Unix epoch at which the certificate expires (the metric's value).
    pub fn expires_at_unix(&self) -> i64 {
        self.not_after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the TLS {what} {}", path.display()))
}

/// Every certificate in a PEM file: at least one.
fn certificates(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = read(path, what)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the TLS {what} {} is not valid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        bail!("the TLS {what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display());
    }
    Ok(chain)
}

/// The certificate's subject and expiry; an error when `now` is outside its validity (clients would refuse it).
fn check_validity(path: &Path, certificate: &[u8], now: SystemTime) -> anyhow::Result<(String, SystemTime)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|e| anyhow::anyhow!("the TLS certificate {} cannot be parsed: {e}", path.display()))?;
    let validity = parsed.validity();
    let at = |seconds: i64| UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64);
    let (not_before, not_after) = (at(validity.not_before.timestamp()), at(validity.not_after.timestamp()));
    if now > not_after {
        bail!("the TLS certificate {} expired on {}: renew it", path.display(), validity.not_after);
    }
    if now < not_before {
        bail!("the TLS certificate {} is not valid before {}", path.display(), validity.not_before);
    }
    Ok((parsed.subject().to_string(), not_after))
}
