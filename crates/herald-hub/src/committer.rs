//! The committer: one task that turns concurrent publishes into group commits.
//!
//! It takes the first waiting request, then every other request already queued (up to
//! `max_batch_events`), appends them all in one store transaction, fans the stored
//! events out, and answers each request. While a batch is being synced the next one
//! gathers, so batches grow with load and a sync is shared by everyone waiting.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_core::NewEvent;
use herald_store::{Appended, Store};
use tokio::sync::{mpsc, oneshot};

use crate::log_throttle::LogThrottle;
use crate::{HubError, Inner, Published};

pub(crate) struct Request {
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<Vec<Published>, HubError>>,
}

pub(crate) async fn run(inner: Arc<Inner>, mut requests: mpsc::Receiver<Request>) {
    let max_batch = inner.config.max_batch_events.max(1);
    loop {
        let first = tokio::select! {
            biased;
            request = requests.recv() => request,
            () = inner.shutdown.cancelled() => {
                // Refuse new requests, then finish the ones already queued.
                requests.close();
                requests.recv().await
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let mut n_events = batch[0].events.len();
        while n_events < max_batch {
            match requests.try_recv() {
                Ok(request) => {
                    n_events += request.events.len();
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        commit(&inner, batch, n_events).await;
    }
    tracing::debug!("Committer stopped.");
}

async fn commit(inner: &Inner, batch: Vec<Request>, n_events: usize) {
    let mut events = Vec::with_capacity(n_events);
    let mut replies = Vec::with_capacity(batch.len());
    for request in batch {
        replies.push((request.events.len(), request.reply));
        events.extend(request.events);
    }
    let started = std::time::Instant::now();
    inner.writes.begin();
    let result = inner.store.append(events).await;
    metrics::histogram!("herald_commit_duration_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("herald_commit_batch_events").record(n_events as f64);
    match result {
        Ok(appended) => {
            inner.writes.succeeded();
            let published: Vec<Published> = appended
                .into_iter()
                .map(|a| {
                    let duplicate = a.is_duplicate();
                    Published {
                        event: Arc::new(match a {
                            Appended::Stored(e) | Appended::Duplicate(e) => e,
                        }),
                        duplicate,
                    }
                })
                .collect();
            let stored: Vec<_> = published
                .iter()
                .filter(|p| !p.duplicate)
                .map(|p| p.event.clone())
                .collect();
            let stats = &inner.stats;
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .events_stored
                .fetch_add(stored.len() as u64, Ordering::Relaxed);
            stats
                .events_duplicate
                .fetch_add((published.len() - stored.len()) as u64, Ordering::Relaxed);
            match &inner.follow_log {
                // Other writers interleave with us. Commit order is seq order on a shared
                // store, so when the fan-out head is just below our first seq, everything
                // before ours is fanned out already and ours can follow directly.
                // Otherwise another instance's events come in between: the follower
                // reads them (and ours) from the log.
                Some(wake) => {
                    if !inner.fan_out_if_next(&stored) {
                        wake.notify_one();
                    }
                }
                None => inner.fan_out(&stored),
            }
            let mut rest = published.into_iter();
            for (n, reply) in replies {
                let _ = reply.send(Ok(rest.by_ref().take(n).collect()));
            }
        }
        Err(error) => {
            inner.writes.failed(&error.to_string());
            static THROTTLE: LogThrottle = LogThrottle::new(Duration::from_secs(10));
            if let Some(suppressed) = THROTTLE.admit() {
                tracing::warn!(%error, events = n_events, suppressed, "Commit failed; nothing of the batch was stored.");
            }
            inner
                .stats
                .events_failed
                .fetch_add(n_events as u64, Ordering::Relaxed);
            let error = HubError::from(error);
            for (_, reply) in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
