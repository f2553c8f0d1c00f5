//! Crash safety: concurrent publishers, `kill -9` mid-stream, restart on the same data
//! directory. Every acknowledged (201) event must survive with its id, seq, subject,
//! payload, correlation id and timestamp; seqs stay 1..N without gaps; publishing
//! continues with the next seq.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const PUBLISHERS: usize = 6;

/// Runs publishers until `kill_after` acks have arrived in this round, SIGKILLs the
/// server while they are still publishing, and returns every acknowledged event as
/// (response body, subject, payload).
async fn publish_then_kill(
    h: &mut TestHerald,
    round: usize,
    kill_after: usize,
) -> Vec<(Value, String, Value)> {
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let http = http_client();
        let url = h.url("/api/events");
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..50_000 {
                let subject = format!("hub.crash.r{round}.p{p}");
                let payload = json!({"round": round, "p": p, "i": i, "text": "durable ✓"});
                let body = if i % 2 == 0 {
                    json!({"subject": subject, "payload": payload, "correlation_id": uuid::Uuid::new_v4().to_string()})
                } else {
                    json!({"subject": subject, "payload": payload})
                };
                let sent = tokio::time::timeout(
                    Duration::from_secs(10),
                    http.post(&url).json(&body).send(),
                )
                .await;
                let resp = match sent {
                    Ok(Ok(resp)) => resp,
                    // The server died: this request may or may not have been stored.
                    _ => break,
                };
                if resp.status() != 201 {
                    break;
                }
                let Ok(r) = resp.json::<Value>().await else { break };
                out.push((r, subject, payload));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            out
        }));
    }
    let reached = poll_until(Duration::from_secs(30), Duration::from_millis(2), || {
        let n = acked.load(Ordering::SeqCst);
        async move { n >= kill_after }
    })
    .await;
    assert!(
        reached,
        "publishers did not reach {kill_after} acks in 30 s"
    );
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "publishers must still be running at the kill"
    );
    h.kill9().await;
    let mut all = Vec::new();
    for t in tasks {
        let out = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("publishers stop after the kill")
            .unwrap();
        all.extend(out);
    }
    all
}

/// Checks the restarted log against everything acknowledged so far.
async fn verify(h: &TestHerald, acked: &[(Value, String, Value)], unacked_allowance: usize) -> u64 {
    let log = h.all_events().await;
    let n = log.len() as u64;
    assert_eq!(
        seqs(&log),
        (1..=n).collect::<Vec<_>>(),
        "seqs after restart are 1..N without gaps"
    );
    let by_id: HashMap<&str, &Value> = log.iter().map(|e| (e["id"].as_str().unwrap(), e)).collect();
    assert_eq!(by_id.len(), log.len(), "ids are unique");
    let mut missing = Vec::new();
    for (resp, subject, payload) in acked {
        let id = resp["event_id"].as_str().unwrap();
        match by_id.get(id) {
            None => missing.push(format!("{id} (seq {})", resp["seq"])),
            Some(e) => {
                assert_eq!(e["seq"], resp["seq"], "{id}: seq changed");
                assert_eq!(e["subject"], subject.as_str(), "{id}: subject");
                assert_eq!(&e["payload"], payload, "{id}: payload");
                assert_eq!(
                    e["correlation_id"], resp["correlation_id"],
                    "{id}: correlation id"
                );
                assert_eq!(
                    assert_rfc3339(&e["timestamp"], "stored"),
                    assert_rfc3339(&resp["timestamp"], "acked"),
                    "{id}: timestamp"
                );
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost after kill -9: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // Anything beyond the acks can only be requests in flight at the kill.
    let extra = log.len() - acked.len();
    assert!(
        extra <= unacked_allowance,
        "{extra} unacknowledged events stored, at most {unacked_allowance} were in flight"
    );
    for e in &log {
        assert!(
            e["subject"].as_str().unwrap().starts_with("hub.crash."),
            "unexpected event {e}"
        );
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    let mut h = TestHerald::start().await;
    let mut acked = Vec::new();
    for (round, kill_after) in [(0, 300), (1, 200)] {
        acked.extend(publish_then_kill(&mut h, round, kill_after).await);
        h.restart().await;
        let n = verify(&h, &acked, PUBLISHERS * (round + 1)).await;
        assert!(n >= acked.len() as u64);
        // The restarted server continues the log.
        let next = h
            .publish(&format!("hub.crash.after{round}"), json!({"round": round}))
            .await;
        assert_eq!(
            seq_of(&next),
            n + 1,
            "publishing continues with the next seq"
        );
        acked.push((
            next,
            format!("hub.crash.after{round}"),
            json!({"round": round}),
        ));
    }
}
