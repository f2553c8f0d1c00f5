//! A local `nats-server -js` for the scenarios that need one (`interop`, `relay`), and
//! the JetStream ceiling's publisher: one `async-nats` client keeping up to
//! [`IN_FLIGHT`] publish acks in flight.

use std::future::IntoFuture;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::process::{Child, Command};

use crate::process::ProcSample;
use crate::progress;

/// The NATS server binary (Debian's `nats-server` package).
pub const NATS_SERVER: &str = "nats-server";
/// Publish acks the JetStream ceiling's client keeps in flight (as herald's relay).
pub const IN_FLIGHT: usize = 1024;

/// A `nats-server -js` child on a loopback port, with its store in a temporary
/// directory; killed when dropped.
pub struct NatsServer {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub async fn start(data_parent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herald-bench-nats-")
            .tempdir_in(data_parent)?;
        let port = {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            listener.local_addr()?.port()
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::fs::File::create(dir.path().join("nats.log"))?;
        let child = Command::new(NATS_SERVER)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path().join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {NATS_SERVER} (is it on PATH?)"))?;
        let pid = child.id().context("nats-server exited at once")?;
        let mut server = NatsServer {
            child,
            pid,
            addr,
            _dir: dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                progress!("nats-server started: pid {pid}, {addr}");
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("nats-server exited ({status}) before listening");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("nats-server did not listen on {addr} within 10 s")
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// A client connection (loopback only).
    pub async fn connect(&self) -> Result<async_nats::Client> {
        if !self.addr.ip().is_loopback() {
            bail!("refusing to send traffic to {}", self.addr);
        }
        async_nats::connect(self.addr.to_string())
            .await
            .context("connecting to nats-server")
    }

    pub fn sample(&self) -> Result<ProcSample> {
        ProcSample::of(&self.pid.to_string())
    }

    pub async fn stop(mut self) -> Result<()> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            progress!("nats-server did not exit after SIGTERM; killing it");
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// `nats-server: v2.9.10`, from `nats-server --version`.
pub fn version() -> String {
    std::process::Command::new(NATS_SERVER)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "nats-server (version unknown)".into())
}

/// Deletes a stream; a stream that does not exist is not an error.
pub async fn delete_stream(js: &jetstream::Context, name: &str) -> Result<()> {
    match js.delete_stream(name).await {
        Ok(_) => Ok(()),
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::DeleteStreamErrorKind::JetStream(ref e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            Ok(())
        }
        Err(error) => Err(error).with_context(|| format!("deleting the stream {name}")),
    }
}

/// One message to publish.
pub struct Outgoing {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub body: Bytes,
}

/// How long a publisher runs, and what it counts.
#[derive(Debug, Clone, Copy)]
pub enum Span {
    /// Publish for `warmup` + `window`; count the acks that arrive inside the window.
    Window { warmup: Duration, window: Duration },
    /// Publish exactly this many messages; count every ack, from the first publish to
    /// the last ack.
    Count(u64),
}

/// What a publisher run measured.
#[derive(Debug)]
pub struct AckedRun {
    /// Successful publish acks counted.
    pub acked: u64,
    /// Of those, acks saying the stream already had the message (same `Nats-Msg-Id`).
    pub duplicates: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// The window, or the first publish → the last ack for [`Span::Count`].
    pub elapsed: Duration,
    pub server_cores: f64,
    pub generator_cores: f64,
}

impl AckedRun {
    pub fn per_second(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Publishes `message(0)`, `message(1)`, ... with up to `in_flight` JetStream publish
/// acks awaited at once, for `span`. CPU of the server and of this process is sampled
/// over the measured part.
pub async fn publish_acked(
    server: &NatsServer,
    js: &jetstream::Context,
    span: Span,
    in_flight: usize,
    mut message: impl FnMut(u64) -> Outgoing,
) -> Result<AckedRun> {
    let pid = server.pid.to_string();
    let start = Instant::now();
    let (window_start, window_end, limit) = match span {
        Span::Window { warmup, window } => (start + warmup, Some(start + warmup + window), None),
        Span::Count(count) => (start, None, Some(count)),
    };
    let mut before: Option<(ProcSample, ProcSample)> = None;
    let mut after: Option<(ProcSample, ProcSample)> = None;
    let mut acks = FuturesUnordered::new();
    let (mut acked, mut duplicates, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None::<String>;
    let mut sent = 0u64;
    let mut last_ack = start;
    loop {
        let now = Instant::now();
        if before.is_none() && now >= window_start {
            before = Some((ProcSample::of(&pid)?, ProcSample::of("self")?));
        }
        if window_end.is_some_and(|end| now >= end) {
            after = Some((ProcSample::of(&pid)?, ProcSample::of("self")?));
            break;
        }
        let more = limit.is_none_or(|limit| sent < limit);
        if more && acks.len() < in_flight {
            let Outgoing {
                subject,
                headers,
                body,
            } = message(sent);
            sent += 1;
            let published = match headers {
                Some(headers) => js.publish_with_headers(subject, headers, body).await,
                None => js.publish(subject, body).await,
            };
            match published {
                Ok(ack) => acks.push(ack.into_future()),
                Err(error) => {
                    errors += 1;
                    first_error.get_or_insert(format!("{error}"));
                    if errors > 1000 {
                        break;
                    }
                }
            }
            continue;
        }
        let Some(ack) = acks.next().await else {
            if !more {
                // Span::Count: everything was published and answered.
                after = Some((ProcSample::of(&pid)?, ProcSample::of("self")?));
                break;
            }
            continue;
        };
        let done = Instant::now();
        let measured = done >= window_start && window_end.is_none_or(|end| done <= end);
        match ack {
            Ok(ack) if measured => {
                acked += 1;
                duplicates += u64::from(ack.duplicate);
                last_ack = done;
            }
            Ok(_) => {}
            Err(error) => {
                if measured {
                    errors += 1;
                }
                first_error.get_or_insert(format!("{error}"));
            }
        }
    }
    drop(acks);
    let _ = js.client().flush().await;
    let (Some((server_before, self_before)), Some((server_after, self_after))) = (before, after)
    else {
        bail!(
            "the NATS run stopped early: {}",
            first_error.unwrap_or_default()
        );
    };
    let elapsed = match span {
        Span::Window { window, .. } => window,
        Span::Count(_) => last_ack.duration_since(start),
    };
    Ok(AckedRun {
        acked,
        duplicates,
        errors,
        first_error,
        elapsed,
        server_cores: server_after.cores_used_since(&server_before),
        generator_cores: self_after.cores_used_since(&self_before),
    })
}
