//! How fast the segment log appends synced batches on this machine: the bound the
//! embedded store's own log would put under publishing (issue 11, step 4).
//!
//! `cargo run --release -p herald-store --example segment_append -- [BATCH] [EVENTS]`
//! (defaults: batches of 24 events, the size group commit reaches at 64 connections,
//! and 200,000 events of ~300 bytes, in a temporary directory beside the working one).

use std::time::Instant;

use herald_store::segment::{SegmentLog, SegmentOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(24);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let dir = tempfile::tempdir_in(".").expect("a temporary directory here");
    let (mut log, _) = SegmentLog::open(dir.path(), SegmentOptions::default()).expect("open");
    let body = |n: usize| {
        format!(
            r#"{{"id":"0193a4b2-7c1d-7e3f-8a9b-{n:012}","subject":"hub.bench.orders.created","payload":{{"order":"order-{n:08}","amount":4200,"currency":"EUR","customer":"cust-{n:06}","lines":[{{"sku":"sku-1","qty":2}},{{"sku":"sku-2","qty":1}}]}},"ts":1764979200000000}}"#
        )
        .into_bytes()
    };
    let mut latencies = Vec::with_capacity(events / batch + 1);
    let started = Instant::now();
    let mut written = 0;
    while written < events {
        let n = batch.min(events - written);
        let bodies: Vec<Vec<u8>> = (written..written + n).map(body).collect();
        let at = Instant::now();
        log.append(&bodies).expect("append");
        latencies.push(at.elapsed());
        written += n;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{events} events of {} bytes in batches of {batch}: {:.0} events/s, {} syncs; \
         per batch (write + fdatasync) p50 {:?}, p99 {:?}",
        body(0).len(),
        events as f64 / elapsed.as_secs_f64(),
        latencies.len(),
        pick(0.5),
        pick(0.99),
    );
}
