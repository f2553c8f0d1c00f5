//! The relay: every event committed on this hub goes to JetStream, in seq order, once.
//!
//! It is a transactional outbox. The log is the outbox; a cursor saved in the store
//! says how far JetStream has acknowledged. The relay reads after the cursor, publishes
//! with `Nats-Msg-Id` = event id and up to [`WINDOW`] acknowledgements in flight, and
//! moves the cursor only over events whose PubAck came back. After any failure
//! (NATS down, a timeout, a crash of this process) it starts again from the cursor:
//! what is re-sent was published moments before the failure, within the stream's
//! duplicate window, so JetStream drops it. However long NATS stays away, nothing that
//! was acknowledged is sent again, because the cursor is in the store.
//!
//! Only events that originate on this hub are relayed: events the bridge ingested came
//! from the stream already, and on a shared store other hubs relay their own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::publish::PublishAck;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use herald_core::{Seq, Timestamp};
use herald_store::{Query, Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::NatsLink;
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

pub(crate) async fn run(inner: Arc<Inner>, link: NatsLink) {
    let name = cursor_name(&link.config.stream.name, &inner.config.hub_id);
    let mut failures = 0u32;
    let mut acked: Option<Seq> = None;
    loop {
        tokio::select! {
            () = link.wait_connected() => {}
            () = inner.shutdown.cancelled() => break,
        }
        let result = match link.ensure_stream().await {
            Ok(()) => relay(&inner, &link, &name, &mut acked).await,
            Err(error) => Err(error.into()),
        };
        let Err(error) = result else { break };
        metrics::counter!("herald_relay_errors_total").increment(1);
        let acked = acked.unwrap_or(0);
        match error.next() {
            Next::Stop => {
                tracing::info!(%error, acked, "The store is closed; the relay stops.");
                break;
            }
            Next::Alert => {
                tracing::error!(%error, acked, "Relay to JetStream failed, and retrying may not help; retrying slowly.");
                failures = failures.max(MAX_BACKOFF_STEP);
            }
            Next::Retry => {
                tracing::warn!(%error, acked, "Relay to JetStream interrupted; resuming after the last acknowledged event.");
            }
        }
        if pause(&inner, &mut failures).await {
            break;
        }
    }
    tracing::debug!("Relay stopped.");
}

/// The doubling of the back-off stops here (100 ms << 5 = 3.2 s).
const MAX_BACKOFF_STEP: u32 = 5;

/// Backs off after a failure; true when the hub is shutting down.
async fn pause(inner: &Inner, failures: &mut u32) -> bool {
    let delay = Duration::from_millis(100u64 << (*failures).min(MAX_BACKOFF_STEP));
    *failures += 1;
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = inner.shutdown.cancelled() => true,
    }
}

/// An event ready to send, prepared by the reader off the publishing path.
struct Outgoing {
    seq: Seq,
    committed: Timestamp,
    subject: String,
    headers: async_nats::HeaderMap,
    body: bytes::Bytes,
}

/// A page of the log, prepared.
struct Prepared {
    events: Vec<Outgoing>,
    /// Every event up to here is in `events` or is not for the relay.
    read_to: Seq,
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

/// Relays until shutdown (`Ok`) or the first failure (`Err`). `acked` survives across
/// calls, so a retry does not depend on the last save.
///
/// Two tasks: a reader that follows the log and prepares pages (reads, filters, builds
/// headers and bodies) a little ahead, and this one, which publishes them and collects
/// PubAcks in order, so reading the store and publishing overlap.
async fn relay(
    inner: &Arc<Inner>,
    link: &NatsLink,
    name: &str,
    acked: &mut Option<Seq>,
) -> Result<(), RelayError> {
    let stored = inner
        .store
        .load_cursor(name)
        .await
        .map_err(RelayError::store("loading the relay cursor"))?;
    let mut done = acked.unwrap_or(0).max(stored);
    *acked = Some(done);
    let mut saved = stored;
    let mut last_save = Instant::now();
    let mut read_to = done;
    let (pages_tx, mut pages) = mpsc::channel(2);
    let _reader = AbortOnDropHandle::new(tokio::spawn(read_ahead(
        inner.clone(),
        link.clone(),
        done,
        pages_tx,
    )));
    let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let status = &inner.relay_status;
    loop {
        tokio::select! {
            biased;
            () = inner.shutdown.cancelled() => {
                // Finish what is in flight (bounded by the PubAck timeout), then stop.
                while let Some((seq, _, ack)) = acks.next().await {
                    if ack.is_err() {
                        break;
                    }
                    done = if acks.is_empty() { read_to } else { seq };
                }
                *acked = Some(done);
                if done > saved {
                    save(inner, name, done, &mut saved).await?;
                }
                return Ok(());
            }
            Some((seq, committed, ack)) = acks.next(), if !acks.is_empty() => {
                let ack: PublishAck = ack.map_err(|source| RelayError::NoAck { seq, source })?;
                if !ack.duplicate {
                    metrics::counter!("herald_relay_published_total").increment(1);
                }
                let delay = Timestamp::now().as_micros() - committed.as_micros();
                metrics::histogram!("herald_relay_delay_seconds")
                    .record(delay.max(0) as f64 / 1e6);
                done = if acks.is_empty() { read_to } else { seq };
            }
            page = pages.recv(), if acks.len() <= WINDOW - PAGE => {
                let page: Prepared = page.ok_or(RelayError::ReaderStopped)??;
                for event in page.events {
                    if !link.is_connected() {
                        return Err(RelayError::Disconnected);
                    }
                    let ack = link
                        .jetstream
                        .publish_with_headers(event.subject, event.headers, event.body)
                        .await
                        .map_err(|source| RelayError::Publish { seq: event.seq, source })?;
                    let (seq, committed) = (event.seq, event.committed);
                    acks.push_back(Box::pin(async move { (seq, committed, ack.await) }));
                }
                read_to = page.read_to;
                if acks.is_empty() {
                    done = read_to;
                }
            }
            () = tokio::time::sleep_until((last_save + SAVE_EVERY).into()), if done > saved => {}
        }
        *acked = Some(done);
        status.cursor.store(done, Ordering::Relaxed);
        if done > saved && last_save.elapsed() >= SAVE_EVERY {
            save(inner, name, done, &mut saved).await?;
            last_save = Instant::now();
        }
    }
}

/// Follows the log after `from` and hands the relay prepared pages, in seq order. Ends
/// when the relay stops listening, at shutdown, or after sending an error.
async fn read_ahead(
    inner: Arc<Inner>,
    link: NatsLink,
    from: Seq,
    pages: mpsc::Sender<Result<Prepared, RelayError>>,
) {
    let hub_id = inner.config.hub_id.as_str();
    let mut read_to = from;
    let mut commits = inner.committed.subscribe();
    let mut head = (*commits.borrow_and_update()).max(read_to);
    loop {
        if read_to < head {
            let page = match inner
                .store
                .query(Query {
                    after_seq: read_to,
                    limit: PAGE,
                    ..Query::default()
                })
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    let error = RelayError::store("reading the log")(error);
                    let _ = pages.send(Err(error)).await;
                    return;
                }
            };
            let short = page.events.len() < PAGE;
            let mut events = Vec::with_capacity(page.events.len());
            for event in page.events {
                if event.origin.hub_id != hub_id {
                    continue;
                }
                if !link.config.stream.captures(event.subject.as_str()) {
                    metrics::counter!("herald_relay_skipped_total").increment(1);
                    continue;
                }
                events.push(Outgoing {
                    seq: event.seq,
                    committed: event.timestamp,
                    headers: super::event_headers(&event, hub_id),
                    body: crate::envelope::to_json(&event).into(),
                    subject: event.subject.into_string(),
                });
            }
            read_to = read_to.max(page.scanned_to);
            if short {
                head = head.max(read_to);
            }
            inner.relay_status.head.store(head, Ordering::Relaxed);
            if pages.send(Ok(Prepared { events, read_to })).await.is_err() {
                return;
            }
            continue;
        }
        let polled = tokio::select! {
            changed = commits.changed() => changed.is_err(),
            () = tokio::time::sleep(POLL) => true,
            () = pages.closed() => return,
            () = inner.shutdown.cancelled() => return,
        };
        head = head.max(*commits.borrow_and_update());
        if polled {
            match inner.store.head().await {
                Ok(store_head) => head = head.max(store_head),
                Err(error) => {
                    let error = RelayError::store("reading the log's head")(error);
                    let _ = pages.send(Err(error)).await;
                    return;
                }
            }
        }
        inner.relay_status.head.store(head, Ordering::Relaxed);
    }
}

async fn save(inner: &Inner, name: &str, seq: Seq, saved: &mut Seq) -> Result<(), RelayError> {
    inner
        .store
        .save_cursor(name, seq)
        .await
        .map_err(RelayError::store("saving the relay cursor"))?;
    *saved = seq;
    Ok(())
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
