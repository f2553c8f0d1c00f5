//! Herald's storage contract ([`Store`]) and its backends.
//!
//! The store is the source of truth: it assigns every event its `seq` and `timestamp` at
//! commit, and everything that delivers events (live streams, catch-up, relays) reads
//! from it by `seq`. A backend must:
//!
//! - commit each [`Store::append`] batch in one transaction, durably (synced) before it
//!   returns, and either store all of it or none of it;
//! - give seqs strictly increasing in commit order, and timestamps that never go down;
//! - store an event id once: appending an id that is already stored returns the stored
//!   event as [`Appended::Duplicate`];
//! - answer [`Store::query`] in seq order, from a consistent snapshot;
//! - keep delivery cursors ([`Store::save_cursor`], never moving backwards) and routing
//!   rules ([`StoredRule`], in the order they were first added) durably beside the log;
//! - keep event schemas ([`StoredSchema`], by name) durably beside the log;
//! - keep the NATS bridge's dead letters ([`DeadLetter`]: messages it could not ingest),
//!   numbered in the order added, at most a given number of them (the oldest go first);
//! - keep aggregates ([`aggregate`]): append to one only if its version meets the
//!   expected version, giving the events the versions that follow, serialised with
//!   every other append (across processes too); load an aggregate's events by version;
//!   keep its newest snapshots;
//! - keep durable consumers and their delivery state ([`consumer`]), changing it only
//!   through [`Store::consumer_ops`]: one durable transaction per batch of operations,
//!   each operation serialised with every other on the same consumer (across processes
//!   too).
//!
//! [`conformance`] checks all of this against any backend.
//!
//! Backends: [`embedded`] (SQLite in WAL mode, the default) and [`postgres`] (a shared
//! log for several instances). The set of backends is closed, so [`AnyStore`] dispatches
//! once at the top instead of boxing every call.

use std::future::Future;
use std::path::PathBuf;

use herald_core::{Event, NewEvent, Pattern, Payload, Seq, Timestamp};
use uuid::Uuid;

pub mod aggregate;
pub mod codec;
pub mod conformance;
pub mod consumer;
pub mod embedded;
pub mod event_log;
mod plan;
pub mod postgres;
pub mod postings;
pub mod record;
pub mod retention;
pub mod run;
pub mod segment;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use aggregate::{
    AggregateAppend, AggregateAppended, AggregateKey, AggregatePage, Snapshot, SnapshotSaved,
};
pub use consumer::{
    AckId, Backoff, ConsumerCall, ConsumerDeadLetter, ConsumerOp, ConsumerOutcome, ConsumerRecord,
    ConsumerState, CreateConsumer, DeadReason, Delivery, DeliveryPolicy, Fetched, NewConsumer,
};
pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use postgres::{PostgresOptions, PostgresStore};
pub use retention::{RetentionPass, RetentionPolicy};

/// Most events one query may return.
pub const MAX_QUERY_LIMIT: usize = 1000;

/// Most rows one query reads that its filters then refuse, unless a store's options say
/// otherwise (`query_scan_budget`). A query that reaches it
/// answers with the events found so far and a `scanned_to` below the head (the cursor
/// to go on from), so that no pattern can make one request read the whole log and hold
/// a reader while it does (a pattern that starts with a wildcard and matches nothing,
/// on a store with more distinct subjects than the planner examines, would).
pub const QUERY_SCAN_BUDGET: usize = 20_000;

/// What went wrong in a store. Callers branch on [`StoreError::is_unavailable`] to
/// answer 503 (try again) instead of 500.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot serve right now (disk full, locked, I/O error, database down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// Stored data could not be read back: a bug or a damaged file.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Opening failed for a reason the operator must fix (bad path, locked by another process).
    #[error("cannot open store: {0}")]
    Open(String),
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Closed)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Cursors to save, one per name (the larger seq wins), as database integers.
pub(crate) fn collapse_cursors(cursors: Vec<(String, Seq)>) -> Result<Vec<(String, i64)>> {
    let mut by_name = std::collections::BTreeMap::new();
    for (name, seq) in cursors {
        let seq = seq_to_sql(seq)?;
        let entry = by_name.entry(name).or_insert(seq);
        *entry = (*entry).max(seq);
    }
    Ok(by_name.into_iter().collect())
}

/// The result of appending one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Newly stored in this batch.
    Stored(Event),
    /// An event with this id was already stored; this is that event, unchanged.
    Duplicate(Event),
}

impl Appended {
    pub fn event(&self) -> &Event {
        match self {
            Appended::Stored(e) | Appended::Duplicate(e) => e,
        }
    }

    pub fn into_event(self) -> Event {
        match self {
            Appended::Stored(e) | Appended::Duplicate(e) => e,
        }
    }

    pub fn is_duplicate(&self) -> bool {
        matches!(self, Appended::Duplicate(_))
    }
}

/// A read of the log: every filter is optional and they combine with AND.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Subject pattern; `None` matches everything.
    pub subject: Option<Pattern>,
    /// Only events with `seq > after_seq` (0 = from the start).
    pub after_seq: Seq,
    /// Only events committed at or after this instant.
    pub since: Option<Timestamp>,
    /// Only events committed at or before this instant.
    pub until: Option<Timestamp>,
    pub correlation_id: Option<Uuid>,
    /// Only events of aggregates of this type.
    pub aggregate_type: Option<String>,
    /// Only events of aggregates with this id.
    pub aggregate_id: Option<String>,
    /// Only events whose payload, as its stored JSON text, contains this text
    /// (case-sensitive). Read by scan, under the scan budget.
    pub payload_contains: Option<String>,
    /// At most this many events (1..=[`MAX_QUERY_LIMIT`]; larger values are clamped).
    pub limit: usize,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            subject: None,
            after_seq: 0,
            since: None,
            until: None,
            correlation_id: None,
            aggregate_type: None,
            aggregate_id: None,
            payload_contains: None,
            limit: 100,
        }
    }
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Matching events in seq order.
    pub events: Vec<Event>,
    /// Every matching event with a seq at or below this one has been returned (by this
    /// page or an earlier one). The next page starts after it: a reader that resumes from
    /// here skips nothing, even when this page is empty.
    pub scanned_to: Seq,
}

/// Health of a store, as shown by `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    pub healthy: bool,
    pub detail: String,
}

/// What an [`AccessRecord`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessKind {
    Tenant,
    Key,
}

impl AccessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::Tenant => "tenant",
            AccessKind::Key => "key",
        }
    }
}

/// A tenant or an API key as the store keeps it: an id and an opaque JSON document (the
/// hub owns its shape; a key's document holds a hash of its secret, never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    pub id: String,
    pub body: String,
}

/// A routing rule as the store keeps it: an id and an opaque JSON document (the hub owns its shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRule {
    pub id: String,
    pub body: String,
}

/// An event schema as the store keeps it: a name and an opaque JSON document (the hub
/// owns its shape: the subject pattern and the JSON Schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSchema {
    pub name: String,
    pub body: String,
}

/// A NATS message the bridge could not turn into an event, as handed to the store. Texts
/// hold no NUL character (the bridge replaces it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// The JetStream stream and the message's sequence number in it.
    pub stream: String,
    pub stream_seq: u64,
    pub subject: String,
    /// Header names and values, in the order received (a name may repeat).
    pub headers: Vec<(String, String)>,
    /// The body, or its first bytes when it was larger than the bridge keeps.
    pub body: Vec<u8>,
    /// The body's size as received (more than `body.len()` when it was cut).
    pub body_size: u64,
    /// Why it was not ingested, for the operator.
    pub reason: String,
}

/// A dead letter as kept: its number (increasing in the order added, never reused) and
/// when it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: u64,
    pub received_at: Timestamp,
    pub letter: NewDeadLetter,
}

/// The storage contract. See the crate docs for the guarantees each backend gives.
pub trait Store: Send + Sync + 'static {
    /// Stores a batch in one durable transaction and returns, per input event and in the
    /// same order, the stored (or already stored) event.
    fn append(&self, batch: Vec<NewEvent>) -> impl Future<Output = Result<Vec<Appended>>> + Send;

    fn get(&self, id: Uuid) -> impl Future<Output = Result<Option<Event>>> + Send;

    /// Appends events to one aggregate in one durable transaction, if its version meets
    /// the append's condition (see [`AggregateAppended`]).
    fn append_aggregate(
        &self,
        append: AggregateAppend,
    ) -> impl Future<Output = Result<AggregateAppended>> + Send;

    /// At most `limit` of an aggregate's events from `from_version` on, in version
    /// order; `None` when the aggregate has no events.
    fn load_aggregate(
        &self,
        key: AggregateKey,
        from_version: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Option<AggregatePage>>> + Send;

    /// Keeps a snapshot of an aggregate at `version` (at most its current version), and
    /// drops all but the newest [`aggregate::SNAPSHOTS_KEPT`]. A snapshot saved again
    /// at the same version replaces the earlier one.
    fn save_snapshot(
        &self,
        key: AggregateKey,
        version: u64,
        state: Payload,
    ) -> impl Future<Output = Result<SnapshotSaved>> + Send;

    /// The snapshot with the highest version, if any.
    fn load_snapshot(
        &self,
        key: AggregateKey,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send;

    /// Deletes at most `budget` events that `policies` no longer keep (see
    /// [`retention`]), oldest first, in one transaction: a query or stream sees all of a
    /// pass or none of it. Consumers that had not been handed a deleted event count it
    /// in [`ConsumerState::skipped_by_retention`]. Several processes sharing the store
    /// may call it; one pass runs at a time.
    fn enforce_retention(
        &self,
        policies: Vec<RetentionPolicy>,
        now: Timestamp,
        budget: usize,
    ) -> impl Future<Output = Result<RetentionPass>> + Send;

    /// A setting the hub keeps in the store (an opaque document), if saved.
    fn load_setting(&self, name: &str) -> impl Future<Output = Result<Option<String>>> + Send;

    /// Saves a setting durably, replacing the earlier one.
    fn save_setting(&self, name: &str, body: String) -> impl Future<Output = Result<()>> + Send;

    fn query(&self, query: Query) -> impl Future<Output = Result<Page>> + Send;

    /// The seq of the last committed event (0 when empty).
    fn head(&self) -> impl Future<Output = Result<Seq>> + Send;

    fn health(&self) -> impl Future<Output = StoreHealth> + Send;

    /// Commits by other processes sharing this store. `None` when no other process can
    /// write to it (the embedded store: live fan-out can follow local commits). Otherwise
    /// a receiver that changes whenever some writer may have committed (its value is a hint
    /// of the new head): live fan-out must then follow the log itself, by seq.
    fn external_commits(&self) -> Option<tokio::sync::watch::Receiver<Seq>>;

    /// Bytes the store takes on disk (for metrics).
    fn size_bytes(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Bytes of payload each tenant's events hold (for storage quotas). Reads the
    /// whole log: call it rarely.
    fn tenant_payload_bytes(&self) -> impl Future<Output = Result<Vec<(String, u64)>>> + Send;

    /// Flushes and releases the store. Calls after this fail with [`StoreError::Closed`].
    fn close(&self) -> impl Future<Output = Result<()>> + Send;

    /// The position a delivery process (the NATS relay, the rules engine) has reached in
    /// the log; 0 when never saved.
    fn load_cursor(&self, name: &str) -> impl Future<Output = Result<Seq>> + Send;

    /// Saves a cursor durably. A cursor never moves backwards: saving a smaller seq than
    /// the stored one keeps the stored one (several instances may share a PostgreSQL store
    /// and save the same cursor).
    fn save_cursor(&self, name: &str, seq: Seq) -> impl Future<Output = Result<()>> + Send;

    /// Saves several cursors in one durable transaction, each as [`Store::save_cursor`]
    /// would (a name given twice keeps its larger seq). Many consumers saving at once
    /// then cost one sync, not one each.
    fn save_cursors(&self, cursors: Vec<(String, Seq)>) -> impl Future<Output = Result<()>> + Send;

    /// Every stored rule, in the order they were first added.
    fn list_rules(&self) -> impl Future<Output = Result<Vec<StoredRule>>> + Send;

    /// Inserts a rule, or replaces the body of the rule with that id (keeping its place in
    /// the order).
    fn put_rule(&self, rule: StoredRule) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a rule; false when there was none with that id.
    fn delete_rule(&self, id: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Every stored event schema, by name (bytewise).
    fn list_schemas(&self) -> impl Future<Output = Result<Vec<StoredSchema>>> + Send;

    /// Inserts a schema, or replaces the body of the one with that name; true when it is
    /// new.
    fn put_schema(&self, schema: StoredSchema) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes a schema; false when there was none with that name.
    fn delete_schema(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Every record of `kind`, by id.
    fn list_access(
        &self,
        kind: AccessKind,
    ) -> impl Future<Output = Result<Vec<AccessRecord>>> + Send;

    /// Adds a record; false (and nothing written) when one of that kind and id exists.
    fn insert_access(
        &self,
        kind: AccessKind,
        record: AccessRecord,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Replaces the body of a record; false when there is none of that kind and id.
    fn replace_access(
        &self,
        kind: AccessKind,
        record: AccessRecord,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes a record; false when there was none.
    fn delete_access(
        &self,
        kind: AccessKind,
        id: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Stores dead letters in one durable transaction, then drops the oldest ones beyond
    /// the newest `keep` (at least 1). Returns how many were dropped.
    fn add_dead_letters(
        &self,
        letters: Vec<NewDeadLetter>,
        keep: usize,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// At most `limit` dead letters with an id above `after_id`, oldest first.
    fn dead_letters(
        &self,
        after_id: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    /// Deletes one dead letter; false when there was none with that id.
    fn delete_dead_letter(&self, id: u64) -> impl Future<Output = Result<bool>> + Send;

    /// How many dead letters are kept.
    fn count_dead_letters(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Creates a consumer unless one of that name exists (then returns it unchanged) or
    /// `max_consumers` are kept already.
    fn create_consumer(
        &self,
        consumer: NewConsumer,
        max_consumers: usize,
    ) -> impl Future<Output = Result<CreateConsumer>> + Send;

    /// Replaces a consumer's policy and meta; `None` when there is no such consumer.
    fn update_consumer(
        &self,
        name: &str,
        policy: DeliveryPolicy,
        meta: String,
    ) -> impl Future<Output = Result<Option<ConsumerRecord>>> + Send;

    fn consumer(&self, name: &str) -> impl Future<Output = Result<Option<ConsumerRecord>>> + Send;

    /// Every consumer, by name.
    fn consumers(&self) -> impl Future<Output = Result<Vec<ConsumerRecord>>> + Send;

    /// Deletes a consumer with its pending messages and dead letters; false when absent.
    fn delete_consumer(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;

    /// A consumer's delivery state; `None` when absent.
    fn consumer_state(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ConsumerState>>> + Send;

    /// Applies the calls in order, in one durable transaction (see [`consumer`]); answers
    /// one outcome per call. `now` is the time every deadline is measured against.
    fn consumer_ops(
        &self,
        now: Timestamp,
        calls: Vec<ConsumerCall>,
    ) -> impl Future<Output = Result<Vec<ConsumerOutcome>>> + Send;

    /// At most `limit` of a consumer's dead letters with a seq above `after_seq`, in seq
    /// order; `None` when there is no such consumer.
    fn consumer_dead_letters(
        &self,
        name: &str,
        after_seq: Seq,
        limit: usize,
    ) -> impl Future<Output = Result<Option<Vec<ConsumerDeadLetter>>>> + Send;
}

/// Headers as the stores keep them: a JSON array of `[name, value]` pairs.
pub(crate) fn encode_headers(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).expect("strings serialize")
}

pub(crate) fn decode_headers(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    serde_json::from_str(text).map_err(|e| format!("stored dead-letter headers: {e}"))
}

/// A database integer as a dead letter's id or sequence number (never negative).
pub(crate) fn u64_from_sql(value: i64) -> u64 {
    value.max(0) as u64
}

/// A sequence number or id as a database integer (values past `i64::MAX` are clamped:
/// no JetStream stream gets there).
pub(crate) fn u64_to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A seq as the databases store it (a signed 64-bit integer).
pub(crate) fn seq_to_sql(seq: Seq) -> Result<i64> {
    i64::try_from(seq).map_err(|_| StoreError::Internal(format!("seq {seq} is out of range")))
}

/// Where the events live, parsed from `DATABASE_URL` / `--data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// A single SQLite file (`sqlite://path`, `sqlite:path` or a plain path).
    Embedded { path: PathBuf },
    /// A PostgreSQL server (`postgres://…`, `postgresql://…`).
    Postgres { url: String },
}

/// Why [`StoreConfig::parse`] refused a database location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreConfigError {
    #[error("the database location is empty")]
    Empty,
    #[error("`sqlite://` needs a file path, e.g. sqlite://./data/herald.db")]
    NoPath,
    #[error(
        "unknown database scheme `{scheme}://`; use sqlite://PATH, a plain path, or postgres://…"
    )]
    UnknownScheme { scheme: String },
}

impl StoreConfig {
    /// Parses a database URL or path. Unknown schemes are an error that lists the known ones.
    pub fn parse(text: &str) -> Result<Self, StoreConfigError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(StoreConfigError::Empty);
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreConfig::Postgres { url: text.into() });
        }
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(StoreConfigError::NoPath);
            }
            return Ok(StoreConfig::Embedded { path: path.into() });
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(StoreConfigError::UnknownScheme {
                scheme: scheme.to_owned(),
            });
        }
        Ok(StoreConfig::Embedded { path: text.into() })
    }

    /// Opens the store this config names (PostgreSQL with [`PostgresOptions::default`]).
    pub async fn open(&self, options: EmbeddedOptions) -> Result<AnyStore> {
        self.open_with(options, PostgresOptions::default()).await
    }

    /// Opens the store this config names, with the options of whichever backend it is.
    pub async fn open_with(
        &self,
        embedded: EmbeddedOptions,
        postgres: PostgresOptions,
    ) -> Result<AnyStore> {
        match self {
            StoreConfig::Embedded { path } => Ok(AnyStore::Embedded(
                EmbeddedStore::open(path, embedded).await?,
            )),
            StoreConfig::Postgres { url } => Ok(AnyStore::Postgres(
                PostgresStore::open(url, postgres).await?,
            )),
        }
    }

    /// A description safe to log or print: no credentials.
    pub fn redacted(&self) -> String {
        match self {
            StoreConfig::Embedded { path } => format!("sqlite://{}", path.display()),
            StoreConfig::Postgres { url } => redact_url(url),
        }
    }
}

/// Replaces the password of a `scheme://user:password@host` URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://{user}@{host}")
            }
        }
        None => url.to_string(),
    }
}

/// One of the backends, chosen at start-up.
pub enum AnyStore {
    Embedded(EmbeddedStore),
    Postgres(PostgresStore),
}

impl AnyStore {
    /// The embedded store, if this is it: its appends are work on the calling thread
    /// ([`EmbeddedStore::append_here`]), which a writer with a thread of its own can do
    /// there.
    pub fn embedded(&self) -> Option<&EmbeddedStore> {
        match self {
            AnyStore::Embedded(store) => Some(store),
            AnyStore::Postgres(_) => None,
        }
    }
}

impl Store for AnyStore {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>> {
        match self {
            AnyStore::Embedded(s) => s.append(batch).await,
            AnyStore::Postgres(s) => s.append(batch).await,
        }
    }

    async fn get(&self, id: Uuid) -> Result<Option<Event>> {
        match self {
            AnyStore::Embedded(s) => s.get(id).await,
            AnyStore::Postgres(s) => s.get(id).await,
        }
    }

    async fn append_aggregate(&self, append: AggregateAppend) -> Result<AggregateAppended> {
        match self {
            AnyStore::Embedded(s) => s.append_aggregate(append).await,
            AnyStore::Postgres(s) => s.append_aggregate(append).await,
        }
    }

    async fn load_aggregate(
        &self,
        key: AggregateKey,
        from_version: u64,
        limit: usize,
    ) -> Result<Option<AggregatePage>> {
        match self {
            AnyStore::Embedded(s) => s.load_aggregate(key, from_version, limit).await,
            AnyStore::Postgres(s) => s.load_aggregate(key, from_version, limit).await,
        }
    }

    async fn save_snapshot(
        &self,
        key: AggregateKey,
        version: u64,
        state: Payload,
    ) -> Result<SnapshotSaved> {
        match self {
            AnyStore::Embedded(s) => s.save_snapshot(key, version, state).await,
            AnyStore::Postgres(s) => s.save_snapshot(key, version, state).await,
        }
    }

    async fn load_snapshot(&self, key: AggregateKey) -> Result<Option<Snapshot>> {
        match self {
            AnyStore::Embedded(s) => s.load_snapshot(key).await,
            AnyStore::Postgres(s) => s.load_snapshot(key).await,
        }
    }

    async fn enforce_retention(
        &self,
        policies: Vec<RetentionPolicy>,
        now: Timestamp,
        budget: usize,
    ) -> Result<RetentionPass> {
        match self {
            AnyStore::Embedded(s) => s.enforce_retention(policies, now, budget).await,
            AnyStore::Postgres(s) => s.enforce_retention(policies, now, budget).await,
        }
    }

    async fn load_setting(&self, name: &str) -> Result<Option<String>> {
        match self {
            AnyStore::Embedded(s) => s.load_setting(name).await,
            AnyStore::Postgres(s) => s.load_setting(name).await,
        }
    }

    async fn save_setting(&self, name: &str, body: String) -> Result<()> {
        match self {
            AnyStore::Embedded(s) => s.save_setting(name, body).await,
            AnyStore::Postgres(s) => s.save_setting(name, body).await,
        }
    }

    async fn query(&self, query: Query) -> Result<Page> {
        match self {
            AnyStore::Embedded(s) => s.query(query).await,
            AnyStore::Postgres(s) => s.query(query).await,
        }
    }

    async fn head(&self) -> Result<Seq> {
        match self {
            AnyStore::Embedded(s) => s.head().await,
            AnyStore::Postgres(s) => s.head().await,
        }
    }

    async fn health(&self) -> StoreHealth {
        match self {
            AnyStore::Embedded(s) => s.health().await,
            AnyStore::Postgres(s) => s.health().await,
        }
    }

    fn external_commits(&self) -> Option<tokio::sync::watch::Receiver<Seq>> {
        match self {
            AnyStore::Embedded(s) => s.external_commits(),
            AnyStore::Postgres(s) => s.external_commits(),
        }
    }

    async fn tenant_payload_bytes(&self) -> Result<Vec<(String, u64)>> {
        match self {
            AnyStore::Embedded(s) => s.tenant_payload_bytes().await,
            AnyStore::Postgres(s) => s.tenant_payload_bytes().await,
        }
    }

    async fn size_bytes(&self) -> Result<u64> {
        match self {
            AnyStore::Embedded(s) => s.size_bytes().await,
            AnyStore::Postgres(s) => s.size_bytes().await,
        }
    }

    async fn close(&self) -> Result<()> {
        match self {
            AnyStore::Embedded(s) => s.close().await,
            AnyStore::Postgres(s) => s.close().await,
        }
    }

    async fn load_cursor(&self, name: &str) -> Result<Seq> {
        match self {
            AnyStore::Embedded(s) => s.load_cursor(name).await,
            AnyStore::Postgres(s) => s.load_cursor(name).await,
        }
    }

    async fn save_cursor(&self, name: &str, seq: Seq) -> Result<()> {
        match self {
            AnyStore::Embedded(s) => s.save_cursor(name, seq).await,
            AnyStore::Postgres(s) => s.save_cursor(name, seq).await,
        }
    }

    async fn save_cursors(&self, cursors: Vec<(String, Seq)>) -> Result<()> {
        match self {
            AnyStore::Embedded(s) => s.save_cursors(cursors).await,
            AnyStore::Postgres(s) => s.save_cursors(cursors).await,
        }
    }

    async fn list_rules(&self) -> Result<Vec<StoredRule>> {
        match self {
            AnyStore::Embedded(s) => s.list_rules().await,
            AnyStore::Postgres(s) => s.list_rules().await,
        }
    }

    async fn list_schemas(&self) -> Result<Vec<StoredSchema>> {
        match self {
            AnyStore::Embedded(s) => s.list_schemas().await,
            AnyStore::Postgres(s) => s.list_schemas().await,
        }
    }

    async fn put_schema(&self, schema: StoredSchema) -> Result<bool> {
        match self {
            AnyStore::Embedded(s) => s.put_schema(schema).await,
            AnyStore::Postgres(s) => s.put_schema(schema).await,
        }
    }

    async fn delete_schema(&self, name: &str) -> Result<bool> {
        match self {
            AnyStore::Embedded(s) => s.delete_schema(name).await,
            AnyStore::Postgres(s) => s.delete_schema(name).await,
        }
    }

    async fn list_access(&self, kind: AccessKind) -> Result<Vec<AccessRecord>> {
        match self {
            AnyStore::Embedded(s) => s.list_access(kind).await,
            AnyStore::Postgres(s) => s.list_access(kind).await,
        }
    }

    async fn insert_access(&self, kind: AccessKind, record: AccessRecord) -> Result<bool> {
        match self {
            AnyStore::Embedded(s) => s.insert_access(kind, record).await,
            AnyStore::Postgres(s) => s.insert_access(kind, record).await,
        }
    }

    async fn replace_access(&self, kind: AccessKind, record: AccessRecord) -> Result<bool> {
        match self {
            AnyStore::Embedded(s) => s.replace_access(kind, record).await,
            AnyStore::Postgres(s) => s.replace_access(kind, record).await,
        }
    }

    async fn delete_access(&self, kind: AccessKind, id: &str) -> Result<bool> {
        match self {
            AnyStore::Embedded(s) => s.delete_access(kind, id).await,
            AnyStore::Postgres(s) => s.delete_access(kind, id).await,
        }
    }

    async fn put_rule(&self, rule: StoredRule) -> Result<()> {
        match self {
            AnyStore::Embedded(s) => s.put_rule(rule).await,
            AnyStore::Postgres(s) => s.put_rule(rule).await,
        }
    }

    async fn delete_rule(&self, id: &str) -> Result<bool> {
        match self {
            AnyStore::Embedded(s) => s.delete_rule(id).await,
            AnyStore::Postgres(s) => s.delete_rule(id).await,
        }
    }

    async fn add_dead_letters(&self, letters: Vec<NewDeadLetter>, keep: usize) -> Result<u64> {
        match self {
            AnyStore::Embedded(s) => s.add_dead_letters(letters, keep).await,
            AnyStore::Postgres(s) => s.add_dead_letters(letters, keep).await,
        }
    }

    async fn dead_letters(&self, after_id: u64, limit: usize) -> Result<Vec<DeadLetter>> {
        match self {
            AnyStore::Embedded(s) => s.dead_letters(after_id, limit).await,
            AnyStore::Postgres(s) => s.dead_letters(after_id, limit).await,
        }
    }

    async fn delete_dead_letter(&self, id: u64) -> Result<bool> {
        match self {
            AnyStore::Embedded(s) => s.delete_dead_letter(id).await,
            AnyStore::Postgres(s) => s.delete_dead_letter(id).await,
        }
    }

    async fn count_dead_letters(&self) -> Result<u64> {
        match self {
            AnyStore::Embedded(s) => s.count_dead_letters().await,
            AnyStore::Postgres(s) => s.count_dead_letters().await,
        }
    }

    async fn create_consumer(
        &self,
        consumer: NewConsumer,
        max_consumers: usize,
    ) -> Result<CreateConsumer> {
        match self {
            AnyStore::Embedded(s) => s.create_consumer(consumer, max_consumers).await,
            AnyStore::Postgres(s) => s.create_consumer(consumer, max_consumers).await,
        }
    }

    async fn update_consumer(
        &self,
        name: &str,
        policy: DeliveryPolicy,
        meta: String,
    ) -> Result<Option<ConsumerRecord>> {
        match self {
            AnyStore::Embedded(s) => s.update_consumer(name, policy, meta).await,
            AnyStore::Postgres(s) => s.update_consumer(name, policy, meta).await,
        }
    }

    async fn consumer(&self, name: &str) -> Result<Option<ConsumerRecord>> {
        match self {
            AnyStore::Embedded(s) => s.consumer(name).await,
            AnyStore::Postgres(s) => s.consumer(name).await,
        }
    }

    async fn consumers(&self) -> Result<Vec<ConsumerRecord>> {
        match self {
            AnyStore::Embedded(s) => s.consumers().await,
            AnyStore::Postgres(s) => s.consumers().await,
        }
    }

    async fn delete_consumer(&self, name: &str) -> Result<bool> {
        match self {
            AnyStore::Embedded(s) => s.delete_consumer(name).await,
            AnyStore::Postgres(s) => s.delete_consumer(name).await,
        }
    }

    async fn consumer_state(&self, name: &str) -> Result<Option<ConsumerState>> {
        match self {
            AnyStore::Embedded(s) => s.consumer_state(name).await,
            AnyStore::Postgres(s) => s.consumer_state(name).await,
        }
    }

    async fn consumer_ops(
        &self,
        now: Timestamp,
        calls: Vec<ConsumerCall>,
    ) -> Result<Vec<ConsumerOutcome>> {
        match self {
            AnyStore::Embedded(s) => s.consumer_ops(now, calls).await,
            AnyStore::Postgres(s) => s.consumer_ops(now, calls).await,
        }
    }

    async fn consumer_dead_letters(
        &self,
        name: &str,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Option<Vec<ConsumerDeadLetter>>> {
        match self {
            AnyStore::Embedded(s) => s.consumer_dead_letters(name, after_seq, limit).await,
            AnyStore::Postgres(s) => s.consumer_dead_letters(name, after_seq, limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(
            StoreConfig::parse("sqlite://./data/h.db").unwrap(),
            StoreConfig::Embedded {
                path: "./data/h.db".into()
            }
        );
        assert_eq!(
            StoreConfig::parse("sqlite:/tmp/h.db").unwrap(),
            StoreConfig::Embedded {
                path: "/tmp/h.db".into()
            }
        );
        assert_eq!(
            StoreConfig::parse("data/h.db").unwrap(),
            StoreConfig::Embedded {
                path: "data/h.db".into()
            }
        );
        assert!(matches!(
            StoreConfig::parse("postgres://u:p@localhost/db").unwrap(),
            StoreConfig::Postgres { .. }
        ));
        assert!(StoreConfig::parse("mysql://x").is_err());
        assert!(StoreConfig::parse("sqlite://").is_err());
        assert!(StoreConfig::parse("").is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://herald:s3cret@db:5432/h"),
            "postgres://herald:***@db:5432/h"
        );
        assert_eq!(redact_url("postgres://db/h"), "postgres://db/h");
    }
}
