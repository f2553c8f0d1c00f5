//! The JSON shapes of the event store (`/api/aggregates`), and reading their request
//! bodies field by field, so that each problem names its field.

use herald_core::{ExpectedVersion, Payload, Subject};
use herald_hub::aggregates::{AggregateWritten, DomainEvent};
use herald_store::Snapshot as StoredSnapshot;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

/// A body field that is wrong, and why.
#[derive(Debug)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// What `POST /api/aggregates/{type}/{id}/events` asks for.
pub struct AppendRequest {
    pub expected: ExpectedVersion,
    pub events: Vec<DomainEvent>,
}

impl AppendRequest {
    /// The events, each with the request's trace context (as a batch publish gives it).
    pub fn with_trace(self, trace: Option<herald_core::TraceContext>) -> Vec<DomainEvent> {
        let mut events = self.events;
        if let Some(trace) = trace {
            for event in &mut events {
                event.trace = Some(Box::new(trace.clone()));
            }
        }
        events
    }
}

/// `"any"`, `"no_stream"`, `"exists"` or a version (absent or null: `"any"`).
pub fn expected_version(value: Option<&Value>) -> Result<ExpectedVersion, FieldError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(ExpectedVersion::Any);
    };
    match value {
        Value::String(s) if s == "any" => Ok(ExpectedVersion::Any),
        Value::String(s) if s == "no_stream" => Ok(ExpectedVersion::NoStream),
        Value::String(s) if s == "exists" => Ok(ExpectedVersion::Exists),
        other => other
            .as_number()
            .and_then(herald_core::json::non_negative_whole_number)
            .map(ExpectedVersion::Exactly)
            .ok_or_else(|| {
                field_error(
                    "expected_version",
                    "must be \"any\", \"no_stream\", \"exists\" or a version (a whole number ≥ 0)",
                )
            }),
    }
}

fn object_field(
    item: &Map<String, Value>,
    name: &str,
    field: &str,
) -> Result<Option<Payload>, FieldError> {
    match item.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => {
            let payload = Payload::from_value(map);
            herald_core::check_payload(payload.get())
                .map_err(|e| field_error(field, e.to_string()))?;
            Ok(Some(payload))
        }
        Some(_) => Err(field_error(field, "must be a JSON object")),
    }
}

fn uuid_field(
    item: &Map<String, Value>,
    name: &str,
    field: &str,
) -> Result<Option<Uuid>, FieldError> {
    match item.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => match Uuid::try_parse(text.trim()) {
            Ok(id) if !id.is_nil() => Ok(Some(id)),
            _ => Err(field_error(field, "must be a non-nil UUID")),
        },
        Some(_) => Err(field_error(field, "must be a UUID string")),
    }
}

/// Reads the append body; `correlation_id` is used for events without their own.
pub fn append_request(
    body: &Map<String, Value>,
    correlation_id: Option<Uuid>,
) -> Result<AppendRequest, FieldError> {
    if let Some(unknown) = body
        .keys()
        .find(|k| !matches!(k.as_str(), "expected_version" | "events"))
    {
        return Err(field_error(
            unknown.as_str(),
            "is not a field of an append (expected_version, events)",
        ));
    }
    let expected = expected_version(body.get("expected_version"))?;
    let items = match body.get("events") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(field_error("events", "must be an array of events")),
        None => return Err(field_error("events", "is required")),
    };
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let at = |name: &str| format!("events[{index}].{name}");
        let Value::Object(item) = item else {
            return Err(field_error(format!("events[{index}]"), "must be an object"));
        };
        if let Some(unknown) = item.keys().find(|k| {
            !matches!(
                k.as_str(),
                "type" | "payload" | "id" | "subject" | "metadata" | "correlation_id"
            )
        }) {
            return Err(field_error(
                at(unknown),
                "is not a field of an event (type, payload, id, subject, metadata, correlation_id)",
            ));
        }
        let event_type = match item.get("type") {
            Some(Value::String(t)) => {
                herald_core::aggregate::check_event_type(t)
                    .map_err(|e| field_error(at("type"), e.to_string()))?;
                t.clone()
            }
            Some(_) => return Err(field_error(at("type"), "must be a string")),
            None => return Err(field_error(at("type"), "is required")),
        };
        let payload = object_field(item, "payload", &at("payload"))?.ok_or_else(|| {
            field_error(at("payload"), "is required (a JSON object; {} for none)")
        })?;
        let subject = match item.get("subject") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                Subject::new(s.as_str()).map_err(|e| field_error(at("subject"), e.to_string()))?,
            ),
            Some(_) => return Err(field_error(at("subject"), "must be a string")),
        };
        events.push(DomainEvent {
            id: uuid_field(item, "id", &at("id"))?,
            event_type,
            payload,
            subject,
            metadata: object_field(item, "metadata", &at("metadata"))?,
            correlation_id: uuid_field(item, "correlation_id", &at("correlation_id"))?
                .or(correlation_id),
            trace: None,
        });
    }
    Ok(AppendRequest { expected, events })
}

/// What `PUT …/snapshot` asks for.
pub fn snapshot_request(body: &Map<String, Value>) -> Result<(u64, Payload), FieldError> {
    if let Some(unknown) = body
        .keys()
        .find(|k| !matches!(k.as_str(), "version" | "state"))
    {
        return Err(field_error(
            unknown.as_str(),
            "is not a field of a snapshot (version, state)",
        ));
    }
    let version = match body.get("version") {
        Some(value) => value
            .as_number()
            .and_then(herald_core::json::non_negative_whole_number)
            .filter(|v| *v >= 1)
            .ok_or_else(|| field_error("version", "must be a version (a whole number ≥ 1)"))?,
        None => return Err(field_error("version", "is required")),
    };
    let state = object_field(body, "state", "state")?
        .ok_or_else(|| field_error("state", "is required (a JSON object)"))?;
    Ok((version, state))
}

/// The append request body, for the API description.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
#[schema(example = json!({
    "expected_version": "no_stream",
    "events": [{"type": "context.created", "payload": {"name": "Q3 plan"}}]
}))]
pub struct AppendBody {
    /// `"any"` (the default), `"no_stream"`, `"exists"`, or the version the aggregate
    /// must be at.
    #[schema(value_type = Option<crate::wire::schema::ExpectedVersion>)]
    expected_version: (),
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<AppendEvent>,
}

/// One event of an append.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AppendEvent {
    /// Dot-separated tokens, no wildcards (`context.created`).
    #[schema(value_type = crate::wire::schema::EventType)]
    r#type: String,
    /// The event's data: a JSON object.
    #[schema(value_type = Object)]
    payload: (),
    /// For idempotent retries: re-sending an append with the same ids and expected
    /// version stores nothing and answers as the first time.
    #[schema(value_type = Option<crate::wire::schema::EventId>)]
    id: Option<String>,
    /// Default: `hub.<hub_id>.<aggregate type>.<event type>`.
    #[schema(value_type = Option<crate::wire::schema::Subject>)]
    subject: Option<String>,
    #[schema(value_type = Option<Object>)]
    metadata: (),
    #[schema(value_type = Option<Uuid>)]
    correlation_id: Option<String>,
}

/// The snapshot request body, for the API description.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SnapshotBody {
    /// The version the state is at (at most the aggregate's version).
    #[schema(minimum = 1)]
    version: u64,
    #[schema(value_type = Object)]
    state: (),
}

/// The answer to an append.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppendResponse {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The version of the append's last event.
    pub version: u64,
    pub events: Vec<AppendedEvent>,
}

/// Where one appended event went.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppendedEvent {
    pub event_id: Uuid,
    pub seq: u64,
    pub version: u64,
}

impl AppendResponse {
    pub fn new(aggregate_type: &str, aggregate_id: &str, written: &AggregateWritten) -> Self {
        AppendResponse {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            version: written.version,
            events: written
                .events
                .iter()
                .map(|a| {
                    let event = a.event();
                    AppendedEvent {
                        event_id: event.id,
                        seq: event.seq,
                        version: event.aggregate.as_deref().map_or(0, |g| g.version),
                    }
                })
                .collect(),
        }
    }
}

/// An aggregate's events.
#[derive(Debug, Serialize, ToSchema)]
pub struct AggregateEvents<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    /// The aggregate's current version.
    pub version: u64,
    /// In version order.
    #[schema(value_type = Vec<crate::wire::EventSchema>)]
    pub events: Vec<super::Event<'a>>,
}

/// A snapshot of an aggregate's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Snapshot<'a> {
    pub version: u64,
    #[schema(value_type = Object)]
    pub state: &'a serde_json::value::RawValue,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl<'a> From<&'a StoredSnapshot> for Snapshot<'a> {
    fn from(snapshot: &'a StoredSnapshot) -> Self {
        Snapshot {
            version: snapshot.version,
            state: snapshot.state.as_raw(),
            created_at: snapshot.created_at.to_rfc3339(),
        }
    }
}
