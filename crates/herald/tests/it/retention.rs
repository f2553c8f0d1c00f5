//! Retention through the binary: a policy deletes the oldest events in the background,
//! the file gives the space back, a consumer goes on with the next kept event and counts
//! what it skipped, aggregates are kept, and two instances on PostgreSQL share the
//! policies.

use std::time::{Duration, Instant};

use herald_store::testing::TestPostgres;
use serde_json::{json, Value};

use crate::harness::*;

/// Publishes `n` events of about `size` bytes each on `subject`, in batches.
async fn fill(herald: &TestHerald, subject: &str, n: usize, size: usize) {
    let http = http_client();
    let filler = "x".repeat(size);
    for start in (0..n).step_by(500) {
        let events: Vec<Value> = (start..n.min(start + 500))
            .map(|i| json!({"subject": subject, "payload": {"i": i, "filler": filler}}))
            .collect();
        let response = http
            .post(herald.url("/api/events:batch"))
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
}

async fn put_retention(base: &str, policies: Value) -> (u16, Value) {
    let response = http_client()
        .put(format!("{base}/api/retention"))
        .json(&json!({ "policies": policies }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn count(herald: &TestHerald, subject: &str) -> usize {
    herald
        .query(&[("subject", subject.into()), ("limit", "1000".into())])
        .await
        .len()
}

/// Waits until `subject` holds `n` events (retention runs in the background).
async fn wait_for_count(herald: &TestHerald, subject: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = count(herald, subject).await;
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{subject} still holds {now} events, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_events_deletes_the_oldest_and_gives_the_space_back() {
    let herald = TestHerald::start().await;
    let http = http_client();
    let response = http
        .put(herald.url("/api/consumers/metrics-reader"))
        .json(&json!({"filter_subjects": ["hub.*.metrics.>"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    fill(&herald, "hub.local-hub.metrics.cpu", 20_000, 1_000).await;
    herald
        .publish("hub.local-hub.orders.placed", json!({"id": 1}))
        .await;
    let context = http
        .post(herald.url("/api/aggregates/meter/m-1/events"))
        .json(&json!({"events": [{"type": "metrics.reset", "subject": "hub.local-hub.metrics.reset", "payload": {}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(context.status(), 201);
    tokio::time::sleep(Duration::from_secs(1)).await; // a checkpoint
    let before = herald.store_bytes();
    assert!(before > 20_000_000, "20 MB of events take {before} bytes");

    let (status, body) = put_retention(
        herald.base_url(),
        json!([{"subjects": "hub.*.metrics.>", "MAX_MSGS": 101}]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policies"][0]["max_events"], 101);
    // 100 of cpu are kept, and the aggregate's event (which counts, and is kept).
    wait_for_count(&herald, "hub.local-hub.metrics.cpu", 100).await;
    assert_eq!(count(&herald, "hub.local-hub.metrics.reset").await, 1);
    assert_eq!(
        count(&herald, "hub.local-hub.orders.>").await,
        1,
        "no policy: kept"
    );
    let kept = herald
        .query(&[
            ("subject", "hub.local-hub.metrics.cpu".into()),
            ("limit", "1".into()),
        ])
        .await;
    assert_eq!(kept[0]["payload"]["i"], 19_900, "the oldest went first");

    // The consumer goes on with the next kept event and says what it skipped.
    let info: Value = http
        .get(herald.url("/api/consumers/metrics-reader"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["state"]["skipped_by_retention"], 19_900, "{info}");
    assert_eq!(info["state"]["num_pending"], 101, "{info}");
    let fetched: Value = http
        .post(herald.url("/api/consumers/metrics-reader/fetch"))
        .json(&json!({"batch": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        fetched["messages"][0]["event"]["payload"]["i"], 19_900,
        "{fetched}"
    );

    // The store gives the space back (after the next checkpoint or compaction).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = herald.store_bytes();
        if after < before / 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store still takes {after} bytes (was {before})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_refused_and_admin_keys_only() {
    let herald = TestHerald::start().await;
    for (policies, what) in [
        (
            json!([{"subjects": "hub.>.x", "max_events": 1}]),
            "a bad pattern",
        ),
        (
            json!([{"subjects": "hub.>", "max_age": "3 years"}]),
            "a bad age",
        ),
        (json!([{"subjects": "hub.>", "max_age": 0}]), "a zero age"),
        (
            json!([{"subjects": "hub.>", "max_events": -1}]),
            "a negative limit",
        ),
        (
            json!([{"subjects": "hub.>", "max_evnts": 1}]),
            "an unknown field",
        ),
        (json!({"subjects": "hub.>"}), "not a list"),
    ] {
        let (status, body) = put_retention(herald.base_url(), policies).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("invalid_retention")),
            "{what}: {body}"
        );
    }
    let (status, body) = put_retention(herald.base_url(), json!([])).await;
    assert_eq!((status, body), (200, json!({"policies": []})));

    let admin = "retention-admin-key-0123456789";
    let secured = TestHerald::start_with_env(
        None,
        &[],
        &[("HERALD_AUTH", "required"), ("HERALD_ADMIN_KEY", admin)],
    )
    .await;
    let http = http_client();
    let status = http
        .get(secured.url("/api/retention"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    let status = http
        .get(secured.url("/api/retention"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_postgres_share_the_policies() {
    let url = TestPostgres::shared().create_database().await.unwrap();
    let a = TestHerald::start_on(Some(&url), &["--hub-id", "a"]).await;
    let b = TestHerald::start_on(Some(&url), &["--hub-id", "b"]).await;
    fill(&a, "hub.a.logs.app", 1_000, 100).await;
    let (status, _) = put_retention(
        b.base_url(),
        json!([{"subjects": "hub.*.logs.>", "max_bytes": 50_000}]),
    )
    .await;
    assert_eq!(status, 200);
    // Payloads are {"i":<n>,"filler":"x…"}: about 125 bytes, so about 400 are kept.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = a
            .query(&[
                ("subject", "hub.a.logs.app".into()),
                ("limit", "1000".into()),
            ])
            .await;
        let bytes: usize = left
            .iter()
            .map(|e| serde_json::to_string(&e["payload"]).unwrap().len())
            .sum();
        if left.len() < 1_000 && bytes <= 50_000 {
            assert!(
                bytes > 49_000,
                "the newest events up to the limit are kept: {bytes}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} events, {bytes} bytes left",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed: Value = http_client()
        .get(a.url("/api/retention"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["policies"][0]["max_bytes"], 50_000);
}
