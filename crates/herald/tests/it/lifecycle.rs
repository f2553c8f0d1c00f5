//! Process lifecycle: SIGTERM/SIGINT shut down gracefully (exit 0 within seconds,
//! WebSockets get close frame 1001, data intact after restart), even with a client that
//! stopped reading; a second `herald serve` on the same data file refuses to start.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_exits_0_and_keeps_data() {
    let mut h = TestHerald::start().await;
    for i in 0..5 {
        h.publish("hub.life.x", json!({"i": i})).await;
    }
    let before = h.all_events().await;
    // An open stream that has caught up, and an idle keep-alive HTTP connection.
    let mut ws = h.ws_connect(&stream_path("hub.>", "&from_seq=0")).await;
    for _ in 0..5 {
        expect_event(&mut ws, Duration::from_secs(10), "replay").await;
    }
    h.assert_healthy().await;

    let pid = h.pid();
    let closing = tokio::spawn(async move {
        for _ in 0..100 {
            match next_frame(&mut ws, Duration::from_secs(10)).await {
                Some(Frame::Event(_)) => continue,
                other => return other,
            }
        }
        None
    });
    send_signal(pid, "TERM");
    let close = tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .expect("WebSocket outcome within 10 s of SIGTERM")
        .unwrap();
    let status = h.wait_exit(Duration::from_secs(5)).await;
    match close {
        Some(Frame::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::Away, "close code 1001: {frame:?}")
        }
        other => panic!("expected a close frame 1001 on SIGTERM, got {other:?}"),
    }
    assert!(
        status.success(),
        "exit status after SIGTERM: {status:?}; stderr:\n{}",
        h.stderr()
    );
    let stdout = h.stdout_lines();
    assert_eq!(
        stdout.len(),
        1,
        "exactly one line on stdout (logs go to stderr): {stdout:?}"
    );

    h.restart().await;
    assert_eq!(h.all_events().await, before, "data intact after restart");
    let next = h.publish("hub.life.after", json!({})).await;
    assert_eq!(seq_of(&next), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0() {
    let mut h = TestHerald::start().await;
    h.publish("hub.life.int", json!({})).await;
    let status = h.signal_and_wait("INT", Duration::from_secs(5)).await;
    assert!(status.success(), "exit status after SIGINT: {status:?}");
    h.restart().await;
    assert_eq!(h.event_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_prompt_even_with_a_stalled_websocket() {
    let mut h = TestHerald::start().await;
    let mut stalled = h
        .ws_connect_with(&stream_path("hub.>", ""), Some(16 * 1024))
        .await;
    h.sync_live(&mut stalled, "hub.stall.probe").await;
    // ~16 MB the stalled client never reads.
    let pad = "y".repeat(8000);
    let mut tasks = Vec::new();
    for p in 0..8 {
        let http = h.http.clone();
        let url = h.url("/api/events");
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let body =
                    json!({"subject": "hub.stall.x", "payload": {"p": p, "i": i, "pad": pad}});
                let resp = http.post(&url).json(&body).send().await.unwrap();
                assert_eq!(resp.status(), 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The server may spend a bounded grace period on the stream it cannot close.
    let status = h.signal_and_wait("TERM", Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "exit status after SIGTERM with a stalled client: {status:?}"
    );
    drop(stalled);
    h.restart().await;
    let probes = h
        .query(&[
            ("subject", "hub.stall.probe".into()),
            ("limit", "1000".into()),
        ])
        .await
        .len();
    assert_eq!(
        h.event_count().await,
        2000 + probes,
        "data intact after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_file_refuses_to_start() {
    let mut h = TestHerald::start().await;
    h.publish("hub.lock.x", json!({})).await;
    let data = h.data_path();
    let mut cmd = Command::new(HERALD);
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    scrub_env(&mut cmd);
    let out = tokio::time::timeout(Duration::from_secs(15), cmd.output())
        .await
        .expect("the second herald exits within 15 s")
        .expect("run herald");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "second herald exited successfully; stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(
        !stdout.contains("herald listening on"),
        "second herald claimed to listen: {stdout:?}"
    );
    let text = format!("{stdout}\n{stderr}").to_lowercase();
    let data_text = data.display().to_string().to_lowercase();
    assert!(
        ["lock", "in use", "already", "another"]
            .iter()
            .any(|w| text.contains(w))
            && (text.contains(&data_text) || text.contains("herald.db")),
        "the refusal should say the data file is in use and name it; got stderr {stderr:?}"
    );
    // The first server is unaffected.
    h.assert_healthy().await;
    let r = h.publish("hub.lock.y", json!({})).await;
    assert_eq!(seq_of(&r), 2);
    // A clean stop releases the lock: the same data file opens again.
    let status = h.terminate().await;
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    h.restart().await;
    assert_eq!(h.event_count().await, 2);
}
