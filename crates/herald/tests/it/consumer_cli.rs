//! `herald consumer …` against a running hub: create, list, info, fetch (one JSON line
//! per message, `--ack`), ack, nak, dead letters, redrive, delete; refusals print the
//! hub's error code and message on stderr and exit non-zero.

use serde_json::{json, Value};

use crate::cli::{herald_cmd, run, run_json};
use crate::harness::*;

/// Runs `herald consumer <args> --url <url>`.
async fn consumer(url: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["consumer"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--url", url]);
    run(herald_cmd(&all)).await
}

/// As [`consumer`], asserting success; stdout parsed as one JSON document.
async fn consumer_json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["consumer"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--url", url]);
    run_json(&all).await
}

/// `herald consumer fetch …`: asserts success; one JSON message per stdout line.
async fn fetch(url: &str, args: &[&str]) -> Vec<Value> {
    let out = consumer(url, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fetch {args:?}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a fetch line is not JSON ({e}): {line:?}"))
        })
        .collect()
}

/// Asserts a failing run whose stderr names `code`; answers stderr.
fn refused(out: &std::process::Output, code: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "exited 0: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "nothing on stdout when refused");
    assert!(stderr.contains(code), "stderr names {code}: {stderr:?}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_commands_through_the_main_flows() {
    let h = TestHerald::start().await;
    let url = h.base_url().to_owned();
    let first = seq_of(&h.publish("hub.cli.orders.created", json!({"n": 1})).await);
    h.publish("hub.cli.users.created", json!({})).await;
    let second = seq_of(&h.publish("hub.cli.orders.paid", json!({"n": 2})).await);

    let created = consumer_json(
        &url,
        &[
            "create",
            "orders",
            "--filter",
            "hub.cli.orders.>",
            "--filter",
            "hub.cli.refunds.>",
            "--ack-wait-ms",
            "60000",
            "--max-deliver",
            "2",
            "--backoff-ms",
            "0,0",
            "--max-ack-pending",
            "50",
            "--description",
            "bills orders",
        ],
    )
    .await;
    assert_eq!(created["name"], "orders");
    assert_eq!(
        created["filter_subjects"],
        json!(["hub.cli.orders.>", "hub.cli.refunds.>"])
    );
    assert_eq!(created["ack_wait_ms"], 60000);
    assert_eq!(created["max_deliver"], 2);
    assert_eq!(created["backoff_ms"], json!([0, 0]));
    assert_eq!(created["max_ack_pending"], 50);
    assert_eq!(created["description"], "bills orders");
    assert_eq!(created["state"]["num_pending"], 2);

    // Unlimited deliveries, new events only.
    let later = consumer_json(
        &url,
        &[
            "create",
            "later",
            "--filter",
            "hub.>",
            "--max-deliver",
            "-1",
            "--deliver-policy",
            "new",
        ],
    )
    .await;
    assert_eq!(later["max_deliver"], -1);
    assert_eq!(later["deliver_policy"], "new");
    assert_eq!(later["state"]["num_pending"], 0);

    let list = consumer_json(&url, &["list"]).await;
    assert_eq!(list["count"], 2);
    let info = consumer_json(&url, &["info", "orders"]).await;
    let http: Value = h
        .http
        .get(h.url("/api/consumers/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info, http);

    // Fetch one, ack it.
    let one = fetch(&url, &["fetch", "orders"]).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["delivery"], 1);
    assert_eq!(one[0]["event"]["seq"], first);
    assert_event_shape(&one[0]["event"]);
    let ack_id = one[0]["ack_id"].as_str().unwrap();
    let acked = consumer_json(&url, &["ack", "orders", ack_id]).await;
    assert_eq!(acked, json!({"done": 1, "unknown": []}));

    // NAK the next twice: its second delivery was the last allowed, so it is dead.
    let next = fetch(
        &url,
        &["fetch", "orders", "--batch", "10", "--wait-ms", "1000"],
    )
    .await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0]["event"]["seq"], second);
    let nak = consumer_json(
        &url,
        &[
            "nak",
            "orders",
            next[0]["ack_id"].as_str().unwrap(),
            "--delay-ms",
            "0",
            "--reason",
            "boom",
        ],
    )
    .await;
    assert_eq!(nak, json!({"done": 1, "unknown": []}));
    let again = fetch(&url, &["fetch", "orders", "--wait-ms", "2000"]).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["delivery"], 2);
    consumer_json(
        &url,
        &[
            "nak",
            "orders",
            again[0]["ack_id"].as_str().unwrap(),
            "--reason",
            "boom again",
        ],
    )
    .await;
    let dead = consumer_json(&url, &["dead-letters", "orders"]).await;
    assert_eq!(dead["count"], 1);
    assert_eq!(dead["dead_letters"][0]["event"]["seq"], second);
    assert_eq!(dead["dead_letters"][0]["reason"], "max_deliver");
    assert_eq!(dead["dead_letters"][0]["last_error"], "boom again");
    let paged = consumer_json(
        &url,
        &["dead-letters", "orders", "--after-seq", &second.to_string()],
    )
    .await;
    assert_eq!(paged["count"], 0);

    // Redrive it (all dead letters), then fetch with --ack: printed, and settled.
    let redriven = consumer_json(&url, &["redrive", "orders"]).await;
    assert_eq!(redriven, json!({"redriven": 1}));
    let printed = fetch(&url, &["fetch", "orders", "--wait-ms", "2000", "--ack"]).await;
    assert_eq!(printed.len(), 1);
    assert_eq!(printed[0]["event"]["seq"], second);
    assert_eq!(printed[0]["delivery"], 1);
    let info = consumer_json(&url, &["info", "orders"]).await;
    assert_eq!(info["state"]["num_ack_pending"], 0, "{info}");
    assert_eq!(info["state"]["num_pending"], 0, "{info}");
    assert_eq!(info["state"]["num_dead_letters"], 0, "{info}");
    // Nothing left: no lines, and a success.
    assert!(fetch(&url, &["fetch", "orders"]).await.is_empty());
    // Redriving seqs that are not dead letters redrives nothing.
    let none = consumer_json(&url, &["redrive", "orders", &first.to_string()]).await;
    assert_eq!(none, json!({"redriven": 0}));

    let deleted = consumer_json(&url, &["delete", "orders"]).await;
    assert_eq!(deleted, json!({"deleted": true}));
    let stderr = refused(
        &consumer(&url, &["info", "orders"]).await,
        "consumer_not_found",
    );
    assert!(stderr.contains("\"orders\""), "{stderr}");
    refused(
        &consumer(&url, &["fetch", "orders"]).await,
        "consumer_not_found",
    );
    refused(
        &consumer(&url, &["ack", "orders", "x"]).await,
        "consumer_not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_commands_refuse_bad_input() {
    let h = TestHerald::start().await;
    let url = h.base_url().to_owned();
    consumer_json(&url, &["create", "c", "--filter", "hub.a.>"]).await;

    // Refused by the hub: its code and message on stderr.
    let stderr = refused(
        &consumer(&url, &["create", "bad", "--filter", "hub..x"]).await,
        "invalid_consumer",
    );
    assert!(stderr.contains("filter_subjects"), "{stderr}");
    refused(
        &consumer(
            &url,
            &["create", "bad", "--filter", "hub.>", "--max-deliver", "0"],
        )
        .await,
        "invalid_consumer",
    );
    refused(
        &consumer(&url, &["create", "c", "--filter", "hub.b.>"]).await,
        "consumer_conflict",
    );
    refused(
        &consumer(&url, &["fetch", "c", "--batch", "0"]).await,
        "invalid_body",
    );
    refused(
        &consumer(&url, &["dead-letters", "c", "--limit", "0"]).await,
        "invalid_query",
    );
    refused(
        &consumer(&url, &["discard", "c", "7"]).await,
        "dead_letter_not_found",
    );
    // A name that needs escaping in a URL reaches the hub as one path segment.
    refused(
        &consumer(&url, &["info", "a/b?c"]).await,
        "consumer_not_found",
    );
    let list = consumer_json(&url, &["list"]).await;
    assert_eq!(list["count"], 1, "nothing else was created: {list}");

    // Refused by the command line itself.
    for args in [
        &["create", "x"][..],
        &["ack", "c"],
        &["fetch"],
        &["fetch", "c", "--batch", "many"],
    ] {
        let out = consumer(&url, args).await;
        assert!(!out.status.success(), "{args:?} exited 0");
        assert!(!out.stderr.is_empty(), "{args:?}: explained on stderr");
    }
    // No hub there.
    let out = consumer("http://127.0.0.1:9", &["list"]).await;
    assert!(!out.status.success(), "list against a dead server exited 0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the hub"), "{stderr}");
}
