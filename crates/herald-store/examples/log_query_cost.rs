//! How the event log (`herald_store::event_log`) reads, before it is behind a store:
//! issue 11's (f) (replay from the start) and the query table of (c), in one process.
//!
//! `cargo run --release -p herald-store --example log_query_cost -- [EVENTS]` (default
//! 1,000,000 events of ~300 bytes over 1,000 subjects (`hub.bench.<kind>.<verb>`, one in
//! 1,000 on `hub.bench.audit.*`), appended in batches of 1,000; then every event read in
//! order, and 1,000 queries of limit 100 per pattern from the start and from a random
//! `after_seq`, like `herald-bench query`).

use std::time::Instant;

use herald_core::{Event, Origin, Pattern, Payload, Subject, Timestamp};
use herald_store::event_log::{query, EventLog, EventLogOptions};
use herald_store::Query;
use uuid::Uuid;

fn event(seq: u64) -> Event {
    let kinds = ["orders", "payments", "users", "carts", "stock"];
    let verbs = ["created", "updated", "deleted", "viewed"];
    let subject = if seq.is_multiple_of(1_000) {
        format!("hub.bench.audit.e{}", seq % 7)
    } else {
        format!(
            "hub.bench.{}{}.{}",
            kinds[(seq % 5) as usize],
            seq % 50,
            verbs[(seq / 5 % 4) as usize]
        )
    };
    let payload = format!(
        r#"{{"id":{seq},"customer":"cust-{:06}","amount_cents":{},"currency":"EUR","note":"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua"}}"#,
        seq % 1_000_000,
        (seq * 7919) % 100_000
    );
    Event {
        seq,
        id: Uuid::now_v7(),
        subject: Subject::new(subject).expect("subject"),
        origin: Origin {
            hub_id: "hub-1".into(),
            service: None,
            user: None,
        },
        correlation_id: Uuid::now_v7(),
        payload: Payload::from_json(payload).expect("payload"),
        timestamp: Timestamp::from_micros(1_765_000_000_000_000 + seq as i64),
        cloudevent: None,
        tenant: None,
        aggregate: None,
        trace: None,
    }
}

fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(".").expect("a temporary directory here");
    let (mut log, _) = EventLog::open(dir.path(), EventLogOptions::default()).expect("open");
    let started = Instant::now();
    let mut seq = 1;
    while seq <= events {
        let batch: Vec<Event> = (seq..(seq + 1_000).min(events + 1)).map(event).collect();
        log.append(&batch).expect("append");
        seq += batch.len() as u64;
    }
    println!(
        "appended {events} events in batches of 1,000: {:.0} events/s",
        events as f64 / started.elapsed().as_secs_f64()
    );
    let reader = log.reader();

    let started = Instant::now();
    let (mut from, mut read) = (1, 0u64);
    loop {
        let page = reader.events(from, 1_000).expect("read");
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        read += page.len() as u64;
    }
    assert_eq!(read, events);
    println!(
        "(f) read every event in order, 1,000 at a time: {:.0} events/s",
        read as f64 / started.elapsed().as_secs_f64()
    );

    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for pattern in [
        "hub.bench.*.created",
        "hub.bench.orders5.>",
        "hub.bench.orders5.updated",
        "hub.>",
        "hub.bench.audit.>",
    ] {
        for random in [false, true] {
            let mut latencies = Vec::with_capacity(1_000);
            for _ in 0..1_000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let query = Query {
                    subject: Some(Pattern::parse_filter(pattern).expect("pattern")),
                    after_seq: if random { state % events } else { 0 },
                    limit: 100,
                    ..Query::default()
                };
                let at = Instant::now();
                query::run(&reader, &query, herald_store::QUERY_SCAN_BUDGET).expect("query");
                latencies.push(at.elapsed());
            }
            latencies.sort();
            println!(
                "(c) {pattern:<28} from {:<6}: p50 {:>9.3?}, p99 {:>9.3?}",
                if random { "random" } else { "start" },
                latencies[500],
                latencies[990]
            );
        }
    }
}
