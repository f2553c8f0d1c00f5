//! One configuration: `herald serve --config FILE` runs with the file's settings and
//! declarations (flags and environment still win), `herald config` prints the effective
//! configuration with secrets redacted, and a bad file stops the start with its name and
//! the key.

use serde_json::{json, Value};

use crate::cli::{herald_cmd, run};
use crate::harness::*;

const ADMIN_KEY: &str = "admin-key-from-the-environment-0123";

/// A configuration file in a directory of its own.
fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, text).expect("write herald.toml");
    (dir, path.display().to_string())
}

const FILE: &str = r#"
[server]
hub_id = "file-hub"
port = 1

[limits]
max_body_bytes = 1000
max_query_bytes = 100

[[schemas]]
name = "orders"
subject_pattern = "hub.*.orders.>"
[schemas.schema]
type = "object"
required = ["order_id"]

[[rules]]
id = "from-the-file"
subject_pattern = "hub.*.audit.>"
action = { type = "webhook", url = "https://example.com/hook", secret = "whsec-in-the-file" }

[[retention]]
subjects = "hub.*.metrics.>"
max_age = "30d"
MAX_MSGS = 100000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_with_the_files_settings_and_declarations() {
    let (_dir, path) = config_file(FILE);
    // --listen and --data (flags, from the harness) win over the file's port; the
    // environment wins over the file's query limit.
    let h = TestHerald::start_with_env(
        None,
        &["--config", &path],
        &[("HERALD_MAX_QUERY_BYTES", "4096")],
    )
    .await;

    let root: Value = h
        .http
        .get(h.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root["hub_id"], "file-hub", "{root}");

    // The declared retention policy is in force (seed 004's MAX_MSGS read as max_events).
    let retention: Value = h
        .http
        .get(h.url("/api/retention"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        retention["policies"],
        json!([{"subjects": "hub.*.metrics.>", "max_age": 2_592_000, "max_events": 100_000}]),
        "{retention}"
    );

    // The declared schema is in force.
    let resp = h
        .post_event(&json!({"subject": "hub.file-hub.orders.created", "payload": {"total": 1}}))
        .await;
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "schema_violation", "{body}");
    assert_eq!(body["error"]["schema"], "orders", "{body}");
    let ok = h
        .publish("hub.file-hub.orders.created", json!({"order_id": "o-1"}))
        .await;
    assert_publish_response(&ok);
    let schemas: Value = h
        .http
        .get(h.url("/api/schemas/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(schemas["subject_pattern"], "hub.*.orders.>", "{schemas}");

    // The file's body limit.
    let big = json!({"subject": "hub.file-hub.big", "payload": {"x": "a".repeat(1200)}});
    let resp = h.post_event(&big).await;
    check_error(resp, &[413], &["payload_too_large"])
        .await
        .expect("over the file's max_body_bytes");

    // The environment's query limit (the file's 100 bytes would refuse this one).
    let long_query = format!("/api/events?subject=hub.{}", "a".repeat(300));
    let resp = h.http.get(h.url(&long_query)).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "HERALD_MAX_QUERY_BYTES wins over the file: {}",
        resp.text().await.unwrap()
    );

    // The declared rule is stored, its secret not shown.
    let rules: Value = h
        .http
        .get(h.url("/api/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rules["rules"][0]["id"], "from-the-file", "{rules}");
    assert!(!rules.to_string().contains("whsec-in-the-file"));

    let stderr = h.stderr();
    assert!(!stderr.contains("whsec-in-the-file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_prints_the_effective_configuration_with_secrets_redacted() {
    let (dir, path) = config_file(&format!(
        "{FILE}\n[store]\ndata = \"postgres://herald:pg-password-in-the-file@db.internal:5432/herald\"\n\
         [nats]\nnats_url = [\"nats://relay:nats-password-in-the-file@n1:4222\", \"nats://n2:4222\"]\n"
    ));
    let mut cmd = herald_cmd(&["config", "--config", &path, "--hub-id", "flag-hub"]);
    cmd.env("HERALD_ADMIN_KEY", ADMIN_KEY)
        .env("HERALD_MAX_BODY_BYTES", "2000");
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "herald config failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in [
        ADMIN_KEY,
        "pg-password-in-the-file",
        "nats-password-in-the-file",
        "whsec-in-the-file",
    ] {
        assert!(!stdout.contains(secret), "{secret} is shown:\n{stdout}");
    }
    for line in [
        "hub_id = \"flag-hub\"  # from flag --hub-id",
        "port = 1  # from ",
        "max_body_bytes = 2000  # from env HERALD_MAX_BODY_BYTES",
        "max_streams = 10000  # default",
        "admin_key = \"<redacted>\"  # from env HERALD_ADMIN_KEY",
        "data = \"postgres://herald:***@db.internal:5432/herald\"",
        "nats_url = \"nats://relay:***@n1:4222,nats://n2:4222\"",
        "[[schemas]]",
        "max_age = \"30days\"",
        "max_events = 100000",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    // The output is TOML.
    let text: String = stdout.to_string();
    assert!(text.contains("[server]") && text.contains("[nats]"));
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_toml_in_the_working_directory_is_read_and_none_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = herald_cmd(&["config"]);
    cmd.current_dir(dir.path());
    let out = run(cmd).await;
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hub_id = \"local-hub\"  # default"),
        "{stdout}"
    );

    std::fs::write(
        dir.path().join("herald.toml"),
        "[server]\nhub_id = \"cwd-hub\"\n",
    )
    .unwrap();
    let mut cmd = herald_cmd(&["config"]);
    cmd.current_dir(dir.path());
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hub_id = \"cwd-hub\"  # from ./herald.toml"),
        "{stdout}"
    );
}

/// Runs `herald serve` expecting it to refuse to start; returns its stderr.
async fn refused(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let data_path = data.path().join("herald.db").display().to_string();
    let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--data", &data_path];
    all.extend_from_slice(args);
    let out = run(herald_cmd(&all)).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "herald serve started: {stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "{stderr}"
    );
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_file_stops_the_start_naming_the_file_and_key() {
    let (_dir, path) = config_file("[limits]\nmax_body_bytse = 1000\n");
    let stderr = refused(&["--config", &path]).await;
    assert!(stderr.contains(&path), "{stderr}");
    assert!(
        stderr.contains("unknown field `max_body_bytse`"),
        "{stderr}"
    );

    let (_dir, path) = config_file("[server]\nport = \"eighty\"\n");
    let stderr = refused(&["--config", &path]).await;
    assert!(
        stderr.contains(&path) && stderr.contains("expected u16"),
        "{stderr}"
    );

    let (_dir, path) = config_file(
        "[[schemas]]\nname = \"broken\"\nsubject_pattern = \"hub.>\"\nschema = { type = \"integr\" }\n",
    );
    let stderr = refused(&["--config", &path]).await;
    assert!(stderr.contains("schema \"broken\""), "{stderr}");

    let stderr = refused(&["--config", "/nonexistent/herald.toml"]).await;
    assert!(stderr.contains("/nonexistent/herald.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_keys_open_the_store_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-the-file.db");
    let (_config_dir, path) = config_file(&format!(
        "[server]\nhub_id = \"not-used-here\"\n[store]\ndata = {:?}\n",
        db.display().to_string()
    ));
    let out = run(herald_cmd(&["migrate", "--config", &path])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("from-the-file.db"), "{stdout}");

    let mut cmd = herald_cmd(&["keys", "create", "--admin"]);
    cmd.env("HERALD_CONFIG", &path);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["admin"], true);
    assert!(db.exists());

    // A flag still wins over the file.
    let other = dir.path().join("from-the-flag.db").display().to_string();
    let out = run(herald_cmd(&[
        "migrate", "--config", &path, "--data", &other,
    ]))
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-the-flag.db"));
}
