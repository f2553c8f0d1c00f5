//! `POST /rpc` and `GET /rpc/methods` over a real socket: a hub on a temporary embedded
//! store, served by `herald_server::serve`, called with reqwest. Covers seed 002's
//! examples verbatim, every error code, JSON-RPC batch / notification / id semantics,
//! and publish → subscribe / query / get round trips.

use std::time::Duration;

use herald_hub::{Hub, HubConfig};
use herald_server::{AppState, Limits};
use herald_store::{AnyStore, EmbeddedOptions, EmbeddedStore};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const METHODS: &[&str] = &[
    "bus.publish",
    "bus.subscribe",
    "hub.info",
    "hub.health",
    "bus.get",
    "bus.query",
    "bus.publish_batch",
    "store.append",
    "store.load",
    "store.load_snapshot",
    "store.save_snapshot",
    "store.query",
    "consumer.put",
    "consumer.get",
    "consumer.list",
    "consumer.delete",
    "consumer.fetch",
    "consumer.ack",
    "consumer.nak",
    "consumer.progress",
    "consumer.term",
    "consumer.dead_letters",
    "consumer.redrive",
    "consumer.discard",
];

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

    /// Posts `body` as is; returns the status, the content type and the body text.
    async fn post_raw(&self, body: &str) -> (StatusCode, Option<String>, String) {
        let response = self
            .client
            .post(format!("{}/rpc", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, content_type, response.text().await.unwrap())
    }

    /// Posts `body` and expects a JSON-RPC answer: HTTP 200 with JSON.
    async fn post(&self, body: &str) -> Value {
        let (status, content_type, text) = self.post_raw(body).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(content_type.as_deref(), Some("application/json"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// One call with id 1; returns its response.
    async fn call(&self, method: &str, params: Value) -> Value {
        let response = self
            .post(
                &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string(),
            )
            .await;
        assert_eq!(response["jsonrpc"], "2.0");
        assert_eq!(response["id"], 1);
        assert!(
            response.get("result").is_some() != response.get("error").is_some(),
            "result xor error: {response}"
        );
        response
    }

    /// One call that must succeed; returns its result.
    async fn ok(&self, method: &str, params: Value) -> Value {
        let response = self.call(method, params).await;
        assert!(response.get("error").is_none(), "{method}: {response}");
        response["result"].clone()
    }

    /// One call that must fail with `code`; returns its error.
    async fn err(&self, method: &str, params: Value, code: i64) -> Value {
        let response = self.call(method, params).await;
        let error = response["error"].clone();
        assert_eq!(error["code"], code, "{method}: {response}");
        assert!(error["message"].is_string(), "{error}");
        error
    }

    /// The seq of the last stored event.
    async fn head(&self) -> u64 {
        let index: Value = self
            .client
            .get(format!("{}/", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        index["head_seq"].as_u64().unwrap()
    }
}

fn publish_params(topic: &str, n: u64) -> Value {
    json!({"topic": topic, "payload": {"n": n}})
}

// ---- seed 002, verbatim ----------------------------------------------------------

/// The three curl bodies of "External Tool Integration (curl)".
#[tokio::test]
async fn seed_curl_examples() {
    let t = TestHub::start().await;
    let publish = t
        .post(
            r#"{
    "jsonrpc": "2.0",
    "id": 1,
    "method": "bus.publish",
    "params": {
      "topic": "hub.local-hub.deployment.started",
      "payload": {
        "service": "api",
        "version": "1.2.3"
      }
    }
  }"#,
        )
        .await;
    assert_eq!(publish["jsonrpc"], "2.0");
    assert_eq!(publish["id"], 1);
    let result = &publish["result"];
    assert_eq!(result["published"], true);
    assert_eq!(result["subject"], "hub.local-hub.deployment.started");
    Uuid::parse_str(result["correlation_id"].as_str().unwrap()).unwrap();
    Uuid::parse_str(result["event_id"].as_str().unwrap()).unwrap();
    assert_eq!(result["seq"], 1);
    assert_eq!(result["duplicate"], false);

    let query = t
        .post(
            r#"{
    "jsonrpc": "2.0",
    "id": 2,
    "method": "bus.subscribe",
    "params": {
      "subject": "hub.*.deployment.>",
      "limit": 10
    }
  }"#,
        )
        .await;
    assert_eq!(query["id"], 2);
    assert_eq!(query["result"]["count"], 1);
    let event = &query["result"]["events"][0];
    assert_eq!(event["id"], result["event_id"]);
    assert_eq!(event["subject"], "hub.local-hub.deployment.started");
    assert_eq!(event["correlation_id"], result["correlation_id"]);
    assert_eq!(
        event["payload"],
        json!({"service": "api", "version": "1.2.3"})
    );
    assert_eq!(
        event["origin"],
        json!({"hub_id": "local-hub", "service": "herald-rpc", "user": null})
    );
    assert_eq!(event["seq"], 1);
    assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));

    let health = t
        .post(
            r#"{
    "jsonrpc": "2.0",
    "id": 3,
    "method": "hub.health"
  }"#,
        )
        .await;
    assert_eq!(
        health,
        json!({"jsonrpc": "2.0", "id": 3, "result": {
            "status": "healthy", "services": {"nats": "disabled", "database": "healthy"}}})
    );
    t.stop().await;
}

/// The request examples of "Available Methods", as documented.
#[tokio::test]
async fn seed_method_examples() {
    let t = TestHub::start().await;

    // bus.publish verbatim, with the placeholder "optional-uuid" as correlation_id: text
    // that is not a UUID maps to a UUIDv5 of it, the same every time.
    let seed_publish = r#"{
  "jsonrpc": "2.0",
  "id": 1,
  "method": "bus.publish",
  "params": {
    "topic": "hub.local-hub.project.started",
    "payload": {
      "project_id": "abc123",
      "status": "running"
    },
    "correlation_id": "optional-uuid"
  }
}"#;
    let response = t.post(seed_publish).await;
    assert_eq!(response["id"], 1);
    let result = &response["result"];
    assert_eq!(result["published"], true);
    assert_eq!(result["subject"], "hub.local-hub.project.started");
    let derived = herald_core::correlation_id_from_text("optional-uuid").to_string();
    assert_eq!(result["correlation_id"], derived);
    let again = t.post(seed_publish).await;
    assert_eq!(again["result"]["correlation_id"], derived);
    assert_eq!(t.head().await, 2);

    // The same with a real UUID: the response of the seed, correlation id as provided.
    let correlation_id = Uuid::new_v4().to_string();
    let response = t
        .post(&seed_publish.replace("optional-uuid", &correlation_id))
        .await;
    let result = &response["result"];
    assert_eq!(result["published"], true);
    assert_eq!(result["subject"], "hub.local-hub.project.started");
    assert_eq!(result["correlation_id"], correlation_id);

    let response = t
        .post(
            r#"{
  "jsonrpc": "2.0",
  "id": 2,
  "method": "bus.subscribe",
  "params": {
    "subject": "hub.*.project.>",
    "limit": 50
  }
}"#,
        )
        .await;
    assert_eq!(response["id"], 2);
    assert_eq!(response["result"]["count"], 3);
    let event = &response["result"]["events"][0];
    for field in [
        "id",
        "subject",
        "origin",
        "correlation_id",
        "payload",
        "timestamp",
    ] {
        assert!(event.get(field).is_some(), "{field} missing from {event}");
    }
    assert_eq!(event["origin"]["hub_id"], "local-hub");
    assert_eq!(event["payload"]["project_id"], "abc123");

    let response = t
        .post(
            r#"{
  "jsonrpc": "2.0",
  "id": 3,
  "method": "hub.info",
  "params": {}
}"#,
        )
        .await;
    assert_eq!(
        response,
        json!({"jsonrpc": "2.0", "id": 3, "result": {
            "hub_id": "local-hub", "version": env!("CARGO_PKG_VERSION"), "status": "running"}})
    );

    let response = t
        .post(
            r#"{
  "jsonrpc": "2.0",
  "id": 4,
  "method": "hub.health",
  "params": {}
}"#,
        )
        .await;
    assert_eq!(response["id"], 4);
    assert_eq!(response["result"]["status"], "healthy");
    assert_eq!(response["result"]["services"]["database"], "healthy");
    assert_eq!(response["result"]["services"]["nats"], "disabled");

    // The error example: code, message and data as documented, with every method.
    let response = t
        .post(r#"{"jsonrpc": "2.0", "id": 5, "method": "invalid.method", "params": {}}"#)
        .await;
    assert_eq!(response["jsonrpc"], "2.0");
    assert_eq!(response["id"], 5);
    assert!(response.get("result").is_none());
    assert_eq!(response["error"]["code"], -32601);
    assert_eq!(
        response["error"]["message"],
        "Method not found: invalid.method"
    );
    assert_eq!(
        response["error"]["data"]["available_methods"],
        json!(METHODS)
    );
    t.stop().await;
}

/// The Python client's call.
#[tokio::test]
async fn seed_python_client() {
    let t = TestHub::start().await;
    let response: Value = t
        .client
        .post(format!("{}/rpc", t.base))
        .json(&json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "bus.publish",
            "params": {
                "topic": "hub.local-hub.task.completed",
                "payload": {"task_id": "task-123", "duration_ms": 1500}
            }
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(response.get("error").is_none(), "{response}");
    assert_eq!(
        response["result"]["subject"],
        "hub.local-hub.task.completed"
    );
    t.stop().await;
}

// ---- JSON-RPC framing ------------------------------------------------------------

#[tokio::test]
async fn parse_errors_have_a_null_id() {
    let t = TestHub::start().await;
    for body in [
        r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#,
        "",
        "   ",
        r#"{"jsonrpc": "2.0", "id": 1, "method": "hub.info""#,
        r#"{"jsonrpc": "2.0", "id": 1, "method": "hub.info"} trailing"#,
        r#"[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"}, {"jsonrpc": "2.0", "method""#,
    ] {
        let response = t.post(body).await;
        assert_eq!(response["id"], Value::Null, "{body}");
        assert!(response.as_object().unwrap().contains_key("id"));
        assert_eq!(response["error"]["code"], -32700, "{body}");
        assert_eq!(response["error"]["data"]["code"], "invalid_json");
        assert!(response["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Parse error: "));
    }
    t.stop().await;
}

#[tokio::test]
async fn invalid_requests() {
    let t = TestHub::start().await;
    // (body, id expected in the answer)
    let cases: &[(&str, Value)] = &[
        (
            r#"{"jsonrpc": "1.0", "id": 7, "method": "hub.info"}"#,
            json!(7),
        ),
        (r#"{"id": 7, "method": "hub.info"}"#, json!(7)),
        (
            r#"{"jsonrpc": 2.0, "id": 7, "method": "hub.info"}"#,
            json!(7),
        ),
        (r#"{"jsonrpc": "2.0", "id": 7, "method": 1}"#, json!(7)),
        (r#"{"jsonrpc": "2.0", "id": 7}"#, json!(7)),
        (
            r#"{"jsonrpc": "2.0", "id": 7, "method": "hub.info", "params": "bar"}"#,
            json!(7),
        ),
        (
            r#"{"jsonrpc": "2.0", "id": 7, "method": "hub.info", "params": 3}"#,
            json!(7),
        ),
        // Invalid requests are answered even without an id (spec example).
        (
            r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
            Value::Null,
        ),
        (
            r#"{"jsonrpc": "2.0", "id": {"a": 1}, "method": "hub.info"}"#,
            Value::Null,
        ),
        (
            r#"{"jsonrpc": "2.0", "id": true, "method": "hub.info"}"#,
            Value::Null,
        ),
        (
            r#"{"jsonrpc": "2.0", "id": [1], "method": "hub.info"}"#,
            Value::Null,
        ),
        (
            r#"{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "hub.info"}"#,
            Value::Null,
        ),
        ("1", Value::Null),
        (r#""hub.info""#, Value::Null),
        ("null", Value::Null),
        ("[]", Value::Null),
    ];
    for (body, id) in cases {
        let response = t.post(body).await;
        assert!(response.is_object(), "{body}: {response}");
        assert_eq!(&response["id"], id, "{body}: {response}");
        assert_eq!(response["error"]["code"], -32600, "{body}: {response}");
        assert!(response["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid Request: "));
    }
    t.stop().await;
}

#[tokio::test]
async fn ids_are_echoed_exactly() {
    let t = TestHub::start().await;
    for id in [
        r#""abc""#,
        r#""""#,
        r#""caf\u00e9 \"quoted\"""#,
        "0",
        "-1",
        "1.50",
        "1e3",
        "123456789012345678901234567890",
        "null",
    ] {
        let body = format!(r#"{{"jsonrpc": "2.0", "id": {id}, "method": "hub.info"}}"#);
        let (status, _, text) = t.post_raw(&body).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains(&format!(r#""id":{id}"#)),
            "id {id} not echoed exactly: {text}"
        );
        let response: Value = serde_json::from_str(&text).unwrap();
        assert!(response.get("result").is_some(), "{text}");
    }
    // A null id is a call, not a notification: errors are answered too.
    let response = t
        .post(r#"{"jsonrpc": "2.0", "id": null, "method": "nope"}"#)
        .await;
    assert_eq!(response["id"], Value::Null);
    assert_eq!(response["error"]["code"], -32601);
    t.stop().await;
}

#[tokio::test]
async fn notifications_run_and_are_not_answered() {
    let t = TestHub::start().await;
    // A notification publishes, and gets 204 with no body.
    let (status, _, text) = t
        .post_raw(
            r#"{"jsonrpc": "2.0", "method": "bus.publish", "params": {"topic": "hub.local-hub.note.sent", "payload": {}}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(text, "");
    assert_eq!(t.head().await, 1);
    // Failing notifications are not answered either (and store nothing).
    for body in [
        r#"{"jsonrpc": "2.0", "method": "no.such.method"}"#,
        r#"{"jsonrpc": "2.0", "method": "bus.publish", "params": {"topic": "hub.>"}}"#,
    ] {
        let (status, _, text) = t.post_raw(body).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::NO_CONTENT, ""),
            "{body}"
        );
    }
    assert_eq!(t.head().await, 1);
    t.stop().await;
}

#[tokio::test]
async fn batches() {
    let t = TestHub::start().await;
    let body = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "bus.publish", "params": publish_params("hub.local-hub.b.x", 1)},
        {"jsonrpc": "2.0", "method": "bus.publish", "params": publish_params("hub.local-hub.b.x", 2)},
        {"jsonrpc": "2.0", "id": 2, "method": "no.such"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "id": null, "method": "bus.publish", "params": {"topic": "hub.*"}},
        {"jsonrpc": "2.0", "id": 3, "method": "bus.query", "params": {"subject": "hub.local-hub.b.x"}},
        {"jsonrpc": "2.0", "method": "hub.info"},
    ]);
    let responses = t.post(&body.to_string()).await;
    let responses = responses.as_array().unwrap();
    assert_eq!(responses.len(), 5, "{responses:?}");
    assert_eq!(responses[0]["id"], "a");
    assert_eq!(responses[0]["result"]["seq"], 1);
    assert_eq!(responses[1]["id"], 2);
    assert_eq!(responses[1]["error"]["code"], -32601);
    assert_eq!(responses[2]["id"], Value::Null);
    assert_eq!(responses[2]["error"]["code"], -32600);
    assert_eq!(responses[3]["id"], Value::Null);
    assert_eq!(responses[3]["error"]["code"], -32602);
    // Calls run in order: the query sees both publishes, the notification's included.
    assert_eq!(responses[4]["id"], 3);
    assert_eq!(responses[4]["result"]["count"], 2);

    // Spec example: a batch of non-requests is one error each, id null.
    let responses = t.post("[1,2,3]").await;
    let responses = responses.as_array().unwrap();
    assert_eq!(responses.len(), 3);
    for response in responses {
        assert_eq!(response["id"], Value::Null);
        assert_eq!(response["error"]["code"], -32600);
    }

    // An empty batch is a single error, not an array.
    let response = t.post("[]").await;
    assert_eq!(response["error"]["code"], -32600);

    // A batch of notifications only: 204, no body; every one ran.
    let head = t.head().await;
    let body = json!([
        {"jsonrpc": "2.0", "method": "bus.publish", "params": publish_params("hub.local-hub.b.y", 1)},
        {"jsonrpc": "2.0", "method": "bus.publish", "params": publish_params("hub.local-hub.b.y", 2)},
    ]);
    let (status, _, text) = t.post_raw(&body.to_string()).await;
    assert_eq!((status, text.as_str()), (StatusCode::NO_CONTENT, ""));
    assert_eq!(t.head().await, head + 2);

    // More than 1000 requests is one error.
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "hub.info"}))
        .collect();
    let response = t.post(&Value::Array(many).to_string()).await;
    assert_eq!(response["error"]["code"], -32600);
    assert_eq!(response["error"]["data"]["max_batch_requests"], 1000);
    t.stop().await;
}

#[tokio::test]
async fn params_by_position_and_null_as_absent() {
    let t = TestHub::start().await;
    let result = t
        .ok(
            "bus.publish",
            json!(["hub.local-hub.pos.x", {"k": "v"}, null, null]),
        )
        .await;
    assert_eq!(result["subject"], "hub.local-hub.pos.x");
    let result = t
        .ok("bus.subscribe", json!(["hub.local-hub.pos.*", 1]))
        .await;
    assert_eq!(result["count"], 1);
    let result = t
        .ok(
            "bus.publish",
            json!({"topic": "hub.local-hub.pos.y", "payload": {}, "correlation_id": null}),
        )
        .await;
    assert_eq!(result["published"], true);
    let error = t.err("hub.info", json!([1]), -32602).await;
    assert_eq!(error["data"]["param"], "params");
    let error = t.err("bus.get", json!(["a", "b"]), -32602).await;
    assert_eq!(error["data"]["param"], "params");
    t.stop().await;
}

#[tokio::test]
async fn oversized_body_is_an_invalid_request() {
    let t = TestHub::start_with(Limits {
        max_batch_body_bytes: 1024,
        ..Limits::default()
    })
    .await;
    let payload = "x".repeat(2048);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "bus.publish",
        "params": {"topic": "hub.local-hub.big.x", "payload": {"x": payload}}});
    let response = t.post(&body.to_string()).await;
    assert_eq!(response["id"], Value::Null);
    assert_eq!(response["error"]["code"], -32600);
    assert_eq!(response["error"]["data"]["code"], "payload_too_large");
    assert_eq!(t.head().await, 0);
    t.stop().await;
}

// ---- methods ---------------------------------------------------------------------

#[tokio::test]
async fn publish_get_query_subscribe_round_trip() {
    let t = TestHub::start().await;
    let id = Uuid::new_v4();
    let correlation_id = Uuid::new_v4();
    // Key order and number spelling of the payload are kept as sent.
    let body = format!(
        r#"{{"jsonrpc": "2.0", "id": 1, "method": "bus.publish", "params": {{"topic": "hub.local-hub.project.created", "payload": {{"z": 1.0, "a": [true, null], "m": {{"y": 2, "b": 3}}}}, "correlation_id": "{correlation_id}", "id": "{id}"}}}}"#
    );
    let published = t.post(&body).await["result"].clone();
    assert_eq!(published["event_id"], id.to_string());
    assert_eq!(published["correlation_id"], correlation_id.to_string());
    assert_eq!(published["duplicate"], false);
    let seq = published["seq"].as_u64().unwrap();

    // bus.get: the event in the shape of GET /api/events/{id}, payload byte for byte.
    let (_, _, text) = t
        .post_raw(&format!(
            r#"{{"jsonrpc": "2.0", "id": 2, "method": "bus.get", "params": {{"event_id": "{id}"}}}}"#
        ))
        .await;
    assert!(
        text.contains(r#""payload":{"z": 1.0, "a": [true, null], "m": {"y": 2, "b": 3}}"#),
        "{text}"
    );
    let event = serde_json::from_str::<Value>(&text).unwrap()["result"].clone();
    let rest: Value = t
        .client
        .get(format!("{}/api/events/{id}", t.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event, rest);
    assert_eq!(event["seq"], seq);
    assert_eq!(event["timestamp"], published["timestamp"]);

    // Publishing the same id again stores nothing and answers with the original.
    let again = t
        .ok(
            "bus.publish",
            json!({"topic": "hub.local-hub.other.thing", "payload": {}, "id": id.to_string()}),
        )
        .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], id.to_string());
    assert_eq!(again["seq"], seq);
    assert_eq!(again["correlation_id"], correlation_id.to_string());
    assert_eq!(again["subject"], "hub.local-hub.project.created");
    assert_eq!(t.head().await, seq);

    // bus.query by correlation id, and bus.subscribe by pattern, see the same event.
    let page = t
        .ok(
            "bus.query",
            json!({"correlation_id": correlation_id.to_string()}),
        )
        .await;
    assert_eq!(page["count"], 1);
    assert_eq!(page["events"][0], rest);
    let recent = t
        .ok("bus.subscribe", json!({"subject": "hub.%.project.%"}))
        .await;
    assert_eq!(recent["events"], json!([rest]));

    // The REST query gives the same events as bus.query.
    for n in 0..5 {
        t.ok(
            "bus.publish",
            publish_params("hub.local-hub.project.updated", n),
        )
        .await;
    }
    let rest: Value = t
        .client
        .get(format!(
            "{}/api/events?subject=hub.*.project.>&limit=3&after_seq=1",
            t.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page = t
        .ok(
            "bus.query",
            json!({"subject": "hub.*.project.>", "limit": 3, "after_seq": 1}),
        )
        .await;
    assert_eq!(page["events"], rest);
    assert_eq!(page["next_after_seq"], 4);
    t.stop().await;
}

#[tokio::test]
async fn correlation_id_from_the_header() {
    let t = TestHub::start().await;
    let correlation_id = Uuid::new_v4().to_string();
    let send = |header: &str| {
        t.client
            .post(format!("{}/rpc", t.base))
            .header("x-correlation-id", header)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "bus.publish",
                "params": publish_params("hub.local-hub.h.x", 1)}))
            .send()
    };
    let response: Value = send(&correlation_id).await.unwrap().json().await.unwrap();
    assert_eq!(response["result"]["correlation_id"], correlation_id);
    let response: Value = send("not-a-uuid").await.unwrap().json().await.unwrap();
    assert_eq!(response["error"]["code"], -32602);
    assert_eq!(response["error"]["data"]["param"], "X-Correlation-ID");
    assert_eq!(t.head().await, 1);
    t.stop().await;
}

#[tokio::test]
async fn subscribe_returns_the_newest_matching_events_oldest_first() {
    let t = TestHub::start().await;
    // 2000 events, one in 50 on a rare subject; plus one old rare event at the start.
    t.ok("bus.publish", publish_params("hub.local-hub.rare.x", 9999))
        .await;
    for chunk in 0..2 {
        let events: Vec<Value> = (0..1000u64)
            .map(|i| {
                let n = chunk * 1000 + i;
                let topic = if n % 50 == 0 {
                    "hub.local-hub.rare.x"
                } else {
                    "hub.local-hub.common.x"
                };
                json!({"topic": topic, "payload": {"n": n}})
            })
            .collect();
        t.ok("bus.publish_batch", json!({"events": events})).await;
    }
    let all_rare: Vec<Value> = {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = t
                .ok(
                    "bus.query",
                    json!({"subject": "hub.*.rare.>", "after_seq": after, "limit": 7}),
                )
                .await;
            events.extend(page["events"].as_array().unwrap().iter().cloned());
            if page["count"] == 0 {
                break;
            }
            after = page["next_after_seq"].as_u64().unwrap();
        }
        events
    };
    assert_eq!(all_rare.len(), 41);
    for limit in [1, 5, 40, 41, 100] {
        let recent = t
            .ok(
                "bus.subscribe",
                json!({"subject": "hub.*.rare.>", "limit": limit}),
            )
            .await;
        let want = &all_rare[all_rare.len().saturating_sub(limit)..];
        assert_eq!(recent["events"].as_array().unwrap(), want, "limit {limit}");
        assert_eq!(recent["count"], want.len());
    }
    // Every subject, default limit 100: the last 100 seqs.
    let recent = t.ok("bus.subscribe", json!({})).await;
    let seqs: Vec<u64> = recent["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1902..=2001).collect::<Vec<_>>());
    let recent = t
        .ok(
            "bus.subscribe",
            json!({"subject": "hub.local-hub.none.x", "limit": 10}),
        )
        .await;
    assert_eq!(recent, json!({"events": [], "count": 0}));
    t.stop().await;
}

#[tokio::test]
async fn query_filters() {
    let t = TestHub::start().await;
    let first = t
        .ok("bus.publish", publish_params("hub.local-hub.q.a", 1))
        .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = t
        .ok("bus.publish", publish_params("hub.local-hub.q.b", 2))
        .await;
    let since = second["timestamp"].as_str().unwrap();
    let until = first["timestamp"].as_str().unwrap();
    let page = t.ok("bus.query", json!({"since": since})).await;
    assert_eq!(page["count"], 1);
    assert_eq!(page["events"][0]["seq"], 2);
    let page = t.ok("bus.query", json!({"until": until})).await;
    assert_eq!(page["count"], 1);
    assert_eq!(page["events"][0]["seq"], 1);
    let page = t.ok("bus.query", json!({"limit": 1})).await;
    assert_eq!(
        (page["count"].as_u64(), page["next_after_seq"].as_u64()),
        (Some(1), Some(1))
    );
    let page = t.ok("bus.query", json!({"after_seq": 1})).await;
    assert_eq!(page["events"][0]["seq"], 2);
    // Nothing matches: the next page still starts past what was scanned.
    let page = t
        .ok("bus.query", json!({"subject": "hub.local-hub.q.zzz"}))
        .await;
    assert_eq!(
        (page["count"].as_u64(), page["next_after_seq"].as_u64()),
        (Some(0), Some(2))
    );

    for (params, param) in [
        (json!({"since": "garbage"}), "since"),
        (json!({"until": "2025-13-01"}), "until"),
        (
            json!({"since": until, "until": "2000-01-01T00:00:00Z"}),
            "since",
        ),
        (json!({"correlation_id": "nope"}), "correlation_id"),
        (json!({"limit": 0}), "limit"),
        (json!({"limit": 1001}), "limit"),
        (json!({"limit": "10"}), "limit"),
        (json!({"limit": 2.5}), "limit"),
        (json!({"after_seq": -1}), "after_seq"),
        (json!({"subject": "hub..x"}), "subject"),
        (json!({"subject": "hub.>.x"}), "subject"),
        (json!({"subject": 3}), "subject"),
        (json!({"sbject": "hub.>"}), "sbject"),
    ] {
        let error = t.err("bus.query", params.clone(), -32602).await;
        assert_eq!(error["data"]["param"], param, "{params}: {error}");
        assert!(error["data"]["reason"].is_string());
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{param}`")),
            "{error}"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn get_errors() {
    let t = TestHub::start().await;
    let missing = Uuid::new_v4().to_string();
    let error = t.err("bus.get", json!({"event_id": missing}), -32004).await;
    assert_eq!(error["data"]["code"], "event_not_found");
    assert_eq!(error["data"]["event_id"], missing);
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("Event not found: "));
    for params in [
        json!({"event_id": "123"}),
        json!({}),
        json!({"event_id": 5}),
    ] {
        let error = t.err("bus.get", params, -32602).await;
        assert_eq!(error["data"]["param"], "event_id");
        assert_eq!(error["data"]["code"], "invalid_event_id");
    }
    t.stop().await;
}

#[tokio::test]
async fn rejected_publishes_store_nothing() {
    let t = TestHub::start().await;
    let cases = [
        (json!({"payload": {}}), "topic", "invalid_subject"),
        (
            json!({"topic": "hub.*.x", "payload": {}}),
            "topic",
            "invalid_subject",
        ),
        (
            json!({"topic": "hub..x", "payload": {}}),
            "topic",
            "invalid_subject",
        ),
        (
            json!({"topic": ["hub"], "payload": {}}),
            "topic",
            "invalid_subject",
        ),
        (
            json!({"topic": "hub.local-hub.x.y"}),
            "payload",
            "invalid_payload",
        ),
        (
            json!({"topic": "hub.local-hub.x.y", "payload": [1]}),
            "payload",
            "invalid_payload",
        ),
        (
            json!({"topic": "hub.local-hub.x.y", "payload": "{}"}),
            "payload",
            "invalid_payload",
        ),
        (
            json!({"topic": "hub.local-hub.x.y", "payload": {}, "correlation_id": " "}),
            "correlation_id",
            "invalid_correlation_id",
        ),
        (
            json!({"topic": "hub.local-hub.x.y", "payload": {}, "id": "x"}),
            "id",
            "invalid_event_id",
        ),
        (
            json!({"topic": "hub.local-hub.x.y", "payload": {}, "id": Uuid::nil().to_string()}),
            "id",
            "invalid_event_id",
        ),
        (
            json!({"topic": "hub.local-hub.x.y", "payload": {}, "subject": "a.b"}),
            "subject",
            "invalid_body",
        ),
        (
            json!({"topic": "hub.local-hub.x.y", "payload": {}, "origin": {}}),
            "origin",
            "invalid_body",
        ),
    ];
    for (params, param, code) in cases {
        let error = t.err("bus.publish", params.clone(), -32602).await;
        assert_eq!(error["data"]["param"], param, "{params}: {error}");
        assert_eq!(error["data"]["code"], code, "{params}: {error}");
    }
    assert_eq!(t.head().await, 0);
    t.stop().await;
}

#[tokio::test]
async fn publish_batch_is_all_or_nothing() {
    let t = TestHub::start().await;
    let reused = Uuid::new_v4().to_string();
    let result = t
        .ok(
            "bus.publish_batch",
            json!({"events": [
                {"topic": "hub.local-hub.batch.a", "payload": {"i": 0}},
                {"subject": "hub.local-hub.batch.b", "payload": {"i": 1}, "id": reused},
                {"topic": "hub.local-hub.batch.c", "payload": {"i": 2}, "id": reused},
            ]}),
        )
        .await;
    assert_eq!(result["count"], 3);
    let results = result["results"].as_array().unwrap();
    assert_eq!(results[0]["subject"], "hub.local-hub.batch.a");
    assert_eq!(
        (results[0]["seq"].as_u64(), results[1]["seq"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(results[1]["subject"], "hub.local-hub.batch.b");
    // The same id twice in one batch: the second is the first, stored once.
    assert_eq!(results[2]["duplicate"], true);
    assert_eq!(results[2]["seq"], 2);
    assert_eq!(results[2]["subject"], "hub.local-hub.batch.b");
    assert_eq!(t.head().await, 2);

    // One bad event rejects them all; each problem is listed with its index.
    let error = t
        .err(
            "bus.publish_batch",
            json!({"events": [
                {"topic": "hub.local-hub.batch.ok", "payload": {}},
                {"topic": "hub.>", "payload": {}},
                {"topic": "hub.local-hub.batch.ok", "payload": {}},
                {"topic": "hub.local-hub.batch.ok", "payload": 3},
                "not an object",
                {"topic": "a.b", "subject": "a.b", "payload": {}},
                {"payload": {}},
            ]}),
            -32602,
        )
        .await;
    assert_eq!(error["data"]["param"], "events");
    assert_eq!(error["data"]["code"], "invalid_batch");
    let errors = error["data"]["errors"].as_array().unwrap();
    let indices: Vec<u64> = errors
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [1, 3, 4, 5, 6]);
    assert_eq!(errors[0]["param"], "topic");
    assert_eq!(errors[0]["code"], "invalid_subject");
    assert_eq!(errors[1]["param"], "payload");
    assert!(errors.iter().all(|e| e["message"].is_string()));
    assert!(
        error["message"].as_str().unwrap().contains("events[1]"),
        "{error}"
    );
    assert_eq!(t.head().await, 2);

    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"topic": "hub.local-hub.batch.x", "payload": {"i": i}}))
        .collect();
    let error = t
        .err("bus.publish_batch", json!({"events": too_many}), -32602)
        .await;
    assert_eq!(error["data"]["param"], "events");
    let error = t
        .err("bus.publish_batch", json!({"events": {}}), -32602)
        .await;
    assert_eq!(error["data"]["param"], "events");
    let error = t.err("bus.publish_batch", json!({}), -32602).await;
    assert_eq!(error["data"]["param"], "events");
    assert_eq!(t.head().await, 2);

    let error = t
        .err("bus.publish_batch", json!({"events": []}), -32602)
        .await;
    assert_eq!(error["data"]["code"], "invalid_batch");
    assert_eq!(t.head().await, 2);
    t.stop().await;
}

#[tokio::test]
async fn unavailable_hub_is_a_retryable_server_error() {
    let t = TestHub::start().await;
    t.ok("bus.publish", publish_params("hub.local-hub.u.x", 1))
        .await;
    // The engine stops (and closes its store) while the server still answers.
    t.hub.shutdown().await;
    let error = t
        .err(
            "bus.publish",
            publish_params("hub.local-hub.u.x", 2),
            -32000,
        )
        .await;
    assert_eq!(error["data"]["code"], "shutting_down");
    assert_eq!(error["data"]["retry"], true);
    assert_eq!(error["data"]["retry_after_secs"], 1);
    let error = t
        .err(
            "bus.get",
            json!({"event_id": Uuid::new_v4().to_string()}),
            -32000,
        )
        .await;
    assert_eq!(error["data"]["retry"], true);
    t.err("bus.query", json!({}), -32000).await;
    t.err("bus.subscribe", json!({}), -32000).await;
    let health = t.ok("hub.health", json!({})).await;
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["services"]["database"], "unhealthy");
    let info = t.ok("hub.info", json!({})).await;
    assert_eq!(info["status"], "shutting_down");
    t.stop().await;
}

#[tokio::test]
async fn methods_are_listed_from_the_dispatch_table() {
    let t = TestHub::start().await;
    let listing: Value = t
        .client
        .get(format!("{}/rpc/methods", t.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Seed 002's manual test POSTs to it.
    let posted: Value = t
        .client
        .post(format!("{}/rpc/methods", t.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing, posted);
    let methods = listing["methods"].as_array().unwrap();
    let names: Vec<&str> = methods
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, METHODS);
    for method in methods {
        let name = method["name"].as_str().unwrap();
        assert!(method["description"].is_string(), "{name}");
        assert!(method["result"]["description"].is_string(), "{name}");
        assert!(method["result"]["fields"].is_array(), "{name}");
        for param in method["params"].as_array().unwrap() {
            assert!(param["name"].is_string(), "{name}: {param}");
            assert!(param["type"].is_string(), "{name}: {param}");
            assert!(param["required"].is_boolean(), "{name}: {param}");
            assert!(param["description"].is_string(), "{name}: {param}");
        }
        // Every listed method dispatches (an unknown param is -32602, not -32601).
        let error = t.err(name, json!({"no_such_param": 1}), -32602).await;
        assert_eq!(error["data"]["param"], "no_such_param");
    }
    let publish = &methods[0];
    let params: Vec<(&str, bool)> = publish["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["required"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        params,
        [
            ("topic", true),
            ("payload", true),
            ("correlation_id", false),
            ("id", false)
        ]
    );
    let codes: Vec<i64> = listing["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_i64().unwrap())
        .collect();
    assert_eq!(
        codes,
        [-32700, -32600, -32601, -32602, -32603, -32000, -32004, -32001, -32003, -32022]
    );
    t.stop().await;
}

/// Seed 003's event store verbs: `store.append` on an expected version, `store.load`
/// from a version, `store.save_snapshot` / `store.load_snapshot`, `store.query`.
#[tokio::test]
async fn store_methods_append_load_and_snapshot() {
    let t = TestHub::start().await;
    let call = |id: u64, method: &str, params: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
    };
    let append = |expected: Value, n: usize| {
        json!({
            "aggregate_type": "context",
            "aggregate_id": "c-7",
            "expected_version": expected,
            "events": (0..n).map(|i| json!({"type": "context.updated", "payload": {"i": i}})).collect::<Vec<_>>(),
        })
    };
    let first = t
        .post(&call(1, "store.append", append(json!("no_stream"), 2)))
        .await;
    assert_eq!(first["result"]["version"], 2, "{first}");
    assert_eq!(first["result"]["duplicate"], false);
    assert_eq!(first["result"]["events"][1]["version"], 2);

    // The wrong expected version: -32602 with the REST code and the current version.
    let conflict = t.post(&call(2, "store.append", append(json!(1), 1))).await;
    assert_eq!(conflict["error"]["code"], -32602, "{conflict}");
    assert_eq!(conflict["error"]["data"]["code"], "version_conflict");
    assert_eq!(conflict["error"]["data"]["current_version"], 2);

    // A bad event names its field.
    let bad = t
        .post(&call(
            3,
            "store.append",
            json!({"aggregate_type": "context", "aggregate_id": "c-7",
                   "events": [{"type": "context.*", "payload": {}}]}),
        ))
        .await;
    assert_eq!(bad["error"]["data"]["code"], "invalid_aggregate", "{bad}");
    assert_eq!(bad["error"]["data"]["param"], "events");
    assert_eq!(bad["error"]["data"]["field"], "events[0].type");

    let loaded = t
        .post(&call(
            4,
            "store.load",
            json!({"aggregate_type": "context", "aggregate_id": "c-7", "from_version": 2}),
        ))
        .await;
    assert_eq!(loaded["result"]["version"], 2, "{loaded}");
    let events = loaded["result"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["aggregate"]["version"], 2);
    assert_eq!(events[0]["type"], "context.updated");
    assert_eq!(
        events[0]["subject"],
        "hub.local-hub.context.context.updated"
    );

    let missing = t
        .post(&call(
            5,
            "store.load_snapshot",
            json!({"aggregate_type": "context", "aggregate_id": "c-7"}),
        ))
        .await;
    assert_eq!(missing["error"]["data"]["code"], "snapshot_not_found");
    let saved = t
        .post(&call(
            6,
            "store.save_snapshot",
            json!({"aggregate_type": "context", "aggregate_id": "c-7", "version": 2, "state": {"name": "x"}}),
        ))
        .await;
    assert_eq!(saved["result"]["version"], 2, "{saved}");
    let ahead = t
        .post(&call(
            7,
            "store.save_snapshot",
            json!({"aggregate_type": "context", "aggregate_id": "c-7", "version": 3, "state": {}}),
        ))
        .await;
    assert_eq!(
        ahead["error"]["data"]["code"], "version_conflict",
        "{ahead}"
    );
    let snapshot = t
        .post(&call(8, "store.load_snapshot", json!(["context", "c-7"])))
        .await;
    assert_eq!(
        snapshot["result"]["state"],
        json!({"name": "x"}),
        "{snapshot}"
    );

    let query = t
        .post(&call(
            9,
            "store.query",
            json!({"aggregate_type": "context", "aggregate_id": "c-7"}),
        ))
        .await;
    assert_eq!(query["result"]["count"], 2, "{query}");
    let unknown = t
        .post(&call(
            10,
            "store.load",
            json!({"aggregate_type": "context", "aggregate_id": "nope"}),
        ))
        .await;
    assert_eq!(unknown["error"]["data"]["code"], "aggregate_not_found");
    t.stop().await;
}
