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

/// What one server did in the scenario.
struct FanoutResult {
    idle_rss: u64,
    streams_rss: u64,
    open_time: Duration,
    expected: u64,
    received: u64,
    publish_errors: u64,
    latency: Samples,
    cores: f64,
}

pub async fn run(options: &Options) -> Result<String> {
    let streams = options.fanout_streams;
    let rate = (options.fanout_deliveries / streams as u64).max(1);
    let ceiling = ServerProcess::ceiling(&options.data_parent).await?;
    let ceiling_result = measure(&ceiling, streams, rate, options.latency_duration).await?;
    ceiling.stop().await?;
    let herald = ServerProcess::herald_with_args(
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
    let herald_result = measure(&herald, streams, rate, options.latency_duration).await?;
    herald.stop().await?;

    let row = |name: &str, r: &FanoutResult| {
        format!(
            "| {name} | {:.1} KiB ({} → {} MiB, opened in {:.1} s) | {} / {} (publish errors: {}) | {} / **{}** / {} | {:.2} cores |\n",
            per_stream_kib(r, streams),
            r.idle_rss / (1024 * 1024),
            r.streams_rss / (1024 * 1024),
            r.open_time.as_secs_f64(),
            thousands(r.received),
            thousands(r.expected),
            r.publish_errors,
            ms(r.latency.quantile(0.5)),
            ms(r.latency.quantile(0.99)),
            ms(r.latency.max()),
            r.cores,
        )
    };
    let kib = per_stream_kib(&herald_result, streams);
    let p99 = herald_result.latency.quantile(0.99);
    let verdict = |met: bool| if met { "met" } else { "**not met**" };
    Ok(format!(
        "## (e) Fan-out: {streams} WebSocket subscribers, {} deliveries/s\n\n\
         Each subscriber streams `{SUBJECT}`; one keep-alive connection publishes {rate} \
         events/s for {:.0} s, so every event is delivered {streams} times. Latency = \
         receipt − send, over every delivery; the subscribers are this process's tasks, \
         on the same cores. The ceiling broadcasts each POST from memory.\n\n\
         | Server | RSS per idle open stream | deliveries received / expected | receipt p50 / p99 / max | server CPU while delivering |\n\
         |---|---|---|---|---|\n{}{}\n\
         | Check | Value | Target | Result |\n|---|---|---|---|\n\
         | herald RSS per idle open stream | {kib:.1} KiB | ≤ 20 KiB | {} |\n\
         | herald receipt p99 | {} (ceiling: {}) | ≤ 100 ms | {} |\n\
         | herald: every delivery received | {} / {} | all | {} |\n",
        thousands(rate * streams as u64),
        options.latency_duration.as_secs_f64(),
        row("ceiling (no-op axum)", &ceiling_result),
        row("herald", &herald_result),
        verdict(kib <= 20.0),
        ms(p99),
        ms(ceiling_result.latency.quantile(0.99)),
        verdict(p99 <= 100_000_000),
        thousands(herald_result.received),
        thousands(herald_result.expected),
        verdict(herald_result.received == herald_result.expected),
    ))
}

fn per_stream_kib(result: &FanoutResult, streams: usize) -> f64 {
    result.streams_rss.saturating_sub(result.idle_rss) as f64 / streams as f64 / 1024.0
}

async fn measure(
    server: &ServerProcess,
    streams: usize,
    rate: u64,
    measured: Duration,
) -> Result<FanoutResult> {
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

    let events = (rate as f64 * measured.as_secs_f64()).ceil() as u64;
    let mut readers = Vec::with_capacity(streams);
    for mut socket in sockets {
        let latencies = latencies.clone();
        readers.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(events as usize);
            while (mine.len() as u64) < events {
                let frame = match tokio::time::timeout(Duration::from_secs(5), socket.next()).await
                {
                    Ok(Some(Ok(frame))) => frame,
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
            Ok(response) if (200..300).contains(&response.status) => {}
            _ => publish_errors += 1,
        }
    }
    for reader in readers {
        let _ = reader.await;
    }
    let after = ProcSample::of(&server.pid.to_string())?;
    let latencies = std::mem::take(&mut *latencies.lock().await);
    Ok(FanoutResult {
        idle_rss: idle.rss_bytes,
        streams_rss: with_streams.rss_bytes,
        open_time,
        expected: events * streams as u64,
        received: latencies.len() as u64,
        publish_errors,
        latency: Samples::new(latencies),
        cores: after.cores_used_since(&before),
    })
}
