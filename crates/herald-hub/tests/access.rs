//! The engine's access checks against a real embedded store: a key with several allow
//! patterns and a deny sees exactly what its rights allow, through get, paged queries
//! and subscriptions, and its tenant's name space stays its own.

use std::time::Duration;

use herald_core::{NewEvent, Origin, Pattern, Payload, Permissions, Subject};
use herald_hub::access::{Caller, NewKey, NewTenant};
use herald_hub::{Hub, HubConfig, StartAt};
use herald_store::{AnyStore, EmbeddedOptions, EmbeddedStore, Query, Store};

async fn hub(dir: &tempfile::TempDir) -> Hub {
    let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
        .await
        .unwrap();
    Hub::open(HubConfig::new("test"), AnyStore::Embedded(store))
        .await
        .unwrap()
}

fn event(subject: &str, n: usize) -> NewEvent {
    NewEvent::new(
        Subject::new(subject).unwrap(),
        Payload::from_json(format!(r#"{{"n":{n}}}"#)).unwrap(),
        Origin {
            hub_id: "test".into(),
            service: None,
            user: None,
        },
        None,
    )
}

fn patterns(texts: &[&str]) -> Vec<Pattern> {
    texts.iter().map(|t| Pattern::parse(t).unwrap()).collect()
}

/// A tenant owning `hub.t.>` and a key of it allowed `hub.t.a.>` and `hub.t.b.>` but
/// denied `hub.t.a.secret.>`.
async fn narrow_key(hub: &Hub) -> Caller {
    let admin = Caller::trusted();
    let scoped = hub.as_caller(&admin);
    scoped
        .create_tenant(NewTenant {
            id: "t".into(),
            subjects: patterns(&["hub.t.>"]),
            limits: Default::default(),
        })
        .await
        .unwrap();
    let made = scoped
        .create_key(NewKey {
            tenant: Some("t".into()),
            subscribe: Some(Permissions {
                allow: patterns(&["hub.t.a.>", "hub.t.b.>", "hub.other.>"]),
                deny: patterns(&["hub.t.a.secret.>"]),
            }),
            ..NewKey::default()
        })
        .await
        .unwrap();
    hub.authenticate(Some(&made.secret)).unwrap()
}

#[tokio::test]
async fn a_key_sees_exactly_what_its_rights_allow_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&dir).await;
    let caller = narrow_key(&hub).await;
    let subjects = [
        "hub.t.a.x",
        "hub.t.a.secret.y",
        "hub.t.b.z",
        "hub.t.c.w",
        "hub.u.a.x",
    ];
    let mut ids = Vec::new();
    for n in 0..200 {
        let published = hub
            .publish(event(subjects[n % subjects.len()], n))
            .await
            .unwrap();
        ids.push(published.event.clone());
    }
    let scoped = hub.as_caller(&caller);
    let visible = |subject: &str| {
        subject.starts_with("hub.t.a.") && !subject.starts_with("hub.t.a.secret.")
            || subject.starts_with("hub.t.b.")
    };
    // Events were published by the hub itself: stamped with the subject's owner.
    for event in &ids {
        let got = scoped.get(event.id).await.unwrap();
        assert_eq!(
            got.is_some(),
            visible(event.subject.as_str()),
            "{}",
            event.subject
        );
    }
    // Paging with a small limit through `>`: every visible event once, in seq order,
    // nothing else; `scanned_to` always moves on.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = scoped
            .query(Query {
                subject: Some(Pattern::all()),
                after_seq: after,
                limit: 7,
                ..Query::default()
            })
            .await
            .unwrap();
        seen.extend(page.events.iter().map(|e| e.seq));
        if page.events.is_empty() && page.scanned_to >= 200 {
            break;
        }
        assert!(page.scanned_to > after, "no progress after {after}");
        after = page.scanned_to;
    }
    let want: Vec<u64> = ids
        .iter()
        .filter(|e| visible(e.subject.as_str()))
        .map(|e| e.seq)
        .collect();
    assert_eq!(seen, want);
    // A filter that meets no right finds nothing (and is not an error).
    let page = scoped
        .query(Query {
            subject: Some(Pattern::parse("hub.u.>").unwrap()),
            ..Query::default()
        })
        .await
        .unwrap();
    assert!(page.events.is_empty());
    // A replay through a subscription: the same events.
    let mut sub = scoped
        .subscribe(Pattern::parse("hub.>").unwrap(), StartAt::AfterSeq(0))
        .await
        .unwrap();
    let mut replayed = Vec::new();
    while replayed.len() < want.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        replayed.push(event.seq);
    }
    assert_eq!(replayed, want);
    // A stream on a pattern the key cannot see anything of is refused.
    assert!(scoped
        .subscribe(Pattern::parse("hub.u.>").unwrap(), StartAt::Live)
        .await
        .is_err());
    hub.shutdown().await;
}

#[tokio::test]
async fn a_tenant_publishes_only_within_its_rights_and_is_stamped() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&dir).await;
    let caller = narrow_key(&hub).await;
    let scoped = hub.as_caller(&caller);
    // Publish rights were left out: the tenant's whole space.
    let published = scoped.publish(event("hub.t.c.anything", 1)).await.unwrap();
    assert_eq!(published.event.tenant.as_deref(), Some("t"));
    assert!(scoped.publish(event("hub.u.x", 1)).await.is_err());
    // A batch with one refused subject stores nothing.
    let before = hub.store().head().await.unwrap();
    assert!(scoped
        .publish_batch(vec![event("hub.t.ok", 1), event("hub.other.no", 2)])
        .await
        .is_err());
    assert_eq!(hub.store().head().await.unwrap(), before);
    hub.shutdown().await;
}
