//! `ember-probe`: asks an ember on this machine whether it is ready, over plain HTTP or TLS, and exits 0 only on
//! a 200. It is the image's HEALTHCHECK and an `exec` probe for Kubernetes: the image has no curl, bash's
//! /dev/tcp speaks no TLS, and kubelet's own `httpGet` probe cannot present a client certificate (mutual TLS).

mod tls;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rustls::pki_types::ServerName;

/// The most of an answer read: its status line and the start of its body are all a probe reports.
const ANSWER_LIMIT: usize = 16 * 1024;

/// Ask the ember serving on this machine whether it is ready (HTTP or TLS): exit 0 on a 200, else 1 with why.
#[derive(Parser, Debug)]
#[command(name = "ember-probe", version)]
struct ProbeArgs {
    /// The port ember serves HTTP on, as `serve --port`.
    #[arg(long, env = "EMBER_PORT", default_value_t = 8080)]
    port: u16,
    /// The address to ask: a probe runs beside the server.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The route to ask; healthy when it answers 200.
    #[arg(long, default_value = "/health/ready")]
    path: String,
    /// Given (as `serve --tls-cert` is, so the same environment turns both on), the probe speaks TLS; the file
    /// is not read. The server's certificate is not verified: the probe asks its own process over the loopback,
    /// as kubelet's HTTPS probes do.
    #[arg(long, env = "EMBER_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// A client certificate (PEM) to present, for a server with `--tls-client-ca`; with `--client-key`.
    #[arg(long, env = "EMBER_PROBE_CLIENT_CERT", value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "EMBER_PROBE_CLIENT_KEY", value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// An API key to send as `Authorization: Bearer`, for a server with `--protect-ops`.
    #[arg(long, env = "EMBER_PROBE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// How long the whole exchange may take, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

fn main() -> std::process::ExitCode {
    match probe(&ProbeArgs::parse()) {
        Ok(status) => {
            println!("{status}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ember-probe: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Asks once; Ok with the status line on a 200, else an error that says what answered (or did not).
fn probe(args: &ProbeArgs) -> anyhow::Result<String> {
    if !args.path.starts_with('/') || args.path.contains(char::is_whitespace) {
        bail!("--path {:?} is not a route: it starts with / and has no spaces", args.path);
    }
    if args.api_key.as_deref().is_some_and(|key| key.contains(char::is_control)) {
        bail!("--api-key holds a control character");
    }
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}:{}{}", args.host, args.port, args.path);
    let deadline = Instant::now() + Duration::from_millis(args.timeout_ms.max(1));
    let stream = connect(&args.host, args.port, deadline).with_context(|| format!("cannot reach {url}"))?;
    let authorization = args.api_key.as_ref().map(|key| format!("Authorization: Bearer {key}\r\n"));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{}\r\n",
        args.path,
        args.host,
        authorization.unwrap_or_default()
    );
    let answer = if args.tls_cert.is_some() {
        let client = args.client_cert.as_deref().zip(args.client_key.as_deref());
        let config = tls::client_config(client)?;
        let name = ServerName::try_from(args.host.clone()).with_context(|| format!("--host {}", args.host))?;
        let connection = rustls::ClientConnection::new(config, name).context("a TLS client")?;
        exchange(rustls::StreamOwned::new(connection, stream), request.as_bytes(), deadline)
    } else {
        exchange(stream, request.as_bytes(), deadline)
    }
    .with_context(|| format!("no answer from {url}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default().to_string();
    let status = status_line.split_whitespace().nth(1);
    if !status_line.starts_with("HTTP/1.") || status.is_none() {
        bail!("{url} did not answer HTTP: {:?}", truncate(&text, 120));
    }
    if status != Some("200") {
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        bail!("{url} answered {status_line}: {}", truncate(body.trim(), 300));
    }
    Ok(status_line)
}

fn connect(host: &str, port: u16, deadline: Instant) -> anyhow::Result<TcpStream> {
    let address = (host, port).to_socket_addrs()?.next().with_context(|| format!("{host} has no address"))?;
    let stream = TcpStream::connect_timeout(&address, remaining(deadline)?)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends the request and reads the answer until the server closes, `ANSWER_LIMIT` bytes or the deadline.
fn exchange<S: Read + Write + Socket>(mut stream: S, request: &[u8], deadline: Instant) -> anyhow::Result<Vec<u8>> {
    stream.set_timeouts(remaining(deadline)?)?;
    stream.write_all(request)?;
    stream.flush()?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while answer.len() < ANSWER_LIMIT {
        stream.set_timeouts(remaining(deadline)?)?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            // A server that closes without TLS's close_notify after a complete answer.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && !answer.is_empty() => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(answer)
}

fn remaining(deadline: Instant) -> anyhow::Result<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => bail!("timed out (--timeout-ms)"),
    }
}

fn truncate(text: &str, at: usize) -> &str {
    match text.char_indices().nth(at) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

/// The socket under a stream, whose read and write timeouts bound each step of the exchange.
trait Socket {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()>;
}

impl Socket for TcpStream {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

impl Socket for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()> {
        self.sock.set_timeouts(timeout)
    }
}
