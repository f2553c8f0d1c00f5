//! (e) Fan-out: many WebSocket subscribers on one hub. Measures the RSS each open,
//! idle stream costs, then publishes at a rate that makes `deliveries_per_second` in
//! total (every subscriber gets every event) and measures publish → receipt latency
//! over every delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use super::Options;
use crate::client::Connection;
use crate::process::{ProcSample, ServerProcess};
use crate::stats::{ms, thousands, Samples};

const SUBJECT: &str = "hub.bench.fanout.tick";

#[derive(serde::Deserialize)]
struct Frame {
    data: FrameEvent,
}

#[derive(serde::Deserialize)]
struct FrameEvent {
    payload: Probe,
}

#[derive(serde::Deserialize)]
struct Probe {
    sent_ns: u64,
}

pub async fn run(options: &Options) -> Result<String> {
    let streams = options.fanout_streams;
    let deliveries_per_second = options.fanout_deliveries;
    let rate = (deliveries_per_second / streams as u64).max(1);
    let server = ServerProcess::herald_with_args(
        &options.herald_bin,
        &options.data_parent,
        &[
            "--max-streams".into(),
            (streams + 100).to_string(),
            "--max-connections".into(),
            (streams + 1_000).to_string(),
        ],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = ProcSample::of(&server.pid.to_string())?;

    let base = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let url = format!(
        "ws://{}/api/events/stream?subject={}",
        server.addr,
        SUBJECT.replace('>', "%3E")
    );
    let opened = Instant::now();
    let mut sockets = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (socket, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .context("opening a stream timed out")?
        .with_context(|| format!("opening {url}"))?;
        sockets.push(socket);
    }
    let open_time = opened.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_streams = ProcSample::of(&server.pid.to_string())?;
    let per_stream = with_streams.rss_bytes.saturating_sub(idle.rss_bytes) / streams as u64;

    let measured = options.latency_duration;
    let events = (rate as f64 * measured.as_secs_f64()).ceil() as u64;
    let mut readers = Vec::with_capacity(streams);
    for mut socket in sockets {
        let latencies = latencies.clone();
        readers.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(events as usize);
            let deadline = base + Duration::from_secs(3600);
            while (mine.len() as u64) < events {
                let frame = match tokio::time::timeout_at(
                    deadline.into(),
                    tokio::time::timeout(Duration::from_secs(5), socket.next()),
                )
                .await
                {
                    Ok(Ok(Some(Ok(frame)))) => frame,
                    _ => break,
                };
                let received = base.elapsed().as_nanos() as u64;
                if let Message::Text(text) = frame {
                    if let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) {
                        mine.push(received.saturating_sub(frame.data.payload.sent_ns));
                    }
                }
            }
            latencies.lock().await.extend(mine);
        }));
    }

    let before = ProcSample::of(&server.pid.to_string())?;
    let mut publisher = Connection::open(server.addr).await?;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let started = Instant::now();
    let mut publish_errors = 0u64;
    for i in 0..events {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let sent_ns = base.elapsed().as_nanos() as u64;
        let body = format!(r#"{{"subject":"{SUBJECT}","payload":{{"sent_ns":{sent_ns}}}}}"#);
        match publisher.post_json("/api/events", Bytes::from(body)).await {
            Ok(response) if response.status == 201 => {}
            _ => publish_errors += 1,
        }
    }
    for reader in readers {
        let _ = reader.await;
    }
    let after = ProcSample::of(&server.pid.to_string())?;
    let cores = after.cores_used_since(&before);
    let latencies = std::mem::take(&mut *latencies.lock().await);
    let expected = events * streams as u64;
    let received = latencies.len() as u64;
    let samples = Samples::new(latencies);
    server.stop().await?;

    let p99 = samples.quantile(0.99);
    let kib = per_stream as f64 / 1024.0;
    Ok(format!(
        "## (e) Fan-out: {streams} WebSocket subscribers, {} deliveries/s\n\n\
         Each subscriber streams `{SUBJECT}`; one keep-alive connection publishes {rate} \
         events/s for {:.0} s, so every event is delivered {streams} times. Latency = \
         receipt − send, over every delivery.\n\n\
         | Measure | Value | Target | Result |\n|---|---|---|---|\n\
         | RSS per idle open stream | {kib:.1} KiB ({} → {} MiB for {streams} streams, opened in {:.1} s) | ≤ 20 KiB | {} |\n\
         | deliveries received / expected | {} / {} (publish errors: {publish_errors}) | all | {} |\n\
         | receipt latency p50 / p99 / max | {} / **{}** / {} | p99 ≤ 100 ms | {} |\n\
         | server CPU while delivering | {cores:.2} cores | — | — |\n",
        thousands(rate * streams as u64),
        measured.as_secs_f64(),
        idle.rss_bytes / (1024 * 1024),
        with_streams.rss_bytes / (1024 * 1024),
        open_time.as_secs_f64(),
        if kib <= 20.0 { "met" } else { "**not met**" },
        thousands(received),
        thousands(expected),
        if received == expected { "met" } else { "**not met**" },
        ms(samples.quantile(0.5)),
        ms(p99),
        ms(samples.max()),
        if p99 <= 100_000_000 { "met" } else { "**not met**" },
    ))
}
