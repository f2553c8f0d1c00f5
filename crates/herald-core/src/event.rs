//! The event model: what a publisher hands in ([`NewEvent`]) and what the log holds
//! ([`Event`], with the `seq` and `timestamp` given at commit).

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::aggregate::AggregateEvent;
use crate::cloudevent::CloudEventAttributes;
use crate::subject::Subject;
use crate::trace_context::TraceContext;

/// Position of an event in the hub's log: assigned at commit, strictly increasing in
/// commit order. The first event has seq 1; seq 0 means "before the first event".
pub type Seq = u64;

/// Who published an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The hub the event was first published to.
    pub hub_id: String,
    /// The publishing service, when it said.
    pub service: Option<String>,
    /// The user on whose behalf it was published, when known.
    pub user: Option<String>,
}

/// An event's payload: a JSON object, kept as the text it arrived as so that storing and
/// serving it never re-parses it.
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

/// The payload was valid JSON but not an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload must be a JSON object, not {found}")]
pub struct PayloadNotObject {
    pub found: &'static str,
}

/// Why [`Payload::from_json`] refused its text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadTextError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    NotObject(#[from] PayloadNotObject),
}

impl Payload {
    /// Accepts already-validated JSON text if it is an object.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, PayloadNotObject> {
        let found = match raw.get().trim_start().as_bytes().first() {
            Some(b'{') => return Ok(Payload(raw)),
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b'n') => "null",
            Some(b't' | b'f') => "a boolean",
            _ => "a number",
        };
        Err(PayloadNotObject { found })
    }

    /// Parses and validates JSON text (used when reading the log back).
    pub fn from_json(text: String) -> Result<Self, PayloadTextError> {
        let raw = RawValue::from_string(text)?;
        Ok(Payload::from_raw(raw)?)
    }

    /// An empty object.
    pub fn empty() -> Self {
        Payload(RawValue::from_string("{}".to_owned()).expect("valid JSON"))
    }

    pub fn from_value(value: &serde_json::Map<String, serde_json::Value>) -> Self {
        let text = serde_json::to_string(value).expect("a JSON map serializes");
        Payload(RawValue::from_string(text).expect("serde_json output is valid JSON"))
    }

    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// A UTC instant with microsecond precision, the resolution the log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_micros())
    }

    pub fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// RFC 3339 in UTC with microseconds: `2025-11-03T12:00:00.123456Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Parses RFC 3339 (`2025-11-03T12:00:00Z`, any offset), or a date-time without an
    /// offset, which is taken as UTC. A space where the offset's `+` should be is
    /// accepted too: an unescaped `+` in a query string arrives as a space.
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        let text = text.trim();
        let attempt = |t: &str| -> Option<Timestamp> {
            if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
                return Some(Timestamp(dt.with_timezone(&Utc).timestamp_micros()));
            }
            for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
                if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
                    return Some(Timestamp(naive.and_utc().timestamp_micros()));
                }
            }
            if let Ok(date) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
                return Some(Timestamp(
                    date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros(),
                ));
            }
            None
        };
        if let Some(ts) = attempt(text) {
            return Ok(ts);
        }
        if let Some(i) = text.rfind(' ') {
            if i > 10 {
                let fixed = format!("{}+{}", &text[..i], &text[i + 1..]);
                if let Some(ts) = attempt(&fixed) {
                    return Ok(ts);
                }
            }
        }
        Err(TimestampError {
            input: text.chars().take(64).collect(),
        })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 timestamp (for example 2025-11-03T12:00:00Z)")]
pub struct TimestampError {
    pub input: String,
}

/// Namespace of correlation ids derived from text that is not a UUID.
const CORRELATION_NAMESPACE: Uuid = Uuid::from_u128(0x2c0f_52b6_1d7e_4f0a_8e39_a4c1_77d3_5b20);

/// A correlation id from a client's text: the UUID itself when it is one, else the UUIDv5
/// of the text, so the same external trace id always gives the same correlation id.
pub fn correlation_id_from_text(text: &str) -> Uuid {
    let text = text.trim();
    Uuid::try_parse(text).unwrap_or_else(|_| Uuid::new_v5(&CORRELATION_NAMESPACE, text.as_bytes()))
}

/// An event on its way into the log: everything but `seq` and `timestamp`, which the
/// store assigns at commit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    pub subject: Subject,
    pub origin: Origin,
    pub correlation_id: Uuid,
    pub payload: Payload,
    /// Set when the event arrived as a CloudEvent: its attributes, kept for reading it
    /// back as one.
    pub cloudevent: Option<Box<CloudEventAttributes>>,
    /// The tenant the event belongs to: the publishing key's tenant, or the tenant whose
    /// subject space holds the subject. Set by the hub, never taken from a client.
    pub tenant: Option<String>,
    /// Set when the event is one of an aggregate's (its version is given at commit).
    pub aggregate: Option<Box<AggregateEvent>>,
    /// The W3C trace context the event continues, when it came with one (or the hub
    /// traced its publish): handed on with the event wherever it goes.
    pub trace: Option<Box<TraceContext>>,
    /// The id [`NewEvent::new`] made (see [`NewEvent::has_fresh_id`]).
    generated_id: FreshId,
}

/// The id [`NewEvent::new`] made, kept only by the value it made: a clone is a copy
/// that may be appended again, so it loses the mark. Not part of an event's equality.
#[derive(Debug)]
struct FreshId(Option<Uuid>);

impl Clone for FreshId {
    fn clone(&self) -> Self {
        FreshId(None)
    }
}

impl PartialEq for FreshId {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl NewEvent {
    /// Whether `id` is still the UUIDv7 [`NewEvent::new`] made in this process: no
    /// stored event can have it (74 random bits, and a time), so a store need not look
    /// it up before storing. Any other id (a client's, a CloudEvent's, a derived one)
    /// may be stored already. Assigning `id` makes this false, and so does cloning (a
    /// copy may be appended twice).
    pub fn has_fresh_id(&self) -> bool {
        self.generated_id.0 == Some(self.id)
    }

    /// A new event with a fresh time-ordered id (UUIDv7) and, when none is given, a fresh
    /// correlation id. Time-ordered ids keep the id index append-mostly.
    pub fn new(
        subject: Subject,
        payload: Payload,
        origin: Origin,
        correlation_id: Option<Uuid>,
    ) -> Self {
        let id = Uuid::now_v7();
        NewEvent {
            id,
            subject,
            origin,
            correlation_id: correlation_id.unwrap_or_else(Uuid::now_v7),
            payload,
            cloudevent: None,
            tenant: None,
            aggregate: None,
            trace: None,
            generated_id: FreshId(Some(id)),
        }
    }

    /// The committed event, once the store has given it a place in the log.
    pub fn commit(self, seq: Seq, timestamp: Timestamp) -> Event {
        Event {
            seq,
            id: self.id,
            subject: self.subject,
            origin: self.origin,
            correlation_id: self.correlation_id,
            payload: self.payload,
            timestamp,
            cloudevent: self.cloudevent,
            tenant: self.tenant,
            aggregate: self.aggregate,
            trace: self.trace,
        }
    }
}

/// An event in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: Seq,
    pub id: Uuid,
    pub subject: Subject,
    pub origin: Origin,
    pub correlation_id: Uuid,
    pub payload: Payload,
    /// When the hub committed the event (UTC, microseconds); non-decreasing in `seq`
    /// order on a single store.
    pub timestamp: Timestamp,
    pub cloudevent: Option<Box<CloudEventAttributes>>,
    /// See [`NewEvent::tenant`].
    pub tenant: Option<String>,
    /// See [`NewEvent::aggregate`].
    pub aggregate: Option<Box<AggregateEvent>>,
    /// See [`NewEvent::trace`].
    pub trace: Option<Box<TraceContext>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the value `new` made has a fresh id: not once its id is replaced, and not a
    /// clone (which may be appended a second time). Equality ignores the mark.
    #[test]
    fn only_the_made_value_has_a_fresh_id() {
        let origin = Origin {
            hub_id: "h".into(),
            service: None,
            user: None,
        };
        let made = NewEvent::new(
            Subject::new("hub.a.b").unwrap(),
            Payload::from_json("{}".into()).unwrap(),
            origin,
            None,
        );
        assert!(made.has_fresh_id());
        let copy = made.clone();
        assert!(!copy.has_fresh_id());
        assert_eq!(copy, made);
        let mut given = made;
        given.id = Uuid::now_v7();
        assert!(!given.has_fresh_id());
    }

    #[test]
    fn payload_must_be_an_object() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert!(Payload::from_raw(raw(r#"{"a":1}"#)).is_ok());
        assert!(Payload::from_raw(raw(r#" {}"#)).is_ok());
        assert_eq!(Payload::from_raw(raw("[1]")).unwrap_err().found, "an array");
        assert_eq!(Payload::from_raw(raw("null")).unwrap_err().found, "null");
        assert_eq!(Payload::from_raw(raw("3")).unwrap_err().found, "a number");
        assert_eq!(
            Payload::from_raw(raw("\"x\"")).unwrap_err().found,
            "a string"
        );
        assert_eq!(
            Payload::from_raw(raw("true")).unwrap_err().found,
            "a boolean"
        );
    }

    #[test]
    fn timestamps_round_trip_with_microseconds() {
        let ts = Timestamp::parse("2025-11-03T12:00:00.123456Z").unwrap();
        assert_eq!(ts.to_rfc3339(), "2025-11-03T12:00:00.123456Z");
        let ts = Timestamp::parse("2025-11-03T14:00:00+02:00").unwrap();
        assert_eq!(ts.to_rfc3339(), "2025-11-03T12:00:00.000000Z");
        // An unescaped `+` in a query string arrives as a space.
        let ts = Timestamp::parse("2025-11-03T14:00:00 02:00").unwrap();
        assert_eq!(ts.to_rfc3339(), "2025-11-03T12:00:00.000000Z");
        let ts = Timestamp::parse("2025-11-03T12:00:00").unwrap();
        assert_eq!(ts.to_rfc3339(), "2025-11-03T12:00:00.000000Z");
        let ts = Timestamp::parse("2025-11-03").unwrap();
        assert_eq!(ts.to_rfc3339(), "2025-11-03T00:00:00.000000Z");
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("").is_err());
        assert!(Timestamp::parse("2025-13-03T12:00:00Z").is_err());
    }

    #[test]
    fn correlation_ids_from_text() {
        let id = Uuid::now_v7();
        assert_eq!(correlation_id_from_text(&id.to_string()), id);
        let a = correlation_id_from_text("req-456");
        assert_eq!(a, correlation_id_from_text("req-456"));
        assert_ne!(a, correlation_id_from_text("req-457"));
        assert_eq!(a.get_version_num(), 5);
    }

    #[test]
    fn new_events_get_time_ordered_ids() {
        let subject = Subject::new("hub.t.x").unwrap();
        let origin = Origin {
            hub_id: "h".into(),
            service: None,
            user: None,
        };
        let a = NewEvent::new(subject.clone(), Payload::empty(), origin.clone(), None);
        let b = NewEvent::new(subject, Payload::empty(), origin, None);
        assert_eq!(a.id.get_version_num(), 7);
        assert!(a.id < b.id);
    }
}
