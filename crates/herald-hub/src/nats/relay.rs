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

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use herald_core::{Seq, Timestamp};
use herald_store::{Query, Store, MAX_QUERY_LIMIT};

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

struct InFlight {
    seq: Seq,
    committed: Timestamp,
    ack: PublishAckFuture,
}

/// Relays until shutdown (`Ok`) or the first failure (`Err`). `acked` survives across
/// calls, so a retry does not depend on the last save.
async fn relay(
    inner: &Inner,
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
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut commits = inner.committed.subscribe();
    let mut head = (*commits.borrow_and_update()).max(read_to);
    let hub_id = inner.config.hub_id.as_str();
    let status = &inner.relay_status;
    loop {
        // Fill the window while the log has more.
        if read_to < head && inflight.len() <= WINDOW / 2 {
            while read_to < head && inflight.len() < WINDOW {
                let limit = (WINDOW - inflight.len()).clamp(64, MAX_QUERY_LIMIT);
                let page = inner
                    .store
                    .query(Query {
                        after_seq: read_to,
                        limit,
                        ..Query::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let short = page.events.len() < limit;
                for event in page.events {
                    let subject = event.subject.as_str();
                    if event.origin.hub_id != hub_id {
                        continue;
                    }
                    if !link.config.stream.captures(subject) {
                        metrics::counter!("herald_relay_skipped_total").increment(1);
                        continue;
                    }
                    if !link.is_connected() {
                        return Err("disconnected from NATS".into());
                    }
                    let headers = super::event_headers(&event, hub_id);
                    let body = crate::envelope::to_json(&event);
                    let ack = link
                        .jetstream
                        .publish_with_headers(subject.to_owned(), headers, body.into())
                        .await
                        .map_err(|e| format!("publishing seq {}: {e}", event.seq))?;
                    inflight.push_back(InFlight {
                        seq: event.seq,
                        committed: event.timestamp,
                        ack,
                    });
                }
                read_to = read_to.max(page.scanned_to);
                if inflight.is_empty() {
                    done = read_to;
                }
                if short {
                    head = head.max(read_to);
                    break;
                }
            }
        }
        if let Some(front) = inflight.pop_front() {
            let ack = front
                .ack
                .await
                .map_err(|e| format!("no PubAck for seq {}: {e}", front.seq))?;
            if !ack.duplicate {
                metrics::counter!("herald_relay_published_total").increment(1);
            }
            let delay = Timestamp::now().as_micros() - front.committed.as_micros();
            metrics::histogram!("herald_relay_delay_seconds").record(delay.max(0) as f64 / 1e6);
            done = if inflight.is_empty() {
                read_to
            } else {
                front.seq
            };
        } else {
            done = done.max(read_to);
            if done > saved {
                save(inner, name, done, &mut saved).await?;
                last_save = Instant::now();
            }
            status.cursor.store(done, Ordering::Relaxed);
            *acked = Some(done);
            let polled = tokio::select! {
                changed = commits.changed() => changed.is_err(),
                () = tokio::time::sleep(POLL) => true,
                () = inner.shutdown.cancelled() => return Ok(()),
            };
            head = head.max(*commits.borrow_and_update());
            if polled {
                head = head.max(inner.store.head().await.map_err(|e| e.to_string())?);
            }
            continue;
        }
        *acked = Some(done);
        status.cursor.store(done, Ordering::Relaxed);
        status.head.store(head, Ordering::Relaxed);
        if done > saved && last_save.elapsed() >= SAVE_EVERY {
            save(inner, name, done, &mut saved).await?;
            last_save = Instant::now();
        }
        if inner.shutdown.is_cancelled() {
            // Finish what is in flight (bounded by the PubAck timeout), then stop.
            while let Some(front) = inflight.pop_front() {
                if front.ack.await.is_err() {
                    break;
                }
                done = if inflight.is_empty() {
                    read_to
                } else {
                    front.seq
                };
            }
            *acked = Some(done);
            if done > saved {
                save(inner, name, done, &mut saved).await?;
            }
            return Ok(());
        }
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
