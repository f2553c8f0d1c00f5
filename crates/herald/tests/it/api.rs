//! The HTTP API's accepted inputs and response shapes: publish (201 body, correlation
//! ids), query (shape, subject patterns, since/until, correlation_id, limit, after_seq
//! paging), get by id, health, and the seed documents' own curl examples, verbatim.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::process::Command;
use uuid::Uuid;

use crate::harness::*;

fn ts(event: &Value) -> DateTime<Utc> {
    assert_rfc3339(&event["timestamp"], "timestamp")
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_201_with_the_seed_shape_and_stores_the_event() {
    let h = TestHerald::start().await;
    let before = Utc::now();
    let payload = json!({"project_id": "123", "name": "test", "nested": {"list": [1, 2.5, "x", null, true]}, "unicode": "héllo ✓"});
    let resp = h
        .post_event(&json!({"subject": "hub.local-hub.project.created", "payload": payload}))
        .await;
    assert_eq!(resp.status(), 201);
    let content_type = header(&resp, "content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type}"
    );
    let echoed = header(&resp, "x-correlation-id").expect("X-Correlation-ID echoed");
    let body: Value = resp.json().await.unwrap();
    assert_publish_response(&body);
    assert_eq!(body["seq"], 1, "first event of a fresh log has seq 1");
    assert_eq!(
        echoed,
        body["correlation_id"].as_str().unwrap(),
        "the echoed X-Correlation-ID is the event's correlation id"
    );
    let published_at = ts(&body);
    let after = Utc::now();
    assert!(
        published_at >= before - chrono::Duration::seconds(5)
            && published_at <= after + chrono::Duration::seconds(5),
        "timestamp {published_at} is not the current UTC time ({before}..{after})"
    );

    let second = h.publish("hub.local-hub.project.started", json!({})).await;
    assert_eq!(second["seq"], 2);
    assert_ne!(second["event_id"], body["event_id"]);
    assert_ne!(
        second["correlation_id"], body["correlation_id"],
        "a generated correlation id is fresh per request"
    );

    let id = body["event_id"].as_str().unwrap();
    let event = h.get_event(id).await;
    assert_eq!(event["id"], body["event_id"]);
    assert_eq!(event["seq"], body["seq"]);
    assert_eq!(event["subject"], "hub.local-hub.project.created");
    assert_eq!(event["payload"], payload, "payload round-trips unchanged");
    assert_eq!(event["correlation_id"], body["correlation_id"]);
    assert_eq!(event["origin"]["hub_id"], "local-hub", "default hub id");
    assert_eq!(
        ts(&event),
        published_at,
        "the 201 timestamp is the stored event's"
    );

    let listed = h.query(&[]).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], event, "list and get-by-id agree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_id_flag_sets_the_origin() {
    let h = TestHerald::start_with(&["--hub-id", "test-hub"]).await;
    let r = h.publish("hub.test-hub.x", json!({"a": 1})).await;
    let event = h.get_event(r["event_id"].as_str().unwrap()).await;
    assert_eq!(event["origin"]["hub_id"], "test-hub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_id_from_body_header_or_generated_and_echoed() {
    let h = TestHerald::start().await;
    let url = h.url("/api/events");

    // From the body.
    let cid = Uuid::new_v4().to_string();
    let resp = h
        .post_event(&json!({"subject": "hub.c.body", "payload": {}, "correlation_id": cid}))
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "x-correlation-id").as_deref(), Some(&*cid));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["correlation_id"], cid.as_str());
    let stored = h.get_event(body["event_id"].as_str().unwrap()).await;
    assert_eq!(stored["correlation_id"], cid.as_str());

    // From the header when the body has none.
    let hcid = Uuid::new_v4().to_string();
    let resp = h
        .http
        .post(&url)
        .header("X-Correlation-ID", &hcid)
        .json(&json!({"subject": "hub.c.header", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "x-correlation-id").as_deref(), Some(&*hcid));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["correlation_id"],
        hcid.as_str(),
        "header used when body has none"
    );
    let stored = h.get_event(body["event_id"].as_str().unwrap()).await;
    assert_eq!(stored["correlation_id"], hcid.as_str());

    // The body wins over the header.
    let bcid = Uuid::new_v4().to_string();
    let resp = h
        .http
        .post(&url)
        .header("X-Correlation-ID", Uuid::new_v4().to_string())
        .json(&json!({"subject": "hub.c.both", "payload": {}, "correlation_id": bcid}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(header(&resp, "x-correlation-id").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["correlation_id"],
        bcid.as_str(),
        "body correlation_id wins"
    );

    // Generated otherwise, and echoed.
    let resp = h
        .post_event(&json!({"subject": "hub.c.none", "payload": {}}))
        .await;
    assert_eq!(resp.status(), 201);
    let echoed = header(&resp, "x-correlation-id").expect("echoed header");
    let body: Value = resp.json().await.unwrap();
    let generated = assert_uuid(&body["correlation_id"], "generated correlation_id");
    assert_eq!(echoed, generated.to_string());

    // Every response echoes the header: GETs with and without one.
    let gcid = Uuid::new_v4().to_string();
    let resp = h
        .http
        .get(h.url("/api/events"))
        .header("X-Correlation-ID", &gcid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-correlation-id").as_deref(), Some(&*gcid));
    for path in ["/api/events", "/health", "/health/nats"] {
        let resp = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let value = header(&resp, "x-correlation-id")
            .unwrap_or_else(|| panic!("GET {path}: no X-Correlation-ID header"));
        assert!(
            Uuid::parse_str(&value).is_ok(),
            "GET {path}: generated X-Correlation-ID is a UUID: {value}"
        );
    }

    // The correlation_id query filter finds exactly the events that carry it.
    let shared = Uuid::new_v4().to_string();
    let mut expected = Vec::new();
    for i in 0..3 {
        h.publish("hub.c.noise", json!({"i": i})).await;
        let r = h
            .publish_body(
                &json!({"subject": "hub.c.flow", "payload": {"i": i}, "correlation_id": shared}),
            )
            .await;
        expected.push(r["event_id"].clone());
    }
    let found = h.query(&[("correlation_id", shared.clone())]).await;
    let ids: Vec<Value> = found.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_content_types_are_parsed_as_json() {
    let h = TestHerald::start().await;
    let body = r#"{"subject": "hub.ct.plain", "payload": {"k": "v"}}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/octet-stream"),
        Some("application/json; charset=utf-8"),
        None,
    ] {
        let mut req = h.http.post(h.url("/api/events")).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 201, "content-type {content_type:?}: {text}");
        assert_publish_response(&serde_json::from_str(&text).unwrap());
    }
    let stored = h.query(&[("subject", "hub.ct.plain".into())]).await;
    assert_eq!(stored.len(), 5);
    assert!(stored.iter().all(|e| e["payload"] == json!({"k": "v"})));
}

/// Subjects the filter tests publish: several hubs, domains, depths.
const FIXTURE_SUBJECTS: &[&str] = &[
    "hub.local-hub.project.created",
    "hub.local-hub.project.started",
    "hub.other-hub.project.created",
    "hub.local-hub.audit.security.completed",
    "hub.local-hub.project",
    "hub.test",
    "other.local-hub.project.created",
    "hubx.a.b",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_subject_patterns_filter_like_nats() {
    let h = TestHerald::start().await;
    for round in 0..2 {
        for (i, subject) in FIXTURE_SUBJECTS.iter().enumerate() {
            h.publish(subject, json!({"round": round, "i": i})).await;
        }
    }
    let all = h.query(&[]).await;
    assert_eq!(all.len(), 2 * FIXTURE_SUBJECTS.len());
    assert_eq!(seqs(&all), (1..=all.len() as u64).collect::<Vec<_>>());

    let cases: &[(&str, &str)] = &[
        // (filter sent, equivalent NATS pattern for the expectation)
        ("hub.*.project.*", "hub.*.project.*"),
        ("hub.%.project.%", "hub.*.project.*"),
        ("hub.local-hub.>", "hub.local-hub.>"),
        ("hub.>", "hub.>"),
        ("hub.*", "hub.*"),
        (">", ">"),
        ("*.local-hub.project.created", "*.local-hub.project.created"),
        (
            "hub.local-hub.project.created",
            "hub.local-hub.project.created",
        ),
        ("hub.local-hub.project", "hub.local-hub.project"),
        (
            "hub.local-hub.project.created.>",
            "hub.local-hub.project.created.>",
        ),
        ("hub.local-hub", "hub.local-hub"),
        ("hub.%.%.%.completed", "hub.*.*.*.completed"),
        ("nothing.here", "nothing.here"),
    ];
    let mut failures = Vec::new();
    for (filter, pattern) in cases {
        let got = h.query(&[("subject", filter.to_string())]).await;
        let want: Vec<u64> = all
            .iter()
            .filter(|e| nats_match(pattern, e["subject"].as_str().unwrap()))
            .map(seq_of)
            .collect();
        if seqs(&got) != want {
            let subjects: Vec<&str> = got.iter().map(|e| e["subject"].as_str().unwrap()).collect();
            failures.push(format!(
                "subject={filter}: got seqs {:?} ({subjects:?}), want {want:?}",
                seqs(&got)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Raw `%` in the URL, exactly as the seed document writes it.
    let resp = h
        .http
        .get(format!(
            "{}/api/events?subject=hub.%.project.%&limit=10",
            h.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Vec<Value> = resp.json().await.unwrap();
    let subjects: HashSet<&str> = got.iter().map(|e| e["subject"].as_str().unwrap()).collect();
    assert_eq!(
        subjects,
        HashSet::from([
            "hub.local-hub.project.created",
            "hub.local-hub.project.started",
            "hub.other-hub.project.created"
        ])
    );
    assert_eq!(got.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_since_until_are_inclusive_and_combine_with_filters() {
    let h = TestHerald::start().await;
    for i in 0..20 {
        let subject = if i % 2 == 0 {
            "hub.t.even"
        } else {
            "hub.t.odd"
        };
        h.publish(subject, json!({"i": i})).await;
        if i % 5 == 4 {
            // Spread timestamps over a few distinct milliseconds.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    let all = h.query(&[]).await;
    assert_eq!(all.len(), 20);
    for pair in all.windows(2) {
        assert!(ts(&pair[0]) <= ts(&pair[1]), "timestamps follow seq order");
    }
    let since = &all[6];
    let until = &all[14];
    let since_text = since["timestamp"].as_str().unwrap().to_owned();
    let until_text = until["timestamp"].as_str().unwrap().to_owned();
    let pick = |f: &dyn Fn(&Value) -> bool| -> Vec<u64> {
        all.iter().filter(|e| f(e)).map(seq_of).collect()
    };

    let got = h.query(&[("since", since_text.clone())]).await;
    assert_eq!(
        seqs(&got),
        pick(&|e| ts(e) >= ts(since)),
        "since is inclusive"
    );
    assert!(seqs(&got).contains(&seq_of(since)));

    let got = h.query(&[("until", until_text.clone())]).await;
    assert_eq!(
        seqs(&got),
        pick(&|e| ts(e) <= ts(until)),
        "until is inclusive"
    );
    assert!(seqs(&got).contains(&seq_of(until)));

    let got = h
        .query(&[("since", since_text.clone()), ("until", until_text.clone())])
        .await;
    assert_eq!(
        seqs(&got),
        pick(&|e| ts(e) >= ts(since) && ts(e) <= ts(until))
    );

    let got = h
        .query(&[
            ("since", since_text.clone()),
            ("until", until_text.clone()),
            ("subject", "hub.t.odd".into()),
        ])
        .await;
    assert_eq!(
        seqs(&got),
        pick(&|e| ts(e) >= ts(since) && ts(e) <= ts(until) && e["subject"] == "hub.t.odd")
    );

    // The same instant written with another offset (the `+` is percent-encoded).
    let shifted = ts(since)
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let got = h.query(&[("since", shifted.clone())]).await;
    assert_eq!(
        seqs(&got),
        pick(&|e| ts(e) >= ts(since)),
        "since={shifted} is the same instant"
    );

    // A window in the future, and one before everything.
    let future = (Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    assert!(h.query(&[("since", future)]).await.is_empty());
    assert!(h
        .query(&[("until", "2000-01-01T00:00:00Z".into())])
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_limit_default_and_after_seq_paging_visit_everything_once() {
    let h = TestHerald::start().await;
    // 130 events from 8 concurrent publishers, on two subjects.
    let mut tasks = Vec::new();
    for p in 0..8 {
        let http = h.http.clone();
        let url = h.url("/api/events");
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..(130 / 8 + usize::from(p < 130 % 8)) {
                let subject = if i % 3 == 0 {
                    "hub.page.a"
                } else {
                    "hub.page.b"
                };
                let resp = http
                    .post(&url)
                    .json(&json!({"subject": subject, "payload": {"p": p, "i": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
                let body: Value = resp.json().await.unwrap();
                ids.push(body["event_id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut published = HashSet::new();
    for t in tasks {
        published.extend(t.await.unwrap());
    }
    assert_eq!(published.len(), 130);

    // Default limit is 100, from the start of the log.
    let first = h.query(&[]).await;
    assert_eq!(first.len(), 100, "default limit");
    assert_eq!(seqs(&first), (1..=100).collect::<Vec<_>>());

    let limited = h.query(&[("limit", "3".into())]).await;
    assert_eq!(seqs(&limited), vec![1, 2, 3]);
    let max = h.query(&[("limit", "1000".into())]).await;
    assert_eq!(max.len(), 130);
    assert_eq!(seqs(&max), (1..=130).collect::<Vec<_>>());
    let one = h.query(&[("limit", "1".into())]).await;
    assert_eq!(seqs(&one), vec![1]);

    // after_seq is exclusive.
    let after = h
        .query(&[("after_seq", "10".into()), ("limit", "5".into())])
        .await;
    assert_eq!(seqs(&after), vec![11, 12, 13, 14, 15]);
    assert!(h.query(&[("after_seq", "130".into())]).await.is_empty());
    assert_eq!(
        seqs(
            &h.query(&[("after_seq", "0".into()), ("limit", "2".into())])
                .await
        ),
        vec![1, 2]
    );

    // Paging with a small limit visits every event exactly once, in order.
    for (subject, expected_len) in [
        (None, 130usize),
        (Some("hub.page.a"), 0),
        (Some("hub.page.>"), 130),
    ] {
        let mut seen: Vec<Value> = Vec::new();
        let mut cursor = 0u64;
        for _ in 0..200 {
            let mut params = vec![("limit", "7".to_owned()), ("after_seq", cursor.to_string())];
            if let Some(s) = subject {
                params.push(("subject", s.to_owned()));
            }
            let page = h.query(&params).await;
            assert!(page.len() <= 7);
            let Some(last) = page.last() else { break };
            cursor = seq_of(last);
            seen.extend(page);
        }
        assert_seq_ascending(&seen);
        let ids: HashSet<String> = seen
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), seen.len(), "no event twice ({subject:?})");
        let reference = max
            .iter()
            .filter(|e| subject.is_none_or(|s| nats_match(s, e["subject"].as_str().unwrap())))
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(seen, reference, "paging {subject:?} equals the full list");
        if expected_len > 0 {
            assert_eq!(seen.len(), expected_len);
            assert_eq!(ids, published);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_event_by_id_200_404_400() {
    let h = TestHerald::start().await;
    let r = h.publish("hub.get.x", json!({"v": [1, 2, 3]})).await;
    let id = r["event_id"].as_str().unwrap();
    let event = h.get_event(id).await;
    assert_eq!(event["id"], id);
    assert_eq!(event["payload"], json!({"v": [1, 2, 3]}));
    assert_eq!(h.query(&[]).await[0], event);
    // Uppercase UUID text is the same UUID.
    let upper = h.get_event(&id.to_uppercase()).await;
    assert_eq!(upper, event);

    let missing = h
        .http
        .get(h.url(&format!("/api/events/{}", Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    check_error(missing, &[404], &[])
        .await
        .expect("absent id → 404");

    for bad in [
        "not-a-uuid",
        "12345",
        "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
    ] {
        let resp = h
            .http
            .get(h.url(&format!("/api/events/{bad}")))
            .send()
            .await
            .unwrap();
        check_error(resp, &[400], &[])
            .await
            .unwrap_or_else(|e| panic!("GET /api/events/{bad}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_have_the_seed_shapes() {
    let h = TestHerald::start().await;
    let resp = h.http.get(h.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    // Seed 000's fields with these values; later seeds may add fields beside them.
    assert_has_keys(&body, &["status", "nats", "database"], "/health");
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["nats"], "disabled", "{body}");
    assert_eq!(body["database"], "healthy", "{body}");
    let resp = h.http.get(h.url("/health/nats")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"connected": false, "url": null}));
}

/// Runs curl (proxies scrubbed) with `args`, appending `-sS -w '\n%{http_code}'` to
/// capture the status; returns (status, body).
async fn curl(args: &[String]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(args)
        .arg("-sS")
        .arg("-w")
        .arg("\n%{http_code}")
        .kill_on_drop(true);
    scrub_env(&mut cmd);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("curl within 20 s")
        .expect("run curl (is it installed?)");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = stdout.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("http code"), body.to_owned())
}

fn s(text: &str) -> String {
    text.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_curl_examples_work_verbatim() {
    let h = TestHerald::start().await;
    let base = h.base_url().to_owned();
    let events = format!("{base}/api/events");

    // The POST examples of the seed documents (localhost:9001 → this server).
    let posts: &[(&[&str], &str, Value)] = &[
        (
            &["-H", "Content-Type: application/json"],
            r#"{"subject": "hub.test.manual", "payload": {"test": "data"}}"#,
            json!({"test": "data"}),
        ),
        (
            &["-H", "Content-Type: application/json"],
            r#"{"subject": "hub.local-hub.project.created", "payload": {"test": "data"}}"#,
            json!({"test": "data"}),
        ),
        (
            &["-H", "Content-Type: application/json"],
            r#"{"subject": "hub.local-hub.test.manual", "payload": {"test": "e2e"}}"#,
            json!({"test": "e2e"}),
        ),
        // No -H: curl sends application/x-www-form-urlencoded.
        (&[], r#"{"subject": "hub.test", "payload": {}}"#, json!({})),
    ];
    let mut ids = Vec::new();
    for (headers, data, payload) in posts {
        let mut args = vec![s("-X"), s("POST"), events.clone()];
        args.extend(headers.iter().map(|h| s(h)));
        args.extend([s("-d"), s(data)]);
        let (code, body) = curl(&args).await;
        assert_eq!(code, 201, "curl {args:?}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON body");
        assert_publish_response(&body);
        let stored = h.get_event(body["event_id"].as_str().unwrap()).await;
        let sent: Value = serde_json::from_str(data).unwrap();
        assert_eq!(stored["subject"], sent["subject"]);
        assert_eq!(&stored["payload"], payload);
        ids.push(body["event_id"].clone());
    }

    for (url, expected) in [
        (format!("{base}/api/events?limit=5"), 4usize),
        (format!("{base}/api/events?limit=10"), 4),
        (format!("{base}/api/events?limit=2"), 2),
    ] {
        let (code, body) = curl(std::slice::from_ref(&url)).await;
        assert_eq!(code, 200, "curl {url}: {body}");
        let list: Vec<Value> = serde_json::from_str(&body).expect("array");
        assert_eq!(list.len(), expected, "curl {url}");
        for e in &list {
            assert_event_shape(e);
        }
        let got: Vec<Value> = list.iter().map(|e| e["id"].clone()).collect();
        assert_eq!(got, ids[..expected], "curl {url}: seq order");
    }

    // The seed's query example, raw `%` and all.
    let (code, body) = curl(&[format!(
        "{base}/api/events?subject=hub.%.project.%&limit=10"
    )])
    .await;
    assert_eq!(code, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["subject"], "hub.local-hub.project.created");

    let (code, body) = curl(&[format!("{base}/health")]).await;
    assert_eq!(code, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["database"], "healthy", "{health}");
    let (code, body) = curl(&[format!("{base}/health/nats")]).await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"connected": false, "url": null})
    );
}

// ---- CloudEvents conformance ----------------------------------------------------------

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

/// POSTs `body` to `/api/events` with `content_type`; answers the status and JSON body.
async fn post_as(h: &TestHerald, content_type: &str, body: String) -> (u16, Value) {
    let resp = h
        .http
        .post(h.url("/api/events"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /api/events");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON answer"))
}

/// A binary-mode CloudEvent with extra `ce-*` headers (name, value as sent).
async fn post_binary(h: &TestHerald, id: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut request = h
        .http
        .post(h.url("/api/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/binary")
        .header("ce-type", "com.example.binary")
        .header("content-type", "application/json")
        .body("{}");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.expect("POST /api/events");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON answer"))
}

/// `GET /api/events/{id}` as a structured CloudEvent.
async fn read_structured(h: &TestHerald, event_id: &str) -> Value {
    let resp = h
        .http
        .get(h.url(&format!("/api/events/{event_id}")))
        .header("accept", STRUCTURED)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// `GET /api/events/{id}` as Herald JSON (events stored from CloudEvents carry a
/// `cloudevent` member, which the harness's plain-event shape check does not expect).
async fn read_plain(h: &TestHerald, event_id: &str) -> Value {
    let resp = h
        .http
        .get(h.url(&format!("/api/events/{event_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// How many events are stored (at most 1000).
async fn stored_count(h: &TestHerald) -> usize {
    let resp = h
        .http
        .get(h.url("/api/events?limit=1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Vec<Value>>().await.unwrap().len()
}

fn ce(id: &str, extra: Value) -> Value {
    let mut event = json!({"specversion": "1.0", "id": id, "source": "/conformance", "type": "com.example.conformance"});
    for (name, value) in extra.as_object().unwrap() {
        event[name] = value.clone();
    }
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_empty_batch_is_accepted_and_stores_nothing() {
    // JSON format §4.3: "An example of an empty batch of CloudEvents (typically used in
    // a response, but also valid in a request): []".
    let h = TestHerald::start().await;
    for (path, body) in [("/api/events", "[]"), ("/api/events:batch", " [ ] ")] {
        let resp = h
            .http
            .post(h.url(path))
            .header("content-type", BATCH)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"results": [], "count": 0}),
            "{path}: the shape of a non-empty batch's answer"
        );
    }
    assert_eq!(stored_count(&h).await, 0);
    // The same shape as a batch that stored something.
    let (status, body) = post_as(&h, BATCH, json!([ce("one", json!({}))]).to_string()).await;
    assert_eq!((status, body["count"].clone()), (201, json!(1)));
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_binary_headers_are_unquoted_then_percent_decoded() {
    // HTTP binding §3.1.3.2: "When decoding an HTTP message into a CloudEvent, any HTTP
    // header value MUST first be unescaped with respect to double-quoted strings, as
    // described in RFC7230, section 3.2.6. A single round of percent-decoding MUST then
    // be performed as described below." And: "encoded byte sequences which are invalid
    // in UTF-8 MUST be rejected. (For example, "%C0%A0" is an overlong encoding of
    // U+0020, and MUST be rejected.)"
    let h = TestHerald::start().await;
    let cases = [
        ("\"hello world\"", "hello world"),
        (r#""say \"hi\" \\ bye""#, r#"say "hi" \ bye"#),
        ("Euro%20%E2%82%AC%20%F0%9F%98%80", "Euro \u{20ac} \u{1f600}"),
        ("lower%e2%82%ac", "lower\u{20ac}"),
        ("%41%42", "AB"),
        ("\"100%25\"", "100%"),
    ];
    for (n, (sent, stored)) in cases.iter().enumerate() {
        let (status, body) = post_binary(
            &h,
            &format!("quoted-{n}"),
            &[("ce-subject", sent), ("ce-note", sent)],
        )
        .await;
        assert_eq!(status, 201, "{sent}: {body}");
        let event = read_structured(&h, body["event_id"].as_str().unwrap()).await;
        assert_eq!(event["subject"], *stored, "ce-subject: {sent}");
        assert_eq!(event["note"], *stored, "ce-note: {sent}");
    }
    let before = stored_count(&h).await;
    for (header, sent, names) in [
        ("ce-subject", "%C0%A0", "ce-subject"),
        ("ce-subject", "%FF", "ce-subject"),
        ("ce-subject", "bad%zz", "ce-subject"),
        ("ce-subject", "\"unterminated", "ce-subject"),
        ("ce-note", "a%01b", "note"),
    ] {
        let (status, body) = post_binary(&h, "bad-header", &[(header, sent)]).await;
        assert_eq!(status, 422, "{header}: {sent}: {body}");
        assert_eq!(body["error"]["code"], "invalid_cloudevent");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{header}: {sent}: {message}");
    }
    assert_eq!(stored_count(&h).await, before, "nothing rejected is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_attributes_are_checked_against_the_spec() {
    let h = TestHerald::start().await;
    let refused = [
        // Spec, datacontenttype: "If present, MUST adhere to the format specified in
        // RFC 2046".
        (json!({"datacontenttype": "xyz"}), "datacontenttype"),
        (
            json!({"datacontenttype": "text/plain; charset"}),
            "datacontenttype",
        ),
        // Spec, Type System, String: "The following characters are disallowed: the
        // "control characters" in the ranges U+0000-U+001F and U+007F-U+009F (both
        // ranges inclusive)".
        (json!({"subject": "a\u{1}b"}), "subject"),
        (json!({"subject": "a\u{85}b"}), "subject"),
        (json!({"id": "line\nbreak"}), "id"),
        (json!({"tenantid": "tab\there"}), "tenantid"),
        // Spec, dataschema: "Type: `URI`"; Type System: "`URI` - Absolute uniform
        // resource identifier."
        (json!({"dataschema": "/relative/schema"}), "dataschema"),
        (
            json!({"dataschema": "https://example.com/a schema"}),
            "dataschema",
        ),
        // Spec, source: "Type: `URI-reference`" (RFC 3986 §4.1).
        (json!({"source": "/with space"}), "source"),
        (json!({"source": "/50%"}), "source"),
        (json!({"source": "1a:b"}), "source"),
    ];
    for (n, (extra, names)) in refused.iter().enumerate() {
        let event = ce(&format!("refused-{n}"), extra.clone());
        let (status, body) = post_as(&h, STRUCTURED, event.to_string()).await;
        assert_eq!(status, 422, "{extra}: {body}");
        assert_eq!(body["error"]["code"], "invalid_cloudevent", "{extra}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{names}`")),
            "{extra}: {message}"
        );
    }
    // A member twice in one structured event: which one would be the event?
    let (status, body) = post_as(
        &h,
        STRUCTURED,
        r#"{"specversion":"1.0","id":"a","id":"b","source":"/s","type":"com.x"}"#.into(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_cloudevent"))
    );
    assert_eq!(stored_count(&h).await, 0, "nothing rejected is stored");

    // Controls, read back as sent.
    let accepted = json!({
        "datacontenttype": "Text/Plain; CharSet=\"utf-8\"",
        "dataschema": "urn:example:schema:v1",
        "source": "cloudevents/spec/pull/123",
        "subject": "caf\u{e9} \u{a0}\u{1f600}",
        // Spec, Attribute Naming Convention: "MUST be at least one character in length,
        // and SHOULD NOT exceed 20 characters." A SHOULD is not a MUST: 30 is valid.
        "abcdefghijklmnopqrstuvwxyz0123": "long name",
        "data": "plain text"
    });
    let (status, body) =
        post_as(&h, STRUCTURED, ce("accepted", accepted.clone()).to_string()).await;
    assert_eq!(status, 201, "{body}");
    let event = read_structured(&h, body["event_id"].as_str().unwrap()).await;
    assert_eq!(event, ce("accepted", accepted));
    // Still refused: upper case is a MUST NOT ("MUST consist of lower-case letters").
    let (status, _) = post_as(
        &h,
        STRUCTURED,
        ce("upper", json!({"abcdefghijklmnopqrstU": 1})).to_string(),
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_explicit_null_data_reads_back_as_null() {
    // JSON format §3.1.1: "the `data` member MAY have a value of `null`, representing an
    // explicit `null` payload as distinct from the absence of the `data` member."
    let h = TestHerald::start().await;
    let with_null = ce("null-data", json!({"data": null}));
    let without = ce("no-data", json!({}));
    let base64_null = ce(
        "base64-null",
        json!({"data": {"k": 1}, "data_base64": null}),
    );
    let mut ids = Vec::new();
    for event in [&with_null, &without, &base64_null] {
        let (status, body) = post_as(&h, STRUCTURED, event.to_string()).await;
        assert_eq!(status, 201, "{event}: {body}");
        ids.push(body["event_id"].as_str().unwrap().to_owned());
    }
    let got = read_structured(&h, &ids[0]).await;
    assert_eq!(got, with_null, "`data: null` is kept");
    assert!(got.as_object().unwrap().contains_key("data"));
    let got = read_structured(&h, &ids[1]).await;
    assert_eq!(got, without, "absent data stays absent");
    let got = read_structured(&h, &ids[2]).await;
    assert_eq!(
        got,
        ce("base64-null", json!({"data": {"k": 1}})),
        "a null `data_base64` is unset"
    );
    // The Herald view keeps README's shape: other data is kept as {"data": …}.
    assert_eq!(
        read_plain(&h, &ids[0]).await["payload"],
        json!({"data": null})
    );
    assert_eq!(read_plain(&h, &ids[1]).await["payload"], json!({}));

    // The same in a batch, and read back as a batch.
    let (status, _) = post_as(
        &h,
        BATCH,
        json!([
            ce("batch-null", json!({"data": null})),
            ce("batch-none", json!({}))
        ])
        .to_string(),
    )
    .await;
    assert_eq!(status, 201);
    let resp = h
        .http
        .get(h.url("/api/events?limit=10"))
        .header("accept", BATCH)
        .send()
        .await
        .unwrap();
    let batch: Vec<Value> = resp.json().await.unwrap();
    let by_id = |id: &str| batch.iter().find(|e| e["id"] == id).cloned().unwrap();
    assert_eq!(by_id("null-data"), with_null);
    assert_eq!(by_id("batch-null")["data"], Value::Null);
    assert!(by_id("batch-null")
        .as_object()
        .unwrap()
        .contains_key("data"));
    assert!(!by_id("batch-none")
        .as_object()
        .unwrap()
        .contains_key("data"));

    // Both `data` (even null) and `data_base64`: the JSON format makes them exclusive.
    let (status, _) = post_as(
        &h,
        STRUCTURED,
        ce("both", json!({"data": null, "data_base64": "AA=="})).to_string(),
    )
    .await;
    assert_eq!(status, 422);
}

/// `payload_contains` keeps the events whose payload's JSON text contains the text,
/// combined with the other filters; over JSON-RPC `bus.query` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_by_payload_text() {
    let h = TestHerald::start().await;
    for (subject, order) in [
        ("hub.local-hub.orders.created", "o-1001"),
        ("hub.local-hub.orders.created", "o-1002"),
        ("hub.local-hub.orders.shipped", "o-1001"),
    ] {
        h.publish(subject, json!({"order_id": order})).await;
    }
    let subjects = |events: Vec<Value>| {
        events
            .iter()
            .map(|e| e["subject"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let found = h
        .query(&[("payload_contains", "\"o-1001\"".to_owned())])
        .await;
    assert_eq!(
        subjects(found),
        [
            "hub.local-hub.orders.created",
            "hub.local-hub.orders.shipped"
        ]
    );
    let found = h
        .query(&[
            ("payload_contains", "o-1001".to_owned()),
            ("subject", "hub.*.orders.shipped".to_owned()),
        ])
        .await;
    assert_eq!(subjects(found), ["hub.local-hub.orders.shipped"]);
    assert!(
        h.query(&[("payload_contains", "O-1001".to_owned())])
            .await
            .is_empty(),
        "case-sensitive"
    );

    let answer: Value = h
        .http
        .post(h.url("/rpc"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "bus.query",
            "params": {"payload_contains": "o-1002"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["result"]["count"], 1, "{answer}");
}
