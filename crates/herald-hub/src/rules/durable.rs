//! Webhook and republish rules on durable consumers.
//!
//! Each such rule has an internal consumer, `rule:<id>` (user consumer names cannot
//! hold `:`), of the rule's pattern: its pending set holds the events being delivered
//! or waiting for a retry, its dead letters the events given up on. Every instance on
//! the store runs a worker per enabled rule; the workers take messages from the same
//! consumer, so each event is with one instance at a time, and an ack (a delivery) is
//! never redelivered.
//!
//! A worker fetches (long poll) as many messages as it has free in-flight slots
//! ([`WEBHOOK_IN_FLIGHT`] for a webhook, 1 for a republish; the consumer's
//! `max_ack_pending` is the same, so it bounds the whole cluster) and sends each one
//! attempt: success acks it, a failure worth retrying NAKs it with the backoff and the
//! error (the consumer redelivers it after that delay and, when it was the last of the
//! rule's attempts, dead-letters it with reason `max_deliver` and the error as
//! `last_error`), a refusal (3xx, 4xx but 408 and 429) terms it. While an attempt runs,
//! its ack wait is extended every [`PROGRESS_EVERY`]; if the instance dies, the message
//! comes back [`ACK_WAIT`] later, to any instance (at least once; receivers dedupe with
//! `webhook-id`). While a webhook's breaker is open the worker fetches nothing.
//!
//! Where a consumer starts: a new rule, or one being enabled, after the head of the log
//! (the next event committed); a rule stored before rules had consumers, after its old
//! cursor `rule:<id>` (so nothing is sent twice or skipped on the upgrade). Only the
//! instance that adds or changes a rule makes or remakes its consumer, before storing
//! the rule; the others take it in as they find it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{Pattern, Seq, Subject};
use herald_store::{CreateConsumer, NewConsumer, Store};
use tokio::task::JoinSet;

use super::webhook::{self, Attempt};
use super::{Action, Entry, RuleId, Target, WEBHOOK_IN_FLIGHT};
use crate::consumers::{ConsumerConfig, ConsumerError, DeliverPolicy, Message, Settle};
use crate::tail::Backoff;
use crate::{envelope, Hub, HubError};

/// How long a message stays with the instance that fetched it without news from it.
pub(super) const ACK_WAIT: Duration = Duration::from_secs(5);
/// How often an attempt still running extends its message's ack wait.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_millis(1500);
/// The longest long poll of a worker.
const FETCH_WAIT: Duration = Duration::from_secs(30);
/// The first wait before trying a failed store call again (doubling up to 16 s).
const RETRY_STORE: Duration = Duration::from_secs(1);
/// Attempts per event of a republish rule.
pub const REPUBLISH_ATTEMPTS: u32 = 5;

/// The internal consumer of a durable rule; also the name of its cursor from before
/// rules had consumers.
pub(super) fn consumer_name(id: &RuleId) -> String {
    format!("rule:{id}")
}

/// Attempts per event: the webhook's `max_attempts`, or [`REPUBLISH_ATTEMPTS`].
fn attempts(action: &Action) -> u32 {
    match action {
        Action::Webhook(webhook) => webhook.max_attempts(),
        Action::Republish { .. } => REPUBLISH_ATTEMPTS,
    }
}

fn in_flight(action: &Action) -> usize {
    match action {
        Action::Webhook(_) => WEBHOOK_IN_FLIGHT,
        Action::Republish { .. } => 1,
    }
}

/// The settings of a rule's consumer, starting after `start_after`.
fn consumer_config(
    id: &RuleId,
    pattern: &Pattern,
    action: &Action,
    start_after: Seq,
) -> ConsumerConfig {
    let attempts = attempts(action);
    ConsumerConfig {
        filter_subjects: vec![pattern.clone()],
        deliver_policy: DeliverPolicy::ByStartSeq {
            opt_start_seq: start_after.saturating_add(1),
        },
        ack_wait_ms: ACK_WAIT.as_millis() as u64,
        max_deliver: Some(attempts),
        backoff_ms: Some(webhook::backoff_schedule_ms(attempts)),
        max_ack_pending: in_flight(action) as u32,
        description: Some(format!("routing rule {id}")),
    }
}

/// Where [`ensure_consumer`] leaves a rule's consumer.
pub(super) enum Start {
    /// A new consumer after this seq, replacing any (a new rule, or one being enabled).
    Fresh(Seq),
    /// The rule changed: keep its consumer with the new settings (remade after its ack
    /// floor when the pattern changed); made from the old cursor when missing.
    Keep,
    /// Only make it (from the old cursor) when missing: a worker starting.
    Existing,
}

/// Makes the rule's consumer what `start` says.
pub(super) async fn ensure_consumer(
    hub: &Hub,
    id: &RuleId,
    pattern: &Pattern,
    action: &Action,
    start: Start,
) -> Result<(), HubError> {
    let store = &hub.inner.store;
    let name = consumer_name(id);
    let existing = store.consumer(&name).await?;
    let start_after = match (start, existing) {
        (Start::Fresh(head), existing) => {
            // A cursor never moves back: should the consumer ever be remade from it, it
            // starts here, not before.
            store.save_cursor(&name, head).await?;
            if existing.is_some() {
                delete_consumer(hub, id).await?;
            }
            head
        }
        (Start::Existing, Some(_)) => return Ok(()),
        (Start::Keep, Some(record)) => {
            if record.filters == [pattern.clone()] {
                let config = consumer_config(id, pattern, action, 0);
                if record.policy != config.policy() {
                    store
                        .update_consumer(&name, config.policy(), config.to_stored())
                        .await?;
                }
                return Ok(());
            }
            // Filters cannot change: a new consumer from the first unsettled event (what
            // was pending is offered again under the new pattern; dead letters go).
            let floor = store
                .consumer_state(&name)
                .await?
                .map_or(0, |state| state.ack_floor);
            delete_consumer(hub, id).await?;
            floor
        }
        (Start::Keep | Start::Existing, None) => store.load_cursor(&name).await?,
    };
    let config = consumer_config(id, pattern, action, start_after);
    let new = NewConsumer {
        name: name.clone(),
        epoch: uuid::Uuid::new_v4().as_u128() as u32,
        filters: config.filter_subjects.clone(),
        policy: config.policy(),
        meta: config.to_stored(),
        start_after,
    };
    // One internal consumer per rule, so their number is bounded by MAX_RULES; they do
    // not count against the users' limit.
    match store.create_consumer(new, usize::MAX).await? {
        CreateConsumer::Created(_) | CreateConsumer::Exists(_) => Ok(()),
        CreateConsumer::LimitReached => Err(HubError::Internal(
            "the store refused a routing rule's consumer".into(),
        )),
    }
}

/// Deletes the rule's consumer (if any), with its pending messages and dead letters.
pub(super) async fn delete_consumer(hub: &Hub, id: &RuleId) -> Result<(), HubError> {
    match hub.delete_consumer(&consumer_name(id)).await {
        Ok(()) | Err(ConsumerError::NotFound(_)) => Ok(()),
        Err(error) => Err(hub_error(error)),
    }
}

/// A consumer error of an internal consumer, as the hub's.
pub(super) fn hub_error(error: ConsumerError) -> HubError {
    match error {
        ConsumerError::Hub(error) => error,
        other => HubError::Internal(other.to_string()),
    }
}

/// The worker of an enabled webhook or republish rule: runs until the rule stops.
pub(super) async fn run(hub: Hub, entry: Arc<Entry>) {
    let Target::Action(action) = &entry.target else {
        return;
    };
    let stop = entry.stop.clone();
    let name = consumer_name(&entry.id);
    let mut retry = Backoff::new(RETRY_STORE, 4);
    loop {
        match ensure_consumer(&hub, &entry.id, &entry.pattern, action, Start::Existing).await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(rule = %entry.id, %error, "Cannot set up a routing rule's consumer; retrying.");
                if retry.pause(&stop).await {
                    return;
                }
            }
        }
    }

    let limit = in_flight(action);
    let mut running: JoinSet<()> = JoinSet::new();
    while !stop.is_cancelled() {
        if running.len() >= limit {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(done) = running.join_next() => finished(&entry, done),
            }
            continue;
        }
        let probe = match &entry.lane {
            Some(lane) => tokio::select! {
                biased;
                () = stop.cancelled() => break,
                probe = lane.breaker.ready() => probe,
            },
            None => false,
        };
        let batch = if probe { 1 } else { limit - running.len() };
        // A delivery finishing (a slot free) or the rule stopping ends the wait early;
        // neither drops messages already handed out.
        let wake = stop.child_token();
        let fetch = hub.fetch_until_any(&name, batch, FETCH_WAIT, &wake);
        tokio::pin!(fetch);
        let fetched = loop {
            tokio::select! {
                result = &mut fetch => break result,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    finished(&entry, done);
                    wake.cancel();
                }
            }
        };
        match fetched {
            Ok(messages) if stop.is_cancelled() => {
                release(&hub, &name, messages).await;
                break;
            }
            Ok(messages) => {
                retry = Backoff::new(RETRY_STORE, 4);
                let mut probe_task = None;
                for message in messages {
                    let task = running.spawn(deliver(hub.clone(), entry.clone(), message));
                    probe_task = Some(task.id());
                }
                // The probe goes alone: wait for it before taking more.
                if let (true, Some(probe_task)) = (probe, probe_task) {
                    loop {
                        tokio::select! {
                            biased;
                            () = stop.cancelled() => break,
                            Some(done) = running.join_next_with_id() => {
                                let id = match &done {
                                    Ok((id, ())) => *id,
                                    Err(error) => error.id(),
                                };
                                finished(&entry, done.map(|_| ()));
                                if id == probe_task {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            Err(ConsumerError::Hub(HubError::ShuttingDown)) => break,
            Err(error) => {
                // Not found: another instance is remaking the consumer (the rule changed);
                // this worker is replaced once the change is taken in.
                tracing::debug!(rule = %entry.id, %error, "A routing rule cannot fetch; retrying.");
                if retry.pause(&stop).await {
                    break;
                }
            }
        }
    }
    // Attempts still running are dropped; their messages come back after the ack wait.
    running.shutdown().await;
}

fn finished(entry: &Entry, done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        if error.is_panic() {
            tracing::error!(rule = %entry.id, %error, "A routing rule's delivery panicked.");
        }
    }
}

/// Hands messages back for immediate redelivery, without counting an attempt.
async fn release(hub: &Hub, name: &str, messages: Vec<Message>) {
    if messages.is_empty() {
        return;
    }
    let ids: Vec<String> = messages.into_iter().map(|m| m.ack_id).collect();
    if let Err(error) = hub.settle_any(name, &ids, Settle::Release).await {
        tracing::debug!(consumer = name, %error, "Cannot hand messages back; they come back after their ack wait.");
    }
}

/// How one attempt at one event went.
enum Outcome {
    Done,
    /// Failed; worth another attempt after at least this long, if said.
    Retry(String, Option<Duration>),
    /// Failed for good.
    Refused(String),
}

/// One attempt at one message, settled as the module docs say.
async fn deliver(hub: Hub, entry: Arc<Entry>, message: Message) {
    let Target::Action(action) = &entry.target else {
        return;
    };
    let name = consumer_name(&entry.id);
    let started = std::time::Instant::now();
    let event = &message.event;
    let outcome = match action {
        Action::Webhook(webhook) => {
            let lane = entry
                .lane
                .as_ref()
                .expect("enabled webhook rules have a lane");
            // The breaker opened since the fetch: give the message back unsent.
            let Some(pass) = lane.breaker.try_admit() else {
                release(&hub, &name, vec![message]).await;
                return;
            };
            let attempt = holding(&hub, &name, &message.ack_id, async {
                hub.inner
                    .rules
                    .delivery
                    .attempt(&entry.id, webhook, lane, event)
                    .await
            })
            .await;
            match attempt {
                Ok(attempt) => {
                    pass.settle(attempt.health());
                    match attempt {
                        Attempt::Delivered => Outcome::Done,
                        Attempt::Retry(reason, retry_after) => Outcome::Retry(reason, retry_after),
                        Attempt::Refused(status) => Outcome::Refused(format!("answered {status}")),
                        Attempt::Forbidden(reason) => Outcome::Refused(reason),
                    }
                }
                Err(webhook::DeliveryError::ShuttingDown) => return,
                Err(error) => Outcome::Retry(error.to_string(), None),
            }
        }
        Action::Republish { subject } => match republish(&hub, &entry.id, subject, event).await {
            Ok(()) => Outcome::Done,
            Err(error) => Outcome::Retry(error.to_string(), None),
        },
    };
    metrics::histogram!("herald_rule_action_duration_seconds", "rule" => entry.id.to_string())
        .record(started.elapsed().as_secs_f64());

    let attempt = message.delivery;
    let how = match outcome {
        Outcome::Done => {
            entry.count_delivered();
            Settle::Ack
        }
        Outcome::Retry(reason, retry_after) if attempt < attempts(action) => {
            entry.count_retry();
            let wait = webhook::retry_delay(attempt, retry_after);
            tracing::debug!(
                rule = %entry.id,
                event_id = %event.id,
                attempt,
                %reason,
                wait_ms = wait.as_millis() as u64,
                "A routing rule's attempt failed; retrying."
            );
            Settle::Nak {
                delay_ms: Some(wait.as_millis() as u64),
                reason: Some(reason),
            }
        }
        Outcome::Retry(reason, _) => {
            entry.count_failed(
                event,
                &format_args!("{reason}; gave up after {attempt} attempts"),
            );
            // The last allowed delivery: the consumer dead-letters it (`max_deliver`).
            Settle::Nak {
                delay_ms: None,
                reason: Some(reason),
            }
        }
        Outcome::Refused(reason) => {
            entry.count_failed(event, &reason);
            Settle::Term {
                reason: Some(reason),
            }
        }
    };
    if let Err(error) = hub.settle_any(&name, &[message.ack_id], how).await {
        tracing::debug!(rule = %entry.id, %error, "Cannot settle a routing rule's message; it comes back after its ack wait.");
    }
}

/// Runs `work`, extending the message's ack wait every [`PROGRESS_EVERY`] meanwhile.
async fn holding<T>(hub: &Hub, name: &str, ack_id: &str, work: impl Future<Output = T>) -> T {
    let heartbeat = async {
        let ids = [ack_id.to_owned()];
        loop {
            tokio::time::sleep(PROGRESS_EVERY).await;
            // A lost heartbeat may let the message go to another instance: at least once.
            let _ = hub.settle_any(name, &ids, Settle::Progress).await;
        }
    };
    tokio::select! {
        out = work => out,
        () = heartbeat => unreachable!("the heartbeat never ends"),
    }
}

/// Why a republish failed.
#[derive(Debug, thiserror::Error)]
enum RepublishError {
    #[error("NATS is not configured on this hub")]
    NoNats,
    #[error("cannot publish to NATS: {0}")]
    Publish(#[source] async_nats::PublishError),
}

/// Publishes the event's JSON envelope to `subject` on NATS, with the relay's headers
/// (`Nats-Msg-Id` made unique to this rule, so that JetStream does not take the copy
/// for the relayed original).
async fn republish(
    hub: &Hub,
    rule: &RuleId,
    subject: &Subject,
    event: &herald_core::Event,
) -> Result<(), RepublishError> {
    let client = hub.nats_client().ok_or(RepublishError::NoNats)?;
    let mut headers = crate::nats::event_headers(event, hub.hub_id());
    headers.insert("Nats-Msg-Id", format!("{rule}:{}", event.id).as_str());
    client
        .publish_with_headers(
            subject.as_str().to_owned(),
            headers,
            envelope::to_json(event).into(),
        )
        .await
        .map_err(RepublishError::Publish)
}
