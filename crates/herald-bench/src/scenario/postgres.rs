//! The `postgres` scenario: herald on its PostgreSQL store, next to a raw ceiling.
//!
//! A throwaway PostgreSQL server is started on loopback (`TestPostgres::local`: `initdb`
//! into a temporary directory, `fsync=on`, default settings otherwise). Then:
//!
//! 1. the ceiling: a Rust client writes N ~300-byte rows with the columns of herald's
//!    `events` table into a fresh table of a fresh database by binary `COPY`, 1,000 rows
//!    per transaction, `synchronous_commit = on`;
//! 2. herald (`serve --data postgres://…`, another fresh database): `POST /api/events`
//!    with many connections, closed loop; then `POST /api/events:batch` with 1,000-event
//!    batches over 2 connections, and again over 8 (how group commit uses concurrency);
//! 3. herald's store is filled with batches to 1,000,000 events, and
//!    `GET /api/events?subject=<pattern>&limit=100` is timed for the patterns of (c).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use herald_store::testing::TestPostgres;
use serde::Deserialize;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use super::storage::{query_series, QueryResult};
use super::{
    batch_fill, closed_loop, closed_loop_publish, describe_errors, FillResult, LoadResult, Options,
    BATCH,
};
use crate::client::Connection;
use crate::process::{ProcSample, ServerProcess};
use crate::report::Table;
use crate::stats::{mib, ms, ms_f, percent, thousands, verdict};
use crate::{progress, workload};

/// Events per batch request, and rows per COPY transaction of the ceiling.
const BATCH_SIZE: usize = 1_000;
/// Connections of the batch ingest and of the fill.
const BATCH_CONNECTIONS: usize = 2;
/// Connections of the second batch ingest run: more requests for each group commit.
const WIDE_BATCH_CONNECTIONS: usize = 8;
/// Herald's batch events/s must be at least this share of the raw COPY rows/s.
const COPY_TARGET: f64 = 0.50;
/// The p99 query latency the project aims for on 1,000,000 events.
const TARGET_QUERY_P99: Duration = Duration::from_millis(20);
/// Measured requests per query pattern.
const QUERIES: usize = 500;
/// Events per page asked for.
const PAGE: usize = 100;
/// Longest wait for herald to go idle between phases.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Sizes and durations of the scenario.
struct Plan {
    copy_rows: u64,
    fill_events: u64,
    warmup: Duration,
    window: Duration,
    batch_window: Duration,
    fill_limit: Duration,
}

impl Plan {
    fn new(options: &Options) -> Self {
        if options.quick {
            Plan {
                copy_rows: 20_000,
                fill_events: 200_000,
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(3),
                batch_window: Duration::from_secs(3),
                fill_limit: Duration::from_secs(25),
            }
        } else {
            Plan {
                copy_rows: 100_000,
                fill_events: 1_000_000,
                warmup: Duration::from_secs(2),
                window: Duration::from_secs(10),
                batch_window: Duration::from_secs(10),
                fill_limit: Duration::from_secs(180),
            }
        }
    }
}

pub async fn run(options: &Options) -> Result<String> {
    let plan = Plan::new(options);
    progress!(
        "postgres: raw COPY of {} rows, publish {} connections {:?}, batch {}×{{{},{}}} {:?}, fill to {}, {} queries per pattern",
        thousands(plan.copy_rows),
        options.connections,
        plan.window,
        BATCH_SIZE,
        BATCH_CONNECTIONS,
        WIDE_BATCH_CONNECTIONS,
        plan.batch_window,
        thousands(plan.fill_events),
        QUERIES
    );
    let pg = tokio::task::spawn_blocking(|| TestPostgres::local(&[]))
        .await?
        .context("starting a throwaway PostgreSQL server (initdb + pg_ctl)")?;
    let measured = measure(options, &plan, &pg).await;
    // Stopping the server (`pg_ctl stop`) blocks.
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    let measured = measured?;
    Ok(render(options, &plan, &measured))
}

/// Everything the scenario measured.
struct Measured {
    copy: CopyResult,
    copy_indexed: CopyResult,
    publish: LoadResult,
    batch: LoadResult,
    /// The batch ingest over [`WIDE_BATCH_CONNECTIONS`].
    batch_wide: LoadResult,
    fill: FillResult,
    /// PostgreSQL's CPU in cores during publish, batch, wide batch and fill (warm-ups
    /// included).
    postgres_cores: [Option<f64>; 4],
    stored: u64,
    database_bytes: u64,
    queries: Vec<(&'static str, &'static str, QueryResult)>,
}

async fn measure(options: &Options, plan: &Plan, pg: &TestPostgres) -> Result<Measured> {
    // 1. The raw ceiling, then the same with herald's secondary indexes.
    let copy = copy_ceiling(pg, plan.copy_rows, false).await?;
    let copy_indexed = copy_ceiling(pg, plan.copy_rows, true).await?;
    for (label, result) in [("", &copy), (" with herald's indexes", &copy_indexed)] {
        progress!(
            "postgres: raw COPY{label}: {} rows in {:.2} s: {:.0} rows/s",
            thousands(result.rows),
            result.elapsed.as_secs_f64(),
            result.rows_per_second()
        );
    }

    // 2. Herald on its own database.
    let url = pg.create_database().await?;
    let herald = ServerProcess::herald_on(&options.herald_bin, &options.data_parent, &url).await?;
    let (client, driver) = connect(&url).await?;

    super::settle(&[&herald], SETTLE_LIMIT).await;
    let postmaster = postmaster_of(&client).await;
    let (publish, publish_pg) = with_postgres_cpu(
        postmaster,
        closed_loop_publish(
            &herald,
            options.connections,
            plan.warmup,
            plan.window,
            Arc::new(workload::body_pool(1024)),
        ),
    )
    .await?;
    progress!(
        "postgres: herald publish: {:.0} req/s, p50 {}, p99 {}, errors {}{}",
        publish.requests_per_second(),
        ms_f(publish.latencies.quantile(0.5) as f64),
        ms_f(publish.latencies.quantile(0.99) as f64),
        publish.errors(),
        first_error(&publish)
    );

    let mut batches = Vec::new();
    for connections in [BATCH_CONNECTIONS, WIDE_BATCH_CONNECTIONS] {
        super::settle(&[&herald], SETTLE_LIMIT).await;
        let (batch, batch_pg) = with_postgres_cpu(
            postmaster,
            closed_loop(
                &herald,
                BATCH,
                connections,
                plan.warmup,
                plan.batch_window,
                Arc::new(fill_batches(4)),
            ),
        )
        .await?;
        progress!(
            "postgres: herald batch {BATCH_SIZE} × {connections}: {:.0} events/s, p50 {}, errors {}{}",
            batch.requests_per_second() * BATCH_SIZE as f64,
            ms_f(batch.latencies.quantile(0.5) as f64),
            batch.errors(),
            first_error(&batch)
        );
        batches.push((batch, batch_pg));
    }
    let (batch_wide, batch_wide_pg) = batches.pop().expect("two batch runs");
    let (batch, batch_pg) = batches.pop().expect("two batch runs");

    // 3. Fill, then query.
    let before_fill = count_events(&client).await?;
    let (fill, fill_pg) = with_postgres_cpu(postmaster, fill(&herald, plan, before_fill)).await?;
    let waited = super::settle(&[&herald], Duration::from_secs(30)).await;
    let stored = count_events(&client).await?;
    let database_bytes: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    progress!(
        "postgres: {} events stored ({} in the database), herald idle after {:.1} s",
        thousands(stored),
        mib(database_bytes as u64),
        waited.as_secs_f64()
    );
    drop(client);
    let _ = driver.await;

    let mut queries = Vec::new();
    let mut connection = Connection::open(herald.addr).await?;
    for pattern in workload::query_patterns() {
        let path = format!(
            "/api/events?subject={}&limit={PAGE}",
            workload::encode_query_value(pattern.pattern)
        );
        let mut result = query_series(&mut connection, path, None, QUERIES).await;
        if result.note.is_none() {
            result.note = check_page(&result, pattern.pattern);
        }
        progress!(
            "postgres: query {}: p50 {}, p99 {}, {} errors",
            pattern.pattern,
            ms(result.latencies.quantile(0.5)),
            ms(result.latencies.quantile(0.99)),
            result.errors()
        );
        queries.push((pattern.pattern, pattern.description, result));
    }
    drop(connection);
    herald.stop().await?;
    Ok(Measured {
        copy,
        copy_indexed,
        publish,
        batch,
        batch_wide,
        fill,
        postgres_cores: [publish_pg, batch_pg, batch_wide_pg, fill_pg],
        stored,
        database_bytes: database_bytes.max(0) as u64,
        queries,
    })
}

async fn connect(url: &str) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

/// The PostgreSQL server's main process: the parent of this connection's backend.
async fn postmaster_of(client: &Client) -> Option<u32> {
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .ok()?
        .get(0);
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds used so far by the PostgreSQL server `postmaster` and its live children
/// (backends, WAL writer, checkpointer...); 0 when unknown.
fn postgres_cpu_seconds(postmaster: Option<u32>) -> f64 {
    let Some(postmaster) = postmaster else {
        return 0.0;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let after_name = stat.rsplit_once(')')?.1.to_owned();
                after_name.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if pid == postmaster || parent == Some(postmaster) {
            if let Ok(sample) = ProcSample::of(&pid.to_string()) {
                total += sample.cpu_seconds;
            }
        }
    }
    total
}

/// Measures PostgreSQL's CPU, in cores, over `work`.
async fn with_postgres_cpu<T>(
    postmaster: Option<u32>,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, Option<f64>)> {
    let (before, started) = (postgres_cpu_seconds(postmaster), Instant::now());
    let value = work.await?;
    let cores = (postgres_cpu_seconds(postmaster) - before) / started.elapsed().as_secs_f64();
    Ok((value, postmaster.map(|_| cores.max(0.0))))
}

async fn count_events(client: &Client) -> Result<u64> {
    let count: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .context("counting herald's events")?
        .get(0);
    Ok(count.max(0) as u64)
}

fn first_error(result: &LoadResult) -> String {
    result
        .first_error
        .as_ref()
        .map(|e| format!(" (first: {e})"))
        .unwrap_or_default()
}

/// The `{subject, payload}` of a publish body.
#[derive(Deserialize)]
struct PublishParts<'a> {
    subject: String,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
}

/// `distinct` batch bodies `{"events":[...]}` of [`BATCH_SIZE`] fill events each (so
/// each holds one event on the rare subject).
fn fill_batches(distinct: usize) -> Vec<Bytes> {
    (0..distinct)
        .map(|b| {
            workload::batch_body(
                (0..BATCH_SIZE).map(|i| workload::fill_body((b * BATCH_SIZE + i) as u64)),
            )
        })
        .collect()
}

/// What the raw COPY ceiling did.
struct CopyResult {
    rows: u64,
    elapsed: Duration,
    version: String,
    synchronous_commit: String,
    fsync: String,
    mean_payload: usize,
    table_bytes: u64,
    postgres_cores: Option<f64>,
}

impl CopyResult {
    fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

const CEILING_TABLE: &str = r#"
    SET synchronous_commit = on;
    CREATE TABLE bench_events (
        seq            BIGINT PRIMARY KEY,
        id             UUID   NOT NULL,
        subject        TEXT   COLLATE "C" NOT NULL,
        correlation_id UUID   NOT NULL,
        ts             BIGINT NOT NULL,
        hub_id         TEXT   NOT NULL,
        service        TEXT,
        "user"         TEXT,
        payload        TEXT   NOT NULL
    );
"#;

/// The secondary indexes of herald's `events` table, for the second ceiling run.
const HERALD_INDEXES: &str = r#"
    ALTER TABLE bench_events ADD UNIQUE (id);
    CREATE INDEX ON bench_events (subject, seq);
    CREATE INDEX ON bench_events (correlation_id, seq);
    CREATE INDEX ON bench_events (ts, seq);
"#;

/// Binary COPY of `rows` fill events into a fresh table (with herald's secondary
/// indexes when `herald_indexes`), 1,000 per transaction.
async fn copy_ceiling(pg: &TestPostgres, rows: u64, herald_indexes: bool) -> Result<CopyResult> {
    let url = pg.create_database().await?;
    let (mut client, driver) = connect(&url).await?;
    client.batch_execute(CEILING_TABLE).await?;
    if herald_indexes {
        client.batch_execute(HERALD_INDEXES).await?;
    }
    let show = |name: &'static str| {
        let client = &client;
        async move {
            let value: String = client.query_one(&format!("SHOW {name}"), &[]).await?.get(0);
            Ok::<_, anyhow::Error>(value)
        }
    };
    let version = show("server_version").await?;
    let synchronous_commit = show("synchronous_commit").await?;
    let fsync = show("fsync").await?;
    // The same (subject, payload) rows as the fill, formatted before the clock starts.
    let pool: Vec<(String, String)> = workload::fill_pool()
        .iter()
        .map(|body| {
            let parts: PublishParts = serde_json::from_slice(body)?;
            Ok((parts.subject, parts.payload.get().to_owned()))
        })
        .collect::<Result<_>>()?;
    let mean_payload = pool.iter().map(|(_, p)| p.len()).sum::<usize>() / pool.len();
    let types = [
        Type::INT8,
        Type::UUID,
        Type::TEXT,
        Type::UUID,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
    ];
    let hub_id = "local-hub";
    let service = Some("herald-bench");
    let user: Option<&str> = None;
    let postmaster = postmaster_of(&client).await;
    let cpu_before = postgres_cpu_seconds(postmaster);
    let started = Instant::now();
    let mut seq = 0u64;
    while seq < rows {
        let transaction = client.transaction().await?;
        let sink = transaction
            .copy_in(
                r#"COPY bench_events (seq, id, subject, correlation_id, ts, hub_id, service, "user", payload) FROM STDIN (FORMAT binary)"#,
            )
            .await?;
        let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
        let end = (seq + BATCH_SIZE as u64).min(rows);
        while seq < end {
            let (subject, payload) = &pool[(seq % pool.len() as u64) as usize];
            let row_seq = seq as i64 + 1;
            let id = Uuid::now_v7();
            let ts = chrono::Utc::now().timestamp_micros();
            writer
                .as_mut()
                .write(&[
                    &row_seq, &id, subject, &id, &ts, &hub_id, &service, &user, payload,
                ])
                .await?;
            seq += 1;
        }
        writer.finish().await?;
        transaction.commit().await?;
    }
    let elapsed = started.elapsed();
    let postgres_cores =
        postmaster.map(|_| (postgres_cpu_seconds(postmaster) - cpu_before) / elapsed.as_secs_f64());
    let copied: i64 = client
        .query_one("SELECT count(*) FROM bench_events", &[])
        .await?
        .get(0);
    let table_bytes: i64 = client
        .query_one("SELECT pg_total_relation_size('bench_events')", &[])
        .await?
        .get(0);
    drop(client);
    let _ = driver.await;
    Ok(CopyResult {
        rows: copied.max(0) as u64,
        elapsed,
        version,
        synchronous_commit,
        fsync,
        mean_payload,
        table_bytes: table_bytes.max(0) as u64,
        postgres_cores,
    })
}

/// Fills herald's store from `already` to the plan's event count with 1,000-event
/// batches over [`BATCH_CONNECTIONS`] connections, within the plan's time limit.
async fn fill(herald: &ServerProcess, plan: &Plan, already: u64) -> Result<FillResult> {
    let events = plan.fill_events.saturating_sub(already);
    progress!(
        "postgres: fill from {} to {} events: {} batches of {BATCH_SIZE}",
        thousands(already),
        thousands(plan.fill_events),
        thousands(events.div_ceil(BATCH_SIZE as u64))
    );
    batch_fill(
        herald,
        "postgres",
        Arc::new(fill_batches(8)),
        BATCH_SIZE,
        events,
        BATCH_CONNECTIONS,
        plan.fill_limit,
    )
    .await
}

#[derive(Deserialize)]
struct PageEvent {
    seq: u64,
    subject: String,
}

/// Checks the first page: a full page of events matching `pattern`, in ascending seq
/// order. Returns a note when it is not so.
fn check_page(result: &QueryResult, pattern: &str) -> Option<String> {
    let body = result.first_page.as_ref()?;
    let events: Vec<PageEvent> = match serde_json::from_slice(body) {
        Ok(events) => events,
        Err(error) => return Some(format!("answer is not an array of events: {error}")),
    };
    if events.len() != PAGE {
        return Some(format!("first page has {} events", events.len()));
    }
    if let Some(event) = events
        .iter()
        .find(|e| !workload::pattern_matches(pattern, &e.subject))
    {
        return Some(format!("event on {} does not match", event.subject));
    }
    if events.windows(2).any(|w| w[0].seq >= w[1].seq) {
        return Some("events are not in ascending seq order".into());
    }
    None
}

/// `0.42 cores`, or `—` when unknown.
fn cores(value: Option<f64>) -> String {
    value.map_or_else(|| "—".into(), |c| format!("{c:.2} cores"))
}

fn render(options: &Options, plan: &Plan, m: &Measured) -> String {
    let copy_rate = m.copy.rows_per_second();
    let batch_rate = m.batch.requests_per_second() * BATCH_SIZE as f64;
    let wide_rate = m.batch_wide.requests_per_second() * BATCH_SIZE as f64;
    let fill_rate = m.fill.stored as f64 / m.fill.elapsed.as_secs_f64().max(1e-9);
    let mut out = format!(
        "## PostgreSQL store: herald vs. raw COPY\n\n\
         A throwaway PostgreSQL {} started by the tool (`initdb` into a temporary directory, \
         loopback TCP, default settings, fsync = {}, synchronous_commit = {}), on the same \
         cores as herald and the load generator. Herald runs `serve --data postgres://…` on a \
         fresh database.\n\n\
         - **Raw COPY (ceiling)**: a Rust client (tokio-postgres `BinaryCopyInWriter`) writes \
         {} rows with the columns of herald's `events` table (seq, id, subject, correlation_id, \
         ts, hub_id, service, user, payload; payload ~{} bytes, primary key on seq, no other \
         index) into a fresh table of a fresh database, {} rows per transaction, each commit \
         synchronous. Table size after: {}. Then the same into another fresh database whose \
         table also has herald's secondary indexes (unique id; (subject, seq), \
         (correlation_id, seq), (ts, seq)): {} after; informative, the target is against the \
         first.\n\
         - **Publish**: `POST /api/events`, {} keep-alive connections, closed loop, {} s after \
         {} s of warm-up.\n\
         - **Batch**: `POST /api/events:batch` with {} events per request over {} connections, \
         closed loop, {} s after {} s of warm-up; events/s counts events in 201 answers \
         (durable). Then the same over {} connections: the hub's committer gathers the \
         requests waiting into one transaction, so more clients mean bigger group commits.\n\
         - **Fill**: batches as above (2 connections) until the store holds {} events \
         (limit {} s; skipped when the runs above stored that many).\n\n",
        m.copy.version,
        m.copy.fsync,
        m.copy.synchronous_commit,
        thousands(m.copy.rows),
        m.copy.mean_payload,
        thousands(BATCH_SIZE as u64),
        mib(m.copy.table_bytes),
        mib(m.copy_indexed.table_bytes),
        options.connections,
        plan.window.as_secs_f64(),
        plan.warmup.as_secs_f64(),
        thousands(BATCH_SIZE as u64),
        BATCH_CONNECTIONS,
        plan.batch_window.as_secs_f64(),
        plan.warmup.as_secs_f64(),
        WIDE_BATCH_CONNECTIONS,
        thousands(plan.fill_events),
        plan.fill_limit.as_secs(),
    );
    let mut ingest = Table::new(&[
        "Writer",
        "Rate",
        "vs. raw COPY",
        "p50",
        "p99",
        "errors",
        "herald CPU",
        "PostgreSQL CPU",
    ]);
    ingest.row(vec![
        format!(
            "raw binary COPY, {} rows / transaction (ceiling)",
            thousands(BATCH_SIZE as u64)
        ),
        format!("**{copy_rate:.0} rows/s**"),
        "100%".into(),
        "—".into(),
        "—".into(),
        "0".into(),
        "—".into(),
        cores(m.copy.postgres_cores),
    ]);
    let indexed_rate = m.copy_indexed.rows_per_second();
    ingest.row(vec![
        "raw binary COPY with herald's secondary indexes".into(),
        format!("{indexed_rate:.0} rows/s"),
        percent(indexed_rate / copy_rate.max(1e-9)),
        "—".into(),
        "—".into(),
        "0".into(),
        "—".into(),
        cores(m.copy_indexed.postgres_cores),
    ]);
    for (label, result, per_request, postgres) in [
        (
            format!(
                "herald `POST /api/events`, {} connections",
                options.connections
            ),
            &m.publish,
            1.0,
            m.postgres_cores[0],
        ),
        (
            format!(
                "herald `POST /api/events:batch`, {} × {} connections",
                thousands(BATCH_SIZE as u64),
                BATCH_CONNECTIONS
            ),
            &m.batch,
            BATCH_SIZE as f64,
            m.postgres_cores[1],
        ),
        (
            format!(
                "herald `POST /api/events:batch`, {} × {} connections",
                thousands(BATCH_SIZE as u64),
                WIDE_BATCH_CONNECTIONS
            ),
            &m.batch_wide,
            BATCH_SIZE as f64,
            m.postgres_cores[2],
        ),
    ] {
        let rate = result.requests_per_second() * per_request;
        ingest.row(vec![
            label,
            if per_request > 1.0 {
                format!(
                    "**{rate:.0} events/s** ({:.1} req/s)",
                    result.requests_per_second()
                )
            } else {
                format!("**{rate:.0} req/s**")
            },
            percent(rate / copy_rate.max(1e-9)),
            ms_f(result.latencies.quantile(0.5) as f64),
            ms_f(result.latencies.quantile(0.99) as f64),
            describe_errors(&result.bad_statuses, result.transport_errors),
            format!("{:.2} cores", result.server_cores),
            cores(postgres),
        ]);
    }
    if m.fill.stored == 0 && m.fill.first_error.is_none() {
        ingest.row(vec![
            format!(
                "herald fill: not needed (the runs above stored {} events)",
                thousands(m.stored)
            ),
            "—".into(),
            "—".into(),
            "—".into(),
            "—".into(),
            describe_errors(&m.fill.bad_statuses, m.fill.transport_errors),
            "—".into(),
            "—".into(),
        ]);
    } else {
        ingest.row(vec![
            format!(
                "herald fill with batches ({} events in {:.1} s)",
                thousands(m.fill.stored),
                m.fill.elapsed.as_secs_f64()
            ),
            format!("{fill_rate:.0} events/s"),
            percent(fill_rate / copy_rate.max(1e-9)),
            "—".into(),
            "—".into(),
            describe_errors(&m.fill.bad_statuses, m.fill.transport_errors),
            "—".into(),
            cores(m.postgres_cores[3]),
        ]);
    }
    out.push_str(&ingest.render());

    out.push_str(&format!(
        "\n### Queries on {} events\n\n`GET /api/events?subject=<pattern>&limit={PAGE}` from \
         the start of the log, {} sequential requests per pattern on one keep-alive connection \
         after {} unmeasured ones. Herald's database then: {}{}.\n\n",
        thousands(m.stored),
        QUERIES,
        super::storage::WARMUP_QUERIES,
        mib(m.database_bytes),
        if m.fill.stopped_short {
            format!(
                " (the fill stopped short after {} s)",
                plan.fill_limit.as_secs()
            )
        } else {
            String::new()
        }
    ));
    let mut queries = Table::new(&[
        "Pattern",
        "Kind",
        "p50",
        "p99",
        "max",
        "mean bytes",
        "errors",
        "note",
    ]);
    for (pattern, description, result) in &m.queries {
        queries.row(vec![
            format!("`{pattern}`"),
            (*description).into(),
            ms(result.latencies.quantile(0.5)),
            ms(result.latencies.quantile(0.99)),
            ms(result.latencies.max()),
            thousands(result.mean_bytes),
            describe_errors(&result.bad_statuses, result.transport_errors),
            result.note.clone().unwrap_or_else(|| "—".into()),
        ]);
    }
    out.push_str(&queries.render());

    let worst_p99 = m
        .queries
        .iter()
        .map(|(_, _, r)| r.latencies.quantile(0.99))
        .max()
        .unwrap_or(0);
    let query_errors: u64 = m.queries.iter().map(|(_, _, r)| r.errors()).sum();
    let query_notes = m
        .queries
        .iter()
        .filter(|(_, _, r)| r.note.is_some())
        .count();
    let herald_errors = m.publish.errors()
        + m.batch.errors()
        + m.batch_wide.errors()
        + m.fill.bad_statuses.values().sum::<u64>()
        + m.fill.transport_errors;
    let mut checks = Table::new(&["Check", "Value", "Target", "Result"]);
    for (connections, rate) in [
        (BATCH_CONNECTIONS, batch_rate),
        (WIDE_BATCH_CONNECTIONS, wide_rate),
    ] {
        let ratio = rate / copy_rate.max(1e-9);
        checks.row(vec![
            format!("herald batch, {connections} connections / raw COPY"),
            format!(
                "{} ({:.0} / {:.0} events/s)",
                percent(ratio),
                rate,
                copy_rate
            ),
            format!("≥ {}", percent(COPY_TARGET)),
            verdict(ratio >= COPY_TARGET).into(),
        ]);
    }
    checks.row(vec![
        format!("herald batch, {BATCH_CONNECTIONS} connections / raw COPY with herald's indexes"),
        format!(
            "{} ({:.0} / {:.0} events/s)",
            percent(batch_rate / indexed_rate.max(1e-9)),
            batch_rate,
            indexed_rate
        ),
        "(informative)".into(),
        "—".into(),
    ]);
    let full_size = m.stored >= 1_000_000;
    checks.row(vec![
        format!("worst pattern query p99 on {} events", thousands(m.stored)),
        ms(worst_p99),
        format!("≤ {} ms on 1,000,000 events", TARGET_QUERY_P99.as_millis()),
        if full_size {
            verdict(worst_p99 <= TARGET_QUERY_P99.as_nanos() as u64).into()
        } else {
            format!(
                "{} (smaller store: indicative only)",
                verdict(worst_p99 <= TARGET_QUERY_P99.as_nanos() as u64)
            )
        },
    ]);
    checks.row(vec![
        "herald errors (publish, batch, fill, queries)".into(),
        thousands(herald_errors + query_errors),
        "0".into(),
        verdict(herald_errors + query_errors == 0).into(),
    ]);
    checks.row(vec![
        "first pages: 100 matching events in seq order".into(),
        format!(
            "{} of {} patterns",
            m.queries.len() - query_notes,
            m.queries.len()
        ),
        "all".into(),
        verdict(query_notes == 0).into(),
    ]);
    out.push('\n');
    out.push_str(&checks.render());
    out.push_str(
        "\nCPU is in cores (of the machine's, shared by all): herald's process over the \
         measured window; PostgreSQL's postmaster and its live children (backends, WAL writer, \
         checkpointer...) over the COPY, or over warm-up + window for herald's runs.\n",
    );
    for (what, error) in [
        ("publish", m.publish.first_error.as_ref()),
        ("batch", m.batch.first_error.as_ref()),
        ("wide batch", m.batch_wide.first_error.as_ref()),
        ("fill", m.fill.first_error.as_ref()),
    ] {
        if let Some(error) = error {
            out.push_str(&format!("\nFirst herald {what} error: `{error}`\n"));
        }
    }
    out
}
