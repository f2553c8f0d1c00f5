//! The one JSON shape of a stored event, for every way out: `GET /api/events/{id}`,
//! query answers and stream frames of the API, NATS message bodies (relay, republish
//! rules) and webhook bodies. One serializer ([`EventJson`]) makes them all, so that
//! what a subscriber receives is value for value what the API answers for that event.
//!
//! Events that arrived as CloudEvents carry their context attributes in `cloudevent`
//! (as a structured CloudEvent has them, without the data) and in
//! `cloudevent_data_form` how the data is kept in the payload, so that another hub that
//! imports the message ([`from_json`]) gets the event back losslessly.
//!
//! This module is a leaf: it knows the domain types and JSON, nothing of HTTP or NATS.

use std::borrow::Cow;
use std::collections::BTreeMap;

use herald_core::{
    CloudEventAttributes, DataForm, Event, ExtensionValue, NewEvent, Origin, Payload, Subject,
    TraceContext,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

/// A stored event as JSON (serialize it with `serde_json`, or use [`to_json`]).
#[derive(Debug, Serialize)]
pub struct EventJson<'a> {
    pub id: Uuid,
    pub seq: u64,
    pub subject: &'a str,
    pub origin: OriginJson<'a>,
    pub correlation_id: Uuid,
    /// As published.
    pub payload: &'a RawValue,
    /// Commit time, RFC 3339 UTC with microseconds.
    pub timestamp: String,
    /// The CloudEvents context attributes (without the data), for events that arrived
    /// as CloudEvents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloudevent: Option<Map<String, Value>>,
    /// How the CloudEvent's data is kept in `payload` (`object`, `wrapped`, `base64`,
    /// `absent`), for events that arrived as CloudEvents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloudevent_data_form: Option<&'static str>,
    /// The tenant the event belongs to, when the hub has tenants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<&'a str>,
    /// For an aggregate's event: which aggregate, and the event's version in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateJson<'a>>,
    /// For an aggregate's event: what happened (`context.created`).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<&'a str>,
    /// For an aggregate's event: the writer's metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a RawValue>,
    /// The W3C `traceparent` the event continues, for events published with one (or
    /// traced by the hub).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Its W3C `tracestate`, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<&'a str>,
}

/// Which aggregate an event belongs to, and its version there.
#[derive(Debug, Serialize)]
pub struct AggregateJson<'a> {
    #[serde(rename = "type")]
    pub aggregate_type: &'a str,
    pub id: &'a str,
    pub version: u64,
}

/// Who published an event.
#[derive(Debug, Serialize, Deserialize)]
pub struct OriginJson<'a> {
    #[serde(borrow)]
    pub hub_id: Cow<'a, str>,
    #[serde(borrow)]
    pub service: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub user: Option<Cow<'a, str>>,
}

impl<'a> From<&'a Event> for EventJson<'a> {
    fn from(event: &'a Event) -> Self {
        EventJson {
            id: event.id,
            seq: event.seq,
            subject: event.subject.as_str(),
            origin: OriginJson {
                hub_id: event.origin.hub_id.as_str().into(),
                service: event.origin.service.as_deref().map(Into::into),
                user: event.origin.user.as_deref().map(Into::into),
            },
            correlation_id: event.correlation_id,
            payload: event.payload.as_raw(),
            timestamp: event.timestamp.to_rfc3339(),
            cloudevent: event.cloudevent.as_deref().map(cloudevent_attributes),
            cloudevent_data_form: event.cloudevent.as_deref().map(|a| a.data_form.as_str()),
            tenant_id: event.tenant.as_deref(),
            aggregate: event.aggregate.as_deref().map(|a| AggregateJson {
                aggregate_type: &a.aggregate_type,
                id: &a.aggregate_id,
                version: a.version,
            }),
            event_type: event.aggregate.as_deref().map(|a| a.event_type.as_str()),
            metadata: event
                .aggregate
                .as_deref()
                .and_then(|a| a.metadata.as_ref())
                .map(|m| m.as_raw()),
            traceparent: event.trace.as_deref().map(TraceContext::traceparent),
            tracestate: event.trace.as_deref().and_then(|t| t.tracestate.as_deref()),
        }
    }
}

/// The context attributes of a CloudEvent as a structured CloudEvent has them (without
/// the data): the spec's attributes that are set, and the extensions as members.
pub fn cloudevent_attributes(attributes: &CloudEventAttributes) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("specversion".into(), attributes.specversion.clone().into());
    out.insert("id".into(), attributes.id.clone().into());
    out.insert("source".into(), attributes.source.clone().into());
    out.insert("type".into(), attributes.ty.clone().into());
    for (name, value) in [
        ("subject", &attributes.subject),
        ("time", &attributes.time),
        ("datacontenttype", &attributes.datacontenttype),
        ("dataschema", &attributes.dataschema),
    ] {
        if let Some(value) = value {
            out.insert(name.into(), value.clone().into());
        }
    }
    for (name, value) in &attributes.extensions {
        let value = match value {
            ExtensionValue::String(s) => Value::String(s.clone()),
            ExtensionValue::Integer(i) => Value::from(*i),
            ExtensionValue::Boolean(b) => Value::Bool(*b),
        };
        out.insert(name.clone(), value);
    }
    out
}

/// The event as JSON text.
pub fn to_json(event: &Event) -> String {
    serde_json::to_string(&EventJson::from(event)).expect("an event serializes")
}

#[derive(Deserialize)]
struct Incoming<'a> {
    id: Uuid,
    #[serde(borrow)]
    subject: &'a str,
    #[serde(borrow)]
    origin: OriginJson<'a>,
    correlation_id: Uuid,
    payload: Box<RawValue>,
    #[serde(default, borrow)]
    cloudevent: Option<&'a RawValue>,
    #[serde(default, borrow)]
    cloudevent_data_form: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tracestate: Option<Cow<'a, str>>,
}

/// Reads back what [`to_json`] wrote (on another hub): the event to store there, with
/// its id, origin, correlation id, payload and CloudEvent attributes kept. Messages
/// written before the one shape (CloudEvent attributes in the store's own encoding,
/// recognised by their `data_form` member) read back too. `None` when `body` is not
/// such an envelope or its subject is not `subject` (the message's own subject wins).
pub fn from_json(body: &[u8], subject: &Subject) -> Option<NewEvent> {
    let incoming: Incoming = serde_json::from_slice(body).ok()?;
    if incoming.subject != subject.as_str() {
        return None;
    }
    let payload = Payload::from_raw(incoming.payload).ok()?;
    let cloudevent = match incoming.cloudevent {
        Some(raw) if raw.get() != "null" => Some(Box::new(read_cloudevent(
            raw,
            incoming.cloudevent_data_form.as_deref(),
        )?)),
        _ => None,
    };
    let origin = Origin {
        hub_id: incoming.origin.hub_id.into_owned(),
        service: incoming.origin.service.map(Cow::into_owned),
        user: incoming.origin.user.map(Cow::into_owned),
    };
    let mut event = NewEvent::new(
        subject.clone(),
        payload,
        origin,
        Some(incoming.correlation_id),
    );
    // The message's own id: it may be stored here already.
    event.id = incoming.id;
    event.cloudevent = cloudevent;
    // A message's claim to a tenant is not trusted: the importing hub stamps it; an
    // aggregate's versions are its home hub's, so here the event is an ordinary one.
    event.trace = incoming.traceparent.and_then(|traceparent| {
        TraceContext::parse(&traceparent, incoming.tracestate.as_deref()).map(Box::new)
    });
    Some(event)
}

/// The attributes of a `cloudevent` member: the one shape, or the store's encoding that
/// earlier releases sent (it has a `data_form` member, which no CloudEvent attribute
/// name can be: those are lowercase letters and digits).
fn read_cloudevent(raw: &RawValue, data_form: Option<&str>) -> Option<CloudEventAttributes> {
    let mut members: Map<String, Value> = serde_json::from_str(raw.get()).ok()?;
    if members.contains_key("data_form") {
        return herald_store::codec::decode_cloudevent(raw.get()).ok();
    }
    let data_form = DataForm::parse(data_form?)?;
    let mut take = |name: &str| members.remove(name);
    let required = |value: Option<Value>| match value {
        Some(Value::String(text)) => Some(text),
        _ => None,
    };
    let optional = |value: Option<Value>| match value {
        None => Some(None),
        Some(Value::String(text)) => Some(Some(text)),
        Some(_) => None,
    };
    let specversion = required(take("specversion"))?;
    let id = required(take("id"))?;
    let source = required(take("source"))?;
    let ty = required(take("type"))?;
    let subject = optional(take("subject"))?;
    let time = optional(take("time"))?;
    let datacontenttype = optional(take("datacontenttype"))?;
    let dataschema = optional(take("dataschema"))?;
    let mut extensions = BTreeMap::new();
    for (name, value) in members {
        let value = match value {
            Value::String(text) => ExtensionValue::String(text),
            Value::Bool(flag) => ExtensionValue::Boolean(flag),
            Value::Number(number) => ExtensionValue::Integer(number.as_i64()?),
            _ => return None,
        };
        extensions.insert(name, value);
    }
    Some(CloudEventAttributes {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Timestamp;

    fn committed(cloudevent: Option<CloudEventAttributes>) -> Event {
        let mut event = NewEvent::new(
            Subject::new("hub.a.project.created").unwrap(),
            Payload::from_json(r#"{"name":"é \"q\""}"#.into()).unwrap(),
            Origin {
                hub_id: "a".into(),
                service: Some("svc".into()),
                user: None,
            },
            None,
        );
        event.cloudevent = cloudevent.map(Box::new);
        event.commit(7, Timestamp::from_micros(1_700_000_000_000_000))
    }

    fn attributes() -> CloudEventAttributes {
        CloudEventAttributes {
            id: "A234-1234-1234".into(),
            source: "https://example.com/orders".into(),
            specversion: "1.0".into(),
            ty: "com.example.order.created".into(),
            subject: Some("order/42".into()),
            time: Some("2018-04-05T17:31:00Z".into()),
            datacontenttype: None,
            dataschema: Some("https://example.com/schema".into()),
            extensions: BTreeMap::from([
                ("tenantid".into(), ExtensionValue::String("acme".into())),
                ("priority".into(), ExtensionValue::Integer(-3)),
                ("urgent".into(), ExtensionValue::Boolean(true)),
                ("extensions".into(), ExtensionValue::String("a name".into())),
            ]),
            data_form: DataForm::Wrapped,
        }
    }

    fn assert_same(back: &NewEvent, event: &Event) {
        assert_eq!(back.id, event.id);
        assert_eq!(back.subject, event.subject);
        assert_eq!(back.origin, event.origin);
        assert_eq!(back.correlation_id, event.correlation_id);
        assert_eq!(back.payload, event.payload);
        assert_eq!(back.cloudevent, event.cloudevent);
        assert_eq!(back.trace, event.trace);
    }

    #[test]
    fn trace_context_members_only_when_present() {
        let plain = committed(None);
        let value: Value = serde_json::from_str(&to_json(&plain)).unwrap();
        assert!(value.get("traceparent").is_none());
        assert!(value.get("tracestate").is_none());
        let mut event = committed(None);
        event.trace = TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("rojo=00f067aa0ba902b7"),
        )
        .map(Box::new);
        let text = to_json(&event);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(value["tracestate"], "rojo=00f067aa0ba902b7");
        assert_same(&from_json(text.as_bytes(), &event.subject).unwrap(), &event);
        // A message with an invalid `traceparent` reads back without one.
        let mut edited = value.clone();
        edited["traceparent"] = "00-zz".into();
        let back = from_json(edited.to_string().as_bytes(), &event.subject).unwrap();
        assert_eq!(back.trace, None);
    }

    #[test]
    fn round_trips() {
        let event = committed(None);
        let subject = event.subject.clone();
        let text = to_json(&event);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["seq"], 7);
        assert_eq!(value["payload"]["name"], "é \"q\"");
        assert_eq!(value["timestamp"], "2023-11-14T22:13:20.000000Z");
        assert!(value.get("cloudevent").is_none());
        assert!(value.get("cloudevent_data_form").is_none());
        assert_same(&from_json(text.as_bytes(), &subject).unwrap(), &event);
        let other = Subject::new("hub.a.other").unwrap();
        assert!(from_json(text.as_bytes(), &other).is_none());
        assert!(from_json(br#"{"project":"x"}"#, &subject).is_none());
    }

    #[test]
    fn cloudevent_attributes_round_trip() {
        for data_form in [
            DataForm::Absent,
            DataForm::Object,
            DataForm::Wrapped,
            DataForm::Base64,
        ] {
            let event = committed(Some(CloudEventAttributes {
                data_form,
                ..attributes()
            }));
            let text = to_json(&event);
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["cloudevent"]["type"], "com.example.order.created");
            assert_eq!(value["cloudevent"]["priority"], -3);
            assert_eq!(value["cloudevent"]["urgent"], true);
            assert!(value["cloudevent"].get("datacontenttype").is_none());
            assert_eq!(value["cloudevent_data_form"], data_form.as_str());
            let back = from_json(text.as_bytes(), &event.subject).unwrap();
            assert_same(&back, &event);
        }
    }

    /// Messages relayed before the one shape carried the store's encoding; they stay
    /// readable (JetStream keeps them).
    #[test]
    fn reads_the_earlier_encoding() {
        let event = committed(Some(attributes()));
        let mut value: Value = serde_json::from_str(&to_json(&event)).unwrap();
        let earlier: Value =
            serde_json::from_str(&herald_store::codec::encode_cloudevent(&attributes())).unwrap();
        value["cloudevent"] = earlier;
        value
            .as_object_mut()
            .unwrap()
            .remove("cloudevent_data_form");
        let back = from_json(value.to_string().as_bytes(), &event.subject).unwrap();
        assert_same(&back, &event);
    }

    #[test]
    fn refuses_broken_cloudevent_members() {
        let event = committed(Some(attributes()));
        let value: Value = serde_json::from_str(&to_json(&event)).unwrap();
        let edited = |edit: &dyn Fn(&mut Value)| {
            let mut value = value.clone();
            edit(&mut value);
            from_json(value.to_string().as_bytes(), &event.subject)
        };
        assert!(edited(&|_| {}).is_some());
        assert!(edited(&|v| {
            v.as_object_mut().unwrap().remove("cloudevent_data_form");
        })
        .is_none());
        assert!(edited(&|v| v["cloudevent_data_form"] = "sideways".into()).is_none());
        assert!(edited(&|v| {
            v["cloudevent"].as_object_mut().unwrap().remove("source");
        })
        .is_none());
        assert!(edited(&|v| v["cloudevent"]["subject"] = 5.into()).is_none());
        assert!(edited(&|v| v["cloudevent"]["tenantid"] = serde_json::json!([1])).is_none());
        assert!(edited(&|v| v["cloudevent"]["priority"] = 1.5.into()).is_none());
    }
}
