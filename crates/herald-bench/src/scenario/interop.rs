//! Scenario `interop`: the other ways into Herald, and a durable-ingest ceiling.
//!
//! 1. `bus.publish` over `POST /rpc` (JSON-RPC 2.0) against `POST /api/events`, with
//!    the closed-loop load of scenario (a): alternating runs, medians;
//! 2. batch ingest: `POST /api/events:batch` with 100 and with 1,000 events per
//!    request, a few connections each, in durable events per second;
//! 3. the ceiling: a local `nats-server -js` (file storage) fed by an `async-nats`
//!    client with 1,024 publish acks in flight, in acknowledged messages per second.
//!
//! Everything runs on loopback; the NATS server is started and stopped here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::{closed_loop, describe_errors, LoadResult, Options, Success, Target, BATCH};
use crate::nats::{self, NatsServer};
use crate::process::ServerProcess;
use crate::report::Table;
use crate::stats::{median, ms_f, percent, thousands, verdict};
use crate::{progress, workload};

/// Longest wait for the servers to go idle between runs.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// RPC req/s must be at least this share of REST req/s.
const RPC_TARGET: f64 = 0.90;
/// Herald's batch(1,000) events/s must be at least this share of the NATS ceiling.
const CEILING_TARGET: f64 = 1.0;

const RPC: Target = Target {
    path: "/rpc",
    success: Success::RpcResult,
};

/// Durations of the scenario (independent of (a)'s, to keep it near 90 s).
struct Plan {
    rounds: usize,
    warmup: Duration,
    window: Duration,
    /// Measured window of each batch size and of the NATS run.
    ingest_window: Duration,
    /// (events per request, connections)
    batches: [(usize, usize); 2],
}

impl Plan {
    fn new(options: &Options) -> Self {
        if options.quick {
            Plan {
                rounds: 1,
                warmup: Duration::from_millis(500),
                window: Duration::from_secs(2),
                ingest_window: Duration::from_secs(3),
                batches: [(100, 4), (1000, 2)],
            }
        } else {
            Plan {
                rounds: options.rounds.min(3),
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(5),
                ingest_window: Duration::from_secs(8),
                batches: [(100, 4), (1000, 2)],
            }
        }
    }
}

pub async fn run(options: &Options) -> Result<String> {
    let plan = Plan::new(options);
    progress!(
        "interop: rpc vs rest ({} connections, {} × {:?}), batches {:?}, NATS ceiling ({:?} each)",
        options.connections,
        plan.rounds,
        plan.window,
        plan.batches,
        plan.ingest_window
    );
    let rest_bodies = Arc::new(workload::body_pool(1024));
    let rpc_bodies = Arc::new(rpc_pool(1024)?);
    let herald = ServerProcess::herald(&options.herald_bin, &options.data_parent).await?;

    // 1. bus.publish over /rpc vs POST /api/events.
    let mut rest_runs = Vec::new();
    let mut rpc_runs = Vec::new();
    for round in 1..=plan.rounds {
        for (label, target, bodies) in [
            ("rest", super::Target::PUBLISH, &rest_bodies),
            ("rpc", RPC, &rpc_bodies),
        ] {
            super::settle(&[&herald], SETTLE_LIMIT).await;
            let result = closed_loop(
                &herald,
                target,
                options.connections,
                plan.warmup,
                plan.window,
                bodies.clone(),
            )
            .await?;
            progress!(
                "interop run {round}/{} {label}: {:.0} req/s, p50 {}, errors {}{}",
                plan.rounds,
                result.requests_per_second(),
                ms_f(result.latencies.quantile(0.5) as f64),
                result.errors(),
                first_error(&result)
            );
            if label == "rest" {
                rest_runs.push(result);
            } else {
                rpc_runs.push(result);
            }
        }
    }

    // 2. Batch ingest.
    let mut batch_runs = Vec::new();
    for (size, connections) in plan.batches {
        let bodies = Arc::new(batch_pool(size, if size >= 1000 { 4 } else { 16 }));
        super::settle(&[&herald], SETTLE_LIMIT).await;
        let result = closed_loop(
            &herald,
            BATCH,
            connections,
            plan.warmup,
            plan.ingest_window,
            bodies,
        )
        .await?;
        progress!(
            "interop batch {size} × {connections} connections: {:.0} events/s, errors {}{}",
            result.requests_per_second() * size as f64,
            result.errors(),
            first_error(&result)
        );
        batch_runs.push((size, connections, result));
    }
    let (stored_bytes, _) = herald.data_summary();
    herald.stop().await?;

    // 3. The JetStream ceiling.
    let nats = nats_ceiling(options, plan.warmup, plan.ingest_window).await;
    if let Err(error) = &nats {
        progress!("interop: NATS ceiling failed: {error:#}");
    }

    Ok(render(
        options,
        &plan,
        &rest_runs,
        &rpc_runs,
        &batch_runs,
        nats,
        stored_bytes,
    ))
}

fn first_error(result: &LoadResult) -> String {
    result
        .first_error
        .as_ref()
        .map(|e| format!(" (first: {e})"))
        .unwrap_or_default()
}

/// The `{subject, payload}` parts of [`workload::publish_body`].
#[derive(serde::Deserialize)]
struct PublishParts<'a> {
    subject: &'a str,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// `bus.publish` calls carrying the same subjects and payloads as
/// [`workload::body_pool`].
fn rpc_pool(count: usize) -> Result<Vec<Bytes>> {
    workload::body_pool(count)
        .iter()
        .enumerate()
        .map(|(n, body)| {
            let parts: PublishParts = serde_json::from_slice(body)?;
            Ok(Bytes::from(format!(
                r#"{{"jsonrpc":"2.0","id":{n},"method":"bus.publish","params":{{"topic":"{}","payload":{}}}}}"#,
                parts.subject,
                parts.payload.get()
            )))
        })
        .collect()
}

/// `distinct` batch bodies `{"events":[...]}` of `size` publish bodies each.
pub(super) fn batch_pool(size: usize, distinct: usize) -> Vec<Bytes> {
    (0..distinct)
        .map(|b| {
            workload::batch_body((0..size).map(|i| {
                let n = (b * size + i) as u64;
                workload::publish_body(&workload::subject(n), n)
            }))
        })
        .collect()
}

/// What the NATS run measured.
struct NatsResult {
    version: String,
    run: nats::AckedRun,
    in_flight: usize,
}

impl NatsResult {
    fn per_second(&self) -> f64 {
        self.run.per_second()
    }
}

async fn nats_ceiling(options: &Options, warmup: Duration, window: Duration) -> Result<NatsResult> {
    let server = NatsServer::start(&options.data_parent).await?;
    let result = nats_load(&server, warmup, window).await;
    server.stop().await?;
    result
}

async fn nats_load(server: &NatsServer, warmup: Duration, window: Duration) -> Result<NatsResult> {
    let client = server.connect().await?;
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the BENCH stream")?;

    // The same ~300-byte bodies as the HTTP runs, on `bench.<domain>.<action>`.
    let messages: Vec<(String, Bytes)> = (0..1024u64)
        .map(|n| {
            let subject = workload::subject(n);
            let subject = subject.trim_start_matches("hub.").to_string();
            (subject.clone(), workload::publish_body(&subject, n))
        })
        .collect();
    let run = nats::publish_acked(
        server,
        &js,
        nats::Span::Window { warmup, window },
        nats::IN_FLIGHT,
        |n| {
            let (subject, body) = &messages[n as usize % messages.len()];
            nats::Outgoing {
                subject: subject.clone(),
                headers: None,
                body: body.clone(),
            }
        },
    )
    .await?;
    Ok(NatsResult {
        version: nats::version(),
        run,
        in_flight: nats::IN_FLIGHT,
    })
}

fn median_of(runs: &[LoadResult], figure: impl Fn(&LoadResult) -> f64) -> f64 {
    median(&runs.iter().map(figure).collect::<Vec<_>>())
}

fn errors_of(runs: &[LoadResult]) -> String {
    let mut statuses = std::collections::BTreeMap::new();
    let mut transport = 0;
    for run in runs {
        for (status, count) in &run.bad_statuses {
            *statuses.entry(*status).or_insert(0) += count;
        }
        transport += run.transport_errors;
    }
    describe_errors(&statuses, transport)
}

fn render(
    options: &Options,
    plan: &Plan,
    rest_runs: &[LoadResult],
    rpc_runs: &[LoadResult],
    batch_runs: &[(usize, usize, LoadResult)],
    nats: Result<NatsResult>,
    stored_bytes: u64,
) -> String {
    let mut out = format!(
        "## Interop: JSON-RPC, batch ingest and the JetStream ceiling\n\n\
         ### `bus.publish` over `POST /rpc` vs `POST /api/events`\n\n\
         {} concurrent keep-alive connections, closed loop, the same ~300-byte events over {} \
         subjects (as JSON-RPC `params: {{topic, payload}}`); {} run(s) of {} s after {} s of \
         warm-up per protocol, alternating, against one herald; medians. RPC success = HTTP 200 \
         with a `result` member; REST success = 201.\n\n",
        options.connections,
        workload::SUBJECT_COUNT,
        plan.rounds,
        plan.window.as_secs_f64(),
        plan.warmup.as_secs_f64(),
    );
    let mut table = Table::new(&[
        "Endpoint",
        "req/s (median)",
        "req/s per run",
        "p50",
        "p99",
        "errors",
        "herald CPU / request",
    ]);
    for (label, runs) in [
        ("`POST /api/events`", rest_runs),
        ("`POST /rpc` `bus.publish`", rpc_runs),
    ] {
        table.row(vec![
            label.into(),
            format!(
                "**{:.0}**",
                median_of(runs, LoadResult::requests_per_second)
            ),
            runs.iter()
                .map(|r| format!("{:.0}", r.requests_per_second()))
                .collect::<Vec<_>>()
                .join(" / "),
            ms_f(median_of(runs, |r| r.latencies.quantile(0.5) as f64)),
            ms_f(median_of(runs, |r| r.latencies.quantile(0.99) as f64)),
            errors_of(runs),
            format!(
                "{:.1} µs",
                median_of(runs, LoadResult::server_cpu_us_per_request)
            ),
        ]);
    }
    out.push_str(&table.render());

    out.push_str(&format!(
        "\n### Batch ingest and the ceiling\n\n\
         Herald: `POST /api/events:batch` with `{{\"events\": [...]}}` bodies of ~300-byte events, \
         closed loop, {} s after {} s of warm-up per batch size; success = 201, and the events \
         count once the answer (after the durable commit) arrives. Ceiling: a local \
         `nats-server -js` (file storage, stream `bench.>`) fed by one `async-nats` client with {} \
         publish acks in flight, the same bodies, for the same time; a message counts once its \
         publish ack arrives. Note: nats-server 2.9 acks after writing to its file store and \
         fsyncs it on a timer (every 2 min by default), not per ack, so the ceiling is not \
         fsync-per-commit durable as herald is.\n\n",
        plan.ingest_window.as_secs_f64(),
        plan.warmup.as_secs_f64(),
        nats::IN_FLIGHT,
    ));
    let mut table = Table::new(&[
        "Ingest",
        "connections / in flight",
        "events/s (durable)",
        "requests/s",
        "p50 / p99 per request",
        "errors",
        "server CPU",
        "generator CPU",
    ]);
    for (size, connections, result) in batch_runs {
        table.row(vec![
            format!("herald batch of {}", thousands(*size as u64)),
            format!("{connections} connections"),
            format!("**{:.0}**", result.requests_per_second() * *size as f64),
            format!("{:.1}", result.requests_per_second()),
            format!(
                "{} / {}",
                ms_f(result.latencies.quantile(0.5) as f64),
                ms_f(result.latencies.quantile(0.99) as f64)
            ),
            describe_errors(&result.bad_statuses, result.transport_errors),
            format!("{:.2} cores", result.server_cores),
            format!("{:.2} cores", result.generator_cores),
        ]);
    }
    match &nats {
        Ok(nats) => table.row(vec![
            format!("ceiling: {}", nats.version),
            format!("{} acks in flight", nats.in_flight),
            format!("**{:.0}**", nats.per_second()),
            "—".into(),
            "—".into(),
            thousands(nats.run.errors),
            format!("{:.2} cores", nats.run.server_cores),
            format!("{:.2} cores", nats.run.generator_cores),
        ]),
        Err(error) => table.row(vec![
            "ceiling: nats-server -js".into(),
            "—".into(),
            format!("failed: {error:#}"),
            "—".into(),
            "—".into(),
            "—".into(),
            "—".into(),
            "—".into(),
        ]),
    }
    out.push_str(&table.render());

    let rest_rps = median_of(rest_runs, LoadResult::requests_per_second);
    let rpc_rps = median_of(rpc_runs, LoadResult::requests_per_second);
    let rpc_ratio = if rest_rps > 0.0 {
        rpc_rps / rest_rps
    } else {
        0.0
    };
    let big_batch = batch_runs
        .iter()
        .max_by_key(|(size, _, _)| *size)
        .map(|(size, _, r)| (*size, r.requests_per_second() * *size as f64));
    let herald_errors: u64 = rest_runs
        .iter()
        .chain(rpc_runs)
        .chain(batch_runs.iter().map(|(_, _, r)| r))
        .map(LoadResult::errors)
        .sum();
    let mut checks = Table::new(&["Check", "Value", "Target", "Result"]);
    checks.row(vec![
        "RPC / REST publish throughput".into(),
        format!(
            "{} ({:.0} / {:.0} req/s)",
            percent(rpc_ratio),
            rpc_rps,
            rest_rps
        ),
        format!("≥ {}", percent(RPC_TARGET)),
        verdict(rpc_ratio >= RPC_TARGET).into(),
    ]);
    match (&nats, big_batch) {
        (Ok(nats), Some((size, events_per_second))) if nats.per_second() > 0.0 => {
            let ratio = events_per_second / nats.per_second();
            checks.row(vec![
                format!(
                    "herald batch({}) / JetStream ceiling",
                    thousands(size as u64)
                ),
                format!(
                    "{} ({:.0} / {:.0} events/s)",
                    percent(ratio),
                    events_per_second,
                    nats.per_second()
                ),
                format!("≥ {}", percent(CEILING_TARGET)),
                verdict(ratio >= CEILING_TARGET).into(),
            ]);
        }
        _ => checks.row(vec![
            "herald batch / JetStream ceiling".into(),
            "not measured".into(),
            format!("≥ {}", percent(CEILING_TARGET)),
            verdict(false).into(),
        ]),
    }
    checks.row(vec![
        "herald errors (all interop runs)".into(),
        thousands(herald_errors),
        "0".into(),
        verdict(herald_errors == 0).into(),
    ]);
    out.push('\n');
    out.push_str(&checks.render());
    out.push_str(&format!(
        "\nHerald's store after the scenario: {}.\n",
        crate::stats::mib(stored_bytes)
    ));
    for (label, error) in rest_runs
        .iter()
        .map(|r| ("REST", r))
        .chain(rpc_runs.iter().map(|r| ("RPC", r)))
        .chain(batch_runs.iter().map(|(_, _, r)| ("batch", r)))
        .filter_map(|(label, r)| r.first_error.as_ref().map(|e| (label, e)))
        .take(3)
    {
        out.push_str(&format!("\nFirst {label} error: `{error}`\n"));
    }
    if let Some(error) = nats.as_ref().ok().and_then(|n| n.run.first_error.as_ref()) {
        out.push_str(&format!("\nFirst NATS error: `{error}`\n"));
    }
    out
}
