//! One configuration for `herald serve`: [`ServeConfig`] holds every setting, its flag,
//! its environment variable, its default and its key in the configuration file.
//!
//! Precedence: built-in defaults < configuration file < environment < flags. The file is
//! `--config FILE` (or `HERALD_CONFIG`), else `./herald.toml` when there is one; TOML, or
//! YAML for a `.yaml`/`.yml` file, with the same shape: one table per topic (the sections
//! below), each key the field's name (the long flag in snake_case), plus the declarations
//! `[[schemas]]`, `[[retention]]` and `[[rules]]`.
//!
//! How: clap parses the command line once; the file is read, checked against
//! [`ServeConfig`] by serde (unknown keys and wrong types are errors naming the file and
//! key), and its values become the defaults of their arguments; clap then parses again,
//! so the environment and flags still win. Seed 004's environment names (`STREAM_NAME`,
//! `MAX_MSGS`, `MAX_BYTES`, `MAX_AGE`) sit between the file and the `HERALD_*` names.
//!
//! Adding a setting is one field in one section struct: its doc comment is the help, its
//! `#[arg]` the flag, environment variable and default, its name the file key.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The default configuration file, read when it exists and no other is named.
pub const DEFAULT_FILE: &str = "herald.toml";

/// Arguments of `herald serve` and `herald config`: the file to read, and the settings.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; YAML if it ends in .yaml or .yml). Default: ./herald.toml
    /// when it exists. Its values are overridden by the environment and by flags.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: ServeConfig,
}

/// Every setting of `herald serve`. Each section is a table of the configuration file
/// and a heading of `herald serve --help`; every flag has an environment variable, the
/// seed documents' names (`PORT`, `DATABASE_URL`, `HUB_ID`, `NATS_URL`) as they are and
/// everything else `HERALD_*`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    #[command(flatten)]
    #[serde(default)]
    pub server: ServerSettings,
    #[command(flatten)]
    #[serde(default)]
    pub store: StoreSettings,
    #[command(flatten)]
    #[serde(default)]
    pub limits: LimitSettings,
    #[command(flatten)]
    #[serde(default)]
    pub streams: StreamSettings,
    #[command(flatten)]
    #[serde(default)]
    pub auth: AuthSettings,
    #[command(flatten)]
    #[serde(default)]
    pub tls: TlsSettings,
    #[command(flatten)]
    #[serde(default)]
    pub nats: NatsSettings,
    #[command(flatten)]
    #[serde(default)]
    pub routing: RoutingSettings,
    #[command(flatten)]
    #[serde(default)]
    pub log: LogSettings,
    #[command(flatten)]
    #[serde(default)]
    pub tracing: TracingSettings,

    /// Event schemas to create or replace at start (file only).
    #[arg(skip)]
    #[serde(default)]
    pub schemas: Vec<SchemaDecl>,
    /// Retention policies (file only).
    #[arg(skip)]
    #[serde(default)]
    pub retention: Vec<RetentionPolicy>,
    /// Routing rules to store at start, `POST /api/rules` bodies with an `id` (file only;
    /// with `rules_file` too, both are loaded).
    #[arg(skip)]
    #[serde(default)]
    pub rules: Vec<serde_json::Value>,
}

/// Adds a section's arguments to a command (`Args::augment_args`).
type AddArgs = fn(Command) -> Command;

/// The sections in file and `herald config` order: table name and its arguments.
const SECTIONS: &[(&str, AddArgs)] = &[
    ("server", <ServerSettings as Args>::augment_args),
    ("store", <StoreSettings as Args>::augment_args),
    ("limits", <LimitSettings as Args>::augment_args),
    ("streams", <StreamSettings as Args>::augment_args),
    ("auth", <AuthSettings as Args>::augment_args),
    ("tls", <TlsSettings as Args>::augment_args),
    ("nats", <NatsSettings as Args>::augment_args),
    ("routing", <RoutingSettings as Args>::augment_args),
    ("log", <LogSettings as Args>::augment_args),
    ("tracing", <TracingSettings as Args>::augment_args),
];

/// Seed 004's environment names, read when the `HERALD_*` variable and flag are not
/// given (and over the file): `(argument, variable)`.
const SEED_ENV: &[(&str, &str)] = &[
    ("nats_stream", "STREAM_NAME"),
    ("nats_max_msgs", "MAX_MSGS"),
    ("nats_max_bytes", "MAX_BYTES"),
    ("nats_max_age_secs", "MAX_AGE"),
];

/// The listener and the hub's identity.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Server")]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on, e.g. 127.0.0.1:9001 (port 0 picks a free one). Overrides --port.
    #[arg(long, env = "HERALD_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Port to listen on, on all interfaces.
    #[arg(long, env = "PORT", default_value_t = 9001)]
    pub port: u16,

    /// This hub's id, the `origin.hub_id` of the events published here.
    #[arg(long, env = "HUB_ID", default_value = "local-hub")]
    pub hub_id: String,

    /// Seconds to wait for requests and streams to finish at shutdown.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
}

/// Where events are stored, and the PostgreSQL pool (also used by `migrate` and `keys`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Store")]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Where events are stored: a file path, sqlite://PATH or postgres://…
    #[arg(
        long = "data",
        alias = "database-url",
        env = "DATABASE_URL",
        default_value = "./data/herald.db",
        hide_env_values = true
    )]
    #[serde(serialize_with = "redacted_urls")]
    pub data: String,

    /// Connections kept open to PostgreSQL.
    #[arg(long, env = "HERALD_PG_POOL_SIZE", default_value_t = 8)]
    pub pg_pool_size: usize,

    /// Seconds one PostgreSQL statement may run; a store call fails (503) after this plus
    /// the connect timeout.
    #[arg(long, env = "HERALD_PG_STATEMENT_TIMEOUT_SECS", default_value_t = 5)]
    pub pg_statement_timeout_secs: u64,

    /// Seconds to open one PostgreSQL connection.
    #[arg(long, env = "HERALD_PG_CONNECT_TIMEOUT_SECS", default_value_t = 3)]
    pub pg_connect_timeout_secs: u64,

    /// Start even if PostgreSQL runs with fsync=off or synchronous_commit=off
    /// (acknowledged events can then be lost in a crash).
    #[arg(long, env = "HERALD_ALLOW_UNSAFE_DURABILITY")]
    pub allow_unsafe_durability: bool,

    /// Most rows one query, stream catch-up page or consumer fetch reads that its filters
    /// refuse; it then answers what it found with a position to go on from
    /// (`X-Next-After-Seq`). At least 1,000, the largest page.
    #[arg(long, env = "HERALD_QUERY_SCAN_BUDGET",
          default_value_t = herald_store::QUERY_SCAN_BUDGET as u64,
          value_parser = clap::value_parser!(u64).range(herald_store::MAX_QUERY_LIMIT as u64..))]
    pub query_scan_budget: u64,
}

/// Bounds on what clients may ask of the hub.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Limits")]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest body of a batch publish (`POST /api/events:batch`), in bytes.
    #[arg(long, env = "HERALD_MAX_BATCH_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_batch_body_bytes: usize,

    /// Deepest nesting of arrays and objects accepted in a payload, at most 100 (so that
    /// the event carrying it stays within what common JSON parsers read back).
    #[arg(long, env = "HERALD_MAX_JSON_DEPTH", default_value_t = herald_core::json::MAX_JSON_DEPTH as u64,
          value_parser = clap::value_parser!(u64).range(1..=herald_core::json::MAX_JSON_DEPTH as u64))]
    pub max_json_depth: u64,

    /// Longest query string accepted, in bytes.
    #[arg(long, env = "HERALD_MAX_QUERY_BYTES", default_value_t = 8 * 1024)]
    pub max_query_bytes: usize,

    /// Most TCP connections served at once.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Connections accepted above --max-connections only to answer /health and refuse
    /// the rest with 503 too_many_connections; more wait in the listen backlog.
    #[arg(long, env = "HERALD_RESERVE_CONNECTIONS", default_value_t = 32)]
    pub reserve_connections: usize,

    /// Seconds a client may take to send a request's headers, counted from when the
    /// server waits for them (an idle keep-alive connection is closed after as long).
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// Most publish requests being read or committed at once; more wait their turn.
    #[arg(long, env = "HERALD_MAX_INFLIGHT_PUBLISHES", default_value_t = 512)]
    pub max_inflight_publishes: usize,

    /// Seconds a request (body included) may take before it is answered 408.
    #[arg(long, env = "HERALD_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Most events committed in one transaction.
    #[arg(long, env = "HERALD_MAX_BATCH_EVENTS", default_value_t = 2048)]
    pub max_batch_events: usize,

    /// Most durable consumers the hub keeps (PUT /api/consumers/{name} past it is 409).
    #[arg(long, env = "HERALD_MAX_CONSUMERS", default_value_t = 1000)]
    pub max_consumers: usize,

    /// Most event schemas the hub keeps (PUT /api/schemas/{name} past it is 409).
    #[arg(long, env = "HERALD_MAX_SCHEMAS", default_value_t = 1000)]
    pub max_schemas: usize,

    /// Largest event schema document, in bytes of compact JSON (larger is 422).
    #[arg(long, env = "HERALD_MAX_SCHEMA_BYTES", default_value_t = 65536)]
    pub max_schema_bytes: usize,
}

/// WebSocket and SSE streams.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Streams")]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// Most WebSocket streams open at once.
    #[arg(long, env = "HERALD_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,

    /// Seconds between pings on an idle stream.
    #[arg(long, env = "HERALD_WS_PING_INTERVAL_SECS", default_value_t = 30)]
    pub ws_ping_interval_secs: u64,

    /// Seconds a write to a stream may block before the client is disconnected.
    #[arg(long, env = "HERALD_WS_SEND_TIMEOUT_SECS", default_value_t = 30)]
    pub ws_send_timeout_secs: u64,

    /// Events a live stream may have queued before it switches to reading the store.
    #[arg(long, env = "HERALD_SUBSCRIBER_QUEUE", default_value_t = 1024)]
    pub subscriber_queue: usize,
}

/// API keys.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Security")]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `off`: requests without an API key act with every right (a laptop, the seeds'
    /// examples); `required`: every route but the health checks needs a key.
    #[arg(long, env = "HERALD_AUTH", value_enum, default_value = "off")]
    pub auth: AuthMode,

    /// A secret that acts as an admin key (only its hash is kept). Or create keys with
    /// `herald keys create --admin`.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<Secret>,
}

/// HTTPS and WSS on the listener. Without them, plain HTTP.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "TLS")]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Certificate chain (PEM, leaf first) to serve HTTPS and WSS with (with --tls-key).
    /// Read again, with the key and client CA, on SIGHUP.
    #[arg(long, env = "HERALD_TLS_CERT", value_name = "PEM_FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "HERALD_TLS_KEY", value_name = "PEM_FILE")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM): require client certificates signed by one of them.
    #[arg(long, env = "HERALD_TLS_CLIENT_CA", value_name = "PEM_FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The NATS link (used when `NATS_URL` is set).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "NATS")]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// NATS server(s), comma-separated (nats://host:4222, tls://…; user:password@ or
    /// token@ allowed). Unset: Herald runs standalone.
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    #[serde(
        deserialize_with = "optional_list",
        serialize_with = "optional_redacted_urls"
    )]
    pub nats_url: Option<String>,

    /// Token to authenticate to NATS with.
    #[arg(long, env = "HERALD_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<Redacted>,

    /// User name to authenticate to NATS with (with --nats-password).
    #[arg(long, env = "HERALD_NATS_USER")]
    pub nats_user: Option<String>,

    /// Password to authenticate to NATS with (with --nats-user).
    #[arg(long, env = "HERALD_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<Redacted>,

    /// A NATS credentials (.creds) file.
    #[arg(long, env = "HERALD_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// CA certificate (PEM) to trust for TLS to NATS.
    #[arg(long, env = "HERALD_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS (with --nats-tls-key).
    #[arg(long, env = "HERALD_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --nats-tls-cert.
    #[arg(long, env = "HERALD_NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,

    /// Refuse to talk to NATS without TLS.
    #[arg(long, env = "HERALD_NATS_REQUIRE_TLS")]
    pub nats_require_tls: bool,

    /// The JetStream stream events are relayed to (created or updated at start). Also
    /// read from seed 004's `STREAM_NAME`.
    #[arg(long, env = "HERALD_NATS_STREAM", default_value = "HERALD")]
    pub nats_stream: String,

    /// The stream's subjects, comma-separated.
    #[arg(long, env = "HERALD_NATS_STREAM_SUBJECTS", default_value = "hub.>")]
    #[serde(deserialize_with = "list")]
    pub nats_stream_subjects: String,

    /// Most messages the stream keeps (0 = no limit; also seed 004's `MAX_MSGS`).
    #[arg(long, env = "HERALD_NATS_MAX_MSGS", default_value_t = 0)]
    pub nats_max_msgs: i64,

    /// Most bytes the stream keeps (0 = no limit; also seed 004's `MAX_BYTES`).
    #[arg(long, env = "HERALD_NATS_MAX_BYTES", default_value_t = 0)]
    pub nats_max_bytes: i64,

    /// Seconds the stream keeps a message (0 = no limit; also seed 004's `MAX_AGE`).
    #[arg(long, env = "HERALD_NATS_MAX_AGE_SECS", default_value_t = 0)]
    pub nats_max_age_secs: u64,

    /// Seconds in which JetStream drops a re-sent message (same Nats-Msg-Id).
    #[arg(long, env = "HERALD_NATS_DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    pub nats_duplicate_window_secs: u64,

    /// Relay every event committed on this hub to the stream.
    #[arg(long, env = "HERALD_NATS_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub nats_relay: bool,

    /// Subject patterns to ingest from the stream, comma-separated; empty for none. Each
    /// must lie within the stream's subjects.
    #[arg(long, env = "HERALD_NATS_BRIDGE", default_value = "hub.>")]
    #[serde(deserialize_with = "list")]
    pub nats_bridge: String,

    /// Largest NATS message body the bridge ingests, in bytes; a larger message becomes a
    /// dead letter (GET /api/bridge/dead-letters).
    #[arg(long, env = "HERALD_NATS_BRIDGE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub nats_bridge_max_body_bytes: usize,

    /// Most bridge dead letters kept; past it the oldest are dropped (and counted).
    #[arg(long, env = "HERALD_NATS_DEAD_LETTERS_MAX", default_value_t = 10_000)]
    pub nats_dead_letters_max: usize,

    /// Seconds between presence announcements on hub.global.presence.announced (0 = off).
    #[arg(long, env = "HERALD_PRESENCE_INTERVAL_SECS", default_value_t = 10)]
    pub presence_interval_secs: u64,

    /// This hub's public URL, in presence announcements.
    #[arg(long, env = "HERALD_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// Routing rules and their webhooks.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Routing and webhooks")]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSettings {
    /// A routing rules file: a JSON array of `POST /api/rules` bodies, each with an `id`.
    /// They are stored at start (replacing stored rules with the same id) and show in
    /// GET /api/rules; rules added over the API are kept.
    #[arg(
        long = "rules-file",
        visible_alias = "rules",
        env = "HERALD_RULES_FILE"
    )]
    pub rules_file: Option<PathBuf>,

    /// Let webhook rules reach loopback, private (RFC 1918, fc00::/7), link-local,
    /// carrier-grade NAT and cloud metadata addresses, which are refused by default.
    #[arg(long, env = "HERALD_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
}

/// Logs.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Logging")]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Log format: text or json. The level comes from RUST_LOG (default info).
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// OpenTelemetry tracing, by the standard `OTEL_*` variables (see the README's
/// "Tracing"). The exporter also reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` and `OTEL_BSP_*`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Tracing")]
#[serde(default, deny_unknown_fields)]
pub struct TracingSettings {
    /// OTLP/HTTP collector base URL (spans go to <url>/v1/traces), e.g.
    /// http://localhost:4318. Tracing is off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// OTLP protocol: http/protobuf or http/json (grpc is not built in).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf",
          value_parser = ["http/protobuf", "http/json", "grpc"])]
    pub otel_exporter_otlp_protocol: String,
    /// The `service.name` of Herald's spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "herald")]
    pub otel_service_name: String,
    /// Sampler: always_on, always_off, traceidratio, parentbased_always_on,
    /// parentbased_always_off or parentbased_traceidratio.
    #[arg(
        long,
        env = "OTEL_TRACES_SAMPLER",
        default_value = "parentbased_always_on"
    )]
    pub otel_traces_sampler: String,
    /// The sampler's argument (the ratio of the traceidratio samplers, 0 to 1).
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub otel_traces_sampler_arg: Option<String>,
}

/// Whether requests need an API key (`HERALD_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Off,
    Required,
}

/// The built-in defaults of a section: its arguments parsed from nothing, with no
/// environment. (The only place defaults are written is the `#[arg]` attributes.)
fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(Command::new("defaults"))
        .mut_args(|arg| arg.env(None::<&'static str>))
        .no_binary_name(true);
    let matches = command
        .try_get_matches_from(std::iter::empty::<OsString>())
        .expect("the built-in defaults parse");
    T::from_arg_matches(&matches).expect("the built-in defaults parse")
}

macro_rules! defaults_from_clap {
    ($($section:ty),*) => {$(
        impl Default for $section {
            fn default() -> Self {
                clap_defaults()
            }
        }
    )*};
}
defaults_from_clap!(
    ServerSettings,
    StoreSettings,
    LimitSettings,
    StreamSettings,
    AuthSettings,
    TlsSettings,
    NatsSettings,
    RoutingSettings,
    LogSettings,
    TracingSettings
);

/// An admin key from the command line, environment or file: never shown by `Debug` or
/// `herald config`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim().len() < 16 {
            return Err("an admin key must be at least 16 characters".into());
        }
        Ok(Secret(text.trim().to_owned()))
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A password or token: any text, never shown by `Debug` or `herald config`.
#[derive(Clone)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Redacted(text.to_owned()))
    }
}

impl Serialize for Redacted {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Redacted {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Redacted)
    }
}

/// What `herald config` shows instead of a secret.
const REDACTED: &str = "<redacted>";

/// Hides the password (or token) of every `scheme://user:password@host` in a
/// comma-separated list of URLs.
pub fn redact_urls(text: &str) -> String {
    text.split(',')
        .map(redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    // The last `@` of the authority: a password may hold an `@` of its own.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let userinfo = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        // `nats://token@host`: the whole userinfo is the secret.
        None if scheme.is_none_or(|s| !s.starts_with("postgres")) => "***".to_owned(),
        None => userinfo.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{userinfo}@{host}"),
        None => format!("{userinfo}@{host}"),
    }
}

fn redacted_urls<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_urls(text))
}

fn optional_redacted_urls<S: Serializer>(
    text: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match text {
        Some(text) => serializer.serialize_some(&redact_urls(text)),
        None => serializer.serialize_none(),
    }
}

/// A comma-separated list in the file: a string, or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListValue {
    Text(String),
    Items(Vec<String>),
}

impl ListValue {
    fn joined(self) -> String {
        match self {
            ListValue::Text(text) => text,
            ListValue::Items(items) => items.join(","),
        }
    }
}

fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    ListValue::deserialize(deserializer)
        .map(ListValue::joined)
        .map_err(|_| serde::de::Error::custom("expected a string or an array of strings"))
}

fn optional_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    list(deserializer).map(Some)
}

/// An event schema declared in the file (`[[schemas]]`), created or replaced at start
/// like `PUT /api/schemas/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaDecl {
    pub name: String,
    pub subject_pattern: String,
    /// A JSON Schema (2020-12) document.
    pub schema: serde_json::Value,
}

/// A retention policy declared in the file (`[[retention]]`): events on `subjects` are
/// kept while younger than `max_age`, among the newest `max_events`, and within
/// `max_bytes`. Seed 004's names `MAX_AGE`, `MAX_MSGS` and `MAX_BYTES` are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RetentionDecl")]
pub struct RetentionPolicy {
    /// A subject pattern, e.g. `hub.*.metrics.>`.
    pub subjects: String,
    pub max_age: Option<Duration>,
    pub max_events: Option<u64>,
    pub max_bytes: Option<u64>,
    /// Delete aggregates' events too (by default they are kept).
    pub include_aggregates: bool,
}

/// A `[[retention]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionDecl {
    #[serde(alias = "subject", alias = "subject_pattern")]
    subjects: String,
    #[serde(default, alias = "MAX_AGE")]
    max_age: Option<DurationValue>,
    #[serde(default, alias = "MAX_MSGS", alias = "max_msgs")]
    max_events: Option<u64>,
    #[serde(default, alias = "MAX_BYTES")]
    max_bytes: Option<ByteValue>,
    #[serde(default)]
    include_aggregates: bool,
}

/// A duration: "30d", "12h 30m" (humantime), or a number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(u64),
    Text(String),
}

/// A size: a number of bytes, or "10GB", "512 MiB", "1kB".
#[derive(Deserialize)]
#[serde(untagged)]
enum ByteValue {
    Bytes(u64),
    Text(String),
}

impl TryFrom<RetentionDecl> for RetentionPolicy {
    type Error = String;
    fn try_from(decl: RetentionDecl) -> Result<Self, String> {
        herald_core::Pattern::parse(&decl.subjects)
            .map_err(|error| format!("retention `subjects` {:?}: {error}", decl.subjects))?;
        let max_age = match decl.max_age {
            None => None,
            Some(DurationValue::Seconds(secs)) => Some(Duration::from_secs(secs)),
            Some(DurationValue::Text(text)) => {
                Some(humantime::parse_duration(&text).map_err(|error| {
                    format!("retention `max_age` {text:?}: {error} (e.g. \"30d\", \"12h\")")
                })?)
            }
        };
        let max_bytes = match decl.max_bytes {
            None => None,
            Some(ByteValue::Bytes(bytes)) => Some(bytes),
            Some(ByteValue::Text(text)) => Some(parse_bytes(&text).ok_or_else(|| {
                format!("retention `max_bytes` {text:?}: expected bytes, e.g. 1048576, \"10GB\" or \"512MiB\"")
            })?),
        };
        if max_age.is_none() && decl.max_events.is_none() && max_bytes.is_none() {
            return Err(format!(
                "retention for {:?} sets none of max_age, max_events and max_bytes",
                decl.subjects
            ));
        }
        if max_age.is_some_and(|age| age.is_zero())
            || decl.max_events == Some(0)
            || max_bytes == Some(0)
        {
            return Err(format!(
                "retention for {:?}: a limit of 0 would keep nothing; leave it out for no limit",
                decl.subjects
            ));
        }
        Ok(RetentionPolicy {
            include_aggregates: decl.include_aggregates,
            subjects: decl.subjects,
            max_age,
            max_events: decl.max_events,
            max_bytes,
        })
    }
}

/// "10GB", "512 MiB", "1kB", "42" → bytes (decimal units are powers of 1000, `i` ones of
/// 1024); `None` when not a size.
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

impl Serialize for RetentionPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("RetentionPolicy", 4)?;
        s.serialize_field("subjects", &self.subjects)?;
        if let Some(age) = self.max_age {
            s.serialize_field("max_age", &humantime::format_duration(age).to_string())?;
        }
        if let Some(events) = self.max_events {
            s.serialize_field("max_events", &events)?;
        }
        if let Some(bytes) = self.max_bytes {
            s.serialize_field("max_bytes", &bytes)?;
        }
        s.end()
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File,
    Env(String),
    Flag,
}

/// The effective configuration and where each value came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: ServeConfig,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// Argument id → origin, for the arguments that have a value.
    pub origins: BTreeMap<String, Origin>,
}

/// Reads the configuration of `herald <subcommand>` (`serve` or `config`) from this
/// process's command line, environment and file.
pub fn load(subcommand: &str) -> anyhow::Result<Loaded> {
    load_from(subcommand, args_after(1), Path::new("."))
}

/// This process's arguments after the binary and `words` subcommand names (`herald` has
/// no options before its subcommands).
fn args_after(words: usize) -> Vec<OsString> {
    std::env::args_os().skip(1 + words).collect()
}

/// [`load`] with the arguments after the subcommand, and the directory in which to look
/// for `herald.toml`.
pub fn load_from(subcommand: &str, args: Vec<OsString>, cwd: &Path) -> anyhow::Result<Loaded> {
    let name = format!("herald {subcommand}");
    let command = ServeArgs::augment_args(Command::new(name.clone()).bin_name(name));
    let layered = layered(command, args, cwd)?;
    let mut settings = ServeConfig::from_arg_matches(&layered.matches)
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    if let Some(declared) = layered.declared {
        settings.schemas = declared.schemas;
        settings.retention = declared.retention;
        settings.rules = declared.rules;
    }
    Ok(Loaded {
        config: settings,
        file: layered.file,
        origins: layered.origins,
    })
}

/// The store settings of `herald migrate` or `herald keys create` (`command`, reached by
/// `words` subcommand names): the file's `[store]` table under the environment and flags,
/// so that they open the store `herald serve` would.
pub fn load_store(command: Command, words: usize) -> anyhow::Result<StoreSettings> {
    let layered = layered(command, args_after(words), Path::new("."))?;
    StoreSettings::from_arg_matches(&layered.matches).map_err(|error| anyhow::anyhow!("{error}"))
}

/// A command's matches with the configuration file's values (and seed 004's variables)
/// as the defaults of its arguments.
struct Layered {
    matches: ArgMatches,
    /// The file's typed contents, for its declarations.
    declared: Option<ServeConfig>,
    file: Option<PathBuf>,
    origins: BTreeMap<String, Origin>,
}

/// Parses `args` with `command` (which has a `config` argument) once to find the file,
/// then again with the file's values, and seed 004's variables over them, as defaults.
/// File keys that are not arguments of `command` (e.g. `[nats]` for `migrate`) are
/// checked but not used.
fn layered(command: Command, args: Vec<OsString>, cwd: &Path) -> anyhow::Result<Layered> {
    let mut command = command.no_binary_name(true);
    let first = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(|error| anyhow::anyhow!("{}", error.render()))?;
    let file = match first.get_one::<PathBuf>("config").cloned() {
        Some(path) => Some(path),
        None => Some(cwd.join(DEFAULT_FILE)).filter(|path| path.is_file()),
    };

    let mut defaults_set: BTreeMap<String, Origin> = BTreeMap::new();
    let mut declared = None;
    if let Some(path) = &file {
        let (file_config, values) = read_file(path)?;
        for (key, value) in values {
            let Some(arg) = command
                .get_arguments()
                .find(|arg| arg.get_id() == key.as_str())
            else {
                continue;
            };
            let hidden = arg.is_hide_env_values_set();
            command = command.mut_arg(&key, |arg| {
                arg.default_value(value).hide_default_value(hidden)
            });
            defaults_set.insert(key, Origin::File);
        }
        declared = Some(file_config);
    }
    for (id, variable) in SEED_ENV {
        if !command.get_arguments().any(|arg| arg.get_id() == *id) {
            continue;
        }
        let Some(value) = std::env::var(variable)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        command = command.mut_arg(*id, |arg| arg.default_value(value));
        defaults_set.insert((*id).to_owned(), Origin::Env((*variable).to_owned()));
    }

    let matches = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(|error| explain(&command, &error, &defaults_set, file.as_deref()))?;
    let origins = origins(&command, &matches, &defaults_set);
    Ok(Layered {
        matches,
        declared,
        file,
        origins,
    })
}

/// A value from the file or a seed variable that clap refused: say where it came from.
fn explain(
    command: &Command,
    error: &clap::Error,
    origins: &BTreeMap<String, Origin>,
    file: Option<&Path>,
) -> anyhow::Error {
    // The first paragraph: clap's "For more information, try '--help'." does not apply.
    let rendered = error.render().to_string();
    let rendered = rendered
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("error: ");
    let arg = error
        .get(clap::error::ContextKind::InvalidArg)
        .map(|value| value.to_string())
        .and_then(|shown| {
            command.get_arguments().find(|arg| {
                arg.get_long()
                    .is_some_and(|long| shown.starts_with(&format!("--{long}")))
            })
        });
    match arg.and_then(|arg| Some((arg, origins.get(arg.get_id().as_str())?))) {
        Some((arg, Origin::File)) => anyhow::anyhow!(
            "{}: `{}.{}`: {rendered}",
            file.map(|f| f.display().to_string()).unwrap_or_default(),
            section_of(arg.get_id().as_str()).unwrap_or("?"),
            arg.get_id()
        ),
        Some((_, Origin::Env(variable))) => anyhow::anyhow!("{variable}: {rendered}"),
        _ => anyhow::anyhow!("{rendered}"),
    }
}

/// The table an argument belongs to.
fn section_of(id: &str) -> Option<&'static str> {
    SECTIONS.iter().find_map(|(section, augment)| {
        augment(Command::new("section"))
            .get_arguments()
            .any(|arg| arg.get_id() == id)
            .then_some(*section)
    })
}

fn origins(
    command: &Command,
    matches: &ArgMatches,
    defaults_set: &BTreeMap<String, Origin>,
) -> BTreeMap<String, Origin> {
    use clap::parser::ValueSource;
    let mut origins = BTreeMap::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let origin = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => Origin::Flag,
            Some(ValueSource::EnvVariable) => Origin::Env(
                arg.get_env()
                    .map(|env| env.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            Some(ValueSource::DefaultValue) => {
                defaults_set.get(id).cloned().unwrap_or(Origin::Default)
            }
            _ => continue,
        };
        origins.insert(id.to_owned(), origin);
    }
    origins
}

/// Reads and checks a configuration file: the typed configuration (for its declarations)
/// and each setting it gives, as argument id and text for clap.
fn read_file(path: &Path) -> anyhow::Result<(ServeConfig, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    let shown = path.display();
    let yaml = path
        .extension()
        .is_some_and(|ext| ext == "yaml" || ext == "yml");
    let (config, raw): (ServeConfig, toml::Table) = if yaml {
        let config =
            serde_norway::from_str(&text).map_err(|error| anyhow::anyhow!("{shown}: {error}"))?;
        // TOML has no null: an empty YAML value (`listen:`) is a key left out.
        let mut raw: serde_norway::Value =
            serde_norway::from_str(&text).map_err(|error| anyhow::anyhow!("{shown}: {error}"))?;
        drop_nulls(&mut raw);
        let raw =
            serde_norway::from_value(raw).map_err(|error| anyhow::anyhow!("{shown}: {error}"))?;
        (config, raw)
    } else {
        let config = toml::from_str(&text).map_err(|error| anyhow::anyhow!("{shown}: {error}"))?;
        let raw = toml::from_str(&text).map_err(|error| anyhow::anyhow!("{shown}: {error}"))?;
        (config, raw)
    };
    let mut values = Vec::new();
    for (section, table) in raw {
        if !SECTIONS.iter().any(|(name, _)| *name == section) {
            // `schemas`, `retention` and `rules`: checked above, applied by `serve`.
            continue;
        }
        let toml::Value::Table(table) = table else {
            anyhow::bail!("{shown}: `{section}` must be a table");
        };
        for (key, value) in table {
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| anyhow::anyhow!("{shown}: `{section}.{key}`: expected strings"))?
                    .join(","),
                other => anyhow::bail!(
                    "{shown}: `{section}.{key}`: unexpected {}",
                    other.type_str()
                ),
            };
            values.push((key, text));
        }
    }
    Ok((config, values))
}

/// Removes the null values of YAML mappings, at every depth.
fn drop_nulls(value: &mut serde_norway::Value) {
    match value {
        serde_norway::Value::Mapping(map) => {
            map.retain(|_, value| !value.is_null());
            for (_, value) in map.iter_mut() {
                drop_nulls(value);
            }
        }
        serde_norway::Value::Sequence(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `herald config`: the effective configuration as TOML, each value with where it came
/// from, secrets redacted.
pub fn render(loaded: &Loaded) -> anyhow::Result<String> {
    let values = toml::Table::try_from(&loaded.config).context("showing the configuration")?;
    let mut out = String::new();
    let source = match &loaded.file {
        Some(path) => path.display().to_string(),
        None => "none".to_owned(),
    };
    writeln!(
        out,
        "# The effective configuration of `herald serve`: defaults < file < environment < flags.\n\
         # Configuration file: {source}. Secrets are shown as \"{REDACTED}\"."
    )?;
    for (section, augment) in SECTIONS {
        writeln!(out, "\n[{section}]")?;
        let table = values.get(*section).and_then(toml::Value::as_table);
        for arg in augment(Command::new(*section)).get_arguments() {
            let id = arg.get_id().as_str();
            let value = table.and_then(|t| t.get(id));
            let origin = match loaded.origins.get(id) {
                Some(Origin::Default) | None => "default".to_owned(),
                Some(Origin::File) => format!("from {source}"),
                Some(Origin::Env(variable)) => format!("from env {variable}"),
                Some(Origin::Flag) => format!(
                    "from flag --{}",
                    arg.get_long().unwrap_or(arg.get_id().as_str())
                ),
            };
            match value {
                Some(value) => writeln!(out, "{id} = {value}  # {origin}")?,
                None => writeln!(out, "# {id} (unset)")?,
            }
        }
    }
    let config = &loaded.config;
    for schema in &config.schemas {
        writeln!(out, "\n[[schemas]]")?;
        writeln!(out, "name = {}", toml::Value::from(schema.name.as_str()))?;
        writeln!(
            out,
            "subject_pattern = {}",
            toml::Value::from(schema.subject_pattern.as_str())
        )?;
        match toml::Value::try_from(&schema.schema) {
            Ok(value) => writeln!(out, "schema = {value}")?,
            Err(_) => writeln!(out, "# schema (JSON): {}", schema.schema)?,
        }
    }
    for policy in &config.retention {
        writeln!(out, "\n[[retention]]")?;
        let table = toml::Table::try_from(policy).context("showing a retention policy")?;
        for (key, value) in table {
            writeln!(out, "{key} = {value}")?;
        }
    }
    for rule in &config.rules {
        writeln!(out, "\n[[rules]]")?;
        let mut rule = rule.clone();
        redact_secrets_in(&mut rule);
        match toml::Table::try_from(&rule) {
            Ok(table) => {
                for (key, value) in table {
                    writeln!(out, "{key} = {value}")?;
                }
            }
            Err(_) => writeln!(out, "# rule (JSON): {rule}")?,
        }
    }
    Ok(out)
}

/// Replaces the value of every `secret`, `password` or `token` key.
fn redact_secrets_in(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let key = key.to_ascii_lowercase();
                if key.contains("secret") || key.contains("password") || key.contains("token") {
                    *value = serde_json::Value::from(REDACTED);
                } else {
                    redact_secrets_in(value);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_secrets_in),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that read the environment set it too: one at a time.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Runs `body` with exactly `vars` of the settings' variables set (the machine's own
    /// are put back afterwards).
    fn with_env<T>(vars: &[(&str, &str)], body: impl FnOnce() -> T) -> T {
        let _guard = ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let command = ServeArgs::augment_args(Command::new("serve"));
        let names: Vec<OsString> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env().map(OsString::from))
            .chain(SEED_ENV.iter().map(|(_, name)| OsString::from(name)))
            .collect();
        let saved: Vec<(OsString, Option<OsString>)> = names
            .into_iter()
            .map(|name| {
                let value = std::env::var_os(&name);
                std::env::remove_var(&name);
                (name, value)
            })
            .collect();
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        for (name, _) in vars {
            std::env::remove_var(name);
        }
        for (name, value) in saved {
            if let Some(value) = value {
                std::env::set_var(name, value);
            }
        }
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn load_with(
        file: Option<&str>,
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Loaded> {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = file {
            std::fs::write(dir.path().join(DEFAULT_FILE), text).unwrap();
        }
        let args = args.iter().map(OsString::from).collect();
        with_env(vars, || load_from("serve", args, dir.path()))
    }

    fn error_of(file: &str) -> String {
        format!("{:#}", load_with(Some(file), &[], &[]).unwrap_err())
    }

    #[test]
    fn defaults_then_file_then_environment_then_flags() {
        let file = "[server]\nhub_id = \"file-hub\"\n\
                    [limits]\nmax_body_bytes = 2000\nmax_query_bytes = 3000\n";
        let loaded = load_with(
            Some(file),
            &["--max-query-bytes", "3003"],
            &[
                ("HERALD_MAX_BODY_BYTES", "2002"),
                ("HERALD_MAX_QUERY_BYTES", "3002"),
            ],
        )
        .unwrap();
        let config = &loaded.config;
        assert_eq!(config.streams.max_streams, 10_000, "default");
        assert_eq!(config.server.hub_id, "file-hub", "file over default");
        assert_eq!(config.limits.max_body_bytes, 2002, "environment over file");
        assert_eq!(config.limits.max_query_bytes, 3003, "flag over environment");
        assert_eq!(loaded.origins["max_streams"], Origin::Default);
        assert_eq!(loaded.origins["hub_id"], Origin::File);
        assert_eq!(
            loaded.origins["max_body_bytes"],
            Origin::Env("HERALD_MAX_BODY_BYTES".into())
        );
        assert_eq!(loaded.origins["max_query_bytes"], Origin::Flag);
        assert!(loaded.file.is_some());
    }

    #[test]
    fn no_file_is_fine_and_a_named_missing_file_is_an_error() {
        let loaded = load_with(None, &[], &[]).unwrap();
        assert!(loaded.file.is_none());
        assert_eq!(loaded.config.server.port, 9001);
        let error = load_with(None, &["--config", "/nonexistent/herald.toml"], &[]).unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains("/nonexistent/herald.toml"), "{error}");
    }

    #[test]
    fn seed_variables_sit_between_the_file_and_herald_variables() {
        let file = "[nats]\nnats_stream = \"FILE\"\nnats_max_msgs = 5\nnats_max_age_secs = 7\n";
        let loaded = load_with(
            Some(file),
            &[],
            &[
                ("STREAM_NAME", "SEED"),
                ("MAX_MSGS", "50"),
                ("MAX_AGE", "70"),
                ("HERALD_NATS_MAX_AGE_SECS", "700"),
            ],
        )
        .unwrap();
        let nats = &loaded.config.nats;
        assert_eq!(nats.nats_stream, "SEED");
        assert_eq!(nats.nats_max_msgs, 50);
        assert_eq!(nats.nats_max_age_secs, 700);
        assert_eq!(nats.nats_max_bytes, 0);
        assert_eq!(
            loaded.origins["nats_stream"],
            Origin::Env("STREAM_NAME".into())
        );

        let error = load_with(None, &[], &[("MAX_AGE", "soon")]).unwrap_err();
        let error = format!("{error:#}");
        assert!(
            error.starts_with("MAX_AGE: invalid value 'soon'"),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_the_file_and_key() {
        let error = error_of("[limits]\nmax_body_byte = 10\n");
        assert!(error.contains(DEFAULT_FILE), "{error}");
        assert!(error.contains("unknown field `max_body_byte`"), "{error}");
        assert!(error.contains("line 2"), "{error}");
        let error = error_of("[limit]\nmax_body_bytes = 10\n");
        assert!(error.contains("unknown field `limit`"), "{error}");
        let error =
            error_of("[[retention]]\nsubjects = \"hub.>\"\nmax_age = \"1d\"\nmax_agee = 1\n");
        assert!(error.contains("unknown field `max_agee`"), "{error}");
    }

    #[test]
    fn a_wrong_type_is_an_error_naming_the_key_and_the_expected_type() {
        let error = error_of("[limits]\nmax_body_bytes = \"big\"\n");
        assert!(error.contains(DEFAULT_FILE), "{error}");
        assert!(error.contains("max_body_bytes"), "{error}");
        assert!(error.contains("expected usize"), "{error}");
        let error = error_of("[routing]\nwebhook_allow_private = \"yes\"\n");
        assert!(error.contains("expected a boolean"), "{error}");
        // What only clap knows (ranges, choices) is named by its table and key too.
        let error = error_of("[limits]\nmax_json_depth = 1000\n");
        assert!(error.contains("`limits.max_json_depth`"), "{error}");
        assert!(error.contains("1..=100"), "{error}");
        let error = error_of("[log]\nlog_format = \"xml\"\n");
        assert!(error.contains("`log.log_format`"), "{error}");
        let error = error_of("[auth]\nadmin_key = \"short\"\n");
        assert!(error.contains("at least 16 characters"), "{error}");
    }

    #[test]
    fn lists_may_be_arrays_and_yaml_has_the_same_shape() {
        let loaded = load_with(
            Some("[nats]\nnats_stream_subjects = [\"hub.>\", \"other.>\"]\n"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(loaded.config.nats.nats_stream_subjects, "hub.>,other.>");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.yaml");
        std::fs::write(
            &path,
            "server:\n  hub_id: yaml-hub\n  listen:\nretention:\n  - subjects: hub.>\n    MAX_MSGS: 10\n",
        )
        .unwrap();
        let args = vec![OsString::from("--config"), path.clone().into_os_string()];
        let loaded = with_env(&[], || load_from("serve", args, dir.path())).unwrap();
        assert_eq!(loaded.config.server.hub_id, "yaml-hub");
        assert_eq!(
            loaded.config.server.listen, None,
            "an empty value is left out"
        );
        assert_eq!(loaded.config.retention[0].max_events, Some(10));

        std::fs::write(&path, "server:\n  hub_idd: yaml-hub\n").unwrap();
        let args = vec![OsString::from("--config"), path.into_os_string()];
        let error = with_env(&[], || load_from("serve", args, dir.path())).unwrap_err();
        let error = format!("{error:#}");
        assert!(
            error.contains("herald.yaml") && error.contains("hub_idd"),
            "{error}"
        );
    }

    #[test]
    fn retention_policies_take_durations_sizes_and_seed_names() {
        let file = "[[retention]]\nsubjects = \"hub.*.metrics.>\"\nmax_age = \"30d\"\nmax_bytes = \"10GB\"\n\
                    [[retention]]\nsubjects = \"hub.>\"\nMAX_AGE = 3600\nMAX_MSGS = 1000\nMAX_BYTES = 4096\n";
        let loaded = load_with(Some(file), &[], &[]).unwrap();
        assert_eq!(
            loaded.config.retention,
            vec![
                RetentionPolicy {
                    subjects: "hub.*.metrics.>".into(),
                    max_age: Some(Duration::from_secs(30 * 86_400)),
                    max_events: None,
                    max_bytes: Some(10_000_000_000),
                    include_aggregates: false,
                },
                RetentionPolicy {
                    subjects: "hub.>".into(),
                    max_age: Some(Duration::from_secs(3600)),
                    max_events: Some(1000),
                    max_bytes: Some(4096),
                    include_aggregates: false,
                },
            ]
        );
        for (bad, expected) in [
            ("subjects = \"hub..x\"\nmax_events = 1", "subjects"),
            ("subjects = \"hub.>\"", "sets none of"),
            ("subjects = \"hub.>\"\nmax_age = \"soon\"", "max_age"),
            (
                "subjects = \"hub.>\"\nmax_bytes = \"10 parsecs\"",
                "max_bytes",
            ),
            ("subjects = \"hub.>\"\nmax_events = 0", "keep nothing"),
        ] {
            let error = error_of(&format!("[[retention]]\n{bad}\n"));
            assert!(error.contains(expected), "{bad}: {error}");
        }
        assert_eq!(parse_bytes("512 MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("1kB"), Some(1000));
        assert_eq!(parse_bytes("99999999999999999999GB"), None);
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_urls("postgres://herald:pa@ss@db:5432/herald?sslmode=require"),
            "postgres://herald:***@db:5432/herald?sslmode=require"
        );
        assert_eq!(
            redact_urls("postgres://herald@db/x"),
            "postgres://herald@db/x"
        );
        assert_eq!(
            redact_urls("nats://u:p@a:4222,nats://token@b,tls://c:4222"),
            "nats://u:***@a:4222,nats://***@b,tls://c:4222"
        );
        assert_eq!(redact_urls("./data/herald.db"), "./data/herald.db");

        let file = "[auth]\nadmin_key = \"admin-secret-0123456789\"\n\
                    [store]\ndata = \"postgres://herald:pgsecret@localhost/herald\"\n\
                    [nats]\nnats_url = \"nats://user:natssecret@localhost:4222\"\nnats_password = \"pwsecret\"\n\
                    [[rules]]\nid = \"hook\"\nsubject_pattern = \"hub.>\"\n\
                    action = { type = \"webhook\", url = \"http://example.com\", secret = \"hooksecret\" }\n";
        let loaded = load_with(Some(file), &[], &[("HERALD_NATS_TOKEN", "tokensecret")]).unwrap();
        let shown = render(&loaded).unwrap();
        for secret in [
            "admin-secret",
            "pgsecret",
            "natssecret",
            "pwsecret",
            "tokensecret",
            "hooksecret",
        ] {
            assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
        }
        assert!(shown.contains("admin_key = \"<redacted>\""), "{shown}");
        assert!(
            shown.contains("postgres://herald:***@localhost/herald"),
            "{shown}"
        );
        assert!(
            shown.contains("nats_token = \"<redacted>\"  # from env HERALD_NATS_TOKEN"),
            "{shown}"
        );
        assert!(format!("{:?}", loaded.config).contains("<secret>"));
        assert!(!format!("{:?}", loaded.config).contains("admin-secret"));
    }

    #[test]
    fn render_is_toml_that_names_every_setting() {
        let loaded = load_with(
            Some("[server]\nhub_id = \"shown\"\n"),
            &["--port", "9009"],
            &[],
        )
        .unwrap();
        let shown = render(&loaded).unwrap();
        let parsed: toml::Table = toml::from_str(&shown).expect("herald config prints TOML");
        assert_eq!(parsed["server"]["hub_id"].as_str(), Some("shown"));
        assert!(shown.contains("port = 9009  # from flag --port"), "{shown}");
        let command = ServeArgs::augment_args(Command::new("serve"));
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "config" || id == "help" {
                continue;
            }
            assert!(shown.contains(&format!("{id} ")), "{id} missing:\n{shown}");
        }
    }

    #[test]
    fn the_readme_example_is_a_valid_file() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```toml\n# herald.toml")
            .expect("the README's example");
        let example = &readme[start + "```toml\n".len()..];
        let example = &example[..example.find("```").expect("the example's end")];
        let loaded = load_with(Some(example), &[], &[]).unwrap();
        assert_eq!(loaded.config.server.hub_id, "hub-a");
        assert_eq!(loaded.config.schemas.len(), 1);
        assert_eq!(loaded.config.rules.len(), 1);
        assert_eq!(loaded.config.retention[0].max_bytes, Some(10_000_000_000));
    }

    #[test]
    fn every_file_key_is_its_flag_in_snake_case_within_one_section() {
        let command = ServeArgs::augment_args(Command::new("serve"));
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "config" || id == "help" {
                continue;
            }
            let long = arg.get_long().unwrap_or_default();
            assert_eq!(id, long.replace('-', "_"), "the key of --{long}");
            assert!(section_of(id).is_some(), "{id} is in no section");
            assert!(
                arg.get_help_heading().is_some(),
                "--{long} has no help heading"
            );
        }
        // The sections' defaults are the flags' defaults.
        let defaults = LimitSettings::default();
        assert_eq!(defaults.max_body_bytes, 1024 * 1024);
        assert_eq!(NatsSettings::default().nats_stream, "HERALD");
    }
}
