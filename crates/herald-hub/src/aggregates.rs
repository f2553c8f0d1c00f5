//! The event store of seed 003 on the hub's one log: append to an aggregate on an
//! expected version, load it by version, keep and load snapshots.
//!
//! An append goes through the committer like every publish (in turn with them, so live
//! fan-out stays in seq order) and the store checks the version in the same transaction
//! that writes the events. The events are then ordinary events: streamed, queried,
//! consumed and relayed like any other.

use herald_core::aggregate::{check_aggregate_id, check_aggregate_type, check_event_type};
use herald_core::{AggregateEvent, ExpectedVersion, NewEvent, Payload, Subject, TraceContext};
use herald_store::{
    AggregateAppend, AggregateAppended, AggregateKey, AggregatePage, Appended, Snapshot,
    SnapshotSaved, Store,
};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{committer, Hub, HubError};

/// Most events one append may carry.
pub const MAX_APPEND_EVENTS: usize = 1000;

/// Why an aggregate call was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError {
    #[error(transparent)]
    Hub(#[from] HubError),
    /// A malformed request: the message names the problem.
    #[error("{0}")]
    Invalid(String),
    /// The aggregate is not at the version the request expects; nothing was written.
    #[error("the aggregate is at version {current_version}, not at the expected one")]
    VersionConflict { current_version: u64 },
    /// An event id of the append is another event's.
    #[error("event id {0} is already used by another event")]
    IdTaken(Uuid),
    /// The aggregate has no events.
    #[error("no such aggregate")]
    NotFound,
    /// A snapshot's version is above the aggregate's.
    #[error("the snapshot's version {version} is above the aggregate's version {current_version}")]
    SnapshotAhead { version: u64, current_version: u64 },
}

/// One event for an aggregate, as a writer hands it in.
#[derive(Debug, Clone)]
pub struct DomainEvent {
    /// Given for idempotent retries; a fresh one otherwise.
    pub id: Option<Uuid>,
    pub event_type: String,
    pub payload: Payload,
    /// `None`: `hub.<hub_id>.<aggregate type>.<event type>`.
    pub subject: Option<Subject>,
    pub metadata: Option<Payload>,
    pub correlation_id: Option<Uuid>,
    /// The W3C trace context of the request that appends it, stored with the event.
    pub trace: Option<Box<TraceContext>>,
}

/// An aggregate's events and version after an append.
#[derive(Debug, Clone)]
pub struct AggregateWritten {
    /// The version of the append's last event.
    pub version: u64,
    pub events: Vec<Appended>,
}

/// Checks an aggregate's type and id.
pub fn check_aggregate(aggregate_type: &str, aggregate_id: &str) -> Result<(), AggregateError> {
    check_aggregate_type(aggregate_type).map_err(|e| AggregateError::Invalid(e.to_string()))?;
    check_aggregate_id(aggregate_id).map_err(|e| AggregateError::Invalid(e.to_string()))
}

impl Hub {
    /// The new events of an append to `key`'s aggregate, checked: at least one, at most
    /// [`MAX_APPEND_EVENTS`], ids distinct, each event's subject defaulted.
    pub fn aggregate_events(
        &self,
        key: &AggregateKey,
        events: Vec<DomainEvent>,
        service: Option<String>,
    ) -> Result<Vec<NewEvent>, AggregateError> {
        check_aggregate(&key.aggregate_type, &key.aggregate_id)?;
        if events.is_empty() {
            return Err(AggregateError::Invalid("`events` must not be empty".into()));
        }
        if events.len() > MAX_APPEND_EVENTS {
            return Err(AggregateError::Invalid(format!(
                "an append may carry at most {MAX_APPEND_EVENTS} events, not {}",
                events.len()
            )));
        }
        // One command's events share a correlation id unless they say otherwise.
        let correlation_id = Uuid::now_v7();
        let mut ids = std::collections::HashSet::with_capacity(events.len());
        let mut out = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            check_event_type(&event.event_type)
                .map_err(|e| AggregateError::Invalid(format!("events[{index}]: {e}")))?;
            let subject = match event.subject {
                Some(subject) => subject,
                None => herald_core::aggregate::default_subject(
                    self.hub_id(),
                    &key.aggregate_type,
                    &event.event_type,
                )
                .map_err(|e| {
                    AggregateError::Invalid(format!(
                        "events[{index}]: the default subject is not valid ({e}); give a `subject`"
                    ))
                })?,
            };
            let mut new = NewEvent::new(
                subject,
                event.payload,
                self.origin(service.clone(), None),
                Some(event.correlation_id.unwrap_or(correlation_id)),
            );
            if let Some(id) = event.id {
                new.id = id;
            }
            new.trace = event.trace;
            if !ids.insert(new.id) {
                // Two events cannot share an id: a clash, as with a stored event's.
                return Err(AggregateError::IdTaken(new.id));
            }
            new.tenant = key.tenant.clone();
            new.aggregate = Some(Box::new(AggregateEvent {
                aggregate_type: key.aggregate_type.clone(),
                aggregate_id: key.aggregate_id.clone(),
                version: 0,
                event_type: event.event_type,
                metadata: event.metadata,
            }));
            out.push(new);
        }
        Ok(out)
    }

    /// Appends events made by [`Hub::aggregate_events`] for `key` if the aggregate's
    /// version meets `expected`. A retry of an append that was written answers as the
    /// first time did, with the events marked as duplicates.
    pub async fn append_to_aggregate(
        &self,
        key: AggregateKey,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AggregateWritten, AggregateError> {
        self.validate_schemas(&events)?;
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError::ShuttingDown.into());
        }
        let (reply, answer) = oneshot::channel();
        let append = AggregateAppend {
            key,
            expected,
            events,
        };
        self.inner
            .publish_tx
            .send(committer::Request::Aggregate { append, reply })
            .await
            .map_err(|_| HubError::ShuttingDown)?;
        match answer.await.map_err(|_| HubError::ShuttingDown)?? {
            AggregateAppended::Written { version, events } => {
                Ok(AggregateWritten { version, events })
            }
            AggregateAppended::Conflict { current_version } => {
                Err(AggregateError::VersionConflict { current_version })
            }
            AggregateAppended::IdTaken { id } => Err(AggregateError::IdTaken(id)),
        }
    }

    /// At most `limit` of the aggregate's events from `from_version` on.
    pub async fn load_aggregate(
        &self,
        key: AggregateKey,
        from_version: u64,
        limit: usize,
    ) -> Result<AggregatePage, AggregateError> {
        check_aggregate(&key.aggregate_type, &key.aggregate_id)?;
        self.inner
            .store
            .load_aggregate(key, from_version, limit)
            .await
            .map_err(HubError::from)?
            .ok_or(AggregateError::NotFound)
    }

    /// Keeps a snapshot of the aggregate's state at `version` (at most its version).
    pub async fn save_snapshot(
        &self,
        key: AggregateKey,
        version: u64,
        state: Payload,
    ) -> Result<(), AggregateError> {
        check_aggregate(&key.aggregate_type, &key.aggregate_id)?;
        match self
            .inner
            .store
            .save_snapshot(key, version, state)
            .await
            .map_err(HubError::from)?
        {
            SnapshotSaved::Saved => Ok(()),
            SnapshotSaved::UnknownAggregate => Err(AggregateError::NotFound),
            SnapshotSaved::AheadOfAggregate { current_version } => {
                Err(AggregateError::SnapshotAhead {
                    version,
                    current_version,
                })
            }
        }
    }

    /// The aggregate's latest snapshot, if any.
    pub async fn load_snapshot(
        &self,
        key: AggregateKey,
    ) -> Result<Option<Snapshot>, AggregateError> {
        check_aggregate(&key.aggregate_type, &key.aggregate_id)?;
        Ok(self
            .inner
            .store
            .load_snapshot(key)
            .await
            .map_err(HubError::from)?)
    }
}
