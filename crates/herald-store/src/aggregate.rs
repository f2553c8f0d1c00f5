//! What the store keeps for aggregates (see `herald_core::aggregate`): each aggregate's
//! current version beside the log, its events in the log (with their version), and its
//! latest snapshots.
//!
//! An append to an aggregate is one transaction that reads the aggregate's version, checks
//! the expected version and writes the events with the versions that follow, serialised
//! with every other append (across processes too), so that of two writers expecting the
//! same version exactly one wins.

use herald_core::{Event, ExpectedVersion, NewEvent, Payload, Timestamp};
use uuid::Uuid;

use crate::Appended;

/// Most snapshots kept per aggregate (the newest).
pub const SNAPSHOTS_KEPT: usize = 2;

/// Which aggregate: its type and id, in a tenant's namespace (`None`: outside every
/// tenant's), so that two tenants' `order` `42` are two aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateKey {
    pub tenant: Option<String>,
    pub aggregate_type: String,
    pub aggregate_id: String,
}

impl AggregateKey {
    /// The tenant as the aggregate tables key it (no tenant: the empty string).
    pub(crate) fn scope(&self) -> &str {
        self.tenant.as_deref().unwrap_or("")
    }
}

/// Events to append to one aggregate, on a condition. Each event's `aggregate` names
/// this aggregate (its `version` is given at commit) and its `tenant` is the key's.
#[derive(Debug, Clone)]
pub struct AggregateAppend {
    pub key: AggregateKey,
    pub expected: ExpectedVersion,
    /// At least one event, ids distinct.
    pub events: Vec<NewEvent>,
}

/// The result of an [`AggregateAppend`].
#[derive(Debug, Clone, PartialEq)]
pub enum AggregateAppended {
    /// The events were stored, one [`Appended::Stored`] each in order; or every one of
    /// them was stored already by this same append, made earlier on a condition that
    /// held then (a client's retry): then each is [`Appended::Duplicate`] and nothing
    /// was written. `version` is the version of the append's last event.
    Written { version: u64, events: Vec<Appended> },
    /// The condition does not hold: nothing was written.
    Conflict { current_version: u64 },
    /// An event id of the append belongs to an event that is not this append's (another
    /// aggregate's or version's, or an ordinary event): nothing was written.
    IdTaken { id: Uuid },
}

/// Events of one aggregate, in version order.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatePage {
    /// The aggregate's current version.
    pub version: u64,
    pub events: Vec<Event>,
}

/// A snapshot of an aggregate's state at a version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub version: u64,
    /// The writer's state document (a JSON object).
    pub state: Payload,
    pub created_at: Timestamp,
}

/// The result of saving a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSaved {
    Saved,
    /// The aggregate has no events.
    UnknownAggregate,
    /// The snapshot's version is above the aggregate's.
    AheadOfAggregate {
        current_version: u64,
    },
}

/// What an aggregate's stored events say about an append whose ids are all stored
/// already: whether it is the same append, made before. `stored` are the events with
/// the append's ids, in the append's order.
pub(crate) fn is_earlier_append(
    append: &AggregateAppend,
    stored: &[Option<Event>],
) -> Option<Vec<Appended>> {
    let mut first_version = None;
    for (i, event) in stored.iter().enumerate() {
        let event = event.as_ref()?;
        let aggregate = event.aggregate.as_deref()?;
        let same = event.tenant == append.key.tenant
            && aggregate.aggregate_type == append.key.aggregate_type
            && aggregate.aggregate_id == append.key.aggregate_id;
        if !same {
            return None;
        }
        let first = *first_version.get_or_insert(aggregate.version);
        if aggregate.version != first + i as u64 {
            return None;
        }
    }
    let first = first_version?;
    if append.expected.first_version().is_some_and(|v| v != first) {
        return None;
    }
    // `Exists` held for an append that did not start at 1.
    if append.expected == ExpectedVersion::Exists && first == 1 {
        return None;
    }
    Some(
        stored
            .iter()
            .map(|e| Appended::Duplicate(e.clone().expect("checked above")))
            .collect(),
    )
}

/// The decision for an append, given the aggregate's current version and the stored
/// events with the append's ids (in its order; `None` for an id not stored).
pub(crate) enum Decision {
    Write,
    Answer(AggregateAppended),
}

pub(crate) fn decide(append: &AggregateAppend, current: u64, stored: &[Option<Event>]) -> Decision {
    if stored.iter().all(Option::is_none) {
        return if append.expected.admits(current) {
            Decision::Write
        } else {
            Decision::Answer(AggregateAppended::Conflict {
                current_version: current,
            })
        };
    }
    if let Some(events) = is_earlier_append(append, stored) {
        let version = events
            .last()
            .and_then(|a| a.event().aggregate.as_deref())
            .map_or(current, |a| a.version);
        return Decision::Answer(AggregateAppended::Written { version, events });
    }
    if !append.expected.admits(current) {
        return Decision::Answer(AggregateAppended::Conflict {
            current_version: current,
        });
    }
    let id = append
        .events
        .iter()
        .zip(stored)
        .find(|(_, s)| s.is_some())
        .map(|(e, _)| e.id)
        .expect("some id is stored");
    Decision::Answer(AggregateAppended::IdTaken { id })
}

/// Gives an append's events their versions, from `current + 1`.
pub(crate) fn number(events: &mut [NewEvent], current: u64) {
    for (version, event) in (current + 1..).zip(events.iter_mut()) {
        if let Some(aggregate) = event.aggregate.as_deref_mut() {
            aggregate.version = version;
        }
    }
}

/// The events of an append as committed, with their versions from `current + 1`.
pub(crate) fn commit_events(
    mut events: Vec<NewEvent>,
    first_seq: u64,
    current: u64,
    timestamp: Timestamp,
) -> Vec<Appended> {
    number(&mut events, current);
    (first_seq..)
        .zip(events)
        .map(|(seq, event)| Appended::Stored(event.commit(seq, timestamp)))
        .collect()
}
