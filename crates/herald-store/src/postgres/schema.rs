//! The PostgreSQL store's schema, its numbered migrations, and the durability check
//! done at open.
//!
//! Migrations are applied in one transaction that first takes a transaction-scoped
//! advisory lock: instances that start together wait for each other, and the second
//! finds the work done. Each applied version is a row of `herald_schema_migrations`.
//! A migration is never edited once released: a change is a new migration.

use std::time::Duration;

use tokio_postgres::{Client, Config};

use super::{map_error, PostgresOptions, Tls};
use crate::StoreError;

/// The key of the advisory lock that serializes migrations ("HERALD" in ASCII).
pub const MIGRATION_LOCK_KEY: i64 = 0x4845_5241_4C44;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the log, the distinct subjects it holds, and its head (the sequencer).
    r#"
    CREATE TABLE events (
        seq            BIGINT PRIMARY KEY,
        id             UUID   NOT NULL UNIQUE,
        subject        TEXT   COLLATE "C" NOT NULL,  -- byte order: prefix ranges work
        correlation_id UUID   NOT NULL,
        ts             BIGINT NOT NULL,              -- microseconds since the Unix epoch, UTC
        hub_id         TEXT   NOT NULL,
        service        TEXT,
        "user"         TEXT,
        payload        TEXT   NOT NULL,              -- the JSON object exactly as published
        cloudevent     TEXT                          -- CloudEvents attributes (codec.rs)
    );
    CREATE INDEX events_by_subject ON events (subject, seq);
    CREATE INDEX events_by_correlation ON events (correlation_id, seq);
    CREATE INDEX events_by_ts ON events (ts, seq);
    CREATE TABLE subjects (
        subject  TEXT   COLLATE "C" PRIMARY KEY,
        events   BIGINT NOT NULL,
        last_seq BIGINT NOT NULL
    );
    -- One row: the last seq and timestamp given out. Its row lock, held from the start of
    -- an append to its COMMIT, is what makes commit order equal seq order.
    CREATE TABLE log_head (
        id  BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
        seq BIGINT NOT NULL,
        ts  BIGINT NOT NULL
    );
    INSERT INTO log_head (seq, ts) VALUES (0, 0);
    "#,
    // 2: where each delivery process (NATS relay, rules engine) has reached in the log,
    // and the routing rules in the order first added. A rule's body is TEXT, not jsonb:
    // it is kept exactly as given.
    r#"
    CREATE TABLE cursors (
        name TEXT   PRIMARY KEY,
        seq  BIGINT NOT NULL
    );
    CREATE TABLE rules (
        position BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        id       TEXT   PRIMARY KEY,
        body     TEXT   NOT NULL
    );
    "#,
    // 3: the NATS bridge's dead letters: messages it could not ingest, kept for the
    // operator (a bounded number: the oldest are dropped first).
    r#"
    CREATE TABLE bridge_dead_letters (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- the order added
        received_at BIGINT NOT NULL,  -- microseconds since the Unix epoch, UTC
        stream      TEXT   NOT NULL,
        stream_seq  BIGINT NOT NULL,
        subject     TEXT   NOT NULL,
        headers     TEXT   NOT NULL,  -- JSON array of [name, value] pairs
        body        BYTEA  NOT NULL,  -- the body, or its first bytes
        body_size   BIGINT NOT NULL,  -- the body's size as received
        reason      TEXT   NOT NULL
    );
    "#,
    // 4: durable consumers (see consumer.rs): the consumer, its delivered and not yet
    // settled messages, and the messages it gave up on. Times are microseconds since the
    // Unix epoch, UTC. Names sort bytewise (consumers are listed by name, and
    // `consumer_ops` locks rows in that order). No foreign keys: the store deletes a
    // consumer's rows itself, and a key check per delivered message would cost.
    r#"
    CREATE TABLE consumers (
        name          TEXT   COLLATE "C" PRIMARY KEY,
        epoch         BIGINT NOT NULL,  -- a u32
        filters       TEXT   NOT NULL,  -- JSON array of subject patterns
        policy        TEXT   NOT NULL,  -- JSON: ack wait, max deliver, backoff, max ack pending
        meta          TEXT   NOT NULL,  -- JSON kept as given by the hub
        created_at    BIGINT NOT NULL,
        delivered_seq BIGINT NOT NULL,  -- every matching event up to here was handed out
        ack_pending   BIGINT NOT NULL   -- rows in consumer_pending
    );
    CREATE TABLE consumer_pending (
        consumer           TEXT    COLLATE "C" NOT NULL,
        seq                BIGINT  NOT NULL,
        deliveries         INTEGER NOT NULL,
        held_until         BIGINT  NOT NULL,  -- the current delivery's ack wait ends
        due_at             BIGINT  NOT NULL,  -- may be handed out again from here
        first_delivered_at BIGINT,
        last_error         TEXT,
        PRIMARY KEY (consumer, seq)
    );
    CREATE INDEX consumer_pending_by_due ON consumer_pending (consumer, due_at);
    CREATE INDEX consumer_pending_by_held ON consumer_pending (consumer, held_until);
    CREATE TABLE consumer_dead_letters (
        consumer           TEXT    COLLATE "C" NOT NULL,
        seq                BIGINT  NOT NULL,
        deliveries         INTEGER NOT NULL,
        reason             TEXT    NOT NULL,  -- max_deliver | term
        last_error         TEXT,
        first_delivered_at BIGINT  NOT NULL,
        dead_at            BIGINT  NOT NULL,
        PRIMARY KEY (consumer, seq)
    );
    "#,
    // 5: a last delivery is due when its ack wait ends, so the due index finds the
    // messages to give up on too: one index fewer to write per delivery.
    "DROP INDEX IF EXISTS consumer_pending_by_held;",
    // 6: the tenant an event belongs to; tenants and API keys (opaque JSON documents the
    // hub owns, by kind and id).
    r#"
    ALTER TABLE events ADD COLUMN tenant TEXT;
    CREATE TABLE access (
        kind TEXT NOT NULL,
        id   TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (kind, id)
    );
    "#,
    // 7: aggregates: an event's aggregate and version in it, each aggregate's current
    // version (what an append checks under the head lock), and its newest snapshots.
    // `tenant` is '' outside every tenant.
    r#"
    ALTER TABLE events
        ADD COLUMN aggregate_type    TEXT COLLATE "C",
        ADD COLUMN aggregate_id      TEXT COLLATE "C",
        ADD COLUMN aggregate_version BIGINT,
        ADD COLUMN event_type        TEXT,
        ADD COLUMN metadata          TEXT;
    CREATE INDEX events_by_aggregate ON events (aggregate_type, aggregate_id, seq)
        WHERE aggregate_type IS NOT NULL;
    CREATE TABLE aggregates (
        tenant         TEXT   COLLATE "C" NOT NULL,
        aggregate_type TEXT   COLLATE "C" NOT NULL,
        aggregate_id   TEXT   COLLATE "C" NOT NULL,
        version        BIGINT NOT NULL,
        PRIMARY KEY (tenant, aggregate_type, aggregate_id)
    );
    CREATE TABLE snapshots (
        tenant         TEXT   COLLATE "C" NOT NULL,
        aggregate_type TEXT   COLLATE "C" NOT NULL,
        aggregate_id   TEXT   COLLATE "C" NOT NULL,
        version        BIGINT NOT NULL,
        state          TEXT   NOT NULL,
        created_at     BIGINT NOT NULL,
        PRIMARY KEY (tenant, aggregate_type, aggregate_id, version)
    );
    "#,
    // 8: event schemas, by name (opaque JSON
    // documents the hub owns: the subject pattern and the JSON Schema).
    r#"
    CREATE TABLE schemas (
        name TEXT COLLATE "C" PRIMARY KEY,
        body TEXT NOT NULL
    );
    "#,
    // 9: retention: each subject's payload bytes (for `max_bytes`), what each consumer
    // missed because retention deleted it first, and the hub's settings (the retention
    // policies, as JSON the hub owns).
    r#"
    ALTER TABLE subjects ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;
    UPDATE subjects SET bytes = COALESCE(
        (SELECT SUM(octet_length(payload)) FROM events WHERE events.subject = subjects.subject), 0);
    ALTER TABLE consumers ADD COLUMN skipped_by_retention BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE settings (
        name TEXT COLLATE "C" PRIMARY KEY,
        body TEXT NOT NULL
    );
    "#,
    // 10: the W3C trace context an event was published with (`traceparent` as sent
    // or continued, and its `tracestate`), NULL for events without one.
    r#"
    ALTER TABLE events ADD COLUMN traceparent TEXT;
    ALTER TABLE events ADD COLUMN tracestate TEXT;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Connects with the server's own session defaults, refuses a server that does not sync
/// its commits (unless allowed), and brings the schema up to date.
pub(super) async fn prepare_database(
    config: &Config,
    tls: Tls,
    options: &PostgresOptions,
    redacted_url: &str,
) -> Result<(), StoreError> {
    let deadline = options.connect_timeout + options.statement_timeout;
    let (client, connection) = tokio::time::timeout(options.connect_timeout, config.connect(tls))
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "no connection within {:?}",
                options.connect_timeout
            ))
        })?
        .map_err(|e| match super::tls::refused_certificate(&e) {
            // Opening fails for good: retrying will not make the certificate trusted.
            Some(problem) => StoreError::Open(format!(
                "TLS: the server's certificate was refused ({problem}); it must chain to a \
                 root certificate in sslrootcert (without sslrootcert, verify-ca and verify-full \
                 use the system's trust store), and with sslmode=verify-full also name the host \
                 connected to"
            )),
            None => map_error(&e),
        })?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL set-up connection ended.");
        }
    });
    let result = async {
        check_durability(&client, options, redacted_url).await?;
        migrate(&client).await
    };
    // Migrations on a big table may take a while: allow them a generous deadline.
    let result = tokio::time::timeout(deadline.max(Duration::from_secs(60)), result)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the durability check and migrations did not finish in time".into(),
            ))
        });
    drop(client);
    let _ = driver.await;
    result
}

async fn check_durability(
    client: &Client,
    options: &PostgresOptions,
    redacted_url: &str,
) -> Result<(), StoreError> {
    let mut unsafe_settings = Vec::new();
    for setting in ["fsync", "synchronous_commit"] {
        let row = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .map_err(|e| map_error(&e))?;
        let value: String = row.get(0);
        if value.eq_ignore_ascii_case("off") {
            unsafe_settings.push(format!("{setting}=off"));
        }
    }
    if unsafe_settings.is_empty() {
        return Ok(());
    }
    let settings = unsafe_settings.join(" and ");
    if options.allow_unsafe_durability {
        tracing::warn!(
            url = %redacted_url,
            settings = %settings,
            "UNSAFE: PostgreSQL runs with {settings}; acknowledged events can be LOST in a crash. \
             Herald starts anyway because allow_unsafe_durability is set."
        );
        Ok(())
    } else {
        Err(StoreError::Open(format!(
            "the server runs with {settings}, so an acknowledged event could be lost in a crash; \
             turn it on in postgresql.conf (or ALTER DATABASE/ROLE … SET), or allow unsafe \
             durability explicitly"
        )))
    }
}

/// Applies every migration this build knows and the database lacks, in one transaction.
pub(super) async fn migrate(client: &Client) -> Result<(), StoreError> {
    let fail = |e: tokio_postgres::Error| match map_error(&e) {
        StoreError::Unavailable(m) => StoreError::Unavailable(m),
        other => StoreError::Open(format!("migration failed: {other}")),
    };
    client.batch_execute("BEGIN").await.map_err(fail)?;
    let result = async {
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(fail)?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS herald_schema_migrations (
                    version    INTEGER PRIMARY KEY,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )",
            )
            .await
            .map_err(fail)?;
        let current: i32 = client
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM herald_schema_migrations",
                &[],
            )
            .await
            .map_err(fail)?
            .get(0);
        if current > SCHEMA_VERSION {
            return Err(StoreError::Open(format!(
                "the database has schema version {current}, newer than this Herald understands ({SCHEMA_VERSION}); upgrade Herald"
            )));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = index as i32 + 1;
            client.batch_execute(sql).await.map_err(|e| match map_error(&e) {
                StoreError::Unavailable(m) => StoreError::Unavailable(m),
                other => StoreError::Open(format!("migration {version} failed: {other}")),
            })?;
            client
                .execute(
                    "INSERT INTO herald_schema_migrations (version) VALUES ($1)",
                    &[&version],
                )
                .await
                .map_err(fail)?;
            tracing::info!(version, "Applied PostgreSQL schema migration.");
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => client.batch_execute("COMMIT").await.map_err(fail),
        Err(error) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(error)
        }
    }
}
