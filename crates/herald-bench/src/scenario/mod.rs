//! The benchmark scenarios and the closed-loop load they share.
//!
//! - [`throughput`]: (a) publish throughput vs. the ceiling;
//! - [`latency`]: (b) publish → WebSocket receipt latency at a fixed rate;
//! - [`storage`]: (c) query latency on a filled store and (d) herald's RSS;
//! - [`interop`]: `bus.publish` over JSON-RPC vs. REST, batch ingest, and a local
//!   NATS JetStream as the ceiling of durable ingest;
//! - [`postgres`]: herald on a throwaway PostgreSQL vs. a raw binary `COPY` ceiling;
//! - [`relay`]: herald's NATS JetStream relay vs. a raw JetStream publisher, and its lag
//!   under a steady publish rate;
//! - [`fanout`]: (e) many WebSocket subscribers: RSS per idle stream, delivery latency;
//! - [`catchup`]: (f) one client reading the whole store from the start;
//! - [`consumer`]: durable pull consumers (fetch + ack) vs. JetStream pull consumers,
//!   redelivery delays on NAK, and RSS with a consumer far behind.

pub mod auth;
pub mod catchup;
pub mod consumer;
pub mod fanout;
pub mod interop;
pub mod isolation;
pub mod latency;
pub mod postgres;
pub mod relay;
pub mod storage;
pub mod throughput;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use tokio::time::sleep_until;

use crate::client::Connection;
use crate::herald_metrics;
use crate::process::{ProcSample, ServerKind, ServerProcess};
use crate::progress;
use crate::stats::{thousands, Samples};

/// Settings of a run, after `--quick` and the flags are applied.
#[derive(Debug, Clone)]
pub struct Options {
    pub herald_bin: PathBuf,
    pub data_parent: PathBuf,
    pub quick: bool,
    /// (a) also measures a herald validating every event against an event schema.
    pub schema: bool,
    /// Concurrent connections of (a) and of the store fill.
    pub connections: usize,
    /// Runs of (a) per server.
    pub rounds: usize,
    /// Unmeasured load before each run of (a).
    pub warmup: Duration,
    /// Measured window of each run of (a).
    pub duration: Duration,
    /// Publish rate of (b), events per second.
    pub rate: u64,
    /// Subscribers of (e).
    pub fanout_streams: usize,
    /// Deliveries per second of (e), over all subscribers.
    pub fanout_deliveries: u64,
    pub latency_warmup: Duration,
    pub latency_duration: Duration,
    /// Publisher connections of (b).
    pub publishers: usize,
    /// Events stored before (c).
    pub fill_events: u64,
    /// Events per fill request: 1 through `POST /api/events`, more through the batch
    /// endpoint.
    pub fill_batch: u64,
    /// Requests per query pattern of (c).
    pub queries: usize,
    /// Events fetched and acked per round of `consumer`.
    pub consumer_events: u64,
    /// Events pending for `consumer`'s RSS part (0: skipped).
    pub consumer_pending: u64,
}

/// Most reconnections one load task makes before giving up.
const MAX_RECONNECTS: usize = 50;

/// What a closed-loop task POSTs to, and what counts as a success.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub path: &'static str,
    pub success: Success,
}

/// How a closed-loop task decides that an answer is a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Success {
    /// This HTTP status.
    Status(u16),
    /// HTTP 200 with a JSON-RPC `result` member (an `error` member is a failure).
    RpcResult,
}

impl Target {
    /// `POST /api/events`, success = 201.
    pub const PUBLISH: Target = Target {
        path: "/api/events",
        success: Success::Status(201),
    };

    fn accepts(&self, status: u16, body: &[u8]) -> bool {
        match self.success {
            Success::Status(expected) => status == expected,
            Success::RpcResult => status == 200 && rpc_has_result(body),
        }
    }
}

/// Whether a JSON-RPC response object has a `result` member.
fn rpc_has_result(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Option<serde::de::IgnoredAny>,
    }
    matches!(
        serde_json::from_slice::<Answer>(body),
        Ok(Answer { result: Some(_) })
    )
}

/// The outcome of a closed-loop run against one server.
#[derive(Debug)]
pub struct LoadResult {
    /// Successful answers (201 for `POST /api/events`) completed inside the measured
    /// window.
    pub ok: u64,
    /// Every successful answer, warm-up included (requests herald stored).
    pub ok_including_warmup: u64,
    /// Other statuses inside the window, by status.
    pub bad_statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection error, timeout) inside the window.
    pub transport_errors: u64,
    /// The first unexpected answer or error, for the report.
    pub first_error: Option<String>,
    /// Latency of each 201 inside the window, in nanoseconds.
    pub latencies: Samples,
    pub window: Duration,
    /// Server CPU over the window, in cores (1.0 = one core busy).
    pub server_cores: f64,
    /// This process's CPU over the window, in cores.
    pub generator_cores: f64,
    /// Storage bytes the server wrote during the window.
    pub server_written: Option<u64>,
    /// Events per group commit over the window (herald's /metrics, when it has them).
    pub events_per_commit: Option<f64>,
}

impl LoadResult {
    pub fn errors(&self) -> u64 {
        self.bad_statuses.values().sum::<u64>() + self.transport_errors
    }

    pub fn requests_per_second(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    /// Server CPU time per successful request, in microseconds.
    pub fn server_cpu_us_per_request(&self) -> f64 {
        if self.ok == 0 {
            return 0.0;
        }
        self.server_cores * self.window.as_secs_f64() * 1e6 / self.ok as f64
    }
}

#[derive(Default)]
struct TaskTally {
    ok: u64,
    ok_including_warmup: u64,
    bad_statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
    latencies: Vec<u64>,
}

/// Runs `connections` closed-loop publishers (each sends its next request as soon as
/// the previous one is answered) for `warmup` + `window`, counting what completes
/// inside the window.
pub async fn closed_loop_publish(
    server: &ServerProcess,
    connections: usize,
    warmup: Duration,
    window: Duration,
    bodies: Arc<Vec<Bytes>>,
) -> Result<LoadResult> {
    closed_loop(server, Target::PUBLISH, connections, warmup, window, bodies).await
}

/// [`closed_loop_publish`] against any POST endpoint, with its own success test.
pub async fn closed_loop(
    server: &ServerProcess,
    target: Target,
    connections: usize,
    warmup: Duration,
    window: Duration,
    bodies: Arc<Vec<Bytes>>,
) -> Result<LoadResult> {
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + window;
    let addr = server.addr;
    let bearer = server.bearer.clone();

    let mut tasks = Vec::with_capacity(connections);
    for task_index in 0..connections {
        let bodies = bodies.clone();
        let bearer = bearer.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = TaskTally {
                latencies: Vec::with_capacity(1 << 16),
                ..TaskTally::default()
            };
            let mut connection = None;
            let mut reconnects = 0;
            let mut next_body = task_index * 7;
            loop {
                let sent = Instant::now();
                if sent >= window_end {
                    break;
                }
                let conn = match &mut connection {
                    Some(conn) => conn,
                    None => match Connection::open(addr).await {
                        Ok(conn) => connection.insert(conn.with_bearer(bearer.as_deref())),
                        Err(error) => {
                            reconnects += 1;
                            tally.transport_errors += 1;
                            tally.first_error.get_or_insert(format!("{error:#}"));
                            if reconnects > MAX_RECONNECTS {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let body = bodies[next_body % bodies.len()].clone();
                next_body += 1;
                let result = conn.post_json(target.path, body).await;
                let done = Instant::now();
                let measured = sent >= window_start && done <= window_end;
                match result {
                    Ok(response) if target.accepts(response.status, &response.body) => {
                        tally.ok_including_warmup += 1;
                        if measured {
                            tally.ok += 1;
                            tally.latencies.push((done - sent).as_nanos() as u64);
                        }
                    }
                    Ok(response) => {
                        if measured {
                            *tally.bad_statuses.entry(response.status).or_default() += 1;
                        }
                        tally.first_error.get_or_insert_with(|| {
                            format!(
                                "{}: {}",
                                response.status,
                                String::from_utf8_lossy(
                                    &response.body[..response.body.len().min(200)]
                                )
                            )
                        });
                    }
                    Err(error) => {
                        if measured {
                            tally.transport_errors += 1;
                        }
                        tally.first_error.get_or_insert(format!("{error:#}"));
                        connection = None;
                    }
                }
            }
            tally
        }));
    }

    let pid = server.pid.to_string();
    let is_herald = server.kind == ServerKind::Herald;
    sleep_until(window_start.into()).await;
    let server_before = ProcSample::of(&pid)?;
    let generator_before = ProcSample::of("self")?;
    let counters_before = match is_herald {
        true => herald_metrics::read(addr).await,
        false => None,
    };
    sleep_until(window_end.into()).await;
    let server_after = ProcSample::of(&pid)?;
    let generator_after = ProcSample::of("self")?;
    let counters_after = match is_herald {
        true => herald_metrics::read(addr).await,
        false => None,
    };

    let mut total = TaskTally::default();
    for task in tasks {
        let tally = task.await?;
        total.ok += tally.ok;
        total.ok_including_warmup += tally.ok_including_warmup;
        total.transport_errors += tally.transport_errors;
        for (status, count) in tally.bad_statuses {
            *total.bad_statuses.entry(status).or_default() += count;
        }
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
        total.latencies.extend(tally.latencies);
    }
    Ok(LoadResult {
        ok: total.ok,
        ok_including_warmup: total.ok_including_warmup,
        bad_statuses: total.bad_statuses,
        transport_errors: total.transport_errors,
        first_error: total.first_error,
        latencies: Samples::new(total.latencies),
        window,
        server_cores: server_after.cores_used_since(&server_before),
        generator_cores: generator_after.cores_used_since(&generator_before),
        server_written: server_after.written_since(&server_before),
        events_per_commit: counters_after
            .zip(counters_before)
            .and_then(|(after, before)| after.events_per_commit_since(&before)),
    })
}

/// Writes back dirty pages (`sync`), then waits (at most `limit`) until every server
/// has used less than 5% of a core over a quarter second — e.g. herald checkpointing
/// its WAL after a load run — so background work of one run, the kernel's writeback
/// included, does not eat into the next. Returns how long it waited.
pub async fn settle(servers: &[&ServerProcess], limit: Duration) -> Duration {
    let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
    settle_pids(&pids, limit).await
}

/// [`settle`] for any processes, by pid.
pub async fn settle_pids(pids: &[u32], limit: Duration) -> Duration {
    let started = Instant::now();
    let _ = tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(crate::report::flush_page_cache),
    )
    .await;
    let sample = |pid: &u32| ProcSample::of(&pid.to_string()).ok();
    while started.elapsed() < limit {
        let before: Vec<_> = pids.iter().map(sample).collect();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let busy = pids
            .iter()
            .zip(before)
            .any(|(pid, before)| match (before, sample(pid)) {
                (Some(before), Some(after)) => after.cores_used_since(&before) >= 0.05,
                _ => false,
            });
        if !busy {
            break;
        }
    }
    started.elapsed()
}

/// "none", or the errors by kind: `12 (503: 10, no answer: 2)`.
pub fn describe_errors(bad_statuses: &BTreeMap<u16, u64>, transport_errors: u64) -> String {
    let total = bad_statuses.values().sum::<u64>() + transport_errors;
    if total == 0 {
        return "0".into();
    }
    let mut kinds: Vec<String> = bad_statuses
        .iter()
        .map(|(status, count)| format!("{status}: {count}"))
        .collect();
    if transport_errors > 0 {
        kinds.push(format!("no answer: {transport_errors}"));
    }
    format!("{total} ({})", kinds.join(", "))
}

/// `POST /api/events:batch`, success = 201.
pub const BATCH: Target = Target {
    path: "/api/events:batch",
    success: Success::Status(201),
};

/// What a batch fill did.
#[derive(Debug)]
pub struct FillResult {
    /// Events in 201 answers.
    pub stored: u64,
    pub elapsed: Duration,
    pub bad_statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub first_error: Option<String>,
    /// The time limit (or too many errors) stopped it before every batch was sent.
    pub stopped_short: bool,
}

/// Stores `events` events (rounded up to whole batches) through
/// `POST /api/events:batch`: `connections` keep-alive connections send the bodies of
/// `pool` (each of `batch_size` events) in turn, as fast as they are answered, until
/// done or `limit` has passed. Progress lines are prefixed with `label`.
pub async fn batch_fill(
    herald: &ServerProcess,
    label: &'static str,
    pool: Arc<Vec<Bytes>>,
    batch_size: usize,
    events: u64,
    connections: usize,
    limit: Duration,
) -> Result<FillResult> {
    let batches = events.div_ceil(batch_size as u64);
    let next = Arc::new(AtomicU64::new(0));
    let stored = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (pool, next, stored, addr) = (pool.clone(), next.clone(), stored.clone(), herald.addr);
        tasks.push(tokio::spawn(async move {
            let mut bad_statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut transport_errors = 0u64;
            let mut first_error = None;
            let mut connection: Option<Connection> = None;
            let mut failures = 0;
            while Instant::now() < deadline && failures <= 50 {
                let conn = match &mut connection {
                    Some(conn) => conn,
                    None => match Connection::open(addr).await {
                        Ok(conn) => connection.insert(conn),
                        Err(error) => {
                            failures += 1;
                            transport_errors += 1;
                            first_error.get_or_insert(format!("{error:#}"));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= batches {
                    break;
                }
                let body = pool[(n % pool.len() as u64) as usize].clone();
                match conn.post_json(BATCH.path, body).await {
                    Ok(response) if response.status == 201 => {
                        stored.fetch_add(batch_size as u64, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        failures += 1;
                        *bad_statuses.entry(response.status).or_default() += 1;
                        first_error.get_or_insert_with(|| {
                            format!(
                                "{}: {}",
                                response.status,
                                String::from_utf8_lossy(
                                    &response.body[..response.body.len().min(200)]
                                )
                            )
                        });
                    }
                    Err(error) => {
                        failures += 1;
                        transport_errors += 1;
                        first_error.get_or_insert(format!("{error:#}"));
                        connection = None;
                    }
                }
            }
            (bad_statuses, transport_errors, first_error)
        }));
    }
    let mut last_report = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    while !tasks.iter().all(|t| t.is_finished()) {
        ticker.tick().await;
        if last_report.elapsed() >= Duration::from_secs(5) {
            let count = stored.load(Ordering::Relaxed);
            progress!(
                "{label}: fill {} / {} events, {:.0} events/s",
                thousands(count),
                thousands(batches * batch_size as u64),
                count as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let elapsed = started.elapsed();
    let mut result = FillResult {
        stored: stored.load(Ordering::Relaxed),
        elapsed,
        bad_statuses: BTreeMap::new(),
        transport_errors: 0,
        first_error: None,
        stopped_short: next.load(Ordering::Relaxed) < batches,
    };
    for task in tasks {
        let (bad_statuses, transport_errors, first_error) = task.await?;
        for (status, n) in bad_statuses {
            *result.bad_statuses.entry(status).or_default() += n;
        }
        result.transport_errors += transport_errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    progress!(
        "{label}: fill done: {} events in {:.1} s ({:.0} events/s){}",
        thousands(result.stored),
        elapsed.as_secs_f64(),
        result.stored as f64 / elapsed.as_secs_f64().max(1e-9),
        if result.stopped_short {
            " — stopped short"
        } else {
            ""
        }
    );
    Ok(result)
}
