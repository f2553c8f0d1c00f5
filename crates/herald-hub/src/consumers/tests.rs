use std::time::{Duration, Instant};

use herald_core::Pattern;

use super::*;
use crate::testing::open_hub;

fn config(filter: &str) -> ConsumerConfig {
    ConsumerConfig::new(vec![Pattern::parse_filter(filter).unwrap()])
}

async fn publish(hub: &Hub, subject: &str, n: usize) {
    for i in 0..n {
        hub.publish(hub.new_event(subject, &format!(r#"{{"i":{i}}}"#)).unwrap())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn put_is_idempotent_updates_what_may_change_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    let (outcome, info) = hub.put_consumer("w", config("hub.>")).await.unwrap();
    assert_eq!(outcome, PutOutcome::Created);
    assert_eq!(info.config, config("hub.>"));
    assert_eq!(
        hub.put_consumer("w", config("hub.>")).await.unwrap().0,
        PutOutcome::Unchanged
    );
    let changed = ConsumerConfig {
        ack_wait_ms: 5000,
        ..config("hub.>")
    };
    let (outcome, info) = hub.put_consumer("w", changed.clone()).await.unwrap();
    assert_eq!(outcome, PutOutcome::Updated);
    assert_eq!(info.config, changed);
    match hub.put_consumer("w", config("hub.x.>")).await {
        Err(ConsumerError::Conflict { field, .. }) => assert_eq!(field, "filter_subjects"),
        other => panic!("{other:?}"),
    }
    match hub.put_consumer("a.b", config("hub.>")).await {
        Err(ConsumerError::Invalid(e)) => assert_eq!(e.field, "name"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        hub.fetch("nope", 1, Duration::ZERO).await,
        Err(ConsumerError::NotFound(_))
    ));
    hub.delete_consumer("w").await.unwrap();
    assert!(matches!(
        hub.delete_consumer("w").await,
        Err(ConsumerError::NotFound(_))
    ));
    hub.shutdown().await;
}

/// A PUT racing a DELETE of the same name is answered as a put (created or updated),
/// never "not found": the seeds' clients treat PUT as create-or-update.
#[tokio::test]
async fn a_put_racing_deletes_is_never_answered_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    let deleter = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for _ in 0..300 {
                let _ = hub.delete_consumer("w").await;
                tokio::task::yield_now().await;
            }
        })
    };
    let mut answered = 0;
    for i in 0..300u64 {
        let config = ConsumerConfig {
            ack_wait_ms: 1000 + i % 2,
            ..config("hub.>")
        };
        match hub.put_consumer("w", config).await {
            Ok(_) | Err(ConsumerError::Contended(_)) => answered += 1,
            other => panic!("put {i}: {other:?}"),
        }
    }
    deleter.await.unwrap();
    assert_eq!(answered, 300);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_long_poll_answers_as_soon_as_an_event_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    hub.put_consumer("w", config("hub.local.>")).await.unwrap();
    let poll = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = hub.fetch("w", 10, Duration::from_secs(10)).await.unwrap();
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&hub, "hub.other.x", 1).await;
    publish(&hub, "hub.local.x", 1).await;
    let (got, took) = poll.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event.subject.as_str(), "hub.local.x");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Nothing more: an empty answer once the wait is over.
    let started = Instant::now();
    assert!(hub
        .fetch("w", 10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    hub.shutdown().await;
}

#[tokio::test]
async fn naks_come_back_after_the_backoff_and_end_in_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    let c = ConsumerConfig {
        backoff_ms: Some(vec![200, 400]),
        max_deliver: Some(3),
        ..config("hub.>")
    };
    hub.put_consumer("w", c).await.unwrap();
    publish(&hub, "hub.local.x", 1).await;
    let mut delays = Vec::new();
    let mut message = hub.fetch("w", 1, Duration::ZERO).await.unwrap().remove(0);
    for expected in [200u64, 400] {
        // The delay runs from when the NAK is applied: at or after this instant.
        let naked = Instant::now();
        let settled = hub
            .settle(
                "w",
                &[message.ack_id.clone()],
                Settle::Nak {
                    delay_ms: None,
                    reason: Some("boom".into()),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            settled,
            Settled {
                done: 1,
                unknown: vec![]
            }
        );
        message = hub
            .fetch("w", 1, Duration::from_secs(5))
            .await
            .unwrap()
            .remove(0);
        let took = naked.elapsed();
        delays.push(took);
        assert!(
            took >= Duration::from_millis(expected),
            "{took:?} < {expected} ms"
        );
        assert!(
            took < Duration::from_millis(expected + 300),
            "{took:?} for {expected} ms"
        );
    }
    assert_eq!(message.delivery, 3);
    hub.settle(
        "w",
        &[message.ack_id.clone()],
        Settle::Nak {
            delay_ms: None,
            reason: Some("last".into()),
        },
    )
    .await
    .unwrap();
    let dead = hub.consumer_dead_letters("w", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("last"));
    let info = hub.consumer_info("w").await.unwrap();
    assert_eq!(info.state.num_dead_letters, 1);
    assert_eq!(hub.redrive("w", None).await.unwrap(), 1);
    let again = hub.fetch("w", 1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(again[0].delivery, 1, "the count starts again");
    hub.shutdown().await;
}

#[tokio::test]
async fn consume_acks_ok_and_naks_errors() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    let c = ConsumerConfig {
        backoff_ms: Some(vec![50]),
        ..config("hub.>")
    };
    hub.put_consumer("w", c).await.unwrap();
    publish(&hub, "hub.local.x", 3).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = {
        let (hub, seen) = (hub.clone(), seen.clone());
        tokio::spawn(async move {
            hub.consume("w", |event: Event| {
                let seen = seen.clone();
                async move {
                    let mut seen = seen.lock().unwrap();
                    let first_time = !seen.contains(&event.seq);
                    seen.push(event.seq);
                    // The second event fails once.
                    if event.seq == 2 && first_time {
                        Err("flaky")
                    } else {
                        Ok(())
                    }
                }
            })
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = hub.consumer_info("w").await.unwrap();
        if info.state.ack_floor == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 2, 3]);
    hub.shutdown().await;
    worker.await.unwrap().unwrap();
}
