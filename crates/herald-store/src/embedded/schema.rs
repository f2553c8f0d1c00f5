//! Connection settings and versioned schema migrations for the embedded store.
//!
//! The schema version is SQLite's `user_version`. Migrations run in order, each in its
//! own transaction, and are never edited once released: a change is a new migration.

use std::time::Duration;

use rusqlite::Connection;

use crate::StoreError;

fn open_error(error: rusqlite::Error) -> StoreError {
    StoreError::Open(error.to_string())
}

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the log, and the distinct subjects it holds.
    "CREATE TABLE events (
        seq            INTEGER PRIMARY KEY,   -- the rowid: the table is stored in seq order
        id             BLOB    NOT NULL,      -- UUID, 16 bytes
        subject        TEXT    NOT NULL,
        correlation_id BLOB    NOT NULL,
        ts             INTEGER NOT NULL,      -- microseconds since the Unix epoch, UTC
        hub_id         TEXT    NOT NULL,
        service        TEXT,
        user           TEXT,
        payload        TEXT    NOT NULL       -- a JSON object, as published
    );
    -- Index entries carry the rowid (seq), so each of these is ordered by seq within a key.
    CREATE UNIQUE INDEX events_by_id ON events (id);
    CREATE INDEX events_by_subject ON events (subject);
    CREATE INDEX events_by_correlation ON events (correlation_id);
    CREATE INDEX events_by_ts ON events (ts);
    -- One row per distinct subject: lets a wildcard query find its subjects without
    -- scanning events.
    CREATE TABLE subjects (
        subject  TEXT    PRIMARY KEY,
        events   INTEGER NOT NULL,
        last_seq INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2: CloudEvents attributes of events that arrived as CloudEvents (JSON, see codec.rs).
    "ALTER TABLE events ADD COLUMN cloudevent TEXT;",
    // 3: where each delivery process (NATS relay, rules engine) has reached in the log,
    // and the routing rules (opaque JSON text, kept as given) in the order first added.
    "CREATE TABLE cursors (
        name TEXT    PRIMARY KEY,
        seq  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE rules (
        position INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the order rules were added
        id       TEXT    NOT NULL UNIQUE,
        body     TEXT    NOT NULL
    );",
    // 4: the NATS bridge's dead letters: messages it could not ingest, kept for the
    // operator (a bounded number: the oldest are dropped first).
    "CREATE TABLE bridge_dead_letters (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the order added
        received_at INTEGER NOT NULL,                   -- microseconds since the Unix epoch, UTC
        stream      TEXT    NOT NULL,
        stream_seq  INTEGER NOT NULL,
        subject     TEXT    NOT NULL,
        headers     TEXT    NOT NULL,                   -- JSON array of [name, value] pairs
        body        BLOB    NOT NULL,                   -- the body, or its first bytes
        body_size   INTEGER NOT NULL,                   -- the body's size as received
        reason      TEXT    NOT NULL
    );",
    // 5: durable consumers (see consumer.rs): the consumer, its delivered and not yet
    // settled messages, and the messages it gave up on. Times are microseconds since the
    // Unix epoch, UTC.
    "CREATE TABLE consumers (
        name          TEXT    PRIMARY KEY,
        epoch         INTEGER NOT NULL,
        filters       TEXT    NOT NULL,   -- JSON array of subject patterns
        policy        TEXT    NOT NULL,   -- JSON: ack wait, max deliver, backoff, max ack pending
        meta          TEXT    NOT NULL,   -- JSON kept as given by the hub
        created_at    INTEGER NOT NULL,
        delivered_seq INTEGER NOT NULL,   -- every matching event up to here was handed out
        ack_pending   INTEGER NOT NULL    -- rows in consumer_pending
    ) WITHOUT ROWID;
    CREATE TABLE consumer_pending (
        consumer           TEXT    NOT NULL,
        seq                INTEGER NOT NULL,
        deliveries         INTEGER NOT NULL,
        held_until         INTEGER NOT NULL,  -- the current delivery's ack wait ends
        due_at             INTEGER NOT NULL,  -- may be handed out again from here
        first_delivered_at INTEGER,
        last_error         TEXT,
        PRIMARY KEY (consumer, seq)
    ) WITHOUT ROWID;
    CREATE INDEX consumer_pending_by_due ON consumer_pending (consumer, due_at);
    CREATE INDEX consumer_pending_by_held ON consumer_pending (consumer, held_until);
    CREATE TABLE consumer_dead_letters (
        consumer           TEXT    NOT NULL,
        seq                INTEGER NOT NULL,
        deliveries         INTEGER NOT NULL,
        reason             TEXT    NOT NULL,  -- max_deliver | term
        last_error         TEXT,
        first_delivered_at INTEGER NOT NULL,
        dead_at            INTEGER NOT NULL,
        PRIMARY KEY (consumer, seq)
    ) WITHOUT ROWID;",
    // 6: a last delivery is due when its ack wait ends, so the due index finds the
    // messages to give up on too: one index fewer to write per delivery.
    "DROP INDEX consumer_pending_by_held;",
    // 7: the first deliveries of one fetch as one row (see consumers/batch.rs): a fetch
    // writes one row instead of one per message, and acking it rewrites or deletes it.
    "CREATE TABLE consumer_batches (
        consumer     TEXT    NOT NULL,
        first_seq    INTEGER NOT NULL,
        members      BLOB    NOT NULL,  -- the members' seqs after first_seq, as varint gaps
        open         BLOB    NOT NULL,  -- one bit per member, first_seq first: still pending
        open_count   INTEGER NOT NULL,
        held_until   INTEGER NOT NULL,  -- the ack wait of the delivery ends
        due_at       INTEGER NOT NULL,  -- the earliest due time of a member
        delivered_at INTEGER NOT NULL,
        PRIMARY KEY (consumer, first_seq)
    ) WITHOUT ROWID;
    CREATE INDEX consumer_batches_by_due ON consumer_batches (consumer, due_at);",
    // 8: the tenant an event belongs to; tenants and API keys (opaque JSON documents the
    // hub owns, by kind and id).
    "ALTER TABLE events ADD COLUMN tenant TEXT;
    CREATE TABLE access (
        kind TEXT NOT NULL,  -- 'tenant' or 'key'
        id   TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (kind, id)
    ) WITHOUT ROWID;",
    // 9: aggregates: an event's aggregate and version in it, each aggregate's current
    // version (what an append checks under the write lock), and its newest snapshots.
    // `tenant` is '' outside every tenant.
    "ALTER TABLE events ADD COLUMN aggregate_type TEXT;
    ALTER TABLE events ADD COLUMN aggregate_id TEXT;
    ALTER TABLE events ADD COLUMN aggregate_version INTEGER;
    ALTER TABLE events ADD COLUMN event_type TEXT;
    ALTER TABLE events ADD COLUMN metadata TEXT;
    CREATE INDEX events_by_aggregate ON events (aggregate_type, aggregate_id, seq)
        WHERE aggregate_type IS NOT NULL;
    CREATE TABLE aggregates (
        tenant         TEXT    NOT NULL,
        aggregate_type TEXT    NOT NULL,
        aggregate_id   TEXT    NOT NULL,
        version        INTEGER NOT NULL,
        PRIMARY KEY (tenant, aggregate_type, aggregate_id)
    ) WITHOUT ROWID;
    CREATE TABLE snapshots (
        tenant         TEXT    NOT NULL,
        aggregate_type TEXT    NOT NULL,
        aggregate_id   TEXT    NOT NULL,
        version        INTEGER NOT NULL,
        state          TEXT    NOT NULL,
        created_at     INTEGER NOT NULL,
        PRIMARY KEY (tenant, aggregate_type, aggregate_id, version)
    ) WITHOUT ROWID;",
    // 10: event schemas, by name (opaque JSON
    // documents the hub owns: the subject pattern and the JSON Schema).
    "CREATE TABLE schemas (
        name TEXT PRIMARY KEY,
        body TEXT NOT NULL
    ) WITHOUT ROWID;",
    // 11: retention: each subject's payload bytes (for `max_bytes`), what each consumer
    // missed because retention deleted it first, and the hub's settings (the retention
    // policies, as JSON the hub owns).
    "ALTER TABLE subjects ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE subjects SET bytes = IFNULL(
        (SELECT SUM(length(CAST(payload AS BLOB))) FROM events WHERE events.subject = subjects.subject), 0);
    ALTER TABLE consumers ADD COLUMN skipped_by_retention INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        body TEXT NOT NULL
    ) WITHOUT ROWID;",
    // 12: the W3C trace context an event was published with (`traceparent` as sent
    // or continued, and its `tracestate`), NULL for events without one.
    "ALTER TABLE events ADD COLUMN traceparent TEXT;
    ALTER TABLE events ADD COLUMN tracestate TEXT;",
    // 13: no index on the commit time: timestamps never go down in seq order, so time
    // bounds are found by a binary search over seq (query.rs), and every append writes
    // one index fewer.
    "DROP INDEX events_by_ts;",
    // 14: the subject index as a table written in bulk (subject_index.rs): an index on
    // `events (subject)` wrote one leaf page per distinct subject of every commit. The
    // cursor says how far the table covers; later events are read from the log.
    "CREATE TABLE subject_seqs (
        subject TEXT    NOT NULL,
        seq     INTEGER NOT NULL,
        PRIMARY KEY (subject, seq)
    ) WITHOUT ROWID;
    INSERT INTO subject_seqs (subject, seq) SELECT subject, seq FROM events ORDER BY subject, seq;
    INSERT INTO cursors (name, seq)
        SELECT 'herald:subject-index', IFNULL(MAX(seq), 0) FROM events;
    DROP INDEX events_by_subject;",
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How many times a connection retries a lock another connection holds before it fails
/// busy: at [`BUSY_RETRY_EVERY`] apart, at least 5 s.
const BUSY_RETRIES: i32 = 50_000;
/// The sleep between two tries for a lock.
pub(crate) const BUSY_RETRY_EVERY: Duration = Duration::from_micros(100);

/// Waits for a lock in short sleeps. SQLite's own busy timeout sleeps 1, 2, 5, 10, 15,
/// 20, 25 … ms between tries, so a commit that found the write lock taken for 1 ms
/// (a WAL restart) slept 8 ms or more: the strace of `herald-bench latency` showed
/// writers asleep 30–80 ms in that ladder, which was the publish p99.
pub(crate) fn wait_in_short_sleeps(conn: &mut Connection) -> rusqlite::Result<()> {
    fn retry(attempt: i32) -> bool {
        if attempt >= BUSY_RETRIES {
            return false;
        }
        std::thread::sleep(BUSY_RETRY_EVERY);
        true
    }
    conn.busy_handler(Some(retry))
}

pub(crate) fn configure_writer(conn: &mut Connection) -> Result<(), StoreError> {
    wait_in_short_sleeps(conn).map_err(open_error)?;
    stable_plans(conn).map_err(open_error)?;
    // Pages freed by retention go back to the file system. This takes effect only on a
    // new database (before WAL mode writes its first page); older ones keep their pages
    // for reuse. Only then: on an existing database the pragma still writes page 1,
    // which would keep Herald from starting on a full disk.
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(open_error)?;
    if tables == 0 {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(open_error)?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open(format!(
            "cannot switch the database to WAL mode (got {mode})"
        )));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;          -- a commit returns after the WAL is synced
         PRAGMA wal_autocheckpoint = 0;      -- checkpoints run on their own thread
         PRAGMA journal_size_limit = 67108864;
         PRAGMA cache_size = -8192;          -- KiB
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(open_error)
}

/// One query plan per statement, whatever its bound values: the bundled SQLite is built
/// with STAT4, which otherwise recompiles a cached statement whenever a value compared
/// with an indexed column changes (measured: ~5% of the CPU of consumer fetch + ack).
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(drop)
}

pub(crate) fn configure_reader(conn: &mut Connection) -> rusqlite::Result<()> {
    wait_in_short_sleeps(conn)?;
    stable_plans(conn)?;
    conn.execute_batch("PRAGMA cache_size = -2048;")
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(open_error)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Open(format!(
            "the database has schema version {current}, newer than this Herald understands ({SCHEMA_VERSION}); upgrade Herald"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let mut apply = || -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version as i64 + 1)?;
            tx.commit()
        };
        apply().map_err(|e| StoreError::Open(format!("migration {} failed: {e}", version + 1)))?;
        tracing::info!(version = version + 1, "Applied schema migration.");
    }
    Ok(())
}
