//! The gRPC port's connections, capped as the HTTP port's are: a connection is accepted only with a free slot,
//! and gives the slot back when it closes; beyond the cap, clients wait in the listen backlog. With TLS, each
//! connection's handshake runs in a task of its own (bounded in time, `crate::tls::handshake`), so that a stalled
//! client holds only its own slot, not the accept loop.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::{handshake, Port, Tls};

/// A connection (TCP, or TLS over TCP) holding one of the slots.
pub struct Capped<S = TcpStream> {
    stream: S,
    _slot: OwnedSemaphorePermit,
}

/// The connections of `listener`, at most `max` open at once.
pub fn capped(listener: TcpListener, max: usize) -> impl Stream<Item = io::Result<Capped>> {
    let slots = Arc::new(Semaphore::new(max.max(1)));
    stream::unfold((listener, slots), |(listener, slots)| async move {
        // A free slot first, then a connection.
        let slot = Arc::clone(&slots).acquire_owned().await.ok()?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((Ok(Capped { stream, _slot: slot }), (listener, slots)));
                }
                // Out of file descriptors or a connection reset before accept: wait, go on (as the HTTP port).
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a gRPC connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// The connections of `capped` once their TLS handshakes are done; those whose handshake fails are closed (and
/// counted by `failures`).
pub fn secured(
    capped: impl Stream<Item = io::Result<Capped>> + Send + 'static,
    tls: Arc<Tls>,
    within: Duration,
    failures: IntCounterVec,
) -> impl Stream<Item = io::Result<Capped<TlsStream<TcpStream>>>> {
    let (done, handshaken) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut capped = std::pin::pin!(capped);
        while let Some(Ok(Capped { stream, _slot })) = capped.next().await {
            let (tls, handshaken, failures) = (Arc::clone(&tls), done.clone(), failures.clone());
            tokio::spawn(async move {
                match handshake(tls.acceptor(Port::Grpc), stream, Port::Grpc, within).await {
                    Ok(stream) => {
                        let _ = handshaken.send(Ok(Capped { stream, _slot })).await;
                    }
                    Err(failure) => failures.with_label_values(&["grpc", failure.reason()]).inc(),
                }
            });
            if done.is_closed() {
                break;
            }
        }
    });
    stream::unfold(handshaken, |mut handshaken| async move { Some((handshaken.recv().await?, handshaken)) })
}

impl Connected for Capped {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl Connected for Capped<TlsStream<TcpStream>> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.get_ref().0.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
