//! How fast the segment log appends synced batches on this machine: the bound the
//! embedded store's own log would put under publishing (issue 11, step 4); then how fast
//! it finds records by seq (`read_one`, in random order), the read a query page makes
//! for each event an index names.
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
    point_reads(&log, events);
}

/// Random point reads over the log just written.
fn point_reads(log: &SegmentLog, events: usize) {
    let reads = events.min(100_000);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut latencies = Vec::with_capacity(reads);
    let started = Instant::now();
    for _ in 0..reads {
        // xorshift: a cheap, fixed sequence of seqs.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let seq = 1 + state % events as u64;
        let at = Instant::now();
        let record = log.read_one(seq).expect("read").expect("found");
        latencies.push(at.elapsed());
        assert_eq!(record.seq, seq);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{reads} random reads by seq: {:.0} reads/s; per read p50 {:?}, p99 {:?}",
        reads as f64 / elapsed.as_secs_f64(),
        pick(0.5),
        pick(0.99),
    );
}
