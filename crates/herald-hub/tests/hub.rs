//! The engine against a real embedded store: group commit, ordering, catch-up and
//! overflow, shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_core::{NewEvent, Origin, Pattern, Payload, Seq, Subject};
use herald_hub::{Hub, HubConfig, HubError, StartAt, Subscription};
use herald_store::{AnyStore, EmbeddedOptions, EmbeddedStore};

async fn hub_with(dir: &tempfile::TempDir, config: HubConfig) -> Hub {
    let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
        .await
        .unwrap();
    Hub::open(config, AnyStore::Embedded(store)).await.unwrap()
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

async fn take(sub: &mut Subscription, n: usize) -> Vec<Seq> {
    let mut seqs = Vec::with_capacity(n);
    while seqs.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("event within 10 s")
            .expect("hub running")
            .expect("no error");
        seqs.push(event.seq);
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(&dir, HubConfig::new("test")).await;
    let mut tasks = Vec::new();
    for t in 0..32 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                hub.publish(event(&format!("hub.t.p{t}"), i)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = hub.stats();
    assert_eq!(stats.events_stored.load(Ordering::Relaxed), 1600);
    let commits = stats.commits.load(Ordering::Relaxed);
    assert!(
        commits < 1600 / 2,
        "group commit: {commits} commits for 1600 events"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_while_publishing_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(&dir, HubConfig::new("test")).await;
    const TOTAL: usize = 3000;
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                hub.publish(event("hub.t.x", i)).await.unwrap();
                if i % 200 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Subscribers join from the start at different moments while events flow.
    let mut subs = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        subs.push(
            hub.subscribe(Pattern::parse("hub.>").unwrap(), StartAt::AfterSeq(0))
                .await
                .unwrap(),
        );
    }
    for sub in &mut subs {
        assert_eq!(
            take(sub, TOTAL).await,
            (1..=TOTAL as Seq).collect::<Vec<_>>()
        );
    }
    publisher.await.unwrap();
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_subscriber_catches_up_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HubConfig::new("test");
    config.subscriber_queue = 8;
    config.catch_up_page = 16;
    let hub = hub_with(&dir, config).await;
    let mut slow = hub
        .subscribe(Pattern::parse("hub.*.x").unwrap(), StartAt::Live)
        .await
        .unwrap();
    let mut fast = hub
        .subscribe(Pattern::parse("hub.>").unwrap(), StartAt::Live)
        .await
        .unwrap();
    let fast_reader = tokio::spawn(async move { take(&mut fast, 2000).await });
    for i in 0..1000 {
        hub.publish(event("hub.a.x", i)).await.unwrap();
        hub.publish(event("hub.a.y", i)).await.unwrap();
    }
    // The fast subscriber was never held up by the slow one.
    assert_eq!(fast_reader.await.unwrap(), (1..=2000).collect::<Vec<_>>());
    assert!(hub.stats().subscriber_overflows.load(Ordering::Relaxed) > 0);
    // The slow one, reading only now, still sees every matching event once, in order.
    let expected: Vec<Seq> = (1..=2000).filter(|s| s % 2 == 1).collect();
    assert_eq!(take(&mut slow, 1000).await, expected);
    // And it is live again afterwards.
    let next = hub.publish(event("hub.b.x", 0)).await.unwrap();
    assert_eq!(take(&mut slow, 1).await, vec![next.event.seq]);
    hub.shutdown().await;
}

#[tokio::test]
async fn start_positions() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(&dir, HubConfig::new("test")).await;
    for i in 0..10 {
        hub.publish(event("hub.s.x", i)).await.unwrap();
    }
    let middle = hub
        .query(herald_store::Query {
            after_seq: 5,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .events[0]
        .timestamp;
    let pattern = || Pattern::parse("hub.>").unwrap();
    let mut after = hub
        .subscribe(pattern(), StartAt::AfterSeq(7))
        .await
        .unwrap();
    let mut live = hub.subscribe(pattern(), StartAt::Live).await.unwrap();
    let mut since = hub
        .subscribe(pattern(), StartAt::Since(middle))
        .await
        .unwrap();
    hub.publish(event("hub.s.x", 10)).await.unwrap();
    assert_eq!(take(&mut after, 4).await, vec![8, 9, 10, 11]);
    assert_eq!(take(&mut live, 1).await, vec![11]);
    let since_seqs = take(&mut since, 1).await;
    assert!(
        since_seqs[0] <= 6,
        "since starts at or before the event at that instant"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn history_survives_restart_and_subscriptions_resume() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(&dir, HubConfig::new("test")).await;
    for i in 0..20 {
        hub.publish(event("hub.r.x", i)).await.unwrap();
    }
    hub.shutdown().await;
    let hub = hub_with(&dir, HubConfig::new("test")).await;
    let mut sub = hub
        .subscribe(Pattern::all(), StartAt::AfterSeq(15))
        .await
        .unwrap();
    hub.publish(event("hub.r.x", 20)).await.unwrap();
    assert_eq!(take(&mut sub, 6).await, vec![16, 17, 18, 19, 20, 21]);
    hub.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_subscriptions_and_refuses_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(&dir, HubConfig::new("test")).await;
    let mut sub = hub.subscribe(Pattern::all(), StartAt::Live).await.unwrap();
    hub.publish(event("hub.z.x", 0)).await.unwrap();
    hub.shutdown().await;
    assert!(
        matches!(sub.next().await, Some(Ok(_))),
        "queued events are still delivered"
    );
    assert!(sub.next().await.is_none());
    assert!(matches!(
        hub.publish(event("hub.z.x", 1)).await,
        Err(HubError::ShuttingDown)
    ));
    hub.shutdown().await;
}

#[tokio::test]
async fn services_are_listed_in_stop_order_and_all_stop_at_shutdown() {
    use herald_hub::ServiceState;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(&dir, HubConfig::new("test")).await;
    let services = hub.services();
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    // The committer and the consumer calls drain first, the cursors are saved after the
    // rules stopped, and the store closes last.
    assert_eq!(
        names,
        [
            "committer",
            "consumer ops",
            "retention",
            "rules",
            "consumer upkeep",
            "access reload",
            "schema reload",
            "cursor book",
            "subscriptions",
            "store"
        ]
    );
    assert!(
        services.iter().all(|s| s.state == ServiceState::Running),
        "{services:?}"
    );
    hub.publish(event("hub.test.a", 1)).await.unwrap();
    hub.shutdown().await;
    let services = hub.services();
    assert!(
        services.iter().all(|s| s.state == ServiceState::Stopped),
        "{services:?}"
    );
    // A second shutdown is harmless.
    hub.shutdown().await;
    assert!(matches!(
        hub.publish(event("hub.test.a", 2)).await,
        Err(HubError::ShuttingDown)
    ));
}

/// The committer writes on a thread of its own, which the runtime waits for when it is
/// dropped. A hub that is dropped with its runtime, never shut down (an embedder's
/// early return, a test's end), must let that drop finish.
#[test]
fn a_runtime_dropped_with_an_open_hub_does_not_wait_for_the_committer() {
    let dir = tempfile::tempdir().unwrap();
    let (dropped, done) = std::sync::mpsc::channel();
    let path = dir.path().to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let hub = runtime.block_on(async {
            let store = EmbeddedStore::open(path.join("herald.db"), EmbeddedOptions::default())
                .await
                .unwrap();
            let hub = Hub::open(HubConfig::new("test"), AnyStore::Embedded(store))
                .await
                .unwrap();
            assert_eq!(hub.publish(event("hub.d.x", 0)).await.unwrap().event.seq, 1);
            hub
        });
        drop(hub);
        drop(runtime);
        dropped.send(()).unwrap();
    });
    done.recv_timeout(Duration::from_secs(20))
        .expect("dropping the runtime hung on the committer");
}
