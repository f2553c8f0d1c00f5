//! The bridge: messages that others publish on NATS become events in this hub's log
//! (seed 002's `subscribe_nats_to_internal`, with the events stored).
//!
//! Each bridged pattern is a durable pull consumer on the stream, so messages published
//! while this hub was down wait in JetStream. A message is acknowledged only after its
//! event is durably stored; a redelivery is harmless because its id is fixed by the
//! message (see [`to_new_event`]) and the store keeps an id once.
//!
//! Loop safety: messages this hub relayed itself (header [`HEADER_HUB`](super::HEADER_HUB)
//! = our hub id) are skipped, and ingested events keep their remote origin, which the
//! relay never sends back out.
//!
//! No message is dropped silently: one that cannot become an event (an invalid subject,
//! a body over the limit, a payload that fails an event schema, or one the store
//! refuses) is written to the store's dead
//! letters, with the reason, before it is acknowledged. Operators list and discard them
//! over `GET /api/bridge/dead-letters`; their number is bounded
//! ([`NatsConfig::dead_letters_max`](super::NatsConfig), the oldest go first).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use base64::Engine as _;
use futures_util::StreamExt;
use herald_core::{
    correlation_id_from_text, NewEvent, Origin, Pattern, Payload, Subject, TraceContext,
};
use herald_store::{NewDeadLetter, Store, StoreError};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{
    NatsLink, HEADER_CORRELATION, HEADER_HUB, HEADER_TRACEPARENT, HEADER_TRACESTATE,
    PRESENCE_SUBJECT,
};
use crate::{Hub, HubError, Inner};

/// Messages taken per ingest batch (one store transaction).
const BATCH: usize = 512;
/// Bytes of a dead letter's body kept in the store (the size as received is kept too).
pub const DEAD_LETTER_BODY_BYTES: usize = 64 * 1024;
/// `origin.hub_id` of events published straight to NATS by non-Herald clients.
pub const EXTERNAL_HUB_ID: &str = "nats";
/// Namespace of ids given to messages without a UUID `Nats-Msg-Id`.
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x7d1b_3e40_5a9c_4f6e_9b2d_18c4_a0e5_f312);

/// Why a bridge run stopped: the hub shutting down ends the bridge; anything else is
/// logged and retried with backoff (messages not yet acknowledged are redelivered).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BridgeError {
    #[error("the hub is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Stream(#[from] super::StreamSetupError),
    #[error("cannot look up the JetStream stream {stream}: {source}")]
    Lookup {
        stream: String,
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    #[error("creating consumer {name}: {source}")]
    Consumer {
        name: String,
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
    #[error("cannot pull from consumer {name}: {source}")]
    Pull {
        name: String,
        #[source]
        source: async_nats::jetstream::consumer::StreamError,
    },
    #[error("the consumer's message stream ended")]
    StreamEnded,
    #[error("storing bridge dead letters: {0}")]
    DeadLetters(#[source] StoreError),
}

/// The durable consumer's name: stable for a hub and pattern, valid for JetStream.
pub(crate) fn consumer_name(hub_id: &str, pattern: &Pattern) -> String {
    let hub: String = hub_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    // FNV-1a: stable across builds and platforms (unlike std's hasher).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in pattern.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("herald-{hub}-{hash:016x}")
}

pub(crate) async fn run(inner: Arc<Inner>, link: NatsLink, pattern: Pattern) {
    let hub = Hub {
        inner: inner.clone(),
    };
    let name = consumer_name(&inner.config.hub_id, &pattern);
    // Shown from the start, at zero.
    metrics::counter!("herald_bridge_dead_letters_total").increment(0);
    metrics::counter!("herald_bridge_dead_letters_dropped_total").increment(0);
    update_dead_letter_gauge(&hub).await;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = link.wait_connected() => {}
            () = inner.shutdown.cancelled() => break,
        }
        match bridge(&hub, &link, &pattern, &name).await {
            Ok(()) | Err(BridgeError::ShuttingDown) => break,
            Err(error) => {
                tracing::warn!(%pattern, %error, "NATS bridge interrupted; resuming.");
                metrics::counter!("herald_bridge_errors_total").increment(1);
                let delay = Duration::from_millis(100u64 << failures.min(5));
                failures += 1;
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = inner.shutdown.cancelled() => break,
                }
            }
        }
    }
    tracing::debug!(%pattern, "NATS bridge stopped.");
}

async fn bridge(
    hub: &Hub,
    link: &NatsLink,
    pattern: &Pattern,
    name: &str,
) -> Result<(), BridgeError> {
    link.ensure_stream().await?;
    let stream = link
        .jetstream
        .get_stream(&link.config.stream.name)
        .await
        .map_err(|source| BridgeError::Lookup {
            stream: link.config.stream.name.clone(),
            source,
        })?;
    let consumer = stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_owned()),
                description: Some(format!("Herald bridge of {pattern}")),
                filter_subject: pattern.as_str().to_owned(),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 4 * BATCH as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|source| BridgeError::Consumer {
            name: name.to_owned(),
            source,
        })?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|source| BridgeError::Pull {
            name: name.to_owned(),
            source,
        })?;
    let mut chunks = messages.ready_chunks(BATCH);
    let own_hub = hub.hub_id().to_owned();
    let stream_name = link.config.stream.name.clone();
    let limits = Limits {
        max_body_bytes: link.config.bridge_max_body_bytes,
        dead_letters_max: link.config.dead_letters_max,
    };
    loop {
        let chunk = tokio::select! {
            chunk = chunks.next() => chunk,
            () = hub.inner.shutdown.cancelled() => return Ok(()),
        };
        let Some(chunk) = chunk else {
            return Err(BridgeError::StreamEnded);
        };
        let mut events = Vec::with_capacity(chunk.len());
        let mut rejected = Vec::new();
        let mut messages = Vec::with_capacity(chunk.len());
        for item in chunk {
            let message = match item {
                Ok(message) => message,
                Err(error) => {
                    tracing::debug!(%error, "NATS bridge consumer hiccup.");
                    continue;
                }
            };
            let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            match to_new_event(&message, &stream_name, stream_seq, &own_hub, &limits) {
                Ok(Some(event)) => events.push((messages.len(), event)),
                Ok(None) => metrics::counter!("herald_bridge_skipped_total").increment(1),
                Err(reason) => rejected.push((messages.len(), reason)),
            }
            messages.push((message, stream_seq));
        }
        let events = events
            .into_iter()
            .filter_map(|(index, event)| {
                // Checked one by one, so that one bad event is a dead letter of its own
                // instead of failing the batch (the publish checks again: no way in skips it).
                match hub.validate_schemas(std::slice::from_ref(&event)) {
                    Ok(()) => Some((index, event)),
                    Err(error) => {
                        metrics::counter!("herald_bridge_schema_violations_total").increment(1);
                        rejected.push((index, refused(&error)));
                        None
                    }
                }
            })
            .collect();
        rejected.extend(ingest(hub, events).await?);
        let letters: Vec<NewDeadLetter> = rejected
            .into_iter()
            .map(|(index, reason)| {
                let (message, stream_seq) = &messages[index];
                dead_letter(message, &stream_name, *stream_seq, reason)
            })
            .collect();
        keep_dead_letters(hub, letters, limits.dead_letters_max).await?;
        for (message, _) in messages {
            if let Err(error) = message.ack().await {
                tracing::debug!(%error, "Cannot acknowledge a bridged message; it will be redelivered and deduplicated.");
            }
        }
    }
}

/// What the bridge takes in.
pub(crate) struct Limits {
    pub max_body_bytes: usize,
    pub dead_letters_max: usize,
}

/// Stores the batch, retrying while the store is unavailable (the messages stay
/// unacknowledged meanwhile). When the store refuses the batch for another reason, each
/// event is tried on its own, so that one bad event cannot hold the others back: the
/// ones refused come back, by their index, with the reason.
async fn ingest(
    hub: &Hub,
    events: Vec<(usize, NewEvent)>,
) -> Result<Vec<(usize, String)>, BridgeError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let (indexes, events): (Vec<usize>, Vec<NewEvent>) = events.into_iter().unzip();
    match publish_retrying(hub, events.clone()).await? {
        Ok(()) => Ok(Vec::new()),
        Err(error) if events.len() == 1 => Ok(vec![(indexes[0], refused(&error))]),
        Err(error) => {
            tracing::warn!(%error, count = events.len(), "The store refused a batch of bridged messages; storing them one by one.");
            let mut refused_ones = Vec::new();
            for (index, event) in indexes.into_iter().zip(events) {
                if let Err(error) = publish_retrying(hub, vec![event]).await? {
                    refused_ones.push((index, refused(&error)));
                }
            }
            Ok(refused_ones)
        }
    }
}

fn refused(error: &HubError) -> String {
    format!("the hub could not store it: {error}")
}

/// Publishes `events`, retrying while the store is unavailable. The outer error stops
/// the bridge (the hub is shutting down); the inner one is the store refusing the batch.
async fn publish_retrying(
    hub: &Hub,
    events: Vec<NewEvent>,
) -> Result<Result<(), HubError>, BridgeError> {
    let count = events.len() as u64;
    let mut failures = 0u32;
    loop {
        match hub.publish_batch(events.clone()).await {
            Ok(results) => {
                let fresh = results.iter().filter(|r| !r.duplicate).count() as u64;
                metrics::counter!("herald_bridge_ingested_total").increment(fresh);
                metrics::counter!("herald_bridge_duplicates_total").increment(count - fresh);
                return Ok(Ok(()));
            }
            Err(HubError::Unavailable(error)) => {
                tracing::warn!(%error, "Cannot store bridged messages; retrying.");
                backoff(hub, &mut failures).await?;
            }
            Err(HubError::ShuttingDown) => return Err(BridgeError::ShuttingDown),
            Err(error) => return Ok(Err(error)),
        }
    }
}

/// Waits before the next attempt (100 ms doubling to 3.2 s); an error at shutdown.
async fn backoff(hub: &Hub, failures: &mut u32) -> Result<(), BridgeError> {
    let delay = Duration::from_millis(100u64 << (*failures).min(5));
    *failures += 1;
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = hub.inner.shutdown.cancelled() => Err(BridgeError::ShuttingDown),
    }
}

/// Commits the dead letters (retrying while the store is unavailable), so that their
/// messages can be acknowledged.
async fn keep_dead_letters(
    hub: &Hub,
    letters: Vec<NewDeadLetter>,
    keep: usize,
) -> Result<(), BridgeError> {
    if letters.is_empty() {
        return Ok(());
    }
    let mut failures = 0u32;
    let dropped = loop {
        match hub.store().add_dead_letters(letters.clone(), keep).await {
            Ok(dropped) => break dropped,
            Err(error) if error.is_unavailable() && !hub.inner.shutdown.is_cancelled() => {
                tracing::warn!(%error, "Cannot store bridge dead letters; retrying.");
                backoff(hub, &mut failures).await?;
            }
            // The messages stay unacknowledged: JetStream redelivers them later.
            Err(error) => return Err(BridgeError::DeadLetters(error)),
        }
    };
    for letter in &letters {
        tracing::warn!(
            subject = %letter.subject,
            stream_seq = letter.stream_seq,
            reason = %letter.reason,
            "Kept a NATS message the bridge cannot ingest as a dead letter."
        );
    }
    metrics::counter!("herald_bridge_dead_letters_total").increment(letters.len() as u64);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            keep,
            "Dropped the oldest bridge dead letters to stay within the limit."
        );
        metrics::counter!("herald_bridge_dead_letters_dropped_total").increment(dropped);
    }
    update_dead_letter_gauge(hub).await;
    Ok(())
}

/// Sets `herald_bridge_dead_letters` to the number kept in the store.
pub async fn update_dead_letter_gauge(hub: &Hub) {
    match hub.store().count_dead_letters().await {
        Ok(count) => metrics::gauge!("herald_bridge_dead_letters").set(count as f64),
        Err(error) => tracing::debug!(%error, "Cannot count bridge dead letters."),
    }
}

/// The dead letter of a message: its body cut to [`DEAD_LETTER_BODY_BYTES`], and NUL
/// characters (which text columns cannot hold) replaced.
fn dead_letter(
    message: &async_nats::jetstream::Message,
    stream: &str,
    stream_seq: u64,
    reason: String,
) -> NewDeadLetter {
    let text = |value: &str| value.replace('\0', "\u{FFFD}");
    let headers = message
        .headers
        .iter()
        .flat_map(|headers| headers.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| (text(name.as_ref()), text(value.as_str())))
        })
        .collect();
    let body = &message.payload;
    NewDeadLetter {
        stream: text(stream),
        stream_seq,
        subject: text(message.subject.as_str()),
        headers,
        body: body[..body.len().min(DEAD_LETTER_BODY_BYTES)].to_vec(),
        body_size: body.len() as u64,
        reason: text(&reason),
    }
}

/// The event a NATS message stands for: `Ok(None)` to skip it (relayed by this hub, or a
/// presence announcement), `Err` with the reason when it cannot be an event (its subject
/// is not valid, or its body is over the limit).
///
/// - A message relayed by another Herald (an envelope) keeps that event's id, origin,
///   correlation id, payload and CloudEvents attributes.
/// - Any other message: the id is its `Nats-Msg-Id` (the UUID, or a UUIDv5 of other
///   text), else a UUIDv5 of its stream position, so a redelivery gets the same id; the
///   correlation id comes from a `Correlation-ID` header when present; origin is
///   `{hub_id: "nats", service: "nats-bridge"}`; a JSON object body is the payload, other
///   JSON is wrapped as `{"data": …}`, other text as `{"text": …}` and bytes as
///   `{"data_base64": …}`.
pub(crate) fn to_new_event(
    message: &async_nats::jetstream::Message,
    stream: &str,
    stream_seq: u64,
    own_hub: &str,
    limits: &Limits,
) -> Result<Option<NewEvent>, String> {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    if header(HEADER_HUB).as_deref() == Some(own_hub) {
        return Ok(None);
    }
    let subject_text = message.subject.as_str();
    if subject_text == PRESENCE_SUBJECT {
        return Ok(None);
    }
    let subject =
        Subject::new(subject_text).map_err(|e| format!("the subject is not valid: {e}"))?;
    if message.payload.len() > limits.max_body_bytes {
        return Err(format!(
            "the body is {} bytes; the most the bridge ingests is {}",
            message.payload.len(),
            limits.max_body_bytes
        ));
    }
    // JSON that readers disagree on (too deep, 1e400, lone surrogates, repeated names)
    // is refused here as on every other way in; it is kept as a dead letter.
    if let Ok(text) = std::str::from_utf8(&message.payload) {
        if serde_json::from_str::<&RawValue>(text).is_ok() {
            herald_core::json::check_payload(text)
                .map_err(|e| format!("the body is JSON that Herald does not store: it {e}"))?;
        }
    }
    // The message's W3C trace context (a relaying hub's continues the event's); an
    // invalid one is ignored.
    let trace = header(HEADER_TRACEPARENT).and_then(|traceparent| {
        TraceContext::parse(&traceparent, header(HEADER_TRACESTATE).as_deref()).map(Box::new)
    });
    if header(HEADER_HUB).is_some() {
        if let Some(mut event) = crate::envelope::from_json(&message.payload, &subject) {
            if event.origin.hub_id == own_hub {
                // Our own event whose relay header was lost on the way: not new here.
                return Ok(None);
            }
            if trace.is_some() {
                event.trace = trace;
            }
            return Ok(Some(event));
        }
    }
    let message_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned());
    let id = match message_id {
        Some(text) => Uuid::try_parse(text.trim())
            .unwrap_or_else(|_| Uuid::new_v5(&MESSAGE_ID_NAMESPACE, text.as_bytes())),
        None => Uuid::new_v5(
            &MESSAGE_ID_NAMESPACE,
            format!("{stream}\0{stream_seq}").as_bytes(),
        ),
    };
    let correlation_id = header(HEADER_CORRELATION)
        .or_else(|| header("X-Correlation-ID"))
        .map(|text| correlation_id_from_text(&text));
    let mut event = NewEvent::new(
        subject,
        payload_of(&message.payload),
        Origin {
            hub_id: EXTERNAL_HUB_ID.into(),
            service: Some("nats-bridge".into()),
            user: None,
        },
        correlation_id,
    );
    event.id = id;
    event.trace = trace;
    Ok(Some(event))
}

fn payload_of(body: &[u8]) -> Payload {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Payload::empty();
    }
    if let Ok(raw) = serde_json::from_slice::<&RawValue>(body) {
        let raw = raw.to_owned();
        return match Payload::from_raw(raw) {
            Ok(payload) => payload,
            Err(_) => wrap("data", serde_json::from_slice(body).unwrap_or_default()),
        };
    }
    match std::str::from_utf8(body) {
        Ok(text) => wrap("text", serde_json::Value::String(text.to_owned())),
        Err(_) => wrap(
            "data_base64",
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
        ),
    }
}

fn wrap(key: &str, value: serde_json::Value) -> Payload {
    let mut map = serde_json::Map::new();
    map.insert(key.to_owned(), value);
    Payload::from_value(&map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_valid_and_stable() {
        let name = consumer_name("local hub.1", &Pattern::parse("hub.*.x.>").unwrap());
        assert!(name.starts_with("herald-local_hub_1-"), "{name}");
        assert!(!name.contains(['.', '*', '>', ' ']));
        assert_eq!(
            name,
            consumer_name("local hub.1", &Pattern::parse("hub.*.x.>").unwrap())
        );
        assert_ne!(
            name,
            consumer_name("local hub.1", &Pattern::parse("hub.>").unwrap())
        );
    }

    #[test]
    fn payloads_of_any_body() {
        assert_eq!(payload_of(br#"{"a":1}"#).get(), r#"{"a":1}"#);
        assert_eq!(payload_of(b"").get(), "{}");
        assert_eq!(payload_of(b"[1,2]").get(), r#"{"data":[1,2]}"#);
        assert_eq!(payload_of(b"hello").get(), r#"{"text":"hello"}"#);
        assert_eq!(payload_of(&[0xff, 0x00]).get(), r#"{"data_base64":"/wA="}"#);
    }
}
