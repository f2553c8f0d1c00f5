//! Event schemas (`/api/schemas`): validated at ingest on every way in, kept across
//! restarts, shared by instances on one PostgreSQL database.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::{json, Value};

use crate::harness::*;
use crate::nats::TestNats;

const ADMIN: &str = "admin-secret-for-tests-0123456789";

/// A 2020-12 schema for `hub.*.orders.>`.
fn orders_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["order_id", "amount"],
        "properties": {
            "order_id": {"type": "string"},
            "amount": {"type": "number", "minimum": 0},
        },
    })
}

async fn put_schema(h: &TestHerald, name: &str, pattern: &str, schema: Value) -> (u16, Value) {
    let resp = h
        .http
        .put(h.url(&format!("/api/schemas/{name}")))
        .json(&json!({"subject_pattern": pattern, "schema": schema}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Sends `body` to `path` as JSON and answers the status and the JSON body.
async fn post(h: &TestHerald, path: &str, body: &Value) -> (u16, Value) {
    let resp = h.http.post(h.url(path)).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn assert_violation(body: &Value, index: u64, paths: &[&str]) {
    let error = &body["error"];
    assert_eq!(error["code"], "schema_violation", "{body}");
    assert_eq!(error["schema"], "orders", "{body}");
    assert_eq!(error["index"], index, "{body}");
    let found: Vec<&str> = error["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    for path in paths {
        assert!(found.contains(path), "{path} in {body}");
    }
    assert!(error["message"].as_str().unwrap().contains("orders"));
}

#[tokio::test]
async fn publishes_are_checked_on_every_http_way_in_and_refused_ones_are_not_stored() {
    let h = TestHerald::start().await;
    let (status, created) = put_schema(&h, "orders", "hub.*.orders.>", orders_schema()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "orders");
    assert_eq!(created["subject_pattern"], "hub.*.orders.>");
    assert_eq!(created["schema"], orders_schema());
    assert_rfc3339(&created["created_at"], "created_at");

    // Valid: stored.
    h.publish(
        "hub.local-hub.orders.created",
        json!({"order_id": "o-1", "amount": 5}),
    )
    .await;
    // Another subject: not checked.
    h.publish("hub.local-hub.users.created", json!({"x": 1}))
        .await;

    // Invalid, on POST /api/events: 422 with each failing instance path.
    // JSON Schema 2020-12 validation §6.5.3: "An object instance is valid against this
    // keyword if every item in the array is the name of a property in the instance."
    // The failing instance of `required` is the payload itself: the empty pointer.
    let resp = h
        .post_event(&json!({"subject": "hub.local-hub.orders.created", "payload": {"amount": -3}}))
        .await;
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_violation(&body, 0, &["", "/amount"]);

    // A batch with one bad event: the index, and none of the batch stored.
    let (status, body) = post(
        &h,
        "/api/events:batch",
        &json!({"events": [
            {"subject": "hub.local-hub.orders.created", "payload": {"order_id": "o-2", "amount": 1}},
            {"subject": "hub.local-hub.orders.created", "payload": {"order_id": 2, "amount": 1}},
        ]}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_violation(&body, 1, &["/order_id"]);

    // CloudEvents (structured): the `data` is the payload.
    let resp = h
        .http
        .post(h.url("/api/events"))
        .header("content-type", "application/cloudevents+json")
        .body(
            json!({"specversion": "1.0", "id": "ce-1", "source": "/shop",
                   "type": "hub.local-hub.orders.created", "data": {"order_id": "x"}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_violation(&body, 0, &[""]);

    // JSON-RPC bus.publish: the application error -32022 with the same details in `data`.
    let (status, body) = post(
        &h,
        "/rpc",
        &json!({"jsonrpc": "2.0", "id": 1, "method": "bus.publish",
                "params": {"topic": "hub.local-hub.orders.created", "payload": {"amount": "ten"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], -32022, "{body}");
    assert_eq!(error["data"]["code"], "schema_violation");
    assert_eq!(error["data"]["schema"], "orders");
    let paths: Vec<&str> = error["data"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/amount") && paths.contains(&""), "{body}");

    // Nothing refused was stored.
    let orders = h.query(&[("subject", "hub.*.orders.>".to_owned())]).await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(h.event_count().await, 2);

    // Deleted: no longer checked.
    let resp = h
        .http
        .delete(h.url("/api/schemas/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    h.publish("hub.local-hub.orders.created", json!({"amount": -3}))
        .await;
    let resp = h
        .http
        .delete(h.url("/api/schemas/orders"))
        .send()
        .await
        .unwrap();
    check_error(resp, &[404], &["schema_not_found"])
        .await
        .unwrap();
}

#[tokio::test]
async fn schemas_are_listed_replaced_and_refused_with_the_validators_message() {
    let h = TestHerald::start_with(&["--max-schemas", "2"]).await;
    let (status, _) = put_schema(&h, "orders", "hub.*.orders.>", orders_schema()).await;
    assert_eq!(status, 201);
    let (status, replaced) = put_schema(&h, "orders", "hub.>", json!(true)).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["schema"], true);
    let got: Value = h
        .http
        .get(h.url("/api/schemas/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, replaced);
    let list: Value = h
        .http
        .get(h.url("/api/schemas"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["count"], 1);
    assert_eq!(list["schemas"][0], replaced);
    let resp = h.http.get(h.url("/api/schemas/nope")).send().await.unwrap();
    check_error(resp, &[404], &["schema_not_found"])
        .await
        .unwrap();

    // A document the validator refuses: its message, nothing stored.
    let (status, body) = put_schema(&h, "bad", "hub.>", json!({"type": "integr"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_schema");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("integr"),
        "{body}"
    );
    // Another draft than the three taken.
    let (status, body) = put_schema(
        &h,
        "bad",
        "hub.>",
        json!({"$schema": "http://json-schema.org/draft-04/schema#"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a draft this hub validates"));
    // A `$ref` to another document: refused, nothing fetched.
    let (status, body) = put_schema(
        &h,
        "bad",
        "hub.>",
        json!({"$ref": "http://169.254.169.254/latest/meta-data"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_schema");
    // A bad name, a bad pattern, a field too many.
    let (status, body) = put_schema(&h, "a.b", "hub.>", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_schema"))
    );
    let (status, body) = put_schema(&h, "x", "hub.>.y", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_schema"))
    );
    let resp = h
        .http
        .put(h.url("/api/schemas/x"))
        .json(&json!({"subject_pattern": "hub.>", "schema": {}, "extra": 1}))
        .send()
        .await
        .unwrap();
    check_error(resp, &[422], &["invalid_body"]).await.unwrap();
    // At the limit.
    let (status, _) = put_schema(&h, "second", "hub.x", json!({})).await;
    assert_eq!(status, 201);
    let (status, body) = put_schema(&h, "third", "hub.x", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("too_many_schemas"))
    );
    let list: Value = h
        .http
        .get(h.url("/api/schemas"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["count"], 2, "{list}");
}

#[tokio::test]
async fn schemas_survive_a_restart() {
    let mut h = TestHerald::start().await;
    put_schema(&h, "orders", "hub.*.orders.>", orders_schema()).await;
    h.terminate().await;
    h.restart().await;
    let resp = h
        .post_event(&json!({"subject": "hub.local-hub.orders.created", "payload": {}}))
        .await;
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_violation(&body, 0, &[""]);
}

#[tokio::test]
async fn only_admins_manage_schemas_when_keys_are_required() {
    let h = TestHerald::start_with_env(
        None,
        &[],
        &[("HERALD_AUTH", "required"), ("HERALD_ADMIN_KEY", ADMIN)],
    )
    .await;
    let resp = h.http.get(h.url("/api/schemas")).send().await.unwrap();
    check_error(resp, &[401], &["unauthenticated"])
        .await
        .unwrap();
    // A key that may publish, but is no admin.
    let created: Value = h
        .http
        .post(h.url("/api/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"description": "publisher"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"));
    let resp = h
        .http
        .put(h.url("/api/schemas/orders"))
        .bearer_auth(key)
        .json(&json!({"subject_pattern": "hub.>", "schema": {}}))
        .send()
        .await
        .unwrap();
    check_error(resp, &[403], &["forbidden"]).await.unwrap();
    let resp = h
        .http
        .put(h.url("/api/schemas/orders"))
        .bearer_auth(ADMIN)
        .json(&json!({"subject_pattern": "hub.*.orders.>", "schema": orders_schema()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = h
        .http
        .post(h.url("/api/events"))
        .bearer_auth(key)
        .json(&json!({"subject": "hub.local-hub.orders.created", "payload": {"amount": 1}}))
        .send()
        .await
        .unwrap();
    check_error(resp, &[422], &["schema_violation"])
        .await
        .unwrap();
}

/// The bridge keeps a message that fails a schema as a dead letter (with the schema and
/// the path in its reason), acknowledges it, and goes on with the next ones.
#[tokio::test]
async fn the_bridge_dead_letters_what_fails_a_schema() {
    let nats = TestNats::start().await;
    let url = nats.url();
    let h = TestHerald::start_with(&[
        "--nats-url",
        &url,
        "--hub-id",
        "local-hub",
        "--presence-interval-secs",
        "0",
    ])
    .await;
    let (status, _) = put_schema(&h, "orders", "hub.*.orders.>", orders_schema()).await;
    assert_eq!(status, 201);
    let js = jetstream::new(nats.client().await);
    let ok = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { js.get_stream("HERALD").await.is_ok() },
    )
    .await;
    assert!(ok, "Herald creates its stream");
    for body in [
        r#"{"order_id":"good-1","amount":1}"#,
        r#"{"order_id":"bad","amount":-1}"#,
        r#"{"order_id":"good-2","amount":2}"#,
    ] {
        js.publish("hub.global.orders.created", body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let ok = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            h.query(&[("subject", "hub.global.orders.>".to_owned())])
                .await
                .len()
                == 2
        },
    )
    .await;
    assert!(ok, "the two valid messages are stored\n{}", h.stderr());
    let ok = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let list: Value = h
                .http
                .get(h.url("/api/bridge/dead-letters"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            list["count"] == 1
        },
    )
    .await;
    assert!(ok, "one dead letter\n{}", h.stderr());
    let list: Value = h
        .http
        .get(h.url("/api/bridge/dead-letters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let letter = &list["dead_letters"][0];
    assert_eq!(letter["subject"], "hub.global.orders.created");
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("orders") && reason.contains("/amount"),
        "{reason}"
    );
    let stored = h
        .query(&[("subject", "hub.global.orders.>".to_owned())])
        .await;
    let ids: Vec<&Value> = stored.iter().map(|e| &e["payload"]["order_id"]).collect();
    assert_eq!(ids, [&json!("good-1"), &json!("good-2")]);
}

/// Two instances on one PostgreSQL database: a schema put on one applies on the other
/// within a few seconds (each reloads every 2 s), and so does its deletion.
#[tokio::test]
async fn instances_on_one_database_share_schemas() {
    let url = herald_store::testing::TestPostgres::shared()
        .create_database()
        .await
        .unwrap();
    let a = TestHerald::start_on(Some(&url), &["--hub-id", "a"]).await;
    let b = TestHerald::start_on(Some(&url), &["--hub-id", "b"]).await;
    let (status, _) = put_schema(&a, "orders", "hub.*.orders.>", orders_schema()).await;
    assert_eq!(status, 201);
    let refused_on_b = || async {
        b.post_event(&json!({"subject": "hub.b.orders.created", "payload": {}}))
            .await
            .status()
            == 422
    };
    let ok = poll_until(
        Duration::from_secs(6),
        Duration::from_millis(100),
        refused_on_b,
    )
    .await;
    assert!(ok, "b applies a's schema");
    let listed: Value = b
        .http
        .get(b.url("/api/schemas/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["schema"], orders_schema());
    let resp = b
        .http
        .delete(b.url("/api/schemas/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let ok = poll_until(
        Duration::from_secs(6),
        Duration::from_millis(100),
        || async {
            a.post_event(&json!({"subject": "hub.a.orders.created", "payload": {}}))
                .await
                .status()
                == 201
        },
    )
    .await;
    assert!(ok, "a stops applying the deleted schema");
}
