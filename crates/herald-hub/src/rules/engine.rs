//! A handler rule's consumer: a [`LogTail`] over a subscription of the rule's pattern,
//! one event at a time, in seq order, from the next event committed (handlers live in
//! memory only, so there is no cursor to save).

use std::sync::Arc;
use std::time::Duration;

use herald_core::Seq;

use super::{Entry, Target};
use crate::tail::{self, Backoff, LogTail, Saving, Source, TailConfig};
use crate::Hub;

/// How often the tail looks for what it missed.
const POLL: Duration = Duration::from_secs(1);
/// The wait before retrying a failed store read.
const RETRY_STORE: Duration = Duration::from_secs(1);
/// At most one warning per rule this often about events given up; the ones left out
/// are counted in the next (a receiver that is down would otherwise write a line per
/// event).
pub(super) const LOG_FAILURES_EVERY: Duration = Duration::from_secs(10);

/// Runs a handler rule after `start` until it stops.
pub(super) async fn run(hub: Hub, entry: Arc<Entry>, start: Seq) {
    let Target::Handler(handler) = &entry.target else {
        return;
    };
    let stop = entry.stop.clone();
    let mut retry = Backoff::new(RETRY_STORE, 0);
    let mut tail = loop {
        let config = TailConfig {
            label: entry.id.to_string(),
            cursor: None,
            saving: Saving::Book,
            save_every: POLL,
            window: 1,
            page: 1,
            poll: POLL,
            stop: stop.clone(),
            head: None,
        };
        let source = Source::Subscription {
            pattern: entry.pattern.clone(),
            prepare: Box::new(Some),
        };
        match LogTail::open(&hub.inner, config, source, tail::Start::After(start)).await {
            Ok(tail) => break tail,
            Err(error) => {
                tracing::warn!(rule = %entry.id, %error, "Cannot start a routing rule; retrying.");
                if retry.pause(&stop).await {
                    return;
                }
            }
        }
    };
    'events: loop {
        let page = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            page = tail.next() => page,
        };
        // The subscription ends only with the hub; store errors are retried inside the
        // tail.
        let Some(Ok(page)) = page else { break };
        for (seq, event) in page {
            let started = std::time::Instant::now();
            // Its own task, so that a panic is caught and a hanging handler can be left.
            let task = tokio::spawn(handler(event.clone()));
            let abort = task.abort_handle();
            let result = tokio::select! {
                biased;
                () = stop.cancelled() => {
                    abort.abort();
                    break 'events;
                }
                result = task => result,
            };
            match result {
                Ok(Ok(())) => entry.count_delivered(),
                Ok(Err(reason)) => entry.count_failed(&event, &reason),
                Err(_) => entry.count_failed(&event, &"the handler panicked"),
            }
            metrics::histogram!("herald_rule_action_duration_seconds", "rule" => entry.id.to_string())
                .record(started.elapsed().as_secs_f64());
            tail.finish(seq);
        }
    }
}
