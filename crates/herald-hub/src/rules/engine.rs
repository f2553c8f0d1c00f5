//! One rule's consumer: follows the log through a subscription of the rule's pattern,
//! runs the action for each event (a few at once for webhooks), and saves the rule's
//! cursor at the last seq whose deliveries have all finished.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Event, Seq, Subject};
use herald_store::Store;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{cursor_name, Action, Entry, RuleId, Target, WEBHOOK_IN_FLIGHT};
use crate::{envelope, Hub, Subscription};

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
    let start = match start {
        Start::After(seq) => seq,
        Start::Cursor => {
            let name = cursor.as_deref().expect("durable rules have cursors");
            loop {
                match hub.inner.store.load_cursor(name).await {
                    Ok(seq) => break seq,
                    Err(error) => {
                        tracing::warn!(rule = %entry.id, %error, "Cannot read a routing rule's cursor; retrying.");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(RETRY_STORE) => {}
                        }
                    }
                }
            }
        }
    };
    let limit = match &entry.target {
        Target::Action(Action::Webhook(_)) => WEBHOOK_IN_FLIGHT,
        _ => 1,
    };

    // The subscription runs in its own task, so that waiting for the store never races
    // the other branches below (a cancelled read would be read again).
    let (events_tx, mut events) = mpsc::channel::<Arc<Event>>(limit);
    let subscription =
        Subscription::register(hub.inner.clone(), entry.pattern.clone(), Some(start), None);
    let pump = tokio::spawn(pump(
        subscription,
        events_tx,
        entry.id.clone(),
        stop.clone(),
    ));

    let mut running: JoinSet<()> = JoinSet::new();
    let mut seq_of = HashMap::new();
    // Seqs whose action has not finished, and the last seq taken.
    let mut pending: BTreeSet<Seq> = BTreeSet::new();
    let mut last = start;
    let mut saved = start;
    let mut tick = tokio::time::interval(SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(error) => error.id(),
                };
                if let Some(seq) = seq_of.remove(&id) {
                    pending.remove(&seq);
                    if let Err(error) = done {
                        if error.is_panic() {
                            record(&entry, seq, None, Err(ActionError::HandlerPanicked));
                        }
                    }
                }
            }
            event = events.recv(), if running.len() < limit => {
                let Some(event) = event else { break };
                last = event.seq;
                pending.insert(event.seq);
                let handle = running.spawn(act(hub.clone(), entry.clone(), event.clone()));
                seq_of.insert(handle.id(), event.seq);
            }
            _ = tick.tick(), if cursor.is_some() => {
                let done = pending.first().map_or(last, |first| first - 1);
                if done > saved {
                    hub.inner.cursors.note(cursor.as_deref().unwrap_or_default(), done);
                    saved = done;
                }
            }
        }
    }
    pump.abort();
    // Unfinished deliveries are dropped; they run again from the cursor next time.
    running.shutdown().await;
    if let Some(name) = &cursor {
        let done = pending.first().map_or(last, |first| first - 1);
        if done > saved {
            hub.inner.cursors.note(name, done);
        }
    }
}

/// Moves events from the subscription to the consumer; ends with the hub.
async fn pump(
    mut subscription: Subscription,
    events: mpsc::Sender<Arc<Event>>,
    rule: RuleId,
    stop: CancellationToken,
) {
    loop {
        match subscription.next().await {
            None => return,
            Some(Ok(event)) => {
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Some(Err(error)) => {
                tracing::warn!(%rule, %error, "A routing rule cannot read the log; retrying.");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY_STORE) => {}
                }
            }
        }
    }
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
