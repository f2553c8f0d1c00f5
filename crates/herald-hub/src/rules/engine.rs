//! One rule's consumer: a [`LogTail`] over a subscription of the rule's pattern, with a
//! window of one event (a few for webhooks) whose actions run as tasks; the rule's
//! cursor is the tail's low-water mark, the last seq whose deliveries have all finished,
//! noted in the hub's cursor book about once a second and at the end.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Event, Seq, Subject};
use tokio::task::JoinSet;

use super::{cursor_name, Action, Entry, RuleId, Target, WEBHOOK_IN_FLIGHT};
use crate::tail::{self, Backoff, LogTail, Saving, Source, TailConfig};
use crate::{envelope, Hub};

/// How often a consumer saves its cursor (when it has moved).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// The wait before retrying a failed store read.
const RETRY_STORE: Duration = Duration::from_secs(1);
/// At most one warning per rule this often about events given up; the ones left out
/// are counted in the next (a receiver that is down would otherwise write a line per
/// event).
pub(super) const LOG_FAILURES_EVERY: Duration = Duration::from_secs(10);

/// Where a consumer starts.
pub(super) enum Start {
    /// From the rule's cursor in the store.
    Cursor,
    /// After this seq.
    After(Seq),
}

pub(super) async fn run(hub: Hub, entry: Arc<Entry>, start: Start) {
    let stop = entry.stop.clone();
    let cursor = entry.persisted().then(|| cursor_name(&entry.id));
    let limit = match &entry.target {
        Target::Action(Action::Webhook(_)) => WEBHOOK_IN_FLIGHT,
        _ => 1,
    };
    let start = match start {
        Start::After(seq) => tail::Start::After(seq),
        Start::Cursor => tail::Start::Saved { at_least: 0 },
    };
    let mut retry = Backoff::new(RETRY_STORE, 0);
    let mut tail = loop {
        let config = TailConfig {
            label: entry.id.to_string(),
            cursor: cursor.clone(),
            saving: Saving::Book,
            save_every: SAVE_EVERY,
            window: limit,
            page: 1,
            poll: SAVE_EVERY,
            stop: stop.clone(),
            head: None,
        };
        let source = Source::Subscription {
            pattern: entry.pattern.clone(),
            prepare: Box::new(Some),
        };
        match LogTail::open(&hub.inner, config, source, start).await {
            Ok(tail) => break tail,
            Err(error) => {
                tracing::warn!(rule = %entry.id, %error, "Cannot read a routing rule's cursor; retrying.");
                if retry.pause(&stop).await {
                    return;
                }
            }
        }
    };

    let mut running: JoinSet<()> = JoinSet::new();
    let mut seq_of = HashMap::new();
    loop {
        let save_at = tail.save_deadline();
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(error) => error.id(),
                };
                if let Some(seq) = seq_of.remove(&id) {
                    tail.finish(seq);
                    if let Err(error) = done {
                        if error.is_panic() {
                            record(&entry, seq, None, Err(ActionError::HandlerPanicked));
                        }
                    }
                }
            }
            page = tail.next(), if tail.has_room() => {
                // The subscription ends only with the hub; store errors are retried
                // inside the tail.
                let Some(Ok(page)) = page else { break };
                for (seq, event) in page {
                    let handle = running.spawn(act(hub.clone(), entry.clone(), event));
                    seq_of.insert(handle.id(), seq);
                }
            }
            () = tail::until(save_at) => {
                // Noting in the cursor book cannot fail.
                let _ = tail.save().await;
            }
        }
    }
    // Unfinished deliveries are dropped; they run again from the cursor next time.
    running.shutdown().await;
    let _ = tail.save().await;
}

/// Runs the rule's action for one event and records the outcome.
async fn act(hub: Hub, entry: Arc<Entry>, event: Arc<Event>) {
    let started = std::time::Instant::now();
    let result = match &entry.target {
        Target::Handler(handler) => handler(event.clone()).await.map_err(ActionError::Handler),
        Target::Action(Action::Webhook(webhook)) => {
            let body = Bytes::from(envelope::to_json(&event));
            let lane = entry
                .lane
                .as_ref()
                .expect("enabled webhook rules have a lane");
            hub.inner
                .rules
                .delivery
                .deliver(&entry.id, webhook, lane, &event, body, &entry.counters)
                .await
                .map_err(ActionError::from)
        }
        Target::Action(Action::Republish { subject }) => {
            republish(&hub, &entry.id, subject, &event).await
        }
    };
    record(&entry, event.seq, Some(&event), result);
    metrics::histogram!("herald_rule_action_duration_seconds", "rule" => entry.id.to_string())
        .record(started.elapsed().as_secs_f64());
}

/// Why a rule's action failed for one event (logged; the event is given up).
#[derive(Debug, thiserror::Error)]
enum ActionError {
    /// A handler closure's own words.
    #[error("{0}")]
    Handler(String),
    #[error("the handler panicked")]
    HandlerPanicked,
    #[error(transparent)]
    Webhook(#[from] super::webhook::DeliveryError),
    #[error("NATS is not configured on this hub")]
    NoNats,
    #[error("cannot publish to NATS: {0}")]
    Republish(#[source] async_nats::PublishError),
}

fn record(entry: &Entry, seq: Seq, event: Option<&Event>, result: Result<(), ActionError>) {
    let outcome = match result {
        Ok(()) => {
            entry.counters.delivered.fetch_add(1, Ordering::Relaxed);
            "delivered"
        }
        Err(reason) => {
            entry.counters.failed.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = entry.failure_log.admit() {
                tracing::warn!(
                    rule = %entry.id,
                    event_id = %event.map(|e| e.id.to_string()).unwrap_or_default(),
                    seq,
                    %reason,
                    // Failures of this rule not logged since its previous such line.
                    suppressed,
                    "A routing rule's action failed; this event is given up."
                );
            }
            "failed"
        }
    };
    metrics::counter!("herald_rule_actions_total", "rule" => entry.id.to_string(), "outcome" => outcome)
        .increment(1);
}

/// Publishes the event's JSON envelope to `subject` on NATS, with the relay's headers
/// (`Nats-Msg-Id` made unique to this rule, so that JetStream does not take the copy
/// for the relayed original).
async fn republish(
    hub: &Hub,
    rule: &RuleId,
    subject: &Subject,
    event: &Event,
) -> Result<(), ActionError> {
    let client = hub.nats_client().ok_or(ActionError::NoNats)?;
    let mut headers = crate::nats::event_headers(event, hub.hub_id());
    headers.insert("Nats-Msg-Id", format!("{rule}:{}", event.id).as_str());
    client
        .publish_with_headers(
            subject.as_str().to_owned(),
            headers,
            envelope::to_json(event).into(),
        )
        .await
        .map_err(ActionError::Republish)
}
