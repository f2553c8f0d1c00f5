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

use std::collections::BTreeMap;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use herald_core::{CloudEventAttributes, DataForm, Event, ExtensionValue, NewEvent, Payload};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::publish::MAX_BATCH_EVENTS;
use crate::error::{ApiError, ErrorCode};
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
    Ok(event)
}

/// Parses one structured-mode CloudEvent (a JSON object).
pub fn parse_structured(
    state: &AppState,
    value: Map<String, Value>,
    fallback_correlation: Option<Uuid>,
) -> Result<NewEvent, ApiError> {
    let mut value = value;
    let mut take_string = |name: &'static str| -> Result<Option<String>, ApiError> {
        match value.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(format!("attribute `{name}` must be a string"))),
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
    let data = value.remove("data");
    let data_base64 = value.remove("data_base64");

    let mut extensions = BTreeMap::new();
    for (name, v) in value {
        let v = match v {
            Value::Null => continue,
            Value::String(s) => ExtensionValue::String(s),
            Value::Bool(b) => ExtensionValue::Boolean(b),
            Value::Number(n) => match whole_number(&n).filter(|i| i32::try_from(*i).is_ok()) {
                Some(i) => ExtensionValue::Integer(i),
                None => {
                    return Err(invalid(format!(
                        "extension `{name}` must be a string, boolean or 32-bit integer"
                    )))
                }
            },
            Value::Array(_) | Value::Object(_) => {
                return Err(invalid(format!(
                    "extension `{name}` must be a string, boolean or integer, not a structure"
                )))
            }
        };
        extensions.insert(name, v);
    }

    let (payload, data_form) = match (data, data_base64) {
        (Some(d), Some(b)) if !d.is_null() && !b.is_null() => {
            return Err(invalid("`data` and `data_base64` cannot both be present"))
        }
        (_, Some(Value::String(encoded))) => {
            base64::engine::general_purpose::STANDARD
                .decode(&encoded)
                .map_err(|e| invalid(format!("`data_base64` is not valid base64: {e}")))?;
            (
                wrap("data_base64", Value::String(encoded)),
                DataForm::Base64,
            )
        }
        (_, Some(Value::Null)) | (None, None) | (Some(Value::Null), None) => {
            (Payload::empty(), DataForm::Absent)
        }
        (_, Some(_)) => return Err(invalid("`data_base64` must be a string")),
        (Some(Value::Object(map)), None) => (Payload::from_value(&map), DataForm::Object),
        (Some(other), None) => (wrap("data", other), DataForm::Wrapped),
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
        let decoded = percent_decode(text)
            .ok_or_else(|| invalid(format!("header `{name}` has a malformed percent-encoding")))?;
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
        match Payload::from_raw(raw) {
            Ok(payload) => (payload, DataForm::Object),
            Err(_) => {
                let value: Value =
                    serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
                (wrap("data", value), DataForm::Wrapped)
            }
        }
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
    let items: Vec<Value> = serde_json::from_slice(body).map_err(super::json_error)?;
    if items.is_empty() || items.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::new(
            ErrorCode::InvalidBatch,
            format!(
                "a batch holds 1 to {MAX_BATCH_EVENTS} CloudEvents, got {}",
                items.len()
            ),
        ));
    }
    super::publish::parse_all(items.into_iter(), "CloudEvents", |item| match item {
        Value::Object(map) => parse_structured(state, map, fallback_correlation),
        _ => Err(invalid("each item of a batch must be a JSON object")),
    })
}

/// Parses a structured body (a JSON object).
pub fn parse_structured_body(
    state: &AppState,
    body: &[u8],
    fallback_correlation: Option<Uuid>,
) -> Result<NewEvent, ApiError> {
    match serde_json::from_slice::<Value>(body).map_err(super::json_error)? {
        Value::Object(map) => parse_structured(state, map, fallback_correlation),
        _ => Err(invalid("a structured CloudEvent is a JSON object")),
    }
}

/// A JSON number that is a whole number, as an integer: `4` and `4.0` alike (JSON, and
/// JSON Schema's `integer`, do not tell them apart).
fn whole_number(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(f))
            .map(|f| f as i64)
    })
}

fn wrap(key: &str, value: Value) -> Payload {
    let mut map = Map::new();
    map.insert(key.to_owned(), value);
    Payload::from_value(&map)
}

/// Decodes `%XX` escapes (binary-mode header values are percent-encoded UTF-8).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An event as a structured CloudEvent. Events that arrived as CloudEvents read back
/// exactly as they were sent; others get `id` = the Herald id, `source` =
/// `/herald/<hub_id>`, `type` = the subject, `time` = the commit time, and the
/// extensions `correlationid` and `heraldseq`.
pub fn to_structured(event: &Event) -> Value {
    let mut out = Map::new();
    match event.cloudevent.as_deref() {
        Some(a) => {
            out.insert("specversion".into(), a.specversion.clone().into());
            out.insert("id".into(), a.id.clone().into());
            out.insert("source".into(), a.source.clone().into());
            out.insert("type".into(), a.ty.clone().into());
            for (name, value) in [
                ("subject", &a.subject),
                ("time", &a.time),
                ("datacontenttype", &a.datacontenttype),
                ("dataschema", &a.dataschema),
            ] {
                if let Some(value) = value {
                    out.insert(name.into(), value.clone().into());
                }
            }
            for (name, value) in &a.extensions {
                let value = match value {
                    ExtensionValue::String(s) => Value::String(s.clone()),
                    ExtensionValue::Integer(i) => Value::from(*i),
                    ExtensionValue::Boolean(b) => Value::Bool(*b),
                };
                out.insert(name.clone(), value);
            }
            let payload: Value = serde_json::from_str(event.payload.get()).unwrap_or(Value::Null);
            match a.data_form {
                DataForm::Absent => {}
                DataForm::Object => {
                    out.insert("data".into(), payload);
                }
                DataForm::Wrapped => {
                    out.insert("data".into(), payload["data"].clone());
                }
                DataForm::Base64 => {
                    out.insert("data_base64".into(), payload["data_base64"].clone());
                }
            }
        }
        None => {
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
            let payload: Value = serde_json::from_str(event.payload.get()).unwrap_or(Value::Null);
            out.insert("data".into(), payload);
        }
    }
    Value::Object(out)
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
pub fn respond(status: StatusCode, media: &'static str, body: Value) -> Response {
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
    #[schema(value_type = crate::openapi::Subject, required = true)]
    pub event_type: Option<String>,
    /// The CloudEvent `data`: any JSON (an object becomes the payload as is).
    #[schema(value_type = Value, required = false)]
    pub data: Option<Value>,
    /// Becomes the `tenantid` extension.
    pub tenant_id: Option<String>,
    /// The CloudEvent `subject` attribute (not the Herald subject).
    #[schema(min_length = 1)]
    pub subject: Option<String>,
    /// Becomes the `correlationid` extension (the correlation id when it is a UUID).
    pub correlation_id: Option<String>,
    /// The CloudEvent `id`; a fresh UUIDv7 when absent.
    #[schema(min_length = 1)]
    pub id: Option<String>,
}

/// Turns seed 004's publish request into a structured CloudEvent.
pub fn legacy_to_structured(
    source: String,
    body: LegacyPublish,
) -> Result<Map<String, Value>, ApiError> {
    let ty = body
        .event_type
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("`event_type` is required"))?;
    let mut map = Map::new();
    map.insert("specversion".into(), "1.0".into());
    map.insert(
        "id".into(),
        body.id.unwrap_or_else(|| Uuid::now_v7().to_string()).into(),
    );
    map.insert("source".into(), source.into());
    map.insert("type".into(), ty.into());
    map.insert(
        "time".into(),
        herald_core::Timestamp::now().to_rfc3339().into(),
    );
    map.insert("datacontenttype".into(), "application/json".into());
    if let Some(subject) = body.subject {
        map.insert("subject".into(), subject.into());
    }
    if let Some(tenant) = body.tenant_id {
        map.insert("tenantid".into(), tenant.into());
    }
    if let Some(correlation) = body.correlation_id {
        map.insert("correlationid".into(), correlation.into());
    }
    if let Some(data) = body.data {
        map.insert("data".into(), data);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%C3%A9").as_deref(), Some("a bé"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }

    #[test]
    fn whole_numbers() {
        let number = |text: &str| serde_json::from_str::<serde_json::Number>(text).unwrap();
        assert_eq!(whole_number(&number("4")), Some(4));
        assert_eq!(whole_number(&number("4.0")), Some(4));
        assert_eq!(whole_number(&number("-2147483648.0")), Some(-2147483648));
        assert_eq!(whole_number(&number("4.5")), None);
        assert_eq!(whole_number(&number("1e300")), None);
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
