//! The CloudEvents v1.0 HTTP protocol binding on `POST /api/events`, in its three modes,
//! and reading events back as CloudEvents.
//!
//! - **structured**: `Content-Type: application/cloudevents+json`, the whole event in
//!   the body;
//! - **batch**: `Content-Type: application/cloudevents-batch+json`, a JSON array of
//!   structured events, stored all or nothing;
//! - **binary**: attributes in `ce-*` headers, the data as the body, its media type in
//!   `Content-Type`.
//!
//! The mapping to Herald events (subject, id, payload) is `herald_core::cloudevent`'s.
//! `GET /api/events/{id}` with `Accept: application/cloudevents+json` answers a
//! structured CloudEvent, and `GET /api/events` with
//! `Accept: application/cloudevents-batch+json` a batch.

use herald_core::json::whole_number;
use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use herald_core::{CloudEventAttributes, DataForm, Event, ExtensionValue, NewEvent, Payload};
use serde::ser::SerializeMap;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::wire::MAX_BATCH_EVENTS;
use crate::AppState;

pub const STRUCTURED: &str = "application/cloudevents+json";
pub const BATCH: &str = "application/cloudevents-batch+json";

/// How a publish request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Herald,
    Structured,
    Batch,
    Binary,
}

/// Picks the framing from the headers: the CloudEvents media types, or `ce-specversion`
/// for binary mode; anything else is a plain Herald publish.
pub fn mode(headers: &HeaderMap) -> Mode {
    let content_type = media_type(headers);
    if content_type.eq_ignore_ascii_case(STRUCTURED) {
        Mode::Structured
    } else if content_type.eq_ignore_ascii_case(BATCH) {
        Mode::Batch
    } else if headers.contains_key("ce-specversion") {
        Mode::Binary
    } else {
        Mode::Herald
    }
}

/// The media type of `Content-Type`, without parameters.
fn media_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("")
}

fn is_json_media_type(media: &str) -> bool {
    let media = media.to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json") || media == "text/json"
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidCloudEvent, message)
}

/// Builds the Herald event for validated attributes and payload.
fn new_event(
    state: &AppState,
    attributes: CloudEventAttributes,
    payload: Payload,
    fallback_correlation: Option<Uuid>,
) -> Result<NewEvent, ApiError> {
    attributes.validate().map_err(|e| invalid(e.to_string()))?;
    let subject = attributes
        .herald_subject()
        .map_err(|e| invalid(e.to_string()))?;
    let mut attributes = attributes;
    let trace = take_trace_extensions(&mut attributes.extensions);
    let correlation = attributes.correlation_id().or(fallback_correlation);
    let mut event = NewEvent::new(
        subject,
        payload,
        state
            .hub
            .origin(Some("herald-cloudevents".to_owned()), None),
        correlation,
    );
    event.id = attributes.herald_id();
    event.cloudevent = Some(Box::new(attributes));
    event.trace = trace.map(Box::new);
    Ok(event)
}

/// Takes the distributed-tracing extension (`traceparent`, `tracestate`) out of a
/// CloudEvent's extensions: the event keeps it as its trace context, and reads back with
/// it continued. One that is not a valid `traceparent` is dropped, as the W3C spec says a
/// receiver ignores it (and its `tracestate` with it).
fn take_trace_extensions(
    extensions: &mut BTreeMap<String, ExtensionValue>,
) -> Option<herald_core::TraceContext> {
    let traceparent = extensions.remove("traceparent");
    let tracestate = extensions.remove("tracestate");
    let Some(ExtensionValue::String(traceparent)) = traceparent else {
        return None;
    };
    let tracestate = match &tracestate {
        Some(ExtensionValue::String(text)) => Some(text.as_str()),
        _ => None,
    };
    herald_core::TraceContext::parse(&traceparent, tracestate)
}

/// The members of a JSON object, in order, values as sent.
pub type Members = Vec<(String, Box<RawValue>)>;

/// Parses one structured-mode CloudEvent (a JSON object's members). Attributes are
/// decoded one by one; `data` stays the JSON text it was sent as.
pub fn parse_structured(
    state: &AppState,
    members: Members,
    fallback_correlation: Option<Uuid>,
) -> Result<NewEvent, ApiError> {
    let mut attributes: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
    for (name, value) in members {
        if attributes.contains_key(&name) {
            return Err(invalid(format!(
                "member `{}` appears more than once",
                super::truncate(&name)
            )));
        }
        attributes.insert(name, value);
    }
    let data = attributes.remove("data");
    let data_base64 = attributes.remove("data_base64");
    let mut take_string = |name: &'static str| -> Result<Option<String>, ApiError> {
        match attributes.remove(name) {
            None => Ok(None),
            Some(raw) => optional_string(name, &raw),
        }
    };
    let specversion = take_string("specversion")?
        .ok_or_else(|| invalid("the required attribute `specversion` is missing"))?;
    let id = take_string("id")?.unwrap_or_default();
    let source = take_string("source")?.unwrap_or_default();
    let ty = take_string("type")?.unwrap_or_default();
    let subject = take_string("subject")?;
    let time = take_string("time")?;
    let datacontenttype = take_string("datacontenttype")?;
    let dataschema = take_string("dataschema")?;

    let mut extensions = BTreeMap::new();
    for (name, raw) in attributes {
        if matches!(first_byte(&raw), Some(b'[' | b'{')) {
            return Err(invalid(format!(
                "extension `{name}` must be a string, boolean or integer, not a structure"
            )));
        }
        let v = match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Null) => continue,
            Ok(Value::String(s)) => ExtensionValue::String(s),
            Ok(Value::Bool(b)) => ExtensionValue::Boolean(b),
            Ok(Value::Number(n)) if whole_number(&n).is_some_and(|i| i32::try_from(i).is_ok()) => {
                ExtensionValue::Integer(whole_number(&n).unwrap_or_default())
            }
            _ => {
                return Err(invalid(format!(
                    "extension `{name}` must be a string, boolean or 32-bit integer"
                )))
            }
        };
        extensions.insert(name, v);
    }

    // JSON format §3.1.1: "the `data` member MAY have a value of `null`, representing an
    // explicit `null` payload as distinct from the absence of the `data` member", so a
    // null `data` is kept (as `{"data": null}`); a null `data_base64` is unset.
    let data_base64 = match data_base64 {
        Some(raw) => optional_string("data_base64", &raw)?,
        None => None,
    };
    let (payload, data_form) = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(invalid("`data` and `data_base64` cannot both be present"))
        }
        (None, Some(encoded)) => {
            base64::engine::general_purpose::STANDARD
                .decode(&encoded)
                .map_err(|e| invalid(format!("`data_base64` is not valid base64: {e}")))?;
            (
                wrap("data_base64", Value::String(encoded)),
                DataForm::Base64,
            )
        }
        (None, None) => (Payload::empty(), DataForm::Absent),
        (Some(raw), None) => data_payload(raw, |e| invalid(format!("`data` {e}")))?,
    };

    let attributes = CloudEventAttributes {
        id,
        source,
        specversion,
        ty,
        subject,
        time,
        datacontenttype,
        dataschema,
        extensions,
        data_form,
    };
    new_event(state, attributes, payload, fallback_correlation)
}

/// A string attribute; `null` means unset (JSON format §2.2).
fn optional_string(name: &str, raw: &RawValue) -> Result<Option<String>, ApiError> {
    match first_byte(raw) {
        Some(b'n') => Ok(None),
        Some(b'"') => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| invalid(format!("attribute `{name}` is not a valid string: {e}"))),
        _ => Err(invalid(format!("attribute `{name}` must be a string"))),
    }
}

fn first_byte(raw: &RawValue) -> Option<u8> {
    raw.get().trim_start().as_bytes().first().copied()
}

/// The payload of JSON data: an object is the payload itself, anything else (null
/// included) is kept as `{"data": …}`, in both cases as the text it was sent as. The
/// data must pass `herald_core::check_payload`.
fn data_payload(
    raw: Box<RawValue>,
    error: impl Fn(herald_core::PayloadError) -> ApiError,
) -> Result<(Payload, DataForm), ApiError> {
    herald_core::check_payload(raw.get()).map_err(error)?;
    let (text, form) = if first_byte(&raw) == Some(b'{') {
        (raw, DataForm::Object)
    } else {
        let wrapped = RawValue::from_string(format!("{{\"data\":{}}}", raw.get()))
            .map_err(|e| invalid(format!("`data` cannot be kept: {e}")))?;
        (wrapped, DataForm::Wrapped)
    };
    let payload = Payload::from_raw(text).map_err(|e| invalid(e.to_string()))?;
    Ok((payload, form))
}

/// Parses a binary-mode CloudEvent: attributes from `ce-*` headers, data from the body.
pub fn parse_binary(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    fallback_correlation: Option<Uuid>,
) -> Result<NewEvent, ApiError> {
    let mut attributes: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let text = value
            .to_str()
            .map_err(|_| invalid(format!("header `{name}` is not ASCII text")))?;
        let decoded =
            decode_header_value(text).map_err(|e| invalid(format!("header `{name}` {e}")))?;
        attributes.insert(attribute.to_owned(), decoded);
    }
    let mut take = |name: &str| attributes.remove(name);
    let specversion = take("specversion").unwrap_or_default();
    let id = take("id").unwrap_or_default();
    let source = take("source").unwrap_or_default();
    let ty = take("type").unwrap_or_default();
    let subject = take("subject");
    let time = take("time");
    let dataschema = take("dataschema");
    if let Some(name) = ["datacontenttype", "data"]
        .iter()
        .find(|n| attributes.contains_key(**n))
    {
        return Err(invalid(format!(
            "`ce-{name}` is not a binary-mode header; the data's media type is `Content-Type`"
        )));
    }
    let extensions = attributes
        .into_iter()
        .map(|(name, value)| (name, ExtensionValue::String(value)))
        .collect();
    let media = media_type(headers);
    let datacontenttype = (!media.is_empty()).then(|| {
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(media)
            .to_owned()
    });

    let (payload, data_form) = if body.is_empty() {
        (Payload::empty(), DataForm::Absent)
    } else if media.is_empty() || is_json_media_type(media) {
        let raw: Box<RawValue> = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the body is declared JSON but is not valid JSON: {e}"),
            )
        })?;
        data_payload(raw, |e| invalid(format!("the body (the event's data) {e}")))?
    } else if let Ok(text) = std::str::from_utf8(body) {
        (
            wrap("data", Value::String(text.to_owned())),
            DataForm::Wrapped,
        )
    } else {
        let encoded = base64::engine::general_purpose::STANDARD.encode(body);
        (
            wrap("data_base64", Value::String(encoded)),
            DataForm::Base64,
        )
    };

    let attributes = CloudEventAttributes {
        id,
        source,
        specversion,
        ty,
        subject,
        time,
        datacontenttype,
        dataschema,
        extensions,
        data_form,
    };
    new_event(state, attributes, payload, fallback_correlation)
}

/// Parses a batch-mode body: a JSON array of structured CloudEvents. Every item is
/// checked; any bad one rejects the batch, with the index and reason of each.
pub fn parse_batch(
    state: &AppState,
    body: &[u8],
    fallback_correlation: Option<Uuid>,
) -> Result<Vec<NewEvent>, ApiError> {
    let items: Vec<Box<RawValue>> = serde_json::from_slice(body).map_err(super::json_error)?;
    if items.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::new(
            ErrorCode::InvalidBatch,
            format!(
                "a batch holds at most {MAX_BATCH_EVENTS} CloudEvents, got {}",
                items.len()
            ),
        ));
    }
    super::parse_all(items.into_iter(), "CloudEvents", |item| {
        if first_byte(&item) != Some(b'{') {
            return Err(invalid("each item of a batch must be a JSON object"));
        }
        let members = serde_json::from_str::<ObjectMembers>(item.get())
            .map_err(|e| invalid(format!("the event cannot be read: {e}")))?;
        parse_structured(state, members.0, fallback_correlation)
    })
}

/// A JSON object's members in order, each value kept as its JSON text.
struct ObjectMembers(Members);

impl<'de> serde::Deserialize<'de> for ObjectMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> serde::de::Visitor<'de> for MembersVisitor {
            type Value = ObjectMembers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(ObjectMembers(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// Parses a structured body (a JSON object).
pub fn parse_structured_body(
    state: &AppState,
    body: &[u8],
    fallback_correlation: Option<Uuid>,
) -> Result<NewEvent, ApiError> {
    if body.iter().copied().find(|b| !b.is_ascii_whitespace()) != Some(b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(super::json_error)?;
        return Err(invalid("a structured CloudEvent is a JSON object"));
    }
    let members = serde_json::from_slice::<ObjectMembers>(body).map_err(super::json_error)?;
    parse_structured(state, members.0, fallback_correlation)
}

fn wrap(key: &str, value: Value) -> Payload {
    let mut map = Map::new();
    map.insert(key.to_owned(), value);
    Payload::from_value(&map)
}

/// Decodes a binary-mode header value (HTTP binding §3.1.3.2): first RFC 7230
/// quoted strings are unquoted (with their backslash escapes), then one round of
/// percent-decoding; the bytes must be UTF-8. Errors complete "header `ce-x` …".
fn decode_header_value(text: &str) -> Result<String, String> {
    let unquoted = unquote(text)?;
    percent_decode(&unquoted)
}

/// Removes RFC 7230 §3.2.6 double quotes: `"a \"b\""` is `a "b"`; text outside quotes is
/// kept as it is.
fn unquote(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        loop {
            match chars.next() {
                None => return Err("has a quoted string without its closing `\"`".into()),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(escaped) => out.push(escaped),
                    None => return Err("ends inside a backslash escape".into()),
                },
                Some(other) => out.push(other),
            }
        }
    }
    Ok(out)
}

/// Decodes `%XX` escapes (either case) into UTF-8; anything else is kept.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
                .ok_or("has a `%` that is not a `%XX` escape")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encodes bytes that are not UTF-8".into())
}

/// An event as a structured CloudEvent, ready to serialize: the attributes, then the
/// data as the JSON text it is stored as (never re-parsed, so any payload the hub
/// accepted reads back, whatever its depth).
pub struct Structured<'a> {
    attributes: Map<String, Value>,
    data: Option<(&'static str, Cow<'a, RawValue>)>,
}

impl Serialize for Structured<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let extra = usize::from(self.data.is_some());
        let mut map = serializer.serialize_map(Some(self.attributes.len() + extra))?;
        for (name, value) in &self.attributes {
            map.serialize_entry(name, value)?;
        }
        if let Some((name, data)) = &self.data {
            map.serialize_entry(name, data)?;
        }
        map.end()
    }
}

/// An event as a structured CloudEvent. Events that arrived as CloudEvents read back
/// exactly as they were sent; others get `id` = the Herald id, `source` =
/// `/herald/<hub_id>`, `type` = the subject, `time` = the commit time, and the
/// extensions `correlationid` and `heraldseq`.
pub fn to_structured(event: &Event) -> Structured<'_> {
    let attributes = attributes(event);
    let payload = event.payload.as_raw();
    let data = match event.cloudevent.as_deref().map(|a| a.data_form) {
        None | Some(DataForm::Object) => Some(("data", Cow::Borrowed(payload))),
        Some(DataForm::Absent) => None,
        Some(DataForm::Wrapped) => {
            wrapped_member(payload, "data").map(|raw| ("data", Cow::Owned(raw)))
        }
        Some(DataForm::Base64) => {
            wrapped_member(payload, "data_base64").map(|raw| ("data_base64", Cow::Owned(raw)))
        }
    };
    Structured { attributes, data }
}

/// The member `name` of a stored payload `{"data": …}` or `{"data_base64": …}`, as text.
fn wrapped_member(payload: &RawValue, name: &str) -> Option<Box<RawValue>> {
    let members = serde_json::from_str::<ObjectMembers>(payload.get()).ok()?;
    members
        .0
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, raw)| raw)
}

/// The context attributes of an event as a structured CloudEvent, without its data:
/// a CloudEvent's as the event JSON shows them ([`herald_hub::envelope`]), else made up
/// from the Herald event.
pub fn attributes(event: &Event) -> Map<String, Value> {
    let mut out = match event.cloudevent.as_deref() {
        Some(attributes) => herald_hub::envelope::cloudevent_attributes(attributes),
        None => made_up_attributes(event),
    };
    // The CloudEvents distributed-tracing extension.
    if let Some(trace) = event.trace.as_deref() {
        out.insert("traceparent".into(), trace.traceparent().into());
        if let Some(state) = &trace.tracestate {
            out.insert("tracestate".into(), state.clone().into());
        }
    }
    out
}

/// The attributes of an event that did not arrive as a CloudEvent.
fn made_up_attributes(event: &Event) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("specversion".into(), "1.0".into());
    out.insert("id".into(), event.id.to_string().into());
    out.insert(
        "source".into(),
        format!("/herald/{}", event.origin.hub_id).into(),
    );
    out.insert("type".into(), event.subject.as_str().into());
    out.insert("time".into(), event.timestamp.to_rfc3339().into());
    out.insert("datacontenttype".into(), "application/json".into());
    out.insert(
        "correlationid".into(),
        event.correlation_id.to_string().into(),
    );
    out.insert("heraldseq".into(), Value::from(event.seq));
    out
}

/// Whether the client asked for `media` (a plain substring match on `Accept`).
pub fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains(media))
}

/// A response with a CloudEvents media type.
pub fn respond(status: StatusCode, media: &'static str, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    response
}

/// Seed 004's `POST /events/publish?source=…` body.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "event_type": "hub.local-hub.project.created",
    "data": {"project_id": "123"},
    "tenant_id": "acme"
}))]
pub struct LegacyPublish {
    /// The CloudEvent `type`, which is also the Herald subject: a literal subject.
    #[schema(value_type = crate::wire::schema::Subject, required = true)]
    pub event_type: Option<String>,
    /// The CloudEvent `data`: any JSON (an object becomes the payload as is).
    #[schema(value_type = Value, required = false)]
    pub data: Option<Box<RawValue>>,
    /// Becomes the `tenantid` extension.
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\uFDD0-\\uFDEF\\uFFFE\\uFFFF]*$")]
    pub tenant_id: Option<String>,
    /// The CloudEvent `subject` attribute (not the Herald subject).
    #[schema(
        min_length = 1,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\uFDD0-\\uFDEF\\uFFFE\\uFFFF]*$"
    )]
    pub subject: Option<String>,
    /// Becomes the `correlationid` extension (the correlation id when it is a UUID).
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\uFDD0-\\uFDEF\\uFFFE\\uFFFF]*$")]
    pub correlation_id: Option<String>,
    /// The CloudEvent `id`; a fresh UUIDv7 when absent.
    #[schema(
        min_length = 1,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\uFDD0-\\uFDEF\\uFFFE\\uFFFF]*$"
    )]
    pub id: Option<String>,
}

/// Turns seed 004's publish request into a structured CloudEvent's members.
pub fn legacy_to_structured(source: String, body: LegacyPublish) -> Result<Members, ApiError> {
    let ty = body
        .event_type
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("`event_type` is required"))?;
    let string =
        |text: String| serde_json::value::to_raw_value(&text).map_err(|e| invalid(e.to_string()));
    let mut members = vec![
        ("specversion".to_owned(), string("1.0".to_owned())?),
        (
            "id".to_owned(),
            string(body.id.unwrap_or_else(|| Uuid::now_v7().to_string()))?,
        ),
        ("source".to_owned(), string(source)?),
        ("type".to_owned(), string(ty)?),
        (
            "time".to_owned(),
            string(herald_core::Timestamp::now().to_rfc3339())?,
        ),
        (
            "datacontenttype".to_owned(),
            string("application/json".to_owned())?,
        ),
    ];
    for (name, value) in [
        ("subject", body.subject),
        ("tenantid", body.tenant_id),
        ("correlationid", body.correlation_id),
    ] {
        if let Some(value) = value {
            members.push((name.to_owned(), string(value)?));
        }
    }
    if let Some(data) = body.data {
        members.push(("data".to_owned(), data));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_unquoted_then_percent_decoded() {
        // HTTP binding §3.1.3.2: "When decoding an HTTP message into a CloudEvent, any
        // HTTP header value MUST first be unescaped with respect to double-quoted
        // strings, as described in RFC7230, section 3.2.6. A single round of
        // percent-decoding MUST then be performed as described below."
        let decode = |text: &str| decode_header_value(text);
        assert_eq!(decode("\"hello world\"").unwrap(), "hello world");
        assert_eq!(
            decode(r#""a \"quoted\" \\ word""#).unwrap(),
            r#"a "quoted" \ word"#
        );
        assert_eq!(decode(r#"pre"fix"post"#).unwrap(), "prefixpost");
        assert_eq!(
            decode(r#""100%25""#).unwrap(),
            "100%",
            "one round, after unquoting"
        );
        assert_eq!(decode("%2541").unwrap(), "%41", "a single round");
        assert!(decode("\"open").is_err());
        assert!(decode("\"ends\\").is_err());
        // "Euro%20%E2%82%AC%20%F0%9F%98%80" is the spec's own example.
        assert_eq!(
            decode("Euro%20%E2%82%AC%20%F0%9F%98%80").unwrap(),
            "Euro \u{20ac} \u{1f600}"
        );
        // "Percent-encoding SHOULD be performed using upper-case for values A-F, but
        // decoding MUST accept lower-case values."
        assert_eq!(decode("%e2%82%ac").unwrap(), "\u{20ac}");
        // "values that have been unnecessarily percent-encoded MUST be accepted"
        assert_eq!(decode("%41%42").unwrap(), "AB");
        // "but encoded byte sequences which are invalid in UTF-8 MUST be rejected. (For
        // example, "%C0%A0" is an overlong encoding of U+0020, and MUST be rejected.)"
        assert!(decode("%C0%A0").is_err());
        assert!(decode("%FF").is_err());
        for malformed in ["bad%2", "bad%zz", "%+1", "%-1", "100%"] {
            assert!(decode(malformed).is_err(), "{malformed}");
        }
    }

    #[test]
    fn modes() {
        let mut headers = HeaderMap::new();
        assert_eq!(mode(&headers), Mode::Herald);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
        );
        assert_eq!(mode(&headers), Mode::Structured);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(BATCH));
        assert_eq!(mode(&headers), Mode::Batch);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("ce-specversion", HeaderValue::from_static("1.0"));
        assert_eq!(mode(&headers), Mode::Binary);
    }
}
