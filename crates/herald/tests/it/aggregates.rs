//! The event store through the binary: appends on an expected version (one winner of 50
//! racing appends, on the embedded store and on two instances sharing PostgreSQL),
//! idempotent re-appends, loads from a version and from a snapshot, aggregate events
//! as ordinary events (queried, streamed), bad input refused with nothing stored, and
//! versions kept across a restart.

use std::time::Duration;

use herald_store::testing::TestPostgres;
use serde_json::{json, Value};

use crate::harness::*;

async fn append(http: &reqwest::Client, base: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = http
        .post(format!("{base}/api/aggregates/{path}/events"))
        .json(body)
        .send()
        .await
        .expect("POST append");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

fn updated(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"type": "context.updated", "payload": {"i": i}}))
        .collect()
}

/// 50 appends expecting the same version, sent at once to `bases` in turn: exactly one
/// is stored (201), the other 49 are `409 version_conflict` naming the winner's version.
async fn race(bases: &[String], path: &str) {
    let http = http_client();
    let (status, _) = append(
        &http,
        &bases[0],
        path,
        &json!({"expected_version": "no_stream", "events": updated(1)}),
    )
    .await;
    assert_eq!(status, 201);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let http = http.clone();
            let base = bases[i % bases.len()].clone();
            let path = path.to_owned();
            tokio::spawn(async move {
                append(
                    &http,
                    &base,
                    &path,
                    &json!({"expected_version": 1, "events": updated(2)}),
                )
                .await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            201 => {
                wins += 1;
                assert_eq!(body["version"], 3, "{body}");
            }
            409 => {
                assert_eq!(body["error"]["code"], "version_conflict", "{body}");
                assert_eq!(body["error"]["current_version"], 3, "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        wins, 1,
        "exactly one of 50 appends expecting version 1 wins"
    );
    let (status, loaded) = get(&http, format!("{}/api/aggregates/{path}/events", bases[0])).await;
    assert_eq!(status, 200);
    assert_eq!(loaded["version"], 3);
    assert_eq!(loaded["events"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_racing_appends_one_wins_on_the_embedded_store() {
    let herald = TestHerald::start().await;
    race(&[herald.base_url().to_owned()], "context/race-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_racing_appends_one_wins_across_two_postgres_instances() {
    let url = TestPostgres::shared().create_database().await.unwrap();
    let a = TestHerald::start_on(Some(&url), &["--hub-id", "a"]).await;
    let b = TestHerald::start_on(Some(&url), &["--hub-id", "b"]).await;
    race(
        &[a.base_url().to_owned(), b.base_url().to_owned()],
        "context/race-2",
    )
    .await;
    // The other instance loads what the first wrote, snapshots included.
    let http = http_client();
    let response = http
        .put(b.url("/api/aggregates/context/race-2/snapshot"))
        .json(&json!({"version": 3, "state": {"n": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, snapshot) = get(&http, a.url("/api/aggregates/context/race-2/snapshot")).await;
    assert_eq!((status, snapshot["version"].clone()), (200, json!(3)));
}

/// Seed 003's repository: create, update, snapshot, load from the snapshot; the events
/// are ordinary events too (query filters, the live stream, get by id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_is_appended_loaded_and_snapshotted() {
    let mut herald = TestHerald::start().await;
    let http = http_client();
    let base = herald.base_url().to_owned();
    let mut ws = herald.ws_connect(&stream_path("hub.*.context.>", "")).await;
    let created = json!({
        "expected_version": "no_stream",
        "events": [{
            "type": "context.created",
            "id": "0190f2a0-0000-7000-8000-000000000001",
            "payload": {"name": "Q3 plan", "agent_id": "a-1"},
            "metadata": {"user": "ann"},
        }],
    });
    let (status, first) = append(&http, &base, "context/c-1", &created).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["aggregate_type"], "context");
    assert_eq!(first["aggregate_id"], "c-1");
    assert_eq!(first["version"], 1);
    assert_eq!(first["events"][0]["version"], 1);
    // A client's retry of the same append: the same answer, nothing stored twice.
    let (status, again) = append(&http, &base, "context/c-1", &created).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first);

    let live = expect_event(&mut ws, Duration::from_secs(5), "the created event, live").await
        ["data"]
        .clone();
    assert_eq!(
        live["aggregate"],
        json!({"type": "context", "id": "c-1", "version": 1})
    );
    assert_eq!(live["type"], "context.created");
    assert_eq!(live["metadata"], json!({"user": "ann"}));
    assert_eq!(live["subject"], "hub.local-hub.context.context.created");

    for (expected, n) in [(json!(1), 4), (json!("exists"), 5)] {
        let (status, body) = append(
            &http,
            &base,
            "context/c-1",
            &json!({"expected_version": expected, "events": updated(n)}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let response = http
        .put(herald.url("/api/aggregates/context/c-1/snapshot"))
        .json(&json!({"version": 5, "state": {"name": "Q3 plan", "updates": 4}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, snapshot) = get(&http, herald.url("/api/aggregates/context/c-1/snapshot")).await;
    assert_eq!(status, 200);
    assert_eq!(snapshot["version"], 5);
    assert_eq!(snapshot["state"]["updates"], 4);
    assert_rfc3339(&snapshot["created_at"], "created_at");
    // Loading from the snapshot: the events after it, in version order.
    let (status, rest) = get(
        &http,
        herald.url("/api/aggregates/context/c-1/events?from_version=6&limit=3"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(rest["version"], 10);
    let versions: Vec<u64> = rest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["aggregate"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [6, 7, 8]);

    let of_aggregate = herald
        .query(&[
            ("aggregate_type", "context".into()),
            ("aggregate_id", "c-1".into()),
            ("limit", "1000".into()),
        ])
        .await;
    assert_eq!(of_aggregate.len(), 10);
    let event = herald
        .get_event("0190f2a0-0000-7000-8000-000000000001")
        .await;
    assert_eq!(event["aggregate"]["version"], 1);

    // Versions survive a restart.
    ws_close(ws).await;
    assert!(herald.terminate().await.success());
    herald.restart().await;
    let (status, body) = append(
        &http,
        herald.base_url(),
        "context/c-1",
        &json!({"expected_version": 10, "events": updated(1)}),
    )
    .await;
    assert_eq!(
        (status, body["version"].clone()),
        (201, json!(11)),
        "{body}"
    );
}

/// Every client mistake is a 4xx naming the problem, and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_appends_are_refused_and_store_nothing() {
    let herald = TestHerald::start().await;
    let http = http_client();
    let base = herald.base_url().to_owned();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "context/c-1",
            json!({"events": []}),
            422,
            "invalid_aggregate",
        ),
        ("context/c-1", json!({}), 422, "invalid_aggregate"),
        (
            "context/c-1",
            json!({"events": updated(1), "extra": 1}),
            422,
            "invalid_aggregate",
        ),
        (
            "context/c-1",
            json!({"expected_version": -1, "events": updated(1)}),
            422,
            "invalid_aggregate",
        ),
        (
            "context/c-1",
            json!({"expected_version": "maybe", "events": updated(1)}),
            422,
            "invalid_aggregate",
        ),
        (
            "context/c-1",
            json!({"events": [{"type": "a.>", "payload": {}}]}),
            422,
            "invalid_aggregate",
        ),
        (
            "context/c-1",
            json!({"events": [{"type": "a.b"}]}),
            422,
            "invalid_aggregate",
        ),
        (
            "context/c-1",
            json!({"events": [{"type": "a.b", "payload": [1]}]}),
            422,
            "invalid_aggregate",
        ),
        (
            "context/c-1",
            json!({"events": [{"type": "a.b", "payload": {}, "subject": "hub.*"}]}),
            422,
            "invalid_aggregate",
        ),
        (
            "context/c-1",
            json!({"events": [{"type": "a.b", "payload": {}, "id": "nope"}]}),
            422,
            "invalid_aggregate",
        ),
        (
            "context/c-1",
            json!({"events": [
                {"type": "a.b", "payload": {}, "id": "0190f2a0-0000-7000-8000-000000000009"},
                {"type": "a.b", "payload": {}, "id": "0190f2a0-0000-7000-8000-000000000009"},
            ]}),
            409,
            "conflict",
        ),
        (
            "con.text/c-1",
            json!({"events": updated(1)}),
            422,
            "invalid_aggregate",
        ),
        (
            "context/c-1",
            json!({"expected_version": "exists", "events": updated(1)}),
            409,
            "version_conflict",
        ),
        // A comma is how a path parameter writes a list.
        (
            "context/null,null",
            json!({"events": updated(1)}),
            422,
            "invalid_aggregate",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, answer) = append(&http, &base, path, &body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path} {body}: {answer}"
        );
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let response = http
        .post(herald.url("/api/aggregates/context/c-1/events"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // A subject's schema holds for aggregate events too.
    let response = http
        .put(herald.url("/api/schemas/orders"))
        .json(&json!({
            "subject_pattern": "hub.*.order.>",
            "schema": {"type": "object", "required": ["amount"]},
        }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let (status, body) = append(
        &http,
        &base,
        "order/o-1",
        &json!({"events": [{"type": "order.placed", "payload": {"amount": 3}},
                           {"type": "order.placed", "payload": {}}]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("schema_violation")),
        "{body}"
    );
    assert_eq!(body["error"]["schema"], "orders");
    assert_eq!(
        herald.event_count().await,
        0,
        "nothing of a refused append is stored"
    );

    let (status, body) = get(&http, herald.url("/api/aggregates/context/c-1/events")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("aggregate_not_found"))
    );
    let (status, body) = get(
        &http,
        herald.url("/api/aggregates/context/c-1/events?from=1"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    for (body, status) in [
        (json!({"version": 1, "state": {}}), 404),
        (json!({"version": 0, "state": {}}), 422),
        (json!({"version": 1}), 422),
        (json!({"version": 1, "state": 3}), 422),
    ] {
        let response = http
            .put(herald.url("/api/aggregates/context/c-1/snapshot"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
    }
}
