//! `herald serve`: start-up from the effective configuration (`config.rs`: defaults <
//! file < environment < flags), and the shutdown order.
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

use crate::config::{AuthMode, NatsSettings, ServeConfig, StoreSettings, TlsSettings};

impl NatsSettings {
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
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            anyhow::bail!("--nats-tls-cert and --nats-tls-key go together");
        }
        config.token = self.nats_token.as_ref().map(|token| token.0.clone());
        config.user = self.nats_user.clone();
        config.password = self
            .nats_password
            .as_ref()
            .map(|password| password.0.clone());
        config.credentials_file = self.nats_creds.clone();
        config.tls_ca = self.nats_tls_ca.clone();
        config.tls_client = self.nats_tls_cert.clone().zip(self.nats_tls_key.clone());
        config.require_tls = self.nats_require_tls;
        let stream_name = self.nats_stream.trim().to_owned();
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
        config.stream.max_msgs = self.nats_max_msgs;
        config.stream.max_bytes = self.nats_max_bytes;
        config.stream.max_age = Duration::from_secs(self.nats_max_age_secs);
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

impl TlsSettings {
    /// The listener's TLS settings, read and checked; `None` for plain HTTP.
    pub fn load(&self) -> anyhow::Result<Option<std::sync::Arc<herald_server::tls::Tls>>> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if self.tls_client_ca.is_none() => return Ok(None),
            (None, None) => anyhow::bail!("--tls-client-ca needs --tls-cert and --tls-key"),
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
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

impl StoreSettings {
    pub fn options(&self) -> PostgresOptions {
        PostgresOptions {
            pool_size: self.pg_pool_size.max(1),
            statement_timeout: Duration::from_secs(self.pg_statement_timeout_secs.max(1)),
            connect_timeout: Duration::from_secs(self.pg_connect_timeout_secs.max(1)),
            allow_unsafe_durability: self.allow_unsafe_durability,
            query_scan_budget: self.scan_budget(),
        }
    }

    pub fn embedded_options(&self) -> EmbeddedOptions {
        EmbeddedOptions {
            query_scan_budget: self.scan_budget(),
            ..EmbeddedOptions::default()
        }
    }

    fn scan_budget(&self) -> usize {
        usize::try_from(self.query_scan_budget).unwrap_or(usize::MAX)
    }
}

/// Arguments of `herald migrate`: the store to migrate, as `herald serve` would open it.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Configuration file whose `[store]` table to use (default: ./herald.toml when it
    /// exists).
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    #[command(flatten)]
    store: StoreSettings,
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
        /// Configuration file whose `[store]` table to use (default: ./herald.toml when
        /// it exists).
        #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        #[command(flatten)]
        store: StoreSettings,
    },
    #[command(flatten)]
    Http(crate::admin::KeysHttpCommand),
}

impl KeysArgs {
    /// The command when it goes through a running hub; else the arguments back.
    pub fn into_http(self) -> Result<crate::admin::KeysHttpCommand, KeysArgs> {
        match self.command {
            KeysCommand::Http(command) => Ok(command),
            command => Err(KeysArgs { command }),
        }
    }
}

/// `herald keys create --admin`, on `store` (the `--data` and `--pg-*` flags layered over
/// the configuration file by `config::load_store`).
pub async fn keys(args: KeysArgs, store: StoreSettings) -> anyhow::Result<ExitCode> {
    let (_log, _) = init_logging("text", None);
    let KeysCommand::Create { description, .. } = args.command else {
        anyhow::bail!("this keys command goes through a running hub");
    };
    let store_config = StoreConfig::parse(&store.data).map_err(anyhow::Error::msg)?;
    let store = store_config
        .open_with(store.embedded_options(), store.options())
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
/// `store`: the `--data` and `--pg-*` flags layered over the configuration file by
/// `config::load_store`.
pub async fn migrate(store: StoreSettings) -> anyhow::Result<ExitCode> {
    let (_log, _) = init_logging("text", None);
    let store_config = StoreConfig::parse(&store.data).map_err(anyhow::Error::msg)?;
    let store = store_config
        .open_with(store.embedded_options(), store.options())
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

pub async fn run(config: ServeConfig) -> anyhow::Result<ExitCode> {
    let (provider, otel_error) = match crate::otel::provider(&config.tracing) {
        Ok(provider) => (provider, None),
        Err(error) => (None, Some(error)),
    };
    let (_log, exporter) = init_logging(&config.log.log_format, provider);
    if let Some(error) = otel_error {
        return Err(error);
    }
    if exporter.is_some() {
        tracing::info!(
            service = %config.tracing.otel_service_name,
            "Tracing: exporting spans over OTLP/HTTP ({}).",
            config.tracing.otel_exporter_otlp_protocol
        );
    }
    let ServeConfig {
        server,
        store: store_settings,
        limits,
        streams,
        auth,
        tls,
        nats,
        routing,
        log: _,
        tracing: _,
        schemas,
        retention,
        rules: declared_rules,
    } = config;
    if streams.ws_ping_interval_secs == 0
        || streams.ws_send_timeout_secs == 0
        || limits.request_timeout_secs == 0
        || limits.header_read_timeout_secs == 0
    {
        anyhow::bail!(
            "--ws-ping-interval-secs, --ws-send-timeout-secs, --request-timeout-secs and \
             --header-read-timeout-secs must be at least 1"
        );
    }
    herald_core::json::set_max_depth(limits.max_json_depth as usize);
    let store_config = StoreConfig::parse(&store_settings.data).map_err(anyhow::Error::msg)?;
    let nats = nats.config()?;
    let tls = tls.load()?;
    let mut rules = match &routing.rules_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the rules file {}", path.display()))?;
            herald_server::http::rules::parse_rules_file(&text)
                .map_err(|error| anyhow::anyhow!("rules file {}: {error}", path.display()))?
        }
        None => Vec::new(),
    };
    if !declared_rules.is_empty() {
        let text = serde_json::to_string(&declared_rules)?;
        rules.extend(
            herald_server::http::rules::parse_rules_file(&text)
                .map_err(|error| anyhow::anyhow!("[[rules]] of the configuration file: {error}"))?,
        );
    }
    let listen = server
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], server.port)));

    let store = store_config
        .open_with(store_settings.embedded_options(), store_settings.options())
        .await
        .with_context(|| format!("opening the store at {}", store_config.redacted()))?;
    let mut hub_config = HubConfig::new(server.hub_id.clone());
    // Policies declared in the configuration replace the stored ones at start; without
    // any, the hub keeps what was set over the API.
    if !retention.is_empty() {
        tracing::info!(
            count = retention.len(),
            "Retention policies from the configuration."
        );
        hub_config.retention = Some(
            retention
                .iter()
                .map(|policy| herald_hub::retention::PolicySpec {
                    subjects: policy.subjects.clone(),
                    max_age: policy
                        .max_age
                        .map(|age| herald_hub::retention::AgeSpec::Seconds(age.as_secs().max(1))),
                    max_events: policy.max_events,
                    max_bytes: policy.max_bytes,
                    include_aggregates: policy.include_aggregates,
                })
                .collect(),
        );
    }
    hub_config.subscriber_queue = streams.subscriber_queue.max(1);
    hub_config.max_batch_events = limits.max_batch_events.max(1);
    if limits.max_consumers == 0 {
        anyhow::bail!("--max-consumers must be at least 1");
    }
    hub_config.consumers.max_consumers = limits.max_consumers;
    if limits.max_schemas == 0 || limits.max_schema_bytes == 0 {
        anyhow::bail!("--max-schemas and --max-schema-bytes must be at least 1");
    }
    hub_config.schemas = herald_hub::schemas::SchemaLimits {
        max_schemas: limits.max_schemas,
        max_schema_bytes: limits.max_schema_bytes,
    };
    hub_config.access = herald_hub::access::AccessConfig {
        mode: match auth.auth {
            AuthMode::Off => herald_hub::access::AuthMode::Off,
            AuthMode::Required => herald_hub::access::AuthMode::Required,
        },
        admin_key_hash: auth
            .admin_key
            .as_ref()
            .map(|secret| herald_hub::access::secret::hash(&secret.0)),
    };
    hub_config.webhook_allow_private = routing.webhook_allow_private;
    let nats_shown = nats.as_ref().map(|n| n.redacted_servers());
    hub_config.nats = nats;
    let hub = Hub::open(hub_config, store).await?;
    if auth.auth == AuthMode::Required && auth.admin_key.is_none() {
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
    if !rules.is_empty() {
        let count = rules.len();
        if let Err(error) = hub.load_rules(rules).await {
            hub.shutdown().await;
            anyhow::bail!("loading the routing rules: {error}");
        }
        tracing::info!(count, "Routing rules loaded.");
    }
    for schema in schemas {
        if let Err(error) = hub
            .put_schema(&schema.name, &schema.subject_pattern, schema.schema)
            .await
        {
            hub.shutdown().await;
            anyhow::bail!(
                "schema {:?} of the configuration file: {error}",
                schema.name
            );
        }
        tracing::info!(name = %schema.name, subject_pattern = %schema.subject_pattern, "Schema from the configuration file applied.");
    }

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let bound = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let limits = Limits {
        max_body_bytes: limits.max_body_bytes,
        max_batch_body_bytes: limits.max_batch_body_bytes,
        max_query_bytes: limits.max_query_bytes,
        max_streams: streams.max_streams,
        max_connections: limits.max_connections,
        reserve_connections: limits.reserve_connections,
        header_read_timeout: Duration::from_secs(limits.header_read_timeout_secs),
        max_inflight_publishes: limits.max_inflight_publishes,
        request_timeout: Duration::from_secs(limits.request_timeout_secs),
        ws_ping_interval: Duration::from_secs(streams.ws_ping_interval_secs),
        ws_send_timeout: Duration::from_secs(streams.ws_send_timeout_secs),
    };
    let state = AppState::new(hub.clone(), limits, shutdown.clone());
    let grace = Duration::from_secs(server.shutdown_timeout_secs);

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
        hub_id = %server.hub_id,
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
    if let Some(exporter) = exporter {
        // Flushes the spans still queued; on a thread, as the exporter blocks.
        let _ = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
    }
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
fn init_logging(
    format: &str,
    otel: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
) -> (
    tracing_appender::non_blocking::WorkerGuard,
    Option<crate::otel::Tracing>,
) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
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
    // The spans of `herald_hub::trace` are for the exporter, not the log.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("herald::trace=off".parse().expect("a valid directive"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let fmt = if format == "json" {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let (otel, tracing) = match otel {
        Some(provider) => {
            let (layer, tracing) = crate::otel::start(provider);
            let only_spans = tracing_subscriber::filter::Targets::new()
                .with_target("herald::trace", tracing::Level::TRACE);
            (Some(layer.with_filter(only_spans)), Some(tracing))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    (guard, tracing)
}
