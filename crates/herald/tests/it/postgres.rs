//! Herald on PostgreSQL, through the binary: several instances on one database form one
//! log, and a database outage is answered with 503 and recovered from without a restart.
//! Each test starts its own PostgreSQL (initdb on a free port) unless
//! `HERALD_TEST_PG_URL` names one.

use std::process::Stdio;
use std::time::{Duration, Instant};

use herald_store::testing::TestPostgres;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::*;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// Publishes `count` events through `url`, returning the seqs acknowledged.
async fn write(url: String, writer: &'static str, count: usize) -> Vec<u64> {
    let http = http_client();
    let mut seqs = Vec::with_capacity(count);
    for i in 0..count {
        let response = http
            .post(format!("{url}/api/events"))
            .json(&json!({"subject": format!("hub.{writer}.x"), "payload": {"i": i}}))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 201, "{writer} #{i}");
        let body: Value = response.json().await.unwrap();
        seqs.push(body["seq"].as_u64().unwrap());
    }
    seqs
}

/// Runs `herald tail` (a process of its own) against `url` from `from_seq`, reads up to
/// `lines` events, then kills it. Returns the seqs it printed.
async fn tail_for_a_while(url: &str, from_seq: u64, lines: usize) -> Vec<u64> {
    let mut child = Command::new(HERALD)
        .args([
            "tail",
            "hub.>",
            "--from-seq",
            &from_seq.to_string(),
            "--url",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herald tail");
    let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seqs = Vec::new();
    while seqs.len() < lines {
        match tokio::time::timeout(Duration::from_secs(3), reader.next_line()).await {
            Ok(Ok(Some(line))) => {
                let event: Value = serde_json::from_str(&line).expect("tail prints JSON events");
                seqs.push(event["seq"].as_u64().unwrap());
            }
            _ => break, // Nothing new for a while: restart anyway.
        }
    }
    let _ = child.kill().await;
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writing_instances_and_a_restarting_tail_see_one_log() {
    let url = TestPostgres::shared().create_database().await.unwrap();
    let a = TestHerald::start_on(Some(&url), &["--hub-id", "a"]).await;
    let b = TestHerald::start_on(Some(&url), &["--hub-id", "b"]).await;
    const PER_WRITER: usize = 250;
    let writers = [
        tokio::spawn(write(a.base_url().to_owned(), "a1", PER_WRITER)),
        tokio::spawn(write(a.base_url().to_owned(), "a2", PER_WRITER)),
        tokio::spawn(write(b.base_url().to_owned(), "b1", PER_WRITER)),
        tokio::spawn(write(b.base_url().to_owned(), "b2", PER_WRITER)),
    ];
    let total = 4 * PER_WRITER as u64;

    // A third process follows the log, restarting from the last seq it printed, on
    // alternating instances, while the writers run.
    let mut seen: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut round = 0usize;
    while (seen.len() as u64) < total && Instant::now() < deadline {
        let instance = [&a, &b][round % 2];
        let from = seen.last().copied().unwrap_or(0);
        let printed = tail_for_a_while(instance.base_url(), from, 40 + 37 * (round % 5)).await;
        seen.extend(printed);
        round += 1;
    }
    let mut acknowledged: Vec<u64> = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    acknowledged.sort_unstable();
    assert_eq!(
        acknowledged,
        (1..=total).collect::<Vec<_>>(),
        "seqs are dense across instances"
    );
    assert!(
        round >= 4,
        "the tail was restarted several times ({round} runs)"
    );
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "every event once, in seq order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_a_fast_503_and_heals_by_itself() {
    let pg = TestPostgres::local(&[]).expect("start PostgreSQL");
    let url = pg.create_database().await.unwrap();
    let herald = TestHerald::start_on(
        Some(&url),
        &[
            "--pg-statement-timeout-secs",
            "1",
            "--pg-connect-timeout-secs",
            "1",
        ],
    )
    .await;
    for i in 0..5 {
        herald.publish("hub.pg.before", json!({"i": i})).await;
    }

    pg.stop().await.expect("stop PostgreSQL");
    let started = Instant::now();
    let response = herald
        .post_event(&json!({"subject": "hub.pg.during", "payload": {}}))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable");
    assert!(elapsed < Duration::from_secs(4), "answered in {elapsed:?}");
    let health = herald.http.get(herald.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let query = herald
        .http
        .get(herald.url("/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 503);

    pg.start().await.expect("restart PostgreSQL");
    let healed = poll_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            herald
                .post_event(&json!({"subject": "hub.pg.after", "payload": {}}))
                .await
                .status()
                == 201
        },
    )
    .await;
    assert!(healed, "publishing works again without restarting Herald");
    let events = herald.all_events().await;
    let subjects: Vec<&str> = events
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(&subjects[..5], &["hub.pg.before"; 5]);
    assert!(
        !subjects.contains(&"hub.pg.during"),
        "the failed publish stored nothing"
    );
    assert_eq!(seqs(&events), (1..=events.len() as u64).collect::<Vec<_>>());
}
