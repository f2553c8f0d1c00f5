//! The committer: turns concurrent publishes into group commits, one batch at a time.
//!
//! It takes the first waiting request, then every other request already queued (up to
//! `max_batch_events`), appends them all in one store transaction, fans the stored
//! events out, and answers each request. While a batch is being synced the next one
//! gathers, so batches grow with load and a sync is shared by everyone waiting.
//!
//! On the embedded store it runs on a thread of its own and writes there
//! ([`EmbeddedStore::append_here`]): every commit is on the serial path of every
//! publish, and a task would pay two hand-overs per commit (to a blocking thread for
//! the write, and back to a worker after it). On PostgreSQL, whose append waits on the
//! network, it is a task that awaits the append on the runtime (on a thread, each commit
//! would add a wake-up from the runtime's I/O driver: 19,064 against 21,491 publishes/s
//! in `herald-bench postgres`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_core::NewEvent;
use herald_store::{AggregateAppend, AggregateAppended, Appended, EmbeddedStore, Store};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::log_throttle::LogThrottle;
use crate::{HubError, Inner, Published};

pub(crate) enum Request {
    /// Events to store (a batch: all or none).
    Publish {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<Vec<Published>, HubError>>,
    },
    /// Events to append to one aggregate, on a condition: committed on their own, in
    /// turn with the publishes, so that fan-out stays in seq order.
    Aggregate {
        append: AggregateAppend,
        reply: oneshot::Sender<Result<AggregateAppended, HubError>>,
    },
}

/// Where the committer's appends run.
#[derive(Clone, Copy)]
enum Writes<'a> {
    /// On the committer's own thread: the embedded store's append is work for the CPU
    /// and the disk, done right where the batch was gathered.
    Here(&'a EmbeddedStore),
    /// Awaited on the runtime: PostgreSQL's append waits on the network, and its
    /// connection is driven by the runtime's workers.
    Awaited,
}

pub(crate) async fn run(inner: Arc<Inner>, requests: mpsc::Receiver<Request>) {
    // Dropped with this task when the runtime drops it (the hub was never shut down):
    // the committer stops waiting for requests then, or the runtime's drop, which waits
    // for its blocking threads, would wait for ever for the committer's.
    let (_alive, task_dropped) = oneshot::channel::<()>();
    let Some(store) = inner.store.embedded().cloned() else {
        commit_all(&inner, requests, task_dropped, Writes::Awaited).await;
        tracing::debug!("Committer stopped.");
        return;
    };
    let runtime = Handle::current();
    // A blocking thread held for the hub's life: the committer's own.
    let committer = tokio::task::spawn_blocking(move || {
        runtime.block_on(commit_all(
            &inner,
            requests,
            task_dropped,
            Writes::Here(&store),
        ));
    });
    if let Err(error) = committer.await {
        if error.is_panic() {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    tracing::debug!("Committer stopped.");
}

async fn commit_all(
    inner: &Inner,
    mut requests: mpsc::Receiver<Request>,
    mut task_dropped: oneshot::Receiver<()>,
    writes: Writes<'_>,
) {
    let max_batch = inner.config.max_batch_events.max(1);
    let mut held: Option<Request> = None;
    loop {
        let first = match held.take() {
            Some(request) => Some(request),
            None => tokio::select! {
                biased;
                request = requests.recv() => request,
                () = inner.shutdown.cancelled() => {
                    // Refuse new requests, then finish the ones already queued.
                    requests.close();
                    requests.recv().await
                }
                _ = &mut task_dropped => None,
            },
        };
        let Some(first) = first else { break };
        let (events, reply) = match first {
            Request::Aggregate { append, reply } => {
                commit_aggregate(inner, append, reply, writes).await;
                continue;
            }
            Request::Publish { events, reply } => (events, reply),
        };
        let mut n_events = events.len();
        let mut batch = vec![(events, reply)];
        while n_events < max_batch {
            match requests.try_recv() {
                Ok(Request::Publish { events, reply }) => {
                    n_events += events.len();
                    batch.push((events, reply));
                }
                Ok(aggregate) => {
                    held = Some(aggregate);
                    break;
                }
                Err(_) => break,
            }
        }
        commit(inner, batch, n_events, writes).await;
    }
}

type Reply = oneshot::Sender<Result<Vec<Published>, HubError>>;

async fn commit(
    inner: &Inner,
    batch: Vec<(Vec<NewEvent>, Reply)>,
    n_events: usize,
    writes: Writes<'_>,
) {
    let mut events = Vec::with_capacity(n_events);
    let mut replies = Vec::with_capacity(batch.len());
    for (request_events, reply) in batch {
        replies.push((request_events.len(), reply));
        events.extend(request_events);
    }
    let span = crate::trace::commit_span(&events, replies.len());
    let started = std::time::Instant::now();
    inner.writes.begin();
    let result = match writes {
        Writes::Here(store) => store.append_here(events),
        Writes::Awaited => inner.store.append(events).await,
    };
    metrics::histogram!("herald_commit_duration_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("herald_commit_batch_events").record(n_events as f64);
    match result {
        Ok(appended) => {
            inner.writes.succeeded();
            let published = {
                let _fan_out = crate::trace::fan_out_span(&span, n_events).entered();
                publish_all(inner, appended)
            };
            let mut rest = published.into_iter();
            for (n, reply) in replies {
                let _ = reply.send(Ok(rest.by_ref().take(n).collect()));
            }
        }
        Err(error) => {
            let error = failed(inner, error, n_events);
            for (_, reply) in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

async fn commit_aggregate(
    inner: &Inner,
    append: AggregateAppend,
    reply: oneshot::Sender<Result<AggregateAppended, HubError>>,
    writes: Writes<'_>,
) {
    let n_events = append.events.len();
    let started = std::time::Instant::now();
    inner.writes.begin();
    let result = match writes {
        Writes::Here(store) => store.append_aggregate_here(append),
        Writes::Awaited => inner.store.append_aggregate(append).await,
    };
    metrics::histogram!("herald_commit_duration_seconds").record(started.elapsed().as_secs_f64());
    let answer = match result {
        Ok(AggregateAppended::Written { version, events }) => {
            inner.writes.succeeded();
            let published = publish_all(inner, events);
            Ok(AggregateAppended::Written {
                version,
                events: published
                    .into_iter()
                    .map(|p| {
                        let event = Arc::unwrap_or_clone(p.event);
                        if p.duplicate {
                            Appended::Duplicate(event)
                        } else {
                            Appended::Stored(event)
                        }
                    })
                    .collect(),
            })
        }
        Ok(refused) => {
            inner.writes.succeeded();
            Ok(refused)
        }
        Err(error) => Err(failed(inner, error, n_events)),
    };
    let _ = reply.send(answer);
}

/// Counts a committed batch and fans its new events out; the answer for each event.
fn publish_all(inner: &Inner, appended: Vec<Appended>) -> Vec<Published> {
    let published: Vec<Published> = appended
        .into_iter()
        .map(|a| {
            let duplicate = a.is_duplicate();
            Published {
                event: Arc::new(a.into_event()),
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
    published
}

/// Records a failed commit; the error to answer with.
fn failed(inner: &Inner, error: herald_store::StoreError, n_events: usize) -> HubError {
    inner.writes.failed(&error.to_string());
    static THROTTLE: LogThrottle = LogThrottle::new(Duration::from_secs(10));
    if let Some(suppressed) = THROTTLE.admit() {
        tracing::warn!(%error, events = n_events, suppressed, "Commit failed; nothing of the batch was stored.");
    }
    inner
        .stats
        .events_failed
        .fetch_add(n_events as u64, Ordering::Relaxed);
    HubError::from(error)
}
