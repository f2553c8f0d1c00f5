//! NATS: the hub's link to the message bus.
//!
//! - The [`relay`] publishes every event committed on this hub to JetStream, in seq
//!   order, from a cursor kept in the store (a transactional outbox): NATS being away
//!   delays the relay, it never fails a publish to the hub nor loses an event.
//! - The [`bridge`] ingests messages that others publish on configured subjects through
//!   durable JetStream consumers, so what was published while this hub was down is still
//!   ingested when it comes back. A message it cannot ingest becomes a dead letter in the
//!   store before it is acknowledged: none is dropped silently.
//! - [`presence`] announces this hub on `hub.global.presence.announced` and keeps the
//!   list of hubs heard from recently.
//!
//! The connection reconnects forever with backoff; none of these tasks gives up.

pub(crate) mod bridge;
pub(crate) mod presence;
pub(crate) mod relay;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::HeaderMap;
use herald_core::{Event, Pattern};

pub use bridge::{update_dead_letter_gauge, DEAD_LETTER_BODY_BYTES};
pub use presence::HubPresence;

/// Header naming the hub that relayed a message: the bridge of that hub skips it.
pub const HEADER_HUB: &str = "Herald-Hub";
/// Header with the event's seq in the relaying hub's log.
pub const HEADER_SEQ: &str = "Herald-Seq";
/// JetStream's de-duplication header, set to the event id. Looked up by this same name
/// in the headers built here (a name given as text is not the library's constant).
pub(crate) const HEADER_MESSAGE_ID: &str = "Nats-Msg-Id";
/// Header with the event's correlation id (seed 002: "adds correlation ID to headers").
pub const HEADER_CORRELATION: &str = "Correlation-ID";
/// Headers with the event's origin.
pub const HEADER_ORIGIN_HUB: &str = "Herald-Origin-Hub";
pub const HEADER_ORIGIN_SERVICE: &str = "Herald-Origin-Service";
pub const HEADER_ORIGIN_USER: &str = "Herald-Origin-User";
/// The W3C trace context of a relayed event (lowercase, as the spec asks senders to).
pub const HEADER_TRACEPARENT: &str = "traceparent";
pub const HEADER_TRACESTATE: &str = "tracestate";
/// The subject hubs announce themselves on (seed 002, federation).
pub const PRESENCE_SUBJECT: &str = "hub.global.presence.announced";

/// How to reach NATS and what to do there.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://…`; `user:password@` or `token@` allowed).
    pub servers: Vec<String>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// A `.creds` file (JWT + NKey).
    pub credentials_file: Option<PathBuf>,
    /// CA certificate(s) to trust for TLS, in PEM.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS, in PEM.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub require_tls: bool,
    pub stream: StreamSettings,
    /// Relay committed events to JetStream.
    pub relay: bool,
    /// Subjects to ingest from JetStream (empty: no bridge).
    pub bridge: Vec<Pattern>,
    /// Largest message body the bridge ingests; a larger one becomes a dead letter.
    pub bridge_max_body_bytes: usize,
    /// Most bridge dead letters kept in the store; past it the oldest are dropped (and
    /// counted in `herald_bridge_dead_letters_dropped_total`).
    pub dead_letters_max: usize,
    /// How often to announce this hub; `None`: never.
    pub presence_interval: Option<Duration>,
    /// This hub's public URL, in announcements.
    pub public_url: Option<String>,
}

impl NatsConfig {
    /// Settings for `servers` with every default.
    pub fn new(servers: Vec<String>) -> Self {
        NatsConfig {
            servers,
            token: None,
            user: None,
            password: None,
            credentials_file: None,
            tls_ca: None,
            tls_client: None,
            require_tls: false,
            stream: StreamSettings::default(),
            relay: true,
            bridge: vec![Pattern::parse("hub.>").expect("a valid pattern")],
            bridge_max_body_bytes: 1024 * 1024,
            dead_letters_max: 10_000,
            presence_interval: Some(Duration::from_secs(10)),
            public_url: None,
        }
    }

    /// The server list without credentials, to show and log.
    pub fn redacted_servers(&self) -> String {
        self.servers
            .iter()
            .map(|url| herald_store::redact_url(url))
            .map(|url| redact_token(&url))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `nats://token@host` carries a secret without a `:`; hide it too.
fn redact_token(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) if !userinfo.contains(':') => {
                format!("{scheme}://***@{host}")
            }
            _ => url.to_string(),
        },
        None => match url.split_once('@') {
            Some((userinfo, host)) if !userinfo.contains(':') => format!("***@{host}"),
            _ => url.to_string(),
        },
    }
}

/// The JetStream stream the relay writes to (seed 004's settings).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub name: String,
    pub subjects: Vec<Pattern>,
    /// 0 = unlimited (as for the other limits).
    pub max_msgs: i64,
    pub max_bytes: i64,
    pub max_age: Duration,
    /// Window in which JetStream drops a second message with the same `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            name: "HERALD".into(),
            subjects: vec![Pattern::parse("hub.>").expect("a valid pattern")],
            max_msgs: 0,
            max_bytes: 0,
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

impl StreamSettings {
    fn to_config(&self) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: self.name.clone(),
            subjects: self
                .subjects
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            max_messages: if self.max_msgs > 0 { self.max_msgs } else { -1 },
            max_bytes: if self.max_bytes > 0 {
                self.max_bytes
            } else {
                -1
            },
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.replicas.max(1),
            ..Default::default()
        }
    }

    /// Whether events on `subject` land in the stream.
    pub fn captures(&self, subject: &str) -> bool {
        self.subjects.iter().any(|p| p.matches(subject))
    }
}

/// What went wrong while connecting: the settings (fix them), or NATS itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    #[error("bad NATS settings: no server URL")]
    NoServer,
    #[error("bad NATS settings: cannot read {}: {source}", path.display())]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `url` has its password redacted.
    #[error("bad NATS settings: `{url}` is not a NATS URL: {source}")]
    Url {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach NATS: {0}")]
    Connect(#[source] async_nats::ConnectError),
}

/// Why the JetStream stream could not be set up, in the style of async-nats' own errors:
/// the kind to branch on, and the client's error as the source.
#[derive(Debug, thiserror::Error)]
#[error("{kind} stream {stream}: {source}")]
pub struct StreamSetupError {
    kind: StreamSetupErrorKind,
    stream: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// The step of [`NatsLink::ensure_stream`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSetupErrorKind {
    Lookup,
    Info,
    Update,
    Create,
}

impl std::fmt::Display for StreamSetupErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StreamSetupErrorKind::Lookup => "cannot look up the JetStream",
            StreamSetupErrorKind::Info => "cannot read the settings of the JetStream",
            StreamSetupErrorKind::Update => "cannot update the JetStream",
            StreamSetupErrorKind::Create => "cannot create the JetStream",
        })
    }
}

impl StreamSetupError {
    fn new(
        kind: StreamSetupErrorKind,
        stream: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StreamSetupError {
            kind,
            stream: stream.to_owned(),
            source: Box::new(source),
        }
    }

    pub fn kind(&self) -> StreamSetupErrorKind {
        self.kind
    }
}

/// A live link to NATS, shared by the relay, the bridge, presence and rules.
#[derive(Clone)]
pub(crate) struct NatsLink {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub config: NatsConfig,
    /// Whether the stream is not known to be set up: before the first success, and when
    /// the last attempt failed (JetStream disabled on the server, no permission, bad
    /// limits). Connected is then not healthy, unless nothing here uses the stream.
    stream_failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NatsLink {
    /// Connects in the background: returns at once even while NATS is down, then keeps
    /// (re)connecting forever with backoff.
    pub async fn connect(config: NatsConfig, hub_id: &str) -> Result<Self, NatsError> {
        if config.servers.is_empty() {
            return Err(NatsError::NoServer);
        }
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("herald {hub_id}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(5))
            // async-nats asks before the first attempt too (attempts = 1): no wait then;
            // 100 ms, 200 ms, … up to 5 s between later ones.
            .reconnect_delay_callback(|attempts| {
                if attempts <= 1 {
                    return Duration::ZERO;
                }
                let millis = 100u64.saturating_mul(1 << (attempts - 2).min(6) as u64);
                Duration::from_millis(millis.min(5_000))
            })
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("Connected to NATS."),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("Disconnected from NATS; reconnecting.")
                    }
                    other => tracing::debug!(event = %other, "NATS event."),
                }
            });
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(path) = &config.credentials_file {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|source| NatsError::Credentials {
                        path: path.clone(),
                        source,
                    })?;
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &config.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if config.require_tls {
            options = options.require_tls(true);
        }
        let addresses: Vec<async_nats::ServerAddr> = config
            .servers
            .iter()
            .map(|url| {
                url.parse().map_err(|source| NatsError::Url {
                    url: herald_store::redact_url(url),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let client = options
            .connect(addresses)
            .await
            .map_err(NatsError::Connect)?;
        let jetstream = jetstream::new(client.clone());
        let uses_stream = config.relay || !config.bridge.is_empty();
        Ok(NatsLink {
            client,
            jetstream,
            config,
            stream_failing: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(uses_stream)),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Connected, and the stream could be set up.
    pub fn is_healthy(&self) -> bool {
        self.is_connected()
            && !self
                .stream_failing
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (polling cheaply) until the connection is up.
    pub async fn wait_connected(&self) {
        while !self.is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Marks the stream as not known to work (the relay's publish or PubAck failed), so
    /// that health says so at once, not only after the next setup attempt times out too
    /// (a server that hangs keeps its TCP connection open for minutes). The next
    /// successful [`NatsLink::ensure_stream`] clears it.
    pub fn mark_stream_failing(&self) {
        self.stream_failing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Creates the stream, or brings an existing one's settings in line with ours.
    pub async fn ensure_stream(&self) -> Result<(), StreamSetupError> {
        let result = self.try_ensure_stream().await;
        self.stream_failing
            .store(result.is_err(), std::sync::atomic::Ordering::Relaxed);
        result
    }

    async fn try_ensure_stream(&self) -> Result<(), StreamSetupError> {
        use StreamSetupErrorKind::*;
        let wanted = self.config.stream.to_config();
        let name = self.config.stream.name.as_str();
        match self.jetstream.get_stream(&wanted.name).await {
            Ok(mut stream) => {
                let info = stream
                    .info()
                    .await
                    .map_err(|e| StreamSetupError::new(Info, name, e))?;
                let current = &info.config;
                if current.subjects != wanted.subjects
                    || current.max_messages != wanted.max_messages
                    || current.max_bytes != wanted.max_bytes
                    || current.max_age != wanted.max_age
                    || current.duplicate_window != wanted.duplicate_window
                {
                    self.jetstream
                        .update_stream(wanted)
                        .await
                        .map_err(|e| StreamSetupError::new(Update, name, e))?;
                    tracing::info!(stream = %self.config.stream.name, "Updated the JetStream stream's settings.");
                }
                Ok(())
            }
            Err(error)
                if matches!(
                    error.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref e)
                        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                self.jetstream
                    .create_stream(wanted)
                    .await
                    .map_err(|e| StreamSetupError::new(Create, name, e))?;
                tracing::info!(stream = %self.config.stream.name, "Created the JetStream stream.");
                Ok(())
            }
            Err(error) => Err(StreamSetupError::new(Lookup, name, error)),
        }
    }
}

/// The headers of a relayed or republished event.
pub fn event_headers(event: &Event, relaying_hub: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MESSAGE_ID, event.id.to_string().as_str());
    headers.insert(HEADER_HUB, relaying_hub);
    headers.insert(HEADER_SEQ, event.seq.to_string().as_str());
    headers.insert(
        HEADER_CORRELATION,
        event.correlation_id.to_string().as_str(),
    );
    headers.insert(HEADER_ORIGIN_HUB, event.origin.hub_id.as_str());
    if let Some(service) = &event.origin.service {
        headers.insert(HEADER_ORIGIN_SERVICE, service.as_str());
    }
    if let Some(user) = &event.origin.user {
        headers.insert(HEADER_ORIGIN_USER, user.as_str());
    }
    if let Some(trace) = event.trace.as_deref() {
        insert_trace_headers(&mut headers, trace);
    }
    headers
}

/// Sets the W3C `traceparent` (and `tracestate`, when there is one) headers.
pub fn insert_trace_headers(headers: &mut HeaderMap, trace: &herald_core::TraceContext) {
    headers.insert(HEADER_TRACEPARENT, trace.traceparent().as_str());
    if let Some(state) = &trace.tracestate {
        headers.insert(HEADER_TRACESTATE, state.as_str());
    }
}

/// Status for `/health` and `/health/nats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsStatus {
    pub connected: bool,
    /// Connected, and the JetStream stream could be set up (`false` when, for example,
    /// the server runs without JetStream).
    pub healthy: bool,
    /// The configured servers, without credentials.
    pub url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        let config = NatsConfig::new(vec![
            "nats://alice:s3cret@a:4222".into(),
            "nats://t0ken@b:4222".into(),
            "c:4222".into(),
        ]);
        let shown = config.redacted_servers();
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
        assert_eq!(shown, "nats://alice:***@a:4222,nats://***@b:4222,c:4222");
    }
}
