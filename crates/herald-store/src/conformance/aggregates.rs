//! Aggregates: versions, the expected-version condition, idempotent re-appends, loads,
//! snapshots and the aggregate filters of queries.

use herald_core::{AggregateEvent, ExpectedVersion, NewEvent, Payload};

use super::{event, events};
use crate::{
    AggregateAppend, AggregateAppended, AggregateKey, Appended, Query, SnapshotSaved, Store,
};

pub(crate) fn key(tenant: Option<&str>, aggregate_type: &str, id: &str) -> AggregateKey {
    AggregateKey {
        tenant: tenant.map(str::to_owned),
        aggregate_type: aggregate_type.into(),
        aggregate_id: id.into(),
    }
}

/// `n` events for `key`'s aggregate, of type `<type>.changed`.
pub(crate) fn domain_events(key: &AggregateKey, n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            let mut e = event(&format!("hub.c.{}.changed", key.aggregate_type), i, None);
            e.tenant = key.tenant.clone();
            e.aggregate = Some(Box::new(AggregateEvent {
                aggregate_type: key.aggregate_type.clone(),
                aggregate_id: key.aggregate_id.clone(),
                version: 0,
                event_type: format!("{}.changed", key.aggregate_type),
                metadata: Some(Payload::from_json(format!(r#"{{"i":"{i}"}}"#)).unwrap()),
            }));
            e
        })
        .collect()
}

pub(crate) fn append(
    key: &AggregateKey,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> AggregateAppend {
    AggregateAppend {
        key: key.clone(),
        expected,
        events,
    }
}

fn written(outcome: AggregateAppended) -> (u64, Vec<Appended>) {
    match outcome {
        AggregateAppended::Written { version, events } => (version, events),
        other => panic!("expected the append to be written, got {other:?}"),
    }
}

pub(super) async fn run<S: Store>(store: &S) {
    versions_follow_each_other(store).await;
    conditions_are_checked(store).await;
    re_appends_are_idempotent(store).await;
    loads_and_tenants(store).await;
    snapshots(store).await;
    queries_filter_by_aggregate(store).await;
    concurrent_appends_on_one_version_one_wins(store).await;
}

async fn versions_follow_each_other<S: Store>(store: &S) {
    let k = key(None, "order", "o-1");
    let (version, first) = written(
        store
            .append_aggregate(append(&k, ExpectedVersion::NoStream, domain_events(&k, 3)))
            .await
            .unwrap(),
    );
    assert_eq!(version, 3);
    let versions: Vec<u64> = first
        .iter()
        .map(|a| a.event().aggregate.as_ref().unwrap().version)
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    // Aggregate events are ordinary events of the log: seqs are shared and dense.
    store.append(events("hub.c.plain", 2)).await.unwrap();
    let (version, next) = written(
        store
            .append_aggregate(append(
                &k,
                ExpectedVersion::Exactly(3),
                domain_events(&k, 2),
            ))
            .await
            .unwrap(),
    );
    assert_eq!(version, 5);
    let seqs: Vec<u64> = first.iter().chain(&next).map(|a| a.event().seq).collect();
    let head = store.head().await.unwrap();
    assert_eq!(seqs, [head - 6, head - 5, head - 4, head - 1, head]);
    // What `get` reads back is what the append answered, metadata included.
    let stored = store.get(next[1].event().id).await.unwrap().unwrap();
    assert_eq!(&stored, next[1].event());
    let aggregate = stored.aggregate.unwrap();
    assert_eq!(aggregate.version, 5);
    assert_eq!(aggregate.event_type, "order.changed");
    assert_eq!(aggregate.metadata.unwrap().get(), r#"{"i":"1"}"#);
}

async fn conditions_are_checked<S: Store>(store: &S) {
    let k = key(None, "order", "o-2");
    let conflict = store
        .append_aggregate(append(&k, ExpectedVersion::Exists, domain_events(&k, 1)))
        .await
        .unwrap();
    assert_eq!(conflict, AggregateAppended::Conflict { current_version: 0 });
    let head = store.head().await.unwrap();
    written(
        store
            .append_aggregate(append(
                &k,
                ExpectedVersion::Exactly(0),
                domain_events(&k, 2),
            ))
            .await
            .unwrap(),
    );
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exactly(1),
        ExpectedVersion::Exactly(3),
    ] {
        let before = store.head().await.unwrap();
        assert_eq!(
            store
                .append_aggregate(append(&k, expected, domain_events(&k, 1)))
                .await
                .unwrap(),
            AggregateAppended::Conflict { current_version: 2 },
            "{expected:?}"
        );
        assert_eq!(
            store.head().await.unwrap(),
            before,
            "nothing of a conflict is stored"
        );
    }
    assert_eq!(store.head().await.unwrap(), head + 2);
    let (version, _) = written(
        store
            .append_aggregate(append(&k, ExpectedVersion::Exists, domain_events(&k, 1)))
            .await
            .unwrap(),
    );
    assert_eq!(version, 3);
    let (version, _) = written(
        store
            .append_aggregate(append(&k, ExpectedVersion::Any, domain_events(&k, 1)))
            .await
            .unwrap(),
    );
    assert_eq!(version, 4);
}

async fn re_appends_are_idempotent<S: Store>(store: &S) {
    let k = key(None, "cart", "c-1");
    let batch = domain_events(&k, 2);
    let (_, first) = written(
        store
            .append_aggregate(append(&k, ExpectedVersion::NoStream, batch.clone()))
            .await
            .unwrap(),
    );
    let head = store.head().await.unwrap();
    // The same append again (a client's retry): the stored events, nothing written.
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exactly(0),
        ExpectedVersion::Any,
    ] {
        let (version, again) = written(
            store
                .append_aggregate(append(&k, expected, batch.clone()))
                .await
                .unwrap(),
        );
        assert_eq!(version, 2, "{expected:?}");
        assert!(again.iter().all(Appended::is_duplicate));
        let events: Vec<_> = again.iter().map(|a| a.event().clone()).collect();
        let original: Vec<_> = first.iter().map(|a| a.event().clone()).collect();
        assert_eq!(events, original);
    }
    assert_eq!(store.head().await.unwrap(), head);
    // The same ids on another condition are not the same append.
    assert_eq!(
        store
            .append_aggregate(append(&k, ExpectedVersion::Exactly(1), batch.clone()))
            .await
            .unwrap(),
        AggregateAppended::Conflict { current_version: 2 }
    );
    // An id of an ordinary event, or of part of the append only, is taken.
    let plain = store.append(events("hub.c.plain", 1)).await.unwrap();
    let mut taken = domain_events(&k, 2);
    taken[1].id = plain[0].event().id;
    assert_eq!(
        store
            .append_aggregate(append(&k, ExpectedVersion::Exactly(2), taken))
            .await
            .unwrap(),
        AggregateAppended::IdTaken {
            id: plain[0].event().id
        }
    );
    let mut partly = domain_events(&k, 2);
    partly[0].id = batch[1].id;
    assert!(matches!(
        store
            .append_aggregate(append(&k, ExpectedVersion::Any, partly))
            .await
            .unwrap(),
        AggregateAppended::IdTaken { .. }
    ));
    assert_eq!(store.head().await.unwrap(), head + 1);
}

async fn loads_and_tenants<S: Store>(store: &S) {
    let k = key(None, "ledger", "l-1");
    assert_eq!(store.load_aggregate(k.clone(), 1, 100).await.unwrap(), None);
    written(
        store
            .append_aggregate(append(&k, ExpectedVersion::NoStream, domain_events(&k, 5)))
            .await
            .unwrap(),
    );
    // The same type and id in a tenant's namespace is another aggregate.
    let acme = key(Some("acme"), "ledger", "l-1");
    assert_eq!(
        store.load_aggregate(acme.clone(), 1, 100).await.unwrap(),
        None
    );
    written(
        store
            .append_aggregate(append(
                &acme,
                ExpectedVersion::NoStream,
                domain_events(&acme, 2),
            ))
            .await
            .unwrap(),
    );
    let page = store
        .load_aggregate(k.clone(), 1, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.version, 5);
    let versions = |page: &crate::AggregatePage| -> Vec<u64> {
        page.events
            .iter()
            .map(|e| e.aggregate.as_ref().unwrap().version)
            .collect()
    };
    assert_eq!(versions(&page), [1, 2, 3, 4, 5]);
    let page = store
        .load_aggregate(k.clone(), 3, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(versions(&page), [3, 4]);
    let page = store
        .load_aggregate(k.clone(), 6, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((page.version, page.events.len()), (5, 0));
    let page = store.load_aggregate(acme, 0, 100).await.unwrap().unwrap();
    assert_eq!(page.version, 2);
    assert_eq!(versions(&page), [1, 2]);
    assert!(page
        .events
        .iter()
        .all(|e| e.tenant.as_deref() == Some("acme")));
}

async fn snapshots<S: Store>(store: &S) {
    let k = key(None, "account", "a-1");
    let state = |v: u64| Payload::from_json(format!(r#"{{"balance":{v}}}"#)).unwrap();
    assert_eq!(
        store.save_snapshot(k.clone(), 1, state(1)).await.unwrap(),
        SnapshotSaved::UnknownAggregate
    );
    assert_eq!(store.load_snapshot(k.clone()).await.unwrap(), None);
    written(
        store
            .append_aggregate(append(&k, ExpectedVersion::NoStream, domain_events(&k, 4)))
            .await
            .unwrap(),
    );
    assert_eq!(
        store.save_snapshot(k.clone(), 5, state(5)).await.unwrap(),
        SnapshotSaved::AheadOfAggregate { current_version: 4 }
    );
    for v in [2, 4, 3] {
        assert_eq!(
            store.save_snapshot(k.clone(), v, state(v)).await.unwrap(),
            SnapshotSaved::Saved
        );
    }
    let latest = store.load_snapshot(k.clone()).await.unwrap().unwrap();
    assert_eq!(
        (latest.version, latest.state.get()),
        (4, r#"{"balance":4}"#)
    );
    // Saved again at the same version, it replaces the earlier one.
    store
        .save_snapshot(
            k.clone(),
            4,
            Payload::from_json(r#"{"balance":40}"#.into()).unwrap(),
        )
        .await
        .unwrap();
    let latest = store.load_snapshot(k.clone()).await.unwrap().unwrap();
    assert_eq!(latest.state.get(), r#"{"balance":40}"#);
    assert!(store
        .load_snapshot(key(Some("acme"), "account", "a-1"))
        .await
        .unwrap()
        .is_none());
}

async fn queries_filter_by_aggregate<S: Store>(store: &S) {
    let a = key(None, "ticket", "t-1");
    let b = key(None, "ticket", "t-2");
    for _ in 0..3 {
        for k in [&a, &b] {
            written(
                store
                    .append_aggregate(append(k, ExpectedVersion::Any, domain_events(k, 2)))
                    .await
                    .unwrap(),
            );
        }
        store
            .append(events("hub.c.ticket.changed", 2))
            .await
            .unwrap();
    }
    let ids = |query: Query| async move {
        let page = store.query(query).await.unwrap();
        page.events
            .iter()
            .map(|e| {
                let agg = e.aggregate.as_ref().unwrap();
                (agg.aggregate_id.clone(), agg.version)
            })
            .collect::<Vec<_>>()
    };
    let one = ids(Query {
        aggregate_type: Some("ticket".into()),
        aggregate_id: Some("t-2".into()),
        limit: 4,
        ..Query::default()
    })
    .await;
    assert_eq!(
        one,
        [
            ("t-2".into(), 1),
            ("t-2".into(), 2),
            ("t-2".into(), 3),
            ("t-2".into(), 4)
        ]
    );
    let of_type = ids(Query {
        aggregate_type: Some("ticket".into()),
        limit: 1000,
        ..Query::default()
    })
    .await;
    assert_eq!(of_type.len(), 12);
    let by_id = ids(Query {
        aggregate_id: Some("t-1".into()),
        subject: Some(herald_core::Pattern::parse_filter("hub.c.ticket.>").unwrap()),
        limit: 1000,
        ..Query::default()
    })
    .await;
    assert_eq!(by_id.len(), 6);
    assert!(by_id.iter().all(|(id, _)| id == "t-1"));
    let none = ids(Query {
        aggregate_type: Some("ticket".into()),
        aggregate_id: Some("t-3".into()),
        ..Query::default()
    })
    .await;
    assert!(none.is_empty());
}

async fn concurrent_appends_on_one_version_one_wins<S: Store>(store: &S) {
    let k = key(None, "race", "r-1");
    written(
        store
            .append_aggregate(append(&k, ExpectedVersion::NoStream, domain_events(&k, 1)))
            .await
            .unwrap(),
    );
    let outcomes = futures_util::future::join_all((0..50).map(|_| {
        store.append_aggregate(append(
            &k,
            ExpectedVersion::Exactly(1),
            domain_events(&k, 2),
        ))
    }))
    .await;
    let mut wins = 0;
    for outcome in outcomes {
        match outcome.unwrap() {
            AggregateAppended::Written { version, .. } => {
                assert_eq!(version, 3);
                wins += 1;
            }
            AggregateAppended::Conflict { current_version } => assert_eq!(current_version, 3),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        wins, 1,
        "exactly one of 50 appends expecting version 1 wins"
    );
    let page = store.load_aggregate(k, 1, 100).await.unwrap().unwrap();
    assert_eq!(page.version, 3);
    assert_eq!(page.events.len(), 3);
}
