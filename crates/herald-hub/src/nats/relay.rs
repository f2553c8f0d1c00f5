//! The relay: every event committed on this hub goes to JetStream, in seq order, once.
//!
//! It is a transactional outbox. The log is the outbox; a cursor saved in the store
//! says how far JetStream has acknowledged. The relay reads after the cursor, publishes
//! with `Nats-Msg-Id` = event id and up to [`WINDOW`] acknowledgements in flight, and
//! moves the cursor only over events whose PubAck came back. After any failure
//! (NATS down, a timeout, a crash of this process) it starts again from the cursor:
//! what is re-sent was published moments before the failure, within the stream's
//! duplicate window, so JetStream drops it. However long NATS stays away, nothing that
//! was acknowledged is sent again, because the cursor is in the store; and what was
//! stored without its PubAck coming back is found in the stream before resuming
//! ([`stored_after`]), since after a long outage the duplicate window no longer covers it.
//! The stream sequence it looks after is saved with the cursor, in the same transaction,
//! so this holds across a restart of the process too.
//!
//! Only events that originate on this hub are relayed: events the bridge ingested came
//! from the stream already, and on a shared store other hubs relay their own.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::publish::PublishAck;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use herald_core::{Event, Seq, Timestamp};
use herald_store::{Store, StoreError};

use super::NatsLink;
use crate::services::Status;
use crate::tail::{self, Backoff, LogTail, Saving, Source, Start, TailConfig, TailError};
use crate::Inner;

/// Most PubAcks awaited at once.
const WINDOW: usize = 1024;
/// How often the cursor is saved while events flow (it is also saved whenever the relay
/// catches up and on shutdown). A crash re-sends at most this much, well inside the
/// duplicate window.
const SAVE_EVERY: Duration = Duration::from_millis(200);
/// Wake-up when no commit notification arrives (covers a missed one).
const POLL: Duration = Duration::from_secs(1);

/// Why a relay run stopped. The kind decides what comes next (see [`RelayError::next`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error(transparent)]
    Stream(#[from] super::StreamSetupError),
    #[error("{doing}: {source}")]
    Store {
        doing: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("publishing seq {seq}: {source}")]
    Publish {
        seq: Seq,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    #[error("no PubAck for seq {seq}: {source}")]
    NoAck {
        seq: Seq,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    #[error("disconnected from NATS")]
    Disconnected,
    #[error("the log reader stopped")]
    ReaderStopped,
}

/// What the relay does after a failed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// A passing failure (NATS away, the store busy or down): back off and resume.
    Retry,
    /// A failure that a retry does not fix by itself (corrupt data, a bug, a store the
    /// operator must repair): said loudly, then retried at the slowest pace, since
    /// stopping would hold every later event back from JetStream for good.
    Alert,
    /// The store was closed: the hub is going away.
    Stop,
}

impl RelayError {
    fn store(doing: &'static str) -> impl FnOnce(StoreError) -> Self {
        move |source| RelayError::Store { doing, source }
    }

    pub(crate) fn next(&self) -> Next {
        match self {
            RelayError::Store {
                source: StoreError::Closed,
                ..
            } => Next::Stop,
            RelayError::Store { source, .. } if !source.is_unavailable() => Next::Alert,
            _ => Next::Retry,
        }
    }
}

/// Name of the relay's cursor in the store.
pub(crate) fn cursor_name(stream: &str, hub_id: &str) -> String {
    format!("nats-relay:{stream}:{hub_id}")
}

/// Name of the cursor kept beside the relay's: the stream sequence of the last PubAck
/// of an event at or before the relay's cursor.
fn stream_seq_name(cursor: &str) -> String {
    format!("{cursor}:stream-seq")
}

pub(crate) async fn run(inner: Arc<Inner>, link: NatsLink, status: Status) {
    let name = cursor_name(&link.config.stream.name, &inner.config.hub_id);
    let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF_STEP);
    let mut acked: Option<Seq> = None;
    // After a restart, the messages after the saved stream sequence are looked up too.
    let mut last_stream_seq = match inner.store.load_cursor(&stream_seq_name(&name)).await {
        Ok(0) => None,
        Ok(seq) => Some(seq),
        Err(error) => {
            tracing::warn!(%error, "Cannot load the relay's stream sequence; relying on the duplicate window after this restart.");
            None
        }
    };
    loop {
        tokio::select! {
            () = link.wait_connected() => {}
            () = inner.shutdown.cancelled() => break,
        }
        let result = match link.ensure_stream().await {
            Ok(()) => {
                relay(
                    &inner,
                    &link,
                    &name,
                    &mut acked,
                    &mut last_stream_seq,
                    &status,
                )
                .await
            }
            Err(error) => Err(error.into()),
        };
        let Err(error) = result else { break };
        if matches!(
            error,
            RelayError::NoAck { .. } | RelayError::Publish { .. } | RelayError::Disconnected
        ) {
            link.mark_stream_failing();
        }
        metrics::counter!("herald_relay_errors_total").increment(1);
        status.retrying(&error);
        let acked = acked.unwrap_or(0);
        match error.next() {
            Next::Stop => {
                tracing::info!(%error, acked, "The store is closed; the relay stops.");
                break;
            }
            Next::Alert => {
                tracing::error!(%error, acked, "Relay to JetStream failed, and retrying may not help; retrying slowly.");
                backoff.slowest();
            }
            Next::Retry => {
                tracing::warn!(%error, acked, "Relay to JetStream interrupted; resuming after the last acknowledged event.");
            }
        }
        if backoff.pause(&inner.shutdown).await {
            break;
        }
    }
    tracing::debug!("Relay stopped.");
}

/// The doubling of the back-off stops here (100 ms << 5 = 3.2 s).
const MAX_BACKOFF_STEP: u32 = 5;

/// An event ready to send, prepared by the tail's reader off the publishing path.
struct Outgoing {
    committed: Timestamp,
    subject: String,
    headers: async_nats::HeaderMap,
    body: bytes::Bytes,
    /// The event's `relay` span (a no-op unless tracing is on), ended at its PubAck.
    span: tracing::Span,
}

/// A PubAck on its way back, with the seq and commit time of its event.
type AckFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    Seq,
                    Timestamp,
                    Result<PublishAck, async_nats::jetstream::context::PublishError>,
                ),
            > + Send,
    >,
>;

/// Events per page the reader prepares (half the window: the publisher takes a page
/// whenever half of its PubAcks have come back).
const PAGE: usize = WINDOW / 2;

/// What the relay sends of the log: events of this hub that the stream captures,
/// prepared (headers, body) in the tail's reader.
fn outgoing(hub_id: String, link: &NatsLink) -> impl FnMut(Event) -> Option<Outgoing> + Send {
    let stream = link.config.stream.clone();
    move |event| {
        if event.origin.hub_id != hub_id {
            return None;
        }
        if !stream.captures(event.subject.as_str()) {
            metrics::counter!("herald_relay_skipped_total").increment(1);
            return None;
        }
        let span = crate::trace::relay_span(&event);
        let mut headers = super::event_headers(&event, &hub_id);
        if !span.is_none() {
            if let Some(trace) = crate::trace::outgoing(&span, &event) {
                super::insert_trace_headers(&mut headers, &trace);
            }
        }
        Some(Outgoing {
            committed: event.timestamp,
            headers,
            body: crate::envelope::to_json(&event).into(),
            subject: event.subject.into_string(),
            span,
        })
    }
}

/// Relays until shutdown (`Ok`) or the first failure (`Err`). `acked` survives across
/// calls, so a retry does not depend on the last save; so does `last_stream_seq`, the
/// stream sequence of the last PubAck, from which a retry finds the messages JetStream
/// stored but whose PubAck was lost ([`stored_after`]).
///
/// A [`LogTail`] follows the log and prepares pages a little ahead in its own task;
/// this one publishes them in seq order and collects PubAcks in order, so reading the
/// store and publishing overlap. Each PubAck finishes its seq in the tail, whose
/// low-water mark is the cursor.
async fn relay(
    inner: &Arc<Inner>,
    link: &NatsLink,
    name: &str,
    acked: &mut Option<Seq>,
    last_stream_seq: &mut Option<u64>,
    status: &Status,
) -> Result<(), RelayError> {
    let config = TailConfig {
        label: name.to_owned(),
        cursor: Some(name.to_owned()),
        saving: Saving::Store,
        save_every: SAVE_EVERY,
        window: WINDOW,
        page: PAGE,
        poll: POLL,
        stop: inner.shutdown.clone(),
        head: Some(inner.relay_status.head.clone()),
    };
    let source = Source::Log(Box::new(outgoing(inner.config.hub_id.clone(), link)));
    let start = Start::Saved {
        at_least: acked.unwrap_or(0),
    };
    let mut tail = LogTail::open(inner, config, source, start)
        .await
        .map_err(RelayError::from)?;
    let stream_seq_name = stream_seq_name(name);
    if let Some(seq) = *last_stream_seq {
        tail.keep_beside(&stream_seq_name, seq);
    }
    *acked = Some(tail.done());
    let mut already_stored = match *last_stream_seq {
        Some(after) => stored_after(link, after).await,
        None => HashSet::new(),
    };
    status.running();
    let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let position = &inner.relay_status;
    loop {
        let save_at = tail.save_deadline();
        tokio::select! {
            biased;
            () = inner.shutdown.cancelled() => {
                // Finish what is in flight (bounded by the PubAck timeout), then stop.
                while let Some((seq, _, ack)) = acks.next().await {
                    if ack.is_err() {
                        break;
                    }
                    tail.finish(seq);
                }
                *acked = Some(tail.done());
                tail.save().await.map_err(RelayError::store("saving the relay cursor"))?;
                return Ok(());
            }
            Some((seq, committed, ack)) = acks.next(), if !acks.is_empty() => {
                let ack: PublishAck = ack.map_err(|source| RelayError::NoAck { seq, source })?;
                if !ack.duplicate {
                    metrics::counter!("herald_relay_published_total").increment(1);
                }
                let stream_seq = last_stream_seq.unwrap_or(0).max(ack.sequence);
                *last_stream_seq = Some(stream_seq);
                // PubAcks come in seq order, so this one's sequence is past every
                // message of the events up to the mark, and before any message of the
                // events after it: saved with the mark, it is where to look from.
                tail.keep_beside(&stream_seq_name, stream_seq);
                let delay = Timestamp::now().as_micros() - committed.as_micros();
                metrics::histogram!("herald_relay_delay_seconds")
                    .record(delay.max(0) as f64 / 1e6);
                tail.finish(seq);
            }
            page = tail.next(), if tail.has_room() => {
                let page = page
                    .ok_or(RelayError::ReaderStopped)?
                    .map_err(RelayError::from)?;
                for (seq, event) in page {
                    if !already_stored.is_empty()
                        && event
                            .headers
                            .get(super::HEADER_MESSAGE_ID)
                            .is_some_and(|id| already_stored.remove(id.as_str()))
                    {
                        tail.finish(seq);
                        continue;
                    }
                    if !link.is_connected() {
                        return Err(RelayError::Disconnected);
                    }
                    let ack = link
                        .jetstream
                        .publish_with_headers(event.subject, event.headers, event.body)
                        .await
                        .map_err(|source| RelayError::Publish { seq, source })?;
                    let committed = event.committed;
                    let span = event.span;
                    acks.push_back(Box::pin(async move {
                        let ack = ack.await;
                        drop(span);
                        (seq, committed, ack)
                    }));
                }
            }
            () = tail::until(save_at) => {}
        }
        *acked = Some(tail.done());
        position.cursor.store(tail.done(), Ordering::Relaxed);
        tail.save_if_due()
            .await
            .map_err(RelayError::store("saving the relay cursor"))?;
    }
}

/// Most stream messages read back after a failure, looking for lost PubAcks.
const STORED_AFTER_MAX: u64 = 4 * WINDOW as u64;

/// The `Nats-Msg-Id`s of the stream's messages after sequence `after`.
///
/// When NATS goes away with PubAcks in flight, JetStream may have stored messages whose
/// PubAck never came back. The relay resumes after its last PubAck and would send them
/// again; after an outage longer than the stream's duplicate window JetStream would
/// store them twice. They are all after the last PubAck's stream sequence, so the relay
/// reads those messages back first and skips the events found there. Past
/// [`STORED_AFTER_MAX`] messages (other hubs publishing meanwhile) it stops looking and
/// relies on the duplicate window, as it does after a restart of the process.
async fn stored_after(link: &NatsLink, after: u64) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut stream = match link.jetstream.get_stream(&link.config.stream.name).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "Cannot look for messages whose PubAck was lost; relying on the duplicate window.");
            return ids;
        }
    };
    let last = match stream.info().await {
        Ok(info) => info.state.last_sequence,
        Err(error) => {
            tracing::warn!(%error, "Cannot look for messages whose PubAck was lost; relying on the duplicate window.");
            return ids;
        }
    };
    tracing::debug!(after, last, "Looking for messages whose PubAck was lost.");
    if last.saturating_sub(after) > STORED_AFTER_MAX {
        tracing::warn!(
            after,
            last,
            "Too many stream messages since the last PubAck to check them all; relying on the duplicate window."
        );
    }
    for sequence in after + 1..=last.min(after + STORED_AFTER_MAX) {
        match stream.get_raw_message(sequence).await {
            Ok(message) => {
                if let Some(id) = message.headers.get(NATS_MESSAGE_ID) {
                    ids.insert(id.as_str().to_owned());
                }
            }
            Err(error) => tracing::debug!(%error, sequence, "Stream message not read back."),
        }
    }
    if !ids.is_empty() {
        tracing::info!(
            messages = ids.len(),
            "Found messages JetStream stored whose PubAck was lost; not sending them again."
        );
    }
    ids
}

impl From<TailError> for RelayError {
    fn from(error: TailError) -> Self {
        match error {
            TailError::Store { doing, source } => RelayError::Store { doing, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_failure(source: StoreError) -> RelayError {
        RelayError::store("saving the relay cursor")(source)
    }

    #[test]
    fn an_unavailable_store_is_retried() {
        let error = store_failure(StoreError::Unavailable("database down".into()));
        assert_eq!(error.next(), Next::Retry);
        assert_eq!(
            error.to_string(),
            "saving the relay cursor: store unavailable: database down"
        );
    }

    #[test]
    fn a_broken_store_is_said_loudly_and_a_closed_one_stops_the_relay() {
        assert_eq!(
            store_failure(StoreError::Corrupt("bad row".into())).next(),
            Next::Alert
        );
        assert_eq!(
            store_failure(StoreError::Internal("bug".into())).next(),
            Next::Alert
        );
        assert_eq!(store_failure(StoreError::Closed).next(), Next::Stop);
    }

    #[test]
    fn nats_failures_are_retried() {
        assert_eq!(RelayError::Disconnected.next(), Next::Retry);
        assert_eq!(RelayError::ReaderStopped.next(), Next::Retry);
    }
}
