//! The JSON an event travels in when it leaves the hub: NATS message bodies (relay,
//! republish rules) and webhook bodies. It is the shape `GET /api/events/{id}` shows,
//! with the CloudEvents attributes in the store's own encoding, so that another hub
//! that imports the message gets the event back losslessly.

use herald_core::{Event, NewEvent, Origin, Payload, Subject};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

#[derive(Serialize)]
struct Outgoing<'a> {
    id: Uuid,
    seq: u64,
    subject: &'a str,
    origin: OriginJson<'a>,
    correlation_id: Uuid,
    payload: &'a RawValue,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cloudevent: Option<Box<RawValue>>,
}

#[derive(Serialize, Deserialize)]
struct OriginJson<'a> {
    #[serde(borrow)]
    hub_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    service: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<std::borrow::Cow<'a, str>>,
}

/// The event as JSON text.
pub fn to_json(event: &Event) -> String {
    let outgoing = Outgoing {
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
        cloudevent: event.cloudevent.as_ref().map(|attributes| {
            RawValue::from_string(herald_store::codec::encode_cloudevent(attributes))
                .expect("the codec writes valid JSON")
        }),
    };
    serde_json::to_string(&outgoing).expect("an event serializes")
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
}

/// Reads back what [`to_json`] wrote (on another hub): the event to store there, with
/// its id, origin, correlation id and payload kept. `None` when `body` is not such an
/// envelope or its subject is not `subject` (the message's own subject wins).
pub fn from_json(body: &[u8], subject: &Subject) -> Option<NewEvent> {
    let incoming: Incoming = serde_json::from_slice(body).ok()?;
    if incoming.subject != subject.as_str() {
        return None;
    }
    let payload = Payload::from_raw(incoming.payload).ok()?;
    let cloudevent = match incoming.cloudevent {
        Some(raw) if raw.get() != "null" => Some(Box::new(
            herald_store::codec::decode_cloudevent(raw.get()).ok()?,
        )),
        _ => None,
    };
    Some(NewEvent {
        id: incoming.id,
        subject: subject.clone(),
        origin: Origin {
            hub_id: incoming.origin.hub_id.into_owned(),
            service: incoming.origin.service.map(|s| s.into_owned()),
            user: incoming.origin.user.map(|s| s.into_owned()),
        },
        correlation_id: incoming.correlation_id,
        payload,
        cloudevent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Timestamp;

    #[test]
    fn round_trips() {
        let subject = Subject::new("hub.a.project.created").unwrap();
        let event = NewEvent::new(
            subject.clone(),
            Payload::from_json(r#"{"name":"é \"q\""}"#.into()).unwrap(),
            Origin {
                hub_id: "a".into(),
                service: Some("svc".into()),
                user: None,
            },
            None,
        )
        .commit(7, Timestamp::from_micros(1_700_000_000_000_000));
        let text = to_json(&event);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["seq"], 7);
        assert_eq!(value["payload"]["name"], "é \"q\"");
        assert_eq!(value["timestamp"], "2023-11-14T22:13:20.000000Z");
        let back = from_json(text.as_bytes(), &subject).unwrap();
        assert_eq!(back.id, event.id);
        assert_eq!(back.origin, event.origin);
        assert_eq!(back.correlation_id, event.correlation_id);
        assert_eq!(back.payload, event.payload);
        let other = Subject::new("hub.a.other").unwrap();
        assert!(from_json(text.as_bytes(), &other).is_none());
        assert!(from_json(br#"{"project":"x"}"#, &subject).is_none());
    }
}
