//! The JSON shapes of the API (from the seed documents), and the conversions between
//! them and the domain types. Only this module knows how an event looks on the wire.

use herald_core::Event as CoreEvent;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// `POST /api/events` body. Fields are checked by the handler so that each problem gets
/// its own precise message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The event's id, for idempotent publishing; generated (UUIDv7) when absent.
    pub id: Option<String>,
    pub subject: Option<String>,
    pub payload: Option<Box<RawValue>>,
    pub correlation_id: Option<String>,
    pub origin: Option<PublishOrigin>,
}

/// The publisher may say which service and user it acts for; `hub_id` is always the
/// receiving hub's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishOrigin {
    pub service: Option<String>,
    pub user: Option<String>,
}

/// Answer to a publish: `201` when stored, `200` with `duplicate: true` when an event
/// with that id was already stored (these are then the original event's fields).
#[derive(Debug, Serialize)]
pub struct PublishResponse {
    pub event_id: Uuid,
    pub correlation_id: Uuid,
    pub timestamp: String,
    pub seq: u64,
    pub duplicate: bool,
}

/// Answer to `POST /api/events:batch`: one result per event, in order.
#[derive(Debug, Serialize)]
pub struct BatchResponse {
    pub results: Vec<PublishResponse>,
    pub count: usize,
}

/// An event as the API shows it.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    pub id: Uuid,
    pub seq: u64,
    pub subject: &'a str,
    pub origin: Origin<'a>,
    pub correlation_id: Uuid,
    pub payload: &'a RawValue,
    pub timestamp: String,
    /// The CloudEvents attributes, for events that arrived as CloudEvents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloudevent: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct Origin<'a> {
    pub hub_id: &'a str,
    pub service: Option<&'a str>,
    pub user: Option<&'a str>,
}

impl<'a> From<&'a CoreEvent> for Event<'a> {
    fn from(event: &'a CoreEvent) -> Self {
        Event {
            id: event.id,
            seq: event.seq,
            subject: event.subject.as_str(),
            origin: Origin {
                hub_id: &event.origin.hub_id,
                service: event.origin.service.as_deref(),
                user: event.origin.user.as_deref(),
            },
            correlation_id: event.correlation_id,
            payload: event.payload.as_raw(),
            timestamp: event.timestamp.to_rfc3339(),
            cloudevent: event.cloudevent.as_ref().map(|_| {
                let mut attributes = crate::http::cloudevents::to_structured(event);
                if let Some(map) = attributes.as_object_mut() {
                    map.remove("data");
                    map.remove("data_base64");
                }
                attributes
            }),
        }
    }
}

/// A WebSocket frame of `GET /api/events/stream`: `{"subject": …, "data": <event>}`.
#[derive(Debug, Serialize)]
pub struct StreamFrame<'a> {
    pub subject: &'a str,
    pub data: Event<'a>,
}

impl<'a> From<&'a CoreEvent> for StreamFrame<'a> {
    fn from(event: &'a CoreEvent) -> Self {
        StreamFrame {
            subject: event.subject.as_str(),
            data: Event::from(event),
        }
    }
}

/// `GET /health`: seed 000's `{status, nats, database}` plus seed 004's
/// `{timestamp, details}`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub nats: &'static str,
    pub database: &'static str,
    pub timestamp: String,
    pub details: HealthDetails,
}

#[derive(Debug, Serialize)]
pub struct HealthDetails {
    pub nats_connected: bool,
    pub database_connected: bool,
    pub running: bool,
}

/// `GET /health/nats`.
#[derive(Debug, Serialize)]
pub struct NatsHealth {
    pub connected: bool,
    pub url: Option<String>,
}

/// `GET /`: what this server is.
#[derive(Debug, Serialize)]
pub struct Index {
    pub name: &'static str,
    pub version: &'static str,
    pub hub_id: String,
    pub head_seq: u64,
}
