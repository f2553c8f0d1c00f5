//! The test harness: runs the real `herald` binary as a child process on a loopback
//! port with its own temporary data directory, and offers small HTTP/WebSocket helpers
//! that assert the wire contract's shapes.
//!
//! Signals: `kill9` uses `Child::start_kill` (SIGKILL on Unix); `terminate`/`interrupt`
//! run the `kill` command, so no `nix`/`libc` dependency is needed.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

/// The `herald` binary under test.
pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A WebSocket client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// Environment variables removed from every child: the server's own configuration
/// (so only the flags we pass apply) and proxies (all traffic is loopback).
const SCRUBBED_ENV: &[&str] = &[
    "HERALD_CONFIG",
    "PORT",
    "HERALD_LISTEN",
    "DATABASE_URL",
    "HUB_ID",
    "HERALD_AUTH",
    "HERALD_ADMIN_KEY",
    "STREAM_NAME",
    "MAX_MSGS",
    "MAX_BYTES",
    "MAX_AGE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// Applies [`SCRUBBED_ENV`] and a quiet default log level to a command.
pub fn scrub_env(cmd: &mut Command) -> &mut Command {
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    cmd
}

/// A running (or stopped) `herald serve` on a private data directory.
pub struct TestHerald {
    dir: TempDir,
    /// `--data` when not the temp dir's file (e.g. a PostgreSQL URL).
    data: Option<String>,
    args: Vec<String>,
    /// Extra environment variables of the server process.
    env: Vec<(String, String)>,
    child: Option<Child>,
    pid: u32,
    base_url: String,
    starts: u32,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    /// An HTTP client for this server (keep-alive pool, loopback only).
    pub http: reqwest::Client,
}

impl TestHerald {
    /// Starts `herald serve` with default options.
    pub async fn start() -> TestHerald {
        Self::start_with(&[]).await
    }

    /// Starts `herald serve` with extra arguments after the listen/data ones.
    pub async fn start_with(args: &[&str]) -> TestHerald {
        Self::start_on(None, args).await
    }

    /// Starts `herald serve` on the store `data` (a path or URL; `None`: a temp file).
    pub async fn start_on(data: Option<&str>, args: &[&str]) -> TestHerald {
        Self::start_with_env(data, args, &[]).await
    }

    /// Starts `herald serve` on `data` with extra arguments and environment variables.
    pub async fn start_with_env(
        data: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TestHerald {
        let dir = tempfile::Builder::new()
            .prefix("herald-it-")
            .tempdir()
            .expect("create temp dir");
        let mut herald = TestHerald {
            dir,
            data: data.map(str::to_owned),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            pid: 0,
            base_url: String::new(),
            starts: 0,
            stdout_lines: Arc::new(Mutex::new(Vec::new())),
            http: http_client(),
        };
        herald.spawn().await;
        herald
    }

    /// The data file every start of this server uses.
    pub fn data_path(&self) -> PathBuf {
        self.dir.path().join("herald.db")
    }

    /// Bytes the store takes on disk: the database, its WAL and the event log.
    pub fn store_bytes(&self) -> u64 {
        fn bytes(path: &std::path::Path) -> u64 {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
                    .map(|entries| entries.flatten().map(|e| bytes(&e.path())).sum())
                    .unwrap_or(0),
                Ok(meta) => meta.len(),
                Err(_) => 0,
            }
        }
        ["herald.db", "herald.db-wal", "herald.db-events"]
            .iter()
            .map(|name| bytes(&self.dir.path().join(name)))
            .sum()
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join(format!("stderr-{}.log", self.starts))
    }

    /// What the current (or last) process wrote to stderr, at most the last 16 KiB.
    pub fn stderr(&self) -> String {
        let text = std::fs::read(self.stderr_path()).unwrap_or_default();
        let start = text.len().saturating_sub(16 * 1024);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// Every line the current (or last) process wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines.lock().unwrap().clone()
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn while a child is running");
        self.starts += 1;
        let stderr = std::fs::File::create(self.stderr_path()).expect("create stderr log");
        let mut cmd = Command::new(HERALD);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(
                self.data
                    .clone()
                    .unwrap_or_else(|| self.data_path().display().to_string()),
            )
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        scrub_env(&mut cmd);
        // Test receivers listen on 127.0.0.1, which the webhook guard refuses; tests of
        // the guard pass HERALD_WEBHOOK_ALLOW_PRIVATE=false.
        cmd.env("HERALD_WEBHOOK_ALLOW_PRIVATE", "true");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("spawn herald serve");
        self.pid = child.id().expect("child pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        self.stdout_lines = lines.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        // Reads stdout for the whole life of the process (so the server never blocks
        // on a full pipe), reporting the listening line once.
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line.clone());
                if let Some(url) = parse_listening_line(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url);
                    }
                }
            }
        });
        let waited = tokio::time::timeout(START_TIMEOUT, rx).await;
        match waited {
            Ok(Ok(url)) => {
                self.base_url = url;
                self.child = Some(child);
            }
            outcome => {
                let _ = child.start_kill();
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                panic!(
                    "herald serve did not print `herald listening on http://127.0.0.1:PORT` \
                     ({}); exit: {status:?}\nstdout: {:?}\nstderr:\n{}",
                    if outcome.is_err() {
                        "timed out after 20 s"
                    } else {
                        "stdout closed"
                    },
                    self.stdout_lines(),
                    self.stderr()
                );
            }
        }
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        metrics_text(&self.http, &self.base_url).await
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS) of the running server.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// `ws://127.0.0.1:PORT` (`wss://` with TLS) + `path`.
    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.base_url.starts_with("https://") {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}{path}", self.addr())
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.base_url
            .split_once("://")
            .map_or(self.base_url.as_str(), |(_, addr)| addr)
            .to_owned()
    }

    /// The pid of the running process.
    pub fn pid(&self) -> u32 {
        assert!(self.child.is_some(), "herald is not running");
        self.pid
    }

    /// SIGKILL: no shutdown hooks run. Waits for the process to be gone.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("herald is not running");
        child.start_kill().expect("SIGKILL herald");
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("herald gone within 10 s of SIGKILL")
            .expect("wait for herald");
    }

    /// Sends `signal` (a `kill` signal name) and waits up to `within` for the process to
    /// exit; panics with its stderr if it does not.
    pub async fn signal_and_wait(&mut self, signal: &str, within: Duration) -> ExitStatus {
        send_signal(self.pid(), signal);
        self.wait_exit(within).await
    }

    /// Waits up to `within` for the process to exit (after a signal sent elsewhere);
    /// panics with its stderr if it does not.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("herald is not running");
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.expect("wait for herald"),
            Err(_) => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                panic!(
                    "herald did not exit within {within:?}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGTERM and wait (up to 10 s) for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal_and_wait("TERM", Duration::from_secs(10)).await
    }

    /// Starts the server again on the same data directory (a new port).
    pub async fn restart(&mut self) {
        self.spawn().await;
        self.http = http_client();
    }

    // ---- HTTP helpers -------------------------------------------------------------

    /// POSTs a JSON body to `/api/events`.
    pub async fn post_event(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/events"))
            .json(body)
            .send()
            .await
            .expect("POST /api/events")
    }

    /// Publishes and asserts the 201 shape; returns the response body.
    pub async fn publish(&self, subject: &str, payload: Value) -> Value {
        self.publish_body(&json!({"subject": subject, "payload": payload}))
            .await
    }

    /// Publishes a full body and asserts the 201 shape; returns the response body.
    pub async fn publish_body(&self, body: &Value) -> Value {
        let resp = self.post_event(body).await;
        let status = resp.status();
        let text = resp.text().await.expect("read publish response");
        assert_eq!(status, 201, "publish {body}: got {status} {text}");
        let value: Value = serde_json::from_str(&text).expect("publish response is JSON");
        assert_publish_response(&value);
        value
    }

    /// `GET /api/events` with the given query; asserts 200 and the event shape of every
    /// element, and seq ascending.
    pub async fn query(&self, params: &[(&str, String)]) -> Vec<Value> {
        let resp = self
            .http
            .get(self.url("/api/events"))
            .query(params)
            .send()
            .await
            .expect("GET /api/events");
        let status = resp.status();
        let text = resp.text().await.expect("read query response");
        assert_eq!(
            status, 200,
            "GET /api/events {params:?}: got {status} {text}"
        );
        let value: Value = serde_json::from_str(&text).expect("query response is JSON");
        let events = value
            .as_array()
            .unwrap_or_else(|| panic!("query response is not an array: {text}"))
            .clone();
        for event in &events {
            assert_event_shape(event);
        }
        assert_seq_ascending(&events);
        events
    }

    /// The whole log, paged with `after_seq` and `limit=1000`.
    pub async fn all_events(&self) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut after = 0u64;
        for _ in 0..10_000 {
            let page = self
                .query(&[
                    ("limit", "1000".to_owned()),
                    ("after_seq", after.to_string()),
                ])
                .await;
            let Some(last) = page.last() else {
                return out;
            };
            after = seq_of(last);
            out.extend(page);
        }
        panic!("more than 10,000 pages in the log");
    }

    /// Number of events in the log.
    pub async fn event_count(&self) -> usize {
        self.all_events().await.len()
    }

    /// `GET /api/events/{id}`, asserting 200.
    pub async fn get_event(&self, id: &str) -> Value {
        let resp = self
            .http
            .get(self.url(&format!("/api/events/{id}")))
            .send()
            .await
            .expect("GET /api/events/{id}");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "GET /api/events/{id}: {status} {text}");
        let value: Value = serde_json::from_str(&text).expect("event is JSON");
        assert_event_shape(&value);
        value
    }

    /// Asserts `GET /health` answers 200 (on a fresh connection).
    pub async fn assert_healthy(&self) {
        let resp = http_client()
            .get(self.url("/health"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /health failed: {e}; stderr:\n{}", self.stderr()));
        assert_eq!(resp.status(), 200, "GET /health");
    }

    // ---- WebSocket helpers ----------------------------------------------------------

    /// Opens a WebSocket to `path` (e.g. from [`stream_path`]).
    pub async fn ws_connect(&self, path: &str) -> Ws {
        self.ws_connect_with(path, None).await
    }

    /// Opens a WebSocket whose socket has a fixed receive buffer (no autotuning), so a
    /// client that stops reading pushes back on the server quickly.
    pub async fn ws_connect_with(&self, path: &str, recv_buffer: Option<u32>) -> Ws {
        match self.try_ws_connect(path, recv_buffer).await {
            Ok(ws) => ws,
            Err(e) => panic!("WebSocket connect to {path} failed: {e}"),
        }
    }

    /// Like [`TestHerald::ws_connect_with`], returning the handshake error.
    pub async fn try_ws_connect(
        &self,
        path: &str,
        recv_buffer: Option<u32>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let addr = self.addr().parse().expect("socket addr");
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
            .await
            .expect("TCP connect within 10 s")
            .expect("TCP connect");
        let url = self.ws_url(path);
        let (ws, _resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(url.as_str(), stream),
        )
        .await
        .expect("WebSocket handshake within 10 s")?;
        Ok(ws)
    }

    /// Makes sure `ws` (subscribed live to a pattern matching `probe_subject`) is
    /// registered: publishes probes until one arrives, then a final marker, and reads up
    /// to that marker. Returns the marker's seq: every later matching event will arrive.
    pub async fn sync_live(&self, ws: &mut Ws, probe_subject: &str) -> u64 {
        let marker = Uuid::new_v4().to_string();
        let mut got_probe = false;
        for attempt in 0..100 {
            self.publish(probe_subject, json!({"probe": attempt})).await;
            if let Some(frame) = next_frame(ws, Duration::from_millis(100)).await {
                match frame {
                    Frame::Event(envelope) if envelope["subject"] == probe_subject => {
                        got_probe = true;
                        break;
                    }
                    other => panic!("while waiting for a probe on {probe_subject}: {other:?}"),
                }
            }
        }
        assert!(
            got_probe,
            "no live event arrived after 100 probes on {probe_subject}"
        );
        let sent = self.publish(probe_subject, json!({"marker": marker})).await;
        let marker_seq = seq_of(&sent);
        for _ in 0..1000 {
            match next_frame(ws, Duration::from_secs(10)).await {
                Some(Frame::Event(envelope)) => {
                    assert_eq!(
                        envelope["subject"], probe_subject,
                        "only probes are expected while syncing: {envelope}"
                    );
                    if seq_of(&envelope["data"]) == marker_seq {
                        return marker_seq;
                    }
                }
                other => panic!("while waiting for the sync marker: {other:?}"),
            }
        }
        panic!("sync marker never arrived");
    }
}

impl Drop for TestHerald {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// `GET /metrics` of the server at `base`, as text.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the sample `name` without labels in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// An HTTP client that never uses a proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// Sends a signal with the `kill` command.
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// `herald listening on http://127.0.0.1:PORT` → `http://127.0.0.1:PORT` (or
/// `https://` with TLS).
pub fn parse_listening_line(line: &str) -> Option<String> {
    let url = line.trim_end().strip_prefix("herald listening on ")?;
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let port: u16 = rest.strip_prefix("127.0.0.1:")?.parse().ok()?;
    (port != 0).then(|| format!("{scheme}://127.0.0.1:{port}"))
}

/// `/api/events/stream?subject=...` plus extra query text (`&from_seq=3`); the subject
/// is percent-encoded (`>` is not a valid raw URI character).
pub fn stream_path(subject: &str, extra: &str) -> String {
    format!(
        "/api/events/stream?subject={}{extra}",
        encode_query(subject)
    )
}

/// Percent-encodes a query value.
pub fn encode_query(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'*') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One thing read from a WebSocket.
#[derive(Debug)]
pub enum Frame {
    /// A text frame, parsed and checked to be `{"subject", "data": <event>}`.
    Event(Value),
    /// A close frame.
    Close(Option<CloseFrame>),
    /// The stream ended (or failed) without a close frame; the text (shown through
    /// `Debug` in failure messages) says how.
    Ended(#[allow(dead_code)] String),
}

/// Reads the next text/close frame (answering nothing, skipping ping/pong); `None` when
/// nothing came within `wait`.
pub async fn next_frame(ws: &mut Ws, wait: Duration) -> Option<Frame> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return None,
            Ok(None) => return Some(Frame::Ended("stream ended".into())),
            Ok(Some(Err(e))) => return Some(Frame::Ended(format!("error: {e}"))),
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("WebSocket text is not JSON ({e}): {text}"));
                assert_envelope_shape(&value);
                return Some(Frame::Event(value));
            }
            Message::Close(frame) => return Some(Frame::Close(frame)),
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(b) => panic!("expected text frames, got a binary frame: {b:?}"),
            Message::Frame(_) => continue,
        }
    }
}

/// Reads the next event envelope or panics with `what` and what came instead.
pub async fn expect_event(ws: &mut Ws, wait: Duration, what: &str) -> Value {
    match next_frame(ws, wait).await {
        Some(Frame::Event(v)) => v,
        other => panic!("{what}: expected an event frame within {wait:?}, got {other:?}"),
    }
}

/// Closes a WebSocket politely, bounded in time.
pub async fn ws_close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Sends a text frame (used to check the server ignores client chatter).
pub async fn ws_send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned()))
        .await
        .expect("send text frame");
}

// ---- shape assertions ----------------------------------------------------------------

/// The sorted key set of a JSON object.
pub fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {value}"))
        .keys()
        .cloned()
        .collect()
}

/// Asserts `value` is an object with exactly `expected` keys.
pub fn assert_keys(value: &Value, expected: &[&str], what: &str) {
    let want: BTreeSet<String> = expected.iter().map(|k| k.to_string()).collect();
    assert_eq!(keys(value), want, "{what} keys: {value}");
}

/// Asserts a JSON string is a UUID; returns it.
pub fn assert_uuid(value: &Value, what: &str) -> Uuid {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"));
    Uuid::parse_str(text).unwrap_or_else(|e| panic!("{what} is not a UUID ({e}): {text}"))
}

/// Asserts an RFC 3339 timestamp; returns it.
pub fn assert_rfc3339(value: &Value, what: &str) -> chrono::DateTime<chrono::Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{what} is not RFC 3339 ({e}): {text}"))
        .with_timezone(&chrono::Utc)
}

/// Asserts the stored-event timestamp format: RFC 3339 UTC with microseconds,
/// `2025-11-03T12:00:00.123456Z`.
pub fn assert_event_timestamp(value: &Value, what: &str) -> chrono::DateTime<chrono::Utc> {
    let parsed = assert_rfc3339(value, what);
    let text = value.as_str().unwrap();
    let b = text.as_bytes();
    let ok = b.len() == 27
        && b[10] == b'T'
        && b[19] == b'.'
        && b[20..26].iter().all(u8::is_ascii_digit)
        && b[26] == b'Z';
    assert!(
        ok,
        "{what} is not RFC 3339 UTC with microseconds (2025-11-03T12:00:00.123456Z): {text}"
    );
    parsed
}

/// Asserts `value` is an object holding (at least) the `expected` keys.
pub fn assert_has_keys(value: &Value, expected: &[&str], what: &str) {
    let have = keys(value);
    let missing: Vec<&&str> = expected.iter().filter(|k| !have.contains(**k)).collect();
    assert!(missing.is_empty(), "{what} lacks {missing:?}: {value}");
}

/// Asserts the 201 body `{event_id, correlation_id, timestamp, seq}` (later additions,
/// such as an idempotency flag, are allowed beside them).
pub fn assert_publish_response(value: &Value) {
    assert_has_keys(
        value,
        &["event_id", "correlation_id", "timestamp", "seq"],
        "publish response",
    );
    assert_uuid(&value["event_id"], "event_id");
    assert_uuid(&value["correlation_id"], "correlation_id");
    assert_rfc3339(&value["timestamp"], "timestamp");
    let seq = value["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("seq is not a non-negative integer: {value}"));
    assert!(seq >= 1, "seq starts at 1: {value}");
}

/// Asserts the event shape of the contract, exactly.
pub fn assert_event_shape(event: &Value) {
    let mut keys = vec![
        "id",
        "seq",
        "subject",
        "origin",
        "correlation_id",
        "payload",
        "timestamp",
    ];
    // Present when the hub has tenants: the tenant the event belongs to.
    if event.get("tenant_id").is_some() {
        assert!(
            event["tenant_id"].is_string(),
            "tenant_id is a string: {event}"
        );
        keys.push("tenant_id");
    }
    // Present for an aggregate's event: which aggregate and version, the event type, and
    // the writer's metadata when it gave some.
    if event.get("aggregate").is_some() {
        assert_keys(&event["aggregate"], &["type", "id", "version"], "aggregate");
        assert!(
            event["type"].is_string(),
            "an aggregate event has a type: {event}"
        );
        keys.extend(["aggregate", "type"]);
        if event.get("metadata").is_some() {
            assert!(
                event["metadata"].is_object(),
                "metadata is an object: {event}"
            );
            keys.push("metadata");
        }
    }
    // Present for an event published with a valid W3C trace context (or traced by the
    // hub): its `traceparent` (version 00), and the `tracestate` that came with it.
    if let Some(traceparent) = event.get("traceparent") {
        let text = traceparent.as_str().unwrap_or_default();
        let fields: Vec<&str> = text.split('-').collect();
        assert!(
            fields.len() == 4
                && fields[0] == "00"
                && [32, 16, 2]
                    .iter()
                    .zip(&fields[1..])
                    .all(|(n, f)| f.len() == *n
                        && f.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
            "traceparent is a version-00 W3C traceparent: {event}"
        );
        keys.push("traceparent");
        if event.get("tracestate").is_some() {
            assert!(
                event["tracestate"].is_string(),
                "tracestate is a string: {event}"
            );
            keys.push("tracestate");
        }
    }
    assert_keys(event, &keys, "event");
    assert_uuid(&event["id"], "event id");
    assert!(
        event["seq"].as_u64().is_some_and(|s| s >= 1),
        "event seq is a positive integer: {event}"
    );
    assert!(
        event["subject"].as_str().is_some_and(|s| !s.is_empty()),
        "event subject is a non-empty string: {event}"
    );
    let origin = &event["origin"];
    assert_keys(origin, &["hub_id", "service", "user"], "event origin");
    assert!(
        origin["hub_id"].as_str().is_some_and(|s| !s.is_empty()),
        "origin.hub_id is a non-empty string: {event}"
    );
    for key in ["service", "user"] {
        assert!(
            origin[key].is_null() || origin[key].is_string(),
            "origin.{key} is a string or null: {event}"
        );
    }
    assert_uuid(&event["correlation_id"], "event correlation_id");
    assert!(
        event["payload"].is_object(),
        "event payload is an object: {event}"
    );
    assert_event_timestamp(&event["timestamp"], "event timestamp");
}

/// Asserts a stream envelope `{"subject", "data": <event>}` with matching subjects.
pub fn assert_envelope_shape(envelope: &Value) {
    assert_keys(envelope, &["subject", "data"], "stream message");
    assert_event_shape(&envelope["data"]);
    assert_eq!(
        envelope["subject"], envelope["data"]["subject"],
        "envelope subject is the event's subject: {envelope}"
    );
}

/// Asserts strictly ascending `seq`.
pub fn assert_seq_ascending(events: &[Value]) {
    for pair in events.windows(2) {
        assert!(
            seq_of(&pair[0]) < seq_of(&pair[1]),
            "events not in ascending seq order: {} then {}",
            pair[0]["seq"],
            pair[1]["seq"]
        );
    }
}

pub fn seq_of(event: &Value) -> u64 {
    event["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {event}"))
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(seq_of).collect()
}

/// Checks an error response: status in `statuses`, JSON body
/// `{"error":{"code":"snake_case","message":"..."}}` with code in `codes` (any code
/// when empty), and an `X-Correlation-ID` header. Returns a description on mismatch.
pub async fn check_error(
    resp: reqwest::Response,
    statuses: &[u16],
    codes: &[&str],
) -> Result<(), String> {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let has_cid = resp.headers().contains_key("x-correlation-id");
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading body: {e}"))?;
    let mut problems = Vec::new();
    if !statuses.contains(&status) {
        problems.push(format!("status {status}, expected {statuses:?}"));
    }
    if !content_type.starts_with("application/json") {
        problems.push(format!("content-type {content_type:?}"));
    }
    if !has_cid {
        problems.push("no X-Correlation-ID header".into());
    }
    match serde_json::from_str::<Value>(&text) {
        Err(e) => problems.push(format!("body is not JSON ({e})")),
        Ok(body) => {
            let shape_ok =
                body.as_object().is_some_and(|o| o.len() == 1) && body["error"].is_object();
            let code = body["error"]["code"].as_str();
            let message = body["error"]["message"].as_str();
            if !shape_ok {
                problems.push("body is not {\"error\":{...}}".into());
            }
            match code {
                Some(code) if is_snake_case(code) => {
                    if !codes.is_empty() && !codes.contains(&code) {
                        problems.push(format!("code {code:?}, expected one of {codes:?}"));
                    }
                }
                _ => problems.push("error.code is not a snake_case string".into()),
            }
            if message.is_none_or(|m| m.trim().is_empty()) {
                problems.push("error.message is not a non-empty string".into());
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let shown: String = text.chars().take(300).collect();
        Err(format!("{}; body: {shown}", problems.join(", ")))
    }
}

fn is_snake_case(code: &str) -> bool {
    let mut chars = code.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// NATS matching (`*` one token, `>` one or more trailing tokens), for expectations.
pub fn nats_match(pattern: &str, subject: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, tok) in p.iter().enumerate() {
        match *tok {
            ">" => return s.len() > i,
            "*" | "%" => {
                if i >= s.len() {
                    return false;
                }
            }
            lit => {
                if s.get(i) != Some(&lit) {
                    return false;
                }
            }
        }
    }
    p.len() == s.len()
}

/// Polls `check` every `every` until it returns true or `within` passes.
pub async fn poll_until<F, Fut>(within: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Resident set size fields of `/proc/PID/status`, in KiB: (VmRSS, RssAnon).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("RssAnon:").unwrap_or(0)))
}

/// Reads one HTTP/1.1 request from a kept-alive connection: its request line, its
/// headers (names lowercased) and its body (by `content-length`). `None` once the
/// client closed the connection.
pub async fn read_http_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Option<(String, std::collections::HashMap<String, String>, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut line = String::new();
    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some((line, headers, body))
}
