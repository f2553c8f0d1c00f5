//! Scenario `consumer`: herald's durable pull consumers (`/api/consumers/{name}`: fetch,
//! ack, nak over HTTP), against JetStream pull consumers on a local `nats-server -js`
//! in the same run.
//!
//! 1. **Fetch + ack throughput**, per round: herald's store holds N events (filled once
//!    through `POST /api/events:batch`, 1,000 per batch); a fresh durable consumer on
//!    `hub.bench.>` is created, and [`CLIENTS`] clients, each on its own keep-alive
//!    connection, fetch [`FETCH_BATCH`] messages (`wait_ms: 0`) and ack them all in one
//!    request, until N are acked: msgs/s = N / (first fetch → last ack answer). Every
//!    herald ack answer comes after its commit. The ceiling: a stream on the same local
//!    `nats-server -js` (file storage) holding the same N message bodies (the event
//!    JSON herald delivers), a fresh durable pull consumer with explicit acks per round,
//!    and [`CLIENTS`] `async-nats` clients (one connection each) fetching batches of
//!    [`FETCH_BATCH`] and acking each message: with `ack()` (fire and forget, as
//!    JetStream clients normally ack; the run ends when the consumer's ack floor reaches
//!    N) and with `double_ack()` (each ack confirmed by the server). Rounds alternate
//!    herald and JetStream runs; medians.
//! 2. **Redelivery delay accuracy**: a consumer with `backoff_ms` [`BACKOFF_MS`]; events
//!    are published at a steady pace; one client long-polls `fetch` (`wait_ms`) and hands
//!    every message to a second client, which NAKs it (no `delay_ms`: the backoff
//!    applies) until its last backoff step, then acks it. Per redelivery: actual delay =
//!    the fetch answer carrying it − the NAK answer; error = actual − scheduled.
//! 3. **RSS with a consumer far behind**: a fresh herald, a consumer created on its empty
//!    store, then P matching events stored and not delivered (`num_pending` = P), then a
//!    few batches fetched and acked; herald's RSS at each step, next to a control herald
//!    without a consumer filled the same way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, consumer::PullConsumer};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{batch_fill, describe_errors, settle, settle_pids, FillResult, Options};
use crate::client::Connection;
use crate::nats::{self, NatsServer, Outgoing, Span};
use crate::process::{ProcSample, ServerProcess};
use crate::report::Table;
use crate::stats::{median, mib, ms, percent, thousands, verdict, Samples};
use crate::{progress, workload};

/// The filter of the throughput and RSS consumers: every event of the fill.
const FILTER: &str = workload::ALL_BENCH_EVENTS;
/// Concurrent fetch + ack clients of part 1 (herald and JetStream).
const CLIENTS: usize = 4;
/// Messages per fetch.
const FETCH_BATCH: usize = 100;
/// Events per `POST /api/events:batch` of the fills, and connections sending them.
const FILL_BATCH: usize = 1_000;
const FILL_CONNECTIONS: usize = 2;
/// Ack wait of the throughput consumers (never reached: every message is acked at once).
const ACK_WAIT_MS: u64 = 30_000;
/// Large enough that [`CLIENTS`] × [`FETCH_BATCH`] never stall on unacked messages.
const MAX_ACK_PENDING: u64 = 20_000;
/// Herald's fetch + ack msgs/s must reach this share of JetStream's (`ack()`).
const THROUGHPUT_TARGET: f64 = 1.0;
/// The redelivery consumer's backoff schedule (applies to NAKs without `delay_ms`).
const BACKOFF_MS: [u64; 3] = [200, 400, 800];
const REDELIVERY_ACK_WAIT_MS: u64 = 1_000;
const REDELIVERY_MAX_DELIVER: u64 = 10;
/// Long-poll time of the redelivery fetches.
const REDELIVERY_WAIT_MS: u64 = 2_000;
/// The subjects of the redelivery probes (no other consumer sees them).
const REDELIVERY_SUBJECT: &str = "hub.redeliver.probe";
const REDELIVERY_FILTER: &str = "hub.redeliver.>";
/// |actual − scheduled| redelivery delay, p99.
const REDELIVERY_TARGET_P99: Duration = Duration::from_millis(50);
/// Batches fetched and acked by the consumer far behind after the fill.
const BEHIND_BATCHES: usize = 10;
/// Most RSS a consumer far behind may add over the control herald, at P pending.
const MAX_RSS_OVER_CONTROL: u64 = 5 * 1024 * 1024;
/// Longest wait for the servers to go idle between runs.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// The JetStream stream of the ceiling.
const STREAM: &str = "CONS";
const STREAM_SUBJECTS: &str = "cons.>";
/// Stored events whose JSON the ceiling's messages copy.
const TEMPLATES: usize = 1_000;

/// Sizes and durations of the scenario.
struct Plan {
    rounds: usize,
    /// N: events drained per round.
    events: u64,
    fill_limit: Duration,
    /// Longest one drain may take.
    drain_limit: Duration,
    /// Redelivery probes, and the time between two publishes.
    probes: u64,
    probe_spacing: Duration,
    /// P: events pending for the RSS part (0: skipped).
    pending: u64,
    pending_fill_limit: Duration,
}

impl Plan {
    fn new(options: &Options) -> Self {
        if options.quick {
            Plan {
                rounds: 1,
                events: options.consumer_events,
                fill_limit: Duration::from_secs(60),
                drain_limit: Duration::from_secs(120),
                probes: 60,
                probe_spacing: Duration::from_millis(20),
                pending: options.consumer_pending,
                pending_fill_limit: Duration::from_secs(120),
            }
        } else {
            Plan {
                rounds: options.rounds.min(5),
                events: options.consumer_events,
                fill_limit: Duration::from_secs(300),
                drain_limit: Duration::from_secs(300),
                probes: 300,
                probe_spacing: Duration::from_millis(10),
                pending: options.consumer_pending,
                pending_fill_limit: Duration::from_secs(600),
            }
        }
    }
}

pub async fn run(options: &Options) -> Result<String> {
    let plan = Plan::new(options);
    progress!(
        "consumer: {} round(s) of {} events fetched + acked by {CLIENTS} clients (herald vs JetStream), \
         {} redelivery probes, RSS with {} events pending",
        plan.rounds,
        thousands(plan.events),
        plan.probes,
        if plan.pending > 0 {
            thousands(plan.pending)
        } else {
            "(skipped)".into()
        }
    );
    let nats = match NatsServer::start(&options.data_parent).await {
        Ok(server) => Ok(server),
        Err(error) => {
            // Herald's figures are still worth having.
            progress!("consumer: cannot start nats-server: {error:#}");
            Err(format!("{error:#}"))
        }
    };
    let measured = measure(options, &plan, nats.as_ref().ok()).await;
    if let Ok(server) = nats {
        server.stop().await?;
    }
    Ok(render(&plan, &measured?))
}

// ---------------------------------------------------------------------------------------
// Herald's consumer API (the wire contract).

/// The body of `PUT /api/consumers/{name}`.
#[derive(Serialize)]
struct ConsumerConfig<'a> {
    filter_subjects: &'a [&'a str],
    deliver_policy: &'a str,
    ack_wait_ms: u64,
    max_deliver: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_ms: Option<&'a [u64]>,
    max_ack_pending: u64,
}

/// `GET /api/consumers/{name}`'s `state`; every member is optional so that a missing
/// one shows as "—" instead of failing the run.
#[derive(Deserialize, Debug, Default, Clone)]
struct ConsumerState {
    /// A seq, or an object: shown as herald writes it.
    ack_floor: Option<serde_json::Value>,
    last_delivered_seq: Option<u64>,
    num_pending: Option<u64>,
    num_ack_pending: Option<u64>,
    num_redelivered: Option<u64>,
    num_dead_letters: Option<u64>,
    /// `null`, or why delivery waits (a reason string or a flag): shown as written.
    stalled: Option<serde_json::Value>,
}

impl ConsumerState {
    /// `ack_floor` as a seq: a number, or an object's `stream_seq`/`seq`.
    fn ack_floor_seq(&self) -> Option<u64> {
        match self.ack_floor.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::Object(o) => ["stream_seq", "seq"]
                .iter()
                .find_map(|k| o.get(*k).and_then(|v| v.as_u64())),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let n = |v: Option<u64>| v.map_or("—".to_string(), thousands);
        format!(
            "ack_floor {}, last_delivered_seq {}, num_pending {}, num_ack_pending {}, \
             num_redelivered {}, num_dead_letters {}, stalled {}",
            match &self.ack_floor {
                None => "—".to_string(),
                Some(floor) => floor.as_u64().map_or_else(|| floor.to_string(), thousands),
            },
            n(self.last_delivered_seq),
            n(self.num_pending),
            n(self.num_ack_pending),
            n(self.num_redelivered),
            n(self.num_dead_letters),
            self.stalled
                .as_ref()
                .map_or("null".to_string(), |s| s.to_string()),
        )
    }
}

#[derive(Deserialize)]
struct ConsumerInfo {
    state: ConsumerState,
}

#[derive(Deserialize)]
struct Fetched {
    messages: Vec<Delivered>,
}

#[derive(Deserialize)]
struct Delivered {
    ack_id: String,
    delivery: u64,
    event: DeliveredEvent,
}

#[derive(Deserialize)]
struct DeliveredEvent {
    seq: u64,
}

#[derive(Serialize)]
struct AckIds<'a> {
    ack_ids: &'a [String],
}

#[derive(Deserialize)]
struct AckAnswer {
    done: u64,
    #[serde(default)]
    unknown: Vec<serde::de::IgnoredAny>,
}

fn consumer_path(name: &str) -> String {
    format!("/api/consumers/{name}")
}

/// The first 200 bytes of an answer, for error messages.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

// The control calls below open a connection each: herald closes keep-alive connections
// left idle for its header read timeout (10 s), as one would be during a fill or a drain.

/// `PUT /api/consumers/{name}`; 201 (created) or 200 (same configuration).
async fn put_consumer(addr: SocketAddr, name: &str, config: &ConsumerConfig<'_>) -> Result<()> {
    let mut connection = Connection::open(addr).await?;
    let body = Bytes::from(serde_json::to_vec(config)?);
    let response = connection.put_json(&consumer_path(name), body).await?;
    if !matches!(response.status, 200 | 201) {
        bail!(
            "PUT {} answered {}: {}",
            consumer_path(name),
            response.status,
            excerpt(&response.body)
        );
    }
    Ok(())
}

async fn consumer_state(addr: SocketAddr, name: &str) -> Result<ConsumerState> {
    let mut connection = Connection::open(addr).await?;
    let response = connection.get(&consumer_path(name)).await?;
    if response.status != 200 {
        bail!(
            "GET {} answered {}: {}",
            consumer_path(name),
            response.status,
            excerpt(&response.body)
        );
    }
    let info: ConsumerInfo = serde_json::from_slice(&response.body).with_context(|| {
        format!(
            "reading GET {}: {}",
            consumer_path(name),
            excerpt(&response.body)
        )
    })?;
    Ok(info.state)
}

async fn delete_consumer(addr: SocketAddr, name: &str) -> Result<()> {
    let mut connection = Connection::open(addr).await?;
    let response = connection.delete(&consumer_path(name)).await?;
    if response.status != 204 {
        bail!(
            "DELETE {} answered {}: {}",
            consumer_path(name),
            response.status,
            excerpt(&response.body)
        );
    }
    Ok(())
}

fn fetch_body(batch: usize, wait_ms: u64) -> Bytes {
    Bytes::from(format!(r#"{{"batch":{batch},"wait_ms":{wait_ms}}}"#))
}

/// `POST .../fetch`: the messages, or the unexpected answer as an error.
async fn fetch(connection: &mut Connection, path: &str, body: Bytes) -> Result<Vec<Delivered>> {
    let response = connection.post_json(path, body).await?;
    if response.status != 200 {
        bail!(
            "POST {path} answered {}: {}",
            response.status,
            excerpt(&response.body)
        );
    }
    let fetched: Fetched = serde_json::from_slice(&response.body)
        .with_context(|| format!("reading POST {path}: {}", excerpt(&response.body)))?;
    Ok(fetched.messages)
}

/// `POST .../ack` or `.../nak`: (done, unknown).
async fn settle_ids(
    connection: &mut Connection,
    path: &str,
    ack_ids: &[String],
) -> Result<(u64, u64)> {
    let body = Bytes::from(serde_json::to_vec(&AckIds { ack_ids })?);
    let response = connection.post_json(path, body).await?;
    if response.status != 200 {
        bail!(
            "POST {path} answered {}: {}",
            response.status,
            excerpt(&response.body)
        );
    }
    let answer: AckAnswer = serde_json::from_slice(&response.body)
        .with_context(|| format!("reading POST {path}: {}", excerpt(&response.body)))?;
    Ok((answer.done, answer.unknown.len() as u64))
}

/// `GET /`'s `head_seq`.
async fn head_seq(addr: SocketAddr) -> Result<u64> {
    let mut connection = Connection::open(addr).await?;
    #[derive(Deserialize)]
    struct Index {
        head_seq: u64,
    }
    let response = connection.get("/").await?;
    if response.status != 200 {
        bail!("GET / answered {}", response.status);
    }
    Ok(serde_json::from_slice::<Index>(&response.body)?.head_seq)
}

// ---------------------------------------------------------------------------------------
// Measurement.

/// Everything the scenario measured.
struct Measured {
    fill: FillResult,
    /// Events in herald's store for part 1.
    events: u64,
    herald: Vec<DrainRun>,
    /// Why a herald drain failed (the runs after it were not made).
    herald_error: Option<String>,
    /// JetStream runs with `ack()` and with `double_ack()`, or why there are none.
    jetstream: Result<JetStreamRuns, String>,
    redelivery: Result<Redelivery, String>,
    behind: Option<Result<Behind, String>>,
}

struct JetStreamRuns {
    version: String,
    body_bytes: f64,
    prefill: nats::AckedRun,
    ack: Vec<DrainRun>,
    double_ack: Vec<DrainRun>,
}

/// One drain: N messages fetched and acked by [`CLIENTS`] clients.
#[derive(Default)]
struct DrainRun {
    /// Acks the server confirmed (herald: `done`; JetStream `double_ack`: Ok answers;
    /// JetStream `ack`: acks sent, checked against the ack floor at the end).
    acked: u64,
    /// Messages received with a delivery count above 1.
    redelivered: u64,
    /// Ack ids herald answered as unknown.
    unknown: u64,
    fetches: u64,
    empty_fetches: u64,
    errors: u64,
    /// Herald acks sent again after a failed answer.
    ack_retries: u64,
    first_error: Option<String>,
    /// First fetch → the last ack answered (JetStream `ack()`: → ack floor = N).
    elapsed: Duration,
    fetch_latency: Samples,
    ack_latency: Samples,
    server_cores: f64,
    generator_cores: f64,
    /// Bytes of fetch answers per message (herald).
    answer_bytes_per_message: Option<f64>,
    /// Bytes the server wrote to storage over the run (/proc/PID/io).
    written: Option<u64>,
    /// The consumer's state after the run, described.
    end_state: String,
    /// Whether the end state says every message was acked.
    complete: bool,
    note: Option<String>,
}

impl DrainRun {
    fn per_second(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What one client of a drain tallied.
#[derive(Default)]
struct ClientTally {
    acked: u64,
    redelivered: u64,
    unknown: u64,
    fetches: u64,
    empty_fetches: u64,
    errors: u64,
    ack_retries: u64,
    first_error: Option<String>,
    last_ack: Option<Instant>,
    fetch_latency: Vec<u64>,
    ack_latency: Vec<u64>,
    answer_bytes: u64,
    messages: u64,
}

impl ClientTally {
    fn error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }

    fn merge(tallies: Vec<ClientTally>, start: Instant) -> DrainRun {
        let mut run = DrainRun::default();
        let mut fetch_latency = Vec::new();
        let mut ack_latency = Vec::new();
        let mut last_ack = start;
        let (mut answer_bytes, mut messages) = (0, 0);
        for tally in tallies {
            run.acked += tally.acked;
            run.redelivered += tally.redelivered;
            run.unknown += tally.unknown;
            run.fetches += tally.fetches;
            run.empty_fetches += tally.empty_fetches;
            run.errors += tally.errors;
            run.ack_retries += tally.ack_retries;
            if run.first_error.is_none() {
                run.first_error = tally.first_error;
            }
            if let Some(at) = tally.last_ack {
                last_ack = last_ack.max(at);
            }
            fetch_latency.extend(tally.fetch_latency);
            ack_latency.extend(tally.ack_latency);
            answer_bytes += tally.answer_bytes;
            messages += tally.messages;
        }
        run.elapsed = last_ack - start;
        run.fetch_latency = Samples::new(fetch_latency);
        run.ack_latency = Samples::new(ack_latency);
        if messages > 0 && answer_bytes > 0 {
            run.answer_bytes_per_message = Some(answer_bytes as f64 / messages as f64);
        }
        run
    }
}

/// Times a drain client sends one ack before it gives the batch up.
const ACK_ATTEMPTS: u32 = 5;

/// Most errors one drain client tolerates before it gives up.
const MAX_CLIENT_ERRORS: u64 = 50;

async fn measure(options: &Options, plan: &Plan, nats: Option<&NatsServer>) -> Result<Measured> {
    let herald = ServerProcess::herald(&options.herald_bin, &options.data_parent).await?;
    let pool = Arc::new(super::interop::batch_pool(FILL_BATCH, 4));
    let fill = batch_fill(
        &herald,
        "consumer",
        pool.clone(),
        FILL_BATCH,
        plan.events,
        FILL_CONNECTIONS,
        plan.fill_limit,
    )
    .await?;
    let events = head_seq(herald.addr).await?;
    if events == 0 {
        bail!(
            "the fill stored nothing: {}",
            fill.first_error.as_deref().unwrap_or("no error recorded")
        );
    }

    let mut jetstream = match nats {
        Some(server) => match JetStreamSide::prepare(server, herald.addr, events).await {
            Ok(side) => Ok(side),
            Err(error) => {
                progress!("consumer: JetStream setup failed: {error:#}");
                Err(format!("{error:#}"))
            }
        },
        None => Err("nats-server could not be started".to_string()),
    };

    let mut herald_runs = Vec::new();
    let mut herald_error = None;
    for round in 1..=plan.rounds {
        let pids: Vec<u32> = std::iter::once(herald.pid)
            .chain(nats.map(|n| n.pid))
            .collect();
        settle_pids(&pids, SETTLE_LIMIT).await;
        if herald_error.is_none() {
            match herald_drain(&herald, plan, events, round).await {
                Ok(run) => {
                    progress!(
                        "consumer round {round}/{} herald: {} acked in {:.2} s = {:.0} msgs/s, fetch p50 {}, \
                         ack p50 {}, errors {}, redelivered {}, end: {}",
                        plan.rounds,
                        thousands(run.acked),
                        run.elapsed.as_secs_f64(),
                        run.per_second(),
                        ms(run.fetch_latency.quantile(0.5)),
                        ms(run.ack_latency.quantile(0.5)),
                        run.errors,
                        run.redelivered,
                        run.end_state
                    );
                    herald_runs.push(run);
                }
                Err(error) => {
                    // Keep measuring the ceiling: the report says what herald answered.
                    progress!("consumer round {round}: herald drain failed: {error:#}");
                    herald_error = Some(format!("{error:#}"));
                }
            }
        }
        if let (Ok(side), Some(server)) = (&mut jetstream, nats) {
            for double in [false, true] {
                settle_pids(&pids, SETTLE_LIMIT).await;
                match side.drain(server, plan, round, double).await {
                    Ok(run) => {
                        progress!(
                            "consumer round {round}/{} JetStream {}: {} acked in {:.2} s = {:.0} msgs/s, \
                             errors {}, redelivered {}, end: {}",
                            plan.rounds,
                            if double { "double_ack" } else { "ack" },
                            thousands(run.acked),
                            run.elapsed.as_secs_f64(),
                            run.per_second(),
                            run.errors,
                            run.redelivered,
                            run.end_state
                        );
                        if double {
                            side.runs.double_ack.push(run);
                        } else {
                            side.runs.ack.push(run);
                        }
                    }
                    Err(error) => {
                        progress!("consumer: JetStream run failed: {error:#}");
                        side.failed = Some(format!("{error:#}"));
                    }
                }
            }
        }
    }
    let jetstream = match jetstream {
        Ok(side) => match side.failed {
            Some(error) => Err(error),
            None => Ok(side.runs),
        },
        Err(error) => Err(error),
    };

    settle(&[&herald], SETTLE_LIMIT).await;
    let redelivery = match redelivery(&herald, plan).await {
        Ok(result) => Ok(result),
        Err(error) => {
            progress!("consumer: redelivery run failed: {error:#}");
            Err(format!("{error:#}"))
        }
    };
    herald.stop().await?;

    let behind = if plan.pending > 0 {
        Some(match behind(options, plan).await {
            Ok(result) => Ok(result),
            Err(error) => {
                progress!("consumer: RSS run failed: {error:#}");
                Err(format!("{error:#}"))
            }
        })
    } else {
        None
    };

    Ok(Measured {
        fill,
        events,
        herald: herald_runs,
        herald_error,
        jetstream,
        redelivery,
        behind,
    })
}

/// Creates a consumer `drain-{round}` on `hub.bench.>` and drains it with [`CLIENTS`]
/// clients until `events` are acked, then reads its state and deletes it.
async fn herald_drain(
    herald: &ServerProcess,
    plan: &Plan,
    events: u64,
    round: usize,
) -> Result<DrainRun> {
    let name = format!("drain-{round}");
    put_consumer(
        herald.addr,
        &name,
        &ConsumerConfig {
            filter_subjects: &[FILTER],
            deliver_policy: "all",
            ack_wait_ms: ACK_WAIT_MS,
            max_deliver: 5,
            backoff_ms: None,
            max_ack_pending: MAX_ACK_PENDING,
        },
    )
    .await?;
    let mut connections = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        connections.push(Connection::open(herald.addr).await?);
    }
    let fetch_path: Arc<str> = format!("{}/fetch", consumer_path(&name)).into();
    let ack_path: Arc<str> = format!("{}/ack", consumer_path(&name)).into();
    let body = fetch_body(FETCH_BATCH, 0);
    let acked = Arc::new(AtomicU64::new(0));
    let server_before = herald.sample()?;
    let self_before = ProcSample::of("self")?;
    let start = Instant::now();
    let deadline = start + plan.drain_limit;
    let addr = herald.addr;
    let mut tasks = Vec::with_capacity(CLIENTS);
    for mut connection in connections {
        let (fetch_path, ack_path, body, acked) = (
            fetch_path.clone(),
            ack_path.clone(),
            body.clone(),
            acked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tally = ClientTally {
                fetch_latency: Vec::with_capacity(4096),
                ack_latency: Vec::with_capacity(4096),
                ..ClientTally::default()
            };
            let mut ack_ids = Vec::with_capacity(FETCH_BATCH);
            while acked.load(Ordering::Relaxed) < events
                && Instant::now() < deadline
                && tally.errors <= MAX_CLIENT_ERRORS
            {
                let sent = Instant::now();
                let response = match connection.post_json(&fetch_path, body.clone()).await {
                    Ok(response) => response,
                    Err(error) => {
                        tally.error(format!("{error:#}"));
                        match Connection::open(addr).await {
                            Ok(fresh) => connection = fresh,
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                        continue;
                    }
                };
                tally.fetches += 1;
                tally.fetch_latency.push(sent.elapsed().as_nanos() as u64);
                if response.status != 200 {
                    tally.error(format!(
                        "POST {fetch_path} answered {}: {}",
                        response.status,
                        excerpt(&response.body)
                    ));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let messages = match serde_json::from_slice::<Fetched>(&response.body) {
                    Ok(fetched) => fetched.messages,
                    Err(error) => {
                        tally.error(format!("reading the fetch answer: {error}"));
                        continue;
                    }
                };
                if messages.is_empty() {
                    // The rest is in other clients' hands: wait for their acks.
                    tally.empty_fetches += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                tally.answer_bytes += response.body.len() as u64;
                tally.messages += messages.len() as u64;
                ack_ids.clear();
                for message in messages {
                    tally.redelivered += u64::from(message.delivery > 1);
                    ack_ids.push(message.ack_id);
                }
                // A failed ack is sent again, as a client would (the ids stay valid
                // until the ack wait ends); each failure still counts as an error.
                for attempt in 1..=ACK_ATTEMPTS {
                    let sent = Instant::now();
                    match settle_ids(&mut connection, &ack_path, &ack_ids).await {
                        Ok((done, unknown)) => {
                            let now = Instant::now();
                            tally.ack_latency.push((now - sent).as_nanos() as u64);
                            tally.acked += done;
                            tally.unknown += unknown;
                            tally.last_ack = Some(now);
                            acked.fetch_add(done, Ordering::Relaxed);
                            break;
                        }
                        Err(error) => {
                            tally.error(format!("{error:#}"));
                            tally.ack_retries += u64::from(attempt < ACK_ATTEMPTS);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            if let Ok(fresh) = Connection::open(addr).await {
                                connection = fresh;
                            }
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut tallies = Vec::with_capacity(CLIENTS);
    for task in tasks {
        tallies.push(task.await?);
    }
    let server_after = herald.sample()?;
    let self_after = ProcSample::of("self")?;
    let mut run = ClientTally::merge(tallies, start);
    run.server_cores = server_after.cores_used_since(&server_before);
    run.generator_cores = self_after.cores_used_since(&self_before);
    run.written = server_after.written_since(&server_before);
    if run.acked < events {
        run.note = Some(format!(
            "{} of {} acked when the clients stopped (limit {:?})",
            thousands(run.acked),
            thousands(events),
            plan.drain_limit
        ));
    }
    match consumer_state(herald.addr, &name).await {
        Ok(state) => {
            run.complete = state.num_pending == Some(0)
                && state.num_ack_pending == Some(0)
                && state.ack_floor_seq().is_none_or(|floor| floor >= events);
            run.end_state = state.describe();
        }
        Err(error) => run.end_state = format!("unreadable: {error:#}"),
    }
    delete_consumer(herald.addr, &name).await?;
    Ok(run)
}

/// The JetStream ceiling: a stream holding copies of the events herald stores, and the
/// runs so far.
struct JetStreamSide {
    clients: Vec<async_nats::Client>,
    js: jetstream::Context,
    events: u64,
    runs: JetStreamRuns,
    failed: Option<String>,
}

impl JetStreamSide {
    /// Creates the stream `CONS` and fills it with `events` messages whose bodies are
    /// the JSON of herald's first stored events (as a fetch delivers them).
    async fn prepare(server: &NatsServer, herald: SocketAddr, events: u64) -> Result<Self> {
        let response = Connection::open(herald)
            .await?
            .get(&format!("/api/events?limit={TEMPLATES}"))
            .await?;
        if response.status != 200 {
            bail!("GET /api/events answered {}", response.status);
        }
        let stored: Vec<Box<RawValue>> = serde_json::from_slice(&response.body)?;
        #[derive(Deserialize)]
        struct Subject {
            subject: String,
        }
        let templates: Vec<(String, Bytes)> = stored
            .iter()
            .map(|event| {
                let subject = serde_json::from_str::<Subject>(event.get())?.subject;
                Ok((
                    format!("cons.{}", subject.strip_prefix("hub.").unwrap_or(&subject)),
                    Bytes::copy_from_slice(event.get().as_bytes()),
                ))
            })
            .collect::<Result<_>>()?;
        if templates.is_empty() {
            bail!("GET /api/events returned no events to copy");
        }
        let body_bytes =
            templates.iter().map(|(_, b)| b.len()).sum::<usize>() as f64 / templates.len() as f64;

        let client = server.connect().await?;
        let js = jetstream::new(client);
        nats::delete_stream(&js, STREAM).await?;
        js.create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![STREAM_SUBJECTS.into()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the CONS stream")?;
        progress!(
            "consumer: filling the JetStream stream with {} messages",
            thousands(events)
        );
        let prefill = nats::publish_acked(server, &js, Span::Count(events), nats::IN_FLIGHT, |n| {
            let (subject, body) = &templates[n as usize % templates.len()];
            Outgoing {
                subject: subject.clone(),
                headers: None,
                body: body.clone(),
            }
        })
        .await?;
        if prefill.acked != events {
            bail!(
                "the JetStream fill stored {} of {} messages: {}",
                prefill.acked,
                events,
                prefill
                    .first_error
                    .as_deref()
                    .unwrap_or("no error recorded")
            );
        }
        let mut clients = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            clients.push(server.connect().await?);
        }
        Ok(JetStreamSide {
            clients,
            js,
            events,
            runs: JetStreamRuns {
                version: nats::version(),
                body_bytes,
                prefill,
                ack: Vec::new(),
                double_ack: Vec::new(),
            },
            failed: None,
        })
    }

    /// A fresh durable pull consumer, drained by [`CLIENTS`] clients fetching batches of
    /// [`FETCH_BATCH`] and acking each message (`ack()`, or `double_ack()`).
    async fn drain(
        &self,
        server: &NatsServer,
        plan: &Plan,
        round: usize,
        double: bool,
    ) -> Result<DrainRun> {
        let name = format!("drain-{round}-{}", if double { "double" } else { "ack" });
        let stream = self.js.get_stream(STREAM).await?;
        let _ = stream.delete_consumer(&name).await;
        stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_millis(ACK_WAIT_MS),
                max_deliver: 5,
                max_ack_pending: MAX_ACK_PENDING as i64,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the consumer {name}"))?;
        let mut consumers: Vec<PullConsumer> = Vec::with_capacity(CLIENTS);
        for client in &self.clients {
            let js = jetstream::new(client.clone());
            consumers.push(
                js.get_stream(STREAM)
                    .await?
                    .get_consumer(&name)
                    .await
                    .map_err(|e| anyhow::anyhow!("getting the consumer {name}: {e}"))?,
            );
        }
        let events = self.events;
        let acked = Arc::new(AtomicU64::new(0));
        let server_before = server.sample()?;
        let self_before = ProcSample::of("self")?;
        let start = Instant::now();
        let deadline = start + plan.drain_limit;
        let mut tasks = Vec::with_capacity(CLIENTS);
        for consumer in consumers {
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let mut tally = ClientTally {
                    fetch_latency: Vec::with_capacity(4096),
                    ack_latency: Vec::with_capacity(4096),
                    ..ClientTally::default()
                };
                let mut messages = Vec::with_capacity(FETCH_BATCH);
                while acked.load(Ordering::Relaxed) < events
                    && Instant::now() < deadline
                    && tally.errors <= MAX_CLIENT_ERRORS
                {
                    let sent = Instant::now();
                    let mut batch =
                        match consumer.fetch().max_messages(FETCH_BATCH).messages().await {
                            Ok(batch) => batch,
                            Err(error) => {
                                tally.error(error);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        };
                    messages.clear();
                    while let Some(message) = batch.next().await {
                        match message {
                            Ok(message) => messages.push(message),
                            Err(error) => tally.error(error),
                        }
                    }
                    tally.fetches += 1;
                    tally.fetch_latency.push(sent.elapsed().as_nanos() as u64);
                    if messages.is_empty() {
                        tally.empty_fetches += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    tally.messages += messages.len() as u64;
                    for message in &messages {
                        let delivered = message.info().map_or(1, |info| info.delivered);
                        tally.redelivered += u64::from(delivered > 1);
                    }
                    let sent = Instant::now();
                    let mut done = 0;
                    if double {
                        let answers = futures_util::future::join_all(
                            messages.iter().map(|message| message.double_ack()),
                        )
                        .await;
                        for answer in answers {
                            match answer {
                                Ok(()) => done += 1,
                                Err(error) => tally.error(error),
                            }
                        }
                    } else {
                        for message in &messages {
                            match message.ack().await {
                                Ok(()) => done += 1,
                                Err(error) => tally.error(error),
                            }
                        }
                    }
                    let now = Instant::now();
                    tally.ack_latency.push((now - sent).as_nanos() as u64);
                    tally.acked += done;
                    tally.last_ack = Some(now);
                    acked.fetch_add(done, Ordering::Relaxed);
                }
                tally
            }));
        }
        let mut tallies = Vec::with_capacity(CLIENTS);
        for task in tasks {
            tallies.push(task.await?);
        }
        let mut run = ClientTally::merge(tallies, start);
        // `ack()` only queues the ack: the run ends when the server's ack floor says N.
        for client in &self.clients {
            client.flush().await?;
        }
        let stream = self.js.get_stream(STREAM).await?;
        let mut consumer: PullConsumer = stream
            .get_consumer(&name)
            .await
            .map_err(|e| anyhow::anyhow!("getting the consumer {name}: {e}"))?;
        let floor_deadline = Instant::now() + Duration::from_secs(30);
        let info = loop {
            let info = consumer.info().await?.clone();
            let now = Instant::now();
            if (info.ack_floor.stream_sequence >= events && info.num_ack_pending == 0)
                || now >= floor_deadline
            {
                if !double {
                    run.elapsed = now - start;
                }
                break info;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let server_after = server.sample()?;
        let self_after = ProcSample::of("self")?;
        run.server_cores = server_after.cores_used_since(&server_before);
        run.generator_cores = self_after.cores_used_since(&self_before);
        run.written = server_after.written_since(&server_before);
        run.complete = info.ack_floor.stream_sequence >= events
            && info.num_ack_pending == 0
            && info.num_pending == 0;
        run.end_state = format!(
            "ack_floor {}, num_pending {}, num_ack_pending {}, num_redelivered {}",
            info.ack_floor.stream_sequence,
            info.num_pending,
            info.num_ack_pending,
            info.num_redelivered
        );
        if run.acked < events {
            run.note = Some(format!(
                "{} of {} acked when the clients stopped",
                thousands(run.acked),
                thousands(events)
            ));
        }
        stream
            .delete_consumer(&name)
            .await
            .with_context(|| format!("deleting the consumer {name}"))?;
        Ok(run)
    }
}

// ---------------------------------------------------------------------------------------
// Part 2: redelivery delays.

/// What the redelivery run measured.
struct Redelivery {
    /// (scheduled ms, actual − scheduled in ns) per redelivery seen.
    samples: Vec<(u64, i64)>,
    published: u64,
    /// Probes that reached their final delivery and were acked.
    finished: u64,
    /// Redeliveries fetched before the NAK answer arrived (or of unknown seqs).
    unmatched: u64,
    /// Messages seen with an unexpected delivery count.
    out_of_order: u64,
    /// NAK/ack ids herald answered as unknown.
    unknown: u64,
    errors: u64,
    first_error: Option<String>,
    nak_latency: Samples,
    end_state: String,
    elapsed: Duration,
}

/// A message handed from the fetcher to the NAK/ack client.
struct Handed {
    ack_id: String,
    seq: u64,
    delivery: u64,
}

async fn redelivery(herald: &ServerProcess, plan: &Plan) -> Result<Redelivery> {
    let name = "redelivery";
    put_consumer(
        herald.addr,
        name,
        &ConsumerConfig {
            filter_subjects: &[REDELIVERY_FILTER],
            deliver_policy: "all",
            ack_wait_ms: REDELIVERY_ACK_WAIT_MS,
            max_deliver: REDELIVERY_MAX_DELIVER,
            backoff_ms: Some(&BACKOFF_MS),
            max_ack_pending: MAX_ACK_PENDING,
        },
    )
    .await?;
    let probes = plan.probes;
    let final_delivery = BACKOFF_MS.len() as u64 + 1;
    // Per seq: when its last NAK was answered, and the delivery it NAKed.
    let naked: Arc<Mutex<HashMap<u64, (Instant, u64)>>> = Arc::default();
    let finished = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started
        + plan.probe_spacing * probes as u32
        + Duration::from_millis(BACKOFF_MS.iter().sum::<u64>())
        + Duration::from_secs(20);

    // Publisher: one probe every `probe_spacing`.
    let addr = herald.addr;
    let spacing = plan.probe_spacing;
    let publisher = tokio::spawn(async move {
        let mut connection = Connection::open(addr).await?;
        let mut ticker = tokio::time::interval(spacing);
        let mut published = 0;
        for i in 0..probes {
            ticker.tick().await;
            let body = workload::publish_body(REDELIVERY_SUBJECT, i);
            let response = connection.post_json("/api/events", body).await?;
            if response.status != 201 {
                bail!(
                    "POST /api/events answered {}: {}",
                    response.status,
                    excerpt(&response.body)
                );
            }
            published += 1;
        }
        Ok::<u64, anyhow::Error>(published)
    });

    // NAK/ack client: one request per fetched batch.
    let (hand, mut handed) = mpsc::unbounded_channel::<Vec<Handed>>();
    let settler = {
        let (naked, finished) = (naked.clone(), finished.clone());
        let nak_path = format!("{}/nak", consumer_path(name));
        let ack_path = format!("{}/ack", consumer_path(name));
        tokio::spawn(async move {
            let mut connection = Connection::open(addr).await?;
            let mut latency = Vec::new();
            let (mut unknown, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            while let Some(batch) = handed.recv().await {
                let (last, rest): (Vec<Handed>, Vec<Handed>) = batch
                    .into_iter()
                    .partition(|m| m.delivery >= final_delivery);
                if !rest.is_empty() {
                    let ids: Vec<String> = rest.iter().map(|m| m.ack_id.clone()).collect();
                    let sent = Instant::now();
                    match settle_ids(&mut connection, &nak_path, &ids).await {
                        Ok((_, not_known)) => {
                            let answered = Instant::now();
                            latency.push((answered - sent).as_nanos() as u64);
                            unknown += not_known;
                            let mut naked = naked.lock().expect("not poisoned");
                            for m in &rest {
                                naked.insert(m.seq, (answered, m.delivery));
                            }
                        }
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert(format!("{error:#}"));
                        }
                    }
                }
                if !last.is_empty() {
                    let ids: Vec<String> = last.iter().map(|m| m.ack_id.clone()).collect();
                    match settle_ids(&mut connection, &ack_path, &ids).await {
                        Ok((done, not_known)) => {
                            unknown += not_known;
                            finished.fetch_add(done, Ordering::Relaxed);
                        }
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert(format!("{error:#}"));
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>((latency, unknown, errors, first_error))
        })
    };

    // Fetcher: long polls, notes when each redelivery arrives.
    let mut connection = Connection::open(addr).await?;
    let fetch_path = format!("{}/fetch", consumer_path(name));
    let body = fetch_body(FETCH_BATCH, REDELIVERY_WAIT_MS);
    let mut samples = Vec::new();
    let (mut unmatched, mut out_of_order, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None::<String>;
    let mut last_delivery: HashMap<u64, u64> = HashMap::new();
    while finished.load(Ordering::Relaxed) < probes && Instant::now() < deadline {
        let messages = match fetch(&mut connection, &fetch_path, body.clone()).await {
            Ok(messages) => messages,
            Err(error) => {
                errors += 1;
                first_error.get_or_insert(format!("{error:#}"));
                if errors > MAX_CLIENT_ERRORS {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                connection = Connection::open(addr).await?;
                continue;
            }
        };
        let received = Instant::now();
        let mut batch = Vec::with_capacity(messages.len());
        {
            let naked = naked.lock().expect("not poisoned");
            for message in messages {
                let seq = message.event.seq;
                let expected = last_delivery.get(&seq).map_or(1, |d| d + 1);
                if message.delivery != expected {
                    out_of_order += 1;
                }
                last_delivery.insert(seq, message.delivery);
                if message.delivery > 1 {
                    match naked.get(&seq) {
                        Some(&(answered, naked_delivery))
                            if naked_delivery + 1 == message.delivery =>
                        {
                            let step = (naked_delivery as usize - 1).min(BACKOFF_MS.len() - 1);
                            let scheduled = BACKOFF_MS[step];
                            let actual = if received >= answered {
                                (received - answered).as_nanos() as i64
                            } else {
                                -((answered - received).as_nanos() as i64)
                            };
                            samples.push((scheduled, actual - (scheduled * 1_000_000) as i64));
                        }
                        _ => unmatched += 1,
                    }
                }
                batch.push(Handed {
                    ack_id: message.ack_id,
                    seq,
                    delivery: message.delivery,
                });
            }
        }
        if !batch.is_empty() && hand.send(batch).is_err() {
            break;
        }
    }
    let elapsed = started.elapsed();
    drop(hand);
    let published = match publisher.await? {
        Ok(published) => published,
        Err(error) => {
            errors += 1;
            first_error.get_or_insert(format!("publishing: {error:#}"));
            0
        }
    };
    let (nak_latency, unknown, settle_errors, settle_error) = settler.await??;
    errors += settle_errors;
    if first_error.is_none() {
        first_error = settle_error;
    }
    let end_state = match consumer_state(addr, name).await {
        Ok(state) => state.describe(),
        Err(error) => format!("unreadable: {error:#}"),
    };
    delete_consumer(addr, name).await?;
    Ok(Redelivery {
        samples,
        published,
        finished: finished.load(Ordering::Relaxed),
        unmatched,
        out_of_order,
        unknown,
        errors,
        first_error,
        nak_latency: Samples::new(nak_latency),
        end_state,
        elapsed,
    })
}

/// Nearest-rank percentile of signed values, sorted ascending.
fn signed_quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn signed_ms(nanos: i64) -> String {
    format!("{:+.3} ms", nanos as f64 / 1e6)
}

// ---------------------------------------------------------------------------------------
// Part 3: RSS with a consumer far behind.

/// One RSS reading.
struct Moment {
    label: String,
    stored: u64,
    pending: Option<u64>,
    sample: ProcSample,
}

struct Behind {
    moments: Vec<Moment>,
    fill: FillResult,
    /// Peak RSS sampled every 250 ms during the fill.
    fill_peak: u64,
    control_moments: Vec<Moment>,
    control_fill: FillResult,
    control_fill_peak: u64,
    /// The consumer's state right after the fill, and after the batches.
    state_after_fill: ConsumerState,
    state_after_batches: ConsumerState,
    first_fetch: Duration,
    first_ack: Duration,
    acked: u64,
}

/// Fills `events` events while sampling the RSS every 250 ms; returns the peak.
async fn fill_sampling(
    herald: &ServerProcess,
    label: &'static str,
    events: u64,
    limit: Duration,
) -> Result<(FillResult, u64)> {
    let pool = Arc::new(super::interop::batch_pool(FILL_BATCH, 4));
    let pid = herald.pid.to_string();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            if let Ok(sample) = ProcSample::of(&pid) {
                peak = peak.max(sample.rss_bytes);
            }
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        peak
    });
    let fill = batch_fill(
        herald,
        label,
        pool,
        FILL_BATCH,
        events,
        FILL_CONNECTIONS,
        limit,
    )
    .await;
    let _ = stop.send(());
    let peak = sampler.await?;
    Ok((fill?, peak))
}

async fn behind(options: &Options, plan: &Plan) -> Result<Behind> {
    let name = "behind";
    let herald = ServerProcess::herald(&options.herald_bin, &options.data_parent).await?;
    let mut moments = Vec::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    moments.push(Moment {
        label: "idle, 1 s after start".into(),
        stored: 0,
        pending: None,
        sample: herald.sample()?,
    });
    put_consumer(
        herald.addr,
        name,
        &ConsumerConfig {
            filter_subjects: &[FILTER],
            deliver_policy: "all",
            ack_wait_ms: ACK_WAIT_MS,
            max_deliver: 5,
            backoff_ms: None,
            max_ack_pending: MAX_ACK_PENDING,
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let state = consumer_state(herald.addr, name).await?;
    moments.push(Moment {
        label: "consumer created on the empty store".into(),
        stored: 0,
        pending: state.num_pending,
        sample: herald.sample()?,
    });
    let (fill, fill_peak) = fill_sampling(
        &herald,
        "consumer rss",
        plan.pending,
        plan.pending_fill_limit,
    )
    .await?;
    settle(&[&herald], Duration::from_secs(60)).await;
    let stored = head_seq(herald.addr).await?;
    let state_after_fill = consumer_state(herald.addr, name).await?;
    moments.push(Moment {
        label: "after the fill, once idle (nothing delivered)".into(),
        stored,
        pending: state_after_fill.num_pending,
        sample: herald.sample()?,
    });
    progress!(
        "consumer rss: {} stored, consumer: {}, RSS {}",
        thousands(stored),
        state_after_fill.describe(),
        mib(moments.last().expect("pushed").sample.rss_bytes)
    );

    let fetch_path = format!("{}/fetch", consumer_path(name));
    let ack_path = format!("{}/ack", consumer_path(name));
    let body = fetch_body(FETCH_BATCH, 0);
    let (mut first_fetch, mut first_ack, mut acked) = (Duration::ZERO, Duration::ZERO, 0);
    let mut connection = Connection::open(herald.addr).await?;
    for batch in 0..BEHIND_BATCHES {
        let sent = Instant::now();
        let messages = fetch(&mut connection, &fetch_path, body.clone()).await?;
        let fetched = sent.elapsed();
        let ids: Vec<String> = messages.into_iter().map(|m| m.ack_id).collect();
        let sent = Instant::now();
        let (done, _) = settle_ids(&mut connection, &ack_path, &ids).await?;
        if batch == 0 {
            first_fetch = fetched;
            first_ack = sent.elapsed();
        }
        acked += done;
    }
    settle(&[&herald], SETTLE_LIMIT).await;
    let state_after_batches = consumer_state(herald.addr, name).await?;
    moments.push(Moment {
        label: format!(
            "after {} fetched + acked ({BEHIND_BATCHES} batches of {FETCH_BATCH})",
            thousands(acked)
        ),
        stored,
        pending: state_after_batches.num_pending,
        sample: herald.sample()?,
    });
    herald.stop().await?;

    // The control: the same fill without a consumer.
    let control = ServerProcess::herald(&options.herald_bin, &options.data_parent).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut control_moments = vec![Moment {
        label: "control (no consumer): idle, 1 s after start".into(),
        stored: 0,
        pending: None,
        sample: control.sample()?,
    }];
    let (control_fill, control_fill_peak) = fill_sampling(
        &control,
        "consumer rss control",
        plan.pending,
        plan.pending_fill_limit,
    )
    .await?;
    settle(&[&control], Duration::from_secs(60)).await;
    control_moments.push(Moment {
        label: "control (no consumer): after the fill, once idle".into(),
        stored: head_seq(control.addr).await?,
        pending: None,
        sample: control.sample()?,
    });
    control.stop().await?;
    Ok(Behind {
        moments,
        fill,
        fill_peak,
        control_moments,
        control_fill,
        control_fill_peak,
        state_after_fill,
        state_after_batches,
        first_fetch,
        first_ack,
        acked,
    })
}

// ---------------------------------------------------------------------------------------
// Report.

fn median_rate(runs: &[DrainRun]) -> f64 {
    median(&runs.iter().map(DrainRun::per_second).collect::<Vec<_>>())
}

fn drain_row(label: String, run: &DrainRun, herald: bool) -> Vec<String> {
    vec![
        label,
        format!("**{:.0}**", run.per_second()),
        format!("{:.2} s", run.elapsed.as_secs_f64()),
        format!(
            "{} / {}",
            ms(run.fetch_latency.quantile(0.5)),
            ms(run.fetch_latency.quantile(0.99))
        ),
        format!(
            "{} / {}",
            ms(run.ack_latency.quantile(0.5)),
            ms(run.ack_latency.quantile(0.99))
        ),
        format!(
            "{} ({} empty)",
            thousands(run.fetches),
            thousands(run.empty_fetches)
        ),
        run.written.map_or("—".into(), |bytes| {
            format!(
                "{} ({:.0} B/msg)",
                mib(bytes),
                bytes as f64 / run.acked.max(1) as f64
            )
        }),
        format!("{:.2} cores", run.server_cores),
        format!("{:.2} cores", run.generator_cores),
        format!(
            "{} acked, {} redelivered{}, errors {}",
            thousands(run.acked),
            thousands(run.redelivered),
            if herald {
                format!(
                    ", {} unknown, {} acks retried",
                    thousands(run.unknown),
                    thousands(run.ack_retries)
                )
            } else {
                String::new()
            },
            run.errors
        ),
    ]
}

fn render(plan: &Plan, m: &Measured) -> String {
    let mut out = String::new();
    let herald_rate = median_rate(&m.herald);
    let herald_answer_bytes = median(
        &m.herald
            .iter()
            .filter_map(|r| r.answer_bytes_per_message)
            .collect::<Vec<_>>(),
    );
    out.push_str(&format!(
        "## Durable consumers: fetch + ack vs. JetStream pull consumers, redelivery delays, RSS far behind\n\n\
         ### Fetch + ack throughput\n\n\
         Herald's store holds N = {n} events on `hub.bench.<domain>.<action>` (filled by \
         `POST /api/events:batch`, {fill_batch} per batch, {fill_conns} connections: {fill_rate:.0} \
         events/s). Per round a fresh consumer (`filter_subjects: [\"{FILTER}\"]`, `deliver_policy: \
         all`, `max_ack_pending: {max_ack}`) is created, and {CLIENTS} clients, each on its own \
         keep-alive connection, loop: `POST …/fetch {{\"batch\": {FETCH_BATCH}, \"wait_ms\": 0}}`, then \
         one `POST …/ack` with every `ack_id` of the batch; msgs/s = N / (first fetch → last ack \
         answer). Herald records a fetch's deliveries and an ack in a store transaction (group \
         commit of the consumer calls); an ack is answered once it is synced, a fetch once \
         written (synced with the next ack). A fetch answer carries \
         {answer_bytes:.0} bytes per message.\n\n\
         The ceiling: a local `{version}` `-js` (file storage, temporary directory), a \
         stream `{STREAM}` holding N messages whose bodies are the JSON of herald's first \
         {templates} stored events ({body_bytes} bytes on average), a fresh durable pull \
         consumer per run (`AckPolicy::Explicit`, same ack wait and max ack pending), and \
         {CLIENTS} `async-nats` clients (one connection each) fetching batches of {FETCH_BATCH} \
         (`fetch()`, no wait) and acking each message: with `ack()` (fire and forget, as \
         JetStream clients normally ack; the run ends when the consumer's ack floor reaches \
         N, polled every 2 ms) and with `double_ack()` (each ack confirmed by the server, the \
         {FETCH_BATCH} of a batch awaited together). nats-server 2.9 writes consumer state to \
         its file store without an fsync per ack. {rounds} round(s), herald then JetStream \
         `ack()` then `double_ack()`; medians.\n\n",
        n = thousands(m.events),
        fill_batch = thousands(FILL_BATCH as u64),
        fill_conns = FILL_CONNECTIONS,
        fill_rate = m.fill.stored as f64 / m.fill.elapsed.as_secs_f64().max(1e-9),
        max_ack = thousands(MAX_ACK_PENDING),
        answer_bytes = herald_answer_bytes,
        templates = thousands(TEMPLATES as u64),
        body_bytes = m
            .jetstream
            .as_ref()
            .map_or("—".into(), |j| format!("{:.0}", j.body_bytes)),
        rounds = plan.rounds,
        version = m
            .jetstream
            .as_ref()
            .map_or("nats-server".into(), |j| j.version.clone()),
    ));
    let mut table = Table::new(&[
        "Run",
        "msgs/s",
        "elapsed",
        "fetch p50 / p99",
        "ack p50 / p99 (per batch)",
        "fetches",
        "server writes (/proc io)",
        "server CPU",
        "client CPU",
        "messages",
    ]);
    for index in 0..plan.rounds {
        if let Some(run) = m.herald.get(index) {
            table.row(drain_row(format!("herald, round {}", index + 1), run, true));
        }
        if let Ok(js) = &m.jetstream {
            if let Some(run) = js.ack.get(index) {
                table.row(drain_row(
                    format!("JetStream `ack()`, round {}", index + 1),
                    run,
                    false,
                ));
            }
            if let Some(run) = js.double_ack.get(index) {
                table.row(drain_row(
                    format!("JetStream `double_ack()`, round {}", index + 1),
                    run,
                    false,
                ));
            }
        }
    }
    out.push_str(&table.render());

    let mut checks = Table::new(&["Check", "Value", "Target", "Result"]);
    match &m.jetstream {
        Ok(js) => {
            let ack_rate = median_rate(&js.ack);
            let double_rate = median_rate(&js.double_ack);
            let ratio = if ack_rate > 0.0 {
                herald_rate / ack_rate
            } else {
                0.0
            };
            let double_ratio = if double_rate > 0.0 {
                herald_rate / double_rate
            } else {
                0.0
            };
            out.push_str(&format!(
                "\nMedians: herald **{herald_rate:.0} msgs/s**, JetStream `ack()` **{ack_rate:.0} msgs/s** \
                 ({}), JetStream `double_ack()` {double_rate:.0} msgs/s ({}). JetStream fill: {} \
                 messages in {:.2} s.\n",
                percent(ratio),
                percent(double_ratio),
                thousands(js.prefill.acked),
                js.prefill.elapsed.as_secs_f64()
            ));
            checks.row(vec![
                "herald fetch + ack / JetStream pull + `ack()` (msgs/s)".into(),
                format!("{} ({herald_rate:.0} / {ack_rate:.0})", percent(ratio)),
                format!("≥ {}", percent(THROUGHPUT_TARGET)),
                verdict(ratio >= THROUGHPUT_TARGET).into(),
            ]);
            checks.row(vec![
                "herald / JetStream pull + `double_ack()` (informative)".into(),
                format!(
                    "{} ({herald_rate:.0} / {double_rate:.0})",
                    percent(double_ratio)
                ),
                "—".into(),
                "—".into(),
            ]);
        }
        Err(error) => {
            out.push_str(&format!(
                "\nMedian: herald **{herald_rate:.0} msgs/s**. JetStream ceiling not measured: {error}.\n"
            ));
        }
    }
    if let Some(error) = &m.herald_error {
        out.push_str(&format!("\nHerald's drain failed: `{error}`\n"));
    }
    let all_acked = m.herald_error.is_none()
        && !m.herald.is_empty()
        && m.herald.iter().all(|r| r.complete && r.unknown == 0)
        && m.jetstream.as_ref().map_or(true, |j| {
            j.ack.iter().chain(&j.double_ack).all(|r| r.complete)
        });
    checks.row(vec![
        "every run: all N acked once, consumer empty at the end".into(),
        m.herald
            .iter()
            .enumerate()
            .map(|(i, r)| format!("herald round {}: {}", i + 1, r.end_state))
            .collect::<Vec<_>>()
            .join("; "),
        "num_pending 0, num_ack_pending 0, no unknown ids".into(),
        verdict(all_acked).into(),
    ]);
    let herald_errors: u64 = m.herald.iter().map(|r| r.errors).sum();
    checks.row(vec![
        "herald fetch/ack requests that failed (each failed ack sent again)".into(),
        format!(
            "{} over {} round(s){}",
            thousands(herald_errors),
            m.herald.len(),
            m.herald
                .iter()
                .find_map(|r| r.first_error.as_ref())
                .map_or(String::new(), |e| format!("; first: `{e}`"))
        ),
        "0".into(),
        verdict(herald_errors == 0 && m.herald_error.is_none()).into(),
    ]);

    // Part 2.
    out.push_str(&format!(
        "\n### Redelivery delays (backoff on NAK)\n\n\
         A consumer on `{REDELIVERY_FILTER}` with `backoff_ms: {BACKOFF_MS:?}`, `ack_wait_ms: \
         {REDELIVERY_ACK_WAIT_MS}`, `max_deliver: {REDELIVERY_MAX_DELIVER}`. {probes} events are \
         published one every {spacing} ms; one client long-polls `fetch` (`batch` {FETCH_BATCH}, \
         `wait_ms` {REDELIVERY_WAIT_MS}) and hands each batch to a second client, which NAKs it \
         without `delay_ms` (deliveries 1 to {last_nak}) or acks it (delivery {final_delivery}). \
         actual delay = the fetch answer carrying delivery d + 1 − the answer of the NAK of \
         delivery d; scheduled = `backoff_ms[d − 1]`; error = actual − scheduled (one client \
         clock).\n\n",
        probes = plan.probes,
        spacing = plan.probe_spacing.as_millis(),
        last_nak = BACKOFF_MS.len(),
        final_delivery = BACKOFF_MS.len() + 1,
    ));
    match &m.redelivery {
        Ok(r) => {
            let mut table = Table::new(&[
                "scheduled",
                "redeliveries",
                "error p50",
                "error p99",
                "error min / max",
                "abs(error) p99",
            ]);
            let mut steps: Vec<Option<u64>> = BACKOFF_MS.iter().map(|&b| Some(b)).collect();
            steps.push(None);
            let mut overall_abs_p99 = 0;
            for step in steps {
                let mut errors: Vec<i64> = r
                    .samples
                    .iter()
                    .filter(|(scheduled, _)| step.is_none_or(|s| s == *scheduled))
                    .map(|(_, error)| *error)
                    .collect();
                errors.sort_unstable();
                let absolute = Samples::new(errors.iter().map(|e| e.unsigned_abs()).collect());
                if step.is_none() {
                    overall_abs_p99 = absolute.quantile(0.99);
                }
                table.row(vec![
                    step.map_or("**all**".into(), |s| format!("{s} ms")),
                    thousands(errors.len() as u64),
                    signed_ms(signed_quantile(&errors, 0.5)),
                    format!("**{}**", signed_ms(signed_quantile(&errors, 0.99))),
                    format!(
                        "{} / {}",
                        signed_ms(errors.first().copied().unwrap_or(0)),
                        signed_ms(errors.last().copied().unwrap_or(0))
                    ),
                    ms(absolute.quantile(0.99)),
                ]);
            }
            out.push_str(&table.render());
            out.push_str(&format!(
                "\n{} published, {} acked at their last delivery, in {:.1} s; NAK answer p50 {} / \
                 p99 {}; redeliveries not matched to a NAK answer: {}; unexpected delivery \
                 counts: {}; unknown ids: {}; errors: {}. Consumer at the end: {}.\n",
                thousands(r.published),
                thousands(r.finished),
                r.elapsed.as_secs_f64(),
                ms(r.nak_latency.quantile(0.5)),
                ms(r.nak_latency.quantile(0.99)),
                r.unmatched,
                r.out_of_order,
                r.unknown,
                r.errors,
                r.end_state
            ));
            if let Some(error) = &r.first_error {
                out.push_str(&format!("\nFirst error: `{error}`\n"));
            }
            let expected = r.published * BACKOFF_MS.len() as u64;
            checks.row(vec![
                "redelivery delay: abs(actual − scheduled) p99".into(),
                format!(
                    "{} over {} redeliveries",
                    ms(overall_abs_p99),
                    thousands(r.samples.len() as u64)
                ),
                format!("≤ {} ms", REDELIVERY_TARGET_P99.as_millis()),
                verdict(
                    !r.samples.is_empty()
                        && overall_abs_p99 <= REDELIVERY_TARGET_P99.as_nanos() as u64,
                )
                .into(),
            ]);
            checks.row(vec![
                "every probe redelivered on schedule and acked".into(),
                format!(
                    "{} of {} redeliveries measured, {} of {} acked",
                    thousands(r.samples.len() as u64),
                    thousands(expected),
                    thousands(r.finished),
                    thousands(r.published)
                ),
                "all".into(),
                verdict(
                    r.samples.len() as u64 == expected
                        && r.finished == r.published
                        && r.published == plan.probes
                        && r.errors == 0,
                )
                .into(),
            ]);
        }
        Err(error) => out.push_str(&format!("Not measured: {error}.\n")),
    }

    // Part 3.
    match &m.behind {
        None => out.push_str(
            "\n### RSS with a consumer far behind\n\nSkipped (`--consumer-pending 0`).\n",
        ),
        Some(Err(error)) => out.push_str(&format!(
            "\n### RSS with a consumer far behind\n\nNot measured: {error}.\n"
        )),
        Some(Ok(b)) => {
            out.push_str(&format!(
                "\n### RSS with a consumer far behind\n\n\
                 A fresh herald; a consumer on `{FILTER}` is created on its empty store; P = {p} \
                 matching events are then stored through `POST /api/events:batch` ({fill_batch} per \
                 batch, {FILL_CONNECTIONS} connections) and none delivered; then {BEHIND_BATCHES} \
                 batches of {FETCH_BATCH} are fetched and acked. The control is a second fresh \
                 herald filled the same way without a consumer. VmRSS and its parts from \
                 /proc/PID/status; \"peak during the fill\" samples VmRSS every 250 ms. First fetch \
                 of the consumer {p} behind: {first_fetch}, its ack: {first_ack}.\n\n",
                p = thousands(plan.pending),
                fill_batch = thousands(FILL_BATCH as u64),
                first_fetch = ms(b.first_fetch.as_nanos() as u64),
                first_ack = ms(b.first_ack.as_nanos() as u64),
            ));
            let mut table = Table::new(&[
                "Moment",
                "events stored",
                "num_pending",
                "VmRSS",
                "anon / file / shmem",
                "VmHWM",
            ]);
            for moment in b.moments.iter().chain(&b.control_moments) {
                let s = &moment.sample;
                table.row(vec![
                    moment.label.clone(),
                    thousands(moment.stored),
                    moment.pending.map_or("—".into(), thousands),
                    format!("**{}**", mib(s.rss_bytes)),
                    format!(
                        "{} / {} / {}",
                        mib(s.rss_anon_bytes),
                        mib(s.rss_file_bytes),
                        mib(s.rss_shmem_bytes)
                    ),
                    mib(s.hwm_bytes),
                ]);
            }
            out.push_str(&table.render());
            out.push_str(&format!(
                "\nFills: with the consumer {} events in {:.1} s (peak RSS {}, errors {}); control {} \
                 events in {:.1} s (peak RSS {}, errors {}). Consumer after the fill: {}; after the \
                 batches: {}.\n",
                thousands(b.fill.stored),
                b.fill.elapsed.as_secs_f64(),
                mib(b.fill_peak),
                describe_errors(&b.fill.bad_statuses, b.fill.transport_errors),
                thousands(b.control_fill.stored),
                b.control_fill.elapsed.as_secs_f64(),
                mib(b.control_fill_peak),
                describe_errors(&b.control_fill.bad_statuses, b.control_fill.transport_errors),
                b.state_after_fill.describe(),
                b.state_after_batches.describe(),
            ));
            let stored = b.moments.get(2).map_or(0, |m| m.stored);
            checks.row(vec![
                format!(
                    "num_pending after storing {} events",
                    thousands(plan.pending)
                ),
                format!(
                    "{} (store head {}); after {} acked: {}",
                    b.state_after_fill.num_pending.map_or("—".into(), thousands),
                    thousands(stored),
                    thousands(b.acked),
                    b.state_after_batches
                        .num_pending
                        .map_or("—".into(), thousands)
                ),
                "= events stored, then − acked".into(),
                verdict(
                    b.state_after_fill.num_pending == Some(stored)
                        && b.state_after_batches.num_pending == Some(stored - b.acked.min(stored))
                        && stored >= plan.pending,
                )
                .into(),
            ]);
            let rss =
                |moments: &[Moment], i: usize| moments.get(i).map_or(0, |m| m.sample.rss_bytes);
            let with_consumer = rss(&b.moments, 2);
            let after_batches = rss(&b.moments, 3);
            let control = rss(&b.control_moments, 1);
            let over = with_consumer.max(after_batches).saturating_sub(control);
            checks.row(vec![
                format!(
                    "RSS with {} pending (and after the batches) − control",
                    thousands(plan.pending)
                ),
                format!(
                    "{} / {} vs. {} ({}{})",
                    mib(with_consumer),
                    mib(after_batches),
                    mib(control),
                    if with_consumer.max(after_batches) >= control {
                        "+"
                    } else {
                        "−"
                    },
                    mib(with_consumer.max(after_batches).abs_diff(control))
                ),
                format!("≤ +{}", mib(MAX_RSS_OVER_CONTROL)),
                verdict(over <= MAX_RSS_OVER_CONTROL).into(),
            ]);
            checks.row(vec![
                "RSS growth from the consumer on the empty store to P pending (informative; the store's page cache grows too)".into(),
                format!(
                    "{} → {} (control idle → filled: {} → {})",
                    mib(rss(&b.moments, 1)),
                    mib(with_consumer),
                    mib(rss(&b.control_moments, 0)),
                    mib(control)
                ),
                "—".into(),
                "—".into(),
            ]);
        }
    }

    out.push_str("\n### Checks\n\n");
    out.push_str(&checks.render());
    for (index, run) in m.herald.iter().enumerate() {
        if let Some(note) = &run.note {
            out.push_str(&format!("\nHerald round {}: {note}\n", index + 1));
        }
        if let Some(error) = &run.first_error {
            out.push_str(&format!(
                "\nHerald round {}: first error `{error}`\n",
                index + 1
            ));
        }
    }
    if let Ok(js) = &m.jetstream {
        for (label, runs) in [("ack()", &js.ack), ("double_ack()", &js.double_ack)] {
            for (index, run) in runs.iter().enumerate() {
                if let Some(note) = &run.note {
                    out.push_str(&format!(
                        "\nJetStream {label} round {}: {note}\n",
                        index + 1
                    ));
                }
                if let Some(error) = &run.first_error {
                    out.push_str(&format!(
                        "\nJetStream {label} round {}: first error `{error}`; end: {}\n",
                        index + 1,
                        run.end_state
                    ));
                }
            }
        }
    }
    if let Some(error) = &m.fill.first_error {
        out.push_str(&format!("\nFill: first error `{error}`\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_config_is_the_wire_contract() {
        let config = ConsumerConfig {
            filter_subjects: &["hub.*.orders.>"],
            deliver_policy: "all",
            ack_wait_ms: 30_000,
            max_deliver: 5,
            backoff_ms: Some(&[1_000, 2_000, 4_000]),
            max_ack_pending: 1_000,
        };
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            serde_json::json!({
                "filter_subjects": ["hub.*.orders.>"],
                "deliver_policy": "all",
                "ack_wait_ms": 30000,
                "max_deliver": 5,
                "backoff_ms": [1000, 2000, 4000],
                "max_ack_pending": 1000
            })
        );
        let without_backoff = ConsumerConfig {
            backoff_ms: None,
            ..config
        };
        let value = serde_json::to_value(&without_backoff).unwrap();
        assert!(value.get("backoff_ms").is_none());
    }

    #[test]
    fn reads_fetch_and_ack_answers() {
        let fetched: Fetched = serde_json::from_str(
            r#"{"messages": [{"ack_id": "a1", "delivery": 2, "event": {"id": "x", "seq": 7,
                "subject": "hub.bench.orders.created", "payload": {"i": 1},
                "timestamp": "2026-01-01T00:00:00Z"}}]}"#,
        )
        .unwrap();
        assert_eq!(fetched.messages.len(), 1);
        assert_eq!(fetched.messages[0].ack_id, "a1");
        assert_eq!(fetched.messages[0].delivery, 2);
        assert_eq!(fetched.messages[0].event.seq, 7);
        let answer: AckAnswer = serde_json::from_str(r#"{"done": 3, "unknown": ["b"]}"#).unwrap();
        assert_eq!((answer.done, answer.unknown.len()), (3, 1));
        let body = serde_json::to_string(&AckIds {
            ack_ids: &["a1".to_string(), "a\"2".to_string()],
        })
        .unwrap();
        assert_eq!(body, r#"{"ack_ids":["a1","a\"2"]}"#);
    }

    #[test]
    fn reads_consumer_state() {
        let info: ConsumerInfo = serde_json::from_str(
            r#"{"filter_subjects": ["hub.>"], "state": {"ack_floor": 10, "last_delivered_seq": 12,
                "num_pending": 1000000, "num_ack_pending": 2, "num_redelivered": 0,
                "num_dead_letters": 0, "stalled": false}}"#,
        )
        .unwrap();
        assert_eq!(info.state.ack_floor_seq(), Some(10));
        assert_eq!(info.state.num_pending, Some(1_000_000));
        assert!(info.state.describe().contains("num_pending 1,000,000"));
        let stalled: ConsumerState =
            serde_json::from_str(r#"{"ack_floor": 0, "stalled": "max_ack_pending"}"#).unwrap();
        assert!(stalled.describe().contains("stalled \"max_ack_pending\""));
        let object: ConsumerState =
            serde_json::from_str(r#"{"ack_floor": {"stream_seq": 4, "consumer_seq": 2}}"#).unwrap();
        assert_eq!(object.ack_floor_seq(), Some(4));
        assert_eq!(ConsumerState::default().ack_floor_seq(), None);
    }

    #[test]
    fn signed_percentiles() {
        let mut values = vec![5, -3, 0, 2, -1];
        values.sort_unstable();
        assert_eq!(signed_quantile(&values, 0.5), 0);
        assert_eq!(signed_quantile(&values, 0.99), 5);
        assert_eq!(signed_quantile(&values, 0.0), -3);
        assert_eq!(signed_quantile(&[], 0.5), 0);
        assert_eq!(signed_ms(-1_500_000), "-1.500 ms");
        assert_eq!(signed_ms(2_000_000), "+2.000 ms");
    }
}
