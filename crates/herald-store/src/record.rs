//! An event as a record body of the segment log ([`crate::segment`]): the bytes the
//! embedded store will keep its events in (issue 11, step 4). The record's header holds
//! the seq and the CRC; this is everything else, compact and versioned.
//!
//! Layout (version 1): `version: u8 | flags: u16 | id: [16] | correlation: [16] |
//! timestamp: i64 | subject | hub_id | payload`, then, each only when its flag is set:
//! `service`, `user`, `cloudevent` (the JSON of [`crate::codec::encode_cloudevent`]),
//! `tenant`, the aggregate (`type | id | version: varint | event_type`, then its
//! `metadata`), the trace context (`trace_id: [16] | parent_id: [8] | flags: u8`, then
//! its `tracestate`). Strings are a LEB128 length and UTF-8 bytes; integers are
//! little-endian. A body with bytes left over, cut short, or with an unknown version or
//! flag is an error, never a guess: the CRC already passed, so it is damage or a newer
//! writer.

use herald_core::{AggregateEvent, Event, Origin, Payload, Seq, Subject, Timestamp, TraceContext};
use uuid::Uuid;

/// The format this build writes and reads.
const VERSION: u8 = 1;

const SERVICE: u16 = 1;
const USER: u16 = 1 << 1;
const CLOUDEVENT: u16 = 1 << 2;
const TENANT: u16 = 1 << 3;
const AGGREGATE: u16 = 1 << 4;
const METADATA: u16 = 1 << 5;
const TRACE: u16 = 1 << 6;
const TRACESTATE: u16 = 1 << 7;
const KNOWN_FLAGS: u16 = (1 << 8) - 1;

/// Why a record body is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log record {seq} is not an event: {reason}")]
pub struct RecordError {
    pub seq: Seq,
    pub reason: String,
}

/// Appends `event`'s record body (all but its seq, which the record header holds).
pub fn encode(event: &Event, out: &mut Vec<u8>) {
    let aggregate = event.aggregate.as_deref();
    let trace = event.trace.as_deref();
    let cloudevent = event
        .cloudevent
        .as_deref()
        .map(crate::codec::encode_cloudevent);
    let mut flags = 0u16;
    for (present, flag) in [
        (event.origin.service.is_some(), SERVICE),
        (event.origin.user.is_some(), USER),
        (cloudevent.is_some(), CLOUDEVENT),
        (event.tenant.is_some(), TENANT),
        (aggregate.is_some(), AGGREGATE),
        (aggregate.is_some_and(|a| a.metadata.is_some()), METADATA),
        (trace.is_some(), TRACE),
        (trace.is_some_and(|t| t.tracestate.is_some()), TRACESTATE),
    ] {
        if present {
            flags |= flag;
        }
    }
    out.push(VERSION);
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(event.id.as_bytes());
    out.extend_from_slice(event.correlation_id.as_bytes());
    out.extend_from_slice(&event.timestamp.as_micros().to_le_bytes());
    put_str(out, event.subject.as_str());
    put_str(out, &event.origin.hub_id);
    put_str(out, event.payload.get());
    for text in [
        &event.origin.service,
        &event.origin.user,
        &cloudevent,
        &event.tenant,
    ]
    .into_iter()
    .flatten()
    {
        put_str(out, text);
    }
    if let Some(aggregate) = aggregate {
        put_str(out, &aggregate.aggregate_type);
        put_str(out, &aggregate.aggregate_id);
        put_varint(out, aggregate.version);
        put_str(out, &aggregate.event_type);
        if let Some(metadata) = &aggregate.metadata {
            put_str(out, metadata.get());
        }
    }
    if let Some(trace) = trace {
        out.extend_from_slice(&trace.trace_id);
        out.extend_from_slice(&trace.parent_id);
        out.push(trace.flags);
        if let Some(tracestate) = &trace.tracestate {
            put_str(out, tracestate);
        }
    }
}

/// The event that record `seq` holds.
pub fn decode(seq: Seq, body: &[u8]) -> Result<Event, RecordError> {
    let error = |reason: String| RecordError { seq, reason };
    let mut input = Input(body);
    let version = input.byte().map_err(error)?;
    if version != VERSION {
        return Err(error(format!(
            "format version {version} (this build reads {VERSION})"
        )));
    }
    let flags = u16::from_le_bytes(input.array().map_err(error)?);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(error(format!("unknown flags {flags:#06x}")));
    }
    let has = |flag: u16| flags & flag != 0;
    let id = Uuid::from_bytes(input.array().map_err(error)?);
    let correlation_id = Uuid::from_bytes(input.array().map_err(error)?);
    let timestamp = Timestamp::from_micros(i64::from_le_bytes(input.array().map_err(error)?));
    let subject = Subject::from_stored(input.string().map_err(error)?)
        .map_err(|e| error(format!("subject: {e}")))?;
    let hub_id = input.string().map_err(error)?;
    let payload = parse_payload(input.string().map_err(error)?).map_err(error)?;
    let mut optional = |flag: u16| -> Result<Option<String>, RecordError> {
        has(flag).then(|| input.string()).transpose().map_err(error)
    };
    let service = optional(SERVICE)?;
    let user = optional(USER)?;
    let cloudevent = match optional(CLOUDEVENT)? {
        None => None,
        Some(text) => Some(Box::new(
            crate::codec::decode_cloudevent(&text)
                .map_err(|e| error(format!("cloudevent: {e}")))?,
        )),
    };
    let tenant = optional(TENANT)?;
    let aggregate = if has(AGGREGATE) {
        let aggregate_type = input.string().map_err(error)?;
        let aggregate_id = input.string().map_err(error)?;
        let version = input.varint().map_err(error)?;
        let event_type = input.string().map_err(error)?;
        let metadata = has(METADATA)
            .then(|| input.string().and_then(parse_payload))
            .transpose()
            .map_err(error)?;
        Some(Box::new(AggregateEvent {
            aggregate_type,
            aggregate_id,
            version,
            event_type,
            metadata,
        }))
    } else if has(METADATA) {
        return Err(error("metadata without an aggregate".into()));
    } else {
        None
    };
    let trace = if has(TRACE) {
        let trace_id = input.array().map_err(error)?;
        let parent_id = input.array().map_err(error)?;
        let trace_flags = input.byte().map_err(error)?;
        let tracestate = has(TRACESTATE)
            .then(|| input.string())
            .transpose()
            .map_err(error)?;
        Some(Box::new(TraceContext {
            trace_id,
            parent_id,
            flags: trace_flags,
            tracestate,
        }))
    } else if has(TRACESTATE) {
        return Err(error("a tracestate without a traceparent".into()));
    } else {
        None
    };
    if !input.0.is_empty() {
        return Err(error(format!("{} bytes left over", input.0.len())));
    }
    Ok(Event {
        seq,
        id,
        subject,
        origin: Origin {
            hub_id,
            service,
            user,
        },
        correlation_id,
        payload,
        timestamp,
        cloudevent,
        tenant,
        aggregate,
        trace,
    })
}

fn parse_payload(text: String) -> Result<Payload, String> {
    Payload::from_json(text).map_err(|e| format!("payload: {e}"))
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// What is left of a body to decode; every read fails, never panics, when it is short.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "cut short: {n} bytes wanted, {} left",
                self.0.len()
            ));
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err("a varint past 64 bits".into());
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint past 64 bits".into())
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| format!("a length of {len} bytes"))?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string that is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herald_core::{CloudEventAttributes, DataForm, ExtensionValue};

    use super::*;

    fn minimal() -> Event {
        Event {
            seq: 7,
            id: Uuid::now_v7(),
            subject: Subject::new("orders.created").unwrap(),
            origin: Origin {
                hub_id: "hub-1".into(),
                service: None,
                user: None,
            },
            correlation_id: Uuid::now_v7(),
            payload: Payload::from_json(r#"{"n":1}"#.into()).unwrap(),
            timestamp: Timestamp::from_micros(1_765_000_000_123_456),
            cloudevent: None,
            tenant: None,
            aggregate: None,
            trace: None,
        }
    }

    fn full() -> Event {
        let mut extensions = BTreeMap::new();
        extensions.insert("region".to_owned(), ExtensionValue::String("eu".into()));
        extensions.insert("attempt".to_owned(), ExtensionValue::Integer(3));
        Event {
            seq: u64::MAX - 1,
            origin: Origin {
                hub_id: "hub-é".into(),
                service: Some("billing".into()),
                user: Some("ann".into()),
            },
            payload: Payload::from_json(r#"{"text":"ünïcode ✓","list":[1,2,{"a":null}]}"#.into())
                .unwrap(),
            cloudevent: Some(Box::new(CloudEventAttributes {
                id: "ce-1".into(),
                source: "/billing".into(),
                specversion: "1.0".into(),
                ty: "com.example.invoice".into(),
                subject: Some("invoice-9".into()),
                time: Some("2026-12-07T10:00:00.5+01:00".into()),
                datacontenttype: Some("application/json".into()),
                dataschema: None,
                extensions,
                data_form: DataForm::Object,
            })),
            tenant: Some("acme".into()),
            aggregate: Some(Box::new(AggregateEvent {
                aggregate_type: "invoice".into(),
                aggregate_id: "inv-9".into(),
                version: 300,
                event_type: "invoice.paid".into(),
                metadata: Some(Payload::from_json(r#"{"causation":"x"}"#.into()).unwrap()),
            })),
            trace: Some(Box::new(TraceContext {
                trace_id: [7; 16],
                parent_id: [9; 8],
                flags: 1,
                tracestate: Some("vendor=abc".into()),
            })),
            ..minimal()
        }
    }

    fn round_trip(event: &Event) -> Event {
        let mut body = Vec::new();
        encode(event, &mut body);
        decode(event.seq, &body).unwrap()
    }

    #[test]
    fn every_field_reads_back() {
        for event in [minimal(), full()] {
            let back = round_trip(&event);
            assert_eq!(format!("{back:?}"), format!("{event:?}"));
        }
        // Aggregate without metadata, trace without tracestate.
        let mut event = full();
        event.aggregate.as_mut().unwrap().metadata = None;
        event.trace.as_mut().unwrap().tracestate = None;
        assert_eq!(format!("{:?}", round_trip(&event)), format!("{event:?}"));
    }

    #[test]
    fn a_typical_event_costs_little_beyond_its_payload() {
        let event = minimal();
        let mut body = Vec::new();
        encode(&event, &mut body);
        let fixed = body.len() - event.payload.get().len() - "orders.created".len() - 5;
        assert!(fixed <= 48, "{fixed} bytes of framing");
    }

    /// Damage or a newer writer is an error naming the record, never a panic and never
    /// a different event.
    #[test]
    fn cut_or_damaged_bodies_are_errors_not_panics() {
        let event = full();
        let mut body = Vec::new();
        encode(&event, &mut body);
        for len in 0..body.len() {
            let error = decode(9, &body[..len]).unwrap_err();
            assert_eq!(error.seq, 9);
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode(9, &longer).unwrap_err().reason.contains("left over"));
        let mut newer = body.clone();
        newer[0] = VERSION + 1;
        assert!(decode(9, &newer).unwrap_err().reason.contains("version"));
        let mut unknown = body.clone();
        unknown[2] |= 0x80;
        assert!(decode(9, &unknown).unwrap_err().reason.contains("flags"));
        // Every single flipped byte: decoded or refused, never a panic.
        for at in 0..body.len() {
            for bit in 0..8 {
                let mut damaged = body.clone();
                damaged[at] ^= 1 << bit;
                let _ = decode(9, &damaged);
            }
        }
        let mut huge = vec![VERSION, 0, 0];
        huge.extend_from_slice(&[0; 40]);
        huge.extend_from_slice(&[0xff; 10]);
        assert!(decode(9, &huge).is_err());
    }
}
