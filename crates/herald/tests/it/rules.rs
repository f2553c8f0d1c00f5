//! Routing rules through the binary: `GET/POST /api/rules`, `GET/DELETE
//! /api/rules/{id}`, bad input, secrets never shown, webhook deliveries of events
//! published over HTTP (to a small HTTP/1.1 receiver written here on a loopback port),
//! the `--rules` file, and delivery resuming after a restart and after `kill -9`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::harness::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---- a webhook receiver --------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    status: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

struct Shared {
    /// 500 to this many first attempts of each `webhook-id`.
    fail_first: usize,
    /// Accept the request but never answer.
    hang: AtomicBool,
    attempts: Mutex<HashMap<String, usize>>,
    received: Mutex<Vec<Received>>,
}

/// An HTTP/1.1 server on 127.0.0.1 that records every POST (keep-alive supported).
struct Receiver {
    url: String,
    shared: Arc<Shared>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            fail_first,
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

    fn delivered(&self) -> Vec<Received> {
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
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        if shared.hang.load(Ordering::SeqCst) {
            shared.received.lock().unwrap().push(Received {
                headers,
                body,
                status: 0,
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
        let status = if attempt <= shared.fail_first {
            500
        } else {
            200
        };
        shared.received.lock().unwrap().push(Received {
            headers,
            body,
            status,
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
    assert_keys(&rule["stats"], &["delivered", "failed", "retries"], "stats");
    match rule["action"]["type"].as_str() {
        Some("webhook") => assert_keys(
            &rule["action"],
            &["type", "url", "secret_set", "timeout_ms", "max_attempts"],
            "webhook action",
        ),
        Some("republish") => assert_keys(&rule["action"], &["type", "subject"], "republish action"),
        other => panic!("unexpected action type {other:?}: {rule}"),
    }
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
            "secret_set": true, "timeout_ms": 60000, "max_attempts": 10})
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
    let rule = add_rule(
        &h,
        &json!({"id": "hook", "subject_pattern": "hub.local-hub.project.*", "action": webhook(&receiver.url)}),
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
    let expected_id = format!("hook:{event_id}");
    for request in &all {
        assert_eq!(request.headers["webhook-id"], expected_id);
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
            let rule: Value = h
                .http
                .get(h.url("/api/rules/hook"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            rule["stats"] == json!({"delivered": 1, "failed": 0, "retries": 1})
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
