//! Several hubs on one PostgreSQL database: every hub's live subscribers see every
//! instance's events, in seq order, quickly — with no NATS, only the store.

use std::time::{Duration, Instant};

use herald_core::{NewEvent, Origin, Pattern, Payload, Seq, Subject};
use herald_hub::{Hub, HubConfig, StartAt, Subscription};
use herald_store::testing::TestPostgres;
use herald_store::{AnyStore, PostgresOptions, PostgresStore};

async fn hub(url: &str, hub_id: &str) -> Hub {
    let store = PostgresStore::open(url, PostgresOptions::default())
        .await
        .unwrap();
    Hub::open(HubConfig::new(hub_id), AnyStore::Postgres(store))
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

async fn next_seq(sub: &mut Subscription) -> Seq {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("hub running")
        .expect("no error")
        .seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_on_one_instance_reaches_subscribers_of_another() {
    let url = TestPostgres::shared().create_database().await.unwrap();
    let a = hub(&url, "a").await;
    let b = hub(&url, "b").await;
    let mut on_b = b
        .subscribe(Pattern::parse("hub.>").unwrap(), StartAt::Live)
        .await
        .unwrap();
    // Let the listener connect before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut latencies = Vec::new();
    for i in 0..20 {
        let sent = Instant::now();
        let published = a.publish(event("hub.a.x", i)).await.unwrap();
        assert_eq!(next_seq(&mut on_b).await, published.event.seq);
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(
        median < Duration::from_millis(100),
        "publish on A to receipt on B: median {median:?}, all {latencies:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_two_instances_give_every_subscriber_one_ordered_log() {
    let url = TestPostgres::shared().create_database().await.unwrap();
    let a = hub(&url, "a").await;
    let b = hub(&url, "b").await;
    let mut subscribers = vec![
        a.subscribe(Pattern::all(), StartAt::Live).await.unwrap(),
        b.subscribe(Pattern::all(), StartAt::Live).await.unwrap(),
        // Joins from the start of the log while writes are under way.
        b.subscribe(Pattern::all(), StartAt::AfterSeq(0))
            .await
            .unwrap(),
    ];
    const PER_WRITER: usize = 150;
    let mut writers = Vec::new();
    for (w, hub) in [a.clone(), a.clone(), b.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                hub.publish(event(&format!("hub.w{w}.x"), i)).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let total = 4 * PER_WRITER;
    for sub in &mut subscribers {
        let mut seqs = Vec::with_capacity(total);
        for _ in 0..total {
            seqs.push(next_seq(sub).await);
        }
        assert_eq!(
            seqs,
            (1..=total as Seq).collect::<Vec<_>>(),
            "every event once, in seq order"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Batches committed on two instances interleave; each hub fans its own batch out
/// directly when the fan-out head is just below it, and reads the log otherwise. Live
/// subscribers must see every seq once, in order, and no event may be offered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_batches_from_two_instances_are_fanned_out_once_in_order() {
    let url = TestPostgres::shared().create_database().await.unwrap();
    let open = |hub_id: &'static str| {
        let url = url.clone();
        async move {
            let store = PostgresStore::open(&url, PostgresOptions::default())
                .await
                .unwrap();
            let mut config = HubConfig::new(hub_id);
            // Room for every event: an overflow would hide a duplicate offer.
            config.subscriber_queue = 1 << 16;
            Hub::open(config, AnyStore::Postgres(store)).await.unwrap()
        }
    };
    let a = open("a").await;
    let b = open("b").await;
    let mut subscribers = [
        a.subscribe(Pattern::all(), StartAt::Live).await.unwrap(),
        a.subscribe(Pattern::all(), StartAt::Live).await.unwrap(),
        b.subscribe(Pattern::all(), StartAt::Live).await.unwrap(),
    ];
    const WRITERS_PER_HUB: usize = 3;
    const BATCHES: usize = 40;
    const BATCH: usize = 25;
    let mut writers = Vec::new();
    for (w, hub) in std::iter::repeat_n(a.clone(), WRITERS_PER_HUB)
        .chain(std::iter::repeat_n(b.clone(), WRITERS_PER_HUB))
        .enumerate()
    {
        writers.push(tokio::spawn(async move {
            for i in 0..BATCHES {
                let batch = (0..BATCH)
                    .map(|j| event(&format!("hub.w{w}.x"), i * BATCH + j))
                    .collect();
                let published = hub.publish_batch(batch).await.unwrap();
                let seqs: Vec<Seq> = published.iter().map(|p| p.event.seq).collect();
                assert!(
                    seqs.windows(2).all(|w| w[1] == w[0] + 1),
                    "a batch takes consecutive seqs: {seqs:?}"
                );
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let total = 2 * WRITERS_PER_HUB * BATCHES * BATCH;
    for sub in &mut subscribers {
        let mut seqs = Vec::with_capacity(total);
        for _ in 0..total {
            seqs.push(next_seq(sub).await);
        }
        assert_eq!(
            seqs,
            (1..=total as Seq).collect::<Vec<_>>(),
            "every event once, in seq order"
        );
    }
    // Offered exactly once to each live subscriber of each hub (the counters are
    // bumped just after the offers, so give them a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    for (hub, subs) in [(&a, 2u64), (&b, 1u64)] {
        let stats = hub.stats();
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        while load(&stats.live_deliveries) < subs * total as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(load(&stats.subscriber_overflows), 0);
        assert_eq!(
            load(&stats.live_deliveries),
            subs * total as u64,
            "{}: each event offered once per subscriber",
            hub.hub_id()
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
