//! Durable consumers: named views of the log that hand events out to clients that ack,
//! NAK, extend or give up on them, with redelivery on a backoff schedule and dead letters
//! (the model and its guarantees are in [`herald_store::consumer`]).
//!
//! - **One writer of delivery state**: every fetch, ack, NAK, progress, term, release and
//!   redrive becomes a [`ConsumerCall`] queued to the *consumer-ops* service, which drains
//!   the queue into store transactions (group commit, like publishes; two at once, so one
//!   works while the other syncs). An answer comes back only once its transaction is
//!   durable: an ack answered is never redelivered.
//! - **Long polls** wait on the consumer's waker (acks, NAKs and redrives here), on new
//!   commits (unless the pending set is full), and on the next due redelivery; with other
//!   instances on the store they also look again every second, for what those did.
//! - **Upkeep**: every few seconds each consumer is swept (last deliveries whose ack wait
//!   ended go to the dead letters even when no client fetches) and its gauges refreshed.

mod config;

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::{Event, Seq, Timestamp};
use herald_store::{
    AckId, ConsumerCall, ConsumerDeadLetter, ConsumerOp, ConsumerOutcome, ConsumerRecord,
    CreateConsumer, Fetched, NewConsumer, Store,
};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{
    is_user_name, valid_name, ConsumerConfig, DeliverPolicy, InvalidConsumer, MAX_ACK_PENDING,
    MAX_DELAY_MS, MAX_FILTERS, MAX_NAME_LEN,
};

use crate::{Hub, HubError, Inner};

/// Most messages one fetch hands out.
pub const MAX_FETCH_BATCH: usize = 1000;
/// Longest long poll.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(60);
/// Most ack ids one settle call takes.
pub const MAX_ACK_IDS: usize = 10_000;
/// Calls drained into one store transaction.
const MAX_CALLS_PER_TRANSACTION: usize = 512;
/// Store transactions of consumer calls under way at once: one works while the one
/// before it syncs (the embedded store syncs outside its writer; PostgreSQL overlaps
/// them on two connections).
const TRANSACTIONS_IN_FLIGHT: usize = 2;
/// How often a long poll looks again when other instances may change the same consumer.
const SHARED_STORE_POLL: Duration = Duration::from_secs(1);
/// How often consumers are swept and their gauges refreshed.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Settings of the consumer engine.
#[derive(Debug, Clone)]
pub struct ConsumerLimits {
    /// Most consumers the store keeps.
    pub max_consumers: usize,
}

impl Default for ConsumerLimits {
    fn default() -> Self {
        ConsumerLimits {
            max_consumers: herald_store::consumer::DEFAULT_MAX_CONSUMERS,
        }
    }
}

/// Why a consumer call was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    #[error("no consumer is named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Invalid(#[from] InvalidConsumer),
    /// The consumer exists with another value of a field that cannot change.
    #[error("consumer {name:?} exists with another {field}; {field} cannot change (delete and create it again)")]
    Conflict { name: String, field: &'static str },
    /// Concurrent deletes kept removing the consumer while a put applied its settings.
    #[error("consumer {0:?} was deleted concurrently while its settings were applied; retry")]
    Contended(String),
    #[error("the hub already keeps the most consumers it takes ({0})")]
    LimitReached(usize),
    #[error(transparent)]
    Hub(#[from] HubError),
}

impl From<herald_store::StoreError> for ConsumerError {
    fn from(error: herald_store::StoreError) -> Self {
        ConsumerError::Hub(error.into())
    }
}

/// What [`Hub::put_consumer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// It existed; its changeable settings were updated.
    Updated,
    /// It existed with exactly these settings.
    Unchanged,
}

/// Why nothing is being delivered although events wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// The pending set is full: acks are awaited.
    MaxAckPending,
}

impl Stall {
    pub fn as_str(self) -> &'static str {
        match self {
            Stall::MaxAckPending => "max_ack_pending",
        }
    }
}

/// A consumer's delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStatus {
    pub ack_floor: Seq,
    pub last_delivered_seq: Seq,
    pub num_pending: u64,
    pub num_ack_pending: u64,
    pub num_redelivered: u64,
    pub num_dead_letters: u64,
    /// Matching events retention deleted before they were handed out.
    pub skipped_by_retention: u64,
    pub stalled: Option<Stall>,
}

/// A consumer: its settings and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    pub config: ConsumerConfig,
    pub created_at: Timestamp,
    pub state: ConsumerStatus,
}

/// A message handed to a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// What the client hands back to ack, NAK, extend or term this delivery.
    pub ack_id: String,
    /// Which delivery this is (1 for the first).
    pub delivery: u32,
    pub event: Event,
}

/// The answer to an ack, NAK, progress or term.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settled {
    pub done: u64,
    /// Ids that were malformed, unknown, already settled or of an earlier delivery.
    pub unknown: Vec<String>,
}

/// How a client settles messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Redeliver after `delay_ms`, or after the backoff when `None`.
    Nak {
        delay_ms: Option<u64>,
        reason: Option<String>,
    },
    Progress,
    Term {
        reason: Option<String>,
    },
    /// The client went away: redeliver at once.
    Release,
}

impl Settle {
    /// The verb, as spans name it.
    pub fn operation(&self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Nak { .. } => "nak",
            Settle::Progress => "progress",
            Settle::Term { .. } => "term",
            Settle::Release => "release",
        }
    }
}

/// The engine's shared part, held by the hub.
pub(crate) struct Consumers {
    ops: mpsc::Sender<Request>,
    /// Wakes the long polls of one consumer. Entries are made by polls of consumers that
    /// exist and removed when the consumer is deleted.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    limits: ConsumerLimits,
}

pub(crate) struct Request {
    call: ConsumerCall,
    reply: oneshot::Sender<Result<ConsumerOutcome, HubError>>,
}

impl Consumers {
    pub(crate) fn new(limits: ConsumerLimits) -> (Self, mpsc::Receiver<Request>) {
        let (ops, queue) = mpsc::channel(4096);
        (
            Consumers {
                ops,
                wakers: Mutex::default(),
                limits,
            },
            queue,
        )
    }

    fn waker(&self, name: &str) -> Arc<Notify> {
        self.wakers
            .lock()
            .expect("wakers lock")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn wake(&self, name: &str) {
        if let Some(waker) = self.wakers.lock().expect("wakers lock").get(name) {
            waker.notify_waiters();
        }
    }

    fn forget(&self, name: &str) {
        if let Some(waker) = self.wakers.lock().expect("wakers lock").remove(name) {
            waker.notify_waiters();
        }
    }
}

/// The consumer-ops service: drains queued calls into store transactions, up to
/// [`TRANSACTIONS_IN_FLIGHT`] at once.
pub(crate) async fn run_ops(inner: Arc<Inner>, mut queue: mpsc::Receiver<Request>) {
    let shutdown = inner.shutdown.clone();
    let in_flight = Arc::new(Semaphore::new(TRANSACTIONS_IN_FLIGHT));
    let mut transactions = JoinSet::new();
    loop {
        let first = tokio::select! {
            request = queue.recv() => request,
            _ = shutdown.cancelled() => {
                queue.close();
                queue.recv().await
            }
        };
        let Some(first) = first else {
            while transactions.join_next().await.is_some() {}
            return;
        };
        // Wait for a free slot before draining, so the batch takes in what queued meanwhile.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_CALLS_PER_TRANSACTION {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (calls, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|r| (r.call, r.reply)).unzip();
        let inner = inner.clone();
        transactions.spawn(async move {
            let _permit = permit;
            match inner.store.consumer_ops(Timestamp::now(), calls).await {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    let error = HubError::from(error);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
        while transactions.try_join_next().is_some() {}
    }
}

/// The upkeep service: sweeps each consumer and refreshes its gauges.
pub(crate) async fn run_upkeep(hub: Hub, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
        let Ok(records) = hub.inner.store.consumers().await else {
            continue;
        };
        for record in records {
            if shutdown.is_cancelled() {
                return;
            }
            if let Ok(info) = hub.any_consumer_info(&record.name).await {
                let label = [("consumer", info.name.clone())];
                metrics::gauge!("herald_consumer_pending", &label)
                    .set(info.state.num_pending as f64);
                metrics::gauge!("herald_consumer_ack_pending", &label)
                    .set(info.state.num_ack_pending as f64);
                metrics::gauge!("herald_consumer_dead_letters", &label)
                    .set(info.state.num_dead_letters as f64);
            }
        }
    }
}

impl Hub {
    fn consumers(&self) -> &Consumers {
        &self.inner.consumers
    }

    /// Queues one call for the consumer-ops service and waits for its durable outcome.
    async fn consumer_call(
        &self,
        consumer: &str,
        op: ConsumerOp,
    ) -> Result<ConsumerOutcome, ConsumerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError::ShuttingDown.into());
        }
        let (reply, answer) = oneshot::channel();
        let call = ConsumerCall {
            consumer: consumer.to_owned(),
            op,
        };
        self.consumers()
            .ops
            .send(Request { call, reply })
            .await
            .map_err(|_| HubError::ShuttingDown)?;
        match answer.await.map_err(|_| HubError::ShuttingDown)?? {
            ConsumerOutcome::NotFound => Err(ConsumerError::NotFound(consumer.to_owned())),
            outcome => Ok(outcome),
        }
    }

    /// Creates a consumer, or updates the changeable settings of the one of that name.
    /// Filters and start position cannot change ([`ConsumerError::Conflict`]).
    ///
    /// A PUT is never answered "not found": when a concurrent delete removes the consumer
    /// between the steps of a put, the put starts over (and creates it again), a few
    /// times, then gives up with [`ConsumerError::Contended`].
    pub async fn put_consumer(
        &self,
        name: &str,
        config: ConsumerConfig,
    ) -> Result<(PutOutcome, ConsumerInfo), ConsumerError> {
        const ATTEMPTS: usize = 4;
        for _ in 1..ATTEMPTS {
            match self.put_consumer_once(name, config.clone()).await {
                Err(ConsumerError::NotFound(_)) => continue,
                other => return other,
            }
        }
        match self.put_consumer_once(name, config).await {
            Err(ConsumerError::NotFound(_)) => Err(ConsumerError::Contended(name.to_owned())),
            other => other,
        }
    }

    async fn put_consumer_once(
        &self,
        name: &str,
        config: ConsumerConfig,
    ) -> Result<(PutOutcome, ConsumerInfo), ConsumerError> {
        if !is_user_name(name) {
            return Err(InvalidConsumer {
                field: "name",
                message: format!(
                    "a consumer name is 1 to {MAX_NAME_LEN} ASCII letters, digits, '-' or '_'"
                ),
            }
            .into());
        }
        config.validate()?;
        let store = &self.inner.store;
        let outcome = match store.consumer(name).await? {
            Some(existing) => self.reconcile(existing, &config).await?,
            None => {
                let start_after = match &config.deliver_policy {
                    DeliverPolicy::All => 0,
                    DeliverPolicy::New => store.head().await?,
                    DeliverPolicy::ByStartSeq { opt_start_seq } => opt_start_seq - 1,
                    DeliverPolicy::ByStartTime { opt_start_time } => {
                        self.seq_before(*opt_start_time).await?
                    }
                };
                let new = NewConsumer {
                    name: name.to_owned(),
                    epoch: uuid::Uuid::new_v4().as_u128() as u32,
                    filters: config.filter_subjects.clone(),
                    policy: config.policy(),
                    meta: config.to_stored(),
                    start_after,
                };
                // Internal consumers (routing rules) do not count against the limit.
                let internal = store
                    .consumers()
                    .await?
                    .iter()
                    .filter(|c| !is_user_name(&c.name))
                    .count();
                let limit = self.consumers().limits.max_consumers + internal;
                match store.create_consumer(new, limit).await? {
                    CreateConsumer::Created(_) => PutOutcome::Created,
                    CreateConsumer::Exists(existing) => self.reconcile(existing, &config).await?,
                    CreateConsumer::LimitReached => {
                        return Err(ConsumerError::LimitReached(
                            self.consumers().limits.max_consumers,
                        ))
                    }
                }
            }
        };
        if outcome == PutOutcome::Updated {
            self.consumers().wake(name);
        }
        Ok((outcome, self.consumer_info(name).await?))
    }

    /// Compares an existing consumer with the settings asked for, updating what may change.
    async fn reconcile(
        &self,
        existing: ConsumerRecord,
        config: &ConsumerConfig,
    ) -> Result<PutOutcome, ConsumerError> {
        let current = decode_config(&existing)?;
        if let Some(field) = current.immutable_difference(config) {
            return Err(ConsumerError::Conflict {
                name: existing.name,
                field,
            });
        }
        if current == *config {
            return Ok(PutOutcome::Unchanged);
        }
        match self
            .inner
            .store
            .update_consumer(&existing.name, config.policy(), config.to_stored())
            .await?
        {
            Some(_) => Ok(PutOutcome::Updated),
            None => Err(ConsumerError::NotFound(existing.name)),
        }
    }

    /// A consumer's settings and state. Internal consumers (names that are not
    /// [`is_user_name`]s, such as the routing rules') are not found.
    pub async fn consumer_info(&self, name: &str) -> Result<ConsumerInfo, ConsumerError> {
        if !is_user_name(name) {
            return Err(ConsumerError::NotFound(name.to_owned()));
        }
        self.any_consumer_info(name).await
    }

    /// [`Hub::consumer_info`], internal consumers included.
    pub(crate) async fn any_consumer_info(
        &self,
        name: &str,
    ) -> Result<ConsumerInfo, ConsumerError> {
        // Sweep first, so that expired last deliveries show as dead letters.
        self.consumer_call(name, ConsumerOp::Fetch { batch: 0 })
            .await?;
        let store = &self.inner.store;
        let not_found = || ConsumerError::NotFound(name.to_owned());
        let record = store.consumer(name).await?.ok_or_else(not_found)?;
        let state = store.consumer_state(name).await?.ok_or_else(not_found)?;
        let config = decode_config(&record)?;
        let stalled = (state.num_ack_pending >= u64::from(config.max_ack_pending)
            && state.num_pending > 0)
            .then_some(Stall::MaxAckPending);
        Ok(ConsumerInfo {
            name: record.name,
            config,
            created_at: record.created_at,
            state: ConsumerStatus {
                ack_floor: state.ack_floor,
                last_delivered_seq: state.delivered_seq,
                num_pending: state.num_pending,
                num_ack_pending: state.num_ack_pending,
                num_redelivered: state.num_redelivered,
                num_dead_letters: state.num_dead_letters,
                skipped_by_retention: state.skipped_by_retention,
                stalled,
            },
        })
    }

    /// Every consumer, by name (internal ones left out).
    pub async fn list_consumers(&self) -> Result<Vec<ConsumerInfo>, ConsumerError> {
        let mut out = Vec::new();
        for record in self.inner.store.consumers().await? {
            if !is_user_name(&record.name) {
                continue;
            }
            match self.consumer_info(&record.name).await {
                Ok(info) => out.push(info),
                // Deleted meanwhile.
                Err(ConsumerError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(out)
    }

    /// Deletes a consumer with its pending messages and dead letters.
    pub async fn delete_consumer(&self, name: &str) -> Result<(), ConsumerError> {
        user(name)?;
        if !self.inner.store.delete_consumer(name).await? {
            return Err(ConsumerError::NotFound(name.to_owned()));
        }
        self.consumers().forget(name);
        Ok(())
    }

    /// Takes up to `batch` messages (1 to [`MAX_FETCH_BATCH`]): due redeliveries first,
    /// then new events. When none is available, waits up to `wait` (at most
    /// [`MAX_FETCH_WAIT`]) and answers as soon as any is.
    pub async fn fetch(
        &self,
        name: &str,
        batch: usize,
        wait: Duration,
    ) -> Result<Vec<Message>, ConsumerError> {
        self.fetch_until(name, batch, wait, &CancellationToken::new())
            .await
    }

    /// [`Hub::fetch_until`], internal consumers included.
    pub(crate) async fn fetch_until_any(
        &self,
        name: &str,
        batch: usize,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Vec<Message>, ConsumerError> {
        let batch = batch.clamp(1, MAX_FETCH_BATCH);
        let deadline = Instant::now() + wait.min(MAX_FETCH_WAIT);
        let shared_store = self.inner.store.external_commits().is_some();
        let mut committed = self.inner.committed.subscribe();
        let mut waker: Option<Arc<Notify>> = None;
        loop {
            let notified = waker.as_ref().map(|w| w.clone().notified_owned());
            let mut notified = notified.map(Box::pin);
            if let Some(n) = notified.as_mut() {
                n.as_mut().enable();
            }
            committed.borrow_and_update();
            let fetched = match self
                .consumer_call(name, ConsumerOp::Fetch { batch })
                .await?
            {
                ConsumerOutcome::Fetched(fetched) => fetched,
                other => return Err(HubError::Internal(format!("fetch answered {other:?}")).into()),
            };
            if !fetched.messages.is_empty() || Instant::now() >= deadline {
                return Ok(deliveries(name, fetched));
            }
            if fetched.read_stopped_early {
                // The log holds more than one fetch reads: read on.
                continue;
            }
            if waker.is_none() {
                // The consumer exists: from now on its acks and NAKs wake this poll.
                waker = Some(self.consumers().waker(name));
                continue;
            }
            let mut until = deadline;
            if let Some(due) = fetched.next_due {
                let in_micros = (due.as_micros() - Timestamp::now().as_micros()).max(0);
                until = until.min(Instant::now() + Duration::from_micros(in_micros as u64));
            }
            if shared_store {
                until = until.min(Instant::now() + SHARED_STORE_POLL);
            }
            let watch_commits = !fetched.at_max_ack_pending;
            tokio::select! {
                _ = async { notified.expect("set above").await } => {}
                _ = committed.changed(), if watch_commits => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = self.inner.shutdown.cancelled() => return Ok(Vec::new()),
                _ = stop.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Acks, NAKs, extends, terms or releases deliveries by their ack ids. Answers once
    /// the change is durable.
    pub(crate) async fn settle_any(
        &self,
        name: &str,
        ack_ids: &[String],
        how: Settle,
    ) -> Result<Settled, ConsumerError> {
        let mut parsed = Vec::with_capacity(ack_ids.len());
        let mut unknown = Vec::new();
        for text in ack_ids.iter().take(MAX_ACK_IDS) {
            match AckId::decode(text) {
                Some(id) => parsed.push((id, text)),
                None => unknown.push(text.clone()),
            }
        }
        let ids: Vec<AckId> = parsed.iter().map(|(id, _)| *id).collect();
        let op = match &how {
            Settle::Ack => ConsumerOp::Ack(ids),
            Settle::Nak { delay_ms, reason } => ConsumerOp::Nak {
                ids,
                delay_ms: delay_ms.map(|d| d.min(MAX_DELAY_MS)),
                reason: reason.clone(),
            },
            Settle::Progress => ConsumerOp::Progress(ids),
            Settle::Term { reason } => ConsumerOp::Term {
                ids,
                reason: reason.clone(),
            },
            Settle::Release => ConsumerOp::Release(ids),
        };
        let ConsumerOutcome::Settled {
            done,
            unknown: unknown_indexes,
        } = self.consumer_call(name, op).await?
        else {
            return Err(HubError::Internal("settle answered another outcome".into()).into());
        };
        unknown.extend(unknown_indexes.into_iter().map(|i| parsed[i].1.clone()));
        if done > 0 {
            if how == Settle::Ack {
                metrics::counter!("herald_consumer_acked_total", "consumer" => name.to_owned())
                    .increment(done);
            }
            if how != Settle::Progress {
                self.consumers().wake(name);
            }
        }
        Ok(Settled { done, unknown })
    }

    /// A consumer's dead letters with a seq above `after_seq`, at most `limit`, in seq order.
    pub(crate) async fn consumer_dead_letters_any(
        &self,
        name: &str,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Vec<ConsumerDeadLetter>, ConsumerError> {
        self.inner
            .store
            .consumer_dead_letters(name, after_seq, limit)
            .await?
            .ok_or_else(|| ConsumerError::NotFound(name.to_owned()))
    }

    /// Sends dead letters (all when `seqs` is `None`) back for delivery, their count
    /// reset. Answers how many went back.
    pub(crate) async fn redrive_any(
        &self,
        name: &str,
        seqs: Option<Vec<Seq>>,
    ) -> Result<u64, ConsumerError> {
        let ConsumerOutcome::Redriven(n) = self
            .consumer_call(name, ConsumerOp::Redrive { seqs })
            .await?
        else {
            return Err(HubError::Internal("redrive answered another outcome".into()).into());
        };
        if n > 0 {
            self.consumers().wake(name);
        }
        Ok(n)
    }

    /// Deletes one dead letter; false when the consumer has none with that seq.
    pub(crate) async fn discard_dead_letter_any(
        &self,
        name: &str,
        seq: Seq,
    ) -> Result<bool, ConsumerError> {
        match self
            .consumer_call(name, ConsumerOp::Discard { seq })
            .await?
        {
            ConsumerOutcome::Discarded(found) => Ok(found),
            _ => Err(HubError::Internal("discard answered another outcome".into()).into()),
        }
    }

    /// Seed 003's handler with a retry policy: runs `handler` on each message of the
    /// consumer `name`, one at a time; `Ok` acks, `Err` NAKs (redelivered on the
    /// consumer's backoff, its text kept as the reason). Returns when the hub shuts down,
    /// or with the first error that is not worth retrying.
    pub async fn consume<F, Fut, E>(&self, name: &str, mut handler: F) -> Result<(), ConsumerError>
    where
        F: FnMut(Event) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let shutdown = self.inner.shutdown.clone();
        while !shutdown.is_cancelled() {
            let messages = match self.fetch(name, 16, Duration::from_secs(30)).await {
                Ok(messages) => messages,
                Err(ConsumerError::Hub(HubError::Unavailable(_))) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(ConsumerError::Hub(HubError::ShuttingDown)) => return Ok(()),
                Err(error) => return Err(error),
            };
            for message in messages {
                let how = match handler(message.event).await {
                    Ok(()) => Settle::Ack,
                    Err(error) => Settle::Nak {
                        delay_ms: None,
                        reason: Some(error.to_string()),
                    },
                };
                // A lost answer is redelivered later: at least once.
                let _ = self.settle(name, &[message.ack_id], how).await;
            }
        }
        Ok(())
    }
}

/// The user-facing verbs: internal consumers (names that are not [`is_user_name`]s, such
/// as the routing rules') are not found through them.
impl Hub {
    /// [`Hub::fetch`] whose wait also ends (empty) when `stop` is cancelled. Only the
    /// wait is cut short: messages once taken from the store are always returned.
    pub async fn fetch_until(
        &self,
        name: &str,
        batch: usize,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Vec<Message>, ConsumerError> {
        user(name)?;
        let span = crate::trace::consumer_span("fetch", name, 0);
        let fetched = self.fetch_until_any(name, batch, wait, stop).await;
        if let Ok(messages) = &fetched {
            crate::trace::link_messages(&span, messages.iter().map(|m| &m.event));
        }
        fetched
    }

    /// Acks, NAKs, extends, terms or releases deliveries by their ack ids. Answers once
    /// the change is durable.
    pub async fn settle(
        &self,
        name: &str,
        ack_ids: &[String],
        how: Settle,
    ) -> Result<Settled, ConsumerError> {
        user(name)?;
        let _span = crate::trace::consumer_span(how.operation(), name, ack_ids.len());
        self.settle_any(name, ack_ids, how).await
    }

    /// A consumer's dead letters with a seq above `after_seq`, at most `limit`, in seq order.
    pub async fn consumer_dead_letters(
        &self,
        name: &str,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Vec<ConsumerDeadLetter>, ConsumerError> {
        user(name)?;
        self.consumer_dead_letters_any(name, after_seq, limit).await
    }

    /// Sends dead letters (all when `seqs` is `None`) back for delivery, their count
    /// reset. Answers how many went back.
    pub async fn redrive(&self, name: &str, seqs: Option<Vec<Seq>>) -> Result<u64, ConsumerError> {
        user(name)?;
        self.redrive_any(name, seqs).await
    }

    /// Deletes one dead letter; false when the consumer has none with that seq.
    pub async fn discard_dead_letter(&self, name: &str, seq: Seq) -> Result<bool, ConsumerError> {
        user(name)?;
        self.discard_dead_letter_any(name, seq).await
    }
}

/// Refuses a name clients may not give a consumer (see [`valid_name`]).
pub fn check_name(name: &str) -> Result<(), ConsumerError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(InvalidConsumer {
            field: "name",
            message: format!(
                "a consumer name is 1 to {MAX_NAME_LEN} ASCII letters, digits, '-' or '_'"
            ),
        }
        .into())
    }
}

fn user(name: &str) -> Result<(), ConsumerError> {
    if is_user_name(name) {
        Ok(())
    } else {
        Err(ConsumerError::NotFound(name.to_owned()))
    }
}

fn decode_config(record: &ConsumerRecord) -> Result<ConsumerConfig, ConsumerError> {
    ConsumerConfig::from_stored(&record.meta).map_err(|e| {
        HubError::Store(Arc::new(herald_store::StoreError::Corrupt(format!(
            "consumer {:?}: {e}",
            record.name
        ))))
        .into()
    })
}

fn deliveries(name: &str, fetched: Fetched) -> Vec<Message> {
    let now = Timestamp::now().as_micros();
    let label = || ("consumer", name.to_owned());
    let mut redelivered = 0;
    let messages: Vec<Message> = fetched
        .messages
        .into_iter()
        .map(|d| {
            if d.ack_id.delivery > 1 {
                redelivered += 1;
            } else {
                let latency = (now - d.event.timestamp.as_micros()).max(0) as f64 / 1e6;
                metrics::histogram!("herald_consumer_delivery_latency_seconds", &[label()])
                    .record(latency);
            }
            Message {
                ack_id: d.ack_id.encode(),
                delivery: d.ack_id.delivery,
                event: d.event,
            }
        })
        .collect();
    if !messages.is_empty() {
        metrics::counter!("herald_consumer_delivered_total", &[label()])
            .increment(messages.len() as u64);
    }
    if redelivered > 0 {
        metrics::counter!("herald_consumer_redelivered_total", &[label()]).increment(redelivered);
    }
    messages
}

#[cfg(test)]
mod tests;
