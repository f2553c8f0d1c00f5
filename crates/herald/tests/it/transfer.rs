//! `herald export` and `herald import` between two real hubs: every event comes across
//! with its id, subject, payload, correlation id and origin (CloudEvents with their
//! attributes and data), in seq order; importing twice stores once; both resume where
//! they stopped.

use serde_json::{json, Value};

use crate::cli::{herald_cmd, run};
use crate::harness::*;

/// Runs `herald <args>`; answers (success, stdout, stderr).
async fn herald(args: &[&str]) -> (bool, String, String) {
    let out = run(herald_cmd(args)).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// What must survive a copy: everything but the seq, the commit time and the hub id.
fn portable(event: &Value) -> Value {
    let mut event = event.clone();
    let object = event.as_object_mut().unwrap();
    object.remove("seq");
    object.remove("timestamp");
    object["origin"].as_object_mut().unwrap().remove("hub_id");
    if let Some(Value::Object(ce)) = object.get_mut("cloudevent") {
        // Herald's own extension: the seq in the hub that stored it.
        ce.remove("heraldseq");
    }
    event
}

async fn publish_batch(h: &TestHerald, events: Vec<Value>) {
    let resp = h
        .http
        .post(h.url("/api/events:batch"))
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
}

async fn publish_cloudevent(h: &TestHerald, event: Value) {
    let resp = h
        .http
        .post(h.url("/api/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
}

/// 1,500 plain events on two subjects (with origins), then three CloudEvents (object,
/// string and absent data).
async fn fill(h: &TestHerald) {
    for round in 0..3 {
        let events = (0..500)
            .map(|i| {
                let n = round * 500 + i;
                json!({
                    "subject": if n % 3 == 0 { "hub.a.orders.created" } else { "hub.a.users.seen" },
                    "payload": {"n": n, "text": "é \u{1F600}"},
                    "origin": {"service": "svc", "user": if n % 2 == 0 { json!("u1") } else { Value::Null }},
                })
            })
            .collect();
        publish_batch(h, events).await;
    }
    publish_cloudevent(
        h,
        json!({"specversion": "1.0", "id": "ce-1", "source": "/test", "type": "orders.created",
               "data": {"total": 12}}),
    )
    .await;
    publish_cloudevent(
        h,
        json!({"specversion": "1.0", "id": "ce-2", "source": "/test", "type": "note",
               "datacontenttype": "text/plain", "data": "hello", "customext": "x"}),
    )
    .await;
    publish_cloudevent(
        h,
        json!({"specversion": "1.0", "id": "ce-3", "source": "/test", "type": "ping"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_copy_every_event_once() {
    let a = TestHerald::start().await;
    let b = TestHerald::start().await;
    fill(&a).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let file = file.to_str().unwrap();

    // Export: every event, in seq order, as GET /api/events shows it.
    let (ok, stdout, stderr) = herald(&["export", "--url", a.base_url()]).await;
    assert!(ok, "{stderr}");
    let exported = lines(&stdout);
    assert_eq!(exported.len(), 1503, "{stderr}");
    let seqs: Vec<u64> = exported
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=1503).collect::<Vec<_>>());
    let page: Vec<Value> = a
        .http
        .get(a.url("/api/events?after_seq=1499&limit=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(exported[1499..], page[..], "lines are the API's events");
    assert!(stderr.contains("1503 events through seq 1503"), "{stderr}");

    // A filter, and a resumed export: the rest after a seq, no gap, no duplicate.
    let (ok, stdout, _) = herald(&[
        "export",
        "--subject",
        "hub.a.orders.>",
        "--url",
        a.base_url(),
    ])
    .await;
    assert!(ok);
    let orders = lines(&stdout);
    assert_eq!(orders.len(), 500);
    assert!(orders
        .iter()
        .all(|e| e["subject"] == "hub.a.orders.created"));
    let (ok, stdout, _) = herald(&["export", "--from-seq", "1000", "--url", a.base_url()]).await;
    assert!(ok);
    assert_eq!(lines(&stdout)[..], exported[1000..]);

    // To a file (appended), then into the second hub.
    let (ok, _, stderr) = herald(&["export", "--output", file, "--url", a.base_url()]).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = herald(&["import", file, "--url", b.base_url()]).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("1503 stored, 0 already there"), "{stderr}");
    let (ok, stdout, _) = herald(&["export", "--url", b.base_url()]).await;
    assert!(ok);
    let copied = lines(&stdout);
    // Ids, subjects, payloads, correlation ids, origins, CloudEvent attributes and data.
    assert_eq!(copied.len(), exported.len());
    for (copy, original) in copied.iter().zip(&exported) {
        assert_eq!(portable(copy), portable(original));
    }

    // Importing again stores nothing; so does a resumed import of the tail.
    let (ok, _, stderr) = herald(&["import", file, "--url", b.base_url()]).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("0 stored, 1503 already there"), "{stderr}");
    let (ok, _, stderr) =
        herald(&["import", file, "--from-line", "1501", "--url", b.base_url()]).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("0 stored, 3 already there"), "{stderr}");
    let head: Value = b
        .http
        .get(b.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(head["head_seq"], 1503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_stops_the_import_and_says_where_to_resume() {
    let b = TestHerald::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.ndjson");
    let mut text = String::new();
    for n in 0..600 {
        let line = json!({"id": uuid::Uuid::new_v4(), "subject": "hub.a.x", "payload": {"n": n},
                          "correlation_id": uuid::Uuid::new_v4()});
        text.push_str(&format!("{line}\n"));
    }
    text.push_str("{not json\n");
    std::fs::write(&path, &text).unwrap();
    let (ok, _, stderr) = herald(&["import", path.to_str().unwrap(), "--url", b.base_url()]).await;
    assert!(!ok, "a bad line fails the import");
    assert!(stderr.contains("line 601"), "names the line: {stderr}");
    assert!(
        stderr.contains("--from-line 501"),
        "says where to resume: {stderr}"
    );
    let head: Value = b
        .http
        .get(b.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        head["head_seq"], 500,
        "the full batch before the bad line is stored"
    );

    // An event the hub refuses: the hub's error, and nothing of that batch stored.
    std::fs::write(
        &path,
        format!("{}\n", json!({"id": uuid::Uuid::new_v4(), "subject": "bad subject", "payload": {}, "correlation_id": uuid::Uuid::new_v4()})),
    )
    .unwrap();
    let (ok, _, stderr) = herald(&["import", path.to_str().unwrap(), "--url", b.base_url()]).await;
    assert!(!ok);
    assert!(
        stderr.contains("422") && stderr.contains("invalid_batch"),
        "{stderr}"
    );
    assert!(stderr.contains("--from-line 1"), "{stderr}");
}

/// Every event of a hub as `GET /api/events` answers it, in seq order.
async fn raw_events(h: &TestHerald) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e["seq"].as_u64().unwrap());
        let page: Vec<Value> = h
            .http
            .get(h.url(&format!("/api/events?limit=1000&after_seq={after}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// `herald replay` copies a filtered range to another hub in seq order, keeping every
/// event (ids, CloudEvents) as export + import would; run again it stores nothing twice;
/// `--webhook` POSTs each event as `GET /api/events` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_copies_a_range_to_another_hub_and_to_a_webhook() {
    let source = TestHerald::start().await;
    let target = TestHerald::start().await;
    fill(&source).await;
    let from_seq = "100";
    let (ok, _, stderr) = herald(&[
        "replay",
        "--url",
        source.base_url(),
        "--to",
        target.base_url(),
        "--from-seq",
        from_seq,
    ])
    .await;
    assert!(ok, "{stderr}");
    let copied: Vec<Value> = raw_events(&target).await.iter().map(portable).collect();
    let expected: Vec<Value> = raw_events(&source)
        .await
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > 100)
        .map(portable)
        .collect();
    assert_eq!(copied.len(), 1_403);
    assert_eq!(
        copied, expected,
        "the range after seq 100, in order, value for value"
    );
    // Again, from the start: ids decide, nothing is stored twice.
    let (ok, _, stderr) = herald(&[
        "replay",
        "--url",
        source.base_url(),
        "--to",
        target.base_url(),
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("1403 already there"), "{stderr}");
    // From the start this time: the first 100 are new, the rest were there.
    assert_eq!(raw_events(&target).await.len(), 1_503);

    let receiver = crate::rules::Receiver::start(0).await;
    let (ok, _, stderr) = herald(&[
        "replay",
        "--url",
        source.base_url(),
        "--subject",
        "hub.a.orders.>",
        "--to",
        &receiver.url,
        "--webhook",
    ])
    .await;
    assert!(ok, "{stderr}");
    let posted: Vec<Value> = receiver.delivered().iter().map(|r| r.json()).collect();
    let orders = source
        .query(&[
            ("subject", "hub.a.orders.>".into()),
            ("limit", "1000".into()),
        ])
        .await;
    assert_eq!(
        posted, orders,
        "each matching event, as the API shows it, in seq order"
    );
}
