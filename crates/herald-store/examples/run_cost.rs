//! What the log's own indexes would cost (issue 11): sorted runs (`herald_store::run`)
//! written once per sealed segment, against the ~10–15 µs of CPU per event that SQLite's
//! B-tree writes cost inside the server.
//!
//! For `EVENTS` events (default 200,000, one 64 MiB segment of ~300-byte events) it
//! builds the three runs a sealed segment would get: (subject, seq) over 32 subjects,
//! (correlation id, seq) and (id, seq) with time-ordered UUIDs, sorting each first, and
//! reports this thread's CPU per event (`/proc/thread-self/schedstat`); then 100,000
//! random lookups of an id and of a subject page (100 seqs from a random seq); then the
//! CPU per entry of merging five such id runs into one (the id index's levels); then
//! `herald_store::postings` as the log would use it: `EVENTS` events' three keys added,
//! flushed every 16,384 events and merged in tiers, CPU per event and the runs left.
//!
//! `cargo run --release -p herald-store --example run_cost -- [EVENTS]`

use std::time::Instant;

use herald_store::postings::Postings;
use herald_store::run::{merge_runs, write_run, Run};
use uuid::Uuid;

fn cpu_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir_in(".").expect("a temporary directory here");
    let ids: Vec<Uuid> = (0..events).map(|_| Uuid::now_v7()).collect();
    let correlations: Vec<Uuid> = (0..events).map(|_| Uuid::now_v7()).collect();
    let subjects: Vec<String> = (0..32)
        .map(|s| format!("hub.bench.subject{s:02}.created"))
        .collect();

    let cpu = cpu_ns();
    let mut by_subject: Vec<(&[u8], u64)> = (1..=events)
        .map(|seq| (subjects[(seq % 32) as usize].as_bytes(), seq))
        .collect();
    by_subject.sort_unstable();
    write_run(&dir.path().join("subjects.run"), by_subject).expect("subjects");
    let mut by_correlation: Vec<([u8; 16], u64)> = correlations
        .iter()
        .zip(1..)
        .map(|(c, seq)| (*c.as_bytes(), seq))
        .collect();
    by_correlation.sort_unstable();
    write_run(&dir.path().join("correlations.run"), by_correlation).expect("correlations");
    let mut by_id: Vec<([u8; 16], u64)> = ids
        .iter()
        .zip(1..)
        .map(|(id, seq)| (*id.as_bytes(), seq))
        .collect();
    by_id.sort_unstable();
    write_run(&dir.path().join("ids.run"), by_id).expect("ids");
    let spent = cpu_ns() - cpu;
    let bytes: u64 = ["subjects", "correlations", "ids"]
        .iter()
        .map(|n| {
            std::fs::metadata(dir.path().join(format!("{n}.run")))
                .unwrap()
                .len()
        })
        .sum();
    println!(
        "{events} events: three runs built in {:.1} ms of CPU, {:.2} µs per event; {:.1} bytes per event on disk",
        spent as f64 / 1e6,
        spent as f64 / 1e3 / events as f64,
        bytes as f64 / events as f64,
    );

    let ids_run = Run::open(&dir.path().join("ids.run")).expect("open");
    let subjects_run = Run::open(&dir.path().join("subjects.run")).expect("open");
    let mut id_runs = vec![ids_run];
    for part in 1..5u64 {
        let mut more: Vec<([u8; 16], u64)> = (0..events)
            .map(|i| (*Uuid::now_v7().as_bytes(), part * events + i + 1))
            .collect();
        more.sort_unstable();
        let path = dir.path().join(format!("ids-{part}.run"));
        write_run(&path, more).expect("ids");
        id_runs.push(Run::open(&path).expect("open"));
    }
    let cpu = cpu_ns();
    let inputs: Vec<&Run> = id_runs.iter().collect();
    let merged = merge_runs(&inputs, &dir.path().join("ids-merged.run")).expect("merge");
    let spent = cpu_ns() - cpu;
    println!(
        "merged 5 id runs into one of {merged} entries: {:.2} µs of CPU per entry",
        spent as f64 / 1e3 / merged as f64
    );
    let ids_run = id_runs.swap_remove(0);

    let postings = Postings::open(dir.path().join("postings")).expect("postings");
    let cpu = cpu_ns();
    for seq in 1..=events {
        let i = (seq - 1) as usize;
        let subject = [b"S:".as_slice(), subjects[(seq % 32) as usize].as_bytes()].concat();
        let correlation = [b"C:".as_slice(), correlations[i].as_bytes()].concat();
        let id = [b"I:".as_slice(), ids[i].as_bytes()].concat();
        postings.add([
            (subject.as_slice(), seq),
            (correlation.as_slice(), seq),
            (id.as_slice(), seq),
        ]);
        if seq % 16_384 == 0 {
            postings.flush().expect("flush");
            postings.compact().expect("compact");
        }
    }
    postings.flush().expect("flush");
    postings.compact().expect("compact");
    let spent = cpu_ns() - cpu;
    println!(
        "postings: {events} events' three keys added, flushed and merged: {:.2} µs of CPU per event; {} runs",
        spent as f64 / 1e3 / events as f64,
        postings.runs(),
    );
    measure("an id in the postings", |n| {
        let i = (n % events) as usize;
        let id = [b"I:".as_slice(), ids[i].as_bytes()].concat();
        assert_eq!(postings.seqs(&id, 0, 1).unwrap(), vec![i as u64 + 1]);
    });

    measure("an id", |n| {
        let i = (n % events) as usize;
        let found = ids_run.values(ids[i].as_bytes(), 0, 1).unwrap();
        assert_eq!(found, vec![i as u64 + 1]);
    });
    measure("a subject page of 100", |n| {
        let found = subjects_run
            .values(subjects[(n % 32) as usize].as_bytes(), n % events, 100)
            .unwrap();
        assert!(found.len() <= 100);
    });
}

/// 100,000 calls of `lookup` with pseudo-random numbers: its latency percentiles.
fn measure(name: &str, mut lookup: impl FnMut(u64)) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut latencies = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = Instant::now();
        lookup(state);
        latencies.push(at.elapsed());
    }
    latencies.sort();
    println!(
        "100,000 lookups of {name}: p50 {:?}, p99 {:?}",
        latencies[50_000], latencies[99_000]
    );
}
