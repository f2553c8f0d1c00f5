//! Retention: each limit deletes the oldest events of its policy's subjects, aggregates'
//! events are kept unless included, consumers count what they skipped, passes keep to
//! their budget, and settings round-trip.

use std::time::Duration;

use herald_core::{ExpectedVersion, Pattern, Timestamp};

use super::consumers::{new_consumer, policy as delivery};
use super::{event, events};
use crate::{AggregateAppend, AggregateKey, Query, RetentionPolicy, Store};

fn policy(subjects: &str) -> RetentionPolicy {
    RetentionPolicy {
        subjects: Pattern::parse(subjects).unwrap(),
        max_age: None,
        max_events: None,
        max_bytes: None,
        include_aggregates: false,
    }
}

async fn count<S: Store>(store: &S, subject: &str) -> usize {
    store
        .query(Query {
            subject: Some(Pattern::parse_filter(subject).unwrap()),
            limit: 1000,
            ..Query::default()
        })
        .await
        .unwrap()
        .events
        .len()
}

pub(super) async fn run<S: Store>(store: &S) {
    let now = Timestamp::now();
    assert_eq!(store.load_setting("retention").await.unwrap(), None);
    store.save_setting("retention", "[1]".into()).await.unwrap();
    store.save_setting("retention", "[2]".into()).await.unwrap();
    assert_eq!(
        store.load_setting("retention").await.unwrap().as_deref(),
        Some("[2]")
    );

    // max_events on hub.r.a, with three aggregate events among them and a consumer
    // that has been handed nothing.
    store.append(events("hub.r.a", 20)).await.unwrap();
    store.append(events("hub.r.keep", 5)).await.unwrap();
    let key = AggregateKey {
        tenant: None,
        aggregate_type: "r".into(),
        aggregate_id: "1".into(),
    };
    let domain: Vec<_> = (0..3)
        .map(|i| {
            let mut e = event("hub.r.a", 100 + i, None);
            e.aggregate = Some(Box::new(herald_core::AggregateEvent {
                aggregate_type: "r".into(),
                aggregate_id: "1".into(),
                version: 0,
                event_type: "r.x".into(),
                metadata: None,
            }));
            e
        })
        .collect();
    store
        .append_aggregate(AggregateAppend {
            key: key.clone(),
            expected: ExpectedVersion::NoStream,
            events: domain,
        })
        .await
        .unwrap();
    store
        .create_consumer(
            new_consumer("r-all", &["hub.r.>"], delivery(30_000, None, &[])),
            100,
        )
        .await
        .unwrap();
    let head = store.head().await.unwrap();

    let policies = vec![
        RetentionPolicy {
            max_events: Some(10),
            ..policy("hub.r.a")
        },
        // Never reached for hub.r.a: the first matching policy wins.
        RetentionPolicy {
            max_events: Some(0),
            ..policy("hub.r.>")
        },
    ];
    // hub.r.keep matches the second policy: keep it out with a policy of its own first.
    let policies = [vec![policy("hub.r.keep")], policies].concat();
    let pass = store
        .enforce_retention(policies.clone(), now, 5)
        .await
        .unwrap();
    assert_eq!(
        (pass.deleted_events, pass.more),
        (5, true),
        "a pass keeps to its budget"
    );
    let pass = store
        .enforce_retention(policies.clone(), now, 1000)
        .await
        .unwrap();
    assert_eq!(
        pass.deleted_events, 8,
        "23 events, 10 kept: 13 deleted in all"
    );
    assert!(!pass.more);
    assert_eq!(count(store, "hub.r.a").await, 10);
    assert_eq!(
        count(store, "hub.r.keep").await,
        5,
        "a policy without limits keeps all"
    );
    let page = store
        .load_aggregate(key.clone(), 1, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.events.len(), 3, "aggregates' events are kept");
    let remaining = store
        .query(Query {
            subject: Some(Pattern::parse("hub.r.a").unwrap()),
            limit: 1000,
            ..Query::default()
        })
        .await
        .unwrap();
    let first_plain = remaining
        .events
        .iter()
        .find(|e| e.aggregate.is_none())
        .unwrap();
    assert_eq!(
        first_plain.payload.get(),
        r#"{"n":13}"#,
        "the oldest went first"
    );
    let state = store.consumer_state("r-all").await.unwrap().unwrap();
    assert_eq!(state.skipped_by_retention, 13);
    assert_eq!(state.num_pending, 15, "10 on hub.r.a and 5 on hub.r.keep");
    assert_eq!(
        store.enforce_retention(policies, now, 1000).await.unwrap(),
        crate::RetentionPass::default(),
        "nothing more to do"
    );
    // Seqs go on from the head: deleted ones are never given again.
    let next = store.append(events("hub.r.new", 1)).await.unwrap();
    assert_eq!(next[0].event().seq, head + 1);

    // max_bytes: payloads are `{"n":<i>}` (7 bytes for i < 10).
    store.append(events("hub.b.x", 10)).await.unwrap();
    let pass = store
        .enforce_retention(
            vec![RetentionPolicy {
                max_bytes: Some(21),
                ..policy("hub.b.>")
            }],
            now,
            1000,
        )
        .await
        .unwrap();
    assert_eq!((pass.deleted_events, pass.deleted_bytes), (7, 49));
    assert_eq!(count(store, "hub.b.x").await, 3);

    // max_age, as seen from an hour later; aggregates included this time.
    let later = Timestamp::from_micros(now.as_micros() + 3_600_000_000);
    let pass = store
        .enforce_retention(
            vec![RetentionPolicy {
                max_age: Some(Duration::from_secs(1800)),
                include_aggregates: true,
                ..policy("hub.r.a")
            }],
            later,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(pass.deleted_events, 10);
    assert_eq!(count(store, "hub.r.a").await, 0);
    assert_eq!(count(store, "hub.r.keep").await, 5);
}
