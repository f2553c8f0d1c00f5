//! Herald's core: the event model and the subject namespace. No I/O happens here; every
//! other crate builds on these types.
//!
//! - [`subject`]: literal subjects and wildcard patterns (NATS grammar).
//! - [`subject_tree`]: many patterns matched against one subject at once.
//! - [`aggregate`]: an aggregate's events, versions and the expected-version condition.
//! - [`event`]: [`NewEvent`] (what a publisher hands in) and [`Event`] (what the log holds).
//! - [`cloudevent`]: CloudEvents v1.0 attributes and their mapping to Herald events.
//! - [`trace_context`]: W3C `traceparent` / `tracestate`, parsed as the spec says.
//! - [`permissions`]: allow/deny subject rights (NATS semantics: deny wins).
//! - [`json`]: the checks every client payload passes (depth, numbers, Unicode, names).

pub mod aggregate;
pub mod cloudevent;
pub mod event;
pub mod json;
pub mod permissions;
pub mod subject;
pub mod subject_tree;
pub mod trace_context;

pub use aggregate::{AggregateEvent, AggregateNameError, ExpectedVersion};
pub use cloudevent::{CloudEventAttributes, CloudEventError, DataForm, ExtensionValue};
pub use event::{
    correlation_id_from_text, Event, NewEvent, Origin, Payload, PayloadNotObject, PayloadTextError,
    Seq, Timestamp, TimestampError,
};
pub use json::{check_payload, PayloadError, MAX_JSON_DEPTH};
pub use permissions::Permissions;
pub use subject::{
    qualify_subject, Pattern, Subject, SubjectError, Token, MAX_SUBJECT_BYTES, MAX_SUBJECT_TOKENS,
};
pub use subject_tree::SubjectTree;
pub use trace_context::TraceContext;
