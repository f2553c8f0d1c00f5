//! Aggregates (seed 003's event store). An aggregate is a stream of events about one
//! thing (`context` `c-42`); its events are ordinary events of the log — queryable,
//! streamable, consumable, relayed — that also carry the aggregate's type and id and
//! their version in its stream. Versions start at 1 and have no gaps; an aggregate with
//! no events is at version 0.
//!
//! Appends are conditional on the version the writer last saw ([`ExpectedVersion`]),
//! which is how two writers of one aggregate find out about each other (optimistic
//! concurrency, as KurrentDB's expected revision).

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::event::Payload;
use crate::subject::{Subject, SubjectError};

/// Longest aggregate type, in bytes (it is one token of the default subject).
pub const MAX_AGGREGATE_TYPE_BYTES: usize = 64;
/// Longest aggregate id, in bytes.
pub const MAX_AGGREGATE_ID_BYTES: usize = 256;
/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;
/// Most tokens of an event type (so that the default subject stays within a subject's
/// token limit).
pub const MAX_EVENT_TYPE_TOKENS: usize = 32;

/// What makes an event one of an aggregate's events.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The event's place in the aggregate's stream, from 1. Given by the store when it
    /// commits the event: ignored on the way in.
    pub version: u64,
    /// What happened, as the domain names it (`context.created`).
    pub event_type: String,
    /// The writer's metadata (user, causation, …): a JSON object.
    pub metadata: Option<Payload>,
}

/// The condition an append to an aggregate is made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Whatever the version is.
    Any,
    /// The aggregate has no events yet.
    NoStream,
    /// The aggregate has at least one event.
    Exists,
    /// The aggregate is at exactly this version (0: it has no events).
    Exactly(u64),
}

impl ExpectedVersion {
    /// Whether an aggregate at `current` meets the condition.
    pub fn admits(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exists => current > 0,
            ExpectedVersion::Exactly(n) => current == n,
        }
    }

    /// The version the first event of an append had if the append was made at a
    /// version that met the condition; `None` when the condition does not say.
    pub fn first_version(self) -> Option<u64> {
        match self {
            ExpectedVersion::NoStream => Some(1),
            ExpectedVersion::Exactly(n) => n.checked_add(1),
            ExpectedVersion::Any | ExpectedVersion::Exists => None,
        }
    }
}

/// Why an aggregate type, id or event type was refused. Written for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateNameError {
    #[error("aggregate type must be 1 to {MAX_AGGREGATE_TYPE_BYTES} ASCII letters, digits, `_` or `-` (it is a token of the events' subject), not {0:?}")]
    Type(String),
    #[error("aggregate id must be 1 to {MAX_AGGREGATE_ID_BYTES} bytes without commas, whitespace, control or invisible format characters")]
    Id,
    #[error("event type must be 1 to {MAX_EVENT_TYPE_BYTES} bytes of at most {MAX_EVENT_TYPE_TOKENS} dot-separated tokens without wildcards or whitespace (`context.created`): {0}")]
    EventType(String),
}

pub fn check_aggregate_type(name: &str) -> Result<(), AggregateNameError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_AGGREGATE_TYPE_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(AggregateNameError::Type(name.chars().take(80).collect()))
    }
}

pub fn check_aggregate_id(id: &str) -> Result<(), AggregateNameError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_AGGREGATE_ID_BYTES
        // No comma: in a path parameter `a,b` is how a list is written (OpenAPI's simple
        // style), so an id with one could not be told from a list of ids.
        && !id.chars().any(|c| {
            c == ','
                || c.is_whitespace()
                || c.is_control()
                || c.general_category() == GeneralCategory::Format
        });
    if valid {
        Ok(())
    } else {
        Err(AggregateNameError::Id)
    }
}

pub fn check_event_type(event_type: &str) -> Result<(), AggregateNameError> {
    if event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(AggregateNameError::EventType(format!(
            "{} bytes long",
            event_type.len()
        )));
    }
    let tokens = event_type.split('.').count();
    if tokens > MAX_EVENT_TYPE_TOKENS {
        return Err(AggregateNameError::EventType(format!(
            "{tokens} tokens; the most is {MAX_EVENT_TYPE_TOKENS}"
        )));
    }
    Subject::new(event_type)
        .map(drop)
        .map_err(|e| AggregateNameError::EventType(e.to_string()))
}

/// The subject of an aggregate's event published without one:
/// `hub.<hub_id>.<aggregate type>.<event type's tokens>`, so that `context` `c-42`'s
/// `context.created` is on `hub.local-hub.context.context.created` and every context
/// event matches `hub.*.context.>`.
pub fn default_subject(
    hub_id: &str,
    aggregate_type: &str,
    event_type: &str,
) -> Result<Subject, SubjectError> {
    Subject::new(format!("hub.{hub_id}.{aggregate_type}.{event_type}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions() {
        use ExpectedVersion::*;
        assert!(Any.admits(0) && Any.admits(7));
        assert!(NoStream.admits(0) && !NoStream.admits(1));
        assert!(Exists.admits(1) && !Exists.admits(0));
        assert!(Exactly(3).admits(3) && !Exactly(3).admits(2));
        assert!(Exactly(0).admits(0));
        assert_eq!(NoStream.first_version(), Some(1));
        assert_eq!(Exactly(4).first_version(), Some(5));
        assert_eq!(Any.first_version(), None);
    }

    #[test]
    fn names() {
        assert!(check_aggregate_type("context").is_ok());
        assert!(check_aggregate_type("order_line-2").is_ok());
        assert!(check_aggregate_type("").is_err());
        assert!(check_aggregate_type("a.b").is_err());
        assert!(check_aggregate_type("*").is_err());
        assert!(check_aggregate_type(&"x".repeat(65)).is_err());
        assert!(check_aggregate_id("c-42").is_ok());
        assert!(check_aggregate_id("2c1f0b8e-1d1a-4c5e-9a51-8f0b3b7f1a11").is_ok());
        assert!(check_aggregate_id("naïve:1/2").is_ok());
        assert!(check_aggregate_id("").is_err());
        assert!(check_aggregate_id("a b").is_err());
        assert!(check_aggregate_id("a\u{200b}b").is_err());
        assert!(check_aggregate_id(&"x".repeat(257)).is_err());
        assert!(check_event_type("context.created").is_ok());
        assert!(check_event_type("context.*").is_err());
        assert!(check_event_type("context..created").is_err());
        assert_eq!(
            default_subject("h1", "context", "context.created")
                .unwrap()
                .as_str(),
            "hub.h1.context.context.created"
        );
    }
}
