//! What storing an event costs in CPU, four ways, on this machine: the bound under
//! (a) of issue 11 for each design of the embedded store.
//!
//! 1. **rows**: today's shape: a row with the payload, its unique id index and its
//!    correlation index, and the subject's counts row, in commits of `BATCH` events
//!    synced by SQLite (`synchronous = FULL`).
//! 2. **log**: the batch's records in the segment log (`record.rs` bodies, one `write`
//!    and one `fdatasync` per batch of `BATCH`).
//! 3. **bulk indexes**: what the log would need beside it: (id, seq), (subject, seq) and
//!    (correlation, seq) in `WITHOUT ROWID` tables, written 1,000 events per transaction
//!    in key order and not synced (a restart rebuilds them from the log).
//! 4. **log + postings**: `herald_store::event_log`, the log with its own postings
//!    (subject, correlation, id), flushed and merged on their own thread; the CPU of
//!    every thread.
//!
//! CPU is this thread's time on a CPU (`/proc/thread-self/schedstat`): user and kernel
//! time, not time spent waiting for the disk.
//!
//! `cargo run --release -p herald-store --example index_cost -- [BATCH] [EVENTS]`
//! (defaults: 20 and 200,000; in a temporary directory beside the working one).

use std::time::Instant;

use herald_core::{Event, Origin, Payload, Subject, Timestamp};
use herald_store::event_log::{EventLog, EventLogOptions};
use herald_store::segment::{SegmentLog, SegmentOptions};
use rusqlite::{params, Connection};
use uuid::Uuid;

const SUBJECTS: u64 = 32;
const BULK: usize = 1_000;

fn thread_cpu_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

/// CPU time of every thread of this process (`/proc/self/task/*/schedstat`).
fn process_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|task| {
            let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            text.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

fn event(n: u64) -> Event {
    let payload = format!(
        r#"{{"id":{n},"customer":"cust-{:06}","amount_cents":{},"currency":"EUR","items":[{{"sku":"sku-{:04}","qty":{}}}],"note":"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud"}}"#,
        n % 1_000_000,
        (n * 7919) % 100_000,
        n % 9973,
        1 + n % 5
    );
    let id = Uuid::now_v7();
    Event {
        seq: n + 1,
        id,
        subject: Subject::new(format!("hub.bench.s{}.created", n % SUBJECTS)).expect("subject"),
        origin: Origin {
            hub_id: "hub-1".into(),
            service: None,
            user: None,
        },
        correlation_id: id,
        payload: Payload::from_json(payload).expect("payload"),
        timestamp: Timestamp::now(),
        cloudevent: None,
        tenant: None,
        aggregate: None,
        trace: None,
    }
}

fn sqlite(path: &std::path::Path, synchronous: &str) -> Connection {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};"
    ))
    .expect("pragmas");
    conn
}

/// Runs `write` over the events in chunks of `chunk`; events/s and µs of CPU per event.
fn measure(events: &[Event], chunk: usize, mut write: impl FnMut(&[Event])) -> (f64, f64) {
    let cpu = thread_cpu_ns();
    let started = Instant::now();
    for part in events.chunks(chunk) {
        write(part);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_us = (thread_cpu_ns() - cpu) as f64 / 1_000.0;
    (events.len() as f64 / elapsed, cpu_us / events.len() as f64)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let count: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let dir = tempfile::tempdir_in(".").expect("a temporary directory here");
    let events: Vec<Event> = (0..count).map(event).collect();

    let rows = sqlite(&dir.path().join("rows.db"), "FULL");
    rows.execute_batch(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, id BLOB NOT NULL, subject TEXT NOT NULL,
             correlation_id BLOB NOT NULL, ts INTEGER NOT NULL, hub_id TEXT NOT NULL, payload TEXT NOT NULL);
         CREATE UNIQUE INDEX events_by_id ON events (id);
         CREATE INDEX events_by_correlation ON events (correlation_id);
         CREATE TABLE subjects (subject TEXT PRIMARY KEY, events INTEGER NOT NULL) WITHOUT ROWID;",
    )
    .expect("schema");
    let (rate, cpu) = measure(&events, batch, |part| {
        let tx = rows.unchecked_transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (seq, id, subject, correlation_id, ts, hub_id, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
                )
                .expect("prepare");
            let mut count = tx
                .prepare_cached(
                    "INSERT INTO subjects (subject, events) VALUES (?1, 1)
                     ON CONFLICT (subject) DO UPDATE SET events = events + 1",
                )
                .expect("prepare");
            for e in part {
                insert
                    .execute(params![
                        e.seq as i64,
                        e.id.as_bytes(),
                        e.subject.as_str(),
                        e.correlation_id.as_bytes(),
                        e.timestamp.as_micros(),
                        e.origin.hub_id,
                        e.payload.get()
                    ])
                    .expect("insert");
                count.execute([e.subject.as_str()]).expect("count");
            }
        }
        tx.commit().expect("commit");
    });
    println!(
        "rows ({batch} per synced commit):         {rate:>9.0} events/s, {cpu:5.1} µs CPU/event"
    );

    let (mut log, _) =
        SegmentLog::open(dir.path().join("log"), SegmentOptions::default()).expect("log");
    let (rate, cpu) = measure(&events, batch, |part| {
        let bodies: Vec<Vec<u8>> = part
            .iter()
            .map(|e| {
                let mut body = Vec::with_capacity(e.payload.get().len() + 96);
                herald_store::record::encode(e, &mut body);
                body
            })
            .collect();
        log.append(&bodies).expect("append");
    });
    println!(
        "log ({batch} per write + fdatasync):      {rate:>9.0} events/s, {cpu:5.1} µs CPU/event"
    );

    // The log with its own postings (`herald_store::event_log`): the writer's CPU and
    // the postings thread's, which flushes and merges behind it.
    let (mut event_log, _) =
        EventLog::open(&dir.path().join("event-log"), EventLogOptions::default())
            .expect("event log");
    let cpu = process_cpu_ns();
    let started = Instant::now();
    for part in events.chunks(batch) {
        event_log.append(part).expect("append");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (process_cpu_ns() - cpu) as f64 / 1_000.0 / events.len() as f64;
    println!(
        "log + postings ({batch} per write + fdatasync): {:>9.0} events/s, {cpu:5.1} µs CPU/event (all threads)",
        events.len() as f64 / elapsed
    );
    drop(event_log);

    let index = sqlite(&dir.path().join("index.db"), "NORMAL");
    index
        .execute_batch(
            "CREATE TABLE id_seqs (id BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE subject_seqs (subject TEXT, seq INTEGER, PRIMARY KEY (subject, seq)) WITHOUT ROWID;
             CREATE TABLE correlation_seqs (id BLOB, seq INTEGER, PRIMARY KEY (id, seq)) WITHOUT ROWID;",
        )
        .expect("schema");
    let (rate, cpu) = measure(&events, BULK, |part| {
        let tx = index.unchecked_transaction().expect("begin");
        let mut by_subject: Vec<&Event> = part.iter().collect();
        by_subject.sort_by(|a, b| (a.subject.as_str(), a.seq).cmp(&(b.subject.as_str(), b.seq)));
        {
            let mut ids = tx
                .prepare_cached("INSERT INTO id_seqs (id, seq) VALUES (?1, ?2)")
                .expect("prepare");
            let mut correlations = tx
                .prepare_cached("INSERT INTO correlation_seqs (id, seq) VALUES (?1, ?2)")
                .expect("prepare");
            for e in part {
                ids.execute(params![e.id.as_bytes(), e.seq as i64])
                    .expect("id");
                correlations
                    .execute(params![e.correlation_id.as_bytes(), e.seq as i64])
                    .expect("correlation");
            }
            let mut subjects = tx
                .prepare_cached("INSERT INTO subject_seqs (subject, seq) VALUES (?1, ?2)")
                .expect("prepare");
            for e in by_subject {
                subjects
                    .execute(params![e.subject.as_str(), e.seq as i64])
                    .expect("subject");
            }
        }
        tx.commit().expect("commit");
    });
    println!(
        "bulk indexes ({BULK} per unsynced commit): {rate:>9.0} events/s, {cpu:5.1} µs CPU/event"
    );
}
