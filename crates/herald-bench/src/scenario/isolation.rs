//! Scenario (isolation): does one tenant's flood raise another tenant's latency? One
//! herald with keys required and two tenants. "calm" publishes as in (a) with a few
//! connections; in alternate runs "flood" sends, at the same time, 25 times its publish
//! rate limit (most of it refused with 429). Calm's p99 with and without the flood are
//! compared.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};

use super::{closed_loop_publish, LoadResult, Options};
use crate::client::Connection;
use crate::process::ServerProcess;
use crate::report::Table;
use crate::stats::{median, ms_f, percent, verdict};
use crate::{progress, workload};

const SETTLE_LIMIT: Duration = Duration::from_secs(10);
const ADMIN: &str = "bench-admin-secret-0123456789";
/// The flooding tenant's publish rate limit (events per second, and its burst).
const FLOOD_LIMIT: u32 = 200;
/// How many times its limit the flood tries to publish.
const FLOOD_FACTOR: u32 = 25;
const FLOOD_CONNECTIONS: usize = 8;
/// Calm's p99 during the flood, as a multiple of its p99 without: the most allowed.
const TARGET_P99_RATIO: f64 = 1.20;

pub async fn run(options: &Options) -> Result<String> {
    let calm_connections = options.connections.clamp(1, 16);
    progress!(
        "(isolation) calm: {calm_connections} connections; flood: {} attempts/s against a limit of {FLOOD_LIMIT}/s; {} rounds",
        FLOOD_LIMIT * FLOOD_FACTOR,
        options.rounds
    );
    let bodies = Arc::new(workload::body_pool(1024));
    let mut herald = ServerProcess::herald_with_env(
        &options.herald_bin,
        &options.data_parent,
        &[("HERALD_AUTH", "required"), ("HERALD_ADMIN_KEY", ADMIN)],
    )
    .await?;
    let calm_key = tenant_key(&herald, "calm", "hub.bench.>", None).await?;
    let flood_key = tenant_key(&herald, "flood", "hub.flood.>", Some(FLOOD_LIMIT)).await?;
    herald.bearer = Some(calm_key);

    let mut quiet_runs = Vec::new();
    let mut flooded_runs = Vec::new();
    let mut flood_tallies = Vec::new();
    for round in 1..=options.rounds {
        for flooded in [false, true] {
            super::settle(&[&herald], SETTLE_LIMIT).await;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flood =
                flooded.then(|| tokio::spawn(flood(herald.addr, flood_key.clone(), stop.clone())));
            let result = closed_loop_publish(
                &herald,
                calm_connections,
                options.warmup,
                options.duration,
                bodies.clone(),
            )
            .await?;
            stop.store(true, Ordering::Release);
            let tally = match flood {
                Some(task) => Some(task.await??),
                None => None,
            };
            progress!(
                "(isolation) run {round}/{} {}: calm {:.0} req/s, p50 {}, p99 {}, errors {}{}",
                options.rounds,
                if flooded { "with flood" } else { "quiet" },
                result.requests_per_second(),
                ms_f(result.latencies.quantile(0.5) as f64),
                ms_f(result.latencies.quantile(0.99) as f64),
                result.errors(),
                tally
                    .map(|t: FloodTally| format!(
                        "; flood {:.0} attempts/s, {} stored, {} refused",
                        t.attempts_per_second, t.stored, t.refused
                    ))
                    .unwrap_or_default()
            );
            if flooded {
                flooded_runs.push(result);
                flood_tallies.extend(tally);
            } else {
                quiet_runs.push(result);
            }
        }
    }
    herald.stop().await?;

    let p99 = |runs: &[LoadResult]| {
        median(
            &runs
                .iter()
                .map(|r| r.latencies.quantile(0.99) as f64)
                .collect::<Vec<_>>(),
        )
    };
    let rps = |runs: &[LoadResult]| {
        median(
            &runs
                .iter()
                .map(LoadResult::requests_per_second)
                .collect::<Vec<_>>(),
        )
    };
    let (quiet_p99, flooded_p99) = (p99(&quiet_runs), p99(&flooded_runs));
    let ratio = if quiet_p99 > 0.0 {
        flooded_p99 / quiet_p99
    } else {
        f64::INFINITY
    };
    let calm_errors: u64 = flooded_runs.iter().map(LoadResult::errors).sum();
    let attempts = median(
        &flood_tallies
            .iter()
            .map(|t| t.attempts_per_second)
            .collect::<Vec<_>>(),
    );

    let mut out = format!(
        "## (isolation) One tenant's flood, another tenant's latency\n\nOne herald with keys \
         required. Tenant \"calm\" publishes as in (a) with {calm_connections} connections; in \
         every other run tenant \"flood\" (limit {FLOOD_LIMIT} events/s) tries {} events/s over \
         {FLOOD_CONNECTIONS} connections at the same time, and is answered 429 past its limit. \
         {} alternating rounds of {} s after {} s of warm-up; medians.\n\n",
        FLOOD_LIMIT * FLOOD_FACTOR,
        options.rounds,
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
    );
    let mut table = Table::new(&["Calm tenant", "req/s (median)", "p99 (median)"]);
    table.row(vec![
        "quiet".into(),
        format!("{:.0}", rps(&quiet_runs)),
        ms_f(quiet_p99),
    ]);
    table.row(vec![
        format!("during the flood ({attempts:.0} attempts/s)"),
        format!("{:.0}", rps(&flooded_runs)),
        ms_f(flooded_p99),
    ]);
    out.push_str(&table.render());
    let mut checks = Table::new(&["Check", "Value", "Target", "Result"]);
    checks.row(vec![
        "calm p99, flood / quiet".into(),
        format!("{ratio:.2}× ({} / {})", ms_f(flooded_p99), ms_f(quiet_p99)),
        format!("≤ {TARGET_P99_RATIO:.2}×"),
        verdict(ratio <= TARGET_P99_RATIO).into(),
    ]);
    checks.row(vec![
        "calm answers other than 201 during the flood".into(),
        calm_errors.to_string(),
        "0".into(),
        verdict(calm_errors == 0).into(),
    ]);
    let stored_share = flood_tallies
        .iter()
        .map(|t| t.stored as f64 / (t.stored + t.refused).max(1) as f64)
        .fold(0.0, f64::max);
    checks.row(vec![
        "flood attempts stored (most of a run)".into(),
        percent(stored_share),
        format!("≈ {}", percent(1.0 / f64::from(FLOOD_FACTOR))),
        "info".into(),
    ]);
    out.push('\n');
    out.push_str(&checks.render());
    Ok(out)
}

#[derive(Clone, Copy)]
struct FloodTally {
    attempts_per_second: f64,
    stored: u64,
    refused: u64,
}

/// Sends `FLOOD_LIMIT × FLOOD_FACTOR` publishes a second (open loop, spread over
/// connections) until `stop`.
async fn flood(
    addr: std::net::SocketAddr,
    key: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<FloodTally> {
    let stored = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let per_connection =
        Duration::from_secs_f64(FLOOD_CONNECTIONS as f64 / f64::from(FLOOD_LIMIT * FLOOD_FACTOR));
    let mut tasks = Vec::new();
    for task in 0..FLOOD_CONNECTIONS {
        let (key, stop, stored, refused) =
            (key.clone(), stop.clone(), stored.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr).await?.with_bearer(Some(&key));
            let mut tick = tokio::time::interval(per_connection);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                let body = json!({"subject": "hub.flood.x", "payload": {"task": task, "n": n}});
                n += 1;
                let answer = connection
                    .post_json("/api/events", Bytes::from(body.to_string()))
                    .await?;
                match answer.status {
                    201 => stored.fetch_add(1, Ordering::Relaxed),
                    429 => refused.fetch_add(1, Ordering::Relaxed),
                    other => bail!("the flood was answered {other}"),
                };
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let (stored, refused) = (
        stored.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    Ok(FloodTally {
        attempts_per_second: (stored + refused) as f64 / started.elapsed().as_secs_f64(),
        stored,
        refused,
    })
}

/// Makes tenant `id` owning `space` (with a publish rate limit when given) and a key of
/// it; answers the secret.
async fn tenant_key(
    server: &ServerProcess,
    id: &str,
    space: &str,
    limit: Option<u32>,
) -> Result<String> {
    let mut admin = Connection::open(server.addr)
        .await?
        .with_bearer(Some(ADMIN));
    let mut tenant = json!({"id": id, "subjects": [space]});
    if let Some(limit) = limit {
        tenant["limits"] = json!({"publish_per_second": limit, "publish_burst": limit});
    }
    let answer = admin
        .post_json("/api/tenants", Bytes::from(tenant.to_string()))
        .await?;
    if answer.status != 201 {
        bail!("creating tenant {id}: {} {:?}", answer.status, answer.body);
    }
    let answer = admin
        .post_json("/api/keys", Bytes::from(json!({"tenant": id}).to_string()))
        .await?;
    if answer.status != 201 {
        bail!(
            "creating a key of {id}: {} {:?}",
            answer.status,
            answer.body
        );
    }
    let made: Value = serde_json::from_slice(&answer.body)?;
    made["key"]
        .as_str()
        .map(str::to_owned)
        .context("no `key` in the answer")
}
