//! Routing rules (seed 002): a subject pattern and an action run for every committed
//! event whose subject matches.
//!
//! - **Actions**: POST the event to a webhook ([`Webhook`]: signed the Standard Webhooks
//!   way, retried with exponential backoff), republish it to another NATS subject
//!   ([`Action::Republish`]), or call an async closure ([`Hub::add_routing_rule`]).
//! - **Several rules may match one event**; each runs on its own. A failing action is
//!   logged and counted (`herald_rule_actions_total{rule, outcome}` and
//!   [`RuleInfo::stats`]); it never blocks publishing or another rule.
//! - **Webhook and republish rules are durable**: kept in the store, each follows the
//!   log from its own cursor (`rule:<id>`), saved about once a second at the last seq
//!   whose deliveries have all finished (delivered or given up). After a crash
//!   deliveries resume from there: at least once; receivers dedupe with `webhook-id`. A
//!   new rule (or a rule being enabled) starts with the next event committed.
//! - **Handler closures** live in memory only and start with the next event committed.
//! - **Several instances on one store** (PostgreSQL) re-read the stored rules every few
//!   seconds, so a rule added or removed on one reaches the others; each instance runs
//!   every rule (receivers see each event once per instance, with the same `webhook-id`).
//!
//! Each rule is one consumer (a [`Subscription`](crate::Subscription) of its pattern):
//! a rule whose receiver is down falls behind on its own, reading the store when it
//! catches up, and the others go on. A webhook rule has at most
//! [`WEBHOOK_IN_FLIGHT`] deliveries in flight (so they may arrive out of order; the body
//! carries `seq`); the first of its requests never waits for a slot another rule holds,
//! the rest share a hub-wide pool of [`SHARED_REQUESTS`] (see [`webhook`]), and a
//! circuit breaker per rule ([`CircuitBreaker`]) stops sending to a receiver that keeps
//! failing, without skipping events. Republish and handler rules run one event at a
//! time, in seq order. Failures are logged at most once per rule every 10 s, with the
//! number left out; the counters stay exact.

mod breaker;
mod engine;
mod stored;
pub mod webhook;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::{Event, Pattern, Subject, Timestamp};
use herald_store::{Store, StoredRule};
use tokio_util::sync::CancellationToken;

use crate::{Hub, HubError};

pub use breaker::{
    BreakerState, BreakerStatus, CircuitBreaker, DEFAULT_COOL_DOWN, DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_MAX_COOL_DOWN, MAX_COOL_DOWN, MAX_FAILURE_THRESHOLD, MIN_COOL_DOWN,
};
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
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// Counts of what a rule did since this process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Events whose action succeeded.
    pub delivered: u64,
    /// Events given up on (after every attempt).
    pub failed: u64,
    /// Attempts that failed and were retried.
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

/// One rule and its consumer.
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
    /// Stops this rule's consumer (a child of the hub's shutdown token).
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

    /// Stops the consumer and waits (a bounded time) for its last cursor save.
    async fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().expect("rule task lock").take();
        if let Some(task) = task {
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) if error.is_panic() => {
                    tracing::error!(rule = %self.id, %error, "A routing rule's consumer panicked.")
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(rule = %self.id, "A routing rule's consumer did not stop within 5 s.")
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
    pub(crate) async fn load(store: &herald_store::AnyStore) -> Result<Self, HubError> {
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
            delivery: webhook::Delivery::new(),
        })
    }

    /// Starts the consumers of the rules read by [`Rules::load`].
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
            spawn(hub, &entry, engine::Start::Cursor);
            entries.push(entry);
        }
        drop(entries);
        let services = &hub.inner.services;
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

    /// Stops every consumer (at shutdown), saving their cursors.
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
/// instance that moved the rule's cursor first, so a rule taken in starts from it.
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
        spawn(hub, &entry, engine::Start::Cursor);
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

/// Starts `entry`'s consumer if it is enabled.
fn spawn(hub: &Hub, entry: &Arc<Entry>, start: engine::Start) {
    if entry.enabled {
        let task = tokio::spawn(engine::run(hub.clone(), entry.clone(), start));
        *entry.task.lock().expect("rule task lock") = Some(task);
    }
}

/// The store cursor of a durable rule.
fn cursor_name(id: &RuleId) -> String {
    format!("rule:{id}")
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

    /// Adds a durable rule: stored, then running from the next event committed. Fails with
    /// [`RuleError::Exists`] when a rule has that id.
    pub async fn add_rule(&self, spec: RuleSpec) -> Result<RuleInfo, RuleError> {
        spec.validate()?;
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
        let head = self.fanout_head();
        self.put_stored(&id, &spec, created_at, Some(head)).await?;
        let entry = new_entry(self, id, &spec, created_at);
        spawn(self, &entry, engine::Start::After(head));
        rules
            .entries
            .lock()
            .expect("rules lock")
            .push(entry.clone());
        Ok(entry.info())
    }

    /// Adds or replaces durable rules by id (the rules of a configuration file): a new
    /// rule starts with the next event committed; a changed one goes on from its cursor
    /// (from the next event if it was disabled); an unchanged one is left as it is. Every
    /// spec needs an id.
    pub async fn load_rules(&self, specs: Vec<RuleSpec>) -> Result<Vec<RuleInfo>, RuleError> {
        for (i, spec) in specs.iter().enumerate() {
            spec.validate()?;
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
            let head = fresh_start.then(|| self.fanout_head());
            let created_at = old.as_ref().map_or_else(Timestamp::now, |o| o.created_at);
            if let Some(old) = &old {
                old.stop().await;
            }
            self.put_stored(&id, &spec, created_at, head).await?;
            let entry = new_entry(self, id, &spec, created_at);
            spawn(
                self,
                &entry,
                head.map_or(engine::Start::Cursor, engine::Start::After),
            );
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

    /// Removes a rule of any kind (a durable one from the store too); false when there
    /// is none with that id. When this returns, the rule runs no more actions.
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
        spawn(self, &entry, engine::Start::After(self.fanout_head()));
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

    fn fanout_head(&self) -> herald_core::Seq {
        self.inner.fanout.lock().expect("fanout lock").head
    }

    /// Stores a durable rule; with `start`, first moves its cursor there (a cursor
    /// never moves back, so a re-created id does not replay what it saw before).
    async fn put_stored(
        &self,
        id: &RuleId,
        spec: &RuleSpec,
        created_at: Timestamp,
        start: Option<herald_core::Seq>,
    ) -> Result<(), HubError> {
        let store = &self.inner.store;
        if let Some(seq) = start {
            store.save_cursor(&cursor_name(id), seq).await?;
        }
        store
            .put_rule(StoredRule {
                id: id.to_string(),
                body: stored::encode(spec, created_at),
            })
            .await?;
        Ok(())
    }
}
