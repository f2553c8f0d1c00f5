//! (f) Catch-up: one client reads a filled store from the start, over a WebSocket
//! (`from_seq=0`) and by paging `GET /api/events`, against the ceiling sending the
//! same number of frames (and fixed pages) from memory, same run.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::Options;
use crate::client::Connection;
use crate::process::ServerProcess;
use crate::stats::thousands;

const SUBJECT_PREFIX: &str = "hub.bench.catchup";
/// Events per fill request (the batch endpoint's limit).
const FILL_BATCH: u64 = 1000;
/// Concurrent fill connections.
const FILL_CONNECTIONS: u64 = 4;
/// Longest a replay may take before the scenario gives up.
const REPLAY_LIMIT: Duration = Duration::from_secs(300);
/// The catch-up rate issue 11 asks for.
const TARGET_EVENTS_PER_SECOND: f64 = 300_000.0;

#[derive(serde::Deserialize)]
struct Frame {
    data: FrameEvent,
}

#[derive(serde::Deserialize)]
struct FrameEvent {
    seq: u64,
}

#[derive(serde::Deserialize)]
struct PageEvent {
    seq: u64,
}

/// One way of reading `events` events from the start.
struct Read {
    events: u64,
    elapsed: Duration,
}

impl Read {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn run(options: &Options) -> Result<String> {
    let events = options.fill_events;
    let ceiling = ServerProcess::ceiling(&options.data_parent).await?;
    let ceiling_stream = replay(
        &format!("ws://{}/api/events/stream?replay={events}", ceiling.addr),
        events,
    )
    .await
    .context("the ceiling's replay")?;
    let ceiling_pages = page_ceiling(&ceiling, events).await?;
    ceiling.stop().await?;

    let herald = ServerProcess::herald(&options.herald_bin, &options.data_parent).await?;
    let filled_in = fill(&herald, events).await?;
    let stream = replay(
        &format!(
            "ws://{}/api/events/stream?subject={SUBJECT_PREFIX}.%3E&from_seq=0",
            herald.addr
        ),
        events,
    )
    .await
    .context("herald's replay")?;
    let pages_1000 = page_herald(&herald, events, 1000).await?;
    let pages_100 = page_herald(&herald, events, 100).await?;
    herald.stop().await?;

    let rate = |r: &Read| thousands(r.rate() as u64);
    let mut out = String::new();
    out.push_str("## (f) Catch-up: one client reads the store from the start\n\n");
    out.push_str(&format!(
        "{} events stored (filled in {:.1} s through `POST /api/events:batch`, {} events \
         per request, {} connections), then read once over a WebSocket with \
         `from_seq=0` (every frame parsed and checked gap-free) and once by paging \
         `GET /api/events` with `after_seq`. The ceiling sends the same number of \
         frames from memory, and answers its fixed page of 100 events.\n\n",
        thousands(events),
        filled_in.as_secs_f64(),
        FILL_BATCH,
        FILL_CONNECTIONS,
    ));
    out.push_str(
        "| Read | ceiling (no-op axum) | herald | herald / ceiling |\n|---|---|---|---|\n",
    );
    out.push_str(&format!(
        "| WebSocket replay from `from_seq=0` | {} events/s | **{} events/s** ({:.2} s) | {:.0}% |\n",
        rate(&ceiling_stream),
        rate(&stream),
        stream.elapsed.as_secs_f64(),
        100.0 * stream.rate() / ceiling_stream.rate(),
    ));
    out.push_str(&format!(
        "| paging `GET /api/events`, limit 100 | {} events/s | {} events/s | {:.0}% |\n",
        rate(&ceiling_pages),
        rate(&pages_100),
        100.0 * pages_100.rate() / ceiling_pages.rate(),
    ));
    out.push_str(&format!(
        "| paging `GET /api/events`, limit 1000 | — | {} events/s | — |\n\n",
        rate(&pages_1000),
    ));
    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    out.push_str(&format!(
        "| Check | Value | Target | Result |\n|---|---|---|---|\n\
         | WebSocket catch-up rate | {} events/s | ≥ {} events/s | {} |\n\n",
        rate(&stream),
        thousands(TARGET_EVENTS_PER_SECOND as u64),
        met(stream.rate() >= TARGET_EVENTS_PER_SECOND),
    ));
    Ok(out)
}

/// Stores `events` events through 1,000-event batches; how long it took.
async fn fill(herald: &ServerProcess, events: u64) -> Result<Duration> {
    let started = Instant::now();
    let per_connection = events.div_ceil(FILL_CONNECTIONS);
    let mut tasks = Vec::new();
    for c in 0..FILL_CONNECTIONS {
        let addr = herald.addr;
        let first = c * per_connection;
        let last = ((c + 1) * per_connection).min(events);
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            let mut n = first;
            while n < last {
                let size = FILL_BATCH.min(last - n);
                let response = conn
                    .post_json("/api/events:batch", batch_body(n, size))
                    .await?;
                if response.status != 201 && response.status != 200 {
                    bail!(
                        "a fill batch got {}: {}",
                        response.status,
                        String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
                    );
                }
                n += size;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

fn batch_body(first: u64, n: u64) -> Bytes {
    crate::workload::batch_body((first..first + n).map(|i| {
        serde_json::to_vec(&serde_json::json!({
            "subject": format!("{SUBJECT_PREFIX}.s{}", i % 64),
            "payload": {"n": i, "order": format!("order-{i:08}"), "pad": "x".repeat(160)},
        }))
        .expect("JSON serializes")
    }))
}

/// Reads `events` frames from a WebSocket, checking each seq follows the one before.
async fn replay(url: &str, events: u64) -> Result<Read> {
    let started = Instant::now();
    let (mut socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| anyhow!("connecting to {url} timed out"))??;
    let mut received = 0u64;
    let mut last_seq = 0u64;
    let deadline = started + REPLAY_LIMIT;
    while received < events {
        let message = tokio::time::timeout_at(deadline.into(), socket.next())
            .await
            .map_err(|_| anyhow!("replay stalled after {received} of {events} events"))?
            .ok_or_else(|| anyhow!("the stream ended after {received} events"))??;
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => bail!("the stream closed after {received} events: {frame:?}"),
            _ => continue,
        };
        let frame: Frame = serde_json::from_str(text.as_str())
            .with_context(|| format!("frame {received} is not an event"))?;
        if frame.data.seq <= last_seq {
            bail!("seq {} came after {last_seq}", frame.data.seq);
        }
        last_seq = frame.data.seq;
        received += 1;
    }
    Ok(Read {
        events: received,
        elapsed: started.elapsed(),
    })
}

/// Pages through herald from the start, `limit` events a page.
async fn page_herald(herald: &ServerProcess, events: u64, limit: usize) -> Result<Read> {
    let mut conn = Connection::open(herald.addr).await?;
    let started = Instant::now();
    let (mut read, mut after) = (0u64, 0u64);
    while read < events {
        let response = conn
            .get(&format!(
                "/api/events?subject={SUBJECT_PREFIX}.%3E&after_seq={after}&limit={limit}"
            ))
            .await?;
        if response.status != 200 {
            bail!("a page got {}", response.status);
        }
        let page: Vec<PageEvent> = serde_json::from_slice(&response.body)?;
        let Some(last) = page.last() else {
            bail!("an empty page after {read} of {events} events");
        };
        after = last.seq;
        read += page.len() as u64;
    }
    Ok(Read {
        events: read,
        elapsed: started.elapsed(),
    })
}

/// Fetches the ceiling's fixed page of 100 events until `events` are read.
async fn page_ceiling(ceiling: &ServerProcess, events: u64) -> Result<Read> {
    let mut conn = Connection::open(ceiling.addr).await?;
    let started = Instant::now();
    let mut read = 0u64;
    while read < events {
        let response = conn.get("/api/events?limit=100").await?;
        let page: Vec<PageEvent> = serde_json::from_slice(&response.body)?;
        read += page.len() as u64;
    }
    Ok(Read {
        events: read,
        elapsed: started.elapsed(),
    })
}
