//! The durable consumers' JSON-RPC methods (`consumer.*`) over a real socket: a hub on a
//! temporary embedded store, served by `herald_server::serve`, called with reqwest.
//! Results are compared with what the HTTP API answers for the same consumer.

use std::time::{Duration, Instant};

use herald_hub::{Hub, HubConfig};
use herald_server::{AppState, Limits};
use herald_store::{AnyStore, EmbeddedOptions, EmbeddedStore};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct TestHub {
    base: String,
    client: reqwest::Client,
    hub: Hub,
    token: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestHub {
    async fn start() -> TestHub {
        TestHub::start_with(Limits::default()).await
    }

    async fn start_with(limits: Limits) -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
            .await
            .unwrap();
        let hub = Hub::open(HubConfig::new("local-hub"), AnyStore::Embedded(store))
            .await
            .unwrap();
        let token = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(hub.clone(), limits, token.clone());
        let server = tokio::spawn(herald_server::serve(
            listener,
            state,
            Duration::from_secs(1),
        ));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        TestHub {
            base,
            client,
            hub,
            token,
            server,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.token.cancel();
        self.server.await.unwrap().unwrap();
        self.hub.shutdown().await;
    }

    /// One call with id 1; returns its response.
    async fn call(&self, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let response = self
            .client
            .post(format!("{}/rpc", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response: Value = response.json().await.unwrap();
        assert_eq!(response["id"], 1);
        assert!(
            response.get("result").is_some() != response.get("error").is_some(),
            "result xor error: {response}"
        );
        response
    }

    async fn ok(&self, method: &str, params: Value) -> Value {
        let response = self.call(method, params).await;
        assert!(response.get("error").is_none(), "{method}: {response}");
        response["result"].clone()
    }

    async fn err(&self, method: &str, params: Value, code: i64) -> Value {
        let response = self.call(method, params).await;
        let error = response["error"].clone();
        assert_eq!(error["code"], code, "{method}: {response}");
        error
    }

    /// An invalid-params error that names `param` and carries REST code `data_code`.
    async fn invalid(&self, method: &str, params: Value, param: &str, data_code: &str) -> Value {
        let error = self.err(method, params.clone(), -32602).await;
        assert_eq!(error["data"]["param"], param, "{method} {params}: {error}");
        assert_eq!(
            error["data"]["code"], data_code,
            "{method} {params}: {error}"
        );
        assert!(
            error["data"]["reason"].is_string(),
            "{method} {params}: {error}"
        );
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid params: "),
            "{error}"
        );
        error
    }

    async fn publish(&self, topic: &str) -> u64 {
        let published = self
            .ok(
                "bus.publish",
                json!({"topic": topic, "payload": {"t": topic}}),
            )
            .await;
        published["seq"].as_u64().unwrap()
    }

    async fn http_get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }
}

fn ack_ids(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ack_id"].as_str().unwrap().to_owned())
        .collect()
}

fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"]["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn put_fetch_ack_get_round_trip() {
    let t = TestHub::start().await;
    let s1 = t.publish("hub.local-hub.orders.created").await;
    t.publish("hub.local-hub.users.created").await;
    let s3 = t.publish("hub.local-hub.orders.paid").await;

    let put = t
        .ok(
            "consumer.put",
            json!({"name": "billing", "filter_subjects": ["hub.*.orders.>"], "ack_wait_ms": 60000,
                   "description": "bills orders"}),
        )
        .await;
    assert_eq!(put["created"], true);
    let consumer = &put["consumer"];
    assert_eq!(consumer["name"], "billing");
    assert_eq!(consumer["filter_subjects"], json!(["hub.*.orders.>"]));
    assert_eq!(consumer["deliver_policy"], "all");
    assert_eq!(consumer["ack_wait_ms"], 60000);
    assert_eq!(consumer["max_deliver"], 5);
    assert_eq!(consumer["state"]["num_pending"], 2);
    // The same settings again: it exists; a changeable setting is updated.
    let again = t
        .ok(
            "consumer.put",
            json!({"name": "billing", "filter_subjects": ["hub.*.orders.>"], "ack_wait_ms": 60000,
                   "max_ack_pending": 10, "description": "bills orders"}),
        )
        .await;
    assert_eq!(again["created"], false);
    assert_eq!(again["consumer"]["max_ack_pending"], 10);

    let fetched = t
        .ok("consumer.fetch", json!({"name": "billing", "batch": 10}))
        .await;
    let messages = &fetched["messages"];
    assert_eq!(seqs(messages), [s1, s3]);
    assert_eq!(messages[0]["delivery"], 1);
    assert_eq!(
        messages[0]["event"]["subject"],
        "hub.local-hub.orders.created"
    );
    assert_eq!(
        messages[0]["event"]["payload"],
        json!({"t": "hub.local-hub.orders.created"})
    );
    let ids = ack_ids(messages);
    let acked = t
        .ok(
            "consumer.ack",
            json!({"name": "billing", "ack_ids": [ids[0], "not-an-ack-id"]}),
        )
        .await;
    assert_eq!(acked, json!({"done": 1, "unknown": ["not-an-ack-id"]}));
    // Acking twice is not an error: the id is unknown now.
    let twice = t
        .ok(
            "consumer.ack",
            json!({"name": "billing", "ack_ids": [ids[0]]}),
        )
        .await;
    assert_eq!(twice, json!({"done": 0, "unknown": [ids[0]]}));
    let progress = t
        .ok(
            "consumer.progress",
            json!({"name": "billing", "ack_ids": [ids[1]]}),
        )
        .await;
    assert_eq!(progress, json!({"done": 1, "unknown": []}));

    let got = t.ok("consumer.get", json!({"name": "billing"})).await;
    // Seq 2 does not match: the floor passes over it up to the unacked s3.
    assert_eq!(got["state"]["ack_floor"], s3 - 1);
    assert_eq!(got["state"]["last_delivered_seq"], s3);
    assert_eq!(got["state"]["num_pending"], 0);
    assert_eq!(got["state"]["num_ack_pending"], 1);
    // The same shapes as the HTTP API's.
    assert_eq!(got, t.http_get("/api/consumers/billing").await);
    let list = t.ok("consumer.list", json!({})).await;
    assert_eq!(list, t.http_get("/api/consumers").await);
    assert_eq!(list["count"], 1);
    assert_eq!(list["consumers"][0], got);
    // Params by position, in the listed order.
    assert_eq!(t.ok("consumer.get", json!(["billing"])).await, got);

    // Nothing more to hand out.
    let empty = t.ok("consumer.fetch", json!({"name": "billing"})).await;
    assert_eq!(empty, json!({"messages": []}));

    let deleted = t.ok("consumer.delete", json!({"name": "billing"})).await;
    assert_eq!(deleted, json!({"deleted": true}));
    t.invalid(
        "consumer.get",
        json!({"name": "billing"}),
        "name",
        "consumer_not_found",
    )
    .await;
    assert_eq!(
        t.ok("consumer.list", json!({})).await,
        json!({"consumers": [], "count": 0})
    );
    t.stop().await;
}

#[tokio::test]
async fn nak_term_dead_letters_redrive_discard() {
    let t = TestHub::start().await;
    let put = t
        .ok(
            "consumer.put",
            json!({"name": "w", "filter_subjects": ["hub.x.>"], "max_deliver": 2,
                   "backoff_ms": [0]}),
        )
        .await;
    assert_eq!(put["consumer"]["backoff_ms"], json!([0]));
    let a = t.publish("hub.x.a").await;
    let b = t.publish("hub.x.b").await;

    let first = t
        .ok("consumer.fetch", json!({"name": "w", "batch": 2}))
        .await["messages"]
        .clone();
    assert_eq!(seqs(&first), [a, b]);
    let ids = ack_ids(&first);
    // `a` is given back at once; `b` is given up on.
    let nak = t
        .ok(
            "consumer.nak",
            json!({"name": "w", "ack_ids": [ids[0]], "delay_ms": 0, "reason": "try again"}),
        )
        .await;
    assert_eq!(nak, json!({"done": 1, "unknown": []}));
    let term = t
        .ok(
            "consumer.term",
            json!({"name": "w", "ack_ids": [ids[1]], "reason": "poison"}),
        )
        .await;
    assert_eq!(term, json!({"done": 1, "unknown": []}));

    let second = t
        .ok(
            "consumer.fetch",
            json!({"name": "w", "batch": 2, "wait_ms": 2000}),
        )
        .await["messages"]
        .clone();
    assert_eq!(seqs(&second), [a]);
    assert_eq!(second[0]["delivery"], 2);
    // The last allowed delivery NAKed: a dead letter at once (`reason` as last_error).
    t.ok(
        "consumer.nak",
        json!({"name": "w", "ack_ids": ack_ids(&second), "reason": "still failing"}),
    )
    .await;

    let dead = t.ok("consumer.dead_letters", json!({"name": "w"})).await;
    assert_eq!(dead, t.http_get("/api/consumers/w/dead-letters").await);
    assert_eq!(dead["count"], 2);
    let letters = dead["dead_letters"].as_array().unwrap();
    assert_eq!(letters[0]["event"]["seq"], a);
    assert_eq!(letters[0]["reason"], "max_deliver");
    assert_eq!(letters[0]["deliveries"], 2);
    assert_eq!(letters[0]["last_error"], "still failing");
    assert_eq!(letters[1]["event"]["seq"], b);
    assert_eq!(letters[1]["reason"], "term");
    assert_eq!(letters[1]["last_error"], "poison");
    let page = t
        .ok(
            "consumer.dead_letters",
            json!({"name": "w", "limit": 1, "after_seq": a}),
        )
        .await;
    assert_eq!(page["count"], 1);
    assert_eq!(page["dead_letters"][0]["event"]["seq"], b);
    let info = t.ok("consumer.get", json!({"name": "w"})).await;
    assert_eq!(info["state"]["num_dead_letters"], 2);

    // Redrive one: it is delivered again, counting from 1.
    let redriven = t
        .ok("consumer.redrive", json!({"name": "w", "seqs": [a, 999]}))
        .await;
    assert_eq!(redriven, json!({"redriven": 1}));
    let third = t
        .ok("consumer.fetch", json!({"name": "w", "wait_ms": 2000}))
        .await["messages"]
        .clone();
    assert_eq!(seqs(&third), [a]);
    assert_eq!(third[0]["delivery"], 1);

    // Discard the other; a second time it is not there.
    let discarded = t
        .ok("consumer.discard", json!({"name": "w", "seq": b}))
        .await;
    assert_eq!(discarded, json!({"discarded": true}));
    t.invalid(
        "consumer.discard",
        json!({"name": "w", "seq": b}),
        "seq",
        "dead_letter_not_found",
    )
    .await;
    let dead = t.ok("consumer.dead_letters", json!({"name": "w"})).await;
    assert_eq!(dead, json!({"dead_letters": [], "count": 0}));
    // Nothing left to redrive (no `seqs`: all of them).
    assert_eq!(
        t.ok("consumer.redrive", json!({"name": "w"})).await,
        json!({"redriven": 0})
    );
    t.stop().await;
}

#[tokio::test]
async fn invalid_params_name_the_param() {
    let t = TestHub::start().await;
    t.ok(
        "consumer.put",
        json!({"name": "c", "filter_subjects": ["hub.>"]}),
    )
    .await;
    let put = "consumer.put";
    for (params, param) in [
        (json!({"filter_subjects": ["hub.>"]}), "name"),
        (json!({"name": "c2"}), "filter_subjects"),
        (
            json!({"name": "c2", "filter_subjects": []}),
            "filter_subjects",
        ),
        (
            json!({"name": "c2", "filter_subjects": "hub.>"}),
            "filter_subjects",
        ),
        (
            json!({"name": "c2", "filter_subjects": ["hub..x"]}),
            "filter_subjects",
        ),
        (
            json!({"name": "c2", "filter_subjects": ["hub.>"], "max_deliver": 0}),
            "max_deliver",
        ),
        (
            json!({"name": "c2", "filter_subjects": ["hub.>"], "ack_wait_ms": 1}),
            "ack_wait_ms",
        ),
        (
            json!({"name": "c2", "filter_subjects": ["hub.>"], "backoff_ms": []}),
            "backoff_ms",
        ),
        (
            json!({"name": "c2", "filter_subjects": ["hub.>"], "deliver_policy": "sometimes"}),
            "deliver_policy",
        ),
        (
            json!({"name": "c2", "filter_subjects": ["hub.>"], "deliver_policy": "by_start_seq"}),
            "opt_start_seq",
        ),
        (
            json!({"name": "c2", "filter_subjects": ["hub.>"], "opt_start_seq": 3}),
            "opt_start_seq",
        ),
        // Checked by the hub, named all the same.
        (
            json!({"name": "not.a.name", "filter_subjects": ["hub.>"]}),
            "name",
        ),
    ] {
        t.invalid(put, params, param, "invalid_consumer").await;
    }
    // Nothing was created.
    assert_eq!(t.ok("consumer.list", json!({})).await["count"], 1);
    // A setting that cannot change.
    let conflict = t
        .invalid(
            put,
            json!({"name": "c", "filter_subjects": ["hub.other.>"]}),
            "filter_subjects",
            "consumer_conflict",
        )
        .await;
    assert!(
        conflict["message"]
            .as_str()
            .unwrap()
            .contains("cannot change"),
        "{conflict}"
    );

    for (method, params, param, code) in [
        ("consumer.get", json!({}), "name", "invalid_body"),
        ("consumer.get", json!({"name": 5}), "name", "invalid_body"),
        (
            "consumer.get",
            json!({"name": "c", "nme": "c"}),
            "nme",
            "invalid_body",
        ),
        (
            "consumer.list",
            json!({"name": "c"}),
            "name",
            "invalid_body",
        ),
        (
            "consumer.fetch",
            json!({"name": "c", "batch": 0}),
            "batch",
            "invalid_body",
        ),
        (
            "consumer.fetch",
            json!({"name": "c", "batch": 1001}),
            "batch",
            "invalid_body",
        ),
        (
            "consumer.fetch",
            json!({"name": "c", "batch": "2"}),
            "batch",
            "invalid_body",
        ),
        (
            "consumer.fetch",
            json!({"name": "c", "wait_ms": 60001}),
            "wait_ms",
            "invalid_body",
        ),
        (
            "consumer.ack",
            json!({"name": "c"}),
            "ack_ids",
            "invalid_body",
        ),
        (
            "consumer.ack",
            json!({"name": "c", "ack_ids": "x"}),
            "ack_ids",
            "invalid_body",
        ),
        (
            "consumer.ack",
            json!({"name": "c", "ack_ids": [1]}),
            "ack_ids",
            "invalid_body",
        ),
        (
            "consumer.ack",
            json!({"name": "c", "ack_ids": [], "reason": "x"}),
            "reason",
            "invalid_body",
        ),
        (
            "consumer.nak",
            json!({"name": "c", "ack_ids": [], "delay_ms": -1}),
            "delay_ms",
            "invalid_body",
        ),
        (
            "consumer.nak",
            json!({"name": "c", "ack_ids": [], "reason": "x".repeat(1025)}),
            "reason",
            "invalid_body",
        ),
        (
            "consumer.term",
            json!({"name": "c", "ack_ids": [], "delay_ms": 5}),
            "delay_ms",
            "invalid_body",
        ),
        (
            "consumer.progress",
            json!({"name": "c", "ack_ids": [], "reason": "x"}),
            "reason",
            "invalid_body",
        ),
        (
            "consumer.dead_letters",
            json!({"name": "c", "limit": 0}),
            "limit",
            "invalid_query",
        ),
        (
            "consumer.dead_letters",
            json!({"name": "c", "after_seq": -1}),
            "after_seq",
            "invalid_query",
        ),
        (
            "consumer.redrive",
            json!({"name": "c", "seqs": [0]}),
            "seqs",
            "invalid_body",
        ),
        (
            "consumer.redrive",
            json!({"name": "c", "seqs": "all"}),
            "seqs",
            "invalid_body",
        ),
        (
            "consumer.discard",
            json!({"name": "c"}),
            "seq",
            "invalid_query",
        ),
        (
            "consumer.discard",
            json!({"name": "c", "seq": "1"}),
            "seq",
            "invalid_query",
        ),
        (
            "consumer.delete",
            json!(["c", "extra"]),
            "params",
            "invalid_body",
        ),
    ] {
        t.invalid(method, params, param, code).await;
    }

    // An unknown consumer, for every method that names one.
    for (method, params) in [
        ("consumer.get", json!({"name": "nope"})),
        ("consumer.delete", json!({"name": "nope"})),
        ("consumer.fetch", json!({"name": "nope"})),
        ("consumer.ack", json!({"name": "nope", "ack_ids": ["x"]})),
        ("consumer.nak", json!({"name": "nope", "ack_ids": ["x"]})),
        (
            "consumer.progress",
            json!({"name": "nope", "ack_ids": ["x"]}),
        ),
        ("consumer.term", json!({"name": "nope", "ack_ids": ["x"]})),
        ("consumer.dead_letters", json!({"name": "nope"})),
        ("consumer.redrive", json!({"name": "nope"})),
        ("consumer.discard", json!({"name": "nope", "seq": 1})),
    ] {
        let error = t
            .invalid(method, params, "name", "consumer_not_found")
            .await;
        assert!(
            error["message"].as_str().unwrap().contains("\"nope\""),
            "{error}"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn a_fetch_waits_for_events_and_ends_before_the_request_timeout() {
    let t = TestHub::start_with(Limits {
        request_timeout: Duration::from_secs(3),
        ..Limits::default()
    })
    .await;
    t.ok(
        "consumer.put",
        json!({"name": "poll", "filter_subjects": ["hub.p.>"]}),
    )
    .await;

    // Nothing comes: the wait asked for (60 s) is cut to end before the 3 s timeout,
    // and the answer is an empty result, not an error.
    let started = Instant::now();
    let empty = t
        .ok("consumer.fetch", json!({"name": "poll", "wait_ms": 60000}))
        .await;
    let took = started.elapsed();
    assert_eq!(empty, json!({"messages": []}));
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // An event published meanwhile ends the wait at once.
    let waiting = {
        let client = t.client.clone();
        let url = format!("{}/rpc", t.base);
        tokio::spawn(async move {
            let started = Instant::now();
            let body = json!({"jsonrpc": "2.0", "id": 7, "method": "consumer.fetch",
                              "params": {"name": "poll", "wait_ms": 60000}});
            let answer: Value = client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seq = t.publish("hub.p.1").await;
    let (answer, took) = waiting.await.unwrap();
    assert_eq!(seqs(&answer["result"]["messages"]), [seq], "{answer}");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // In a batch, calls before a fetch use up part of its time.
    let started = Instant::now();
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "consumer.fetch", "params": {"name": "poll", "wait_ms": 1000}},
        {"jsonrpc": "2.0", "id": 2, "method": "consumer.fetch", "params": {"name": "poll", "wait_ms": 60000}},
    ]);
    let response = t
        .client
        .post(format!("{}/rpc", t.base))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answers: Value = response.json().await.unwrap();
    assert_eq!(answers[0]["result"], json!({"messages": []}), "{answers}");
    assert_eq!(answers[1]["result"], json!({"messages": []}), "{answers}");
    assert!(started.elapsed() < Duration::from_secs(3));
    t.stop().await;
}

#[tokio::test]
async fn the_methods_are_listed() {
    let t = TestHub::start().await;
    let listing = t.http_get("/rpc/methods").await;
    let methods = listing["methods"].as_array().unwrap();
    let put = methods
        .iter()
        .find(|m| m["name"] == "consumer.put")
        .expect("consumer.put is listed");
    let params: Vec<&str> = put["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        params,
        [
            "name",
            "filter_subjects",
            "deliver_policy",
            "opt_start_seq",
            "opt_start_time",
            "ack_wait_ms",
            "max_deliver",
            "backoff_ms",
            "max_ack_pending",
            "description"
        ]
    );
    for method in methods
        .iter()
        .filter(|m| m["name"].as_str().unwrap().starts_with("consumer."))
    {
        let name = method["name"].as_str().unwrap();
        let params = method["params"].as_array().unwrap();
        if name != "consumer.list" {
            assert_eq!(params[0]["name"], "name", "{name}");
            assert_eq!(params[0]["required"], true, "{name}");
        }
        assert!(
            !method["result"]["fields"].as_array().unwrap().is_empty(),
            "{name}"
        );
    }
    t.stop().await;
}
