//! One JSON shape of an event for every way out: what `GET /api/events/{id}` answers
//! (and what query answers hold) is byte for byte what NATS messages and webhook bodies
//! carry (`herald_hub::envelope::to_json`), for events with and without CloudEvents
//! attributes; and reading that JSON back on another hub keeps every attribute.
//!
//! Over a real socket: a hub on a temporary embedded store, served by
//! `herald_server::serve`, called with reqwest.

use std::time::Duration;

use herald_hub::{envelope, Hub, HubConfig};
use herald_server::{AppState, Limits};
use herald_store::{AnyStore, EmbeddedOptions, EmbeddedStore};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
        let state = AppState::new(hub.clone(), Limits::default(), token.clone());
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

    /// Publishes `body` with `content_type`; returns the stored event's id.
    async fn publish(&self, content_type: &str, headers: &[(&str, &str)], body: &str) -> Uuid {
        let mut request = self
            .client
            .post(format!("{}/api/events", self.base))
            .header("content-type", content_type)
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let answer: Value = response.json().await.unwrap();
        answer["event_id"].as_str().unwrap().parse().unwrap()
    }

    async fn get_text(&self, path: &str) -> String {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.text().await.unwrap()
    }
}

#[tokio::test]
async fn the_api_and_the_envelope_show_an_event_alike() {
    let hub = TestHub::start().await;
    // JSON format §2: "Extensions MUST be serialized as a top-level JSON property." The
    // `cloudevent` member has the attributes as a structured CloudEvent does.
    let structured = hub
        .publish(
            "application/cloudevents+json",
            &[],
            &json!({
                "specversion": "1.0",
                "id": "A234-1234-1234",
                "source": "https://example.com/orders",
                "type": "com.example.order.created",
                "subject": "order/42",
                "time": "2018-04-05T17:31:00Z",
                "dataschema": "https://example.com/schema",
                "comexampleextension1": "value",
                "priority": 7,
                "urgent": true,
                "unsetextension": null,
                "heraldsubject": "hub.local-hub.order.created",
                "data": ["not", "an", "object"],
            })
            .to_string(),
        )
        .await;
    let binary = hub
        .publish(
            "text/plain",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "b-1"),
                ("ce-source", "/sensors/7"),
                ("ce-type", "com.example.reading"),
                ("ce-tenantid", "acme"),
            ],
            "21.5 degrees",
        )
        .await;
    let plain = hub
        .publish(
            "application/json",
            &[],
            &json!({
                "subject": "hub.local-hub.project.created",
                "payload": {"project_id": "123", "name": "é \"q\""},
                "origin": {"service": "svc", "user": "ann"},
            })
            .to_string(),
        )
        .await;

    let query: Value = serde_json::from_str(&hub.get_text("/api/events?limit=10").await).unwrap();
    let queried = query.as_array().unwrap();
    assert_eq!(queried.len(), 3);

    for (id, has_cloudevent) in [(structured, true), (binary, true), (plain, false)] {
        let answered = hub.get_text(&format!("/api/events/{id}")).await;
        let stored = hub.hub.get(id).await.unwrap().unwrap();
        let relayed = envelope::to_json(&stored);
        assert_eq!(answered, relayed, "GET /api/events/{id} and the envelope");

        let value: Value = serde_json::from_str(&relayed).unwrap();
        assert_eq!(value.get("cloudevent").is_some(), has_cloudevent, "{value}");
        let in_query = queried.iter().find(|e| e["id"] == id.to_string()).unwrap();
        assert_eq!(in_query, &value, "the query answer holds the same event");

        // Read back (as another hub imports a relayed message): nothing is lost.
        let back = envelope::from_json(relayed.as_bytes(), &stored.subject).unwrap();
        assert_eq!(back.id, stored.id);
        assert_eq!(back.origin, stored.origin);
        assert_eq!(back.correlation_id, stored.correlation_id);
        assert_eq!(back.payload, stored.payload);
        assert_eq!(back.cloudevent, stored.cloudevent);
    }

    let value: Value = serde_json::from_str(&envelope::to_json(
        &hub.hub.get(structured).await.unwrap().unwrap(),
    ))
    .unwrap();
    assert_eq!(
        value["cloudevent"],
        json!({
            "specversion": "1.0",
            "id": "A234-1234-1234",
            "source": "https://example.com/orders",
            "type": "com.example.order.created",
            "subject": "order/42",
            "time": "2018-04-05T17:31:00Z",
            "dataschema": "https://example.com/schema",
            "comexampleextension1": "value",
            "priority": 7,
            "urgent": true,
            "heraldsubject": "hub.local-hub.order.created",
        })
    );
    assert_eq!(value["cloudevent_data_form"], "wrapped");
    assert_eq!(value["payload"], json!({"data": ["not", "an", "object"]}));
    hub.stop().await;
}
