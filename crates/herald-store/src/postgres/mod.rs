//! The PostgreSQL store: one shared log that several Herald instances can write to.
//!
//! # Seq in commit order, across instances
//!
//! `seq` is not a `bigserial` (sequence values are taken before commit, so a reader could
//! see 7 before 6 commits and skip 6 for ever). The log's head is one row,
//! `log_head(seq, ts)`, and [`Store::append`] runs one transaction (READ COMMITTED):
//!
//! 1. `SELECT seq, ts FROM log_head FOR UPDATE` — the row lock is held until COMMIT, so
//!    writers from any number of processes take turns here;
//! 2. the batch's new events (in-batch twins removed) get `head+1 ..= head+n`; the
//!    per-subject counters are upserted, `log_head` is set to `(head+n, ts)`, and the
//!    events are streamed with one binary `COPY` (these three are pipelined). COPY
//!    measured 5–15 % faster than one multi-row `INSERT … SELECT FROM UNNEST(…)` for
//!    batches of 100–1,000;
//! 3. COMMIT, with `synchronous_commit = on`: it returns after the WAL is flushed.
//!
//! Step 2 assumes that no id of the batch is stored: the unique id index checks every id
//! anyway as the COPY inserts it, so looking them up first would do that work twice. When
//! one is stored, the COPY fails on `events_id_key`, the transaction rolls back (the head
//! with it), and the batch is written again the careful way: right after the lock,
//! `SELECT … FROM UNNEST($ids) … JOIN events` — a new statement, so a new snapshot taken
//! *after* the lock was granted: it sees every event the previous holder committed, which
//! makes the duplicate check race-free — and only the ids not found get seqs. After a
//! duplicate the next 16 batches go the careful way directly (`append.rs`).
//!
//! With pipelining a batch costs five round trips (BEGIN; 1; the start of 2; the COPY
//! data; COMMIT) and one WAL flush, whatever its size.
//!
//! Because the lock is released only by COMMIT, commit order equals seq order: a reader
//! whose snapshot shows seq N also shows every seq below it, and any later commit takes
//! seqs above the head it read under the lock. Seqs are gap-free: a failed transaction
//! rolls back everything, the `log_head` update included, so no number is lost.
//! Timestamps never go down: `ts = max(now, log_head.ts)` (with clock skew between
//! instances, the stamps of the slower clock hold at the last stamp until it catches up).
//! The price is that writers of different instances do not share a commit: each batch
//! holds the lock over its own WAL flush. Group commit inside one instance (the hub's
//! committer) is what keeps this cheap. A frozen or cut-off instance cannot hold the lock
//! for ever: the server ends its session after `statement_timeout` (a statement or COPY
//! waiting for it) or the same idle-in-transaction timeout, and the transaction rolls back.
//!
//! An ack lost in flight (the connection dies after COMMIT was sent) is reported as
//! [`StoreError::Unavailable`]; the batch may or may not be stored. Retrying it is safe:
//! ids are stored once, and a retry returns the stored events as duplicates.
//!
//! # Durable at ack
//!
//! At open, `SHOW fsync` and `SHOW synchronous_commit` (the server's defaults for this
//! database and role): if either is `off`, opening fails unless
//! [`PostgresOptions::allow_unsafe_durability`] is set, and then every open logs a loud
//! warning. Every pooled connection also sets `synchronous_commit=on` itself (in the
//! startup packet), so a role or database default cannot turn it off behind our back.
//!
//! # Schema
//!
//! Numbered migrations in `herald_schema_migrations`, applied at open in one
//! transaction that first takes `pg_advisory_xact_lock`, so instances starting together
//! apply each migration once ([`schema`]). Subjects are `TEXT COLLATE "C"`: byte order,
//! which the literal-prefix range scans of the planner rely on whatever the database's
//! collation is. Payloads are `TEXT`, not `jsonb`: the exact JSON text is kept (jsonb
//! would reorder keys and drop duplicates).
//!
//! Tables: `events`, `subjects` and `log_head` (the log); `aggregates` and `snapshots`;
//! `cursors` and `rules`;
//! `bridge_dead_letters`; `consumers`, `consumer_pending` and `consumer_dead_letters`
//! (durable consumers, below); and `herald_schema_migrations`.
//!
//! # Consumers
//!
//! A consumer is a row of `consumers` (its policy, `delivered_seq`, and the count of its
//! pending messages), one row of `consumer_pending` per message handed out and not yet
//! settled, and one row of `consumer_dead_letters` per message given up on (see
//! [`crate::consumer`]). [`Store::consumer_ops`] runs each batch of calls in one READ
//! COMMITTED transaction that first locks the rows of the consumers it names
//! (`SELECT … FOR UPDATE`, in name order: no deadlock between batches), so every change to
//! one consumer's delivery state — from any instance — waits for the previous one to
//! commit and then sees all of it: a message goes to one client at a time, across
//! instances. New events are read with the planner below inside that transaction (it
//! reads `log_head` first and bounds its reads by it, which is consistent under READ
//! COMMITTED too). Creating a consumer takes a transaction-scoped advisory lock, so
//! instances creating consumers at once keep to the limit. The number of matching events
//! not yet delivered is `log_head - delivered_seq` for a consumer that takes everything
//! (seqs are gap-free), and counted through the subject index otherwise
//! (`postgres/consumers.rs`).
//!
//! # Reads
//!
//! Every query runs in one `REPEATABLE READ READ ONLY` transaction (one snapshot) with the
//! same planner as the embedded store (`postgres/query.rs`): subject patterns never become SQL
//! `LIKE`; the `subjects` table is range-scanned by the pattern's literal prefix and
//! matched exactly in Rust, and all values are bound parameters.
//!
//! # Faults
//!
//! Each connection has a server-side `statement_timeout` and every call has a client-side
//! deadline of `connect_timeout + statement_timeout`, so no call hangs on a dead or
//! unreachable server; such failures are [`StoreError::Unavailable`]. A connection that
//! failed or timed out is dropped instead of going back to the pool, and the pool makes
//! new ones on demand, so the store recovers by itself when the server returns.
//!
//! # TLS
//!
//! Always built in, with rustls (ring provider): no system OpenSSL is needed. The
//! URL's `sslmode` and `sslrootcert` are honoured like libpq's (`postgres/tls.rs`):
//!
//! | `sslmode` | encrypted | certificate check |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers TLS, else plain text | none; with `sslrootcert`, the chain (as `verify-ca`) |
//! | `require` | always (a server without TLS is refused) | none; with `sslrootcert`, the chain (as `verify-ca`) |
//! | `verify-ca` | always | the chain, to a root in `sslrootcert`, else in the system's trust store |
//! | `verify-full` | always | as `verify-ca`, and the certificate must name the host connected to (DNS name, or IP address for a numeric host) |
//!
//! - `sslrootcert=/path/ca.pem` is a PEM file of one or more CA certificates; it is read
//!   at open (a missing or unreadable file fails the open). `sslrootcert=system` uses the
//!   system's trust store (through `rustls-native-certs`) and, as in libpq, makes
//!   `verify-full` the default and refuses a weaker mode.
//! - Without `sslrootcert`, `verify-ca`/`verify-full` use the system's trust store
//!   (libpq would read `~/.postgresql/root.crt`, which Herald does not look at); `prefer`
//!   and `require` never fall back to checking against it.
//! - "Without a certificate check" still means an encrypted connection: it protects
//!   against eavesdropping, not against an active man in the middle.
//! - A certificate that fails its check fails the open with [`StoreError::Open`] saying
//!   why (unknown issuer, wrong host name, expired). Unlike libpq, `prefer` does not then
//!   retry in plain text: a configured root certificate is never silently ignored.
//! - `hostaddr=` connects to that address while the certificate is checked against the
//!   host name, as in libpq.
//! - Not supported: `sslmode=allow` (refused at open), client certificates (`sslcert`,
//!   `sslkey`: tokio-postgres rejects them as unknown options), `sslcrl`, and
//!   `verify-ca`/`verify-full`/`sslrootcert` in libpq's `key=value` connection strings
//!   (only in `postgres://` URLs).
//! - SCRAM authentication binds to the TLS channel (`tls-server-end-point`) when the
//!   certificate is signed with an RSA or ECDSA SHA-2 algorithm.

mod aggregates;
mod append;
mod consumers;
mod listen;
mod query;
mod retention;
pub mod schema;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use herald_core::{AggregateEvent, Event, NewEvent, Origin, Payload, Seq, Subject, Timestamp};
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::aggregate::{
    AggregateAppend, AggregateAppended, AggregateKey, AggregatePage, Snapshot, SnapshotSaved,
};
use crate::consumer::{
    ConsumerCall, ConsumerDeadLetter, ConsumerOutcome, ConsumerRecord, ConsumerState,
    CreateConsumer, DeliveryPolicy, NewConsumer,
};
use crate::retention::{RetentionPass, RetentionPolicy};
use crate::{
    redact_url, AccessKind, AccessRecord, Appended, DeadLetter, NewDeadLetter, Page, Query, Result,
    Store, StoreError, StoreHealth, StoredRule, StoredSchema,
};

/// Tuning and safety switches for the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections kept open to the server.
    pub pool_size: usize,
    /// Server-side limit on one statement; with `connect_timeout`, also the client-side
    /// deadline of one call.
    pub statement_timeout: Duration,
    /// Limit on opening one connection (TCP connect and start-up).
    pub connect_timeout: Duration,
    /// Open even when the server runs with `fsync=off` or `synchronous_commit=off`
    /// (acknowledged events can then be lost in a crash). Logged as a warning.
    pub allow_unsafe_durability: bool,
    /// Most rows one query (or consumer fetch) reads that its filters refuse (see
    /// [`crate::QUERY_SCAN_BUDGET`]).
    pub query_scan_budget: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 8,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            allow_unsafe_durability: false,
            query_scan_budget: crate::QUERY_SCAN_BUDGET,
        }
    }
}

/// The PostgreSQL-backed store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Changes when any instance (this one included) commits; see [`listen`].
    commits: tokio::sync::watch::Receiver<Seq>,
    /// The URL without its password, for logs and errors.
    redacted_url: String,
    options: PostgresOptions,
    closed: AtomicBool,
    /// Appends still to look their ids up before writing (see [`append`]).
    careful: AtomicU32,
    /// Events retention deleted since the events table was last vacuumed here.
    deleted_since_vacuum: std::sync::atomic::AtomicU64,
}

/// Columns read back for an event, in the order [`row_to_event`] expects.
/// How many columns [`EVENT_COLUMNS`] names: where a query's own columns start.
pub(crate) const EVENT_COLUMN_COUNT: usize = 18;

pub(crate) const EVENT_COLUMNS: &str = r#"seq, id, subject, correlation_id, ts, hub_id, service, "user", payload, cloudevent, tenant, aggregate_type, aggregate_id, aggregate_version, event_type, metadata, traceparent, tracestate"#;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) use tls::Tls;

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/db?…`), checks that the
    /// server syncs its commits, applies migrations and builds the connection pool.
    pub async fn open(url: &str, options: PostgresOptions) -> Result<Self> {
        let redacted_url = redact_url(url);
        let (mut config, tls_settings) = tls::prepare(url)
            .map_err(|e| StoreError::Open(format!("invalid PostgreSQL URL {redacted_url}: {e}")))?;
        let tls = tls::connector(&tls_settings)
            .map_err(|e| StoreError::Open(format!("PostgreSQL at {redacted_url}: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("herald");
        }

        // The durability check and the migrations use a connection with the server's own
        // defaults (our session settings would hide a `synchronous_commit=off`).
        schema::prepare_database(&config, tls.clone(), &options, &redacted_url)
            .await
            .map_err(|e| in_context(e, &redacted_url))?;

        // Every session: durable commits, and no statement or open transaction outlives
        // the timeout on the server (so a stuck client cannot keep the head lock).
        let mut session = config.clone();
        let ms = |d: Duration| d.as_millis().max(1);
        let settings = format!(
            "-c synchronous_commit=on -c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            ms(options.statement_timeout),
            ms(options.statement_timeout),
        );
        let combined = match config.get_options() {
            Some(existing) if !existing.trim().is_empty() => format!("{existing} {settings}"),
            _ => settings,
        };
        session.options(combined);
        let manager = Manager::from_config(
            session,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout + options.statement_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Open(format!("cannot build the connection pool: {e}")))?;

        let commits = listen::spawn(config.clone(), tls, redacted_url.clone());
        let store = PostgresStore {
            inner: Arc::new(Inner {
                pool,
                commits,
                redacted_url,
                options,
                closed: AtomicBool::new(false),
                careful: AtomicU32::new(0),
                deleted_since_vacuum: Default::default(),
            }),
        };
        let head = store.head().await?;
        tracing::info!(url = %store.inner.redacted_url, head, "PostgreSQL store opened.");
        Ok(store)
    }

    /// The URL this store connects to, without its password.
    pub fn redacted_url(&self) -> &str {
        &self.inner.redacted_url
    }

    /// How long one call may take at most before it fails as unavailable.
    pub fn call_timeout(&self) -> Duration {
        self.inner.options.connect_timeout + self.inner.options.statement_timeout
    }

    /// Runs `f` on a pooled connection within the call deadline. A connection whose call
    /// failed for any reason but a plain SQL error, or timed out, is not returned to the
    /// pool: it may be broken or still busy.
    async fn with_client<T: Send>(
        &self,
        deadline: Duration,
        f: impl for<'c> FnOnce(&'c mut Object) -> BoxFuture<'c, Result<T, Failure>>,
    ) -> Result<T> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let until = Instant::now() + deadline;
        let mut client = match tokio::time::timeout_at(until, self.inner.pool.get()).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(self.pool_error(e)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "no connection to {} within {deadline:?}",
                    self.inner.redacted_url
                )))
            }
        };
        match tokio::time::timeout_at(until, f(&mut client)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(Failure::Store(error))) => Err(error),
            Ok(Err(Failure::Pg(error))) => {
                if is_connection_fault(&error) {
                    drop(Object::take(client));
                }
                Err(map_error(&error))
            }
            Err(_) => {
                drop(Object::take(client));
                Err(StoreError::Unavailable(format!(
                    "PostgreSQL at {} did not answer within {deadline:?}",
                    self.inner.redacted_url
                )))
            }
        }
    }

    fn pool_error(&self, error: PoolError) -> StoreError {
        match error {
            PoolError::Backend(e) => match map_error(&e) {
                StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                    "cannot connect to {}: {m}",
                    self.inner.redacted_url
                )),
                other => other,
            },
            PoolError::Closed => StoreError::Closed,
            PoolError::Timeout(kind) => StoreError::Unavailable(format!(
                "no connection to {} (timed out: {kind:?})",
                self.inner.redacted_url
            )),
            other => StoreError::Unavailable(format!(
                "cannot connect to {}: {other}",
                self.inner.redacted_url
            )),
        }
    }
}

impl Store for PostgresStore {
    async fn create_consumer(
        &self,
        consumer: NewConsumer,
        max_consumers: usize,
    ) -> Result<CreateConsumer> {
        let now = Timestamp::now();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(consumers::create(client, consumer, max_consumers, now))
        })
        .await
    }

    async fn update_consumer(
        &self,
        name: &str,
        policy: DeliveryPolicy,
        meta: String,
    ) -> Result<Option<ConsumerRecord>> {
        let name = name.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move { consumers::update(client, &name, &policy, &meta).await })
        })
        .await
    }

    async fn consumer(&self, name: &str) -> Result<Option<ConsumerRecord>> {
        let name = name.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move { consumers::get(client, &name).await })
        })
        .await
    }

    async fn consumers(&self) -> Result<Vec<ConsumerRecord>> {
        self.with_client(self.call_timeout(), |client| {
            Box::pin(consumers::list(client))
        })
        .await
    }

    async fn delete_consumer(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move { consumers::delete(client, &name).await })
        })
        .await
    }

    async fn consumer_state(&self, name: &str) -> Result<Option<ConsumerState>> {
        let name = name.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move { consumers::state(client, &name).await })
        })
        .await
    }

    async fn consumer_ops(
        &self,
        now: Timestamp,
        calls: Vec<ConsumerCall>,
    ) -> Result<Vec<ConsumerOutcome>> {
        if calls.is_empty() {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            return Ok(Vec::new());
        }
        let budget = self.inner.options.query_scan_budget;
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(consumers::ops(client, now, calls, budget))
        })
        .await
    }

    async fn consumer_dead_letters(
        &self,
        name: &str,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Option<Vec<ConsumerDeadLetter>>> {
        let name = name.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move { consumers::dead_letters(client, &name, after_seq, limit).await })
        })
        .await
    }

    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>> {
        if batch.is_empty() {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            return Ok(Vec::new());
        }
        let inner = Arc::clone(&self.inner);
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move { append::run(client, batch, &inner.careful).await })
        })
        .await
    }

    async fn append_aggregate(&self, append: AggregateAppend) -> Result<AggregateAppended> {
        if append.events.is_empty() {
            return Err(StoreError::Internal(
                "an aggregate append needs events".into(),
            ));
        }
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move { aggregates::append(client, append).await })
        })
        .await
    }

    async fn load_aggregate(
        &self,
        key: AggregateKey,
        from_version: u64,
        limit: usize,
    ) -> Result<Option<AggregatePage>> {
        let limit = limit.clamp(1, crate::MAX_QUERY_LIMIT);
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move { aggregates::load(client, &key, from_version, limit).await })
        })
        .await
    }

    async fn save_snapshot(
        &self,
        key: AggregateKey,
        version: u64,
        state: Payload,
    ) -> Result<SnapshotSaved> {
        let now = Timestamp::now();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(
                async move { aggregates::save_snapshot(client, &key, version, &state, now).await },
            )
        })
        .await
    }

    async fn load_snapshot(&self, key: AggregateKey) -> Result<Option<Snapshot>> {
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move { aggregates::load_snapshot(client, &key).await })
        })
        .await
    }

    async fn enforce_retention(
        &self,
        policies: Vec<RetentionPolicy>,
        now: Timestamp,
        budget: usize,
    ) -> Result<RetentionPass> {
        if policies.iter().all(|p| !p.limits()) {
            return Ok(RetentionPass::default());
        }
        let budget = budget.max(1);
        let pass = self
            .with_client(self.call_timeout(), move |client| {
                Box::pin(async move { retention::enforce(client, &policies, now, budget).await })
            })
            .await?;
        let deleted = &self.inner.deleted_since_vacuum;
        let since = deleted.fetch_add(pass.deleted_events, Ordering::Relaxed) + pass.deleted_events;
        if !pass.more && since >= retention::VACUUM_AFTER {
            deleted.store(0, Ordering::Relaxed);
            // Autovacuum may be off or behind: make the deleted rows' space reusable now,
            // so that the tables stop growing. (Plain VACUUM: reads and writes go on.)
            let vacuumed = self
                .with_client(retention::VACUUM_TIMEOUT, |client| {
                    Box::pin(async move { retention::vacuum(client).await })
                })
                .await;
            if let Err(error) = vacuumed {
                tracing::warn!(%error, "Cannot vacuum the events table after retention.");
            }
        }
        Ok(pass)
    }

    async fn load_setting(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let row = client
                    .query_opt("SELECT body FROM settings WHERE name = $1", &[&name])
                    .await?;
                Ok(row.map(|r| r.get(0)))
            })
        })
        .await
    }

    async fn save_setting(&self, name: &str, body: String) -> Result<()> {
        let name = name.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                client
                    .execute(
                        "INSERT INTO settings (name, body) VALUES ($1, $2)
                         ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                        &[&name, &body],
                    )
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<Event>> {
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
                    .await?;
                let rows = client.query(&stmt, &[&id]).await?;
                Ok(rows.first().map(row_to_event).transpose()?)
            })
        })
        .await
    }

    async fn query(&self, query: Query) -> Result<Page> {
        let budget = self.inner.options.query_scan_budget;
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(query::run(client, query, budget))
        })
        .await
    }

    async fn head(&self) -> Result<Seq> {
        self.with_client(self.call_timeout(), |client| {
            Box::pin(async move {
                let stmt = client.prepare_cached("SELECT seq FROM log_head").await?;
                let row = client.query_one(&stmt, &[]).await?;
                Ok(row.get::<_, i64>(0) as Seq)
            })
        })
        .await
    }

    async fn health(&self) -> StoreHealth {
        let deadline = self
            .inner
            .options
            .connect_timeout
            .min(Duration::from_secs(2));
        let result = self
            .with_client(deadline, |client| {
                Box::pin(async move {
                    client.simple_query("SELECT 1").await?;
                    Ok(())
                })
            })
            .await;
        match result {
            Ok(()) => StoreHealth {
                healthy: true,
                detail: format!("PostgreSQL at {} answers", self.inner.redacted_url),
            },
            Err(error) => StoreHealth {
                healthy: false,
                detail: error.to_string(),
            },
        }
    }

    async fn tenant_payload_bytes(&self) -> Result<Vec<(String, u64)>> {
        self.with_client(self.call_timeout(), |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "SELECT tenant, SUM(octet_length(payload))::bigint FROM events
                         WHERE tenant IS NOT NULL GROUP BY tenant",
                    )
                    .await?;
                let rows = client.query(&stmt, &[]).await?;
                Ok(rows
                    .iter()
                    .map(|row| (row.get(0), crate::u64_from_sql(row.get::<_, i64>(1))))
                    .collect())
            })
        })
        .await
    }

    async fn size_bytes(&self) -> Result<u64> {
        self.with_client(self.call_timeout(), |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "SELECT (pg_total_relation_size('events') + pg_total_relation_size('subjects')
                               + pg_total_relation_size('log_head')
                               + pg_total_relation_size('cursors')
                               + pg_total_relation_size('rules')
                               + pg_total_relation_size('bridge_dead_letters')
                               + pg_total_relation_size('consumers')
                               + pg_total_relation_size('consumer_pending')
                               + pg_total_relation_size('consumer_dead_letters')
                               + pg_total_relation_size('herald_schema_migrations'))::bigint",
                    )
                    .await?;
                let row = client.query_one(&stmt, &[]).await?;
                Ok(row.get::<_, i64>(0).max(0) as u64)
            })
        })
        .await
    }

    fn external_commits(&self) -> Option<tokio::sync::watch::Receiver<Seq>> {
        Some(self.inner.commits.clone())
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.pool.close();
        tracing::info!(url = %self.inner.redacted_url, "PostgreSQL store closed.");
        Ok(())
    }

    async fn load_cursor(&self, name: &str) -> Result<Seq> {
        let name = name.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("SELECT seq FROM cursors WHERE name = $1")
                    .await?;
                let row = client.query_opt(&stmt, &[&name]).await?;
                Ok(row.map_or(0, |row| row.get::<_, i64>(0).max(0) as Seq))
            })
        })
        .await
    }

    async fn save_cursor(&self, name: &str, seq: Seq) -> Result<()> {
        let seq = crate::seq_to_sql(seq)?;
        let name = name.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO cursors (name, seq) VALUES ($1, $2)
                         ON CONFLICT (name) DO UPDATE SET seq = GREATEST(cursors.seq, excluded.seq)",
                    )
                    .await?;
                client.execute(&stmt, &[&name, &seq]).await?;
                Ok(())
            })
        })
        .await
    }

    async fn save_cursors(&self, cursors: Vec<(String, Seq)>) -> Result<()> {
        let rows = crate::collapse_cursors(cursors)?;
        if rows.is_empty() {
            return Ok(());
        }
        let (names, seqs): (Vec<String>, Vec<i64>) = rows.into_iter().unzip();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO cursors (name, seq)
                         SELECT * FROM UNNEST($1::text[], $2::int8[])
                         ON CONFLICT (name) DO UPDATE SET seq = GREATEST(cursors.seq, excluded.seq)",
                    )
                    .await?;
                client.execute(&stmt, &[&names, &seqs]).await?;
                Ok(())
            })
        })
        .await
    }

    async fn list_rules(&self) -> Result<Vec<StoredRule>> {
        self.with_client(self.call_timeout(), |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("SELECT id, body FROM rules ORDER BY position")
                    .await?;
                let rows = client.query(&stmt, &[]).await?;
                Ok(rows
                    .iter()
                    .map(|row| StoredRule {
                        id: row.get(0),
                        body: row.get(1),
                    })
                    .collect())
            })
        })
        .await
    }

    async fn put_rule(&self, rule: StoredRule) -> Result<()> {
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO rules (id, body) VALUES ($1, $2)
                         ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                    )
                    .await?;
                client.execute(&stmt, &[&rule.id, &rule.body]).await?;
                Ok(())
            })
        })
        .await
    }

    async fn delete_rule(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("DELETE FROM rules WHERE id = $1")
                    .await?;
                Ok(client.execute(&stmt, &[&id]).await? > 0)
            })
        })
        .await
    }

    async fn list_schemas(&self) -> Result<Vec<StoredSchema>> {
        self.with_client(self.call_timeout(), |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("SELECT name, body FROM schemas ORDER BY name")
                    .await?;
                let rows = client.query(&stmt, &[]).await?;
                Ok(rows
                    .iter()
                    .map(|row| StoredSchema {
                        name: row.get(0),
                        body: row.get(1),
                    })
                    .collect())
            })
        })
        .await
    }

    async fn put_schema(&self, schema: StoredSchema) -> Result<bool> {
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                // `xmax` is 0 on a row this statement inserted, not on one it updated.
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO schemas (name, body) VALUES ($1, $2)
                         ON CONFLICT (name) DO UPDATE SET body = excluded.body
                         RETURNING (xmax = 0)",
                    )
                    .await?;
                let row = client
                    .query_one(&stmt, &[&schema.name, &schema.body])
                    .await?;
                Ok(row.get::<_, bool>(0))
            })
        })
        .await
    }

    async fn delete_schema(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("DELETE FROM schemas WHERE name = $1")
                    .await?;
                Ok(client.execute(&stmt, &[&name]).await? > 0)
            })
        })
        .await
    }

    async fn list_access(&self, kind: AccessKind) -> Result<Vec<AccessRecord>> {
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("SELECT id, body FROM access WHERE kind = $1 ORDER BY id")
                    .await?;
                let rows = client.query(&stmt, &[&kind.as_str()]).await?;
                Ok(rows
                    .iter()
                    .map(|row| AccessRecord {
                        id: row.get(0),
                        body: row.get(1),
                    })
                    .collect())
            })
        })
        .await
    }

    async fn insert_access(&self, kind: AccessKind, record: AccessRecord) -> Result<bool> {
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO access (kind, id, body) VALUES ($1, $2, $3)
                         ON CONFLICT (kind, id) DO NOTHING",
                    )
                    .await?;
                let inserted = client
                    .execute(&stmt, &[&kind.as_str(), &record.id, &record.body])
                    .await?;
                Ok(inserted > 0)
            })
        })
        .await
    }

    async fn replace_access(&self, kind: AccessKind, record: AccessRecord) -> Result<bool> {
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("UPDATE access SET body = $3 WHERE kind = $1 AND id = $2")
                    .await?;
                let updated = client
                    .execute(&stmt, &[&kind.as_str(), &record.id, &record.body])
                    .await?;
                Ok(updated > 0)
            })
        })
        .await
    }

    async fn delete_access(&self, kind: AccessKind, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("DELETE FROM access WHERE kind = $1 AND id = $2")
                    .await?;
                Ok(client.execute(&stmt, &[&kind.as_str(), &id]).await? > 0)
            })
        })
        .await
    }

    async fn add_dead_letters(&self, letters: Vec<NewDeadLetter>, keep: usize) -> Result<u64> {
        if letters.is_empty() {
            return Ok(0);
        }
        let keep = crate::u64_to_sql(keep.max(1) as u64);
        let received_at = Timestamp::now().as_micros();
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                let insert = tx
                    .prepare_cached(
                        "INSERT INTO bridge_dead_letters
                             (received_at, stream, stream_seq, subject, headers, body, body_size, reason)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .await?;
                for letter in &letters {
                    tx.execute(
                        &insert,
                        &[
                            &received_at,
                            &letter.stream,
                            &crate::u64_to_sql(letter.stream_seq),
                            &letter.subject,
                            &crate::encode_headers(&letter.headers),
                            &letter.body,
                            &crate::u64_to_sql(letter.body_size),
                            &letter.reason,
                        ],
                    )
                    .await?;
                }
                let trim = tx
                    .prepare_cached(
                        "DELETE FROM bridge_dead_letters WHERE id <= (
                             SELECT id FROM bridge_dead_letters ORDER BY id DESC LIMIT 1 OFFSET $1)",
                    )
                    .await?;
                let dropped = tx.execute(&trim, &[&keep]).await?;
                tx.commit().await?;
                Ok(dropped)
            })
        })
        .await
    }

    async fn dead_letters(&self, after_id: u64, limit: usize) -> Result<Vec<DeadLetter>> {
        let after_id = crate::u64_to_sql(after_id);
        let limit = crate::u64_to_sql(limit as u64);
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "SELECT id, received_at, stream, stream_seq, subject, headers, body, body_size, reason
                         FROM bridge_dead_letters WHERE id > $1 ORDER BY id LIMIT $2",
                    )
                    .await?;
                let rows = client.query(&stmt, &[&after_id, &limit]).await?;
                rows.iter()
                    .map(|row| {
                        let headers: String = row.try_get(5)?;
                        Ok(DeadLetter {
                            id: crate::u64_from_sql(row.try_get(0)?),
                            received_at: Timestamp::from_micros(row.try_get(1)?),
                            letter: NewDeadLetter {
                                stream: row.try_get(2)?,
                                stream_seq: crate::u64_from_sql(row.try_get(3)?),
                                subject: row.try_get(4)?,
                                headers: crate::decode_headers(&headers)
                                    .map_err(StoreError::Corrupt)?,
                                body: row.try_get(6)?,
                                body_size: crate::u64_from_sql(row.try_get(7)?),
                                reason: row.try_get(8)?,
                            },
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn delete_dead_letter(&self, id: u64) -> Result<bool> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(false);
        };
        self.with_client(self.call_timeout(), move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("DELETE FROM bridge_dead_letters WHERE id = $1")
                    .await?;
                Ok(client.execute(&stmt, &[&id]).await? > 0)
            })
        })
        .await
    }

    async fn count_dead_letters(&self) -> Result<u64> {
        self.with_client(self.call_timeout(), |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("SELECT COUNT(*) FROM bridge_dead_letters")
                    .await?;
                let row = client.query_one(&stmt, &[]).await?;
                Ok(crate::u64_from_sql(row.get(0)))
            })
        })
        .await
    }
}

/// Decodes a row selected with [`EVENT_COLUMNS`]; a row that does not decode is corrupt.
pub(crate) fn row_to_event(row: &tokio_postgres::Row) -> Result<Event> {
    decode_row(row).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Why an event row cannot be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RowError {
    #[error("column {index} of an event row: {source}")]
    Column {
        index: usize,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("stored subject: {0}")]
    Subject(#[source] herald_core::SubjectError),
    #[error("stored payload: {0}")]
    Payload(#[source] herald_core::PayloadTextError),
    #[error("stored cloudevent: {0}")]
    CloudEvent(#[source] crate::codec::CloudEventCodecError),
}

pub(crate) fn decode_row(row: &tokio_postgres::Row) -> Result<Event, RowError> {
    fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        index: usize,
    ) -> Result<T, RowError> {
        row.try_get(index)
            .map_err(|source| RowError::Column { index, source })
    }
    let seq: i64 = column(row, 0)?;
    let subject: String = column(row, 2)?;
    let payload: String = column(row, 8)?;
    Ok(Event {
        seq: seq as Seq,
        id: column(row, 1)?,
        subject: Subject::from_stored(subject).map_err(RowError::Subject)?,
        correlation_id: column(row, 3)?,
        timestamp: Timestamp::from_micros(column(row, 4)?),
        origin: Origin {
            hub_id: column(row, 5)?,
            service: column(row, 6)?,
            user: column(row, 7)?,
        },
        payload: Payload::from_json(payload).map_err(RowError::Payload)?,
        cloudevent: match column::<Option<String>>(row, 9)? {
            None => None,
            Some(text) => Some(Box::new(
                crate::codec::decode_cloudevent(&text).map_err(RowError::CloudEvent)?,
            )),
        },
        tenant: column(row, 10)?,
        aggregate: match column::<Option<String>>(row, 11)? {
            None => None,
            Some(aggregate_type) => Some(Box::new(AggregateEvent {
                aggregate_type,
                aggregate_id: column(row, 12)?,
                version: crate::u64_from_sql(column(row, 13)?),
                event_type: column(row, 14)?,
                metadata: match column::<Option<String>>(row, 15)? {
                    None => None,
                    Some(text) => Some(Payload::from_json(text).map_err(RowError::Payload)?),
                },
            })),
        },
        trace: crate::codec::decode_trace(column(row, 16)?, column(row, 17)?),
    })
}

/// True when the error means the connection (or the server) is gone or unusable, as
/// opposed to one statement failing.
fn is_connection_fault(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            // 08: connection exception; 57P0x: shutdown / cannot connect now;
            // 53: insufficient resources; 58: system error (I/O).
            class == "08"
                || class == "53"
                || class == "58"
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::QUERY_CANCELED
                || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        }
    }
}

/// Sorts driver errors into what callers can act on: try again later, or a bug.
pub(crate) fn map_error(error: &tokio_postgres::Error) -> StoreError {
    let text = describe(error);
    let Some(code) = error.code() else {
        // No SQLSTATE: the connection failed (I/O, closed, timed out, TLS, start-up) —
        // or a value did not convert, which is a damaged row.
        let display = error.to_string();
        if display.starts_with("error deserializing") || display.starts_with("invalid column") {
            return StoreError::Corrupt(text);
        }
        return StoreError::Unavailable(text);
    };
    if is_connection_fault(error)
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || *code == SqlState::TOO_MANY_CONNECTIONS
    {
        return StoreError::Unavailable(text);
    }
    match &code.code()[..2] {
        "XX" => StoreError::Corrupt(text),
        // 28: invalid authorization; 3D: database does not exist; 42501: permission.
        "28" | "3D" => StoreError::Open(text),
        _ => StoreError::Internal(text),
    }
}

/// The error with its causes, on one line (a `DbError` gives its message and SQLSTATE).
fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Prefixes an error's message with where it happened (a redacted URL).
fn in_context(error: StoreError, redacted_url: &str) -> StoreError {
    match error {
        StoreError::Unavailable(m) => {
            StoreError::Unavailable(format!("PostgreSQL at {redacted_url}: {m}"))
        }
        StoreError::Open(m) => StoreError::Open(format!("PostgreSQL at {redacted_url}: {m}")),
        StoreError::Internal(m) => {
            StoreError::Internal(format!("PostgreSQL at {redacted_url}: {m}"))
        }
        other => other,
    }
}

/// Why a call on a pooled connection failed: the driver (the connection may be broken),
/// or the store's own checks (the connection is fine).
pub(crate) enum Failure {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::Pg(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::Store(error)
    }
}
