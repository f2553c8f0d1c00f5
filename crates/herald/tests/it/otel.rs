//! OpenTelemetry tracing and W3C Trace Context through the binary: an OTLP/HTTP
//! receiver started by the test collects the hub's spans; the `traceparent` a publisher
//! sends is stored with the event and handed on (webhook requests, NATS headers,
//! CloudEvents read back), continued by the hub's spans when tracing is on and as it came
//! when it is off; an invalid one is ignored, as the spec says.
//!
//! Spec sentences relied on (W3C Trace Context, <https://www.w3.org/TR/trace-context/>):
//! - "If the `trace-id` value is invalid (for example if it contains non-allowed
//!   characters or all zeros), vendors MUST ignore the `traceparent`."
//! - "Update `parent-id`: The value of the parent-id field can be set to the new value
//!   representing the ID of the current operation. This is the most typical mutation and
//!   should be considered a default."
//! - "If the value of the `traceparent` field wasn't changed before propagation,
//!   `tracestate` MUST NOT be modified as well."

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::harness::{poll_until, read_http_request, TestHerald};
use crate::nats::TestNats;
use crate::rules::Receiver;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

/// An OTLP/HTTP receiver on 127.0.0.1: keeps every span of every `POST /v1/traces`.
struct OtlpReceiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl OtlpReceiver {
    async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (kept, seen) = (spans.clone(), paths.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, kept.clone(), seen.clone()));
            }
        });
        OtlpReceiver {
            endpoint,
            spans,
            paths,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits for a span named `name` that `matches`.
    async fn wait_for(&self, what: &str, matches: impl Fn(&Span) -> bool) -> Span {
        let found = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
            let found = self.spans().iter().any(&matches);
            async move { found }
        })
        .await;
        assert!(
            found,
            "no {what} span arrived; got {:?} at {:?}",
            self.spans().iter().map(|s| &s.name).collect::<Vec<_>>(),
            self.paths.lock().unwrap()
        );
        self.spans().into_iter().find(|s| matches(s)).unwrap()
    }
}

/// One HTTP/1.1 connection (keep-alive): reads each request, answers 200.
async fn serve(
    socket: tokio::net::TcpStream,
    spans: Arc<Mutex<Vec<Span>>>,
    paths: Arc<Mutex<Vec<String>>>,
) {
    let mut reader = BufReader::new(socket);
    loop {
        let Some((line, _headers, body)) = read_http_request(&mut reader).await else {
            return;
        };
        paths
            .lock()
            .unwrap()
            .push(line.split_whitespace().nth(1).unwrap_or("").to_owned());
        if line.starts_with("POST /v1/traces ") {
            let request = ExportTraceServiceRequest::decode(body.as_slice())
                .expect("an OTLP/protobuf trace export");
            let mut kept = spans.lock().unwrap();
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                    .map(|a| format!("{:?}", a.value));
                assert!(
                    service.as_deref().is_some_and(|s| s.contains("\"herald\"")),
                    "service.name defaults to herald: {service:?}"
                );
                for scope in resource.scope_spans {
                    kept.extend(scope.spans);
                }
            }
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(trace-id, parent-id, flags)` of a `traceparent`.
fn parts(traceparent: &str) -> (String, String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "traceparent {traceparent:?}");
    assert_eq!(fields[0], "00");
    (fields[1].into(), fields[2].into(), fields[3].into())
}

/// `GET /api/events/{id}` as JSON, whatever its shape (a CloudEvent's has more members).
async fn get_raw(h: &TestHerald, id: &str) -> Value {
    h.http
        .get(h.url(&format!("/api/events/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn publish_traced(h: &TestHerald, subject: &str, traceparent: &str) -> reqwest::Response {
    h.http
        .post(h.url("/api/events"))
        .header("traceparent", traceparent)
        .header("tracestate", TRACESTATE)
        .json(&json!({"subject": subject, "payload": {"n": 1}}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_the_trace_goes_on_downstream() {
    let otlp = OtlpReceiver::start().await;
    let nats = TestNats::start().await;
    let webhook = Receiver::start(0).await;
    let nats_url = nats.url();
    let h = TestHerald::start_with_env(
        None,
        &["--nats-url", &nats_url, "--webhook-allow-private"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let client = nats.client().await;
    let mut live = client.subscribe("hub.local-hub.traced.>").await.unwrap();
    client.flush().await.unwrap();
    let resp = h
        .http
        .post(h.url("/api/rules"))
        .json(
            &json!({"id": "traced", "subject_pattern": "hub.local-hub.traced.*",
                      "action": {"type": "webhook", "url": webhook.url}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());

    let resp = publish_traced(&h, "hub.local-hub.traced.created", TRACEPARENT).await;
    assert_eq!(resp.status(), 201);
    let published: Value = resp.json().await.unwrap();
    let event_id = published["event_id"].as_str().unwrap().to_owned();

    // The hub's publish span is the child of the publisher's.
    let publish = otlp
        .wait_for("publish", |s| {
            s.name.starts_with("publish ") && hex(&s.trace_id) == TRACE_ID
        })
        .await;
    assert_eq!(publish.name, "publish hub.local-hub.traced.created");
    assert_eq!(hex(&publish.parent_span_id), PARENT_ID);
    let publish_id = hex(&publish.span_id);

    // Stored, the event continues the trace with the publish span as its parent.
    let event = h.get_event(&event_id).await;
    let (trace_id, parent_id, flags) = parts(event["traceparent"].as_str().unwrap());
    assert_eq!(trace_id, TRACE_ID);
    assert_eq!(parent_id, publish_id);
    assert_eq!(flags, "01");
    assert_eq!(event["tracestate"], TRACESTATE);
    crate::harness::assert_event_shape(&event);

    // Read back as a CloudEvent: the distributed-tracing extension.
    let ce: Value = h
        .http
        .get(h.url(&format!("/api/events/{event_id}")))
        .header("accept", "application/cloudevents+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ce["traceparent"], event["traceparent"], "{ce}");
    assert_eq!(ce["tracestate"], TRACESTATE);

    // The commit of the batch is one span, linked to the publish.
    let commit = otlp
        .wait_for("commit", |s| {
            s.name == "commit"
                && s.links
                    .iter()
                    .any(|l| hex(&l.trace_id) == TRACE_ID && hex(&l.span_id) == publish_id)
        })
        .await;
    assert!(commit.parent_span_id.is_empty(), "commit is a root span");
    otlp.wait_for("fan_out", |s| {
        s.name == "fan_out" && s.parent_span_id == commit.span_id
    })
    .await;

    // The webhook request carries the trace, continued by the webhook span.
    let ok = poll_until(
        Duration::from_secs(15),
        Duration::from_millis(50),
        || async { !webhook.delivered().is_empty() },
    )
    .await;
    assert!(ok, "the webhook was not delivered\n{}", h.stderr());
    let delivery = webhook.delivered().remove(0);
    let header = delivery
        .header("traceparent")
        .expect("a traceparent header");
    let (trace_id, parent_id, _) = parts(&header);
    assert_eq!(trace_id, TRACE_ID);
    assert_eq!(delivery.header("tracestate").as_deref(), Some(TRACESTATE));
    let hook = otlp
        .wait_for("webhook", |s| {
            s.name == "webhook traced" && hex(&s.trace_id) == TRACE_ID
        })
        .await;
    assert_eq!(hex(&hook.span_id), parent_id);
    assert_eq!(hex(&hook.parent_span_id), publish_id);

    // So does the NATS message the relay sends.
    let message = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .expect("the relayed message")
        .unwrap();
    let headers = message.headers.expect("headers");
    let header = headers.get("traceparent").expect("a traceparent header");
    let (trace_id, parent_id, _) = parts(header.as_str());
    assert_eq!(trace_id, TRACE_ID);
    assert_eq!(
        headers.get("tracestate").map(|v| v.as_str()),
        Some(TRACESTATE)
    );
    let relay = otlp
        .wait_for("relay", |s| {
            s.name.starts_with("relay ") && hex(&s.trace_id) == TRACE_ID
        })
        .await;
    assert_eq!(hex(&relay.span_id), parent_id);
    assert_eq!(hex(&relay.parent_span_id), publish_id);

    // An invalid traceparent is ignored: the publish starts a trace of its own.
    let invalid = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let resp = publish_traced(&h, "hub.local-hub.untraced.created", invalid).await;
    assert_eq!(resp.status(), 201);
    let published: Value = resp.json().await.unwrap();
    let event = h.get_event(published["event_id"].as_str().unwrap()).await;
    let (own_trace, own_parent, _) = parts(event["traceparent"].as_str().unwrap());
    assert_ne!(own_trace, "0".repeat(32));
    // "If the vendor failed to parse traceparent, it MUST NOT attempt to parse tracestate."
    assert!(event.get("tracestate").is_none(), "{event}");
    // The span the stored traceparent names (other spans of the trace, such as the
    // commit's fan-out, may reach the receiver first).
    let own = otlp
        .wait_for("publish of a new trace", |s| {
            hex(&s.trace_id) == own_trace && hex(&s.span_id) == own_parent
        })
        .await;
    assert!(own.parent_span_id.is_empty(), "a root span: {own:?}");

    // Consumer delivery: fetch and ack have spans, the fetch linked to the message.
    let resp = h
        .http
        .put(h.url("/api/consumers/traced"))
        .json(&json!({"filter_subjects": ["hub.local-hub.traced.>"]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let fetched: Value = h
        .http
        .post(h.url("/api/consumers/traced/fetch"))
        .json(&json!({"batch": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages = fetched["messages"].as_array().expect("messages").clone();
    assert_eq!(messages.len(), 1, "{fetched}");
    let ack_id = messages[0]["ack_id"].as_str().unwrap();
    let resp = h
        .http
        .post(h.url("/api/consumers/traced/ack"))
        .json(&json!({"ack_ids": [ack_id]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    otlp.wait_for("consumer fetch", |s| {
        s.name == "consumer fetch traced" && s.links.iter().any(|l| hex(&l.trace_id) == TRACE_ID)
    })
    .await;
    otlp.wait_for("consumer ack", |s| s.name == "consumer ack traced")
        .await;
    assert!(
        otlp.paths.lock().unwrap().iter().all(|p| p == "/v1/traces"),
        "spans go to <endpoint>/v1/traces"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_queued_spans() {
    let otlp = OtlpReceiver::start().await;
    let mut h = TestHerald::start_with_env(
        None,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint),
            // Nothing would leave before shutdown but for the flush.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    )
    .await;
    let resp = publish_traced(&h, "hub.local-hub.flushed", TRACEPARENT).await;
    assert_eq!(resp.status(), 201);
    assert!(h.terminate().await.success());
    let spans = otlp.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.name == "publish hub.local-hub.flushed" && hex(&s.trace_id) == TRACE_ID),
        "the publish span was flushed at shutdown: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_trace_context_passes_through_unchanged() {
    let h = TestHerald::start().await;
    // A valid traceparent and its tracestate are stored as they came.
    let resp = publish_traced(&h, "hub.local-hub.passed", TRACEPARENT).await;
    assert_eq!(resp.status(), 201);
    let published: Value = resp.json().await.unwrap();
    let event = h.get_event(published["event_id"].as_str().unwrap()).await;
    assert_eq!(event["traceparent"], TRACEPARENT);
    assert_eq!(event["tracestate"], TRACESTATE);
    crate::harness::assert_event_shape(&event);

    // Invalid ones are ignored: stored without, never refused.
    for invalid in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "garbage",
    ] {
        let resp = publish_traced(&h, "hub.local-hub.ignored", invalid).await;
        assert_eq!(resp.status(), 201, "{invalid}");
        let published: Value = resp.json().await.unwrap();
        let event = h.get_event(published["event_id"].as_str().unwrap()).await;
        assert!(event.get("traceparent").is_none(), "{invalid}: {event}");
        assert!(event.get("tracestate").is_none(), "{invalid}: {event}");
        crate::harness::assert_event_shape(&event);
    }

    // A batch: the header applies to every event.
    let resp = h
        .http
        .post(h.url("/api/events:batch"))
        .header("traceparent", TRACEPARENT)
        .json(&json!({"events": [
            {"subject": "hub.local-hub.batch", "payload": {}},
            {"subject": "hub.local-hub.batch", "payload": {}},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let answer: Value = resp.json().await.unwrap();
    for result in answer["results"].as_array().unwrap() {
        let event = h.get_event(result["event_id"].as_str().unwrap()).await;
        assert_eq!(event["traceparent"], TRACEPARENT);
        assert!(event.get("tracestate").is_none());
    }

    // CloudEvents: the distributed-tracing extension, structured and binary, is the
    // event's trace context and reads back as the extension; an invalid one is dropped.
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let resp = h
        .http
        .post(h.url("/api/events"))
        .header("content-type", "application/cloudevents+json")
        .header("traceparent", TRACEPARENT)
        .body(
            json!({"specversion": "1.0", "id": "ce-1", "source": "/tests", "type": "hub.local-hub.ce.created",
                   "traceparent": other, "tracestate": "congo=t61rcWkgMzE", "data": {"a": 1}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let event = get_raw(&h, &id).await;
    assert_eq!(event["traceparent"], other, "the event's own wins: {event}");
    assert_eq!(event["tracestate"], "congo=t61rcWkgMzE");
    assert!(
        event["cloudevent"].get("traceparent").is_none(),
        "kept once, as the event's trace context: {event}"
    );
    let ce: Value = h
        .http
        .get(h.url(&format!("/api/events/{id}")))
        .header("accept", "application/cloudevents+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ce["traceparent"], other);
    assert_eq!(ce["tracestate"], "congo=t61rcWkgMzE");

    let resp = h
        .http
        .post(h.url("/api/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "ce-2")
        .header("ce-source", "/tests")
        .header("ce-type", "hub.local-hub.ce.created")
        .header("ce-traceparent", "00-not-a-trace")
        .header("ce-tracestate", "congo=1")
        .header("content-type", "application/json")
        .body(r#"{"a": 2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let event = get_raw(&h, &id).await;
    assert!(event.get("traceparent").is_none(), "{event}");
    assert!(event["cloudevent"].get("traceparent").is_none(), "{event}");
    assert!(event["cloudevent"].get("tracestate").is_none(), "{event}");

    // JSON-RPC: the HTTP request's traceparent.
    let resp: Value = h
        .http
        .post(h.url("/rpc"))
        .header("traceparent", TRACEPARENT)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "bus.publish",
                      "params": {"topic": "hub.local-hub.rpc", "payload": {}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = resp["result"]["event_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{resp}"))
        .to_owned();
    assert_eq!(h.get_event(&id).await["traceparent"], TRACEPARENT);

    // An aggregate append, over HTTP and JSON-RPC: the request's trace context goes with
    // every event it appends, as with a batch.
    let resp = h
        .http
        .post(h.url("/api/aggregates/order/o-1/events"))
        .header("traceparent", TRACEPARENT)
        .header("tracestate", TRACESTATE)
        .json(&json!({"expected_version": "no_stream", "events": [
            {"type": "created", "payload": {}},
            {"type": "paid", "payload": {}},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp: Value = h
        .http
        .post(h.url("/rpc"))
        .header("traceparent", TRACEPARENT)
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "store.append",
                      "params": {"aggregate_type": "order", "aggregate_id": "o-1",
                                 "expected_version": 2,
                                 "events": [{"type": "shipped", "payload": {}}]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(resp.get("result").is_some(), "{resp}");
    let events = h.query(&[("aggregate_type", "order".into())]).await;
    assert_eq!(events.len(), 3, "{events:?}");
    for event in &events {
        assert_eq!(event["traceparent"], TRACEPARENT, "{event}");
    }
    assert_eq!(events[0]["tracestate"], TRACESTATE);
    assert!(events[2].get("tracestate").is_none(), "{}", events[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_bridge_takes_a_messages_trace_context() {
    let nats = TestNats::start().await;
    let nats_url = nats.url();
    let h = TestHerald::start_with(&["--nats-url", &nats_url]).await;
    let connected = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let health: Value = h
                .http
                .get(h.url("/health/nats"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            health["connected"] == true
        },
    )
    .await;
    assert!(connected, "{}", h.stderr());
    let js = async_nats::jetstream::new(nats.client().await);
    for (subject, traceparent) in [
        ("hub.global.traced.valid", TRACEPARENT),
        ("hub.global.traced.invalid", "00-xyz"),
    ] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", traceparent);
        headers.insert("tracestate", TRACESTATE);
        js.publish_with_headers(subject, headers, r#"{"n":1}"#.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let stored = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            h.query(&[("subject", "hub.global.traced.>".into())])
                .await
                .len()
                == 2
        },
    )
    .await;
    assert!(stored, "both messages are bridged\n{}", h.stderr());
    let events = h.query(&[("subject", "hub.global.traced.>".into())]).await;
    for event in events {
        if event["subject"] == "hub.global.traced.valid" {
            assert_eq!(event["traceparent"], TRACEPARENT, "{event}");
            assert_eq!(event["tracestate"], TRACESTATE, "{event}");
        } else {
            assert!(event.get("traceparent").is_none(), "{event}");
            assert!(event.get("tracestate").is_none(), "{event}");
        }
    }
}
