//! Scenario (b): publish → WebSocket receipt latency at a fixed publish rate.
//!
//! A WebSocket client subscribes to `hub.bench.>` on its own thread (its own
//! single-threaded runtime, so its receipt times are not delayed by the publishers).
//! Publishers follow an open-loop schedule — event `i` is due at `start + i / rate` —
//! spread over several connections so one slow request does not stall the schedule.
//! Each event carries the nanoseconds since a common `Instant` at which it was sent;
//! latency is receipt time − send time. A warm-up phase (events marked phase 0) runs
//! first and confirms the subscription is live before the measured phase (phase 1).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_tungstenite::tungstenite::Message;

use super::{describe_errors, Options};
use crate::client::Connection;
use crate::herald_metrics;
use crate::process::{ServerKind, ServerProcess};
use crate::report::Table;
use crate::stats::{ms, percent, thousands, verdict, Samples};
use crate::{progress, workload};

/// The p99 receipt latency the project aims for.
const TARGET_P99: Duration = Duration::from_millis(2);
/// How long the receiver waits for stragglers after the last publish was answered.
const DRAIN_GRACE: Duration = Duration::from_secs(3);
pub(super) const WARM_PHASE: u8 = 0;
pub(super) const MEASURED_PHASE: u8 = 1;

pub async fn run(options: &Options) -> Result<String> {
    progress!(
        "(b) latency: {} events/s over {} publisher connections, {:?} measured",
        options.rate,
        options.publishers,
        options.latency_duration
    );
    let ceiling = ServerProcess::ceiling(&options.data_parent).await?;
    let ceiling_result = measure(&ceiling, options).await?;
    ceiling.stop().await?;
    let herald = ServerProcess::herald(&options.herald_bin, &options.data_parent).await?;
    let herald_result = measure(&herald, options).await?;
    herald.stop().await?;

    let events = options.rate as f64 * options.latency_duration.as_secs_f64();
    let mut out = format!(
        "## (b) Publish → WebSocket receipt latency\n\nOne WebSocket client on \
         `/api/events/stream?subject=hub.bench.>`; {} events/s published open-loop (a pacer thread releases each event when due; the first free one of {} \
         keep-alive connections sends it) for {} s ({} events, after {} s of warm-up). Latency = \
         receipt time − send time (both from one monotonic clock in this process). The \
         ceiling forwards each POST to its WebSocket clients from memory: no storage.\n\n",
        thousands(options.rate),
        options.publishers,
        options.latency_duration.as_secs_f64(),
        thousands(events as u64),
        options.latency_warmup.as_secs_f64(),
    );
    let mut table = Table::new(&[
        "Server",
        "received / published",
        "missing",
        "duplicates",
        "p50",
        "p99",
        "p99.9",
        "max",
        "p99 from schedule",
        "POST p50 / p99",
        "publish errors",
        "schedule slip p99 / max",
        "server CPU",
        "events / commit",
    ]);
    for (kind, result) in [
        (ServerKind::Ceiling, &ceiling_result),
        (ServerKind::Herald, &herald_result),
    ] {
        table.row(vec![
            kind.label().into(),
            format!(
                "{} / {}",
                thousands(result.latencies.len() as u64),
                thousands(result.published_ok)
            ),
            thousands(result.missing()),
            thousands(result.duplicates),
            ms(result.latencies.quantile(0.5)),
            format!("**{}**", ms(result.latencies.quantile(0.99))),
            ms(result.latencies.quantile(0.999)),
            ms(result.latencies.max()),
            ms(result.from_schedule.quantile(0.99)),
            format!(
                "{} / {}",
                ms(result.post_latencies.quantile(0.5)),
                ms(result.post_latencies.quantile(0.99))
            ),
            describe_errors(&result.bad_statuses, result.transport_errors),
            format!(
                "{} / {}",
                ms(result.slip.quantile(0.99)),
                ms(result.slip.max())
            ),
            format!("{:.2} cores", result.server_cores),
            result
                .events_per_commit
                .map_or_else(|| "—".into(), |n| format!("{n:.1}")),
        ]);
    }
    out.push_str(&table.render());

    let p99 = herald_result.latencies.quantile(0.99);
    let complete = herald_result.missing() == 0
        && herald_result.duplicates == 0
        && herald_result.errors() == 0
        && !herald_result.latencies.is_empty();
    let mut checks = Table::new(&["Check", "Value", "Target", "Result"]);
    checks.row(vec![
        "herald p99 receipt latency".into(),
        ms(p99),
        format!("≤ {}", ms(TARGET_P99.as_nanos() as u64)),
        verdict(!herald_result.latencies.is_empty() && p99 <= TARGET_P99.as_nanos() as u64).into(),
    ]);
    checks.row(vec![
        "herald: every published event received once".into(),
        format!(
            "{} missing, {} duplicates, {} publish errors",
            herald_result.missing(),
            herald_result.duplicates,
            herald_result.errors()
        ),
        "0".into(),
        verdict(complete).into(),
    ]);
    let ceiling_p99 = ceiling_result.latencies.quantile(0.99);
    checks.row(vec![
        "herald p99 / ceiling p99".into(),
        if ceiling_p99 > 0 {
            percent(p99 as f64 / ceiling_p99 as f64)
        } else {
            "—".into()
        },
        "—".into(),
        "—".into(),
    ]);
    out.push('\n');
    out.push_str(&checks.render());
    out.push_str(
        "\n\"Schedule slip\" is how late events were sent against the open-loop schedule \
         (waiting for a free publisher connection, plus thread wake-ups); \"p99 from \
         schedule\" measures receipt − due time, so it includes that slip (no coordinated \
         omission).\n",
    );
    for (kind, result) in [
        (ServerKind::Ceiling, &ceiling_result),
        (ServerKind::Herald, &herald_result),
    ] {
        if let Some(note) = &result.note {
            out.push_str(&format!("\n{}: {note}\n", kind.label()));
        }
    }
    Ok(out)
}

/// What one server did in the latency scenario.
struct LatencyResult {
    published_ok: u64,
    bad_statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    /// Receipt − send of each measured event received, nanoseconds.
    latencies: Samples,
    /// Receipt − scheduled time of each measured event received, nanoseconds.
    from_schedule: Samples,
    duplicates: u64,
    /// Round trip of each measured POST, nanoseconds.
    post_latencies: Samples,
    /// How late each measured POST was sent against its schedule, nanoseconds.
    slip: Samples,
    server_cores: f64,
    /// Events per group commit (herald's /metrics, when it has them).
    events_per_commit: Option<f64>,
    /// Anything unexpected (WebSocket closed early, first publish error...).
    note: Option<String>,
}

impl LatencyResult {
    fn missing(&self) -> u64 {
        self.published_ok
            .saturating_sub(self.latencies.len() as u64)
    }

    fn errors(&self) -> u64 {
        self.bad_statuses.values().sum::<u64>() + self.transport_errors
    }
}

/// State shared between the publishers and the receiver thread.
pub(super) struct Progress {
    pub warm_received: AtomicU64,
    pub measured_received: AtomicU64,
    /// Measured events the receiver should wait for (u64::MAX until publishing ends).
    pub expected: AtomicU64,
    /// Nanoseconds since `base` after which the receiver gives up waiting.
    pub drain_deadline_ns: AtomicU64,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            warm_received: AtomicU64::new(0),
            measured_received: AtomicU64::new(0),
            expected: AtomicU64::new(u64::MAX),
            drain_deadline_ns: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether the receiver should stop: every expected event arrived, or the drain
    /// deadline (nanoseconds since `base`) or `hard_deadline` has passed.
    pub fn finished(&self, base: Instant, hard_deadline: Instant) -> bool {
        let now = Instant::now();
        self.measured_received.load(Ordering::Relaxed) >= self.expected.load(Ordering::Relaxed)
            || now.duration_since(base).as_nanos() as u64
                >= self.drain_deadline_ns.load(Ordering::Relaxed)
            || now >= hard_deadline
    }
}

/// What the receiver thread collected.
struct Receipts {
    latencies: Vec<u64>,
    /// Receipt − due time on the schedule (includes waiting for a free connection).
    from_schedule: Vec<u64>,
    duplicates: u64,
    note: Option<String>,
}

async fn measure(server: &ServerProcess, options: &Options) -> Result<LatencyResult> {
    let base = Instant::now();
    let measured_events = (options.rate as f64 * options.latency_duration.as_secs_f64()) as u64;
    let progress = Arc::new(Progress::new());
    // Bounds the receiver even if the publishers never finish.
    let hard_deadline =
        base + Duration::from_secs(30) + options.latency_warmup * 2 + options.latency_duration * 2;
    let url = format!(
        "ws://{}/api/events/stream?subject={}",
        server.addr,
        workload::encode_query_value(workload::ALL_BENCH_EVENTS)
    );
    let (ready_tx, ready_rx) = oneshot::channel();
    let receiver = {
        let progress = progress.clone();
        std::thread::Builder::new()
            .name("ws-receiver".into())
            .spawn(move || {
                receive(
                    url,
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
        .map_err(|_| anyhow!("the WebSocket receiver thread stopped"))??;

    // Warm-up: also proves the subscription is live before measuring.
    let warm_events = (options.rate as f64 * options.latency_warmup.as_secs_f64()) as u64;
    let warm = paced_publish(server.addr, options, WARM_PHASE, warm_events, base).await?;
    let live_deadline = Instant::now() + Duration::from_secs(5);
    while progress.warm_received.load(Ordering::Relaxed) == 0 {
        if Instant::now() >= live_deadline {
            bail!(
                "{}: no WebSocket frame received for {} warm-up events (ok: {}, first error: {:?})",
                server.kind.label(),
                warm_events,
                warm.ok,
                warm.first_error
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let before = server.sample()?;
    let counters_before = herald_metrics::read(server.addr).await;
    let measured =
        paced_publish(server.addr, options, MEASURED_PHASE, measured_events, base).await?;
    let after = server.sample()?;
    let counters_after = herald_metrics::read(server.addr).await;
    progress.expected.store(measured.ok, Ordering::Relaxed);
    progress.drain_deadline_ns.store(
        (base.elapsed() + DRAIN_GRACE).as_nanos() as u64,
        Ordering::Relaxed,
    );
    let receipts = tokio::task::spawn_blocking(move || receiver.join())
        .await?
        .map_err(|_| anyhow!("the WebSocket receiver thread panicked"))?;
    let note = receipts.note.or(measured.first_error);
    let result = LatencyResult {
        published_ok: measured.ok,
        bad_statuses: measured.bad_statuses,
        transport_errors: measured.transport_errors,
        latencies: Samples::new(receipts.latencies),
        from_schedule: Samples::new(receipts.from_schedule),
        duplicates: receipts.duplicates,
        post_latencies: Samples::new(measured.post_latencies),
        slip: Samples::new(measured.slip),
        server_cores: after.cores_used_since(&before),
        events_per_commit: counters_after
            .zip(counters_before)
            .and_then(|(after, before)| after.events_per_commit_since(&before)),
        note,
    };
    progress!(
        "(b) {}: {} of {} received, p50 {}, p99 {}, p99.9 {}",
        server.kind.label(),
        result.latencies.len(),
        result.published_ok,
        ms(result.latencies.quantile(0.5)),
        ms(result.latencies.quantile(0.99)),
        ms(result.latencies.quantile(0.999))
    );
    Ok(result)
}

/// What the paced publishers did.
#[derive(Default)]
pub(super) struct PublishTally {
    /// 201 answers.
    pub ok: u64,
    pub bad_statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub first_error: Option<String>,
    /// Round trip of each POST, nanoseconds.
    pub post_latencies: Vec<u64>,
    /// How late each POST was sent against its schedule, nanoseconds.
    pub slip: Vec<u64>,
    /// When the first POST was sent, and when the last answer arrived.
    pub first_sent: Option<Instant>,
    pub last_done: Option<Instant>,
}

/// Publishes `count` probe events on the open-loop schedule `start + i / rate`.
///
/// A pacer thread (precise `std::thread::sleep`, not tokio's 1 ms timer wheel) releases
/// each event when it is due into a queue; whichever publisher connection is free takes
/// it, so one slow request delays nothing but itself.
pub(super) async fn paced_publish(
    addr: SocketAddr,
    options: &Options,
    phase: u8,
    count: u64,
    base: Instant,
) -> Result<PublishTally> {
    let period_ns = 1e9 / options.rate as f64;
    let mut connections = Vec::new();
    for _ in 0..options.publishers.max(1) {
        connections.push(Connection::open(addr).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let schedule_length = Duration::from_nanos((count as f64 * period_ns) as u64);
    let give_up = start + schedule_length + Duration::from_secs(15);

    let (due_events, queue) = mpsc::unbounded_channel::<(u64, Instant)>();
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            for index in 0..count {
                let due = start + Duration::from_nanos((index as f64 * period_ns) as u64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if now >= give_up || due_events.send((index, due)).is_err() {
                    break;
                }
            }
        })?;
    let queue = Arc::new(Mutex::new(queue));

    let mut tasks = Vec::new();
    for mut connection in connections {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = PublishTally::default();
            loop {
                let next = queue.lock().await.recv().await;
                let Some((index, due)) = next else { break };
                let sent = Instant::now();
                if sent >= give_up {
                    break;
                }
                let sent_ns = sent.duration_since(base).as_nanos() as u64;
                let due_ns = due.saturating_duration_since(base).as_nanos() as u64;
                let body =
                    workload::probe_body(&workload::subject(index), phase, index, due_ns, sent_ns);
                let result = connection.post_json("/api/events", body).await;
                let done = Instant::now();
                tally.first_sent.get_or_insert(sent);
                tally.last_done = Some(done);
                tally
                    .slip
                    .push(sent.saturating_duration_since(due).as_nanos() as u64);
                match result {
                    Ok(response) if response.status == 201 => {
                        tally.ok += 1;
                        tally.post_latencies.push((done - sent).as_nanos() as u64);
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
                        match Connection::open(addr).await {
                            Ok(fresh) => connection = fresh,
                            Err(_) => break,
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut total = PublishTally::default();
    for task in tasks {
        let tally = task.await?;
        total.ok += tally.ok;
        total.transport_errors += tally.transport_errors;
        for (status, n) in tally.bad_statuses {
            *total.bad_statuses.entry(status).or_default() += n;
        }
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
        total.post_latencies.extend(tally.post_latencies);
        total.slip.extend(tally.slip);
        total.first_sent = match (total.first_sent, tally.first_sent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        total.last_done = total.last_done.max(tally.last_done);
    }
    tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow!("the pacer thread panicked"))?;
    Ok(total)
}

/// A stream frame, reduced to what the benchmark reads.
#[derive(Deserialize)]
struct Frame {
    data: FrameEvent,
}

#[derive(Deserialize)]
struct FrameEvent {
    payload: Probe,
}

#[derive(Deserialize)]
struct Probe {
    phase: u8,
    i: u64,
    due_ns: u64,
    sent_ns: u64,
}

/// The receiver thread: connects, reports readiness, then records the latency of
/// each measured event until all expected ones arrived or the deadlines pass.
fn receive(
    url: String,
    base: Instant,
    measured_events: u64,
    progress: Arc<Progress>,
    ready: oneshot::Sender<Result<()>>,
    hard_deadline: Instant,
) -> Receipts {
    let mut receipts = Receipts {
        latencies: Vec::with_capacity(measured_events as usize),
        from_schedule: Vec::with_capacity(measured_events as usize),
        duplicates: 0,
        note: None,
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
        let connect = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let mut socket = match connect {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(error)) => {
                let _ = ready.send(Err(
                    anyhow::Error::new(error).context(format!("connecting to {url}"))
                ));
                return;
            }
            Err(_) => {
                let _ = ready.send(Err(anyhow!("connecting to {url} timed out")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let mut seen = vec![false; measured_events as usize];
        loop {
            if progress.finished(base, hard_deadline) {
                break;
            }
            let frame = match tokio::time::timeout(Duration::from_millis(50), socket.next()).await {
                Err(_) => continue,
                Ok(frame) => frame,
            };
            let received_ns = base.elapsed().as_nanos() as u64;
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let probe = match serde_json::from_str::<Frame>(text.as_str()) {
                        Ok(frame) => frame.data.payload,
                        Err(error) => {
                            receipts
                                .note
                                .get_or_insert(format!("unreadable frame ({error}): {text}"));
                            continue;
                        }
                    };
                    if probe.phase == WARM_PHASE {
                        progress.warm_received.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    match seen.get_mut(probe.i as usize) {
                        Some(seen) if *seen => receipts.duplicates += 1,
                        Some(seen) => {
                            *seen = true;
                            receipts
                                .latencies
                                .push(received_ns.saturating_sub(probe.sent_ns));
                            receipts
                                .from_schedule
                                .push(received_ns.saturating_sub(probe.due_ns));
                            progress.measured_received.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            receipts
                                .note
                                .get_or_insert(format!("event index {} out of range", probe.i));
                        }
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    receipts
                        .note
                        .get_or_insert(format!("the server closed the WebSocket: {close:?}"));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    receipts
                        .note
                        .get_or_insert(format!("WebSocket error: {error}"));
                    break;
                }
                None => {
                    receipts
                        .note
                        .get_or_insert("the WebSocket ended".to_string());
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.flush()).await;
    });
    receipts
}
