//! Authentication and tenants through the binary: with `HERALD_AUTH=required`, two
//! tenants share one hub and neither can read, write, list or confirm the existence of
//! the other's events, consumers or rules — over REST, JSON-RPC, WebSocket and
//! CloudEvents.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

const ADMIN: &str = "admin-secret-for-tests-0123456789";

/// A request helper bound to one key.
struct As<'a> {
    herald: &'a TestHerald,
    key: Option<String>,
}

impl As<'_> {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.herald.http.request(method, self.herald.url(path));
        match &self.key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut builder = self.request(method, path);
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let response = builder.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    async fn rpc(&self, method: &str, params: Value) -> Value {
        let (status, body) = self
            .post(
                "/rpc",
                json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
            )
            .await;
        assert!(status == 200 || status == 401, "{status} {body}");
        body
    }
}

/// A WebSocket to `path`, with the key as a bearer token when given.
async fn ws_with(
    herald: &TestHerald,
    path: &str,
    bearer: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = herald.ws_url(path).into_client_request().unwrap();
    if let Some(key) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    let tcp = tokio::net::TcpStream::connect(herald.addr()).await.unwrap();
    tokio_tungstenite::client_async(request, tcp)
        .await
        .map(|(ws, _)| ws)
}

async fn start_required() -> TestHerald {
    TestHerald::start_with_env(
        None,
        &[],
        &[("HERALD_AUTH", "required"), ("HERALD_ADMIN_KEY", ADMIN)],
    )
    .await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// Creates tenant `id` owning `hub.<id>.>` and a key of it; returns the key's secret.
async fn tenant_with_key(admin: &As<'_>, id: &str) -> (String, String) {
    let (status, body) = admin
        .post(
            "/api/tenants",
            json!({"id": id, "subjects": [format!("hub.{id}.>")]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin
        .post(
            "/api/keys",
            json!({"tenant": id, "description": format!("{id} service")}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("hrld_"), "{secret}");
    (body["id"].as_str().unwrap().to_owned(), secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_key_only_health_answers() {
    let herald = start_required().await;
    let nobody = As {
        herald: &herald,
        key: None,
    };
    assert_eq!(nobody.get("/health").await.0, 200);
    assert_eq!(nobody.get("/health/nats").await.0, 200);
    for path in [
        "/api/events",
        "/api/consumers",
        "/api/rules",
        "/metrics",
        "/api/tenants",
        "/",
    ] {
        let (status, body) = nobody.get(path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(error_code(&body), "unauthenticated", "{path}");
    }
    let response = herald
        .http
        .get(herald.url("/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"herald\""
    );
    // Publishing without a key stores nothing.
    let (status, _) = nobody
        .post("/api/events", json!({"subject": "hub.x.y", "payload": {}}))
        .await;
    assert_eq!(status, 401);
    // Wrong, malformed and mistyped keys are all simply "unauthenticated".
    for key in [
        "nope",
        "hrld_0123456789abcdef_00",
        ADMIN.trim_end_matches('9'),
        "",
    ] {
        let other = As {
            herald: &herald,
            key: Some(key.to_owned()),
        };
        let (status, body) = other.get("/api/events").await;
        assert_eq!(status, 401, "{key:?}: {body}");
    }
    let x_api_key = herald
        .http
        .get(herald.url("/api/events"))
        .header("X-API-Key", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(x_api_key.status(), 200);
    // JSON-RPC answers in its own shape: an error object with a server-defined code.
    let body = nobody.rpc("hub.info", json!({})).await;
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["error"]["code"], -32001, "{body}");
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.to_owned()),
    };
    assert_eq!(admin.get("/api/events").await.0, 200);
    assert_eq!(admin.get("/metrics").await.0, 200);
    assert_eq!(
        admin.get("/api/events").await.1.as_array().map(Vec::len),
        Some(0)
    );
}

/// Every operation of the OpenAPI document (the list of every route and method) refuses
/// a request without a key, but the public health checks: one table at the edge decides
/// who reaches what, and a route it missed would show here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_needs_a_key_but_health() {
    let herald = start_required().await;
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.to_owned()),
    };
    let nobody = As {
        herald: &herald,
        key: None,
    };
    let (status, document) = admin.get("/openapi.json").await;
    assert_eq!(status, 200);
    let mut checked = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        // Path parameters filled with a value of the right shape.
        let concrete: String = path
            .split('/')
            .map(|part| match part {
                "{seq}" | "{id}" if path.contains("dead-letters/{") => "1",
                "{id}" if path.starts_with("/api/events/") => {
                    "01a24d79-0b54-7283-8846-557f82390ccf"
                }
                p if p.starts_with('{') => "name",
                p => p,
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in operations.as_object().unwrap().keys() {
            let Ok(method) = method.to_uppercase().parse::<reqwest::Method>() else {
                continue;
            };
            if !matches!(
                method,
                reqwest::Method::GET
                    | reqwest::Method::POST
                    | reqwest::Method::PUT
                    | reqwest::Method::DELETE
                    | reqwest::Method::PATCH
            ) {
                continue;
            }
            let body = (method != reqwest::Method::GET && method != reqwest::Method::DELETE)
                .then(|| json!({}));
            let (status, answer) = nobody.send(method.clone(), &concrete, body).await;
            if path.starts_with("/health") {
                assert_ne!(status, 401, "{method} {concrete}: {answer}");
            } else {
                assert_eq!(status, 401, "{method} {concrete}: {answer}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} operations in the document");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_share_a_hub_and_nothing_leaks() {
    two_tenants_share(None).await;
}

/// The same on PostgreSQL: tenants, keys, stamps and namespaces in the other backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_share_a_hub_on_postgres_and_nothing_leaks() {
    let url = herald_store::testing::TestPostgres::shared()
        .create_database()
        .await
        .unwrap();
    two_tenants_share(Some(&url)).await;
}

async fn two_tenants_share(data: Option<&str>) {
    let herald = TestHerald::start_with_env(
        data,
        &[],
        &[("HERALD_AUTH", "required"), ("HERALD_ADMIN_KEY", ADMIN)],
    )
    .await;
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.to_owned()),
    };
    let (acme_id, acme_secret) = tenant_with_key(&admin, "acme").await;
    let (_, beta_secret) = tenant_with_key(&admin, "beta").await;
    let acme = As {
        herald: &herald,
        key: Some(acme_secret.clone()),
    };
    let beta = As {
        herald: &herald,
        key: Some(beta_secret.clone()),
    };

    // Tenants' spaces must be apart; ids are unique; only admins manage them.
    let (status, body) = admin
        .post(
            "/api/tenants",
            json!({"id": "wide", "subjects": ["hub.*.orders.>"]}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "conflict"), "{body}");
    for (path, body) in [
        ("/api/tenants", json!({"id": "x", "subjects": ["hub.x.>"]})),
        ("/api/keys", json!({"tenant": "acme", "admin": true})),
    ] {
        let (status, answer) = acme.post(path, body).await;
        assert_eq!((status, error_code(&answer)), (403, "forbidden"), "{path}");
    }
    for path in [
        "/api/tenants",
        "/api/keys",
        "/metrics",
        "/api/bridge/dead-letters",
        "/api/hubs",
    ] {
        assert_eq!(acme.get(path).await.0, 403, "{path}");
    }
    // The key list never shows a secret.
    let (_, keys) = admin.get("/api/keys").await;
    let text = keys.to_string();
    assert!(
        !text.contains(&acme_secret) && !text.contains("hash"),
        "{text}"
    );
    assert_eq!(keys["count"], 2);

    // Publishing: within the tenant's space only; nothing of a refused request is stored.
    let (status, acme_event) = acme
        .post(
            "/api/events",
            json!({"subject": "hub.acme.orders.created", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{acme_event}");
    let acme_event_id = acme_event["event_id"].as_str().unwrap().to_owned();
    let (status, body) = acme
        .post(
            "/api/events",
            json!({"subject": "hub.beta.orders.created", "payload": {}}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");
    let (status, _) = acme
        .post(
            "/api/events:batch",
            json!({"events": [
                {"subject": "hub.acme.ok", "payload": {}},
                {"subject": "hub.beta.not-mine", "payload": {}},
            ]}),
        )
        .await;
    assert_eq!(status, 403, "a batch is all or nothing");
    let structured = herald
        .http
        .post(herald.url("/api/events"))
        .bearer_auth(&beta_secret)
        .header("content-type", "application/cloudevents+json")
        .body(
            json!({"specversion": "1.0", "id": "ce-1", "source": "/t", "type": "hub.acme.forged"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        structured.status(),
        403,
        "a CloudEvent on another tenant's subject"
    );
    let body = beta
        .rpc(
            "bus.publish",
            json!({"topic": "hub.acme.forged", "payload": {}}),
        )
        .await;
    assert_eq!(body["error"]["code"], -32003, "{body}");
    let (status, _) = beta
        .post(
            "/api/events",
            json!({"subject": "hub.beta.x", "payload": {"n": 2}}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, all) = admin.get("/api/events?subject=>").await;
    let all: Vec<Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["subject"].as_str().unwrap().contains(".audit."))
        .cloned()
        .collect();
    let subjects: Vec<&str> = all.iter().map(|e| e["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["hub.acme.orders.created", "hub.beta.x"]);
    let tenants: Vec<&str> = all
        .iter()
        .map(|e| e["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        tenants,
        ["acme", "beta"],
        "every event is stamped with its tenant"
    );

    // Reading: another tenant's event is absent, never forbidden.
    assert_eq!(
        acme.get(&format!("/api/events/{acme_event_id}")).await.0,
        200
    );
    let (status, body) = beta.get(&format!("/api/events/{acme_event_id}")).await;
    assert_eq!((status, error_code(&body)), (404, "event_not_found"));
    for query in [
        "subject=>",
        "subject=hub.acme.>",
        "",
        "subject=hub.*.orders.created",
    ] {
        let (status, events) = beta.get(&format!("/api/events?{query}")).await;
        assert_eq!(status, 200, "{query}");
        for event in events.as_array().unwrap() {
            assert_eq!(event["tenant_id"], "beta", "{query}: {event}");
        }
    }
    let body = beta
        .rpc("bus.get", json!({"event_id": acme_event_id}))
        .await;
    assert!(body["error"].is_object(), "{body}");
    let body = beta.rpc("bus.subscribe", json!({"subject": ">"})).await;
    let events = body["result"]["events"].as_array().unwrap();
    assert!(events.iter().all(|e| e["tenant_id"] == "beta"), "{body}");
    assert_eq!(events.len(), 1);

    // Live streams: beta asks for everything and gets its own events only.
    let mut ws = ws_with(
        &herald,
        "/api/events/stream?subject=%3E",
        Some(&beta_secret),
    )
    .await
    .unwrap();
    // A browser's way: the key in the query.
    let mut browser_ws = ws_with(
        &herald,
        &format!("/api/events/stream?subject=hub.%3E&access_token={beta_secret}"),
        None,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    acme.post(
        "/api/events",
        json!({"subject": "hub.acme.live", "payload": {}}),
    )
    .await;
    beta.post(
        "/api/events",
        json!({"subject": "hub.beta.live", "payload": {}}),
    )
    .await;
    for socket in [&mut ws, &mut browser_ws] {
        let frame = next_frame(socket, Duration::from_secs(5))
            .await
            .expect("a frame");
        let text = format!("{frame:?}");
        assert!(
            text.contains("hub.beta.live") && !text.contains("hub.acme"),
            "{text}"
        );
    }
    let _ = ws.send(Message::Close(None)).await;
    let unauthenticated = ws_with(&herald, "/api/events/stream", None).await;
    assert!(
        unauthenticated.is_err(),
        "a stream without a key is refused before upgrading"
    );

    // Consumers live in their tenant's namespace.
    let (status, body) = acme
        .put(
            "/api/consumers/worker",
            json!({"filter_subjects": ["hub.acme.>"], "deliver_policy": "all"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "worker");
    assert_eq!(beta.get("/api/consumers/worker").await.0, 404);
    assert_eq!(
        beta.post("/api/consumers/worker/fetch", json!({"batch": 10}))
            .await
            .0,
        404
    );
    assert_eq!(beta.delete("/api/consumers/worker").await.0, 404);
    assert_eq!(beta.get("/api/consumers").await.1["count"], 0);
    let (status, body) = beta
        .put(
            "/api/consumers/worker",
            json!({"filter_subjects": ["hub.acme.>"]}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");
    let (status, _) = beta
        .put(
            "/api/consumers/worker",
            json!({"filter_subjects": ["hub.beta.>"], "deliver_policy": "all"}),
        )
        .await;
    assert_eq!(status, 201, "the same name in another namespace");
    let (_, fetched) = acme
        .post("/api/consumers/worker/fetch", json!({"batch": 10}))
        .await;
    let subjects: Vec<&str> = fetched["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"]["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["hub.acme.orders.created", "hub.acme.live"]);
    let body = beta.rpc("consumer.get", json!({"name": "worker"})).await;
    assert!(
        body["result"]["filter_subjects"][0] == "hub.beta.>",
        "{body}"
    );

    // Rules too.
    let (status, body) = acme
        .post(
            "/api/rules",
            json!({"id": "r1", "subject_pattern": "hub.acme.>",
                   "action": {"type": "republish", "subject": "hub.acme.copy"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], "r1");
    assert_eq!(beta.get("/api/rules/r1").await.0, 404);
    assert_eq!(beta.delete("/api/rules/r1").await.0, 404);
    assert_eq!(beta.get("/api/rules").await.1["count"], 0);
    assert_eq!(acme.get("/api/rules").await.1["count"], 1);
    let (status, _) = beta
        .post(
            "/api/rules",
            json!({"subject_pattern": ">", "action": {"type": "republish", "subject": "hub.beta.copy"}}),
        )
        .await;
    assert_eq!(status, 403, "a rule beyond the key's subscribe rights");

    // CloudEvents are deduplicated by (source, id) within a tenant: two tenants' producers
    // with the same pair do not collide; the same tenant sending it again is a duplicate.
    for (key, subject, want) in [
        (&acme_secret, "hub.acme.ce", 201),
        (&beta_secret, "hub.beta.ce", 201),
        (&beta_secret, "hub.beta.ce", 200),
    ] {
        let response = herald
            .http
            .post(herald.url("/api/events"))
            .bearer_auth(key)
            .header("content-type", "application/cloudevents+json")
            .body(
                json!({"specversion": "1.0", "id": "order-1", "source": "/orders",
                       "type": subject, "data": {"n": 1}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), want, "{subject}");
    }

    // An id taken by another tenant's event is a conflict, never that event.
    let (status, body) = beta
        .post(
            "/api/events",
            json!({"id": acme_event_id, "subject": "hub.beta.y", "payload": {}}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "conflict"), "{body}");

    // Every administrative action is on the audit log, which only admins read.
    let (status, body) = admin
        .post(
            "/api/tenants",
            json!({"id": "greedy", "subjects": ["hub.local-hub.>"]}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "conflict"), "{body}");
    let (_, audit) = admin.get("/api/events?subject=hub.local-hub.audit.>").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["action"].as_str().unwrap())
        .collect();
    for action in [
        "tenant.created",
        "key.created",
        "consumer.created",
        "rule.created",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let consumer_by_acme = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["payload"]["action"] == "consumer.created")
        .unwrap();
    assert_eq!(consumer_by_acme["payload"]["actor"]["tenant"], "acme");
    assert!(
        !audit.to_string().contains("hrld_"),
        "no secret in the audit log"
    );
    let (_, seen) = acme.get("/api/events?subject=hub.local-hub.audit.>").await;
    assert_eq!(seen.as_array().map(Vec::len), Some(0));

    // Revocation is immediate.
    assert_eq!(admin.delete(&format!("/api/keys/{acme_id}")).await.0, 204);
    assert_eq!(acme.get("/api/events").await.0, 401);
    // Deleting a tenant revokes its keys.
    assert_eq!(admin.delete("/api/tenants/beta").await.0, 204);
    assert_eq!(beta.get("/api/events").await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_key_comes_from_the_cli() {
    let mut herald = TestHerald::start_with_env(None, &[], &[("HERALD_AUTH", "required")]).await;
    // The embedded store is one process's: the key is made while the hub is stopped.
    herald.terminate().await;
    let output = tokio::process::Command::new(HERALD)
        .args([
            "keys",
            "create",
            "--admin",
            "--description",
            "ops",
            "--data",
        ])
        .arg(herald.data_path())
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let made: Value = serde_json::from_slice(&output.stdout).unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    herald.restart().await;
    let admin = As {
        herald: &herald,
        key: Some(key),
    };
    assert_eq!(admin.get("/api/keys").await.0, 200);
    let (_, keys) = admin.get("/api/keys").await;
    assert_eq!(keys["keys"][0]["description"], "ops");
    assert!(!keys.to_string().contains(made["key"].as_str().unwrap()));
}

/// Two instances on one PostgreSQL database: a key made on one works on the other, and
/// a key revoked on one is refused by the other within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_instance_within_5_seconds() {
    let url = herald_store::testing::TestPostgres::shared()
        .create_database()
        .await
        .unwrap();
    let env = [("HERALD_AUTH", "required"), ("HERALD_ADMIN_KEY", ADMIN)];
    let a = TestHerald::start_with_env(Some(&url), &["--hub-id", "a"], &env).await;
    let b = TestHerald::start_with_env(Some(&url), &["--hub-id", "b"], &env).await;
    let admin_a = As {
        herald: &a,
        key: Some(ADMIN.to_owned()),
    };
    let (key_id, secret) = tenant_with_key(&admin_a, "acme").await;
    let on_b = As {
        herald: &b,
        key: Some(secret),
    };
    let until = |want: u16| {
        let on_b = &on_b;
        async move {
            let started = std::time::Instant::now();
            loop {
                let (status, _) = on_b.get("/api/events").await;
                if status == want {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "instance b still answers {status}, not {want}, after 5 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    until(200).await;
    assert_eq!(admin_a.delete(&format!("/api/keys/{key_id}")).await.0, 204);
    let took = until(401).await;
    eprintln!("revocation reached the other instance in {took:?}");
}

/// Publish rates are token buckets per key and per tenant, with real timing: the burst
/// passes, the next event is `429 rate_limited` with `Retry-After` and the `RateLimit-*`
/// fields and is not stored, and after the wait it passes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rates_and_stream_counts_are_cut_at_their_limits() {
    let herald = start_required().await;
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.to_owned()),
    };
    let (status, body) = admin
        .post(
            "/api/tenants",
            json!({"id": "acme", "subjects": ["hub.acme.>"],
                   "limits": {"publish_per_second": 5, "publish_burst": 3, "max_consumers": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, body) = admin
        .post(
            "/api/keys",
            json!({"tenant": "acme", "limits": {"max_streams": 1}}),
        )
        .await;
    let acme = As {
        herald: &herald,
        key: Some(body["key"].as_str().unwrap().to_owned()),
    };
    let publish = |n: usize| {
        acme.request(reqwest::Method::POST, "/api/events")
            .json(&json!({"subject": "hub.acme.x", "payload": {"n": n}}))
            .send()
    };
    for n in 0..3 {
        assert_eq!(publish(n).await.unwrap().status(), 201, "within the burst");
    }
    let refused = publish(3).await.unwrap();
    assert_eq!(refused.status(), 429);
    let headers = refused.headers().clone();
    let body: Value = refused.json().await.unwrap();
    assert_eq!(error_code(&body), "rate_limited", "{body}");
    assert_eq!(headers["ratelimit-limit"], "5");
    assert_eq!(headers["ratelimit-remaining"], "0");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // A batch larger than the bucket is refused whole.
    let (status, _) = acme
        .post(
            "/api/events:batch",
            json!({"events": (0..4).map(|n| json!({"subject": "hub.acme.b", "payload": {"n": n}})).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(status, 429);
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(publish(4).await.unwrap().status(), 201, "after Retry-After");
    let (_, events) = admin.get("/api/events?subject=hub.acme.>").await;
    let ns: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 2, 4], "nothing refused was stored");

    // Streams: one open per key.
    let key = acme.key.clone().unwrap();
    let first = ws_with(
        &herald,
        "/api/events/stream?subject=hub.acme.%3E",
        Some(&key),
    )
    .await
    .unwrap();
    let second = ws_with(
        &herald,
        "/api/events/stream?subject=hub.acme.%3E",
        Some(&key),
    )
    .await;
    match second {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("a second stream: {:?}", other.map(|_| "opened")),
    }
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ws_with(
        &herald,
        "/api/events/stream?subject=hub.acme.%3E",
        Some(&key),
    )
    .await
    .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a closed stream gives its slot back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Consumers: one for the tenant.
    let put = |name: &'static str| {
        acme.put(
            Box::leak(format!("/api/consumers/{name}").into_boxed_str()),
            json!({"filter_subjects": ["hub.acme.>"]}),
        )
    };
    assert_eq!(put("one").await.0, 201);
    assert_eq!(put("one").await.0, 200, "updating is not creating");
    let (status, body) = put("two").await;
    assert_eq!((status, error_code(&body)), (429, "rate_limited"), "{body}");
}

/// The client commands take the key from `--key` or `HERALD_API_KEY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_key() {
    let herald = start_required().await;
    let cli = |args: &[&str], key: Option<&str>| {
        let mut command = tokio::process::Command::new(HERALD);
        command
            .args(args)
            .args(["--url", herald.base_url()])
            .env_remove("HERALD_API_KEY");
        if let Some(key) = key {
            command.env("HERALD_API_KEY", key);
        }
        command.output()
    };
    let refused = cli(&["publish", "hub.cli.x", r#"{"n":1}"#], None)
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unauthenticated")
            || String::from_utf8_lossy(&refused.stdout).contains("unauthenticated"),
        "{refused:?}"
    );
    let published = cli(&["publish", "hub.cli.x", r#"{"n":1}"#], Some(ADMIN))
        .await
        .unwrap();
    assert!(published.status.success(), "{published:?}");
    let queried = cli(&["query", "--subject", "hub.cli.>"], Some(ADMIN))
        .await
        .unwrap();
    assert!(queried.status.success(), "{queried:?}");
    let events: Value = serde_json::from_slice(&queried.stdout).unwrap();
    assert_eq!(events.as_array().map(Vec::len), Some(1));
    // tail: the key goes on the WebSocket handshake.
    let mut tail = tokio::process::Command::new(HERALD)
        .args([
            "tail",
            "hub.cli.>",
            "--from-seq",
            "0",
            "--url",
            herald.base_url(),
        ])
        .env("HERALD_API_KEY", ADMIN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tail.stdout.take().unwrap()));
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("tail printed within 10 s")
        .unwrap()
        .unwrap();
    assert!(line.contains("hub.cli.x"), "{line}");
}

/// A tenant flooding past its rate is cut at the limit — about `burst + rate × time`
/// events stored, the rest `429` — while another tenant publishing at the same time is
/// never refused. (How much the flood costs the other tenant's latency is measured by
/// `herald-bench isolation`, not timed here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_is_cut_at_its_limit_and_the_other_is_not_refused() {
    let herald = start_required().await;
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.to_owned()),
    };
    let (status, _) = admin
        .post(
            "/api/tenants",
            json!({"id": "flood", "subjects": ["hub.flood.>"],
                   "limits": {"publish_per_second": 20, "publish_burst": 10}}),
        )
        .await;
    assert_eq!(status, 201);
    let flood_key = admin.post("/api/keys", json!({"tenant": "flood"})).await.1["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, calm_key) = tenant_with_key(&admin, "calm").await;
    let started = std::time::Instant::now();
    let flooders: Vec<_> = (0..6)
        .map(|task| {
            let http = http_client();
            let url = herald.url("/api/events");
            let key = flood_key.clone();
            tokio::spawn(async move {
                let (mut stored, mut refused) = (0u32, 0u32);
                for n in 0.. {
                    if started.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                    let response = http
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&json!({"subject": "hub.flood.x", "payload": {"task": task, "n": n}}))
                        .send()
                        .await
                        .unwrap();
                    match response.status().as_u16() {
                        201 => stored += 1,
                        429 => refused += 1,
                        other => panic!("flood answered {other}"),
                    }
                }
                (stored, refused)
            })
        })
        .collect();
    let calm = As {
        herald: &herald,
        key: Some(calm_key),
    };
    for n in 0..100 {
        let (status, body) = calm
            .post(
                "/api/events",
                json!({"subject": "hub.calm.x", "payload": {"n": n}}),
            )
            .await;
        assert_eq!(status, 201, "the calm tenant, #{n}: {body}");
    }
    let (mut stored, mut refused) = (0, 0);
    for flooder in flooders {
        let (s, r) = flooder.await.unwrap();
        stored += s;
        refused += r;
    }
    let seconds = started.elapsed().as_secs_f64();
    let most = 10.0 + 20.0 * seconds + 2.0;
    assert!(
        f64::from(stored) <= most,
        "{stored} flood events stored in {seconds:.1} s; the limit allows {most:.0}"
    );
    assert!(refused > stored, "{refused} refused, {stored} stored");
    let (_, events) = admin
        .get("/api/events?subject=hub.flood.>&limit=1000")
        .await;
    assert_eq!(events.as_array().unwrap().len() as u32, stored);
}

/// A key with `expires_at` works until then and is refused after; `last_used_at` shows
/// that a key was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_refused_and_use_is_recorded() {
    let herald = start_required().await;
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.to_owned()),
    };
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (status, made) = admin
        .post(
            "/api/keys",
            json!({"admin": true, "expires_at": expires.to_rfc3339()}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let key = As {
        herald: &herald,
        key: Some(made["key"].as_str().unwrap().to_owned()),
    };
    assert_eq!(key.get("/api/keys").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, body) = key.get("/api/keys").await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    // Use is written back within a reload (2 s).
    let id = made["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, listed) = admin.get(&format!("/api/keys/{id}")).await;
        if listed["last_used_at"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last_used_at not recorded: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `max_stored_bytes` is a quota on the payload bytes a tenant's events hold: a publish
/// that would pass it is `429 rate_limited`, and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_is_held_to_its_storage_quota() {
    let herald = start_required().await;
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.to_owned()),
    };
    let (status, _) = admin
        .post(
            "/api/tenants",
            json!({"id": "small", "subjects": ["hub.small.>"], "limits": {"max_stored_bytes": 100}}),
        )
        .await;
    assert_eq!(status, 201);
    let secret = admin.post("/api/keys", json!({"tenant": "small"})).await.1["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let small = As {
        herald: &herald,
        key: Some(secret),
    };
    let payload = json!({"text": "x".repeat(40)}); // 51 bytes as JSON
    let (status, _) = small
        .post(
            "/api/events",
            json!({"subject": "hub.small.a", "payload": payload}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = small
        .post(
            "/api/events",
            json!({"subject": "hub.small.b", "payload": payload}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (429, "rate_limited"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("quota"));
    let (_, events) = admin.get("/api/events?subject=hub.small.>").await;
    assert_eq!(
        events.as_array().unwrap().len(),
        1,
        "nothing over the quota stored"
    );

    // Publishes at once cannot pass a quota together: 20 publishes of 51 bytes race for
    // a quota of 510 bytes, and 10 are stored.
    let (status, _) = admin
        .post(
            "/api/tenants",
            json!({"id": "burst", "subjects": ["hub.burst.>"], "limits": {"max_stored_bytes": 510}}),
        )
        .await;
    assert_eq!(status, 201);
    let secret = admin.post("/api/keys", json!({"tenant": "burst"})).await.1["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let racing = (0..20).map(|i| {
        let (http, url, secret) = (
            herald.http.clone(),
            herald.url("/api/events"),
            secret.clone(),
        );
        let payload = payload.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(secret)
                .json(&json!({"subject": format!("hub.burst.e{i}"), "payload": payload}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let mut stored = 0;
    for task in racing.collect::<Vec<_>>() {
        match task.await.unwrap() {
            201 => stored += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(stored, 10, "exactly the quota's worth is stored");
    let (_, events) = admin.get("/api/events?subject=hub.burst.>").await;
    assert_eq!(events.as_array().unwrap().len(), 10);
}

/// `max_connections` counts the connections a key is used on: another connection with
/// the same key is `429` while the first is open, and fine once it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_held_to_its_connection_count() {
    let herald = start_required().await;
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.to_owned()),
    };
    let secret = admin
        .post(
            "/api/keys",
            json!({"admin": true, "limits": {"max_connections": 1}}),
        )
        .await
        .1["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |client: &reqwest::Client| {
        client
            .get(herald.url("/api/keys"))
            .bearer_auth(&secret)
            .send()
    };
    // One connection held by hand: a pooled client may open a second one while it
    // hands the first back to its pool, which is what the limit counts.
    let mut first = tokio::net::TcpStream::connect(herald.addr()).await.unwrap();
    assert_eq!(keep_alive_get(&mut first, "/api/keys", &secret).await, 200);
    assert_eq!(
        keep_alive_get(&mut first, "/api/keys", &secret).await,
        200,
        "the same connection again"
    );
    let second = http_client();
    let refused = get(&second).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(&second).await.unwrap().status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection gives its count back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `GET path` with `key` on a kept-alive connection and reads the whole answer
/// (by its `content-length`), leaving the connection ready for the next request.
async fn keep_alive_get(socket: &mut tokio::net::TcpStream, path: &str, key: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {key}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = socket.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the server closed the connection");
        answer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .expect("a content-length");
        if body.len() >= length {
            return head.split(' ').nth(1).unwrap().parse().unwrap();
        }
    }
}

/// `publish_bytes_per_second` limits payload bytes as `publish_per_second` limits events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_bytes_per_second_are_limited() {
    let herald = start_required().await;
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.to_owned()),
    };
    let (status, made) = admin
        .post(
            "/api/keys",
            json!({"admin": true, "limits": {"publish_bytes_per_second": 100}}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let key = As {
        herald: &herald,
        key: Some(made["key"].as_str().unwrap().to_owned()),
    };
    let payload = json!({"text": "x".repeat(40)}); // 51 bytes as JSON
    let (status, _) = key
        .post(
            "/api/events",
            json!({"subject": "hub.bytes.a", "payload": payload}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = key
        .post(
            "/api/events",
            json!({"subject": "hub.bytes.b", "payload": payload}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (429, "rate_limited"), "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("bytes"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _) = key
        .post(
            "/api/events",
            json!({"subject": "hub.bytes.c", "payload": payload}),
        )
        .await;
    assert_eq!(status, 201, "after the bucket refilled");
}

/// Aggregates live in their tenant's namespace: two tenants' `order` `o-1` are two
/// aggregates with their own versions and snapshots, and nobody appends outside its
/// subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_aggregates_are_their_own() {
    let herald = start_required().await;
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.into()),
    };
    let (_, acme_key) = tenant_with_key(&admin, "acme").await;
    let (_, globex_key) = tenant_with_key(&admin, "globex").await;
    let acme = As {
        herald: &herald,
        key: Some(acme_key),
    };
    let globex = As {
        herald: &herald,
        key: Some(globex_key),
    };
    let placed = |tenant: &str, n: u32| {
        json!({"expected_version": "no_stream", "events": [
            {"type": "order.placed", "subject": format!("hub.{tenant}.orders.placed"), "payload": {"n": n}}
        ]})
    };
    let path = "/api/aggregates/order/o-1/events";
    let (status, body) = acme.post(path, placed("acme", 1)).await;
    assert_eq!((status, body["version"].clone()), (201, json!(1)), "{body}");
    let (status, body) = globex.post(path, placed("globex", 2)).await;
    assert_eq!(
        (status, body["version"].clone()),
        (201, json!(1)),
        "its own aggregate: {body}"
    );

    for (who, tenant, n) in [(&acme, "acme", 1), (&globex, "globex", 2)] {
        let (status, body) = who.get(path).await;
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{body}");
        assert_eq!(events[0]["payload"]["n"], n);
        assert_eq!(events[0]["tenant_id"], tenant);
        let (_, found) = who
            .get("/api/events?aggregate_type=order&aggregate_id=o-1")
            .await;
        assert_eq!(
            found.as_array().unwrap().len(),
            1,
            "{tenant} sees its own: {found}"
        );
    }

    // Outside its subjects: another tenant's, or the hub's default aggregate subject.
    let (status, body) = acme
        .post(
            path,
            json!({"events": [{"type": "order.placed", "subject": "hub.globex.orders.placed", "payload": {}}]}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");
    let (status, body) = acme
        .post(
            path,
            json!({"events": [{"type": "order.placed", "payload": {}}]}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");
    // An admin key has no tenant: it may not write into a tenant's subjects.
    let (status, body) = admin.post(path, placed("acme", 3)).await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");

    // Snapshots too.
    let (status, _) = acme
        .put(
            "/api/aggregates/order/o-1/snapshot",
            json!({"version": 1, "state": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = globex.get("/api/aggregates/order/o-1/snapshot").await;
    assert_eq!(
        (status, error_code(&body)),
        (404, "snapshot_not_found"),
        "{body}"
    );
}

/// Every mistake in a tenant or key request is a 4xx naming the problem, and nothing of
/// it is kept: the lists are unchanged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tenant_and_key_requests_are_refused_field_by_field() {
    let herald = start_required().await;
    let admin = As {
        herald: &herald,
        key: Some(ADMIN.into()),
    };
    tenant_with_key(&admin, "acme").await;
    let (_, tenants_before) = admin.get("/api/tenants").await;
    let (_, keys_before) = admin.get("/api/keys").await;

    let tenants: Vec<(Value, u16, &str, &str)> = vec![
        (json!({}), 422, "invalid_body", "no id"),
        (
            json!({"id": "Bad Id", "subjects": ["hub.b.>"]}),
            422,
            "invalid_access",
            "id",
        ),
        (
            json!({"id": "b", "subjects": []}),
            422,
            "invalid_access",
            "no subjects",
        ),
        (
            json!({"id": "b", "subjects": ["hub.>.x"]}),
            422,
            "invalid_access",
            "a bad pattern",
        ),
        (
            json!({"id": "b", "subjects": "hub.b.>"}),
            422,
            "invalid_body",
            "not a list",
        ),
        (
            json!({"id": "b", "subjects": ["hub.acme.x"]}),
            409,
            "conflict",
            "overlaps acme",
        ),
        (
            json!({"id": "b", "subjects": ["hub.local-hub.audit.>"]}),
            409,
            "conflict",
            "the audit log",
        ),
        (
            json!({"id": "b", "subjects": ["hub.b.>"], "limits": {"publish_per_second": 0}}),
            422,
            "invalid_access",
            "a zero rate",
        ),
        (
            json!({"id": "b", "subjects": ["hub.b.>"], "limits": {"publish_per_second": -1}}),
            422,
            "invalid_body",
            "a negative rate",
        ),
        (
            json!({"id": "b", "subjects": ["hub.b.>"], "limits": {"no_such_limit": 1}}),
            422,
            "invalid_body",
            "an unknown limit",
        ),
        (
            json!({"id": "b", "subjects": ["hub.b.>"], "extra": true}),
            422,
            "invalid_body",
            "an unknown field",
        ),
        (
            json!({"id": "acme", "subjects": ["hub.acme2.>"]}),
            409,
            "conflict",
            "an existing id",
        ),
    ];
    for (body, status, code, what) in tenants {
        let (got, answer) = admin.post("/api/tenants", body).await;
        assert_eq!(
            (got, error_code(&answer)),
            (status, code),
            "{what}: {answer}"
        );
        assert!(!answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty());
    }

    let keys: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"tenant": "nobody"}),
            404,
            "tenant_not_found",
            "an unknown tenant",
        ),
        (
            json!({"tenant": "acme", "publish": {"allow": ["hub.>.x"]}}),
            422,
            "invalid_access",
            "a bad pattern",
        ),
        (
            json!({"tenant": "acme", "publish": {"allow": "hub.>"}}),
            422,
            "invalid_body",
            "not a list",
        ),
        (
            json!({"tenant": "acme", "admin": true}),
            409,
            "conflict",
            "a tenant's admin key",
        ),
        (
            json!({"tenant": "acme", "expires_at": "yesterday"}),
            422,
            "invalid_access",
            "a bad time",
        ),
        (
            json!({"tenant": "acme", "limits": {"max_streams": "many"}}),
            422,
            "invalid_body",
            "a limit that is not a number",
        ),
        (
            json!({"tenant": "acme", "description": "x".repeat(5000)}),
            422,
            "invalid_access",
            "a long description",
        ),
        (
            json!({"tenant": "acme", "extra": 1}),
            422,
            "invalid_body",
            "an unknown field",
        ),
    ];
    for (body, status, code, what) in keys {
        let (got, answer) = admin.post("/api/keys", body).await;
        assert_eq!(
            (got, error_code(&answer)),
            (status, code),
            "{what}: {answer}"
        );
    }
    let (status, answer) = admin.delete("/api/keys/no-such-key").await;
    assert_eq!(
        (status, error_code(&answer)),
        (404, "key_not_found"),
        "{answer}"
    );
    let (status, answer) = admin.delete("/api/tenants/no-such-tenant").await;
    assert_eq!(
        (status, error_code(&answer)),
        (404, "tenant_not_found"),
        "{answer}"
    );

    let (_, tenants_after) = admin.get("/api/tenants").await;
    let (_, keys_after) = admin.get("/api/keys").await;
    assert_eq!(
        tenants_after, tenants_before,
        "nothing of a refused tenant is kept"
    );
    assert_eq!(
        keys_after["keys"].as_array().map(Vec::len),
        keys_before["keys"].as_array().map(Vec::len),
        "nor of a refused key"
    );
}
