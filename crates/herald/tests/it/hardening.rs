//! Faults and abuse, as a hostile client or a bad day would bring them: an unread stderr
//! pipe, silent and slow sockets, a full connection or stream cap, malformed HTTP that
//! hyper answers by itself, a huge declared body, and a store that hangs mid-commit.

use std::process::Stdio;
use std::time::{Duration, Instant};

use herald_store::testing::{FailingSync, SmallDisk, TestPostgres};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::harness::*;

/// Sends `request` on a fresh connection and reads until the server closes it (or
/// `wait` passes). Returns the raw answer.
async fn raw_exchange(addr: &str, request: &[u8], wait: Duration) -> String {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status and JSON body of a raw HTTP answer.
fn status_and_json(answer: &str) -> (u16, Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let json =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {answer:?}"));
    (status, json)
}

/// Whether the server closed `socket` (reads EOF or a reset) within `wait`.
async fn closed_within(socket: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, socket.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// The hub used to write its log to stderr from its async workers: once a pipe nobody
/// read was full (64 KiB), both workers blocked in `write(2)` and every route stopped
/// answering. Now a full pipe can only cost log lines, which are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_stderr_pipe_cannot_freeze_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(HERALD);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("herald.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // The pipe under test: never read.
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    scrub_env(&mut cmd);
    // The access log: one line per request.
    cmd.env("RUST_LOG", "debug");
    let mut child = cmd.spawn().expect("spawn");
    let _unread_stderr = child.stderr.take();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("listening line in time")
        .unwrap()
        .unwrap();
    let base = parse_listening_line(&line).expect("listening line");
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

    // Far more log lines than a pipe and the log buffer hold together.
    let http = http_client();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for _ in 0..3_000 {
                    let started = Instant::now();
                    let response = tokio::time::timeout(
                        Duration::from_secs(5),
                        http.get(format!("{base}/health")).send(),
                    )
                    .await
                    .expect("/health answers within 5 s with stderr unread")
                    .unwrap();
                    assert_eq!(response.status(), 200);
                    slowest = slowest.max(started.elapsed());
                }
                slowest
            })
        })
        .collect();
    for worker in workers {
        let slowest = worker.await.unwrap();
        assert!(
            slowest < Duration::from_secs(2),
            "slowest /health: {slowest:?}"
        );
    }
    // The dropped lines are counted (the counter is refreshed once a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dropped = metric_value(
            &metrics_text(&http, &base).await,
            "herald_log_lines_dropped_total",
        )
        .unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "herald_log_lines_dropped_total stays 0 while stderr is unread"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill().await;
}

/// Slowloris: sockets that send nothing, or drip a header line now and then, used to
/// stay open for ever and lock every client out at the connection cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_dripping_sockets_are_cut_off_and_health_is_served_at_the_cap() {
    let herald = TestHerald::start_with(&[
        "--max-connections",
        "4",
        "--reserve-connections",
        "2",
        "--header-read-timeout-secs",
        "2",
    ])
    .await;
    let addr = herald.addr();
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut dripping = TcpStream::connect(&addr).await.unwrap();
    dripping
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // At the cap: health is still answered, on the reserve, at once.
    let started = Instant::now();
    let answer = raw_exchange(
        &addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (status, body) = status_and_json(&answer);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(body["status"], "healthy");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    // Anything else on the reserve is refused politely.
    let answer = raw_exchange(
        &addr,
        b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (status, body) = status_and_json(&answer);
    assert_eq!(status, 503, "{answer}");
    assert_eq!(body["error"]["code"], "too_many_connections");
    assert!(answer.to_ascii_lowercase().contains("retry-after"));

    // The drip goes on, a line a second: the head is still incomplete after 2 s.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = dripping
            .write_all(format!("X-Drip-{i}: 1\r\n").as_bytes())
            .await;
    }
    assert!(closed_within(&mut dripping, Duration::from_secs(2)).await);
    for socket in &mut silent {
        assert!(closed_within(socket, Duration::from_secs(1)).await);
    }
    // And ordinary clients are served again.
    let events = herald.query(&[]).await;
    assert!(events.is_empty());
}

/// With every stream open (and as many streams as connections), a new stream and
/// `/health` used to hang in the backlog; now the reserve answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_cap_still_answers_health_and_refuses_new_streams() {
    let herald = TestHerald::start_with(&["--max-connections", "3", "--max-streams", "3"]).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(herald.ws_connect(&stream_path("hub.>", "")).await);
    }
    let answer = raw_exchange(
        &herald.addr(),
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_and_json(&answer).0, 200, "{answer}");
    let refused = herald
        .try_ws_connect(&stream_path("hub.>", ""), None)
        .await
        .expect_err("no fourth stream");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 503);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_streams");
        }
        other => panic!("expected a 503 answer, got {other}"),
    }
    for ws in streams {
        ws_close(ws).await;
    }
}

/// What hyper answers by itself — a malformed request (400), a URI over 64 KiB (414),
/// too many headers (431) — used to have an empty body. Every error is JSON.
#[tokio::test]
async fn malformed_http_gets_json_errors() {
    let herald = TestHerald::start().await;
    let addr = herald.addr();
    let wait = Duration::from_secs(5);

    let answer = raw_exchange(&addr, b"NOT HTTP AT ALL\r\n\r\n", wait).await;
    let (status, body) = status_and_json(&answer);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );

    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let answer = raw_exchange(&addr, long_uri.as_bytes(), wait).await;
    let (status, body) = status_and_json(&answer);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (414, Some("uri_too_long"))
    );

    let mut many_headers = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many_headers.push_str(&format!("X-{i}: a\r\n"));
    }
    many_headers.push_str("\r\n");
    let answer = raw_exchange(&addr, many_headers.as_bytes(), wait).await;
    let (status, body) = status_and_json(&answer);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (431, Some("headers_too_large"))
    );
    herald.assert_healthy().await;
}

/// `Content-Length: 10000000000` used to wait for a body that never comes; the limit is
/// known from the header, so the answer is an immediate 413.
#[tokio::test]
async fn an_oversized_declared_body_is_refused_before_it_is_sent() {
    let herald = TestHerald::start().await;
    for path in ["/api/events", "/api/events:batch", "/rpc"] {
        let started = Instant::now();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 10000000000\r\n\r\n"
        );
        let answer = raw_exchange(&herald.addr(), request.as_bytes(), Duration::from_secs(5)).await;
        let (status, body) = status_and_json(&answer);
        if path == "/rpc" {
            // JSON-RPC answers in-band: "Invalid Request" with the REST code in data.
            assert_eq!(status, 200, "{answer}");
            assert_eq!(body["error"]["code"], -32600);
            assert_eq!(body["error"]["data"]["code"], "payload_too_large");
        } else {
            assert_eq!(status, 413, "{path}: {answer}");
            assert_eq!(body["error"]["code"], "payload_too_large");
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(herald.event_count().await, 0);
}

/// A publish that reached the commit queue used to be answered `408` when the store
/// hung, and was committed after all once it came back. Now such a request is answered
/// `503 outcome_unknown` with the event ids; publishing again with the same id settles
/// it (stored once). Meanwhile `/health` says the store is unhealthy, and says so no
/// longer once commits go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_answers_outcome_unknown_and_unhealthy_never_rejected() {
    let pg = TestPostgres::local(&[]).expect("start PostgreSQL");
    let url = pg.create_database().await.unwrap();
    let herald = TestHerald::start_on(Some(&url), &["--request-timeout-secs", "2"]).await;
    herald.publish("hub.t.before", json!({})).await;

    pg.freeze().await.unwrap();
    let id = uuid::Uuid::new_v4();
    let body = json!({"id": id, "subject": "hub.t.hung", "payload": {"n": 1}});
    let response = herald.post_event(&body).await;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "outcome_unknown", "{answer}");
    assert_eq!(answer["error"]["event_ids"], json!([id]));

    // The commit hangs: health says so (a stall counts after 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        let response = herald.http.get(herald.url("/health")).send().await.unwrap();
        let status = response.status().as_u16();
        let health: Value = response.json().await.unwrap();
        if status == 503 {
            break health;
        }
        assert!(Instant::now() < deadline, "still {status} {health}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["database"], "unhealthy");

    pg.thaw().await.unwrap();
    // Publishing again with the same id settles it: stored exactly once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let settled = loop {
        let response = herald.post_event(&body).await;
        let status = response.status().as_u16();
        if status == 200 || status == 201 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "retry still answered {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(settled["event_id"], json!(id));
    let stored: Vec<Value> = herald
        .all_events()
        .await
        .into_iter()
        .filter(|e| e["id"] == json!(id))
        .collect();
    assert_eq!(stored.len(), 1, "stored exactly once");
    herald.assert_healthy().await;
}

/// A full disk: publishes are refused with 503 (nothing half-stored), `/health` says
/// unhealthy with the reason instead of `healthy`, the log is not flooded, and once
/// there is room again everything works without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_health_unhealthy_and_recovers() {
    let Some(disk) = SmallDisk::mount("3m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = disk.dir.path().join("herald.db");
    let herald =
        TestHerald::start_with_env(Some(data.to_str().unwrap()), &[], &[("RUST_LOG", "warn")])
            .await;
    let payload = json!({"blob": "x".repeat(16 * 1024)});
    let mut stored = 0usize;
    let mut refused = None;
    for i in 0..2_000 {
        let response = herald
            .post_event(&json!({"subject": "hub.t.fill", "payload": payload}))
            .await;
        match response.status().as_u16() {
            201 => stored += 1,
            status => {
                let body: Value = response.json().await.unwrap();
                refused = Some((i, status, body));
                break;
            }
        }
    }
    let (_, status, body) = refused.expect("the disk fills up");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");

    let response = herald.http.get(herald.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert_eq!(health["details"]["database_writable"], false, "{health}");
    assert!(health["details"]["database_error"].is_string(), "{health}");

    // A few seconds of a full disk: the log stays short (checkpoint failures back off
    // and are logged once a minute; commit failures once every 10 s).
    for _ in 0..10 {
        let _ = herald
            .post_event(&json!({"subject": "hub.t.more", "payload": payload}))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = herald.stderr();
    assert!(log.lines().count() < 20, "the log is flooded:\n{log}");

    // Room again: publishing works and health is healthy, without a restart.
    disk.resize("64m");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = herald
            .post_event(&json!({"subject": "hub.t.after", "payload": {}}))
            .await;
        if response.status() == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "still {}", response.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    herald.assert_healthy().await;
    assert_eq!(herald.event_count().await, stored + 1);
}

/// The disk fails an `fsync`: the publish is answered 503 and from then on every write
/// is refused, even once syncs work again (fail-stop: the kernel may have dropped the
/// pages it could not write, so a later sync that succeeds proves nothing), while reads
/// go on. After a restart exactly the acknowledged events are there: none of a refused
/// publish, though SQLite had written its commit to the WAL before the sync failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_stops_every_write_and_nothing_refused_is_stored_later() {
    let Some(failing) = FailingSync::build() else {
        eprintln!("SKIPPED: no C compiler to build the failing-sync library");
        return;
    };
    let env = failing.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut herald = TestHerald::start_with_env(None, &[], &env).await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let body = herald.publish("hub.t.before", json!({"i": i})).await;
        acknowledged.push(body["event_id"].as_str().unwrap().to_owned());
    }
    // The first sync to fail is the next commit's (of frames after those in the WAL,
    // or of the WAL's header when a checkpoint has just copied them all) or, rarely, a
    // checkpoint's: the outcome must be the same.
    failing.fail();
    let refused_id = "0190f5a0-0000-7000-8000-00000000f5a1";
    let response = herald
        .post_event(&json!({"id": refused_id, "subject": "hub.t.refused", "payload": {}}))
        .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");

    failing.heal();
    let response = herald
        .post_event(&json!({"subject": "hub.t.after_heal", "payload": {}}))
        .await;
    assert_eq!(response.status(), 503, "a write after a failed sync");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restarted"),
        "{body}"
    );
    let response = herald
        .http
        .put(herald.url("/api/consumers/after-heal"))
        .json(&json!({"filter_subjects": ["hub.>"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503, "other writes are refused too");
    let response = herald.http.get(herald.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["status"], "unhealthy", "{health}");
    // Reads go on, and show only what was acknowledged.
    let ids = |events: Vec<Value>| -> Vec<String> {
        events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(herald.all_events().await), acknowledged);
    assert!(
        herald.stderr().contains("refusing every further write"),
        "{}",
        herald.stderr()
    );

    herald.terminate().await;
    herald.restart().await;
    herald.assert_healthy().await;
    assert_eq!(
        ids(herald.all_events().await),
        acknowledged,
        "after a restart, exactly the acknowledged events"
    );
    let response = herald
        .http
        .get(herald.url(&format!("/api/events/{refused_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "the refused event was not stored");
    // The log goes on, gap-free after the last acknowledged seq.
    let body = herald.publish("hub.t.after_restart", json!({})).await;
    assert_eq!(body["seq"], 6, "{body}");
}

/// kill -9 on a full disk, then a restart while it is still full: Herald starts (opening
/// the store writes nothing), answers reads with everything acknowledged, stores or
/// refuses (503) a publish as the room left in the WAL allows, and takes publishes again
/// once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_on_a_full_disk_starts_again_on_it() {
    let Some(disk) = SmallDisk::mount("3m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = disk.dir.path().join("herald.db");
    let mut herald =
        TestHerald::start_with_env(Some(data.to_str().unwrap()), &[], &[("RUST_LOG", "warn")])
            .await;
    let payload = json!({"blob": "x".repeat(16 * 1024)});
    let mut stored = 0usize;
    loop {
        let response = herald
            .post_event(&json!({"subject": "hub.t.fill", "payload": payload}))
            .await;
        match response.status().as_u16() {
            201 => stored += 1,
            503 => break,
            status => panic!("{status}"),
        }
        assert!(stored < 2_000, "the disk never filled up");
    }

    herald.kill9().await;
    // Not a byte left: a ballast file takes whatever the store did not.
    {
        use std::io::Write;
        let mut ballast = std::fs::File::create(disk.dir.path().join("ballast")).unwrap();
        while ballast.write_all(&[0u8; 4096]).is_ok() {}
        while ballast.write_all(&[0u8; 1]).is_ok() {}
    }
    herald.restart().await;
    assert_eq!(herald.event_count().await, stored);
    // Still full: a small publish is stored when the WAL has space to reuse, and refused
    // with 503 when not; never half-stored.
    let response = herald
        .post_event(&json!({"subject": "hub.t.while_full", "payload": {}}))
        .await;
    match response.status().as_u16() {
        201 => stored += 1,
        503 => {}
        status => panic!("{status}"),
    }

    disk.resize("64m");
    let body = herald.publish("hub.t.after", json!({})).await;
    assert_eq!(body["seq"], stored as u64 + 1, "{body}");
    assert_eq!(herald.event_count().await, stored + 1);
    herald.assert_healthy().await;
}

/// The payload depth limit is configurable (downwards from 100).
#[tokio::test]
async fn the_json_depth_limit_is_configurable() {
    let herald = TestHerald::start_with(&["--max-json-depth", "4"]).await;
    let nested = |depth: usize| -> Value {
        let mut value = json!(1);
        for _ in 0..depth {
            value = json!({"a": value});
        }
        value
    };
    let response = herald
        .post_event(&json!({"subject": "hub.t.deep", "payload": nested(4)}))
        .await;
    assert_eq!(response.status(), 201);
    let response = herald
        .post_event(&json!({"subject": "hub.t.deep", "payload": nested(5)}))
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_payload");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4 levels"),
        "{body}"
    );
    assert_eq!(herald.event_count().await, 1);
}

/// The new limits refuse values that cannot work, at start, with a message.
#[tokio::test]
async fn bad_limit_settings_stop_the_server_at_start() {
    for (flag, value) in [
        ("--max-json-depth", "0"),
        ("--max-json-depth", "101"),
        ("--header-read-timeout-secs", "0"),
        ("--reserve-connections", "lots"),
        ("--max-consumers", "0"),
        ("--max-consumers", "many"),
        ("--query-scan-budget", "999"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(HERALD);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("herald.db"))
            .args([flag, value])
            .stdin(Stdio::null());
        scrub_env(&mut cmd);
        let output = tokio::time::timeout(Duration::from_secs(10), cmd.output())
            .await
            .expect("exits at once")
            .unwrap();
        assert!(!output.status.success(), "{flag} {value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(flag.trim_start_matches("--")) || stderr.contains(flag),
            "{flag} {value}: {stderr}"
        );
        assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
    }
}

/// The scan budget is a setting: a payload search that matches nothing stops after that
/// many rows and says where to go on from (`X-Next-After-Seq`); with the default it reads
/// the whole (small) log in one request.
#[tokio::test]
async fn the_query_scan_budget_is_configurable() {
    let events: Vec<Value> = (0..2_500)
        .map(|i| json!({"subject": "hub.t.scan", "payload": {"i": i}}))
        .collect();
    let next_after = |h: &TestHerald| {
        let request = h
            .http
            .get(h.url("/api/events"))
            .query(&[("payload_contains", "nothing-has-this")]);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let next: u64 = response.headers()["x-next-after-seq"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body.as_array().map(Vec::len), Some(0), "{body}");
            next
        }
    };
    for (args, expected) in [
        (&[][..], 2_500),
        (&["--query-scan-budget", "1000"][..], 1_000),
    ] {
        let h = TestHerald::start_with(args).await;
        for chunk in events.chunks(1_000) {
            let response = h
                .http
                .post(h.url("/api/events:batch"))
                .json(&json!({ "events": chunk }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
        }
        let next = next_after(&h).await;
        assert!(
            next <= expected && next + 2 >= expected,
            "{args:?}: went on from {next}, expected about {expected}"
        );
    }
}

/// A pattern that starts with a wildcard and matches nothing, on a store with more
/// distinct subjects than the query planner examines, is read by scan. Each query stops
/// at the scan budget (`X-Next-After-Seq` goes on from there), so 32 of them at once
/// cannot hold the readers for long, and `/health` has a reader of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_queries_that_match_nothing_are_bounded_and_do_not_starve_health() {
    let h = TestHerald::start().await;
    let http = http_client();
    let total = 60_000usize;
    for start in (0..total).step_by(1000) {
        let events: Vec<Value> = (start..start + 1000)
            .map(|i| json!({"subject": format!("hub.s{}.x", i % 12_000), "payload": {"i": i}}))
            .collect();
        let response = http
            .post(h.url("/api/events:batch"))
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let head = total as u64;
    let query = |after: u64| {
        http.get(h.url("/api/events"))
            .query(&[
                ("subject", "*.nomatch.>"),
                ("limit", "100"),
                ("after_seq", &after.to_string()),
            ])
            .send()
    };

    // One page stops short of the head and says where to go on; following it ends there.
    let first = query(0).await.unwrap();
    let next: u64 = first.headers()["x-next-after-seq"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(first.json::<Value>().await.unwrap(), json!([]));
    assert!(
        next > 0 && next < head,
        "the first page stops early: {next}"
    );
    let mut after = next;
    for _ in 0..10 {
        let page = query(after).await.unwrap();
        after = page.headers()["x-next-after-seq"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if after == head {
            break;
        }
    }
    assert_eq!(after, head);

    // 32 at once, again and again, while /health is asked.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hostile: Vec<_> = (0..32)
        .map(|_| {
            let (http, url, stop) = (http.clone(), h.url("/api/events"), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = http
                        .get(&url)
                        .query(&[("subject", "*.nomatch.>"), ("limit", "100")])
                        .send()
                        .await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let health = http.get(h.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in hostile {
        task.await.unwrap();
    }
    assert!(
        slowest < Duration::from_millis(1000),
        "/health took {slowest:?} under 32 wildcard queries"
    );
}

/// A client may send any token as a method (RFC 9110 §9.1: "method = token"); each one
/// used to become a label of `herald_http_requests_total`, so invented methods grew the
/// metrics without bound. They are counted as `OTHER`, with the 405 they get.
#[tokio::test]
async fn invented_methods_do_not_grow_the_metrics() {
    let herald = TestHerald::start().await;
    let addr = herald.addr();
    for i in 0..20 {
        let request =
            format!("INVENTED{i} /api/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(&addr, request.as_bytes(), Duration::from_secs(5)).await;
        let (status, body) = status_and_json(&answer);
        assert_eq!(status, 405, "{body}");
    }
    let metrics = herald.metrics().await;
    assert!(!metrics.contains("INVENTED"), "{metrics}");
    assert!(
        metrics.contains(
            r#"herald_http_requests_total{method="OTHER",route="/api/events",status="405"} 20"#
        ),
        "{metrics}"
    );
}
