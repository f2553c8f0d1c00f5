//! The CLI client: `herald publish` prints the 201 body, `herald query` prints the
//! array, `herald tail` prints one JSON event per line as events arrive; failures exit
//! non-zero.

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::harness::*;

pub(crate) fn herald_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(HERALD);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    scrub_env(&mut cmd);
    cmd
}

pub(crate) async fn run(mut cmd: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("CLI finished within 20 s")
        .expect("run herald CLI")
}

/// Runs the CLI, asserts success, parses stdout as one JSON document.
pub(crate) async fn run_json(args: &[&str]) -> Value {
    let out = run(herald_cmd(args)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "herald {args:?} failed ({:?}): stdout {stdout:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("herald {args:?}: stdout is not one JSON document ({e}): {stdout:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_query_print_the_api_bodies() {
    let h = TestHerald::start().await;
    let url = h.base_url().to_owned();

    let first = run_json(&["publish", "hub.cli.x", r#"{"a":1}"#, "--url", &url]).await;
    assert_publish_response(&first);
    assert_eq!(first["seq"], 1);
    let stored = h.get_event(first["event_id"].as_str().unwrap()).await;
    assert_eq!(stored["subject"], "hub.cli.x");
    assert_eq!(stored["payload"], json!({"a": 1}));

    // The payload from stdin with `-`.
    let mut cmd = herald_cmd(&["publish", "hub.cli.y", "-", "--url", &url]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn herald publish -");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(br#"{"from": "stdin", "n": [1, 2]}"#)
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("publish - finished")
        .unwrap();
    assert!(
        out.status.success(),
        "publish -: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second: Value = serde_json::from_slice(&out.stdout).expect("201 body on stdout");
    assert_publish_response(&second);
    let stored = h.get_event(second["event_id"].as_str().unwrap()).await;
    assert_eq!(stored["payload"], json!({"from": "stdin", "n": [1, 2]}));

    h.publish("hub.other.z", json!({})).await;
    let cid = uuid::Uuid::new_v4().to_string();
    let third = h
        .publish_body(&json!({"subject": "hub.cli.z", "payload": {"c": 3}, "correlation_id": cid}))
        .await;

    let listed = run_json(&["query", "--subject", "hub.cli.*", "--url", &url]).await;
    let listed = listed.as_array().expect("query prints an array");
    for e in listed {
        assert_event_shape(e);
    }
    let subjects: Vec<&str> = listed
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["hub.cli.x", "hub.cli.y", "hub.cli.z"]);
    assert_eq!(
        listed[0],
        h.get_event(first["event_id"].as_str().unwrap()).await
    );

    let paged = run_json(&["query", "--limit", "1", "--after-seq", "1", "--url", &url]).await;
    assert_eq!(seqs(paged.as_array().unwrap()), vec![2]);
    let by_cid = run_json(&["query", "--correlation-id", &cid, "--url", &url]).await;
    let by_cid = by_cid.as_array().unwrap();
    assert_eq!(by_cid.len(), 1);
    assert_eq!(by_cid[0]["id"], third["event_id"]);
    let since = third["timestamp"].as_str().unwrap();
    let by_time = run_json(&["query", "--since", since, "--url", &url]).await;
    assert_eq!(seqs(by_time.as_array().unwrap()), vec![seq_of(&third)]);
    let empty = run_json(&["query", "--subject", "hub.none.*", "--url", &url]).await;
    assert_eq!(empty, json!([]));
}

/// Reads one stdout line of `herald tail` and checks it is one event.
async fn next_line_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("tail: no line within 10 s ({what})"))
        .expect("read tail stdout")
        .unwrap_or_else(|| panic!("tail: stdout ended ({what})"));
    let event: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("tail line is not JSON ({e}): {line}"));
    assert_event_shape(&event);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_one_event_per_line_replay_then_live() {
    let h = TestHerald::start().await;
    let url = h.base_url().to_owned();
    let a = h.publish("hub.cli.a", json!({"n": 1})).await;
    h.publish("hub.elsewhere", json!({})).await;
    let b = h.publish("hub.cli.b.c", json!({"n": 2})).await;

    let mut child = herald_cmd(&["tail", "hub.cli.>", "--from-seq", "0", "--url", &url])
        .spawn()
        .expect("spawn herald tail");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    assert_eq!(
        next_line_event(&mut lines, "replay 1").await["id"],
        a["event_id"]
    );
    assert_eq!(
        next_line_event(&mut lines, "replay 2").await["id"],
        b["event_id"]
    );
    let c = h.publish("hub.cli.live", json!({"n": 3})).await;
    let live = next_line_event(&mut lines, "live").await;
    assert_eq!(live["id"], c["event_id"]);
    assert_eq!(live["payload"], json!({"n": 3}));
    child.start_kill().unwrap();
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("tail exits after kill")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_failures_exit_non_zero() {
    let h = TestHerald::start().await;
    let url = h.base_url().to_owned();
    // A rejected publish (422) is a failure.
    let out = run(herald_cmd(&["publish", "hub..x", "{}", "--url", &url])).await;
    assert!(
        !out.status.success(),
        "publish to an invalid subject exited 0: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!out.stderr.is_empty(), "the failure is explained on stderr");
    // Invalid JSON argument.
    let out = run(herald_cmd(&[
        "publish",
        "hub.cli.x",
        "{nope",
        "--url",
        &url,
    ]))
    .await;
    assert!(!out.status.success(), "publish of invalid JSON exited 0");
    assert_eq!(h.event_count().await, 0, "nothing stored");
    // No server there.
    let dead = "http://127.0.0.1:9";
    let out = run(herald_cmd(&["publish", "hub.cli.x", "{}", "--url", dead])).await;
    assert!(!out.status.success(), "publish to a dead server exited 0");
    let out = run(herald_cmd(&["query", "--url", dead])).await;
    assert!(
        !out.status.success(),
        "query against a dead server exited 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_prefix_puts_the_subject_under_the_hub() {
    let h = TestHerald::start_with(&["--hub-id", "cli-hub"]).await;
    let url = h.base_url().to_owned();
    let short = run_json(&["publish", "project.created", "--prefix", "--url", &url]).await;
    let stored = h.get_event(short["event_id"].as_str().unwrap()).await;
    assert_eq!(stored["subject"], "hub.cli-hub.project.created");
    let full = run_json(&["publish", "hub.other.x", "--prefix", "--url", &url]).await;
    let stored = h.get_event(full["event_id"].as_str().unwrap()).await;
    assert_eq!(stored["subject"], "hub.other.x", "a hub. subject is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_the_commit_and_completions_cover_the_commands() {
    let out = run(herald_cmd(&["--version"])).await;
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    let commit = version
        .trim()
        .strip_prefix(concat!("herald ", env!("CARGO_PKG_VERSION"), " (commit "))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version: {version:?}"));
    let hash = commit.trim_end_matches("-modified");
    assert!(
        hash == "unknown" || (hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit:?}"
    );

    for shell in ["bash", "zsh", "fish"] {
        let out = run(herald_cmd(&["completions", shell])).await;
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for command in ["serve", "export", "import", "consumer"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    let out = run(herald_cmd(&["completions", "cmd.exe"])).await;
    assert!(!out.status.success(), "an unknown shell is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cmd.exe"));
}

/// `herald tenants …`, `herald keys list|add|revoke` and `herald rules …` against a hub
/// that requires keys: each prints the API's answer; a refusal names the error code on
/// stderr and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_manage_tenants_keys_and_rules() {
    const ADMIN: &str = "admin-secret-for-cli-tests-0123456789";
    let h = TestHerald::start_with_env(
        None,
        &[],
        &[("HERALD_AUTH", "required"), ("HERALD_ADMIN_KEY", ADMIN)],
    )
    .await;
    let url = h.url("");
    let url = url.trim_end_matches('/');
    let admin = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--url", url, "--key", ADMIN]);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let json_of = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_json(&args).await
    };

    let tenant = json_of(admin(&[
        "tenants",
        "create",
        r#"{"id": "acme", "subjects": ["hub.acme.>"]}"#,
    ]))
    .await;
    assert_eq!(tenant["id"], "acme");
    let tenants = json_of(admin(&["tenants", "list"])).await;
    assert!(tenants.to_string().contains("\"acme\""), "{tenants}");

    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("key.json");
    std::fs::write(
        &body,
        r#"{"tenant": "acme", "publish": {"allow": ["hub.acme.>"]}, "subscribe": {"allow": ["hub.acme.>"]}}"#,
    )
    .unwrap();
    let made = json_of(admin(&["keys", "add", &format!("@{}", body.display())])).await;
    let (id, secret) = (
        made["id"].as_str().unwrap().to_owned(),
        made["key"].as_str().unwrap().to_owned(),
    );
    assert!(secret.starts_with("hrld_"), "{made}");
    let keys = json_of(admin(&["keys", "list"])).await;
    assert!(keys.to_string().contains(&id), "{keys}");
    assert!(
        !keys.to_string().contains(&secret),
        "a listing never shows a secret"
    );

    // The tenant's key may not list tenants: 403 on stderr, non-zero exit.
    let out = run(herald_cmd(&[
        "tenants", "list", "--url", url, "--key", &secret,
    ]))
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rule = json_of(admin(&[
        "rules",
        "create",
        r#"{"id": "to-nowhere", "subject_pattern": "hub.acme.>", "action": {"type": "webhook", "url": "http://127.0.0.1:9/hook", "max_attempts": 1}}"#,
    ]))
    .await;
    assert_eq!(rule["id"], "to-nowhere");
    assert_eq!(
        json_of(admin(&["rules", "get", "to-nowhere"])).await["id"],
        "to-nowhere"
    );
    assert!(json_of(admin(&["rules", "list"]))
        .await
        .to_string()
        .contains("to-nowhere"));
    json_of(admin(&["rules", "dead-letters", "to-nowhere"])).await;
    json_of(admin(&["rules", "redrive", "to-nowhere"])).await;
    let out = run(herald_cmd(
        &admin(&["rules", "delete", "to-nowhere"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ))
    .await;
    assert!(
        out.status.success(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(herald_cmd(
        &admin(&["rules", "get", "to-nowhere"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ))
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));

    // Revoked: the key is refused at once.
    let out = run(herald_cmd(
        &admin(&["keys", "revoke", &id])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ))
    .await;
    assert!(
        out.status.success(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(herald_cmd(&["query", "--url", url, "--key", &secret])).await;
    assert!(!out.status.success(), "a revoked key is refused");
}
