//! Accepting and serving connections: a cap on open connections with a small reserve
//! above it, and a header-read timeout, so that neither silent nor slow clients can
//! lock others out.
//!
//! - At `max_connections`, the server accepts up to `reserve` more connections. On those
//!   it answers `/health` (and `/health/nats`, `/metrics`) as usual and refuses
//!   everything else at once with `503 too_many_connections` (or `too_many_streams` for
//!   a stream when the streams are full), one request per connection. Past the reserve,
//!   new connections wait in the kernel's backlog.
//! - Every connection must deliver a request's head within `header_read_timeout` from
//!   the moment the server waits for it: a socket that sends nothing, or drips header
//!   lines, is closed, and so is a keep-alive connection left idle that long.
//!
//! - With TLS, the handshake happens on the connection's slot and must finish within the
//!   same timeout (a client that connects and sends nothing is closed); the settings in
//!   force when a connection is accepted are the ones it uses (see [`Tls`]).
//!
//! Accepted sockets get `TCP_NODELAY`: events are small and latency matters.

use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::hyper_errors::JsonErrorIo;
use crate::tls::Tls;

/// How the connections of a server are limited.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections served normally.
    pub max_connections: usize,
    /// Connections accepted above `max_connections` only to answer health checks and
    /// refuse the rest politely.
    pub reserve: usize,
    /// Longest wait for a request's head (headers included), idle keep-alive included.
    pub header_read_timeout: Duration,
}

/// How a connection was admitted; every request carries it as an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within `max_connections`.
    Normal,
    /// In the reserve above the cap: health checks only, then closed.
    Reserve,
}

/// How long a reserve connection may take to send its one request's head.
const RESERVE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Accepts connections on `listener` and serves `app` on them (over TLS with `tls`)
/// until `shutdown` fires; then stops accepting, lets each connection finish its
/// request, and returns once every connection is closed (upgraded WebSockets are
/// tracked by their handler).
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let normal = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let reserve = Arc::new(Semaphore::new(limits.reserve));
    // Each connection task holds a receiver; the sender sees `closed` when all are gone.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let admitted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = normal.clone().acquire_owned() => (Admission::Normal, permit),
            permit = reserve.clone().acquire_owned() => (Admission::Reserve, permit),
        };
        let (admission, permit) = match admitted {
            (admission, Ok(permit)) => (admission, permit),
            (_, Err(_)) => unreachable!("the connection semaphores are never closed"),
        };
        let stream = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        let _ = stream.set_nodelay(true);
        // The permit was taken before the client came: if a normal one has been freed
        // while we waited, this client gets it.
        let (admission, permit) = match admission {
            Admission::Reserve => match normal.clone().try_acquire_owned() {
                Ok(normal_permit) => (Admission::Normal, normal_permit),
                Err(_) => (Admission::Reserve, permit),
            },
            Admission::Normal => (Admission::Normal, permit),
        };
        let connection = Connection {
            app: app.clone(),
            admission,
            header_read_timeout: match admission {
                Admission::Normal => limits.header_read_timeout,
                Admission::Reserve => limits.header_read_timeout.min(RESERVE_HEADER_READ_TIMEOUT),
            },
            shutdown: shutdown.clone(),
            _permit: permit,
            _open: open_rx.clone(),
        };
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        tokio::spawn(connection.run(stream, acceptor));
    }
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// Waits for the next connection, riding out errors that concern one client only.
async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                // Out of file descriptors or similar: wait for connections to close.
                tracing::error!(%error, "Accept failed; retrying in 100 ms.");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection and what it holds until it closes.
struct Connection {
    app: Router,
    admission: Admission,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
    _open: watch::Receiver<()>,
}

impl Connection {
    /// Serves the connection, after a TLS handshake when `tls` is set.
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let Some(acceptor) = tls else {
            return self.serve(stream).await;
        };
        let handshake = tokio::time::timeout(self.header_read_timeout, acceptor.accept(stream));
        let stream = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return,
            result = handshake => match result {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed.");
                    metrics::counter!("herald_tls_handshake_failures_total", "reason" => "error")
                        .increment(1);
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out.");
                    metrics::counter!("herald_tls_handshake_failures_total", "reason" => "timeout")
                        .increment(1);
                    return;
                }
            },
        };
        self.serve(stream).await
    }

    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let admission = self.admission;
        let service = self.app.map_request(move |request: Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(admission);
            request
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(admission == Admission::Normal);
        let io = TokioIo::new(JsonErrorIo::new(stream));
        let mut connection = pin!(builder
            .serve_connection(io, TowerToHyperService::new(service))
            .with_upgrades());
        let mut shutting_down = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::trace!(%error, "Connection ended with an error.");
                    }
                    break;
                }
                () = self.shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
