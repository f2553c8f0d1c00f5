//! The consumer part of the contract ([`crate::consumer`]). Time is passed to the store
//! explicitly, so these checks move the clock instead of sleeping.

use herald_core::{Pattern, Seq, Timestamp};

use super::events;
use crate::consumer::{
    AckId, Backoff, ConsumerCall, ConsumerOp, ConsumerOutcome, CreateConsumer, DeadReason,
    DeliveryPolicy, Fetched, NewConsumer,
};
use crate::Store;

pub(super) async fn run<S: Store>(store: &S) {
    lifecycle(store).await;
    delivery_and_acks(store).await;
    redelivery_backoff_and_dead_letters(store).await;
    max_ack_pending_and_redrive(store).await;
    concurrent_fetches_hand_out_each_message_once(store).await;
    fetches_settled_in_parts(store).await;
}

/// A consumer whose filter matches little of a long log (read by scan, under the query
/// scan budget) is told when a fetch stopped before the head, and fetching on reaches
/// the matching events at the end.
pub(super) async fn a_sparse_filter_reads_on_past_the_scan_budget<S: Store>(store: &S) {
    match store
        .create_consumer(
            new_consumer("sparse", &["*.nomatch.>"], policy(1000, None, &[])),
            2,
        )
        .await
        .unwrap()
    {
        CreateConsumer::Created(_) => {}
        other => panic!("{other:?}"),
    }
    let mut fetches = 0;
    let mut found = Vec::new();
    loop {
        let fetched = fetch(store, at_ms(0), "sparse", 10).await;
        fetches += 1;
        found.extend(seqs(&fetched));
        if !fetched.read_stopped_early {
            break;
        }
        assert!(fetches < 10, "no progress");
    }
    assert!(
        fetches >= 2,
        "the first fetch read the whole log: {fetches}"
    );
    assert_eq!(found.len(), 3, "the three events at the end: {found:?}");
}

const T0: i64 = 1_700_000_000_000_000;

fn at_ms(ms: i64) -> Timestamp {
    Timestamp::from_micros(T0 + ms * 1000)
}

pub(super) fn policy(
    ack_wait_ms: u64,
    max_deliver: Option<u32>,
    backoff: &[u64],
) -> DeliveryPolicy {
    DeliveryPolicy {
        ack_wait_ms,
        max_deliver,
        backoff: Backoff::Schedule(backoff.to_vec()),
        max_ack_pending: 1000,
    }
}

pub(super) fn new_consumer(name: &str, filters: &[&str], policy: DeliveryPolicy) -> NewConsumer {
    NewConsumer {
        name: name.into(),
        epoch: 0x5eed,
        filters: filters
            .iter()
            .map(|f| Pattern::parse_filter(f).unwrap())
            .collect(),
        policy,
        meta: r#"{"description":"conformance"}"#.into(),
        start_after: 0,
    }
}

async fn op<S: Store>(store: &S, now: Timestamp, name: &str, op: ConsumerOp) -> ConsumerOutcome {
    let mut out = store
        .consumer_ops(
            now,
            vec![ConsumerCall {
                consumer: name.into(),
                op,
            }],
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

async fn fetch<S: Store>(store: &S, now: Timestamp, name: &str, batch: usize) -> Fetched {
    match op(store, now, name, ConsumerOp::Fetch { batch }).await {
        ConsumerOutcome::Fetched(f) => f,
        other => panic!("fetch answered {other:?}"),
    }
}

fn settled(outcome: ConsumerOutcome) -> (u64, Vec<usize>) {
    match outcome {
        ConsumerOutcome::Settled { done, unknown } => (done, unknown),
        other => panic!("expected Settled, got {other:?}"),
    }
}

fn seqs(fetched: &Fetched) -> Vec<Seq> {
    fetched.messages.iter().map(|m| m.event.seq).collect()
}

fn ids(fetched: &Fetched) -> Vec<AckId> {
    fetched.messages.iter().map(|m| m.ack_id).collect()
}

async fn lifecycle<S: Store>(store: &S) {
    assert!(store.consumers().await.unwrap().is_empty());
    assert_eq!(store.consumer("c").await.unwrap(), None);
    assert_eq!(store.consumer_state("c").await.unwrap(), None);
    assert_eq!(
        op(store, at_ms(0), "c", ConsumerOp::Fetch { batch: 1 }).await,
        ConsumerOutcome::NotFound
    );

    let created = match store
        .create_consumer(new_consumer("c", &["a.>"], policy(1000, Some(3), &[10])), 2)
        .await
        .unwrap()
    {
        CreateConsumer::Created(record) => record,
        other => panic!("{other:?}"),
    };
    assert_eq!(created.filters[0].as_str(), "a.>");
    assert_eq!(created.meta, r#"{"description":"conformance"}"#);
    match store
        .create_consumer(new_consumer("c", &["b.>"], policy(1, None, &[])), 2)
        .await
        .unwrap()
    {
        CreateConsumer::Exists(existing) => assert_eq!(existing, created, "unchanged"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store
            .create_consumer(new_consumer("b", &[">"], policy(1, None, &[])), 2)
            .await
            .unwrap(),
        CreateConsumer::Created(_)
    ));
    assert_eq!(
        store
            .create_consumer(new_consumer("z", &[">"], policy(1, None, &[])), 2)
            .await
            .unwrap(),
        CreateConsumer::LimitReached
    );
    let names: Vec<String> = store
        .consumers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["b", "c"], "listed by name");

    let updated = store
        .update_consumer("c", policy(5000, None, &[1, 2]), "{}".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.policy, policy(5000, None, &[1, 2]));
    assert_eq!(updated.filters, created.filters, "filters stay");
    assert_eq!(updated.epoch, created.epoch);
    assert_eq!(
        store
            .update_consumer("nope", policy(1, None, &[]), "{}".into())
            .await
            .unwrap(),
        None
    );

    assert!(store.delete_consumer("c").await.unwrap());
    assert!(!store.delete_consumer("c").await.unwrap());
    assert!(store.delete_consumer("b").await.unwrap());
    assert!(store.consumers().await.unwrap().is_empty());
}

async fn delivery_and_acks<S: Store>(store: &S) {
    // Seqs 1..=9: a.1 a.2 b.1 a.3 c.1 b.2 a.4 c.2 a.5 (interleaved below).
    for subject in [
        "a.x", "a.x", "b.x", "a.y", "c.x", "b.x", "a.y", "c.x", "a.z",
    ] {
        store.append(events(subject, 1)).await.unwrap();
    }
    let mut start_late = new_consumer("late", &["a.>"], policy(1000, None, &[]));
    start_late.start_after = 4;
    store.create_consumer(start_late, 100).await.unwrap();
    store
        .create_consumer(
            new_consumer("ab", &["a.>", "b.*", "a.x"], policy(1000, None, &[])),
            100,
        )
        .await
        .unwrap();

    let state = store.consumer_state("ab").await.unwrap().unwrap();
    assert_eq!(state.num_pending, 7, "a.* and b.* events, each once");
    assert_eq!((state.ack_floor, state.delivered_seq), (0, 0));

    let first = fetch(store, at_ms(0), "ab", 3).await;
    assert_eq!(seqs(&first), [1, 2, 3], "in seq order, each once");
    assert!(first.messages.iter().all(|m| m.ack_id.delivery == 1));
    let second = fetch(store, at_ms(1), "ab", 10).await;
    assert_eq!(seqs(&second), [4, 6, 7, 9], "non-matching seqs skipped");
    assert!(fetch(store, at_ms(2), "ab", 10).await.messages.is_empty());
    let state = store.consumer_state("ab").await.unwrap().unwrap();
    assert_eq!(state.num_pending, 0);
    assert_eq!(state.num_ack_pending, 7);
    assert_eq!(
        state.delivered_seq, 9,
        "past the last event, matching or not"
    );
    assert_eq!(state.ack_floor, 0);

    let late = fetch(store, at_ms(0), "late", 10).await;
    assert_eq!(seqs(&late), [7, 9], "starts after its start seq");

    // Acks: out of order; the floor follows the lowest unsettled seq.
    let mut acks = ids(&first);
    acks.push(AckId {
        epoch: 0xbad,
        ..ids(&second)[0]
    });
    acks.push(acks[0]);
    let (done, unknown) = settled(op(store, at_ms(3), "ab", ConsumerOp::Ack(acks)).await);
    assert_eq!(done, 3);
    assert_eq!(unknown, [3, 4], "another epoch, and an id given twice");
    let state = store.consumer_state("ab").await.unwrap().unwrap();
    assert_eq!(state.ack_floor, 3);
    assert_eq!(state.num_ack_pending, 4);
    let (done, _) = settled(
        op(
            store,
            at_ms(3),
            "ab",
            ConsumerOp::Ack(ids(&second)[1..].to_vec()),
        )
        .await,
    );
    assert_eq!(done, 3);
    assert_eq!(
        store.consumer_state("ab").await.unwrap().unwrap().ack_floor,
        3,
        "seq 4 still holds the floor"
    );
    let (done, unknown) = settled(
        op(
            store,
            at_ms(3),
            "ab",
            ConsumerOp::Ack(ids(&second)[..1].to_vec()),
        )
        .await,
    );
    assert_eq!((done, unknown.len()), (1, 0));
    let state = store.consumer_state("ab").await.unwrap().unwrap();
    assert_eq!((state.ack_floor, state.num_ack_pending), (9, 0));

    // New events are picked up after the delivered position.
    store.append(events("b.y", 2)).await.unwrap();
    assert_eq!(
        store
            .consumer_state("ab")
            .await
            .unwrap()
            .unwrap()
            .num_pending,
        2
    );
    assert_eq!(seqs(&fetch(store, at_ms(4), "ab", 10).await), [10, 11]);

    // An unknown consumer in a batch of calls answers for itself only.
    let outcomes = store
        .consumer_ops(
            at_ms(5),
            vec![
                ConsumerCall {
                    consumer: "missing".into(),
                    op: ConsumerOp::Ack(vec![]),
                },
                ConsumerCall {
                    consumer: "late".into(),
                    op: ConsumerOp::Ack(ids(&late)),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(outcomes[0], ConsumerOutcome::NotFound);
    assert_eq!(settled(outcomes[1].clone()), (2, vec![]));
    assert!(store.delete_consumer("ab").await.unwrap());
    assert!(store.delete_consumer("late").await.unwrap());
}

async fn redelivery_backoff_and_dead_letters<S: Store>(store: &S) {
    let head = store.head().await.unwrap();
    store.append(events("r.x", 4)).await.unwrap();
    let mut consumer = new_consumer("r", &["r.>"], policy(1000, Some(3), &[100, 200]));
    consumer.start_after = head;
    store.create_consumer(consumer, 100).await.unwrap();
    let (s1, s2, s3, s4) = (head + 1, head + 2, head + 3, head + 4);

    let first = fetch(store, at_ms(0), "r", 4).await;
    assert_eq!(seqs(&first), [s1, s2, s3, s4]);
    let [_, b, c, d] = ids(&first)[..] else {
        unreachable!()
    };

    // Held for the ack wait: nothing goes out again before it ends (+ backoff).
    assert!(fetch(store, at_ms(999), "r", 10).await.messages.is_empty());
    // a: times out at 1000, backoff 100 after the first failure: due at 1100.
    // b: NAK without delay at 10: due at 10 + 100.
    // c: NAK with an explicit delay.
    // d: progress at 900 moves its ack wait to 1900 (+100).
    let (done, _) = settled(
        op(
            store,
            at_ms(10),
            "r",
            ConsumerOp::Nak {
                ids: vec![b],
                delay_ms: None,
                reason: Some("db down".into()),
            },
        )
        .await,
    );
    assert_eq!(done, 1);
    let (done, _) = settled(
        op(
            store,
            at_ms(10),
            "r",
            ConsumerOp::Nak {
                ids: vec![c],
                delay_ms: Some(5000),
                reason: None,
            },
        )
        .await,
    );
    assert_eq!(done, 1);
    assert_eq!(
        settled(op(store, at_ms(900), "r", ConsumerOp::Progress(vec![d])).await).0,
        1
    );
    let early = fetch(store, at_ms(109), "r", 10).await;
    assert!(early.messages.is_empty());
    assert_eq!(early.next_due, Some(at_ms(110)), "the NAKed one is next");
    let b2 = fetch(store, at_ms(110), "r", 10).await;
    assert_eq!(seqs(&b2), [s2]);
    assert_eq!(b2.messages[0].ack_id.delivery, 2);
    // b's second failure waits the second delay (200); its third delivery is the last,
    // so its NAK sends it to the dead letters at once.
    let nak = |ids: Vec<AckId>, reason: Option<&str>| ConsumerOp::Nak {
        ids,
        delay_ms: None,
        reason: reason.map(str::to_owned),
    };
    settled(op(store, at_ms(111), "r", nak(ids(&b2), None)).await);
    assert!(fetch(store, at_ms(310), "r", 10).await.messages.is_empty());
    let b3 = fetch(store, at_ms(311), "r", 10).await;
    assert_eq!(seqs(&b3), [s2]);
    assert_eq!(b3.messages[0].ack_id.delivery, 3);
    settled(op(store, at_ms(400), "r", nak(ids(&b3), Some("still down"))).await);

    assert!(fetch(store, at_ms(1099), "r", 10).await.messages.is_empty());
    let a2 = fetch(store, at_ms(1100), "r", 10).await;
    assert_eq!(seqs(&a2), [s1], "timed out, then backoff");
    assert!(
        fetch(store, at_ms(1999), "r", 10).await.messages.is_empty(),
        "progress held d"
    );
    let d2 = fetch(store, at_ms(2000), "r", 10).await;
    assert_eq!(seqs(&d2), [s4]);

    // A stale delivery may still ack (the work was done), but not NAK, progress or term.
    let stale = settled(
        op(
            store,
            at_ms(2001),
            "r",
            ConsumerOp::Nak {
                ids: vec![d],
                delay_ms: Some(0),
                reason: None,
            },
        )
        .await,
    );
    assert_eq!(stale, (0, vec![0]));
    assert_eq!(
        settled(op(store, at_ms(2001), "r", ConsumerOp::Ack(vec![d])).await).0,
        1
    );
    assert_eq!(
        settled(op(store, at_ms(2001), "r", ConsumerOp::Ack(ids(&d2))).await),
        (0, vec![0]),
        "already settled"
    );

    // a's second delivery timed out at 2100 (+200): due at 2300; its third is the last.
    assert!(fetch(store, at_ms(2299), "r", 10).await.messages.is_empty());
    let a3 = fetch(store, at_ms(2300), "r", 10).await;
    assert_eq!(seqs(&a3), [s1]);
    assert_eq!(a3.messages[0].ack_id.delivery, 3);
    // Its ack wait ends at 3300: the fetch after that dead-letters it.
    let swept = fetch(store, at_ms(3300), "r", 10).await;
    assert_eq!(swept.dead_lettered, 1);
    // c (NAKed with 5 s at 10) is due at 5010.
    assert!(swept.messages.is_empty());
    let c2 = fetch(store, at_ms(5010), "r", 10).await;
    assert_eq!(seqs(&c2), [s3]);
    assert_eq!(
        settled(
            op(
                store,
                at_ms(5011),
                "r",
                ConsumerOp::Term {
                    ids: ids(&c2),
                    reason: Some("bad payload".into()),
                }
            )
            .await
        )
        .0,
        1
    );

    let dead = store
        .consumer_dead_letters("r", 0, 100)
        .await
        .unwrap()
        .unwrap();
    let summary: Vec<(Seq, u32, DeadReason, Option<&str>)> = dead
        .iter()
        .map(|d| (d.event.seq, d.deliveries, d.reason, d.last_error.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (s1, 3, DeadReason::MaxDeliver, None),
            (s2, 3, DeadReason::MaxDeliver, Some("still down")),
            (s3, 2, DeadReason::Term, Some("bad payload")),
        ]
    );
    assert_eq!(dead[0].first_delivered_at, at_ms(0));
    assert_eq!(dead[0].dead_at, at_ms(3300));
    assert_eq!(dead[1].dead_at, at_ms(400));
    assert_eq!(dead[2].dead_at, at_ms(5011));
    let paged = store
        .consumer_dead_letters("r", s1, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(paged.len(), 1);
    assert_eq!(paged[0].event.seq, s2);
    assert_eq!(
        store.consumer_dead_letters("nope", 0, 10).await.unwrap(),
        None
    );
    let state = store.consumer_state("r").await.unwrap().unwrap();
    assert_eq!(state.num_dead_letters, 3);
    assert_eq!(state.num_ack_pending, 0);
    assert_eq!(state.ack_floor, s4, "dead letters are settled");

    // Release: back at once, and the delivery is not counted as a failure.
    store.append(events("r.x", 1)).await.unwrap();
    let e1 = fetch(store, at_ms(6000), "r", 10).await;
    assert_eq!(
        settled(op(store, at_ms(6001), "r", ConsumerOp::Release(ids(&e1))).await).0,
        1
    );
    let e1b = fetch(store, at_ms(6001), "r", 10).await;
    assert_eq!(seqs(&e1b), seqs(&e1));
    assert_eq!(e1b.messages[0].ack_id.delivery, 1);
    assert!(store.delete_consumer("r").await.unwrap());
    assert_eq!(store.consumer_dead_letters("r", 0, 10).await.unwrap(), None);
}

async fn max_ack_pending_and_redrive<S: Store>(store: &S) {
    let head = store.head().await.unwrap();
    store.append(events("m.x", 5)).await.unwrap();
    let mut p = policy(1000, Some(1), &[0]);
    p.max_ack_pending = 2;
    let mut consumer = new_consumer("m", &["m.x"], p);
    consumer.start_after = head;
    store.create_consumer(consumer, 100).await.unwrap();

    let first = fetch(store, at_ms(0), "m", 10).await;
    assert_eq!(first.messages.len(), 2);
    assert!(first.at_max_ack_pending);
    let blocked = fetch(store, at_ms(1), "m", 10).await;
    assert!(blocked.messages.is_empty() && blocked.at_max_ack_pending);
    assert_eq!(
        store
            .consumer_state("m")
            .await
            .unwrap()
            .unwrap()
            .num_pending,
        3
    );

    // Term both: room again; the next two come.
    settled(
        op(
            store,
            at_ms(2),
            "m",
            ConsumerOp::Term {
                ids: ids(&first),
                reason: None,
            },
        )
        .await,
    );
    let next = fetch(store, at_ms(3), "m", 10).await;
    assert_eq!(seqs(&next), [head + 3, head + 4]);
    settled(op(store, at_ms(4), "m", ConsumerOp::Ack(ids(&next))).await);

    // Redrive one, then the rest: they come back first, counted from 1 again.
    assert_eq!(
        op(
            store,
            at_ms(5),
            "m",
            ConsumerOp::Redrive {
                seqs: Some(vec![head + 2, 999_999])
            }
        )
        .await,
        ConsumerOutcome::Redriven(1)
    );
    let again = fetch(store, at_ms(5), "m", 1).await;
    assert_eq!(seqs(&again), [head + 2]);
    assert_eq!(again.messages[0].ack_id.delivery, 1);
    assert_eq!(
        op(store, at_ms(6), "m", ConsumerOp::Redrive { seqs: None }).await,
        ConsumerOutcome::Redriven(1)
    );
    let state = store.consumer_state("m").await.unwrap().unwrap();
    assert_eq!((state.num_dead_letters, state.num_ack_pending), (0, 2));
    let more = fetch(store, at_ms(6), "m", 10).await;
    assert_eq!(
        seqs(&more),
        [head + 1],
        "redriven first; the pending set is full again"
    );

    // Discard.
    settled(
        op(
            store,
            at_ms(7),
            "m",
            ConsumerOp::Term {
                ids: ids(&more),
                reason: None,
            },
        )
        .await,
    );
    assert_eq!(
        op(store, at_ms(8), "m", ConsumerOp::Discard { seq: head + 1 }).await,
        ConsumerOutcome::Discarded(true)
    );
    assert_eq!(
        op(store, at_ms(8), "m", ConsumerOp::Discard { seq: head + 1 }).await,
        ConsumerOutcome::Discarded(false)
    );
    assert!(store.delete_consumer("m").await.unwrap());
}

async fn concurrent_fetches_hand_out_each_message_once<S: Store>(store: &S) {
    let head = store.head().await.unwrap();
    store.append(events("q.x", 200)).await.unwrap();
    let mut consumer = new_consumer("q", &["q.>"], policy(60_000, None, &[]));
    consumer.start_after = head;
    store.create_consumer(consumer, 100).await.unwrap();
    let now = at_ms(0);
    let fetches = (0..8).map(|_| async {
        let mut got = Vec::new();
        loop {
            let f = fetch(store, now, "q", 7).await;
            if f.messages.is_empty() {
                return got;
            }
            got.extend(seqs(&f));
        }
    });
    let mut all: Vec<Seq> = futures_util::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .collect();
    all.sort_unstable();
    let expected: Vec<Seq> = (head + 1..=head + 200).collect();
    assert_eq!(all, expected, "every message handed out exactly once");
    assert!(store.delete_consumer("q").await.unwrap());
}

/// Messages of one fetch settled in different ways: some acked (in a call spanning two
/// fetches), one NAKed, one extended, one termed, the rest redelivered when the ack wait
/// ends, and a last delivery given up on.
async fn fetches_settled_in_parts<S: Store>(store: &S) {
    let appended = store.append(events("parts.x", 10)).await.unwrap();
    let first = appended[0].event().seq;
    let mut consumer = new_consumer("parts", &["parts.>"], policy(1000, Some(3), &[100]));
    consumer.start_after = first - 1;
    store.create_consumer(consumer, 100).await.unwrap();
    let state =
        |ack_floor, ack_pending, redelivered, dead| (ack_floor, ack_pending, redelivered, dead);
    let now_state = || async {
        let s = store.consumer_state("parts").await.unwrap().unwrap();
        (
            s.ack_floor,
            s.num_ack_pending,
            s.num_redelivered,
            s.num_dead_letters,
        )
    };

    let a = ids(&fetch(store, at_ms(0), "parts", 5).await);
    let b = ids(&fetch(store, at_ms(10), "parts", 5).await);
    assert_eq!(
        a.iter().chain(&b).map(|id| id.seq).collect::<Vec<_>>(),
        (first..first + 10).collect::<Vec<_>>()
    );
    let (done, unknown) = settled(
        op(
            store,
            at_ms(20),
            "parts",
            ConsumerOp::Ack(vec![a[1], b[0], a[3], b[0]]),
        )
        .await,
    );
    assert_eq!(
        (done, unknown),
        (3, vec![3]),
        "the second b[0] is no longer pending"
    );
    let nak = ConsumerOp::Nak {
        ids: vec![a[2]],
        delay_ms: Some(50),
        reason: Some("busy".into()),
    };
    assert_eq!(settled(op(store, at_ms(30), "parts", nak).await).0, 1);
    let term = ConsumerOp::Term {
        ids: vec![b[1]],
        reason: None,
    };
    assert_eq!(settled(op(store, at_ms(40), "parts", term).await).0, 1);
    assert_eq!(now_state().await, state(first - 1, 6, 0, 1));

    let again = fetch(store, at_ms(100), "parts", 10).await;
    assert_eq!(seqs(&again), [a[2].seq], "only the NAKed message is due");
    assert_eq!(again.messages[0].ack_id.delivery, 2);
    let progress = ConsumerOp::Progress(vec![a[4]]);
    assert_eq!(settled(op(store, at_ms(500), "parts", progress).await).0, 1);
    assert_eq!(
        settled(op(store, at_ms(600), "parts", ConsumerOp::Ack(vec![a[0]])).await).0,
        1
    );
    assert_eq!(now_state().await, state(a[2].seq - 1, 5, 1, 1));

    // At 1200 ms: the ack wait of b (1010) plus its backoff (100) ended, and so did the
    // NAKed message's second delivery; the extended one waits until 1600.
    let timed_out = fetch(store, at_ms(1200), "parts", 10).await;
    assert_eq!(seqs(&timed_out), [a[2].seq, b[2].seq, b[3].seq, b[4].seq]);
    let deliveries: Vec<u32> = timed_out
        .messages
        .iter()
        .map(|m| m.ack_id.delivery)
        .collect();
    assert_eq!(deliveries, [3, 2, 2, 2]);
    assert_eq!(now_state().await, state(a[2].seq - 1, 5, 4, 1));

    // Any delivery's id acks: b[2]'s first one too.
    let acks = ConsumerOp::Ack(vec![a[4], b[2]]);
    assert_eq!(
        settled(op(store, at_ms(1300), "parts", acks).await),
        (2, vec![])
    );
    // a[2]'s third delivery was its last: given up on when its ack wait ends.
    let last = fetch(store, at_ms(2200), "parts", 10).await;
    assert!(last.messages.is_empty());
    assert_eq!(last.dead_lettered, 1);
    assert_eq!(now_state().await, state(b[3].seq - 1, 2, 2, 2));
    let dead = store
        .consumer_dead_letters("parts", 0, 10)
        .await
        .unwrap()
        .unwrap();
    let dead: Vec<(Seq, DeadReason, u32)> = dead
        .iter()
        .map(|d| (d.event.seq, d.reason, d.deliveries))
        .collect();
    assert_eq!(
        dead,
        [
            (a[2].seq, DeadReason::MaxDeliver, 3),
            (b[1].seq, DeadReason::Term, 1)
        ]
    );
    assert!(store.delete_consumer("parts").await.unwrap());
}
