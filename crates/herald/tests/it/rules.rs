//! Routing rules through the binary: `GET/POST /api/rules`, `GET/DELETE
//! /api/rules/{id}`, bad input, secrets never shown, webhook deliveries of events
//! published over HTTP (to a small HTTP/1.1 receiver written here on a loopback port),
//! the `--rules` file, delivery resuming after a restart and after `kill -9`, rules that
//! hang not delaying a healthy one, the circuit breaker, failures not flooding the log,
//! a rule's dead letters (`/api/rules/{id}/dead-letters`), and several instances on one
//! PostgreSQL database delivering each event once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::harness::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---- a webhook receiver --------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    status: u16,
    /// When the request had been read.
    at: Instant,
    /// When the answer was written (`None`: never).
    answered: Option<Instant>,
}

impl Received {
    /// A request header (names are lowercase).
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).cloned()
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

struct Shared {
    /// 500 to this many first attempts of each `webhook-id`.
    fail_first: usize,
    /// 500 to every request while set.
    fail_all: AtomicBool,
    /// Wait this long before answering.
    delay_ms: AtomicU64,
    /// Accept the request but never answer.
    hang: AtomicBool,
    attempts: Mutex<HashMap<String, usize>>,
    received: Mutex<Vec<Received>>,
}

/// An HTTP/1.1 server on 127.0.0.1 that records every POST (keep-alive supported).
pub(crate) struct Receiver {
    pub(crate) url: String,
    shared: Arc<Shared>,
}

impl Receiver {
    pub(crate) async fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            fail_first,
            fail_all: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            hang: AtomicBool::new(false),
            attempts: Mutex::new(HashMap::new()),
            received: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve_connection(socket, accepting.clone()));
            }
        });
        Receiver { url, shared }
    }

    pub(crate) fn delivered(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.status == 200)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The distinct event ids delivered (2xx) so far.
    fn delivered_ids(&self) -> BTreeSet<String> {
        self.delivered()
            .iter()
            .map(|r| r.json()["id"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn wait_for_ids(&self, ids: &BTreeSet<String>, within: Duration) {
        let ok = poll_until(within, Duration::from_millis(50), || async {
            self.delivered_ids().is_superset(ids)
        })
        .await;
        assert!(
            ok,
            "expected deliveries of {ids:?} within {within:?}; got {:?}",
            self.delivered_ids()
        );
    }
}

async fn serve_connection(socket: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut reader = BufReader::new(socket);
    loop {
        let Some((_line, headers, body)) = read_http_request(&mut reader).await else {
            return;
        };
        let at = Instant::now();
        if shared.hang.load(Ordering::SeqCst) {
            shared.received.lock().unwrap().push(Received {
                headers,
                body,
                status: 0,
                at,
                answered: None,
            });
            tokio::time::sleep(Duration::from_secs(120)).await;
            return;
        }
        let id = headers.get("webhook-id").cloned().unwrap_or_default();
        let attempt = {
            let mut attempts = shared.attempts.lock().unwrap();
            let n = attempts.entry(id).or_default();
            *n += 1;
            *n
        };
        let status = if attempt <= shared.fail_first || shared.fail_all.load(Ordering::SeqCst) {
            500
        } else {
            200
        };
        let delay = shared.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        shared.received.lock().unwrap().push(Received {
            headers,
            body,
            status,
            at,
            answered: Some(Instant::now()),
        });
        let answer = format!(
            "HTTP/1.1 {status} {}\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok",
            if status == 200 {
                "OK"
            } else {
                "Internal Server Error"
            }
        );
        if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ---- helpers -------------------------------------------------------------------------------

async fn get_rules(h: &TestHerald) -> Value {
    let resp = h.http.get(h.url("/api/rules")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("whsec_"),
        "GET /api/rules shows no secret: {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_keys(&body, &["rules", "count"], "rule list");
    assert_eq!(body["count"], body["rules"].as_array().unwrap().len());
    body
}

async fn post_rule(h: &TestHerald, body: &Value) -> reqwest::Response {
    h.http
        .post(h.url("/api/rules"))
        .json(body)
        .send()
        .await
        .expect("POST /api/rules")
}

/// Posts a rule and asserts the 201 answer; returns the rule.
async fn add_rule(h: &TestHerald, body: &Value) -> Value {
    let resp = post_rule(h, body).await;
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    assert_eq!(status, 201, "POST /api/rules {body}: {text}");
    assert!(
        !text.contains("whsec_"),
        "the answer shows no secret: {text}"
    );
    let rule: Value = serde_json::from_str(&text).unwrap();
    assert_rule_shape(&rule);
    assert_eq!(
        location.as_deref(),
        Some(format!("/api/rules/{}", rule["id"].as_str().unwrap()).as_str())
    );
    rule
}

fn assert_rule_shape(rule: &Value) {
    assert_keys(
        rule,
        &[
            "id",
            "subject_pattern",
            "action",
            "enabled",
            "description",
            "created_at",
            "stats",
        ],
        "rule",
    );
    assert_rfc3339(&rule["created_at"], "created_at");
    assert_keys(
        &rule["stats"],
        &["delivered", "failed", "retries", "breaker"],
        "stats",
    );
    let webhook = rule["action"]["type"] == "webhook";
    match rule["action"]["type"].as_str() {
        Some("webhook") => {
            assert_keys(
                &rule["action"],
                &[
                    "type",
                    "url",
                    "secret_set",
                    "timeout_ms",
                    "max_attempts",
                    "circuit_breaker",
                ],
                "webhook action",
            );
            assert_keys(
                &rule["action"]["circuit_breaker"],
                &["failure_threshold", "cool_down_ms", "max_cool_down_ms"],
                "circuit breaker settings",
            );
        }
        Some("republish") => assert_keys(&rule["action"], &["type", "subject"], "republish action"),
        other => panic!("unexpected action type {other:?}: {rule}"),
    }
    let breaker = &rule["stats"]["breaker"];
    if webhook && rule["enabled"] == true {
        assert_keys(
            breaker,
            &[
                "state",
                "consecutive_failures",
                "trips",
                "opened_at",
                "next_probe_at",
            ],
            "breaker",
        );
        let state = breaker["state"].as_str().unwrap();
        assert!(
            ["closed", "open", "half_open"].contains(&state),
            "{breaker}"
        );
        for field in ["opened_at", "next_probe_at"] {
            if !breaker[field].is_null() {
                assert_rfc3339(&breaker[field], field);
            }
        }
    } else {
        assert!(breaker.is_null(), "{rule}");
    }
}

async fn get_rule(h: &TestHerald, id: &str) -> Value {
    let resp = h
        .http
        .get(h.url(&format!("/api/rules/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rule: Value = resp.json().await.unwrap();
    assert_rule_shape(&rule);
    rule
}

/// The value of the metric line that starts with `name{` and has every one of `labels`.
async fn metric(h: &TestHerald, name: &str, labels: &[&str]) -> Option<f64> {
    h.metrics()
        .await
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

fn webhook(url: &str) -> Value {
    json!({"type": "webhook", "url": url, "secret": SECRET, "timeout_ms": 60000, "max_attempts": 10})
}

// ---- tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_api_adds_lists_reads_and_deletes() {
    let h = TestHerald::start().await;
    assert_eq!(get_rules(&h).await, json!({"rules": [], "count": 0}));

    let rule = add_rule(
        &h,
        &json!({
            "id": "audit-hook",
            "subject_pattern": "hub.%.audit.>",
            "action": webhook("https://example.com/hooks/herald?x=1"),
            "description": "Audit trail",
        }),
    )
    .await;
    assert_eq!(rule["id"], "audit-hook");
    assert_eq!(rule["subject_pattern"], "hub.*.audit.>");
    assert_eq!(rule["enabled"], true);
    assert_eq!(rule["description"], "Audit trail");
    assert_eq!(
        rule["action"],
        json!({"type": "webhook", "url": "https://example.com/hooks/herald?x=1",
            "secret_set": true, "timeout_ms": 60000, "max_attempts": 10,
            "circuit_breaker": {"failure_threshold": 5, "cool_down_ms": 30000, "max_cool_down_ms": 300000}})
    );
    assert_eq!(
        rule["stats"],
        json!({"delivered": 0, "failed": 0, "retries": 0, "breaker": {
            "state": "closed", "consecutive_failures": 0, "trips": 0,
            "opened_at": null, "next_probe_at": null}})
    );
    let generated = add_rule(
        &h,
        &json!({
            "subject_pattern": "hub.>",
            "action": {"type": "republish", "subject": "audit.copy"},
            "enabled": false,
        }),
    )
    .await;
    let generated_id = assert_uuid(&generated["id"], "generated rule id").to_string();
    assert_eq!(generated["enabled"], false);
    assert_eq!(generated["description"], Value::Null);

    let listed = get_rules(&h).await;
    assert_eq!(listed["count"], 2);
    assert_eq!(listed["rules"][0], rule, "in the order added");
    assert_eq!(listed["rules"][1]["id"], generated_id.as_str());

    let resp = h
        .http
        .get(h.url("/api/rules/audit-hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), rule);

    // The same id again is a conflict; nothing changes.
    let resp = post_rule(
        &h,
        &json!({"id": "audit-hook", "subject_pattern": "hub.>",
            "action": {"type": "republish", "subject": "x"}}),
    )
    .await;
    check_error(resp, &[409], &["rule_exists"]).await.unwrap();

    let resp = h
        .http
        .delete(h.url("/api/rules/audit-hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.text().await.unwrap().is_empty());
    for request in [
        h.http.delete(h.url("/api/rules/audit-hook")),
        h.http.get(h.url("/api/rules/audit-hook")),
        h.http.delete(h.url("/api/rules/no-such-rule")),
    ] {
        let resp = request.send().await.unwrap();
        check_error(resp, &[404], &["rule_not_found"])
            .await
            .unwrap();
    }
    let listed = get_rules(&h).await;
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["rules"][0]["id"], generated_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_rejected_and_nothing_is_stored() {
    let h = TestHerald::start().await;
    let ok_action = json!({"type": "republish", "subject": "a.b"});
    let bad: Vec<(String, &[&str])> = vec![
        ("".into(), &["invalid_json"]),
        ("{".into(), &["invalid_json"]),
        ("[]".into(), &["invalid_body"]),
        (json!({"subject_pattern": "hub.>"}).to_string(), &["invalid_rule"]),
        (json!({"action": ok_action}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub..x", "action": ok_action}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>.x", "action": ok_action}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": 7, "action": ok_action}).to_string(), &["invalid_body"]),
        (json!({"subject_pattern": "hub.>", "action": ok_action, "extra": 1}).to_string(), &["invalid_body"]),
        (json!({"subject_pattern": "hub.>", "action": ok_action, "id": "has space"}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": ok_action, "id": "x".repeat(200)}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": ok_action, "description": "d".repeat(1025)}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "email"}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "republish", "subject": "a.*"}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "republish"}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "webhook"}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "ftp://example.com/"}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "file:///etc/passwd"}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://user:pw@example.com/"}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://example.com/", "secret": "short"}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://example.com/", "secret": "whsec_notbase64!"}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://example.com/", "timeout_ms": 10}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://example.com/", "max_attempts": 0}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://example.com/", "max_attempts": -1}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://example.com/", "subject": "a"}}).to_string(), &["invalid_rule"]),
        (json!({"subject_pattern": "hub.>", "action": {"type": "republish", "subject": "a", "secret": SECRET}}).to_string(), &["invalid_rule"]),
    ];
    for (body, codes) in bad {
        let resp = h
            .http
            .post(h.url("/api/rules"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if let Err(problem) = check_error(resp, &[400, 422], codes).await {
            panic!("POST /api/rules {body}: {problem}");
        }
    }
    assert_eq!(get_rules(&h).await["count"], 0, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_rule_delivers_signed_events_published_over_http() {
    let h = TestHerald::start().await;
    let receiver = Receiver::start(1).await;
    // A rule id with dots: they must not reach `webhook-id`.
    let rule = add_rule(
        &h,
        &json!({"id": "hook.v1", "subject_pattern": "hub.local-hub.project.*", "action": webhook(&receiver.url)}),
    )
    .await;
    assert_eq!(rule["action"]["secret_set"], true);
    let published = h
        .publish(
            "hub.local-hub.project.created",
            json!({"project_id": "123"}),
        )
        .await;
    h.publish("hub.local-hub.other.created", json!({})).await;
    let event_id = published["event_id"].as_str().unwrap().to_owned();
    receiver
        .wait_for_ids(&BTreeSet::from([event_id.clone()]), Duration::from_secs(15))
        .await;

    let all = receiver.all();
    assert_eq!(all.len(), 2, "one 500, then the delivery: {all:?}");
    // Standard Webhooks (spec/standard-webhooks.md): "It's important that both the
    // message id and the timestamp not be user controlled, or at the very least not be
    // allowed to include any `.` to prevent certain attacks." Herald's id is
    // msg_ + UUIDv5(namespace: the event id, name: the rule id), recomputed here.
    let event_uuid = uuid::Uuid::parse_str(&event_id).unwrap();
    let expected_id = format!(
        "msg_{}",
        uuid::Uuid::new_v5(&event_uuid, b"hook.v1").simple()
    );
    assert!(!expected_id.contains('.'));
    for request in &all {
        assert_eq!(
            request.headers["webhook-id"], expected_id,
            "dot-free, the same on every attempt"
        );
        assert_eq!(request.headers["content-type"], "application/json");
        let signature = herald_hub::rules::webhook::signature(
            SECRET,
            &request.headers["webhook-id"],
            request.headers["webhook-timestamp"].parse().unwrap(),
            &request.body,
        )
        .unwrap();
        assert_eq!(request.headers["webhook-signature"], signature);
        let body = request.json();
        assert_event_shape(&body);
        assert_eq!(
            body,
            h.get_event(&event_id).await,
            "the body is the stored event"
        );
    }
    let ok = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let stats = get_rule(&h, "hook.v1").await["stats"].clone();
            (&stats["delivered"], &stats["failed"], &stats["retries"])
                == (&json!(1), &json!(0), &json!(1))
                && stats["breaker"]["consecutive_failures"] == 0
        },
    )
    .await;
    assert!(ok, "stats count the delivery and the retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_file_loads_at_start_and_rules_survive_restart() {
    let receiver = Receiver::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    std::fs::write(
        &path,
        json!([
            {"id": "from-file", "subject_pattern": "hub.file.>", "action": webhook(&receiver.url),
             "description": "loaded from a file"},
            {"id": "copy", "subject_pattern": "hub.>", "action": {"type": "republish", "subject": "audit.copy"},
             "enabled": false},
        ])
        .to_string(),
    )
    .unwrap();
    let mut h = TestHerald::start_with(&["--rules", path.to_str().unwrap()]).await;
    let listed = get_rules(&h).await;
    let ids: Vec<&str> = listed["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["from-file", "copy"]);
    for rule in listed["rules"].as_array().unwrap() {
        assert_rule_shape(rule);
    }
    let file_rule = listed["rules"][0].clone();
    add_rule(
        &h,
        &json!({"id": "from-api", "subject_pattern": "hub.api.>", "action": webhook(&receiver.url)}),
    )
    .await;
    let mut expected = BTreeSet::new();
    for subject in ["hub.file.a", "hub.api.a"] {
        let published = h.publish(subject, json!({})).await;
        expected.insert(published["event_id"].as_str().unwrap().to_owned());
    }
    receiver
        .wait_for_ids(&expected, Duration::from_secs(10))
        .await;

    h.terminate().await;
    h.restart().await;
    let listed = get_rules(&h).await;
    let ids: Vec<&str> = listed["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["from-file", "copy", "from-api"]);
    assert_eq!(
        listed["rules"][0]["created_at"], file_rule["created_at"],
        "an unchanged file rule is kept as it was"
    );
    for subject in ["hub.file.b", "hub.api.b"] {
        let published = h.publish(subject, json!({})).await;
        expected.insert(published["event_id"].as_str().unwrap().to_owned());
    }
    receiver
        .wait_for_ids(&expected, Duration::from_secs(10))
        .await;
    assert_eq!(receiver.delivered_ids(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rules_file_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    std::fs::write(
        &path,
        r#"[{"id": "x", "subject_pattern": "hub.>", "action": {"type": "webhook", "url": "gopher://x"}}]"#,
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(HERALD);
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data")
        .arg(dir.path().join("herald.db"))
        .arg("--rules")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    scrub_env(&mut cmd);
    let output = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("herald exits")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rule 1") && stderr.contains("url"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "never listened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_resume_after_kill_9() {
    let receiver = Receiver::start(0).await;
    let mut h = TestHerald::start().await;
    add_rule(
        &h,
        &json!({"id": "resume", "subject_pattern": "hub.k.>", "action": webhook(&receiver.url)}),
    )
    .await;
    let mut expected = BTreeSet::new();
    for i in 0..3 {
        let published = h.publish("hub.k.x", json!({"i": i})).await;
        expected.insert(published["event_id"].as_str().unwrap().to_owned());
    }
    receiver
        .wait_for_ids(&expected, Duration::from_secs(10))
        .await;
    // The receiver stops answering: these events are acknowledged but not delivered.
    receiver.shared.hang.store(true, Ordering::SeqCst);
    for i in 3..6 {
        let published = h.publish("hub.k.x", json!({"i": i})).await;
        expected.insert(published["event_id"].as_str().unwrap().to_owned());
    }
    let hung = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { receiver.all().iter().filter(|r| r.status == 0).count() == 3 },
    )
    .await;
    assert!(hung, "the three deliveries are in flight");
    h.kill9().await;
    receiver.shared.hang.store(false, Ordering::SeqCst);
    h.restart().await;
    receiver
        .wait_for_ids(&expected, Duration::from_secs(15))
        .await;
    assert_eq!(receiver.delivered_ids(), expected, "no event skipped");
}

/// A listener that accepts connections and never reads from or answers them.
async fn black_hole() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counting = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counting.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (url, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_whose_receivers_hang_do_not_delay_a_healthy_rule() {
    const HANGING_RULES: usize = 16;
    let h = TestHerald::start().await;
    let (hole, accepted) = black_hole().await;
    let receiver = Receiver::start(0).await;
    for i in 0..HANGING_RULES {
        add_rule(
            &h,
            &json!({"id": format!("hang-{i}"), "subject_pattern": "hub.hang.>",
                "action": {"type": "webhook", "url": hole, "timeout_ms": 60000}}),
        )
        .await;
    }
    add_rule(
        &h,
        &json!({"id": "healthy", "subject_pattern": "hub.hang.>", "action": webhook(&receiver.url)}),
    )
    .await;

    // Fill every hanging rule's window: each holds its whole in-flight budget open.
    let in_flight = herald_hub::rules::WEBHOOK_IN_FLIGHT;
    let mut published = Vec::new();
    for i in 0..in_flight {
        published.push(h.publish("hub.hang.x", json!({"i": i})).await);
    }
    let full = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { accepted.load(Ordering::SeqCst) >= HANGING_RULES * in_flight },
    )
    .await;
    assert!(
        full,
        "the hanging rules hold {} requests open",
        accepted.load(Ordering::SeqCst)
    );
    // Each event reaches the healthy rule's receiver within about a second of publishing,
    // those published before the windows filled and those after.
    for i in in_flight..in_flight + 10 {
        published.push(h.publish("hub.hang.x", json!({"i": i})).await);
    }
    for event in &published {
        let id = event["event_id"].as_str().unwrap().to_owned();
        receiver
            .wait_for_ids(&BTreeSet::from([id]), Duration::from_millis(1500))
            .await;
    }
    let started = Instant::now();
    let event = h.publish("hub.hang.x", json!({"last": true})).await;
    let id = event["event_id"].as_str().unwrap().to_owned();
    receiver
        .wait_for_ids(&BTreeSet::from([id]), Duration::from_secs(1))
        .await;
    eprintln!(
        "with {} requests hanging, the healthy rule delivered in {:?}",
        accepted.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        HANGING_RULES * in_flight,
        "a hanging rule holds no more than its own window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_opens_waits_probes_once_and_delivers_everything() {
    const EVENTS: usize = 5;
    let h = TestHerald::start().await;
    let receiver = Receiver::start(0).await;
    receiver.shared.fail_all.store(true, Ordering::SeqCst);
    let rule = add_rule(
        &h,
        &json!({"id": "cb.hook", "subject_pattern": "hub.cb.>", "action": {
            "type": "webhook", "url": receiver.url, "max_attempts": 20,
            "circuit_breaker": {"failure_threshold": 3, "cool_down_ms": 2000, "max_cool_down_ms": 2000}}}),
    )
    .await;
    assert_eq!(
        rule["action"]["circuit_breaker"],
        json!({"failure_threshold": 3, "cool_down_ms": 2000, "max_cool_down_ms": 2000})
    );
    let mut expected = BTreeSet::new();
    for i in 0..EVENTS {
        let published = h.publish("hub.cb.x", json!({"i": i})).await;
        expected.insert(published["event_id"].as_str().unwrap().to_owned());
    }

    // Three failures in a row open the breaker.
    let opened = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { get_rule(&h, "cb.hook").await["stats"]["breaker"]["state"] == "open" },
    )
    .await;
    let breaker = get_rule(&h, "cb.hook").await["stats"]["breaker"].clone();
    assert!(opened, "{breaker}");
    let seen_open = Instant::now();
    assert_eq!(breaker["trips"], 1);
    assert!(
        breaker["consecutive_failures"].as_u64().unwrap() >= 3,
        "{breaker}"
    );
    let opened_at = assert_rfc3339(&breaker["opened_at"], "opened_at");
    let next_probe_at = assert_rfc3339(&breaker["next_probe_at"], "next_probe_at");
    assert_eq!((next_probe_at - opened_at).num_milliseconds(), 2000);
    let probe_due = seen_open + (next_probe_at - chrono::Utc::now()).to_std().unwrap();
    let labels = ["rule=\"cb.hook\""];
    assert_eq!(
        metric(&h, "herald_rule_breaker_state", &labels).await,
        Some(1.0)
    );
    assert_eq!(
        metric(&h, "herald_rule_breaker_trips_total", &labels).await,
        Some(1.0)
    );

    // The receiver recovers (answering slowly, so that a second request during the probe
    // would show). Nothing arrives during the cool-down.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = receiver.all().len();
    receiver.shared.fail_all.store(false, Ordering::SeqCst);
    receiver.shared.delay_ms.store(300, Ordering::SeqCst);
    tokio::time::sleep(
        probe_due
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(100)),
    )
    .await;
    assert_eq!(
        receiver.all().len(),
        before,
        "no request during the cool-down"
    );

    receiver
        .wait_for_ids(&expected, Duration::from_secs(10))
        .await;
    let mut requests = receiver.all();
    requests.sort_by_key(|r| r.at);
    let quiet: Vec<_> = requests
        .iter()
        .filter(|r| {
            r.at > seen_open + Duration::from_millis(100)
                && r.at < probe_due - Duration::from_millis(100)
        })
        .collect();
    assert!(quiet.is_empty(), "requests during the cool-down: {quiet:?}");
    let (probe, after) = (&requests[before], &requests[before + 1]);
    assert!(
        probe.at + Duration::from_millis(100) >= probe_due,
        "the probe waited for the cool-down"
    );
    assert_eq!(probe.status, 200);
    assert!(
        after.at >= probe.answered.unwrap(),
        "the probe went alone: the next request came after its answer"
    );
    assert_eq!(receiver.delivered_ids(), expected, "every event arrived");

    let closed = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let stats = get_rule(&h, "cb.hook").await["stats"].clone();
            stats["delivered"] == EVENTS && stats["breaker"]["state"] == "closed"
        },
    )
    .await;
    assert!(closed);
    let stats = get_rule(&h, "cb.hook").await["stats"].clone();
    assert_eq!(stats["failed"], 0, "no event was given up");
    assert_eq!(
        stats["breaker"],
        json!({"state": "closed", "consecutive_failures": 0, "trips": 1,
            "opened_at": null, "next_probe_at": null})
    );
    assert_eq!(
        metric(&h, "herald_rule_breaker_state", &labels).await,
        Some(0.0)
    );
    assert_eq!(
        metric(&h, "herald_rule_breaker_trips_total", &labels).await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_delivery_failures_do_not_flood_the_log() {
    const EVENTS: usize = 200;
    let h = TestHerald::start().await;
    // A port nobody listens on: every attempt is refused at once.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    add_rule(
        &h,
        &json!({"id": "flood", "subject_pattern": "hub.flood.>", "action": {
            "type": "webhook", "url": format!("http://{closed}/hook"), "max_attempts": 1,
            "circuit_breaker": {"failure_threshold": 1000}}}),
    )
    .await;
    let failed_lines = |h: &TestHerald| -> Vec<String> {
        h.stderr()
            .lines()
            .filter(|line| line.contains("A routing rule's action failed"))
            .map(str::to_owned)
            .collect()
    };
    let started = Instant::now();
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| json!({"subject": "hub.flood.x", "payload": {"i": i}}))
        .collect();
    let resp = h
        .http
        .post(h.url("/api/events:batch"))
        .json(&json!({"events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let counted = |n: usize| {
        let h = &h;
        async move {
            poll_until(
                Duration::from_secs(30),
                Duration::from_millis(50),
                || async { get_rule(h, "flood").await["stats"]["failed"] == n },
            )
            .await
        }
    };
    assert!(counted(EVENTS).await, "every failure is counted");
    let labels = ["rule=\"flood\"", "outcome=\"failed\""];
    assert_eq!(
        metric(&h, "herald_rule_actions_total", &labels).await,
        Some(EVENTS as f64)
    );
    let lines = failed_lines(&h);
    let windows = 1 + started.elapsed().as_secs() as usize / 10;
    assert!(
        !lines.is_empty() && lines.len() <= windows,
        "at most one line per 10 s, not one per failure: {} lines",
        lines.len()
    );

    // After the interval (counted from the first line, logged a little after `started`),
    // the next failure is logged with the number left out.
    // The first line's moment is not known exactly (a busy machine delays it), so keep
    // failing once every half second until the next line comes.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    let mut failures = EVENTS;
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        h.publish("hub.flood.x", json!({"last": failures})).await;
        failures += 1;
        assert!(counted(failures).await);
        let lines = failed_lines(&h);
        if lines.len() >= 2 {
            break lines;
        }
        assert!(Instant::now() < deadline, "no second line in 30 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let last = lines.last().unwrap();
    // Failures up to the logged one are its seq (one event per seq), less those logged.
    let logged_seq: usize = last
        .split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|field| {
            field
                .trim_start_matches('"')
                .strip_prefix("seq")?
                .trim_start_matches(['=', '"', ':'])
                .parse()
                .ok()
        })
        .expect("the line names its seq");
    let left_out = logged_seq - lines.len();
    assert!(
        last.contains(&format!("suppressed={left_out}"))
            || last.contains(&format!("\"suppressed\":{left_out}")),
        "{} lines; the last names the {left_out} failures left out: {last}",
        lines.len()
    );
}

/// The receiver's requests per `webhook-id`.
fn attempts_by_id(receiver: &Receiver) -> HashMap<String, Vec<Received>> {
    let mut by_id: HashMap<String, Vec<Received>> = HashMap::new();
    for request in receiver.all() {
        by_id
            .entry(request.headers["webhook-id"].clone())
            .or_default()
            .push(request);
    }
    by_id
}

async fn rule_dead_letters(h: &TestHerald, id: &str, query: &str) -> Value {
    let resp = h
        .http
        .get(h.url(&format!("/api/rules/{id}/dead-letters{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_keys(&body, &["dead_letters", "count"], "dead letter list");
    assert_eq!(
        body["count"],
        body["dead_letters"].as_array().unwrap().len()
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_receiver_keeps_failing_go_to_the_rules_dead_letters_and_can_be_redriven() {
    let h = TestHerald::start().await;
    let receiver = Receiver::start(0).await;
    receiver.shared.fail_all.store(true, Ordering::SeqCst);
    add_rule(
        &h,
        &json!({"id": "dl.hook", "subject_pattern": "hub.dl.>", "action": {
            "type": "webhook", "url": receiver.url, "max_attempts": 3,
            "circuit_breaker": {"failure_threshold": 1000}}}),
    )
    .await;
    let mut events = Vec::new();
    for i in 0..2 {
        events.push(h.publish("hub.dl.x", json!({"i": i})).await);
    }
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();

    // Three attempts each (0.5 s and 1 s apart), then the dead letters.
    let dead = poll_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async { rule_dead_letters(&h, "dl.hook", "").await["count"] == 2 },
    )
    .await;
    assert!(dead, "{}", rule_dead_letters(&h, "dl.hook", "").await);
    let listed = rule_dead_letters(&h, "dl.hook", "").await;
    for (letter, event) in listed["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&events)
    {
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
        assert_event_shape(&letter["event"]);
        assert_eq!(letter["event"]["id"], event["event_id"]);
        assert_eq!(letter["deliveries"], 3);
        assert_eq!(letter["reason"], "max_deliver");
        let last_error = letter["last_error"].as_str().unwrap();
        assert!(last_error.contains("500"), "{last_error}");
        let first = assert_rfc3339(&letter["first_delivered_at"], "first_delivered_at");
        let dead_at = assert_rfc3339(&letter["dead_at"], "dead_at");
        assert!(
            dead_at - first >= chrono::Duration::milliseconds(1000),
            "the backoff was waited"
        );
    }
    let by_id = attempts_by_id(&receiver);
    assert_eq!(by_id.len(), 2);
    assert!(
        by_id.values().all(|attempts| attempts.len() == 3),
        "{by_id:?}"
    );
    let stats = get_rule(&h, "dl.hook").await["stats"].clone();
    assert_eq!(
        (&stats["delivered"], &stats["failed"], &stats["retries"]),
        (&json!(0), &json!(2), &json!(4))
    );
    // Paging.
    let page = rule_dead_letters(&h, "dl.hook", &format!("?limit=1&after_seq={}", seqs[0])).await;
    assert_eq!(page["count"], 1);
    assert_eq!(page["dead_letters"][0]["event"]["seq"], seqs[1]);

    // The receiver recovers; the first event is redriven and delivered, with the same
    // webhook-id; the second is discarded.
    receiver.shared.fail_all.store(false, Ordering::SeqCst);
    let resp = h
        .http
        .post(h.url("/api/rules/dl.hook/dead-letters/redrive"))
        .json(&json!({"seqs": [seqs[0]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"redriven": 1}));
    let first_id = events[0]["event_id"].as_str().unwrap().to_owned();
    receiver
        .wait_for_ids(&BTreeSet::from([first_id]), Duration::from_secs(10))
        .await;
    let by_id = attempts_by_id(&receiver);
    assert!(
        by_id.values().any(|attempts| attempts.len() == 4),
        "the redriven event came again under its webhook-id: {by_id:?}"
    );
    let listed = rule_dead_letters(&h, "dl.hook", "").await;
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["dead_letters"][0]["event"]["seq"], seqs[1]);
    let discard = format!("/api/rules/dl.hook/dead-letters/{}", seqs[1]);
    let resp = h.http.delete(h.url(&discard)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let resp = h.http.delete(h.url(&discard)).send().await.unwrap();
    check_error(resp, &[404], &["dead_letter_not_found"])
        .await
        .unwrap();
    assert_eq!(rule_dead_letters(&h, "dl.hook", "").await["count"], 0);
    // Redriving nothing is not an error.
    let resp = h
        .http
        .post(h.url("/api/rules/dl.hook/dead-letters/redrive"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"redriven": 0}));

    // Unknown rules and bad input.
    for request in [
        h.http.get(h.url("/api/rules/nope/dead-letters")),
        h.http.post(h.url("/api/rules/nope/dead-letters/redrive")),
        h.http.delete(h.url("/api/rules/nope/dead-letters/1")),
    ] {
        let resp = request.send().await.unwrap();
        check_error(resp, &[404], &["rule_not_found"])
            .await
            .unwrap();
    }
    let resp = h
        .http
        .get(h.url("/api/rules/dl.hook/dead-letters?limit=0"))
        .send()
        .await
        .unwrap();
    check_error(resp, &[400], &["invalid_query"]).await.unwrap();

    // The rule's consumer is internal: not listed, not found, not creatable by users.
    let resp = h.http.get(h.url("/api/consumers")).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["count"], 0);
    for request in [
        h.http.get(h.url("/api/consumers/rule:dl.hook")),
        h.http
            .get(h.url("/api/consumers/rule:dl.hook/dead-letters")),
        h.http
            .post(h.url("/api/consumers/rule:dl.hook/fetch"))
            .json(&json!({})),
        h.http.delete(h.url("/api/consumers/rule:dl.hook")),
    ] {
        let resp = request.send().await.unwrap();
        check_error(resp, &[404], &["consumer_not_found"])
            .await
            .unwrap();
    }
    let resp = h
        .http
        .put(h.url("/api/consumers/rule:dl.hook"))
        .json(&json!({"filter_subjects": ["hub.>"]}))
        .send()
        .await
        .unwrap();
    check_error(resp, &[422], &["invalid_consumer"])
        .await
        .unwrap();

    // Deleting the rule deletes its dead letters.
    let resp = h
        .http
        .delete(h.url("/api/rules/dl.hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = h
        .http
        .get(h.url("/api/rules/dl.hook/dead-letters"))
        .send()
        .await
        .unwrap();
    check_error(resp, &[404], &["rule_not_found"])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_goes_to_the_dead_letters_at_once() {
    let h = TestHerald::start().await;
    // A receiver that answers 404 to everything.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counting = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counting = counting.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
                counting.fetch_add(1, Ordering::SeqCst);
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    add_rule(
        &h,
        &json!({"id": "refused", "subject_pattern": "hub.r.>", "action": webhook(&url)}),
    )
    .await;
    let event = h.publish("hub.r.x", json!({})).await;
    let dead = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { rule_dead_letters(&h, "refused", "").await["count"] == 1 },
    )
    .await;
    assert!(dead);
    let letter = rule_dead_letters(&h, "refused", "").await["dead_letters"][0].clone();
    assert_eq!(letter["event"]["id"], event["event_id"]);
    assert_eq!(letter["reason"], "term");
    assert_eq!(letter["deliveries"], 1);
    assert!(
        letter["last_error"].as_str().unwrap().contains("404"),
        "{letter}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1, "a 4xx is not retried");
}

/// Two instances on one PostgreSQL database with one webhook rule: every event reaches
/// the receiver once (the instances share the rule's consumer), whichever instance it
/// was published on and whichever added the rule; then one instance is killed while
/// deliveries hang, and the other delivers what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_database_deliver_each_event_once_and_take_over_after_kill_9() {
    let url = herald_store::testing::TestPostgres::shared()
        .create_database()
        .await
        .unwrap();
    let mut a = TestHerald::start_on(Some(&url), &["--hub-id", "a"]).await;
    let b = TestHerald::start_on(Some(&url), &["--hub-id", "b"]).await;
    let receiver = Receiver::start(0).await;
    add_rule(
        &a,
        &json!({"id": "once", "subject_pattern": "hub.once.>", "action": {
            "type": "webhook", "url": receiver.url, "secret": SECRET, "timeout_ms": 1000,
            "max_attempts": 20, "circuit_breaker": {"failure_threshold": 1000}}}),
    )
    .await;
    // b takes the rule in within a few seconds.
    let taken_in = poll_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            b.http
                .get(b.url("/api/rules/once"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    assert!(taken_in, "b takes in the rule a added");

    const EVENTS: usize = 40;
    let mut expected = BTreeSet::new();
    for i in 0..EVENTS {
        let instance = if i % 2 == 0 { &a } else { &b };
        let published = instance.publish("hub.once.x", json!({"i": i})).await;
        expected.insert(published["event_id"].as_str().unwrap().to_owned());
    }
    receiver
        .wait_for_ids(&expected, Duration::from_secs(20))
        .await;
    // Give a second delivery time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_id = attempts_by_id(&receiver);
    assert_eq!(by_id.len(), EVENTS);
    let twice: Vec<_> = by_id.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "each event once in the cluster: {twice:?}"
    );
    let labels = ["rule=\"once\"", "outcome=\"delivered\""];
    let by_a = metric(&a, "herald_rule_actions_total", &labels)
        .await
        .unwrap_or(0.0);
    let by_b = metric(&b, "herald_rule_actions_total", &labels)
        .await
        .unwrap_or(0.0);
    eprintln!("delivered by a: {by_a}, by b: {by_b}");
    assert_eq!(by_a + by_b, EVENTS as f64);

    // The receiver hangs; a is killed with deliveries in flight; b delivers them all
    // (those a held come back after their ack wait).
    receiver.shared.hang.store(true, Ordering::SeqCst);
    let before = receiver.all().len();
    let mut held = BTreeSet::new();
    for i in 0..6 {
        let published = a.publish("hub.once.x", json!({"held": i})).await;
        held.insert(published["event_id"].as_str().unwrap().to_owned());
    }
    let hung = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { receiver.all().len() >= before + 6 },
    )
    .await;
    assert!(hung, "the deliveries are in flight");
    a.kill9().await;
    receiver.shared.hang.store(false, Ordering::SeqCst);
    receiver.wait_for_ids(&held, Duration::from_secs(20)).await;
}

// ---- the webhook guard -----------------------------------------------------------------------

/// The guard on (the harness turns it off for the other tests).
const GUARD_ON: &[(&str, &str)] = &[("HERALD_WEBHOOK_ALLOW_PRIVATE", "false")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_private_literal_addresses_are_refused_when_the_rule_is_made() {
    let h = TestHerald::start_with_env(None, &[], GUARD_ON).await;
    for (url, expected) in [
        ("http://127.0.0.1:9/hook", "127.0.0.1 is a loopback address"),
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        (
            "http://169.254.169.254/latest/meta-data",
            "169.254.169.254 is a cloud metadata address",
        ),
        (
            "http://192.168.1.10:8080/",
            "192.168.1.10 is a private address",
        ),
        (
            "http://100.64.0.1/",
            "100.64.0.1 is a carrier-grade NAT address",
        ),
        ("http://0.0.0.0:9/", "0.0.0.0 is an unspecified address"),
    ] {
        let body = json!({"subject_pattern": "hub.>", "action": webhook(url)});
        let resp = post_rule(&h, &body).await;
        let text = resp.text().await.unwrap();
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["error"]["code"], "invalid_rule", "{url}: {text}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("`action.url`: {expected}"))
                && message.contains("--webhook-allow-private"),
            "{url}: {message}"
        );
        check_error(post_rule(&h, &body).await, &[422], &["invalid_rule"])
            .await
            .unwrap();
    }
    // IPv6 literals are not webhook URLs at all (the guard would refuse [::1] too).
    check_error(
        post_rule(
            &h,
            &json!({"subject_pattern": "hub.>", "action": webhook("http://[::1]:9/")}),
        )
        .await,
        &[422],
        &["invalid_rule"],
    )
    .await
    .unwrap();
    assert_eq!(get_rules(&h).await["count"], 0, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_file_with_a_private_literal_target_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    std::fs::write(
        &path,
        r#"[{"id": "x", "subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://169.254.169.254/"}}]"#,
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(HERALD);
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data")
        .arg(dir.path().join("herald.db"))
        .arg("--rules")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    scrub_env(&mut cmd);
    cmd.env_remove("HERALD_WEBHOOK_ALLOW_PRIVATE");
    let output = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("herald exits")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("169.254.169.254 is a cloud metadata address"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "never listened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused_when_connecting_and_dead_lettered() {
    let h = TestHerald::start_with_env(None, &[], GUARD_ON).await;
    let receiver = Receiver::start(0).await;
    let url = receiver.url.replace("127.0.0.1", "localhost");
    add_rule(
        &h,
        &json!({"id": "to-localhost", "subject_pattern": "hub.g.>", "action": webhook(&url)}),
    )
    .await;
    let event = h.publish("hub.g.x", json!({"n": 1})).await;
    let dead = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { rule_dead_letters(&h, "to-localhost", "").await["count"] == 1 },
    )
    .await;
    assert!(dead, "the event went to the rule's dead letters");
    let letter = rule_dead_letters(&h, "to-localhost", "").await["dead_letters"][0].clone();
    assert_eq!(letter["event"]["id"], event["event_id"]);
    assert_eq!(letter["reason"], "term", "not retried: {letter}");
    assert_eq!(letter["deliveries"], 1);
    let reason = letter["last_error"].as_str().unwrap();
    assert!(
        reason.starts_with("localhost resolves only to forbidden addresses")
            && reason.contains("--webhook-allow-private"),
        "{reason}"
    );
    assert!(receiver.all().is_empty(), "nothing reached the receiver");
    let rule = get_rule(&h, "to-localhost").await;
    assert_eq!(rule["stats"]["failed"], 1, "{rule}");
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_webhook_allow_private_loopback_deliveries_work() {
    let h = TestHerald::start_with_env(None, &["--webhook-allow-private"], GUARD_ON).await;
    let receiver = Receiver::start(0).await;
    for (id, url) in [
        ("literal", receiver.url.clone()),
        ("name", receiver.url.replace("127.0.0.1", "localhost")),
    ] {
        add_rule(
            &h,
            &json!({"id": id, "subject_pattern": "hub.a.>", "action": webhook(&url)}),
        )
        .await;
    }
    let event = h.publish("hub.a.x", json!({})).await;
    let ok = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { receiver.delivered().len() == 2 },
    )
    .await;
    assert!(ok, "both rules delivered: {:?}", receiver.all().len());
    assert!(receiver
        .delivered()
        .iter()
        .all(|r| r.json()["id"] == event["event_id"]));
}
