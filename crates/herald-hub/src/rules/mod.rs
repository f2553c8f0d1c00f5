//! Routing rules (seed 002): a subject pattern and an action run for every committed
//! event whose subject matches.
//!
//! - **Actions**: POST the event to a webhook ([`Webhook`]: signed the Standard Webhooks
//!   way, retried with exponential backoff), republish it to another NATS subject
//!   ([`Action::Republish`]), or call an async closure ([`Hub::add_routing_rule`]).
//! - **Several rules may match one event**; each runs on its own. A failing action is
//!   logged and counted (`herald_rule_actions_total{rule, outcome}` and
//!   [`RuleInfo::stats`]); it never blocks publishing or another rule.
//! - **Webhook and republish rules are durable**: kept in the store, each on an internal
//!   durable consumer (`rule:<id>`, see [`durable`]): at least once across crashes
//!   (receivers dedupe with `webhook-id`), retried on the consumer's backoff, and an
//!   event that used up its attempts (or was refused) goes to the rule's dead letters
//!   ([`Hub::rule_dead_letters`], [`Hub::redrive_rule`]) instead of being dropped. A new
//!   rule (or a rule being enabled) starts with the next event committed.
//! - **Handler closures** live in memory only and start with the next event committed.
//! - **Several instances on one store** (PostgreSQL) re-read the stored rules every few
//!   seconds, so a rule added or removed on one reaches the others. Every instance runs
//!   a worker per rule, all on the rule's one consumer: each event is delivered once in
//!   the cluster (twice only when an instance dies mid-delivery).
//!
//! A rule whose receiver is down falls behind on its own, and the others go on. A
//! webhook rule has at most [`WEBHOOK_IN_FLIGHT`] deliveries in flight, retries waiting
//! for their backoff included (so they may arrive out of order; the body carries
//! `seq`); the first of its requests never waits for a slot another rule holds, the rest
//! share a hub-wide pool of [`SHARED_REQUESTS`] (see [`webhook`]), and a circuit breaker
//! per rule and instance ([`CircuitBreaker`]) stops sending to a receiver that keeps
//! failing, without skipping events. Republish rules run one event at a time, in seq
//! order (retries included), and so do handler rules (which are not retried). Failures
//! are logged at most once per rule every 10 s, with the number left out; the counters
//! stay exact.

mod breaker;
pub mod durable;
mod engine;
pub mod guard;
mod stored;
pub mod webhook;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::{Event, Pattern, Seq, Subject, Timestamp};
use herald_store::{ConsumerDeadLetter, Store, StoredRule};
use tokio_util::sync::CancellationToken;

use crate::{Hub, HubError};

pub use breaker::{
    BreakerState, BreakerStatus, CircuitBreaker, DEFAULT_COOL_DOWN, DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_MAX_COOL_DOWN, MAX_COOL_DOWN, MAX_FAILURE_THRESHOLD, MIN_COOL_DOWN,
};
pub use durable::REPUBLISH_ATTEMPTS;
pub use webhook::Webhook;

/// Most rules a hub keeps (handler closures included).
pub const MAX_RULES: usize = 1000;
/// Longest rule id, in bytes.
pub const MAX_RULE_ID_BYTES: usize = 128;
/// Longest description, in characters (Unicode scalar values).
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Most deliveries one webhook rule has in flight (retries included): its own budget,
/// so a receiver that hangs holds at most this many requests.
pub const WEBHOOK_IN_FLIGHT: usize = 8;
/// Request slots all webhook rules share beyond the one each rule has to itself: the hub
/// has at most `rules + SHARED_REQUESTS` webhook requests open (see [`webhook`] for why
/// no rule can starve another).
pub const SHARED_REQUESTS: usize = 256;

/// A rule's id: a caller-given string of ASCII letters, digits, `-`, `_`, `.` and `:`
/// that starts with a letter or digit (at most [`MAX_RULE_ID_BYTES`]), or a generated
/// UUID. Exactly what [`RULE_ID_REGEX`] matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(String);

/// The rule ids [`RuleId::new`] accepts (for API documents).
pub const RULE_ID_REGEX: &str = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$";

impl RuleId {
    pub fn new(id: impl Into<String>) -> Result<Self, RuleError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_RULE_ID_BYTES {
            return Err(RuleError::Invalid(format!(
                "`id` must be 1 to {MAX_RULE_ID_BYTES} characters long"
            )));
        }
        if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(RuleError::Invalid(
                "`id` must start with an ASCII letter or digit".into(),
            ));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(RuleError::Invalid(format!(
                "`id` may only contain ASCII letters, digits, `-`, `_`, `.` and `:`; found {bad:?}"
            )));
        }
        Ok(RuleId(id))
    }

    /// A fresh UUID (v7).
    pub fn generate() -> Self {
        RuleId(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RuleId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What a durable rule does with a matching event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// POST the event to a URL.
    Webhook(Webhook),
    /// Publish the event (its JSON envelope, with the relay's headers) to this NATS
    /// subject. Fails (and is counted) while NATS is not configured or not reachable.
    Republish { subject: Subject },
}

impl Action {
    /// `webhook` or `republish`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Webhook(_) => "webhook",
            Action::Republish { .. } => "republish",
        }
    }
}

/// A durable rule to add: what [`Hub::add_rule`] and [`Hub::load_rules`] take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// `None`: a UUID is generated.
    pub id: Option<RuleId>,
    pub subject_pattern: Pattern,
    pub action: Action,
    pub enabled: bool,
    pub description: Option<String>,
}

impl RuleSpec {
    /// An enabled rule without id or description.
    pub fn new(subject_pattern: Pattern, action: Action) -> Self {
        RuleSpec {
            id: None,
            subject_pattern,
            action,
            enabled: true,
            description: None,
        }
    }

    /// Checks what the types do not: the description's length.
    pub fn validate(&self) -> Result<(), RuleError> {
        check_description(self.description.as_deref())
    }
}

fn check_description(description: Option<&str>) -> Result<(), RuleError> {
    match description.map(|text| text.chars().count()) {
        Some(length) if length > MAX_DESCRIPTION_CHARS => Err(RuleError::Invalid(format!(
            "`description` has {length} characters; the limit is {MAX_DESCRIPTION_CHARS}"
        ))),
        _ => Ok(()),
    }
}

/// Options of a handler rule ([`Hub::add_routing_rule_with`]).
#[derive(Debug, Clone)]
pub struct RuleOptions {
    pub enabled: bool,
    pub description: Option<String>,
}

impl Default for RuleOptions {
    fn default() -> Self {
        RuleOptions {
            enabled: true,
            description: None,
        }
    }
}

/// Why a rule could not be added.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The rule is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("a rule with id {0} already exists")]
    Exists(RuleId),
    #[error("this hub already has {MAX_RULES} rules, the most it keeps")]
    TooMany,
    /// A webhook's URL is a literal address the [`guard`] forbids.
    #[error("`action.url`: {0}")]
    ForbiddenTarget(#[from] guard::ForbiddenTarget),
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// Counts of what a rule did in this process since it started (with several instances,
/// each counts its own attempts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Events whose action succeeded.
    pub delivered: u64,
    /// Events given up on: after their last attempt, or refused (durable rules: sent to
    /// the dead letters).
    pub failed: u64,
    /// Attempts that failed and are retried.
    pub retries: u64,
}

/// A rule as listed by [`Hub::routing_rules`] (never with a webhook's secret).
#[derive(Debug, Clone)]
pub struct RuleInfo {
    pub id: RuleId,
    pub subject_pattern: Pattern,
    /// `None` for a handler closure.
    pub action: Option<Action>,
    pub enabled: bool,
    pub description: Option<String>,
    pub created_at: Timestamp,
    /// Kept in the store (webhook and republish rules), or in memory (handlers).
    pub persisted: bool,
    pub stats: RuleStats,
    /// The circuit breaker of a webhook rule (`None` for other rules and disabled ones).
    pub breaker: Option<BreakerStatus>,
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Handler = Arc<dyn Fn(Arc<Event>) -> HandlerFuture + Send + Sync>;

/// What a rule runs.
#[derive(Clone)]
enum Target {
    Action(Action),
    Handler(Handler),
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
}

/// One rule and its worker.
struct Entry {
    id: RuleId,
    pattern: Pattern,
    target: Target,
    enabled: bool,
    description: Option<String>,
    created_at: Timestamp,
    counters: Counters,
    /// A webhook rule's own request slot and breaker.
    lane: Option<webhook::Lane>,
    /// Keeps failures from flooding the log.
    failure_log: crate::log_throttle::LogThrottle,
    /// Stops this rule's worker (a child of the hub's shutdown token).
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Entry {
    fn persisted(&self) -> bool {
        matches!(self.target, Target::Action(_))
    }

    fn info(&self) -> RuleInfo {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RuleInfo {
            id: self.id.clone(),
            subject_pattern: self.pattern.clone(),
            action: match &self.target {
                Target::Action(action) => Some(action.clone()),
                Target::Handler(_) => None,
            },
            enabled: self.enabled,
            description: self.description.clone(),
            created_at: self.created_at,
            persisted: self.persisted(),
            stats: RuleStats {
                delivered: load(&self.counters.delivered),
                failed: load(&self.counters.failed),
                retries: load(&self.counters.retries),
            },
            breaker: self.lane.as_ref().map(|lane| lane.breaker.status()),
        }
    }

    fn spec(&self) -> Option<RuleSpec> {
        match &self.target {
            Target::Action(action) => Some(RuleSpec {
                id: Some(self.id.clone()),
                subject_pattern: self.pattern.clone(),
                action: action.clone(),
                enabled: self.enabled,
                description: self.description.clone(),
            }),
            Target::Handler(_) => None,
        }
    }

    fn count_delivered(&self) {
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("herald_rule_actions_total", "rule" => self.id.to_string(), "outcome" => "delivered")
            .increment(1);
    }

    fn count_retry(&self) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("herald_rule_actions_total", "rule" => self.id.to_string(), "outcome" => "retried")
            .increment(1);
    }

    /// Counts an event given up on, and logs it (at most once per
    /// [`engine::LOG_FAILURES_EVERY`]).
    fn count_failed(&self, event: &Event, reason: &dyn fmt::Display) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("herald_rule_actions_total", "rule" => self.id.to_string(), "outcome" => "failed")
            .increment(1);
        if let Some(suppressed) = self.failure_log.admit() {
            tracing::warn!(
                rule = %self.id,
                event_id = %event.id,
                seq = event.seq,
                %reason,
                // Failures of this rule not logged since its previous such line.
                suppressed,
                "{}",
                if self.persisted() {
                    "A routing rule's action failed; this event is given up (it is in the rule's dead letters)."
                } else {
                    "A routing rule's action failed; this event is given up."
                }
            );
        }
    }

    /// Stops the worker and waits (a bounded time) for it to end.
    async fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().expect("rule task lock").take();
        if let Some(task) = task {
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) if error.is_panic() => {
                    tracing::error!(rule = %self.id, %error, "A routing rule's worker panicked.")
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(rule = %self.id, "A routing rule's worker did not stop within 5 s.")
                }
            }
        }
    }
}

/// The rules of one hub (a field of the hub's `Inner`).
pub(crate) struct Rules {
    entries: Mutex<Vec<Arc<Entry>>>,
    /// Serializes changes, which write to the store before they take effect.
    changes: tokio::sync::Mutex<()>,
    /// Rules read from the store by `Hub::open`, started by [`Rules::start`].
    loaded: Mutex<Vec<(RuleSpec, Timestamp)>>,
    pub(crate) delivery: webhook::Delivery,
}

/// How often a hub sharing its store re-reads the rules other instances may have changed.
const SYNC_EVERY: Duration = Duration::from_secs(5);

impl Rules {
    /// Reads the stored rules (a rule that cannot be read is logged and skipped).
    pub(crate) async fn load(
        store: &herald_store::AnyStore,
        webhook_allow_private: bool,
    ) -> Result<Self, HubError> {
        let mut loaded = Vec::new();
        for rule in store.list_rules().await? {
            match stored::decode(&rule) {
                Ok(parsed) => loaded.push(parsed),
                Err(error) => tracing::error!(
                    rule = %rule.id,
                    %error,
                    "A stored routing rule cannot be read; it is ignored."
                ),
            }
        }
        Ok(Rules {
            entries: Mutex::new(Vec::new()),
            changes: tokio::sync::Mutex::new(()),
            loaded: Mutex::new(loaded),
            delivery: webhook::Delivery::new(webhook_allow_private),
        })
    }

    /// Starts the workers of the rules read by [`Rules::load`].
    pub(crate) fn start(hub: &Hub) {
        let loaded = std::mem::take(&mut *hub.inner.rules.loaded.lock().expect("rules lock"));
        let mut entries = hub.inner.rules.entries.lock().expect("rules lock");
        for (spec, created_at) in loaded {
            let entry = new_entry(
                hub,
                spec.id.clone().expect("stored rules have ids"),
                &spec,
                created_at,
            );
            spawn(hub, &entry);
            entries.push(entry);
        }
        drop(entries);
        let services = &hub.inner.services;
        {
            let hub = hub.clone();
            tokio::spawn(async move {
                if let Err(error) = delete_orphan_consumers(&hub).await {
                    tracing::warn!(%error, "Cannot look for consumers of deleted routing rules.");
                }
            });
        }
        if hub.inner.follow_log.is_some() {
            let hub = hub.clone();
            services.spawn(
                "rule sync",
                crate::services::Stage::Consumers,
                crate::services::Ending::Abort,
                |_| follow_store(hub),
            );
        }
        services.add(
            "rules",
            crate::services::Stage::Consumers,
            Box::new(|inner| Box::pin(async move { inner.rules.stop().await })),
        );
    }

    /// Stops every worker (at shutdown).
    pub(crate) async fn stop(&self) {
        let entries = std::mem::take(&mut *self.entries.lock().expect("rules lock"));
        futures_util::future::join_all(entries.iter().map(|entry| entry.stop())).await;
    }

    fn find(&self, id: &str) -> Option<Arc<Entry>> {
        self.entries
            .lock()
            .expect("rules lock")
            .iter()
            .find(|e| e.id.as_str() == id)
            .cloned()
    }
}

/// With a shared store: takes in, every [`SYNC_EVERY`], the rules other instances added,
/// changed or removed.
async fn follow_store(hub: Hub) {
    let stop = hub.inner.shutdown.clone();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SYNC_EVERY) => {}
        }
        if let Err(error) = sync_from_store(&hub).await {
            tracing::warn!(%error, "Cannot re-read the routing rules from the store.");
        }
    }
}

/// Makes the durable rules in memory those of the store. Every change was made by an
/// instance that set up the rule's consumer first, so a rule taken in runs on it.
async fn sync_from_store(hub: &Hub) -> Result<(), HubError> {
    let rules = &hub.inner.rules;
    let _changing = rules.changes.lock().await;
    let mut kept = std::collections::HashSet::new();
    for rule in hub.inner.store.list_rules().await? {
        let Ok((spec, created_at)) = stored::decode(&rule) else {
            continue;
        };
        let id = spec.id.clone().expect("stored rules have ids");
        kept.insert(id.clone());
        let old = rules.find(id.as_str());
        if let Some(old) = &old {
            if !old.persisted() || old.spec().as_ref() == Some(&spec) {
                continue;
            }
            old.stop().await;
        }
        tracing::info!(rule = %id, "Taking in a routing rule changed by another instance.");
        let entry = new_entry(hub, id, &spec, created_at);
        spawn(hub, &entry);
        let mut entries = rules.entries.lock().expect("rules lock");
        match entries.iter_mut().find(|e| e.id == entry.id) {
            Some(slot) => *slot = entry,
            None => entries.push(entry),
        }
    }
    let gone: Vec<Arc<Entry>> = {
        let mut entries = rules.entries.lock().expect("rules lock");
        let (gone, keep) = std::mem::take(&mut *entries)
            .into_iter()
            .partition(|e| e.persisted() && !kept.contains(&e.id));
        *entries = keep;
        gone
    };
    for entry in gone {
        tracing::info!(rule = %entry.id, "A routing rule was removed by another instance.");
        entry.stop().await;
    }
    drop(_changing);
    delete_orphan_consumers(hub).await
}

/// How old the consumer of a rule not in the store must be to be deleted: an instance
/// adding a rule makes its consumer a moment before it stores the rule.
const ORPHAN_AGE: Duration = Duration::from_secs(60);

/// Deletes the consumers of rules that no longer exist (their instance stopped between
/// deleting the rule and its consumer, or a worker remade the consumer of a rule being
/// deleted elsewhere).
async fn delete_orphan_consumers(hub: &Hub) -> Result<(), HubError> {
    let store = &hub.inner.store;
    let consumers = store.consumers().await?;
    let stored: std::collections::HashSet<String> = store
        .list_rules()
        .await?
        .into_iter()
        .map(|rule| durable::consumer_name(&RuleId(rule.id)))
        .collect();
    let old_enough = Timestamp::now().as_micros() - ORPHAN_AGE.as_micros() as i64;
    for consumer in consumers {
        let orphan = consumer.name.starts_with("rule:")
            && !stored.contains(&consumer.name)
            && consumer.created_at.as_micros() < old_enough;
        if orphan {
            tracing::info!(consumer = %consumer.name, "Deleting the consumer of a deleted routing rule.");
            if let Err(error) = hub.delete_consumer(&consumer.name).await {
                tracing::debug!(consumer = %consumer.name, %error, "Cannot delete a consumer.");
            }
        }
    }
    Ok(())
}

fn new_entry(hub: &Hub, id: RuleId, spec: &RuleSpec, created_at: Timestamp) -> Arc<Entry> {
    let lane = match &spec.action {
        Action::Webhook(webhook) if spec.enabled => Some(webhook::Lane::new(id.clone(), webhook)),
        _ => None,
    };
    Arc::new(Entry {
        id,
        pattern: spec.subject_pattern.clone(),
        target: Target::Action(spec.action.clone()),
        enabled: spec.enabled,
        description: spec.description.clone(),
        created_at,
        counters: Counters::default(),
        lane,
        failure_log: crate::log_throttle::LogThrottle::new(engine::LOG_FAILURES_EVERY),
        stop: hub.inner.shutdown.child_token(),
        task: Mutex::new(None),
    })
}

impl Hub {
    /// Refuses a webhook to a literal address the [`guard`] forbids, unless the hub
    /// allows private targets (names are checked when connecting).
    fn check_target(&self, spec: &RuleSpec) -> Result<(), RuleError> {
        match &spec.action {
            Action::Webhook(webhook) => match self.inner.rules.delivery.literal_refusal(webhook) {
                Some(refusal) => Err(refusal.into()),
                None => Ok(()),
            },
            Action::Republish { .. } => Ok(()),
        }
    }
}

/// Starts the worker of a durable rule if it is enabled.
fn spawn(hub: &Hub, entry: &Arc<Entry>) {
    if entry.enabled {
        let task = tokio::spawn(durable::run(hub.clone(), entry.clone()));
        *entry.task.lock().expect("rule task lock") = Some(task);
    }
}

impl Hub {
    /// Every rule (durable ones and handler closures), in the order they were added.
    /// Seed 002's `get_routing_rules`.
    pub fn routing_rules(&self) -> Vec<RuleInfo> {
        self.inner
            .rules
            .entries
            .lock()
            .expect("rules lock")
            .iter()
            .map(|e| e.info())
            .collect()
    }

    /// One rule.
    pub fn routing_rule(&self, id: &str) -> Option<RuleInfo> {
        self.inner.rules.find(id).map(|e| e.info())
    }

    /// Adds a durable rule: its consumer made after the head of the log, the rule stored,
    /// then running from the next event committed. Fails with [`RuleError::Exists`] when
    /// a rule has that id.
    pub async fn add_rule(&self, spec: RuleSpec) -> Result<RuleInfo, RuleError> {
        spec.validate()?;
        self.check_target(&spec)?;
        let rules = &self.inner.rules;
        let _changing = rules.changes.lock().await;
        let id = spec.id.clone().unwrap_or_else(RuleId::generate);
        {
            let entries = rules.entries.lock().expect("rules lock");
            if entries.iter().any(|e| e.id == id) {
                return Err(RuleError::Exists(id));
            }
            if entries.len() >= MAX_RULES {
                return Err(RuleError::TooMany);
            }
        }
        let created_at = Timestamp::now();
        if spec.enabled {
            let head = self.fanout_head();
            durable::ensure_consumer(
                self,
                &id,
                &spec.subject_pattern,
                &spec.action,
                durable::Start::Fresh(head),
            )
            .await?;
        }
        self.put_stored(&id, &spec, created_at).await?;
        let entry = new_entry(self, id, &spec, created_at);
        spawn(self, &entry);
        rules
            .entries
            .lock()
            .expect("rules lock")
            .push(entry.clone());
        Ok(entry.info())
    }

    /// Adds or replaces durable rules by id (the rules of a configuration file): a new
    /// rule starts with the next event committed; a changed one goes on with its consumer
    /// (from the next event if it was disabled; remade after its first unsettled event,
    /// without its dead letters, if its pattern changed); an unchanged one is left as it
    /// is. Every spec needs an id.
    pub async fn load_rules(&self, specs: Vec<RuleSpec>) -> Result<Vec<RuleInfo>, RuleError> {
        for (i, spec) in specs.iter().enumerate() {
            spec.validate()?;
            self.check_target(spec)?;
            let Some(id) = &spec.id else {
                return Err(RuleError::Invalid(format!(
                    "rule {} has no `id`; rules loaded from a file need one",
                    i + 1
                )));
            };
            if specs[..i].iter().any(|s| s.id.as_ref() == Some(id)) {
                return Err(RuleError::Invalid(format!("two rules have the id {id}")));
            }
        }
        let rules = &self.inner.rules;
        let _changing = rules.changes.lock().await;
        let mut infos = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = spec.id.clone().expect("checked above");
            let old = rules.find(id.as_str());
            if let Some(old) = &old {
                if old.spec().as_ref() == Some(&spec) {
                    infos.push(old.info());
                    continue;
                }
                if !old.persisted() {
                    return Err(RuleError::Exists(id));
                }
            } else if rules.entries.lock().expect("rules lock").len() >= MAX_RULES {
                return Err(RuleError::TooMany);
            }
            let fresh_start = old.as_ref().is_none_or(|old| !old.enabled);
            let created_at = old.as_ref().map_or_else(Timestamp::now, |o| o.created_at);
            if let Some(old) = &old {
                old.stop().await;
            }
            if spec.enabled {
                let start = if fresh_start {
                    durable::Start::Fresh(self.fanout_head())
                } else {
                    durable::Start::Keep
                };
                durable::ensure_consumer(self, &id, &spec.subject_pattern, &spec.action, start)
                    .await?;
            }
            self.put_stored(&id, &spec, created_at).await?;
            let entry = new_entry(self, id, &spec, created_at);
            spawn(self, &entry);
            {
                let mut entries = rules.entries.lock().expect("rules lock");
                match entries.iter_mut().find(|e| e.id == entry.id) {
                    Some(slot) => *slot = entry.clone(),
                    None => entries.push(entry.clone()),
                }
            }
            infos.push(entry.info());
        }
        Ok(infos)
    }

    /// Removes a rule of any kind (a durable one from the store too, with its consumer and
    /// dead letters); false when there is none with that id. When this returns, the rule
    /// runs no more actions on this instance (others stop within a few seconds).
    pub async fn remove_rule(&self, id: &str) -> Result<bool, HubError> {
        let rules = &self.inner.rules;
        let _changing = rules.changes.lock().await;
        let Some(entry) = rules.find(id) else {
            return Ok(false);
        };
        if entry.persisted() {
            self.inner.store.delete_rule(id).await?;
        }
        rules
            .entries
            .lock()
            .expect("rules lock")
            .retain(|e| !Arc::ptr_eq(e, &entry));
        entry.stop().await;
        if entry.persisted() {
            // Should the consumer be remade from the old cursor (a worker of another
            // instance starting meanwhile), it starts here; see `delete_orphan_consumers`.
            let name = durable::consumer_name(&entry.id);
            self.inner
                .store
                .save_cursor(&name, self.fanout_head())
                .await?;
            durable::delete_consumer(self, &entry.id).await?;
        }
        Ok(true)
    }

    /// Adds an in-memory rule that calls `handler` with every event matching `pattern`
    /// committed from now on (seed 002's `add_routing_rule`). Events reach the handler
    /// one at a time, in seq order; an `Err` or a panic is logged and counted, and the
    /// next event follows.
    pub fn add_routing_rule<F, Fut>(&self, pattern: Pattern, handler: F) -> RuleId
    where
        F: Fn(Arc<Event>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.add_routing_rule_with(pattern, RuleOptions::default(), handler)
            .expect("default options are valid")
    }

    /// [`Hub::add_routing_rule`] with a description, or disabled. Fails only when the
    /// description is too long or the hub has [`MAX_RULES`] rules.
    pub fn add_routing_rule_with<F, Fut>(
        &self,
        pattern: Pattern,
        options: RuleOptions,
        handler: F,
    ) -> Result<RuleId, RuleError>
    where
        F: Fn(Arc<Event>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        check_description(options.description.as_deref())?;
        let handler: Handler = Arc::new(move |event| Box::pin(handler(event)) as HandlerFuture);
        let id = RuleId::generate();
        let entry = Arc::new(Entry {
            id: id.clone(),
            pattern,
            target: Target::Handler(handler),
            enabled: options.enabled,
            description: options.description,
            created_at: Timestamp::now(),
            counters: Counters::default(),
            lane: None,
            failure_log: crate::log_throttle::LogThrottle::new(engine::LOG_FAILURES_EVERY),
            stop: self.inner.shutdown.child_token(),
            task: Mutex::new(None),
        });
        let mut entries = self.inner.rules.entries.lock().expect("rules lock");
        if entries.len() >= MAX_RULES {
            return Err(RuleError::TooMany);
        }
        if entry.enabled {
            let task = tokio::spawn(engine::run(self.clone(), entry.clone(), self.fanout_head()));
            *entry.task.lock().expect("rule task lock") = Some(task);
        }
        entries.push(entry);
        Ok(id)
    }

    /// Removes a handler rule (seed 002's `remove_routing_rule`); false when no handler
    /// rule has that id (use [`Hub::remove_rule`] for durable rules). Its handler may still
    /// be running for one event.
    pub fn remove_routing_rule(&self, id: &RuleId) -> bool {
        let mut entries = self.inner.rules.entries.lock().expect("rules lock");
        let Some(index) = entries.iter().position(|e| &e.id == id && !e.persisted()) else {
            return false;
        };
        let entry = entries.remove(index);
        entry.stop.cancel();
        true
    }

    /// A durable rule's dead letters with a seq above `after_seq`, at most `limit`, in
    /// seq order (the events it gave up on: reason `max_deliver` after its last attempt,
    /// `term` when refused, with the last error). `None` when there is no rule with that
    /// id; a handler rule has none.
    pub async fn rule_dead_letters(
        &self,
        id: &str,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Option<Vec<ConsumerDeadLetter>>, HubError> {
        let Some(name) = self.rule_consumer(id) else {
            return Ok(None);
        };
        let Some(name) = name else {
            return Ok(Some(Vec::new()));
        };
        match self
            .consumer_dead_letters_any(&name, after_seq, limit)
            .await
        {
            Ok(dead) => Ok(Some(dead)),
            // A rule never enabled has no consumer.
            Err(crate::consumers::ConsumerError::NotFound(_)) => Ok(Some(Vec::new())),
            Err(error) => Err(durable::hub_error(error)),
        }
    }

    /// Sends a durable rule's dead letters (all when `seqs` is `None`) back for delivery,
    /// each with its attempts anew. Answers how many went back; `None` when there is no
    /// rule with that id.
    pub async fn redrive_rule(
        &self,
        id: &str,
        seqs: Option<Vec<Seq>>,
    ) -> Result<Option<u64>, HubError> {
        let Some(name) = self.rule_consumer(id) else {
            return Ok(None);
        };
        let Some(name) = name else {
            return Ok(Some(0));
        };
        match self.redrive_any(&name, seqs).await {
            Ok(n) => Ok(Some(n)),
            Err(crate::consumers::ConsumerError::NotFound(_)) => Ok(Some(0)),
            Err(error) => Err(durable::hub_error(error)),
        }
    }

    /// Deletes one of a durable rule's dead letters: whether it was there; `None` when
    /// there is no rule with that id.
    pub async fn discard_rule_dead_letter(
        &self,
        id: &str,
        seq: Seq,
    ) -> Result<Option<bool>, HubError> {
        let Some(name) = self.rule_consumer(id) else {
            return Ok(None);
        };
        let Some(name) = name else {
            return Ok(Some(false));
        };
        match self.discard_dead_letter_any(&name, seq).await {
            Ok(found) => Ok(Some(found)),
            Err(crate::consumers::ConsumerError::NotFound(_)) => Ok(Some(false)),
            Err(error) => Err(durable::hub_error(error)),
        }
    }

    /// The consumer of rule `id`: `None` when there is no such rule, `Some(None)` for a
    /// handler rule.
    fn rule_consumer(&self, id: &str) -> Option<Option<String>> {
        let entry = self.inner.rules.find(id)?;
        Some(entry.persisted().then(|| durable::consumer_name(&entry.id)))
    }

    fn fanout_head(&self) -> Seq {
        self.inner.fanout.lock().expect("fanout lock").head
    }

    /// Stores a durable rule.
    async fn put_stored(
        &self,
        id: &RuleId,
        spec: &RuleSpec,
        created_at: Timestamp,
    ) -> Result<(), HubError> {
        self.inner
            .store
            .put_rule(StoredRule {
                id: id.to_string(),
                body: stored::encode(spec, created_at),
            })
            .await?;
        Ok(())
    }
}
