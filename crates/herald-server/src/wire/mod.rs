//! The JSON shapes of the API (from the seed documents), their limits, and the
//! conversions between them and the domain types; [`schema`] has the JSON Schemas a
//! derive cannot say. A stored event has one JSON shape for every way out, HTTP, NATS
//! and webhooks alike: [`herald_hub::envelope::EventJson`], shown here as [`Event`].
//!
//! This module is a leaf: it imports no handler and not the OpenAPI document, which
//! gathers what is here.

use herald_core::Event as CoreEvent;
use herald_hub::envelope::EventJson;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

pub mod access;
pub mod aggregates;
pub mod consumers;
pub mod event_schemas;
pub mod schema;

use schema::{EventId, OriginText, Subject};

/// Most events in one batch (`POST /api/events:batch`, CloudEvents batches,
/// `bus.publish_batch`).
pub const MAX_BATCH_EVENTS: usize = 1000;

/// Longest `origin.service` / `origin.user` accepted.
pub const MAX_ORIGIN_FIELD: usize = 256;

/// Most calls in one JSON-RPC batch.
pub const MAX_BATCH_REQUESTS: usize = 1000;

/// `POST /api/events` body. Fields are checked by the handler so that each problem gets
/// its own precise message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "subject": "hub.local-hub.project.created",
    "payload": {"project_id": "123"}
}))]
pub struct PublishRequest {
    /// The event's id, for idempotent publishing: publishing an id that is already stored
    /// stores nothing and answers `200` with the original event. Generated (UUIDv7) when
    /// absent.
    #[schema(value_type = Option<EventId>)]
    pub id: Option<String>,
    /// The subject to publish to (no wildcards).
    #[schema(value_type = Subject, required = true)]
    pub subject: Option<String>,
    /// The event's data: a JSON object (`{}` for none), stored as sent.
    #[schema(value_type = Object, required = true)]
    pub payload: Option<Box<RawValue>>,
    /// Else the `X-Correlation-ID` header; else generated.
    #[schema(value_type = Option<Uuid>)]
    pub correlation_id: Option<String>,
    pub origin: Option<PublishOrigin>,
}

/// The publisher may say which service and user it acts for; `hub_id` is always the
/// receiving hub's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishOrigin {
    /// At most 256 bytes; `herald-http` when `origin` is absent.
    #[schema(value_type = Option<OriginText>)]
    pub service: Option<String>,
    /// At most 256 bytes.
    #[schema(value_type = Option<OriginText>)]
    pub user: Option<String>,
}

/// Answer to a publish: `201` when stored, `200` with `duplicate: true` when an event
/// with that id was already stored (these are then the original event's fields).
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishResponse {
    pub event_id: Uuid,
    pub correlation_id: Uuid,
    /// Commit time, RFC 3339 UTC with microseconds.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The event's place in the hub's log.
    #[schema(minimum = 1)]
    pub seq: u64,
    pub duplicate: bool,
}

/// Answer to `POST /api/events:batch`: one result per event, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<PublishResponse>,
    pub count: usize,
}

/// An event as the API shows it: the hub's one event JSON, which NATS messages and
/// webhook bodies carry too.
pub type Event<'a> = EventJson<'a>;

// The schema of [`Event`] (the document's `Event`); a unit test keeps its members those
// [`EventJson`] writes.
/// An event as the API shows it, and as NATS messages and webhook bodies carry it.
#[derive(ToSchema)]
#[schema(as = Event)]
#[allow(dead_code)]
pub struct EventSchema {
    id: Uuid,
    /// The event's place in the hub's log: strictly increasing in commit order, gap-free.
    #[schema(minimum = 1)]
    seq: u64,
    /// A literal subject (see `Subject`).
    #[schema(min_length = 1)]
    subject: String,
    origin: Origin,
    correlation_id: Uuid,
    /// As published.
    #[schema(value_type = Object)]
    payload: (),
    /// Commit time, RFC 3339 UTC with microseconds.
    #[schema(format = DateTime)]
    timestamp: String,
    /// The CloudEvents context attributes (without the data), for events that arrived as
    /// CloudEvents: as a structured CloudEvent has them, extensions included.
    #[schema(value_type = Object, required = false)]
    cloudevent: (),
    /// How the CloudEvent's data is kept in `payload`, for events that arrived as
    /// CloudEvents: `object` (the data is the payload), `wrapped` (`{"data": …}`),
    /// `base64` (`{"data_base64": …}`) or `absent` (`{}`).
    #[schema(value_type = String, required = false, pattern = "^(?:object|wrapped|base64|absent)$")]
    cloudevent_data_form: (),
    /// The tenant the event belongs to, when the hub has tenants.
    #[schema(value_type = String, required = false)]
    tenant_id: (),
    /// For an aggregate's event: `{type, id, version}`.
    #[schema(value_type = Object, required = false)]
    aggregate: (),
    /// For an aggregate's event: what happened (`context.created`).
    #[schema(value_type = String, required = false)]
    r#type: (),
    /// For an aggregate's event: the writer's metadata.
    #[schema(value_type = Object, required = false)]
    metadata: (),
    /// The W3C Trace Context `traceparent` the event continues, for events published
    /// with a valid one (a `traceparent` header, or a CloudEvent's distributed-tracing
    /// extension), or traced by the hub. Version `00`, lowercase hex.
    #[schema(value_type = String, required = false, pattern = "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]
    traceparent: (),
    /// The W3C Trace Context `tracestate` that came with the `traceparent`, when any.
    #[schema(value_type = String, required = false, max_length = 512)]
    tracestate: (),
}

/// Who published an event.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Origin {
    hub_id: String,
    service: Option<String>,
    user: Option<String>,
}

/// A WebSocket frame of `GET /api/events/stream`: `{"subject": …, "data": <event>}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamFrame<'a> {
    /// A literal subject (see `Subject`).
    #[schema(min_length = 1)]
    pub subject: &'a str,
    #[schema(value_type = EventSchema)]
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
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `healthy`; `degraded` while NATS is configured but unreachable (events are still
    /// stored and relayed later); `unhealthy` (with status 503) when the store cannot be
    /// read, commits fail, or a commit hangs.
    #[schema(value_type = String, pattern = "^(?:healthy|degraded|unhealthy)$")]
    pub status: &'static str,
    /// `healthy`, `unhealthy` (configured, not connected) or `disabled` (no `NATS_URL`).
    #[schema(value_type = String, pattern = "^(?:healthy|unhealthy|disabled)$")]
    pub nats: &'static str,
    /// `healthy` or `unhealthy`.
    #[schema(value_type = String, pattern = "^(?:healthy|unhealthy)$")]
    pub database: &'static str,
    #[schema(format = DateTime)]
    pub timestamp: String,
    pub details: HealthDetails,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthDetails {
    pub nats_connected: bool,
    pub database_connected: bool,
    /// Commits get through: false when the last ones failed or one is hanging.
    pub database_writable: bool,
    /// What is wrong with the store, when `database` is `unhealthy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_error: Option<String>,
    pub running: bool,
}

/// `GET /health/nats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NatsHealth {
    pub connected: bool,
    /// The configured server(s), credentials hidden; `null` without NATS.
    pub url: Option<String>,
    /// How far the JetStream relay has got; absent when it is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayHealth>,
}

/// The relay's position in the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct RelayHealth {
    /// Every event of this hub up to this seq has been acknowledged by JetStream.
    pub acked_seq: u64,
    /// The log's head as the relay last saw it.
    pub head_seq: u64,
}

/// `GET /api/hubs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HubList {
    pub hubs: Vec<HubInfo>,
    pub count: usize,
}

/// A hub heard on `hub.global.presence.announced`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HubInfo {
    pub hub_id: String,
    /// One per running process (several may share a hub id and a store).
    pub instance_id: Uuid,
    pub version: String,
    pub url: Option<String>,
    #[schema(format = DateTime)]
    pub started_at: String,
    /// When this hub last heard its announcement.
    #[schema(format = DateTime)]
    pub last_seen: String,
    pub interval_seconds: u64,
}

impl From<herald_hub::HubPresence> for HubInfo {
    fn from(p: herald_hub::HubPresence) -> Self {
        HubInfo {
            hub_id: p.hub_id,
            instance_id: p.instance_id,
            version: p.version,
            url: p.url,
            started_at: p.started_at,
            last_seen: p.last_seen,
            interval_seconds: p.interval_seconds,
        }
    }
}

/// `GET /`: what this server is.
#[derive(Debug, Serialize, ToSchema)]
pub struct Index {
    pub name: &'static str,
    pub version: &'static str,
    pub hub_id: String,
    pub head_seq: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use herald_core::{CloudEventAttributes, DataForm, NewEvent, Origin, Payload, Timestamp};
    use serde_json::Value;
    use utoipa::PartialSchema;

    use super::*;

    fn member_names(value: &Value) -> BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    /// The documented members are the ones the hub's event JSON writes (all of them for
    /// an event that arrived as a CloudEvent), and so are the origin's.
    #[test]
    fn the_event_schema_matches_the_event_json() {
        let mut event = NewEvent::new(
            herald_core::Subject::new("hub.a.b").unwrap(),
            Payload::from_json("{}".into()).unwrap(),
            Origin {
                hub_id: "a".into(),
                service: None,
                user: None,
            },
            None,
        );
        event.cloudevent = Some(Box::new(CloudEventAttributes {
            id: "1".into(),
            source: "/s".into(),
            specversion: "1.0".into(),
            ty: "hub.a.b".into(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            extensions: Default::default(),
            data_form: DataForm::Absent,
        }));
        // Every optional member set, so that every documented one is written.
        event.tenant = Some("acme".into());
        event.aggregate = Some(Box::new(herald_core::AggregateEvent {
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            version: 1,
            event_type: "order.placed".into(),
            metadata: Some(Payload::from_json("{}".into()).unwrap()),
        }));
        event.trace = herald_core::TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("rojo=00f067aa0ba902b7"),
        )
        .map(Box::new);
        let event = event.commit(1, Timestamp::from_micros(0));
        let written = serde_json::to_value(Event::from(&event)).unwrap();
        let documented = serde_json::to_value(EventSchema::schema()).unwrap();
        assert_eq!(
            member_names(&documented["properties"]),
            member_names(&written)
        );
        let origin = serde_json::to_value(<super::Origin as PartialSchema>::schema()).unwrap();
        assert_eq!(
            member_names(&origin["properties"]),
            member_names(&written["origin"])
        );
    }
}
