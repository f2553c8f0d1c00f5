//! Scenario (a): single-event `POST /api/events` throughput with many concurrent
//! keep-alive connections, herald against the no-op ceiling.
//!
//! Both servers run for the whole scenario; runs alternate ceiling, herald, ceiling,
//! herald... so slow drifts of a noisy machine hit both alike. Each run has an
//! unmeasured warm-up; medians over the runs are reported.
//!
//! With `--schema` a third server joins the rotation: a herald with a 10-property event
//! schema whose pattern matches every published event, so each one is validated; its
//! throughput is compared with the plain herald's (the target: at most 10 % slower).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use serde_json::json;

use super::{closed_loop_publish, describe_errors, LoadResult, Options};
use crate::process::{ServerKind, ServerProcess};
use crate::report::Table;
use crate::stats::{median, ms_f, percent, thousands, verdict};
use crate::{progress, workload};

/// Longest wait for both servers to go idle between runs.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// The ratio herald / ceiling the project aims for.
const TARGET_RATIO: f64 = 0.70;
/// Throughput with an event schema on every event, as a share of throughput without.
const SCHEMA_TARGET_RATIO: f64 = 0.90;

/// A schema of 10 properties for the workload's payloads (6 of them in every payload,
/// with types and bounds; 4 optional), matching every subject the workload publishes to.
fn bench_schema() -> serde_json::Value {
    json!({
        "subject_pattern": "hub.bench.>",
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["id", "customer", "amount_cents", "currency", "items", "note"],
            "additionalProperties": false,
            "properties": {
                "id": {"type": "integer", "minimum": 0},
                "customer": {"type": "string", "pattern": "^cust-[0-9]{6}$"},
                "amount_cents": {"type": "integer", "minimum": 0, "maximum": 100000},
                "currency": {"enum": ["EUR", "USD", "GBP"]},
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["sku", "qty"],
                        "properties": {
                            "sku": {"type": "string", "maxLength": 32},
                            "qty": {"type": "integer", "minimum": 1},
                        },
                    },
                },
                "note": {"type": "string", "maxLength": 1024},
                "region": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "priority": {"type": "integer", "minimum": 0, "maximum": 9},
                "created_by": {"type": "string", "format": "email"},
            },
        },
    })
}

/// Installs [`bench_schema`] on `server` and checks that it refuses a bad event.
async fn install_schema(server: &ServerProcess) -> Result<()> {
    let mut admin = crate::client::Connection::open(server.addr).await?;
    let answer = admin
        .put_json(
            "/api/schemas/bench",
            Bytes::from(bench_schema().to_string()),
        )
        .await?;
    if answer.status != 201 {
        bail!("installing the schema: {} {:?}", answer.status, answer.body);
    }
    let bad = json!({"subject": "hub.bench.x.created", "payload": {"id": -1}});
    let answer = admin
        .post_json("/api/events", Bytes::from(bad.to_string()))
        .await?;
    if answer.status != 422 {
        bail!(
            "the schema does not apply: a bad event got {}",
            answer.status
        );
    }
    Ok(())
}

pub async fn run(options: &Options) -> Result<String> {
    progress!(
        "(a) throughput: {} connections, {} runs of {:?} (+{:?} warm-up) per server",
        options.connections,
        options.rounds,
        options.duration,
        options.warmup
    );
    let bodies = Arc::new(workload::body_pool(1024));
    let ceiling = ServerProcess::ceiling(&options.data_parent).await?;
    let herald = ServerProcess::herald(&options.herald_bin, &options.data_parent).await?;
    let validating = if options.schema {
        let server = ServerProcess::herald(&options.herald_bin, &options.data_parent).await?;
        install_schema(&server).await?;
        Some(server)
    } else {
        None
    };
    let mut servers = vec![&ceiling, &herald];
    servers.extend(validating.as_ref());

    let mut ceiling_runs = Vec::new();
    let mut herald_runs = Vec::new();
    let mut schema_runs = Vec::new();
    for round in 1..=options.rounds {
        for (position, server) in servers.iter().copied().enumerate() {
            let waited = super::settle(&servers, SETTLE_LIMIT).await;
            if waited > Duration::from_secs(1) {
                progress!(
                    "(a) waited {:.1} s for writeback and idle servers",
                    waited.as_secs_f64()
                );
            }
            let result = closed_loop_publish(
                server,
                options.connections,
                options.warmup,
                options.duration,
                bodies.clone(),
            )
            .await?;
            progress!(
                "(a) run {round}/{} {}: {:.0} req/s, p50 {}, p99 {}, errors {}{}",
                options.rounds,
                if position == 2 {
                    "herald with schema"
                } else {
                    server.kind.label()
                },
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
            match (server.kind, position) {
                (ServerKind::Ceiling, _) => ceiling_runs.push(result),
                (ServerKind::Herald, 1) => herald_runs.push(result),
                (ServerKind::Herald, _) => schema_runs.push(result),
            }
        }
    }
    let (stored_bytes, stored_files) = herald.data_summary();
    let herald_log_bytes = herald.log_bytes();
    let herald_events: u64 = herald_runs.iter().map(|r| r.ok_including_warmup).sum();
    ceiling.stop().await?;
    herald.stop().await?;
    if let Some(server) = validating {
        server.stop().await?;
    }

    let mut out =
        format!(
        "## (a) Publish throughput\n\n`POST /api/events`, {} concurrent keep-alive connections, \
         closed loop, ~{}-byte bodies over {} subjects; {} runs of {} s after {} s of warm-up \
         per server, alternating; medians of the runs. Before each run the tool runs `sync` and waits \
         (≤ {} s) until both servers are idle, so herald's background work (WAL checkpoints, \
         the kernel writing back its dirty pages) does not land in the ceiling's run.\n\n",
        options.connections,
        workload::body_pool(64).iter().map(|b| b.len()).sum::<usize>() / 64,
        workload::SUBJECT_COUNT,
        options.rounds,
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
        SETTLE_LIMIT.as_secs(),
    );
    let mut table = Table::new(&[
        "Server",
        "req/s (median)",
        "req/s per run",
        "p50",
        "p99",
        "errors (non-201)",
        "server CPU",
        "server CPU / request",
        "generator CPU",
        "disk writes / event",
        "events / commit",
    ]);
    for (kind, runs) in [
        (ServerKind::Ceiling, &ceiling_runs),
        (ServerKind::Herald, &herald_runs),
    ] {
        table.row(summary_row(kind, kind.label(), runs));
    }
    if !schema_runs.is_empty() {
        table.row(summary_row(
            ServerKind::Herald,
            "herald, 10-property schema",
            &schema_runs,
        ));
    }
    out.push_str(&table.render());

    let ceiling_rps = median_of(&ceiling_runs, LoadResult::requests_per_second);
    let herald_rps = median_of(&herald_runs, LoadResult::requests_per_second);
    let ratio = if ceiling_rps > 0.0 {
        herald_rps / ceiling_rps
    } else {
        0.0
    };
    let herald_errors: u64 = herald_runs.iter().map(LoadResult::errors).sum();
    let mut checks = Table::new(&["Check", "Value", "Target", "Result"]);
    checks.row(vec![
        "herald / ceiling throughput".into(),
        format!(
            "{} ({:.0} / {:.0} req/s)",
            percent(ratio),
            herald_rps,
            ceiling_rps
        ),
        format!("≥ {}", percent(TARGET_RATIO)),
        verdict(ratio >= TARGET_RATIO).into(),
    ]);
    if !schema_runs.is_empty() {
        let schema_rps = median_of(&schema_runs, LoadResult::requests_per_second);
        let schema_ratio = if herald_rps > 0.0 {
            schema_rps / herald_rps
        } else {
            0.0
        };
        let schema_errors: u64 = schema_runs.iter().map(LoadResult::errors).sum();
        checks.row(vec![
            "herald with a schema / herald throughput".into(),
            format!(
                "{} ({:.0} / {:.0} req/s)",
                percent(schema_ratio),
                schema_rps,
                herald_rps
            ),
            format!("≥ {}", percent(SCHEMA_TARGET_RATIO)),
            verdict(schema_ratio >= SCHEMA_TARGET_RATIO).into(),
        ]);
        checks.row(vec![
            "herald with a schema: non-201 answers".into(),
            thousands(schema_errors),
            "0".into(),
            verdict(schema_errors == 0).into(),
        ]);
    }
    checks.row(vec![
        "herald non-201 answers".into(),
        thousands(herald_errors),
        "0".into(),
        verdict(herald_errors == 0).into(),
    ]);
    out.push('\n');
    out.push_str(&checks.render());
    out.push_str(&format!(
        "\nServer CPU is in cores (of {}); \"disk writes\" is /proc/PID/io `write_bytes` over \
         the window divided by the events stored. Herald's store after the scenario: {} ({}) \
         for {} events stored; its stderr log: {} bytes.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        crate::stats::mib(stored_bytes),
        stored_files,
        thousands(herald_events),
        thousands(herald_log_bytes),
    ));
    if let Some(error) = herald_runs.iter().find_map(|r| r.first_error.as_ref()) {
        out.push_str(&format!("\nFirst herald error: `{error}`\n"));
    }
    Ok(out)
}

fn median_of(runs: &[LoadResult], figure: impl Fn(&LoadResult) -> f64) -> f64 {
    median(&runs.iter().map(figure).collect::<Vec<_>>())
}

fn summary_row(kind: ServerKind, label: &str, runs: &[LoadResult]) -> Vec<String> {
    let per_run: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.0}", r.requests_per_second()))
        .collect();
    let errors_by_status = runs.iter().fold(
        (std::collections::BTreeMap::new(), 0),
        |(mut statuses, transport), r| {
            for (status, count) in &r.bad_statuses {
                *statuses.entry(*status).or_insert(0) += count;
            }
            (statuses, transport + r.transport_errors)
        },
    );
    let written_per_event = median_of(runs, |r| match r.server_written {
        Some(bytes) if r.ok > 0 => bytes as f64 / r.ok as f64,
        _ => 0.0,
    });
    vec![
        label.into(),
        format!(
            "**{:.0}**",
            median_of(runs, LoadResult::requests_per_second)
        ),
        per_run.join(" / "),
        ms_f(median_of(runs, |r| r.latencies.quantile(0.5) as f64)),
        ms_f(median_of(runs, |r| r.latencies.quantile(0.99) as f64)),
        describe_errors(&errors_by_status.0, errors_by_status.1),
        format!("{:.2} cores", median_of(runs, |r| r.server_cores)),
        format!(
            "{:.1} µs",
            median_of(runs, LoadResult::server_cpu_us_per_request)
        ),
        format!("{:.2} cores", median_of(runs, |r| r.generator_cores)),
        if kind == ServerKind::Herald {
            format!("{written_per_event:.0} B")
        } else {
            "—".into()
        },
        {
            let per_commit: Vec<f64> = runs.iter().filter_map(|r| r.events_per_commit).collect();
            if per_commit.is_empty() {
                "—".into()
            } else {
                format!("{:.1}", median(&per_commit))
            }
        },
    ]
}
