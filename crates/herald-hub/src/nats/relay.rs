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
use herald_store::{Query, Store};
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
        if let Err(error) = link.ensure_stream().await {
            tracing::warn!(%error, "Cannot set up the JetStream stream; retrying.");
            metrics::counter!("herald_relay_errors_total").increment(1);
            if pause(&inner, &mut failures).await {
                break;
            }
            continue;
        }
        match relay(&inner, &link, &name, &mut acked).await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, acked = acked.unwrap_or(0), "Relay to JetStream interrupted; resuming after the last acknowledged event.");
                metrics::counter!("herald_relay_errors_total").increment(1);
                if pause(&inner, &mut failures).await {
                    break;
                }
            }
        }
    }
    tracing::debug!("Relay stopped.");
}

/// Backs off after a failure; true when the hub is shutting down.
async fn pause(inner: &Inner, failures: &mut u32) -> bool {
    let delay = Duration::from_millis(100u64 << (*failures).min(5));
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
) -> Result<(), String> {
    let stored = inner
        .store
        .load_cursor(name)
        .await
        .map_err(|e| e.to_string())?;
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
                let ack: PublishAck = ack.map_err(|e| format!("no PubAck for seq {seq}: {e}"))?;
                if !ack.duplicate {
                    metrics::counter!("herald_relay_published_total").increment(1);
                }
                let delay = Timestamp::now().as_micros() - committed.as_micros();
                metrics::histogram!("herald_relay_delay_seconds")
                    .record(delay.max(0) as f64 / 1e6);
                done = if acks.is_empty() { read_to } else { seq };
            }
            page = pages.recv(), if acks.len() <= WINDOW - PAGE => {
                let page: Prepared = page.ok_or("the log reader stopped")??;
                for event in page.events {
                    if !link.is_connected() {
                        return Err("disconnected from NATS".into());
                    }
                    let ack = link
                        .jetstream
                        .publish_with_headers(event.subject, event.headers, event.body)
                        .await
                        .map_err(|e| format!("publishing seq {}: {e}", event.seq))?;
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
    pages: mpsc::Sender<Result<Prepared, String>>,
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
                    let _ = pages.send(Err(error.to_string())).await;
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
                    let _ = pages.send(Err(error.to_string())).await;
                    return;
                }
            }
        }
        inner.relay_status.head.store(head, Ordering::Relaxed);
    }
}

async fn save(inner: &Inner, name: &str, seq: Seq, saved: &mut Seq) -> Result<(), String> {
    inner
        .store
        .save_cursor(name, seq)
        .await
        .map_err(|e| format!("saving the relay cursor: {e}"))?;
    *saved = seq;
    Ok(())
}
