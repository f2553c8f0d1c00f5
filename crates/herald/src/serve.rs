//! `herald serve`: settings from flags and environment, start-up, and the shutdown order.
//!
//! Shutdown (SIGTERM or Ctrl-C): stop accepting connections and let in-flight requests
//! finish → close streams with 1001 going away → commit what is queued → close the store.
//! With TLS, SIGHUP reloads the certificate, key and client CA.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use herald_hub::{Hub, HubConfig};
use herald_server::{AppState, Limits};
use herald_store::{EmbeddedOptions, PostgresOptions, Store, StoreConfig};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Settings of `herald serve`. Every flag has an environment variable; the seed
/// documents' names (`PORT`, `DATABASE_URL`, `HUB_ID`, `NATS_URL`) are kept as they are,
/// everything else is `HERALD_*`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:9001 (port 0 picks a free one). Overrides --port.
    #[arg(long, env = "HERALD_LISTEN")]
    listen: Option<SocketAddr>,

    /// Port to listen on, on all interfaces.
    #[arg(long, env = "PORT", default_value_t = 9001)]
    port: u16,

    /// Where events are stored: a file path or sqlite://PATH.
    #[arg(
        long = "data",
        alias = "database-url",
        env = "DATABASE_URL",
        default_value = "./data/herald.db"
    )]
    data: String,

    #[command(flatten)]
    postgres: PostgresArgs,

    #[command(flatten)]
    tls: TlsArgs,

    /// This hub's id, the `origin.hub_id` of the events published here.
    #[arg(long, env = "HUB_ID", default_value = "local-hub")]
    hub_id: String,

    #[command(flatten)]
    nats: NatsArgs,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    max_body_bytes: usize,

    /// Largest body of a batch publish (`POST /api/events:batch`), in bytes.
    #[arg(long, env = "HERALD_MAX_BATCH_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_batch_body_bytes: usize,

    /// Deepest nesting of arrays and objects accepted in a payload, at most 100 (so that
    /// the event carrying it stays within what common JSON parsers read back).
    #[arg(long, env = "HERALD_MAX_JSON_DEPTH", default_value_t = herald_core::json::MAX_JSON_DEPTH as u64,
          value_parser = clap::value_parser!(u64).range(1..=herald_core::json::MAX_JSON_DEPTH as u64))]
    max_json_depth: u64,

    /// Longest query string accepted, in bytes.
    #[arg(long, env = "HERALD_MAX_QUERY_BYTES", default_value_t = 8 * 1024)]
    max_query_bytes: usize,

    /// Most WebSocket streams open at once.
    #[arg(long, env = "HERALD_MAX_STREAMS", default_value_t = 10_000)]
    max_streams: usize,

    /// Most TCP connections served at once.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,

    /// Connections accepted above --max-connections only to answer /health and refuse
    /// the rest with 503 too_many_connections; more wait in the listen backlog.
    #[arg(long, env = "HERALD_RESERVE_CONNECTIONS", default_value_t = 32)]
    reserve_connections: usize,

    /// Seconds a client may take to send a request's headers, counted from when the
    /// server waits for them (an idle keep-alive connection is closed after as long).
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    header_read_timeout_secs: u64,

    /// Most publish requests being read or committed at once; more wait their turn.
    #[arg(long, env = "HERALD_MAX_INFLIGHT_PUBLISHES", default_value_t = 512)]
    max_inflight_publishes: usize,

    /// Seconds a request (body included) may take before it is answered 408.
    #[arg(long, env = "HERALD_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    request_timeout_secs: u64,

    /// Seconds between pings on an idle stream.
    #[arg(long, env = "HERALD_WS_PING_INTERVAL_SECS", default_value_t = 30)]
    ws_ping_interval_secs: u64,

    /// Seconds a write to a stream may block before the client is disconnected.
    #[arg(long, env = "HERALD_WS_SEND_TIMEOUT_SECS", default_value_t = 30)]
    ws_send_timeout_secs: u64,

    /// Events a live stream may have queued before it switches to reading the store.
    #[arg(long, env = "HERALD_SUBSCRIBER_QUEUE", default_value_t = 1024)]
    subscriber_queue: usize,

    /// `off`: requests without an API key act with every right (a laptop, the seeds'
    /// examples); `required`: every route but the health checks needs a key.
    #[arg(long, env = "HERALD_AUTH", value_enum, default_value = "off")]
    auth: AuthArg,

    /// A secret that acts as an admin key (only its hash is kept). Or create keys with
    /// `herald keys create --admin`.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<Secret>,

    /// Most durable consumers the hub keeps (PUT /api/consumers/{name} past it is 409).
    #[arg(long, env = "HERALD_MAX_CONSUMERS", default_value_t = 1000)]
    max_consumers: usize,

    /// Most event schemas the hub keeps (PUT /api/schemas/{name} past it is 409).
    #[arg(long, env = "HERALD_MAX_SCHEMAS", default_value_t = 1000)]
    max_schemas: usize,

    /// Largest event schema document, in bytes of compact JSON (larger is 422).
    #[arg(long, env = "HERALD_MAX_SCHEMA_BYTES", default_value_t = 65536)]
    max_schema_bytes: usize,

    /// Most events committed in one transaction.
    #[arg(long, env = "HERALD_MAX_BATCH_EVENTS", default_value_t = 2048)]
    max_batch_events: usize,

    /// Seconds to wait for requests and streams to finish at shutdown.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    shutdown_timeout_secs: u64,

    /// A routing rules file: a JSON array of `POST /api/rules` bodies, each with an `id`.
    /// They are stored at start (replacing stored rules with the same id) and show in
    /// GET /api/rules; rules added over the API are kept.
    #[arg(long = "rules", env = "HERALD_RULES_FILE")]
    rules_file: Option<std::path::PathBuf>,

    /// Let webhook rules reach loopback, private (RFC 1918, fc00::/7), link-local,
    /// carrier-grade NAT and cloud metadata addresses, which are refused by default.
    #[arg(long, env = "HERALD_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,

    /// Log format: text or json. The level comes from RUST_LOG (default info).
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Settings of the NATS link (used when `NATS_URL` is set).
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS server(s), comma-separated (nats://host:4222, tls://…; user:password@ or
    /// token@ allowed). Unset: Herald runs standalone.
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,

    /// Token to authenticate to NATS with.
    #[arg(long, env = "HERALD_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,

    /// User name to authenticate to NATS with (with --nats-password).
    #[arg(long, env = "HERALD_NATS_USER")]
    nats_user: Option<String>,

    #[arg(long, env = "HERALD_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,

    /// A NATS credentials (.creds) file.
    #[arg(long, env = "HERALD_NATS_CREDS")]
    nats_creds: Option<std::path::PathBuf>,

    /// CA certificate (PEM) to trust for TLS to NATS.
    #[arg(long, env = "HERALD_NATS_TLS_CA")]
    nats_tls_ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for mutual TLS (with --nats-tls-key).
    #[arg(long, env = "HERALD_NATS_TLS_CERT", requires = "nats_tls_key")]
    nats_tls_cert: Option<std::path::PathBuf>,

    #[arg(long, env = "HERALD_NATS_TLS_KEY", requires = "nats_tls_cert")]
    nats_tls_key: Option<std::path::PathBuf>,

    /// Refuse to talk to NATS without TLS.
    #[arg(long, env = "HERALD_NATS_REQUIRE_TLS")]
    nats_require_tls: bool,

    /// The JetStream stream events are relayed to (created or updated at start). Also
    /// read from seed 004's `STREAM_NAME`. Default HERALD.
    #[arg(long, env = "HERALD_NATS_STREAM")]
    nats_stream: Option<String>,

    /// The stream's subjects, comma-separated.
    #[arg(long, env = "HERALD_NATS_STREAM_SUBJECTS", default_value = "hub.>")]
    nats_stream_subjects: String,

    /// Most messages the stream keeps (0 = no limit; also seed 004's `MAX_MSGS`).
    #[arg(long, env = "HERALD_NATS_MAX_MSGS")]
    nats_max_msgs: Option<i64>,

    /// Most bytes the stream keeps (0 = no limit; also seed 004's `MAX_BYTES`).
    #[arg(long, env = "HERALD_NATS_MAX_BYTES")]
    nats_max_bytes: Option<i64>,

    /// Seconds the stream keeps a message (0 = no limit; also seed 004's `MAX_AGE`).
    #[arg(long, env = "HERALD_NATS_MAX_AGE_SECS")]
    nats_max_age_secs: Option<u64>,

    /// Seconds in which JetStream drops a re-sent message (same Nats-Msg-Id).
    #[arg(long, env = "HERALD_NATS_DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    nats_duplicate_window_secs: u64,

    /// Relay every event committed on this hub to the stream.
    #[arg(long, env = "HERALD_NATS_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    nats_relay: bool,

    /// Subject patterns to ingest from the stream, comma-separated; empty for none. Each
    /// must lie within the stream's subjects.
    #[arg(long, env = "HERALD_NATS_BRIDGE", default_value = "hub.>")]
    nats_bridge: String,

    /// Largest NATS message body the bridge ingests, in bytes; a larger message becomes a
    /// dead letter (GET /api/bridge/dead-letters).
    #[arg(long, env = "HERALD_NATS_BRIDGE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    nats_bridge_max_body_bytes: usize,

    /// Most bridge dead letters kept; past it the oldest are dropped (and counted).
    #[arg(long, env = "HERALD_NATS_DEAD_LETTERS_MAX", default_value_t = 10_000)]
    nats_dead_letters_max: usize,

    /// Seconds between presence announcements on hub.global.presence.announced (0 = off).
    #[arg(long, env = "HERALD_PRESENCE_INTERVAL_SECS", default_value_t = 10)]
    presence_interval_secs: u64,

    /// This hub's public URL, in presence announcements.
    #[arg(long, env = "HERALD_PUBLIC_URL")]
    public_url: Option<String>,
}

impl NatsArgs {
    /// The hub's NATS settings; `None` without `NATS_URL`.
    pub fn config(&self) -> anyhow::Result<Option<herald_hub::NatsConfig>> {
        let Some(urls) = self
            .nats_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        let patterns = |text: &str, what: &str| -> anyhow::Result<Vec<herald_core::Pattern>> {
            text.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    herald_core::Pattern::parse(p)
                        .map_err(|error| anyhow::anyhow!("{what} `{p}`: {error}"))
                })
                .collect()
        };
        let mut config = herald_hub::NatsConfig::new(
            urls.split(',')
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
        );
        config.token = self.nats_token.clone();
        config.user = self.nats_user.clone();
        config.password = self.nats_password.clone();
        config.credentials_file = self.nats_creds.clone();
        config.tls_ca = self.nats_tls_ca.clone();
        config.tls_client = self.nats_tls_cert.clone().zip(self.nats_tls_key.clone());
        config.require_tls = self.nats_require_tls;
        let stream_name = self
            .nats_stream
            .clone()
            .or_else(|| seed_env("STREAM_NAME"))
            .unwrap_or_else(|| "HERALD".into());
        if stream_name.is_empty()
            || stream_name.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace())
        {
            anyhow::bail!("--nats-stream `{stream_name}` is not a valid stream name");
        }
        config.stream.name = stream_name;
        config.stream.subjects = patterns(&self.nats_stream_subjects, "--nats-stream-subjects")?;
        if config.stream.subjects.is_empty() {
            anyhow::bail!("--nats-stream-subjects is empty");
        }
        config.stream.max_msgs = seed_number(self.nats_max_msgs, "MAX_MSGS")?;
        config.stream.max_bytes = seed_number(self.nats_max_bytes, "MAX_BYTES")?;
        config.stream.max_age =
            Duration::from_secs(seed_number(self.nats_max_age_secs, "MAX_AGE")?);
        config.stream.duplicate_window =
            Duration::from_secs(self.nats_duplicate_window_secs.max(1));
        config.relay = self.nats_relay;
        config.bridge = patterns(&self.nats_bridge, "--nats-bridge")?;
        for pattern in &config.bridge {
            if !config.stream.subjects.iter().any(|s| pattern.is_within(s)) {
                anyhow::bail!(
                    "--nats-bridge `{pattern}` is not within the stream's subjects ({}): the bridge reads from the stream",
                    self.nats_stream_subjects
                );
            }
        }
        config.bridge_max_body_bytes = self.nats_bridge_max_body_bytes;
        if self.nats_dead_letters_max == 0 {
            anyhow::bail!("--nats-dead-letters-max must be at least 1");
        }
        config.dead_letters_max = self.nats_dead_letters_max;
        config.presence_interval = (self.presence_interval_secs > 0)
            .then(|| Duration::from_secs(self.presence_interval_secs));
        config.public_url = self.public_url.clone();
        Ok(Some(config))
    }
}

/// A setting under seed 004's environment name (`STREAM_NAME`, `MAX_MSGS`, …), used
/// when the `HERALD_NATS_*` one is not given.
fn seed_env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A number from its flag, else from seed 004's environment name, else 0 (no limit).
fn seed_number<T: std::str::FromStr + Default>(flag: Option<T>, name: &str) -> anyhow::Result<T> {
    match flag {
        Some(value) => Ok(value),
        None => match seed_env(name) {
            Some(text) => text
                .parse()
                .map_err(|_| anyhow::anyhow!("{name}={text:?} is not a number")),
            None => Ok(T::default()),
        },
    }
}

/// HTTPS and WSS on the listener. Without them, plain HTTP.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Certificate chain (PEM, leaf first) to serve HTTPS and WSS with (with --tls-key).
    /// Read again, with the key and client CA, on SIGHUP.
    #[arg(
        long,
        env = "HERALD_TLS_CERT",
        value_name = "PEM_FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(
        long,
        env = "HERALD_TLS_KEY",
        value_name = "PEM_FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,

    /// CA certificates (PEM): require client certificates signed by one of them.
    #[arg(
        long,
        env = "HERALD_TLS_CLIENT_CA",
        value_name = "PEM_FILE",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The listener's TLS settings, read and checked; `None` for plain HTTP.
    pub fn load(&self) -> anyhow::Result<Option<std::sync::Arc<herald_server::tls::Tls>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            // clap requires both or neither.
            return Ok(None);
        };
        let files = herald_server::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
        };
        Ok(Some(std::sync::Arc::new(herald_server::tls::Tls::load(
            files,
        )?)))
    }
}

/// Settings of the PostgreSQL store (used when `DATABASE_URL` is `postgres://…`).
#[derive(Debug, Args)]
pub struct PostgresArgs {
    /// Connections kept open to PostgreSQL.
    #[arg(long, env = "HERALD_PG_POOL_SIZE", default_value_t = 8)]
    pg_pool_size: usize,

    /// Seconds one PostgreSQL statement may run; a store call fails (503) after this plus
    /// the connect timeout.
    #[arg(long, env = "HERALD_PG_STATEMENT_TIMEOUT_SECS", default_value_t = 5)]
    pg_statement_timeout_secs: u64,

    /// Seconds to open one PostgreSQL connection.
    #[arg(long, env = "HERALD_PG_CONNECT_TIMEOUT_SECS", default_value_t = 3)]
    pg_connect_timeout_secs: u64,

    /// Start even if PostgreSQL runs with fsync=off or synchronous_commit=off
    /// (acknowledged events can then be lost in a crash).
    #[arg(long, env = "HERALD_ALLOW_UNSAFE_DURABILITY")]
    allow_unsafe_durability: bool,
}

impl PostgresArgs {
    pub fn options(&self) -> PostgresOptions {
        PostgresOptions {
            pool_size: self.pg_pool_size.max(1),
            statement_timeout: Duration::from_secs(self.pg_statement_timeout_secs.max(1)),
            connect_timeout: Duration::from_secs(self.pg_connect_timeout_secs.max(1)),
            allow_unsafe_durability: self.allow_unsafe_durability,
        }
    }
}

/// Arguments of `herald migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The store to migrate: a file path, sqlite://PATH or postgres://…
    #[arg(
        long = "data",
        alias = "database-url",
        env = "DATABASE_URL",
        default_value = "./data/herald.db"
    )]
    data: String,

    #[command(flatten)]
    postgres: PostgresArgs,
}

/// Whether requests need an API key (`HERALD_AUTH`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuthArg {
    Off,
    Required,
}

/// A secret from the command line or environment: never shown by `Debug`.
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

/// `herald keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Create an API key directly in the store and print it as JSON; the secret is shown
    /// this once. On the embedded store, run it while the hub is stopped; on PostgreSQL,
    /// any time (running instances pick the key up within 2 s).
    Create {
        /// An admin key: manages tenants and keys. (Tenant keys: `POST /api/keys`.)
        #[arg(long, required = true)]
        admin: bool,
        /// What the key is for.
        #[arg(long)]
        description: Option<String>,
        /// The store: a file path, sqlite://PATH or postgres://…
        #[arg(
            long = "data",
            alias = "database-url",
            env = "DATABASE_URL",
            default_value = "./data/herald.db"
        )]
        data: String,
        #[command(flatten)]
        postgres: PostgresArgs,
    },
}

/// `herald keys create --admin`.
pub async fn keys(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let _log = init_logging("text");
    let KeysCommand::Create {
        admin: _,
        description,
        data,
        postgres,
    } = args.command;
    let store_config = StoreConfig::parse(&data).map_err(anyhow::Error::msg)?;
    let store = store_config
        .open_with(EmbeddedOptions::default(), postgres.options())
        .await
        .with_context(|| format!("opening the store at {}", store_config.redacted()))?;
    let made = herald_hub::access::create_admin_key(&store, description)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the key: {e}"))?;
    store.close().await?;
    println!(
        "{}",
        serde_json::json!({"id": made.info.id, "admin": true, "key": made.secret})
    );
    Ok(ExitCode::SUCCESS)
}

/// `herald migrate`: applies the schema migrations this build knows, then exits. (`serve`
/// applies them too at start; this lets an operator do it ahead of a rolling upgrade.)
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let _log = init_logging("text");
    let store_config = StoreConfig::parse(&args.data).map_err(anyhow::Error::msg)?;
    let store = store_config
        .open_with(EmbeddedOptions::default(), args.postgres.options())
        .await
        .with_context(|| format!("opening the store at {}", store_config.redacted()))?;
    let head = store.head().await?;
    store.close().await?;
    println!(
        "{} is at the current schema; {head} events",
        store_config.redacted()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let _log = init_logging(&args.log_format);
    if args.ws_ping_interval_secs == 0
        || args.ws_send_timeout_secs == 0
        || args.request_timeout_secs == 0
        || args.header_read_timeout_secs == 0
    {
        anyhow::bail!(
            "--ws-ping-interval-secs, --ws-send-timeout-secs, --request-timeout-secs and \
             --header-read-timeout-secs must be at least 1"
        );
    }
    herald_core::json::set_max_depth(args.max_json_depth as usize);
    let store_config = StoreConfig::parse(&args.data).map_err(anyhow::Error::msg)?;
    let nats = args.nats.config()?;
    let tls = args.tls.load()?;
    let rules = match &args.rules_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the rules file {}", path.display()))?;
            let rules = herald_server::http::rules::parse_rules_file(&text)
                .map_err(|error| anyhow::anyhow!("rules file {}: {error}", path.display()))?;
            Some(rules)
        }
        None => None,
    };
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], args.port)));

    let store = store_config
        .open_with(EmbeddedOptions::default(), args.postgres.options())
        .await
        .with_context(|| format!("opening the store at {}", store_config.redacted()))?;
    let mut hub_config = HubConfig::new(args.hub_id.clone());
    hub_config.subscriber_queue = args.subscriber_queue.max(1);
    hub_config.max_batch_events = args.max_batch_events.max(1);
    if args.max_consumers == 0 {
        anyhow::bail!("--max-consumers must be at least 1");
    }
    hub_config.consumers.max_consumers = args.max_consumers;
    if args.max_schemas == 0 || args.max_schema_bytes == 0 {
        anyhow::bail!("--max-schemas and --max-schema-bytes must be at least 1");
    }
    hub_config.schemas = herald_hub::schemas::SchemaLimits {
        max_schemas: args.max_schemas,
        max_schema_bytes: args.max_schema_bytes,
    };
    hub_config.access = herald_hub::access::AccessConfig {
        mode: match args.auth {
            AuthArg::Off => herald_hub::access::AuthMode::Off,
            AuthArg::Required => herald_hub::access::AuthMode::Required,
        },
        admin_key_hash: args
            .admin_key
            .as_ref()
            .map(|secret| herald_hub::access::secret::hash(&secret.0)),
    };
    hub_config.webhook_allow_private = args.webhook_allow_private;
    let nats_shown = nats.as_ref().map(|n| n.redacted_servers());
    hub_config.nats = nats;
    let hub = Hub::open(hub_config, store).await?;
    if matches!(args.auth, AuthArg::Required) && args.admin_key.is_none() {
        let admin = herald_hub::access::Caller::trusted();
        let no_admin_key = hub
            .as_caller(&admin)
            .keys()
            .map(|keys| !keys.iter().any(|k| k.admin))
            .unwrap_or(true);
        if no_admin_key {
            tracing::warn!(
                "HERALD_AUTH=required, but there is no admin key: set HERALD_ADMIN_KEY, or \
                 stop the hub and run `herald keys create --admin`."
            );
        }
    }
    if let Some(rules) = rules {
        let count = rules.len();
        if let Err(error) = hub.load_rules(rules).await {
            hub.shutdown().await;
            anyhow::bail!("loading the routing rules file: {error}");
        }
        tracing::info!(count, "Routing rules loaded from the rules file.");
    }

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let bound = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        max_batch_body_bytes: args.max_batch_body_bytes,
        max_query_bytes: args.max_query_bytes,
        max_streams: args.max_streams,
        max_connections: args.max_connections,
        reserve_connections: args.reserve_connections,
        header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
        max_inflight_publishes: args.max_inflight_publishes,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        ws_ping_interval: Duration::from_secs(args.ws_ping_interval_secs),
        ws_send_timeout: Duration::from_secs(args.ws_send_timeout_secs),
    };
    let state = AppState::new(hub.clone(), limits, shutdown.clone());
    let grace = Duration::from_secs(args.shutdown_timeout_secs);

    // Before the listening line: a SIGHUP sent once it is out must not end the process.
    #[cfg(unix)]
    if let Some(tls) = &tls {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP (TLS reloads)")?;
        tokio::spawn(reload_tls_on_hangup(hangup, tls.clone()));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        %bound,
        tls = tls.is_some(),
        client_certificates = tls.as_ref().is_some_and(|t| t.requires_client_certificates()),
        hub_id = %args.hub_id,
        store = %store_config.redacted(),
        nats = nats_shown.as_deref().unwrap_or("off"),
        "Herald is listening."
    );
    // The one line on stdout: scripts and tests read the bound address from it.
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("herald listening on {scheme}://{bound}\n").as_bytes())
        .await?;
    stdout.flush().await?;

    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let server = tokio::spawn(herald_server::serve_with_tls(listener, state, grace, tls));
    shutdown.cancelled().await;
    tracing::info!("Shutting down: no new connections; finishing requests and streams.");
    match tokio::time::timeout(grace + Duration::from_secs(1), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(%error, "Server error."),
        Ok(Err(error)) => tracing::error!(%error, "Server task failed."),
        Err(_) => tracing::warn!("Requests still running after the grace period; closing anyway."),
    }
    hub.shutdown().await;
    tracing::info!("Herald stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Reloads the TLS files on every SIGHUP; a failed reload keeps the settings in force.
#[cfg(unix)]
async fn reload_tls_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    tls: std::sync::Arc<herald_server::tls::Tls>,
) {
    while hangup.recv().await.is_some() {
        let reloading = tls.clone();
        match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(Ok(())) => tracing::info!("TLS settings reloaded; new connections use them."),
            Ok(Err(error)) => {
                tracing::error!(%error, "TLS reload failed; keeping the previous settings.")
            }
            Err(error) => {
                tracing::error!(%error, "TLS reload failed; keeping the previous settings.")
            }
        }
    }
}

async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    token.cancel();
}

/// Lines the log may hold while stderr is not being read; past that, lines are dropped
/// and counted (`herald_log_lines_dropped_total`) instead of blocking the hub.
const LOG_BUFFER_LINES: usize = 16_384;

/// Logs go through a bounded, lossy channel to one writer thread: a full or unread stderr
/// pipe can only lose log lines, never stall the workers that serve requests.
fn init_logging(format: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .thread_name("herald-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    std::thread::Builder::new()
        .name("herald-log-count".into())
        .spawn(move || {
            // Looked up each time: the recorder is installed after logging starts.
            loop {
                metrics::counter!("herald_log_lines_dropped_total")
                    .absolute(dropped.dropped_lines() as u64);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .expect("spawning a thread");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}
