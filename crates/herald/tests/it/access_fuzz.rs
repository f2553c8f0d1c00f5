//! Adversarial, randomized cross-tenant requests through the binary.
//!
//! With `HERALD_AUTH=required`, two tenants share a hub: `alpha7` (A) and `bravo7` (B).
//! Each has events whose payloads carry unique markers, a consumer with a delivery in
//! flight and a dead letter, and a republish rule. Then 10,000 requests, generated from
//! a seeded RNG, go to every operation `/openapi.json` lists (bodies generated from its
//! schemas) and every JSON-RPC method `/rpc/methods` lists, mostly with B's key (some
//! with no key, a garbage key, or A's revoked key), their paths, queries and bodies
//! filled with A's event ids, consumer and rule names, ack ids, seqs, subjects and
//! wildcard patterns. Every answer must be documented and below 500 and must show
//! nothing of A beyond an echo of what B sent; at the end A's events, consumer, dead
//! letters and rule are as they were, and nothing B sent is stored in A's space. A
//! WebSocket part checks that B's streams (`>`, `hub.*.>`, `hub.alpha7.>`, replayed from
//! seq 0) and queue groups see nothing of A.
//!
//! `HERALD_FUZZ_SEED=<u64>` runs another sequence; failures name the seed and the
//! request's index, and the same seed generates the same requests.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::harness::*;

const ADMIN: &str = "admin-secret-for-tests-0123456789";
const REQUESTS: usize = 10_000;
const CONCURRENCY: usize = 4;
const DEFAULT_SEED: u64 = 0x4845_5241_4c44;
/// A's tenant id: every name, subject and id of A contains it, so one substring finds
/// them all in an answer.
const A: &str = "alpha7";
const B: &str = "bravo7";
/// Marks a problem already reported (see where it is raised); those are asserted last,
/// so that every other check still runs.
/// What one tenant made during the setup.
#[derive(Debug, Clone)]
struct Tenant {
    id: String,
    key: String,
    key_id: String,
    subjects: Vec<String>,
    event_ids: Vec<String>,
    correlation_ids: Vec<String>,
    seqs: Vec<u64>,
    markers: Vec<String>,
    consumer: String,
    rule: String,
    ack_ids: Vec<String>,
}

/// A request helper bound to one key.
struct As<'a> {
    herald: &'a TestHerald,
    key: &'a str,
}

impl As<'_> {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut builder = self
            .herald
            .http
            .request(method, self.herald.url(path))
            .bearer_auth(self.key);
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

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let (status, answer) = self.send(method.clone(), path, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }
}

/// Creates tenant `id` (owning `hub.<id>.>`), a key, events, a consumer with one delivery
/// in flight and one dead letter, and a republish rule.
async fn make_tenant(h: &TestHerald, id: &str) -> Tenant {
    let admin = As {
        herald: h,
        key: ADMIN,
    };
    admin
        .ok(
            reqwest::Method::POST,
            "/api/tenants",
            json!({"id": id, "subjects": [format!("hub.{id}.>")]}),
        )
        .await;
    let made = admin
        .ok(reqwest::Method::POST, "/api/keys", json!({"tenant": id}))
        .await;
    let key = made["key"].as_str().unwrap().to_owned();
    let me = As {
        herald: h,
        key: &key,
    };
    let subjects: Vec<String> = ["orders.created", "orders.paid", "users.signed_up"]
        .iter()
        .map(|s| format!("hub.{id}.{s}"))
        .collect();
    let mut tenant = Tenant {
        id: id.to_owned(),
        key: key.clone(),
        key_id: made["id"].as_str().unwrap().to_owned(),
        subjects: subjects.clone(),
        event_ids: Vec::new(),
        correlation_ids: Vec::new(),
        seqs: Vec::new(),
        markers: Vec::new(),
        consumer: format!("{id}-worker"),
        rule: format!("{id}-copy"),
        ack_ids: Vec::new(),
    };
    for i in 0..6 {
        let marker = format!("{}-MARKER-{}", id.to_uppercase(), Uuid::new_v4().simple());
        let cid = Uuid::new_v4().to_string();
        let answer = me
            .ok(
                reqwest::Method::POST,
                "/api/events",
                json!({"subject": subjects[i % subjects.len()], "correlation_id": cid,
                       "payload": {"marker": marker, "n": i}}),
            )
            .await;
        tenant
            .event_ids
            .push(answer["event_id"].as_str().unwrap().to_owned());
        tenant.seqs.push(answer["seq"].as_u64().unwrap());
        tenant.correlation_ids.push(cid);
        tenant.markers.push(marker);
    }
    me.ok(
        reqwest::Method::PUT,
        &format!("/api/consumers/{}", tenant.consumer),
        json!({"filter_subjects": [format!("hub.{id}.>")], "ack_wait_ms": 3_600_000,
               "deliver_policy": "all"}),
    )
    .await;
    let fetched = me
        .ok(
            reqwest::Method::POST,
            &format!("/api/consumers/{}/fetch", tenant.consumer),
            json!({"batch": 3}),
        )
        .await;
    for message in fetched["messages"].as_array().unwrap() {
        tenant
            .ack_ids
            .push(message["ack_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(tenant.ack_ids.len(), 3, "{fetched}");
    me.ok(
        reqwest::Method::POST,
        &format!("/api/consumers/{}/term", tenant.consumer),
        json!({"ack_ids": [tenant.ack_ids[0]], "reason": "setup"}),
    )
    .await;
    me.ok(
        reqwest::Method::POST,
        "/api/rules",
        json!({"id": tenant.rule, "subject_pattern": format!("hub.{id}.orders.>"),
               "action": {"type": "republish", "subject": format!("hub.{id}.copies")}}),
    )
    .await;
    tenant
}

/// What A has, read with A's key (rule stats left out: its attempts go on).
async fn snapshot(h: &TestHerald, a: &Tenant) -> Value {
    let me = As {
        herald: h,
        key: &a.key,
    };
    let mut rules = me.get("/api/rules").await;
    for rule in rules["rules"].as_array_mut().unwrap() {
        rule.as_object_mut().unwrap().remove("stats");
    }
    json!({
        "events": me.get(&format!("/api/events?subject=hub.{}.%3E&limit=1000", a.id)).await,
        "consumers": me.get("/api/consumers").await,
        "consumer": me.get(&format!("/api/consumers/{}", a.consumer)).await,
        "dead_letters": me.get(&format!("/api/consumers/{}/dead-letters", a.consumer)).await,
        "rules": rules,
    })
}

// ---- the operations ---------------------------------------------------------------

/// One operation of the OpenAPI document.
#[derive(Debug)]
struct Op {
    method: reqwest::Method,
    template: String,
    query: Vec<String>,
    /// Content type and schema of each documented body.
    bodies: Vec<(String, Value)>,
    statuses: BTreeSet<u16>,
}

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let method = match method.as_str() {
                "get" => reqwest::Method::GET,
                "post" => reqwest::Method::POST,
                "put" => reqwest::Method::PUT,
                "delete" => reqwest::Method::DELETE,
                "patch" => reqwest::Method::PATCH,
                _ => continue,
            };
            let query = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            let bodies = op["requestBody"]["content"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(ct, media)| (ct.clone(), media["schema"].clone()))
                .collect();
            let statuses = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|s| s.parse().expect("numeric status"))
                .collect();
            ops.push(Op {
                method,
                template: template.clone(),
                query,
                bodies,
                statuses,
            });
        }
    }
    ops
}

/// One JSON-RPC method and its params (name, type, required).
#[derive(Debug)]
struct RpcMethod {
    name: String,
    params: Vec<(String, String, bool)>,
}

fn rpc_methods(list: &Value) -> Vec<RpcMethod> {
    list["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .map(|m| RpcMethod {
            name: m["name"].as_str().unwrap().to_owned(),
            params: m["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap().to_owned(),
                        p["type"].as_str().unwrap().to_owned(),
                        p["required"].as_bool().unwrap(),
                    )
                })
                .collect(),
        })
        .collect()
}

// ---- the generator ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Auth {
    B,
    BApiKeyHeader,
    None,
    Garbage,
    ARevoked,
    AMistyped,
}

/// One generated request and what is needed to judge its answer.
struct Request {
    index: usize,
    op: usize,
    method: reqwest::Method,
    path_and_query: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    auth: Auth,
    /// A path parameter names one of A's things: no success is possible.
    targets_a: bool,
    /// The answer lists things (events, consumers, rules, dead letters): no echo
    /// excuses anything of A in it.
    listing: bool,
    /// Everything B sent, as text, and each string B sent.
    sent_text: String,
    sent_strings: HashSet<String>,
}

impl Request {
    fn describe(&self) -> String {
        let body = self
            .body
            .as_ref()
            .map(|b| {
                String::from_utf8_lossy(b)
                    .chars()
                    .take(400)
                    .collect::<String>()
            })
            .unwrap_or_default();
        format!(
            "#{} {:?} {} {} headers {:?} body {body}",
            self.index, self.auth, self.method, self.path_and_query, self.headers
        )
    }
}

struct Gen<'a> {
    rng: TestRng,
    a: &'a Tenant,
    b: &'a Tenant,
    a_revoked_key: &'a str,
    a_revoked_key_id: &'a str,
    doc: &'a Value,
    /// Set while generating when a value of A's is put in a path.
    targets_a: bool,
    /// Strings put into the request so far.
    sent: Vec<String>,
    b_publishes: u64,
}

/// Percent-encodes a path segment or query value.
fn pct(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Gen<'_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())].clone()
    }

    fn noted(&mut self, value: String) -> String {
        self.sent.push(value.clone());
        value
    }

    /// Text that is stored as sent (descriptions, CloudEvent attributes): never
    /// anything of A's, so that B's own data never looks like a leak.
    fn free_text(&mut self) -> String {
        let choices = [
            "fuzz".to_owned(),
            String::new(),
            "bravo7 note".to_owned(),
            "hub.bravo7.note".to_owned(),
            ">".to_owned(),
            "*".to_owned(),
            "%".to_owned(),
            "é ünïcødé".to_owned(),
            "a".repeat(self.rng.random_range(1..300)),
            format!("t-{}", self.rng.random::<u32>()),
        ];
        let text = self.pick(&choices);
        self.noted(text)
    }

    fn uuid(&mut self) -> String {
        Uuid::from_u128(self.rng.random::<u128>()).to_string()
    }

    fn b_subject(&mut self) -> String {
        self.b_publishes += 1;
        let tail = self.pick(&["orders.created", "fuzz.x", "live", "a.b.c.d"]);
        format!("hub.{B}.{tail}")
    }

    /// A literal subject to publish to.
    fn subject(&mut self) -> String {
        let s = match self.rng.random_range(0..10) {
            0..=3 => self.pick(&self.a.subjects.clone()),
            4..=7 => self.b_subject(),
            8 => self.pattern(),
            _ => self
                .pick(&[
                    "",
                    "hub..x",
                    &format!("hub.{A}.orders.*"),
                    "hub.charlie.x",
                    &format!("hub.{A}"),
                    &format!("hub.{B}.\u{202e}x"),
                ])
                .to_owned(),
        };
        self.noted(s)
    }

    /// A subject pattern to filter with.
    fn pattern(&mut self) -> String {
        let s = self
            .pick(&[
                ">",
                "hub.>",
                "hub.*.>",
                "*.*.*",
                "hub.%.>",
                "hub.alpha7.>",
                "hub.alpha7.orders.*",
                "hub.alpha7.orders.created",
                "hub.*.orders.created",
                "hub.*.*",
                "hub.bravo7.>",
                "hub.bravo7.orders.*",
                "hub.alpha7.*.>",
                "*.alpha7.>",
                "hub.>.x",
                "",
            ])
            .to_owned();
        self.noted(s)
    }

    fn event_id(&mut self) -> String {
        let s = match self.rng.random_range(0..20) {
            0..=8 => {
                self.targets_a = true;
                self.pick(&self.a.event_ids.clone())
            }
            9..=12 => self.pick(&self.b.event_ids.clone()),
            13 => self.pick(&self.a.correlation_ids.clone()),
            14 | 15 => self.uuid(),
            16 => Uuid::nil().to_string(),
            17 => {
                self.targets_a = true;
                self.pick(&self.a.event_ids.clone()).to_uppercase()
            }
            _ => self.pick(&["not-a-uuid", "0", "%00", "x y"]).to_owned(),
        };
        self.noted(s)
    }

    /// A consumer name to act on (A's among them).
    fn consumer(&mut self) -> String {
        let s = match self.rng.random_range(0..20) {
            0..=7 => {
                self.targets_a = true;
                self.a.consumer.clone()
            }
            8 | 9 => {
                self.targets_a = true;
                format!("rule:{}", self.a.rule)
            }
            10..=13 => self.b.consumer.clone(),
            14 => format!("rule:{}", self.b.rule),
            15 | 16 => format!("{B}-c{}", self.rng.random_range(0..4)),
            // (No "" or "..": the URL would name another route.)
            _ => self
                .pick(&["rule:", "x y", "ALPHA7-WORKER", "%2e%2e"])
                .to_owned(),
        };
        self.noted(s)
    }

    /// A consumer name to create: never A's (B may reuse it; that is tested on its own).
    fn new_consumer(&mut self) -> String {
        let s = match self.rng.random_range(0..10) {
            0..=2 => self.b.consumer.clone(),
            3..=7 => format!("{B}-c{}", self.rng.random_range(0..4)),
            8 => format!("rule:{}", self.b.rule),
            _ => self.pick(&["rule:x", "x y", "%2e%2e"]).to_owned(),
        };
        self.noted(s)
    }

    fn rule(&mut self) -> String {
        let s = match self.rng.random_range(0..10) {
            0..=4 => {
                self.targets_a = true;
                self.a.rule.clone()
            }
            5 | 6 => self.b.rule.clone(),
            7 => format!("{B}-r{}", self.rng.random_range(0..4)),
            _ => self
                .pick(&["rule", "x y", "%2e%2e", "ALPHA7-COPY"])
                .to_owned(),
        };
        self.noted(s)
    }

    fn new_rule(&mut self) -> String {
        let s = match self.rng.random_range(0..10) {
            0..=6 => format!("{B}-r{}", self.rng.random_range(0..4)),
            7 => self.b.rule.clone(),
            _ => self.pick(&["rule", "x y", ""]).to_owned(),
        };
        self.noted(s)
    }

    fn key_id(&mut self) -> String {
        let s = match self.rng.random_range(0..10) {
            0..=3 => {
                self.targets_a = true;
                self.a.key_id.clone()
            }
            4 | 5 => {
                self.targets_a = true;
                self.a_revoked_key_id.to_owned()
            }
            6 | 7 => self.b.key_id.clone(),
            _ => format!("{:016x}", self.rng.random::<u64>()),
        };
        self.noted(s)
    }

    fn tenant(&mut self) -> String {
        let s = match self.rng.random_range(0..10) {
            0..=4 => {
                self.targets_a = true;
                A.to_owned()
            }
            5..=7 => B.to_owned(),
            _ => self.pick(&["rule", "charlie", "ALPHA7"]).to_owned(),
        };
        self.noted(s)
    }

    fn seq(&mut self) -> i64 {
        match self.rng.random_range(0..10) {
            0..=4 => self.pick(&self.a.seqs.clone()) as i64,
            5 | 6 => self.pick(&self.b.seqs.clone()) as i64,
            7 => self.rng.random_range(0..100),
            8 => i64::MAX,
            _ => self.pick(&[0, -1, 1 << 53]),
        }
    }

    fn ack_id(&mut self) -> String {
        let s = match self.rng.random_range(0..10) {
            0..=4 => self.pick(&self.a.ack_ids.clone()),
            5 | 6 => self.pick(&self.b.ack_ids.clone()),
            7 => self.pick(&self.a.event_ids.clone()),
            _ => self.pick(&["", "1.1.0", "x", "9999.1.deadbeef"]).to_owned(),
        };
        self.noted(s)
    }

    fn correlation_id(&mut self) -> String {
        let s = match self.rng.random_range(0..10) {
            0..=4 => self.pick(&self.a.correlation_ids.clone()),
            5 | 6 => self.pick(&self.b.correlation_ids.clone()),
            7 | 8 => self.uuid(),
            _ => "not-a-uuid".to_owned(),
        };
        self.noted(s)
    }

    fn instant(&mut self) -> String {
        let s = self
            .pick(&[
                "2020-01-01T00:00:00Z",
                "2099-01-01T00:00:00Z",
                "2026-12-06T08:00:00+01:00",
                "yesterday",
                "",
            ])
            .to_owned();
        self.noted(s)
    }

    /// B's own payload: never anything of A's.
    fn payload(&mut self) -> Value {
        match self.rng.random_range(0..10) {
            0..=6 => json!({"fuzz": self.rng.random::<u32>(), "note": self.free_text()}),
            7 => json!({}),
            8 => json!({"nested": {"deeper": [1, 2, {"x": self.free_text()}]}}),
            _ => json!(self.free_text()),
        }
    }

    fn int_for(&mut self, name: &str, schema: &Value) -> Value {
        match name {
            "wait_ms" => json!(self.rng.random_range(0..50)),
            "seq" | "after_seq" | "opt_start_seq" | "seqs" => json!(self.seq()),
            "limit" | "batch" | "max_in_flight" => {
                json!(self.pick(&[1, 2, 10, 100, 1000, 0, 1001, -1]))
            }
            _ => {
                let min = schema["minimum"].as_i64();
                let max = schema["maximum"].as_i64();
                match (min, max, self.chance(0.8)) {
                    (Some(lo), Some(hi), true) if lo <= hi => {
                        json!(self
                            .rng
                            .random_range(lo..=hi.min(lo.saturating_add(100_000))))
                    }
                    _ => json!(self.pick(&[0i64, 1, 5, -1, 100, 1 << 40])),
                }
            }
        }
    }

    /// A string for a member or parameter called `name`, inside schema `context`.
    fn string_for(&mut self, name: &str, context: &str, schema: &Value) -> Value {
        let stored_as_sent = matches!(context, "CloudEvent" | "LegacyPublish");
        let s = match name {
            "subject" if stored_as_sent => self.free_text(),
            "subject" | "topic" | "event_type" | "heraldsubject" if context != "pattern" => {
                self.subject()
            }
            "subject" | "subject_pattern" | "filter_subjects" => self.pattern(),
            "type" if context == "CloudEvent" => self.subject(),
            "id" if context == "RuleRequest" => self.new_rule(),
            "id" if matches!(context, "CloudEvent" | "LegacyPublish" | "RpcRequest") => {
                self.free_text()
            }
            "id" | "event_id" => self.event_id(),
            "name" if context == "consumer.put" => self.new_consumer(),
            "name" => self.consumer(),
            "ack_ids" => self.ack_id(),
            "correlation_id" | "correlationid" if !stored_as_sent || self.chance(0.5) => {
                self.correlation_id()
            }
            "tenant" => self.tenant(),
            "since" | "until" | "opt_start_time" | "time" => self.instant(),
            "url" => {
                let url = self.pick(&[
                    "http://127.0.0.1:1/hook",
                    "https://example.invalid/hook",
                    "http://169.254.169.254/latest",
                    "not a url",
                ]);
                self.noted(url.to_owned())
            }
            "specversion" => self.pick(&["1.0", "0.3"]).to_owned(),
            "deliver_policy" => self
                .pick(&["all", "new", "by_start_seq", "by_start_time", "last"])
                .to_owned(),
            "jsonrpc" => "2.0".to_owned(),
            _ => match schema["enum"].as_array() {
                Some(values) if !values.is_empty() && self.chance(0.9) => {
                    return self.pick(values);
                }
                _ => self.free_text(),
            },
        };
        json!(s)
    }

    /// A value for `schema` (a member or parameter called `name`, inside `context`).
    fn value(&mut self, schema: &Value, name: &str, context: &str, depth: u32) -> Value {
        if depth > 6 {
            return json!({});
        }
        if self.chance(0.02) {
            // The wrong type altogether.
            return self.pick(&[json!(42), json!("x"), json!([]), Value::Null, json!(true)]);
        }
        if let Some(reference) = schema["$ref"].as_str() {
            let target = reference.rsplit('/').next().unwrap_or_default().to_owned();
            return match target.as_str() {
                "Subject" if context == "pattern" => json!(self.pattern()),
                "Subject" => json!(self.subject()),
                "SubjectPattern" => json!(self.pattern()),
                "EventId" => json!(self.event_id()),
                "RuleId" if context == "RuleRequest" => json!(self.new_rule()),
                "RuleId" => json!(self.rule()),
                "ConsumerName" => json!(self.consumer()),
                "CorrelationId" => json!(self.correlation_id()),
                "Instant" => json!(self.instant()),
                "SeqParam" | "u64" => json!(self.seq()),
                _ => {
                    let resolved = self.doc["components"]["schemas"][&target].clone();
                    assert!(!resolved.is_null(), "unresolved {reference}");
                    self.value(&resolved, name, &target, depth + 1)
                }
            };
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(choices) = schema[key].as_array() {
                let non_null: Vec<Value> = choices
                    .iter()
                    .filter(|c| c["type"] != "null")
                    .cloned()
                    .collect();
                let choice = if !non_null.is_empty() && self.chance(0.95) {
                    self.pick(&non_null)
                } else {
                    self.pick(choices)
                };
                return self.value(&choice, name, context, depth + 1);
            }
        }
        let types: Vec<String> = match &schema["type"] {
            Value::String(t) => vec![t.clone()],
            Value::Array(ts) => ts
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
            _ if schema["properties"].is_object() => vec!["object".to_owned()],
            _ => vec![],
        };
        let non_null: Vec<String> = types.iter().filter(|t| *t != "null").cloned().collect();
        let ty = if non_null.is_empty() || self.chance(0.03) {
            types.first().cloned().unwrap_or_default()
        } else {
            self.pick(&non_null)
        };
        match ty.as_str() {
            "null" => Value::Null,
            "boolean" => json!(self.chance(0.5)),
            "integer" | "number" => self.int_for(name, schema),
            "string" => self.string_for(name, context, schema),
            "array" => {
                let n = match name {
                    "filter_subjects" | "events" => self.rng.random_range(1..4),
                    _ => self.rng.random_range(0..4),
                };
                let items = schema["items"].clone();
                (0..n)
                    .map(|_| self.value(&items, name, context, depth + 1))
                    .collect()
            }
            "object" if !matches!(name, "payload" | "data") => {
                let mut object = Map::new();
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let properties = schema["properties"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                if properties.is_empty() {
                    return self.payload();
                }
                for (member, member_schema) in &properties {
                    let wanted = if required.contains(&member.as_str()) {
                        0.95
                    } else {
                        0.5
                    };
                    if self.chance(wanted) {
                        let v = self.value(member_schema, member, context, depth + 1);
                        object.insert(member.clone(), v);
                    }
                }
                if context == "CloudEvent" && self.chance(0.5) {
                    // The Herald subject; `type` is then only an attribute, stored as
                    // sent, so it must not name A's space (B's own event would).
                    object.insert("heraldsubject".into(), json!(self.subject()));
                    object.insert("type".into(), json!("com.example.fuzz"));
                }
                if self.chance(0.03) {
                    object.insert("unexpected".into(), json!(1));
                }
                Value::Object(object)
            }
            // A payload, CloudEvent data, or a member the document leaves open.
            _ => self.payload(),
        }
    }

    fn rpc_param(&mut self, method: &str, name: &str, ty: &str) -> Value {
        let context = match method {
            "consumer.put" => "consumer.put",
            "bus.subscribe" | "bus.query" => "pattern",
            _ => "rpc",
        };
        match (ty, name) {
            ("string", "subject") if context == "pattern" => json!(self.pattern()),
            ("string", _) => self.string_for(name, context, &Value::Null),
            ("integer", _) => self.int_for(name, &Value::Null),
            ("object", _) => self.payload(),
            ("boolean", _) => json!(self.chance(0.5)),
            ("array", "events") => (0..self.rng.random_range(1..4))
                .map(|_| {
                    let mut event = json!({"subject": self.subject(), "payload": self.payload()});
                    if self.chance(0.3) {
                        event["id"] = json!(self.event_id());
                    }
                    event
                })
                .collect(),
            ("array", "filter_subjects") => (0..self.rng.random_range(1..3))
                .map(|_| json!(self.pattern()))
                .collect(),
            ("array", "ack_ids") => (0..self.rng.random_range(0..4))
                .map(|_| json!(self.ack_id()))
                .collect(),
            ("array", _) => (0..self.rng.random_range(0..3))
                .map(|_| json!(self.seq()))
                .collect(),
            _ => json!(self.free_text()),
        }
    }

    fn rpc_call(&mut self, methods: &[RpcMethod]) -> (Value, bool) {
        let listing;
        let call = if self.chance(0.03) {
            listing = false;
            json!({"jsonrpc": "2.0", "method": "nope.missing", "params": {}})
        } else {
            let method = &methods[self.rng.random_range(0..methods.len())];
            listing = matches!(
                method.name.as_str(),
                "bus.subscribe"
                    | "bus.query"
                    | "consumer.list"
                    | "consumer.fetch"
                    | "consumer.dead_letters"
            );
            let mut params = Map::new();
            for (name, ty, required) in &method.params {
                if self.chance(if *required { 0.95 } else { 0.5 }) {
                    let v = self.rpc_param(&method.name, name, ty);
                    params.insert(name.clone(), v);
                }
            }
            let params = if self.chance(0.05) {
                Value::Array(params.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(params)
            };
            json!({"jsonrpc": "2.0", "method": method.name, "params": params})
        };
        let mut call = call;
        if self.chance(0.93) {
            call["id"] = json!(self.rng.random_range(0..100_000));
        }
        (call, listing)
    }

    fn request(
        &mut self,
        index: usize,
        op_index: usize,
        op: &Op,
        methods: &[RpcMethod],
    ) -> Request {
        self.targets_a = false;
        self.sent.clear();
        let put_consumer =
            op.method == reqwest::Method::PUT && op.template == "/api/consumers/{name}";
        let mut path = String::new();
        for segment in op.template.split('/').skip(1) {
            path.push('/');
            let value = match segment {
                "{id}" if op.template.starts_with("/api/events/") => self.event_id(),
                "{name}" if put_consumer => self.new_consumer(),
                "{name}" => self.consumer(),
                "{id}" if op.template.starts_with("/api/rules/") => self.rule(),
                "{id}" if op.template.starts_with("/api/keys/") => self.key_id(),
                "{id}" if op.template.starts_with("/api/tenants/") => self.tenant(),
                "{seq}" if self.chance(0.95) => self.seq().to_string(),
                s if s.starts_with('{') => self.pick(&["1", "x", "0", "-1"]).to_owned(),
                literal => {
                    path.push_str(literal);
                    continue;
                }
            };
            path.push_str(&pct(&value));
        }
        let mut query = Vec::new();
        for name in &op.query {
            if !self.chance(0.5) {
                continue;
            }
            let value = match name.as_str() {
                "subject" => self.pattern(),
                "since" | "until" => self.instant(),
                "correlation_id" => self.correlation_id(),
                "after_seq" | "from_seq" => self.seq().to_string(),
                "limit" | "max_in_flight" | "after_id" => {
                    self.int_for(name, &Value::Null).to_string()
                }
                "queue" => {
                    self.pick(&["workers".to_owned(), self.b.consumer.clone(), String::new()])
                }
                _ => self.free_text(),
            };
            query.push(format!("{name}={}", pct(&value)));
        }
        if self.chance(0.03) {
            query.push("bogus=1".into());
        }
        if self.chance(0.02) && !query.is_empty() {
            let again = query[0].clone();
            query.push(again);
        }
        let mut headers = Vec::new();
        if self.chance(0.1) {
            let cid = self.correlation_id();
            headers.push(("x-correlation-id".to_owned(), cid));
        }
        let mut listing = op.method == reqwest::Method::GET
            && (matches!(
                op.template.as_str(),
                "/api/events" | "/api/consumers" | "/api/rules"
            ) || op.template.ends_with("/dead-letters"))
            || op.template.ends_with("/fetch");
        let mut body = None;
        if op.template == "/rpc" && op.method == reqwest::Method::POST {
            let value = if self.chance(0.1) {
                let mut calls = Vec::new();
                for _ in 0..self.rng.random_range(1..4) {
                    let (call, l) = self.rpc_call(methods);
                    listing |= l;
                    calls.push(call);
                }
                Value::Array(calls)
            } else {
                let (call, l) = self.rpc_call(methods);
                listing |= l;
                call
            };
            headers.push(("content-type".into(), "application/json".into()));
            body = Some(value.to_string().into_bytes());
        } else if op.template == "/api/events"
            && op.method == reqwest::Method::POST
            && self.chance(0.05)
        {
            // A binary-mode CloudEvent: attributes in headers.
            let with_herald_subject = self.chance(0.5);
            let ty = if with_herald_subject {
                "com.example.fuzz".to_owned()
            } else {
                self.subject()
            };
            let id = self.free_text();
            headers.extend([
                ("ce-specversion".into(), "1.0".into()),
                (
                    "ce-id".into(),
                    format!("fuzz-{}-{}", id.len(), self.rng.random::<u32>()),
                ),
                ("ce-source".into(), "/fuzz".into()),
                ("ce-type".into(), ty),
                ("content-type".into(), "application/json".into()),
            ]);
            if with_herald_subject {
                let subject = self.subject();
                headers.push(("ce-heraldsubject".into(), subject));
            }
            body = Some(self.payload().to_string().into_bytes());
        } else if !op.bodies.is_empty() {
            let (content_type, schema) = self.pick(&op.bodies);
            let value = self.value(&schema, "", "", 0);
            headers.push(("content-type".into(), content_type));
            body = Some(value.to_string().into_bytes());
        }
        if self.chance(0.02) {
            let garbage = self.pick(&["{", "null", "[]", "\u{0}\u{1}", "{\"a\":1,\"a\":2}"]);
            body = Some(garbage.as_bytes().to_vec());
            if self.chance(0.5) {
                headers.push(("content-type".into(), "application/json".into()));
            }
        }
        let auth = match self.rng.random_range(0..100) {
            0..=84 => Auth::B,
            85..=87 => Auth::BApiKeyHeader,
            88..=90 => Auth::None,
            91..=93 => Auth::Garbage,
            94..=96 => Auth::ARevoked,
            _ => Auth::AMistyped,
        };
        match auth {
            Auth::B => headers.push(("authorization".into(), format!("Bearer {}", self.b.key))),
            Auth::BApiKeyHeader => headers.push(("x-api-key".into(), self.b.key.clone())),
            Auth::None => {}
            Auth::Garbage => {
                let (id, secret) = (self.rng.random::<u64>(), self.rng.random::<u128>());
                let garbage = self.pick(&[
                    format!("Bearer hrld_{id:016x}_{secret:032x}"),
                    "Bearer ".to_owned(),
                    "Basic YWRtaW46YWRtaW4=".to_owned(),
                    format!("Bearer {}", &ADMIN[..ADMIN.len() - 1]),
                ]);
                headers.push(("authorization".into(), garbage));
            }
            Auth::ARevoked => headers.push((
                "authorization".into(),
                format!("Bearer {}", self.a_revoked_key),
            )),
            Auth::AMistyped => {
                let mut key = self.a.key.clone();
                let last = key.pop().unwrap();
                key.push(if last == '0' { '1' } else { '0' });
                headers.push(("authorization".into(), format!("Bearer {key}")));
            }
        }
        let path_and_query = if query.is_empty() {
            path
        } else {
            format!("{path}?{}", query.join("&"))
        };
        let body_text = body
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let mut sent_text = format!("{path_and_query}\n{body_text}\n");
        for (name, value) in &headers {
            sent_text.push_str(&format!("{name}: {value}\n"));
        }
        for s in &self.sent {
            sent_text.push_str(s);
            sent_text.push('\n');
        }
        Request {
            index,
            op: op_index,
            method: op.method.clone(),
            path_and_query,
            headers,
            body,
            auth,
            targets_a: self.targets_a,
            listing,
            sent_text,
            sent_strings: self.sent.iter().cloned().collect(),
        }
    }
}

// ---- judging answers --------------------------------------------------------------

/// What must never show in B's answers, or only as an echo of what B sent.
struct Secrets {
    /// Never, whatever B sent: A's payload markers and A's live key.
    never: Vec<String>,
    /// Only as an echo: A's tenant id (in every subject and name of A's), event ids
    /// and key ids.
    echoed_only: Vec<String>,
}

/// Calls `leaf` with every string and member name in `value`, and whether it sits
/// under an `error` member.
fn leaves(value: &Value, under_error: bool, leaf: &mut impl FnMut(&str, bool)) {
    match value {
        Value::String(s) => leaf(s, under_error),
        Value::Array(items) => items.iter().for_each(|v| leaves(v, under_error, leaf)),
        Value::Object(members) => {
            for (name, v) in members {
                leaf(name, under_error);
                leaves(v, under_error || name == "error", leaf);
            }
        }
        _ => {}
    }
}

/// Every `tenant_id` member in `value`.
fn tenant_ids<'v>(value: &'v Value, out: &mut Vec<&'v Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| tenant_ids(v, out)),
        Value::Object(members) => {
            for (name, v) in members {
                if name == "tenant_id" {
                    out.push(v);
                }
                tenant_ids(v, out);
            }
        }
        _ => {}
    }
}

fn judge(request: &Request, op: &Op, status: u16, body: &str, secrets: &Secrets) -> Vec<String> {
    let mut problems = Vec::new();
    let as_b = matches!(request.auth, Auth::B | Auth::BApiKeyHeader);
    if status >= 500 {
        problems.push(format!("a {status}"));
    }
    if !op.statuses.contains(&status) {
        problems.push(format!(
            "status {status} is not documented ({:?})",
            op.statuses
        ));
    }
    if !as_b {
        let open = op.template.starts_with("/health");
        if (open && !matches!(status, 200 | 503)) || (!open && status != 401) {
            problems.push(format!("{status} without a valid key"));
        }
    }
    let is_rpc = op.template == "/rpc";
    if as_b && request.targets_a && !is_rpc && (200..300).contains(&status) {
        problems.push(format!("{status}: a success on something of tenant {A}'s"));
    }
    let json: Option<Value> = serde_json::from_str(body).ok();
    if as_b && request.targets_a && is_rpc {
        let single_call: Option<Value> = request
            .body
            .as_ref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .filter(|v: &Value| v.is_object() && v.get("id").is_some());
        if single_call.is_some() {
            if let Some(answer) = &json {
                if answer.get("error").is_none() {
                    problems.push(format!("a JSON-RPC result on something of tenant {A}'s"));
                }
            }
        }
    }
    for never in &secrets.never {
        if body.contains(never.as_str()) {
            problems.push(format!("the answer contains {never:?}"));
        }
    }
    let mut check = |leaf: &str, under_error: bool| {
        for secret in &secrets.echoed_only {
            if !leaf.contains(secret.as_str()) {
                continue;
            }
            // Ids come back normalized (a UUID sent in capitals is answered in lowercase).
            let echoed_error = under_error
                && request
                    .sent_text
                    .to_lowercase()
                    .contains(&secret.to_lowercase());
            let echoed_value = !request.listing && request.sent_strings.contains(leaf);
            if !echoed_error && !echoed_value {
                problems.push(format!(
                    "the answer contains {secret:?} (in {:?}), not an echo of the request",
                    leaf.chars().take(200).collect::<String>()
                ));
            }
        }
    };
    match &json {
        Some(value) => leaves(value, status >= 400, &mut check),
        None => check(body, status >= 400),
    }
    let documentation = matches!(
        op.template.as_str(),
        "/openapi.json" | "/docs" | "/rpc/methods"
    );
    if let (true, Some(value)) = (
        as_b && !documentation && (200..300).contains(&status),
        &json,
    ) {
        let mut found = Vec::new();
        tenant_ids(value, &mut found);
        for tenant in found {
            if tenant != B {
                problems.push(format!("an answer with tenant_id {tenant}"));
            }
        }
    }
    problems
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    request: &Request,
) -> Result<(u16, String), String> {
    let mut builder = client.request(
        request.method.clone(),
        format!("{base}{}", request.path_and_query),
    );
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    if let Some(body) = &request.body {
        builder = builder.body(body.clone());
    }
    let response = builder
        .send()
        .await
        .map_err(|e| format!("no answer: {e:?}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("{status}, reading the body: {e}"))?;
    Ok((status, body))
}

fn seed() -> u64 {
    match std::env::var("HERALD_FUZZ_SEED") {
        Ok(text) => text.parse().expect("HERALD_FUZZ_SEED is a u64"),
        Err(_) => DEFAULT_SEED,
    }
}

/// Every event, read with the admin key page by page.
async fn every_event(h: &TestHerald) -> Vec<Value> {
    let admin = As {
        herald: h,
        key: ADMIN,
    };
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = admin
            .get(&format!(
                "/api/events?subject=%3E&limit=1000&after_seq={after}"
            ))
            .await;
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            return all;
        }
        after = page.last().unwrap()["seq"].as_u64().unwrap();
        all.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_requests_of_one_tenant_never_reach_another() {
    let seed = seed();
    eprintln!("seed {seed} (HERALD_FUZZ_SEED={seed} repeats this run's requests)");
    let started = Instant::now();
    let h = TestHerald::start_with_env(
        None,
        &[],
        &[("HERALD_AUTH", "required"), ("HERALD_ADMIN_KEY", ADMIN)],
    )
    .await;
    let admin = As {
        herald: &h,
        key: ADMIN,
    };
    let a = make_tenant(&h, A).await;
    let b = make_tenant(&h, B).await;
    // A second key of A's, revoked: it must open nothing.
    let revoked = admin
        .ok(reqwest::Method::POST, "/api/keys", json!({"tenant": A}))
        .await;
    let revoked_key = revoked["key"].as_str().unwrap().to_owned();
    let revoked_id = revoked["id"].as_str().unwrap().to_owned();
    let (status, _) = admin
        .send(
            reqwest::Method::DELETE,
            &format!("/api/keys/{revoked_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let before = snapshot(&h, &a).await;
    let keys_before = keys_as_made(admin.get("/api/keys").await);
    let tenants_before = admin.get("/api/tenants").await;

    // B reuses A's names in its own namespace, then lets them go.
    let bk = As {
        herald: &h,
        key: &b.key,
    };
    bk.ok(
        reqwest::Method::PUT,
        &format!("/api/consumers/{}", a.consumer),
        json!({"filter_subjects": [format!("hub.{B}.>")]}),
    )
    .await;
    bk.ok(
        reqwest::Method::POST,
        "/api/rules",
        json!({"id": a.rule, "subject_pattern": format!("hub.{B}.>"),
               "action": {"type": "republish", "subject": format!("hub.{B}.copy")}}),
    )
    .await;
    for path in [
        format!("/api/consumers/{}", a.consumer),
        format!("/api/rules/{}", a.rule),
    ] {
        let (status, body) = bk.send(reqwest::Method::DELETE, &path, None).await;
        assert_eq!(status, 204, "{path}: {body}");
    }
    assert_eq!(
        snapshot(&h, &a).await,
        before,
        "B's same-named consumer and rule touched A's"
    );

    let doc = bk.get("/openapi.json").await;
    let ops = operations(&doc);
    let methods = rpc_methods(&bk.get("/rpc/methods").await);
    assert!(ops.len() >= 40, "{} operations", ops.len());
    let mut generator = Gen {
        rng: TestRng::from_seed(RngAlgorithm::ChaCha, &[seed.to_le_bytes(); 4].concat()),
        a: &a,
        b: &b,
        a_revoked_key: &revoked_key,
        a_revoked_key_id: &revoked_id,
        doc: &doc,
        targets_a: false,
        sent: Vec::new(),
        b_publishes: 0,
    };
    // Every operation in turn, then random ones.
    let requests: Vec<Request> = (0..REQUESTS)
        .map(|index| {
            let op = if index < ops.len() * 5 {
                index % ops.len()
            } else {
                generator.rng.random_range(0..ops.len())
            };
            generator.request(index, op, &ops[op], &methods)
        })
        .collect();
    let secrets = Secrets {
        never: a.markers.iter().cloned().chain([a.key.clone()]).collect(),
        echoed_only: [A.to_owned(), a.key_id.clone(), revoked_id.clone()]
            .into_iter()
            .chain(a.event_ids.iter().cloned())
            .collect(),
    };
    let generated = started.elapsed();

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base = h.base_url().to_owned();
    let problems = Mutex::new(Vec::<String>::new());
    let statuses = Mutex::new(BTreeMap::<(String, u16), usize>::new());
    let fired = Instant::now();
    futures_util::stream::iter(&requests)
        .map(|request| {
            let client = &client;
            let base = &base;
            async move { (request, send(client, base, request).await) }
        })
        .buffer_unordered(CONCURRENCY)
        .for_each(|(request, outcome)| {
            let op = &ops[request.op];
            let found = match &outcome {
                Err(e) => vec![e.clone()],
                Ok((status, body)) => {
                    *statuses
                        .lock()
                        .unwrap()
                        .entry((format!("{} {}", op.method, op.template), *status))
                        .or_default() += 1;
                    judge(request, op, *status, body, &secrets)
                        .into_iter()
                        .map(|p| {
                            format!(
                                "{p}; answer {status} {}",
                                body.chars().take(300).collect::<String>()
                            )
                        })
                        .collect()
                }
            };
            for problem in found {
                problems
                    .lock()
                    .unwrap()
                    .push(format!("{problem}\n    request {}", request.describe()));
            }
            async {}
        })
        .await;
    let took = fired.elapsed();
    let statuses = statuses.into_inner().unwrap();
    let mut by_status = BTreeMap::<u16, usize>::new();
    for ((_, status), n) in &statuses {
        *by_status.entry(*status).or_default() += n;
    }
    eprintln!(
        "{REQUESTS} requests over {} operations and {} JSON-RPC methods in {took:?} \
         (generated in {generated:?}); statuses {by_status:?}",
        ops.len(),
        methods.len()
    );
    for op in &ops {
        let name = format!("{} {}", op.method, op.template);
        let seen: Vec<String> = statuses
            .iter()
            .filter(|((o, _), _)| *o == name)
            .map(|((_, s), n)| format!("{s}x{n}"))
            .collect();
        eprintln!("  {name}: {}", seen.join(" "));
    }
    let problems: Vec<String> = problems.into_inner().unwrap();
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems; the first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Nothing of A's changed, and nothing B sent is A's.
    assert_eq!(
        snapshot(&h, &a).await,
        before,
        "A's events, consumer or rule changed"
    );
    assert_eq!(keys_as_made(admin.get("/api/keys").await), keys_before);
    assert_eq!(admin.get("/api/tenants").await, tenants_before);
    let a_ids: BTreeSet<&str> = a.event_ids.iter().map(String::as_str).collect();
    let mut b_events = 0;
    for event in every_event(&h).await {
        let subject = event["subject"].as_str().unwrap();
        match event["tenant_id"].as_str() {
            Some(A) => assert!(a_ids.contains(event["id"].as_str().unwrap()), "{event}"),
            Some(B) => {
                b_events += 1;
                assert!(subject.starts_with(&format!("hub.{B}.")), "{event}");
            }
            // The audit log belongs to no tenant (only admins read it).
            None if subject.starts_with("hub.local-hub.audit.") => {}
            _ => panic!("an event of no tenant or another: {event}"),
        }
        assert!(
            !subject.starts_with(&format!("hub.{A}.")) || event["tenant_id"] == A,
            "{event}"
        );
    }
    eprintln!(
        "B stored {b_events} events; A's {} are as they were",
        a.event_ids.len()
    );
    h.assert_healthy().await;

    live_streams_of_b_see_nothing_of_a(&h, &a, &b).await;
    eprintln!("in {:?} in all", started.elapsed());
}

/// The key list without `last_used_at`, which every request moves.
fn keys_as_made(mut keys: Value) -> Value {
    for key in keys["keys"].as_array_mut().unwrap() {
        key.as_object_mut().unwrap().remove("last_used_at");
    }
    keys
}

/// A WebSocket with `key` as a bearer token, or the handshake's status.
async fn ws_as(h: &TestHerald, path: &str, key: &str) -> Result<Ws, String> {
    let mut request = h.ws_url(path).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(format!("{}", response.status()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// B's streams on `>`, `hub.*.>` and `hub.alpha7.>` (replayed from seq 0), and in a
/// queue group named like A's, get none of A's events, stored or live; A's queue group
/// keeps all of them; A's consumer cannot be streamed by B.
async fn live_streams_of_b_see_nothing_of_a(h: &TestHerald, a: &Tenant, b: &Tenant) {
    let mut a_group = ws_as(
        h,
        &stream_path(&format!("hub.{A}.>"), "&queue=workers"),
        &a.key,
    )
    .await
    .expect("A's queue member");
    let mut b_streams = Vec::new();
    for (pattern, extra) in [
        (">", "&from_seq=0"),
        ("hub.*.>", "&from_seq=0"),
        ("hub.alpha7.>", "&from_seq=0"),
        ("hub.alpha7.orders.*", ""),
        (">", "&queue=workers"),
        ("hub.*.>", "&queue=workers"),
    ] {
        let path = stream_path(pattern, extra);
        match ws_as(h, &path, &b.key).await {
            Ok(ws) => b_streams.push((path, ws)),
            Err(status) => {
                assert!(
                    status.starts_with("403") || status.starts_with("400"),
                    "{path}: {status}"
                );
                eprintln!("B's stream {path} refused: {status}");
            }
        }
    }
    assert!(b_streams.len() >= 3, "B's own streams must open");
    for name in [a.consumer.clone(), format!("rule:{}", a.rule)] {
        let refused = ws_as(h, &format!("/api/consumers/{}/stream", pct(&name)), &b.key).await;
        assert!(refused.is_err(), "B streams A's consumer {name}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ak = As {
        herald: h,
        key: &a.key,
    };
    let live_markers: Vec<String> = (0..5)
        .map(|i| format!("ALPHA7-LIVE-{i}-{}", Uuid::new_v4().simple()))
        .collect();
    for marker in &live_markers {
        ak.ok(
            reqwest::Method::POST,
            "/api/events",
            json!({"subject": format!("hub.{A}.orders.created"), "payload": {"marker": marker}}),
        )
        .await;
    }
    let sync = As {
        herald: h,
        key: &b.key,
    }
    .ok(
        reqwest::Method::POST,
        "/api/events",
        json!({"subject": format!("hub.{B}.live.sync"), "payload": {}}),
    )
    .await;
    let sync_id = sync["event_id"].as_str().unwrap().to_owned();
    for (path, ws) in &mut b_streams {
        let mut frames = 0;
        loop {
            // Read raw: B's replayed CloudEvents carry more members than the harness's
            // envelope check expects.
            match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    frames += 1;
                    assert!(
                        !text.contains(A) && !text.contains("ALPHA7"),
                        "{path}: {text}"
                    );
                    let envelope: Value = serde_json::from_str(text.as_str()).unwrap();
                    if envelope["data"]["id"] == sync_id.as_str() {
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                // A queue member may not get the sync event: silence is fine.
                Err(_) => break,
                other => panic!("{path}: {other:?}"),
            }
        }
        eprintln!("B's stream {path}: {frames} frames, none of A's");
    }
    for marker in &live_markers {
        let envelope = expect_event(&mut a_group, Duration::from_secs(5), "A's queue member").await;
        assert_eq!(
            envelope["data"]["payload"]["marker"],
            marker.as_str(),
            "{envelope}"
        );
    }
    for (_, ws) in b_streams {
        ws_close(ws).await;
    }
    ws_close(a_group).await;
}
