//! Durable consumers through the binary: what a user does with curl, the guarantees
//! (at least once, an answered ack is never redelivered — also across kill -9, one holder
//! at a time, backoff), several instances on one PostgreSQL database, and bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use herald_store::testing::TestPostgres;
use serde_json::{json, Value};

use crate::harness::*;

async fn put(herald: &TestHerald, name: &str, body: Value) -> (u16, Value) {
    let response = herald
        .http
        .put(herald.url(&format!("/api/consumers/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn post(herald: &TestHerald, path: &str, body: Value) -> (u16, Value) {
    let response = herald
        .http
        .post(herald.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Fetches from `name`; panics unless 200. Answers (seq, delivery, ack_id) per message.
async fn fetch(
    herald: &TestHerald,
    name: &str,
    batch: usize,
    wait_ms: u64,
) -> Vec<(u64, u64, String)> {
    let (status, body) = post(
        herald,
        &format!("/api/consumers/{name}/fetch"),
        json!({"batch": batch, "wait_ms": wait_ms}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["event"]["seq"].as_u64().unwrap(),
                m["delivery"].as_u64().unwrap(),
                m["ack_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn settle(herald: &TestHerald, name: &str, verb: &str, body: Value) -> Value {
    let (status, answer) = post(herald, &format!("/api/consumers/{name}/{verb}"), body).await;
    assert_eq!(status, 200, "{verb}: {answer}");
    answer
}

async fn info(herald: &TestHerald, name: &str) -> Value {
    let response = herald
        .http
        .get(herald.url(&format!("/api/consumers/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn publish_many(herald: &TestHerald, subject: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"subject": subject, "payload": {"i": i}}))
            .collect();
        let response = herald
            .http
            .post(herald.url("/api/events:batch"))
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
}

#[tokio::test]
async fn a_user_creates_fetches_acks_naks_and_redrives_with_curl_shapes() {
    let herald = TestHerald::start().await;
    let (status, created) = put(
        &herald,
        "orders",
        json!({"filter_subjects": ["hub.*.orders.>"], "max_deliver": 2, "backoff_ms": [200],
               "description": "order worker"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_keys(
        &created,
        &[
            "name",
            "filter_subjects",
            "deliver_policy",
            "ack_wait_ms",
            "max_deliver",
            "backoff_ms",
            "max_ack_pending",
            "description",
            "created_at",
            "state",
        ],
        "consumer",
    );
    assert_keys(
        &created["state"],
        &[
            "ack_floor",
            "last_delivered_seq",
            "num_pending",
            "num_ack_pending",
            "num_redelivered",
            "skipped_by_retention",
            "num_dead_letters",
            "stalled",
        ],
        "state",
    );
    assert_eq!(created["ack_wait_ms"], 30000, "default");
    assert_eq!(created["max_ack_pending"], 1000, "default");
    assert_eq!(created["deliver_policy"], "all");
    // The same body again: 200, unchanged.
    let (status, again) = put(
        &herald,
        "orders",
        json!({"filter_subjects": ["hub.*.orders.>"], "max_deliver": 2, "backoff_ms": [200],
               "description": "order worker"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["created_at"], created["created_at"]);

    herald
        .publish("hub.local-hub.orders.created", json!({"n": 1}))
        .await;
    herald
        .publish("hub.local-hub.users.created", json!({"n": 2}))
        .await;
    herald
        .publish("hub.local-hub.orders.paid", json!({"n": 3}))
        .await;
    assert_eq!(info(&herald, "orders").await["state"]["num_pending"], 2);

    let (status, fetched) = post(
        &herald,
        "/api/consumers/orders/fetch",
        json!({"batch": 10, "wait_ms": 0}),
    )
    .await;
    assert_eq!(status, 200);
    let messages = fetched["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_keys(&messages[0], &["ack_id", "delivery", "event"], "message");
    // The event as GET /api/events/{id} shows it.
    let id = messages[0]["event"]["id"].as_str().unwrap();
    assert_eq!(messages[0]["event"], herald.get_event(id).await);
    let first = messages[0]["ack_id"].as_str().unwrap().to_owned();
    let second = messages[1]["ack_id"].as_str().unwrap().to_owned();

    let acked = settle(
        &herald,
        "orders",
        "ack",
        json!({"ack_ids": [first, "bogus"]}),
    )
    .await;
    assert_eq!(acked, json!({"done": 1, "unknown": ["bogus"]}));
    let again = settle(&herald, "orders", "ack", json!({"ack_ids": [first]})).await;
    assert_eq!(
        again,
        json!({"done": 0, "unknown": [first]}),
        "already settled"
    );

    // NAK without a delay: the backoff (200 ms) applies; the second delivery is the last.
    let naked = Instant::now();
    settle(
        &herald,
        "orders",
        "nak",
        json!({"ack_ids": [second], "reason": "db down"}),
    )
    .await;
    let back = fetch(&herald, "orders", 10, 5000).await;
    let took = naked.elapsed();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].1, 2, "second delivery");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    settle(
        &herald,
        "orders",
        "nak",
        json!({"ack_ids": [back[0].2], "reason": "still down"}),
    )
    .await;
    let state = info(&herald, "orders").await["state"].clone();
    assert_eq!(state["num_dead_letters"], 1);
    assert_eq!(state["num_ack_pending"], 0);

    let response = herald
        .http
        .get(herald.url("/api/consumers/orders/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let dead: Value = response.json().await.unwrap();
    assert_eq!(dead["count"], 1);
    let letter = &dead["dead_letters"][0];
    assert_keys(
        letter,
        &[
            "event",
            "deliveries",
            "reason",
            "last_error",
            "first_delivered_at",
            "dead_at",
        ],
        "dead letter",
    );
    assert_eq!(letter["reason"], "max_deliver");
    assert_eq!(letter["deliveries"], 2);
    assert_eq!(letter["last_error"], "still down");
    assert_rfc3339(&letter["dead_at"], "dead_at");
    let seq = letter["event"]["seq"].as_u64().unwrap();

    // Redrive: back for delivery, counted from 1 again.
    let (status, redriven) = post(
        &herald,
        "/api/consumers/orders/dead-letters/redrive",
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(redriven, json!({"redriven": 1}));
    let again = fetch(&herald, "orders", 10, 1000).await;
    assert_eq!((again[0].0, again[0].1), (seq, 1));
    settle(
        &herald,
        "orders",
        "term",
        json!({"ack_ids": [again[0].2], "reason": "bad data"}),
    )
    .await;
    let dead: Value = herald
        .http
        .get(herald.url("/api/consumers/orders/dead-letters?limit=10&after_seq=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dead["dead_letters"][0]["reason"], "term");
    let discard = herald
        .http
        .delete(herald.url(&format!("/api/consumers/orders/dead-letters/{seq}")))
        .send()
        .await
        .unwrap();
    assert_eq!(discard.status(), 204);
    let discard = herald
        .http
        .delete(herald.url(&format!("/api/consumers/orders/dead-letters/{seq}")))
        .send()
        .await
        .unwrap();
    assert_eq!(discard.status(), 404);

    let metrics = herald.metrics().await;
    for line in [
        "herald_consumer_acked_total{consumer=\"orders\"} 1",
        "herald_consumer_delivered_total{consumer=\"orders\"} 4",
        "herald_consumer_redelivered_total{consumer=\"orders\"} 1",
        "herald_consumer_delivery_latency_seconds_count{consumer=\"orders\"}",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }

    let list: Value = herald
        .http
        .get(herald.url("/api/consumers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["count"], 1);
    assert_eq!(list["consumers"][0]["name"], "orders");
    let deleted = herald
        .http
        .delete(herald.url("/api/consumers/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = herald
        .http
        .get(herald.url("/api/consumers/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let body: Value = gone.json().await.unwrap();
    assert_eq!(body["error"]["code"], "consumer_not_found");
}

#[tokio::test]
async fn a_long_poll_answers_when_an_event_arrives_and_a_full_pending_set_says_so() {
    let herald = TestHerald::start().await;
    let (status, _) = put(
        &herald,
        "w",
        json!({"filter_subjects": ["hub.>"], "max_ack_pending": 2}),
    )
    .await;
    assert_eq!(status, 201);
    let poll = {
        let (http, url) = (herald.http.clone(), herald.url("/api/consumers/w/fetch"));
        tokio::spawn(async move {
            let started = Instant::now();
            let body: Value = http
                .post(url)
                .json(&json!({"batch": 5, "wait_ms": 10000}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    herald.publish("hub.local-hub.a", json!({})).await;
    let (body, took) = poll.await.unwrap();
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    assert!(took < Duration::from_secs(3), "{took:?}");

    for _ in 0..3 {
        herald.publish("hub.local-hub.a", json!({})).await;
    }
    assert_eq!(
        fetch(&herald, "w", 10, 0).await.len(),
        1,
        "room for one more"
    );
    let state = info(&herald, "w").await["state"].clone();
    assert_eq!(state["stalled"], "max_ack_pending", "{state}");
    assert_eq!(state["num_pending"], 2);
    assert!(fetch(&herald, "w", 10, 200).await.is_empty());
}

#[tokio::test]
async fn backoff_is_honoured_after_naks_and_after_ack_timeouts() {
    let herald = TestHerald::start().await;
    put(
        &herald,
        "b",
        json!({"filter_subjects": ["hub.>"], "ack_wait_ms": 300, "backoff_ms": [400, 800],
               "max_deliver": -1}),
    )
    .await;
    herald.publish("hub.local-hub.a", json!({})).await;
    // The ack wait runs from when the fetch is applied: at or after this instant.
    let delivered = Instant::now();
    let first = fetch(&herald, "b", 1, 0).await;
    // Timeout: ack wait (300) + first backoff (400).
    let second = fetch(&herald, "b", 1, 5000).await;
    let took = delivered.elapsed();
    assert_eq!(second[0].1, 2);
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_millis(700 + 400), "{took:?}");
    // NAK: second backoff step (800).
    let naked = Instant::now();
    settle(&herald, "b", "nak", json!({"ack_ids": [second[0].2]})).await;
    let third = fetch(&herald, "b", 1, 5000).await;
    let took = naked.elapsed();
    assert_eq!(third[0].1, 3);
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_millis(800 + 400), "{took:?}");
    // An explicit delay wins over the schedule; progress holds a message longer.
    settle(
        &herald,
        "b",
        "nak",
        json!({"ack_ids": [third[0].2], "delay_ms": 0}),
    )
    .await;
    let fourth = fetch(&herald, "b", 1, 1000).await;
    assert_eq!(fourth[0].1, 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle(&herald, "b", "progress", json!({"ack_ids": [fourth[0].2]})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let acked = settle(&herald, "b", "ack", json!({"ack_ids": [fourth[0].2]})).await;
    assert_eq!(acked["done"], 1, "still held after progress: {acked}");
    // The first delivery's id is stale but its ack would still count; it is settled now.
    let stale = settle(&herald, "b", "ack", json!({"ack_ids": [first[0].2]})).await;
    assert_eq!(stale["done"], 0);
}

/// Consumes `total` events with `clients` clients, acking some of each batch and leaving
/// the rest to time out, while `herald` is killed (-9) and restarted `kills` times.
/// Every message whose ack was answered 200 must never be delivered again.
async fn acks_survive_kill9(herald: &mut TestHerald, total: u64, kills: usize) {
    put(
        herald,
        "k",
        json!({"filter_subjects": ["hub.>"], "ack_wait_ms": 400, "backoff_ms": [50],
               "max_deliver": -1, "max_ack_pending": 10000}),
    )
    .await;
    publish_many(herald, "hub.local-hub.k", total as usize).await;

    let mut acked: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut killed = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (acked.len() as u64) < total {
        assert!(
            Instant::now() < deadline,
            "acked {} of {total}",
            acked.len()
        );
        // Kill at even steps of progress: a quarter, half, three quarters acked.
        let step = total as usize * (killed + 1) / (kills + 1);
        if killed < kills && acked.len() >= step {
            // Kill while a fetch is in flight and acks are answered around it.
            let http = herald.http.clone();
            let url = herald.url("/api/consumers/k/fetch");
            let in_flight = tokio::spawn(async move {
                http.post(url)
                    .json(&json!({"batch": 50, "wait_ms": 0}))
                    .send()
                    .await
            });
            tokio::time::sleep(Duration::from_millis(3)).await;
            herald.kill9().await;
            killed += 1;
            let _ = in_flight.await;
            herald.restart().await;
            continue;
        }
        let batch = fetch(herald, "k", 50, 500).await;
        for (seq, _, _) in &batch {
            if acked.contains_key(seq) {
                violations.push(*seq);
            }
        }
        // Ack two thirds; the rest time out and come back.
        let to_ack: Vec<&(u64, u64, String)> =
            batch.iter().filter(|m| m.0 % 3 != 0 || m.1 > 1).collect();
        let ids: Vec<&str> = to_ack.iter().map(|m| m.2.as_str()).collect();
        if ids.is_empty() {
            continue;
        }
        let answer = settle(herald, "k", "ack", json!({ "ack_ids": ids })).await;
        let unknown: BTreeSet<String> = answer["unknown"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        for m in to_ack {
            if !unknown.contains(&m.2) {
                acked.insert(m.0, Instant::now());
            }
        }
    }
    assert_eq!(killed, kills, "the hub was killed mid-consumption");
    assert!(
        violations.is_empty(),
        "acked messages redelivered: {violations:?}"
    );
    let expected: BTreeSet<u64> = acked.keys().copied().collect();
    assert_eq!(expected.len() as u64, total);
    // Nothing more comes, even after every ack wait has ended.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(fetch(herald, "k", 100, 300).await.is_empty());
    let state = info(herald, "k").await["state"].clone();
    assert_eq!(state["num_ack_pending"], 0, "{state}");
    assert_eq!(state["num_pending"], 0, "{state}");
}

#[tokio::test]
async fn an_answered_ack_is_never_redelivered_across_kill9_embedded() {
    let mut herald = TestHerald::start().await;
    acks_survive_kill9(&mut herald, 600, 3).await;
}

#[tokio::test]
async fn an_answered_ack_is_never_redelivered_across_kill9_postgres() {
    let url = TestPostgres::shared().create_database().await.unwrap();
    let mut herald = TestHerald::start_on(Some(&url), &[]).await;
    acks_survive_kill9(&mut herald, 600, 3).await;
}

#[tokio::test]
async fn clients_on_two_instances_share_one_consumer_and_lose_nothing_when_one_dies() {
    let url = TestPostgres::shared().create_database().await.unwrap();
    let a = TestHerald::start_on(Some(&url), &["--hub-id", "a"]).await;
    let mut b = TestHerald::start_on(Some(&url), &["--hub-id", "b"]).await;
    let (status, _) = put(
        &a,
        "shared",
        json!({"filter_subjects": ["hub.>"], "ack_wait_ms": 30000, "max_ack_pending": 10000}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = put(
        &b,
        "shared",
        json!({"filter_subjects": ["hub.>"], "ack_wait_ms": 30000, "max_ack_pending": 10000}),
    )
    .await;
    assert_eq!(status, 200, "the same consumer on the other instance");
    publish_many(&a, "hub.a.x", 400).await;

    // Two clients per instance, fetching and acking until nothing is left: with a 30 s
    // ack wait, a message handed out twice would be a double hand-out.
    let clients = [(&a, 0), (&a, 1), (&b, 2), (&b, 3)].map(|(h, n)| {
        let (http, base) = (h.http.clone(), h.base_url().to_owned());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let body: Value = http
                    .post(format!("{base}/api/consumers/shared/fetch"))
                    .json(&json!({"batch": 7 + n, "wait_ms": 300}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let messages = body["messages"].as_array().unwrap().clone();
                if messages.is_empty() {
                    return seen;
                }
                let ids: Vec<Value> = messages.iter().map(|m| m["ack_id"].clone()).collect();
                let answer: Value = http
                    .post(format!("{base}/api/consumers/shared/ack"))
                    .json(&json!({ "ack_ids": ids }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(answer["done"].as_u64().unwrap() as usize, messages.len());
                seen.extend(messages.iter().map(|m| m["event"]["seq"].as_u64().unwrap()));
            }
        })
    });
    let mut all = Vec::new();
    let mut per_instance = [0usize; 2];
    for (i, client) in clients.into_iter().enumerate() {
        let seen = client.await.unwrap();
        per_instance[i / 2] += seen.len();
        all.extend(seen);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=400).collect();
    assert_eq!(all, expected, "each message handed out exactly once");
    assert!(
        per_instance.iter().all(|n| *n > 0),
        "both instances served: {per_instance:?}"
    );

    // An instance dies holding messages: they come back through the other one after
    // the ack wait.
    put(
        &a,
        "shared",
        json!({"filter_subjects": ["hub.>"], "ack_wait_ms": 1000, "max_ack_pending": 10000}),
    )
    .await;
    publish_many(&a, "hub.a.y", 20).await;
    let held = fetch(&b, "shared", 20, 1000).await;
    assert_eq!(held.len(), 20);
    assert!(
        fetch(&a, "shared", 20, 200).await.is_empty(),
        "held by b's client"
    );
    b.kill9().await;
    let mut back = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while back.len() < 20 && Instant::now() < deadline {
        back.extend(fetch(&a, "shared", 20, 2000).await);
    }
    let seqs: BTreeSet<u64> = back.iter().map(|m| m.0).collect();
    let held: BTreeSet<u64> = held.iter().map(|m| m.0).collect();
    assert_eq!(seqs, held);
    assert!(back.iter().all(|m| m.1 == 2), "redeliveries");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let herald = TestHerald::start_with(&["--max-consumers", "2"]).await;
    let cases = [
        (
            "bad.name",
            json!({"filter_subjects": ["hub.>"]}),
            422,
            "name",
        ),
        ("c", json!({}), 422, "filter_subjects"),
        ("c", json!({"filter_subjects": []}), 422, "filter_subjects"),
        (
            "c",
            json!({"filter_subjects": ["hub..x"]}),
            422,
            "filter_subjects",
        ),
        (
            "c",
            json!({"filter_subjects": "hub.>"}),
            422,
            "filter_subjects",
        ),
        (
            "c",
            json!({"filter_subjects": ["hub.>"], "ack_wait_ms": 0}),
            422,
            "ack_wait_ms",
        ),
        (
            "c",
            json!({"filter_subjects": ["hub.>"], "max_deliver": 0}),
            422,
            "max_deliver",
        ),
        (
            "c",
            json!({"filter_subjects": ["hub.>"], "backoff_ms": [-1]}),
            422,
            "backoff_ms",
        ),
        (
            "c",
            json!({"filter_subjects": ["hub.>"], "max_ack_pending": 0}),
            422,
            "max_ack_pending",
        ),
        (
            "c",
            json!({"filter_subjects": ["hub.>"], "deliver_policy": "some"}),
            422,
            "deliver_policy",
        ),
        (
            "c",
            json!({"filter_subjects": ["hub.>"], "deliver_policy": "by_start_seq"}),
            422,
            "opt_start_seq",
        ),
        (
            "c",
            json!({"filter_subjects": ["hub.>"], "deliver_policy": "by_start_time", "opt_start_time": "yesterday"}),
            422,
            "opt_start_time",
        ),
        (
            "c",
            json!({"filter_subjects": ["hub.>"], "surprise": 1}),
            422,
            "surprise",
        ),
    ];
    for (name, body, status, field) in cases {
        let (got, answer) = put(&herald, name, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_consumer", "{body}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    let list: Value = herald
        .http
        .get(herald.url("/api/consumers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["count"], 0, "nothing half-created");

    assert_eq!(
        put(&herald, "one", json!({"filter_subjects": ["hub.>"]}))
            .await
            .0,
        201
    );
    assert_eq!(
        put(&herald, "two", json!({"filter_subjects": ["hub.>"]}))
            .await
            .0,
        201
    );
    let (status, answer) = put(&herald, "three", json!({"filter_subjects": ["hub.>"]})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("too_many_consumers"))
    );
    let (status, answer) = put(&herald, "one", json!({"filter_subjects": ["hub.x.>"]})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("consumer_conflict"))
    );

    for (body, field) in [
        (json!({"batch": 0}), "batch"),
        (json!({"batch": 1001}), "batch"),
        (json!({"wait_ms": 60001}), "wait_ms"),
        (json!({"wait_ms": "soon"}), "wait_ms"),
        (json!({"other": 1}), "other"),
    ] {
        let (status, answer) = post(&herald, "/api/consumers/one/fetch", body.clone()).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(answer["error"]["code"], "invalid_body");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    let (status, answer) = post(&herald, "/api/consumers/one/ack", json!({})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("invalid_body"))
    );
    let (status, answer) = post(&herald, "/api/consumers/one/ack", json!({"ack_ids": [1]})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("invalid_body"))
    );
    let (status, answer) = post(&herald, "/api/consumers/none/ack", json!({"ack_ids": []})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("consumer_not_found"))
    );
    let response = herald
        .http
        .post(herald.url("/api/consumers/one/fetch"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = herald
        .http
        .get(herald.url("/api/consumers/one/dead-letters?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = herald
        .http
        .delete(herald.url("/api/consumers/one/dead-letters/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// The next text frame of a consumer stream, as JSON; `None` when none came within `wait`.
async fn next_json(ws: &mut Ws, wait: Duration) -> Option<Value> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(text)))) => {
                return Some(serde_json::from_str(text.as_str()).unwrap())
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_websocket_consumer_is_pushed_messages_within_its_credit_and_released_on_close() {
    let herald = TestHerald::start().await;
    put(
        &herald,
        "push",
        json!({"filter_subjects": ["hub.>"], "max_ack_pending": 50}),
    )
    .await;
    publish_many(&herald, "hub.local-hub.p", 10).await;

    let mut ws = herald
        .ws_connect("/api/consumers/push/stream?max_in_flight=3")
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let frame = next_json(&mut ws, Duration::from_secs(5))
            .await
            .expect("a message");
        assert_keys(&frame, &["ack_id", "delivery", "event"], "pushed message");
        held.push(frame);
    }
    assert!(
        next_json(&mut ws, Duration::from_millis(400))
            .await
            .is_none(),
        "credit is 3"
    );
    let seqs: Vec<u64> = held
        .iter()
        .map(|f| f["event"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);

    // An ack is answered once durable, and frees credit for one more.
    ws_send_text(&mut ws, &json!({"ack": [held[0]["ack_id"]]}).to_string()).await;
    let mut answer = None;
    let mut more = Vec::new();
    while answer.is_none() || more.is_empty() {
        let frame = next_json(&mut ws, Duration::from_secs(5))
            .await
            .expect("a frame");
        if frame.get("result").is_some() {
            answer = Some(frame);
        } else {
            more.push(frame);
        }
    }
    assert_eq!(
        answer.unwrap(),
        json!({"result": "ack", "done": 1, "unknown": []})
    );
    assert_eq!(more[0]["event"]["seq"], 4);

    // A bad frame gets an error frame; the stream goes on.
    ws_send_text(&mut ws, "{\"ack\": 5}").await;
    let error = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_body", "{error}");
    ws_send_text(
        &mut ws,
        &json!({"nak": [held[1]["ack_id"]], "delay_ms": 60000}).to_string(),
    )
    .await;
    let mut nak = None;
    while nak.is_none() {
        let frame = next_json(&mut ws, Duration::from_secs(5))
            .await
            .expect("a frame");
        if frame.get("result").is_some() {
            nak = Some(frame);
        }
    }
    assert_eq!(nak.unwrap()["done"], 1);

    // Closing releases what the socket held (seqs 3, 4, 5 and whatever came since): they
    // are delivered again at once, while the NAKed one waits for its delay.
    ws_close(ws).await;
    let mut back = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while back.len() < 8 && Instant::now() < deadline {
        for (seq, _, _) in fetch(&herald, "push", 20, 500).await {
            back.insert(seq);
        }
    }
    assert!(back.contains(&3) && back.contains(&4), "{back:?}");
    assert!(!back.contains(&2), "NAKed for a minute");
    assert!(!back.contains(&1), "acked");
    assert_eq!(back.len(), 8, "{back:?}");
}

#[tokio::test]
async fn a_stream_of_an_unknown_consumer_is_a_404_before_the_upgrade() {
    let herald = TestHerald::start().await;
    let response = herald
        .http
        .get(herald.url("/api/consumers/none/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn members_of_a_live_queue_group_share_the_events() {
    let herald = TestHerald::start().await;
    let mut a = herald
        .ws_connect(&stream_path("hub.local-hub.>", "&queue=workers"))
        .await;
    let mut b = herald
        .ws_connect(&stream_path("hub.local-hub.>", "&queue=workers"))
        .await;
    let mut all = herald.ws_connect(&stream_path("hub.local-hub.>", "")).await;
    let marker = herald.sync_live(&mut all, "hub.local-hub.sync").await;
    // The probe went to one member of the group; read it away.
    let mut probe_seen = 0;
    for ws in [&mut a, &mut b] {
        while let Some(Frame::Event(_)) = next_frame(ws, Duration::from_millis(300)).await {
            probe_seen += 1;
        }
    }
    assert!(probe_seen >= 1);
    for i in 0..20 {
        herald.publish("hub.local-hub.job", json!({"i": i})).await;
    }
    let mut got = [Vec::new(), Vec::new()];
    for (k, ws) in [&mut a, &mut b].into_iter().enumerate() {
        while let Some(Frame::Event(frame)) = next_frame(ws, Duration::from_millis(500)).await {
            got[k].push(frame["data"]["seq"].as_u64().unwrap());
        }
    }
    let mut seen_all = Vec::new();
    while let Some(Frame::Event(frame)) = next_frame(&mut all, Duration::from_millis(500)).await {
        seen_all.push(frame["data"]["seq"].as_u64().unwrap());
    }
    let jobs: Vec<u64> = seen_all.iter().copied().filter(|s| *s > marker).collect();
    assert_eq!(
        jobs.len(),
        20,
        "a plain stream gets everything: {seen_all:?}"
    );
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "both members got some: {got:?}"
    );
    let mut union: Vec<u64> = got.concat();
    union.sort_unstable();
    let mut expected = jobs.clone();
    expected.sort_unstable();
    assert_eq!(union, expected, "each event to exactly one member");

    let response = herald
        .http
        .get(herald.url(&stream_path("hub.>", "&queue=w&from_seq=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_waiting_rpc_fetch_does_not_hold_up_publishers() {
    let herald = TestHerald::start_with(&["--max-inflight-publishes", "1"]).await;
    put(
        &herald,
        "idle",
        json!({"filter_subjects": ["hub.nothing.>"]}),
    )
    .await;
    let poll = {
        let (http, url) = (herald.http.clone(), herald.url("/rpc"));
        tokio::spawn(async move {
            http.post(url)
                .json(
                    &json!({"jsonrpc": "2.0", "id": 1, "method": "consumer.fetch",
                              "params": {"name": "idle", "wait_ms": 3000}}),
                )
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    herald.publish("hub.local-hub.x", json!({})).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "publish waited {took:?} for the fetch's permit"
    );
    let answer = poll.await.unwrap();
    assert_eq!(answer["result"]["messages"], json!([]), "{answer}");
}
