//! Scenario (auth): the cost of access control on the hot path. The same publish load
//! as (a) against two heralds, one with `HERALD_AUTH=off` and one with
//! `HERALD_AUTH=required` whose clients send a tenant key with a few allow and deny
//! patterns (so every publish authenticates, checks rights, takes from a rate bucket
//! and is stamped with its tenant). Runs alternate; medians are compared.

use std::sync::Arc;
use std::time::Duration;

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
/// Throughput with keys required, as a share of throughput with authentication off.
const TARGET_RATIO: f64 = 0.95;
const ADMIN: &str = "bench-admin-secret-0123456789";

pub async fn run(options: &Options) -> Result<String> {
    progress!(
        "(auth) {} connections, {} runs of {:?} (+{:?} warm-up) per server",
        options.connections,
        options.rounds,
        options.duration,
        options.warmup
    );
    let bodies = Arc::new(workload::body_pool(1024));
    let open = ServerProcess::herald(&options.herald_bin, &options.data_parent).await?;
    let mut guarded = ServerProcess::herald_with_env(
        &options.herald_bin,
        &options.data_parent,
        &[("HERALD_AUTH", "required"), ("HERALD_ADMIN_KEY", ADMIN)],
    )
    .await?;
    guarded.bearer = Some(tenant_key(&guarded).await?);

    let mut open_runs = Vec::new();
    let mut guarded_runs = Vec::new();
    for round in 1..=options.rounds {
        for (label, server) in [("auth off", &open), ("auth required", &guarded)] {
            super::settle(&[&open, &guarded], SETTLE_LIMIT).await;
            let result = closed_loop_publish(
                server,
                options.connections,
                options.warmup,
                options.duration,
                bodies.clone(),
            )
            .await?;
            progress!(
                "(auth) run {round}/{} {label}: {:.0} req/s, p50 {}, p99 {}, errors {}{}",
                options.rounds,
                result.requests_per_second(),
                ms_f(result.latencies.quantile(0.5) as f64),
                ms_f(result.latencies.quantile(0.99) as f64),
                result.errors(),
                result
                    .first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
            if label == "auth off" {
                open_runs.push(result);
            } else {
                guarded_runs.push(result);
            }
        }
    }
    open.stop().await?;
    guarded.stop().await?;

    let rps = |runs: &[LoadResult]| {
        median(
            &runs
                .iter()
                .map(LoadResult::requests_per_second)
                .collect::<Vec<_>>(),
        )
    };
    let p99 = |runs: &[LoadResult]| {
        median(
            &runs
                .iter()
                .map(|r| r.latencies.quantile(0.99) as f64)
                .collect::<Vec<_>>(),
        )
    };
    let (open_rps, guarded_rps) = (rps(&open_runs), rps(&guarded_runs));
    let ratio = if open_rps > 0.0 {
        guarded_rps / open_rps
    } else {
        0.0
    };
    let errors: u64 = guarded_runs.iter().map(LoadResult::errors).sum();

    let mut out = format!(
        "## (auth) Access control on the publish path\n\n`POST /api/events` as in (a), {} \
         connections, {} alternating runs of {} s after {} s of warm-up per server. \"auth \
         required\": every request carries a tenant key (`Authorization: Bearer hrld_…`) whose \
         rights have three allow and two deny patterns, under a tenant with a publish rate \
         limit far above the load; \"auth off\": no key.\n\n",
        options.connections,
        options.rounds,
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
    );
    let mut table = Table::new(&["Server", "req/s (median)", "req/s per run", "p99 (median)"]);
    for (label, runs) in [("auth off", &open_runs), ("auth required", &guarded_runs)] {
        table.row(vec![
            label.into(),
            format!("{:.0}", rps(runs)),
            runs.iter()
                .map(|r| format!("{:.0}", r.requests_per_second()))
                .collect::<Vec<_>>()
                .join(", "),
            ms_f(p99(runs)),
        ]);
    }
    out.push_str(&table.render());
    let mut checks = Table::new(&["Check", "Value", "Target", "Result"]);
    checks.row(vec![
        "required / off throughput".into(),
        format!(
            "{} ({guarded_rps:.0} / {open_rps:.0} req/s)",
            percent(ratio)
        ),
        format!("≥ {}", percent(TARGET_RATIO)),
        verdict(ratio >= TARGET_RATIO).into(),
    ]);
    checks.row(vec![
        "non-201 answers with keys".into(),
        errors.to_string(),
        "0".into(),
        verdict(errors == 0).into(),
    ]);
    out.push('\n');
    out.push_str(&checks.render());
    Ok(out)
}

/// Makes a tenant owning the benchmark's subjects and a key of it; answers the secret.
async fn tenant_key(server: &ServerProcess) -> Result<String> {
    let mut admin = Connection::open(server.addr)
        .await?
        .with_bearer(Some(ADMIN));
    let tenant = json!({
        "id": "bench",
        "subjects": ["hub.bench.>"],
        "limits": {"publish_per_second": 10_000_000, "publish_burst": 10_000_000},
    });
    let answer = admin
        .post_json("/api/tenants", Bytes::from(tenant.to_string()))
        .await?;
    if answer.status != 201 {
        bail!("creating the tenant: {} {:?}", answer.status, answer.body);
    }
    let key = json!({
        "tenant": "bench",
        "description": "herald-bench",
        "publish": {"allow": ["hub.bench.>", "hub.bench.*.created", "hub.other.>"],
                    "deny": ["hub.bench.secret.>", "hub.bench.*.forbidden"]},
        "subscribe": {"allow": ["hub.bench.>"]},
    });
    let answer = admin
        .post_json("/api/keys", Bytes::from(key.to_string()))
        .await?;
    if answer.status != 201 {
        bail!("creating the key: {} {:?}", answer.status, answer.body);
    }
    let made: Value = serde_json::from_slice(&answer.body)?;
    made["key"]
        .as_str()
        .map(str::to_owned)
        .context("no `key` in the answer")
}
