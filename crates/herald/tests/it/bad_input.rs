//! Rejected input: every bad publish body, query parameter, path, route and method gets
//! its documented 4xx with a JSON `{"error":{"code","message"}}` body, nothing of it is
//! stored, nothing produces a 5xx, and the server keeps answering afterwards.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// One publish request that must be rejected.
struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    correlation_header: Option<&'static str>,
    statuses: &'static [u16],
    codes: &'static [&'static str],
}

fn case(
    name: &'static str,
    body: &str,
    statuses: &'static [u16],
    codes: &'static [&'static str],
) -> Case {
    Case {
        name,
        body: body.as_bytes().to_vec(),
        content_type: Some("application/json"),
        correlation_header: None,
        statuses,
        codes,
    }
}

const SUBJECT_CODES: &[&str] = &["invalid_subject"];
const MISSING_SUBJECT_CODES: &[&str] = &["invalid_subject", "invalid_body"];
const PAYLOAD_CODES: &[&str] = &["invalid_payload"];
const MISSING_PAYLOAD_CODES: &[&str] = &["invalid_payload", "invalid_body"];
const BODY_CODES: &[&str] = &["invalid_body"];
const CID_CODES: &[&str] = &["invalid_body", "invalid_correlation_id"];

fn publish_cases() -> Vec<Case> {
    let mut cases = vec![
        case(
            "truncated JSON",
            r#"{"subject": "hub.a", "payload": {"#,
            &[400],
            &["invalid_json"],
        ),
        case("not JSON", "this is not json", &[400], &["invalid_json"]),
        case("empty body", "", &[400], &["invalid_json"]),
        case("whitespace body", "  \n ", &[400], &["invalid_json"]),
        case(
            "trailing garbage",
            r#"{"subject": "hub.a", "payload": {}} trailing"#,
            &[400],
            &["invalid_json"],
        ),
        case("truncated array body", "[1, 2", &[400], &["invalid_json"]),
        case(
            "truncated string body",
            "\"hub.a",
            &[400],
            &["invalid_json"],
        ),
        case(
            "single quotes",
            "{'subject': 'hub.a', 'payload': {}}",
            &[400],
            &["invalid_json"],
        ),
        case(
            "missing subject",
            r#"{"payload": {}}"#,
            &[422],
            MISSING_SUBJECT_CODES,
        ),
        case(
            "empty subject",
            r#"{"subject": "", "payload": {}}"#,
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject hub..x",
            r#"{"subject": "hub..x", "payload": {}}"#,
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject hub. x",
            r#"{"subject": "hub. x", "payload": {}}"#,
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject hub.*.x",
            r#"{"subject": "hub.*.x", "payload": {}}"#,
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject hub.>",
            r#"{"subject": "hub.>", "payload": {}}"#,
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject leading dot",
            r#"{"subject": ".hub.a", "payload": {}}"#,
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject trailing dot",
            r#"{"subject": "hub.a.", "payload": {}}"#,
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject with tab",
            "{\"subject\": \"hub.a\\tb\", \"payload\": {}}",
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject with U+202E (right-to-left override)",
            "{\"subject\": \"hub.admin\u{202e}txt.x\", \"payload\": {}}",
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject with U+200B (zero-width space), JSON-escaped",
            r#"{"subject": "hub.a\u200bb", "payload": {}}"#,
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject with U+FEFF (byte order mark)",
            "{\"subject\": \"\u{feff}hub.a\", \"payload\": {}}",
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject with U+2066 (left-to-right isolate)",
            "{\"subject\": \"hub.\u{2066}a\u{2069}\", \"payload\": {}}",
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject with U+00AD (soft hyphen)",
            "{\"subject\": \"hub.ad\u{ad}min\", \"payload\": {}}",
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject hub.%",
            r#"{"subject": "hub.%", "payload": {}}"#,
            &[422],
            SUBJECT_CODES,
        ),
        case(
            "subject is a number",
            r#"{"subject": 5, "payload": {}}"#,
            &[422],
            MISSING_SUBJECT_CODES,
        ),
        case(
            "subject is null",
            r#"{"subject": null, "payload": {}}"#,
            &[422],
            MISSING_SUBJECT_CODES,
        ),
        case(
            "payload array",
            r#"{"subject": "hub.a", "payload": [1, 2]}"#,
            &[422],
            PAYLOAD_CODES,
        ),
        case(
            "payload string",
            r#"{"subject": "hub.a", "payload": "x"}"#,
            &[422],
            PAYLOAD_CODES,
        ),
        case(
            "payload null",
            r#"{"subject": "hub.a", "payload": null}"#,
            &[422],
            PAYLOAD_CODES,
        ),
        case(
            "payload number",
            r#"{"subject": "hub.a", "payload": 3}"#,
            &[422],
            PAYLOAD_CODES,
        ),
        case(
            "payload bool",
            r#"{"subject": "hub.a", "payload": true}"#,
            &[422],
            PAYLOAD_CODES,
        ),
        case(
            "payload missing",
            r#"{"subject": "hub.a"}"#,
            &[422],
            MISSING_PAYLOAD_CODES,
        ),
        case(
            "unknown field",
            r#"{"subject": "hub.a", "payload": {}, "extra": 1}"#,
            &[422],
            BODY_CODES,
        ),
        case(
            "correlation_id not a UUID",
            r#"{"subject": "hub.a", "payload": {}, "correlation_id": "not-a-uuid"}"#,
            &[422],
            CID_CODES,
        ),
        case(
            "correlation_id a number",
            r#"{"subject": "hub.a", "payload": {}, "correlation_id": 42}"#,
            &[422],
            CID_CODES,
        ),
        case(
            "body is an array",
            r#"[{"subject": "hub.a", "payload": {}}]"#,
            &[422],
            BODY_CODES,
        ),
        // serde reads a struct from a JSON array of its fields in declaration order;
        // the API's body is an object, whatever the struct behind it looks like.
        case(
            "body is an array of 4 fields",
            r#"["hub.seq", {"a": 1}, null, null]"#,
            &[422],
            BODY_CODES,
        ),
        case(
            "body is an array of 5 fields",
            r#"[null, "hub.seq", {"a": 1}, null, null]"#,
            &[422],
            BODY_CODES,
        ),
        case("body is a string", r#""hub.a""#, &[422], BODY_CODES),
        case("body is null", "null", &[422], BODY_CODES),
    ];
    let mut plain = case(
        "invalid JSON as text/plain",
        "{nope",
        &[400],
        &["invalid_json"],
    );
    plain.content_type = Some("text/plain");
    cases.push(plain);
    let mut none = case(
        "invalid JSON, no content type",
        "{nope",
        &[400],
        &["invalid_json"],
    );
    none.content_type = None;
    cases.push(none);
    let mut header = case(
        "X-Correlation-ID header not a UUID",
        r#"{"subject": "hub.a", "payload": {}}"#,
        &[400, 422],
        &[],
    );
    header.correlation_header = Some("not-a-uuid");
    cases.push(header);
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_publish_bodies_are_rejected_and_nothing_is_stored() {
    let h = TestHerald::start().await;
    h.publish("hub.ok.before", json!({"n": 1})).await;
    let before = h.all_events().await;

    let mut failures = Vec::new();
    for c in publish_cases() {
        let mut req = h.http.post(h.url("/api/events")).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(cid) = c.correlation_header {
            req = req.header("X-Correlation-ID", cid);
        }
        let resp = req.send().await.expect("send");
        if let Err(e) = check_error(resp, c.statuses, c.codes).await {
            failures.push(format!("{}: {e}", c.name));
        }
    }
    let after = h.all_events().await;
    if after != before {
        let extra: Vec<String> = after[before.len().min(after.len())..]
            .iter()
            .map(|e| format!("{} {}", e["subject"], e["payload"]))
            .collect();
        failures.push(format!(
            "the log changed: {} events before, {} after; new: {extra:?}",
            before.len(),
            after.len()
        ));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // Still answering, and still accepting good events with the next seq.
    h.assert_healthy().await;
    let r = h.publish("hub.ok.after", json!({"n": 2})).await;
    assert_eq!(seq_of(&r), seq_of(before.last().unwrap()) + 1);
}

/// Builds a valid publish body of exactly `len` bytes.
fn body_of_len(len: usize) -> Vec<u8> {
    let head = r#"{"subject":"hub.big","payload":{"x":""#;
    let tail = r#""}}"#;
    assert!(len > head.len() + tail.len());
    let mut body = head.as_bytes().to_vec();
    body.resize(len - tail.len(), b'a');
    body.extend_from_slice(tail.as_bytes());
    assert_eq!(body.len(), len);
    serde_json::from_slice::<Value>(&body).expect("valid JSON");
    body
}

/// POSTs on a fresh connection (so a connection the server closes after rejecting a
/// body is never reused by a later request: that is tested on its own below).
async fn post_raw_result(h: &TestHerald, body: Vec<u8>) -> reqwest::Result<reqwest::Response> {
    http_client()
        .post(h.url("/api/events"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
}

async fn post_raw(h: &TestHerald, body: Vec<u8>) -> reqwest::Response {
    post_raw_result(h, body).await.expect("POST")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_one_mib_get_413_and_are_not_stored() {
    const MIB: usize = 1024 * 1024;
    let h = TestHerald::start().await;
    let mut failures = Vec::new();

    let resp = post_raw(&h, body_of_len(MIB)).await;
    let status = resp.status();
    if status != 201 {
        failures.push(format!(
            "a body of exactly 1 MiB: got {status} {}",
            resp.text()
                .await
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    let count = h.event_count().await;

    for (name, len) in [("1 MiB + 1", MIB + 1), ("2 MiB", 2 * MIB)] {
        match post_raw_result(&h, body_of_len(len)).await {
            Ok(resp) => {
                if let Err(e) = check_error(resp, &[413], &["payload_too_large"]).await {
                    failures.push(format!("{name} with Content-Length: {e}"));
                }
            }
            Err(e) => failures.push(format!("{name}: no response: {e}")),
        }
    }

    // Far over the limit the server answers before reading the body and closes the
    // connection; it closes lingering, so the client gets the 413, not a reset.
    match post_raw_result(&h, body_of_len(8 * MIB)).await {
        Ok(resp) => {
            if let Err(e) = check_error(resp, &[413], &["payload_too_large"]).await {
                failures.push(format!("8 MiB with Content-Length: {e}"));
            }
        }
        Err(e) => failures.push(format!("8 MiB: no response: {e}")),
    }

    // Chunked (no Content-Length): the limit still applies.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body_of_len(2 * MIB)
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    match http_client()
        .post(h.url("/api/events"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
    {
        Ok(resp) => {
            if let Err(e) = check_error(resp, &[413], &["payload_too_large"]).await {
                failures.push(format!("2 MiB chunked: {e}"));
            }
        }
        Err(e) => failures.push(format!("2 MiB chunked: no response: {e}")),
    }

    h.assert_healthy().await;
    let after = h.event_count().await;
    if after != count {
        failures.push(format!("stored {} oversized events", after - count));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Sends a POST head with `Content-Length: len` on a raw socket, then the body (in
/// 64 KiB chunks, `pause` apart), and reads the answer while it is still being sent.
/// Returns the answer, and whether the server took the whole body and then closed
/// cleanly (the writer saw no error, the reader an EOF after the answer).
async fn oversized_post_raw(
    h: &TestHerald,
    len: usize,
    pause: Duration,
) -> Result<(u16, Value, Result<(), String>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(h.addr())
        .await
        .map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /api/events HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
        h.addr()
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            wr.write_all(&chunk[..n]).await?;
            sent += n;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        // Done sending: the server's lingering ends with this FIN.
        wr.shutdown().await
    });
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut rd))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())??;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{status}, body not JSON ({e}): {body:?}"))?;
    let clean = async {
        match tokio::time::timeout(Duration::from_secs(10), writer).await {
            Err(_) => return Err("still writing after 10 s".to_owned()),
            Ok(joined) => joined
                .unwrap()
                .map_err(|e| format!("writing the body failed: {e}"))?,
        }
        let mut rest = Vec::new();
        match tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut rest)).await {
            Err(_) => Err("no EOF within 10 s".to_owned()),
            Ok(Err(e)) => Err(format!("after the answer: {e}")),
            Ok(Ok(_)) if !rest.is_empty() => Err(format!("{} bytes after the answer", rest.len())),
            Ok(Ok(_)) => Ok(()),
        }
    }
    .await;
    Ok((status, body, clean))
}

/// An 8 MiB body is refused from its `Content-Length` before it is read, and the client
/// still reads the whole 413, whether it sends the body at once or slowly: the server
/// closes lingering (it shuts its side, then reads what still comes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_reaches_a_client_still_sending_its_body() {
    let h = TestHerald::start().await;
    for (how, pause) in [
        ("fast", Duration::ZERO),
        ("slowly", Duration::from_millis(3)),
    ] {
        let (status, body, clean) = oversized_post_raw(&h, 8 * 1024 * 1024, pause)
            .await
            .unwrap_or_else(|e| panic!("8 MiB sent {how}: {e}"));
        assert_eq!(status, 413, "sent {how}: {body}");
        assert_eq!(body["error"]["code"], "payload_too_large", "sent {how}");
        clean.unwrap_or_else(|e| panic!("sent {how}: not a clean close: {e}"));
    }
    assert_eq!(h.event_count().await, 0);
    h.assert_healthy().await;
}

/// Many clients at once, each sending a 2 MiB body while the CPU is busy: every one
/// gets its 413 (before lingering closes, some saw a reset instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_gets_its_413_under_load() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 40;
    let h = TestHerald::start().await;
    // Two spinning threads: the server and the clients compete for the cores.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    let body = body_of_len(2 * 1024 * 1024);
    let clients = (0..CLIENTS).map(|_| {
        let h = &h;
        let body = body.clone();
        async move {
            let mut failures = Vec::new();
            for round in 0..ROUNDS {
                match post_raw_result(h, body.clone()).await {
                    Ok(resp) => {
                        if let Err(e) = check_error(resp, &[413], &["payload_too_large"]).await {
                            failures.push(format!("round {round}: {e}"));
                        }
                    }
                    Err(e) => failures.push(format!("round {round}: no response: {e:?}")),
                }
            }
            failures
        }
    });
    let failures: Vec<String> = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed:\n{}",
        failures.len(),
        CLIENTS * ROUNDS,
        failures.join("\n")
    );
    assert_eq!(h.event_count().await, 0);
    h.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_bytes_flag_sets_the_limit() {
    let h = TestHerald::start_with(&["--max-body-bytes", "1000"]).await;
    let resp = post_raw(&h, body_of_len(1000)).await;
    assert_eq!(
        resp.status(),
        201,
        "a body of exactly the limit is accepted"
    );
    let resp = post_raw(&h, body_of_len(1001)).await;
    check_error(resp, &[413], &["payload_too_large"])
        .await
        .expect("one byte over --max-body-bytes");
    assert_eq!(h.event_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_get_400_invalid_query() {
    let h = TestHerald::start().await;
    h.publish("hub.q.x", json!({})).await;
    let cases: &[(&str, &[&str])] = &[
        ("limit=0", &["invalid_query"]),
        ("limit=1001", &["invalid_query"]),
        ("limit=abc", &["invalid_query"]),
        ("limit=-1", &["invalid_query"]),
        ("limit=1.5", &["invalid_query"]),
        ("since=garbage", &["invalid_query"]),
        ("until=garbage", &["invalid_query"]),
        ("since=2025-13-45T00:00:00Z", &["invalid_query"]),
        ("correlation_id=garbage", &["invalid_query"]),
        ("after_seq=abc", &["invalid_query"]),
        ("after_seq=-1", &["invalid_query"]),
        ("unknown=1", &["invalid_query"]),
        ("subject=hub.a&bogus=2", &["invalid_query"]),
        ("subject=hub..x", &["invalid_query", "invalid_subject"]),
        ("subject=hub.%3E.x", &["invalid_query", "invalid_subject"]),
        // Unicode format characters: U+202E, U+200B, U+FEFF, U+2066 (UTF-8, encoded).
        ("subject=hub.a%E2%80%AEb", &["invalid_query"]),
        ("subject=hub.%E2%80%8B.%3E", &["invalid_query"]),
        ("subject=%EF%BB%BFhub.*", &["invalid_query"]),
        ("subject=hub.%E2%81%A6x", &["invalid_query"]),
        ("payload_contains=", &["invalid_query"]),
        (
            &*Box::leak(format!("payload_contains={}", "x".repeat(257)).into_boxed_str()),
            &["invalid_query"],
        ),
        ("payload_contains=a&payload_contains=b", &["invalid_query"]),
    ];
    let mut failures = Vec::new();
    for (query, codes) in cases {
        let resp = h
            .http
            .get(format!("{}/api/events?{query}", h.base_url()))
            .send()
            .await
            .unwrap();
        if let Err(e) = check_error(resp, &[400], codes).await {
            failures.push(format!("GET /api/events?{query}: {e}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // Controls: the edges of the valid range.
    for ok in ["limit=1", "limit=1000", "after_seq=0", "subject=hub.%3E"] {
        let resp = h
            .http
            .get(format!("{}/api/events?{ok}", h.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET /api/events?{ok}");
    }
}

/// A format character is refused by code point, on publish (422) and in filters (400):
/// such characters make two different subjects look the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_characters_in_subjects_are_named_by_code_point() {
    let h = TestHerald::start().await;
    let resp = h
        .post_event(&json!({"subject": "hub.invoice\u{202e}fdp.created", "payload": {}}))
        .await;
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_subject");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("U+202E"), "{message}");
    let resp = h
        .http
        .get(h.url("/api/events?subject=hub.%E2%80%8B.%3E"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("U+200B"), "{message}");
    assert!(h.all_events().await.is_empty());
}

/// As in NATS, `*` and `>` are wildcards only as whole tokens (nats-server's
/// TestSublistValidLiteralSubjects: `checkBool(IsValidLiteralSubject("foo*"), true, t)`):
/// subjects with them inside a token are published, and as filters match only themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_characters_inside_tokens_are_literal() {
    let h = TestHerald::start().await;
    for subject in [
        "hub.x.foo*",
        "hub.x.foo",
        "hub.x.foobar",
        "hub.y.foo*",
        "hub.x.x>y",
        "hub.x.foo.*-",
        "hub.x.a%",
        "hub.x.a_b",
        "hub.x.aXb",
    ] {
        let resp = h
            .post_event(&json!({"subject": subject, "payload": {}}))
            .await;
        assert_eq!(resp.status(), 201, "{subject}");
    }
    let h = &h;
    let subjects = |filter: &'static str| async move {
        h.query(&[("subject", filter.into())])
            .await
            .iter()
            .map(|e| e["subject"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(subjects("hub.x.foo*").await, ["hub.x.foo*"]);
    assert_eq!(subjects("hub.*.foo*").await, ["hub.x.foo*", "hub.y.foo*"]);
    assert_eq!(subjects("hub.x.x>y").await, ["hub.x.x>y"]);
    assert_eq!(subjects("hub.x.foo.*-").await, ["hub.x.foo.*-"]);
    assert_eq!(subjects("hub.x.foo.>").await, ["hub.x.foo.*-"]);
    assert_eq!(subjects("hub.x.a%").await, ["hub.x.a%"]);
    assert_eq!(subjects("hub.x.a_b").await, ["hub.x.a_b"]);
    assert_eq!(subjects("hub.%.foo*").await, ["hub.x.foo*", "hub.y.foo*"]);
    // The same on a live stream: only the literal subject arrives.
    let mut ws = h.ws_connect(&stream_path("hub.x.foo*", "")).await;
    h.sync_live(&mut ws, "hub.x.foo*").await;
    h.publish("hub.x.fooz", json!({})).await;
    h.publish("hub.x.foo*", json!({"last": true})).await;
    let frame = expect_event(&mut ws, Duration::from_secs(5), "hub.x.foo*").await;
    assert_eq!(frame["subject"], "hub.x.foo*");
    assert_eq!(frame["data"]["payload"], json!({"last": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_wrong_methods_and_bad_ids() {
    let h = TestHerald::start().await;
    let r = h.publish("hub.r.x", json!({})).await;
    let id = r["event_id"].as_str().unwrap().to_owned();
    let random = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(reqwest::Method, String, &[u16], &[&str])> = vec![
        (
            reqwest::Method::GET,
            "/api/events/not-a-uuid".into(),
            &[400],
            &[],
        ),
        (reqwest::Method::GET, "/api/events/42".into(), &[400], &[]),
        (
            reqwest::Method::GET,
            format!("/api/events/{random}"),
            &[404],
            &[],
        ),
        (reqwest::Method::GET, "/nope".into(), &[404], &["not_found"]),
        (reqwest::Method::GET, "/api".into(), &[404], &["not_found"]),
        (
            reqwest::Method::GET,
            format!("/api/events/{id}/extra"),
            &[404],
            &["not_found"],
        ),
        (
            reqwest::Method::POST,
            "/nope".into(),
            &[404],
            &["not_found"],
        ),
        (reqwest::Method::DELETE, "/api/events".into(), &[405], &[]),
        (reqwest::Method::PUT, "/api/events".into(), &[405], &[]),
        (reqwest::Method::PATCH, "/api/events".into(), &[405], &[]),
        (reqwest::Method::POST, "/health".into(), &[405], &[]),
        (reqwest::Method::POST, "/health/nats".into(), &[405], &[]),
        (
            reqwest::Method::DELETE,
            format!("/api/events/{id}"),
            &[405],
            &[],
        ),
        (
            reqwest::Method::POST,
            format!("/api/events/{id}"),
            &[405],
            &[],
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, statuses, codes) in cases {
        let resp = h
            .http
            .request(method.clone(), h.url(&path))
            .header("content-type", "application/json")
            .body(r#"{"subject": "hub.r.y", "payload": {}}"#)
            .send()
            .await
            .unwrap();
        if let Err(e) = check_error(resp, statuses, codes).await {
            failures.push(format!("{method} {path}: {e}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // The event is still there and nothing else was stored.
    let all = h.all_events().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_never_causes_a_5xx() {
    let h = TestHerald::start().await;
    let mut failures = Vec::new();

    // Unterminated: invalid JSON, whatever the depth.
    for (name, open) in [("100k [", "["), ("100k {\"a\":", "{\"a\":")] {
        let mut body = String::from(r#"{"subject": "hub.deep", "payload": "#);
        body.push_str(&open.repeat(100_000));
        let resp = post_raw(&h, body.into_bytes()).await;
        if let Err(e) = check_error(resp, &[400], &["invalid_json"]).await {
            failures.push(format!("{name}: {e}"));
        }
        h.assert_healthy().await;
    }
    // Also as a bare body.
    let resp = post_raw(&h, "[".repeat(100_000).into_bytes()).await;
    if let Err(e) = check_error(resp, &[400], &["invalid_json"]).await {
        failures.push(format!("bare 100k [: {e}"));
    }
    h.assert_healthy().await;
    assert_eq!(h.event_count().await, 0, "nothing stored");

    // Well-formed but 50k levels deep: past the depth limit, refused like any payload
    // nested deeper than 100 levels.
    let mut body = String::from(r#"{"subject": "hub.deep", "payload": {"a": "#);
    body.push_str(&"[".repeat(50_000));
    body.push_str(&"]".repeat(50_000));
    body.push_str("}}");
    let resp = post_raw(&h, body.into_bytes()).await;
    if let Err(e) = check_error(resp, &[422], &["invalid_payload"]).await {
        failures.push(format!("well-formed 50k deep: {e}"));
    }
    h.assert_healthy().await;
    h.publish("hub.deep.after", json!({})).await;
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A JSON object nested `depth` levels deep in all: `{"a": [[…]]}`.
fn nested_object(depth: usize) -> String {
    format!(
        r#"{{"a":{}{}}}"#,
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

/// Sends `payload` (JSON text) as the payload or data on every way in; answers, per way
/// in, the HTTP status, the error code (for a batch, its one item's code) and the
/// error message (or the stored event's id when it was accepted).
async fn publish_everywhere(
    h: &TestHerald,
    payload: &str,
    n: usize,
) -> Vec<(String, u16, String, String)> {
    let ok_ce = format!(
        r#"{{"specversion":"1.0","id":"ok-{n}","source":"/poison","type":"com.poison.ok"}}"#
    );
    let ce = |id: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}-{n}","source":"/poison","type":"com.poison","data":{payload}}}"#
        )
    };
    let requests: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "POST /api/events",
            h.http
                .post(h.url("/api/events"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"subject":"hub.poison","payload":{payload}}}"#)),
        ),
        (
            "POST /api/events:batch",
            h.http
                .post(h.url("/api/events:batch"))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"events":[{{"subject":"hub.poison.ok","payload":{{}}}},{{"subject":"hub.poison","payload":{payload}}}]}}"#
                )),
        ),
        (
            "POST /events/publish",
            h.http
                .post(h.url("/events/publish?source=/poison"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"event_type":"com.poison","id":"legacy-{n}","data":{payload}}}"#)),
        ),
        (
            "POST /rpc bus.publish",
            h.http
                .post(h.url("/rpc"))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"bus.publish","params":{{"topic":"hub.poison","payload":{payload}}}}}"#
                )),
        ),
        (
            "CloudEvents structured",
            h.http
                .post(h.url("/api/events"))
                .header("content-type", "application/cloudevents+json")
                .body(ce("structured")),
        ),
        (
            "CloudEvents batch",
            h.http
                .post(h.url("/api/events"))
                .header("content-type", "application/cloudevents-batch+json")
                .body(format!("[{ok_ce},{}]", ce("batch"))),
        ),
        (
            "CloudEvents binary",
            h.http
                .post(h.url("/api/events"))
                .header("content-type", "application/json")
                .header("ce-specversion", "1.0")
                .header("ce-id", format!("binary-{n}"))
                .header("ce-source", "/poison")
                .header("ce-type", "com.poison")
                .body(payload.to_owned()),
        ),
    ];
    let mut answers = Vec::new();
    for (way, request) in requests {
        let resp = request.send().await.expect("send");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{way}: {e}: {text}"));
        let (code, message) =
            if let Some(error) = body.get("error").filter(|e| e["data"].is_object()) {
                // JSON-RPC: the REST code is in `data.code`.
                (
                    error["data"]["code"].as_str().unwrap_or("").to_owned(),
                    error["message"].as_str().unwrap_or("").to_owned(),
                )
            } else if let Some(item) = body["error"]["items"].get(0) {
                assert_eq!(body["error"]["code"], "invalid_batch", "{way}");
                assert_eq!(item["index"], 1, "{way}: the poisoned item is named");
                (
                    item["code"].as_str().unwrap_or("").to_owned(),
                    item["message"].as_str().unwrap_or("").to_owned(),
                )
            } else if let Some(error) = body.get("error") {
                (
                    error["code"].as_str().unwrap_or("").to_owned(),
                    error["message"].as_str().unwrap_or("").to_owned(),
                )
            } else {
                let id = body["event_id"]
                    .as_str()
                    .or(body["result"]["event_id"].as_str())
                    .or(body["results"][1]["event_id"].as_str())
                    .unwrap_or("")
                    .to_owned();
                (String::new(), id)
            };
        answers.push((way.to_owned(), status, code, message));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_payloads_are_refused_on_every_way_in() {
    let h = TestHerald::start().await;
    // RFC 8259 §4: "The names within an object SHOULD be unique." §8.2 allows strings
    // "containing bit sequences that cannot encode Unicode characters" such as
    // "\uDEAD" but warns "the behavior of software that receives JSON texts containing
    // such values is unpredictable". §9: "An implementation may set limits on the
    // maximum depth of nesting" and "on the range and precision of numbers."
    let poisons = [
        ("101 levels", nested_object(101), "deeper than 100 levels"),
        (
            "100,000 levels",
            nested_object(100_000),
            "deeper than 100 levels",
        ),
        ("1e400", r#"{"n":[1,1e400]}"#.to_owned(), "1e400"),
        ("-1e400", r#"{"n":-1e400}"#.to_owned(), "-1e400"),
        (
            "lone surrogate",
            r#"{"s":"x\ud800y"}"#.to_owned(),
            r"\ud800",
        ),
        (
            "lone low surrogate",
            r#"{"s":["\udc00"]}"#.to_owned(),
            r"\udc00",
        ),
        (
            "duplicate name",
            r#"{"a":1,"b":{"c":1,"c":2}}"#.to_owned(),
            r#""c" twice"#,
        ),
    ];
    let mut failures = Vec::new();
    for (n, (name, payload, says)) in poisons.iter().enumerate() {
        for (way, status, code, message) in publish_everywhere(&h, payload, n).await {
            let rpc = way.starts_with("POST /rpc");
            let expected_status = if rpc { 200 } else { 422 };
            let expected_code = if way.starts_with("CloudEvents") || way == "POST /events/publish" {
                "invalid_cloudevent"
            } else {
                "invalid_payload"
            };
            if status != expected_status || code != expected_code || !message.contains(says) {
                failures.push(format!(
                    "{name} via {way}: {status} {code:?} {message:?}, expected {expected_status} {expected_code} saying {says:?}"
                ));
            }
        }
    }
    assert_eq!(
        h.event_count().await,
        0,
        "nothing of a refused request is stored"
    );
    h.assert_healthy().await;
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // Controls: 100 levels, the largest finite float, a surrogate pair and the same
    // name in sibling objects are fine everywhere, and read back byte for byte.
    let fine = [
        nested_object(100),
        r#"{"n":[1.7976931348623157e308,-1e-400],"s":"\ud83d\ude00","a":{"x":1},"b":{"x":1}}"#
            .to_owned(),
    ];
    for (n, payload) in fine.iter().enumerate() {
        for (way, status, code, id) in publish_everywhere(&h, payload, 100 + n).await {
            if status != 201 && !(way.starts_with("POST /rpc") && status == 200 && code.is_empty())
            {
                failures.push(format!("fine payload {n} via {way}: {status} {code} {id}"));
                continue;
            }
            let json = h
                .http
                .get(h.url(&format!("/api/events/{id}")))
                .send()
                .await
                .unwrap();
            let text = json.text().await.unwrap();
            let structured = h
                .http
                .get(h.url(&format!("/api/events/{id}")))
                .header("accept", "application/cloudevents+json")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if !text.contains(&format!(r#""payload":{payload}"#))
                || !structured.contains(&format!(r#""data":{payload}"#))
            {
                failures.push(format!(
                    "fine payload {n} via {way} does not read back as sent: {} / {}",
                    truncate_for_message(&text),
                    truncate_for_message(&structured)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn truncate_for_message(text: &str) -> String {
    text.chars().take(300).collect()
}

/// Reads one HTTP/1.1 response (headers and a Content-Length body) from `stream`.
async fn read_response(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("response head too long".into());
        }
        match stream.read(&mut chunk).await {
            Ok(0) => return Err(format!("connection closed ({} bytes read)", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read failed: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match stream.read(&mut chunk).await {
            Ok(0) => return Err("connection closed inside the body".into()),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    Ok((status, headers, body))
}

/// After a 413 the connection must either be announced as closing (`Connection:
/// close`) or stay usable: otherwise a pooling client reuses a connection the server
/// is about to close and its next request fails spuriously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_either_says_connection_close_or_keeps_the_connection_usable() {
    use tokio::io::AsyncWriteExt;
    let h = TestHerald::start().await;
    let body = body_of_len(2 * 1024 * 1024);
    let stream = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /api/events HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        h.addr(),
        body.len()
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&body).await?;
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let (status, headers, _) =
        tokio::time::timeout(Duration::from_secs(10), read_response(&mut rd))
            .await
            .expect("413 within 10 s")
            .expect("a response to the oversized request");
    assert_eq!(status, 413);
    let closing = headers
        .iter()
        .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
    if closing {
        return;
    }
    // Not announced as closing: the body must be consumed and the connection reusable.
    let mut wr = match tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("body written within 10 s")
        .unwrap()
    {
        Ok(wr) => wr,
        Err(e) => {
            panic!("413 without `Connection: close`, but the server stopped reading the body: {e}")
        }
    };
    let get = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", h.addr());
    let sent = wr.write_all(get.as_bytes()).await;
    let next = tokio::time::timeout(Duration::from_secs(10), read_response(&mut rd))
        .await
        .expect("an answer within 10 s");
    match (sent, next) {
        (Ok(()), Ok((200, _, _))) => {}
        (sent, next) => panic!(
            "413 without `Connection: close`, but the next request on that connection failed: \
             write {sent:?}, response {:?}",
            next.map(|(s, h, b)| (s, h, String::from_utf8_lossy(&b).into_owned()))
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_subjects_and_bad_escapes_in_queries_name_the_parameter() {
    let h = TestHerald::start().await;
    h.publish("hub.q.x", json!({})).await;
    // RFC 3986 §2.1: "A percent-encoded octet is encoded as a character triplet,
    // consisting of the percent character "%" followed by the two hexadecimal digits
    // representing that octet's numeric value." `%zz` is none, and `%FF` alone is not
    // UTF-8 text: decoding either loosely would filter by some other subject.
    let cases = [
        ("subject=", "`subject` is empty"),
        (
            "subject=%FF",
            "`subject` has percent-escapes that are not UTF-8",
        ),
        (
            "subject=hub.%C0%A0",
            "`subject` has percent-escapes that are not UTF-8",
        ),
        (
            "subject=%zz",
            "`subject` has a `%` that is not a `%XX` escape",
        ),
        (
            "subject=hub.q%",
            "`subject` has a `%` that is not a `%XX` escape",
        ),
        (
            "subject=hub.q.x&subject=hub.x",
            "`subject` is given more than once",
        ),
    ];
    let mut failures = Vec::new();
    for path in ["/api/events", "/api/events/stream"] {
        for (query, says) in cases {
            let url = format!("{}{path}?{query}", h.base_url());
            let resp = h.http.get(&url).send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            let message = body["error"]["message"].as_str().unwrap_or("");
            if status != 400 || body["error"]["code"] != "invalid_query" || !message.contains(says)
            {
                failures.push(format!(
                    "GET {path}?{query}: {status} {body}, expected 400 saying {says:?}"
                ));
            }
        }
    }
    // A real WebSocket client gets the same 400 before any upgrade.
    match h
        .try_ws_connect("/api/events/stream?subject=%zz", None)
        .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        Err(other) => panic!("expected an HTTP 400, got {other}"),
        Ok(_) => panic!("the stream was opened with a malformed subject"),
    }
    // Seed 000 sends a whole-token `%` unescaped; it still means `*`.
    let seed = h
        .http
        .get(format!("{}/api/events?subject=hub.%.x", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(seed.status(), 200);
    assert_eq!(seed.json::<Vec<Value>>().await.unwrap().len(), 1);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
