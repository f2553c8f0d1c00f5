//! Scenario `relay`: herald's NATS JetStream relay (issue 4), against a raw JetStream
//! publisher on the same `nats-server` in the same run.
//!
//! One local `nats-server -js` (file storage, temporary directory) serves the whole
//! scenario. Herald runs with `--nats-url` pointing at it, the bridge and presence off.
//!
//! 1. **Relay throughput**, per round: a fresh herald with `--nats-relay false` is filled
//!    with N events through `POST /api/events:batch` (1,000 per batch) and stopped
//!    (SIGTERM); the `HERALD` stream is deleted; herald is started again on the same
//!    store with the relay on, and `/health/nats` is polled every 10 ms until
//!    `relay.acked_seq` = N: events/s = N / (spawn → acked N), start-up included. The
//!    stream must then hold N messages; its first and last message times also give the
//!    rate at which they were stored, start-up excluded.
//! 2. **Ceiling**, per round: one `async-nats` client publishes N messages to a stream
//!    `CEIL` (`ceil.>`) with the `HERALD` stream's configuration, 1,024 publish acks in
//!    flight (as the relay). The messages are copies of what herald relayed in the first
//!    round (bodies and headers as stored in `HERALD`), each with a fresh
//!    `Nats-Msg-Id`: msgs/s from the first publish to the last ack.
//! 3. **Lag under a steady rate**: a fresh herald with the relay on; `POST /api/events`
//!    open-loop at `--rate` (5,000/s) with the pacer of scenario (b); a core NATS
//!    subscriber on `hub.bench.>` (its own thread and runtime) takes the receipt time of
//!    each relayed message; lag = receipt wall clock − the event's commit `timestamp` in
//!    the body (one clock: same machine). `herald_relay_delay_seconds` (commit → PubAck)
//!    from /metrics is shown next to it.
//!
//! Rounds alternate relay and ceiling runs; medians are reported.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::latency::{paced_publish, Progress, PublishTally, MEASURED_PHASE, WARM_PHASE};
use super::{batch_fill, describe_errors, settle_pids, FillResult, Options};
use crate::client::Connection;
use crate::herald_metrics::{self, Histogram};
use crate::nats::{self, NatsServer, Outgoing, Span};
use crate::process::ServerProcess;
use crate::report::Table;
use crate::stats::{median, ms, percent, thousands, verdict, Samples};
use crate::{progress, workload};

/// The stream herald relays to (its default), and the ceiling's.
const HERALD_STREAM: &str = "HERALD";
const CEILING_STREAM: &str = "CEIL";
const CEILING_SUBJECTS: &str = "ceil.>";
/// Herald's header carrying the event's seq.
const SEQ_HEADER: &str = "Herald-Seq";
/// Events per batch of the fill, and connections sending them.
const BATCH_SIZE: usize = 1_000;
const BATCH_CONNECTIONS: usize = 2;
/// How often `/health/nats` is polled while the relay catches up.
const POLL: Duration = Duration::from_millis(10);
/// Relayed messages copied as the ceiling's messages.
const TEMPLATES: u64 = 512;
/// The relay must reach this share of the ceiling's msgs/s.
const THROUGHPUT_TARGET: f64 = 0.80;
/// The relay lag's p99 must stay below this at the target rate.
const LAG_TARGET_P99: Duration = Duration::from_millis(100);
/// Longest wait for the servers to go idle between runs.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// How long the subscriber waits for stragglers after the last publish was answered.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// The relay's commit → PubAck histogram in /metrics.
const DELAY_METRIC: &str = "herald_relay_delay_seconds";

/// Sizes and durations of the scenario.
struct Plan {
    rounds: usize,
    /// N: events relayed per round, and messages the ceiling publishes.
    events: u64,
    fill_limit: Duration,
    /// Longest wait for the relay to catch up.
    relay_limit: Duration,
    lag_warmup: Duration,
    lag_window: Duration,
}

impl Plan {
    fn new(options: &Options) -> Self {
        if options.quick {
            Plan {
                rounds: 1,
                events: 50_000,
                fill_limit: Duration::from_secs(30),
                relay_limit: Duration::from_secs(60),
                lag_warmup: Duration::from_millis(500),
                lag_window: Duration::from_secs(5),
            }
        } else {
            Plan {
                rounds: options.rounds.min(5),
                events: 200_000,
                fill_limit: Duration::from_secs(60),
                relay_limit: Duration::from_secs(120),
                lag_warmup: Duration::from_secs(1),
                lag_window: Duration::from_secs(20),
            }
        }
    }
}

/// `herald serve` flags: NATS at `server`, the relay on or off, no bridge, no presence.
fn herald_args(server: &NatsServer, relay: bool) -> Vec<String> {
    [
        "--nats-url",
        &server.url(),
        "--nats-relay",
        if relay { "true" } else { "false" },
        "--nats-bridge",
        "",
        "--presence-interval-secs",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub async fn run(options: &Options) -> Result<String> {
    let plan = Plan::new(options);
    progress!(
        "relay: {} round(s) of {} events (relay vs ceiling), then lag at {} events/s for {:?}",
        plan.rounds,
        thousands(plan.events),
        thousands(options.rate),
        plan.lag_window
    );
    let server = match NatsServer::start(&options.data_parent).await {
        Ok(server) => server,
        Err(error) => {
            // Not fatal, so that `all` still reports the other scenarios.
            progress!("relay: cannot start nats-server: {error:#}");
            return Ok(format!(
                "## NATS relay (issue 4)\n\nNot measured: {error:#}.\n"
            ));
        }
    };
    let measured = measure(options, &plan, &server).await;
    server.stop().await?;
    Ok(render(options, &plan, &measured?))
}

/// Everything the scenario measured.
struct Measured {
    version: String,
    relay: Vec<RelayRun>,
    ceiling: Vec<CeilingRun>,
    message: MessageShape,
    lag: LagResult,
}

async fn measure(options: &Options, plan: &Plan, server: &NatsServer) -> Result<Measured> {
    let client = server.connect().await?;
    let js = jetstream::new(client.clone());
    let pool = Arc::new(super::interop::batch_pool(BATCH_SIZE, 4));
    let mut relay_runs = Vec::new();
    let mut ceiling_runs = Vec::new();
    let mut ceiling_setup: Option<(jetstream::stream::Config, Vec<Template>)> = None;
    for round in 1..=plan.rounds {
        let run = relay_round(options, plan, server, &js, &pool).await?;
        progress!(
            "relay round {round}/{}: {} events in {:.2} s = {:.0} events/s (listening {}, first ack {}), \
             stream holds {}, stored at {:.0} msg/s",
            plan.rounds,
            thousands(run.events),
            run.total.as_secs_f64(),
            run.per_second(),
            ms(run.listening.as_nanos() as u64),
            run.first_ack.map_or("—".into(), |d| ms(d.as_nanos() as u64)),
            thousands(run.stream.messages),
            run.stream.per_second(run.events)
        );
        if ceiling_setup.is_none() {
            ceiling_setup = Some(ceiling_setup_from(&js).await?);
        }
        let events = run.events;
        relay_runs.push(run);
        nats::delete_stream(&js, HERALD_STREAM).await?;

        let (config, templates) = ceiling_setup.as_ref().expect("set above");
        let ceiling = ceiling_round(server, &js, config, templates, events).await?;
        progress!(
            "relay round {round}/{} ceiling: {} msgs in {:.2} s = {:.0} msgs/s, errors {}, duplicates {}, stream holds {}",
            plan.rounds,
            thousands(ceiling.run.acked),
            ceiling.run.elapsed.as_secs_f64(),
            ceiling.run.per_second(),
            ceiling.run.errors,
            ceiling.run.duplicates,
            thousands(ceiling.stream.messages)
        );
        ceiling_runs.push(ceiling);
    }
    let message = MessageShape::of(&ceiling_setup.expect("at least one round").1);
    let lag = lag(options, plan, server, &js).await?;
    Ok(Measured {
        version: nats::version(),
        relay: relay_runs,
        ceiling: ceiling_runs,
        message,
        lag,
    })
}

/// A stream's message count and when its first and last messages were stored.
struct StreamFigures {
    messages: u64,
    /// First → last message's store time (nats-server's clock).
    span: Duration,
    /// Unix nanoseconds of the first message.
    first_ns: i128,
}

impl StreamFigures {
    async fn of(js: &jetstream::Context, name: &str) -> Result<Self> {
        let mut stream = js
            .get_stream(name)
            .await
            .with_context(|| format!("getting the stream {name}"))?;
        let state = &stream.info().await?.state;
        let (first, last) = (
            state.first_timestamp.unix_timestamp_nanos(),
            state.last_timestamp.unix_timestamp_nanos(),
        );
        Ok(StreamFigures {
            messages: state.messages,
            span: Duration::from_nanos((last - first).max(0) as u64),
            first_ns: first,
        })
    }

    /// Messages per second between the first and the last stored message.
    fn per_second(&self, messages: u64) -> f64 {
        if messages < 2 || self.span.is_zero() {
            return 0.0;
        }
        (messages - 1) as f64 / self.span.as_secs_f64()
    }
}

/// One relay throughput run.
struct RelayRun {
    fill: FillResult,
    /// N: the events in herald's log when it restarted.
    events: u64,
    /// Spawn → herald's listening line.
    listening: Duration,
    /// Spawn → the first poll that saw `acked_seq` > 0.
    first_ack: Option<Duration>,
    /// Spawn → the first poll that saw `acked_seq` = N.
    total: Duration,
    /// `acked_seq` at the end (N unless the relay timed out).
    acked: u64,
    /// Spawn → the first message stored in the stream (wall clocks).
    first_stored: Option<Duration>,
    stream: StreamFigures,
    /// Herald's CPU from its spawn to acked N (start-up included), seconds.
    herald_cpu: f64,
    /// nats-server's CPU over the same time, in cores.
    nats_cores: f64,
    relay_errors: Option<f64>,
    note: Option<String>,
}

impl RelayRun {
    fn per_second(&self) -> f64 {
        self.acked as f64 / self.total.as_secs_f64().max(1e-9)
    }

    fn complete(&self) -> bool {
        self.acked == self.events && self.stream.messages == self.events
    }
}

async fn relay_round(
    options: &Options,
    plan: &Plan,
    server: &NatsServer,
    js: &jetstream::Context,
    pool: &Arc<Vec<Bytes>>,
) -> Result<RelayRun> {
    // Fill a store with the relay off.
    let herald = ServerProcess::herald_with_args(
        &options.herald_bin,
        &options.data_parent,
        &herald_args(server, false),
    )
    .await?;
    let fill = batch_fill(
        &herald,
        "relay",
        pool.clone(),
        BATCH_SIZE,
        plan.events,
        BATCH_CONNECTIONS,
        plan.fill_limit,
    )
    .await?;
    let events = head_seq(&herald).await?;
    if events == 0 {
        bail!(
            "the fill stored nothing: {}",
            fill.first_error.as_deref().unwrap_or("no error recorded")
        );
    }
    let dir = herald.stop_keeping_data().await?;
    nats::delete_stream(js, HERALD_STREAM).await?;
    settle_pids(&[server.pid], SETTLE_LIMIT).await;

    // Restart on the same store with the relay on, and time it to acked_seq = N.
    let nats_before = server.sample()?;
    let spawned_wall = unix_nanos();
    let spawned = Instant::now();
    let herald =
        ServerProcess::herald_reopen(&options.herald_bin, dir, &herald_args(server, true)).await?;
    let listening = spawned.elapsed();
    let mut connection = Connection::open(herald.addr).await?;
    let deadline = spawned + plan.relay_limit;
    let mut first_ack = None;
    let mut note = None;
    let acked = loop {
        let health = nats_health(&mut connection).await?;
        let now = Instant::now();
        let acked = health.relay.map_or(0, |r| r.acked_seq);
        if acked > 0 && first_ack.is_none() {
            first_ack = Some(now - spawned);
        }
        if acked >= events {
            break acked;
        }
        if now >= deadline {
            note = Some(format!(
                "the relay had acknowledged {acked} of {events} events after {:?}",
                plan.relay_limit
            ));
            break acked;
        }
        tokio::time::sleep(POLL).await;
    };
    let total = spawned.elapsed();
    let herald_cpu = herald.sample()?.cpu_seconds;
    let nats_after = server.sample()?;
    let relay_errors = herald_metrics::read_value(herald.addr, "herald_relay_errors_total").await;
    let stream = StreamFigures::of(js, HERALD_STREAM).await?;
    herald.stop().await?;
    let first_stored = u64::try_from(stream.first_ns - spawned_wall)
        .ok()
        .filter(|_| stream.messages > 0)
        .map(Duration::from_nanos);
    Ok(RelayRun {
        fill,
        events,
        listening,
        first_ack,
        total,
        acked,
        first_stored,
        stream,
        herald_cpu,
        nats_cores: nats_after.cores_used_since(&nats_before),
        relay_errors,
        note,
    })
}

/// A relayed message, to be published again by the ceiling.
struct Template {
    subject: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Template {
    /// The `n`-th message the ceiling publishes: this one with a fresh `Nats-Msg-Id`
    /// and `Herald-Seq` = n + 1.
    fn copy(&self, n: u64) -> Outgoing {
        let mut headers = self.headers.clone();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            uuid::Uuid::new_v4().to_string().as_str(),
        );
        headers.insert(SEQ_HEADER, (n + 1).to_string().as_str());
        Outgoing {
            subject: self.subject.clone(),
            headers: Some(headers),
            body: self.body.clone(),
        }
    }
}

/// The `HERALD` stream's configuration (renamed `CEIL` on `ceil.>`) and copies of its
/// first messages.
async fn ceiling_setup_from(
    js: &jetstream::Context,
) -> Result<(jetstream::stream::Config, Vec<Template>)> {
    let mut stream = js.get_stream(HERALD_STREAM).await?;
    let mut config = stream.info().await?.config.clone();
    config.name = CEILING_STREAM.into();
    config.subjects = vec![CEILING_SUBJECTS.into()];
    let mut templates = Vec::new();
    for seq in 1..=TEMPLATES {
        let message = stream
            .get_raw_message(seq)
            .await
            .with_context(|| format!("reading message {seq} of {HERALD_STREAM}"))?;
        let subject = message.subject.to_string();
        // Without the two headers each copy gets anew. (A parsed `Nats-Msg-Id` is
        // async-nats's standard header name, which `insert("Nats-Msg-Id", …)` would not
        // replace: the copy would carry two ids, and JetStream may read the old one.)
        let mut headers = HeaderMap::new();
        for (name, values) in message.headers.iter() {
            let name = name.to_string();
            if name.eq_ignore_ascii_case("Nats-Msg-Id") || name.eq_ignore_ascii_case(SEQ_HEADER) {
                continue;
            }
            for value in values {
                headers.append(name.as_str(), value.as_str());
            }
        }
        templates.push(Template {
            subject: format!("ceil.{}", subject.strip_prefix("hub.").unwrap_or(&subject)),
            headers,
            body: message.payload,
        });
    }
    Ok((config, templates))
}

/// Sizes of the relayed messages the ceiling copies.
struct MessageShape {
    body_bytes: f64,
    header_names: Vec<String>,
    header_bytes: f64,
}

impl MessageShape {
    /// The shape of the ceiling's copies (as published: fresh id and seq included).
    fn of(templates: &[Template]) -> Self {
        let copies: Vec<Outgoing> = templates
            .iter()
            .enumerate()
            .map(|(n, t)| t.copy(n as u64))
            .collect();
        let count = copies.len().max(1) as f64;
        let header_bytes = |headers: &HeaderMap| -> usize {
            // `NATS/1.0\r\n`, `Name: value\r\n` per value, and the final `\r\n`.
            12 + headers
                .iter()
                .map(|(name, values)| {
                    values
                        .iter()
                        .map(|v| name.to_string().len() + v.as_str().len() + 4)
                        .sum::<usize>()
                })
                .sum::<usize>()
        };
        let mut header_names: Vec<String> = copies
            .first()
            .and_then(|c| c.headers.as_ref())
            .map(|h| h.iter().map(|(n, _)| n.to_string()).collect())
            .unwrap_or_default();
        header_names.sort();
        MessageShape {
            body_bytes: copies.iter().map(|c| c.body.len()).sum::<usize>() as f64 / count,
            header_names,
            header_bytes: copies
                .iter()
                .filter_map(|c| c.headers.as_ref())
                .map(header_bytes)
                .sum::<usize>() as f64
                / count,
        }
    }
}

/// One ceiling run.
struct CeilingRun {
    run: nats::AckedRun,
    stream: StreamFigures,
}

async fn ceiling_round(
    server: &NatsServer,
    js: &jetstream::Context,
    config: &jetstream::stream::Config,
    templates: &[Template],
    events: u64,
) -> Result<CeilingRun> {
    nats::delete_stream(js, CEILING_STREAM).await?;
    js.create_stream(config.clone())
        .await
        .context("creating the CEIL stream")?;
    settle_pids(&[server.pid], SETTLE_LIMIT).await;
    let run = nats::publish_acked(server, js, Span::Count(events), nats::IN_FLIGHT, |n| {
        templates[n as usize % templates.len()].copy(n)
    })
    .await?;
    let stream = StreamFigures::of(js, CEILING_STREAM).await?;
    nats::delete_stream(js, CEILING_STREAM).await?;
    Ok(CeilingRun { run, stream })
}

/// `GET /health/nats`, reduced to what the benchmark reads.
#[derive(Deserialize)]
struct NatsHealth {
    connected: bool,
    relay: Option<RelayHealth>,
}

#[derive(Deserialize)]
struct RelayHealth {
    acked_seq: u64,
    head_seq: u64,
}

async fn nats_health(connection: &mut Connection) -> Result<NatsHealth> {
    let response = connection.get("/health/nats").await?;
    if response.status != 200 {
        bail!("GET /health/nats answered {}", response.status);
    }
    serde_json::from_slice(&response.body).context("reading GET /health/nats")
}

/// `GET /`'s `head_seq`.
async fn head_seq(herald: &ServerProcess) -> Result<u64> {
    #[derive(Deserialize)]
    struct Index {
        head_seq: u64,
    }
    let mut connection = Connection::open(herald.addr).await?;
    let response = connection.get("/").await?;
    if response.status != 200 {
        bail!("GET / answered {}", response.status);
    }
    Ok(serde_json::from_slice::<Index>(&response.body)?.head_seq)
}

fn unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// What the lag run measured.
struct LagResult {
    publish: PublishTally,
    /// Receipt wall clock − commit timestamp, per measured event, nanoseconds.
    lag: Samples,
    /// Receipt − POST sent (one monotonic clock), per measured event, nanoseconds.
    from_send: Samples,
    duplicates: u64,
    /// Commit → PubAck over the measured window, from herald's /metrics.
    delay_histogram: Option<Histogram>,
    herald_cores: f64,
    nats_cores: f64,
    /// `/health/nats` after the drain: (acked_seq, head_seq).
    relay_position: Option<(u64, u64)>,
    note: Option<String>,
}

impl LagResult {
    fn achieved_rate(&self) -> f64 {
        match (self.publish.first_sent, self.publish.last_done) {
            (Some(first), Some(last)) if last > first => {
                self.publish.ok as f64 / (last - first).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn missing(&self) -> u64 {
        self.publish.ok.saturating_sub(self.lag.len() as u64)
    }

    fn publish_errors(&self) -> u64 {
        self.publish.bad_statuses.values().sum::<u64>() + self.publish.transport_errors
    }
}

async fn lag(
    options: &Options,
    plan: &Plan,
    server: &NatsServer,
    js: &jetstream::Context,
) -> Result<LagResult> {
    nats::delete_stream(js, HERALD_STREAM).await?;
    settle_pids(&[server.pid], SETTLE_LIMIT).await;
    let herald = ServerProcess::herald_with_args(
        &options.herald_bin,
        &options.data_parent,
        &herald_args(server, true),
    )
    .await?;
    let mut connection = Connection::open(herald.addr).await?;
    let connected_by = Instant::now() + Duration::from_secs(10);
    while !nats_health(&mut connection).await?.connected {
        if Instant::now() >= connected_by {
            bail!("herald did not connect to nats-server within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let base = Instant::now();
    let measured_events = (options.rate as f64 * plan.lag_window.as_secs_f64()) as u64;
    let progress = Arc::new(Progress::new());
    let hard_deadline =
        base + Duration::from_secs(30) + plan.lag_warmup * 2 + plan.lag_window * 2 + DRAIN_GRACE;
    let (ready_tx, ready_rx) = oneshot::channel();
    let receiver = {
        let progress = progress.clone();
        let addr = server.addr;
        std::thread::Builder::new()
            .name("nats-receiver".into())
            .spawn(move || {
                receive(
                    addr,
                    base,
                    measured_events,
                    progress,
                    ready_tx,
                    hard_deadline,
                )
            })?
    };
    ready_rx
        .await
        .map_err(|_| anyhow!("the NATS receiver thread stopped"))??;

    // Warm-up: also proves the relay is live before measuring.
    let warm_events = (options.rate as f64 * plan.lag_warmup.as_secs_f64()).max(1.0) as u64;
    let warm = paced_publish(herald.addr, options, WARM_PHASE, warm_events, base).await?;
    let live_deadline = Instant::now() + Duration::from_secs(10);
    while progress.warm_received.load(Ordering::Relaxed) == 0 {
        if Instant::now() >= live_deadline {
            bail!(
                "no relayed message received on hub.bench.> for {warm_events} warm-up events \
                 (ok: {}, first error: {:?})",
                warm.ok,
                warm.first_error
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let histogram_before = herald_metrics::read_histogram(herald.addr, DELAY_METRIC).await;
    let herald_before = herald.sample()?;
    let nats_before = server.sample()?;
    let publish =
        paced_publish(herald.addr, options, MEASURED_PHASE, measured_events, base).await?;
    let herald_after = herald.sample()?;
    let nats_after = server.sample()?;
    progress.expected.store(publish.ok, Ordering::Relaxed);
    progress.drain_deadline_ns.store(
        (base.elapsed() + DRAIN_GRACE).as_nanos() as u64,
        Ordering::Relaxed,
    );
    let receipts = tokio::task::spawn_blocking(move || receiver.join())
        .await?
        .map_err(|_| anyhow!("the NATS receiver thread panicked"))?;
    let histogram_after = herald_metrics::read_histogram(herald.addr, DELAY_METRIC).await;
    let relay_position = nats_health(&mut connection)
        .await
        .ok()
        .and_then(|h| h.relay)
        .map(|r| (r.acked_seq, r.head_seq));
    herald.stop().await?;
    let warm_errors = warm.bad_statuses.values().sum::<u64>() + warm.transport_errors;
    let warm_note = (warm_errors > 0).then(|| {
        format!(
            "{warm_errors} of {warm_events} warm-up publishes failed ({}; first: {})",
            describe_errors(&warm.bad_statuses, warm.transport_errors),
            warm.first_error.as_deref().unwrap_or("—")
        )
    });
    let note = [receipts.note, publish.first_error.clone(), warm_note]
        .into_iter()
        .flatten()
        .reduce(|a, b| format!("{a}; {b}"));
    let result = LagResult {
        lag: Samples::new(receipts.lag),
        from_send: Samples::new(receipts.from_send),
        duplicates: receipts.duplicates,
        delay_histogram: histogram_after
            .zip(histogram_before)
            .map(|(after, before)| after.since(&before)),
        herald_cores: herald_after.cores_used_since(&herald_before),
        nats_cores: nats_after.cores_used_since(&nats_before),
        relay_position,
        note,
        publish,
    };
    progress!(
        "relay lag: {:.0} events/s achieved, {} of {} received, lag p50 {}, p99 {}, max {}",
        result.achieved_rate(),
        thousands(result.lag.len() as u64),
        thousands(result.publish.ok),
        ms(result.lag.quantile(0.5)),
        ms(result.lag.quantile(0.99)),
        ms(result.lag.max())
    );
    Ok(result)
}

/// A relayed message's body, reduced to what the benchmark reads.
#[derive(Deserialize)]
struct Relayed {
    timestamp: String,
    payload: RelayedProbe,
}

#[derive(Deserialize)]
struct RelayedProbe {
    phase: u8,
    i: u64,
    sent_ns: u64,
}

/// What the receiver thread collected.
#[derive(Default)]
struct Receipts {
    lag: Vec<u64>,
    from_send: Vec<u64>,
    duplicates: u64,
    note: Option<String>,
}

/// The receiver thread: subscribes (core NATS) to every benchmark subject, reports
/// readiness, then records each measured event's lag until all expected ones arrived
/// or the deadlines pass.
fn receive(
    addr: std::net::SocketAddr,
    base: Instant,
    measured_events: u64,
    progress: Arc<Progress>,
    ready: oneshot::Sender<Result<()>>,
    hard_deadline: Instant,
) -> Receipts {
    let mut receipts = Receipts {
        lag: Vec::with_capacity(measured_events as usize),
        from_send: Vec::with_capacity(measured_events as usize),
        ..Receipts::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(error.into()));
            return receipts;
        }
    };
    runtime.block_on(async {
        let subscribed = async {
            let client = async_nats::connect(addr.to_string()).await?;
            let subscriber = client.subscribe(workload::ALL_BENCH_EVENTS).await?;
            client.flush().await?;
            Ok::<_, anyhow::Error>((client, subscriber))
        };
        let (_client, mut subscriber) =
            match tokio::time::timeout(Duration::from_secs(10), subscribed).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(error)) => {
                    let _ = ready.send(Err(error.context("subscribing to nats-server")));
                    return;
                }
                Err(_) => {
                    let _ = ready.send(Err(anyhow!("subscribing to nats-server timed out")));
                    return;
                }
            };
        let _ = ready.send(Ok(()));
        let mut seen = vec![false; measured_events as usize];
        loop {
            if progress.finished(base, hard_deadline) {
                break;
            }
            let message =
                match tokio::time::timeout(Duration::from_millis(50), subscriber.next()).await {
                    Err(_) => continue,
                    Ok(Some(message)) => message,
                    Ok(None) => {
                        receipts
                            .note
                            .get_or_insert("the subscription ended".to_string());
                        break;
                    }
                };
            let received_wall = unix_nanos();
            let received_ns = base.elapsed().as_nanos() as u64;
            let relayed = match serde_json::from_slice::<Relayed>(&message.payload) {
                Ok(relayed) => relayed,
                Err(error) => {
                    receipts.note.get_or_insert(format!(
                        "unreadable message on {} ({error})",
                        message.subject
                    ));
                    continue;
                }
            };
            if relayed.payload.phase == WARM_PHASE {
                progress.warm_received.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let committed = match chrono::DateTime::parse_from_rfc3339(&relayed.timestamp) {
                Ok(at) => at.timestamp_micros() as i128 * 1_000,
                Err(error) => {
                    receipts.note.get_or_insert(format!(
                        "unreadable timestamp {:?} ({error})",
                        relayed.timestamp
                    ));
                    continue;
                }
            };
            match seen.get_mut(relayed.payload.i as usize) {
                Some(seen) if *seen => receipts.duplicates += 1,
                Some(seen) => {
                    *seen = true;
                    receipts.lag.push((received_wall - committed).max(0) as u64);
                    receipts
                        .from_send
                        .push(received_ns.saturating_sub(relayed.payload.sent_ns));
                    progress.measured_received.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    receipts
                        .note
                        .get_or_insert(format!("unexpected index {}", relayed.payload.i));
                }
            }
        }
    });
    receipts
}

fn seconds_ms(seconds: f64) -> String {
    format!("{:.3} ms", seconds * 1e3)
}

fn render(options: &Options, plan: &Plan, m: &Measured) -> String {
    let mut out = format!(
        "## NATS relay (issue 4): relay throughput vs. raw JetStream publish, and relay lag\n\n\
         One local `{version}` `-js` (file storage) for the whole scenario; herald runs with \
         `--nats-url` pointing at it, `--nats-bridge \"\"` and `--presence-interval-secs 0`. \
         N = {n} events per round, {rounds} round(s), relay and ceiling alternating; medians.\n\n\
         - **Relay**: a fresh herald with `--nats-relay false` is filled with N events by \
         `POST /api/events:batch` (1,000 per batch, {conns} connections) and stopped; the \
         `HERALD` stream is deleted; herald is restarted on the same store with the relay on, \
         and `GET /health/nats` is polled every {poll} ms until `relay.acked_seq` = N. \
         events/s = N / (spawn → acked N): start-up (process, store, NATS connect, stream \
         creation) included. \"stored at\" is (N − 1) / (first → last message time in the \
         stream), start-up excluded.\n\
         - **Ceiling**: one `async-nats` client in this process publishes N messages to a \
         stream `CEIL` on `ceil.>` with the `HERALD` stream's configuration, {in_flight} \
         publish acks in flight (the relay's window). The messages are copies of {templates} \
         messages herald relayed (body {body:.0} bytes on average; headers {headers}, \
         ~{header_bytes:.0} bytes), each with a fresh `Nats-Msg-Id`. msgs/s = N / (first \
         publish → last ack).\n\n",
        version = m.version,
        n = thousands(plan.events),
        rounds = plan.rounds,
        conns = BATCH_CONNECTIONS,
        poll = POLL.as_millis(),
        in_flight = nats::IN_FLIGHT,
        templates = TEMPLATES,
        body = m.message.body_bytes,
        headers = m
            .message
            .header_names
            .iter()
            .map(|h| format!("`{h}`"))
            .collect::<Vec<_>>()
            .join(", "),
        header_bytes = m.message.header_bytes,
    );
    let mut table = Table::new(&[
        "Round",
        "ceiling msgs/s",
        "ceiling: stored at",
        "relay events/s",
        "relay: stored at",
        "relay: spawn → listening / first ack / acked N",
        "herald CPU / event",
        "nats-server CPU (ceiling / relay)",
        "client CPU (ceiling)",
        "in stream (ceiling / relay)",
        "fill",
    ]);
    for (index, (relay, ceiling)) in m.relay.iter().zip(&m.ceiling).enumerate() {
        table.row(vec![
            format!("{}", index + 1),
            format!("{:.0}", ceiling.run.per_second()),
            format!("{:.0} msg/s", ceiling.stream.per_second(ceiling.run.acked)),
            format!("{:.0}", relay.per_second()),
            format!("{:.0} msg/s", relay.stream.per_second(relay.events)),
            format!(
                "{} / {} / {}",
                ms(relay.listening.as_nanos() as u64),
                relay
                    .first_ack
                    .map_or("—".into(), |d| ms(d.as_nanos() as u64)),
                ms(relay.total.as_nanos() as u64)
            ),
            format!("{:.1} µs", relay.herald_cpu * 1e6 / relay.events as f64),
            format!(
                "{:.2} / {:.2} cores",
                ceiling.run.server_cores, relay.nats_cores
            ),
            format!("{:.2} cores", ceiling.run.generator_cores),
            format!(
                "{} / {}",
                thousands(ceiling.stream.messages),
                thousands(relay.stream.messages)
            ),
            format!(
                "{} events in {:.1} s, errors {}",
                thousands(relay.fill.stored),
                relay.fill.elapsed.as_secs_f64(),
                describe_errors(&relay.fill.bad_statuses, relay.fill.transport_errors)
            ),
        ]);
    }
    out.push_str(&table.render());

    let ceiling_rate = median(
        &m.ceiling
            .iter()
            .map(|c| c.run.per_second())
            .collect::<Vec<_>>(),
    );
    let relay_rate = median(&m.relay.iter().map(RelayRun::per_second).collect::<Vec<_>>());
    let ceiling_stored = median(
        &m.ceiling
            .iter()
            .map(|c| c.stream.per_second(c.run.acked))
            .collect::<Vec<_>>(),
    );
    let relay_stored = median(
        &m.relay
            .iter()
            .map(|r| r.stream.per_second(r.events))
            .collect::<Vec<_>>(),
    );
    let ratio = if ceiling_rate > 0.0 {
        relay_rate / ceiling_rate
    } else {
        0.0
    };
    let stored_ratio = if ceiling_stored > 0.0 {
        relay_stored / ceiling_stored
    } else {
        0.0
    };
    let startup = median(
        &m.relay
            .iter()
            .filter_map(|r| r.first_stored)
            .map(|d| d.as_secs_f64())
            .collect::<Vec<_>>(),
    );
    out.push_str(&format!(
        "\nMedians: ceiling **{ceiling_rate:.0} msgs/s**, relay **{relay_rate:.0} events/s** \
         ({}); stored-at rates (start-up excluded): ceiling {ceiling_stored:.0}, relay \
         {relay_stored:.0} msg/s ({}). Herald spawn → first message in the stream: {} \
         (median).\n",
        percent(ratio),
        percent(stored_ratio),
        seconds_ms(startup),
    ));

    // Lag.
    let lag = &m.lag;
    out.push_str(&format!(
        "\n### Relay lag under a steady publish rate\n\n\
         A fresh herald with the relay on. `POST /api/events` open-loop at {} events/s (the \
         pacer of scenario (b): a thread releases each event when due, the first free one of \
         {} keep-alive connections sends it) for {} s after {} s of warm-up. A core NATS \
         subscriber on `hub.bench.>` (own thread and runtime) notes when each relayed message \
         arrives; **lag = receipt wall clock − the event's `timestamp`** in the body (set by \
         the store as the commit's transaction starts, so the commit and its sync are \
         included). \"POST → NATS\" is receipt − the moment the POST was sent (one monotonic \
         clock). `herald_relay_delay_seconds` (commit → PubAck, herald's /metrics, difference \
         over the run) is estimated from its buckets.\n\n",
        thousands(options.rate),
        options.publishers,
        plan.lag_window.as_secs_f64(),
        plan.lag_warmup.as_secs_f64(),
    ));
    let mut table = Table::new(&[
        "target rate",
        "achieved (201/s)",
        "received / published",
        "missing",
        "duplicates",
        "lag p50",
        "lag p99",
        "lag p99.9",
        "lag max",
        "POST → NATS p50 / p99",
        "relay_delay histogram p50 / p99 / mean",
        "POST p50 / p99",
        "publish errors",
        "schedule slip p99",
        "herald CPU",
        "nats-server CPU",
    ]);
    let histogram = lag.delay_histogram.as_ref();
    let post = Samples::new(lag.publish.post_latencies.clone());
    let slip = Samples::new(lag.publish.slip.clone());
    table.row(vec![
        format!("{} events/s", thousands(options.rate)),
        format!("**{:.0}**", lag.achieved_rate()),
        format!(
            "{} / {}",
            thousands(lag.lag.len() as u64),
            thousands(lag.publish.ok)
        ),
        thousands(lag.missing()),
        thousands(lag.duplicates),
        ms(lag.lag.quantile(0.5)),
        format!("**{}**", ms(lag.lag.quantile(0.99))),
        ms(lag.lag.quantile(0.999)),
        ms(lag.lag.max()),
        format!(
            "{} / {}",
            ms(lag.from_send.quantile(0.5)),
            ms(lag.from_send.quantile(0.99))
        ),
        match histogram {
            Some(h) if h.count > 0.0 => format!(
                "{} / {} / {} ({} events)",
                h.quantile(0.5).map_or("—".into(), seconds_ms),
                h.quantile(0.99).map_or("—".into(), seconds_ms),
                h.mean().map_or("—".into(), seconds_ms),
                thousands(h.count as u64)
            ),
            _ => "—".into(),
        },
        format!("{} / {}", ms(post.quantile(0.5)), ms(post.quantile(0.99))),
        describe_errors(&lag.publish.bad_statuses, lag.publish.transport_errors),
        ms(slip.quantile(0.99)),
        format!("{:.2} cores", lag.herald_cores),
        format!("{:.2} cores", lag.nats_cores),
    ]);
    out.push_str(&table.render());

    // Checks.
    let mut checks = Table::new(&["Check", "Value", "Target", "Result"]);
    checks.row(vec![
        "relay / JetStream ceiling (events/s, start-up included)".into(),
        format!("{} ({relay_rate:.0} / {ceiling_rate:.0})", percent(ratio)),
        format!("≥ {}", percent(THROUGHPUT_TARGET)),
        verdict(ratio >= THROUGHPUT_TARGET).into(),
    ]);
    checks.row(vec![
        "relay / ceiling, stored-at rates (start-up excluded; informative)".into(),
        format!(
            "{} ({relay_stored:.0} / {ceiling_stored:.0})",
            percent(stored_ratio)
        ),
        "—".into(),
        "—".into(),
    ]);
    let all_relayed = m.relay.iter().all(RelayRun::complete)
        && m.ceiling
            .iter()
            .all(|c| c.stream.messages == c.run.acked && c.run.errors == 0);
    checks.row(vec![
        "every round: acked_seq = N = messages in the stream (relay and ceiling)".into(),
        m.relay
            .iter()
            .zip(&m.ceiling)
            .map(|(r, c)| {
                format!(
                    "relay {}/{}, ceiling {}/{}",
                    thousands(r.stream.messages),
                    thousands(r.events),
                    thousands(c.stream.messages),
                    thousands(c.run.acked)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        "all".into(),
        verdict(all_relayed).into(),
    ]);
    let p99 = lag.lag.quantile(0.99);
    let rate = lag.achieved_rate();
    let rate_ok = rate >= 0.98 * options.rate as f64;
    checks.row(vec![
        format!("relay lag p99 at {} events/s", thousands(options.rate)),
        format!("{} at {rate:.0} events/s achieved", ms(p99)),
        format!("< {} ms", LAG_TARGET_P99.as_millis()),
        verdict(!lag.lag.is_empty() && p99 < LAG_TARGET_P99.as_nanos() as u64).into(),
    ]);
    checks.row(vec![
        "publish rate achieved".into(),
        format!("{rate:.0} events/s"),
        format!("≥ 98% of {}", thousands(options.rate)),
        verdict(rate_ok).into(),
    ]);
    let complete = lag.missing() == 0 && lag.duplicates == 0 && lag.publish_errors() == 0;
    checks.row(vec![
        "lag run: every published event relayed once".into(),
        format!(
            "{} missing, {} duplicates, {} publish errors; /health/nats after: {}",
            lag.missing(),
            lag.duplicates,
            lag.publish_errors(),
            lag.relay_position
                .map_or("—".into(), |(acked, head)| format!(
                    "acked_seq {acked}, head_seq {head}"
                ))
        ),
        "0".into(),
        verdict(complete).into(),
    ]);
    out.push('\n');
    out.push_str(&checks.render());

    out.push_str(
        "\nCPU is in cores of the machine's (all processes share them): \"herald CPU / \
         event\" is the restarted herald's whole CPU time (start-up included) divided by N; \
         nats-server's is over the relay run (spawn → acked N) or the ceiling's publishing.\n",
    );
    for (index, relay) in m.relay.iter().enumerate() {
        if let Some(note) = &relay.note {
            out.push_str(&format!("\nRound {}: {note}\n", index + 1));
        }
        if let Some(errors) = relay.relay_errors.filter(|e| *e > 0.0) {
            out.push_str(&format!(
                "\nRound {}: the relay was interrupted {errors} time(s) (`herald_relay_errors_total`).\n",
                index + 1
            ));
        }
        if let Some(error) = &relay.fill.first_error {
            out.push_str(&format!(
                "\nRound {} fill: first error `{error}`\n",
                index + 1
            ));
        }
    }
    for (index, ceiling) in m.ceiling.iter().enumerate() {
        if let Some(error) = &ceiling.run.first_error {
            out.push_str(&format!(
                "\nRound {} ceiling: first error `{error}`\n",
                index + 1
            ));
        }
    }
    if let Some(note) = &lag.note {
        out.push_str(&format!("\nLag run: {note}\n"));
    }
    out
}
