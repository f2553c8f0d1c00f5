//! Scenarios (c) and (d): query latency on a filled store, and herald's memory.
//!
//! A fresh herald is started and its idle RSS read. The store is then filled through
//! `POST /api/events` with many connections (printing progress and sampling RSS at
//! 10/25/50/75/100% of the fill), and `GET /api/events?subject=<pattern>&limit=100` is
//! timed sequentially for several patterns, both from the start of the log and from a
//! random `after_seq`. The ceiling answers a fixed 100-event page: the floor of a query.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use serde::Deserialize;

use super::{describe_errors, Options};
use crate::client::Connection;
use crate::herald_metrics;
use crate::process::{ProcSample, ServerProcess};
use crate::progress;
use crate::report::Table;
use crate::stats::{mib, ms, thousands, verdict, Samples};
use crate::workload::{self, QueryPattern};

/// The p99 query latency the project aims for.
const TARGET_QUERY_P99: Duration = Duration::from_millis(10);
/// The idle RSS the project aims for (30 MB).
const TARGET_IDLE_RSS: u64 = 30_000_000;
/// Most RSS growth between 10% and 100% of the fill still counted as "flat".
const MAX_RSS_GROWTH: u64 = 5 * 1024 * 1024;
/// The longest the fill may take before it stops short.
const FILL_TIME_LIMIT: Duration = Duration::from_secs(600);
/// The longest one series of queries may take.
const SERIES_TIME_LIMIT: Duration = Duration::from_secs(120);
/// Fill fractions at which herald's RSS is sampled.
const CHECKPOINTS: [f64; 5] = [0.10, 0.25, 0.50, 0.75, 1.0];
/// Events per page asked for.
const PAGE: usize = 100;

pub async fn run(options: &Options, with_queries: bool) -> Result<String> {
    progress!(
        "({}) storage: fill {} events over {} connections{}",
        if with_queries { "c+d" } else { "d" },
        thousands(options.fill_events),
        options.connections,
        if with_queries {
            format!(", then {} queries per series", options.queries)
        } else {
            String::new()
        }
    );
    let ceiling = ServerProcess::ceiling(&options.data_parent).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ceiling_idle = ceiling.sample()?;
    let ceiling_queries = if with_queries {
        let mut connection = Connection::open(ceiling.addr).await?;
        Some(
            query_series(
                &mut connection,
                "/api/events?limit=100".to_string(),
                None,
                options.queries,
            )
            .await,
        )
    } else {
        None
    };
    ceiling.stop().await?;

    let herald = ServerProcess::herald(&options.herald_bin, &options.data_parent).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = herald.sample()?;
    progress!("herald idle RSS: {}", mib(idle.rss_bytes));
    let mut fill = fill(&herald, options).await?;
    fill.busy_after = super::settle(&[&herald], Duration::from_secs(60)).await;
    progress!(
        "herald went idle {:.1} s after the fill",
        fill.busy_after.as_secs_f64()
    );
    let after_fill = herald.sample()?;
    let (store_bytes, store_files) = herald.data_summary();

    let mut series = Vec::new();
    if with_queries {
        let mut connection = Connection::open(herald.addr).await?;
        let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
        for pattern in workload::query_patterns() {
            let matches = workload::count_fill_matches(pattern.pattern, options.fill_events);
            let path = format!(
                "/api/events?subject={}&limit={PAGE}",
                workload::encode_query_value(pattern.pattern)
            );
            for from_random_seq in [false, true] {
                let after_seq = from_random_seq.then(|| {
                    let stored = fill.stored.max(1);
                    (0..options.queries + WARMUP_QUERIES)
                        .map(|_| random.next() % stored)
                        .collect::<Vec<u64>>()
                });
                let mut result =
                    query_series(&mut connection, path.clone(), after_seq, options.queries).await;
                if !from_random_seq && result.note.is_none() {
                    result.note = validate_first_page(&result, &pattern, matches);
                }
                progress!(
                    "(c) {} {}: p50 {}, p99 {}, {} errors",
                    pattern.pattern,
                    if from_random_seq {
                        "random after_seq"
                    } else {
                        "from start"
                    },
                    ms(result.latencies.quantile(0.5)),
                    ms(result.latencies.quantile(0.99)),
                    result.errors()
                );
                series.push((
                    pattern.pattern,
                    pattern.description,
                    matches,
                    from_random_seq,
                    result,
                ));
            }
        }
    }
    let after_queries = herald.sample()?;
    herald.stop().await?;

    let mut out = String::new();
    if with_queries {
        out.push_str(&render_queries(
            options,
            &fill,
            (store_bytes, &store_files),
            ceiling_queries.as_ref(),
            &series,
        ));
        out.push('\n');
    }
    out.push_str(&render_memory(
        options,
        &ceiling_idle,
        &idle,
        &fill,
        &after_fill,
        with_queries.then_some(&after_queries),
    ));
    Ok(out)
}

/// Unmeasured requests before each series.
pub(super) const WARMUP_QUERIES: usize = 20;

/// A tiny deterministic PRNG for random `after_seq` values.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What the fill did.
struct FillResult {
    stored: u64,
    elapsed: Duration,
    bad_statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
    /// (events stored, herald's sample) at each checkpoint reached.
    checkpoints: Vec<(u64, ProcSample)>,
    server_cores: f64,
    written: Option<u64>,
    /// Events per group commit (herald's /metrics, when it has them).
    events_per_commit: Option<f64>,
    /// How long herald kept using CPU after the last publish was answered.
    busy_after: Duration,
}

#[derive(Default)]
struct FillTally {
    bad_statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
}

/// A batch of the fill's events `first..first + count`, from the pool's bodies.
fn batch_body(pool: &[Bytes], first: u64, count: u64) -> Bytes {
    workload::batch_body((first..first + count).map(|n| &pool[(n % workload::RARE_EVERY) as usize]))
}

async fn fill(herald: &ServerProcess, options: &Options) -> Result<FillResult> {
    let target = options.fill_events;
    let pool = Arc::new(workload::fill_pool());
    let batch = options.fill_batch.max(1);
    let next = Arc::new(AtomicU64::new(0));
    let stored = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + FILL_TIME_LIMIT;
    let before = herald.sample()?;
    let counters_before = herald_metrics::read(herald.addr).await;

    let mut tasks = Vec::new();
    for _ in 0..options.connections {
        let (pool, next, stored, addr) = (pool.clone(), next.clone(), stored.clone(), herald.addr);
        tasks.push(tokio::spawn(async move {
            let mut tally = FillTally::default();
            let mut connection: Option<Connection> = None;
            let mut reconnects = 0;
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let conn = match &mut connection {
                    Some(conn) => conn,
                    None => match Connection::open(addr).await {
                        Ok(conn) => connection.insert(conn),
                        Err(error) => {
                            reconnects += 1;
                            tally.transport_errors += 1;
                            tally.first_error.get_or_insert(format!("{error:#}"));
                            if reconnects > 50 {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let n = next.fetch_add(batch, Ordering::Relaxed);
                if n >= target {
                    break;
                }
                let count = batch.min(target - n);
                let (path, body) = if batch == 1 {
                    (
                        "/api/events",
                        pool[(n % workload::RARE_EVERY) as usize].clone(),
                    )
                } else {
                    ("/api/events:batch", batch_body(&pool, n, count))
                };
                match conn.post_json(path, body).await {
                    Ok(response) if response.status == 201 || response.status == 200 => {
                        stored.fetch_add(count, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        *tally.bad_statuses.entry(response.status).or_default() += 1;
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
                        tally.transport_errors += 1;
                        tally.first_error.get_or_insert(format!("{error:#}"));
                        connection = None;
                    }
                }
            }
            tally
        }));
    }

    // Watch the fill: checkpoints for RSS, progress every 5 s.
    let mut checkpoints = Vec::new();
    let mut next_checkpoint = 0;
    let mut last_report = Instant::now();
    let mut last_count = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    while !tasks.iter().all(|t| t.is_finished()) {
        ticker.tick().await;
        let count = stored.load(Ordering::Relaxed);
        while next_checkpoint < CHECKPOINTS.len()
            && count as f64 >= CHECKPOINTS[next_checkpoint] * target as f64
        {
            checkpoints.push((count, herald.sample()?));
            next_checkpoint += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            let rate = (count - last_count) as f64 / last_report.elapsed().as_secs_f64();
            progress!(
                "fill: {} / {} events ({:.0}%), {:.0} events/s, herald RSS {}",
                thousands(count),
                thousands(target),
                count as f64 * 100.0 / target as f64,
                rate,
                mib(herald.sample()?.rss_bytes)
            );
            last_report = Instant::now();
            last_count = count;
        }
    }
    let elapsed = started.elapsed();
    let after = herald.sample()?;
    let counters_after = herald_metrics::read(herald.addr).await;
    let mut total = FillTally::default();
    for task in tasks {
        let tally = task.await?;
        total.transport_errors += tally.transport_errors;
        for (status, n) in tally.bad_statuses {
            *total.bad_statuses.entry(status).or_default() += n;
        }
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
    }
    let stored = stored.load(Ordering::Relaxed);
    // The last checkpoint may be missed by a few events when some failed.
    if next_checkpoint < CHECKPOINTS.len() {
        checkpoints.push((stored, after));
    }
    progress!(
        "fill done: {} events in {:.1} s ({:.0} events/s)",
        thousands(stored),
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64()
    );
    Ok(FillResult {
        stored,
        elapsed,
        bad_statuses: total.bad_statuses,
        transport_errors: total.transport_errors,
        first_error: total.first_error,
        checkpoints,
        server_cores: after.cores_used_since(&before),
        written: after.written_since(&before),
        events_per_commit: counters_after
            .zip(counters_before)
            .and_then(|(after, before)| after.events_per_commit_since(&before)),
        busy_after: Duration::ZERO,
    })
}

/// One series of sequential queries.
pub(super) struct QueryResult {
    pub latencies: Samples,
    pub bad_statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// Mean response body size.
    pub mean_bytes: u64,
    /// The first 200 answer's body, for validation.
    pub first_page: Option<bytes::Bytes>,
    pub note: Option<String>,
}

impl QueryResult {
    pub fn errors(&self) -> u64 {
        self.bad_statuses.values().sum::<u64>() + self.transport_errors
    }
}

/// Sends `WARMUP_QUERIES` + `count` GETs of `path` one after the other (with
/// `&after_seq=N` from `after_seq` when given) and times the last `count`.
pub(super) async fn query_series(
    connection: &mut Connection,
    path: String,
    after_seq: Option<Vec<u64>>,
    count: usize,
) -> QueryResult {
    let mut latencies = Vec::with_capacity(count);
    let mut bad_statuses = BTreeMap::new();
    let mut transport_errors = 0;
    let mut total_bytes = 0u64;
    let mut first_page = None;
    let mut note = None;
    let give_up = Instant::now() + SERIES_TIME_LIMIT;
    for i in 0..WARMUP_QUERIES + count {
        if Instant::now() >= give_up {
            note.get_or_insert(format!("stopped after {SERIES_TIME_LIMIT:?}"));
            break;
        }
        let uri = match &after_seq {
            Some(seqs) => format!("{path}&after_seq={}", seqs[i]),
            None => path.clone(),
        };
        let sent = Instant::now();
        let result = connection.get(&uri).await;
        let elapsed = sent.elapsed();
        let measured = i >= WARMUP_QUERIES;
        match result {
            Ok(response) if response.status == 200 => {
                if first_page.is_none() {
                    first_page = Some(response.body.clone());
                }
                if measured {
                    latencies.push(elapsed.as_nanos() as u64);
                    total_bytes += response.body.len() as u64;
                }
            }
            Ok(response) => {
                if measured {
                    *bad_statuses.entry(response.status).or_insert(0) += 1;
                }
                note.get_or_insert_with(|| {
                    format!(
                        "{}: {}",
                        response.status,
                        String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
                    )
                });
            }
            Err(error) => {
                if measured {
                    transport_errors += 1;
                }
                note.get_or_insert(format!("{error:#}"));
                break;
            }
        }
    }
    let measured = latencies.len().max(1) as u64;
    QueryResult {
        latencies: Samples::new(latencies),
        bad_statuses,
        transport_errors,
        mean_bytes: total_bytes / measured,
        first_page,
        note,
    }
}

#[derive(Deserialize)]
struct PageEvent {
    seq: u64,
    subject: String,
}

/// Checks the first page of a from-the-start series: `min(100, matches)` events, all
/// matching the pattern, in ascending seq order. Returns a note when it is not so.
fn validate_first_page(
    result: &QueryResult,
    pattern: &QueryPattern,
    matches: u64,
) -> Option<String> {
    let body = result.first_page.as_ref()?;
    let events: Vec<PageEvent> = match serde_json::from_slice(body) {
        Ok(events) => events,
        Err(error) => return Some(format!("answer is not an array of events: {error}")),
    };
    let expected = matches.min(PAGE as u64) as usize;
    if events.len() != expected {
        return Some(format!(
            "first page has {} events, expected {expected}",
            events.len()
        ));
    }
    if let Some(event) = events
        .iter()
        .find(|e| !workload::pattern_matches(pattern.pattern, &e.subject))
    {
        return Some(format!("event on {} does not match", event.subject));
    }
    if events.windows(2).any(|w| w[0].seq >= w[1].seq) {
        return Some("events are not in ascending seq order".into());
    }
    None
}

type Series<'a> = (&'a str, &'a str, u64, bool, QueryResult);

fn render_queries(
    options: &Options,
    fill: &FillResult,
    (store_bytes, store_files): (u64, &str),
    ceiling: Option<&QueryResult>,
    series: &[Series<'_>],
) -> String {
    let mut out = format!(
        "## (c) Queries on a store of {} events\n\n",
        thousands(fill.stored)
    );
    out.push_str(&format!(
        "Filled through {} with {} connections: {} events in {:.1} s \
         (**{:.0} events/s**, herald CPU {:.2} cores{}{}), errors: {}. Herald kept working (≥ 5% of a core) for {:.1} s after the last answer; \
         the queries start once it is idle. Store on disk then: {} ({:.0} bytes/event: {}).\n\n",
        if options.fill_batch > 1 {
            format!("`POST /api/events:batch` ({} events per request)", options.fill_batch)
        } else {
            "`POST /api/events`".to_string()
        },
        options.connections,
        thousands(fill.stored),
        fill.elapsed.as_secs_f64(),
        fill.stored as f64 / fill.elapsed.as_secs_f64(),
        fill.server_cores,
        fill.written
            .map(|w| format!(
                ", {:.0} bytes written to disk per event",
                w as f64 / fill.stored.max(1) as f64
            ))
            .unwrap_or_default(),
        fill.events_per_commit
            .map(|n| format!(", {n:.1} events per commit"))
            .unwrap_or_default(),
        describe_errors(&fill.bad_statuses, fill.transport_errors),
        fill.busy_after.as_secs_f64(),
        mib(store_bytes),
        store_bytes as f64 / fill.stored.max(1) as f64,
        store_files,
    ));
    if let Some(error) = &fill.first_error {
        out.push_str(&format!("First fill error: `{error}`\n\n"));
    }
    out.push_str(&format!(
        "`GET /api/events?subject=<pattern>&limit=100`, one keep-alive connection, \
         sequential, {} timed requests per row after {WARMUP_QUERIES} untimed ones. \"from \
         start\" asks for the first page; \"random after_seq\" adds `after_seq` uniformly \
         drawn over the log (a resume from anywhere).\n\n",
        options.queries
    ));
    let mut table = Table::new(&[
        "Pattern",
        "kind",
        "matching events",
        "start",
        "p50",
        "p99",
        "max",
        "mean answer",
        "errors",
        "target p99",
        "result",
    ]);
    if let Some(ceiling) = ceiling {
        table.row(vec![
            "ceiling: fixed 100-event page".into(),
            "no store".into(),
            "—".into(),
            "—".into(),
            ms(ceiling.latencies.quantile(0.5)),
            ms(ceiling.latencies.quantile(0.99)),
            ms(ceiling.latencies.max()),
            format!("{} B", thousands(ceiling.mean_bytes)),
            describe_errors(&ceiling.bad_statuses, ceiling.transport_errors),
            "—".into(),
            "—".into(),
        ]);
    }
    let mut all_met = true;
    for (pattern, description, matches, random, result) in series {
        let p99 = result.latencies.quantile(0.99);
        // A note means an unexpected answer (or a series cut short): not met.
        let met = !result.latencies.is_empty()
            && result.errors() == 0
            && result.note.is_none()
            && p99 <= TARGET_QUERY_P99.as_nanos() as u64;
        all_met &= met;
        table.row(vec![
            format!("`{pattern}`"),
            description.to_string(),
            format!("~{}", thousands(*matches)),
            if *random {
                "random after_seq"
            } else {
                "from start"
            }
            .into(),
            ms(result.latencies.quantile(0.5)),
            format!("**{}**", ms(p99)),
            ms(result.latencies.max()),
            format!("{} B", thousands(result.mean_bytes)),
            describe_errors(&result.bad_statuses, result.transport_errors),
            format!("≤ {}", ms(TARGET_QUERY_P99.as_nanos() as u64)),
            verdict(met).into(),
        ]);
    }
    out.push_str(&table.render());
    out.push_str(&format!(
        "\nAll query rows within target: {}.\n",
        verdict(all_met)
    ));
    for (pattern, _, _, random, result) in series {
        if let Some(note) = &result.note {
            out.push_str(&format!(
                "\nNote on `{pattern}` ({}): {note}\n",
                if *random {
                    "random after_seq"
                } else {
                    "from start"
                }
            ));
        }
    }
    out
}

fn render_memory(
    options: &Options,
    ceiling_idle: &ProcSample,
    idle: &ProcSample,
    fill: &FillResult,
    after_fill: &ProcSample,
    after_queries: Option<&ProcSample>,
) -> String {
    let mut out = String::from("## (d) Herald memory (RSS)\n\n");
    out.push_str(&format!(
        "VmRSS, its parts (RssAnon: heap; RssFile: mapped files; RssShmem: shared \
         memory such as SQLite's `-shm` WAL index), VmHWM (peak) and threads of the herald \
         process, from /proc/PID/status. The fill ran {} connections; checkpoints are \
         sampled while it runs.\n\n",
        options.connections
    ));
    let mut table = Table::new(&[
        "Moment",
        "events stored",
        "VmRSS",
        "anon / file / shmem",
        "VmHWM",
        "threads",
    ]);
    let row = |moment: String, events: u64, sample: &ProcSample| {
        vec![
            moment,
            thousands(events),
            mib(sample.rss_bytes),
            format!(
                "{} / {} / {}",
                mib(sample.rss_anon_bytes),
                mib(sample.rss_file_bytes),
                mib(sample.rss_shmem_bytes)
            ),
            mib(sample.hwm_bytes),
            sample.threads.to_string(),
        ]
    };
    table.row(row("ceiling (no-op axum), idle".into(), 0, ceiling_idle));
    table.row(row("herald idle, 1 s after start".into(), 0, idle));
    for (i, (events, sample)) in fill.checkpoints.iter().enumerate() {
        let fraction = CHECKPOINTS.get(i).copied().unwrap_or(1.0);
        table.row(row(
            format!("herald during fill, {:.0}%", fraction * 100.0),
            *events,
            sample,
        ));
    }
    table.row(row(
        "herald after the fill, once idle".into(),
        fill.stored,
        after_fill,
    ));
    if let Some(sample) = after_queries {
        table.row(row("herald after the queries".into(), fill.stored, sample));
    }
    out.push_str(&table.render());

    let first = fill
        .checkpoints
        .first()
        .map(|(_, s)| s.rss_bytes)
        .unwrap_or(0);
    let last = fill
        .checkpoints
        .last()
        .map(|(_, s)| s.rss_bytes)
        .unwrap_or(0);
    let growth = last.saturating_sub(first);
    let mut checks = Table::new(&["Check", "Value", "Target", "Result"]);
    checks.row(vec![
        "idle RSS".into(),
        format!(
            "{} ({} MB)",
            mib(idle.rss_bytes),
            idle.rss_bytes / 1_000_000
        ),
        "≤ 30 MB".into(),
        verdict(idle.rss_bytes <= TARGET_IDLE_RSS).into(),
    ]);
    checks.row(vec![
        "RSS growth from 10% to 100% of the fill".into(),
        format!("{} → {} (+{})", mib(first), mib(last), mib(growth)),
        format!("flat: ≤ +{}", mib(MAX_RSS_GROWTH)),
        verdict(fill.checkpoints.len() >= 2 && growth <= MAX_RSS_GROWTH).into(),
    ]);
    out.push('\n');
    out.push_str(&checks.render());
    out
}
