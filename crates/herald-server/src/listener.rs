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
//! - A connection the server closes is closed *lingering* ([`LingerIo`]), as nginx and
//!   Apache do: the server shuts its write side (FIN), then reads and discards what the
//!   client still sends, until the client closes too, [`LINGER_BYTES`] were read or
//!   [`LINGER_TIME`] passed. Otherwise an answer given before the body was read (a 413
//!   decided from `Content-Length`) is followed by a close with unread data, the kernel
//!   answers that with a reset, and the client often loses the answer.
//!
//! Accepted sockets get `TCP_NODELAY`: events are small and latency matters.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
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

/// What one connection counts against the `max_connections` of the key it uses: taken
/// by its first authenticated request ([`crate::auth`]), given back when it closes.
#[derive(Clone, Default)]
pub struct ConnectionSeat(Arc<std::sync::Mutex<Option<(String, herald_hub::access::StreamSlot)>>>);

impl ConnectionSeat {
    /// Counts this connection against `caller`'s key (once per key it uses).
    pub fn claim(&self, caller: &herald_hub::access::Caller) -> Result<(), herald_hub::HubError> {
        let Some(key) = caller.key_id() else {
            return Ok(());
        };
        let mut seat = self.0.lock().expect("connection seat lock");
        if seat.as_ref().is_some_and(|(held, _)| held == key) {
            return Ok(());
        }
        let slot = caller.open_connection()?;
        *seat = Some((key.to_owned(), slot));
        Ok(())
    }
}

/// How long a reserve connection may take to send its one request's head.
const RESERVE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a closing connection keeps reading what the client still sends (Apache's
/// lingering close waits 2 s too); the connection keeps its slot that much longer at most.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes a closing connection reads and discards (a 16 MiB body takes well under
/// the time above on a fast link, and the body limit is far below it).
const LINGER_BYTES: u64 = 16 * 1024 * 1024;

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
        let seat = ConnectionSeat::default();
        let service = self.app.map_request(move |request: Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(admission);
            request.extensions_mut().insert(seat.clone());
            request
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(admission == Admission::Normal);
        let io = TokioIo::new(LingerIo::new(
            JsonErrorIo::new(stream),
            self.shutdown.clone(),
        ));
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

/// A socket that closes lingering: hyper's http1 dispatcher calls `poll_shutdown` when
/// it closes a connection (and not when it hands it to an upgrade), and this shuts the
/// write side, then reads and discards until the client's end of stream, an error,
/// [`LINGER_BYTES`] or [`LINGER_TIME`], or the server's shutdown, whichever comes first.
///
/// Only this connection's task waits: nothing shared is held while it lingers. Over
/// TLS the inner shutdown sends `close_notify` and then the FIN, and the discarded
/// reads go through the TLS session (a client's `close_notify` ends them). Once a `101`
/// went out, the socket belongs to the upgrade (a WebSocket) and shuts down plainly.
struct LingerIo<T> {
    inner: T,
    state: Linger,
    shutdown: CancellationToken,
}

enum Linger {
    /// Serving HTTP: a shutdown lingers.
    Open,
    /// Switched protocols: a shutdown is only a shutdown.
    Upgraded,
    /// The write side is shut; reading what the client still sends.
    Draining {
        deadline: Pin<Box<Sleep>>,
        stopping: Pin<Box<WaitForCancellationFutureOwned>>,
        left: u64,
    },
    /// Shut down, lingering over.
    Closed,
}

impl<T> LingerIo<T> {
    fn new(inner: T, shutdown: CancellationToken) -> Self {
        LingerIo {
            inner,
            state: Linger::Open,
            shutdown,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> LingerIo<T> {
    /// Reads and discards until lingering is over (`Ready`) or nothing is there yet.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Linger::Draining {
            deadline,
            stopping,
            left,
        } = &mut self.state
        else {
            return Poll::Ready(());
        };
        if deadline.as_mut().poll(cx).is_ready() || stopping.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let mut buf = [0u8; 8192];
        // A bounded number of reads per poll, then yield: a fast sender cannot keep this
        // task on the worker (tokio's budget would also stop it).
        for _ in 0..32 {
            let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            let mut read = ReadBuf::new(&mut buf[..want]);
            match Pin::new(&mut self.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                // The client closed (or reset): nothing more can come.
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len() as u64;
                    if n == 0 {
                        return Poll::Ready(());
                    }
                    *left = left.saturating_sub(n);
                    if *left == 0 {
                        return Poll::Ready(());
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LingerIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LingerIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // hyper writes an answer's head in one buffer (the socket is not vectored);
        // after a `101` the bytes are the upgrade's. A body chunk that happens to start
        // like this only costs the lingering of its connection.
        if matches!(this.state, Linger::Open)
            && (buf.starts_with(b"HTTP/1.1 101 ") || buf.starts_with(b"HTTP/1.0 101 "))
        {
            this.state = Linger::Upgraded;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            Linger::Closed => return Poll::Ready(Ok(())),
            Linger::Upgraded => return Pin::new(&mut this.inner).poll_shutdown(cx),
            Linger::Open => {
                ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                this.state = Linger::Draining {
                    deadline: Box::pin(tokio::time::sleep(LINGER_TIME)),
                    stopping: Box::pin(this.shutdown.clone().cancelled_owned()),
                    left: LINGER_BYTES,
                };
            }
            Linger::Draining { .. } => {}
        }
        ready!(this.poll_linger(cx));
        this.state = Linger::Closed;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connected pair: (the server's end, wrapped; the client's end).
    async fn pair() -> (LingerIo<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let server = LingerIo::new(accepted.unwrap().0, CancellationToken::new());
        (server, client.unwrap())
    }

    /// The client keeps sending a body the server never reads; the server answers and
    /// shuts down; the client still reads the whole answer, then the server's EOF.
    #[tokio::test]
    async fn an_answer_before_the_body_reaches_a_client_that_keeps_sending() {
        let (mut server, client) = pair().await;
        let (mut rd, mut wr) = client.into_split();
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..128 {
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            // Closing ends the server's lingering at once.
            drop(wr);
        });
        // Some of the body is in the server's receive buffer, unread.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\n{}";
        server.write_all(answer).await.unwrap();
        let started = Instant::now();
        let lingering = tokio::spawn(async move { server.shutdown().await });
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.expect("no reset");
        assert_eq!(got, answer);
        writer.await.unwrap();
        lingering.await.unwrap().unwrap();
        assert!(started.elapsed() < LINGER_TIME, "{:?}", started.elapsed());
    }

    /// A client that neither sends nor closes keeps the connection only for the time cap.
    #[tokio::test]
    async fn lingering_ends_after_the_time_cap() {
        let (mut server, mut client) = pair().await;
        let started = Instant::now();
        server.shutdown().await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= LINGER_TIME - Duration::from_millis(50) && took < LINGER_TIME * 2,
            "{took:?}"
        );
        let mut byte = [0u8; 1];
        assert_eq!(client.read(&mut byte).await.unwrap(), 0, "a FIN first");
    }

    /// The server's shutdown cuts lingering short.
    #[tokio::test]
    async fn the_servers_shutdown_ends_lingering() {
        let (mut server, _client) = pair().await;
        let token = server.shutdown.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            token.cancel();
        });
        server.shutdown().await.unwrap();
        assert!(
            started.elapsed() < LINGER_TIME / 2,
            "{:?}",
            started.elapsed()
        );
    }

    /// After a `101` the socket is the upgrade's: shutting it down does not linger.
    #[tokio::test]
    async fn an_upgraded_connection_shuts_down_plainly() {
        let (mut server, _client) = pair().await;
        server
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        server.shutdown().await.unwrap();
        assert!(
            started.elapsed() < LINGER_TIME / 2,
            "{:?}",
            started.elapsed()
        );
    }
}
