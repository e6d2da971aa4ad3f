//! A connection's TLS handshake, bounded in time as reading a request's headers is (`--header-read-timeout-ms`):
//! a client that opens a connection and stalls holds its slot no longer than one that stalls in its headers.
//! A plain-HTTP request on the HTTP port gets a plain-text 400 that says to use https, instead of a reset.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::Port;

/// Every TLS record starts with its content type; a client's first is a handshake record (22).
const HANDSHAKE_RECORD: u8 = 22;

const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\
Content-Length: 69\r\n\r\nThis port speaks HTTPS (TLS): send the request to https:// instead.\r\n";

/// Why a connection was closed before it was served.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// No handshake within the time.
    TimedOut,
    /// A plain-HTTP request (answered 400 on the HTTP port).
    PlainHttp,
    /// A refused client certificate, a protocol the server does not speak, a connection reset.
    Failed(std::io::Error),
}

impl HandshakeFailure {
    /// The metric's label: what an operator would act on differently.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeFailure::TimedOut => "timeout",
            HandshakeFailure::PlainHttp => "plain_http",
            // tokio-rustls hands rustls' own error inside the io::Error.
            HandshakeFailure::Failed(e) => match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                // Mutual TLS: the client sent no certificate, or one the client CA did not sign.
                Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
                    "client_certificate"
                }
                // An old client (TLS 1.1, no common cipher suite), a malformed message (a server name with a
                // port), a client that refused the server's certificate.
                Some(_) => "protocol",
                // Reset or closed mid-handshake.
                None => "connection",
            },
        }
    }
}

/// The TLS connection over `stream`, once its handshake has finished within `within`.
pub async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    port: Port,
    within: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
    let shake = async {
        let mut first = [0u8; 1];
        // Not read: peeked, so that the handshake below still sees every byte.
        let peeked = stream.peek(&mut first).await.map_err(HandshakeFailure::Failed)?;
        if peeked == 1 && first[0] != HANDSHAKE_RECORD && first[0].is_ascii_uppercase() {
            let mut stream = stream;
            if port == Port::Http {
                let _ = stream.write_all(PLAIN_HTTP_ANSWER).await;
                let _ = stream.shutdown().await;
            }
            return Err(HandshakeFailure::PlainHttp);
        }
        acceptor.accept(stream).await.map_err(HandshakeFailure::Failed)
    };
    tokio::time::timeout(within, shake).await.unwrap_or(Err(HandshakeFailure::TimedOut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_what_went_wrong() {
        let rustls_error =
            |e: rustls::Error| HandshakeFailure::Failed(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        assert_eq!(rustls_error(rustls::Error::NoCertificatesPresented).reason(), "client_certificate");
        let sni = rustls::PeerMisbehaved::ServerNameMustContainOneHostName;
        assert_eq!(rustls_error(rustls::Error::PeerMisbehaved(sni)).reason(), "protocol");
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(HandshakeFailure::Failed(reset).reason(), "connection");
    }

    #[test]
    fn the_plain_http_answer_says_its_own_length() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        assert_eq!(body.len(), length);
    }
}
