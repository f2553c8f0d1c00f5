//! `herald backup` and `herald restore` through the binary: a backup taken while events
//! are being published holds every event acknowledged before it, none half-written; it
//! restores into a hub that serves them; a running hub's store, an existing store
//! without `--force`, a damaged backup and PostgreSQL are refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::cli::{herald_cmd, run};
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_event_it_holds() {
    let mut herald = TestHerald::start().await;
    for i in 0..200 {
        herald.publish("hub.b.before", json!({"i": i})).await;
    }
    // Publishers keep going while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, base) = (stop.clone(), herald.base_url().to_owned());
        tokio::spawn(async move {
            let http = http_client();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let response = http
                    .post(format!("{base}/api/events"))
                    .json(&json!({"subject": "hub.b.during", "payload": {"i": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                i += 1;
            }
            i
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = dir.path().join("backup");
    let data = herald.data_path().display().to_string();
    let out = run(herald_cmd(&[
        "backup",
        backup_dir.to_str().unwrap(),
        "--data",
        &data,
    ]))
    .await;
    stop.store(true, Ordering::Relaxed);
    let published_during = writer.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
    let head = manifest["head_seq"].as_u64().unwrap();
    assert!(head >= 200, "{manifest}");
    assert_eq!(manifest["events"], head, "no gaps: {manifest}");
    assert!(published_during > 0);

    // Restoring over the running hub's store is refused.
    let out = run(herald_cmd(&[
        "restore",
        backup_dir.to_str().unwrap(),
        "--data",
        &data,
        "--force",
    ]))
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("running Herald"));

    // Into a new place, and a hub there serves exactly the backed-up events.
    let restored = dir.path().join("restored").join("herald.db");
    let restored_text = restored.to_str().unwrap().to_owned();
    let out = run(herald_cmd(&[
        "restore",
        backup_dir.to_str().unwrap(),
        "--data",
        &restored_text,
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let original = herald.all_events().await;
    herald.terminate().await;
    let copy = TestHerald::start_on(Some(&restored_text), &[]).await;
    let events = copy.all_events().await;
    assert_eq!(events.len() as u64, head);
    assert_eq!(
        events,
        original[..head as usize],
        "the backup holds the first {head} events, value for value"
    );
    // Not again over an existing store without --force.
    let out = run(herald_cmd(&[
        "restore",
        backup_dir.to_str().unwrap(),
        "--data",
        &restored_text,
    ]))
    .await;
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_and_postgres_are_refused() {
    let herald = TestHerald::start().await;
    for i in 0..300 {
        herald
            .publish("hub.b.x", json!({"i": i, "filler": "x".repeat(200)}))
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = dir.path().join("backup");
    let data = herald.data_path().display().to_string();
    let out = run(herald_cmd(&[
        "backup",
        backup_dir.to_str().unwrap(),
        "--data",
        &data,
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second backup into the same directory is refused, not mixed.
    let out = run(herald_cmd(&[
        "backup",
        backup_dir.to_str().unwrap(),
        "--data",
        &data,
    ]))
    .await;
    assert!(!out.status.success());

    // Damage a page in the middle of the copy.
    let file = backup_dir.join("herald.db");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 512] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, bytes).unwrap();
    let target = dir.path().join("restored.db");
    let out = run(herald_cmd(&[
        "restore",
        backup_dir.to_str().unwrap(),
        "--data",
        target.to_str().unwrap(),
    ]))
    .await;
    assert!(!out.status.success(), "a damaged backup is refused");
    assert!(!target.exists(), "and nothing is put in place");

    let out = run(herald_cmd(&[
        "backup",
        dir.path().join("pg").to_str().unwrap(),
        "--data",
        "postgres://user@127.0.0.1:1/db",
    ]))
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"));
}
