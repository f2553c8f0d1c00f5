//! Durable consumers as the store keeps them: what both backends share.
//!
//! A consumer is a named view of the log (its filter patterns) with its delivery state,
//! kept in three places:
//!
//! - its row: the policy, and `delivered_seq` — every matching event at or below it has
//!   been handed out at least once (it is pending, acked or dead);
//! - its **pending** set: delivered and not yet settled, one row per seq with the number
//!   of deliveries, `held_until` (the ack wait of the current delivery) and `due_at`
//!   (when it may be handed out again);
//! - its **dead letters**: given up on (`max_deliver` reached, or termed).
//!
//! An acked message is simply removed from the pending set, so the ack floor follows:
//! everything below the lowest pending seq, or `delivered_seq` when nothing is pending,
//! is settled.
//!
//! Every change is one call of [`Store::consumer_ops`](crate::Store::consumer_ops): a
//! batch of operations (from any number of clients and consumers) applied in one durable
//! transaction, in the order given. Each operation reads and locks its consumer's row
//! first, so operations on one consumer are serialised — also across instances sharing a
//! PostgreSQL database, which is what keeps a message with one client at a time.
//!
//! **What is durable when answered.** Acks, NAKs, progress, terms, releases and redrives
//! are on disk before their answer: an ack answered is never undone. A batch of only
//! fetches may be answered once written and synced with the next commit that needs it
//! (the embedded store does so: it halves the syncs of fetch + ack). A killed process
//! loses nothing written; only an OS crash or power loss may forget deliveries made since
//! the last sync, and their messages then go out again — still at least once.

use herald_core::{Event, Pattern, Seq, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{Page, Result, StoreError};

/// Most consumers a store keeps unless told otherwise.
pub const DEFAULT_MAX_CONSUMERS: usize = 1000;

/// How a consumer hands out and takes back messages. Changeable after creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryPolicy {
    /// How long a client holds a delivered message before it may go to another.
    pub ack_wait_ms: u64,
    /// Deliveries before a message goes to the dead letters; `None`: no limit.
    pub max_deliver: Option<u32>,
    pub backoff: Backoff,
    /// Most messages delivered and not yet settled; new messages wait beyond it.
    pub max_ack_pending: u32,
}

/// The delay before a failed delivery is retried (after a NAK without a delay, or after
/// the ack wait ran out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// The n-th failure waits the n-th delay; the last one repeats.
    Schedule(Vec<u64>),
    /// 1 s, doubling to at most 5 minutes, each ±10 % (different per message, so failed
    /// messages do not all come back at once).
    Exponential,
}

impl Backoff {
    const FIRST_MS: u64 = 1_000;
    const MAX_MS: u64 = 300_000;

    /// The delay after the `failures`-th failed delivery (1-based) of the message `seq`.
    pub fn delay_ms(&self, seq: Seq, failures: u32) -> u64 {
        let failures = failures.max(1);
        match self {
            Backoff::Schedule(delays) => delays
                .get(failures as usize - 1)
                .or(delays.last())
                .copied()
                .unwrap_or(0),
            Backoff::Exponential => {
                let base = Self::FIRST_MS
                    .saturating_mul(1u64 << (failures - 1).min(20))
                    .min(Self::MAX_MS);
                // A fixed hash of (seq, failures): the same message gets the same delay
                // on every instance, and neighbours get different ones.
                let mut x = seq
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(u64::from(failures).wrapping_mul(0xBF58_476D_1CE4_E5B9));
                x ^= x >> 31;
                x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
                x ^= x >> 29;
                let per_mille = 900 + x % 201; // 0.900 ..= 1.100
                base * per_mille / 1000
            }
        }
    }
}

/// A consumer to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConsumer {
    pub name: String,
    /// Random per creation: ack ids of a deleted consumer of the same name are unknown.
    pub epoch: u32,
    /// The subject patterns it takes (any of them); at least one.
    pub filters: Vec<Pattern>,
    pub policy: DeliveryPolicy,
    /// The owner's description of the consumer (JSON text), kept as given.
    pub meta: String,
    /// Delivery starts after this seq.
    pub start_after: Seq,
}

/// A consumer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub name: String,
    pub epoch: u32,
    pub filters: Vec<Pattern>,
    pub policy: DeliveryPolicy,
    pub meta: String,
    pub created_at: Timestamp,
}

/// The answer to [`Store::create_consumer`](crate::Store::create_consumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateConsumer {
    Created(ConsumerRecord),
    /// A consumer with that name exists; this is it, unchanged.
    Exists(ConsumerRecord),
    /// The store already keeps the most consumers it may.
    LimitReached,
}

/// A consumer's delivery state, counted from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerState {
    /// Every matching event at or below it is settled (acked, termed or dead).
    pub ack_floor: Seq,
    /// Every matching event at or below it has been delivered at least once.
    pub delivered_seq: Seq,
    /// Matching events above `delivered_seq`: never delivered yet.
    pub num_pending: u64,
    /// Delivered and not yet settled.
    pub num_ack_pending: u64,
    /// Of those, delivered more than once.
    pub num_redelivered: u64,
    pub num_dead_letters: u64,
    /// Matching events retention deleted before this consumer was handed them.
    pub skipped_by_retention: u64,
}

/// One delivery of one message, as a client acks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckId {
    pub seq: Seq,
    /// Which delivery of the message (1 for the first).
    pub delivery: u32,
    /// The consumer's epoch.
    pub epoch: u32,
}

impl AckId {
    /// The text form clients hand back: `<seq>.<delivery>.<epoch in hex>`.
    pub fn encode(&self) -> String {
        format!("{}.{}.{:x}", self.seq, self.delivery, self.epoch)
    }

    pub fn decode(text: &str) -> Option<AckId> {
        let mut parts = text.split('.');
        let seq = parts.next()?.parse().ok()?;
        let delivery = parts.next()?.parse().ok()?;
        let epoch = u32::from_str_radix(parts.next()?, 16).ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(AckId {
            seq,
            delivery,
            epoch,
        })
    }
}

/// What to do to a consumer's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerOp {
    /// Hands out up to `batch` messages: due redeliveries first, then new events, as room
    /// under `max_ack_pending` allows. Moves messages whose last allowed delivery timed
    /// out to the dead letters. `batch` 0 only does the latter.
    Fetch { batch: usize },
    /// Settles messages. An ack of an earlier delivery still counts: the work was done.
    Ack(Vec<AckId>),
    /// Gives messages back, to be handed out again after `delay_ms` (the backoff when
    /// `None`), or dead-lettered at once when that was their last allowed delivery.
    Nak {
        ids: Vec<AckId>,
        delay_ms: Option<u64>,
        reason: Option<String>,
    },
    /// Restarts the ack wait of messages still being worked on.
    Progress(Vec<AckId>),
    /// Sends messages to the dead letters at once.
    Term {
        ids: Vec<AckId>,
        reason: Option<String>,
    },
    /// Gives messages back for immediate redelivery without counting a failure (the
    /// client holding them went away).
    Release(Vec<AckId>),
    /// Moves dead letters (all when `None`) back to be delivered, their count reset.
    Redrive { seqs: Option<Vec<Seq>> },
    /// Deletes one dead letter.
    Discard { seq: Seq },
}

/// One operation on one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerCall {
    pub consumer: String,
    pub op: ConsumerOp,
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsumerOutcome {
    /// There is no consumer of that name.
    NotFound,
    Fetched(Fetched),
    /// How many ids were settled as asked, and the indexes (into the ids given) of those
    /// that were unknown, already settled, or of another delivery.
    Settled {
        done: u64,
        unknown: Vec<usize>,
    },
    /// How many dead letters went back to delivery.
    Redriven(u64),
    /// Whether the dead letter was there.
    Discarded(bool),
}

/// The answer to [`ConsumerOp::Fetch`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fetched {
    pub messages: Vec<Delivery>,
    /// Messages this fetch moved to the dead letters (their last delivery timed out).
    pub dead_lettered: u64,
    /// The pending set is full (`max_ack_pending`): new events wait.
    pub at_max_ack_pending: bool,
    /// The read of new events stopped at the query scan budget before the log's head:
    /// fetching again at once reads on (nothing new needs to be committed first).
    pub read_stopped_early: bool,
    /// The earliest time a pending message becomes due again, if any is waiting.
    pub next_due: Option<Timestamp>,
}

/// A message handed out.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub event: Event,
    pub ack_id: AckId,
}

/// Why a message was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    MaxDeliver,
    Term,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::MaxDeliver => "max_deliver",
            DeadReason::Term => "term",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        match text {
            "max_deliver" => Ok(DeadReason::MaxDeliver),
            "term" => Ok(DeadReason::Term),
            other => Err(StoreError::Corrupt(format!(
                "unknown dead-letter reason {other:?}"
            ))),
        }
    }
}

/// A consumer's dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerDeadLetter {
    pub event: Event,
    pub deliveries: u32,
    pub reason: DeadReason,
    /// The reason given with the last NAK or TERM.
    pub last_error: Option<String>,
    pub first_delivered_at: Timestamp,
    pub dead_at: Timestamp,
}

/// Filters as stored: a JSON array of pattern texts.
pub(crate) fn encode_filters(filters: &[Pattern]) -> String {
    serde_json::to_string(&filters.iter().map(Pattern::as_str).collect::<Vec<_>>())
        .expect("strings serialize")
}

pub(crate) fn decode_filters(text: &str) -> Result<Vec<Pattern>> {
    let texts: Vec<String> = serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("stored consumer filters: {e}")))?;
    texts
        .iter()
        .map(|t| {
            Pattern::parse_filter(t)
                .map_err(|e| StoreError::Corrupt(format!("stored consumer filter {t:?}: {e}")))
        })
        .collect()
}

pub(crate) fn encode_policy(policy: &DeliveryPolicy) -> String {
    serde_json::to_string(policy).expect("policy serializes")
}

pub(crate) fn decode_policy(text: &str) -> Result<DeliveryPolicy> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("stored consumer policy: {e}")))
}

/// The next matching events after `after` for a consumer with several filters, from one
/// page per filter (each read with the same bounds and `limit`): every event they agree
/// has been scanned, in seq order, at most `limit`, with how far that covers the log.
///
/// An event above the lowest `scanned_to` of the pages is left for later: another filter
/// may match events below it that its page did not reach.
pub(crate) fn merge_pages(pages: Vec<Page>, limit: usize) -> Page {
    let Some(covered) = pages.iter().map(|p| p.scanned_to).min() else {
        return Page {
            events: Vec::new(),
            scanned_to: 0,
        };
    };
    let mut events: Vec<Event> = pages
        .into_iter()
        .flat_map(|p| p.events)
        .filter(|e| e.seq <= covered)
        .collect();
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    if events.len() > limit {
        events.truncate(limit);
        let scanned_to = events.last().map_or(covered, |e| e.seq);
        return Page { events, scanned_to };
    }
    Page {
        events,
        scanned_to: covered,
    }
}

/// The ack wait's end and the due time of a message after a delivery at `now`: when its
/// ack wait ends, plus the backoff of a failure — or, for its last allowed delivery, when
/// the ack wait ends (it is then due to be given up on; one index finds both).
pub(crate) fn due_after_delivery(
    policy: &DeliveryPolicy,
    seq: Seq,
    delivery: u32,
    now: Timestamp,
) -> (i64, i64) {
    let held_until = now.as_micros() + ms_to_micros(policy.ack_wait_ms);
    (held_until, due_once_held(policy, seq, delivery, held_until))
}

/// The due time of a delivery whose ack wait ends at `held_until` (see
/// [`due_after_delivery`]).
pub(crate) fn due_once_held(
    policy: &DeliveryPolicy,
    seq: Seq,
    delivery: u32,
    held_until: i64,
) -> i64 {
    if exhausted(policy, delivery) {
        return held_until;
    }
    held_until + ms_to_micros(policy.backoff.delay_ms(seq, delivery))
}

pub(crate) fn ms_to_micros(ms: u64) -> i64 {
    i64::try_from(ms.saturating_mul(1000)).unwrap_or(i64::MAX / 4)
}

/// Whether `deliveries` used up the policy's allowed deliveries.
pub(crate) fn exhausted(policy: &DeliveryPolicy, deliveries: u32) -> bool {
    policy.max_deliver.is_some_and(|max| deliveries >= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ids_round_trip_and_refuse_junk() {
        let id = AckId {
            seq: 42,
            delivery: 3,
            epoch: 0xdead_beef,
        };
        assert_eq!(id.encode(), "42.3.deadbeef");
        assert_eq!(AckId::decode(&id.encode()), Some(id));
        for junk in ["", "1", "1.2", "1.2.zz", "1.2.3.4", "-1.2.3", "a.b.c"] {
            assert_eq!(AckId::decode(junk), None, "{junk}");
        }
    }

    #[test]
    fn schedules_repeat_their_last_delay() {
        let b = Backoff::Schedule(vec![100, 200]);
        assert_eq!(b.delay_ms(1, 1), 100);
        assert_eq!(b.delay_ms(1, 2), 200);
        assert_eq!(b.delay_ms(1, 9), 200);
        assert_eq!(Backoff::Schedule(vec![]).delay_ms(1, 1), 0);
    }

    #[test]
    fn exponential_doubles_to_five_minutes_with_bounded_jitter() {
        let b = Backoff::Exponential;
        for seq in 1..200 {
            let first = b.delay_ms(seq, 1);
            assert!((900..=1100).contains(&first), "{first}");
            let fourth = b.delay_ms(seq, 4);
            assert!((7200..=8800).contains(&fourth), "{fourth}");
            let late = b.delay_ms(seq, 40);
            assert!((270_000..=330_000).contains(&late), "{late}");
        }
        let spread: std::collections::HashSet<u64> = (1..50).map(|s| b.delay_ms(s, 1)).collect();
        assert!(spread.len() > 10, "jitter differs per message");
    }
}
