//! Herald's engine, usable as a library without the server.
//!
//! - [`Hub::publish`] hands events to the **committer**, one task that drains every
//!   waiting publish into a single store transaction (group commit): one sync covers
//!   them all, and an answer comes back only once the batch is durable.
//! - After each commit the committer **fans out** the new events, in seq order, to
//!   live subscribers found through a [`SubjectTree`](herald_core::SubjectTree). When
//!   other processes write to the same store (PostgreSQL), the committer fans out its
//!   batch only when it directly follows the fan-out head; otherwise the [`follower`]
//!   fans out from the log, so events from every instance reach local subscribers in seq
//!   order.
//! - A [`Subscription`] reads from the store until it has caught up, then from its
//!   bounded live queue. When that queue overflows the hub stops filling it and the
//!   subscription goes back to the store, then rejoins: no gap, no duplicate, bounded
//!   memory, and a slow subscriber never slows anyone else.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_hub::{Hub, HubConfig, StartAt};
//! use herald_store::{EmbeddedOptions, StoreConfig};
//! let store = StoreConfig::parse("sqlite://./data/herald.db")?
//!     .open(EmbeddedOptions::default())
//!     .await?;
//! let hub = Hub::open(HubConfig::new("local-hub"), store).await?;
//! let mut events = hub.subscribe("hub.>".parse()?, StartAt::Live).await?;
//! hub.publish(hub.new_event("hub.local-hub.project.created", r#"{"id":1}"#)?).await?;
//! let event = events.next().await.unwrap()?;
//! hub.shutdown().await;
//! # Ok(()) }
//! ```

pub mod access;
pub mod aggregates;
mod committer;
pub mod consumers;
mod cursors;
pub mod envelope;
mod follower;
pub mod log_throttle;
pub mod nats;
pub mod retention;
pub mod rules;
pub mod schemas;
mod services;
mod subscription;
mod tail;
pub mod trace;
pub mod write_health;

#[cfg(test)]
mod testing {
    use super::{Hub, HubConfig};

    /// A hub on an embedded store in `dir`, for unit tests.
    pub(crate) async fn open_hub(dir: &tempfile::TempDir) -> Hub {
        let store = herald_store::StoreConfig::parse(&format!(
            "sqlite://{}",
            dir.path().join("h.db").display()
        ))
        .unwrap()
        .open(herald_store::EmbeddedOptions::default())
        .await
        .unwrap();
        Hub::open(HubConfig::new("local"), store).await.unwrap()
    }
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use herald_core::{
    Event, NewEvent, Origin, Pattern, Payload, Seq, Subject, SubjectTree, Timestamp,
};
use herald_store::{AnyStore, Page, Query, Store, StoreError, StoreHealth};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use nats::{HubPresence, NatsConfig, NatsStatus, StreamSettings};
pub use services::{ServiceInfo, ServiceState};
pub use subscription::{StartAt, Subscription};
pub use write_health::WriteState;

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// This hub's id: the `origin.hub_id` of events published here.
    pub hub_id: String,
    /// Most events committed in one transaction.
    pub max_batch_events: usize,
    /// Publish requests waiting for the committer before publishers wait for room.
    pub publish_queue: usize,
    /// Events a live subscriber may have waiting before it is switched to catch-up.
    pub subscriber_queue: usize,
    /// Events read from the store per step of catch-up.
    pub catch_up_page: usize,
    /// NATS: relay, bridge and presence. `None`: the hub runs standalone.
    pub nats: Option<NatsConfig>,
    /// Bounds of durable consumers.
    pub consumers: consumers::ConsumerLimits,
    /// Authentication mode and the environment's admin key.
    pub access: access::AccessConfig,
    /// Bounds of event schemas.
    pub schemas: schemas::SchemaLimits,
    /// Retention policies declared in configuration: they replace the stored ones at
    /// start. `None`: keep what the store has (set over the API).
    pub retention: Option<Vec<retention::PolicySpec>>,
    /// How often retention runs (it also runs at once after a change).
    pub retention_interval: std::time::Duration,
    /// Let webhooks reach loopback, private, link-local and metadata addresses, which
    /// [`rules::guard`] refuses by default (against server-side request forgery).
    pub webhook_allow_private: bool,
}

impl HubConfig {
    pub fn new(hub_id: impl Into<String>) -> Self {
        HubConfig {
            hub_id: hub_id.into(),
            max_batch_events: 2048,
            publish_queue: 8192,
            subscriber_queue: 1024,
            catch_up_page: 256,
            nats: None,
            consumers: consumers::ConsumerLimits::default(),
            access: access::AccessConfig::default(),
            schemas: schemas::SchemaLimits::default(),
            retention: None,
            retention_interval: std::time::Duration::from_secs(10),
            webhook_allow_private: false,
        }
    }
}

/// Why the hub could not do what was asked. Callers branch on the variant: only
/// [`HubError::Unavailable`] is worth retrying soon. The store's error stays the source
/// (shared, because one failed commit answers every publisher in its batch).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The store cannot take or serve events right now; try again.
    #[error(transparent)]
    Unavailable(Arc<StoreError>),
    /// The hub is shutting down and takes no more publishes.
    #[error("the hub is shutting down")]
    ShuttingDown,
    /// The hub's settings cannot work (for example a malformed NATS URL).
    #[error(transparent)]
    Config(Arc<nats::NatsError>),
    /// The store failed in a way a retry does not fix (corrupt data, a bug).
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("internal error: {0}")]
    Internal(String),
    /// The caller lacks the right (see [`access`]); the message names what was refused.
    #[error("{0}")]
    Forbidden(String),
    /// The request clashes with what is stored (an event id already taken).
    #[error("{0}")]
    Conflict(String),
    /// Over a publish rate of the caller's key or tenant; nothing was stored.
    #[error("{0}")]
    RateLimited(access::RateLimited),
    /// A count limit of the caller's key or tenant (streams, consumers, rules) is reached.
    #[error("{0}")]
    LimitReached(String),
    /// An event's payload fails a schema whose pattern matches its subject (see
    /// [`schemas`]); nothing of the batch was stored.
    #[error("{0}")]
    SchemaViolation(Arc<schemas::SchemaViolation>),
}

impl From<StoreError> for HubError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Closed => HubError::ShuttingDown,
            e if e.is_unavailable() => HubError::Unavailable(Arc::new(e)),
            e => HubError::Store(Arc::new(e)),
        }
    }
}

/// Why [`Hub::new_event`] refused its text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NewEventError {
    #[error(transparent)]
    Subject(#[from] herald_core::SubjectError),
    #[error(transparent)]
    Payload(#[from] herald_core::PayloadTextError),
}

/// The outcome of publishing one event.
#[derive(Debug, Clone)]
pub struct Published {
    pub event: Arc<Event>,
    /// An event with the same id was already stored; `event` is that one.
    pub duplicate: bool,
}

/// Counters the engine keeps (exported as metrics by the server).
#[derive(Debug, Default)]
pub struct HubStats {
    pub events_stored: AtomicU64,
    pub events_duplicate: AtomicU64,
    /// Events whose commit failed (their publishers got an error; nothing was stored).
    pub events_failed: AtomicU64,
    pub commits: AtomicU64,
    pub live_deliveries: AtomicU64,
    /// Times a live subscriber overflowed its queue and went back to the store.
    pub subscriber_overflows: AtomicU64,
    /// Live events a queue group dropped because every member's queue was full.
    pub queue_group_drops: AtomicU64,
}

/// How long `Hub::health` waits for the store to answer a read.
const HEALTH_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A running hub: cheap to clone, shut down once with [`Hub::shutdown`].
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    config: HubConfig,
    store: AnyStore,
    publish_tx: mpsc::Sender<committer::Request>,
    fanout: Mutex<Fanout>,
    stats: HubStats,
    /// Whether commits get through (see [`write_health`]).
    writes: write_health::WriteHealth,
    next_subscriber: AtomicU64,
    shutdown: CancellationToken,
    /// Every background task, started here and stopped in order by [`Hub::shutdown`].
    services: services::Services,
    /// Set when other processes write to the store too: fan-out then follows the log
    /// (see [`follower`]) instead of local commits, and this wakes it after each one.
    follow_log: Option<tokio::sync::Notify>,
    /// The last seq fanned out, for tasks that follow the log (the NATS relay).
    committed: watch::Sender<Seq>,
    nats: Option<nats::NatsLink>,
    relay_status: RelayStatus,
    presence: nats::presence::Registry,
    /// Tells this process apart from others with the same hub id.
    instance_id: Uuid,
    started_at: Timestamp,
    /// Routing rules and their consumers (see [`rules`]).
    rules: rules::Rules,
    consumers: consumers::Consumers,
    /// Cursors of the rule consumers, saved together (see [`cursors`]).
    cursors: cursors::CursorBook,
    /// Tenants and keys (see [`access`]).
    access: access::Registry,
    /// Event schemas, compiled (see [`schemas`]).
    schemas: schemas::Schemas,
    /// Retention policies in force (see [`retention`]), and the wake-up of their service
    /// after a change.
    retention: retention::Policies,
    retention_wake: tokio::sync::Notify,
}

/// How far the NATS relay has got.
#[derive(Debug, Default)]
struct RelayStatus {
    /// Every event of this hub up to here has a PubAck.
    cursor: AtomicU64,
    /// The log's head as the relay last saw it (its tail's reader reports it).
    head: Arc<AtomicU64>,
}

/// Live subscribers, and how far fan-out has got. One lock, so a subscriber that
/// registers sees a consistent "everything up to `head` was fanned out before me".
struct Fanout {
    tree: SubjectTree<u64>,
    subscribers: HashMap<u64, subscription::LiveSlot>,
    /// The last seq fanned out.
    head: Seq,
}

impl Hub {
    /// Starts the engine on an open store. Must be called inside a tokio runtime.
    pub async fn open(config: HubConfig, store: AnyStore) -> Result<Self, HubError> {
        let head = store.head().await?;
        let external_commits = store.external_commits();
        let nats = match &config.nats {
            Some(settings) => {
                let link = nats::NatsLink::connect(settings.clone(), &config.hub_id)
                    .await
                    .map_err(|error| HubError::Config(Arc::new(error)))?;
                // Give the first connection a moment, so that a hub started next to a
                // running NATS reports it healthy from its first request; a NATS that
                // is down does not hold the start-up back for longer.
                // The stream too, so that what others publish from then on is kept.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    link.wait_connected().await;
                    if link.config.relay || !link.config.bridge.is_empty() {
                        if let Err(error) = link.ensure_stream().await {
                            tracing::warn!(%error, "Cannot set up the JetStream stream yet; retrying in the background.");
                        }
                    }
                })
                .await;
                Some(link)
            }
            None => None,
        };
        let rules = rules::Rules::load(&store, config.webhook_allow_private).await?;
        let access = access::Registry::open(config.access.clone(), &store)
            .await
            .map_err(|error| match error {
                access::AccessError::Hub(error) => error,
                other => HubError::Internal(other.to_string()),
            })?;
        let schemas = schemas::Schemas::open(config.schemas.clone(), &store).await?;
        let retention = retention::Policies::default();
        retention.reload(&store).await?;
        let (publish_tx, publish_rx) = mpsc::channel(config.publish_queue.max(1));
        let (consumers, consumer_ops) = consumers::Consumers::new(config.consumers.clone());
        let inner = Arc::new(Inner {
            config,
            store,
            publish_tx,
            fanout: Mutex::new(Fanout {
                tree: SubjectTree::new(),
                subscribers: HashMap::new(),
                head,
            }),
            stats: HubStats::default(),
            writes: write_health::WriteHealth::default(),
            next_subscriber: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            services: services::Services::default(),
            follow_log: external_commits
                .as_ref()
                .map(|_| tokio::sync::Notify::new()),
            committed: watch::Sender::new(head),
            nats,
            relay_status: RelayStatus::default(),
            presence: Default::default(),
            instance_id: Uuid::new_v4(),
            started_at: Timestamp::now(),
            cursors: cursors::CursorBook::default(),
            rules,
            consumers,
            access,
            schemas,
            retention,
            retention_wake: tokio::sync::Notify::new(),
        });
        start_services(&inner, publish_rx, consumer_ops, external_commits);
        let hub = Hub { inner };
        if let Some(declared) = hub.inner.config.retention.clone() {
            hub.set_retention(declared)
                .await
                .map_err(|error| match error {
                    retention::RetentionError::Hub(error) => error,
                    other => {
                        HubError::Internal(format!("the configured retention policies: {other}"))
                    }
                })?;
        }
        let (retainer, interval) = (hub.inner.clone(), hub.inner.config.retention_interval);
        hub.inner.services.spawn(
            "retention",
            services::Stage::Consumers,
            services::Ending::Abort,
            move |_| retention::run(retainer, interval),
        );
        rules::Rules::start(&hub);
        let upkeep = hub.clone();
        hub.inner.services.spawn(
            "consumer upkeep",
            services::Stage::Consumers,
            services::Ending::Abort,
            |_| consumers::run_upkeep(upkeep.clone(), upkeep.inner.shutdown.clone()),
        );
        let reloader = hub.clone();
        hub.inner.services.spawn(
            "access reload",
            services::Stage::Consumers,
            services::Ending::Abort,
            |_| async move {
                let inner = &reloader.inner;
                loop {
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(access::RELOAD_EVERY) => {}
                    }
                    if let Err(error) = inner.access.reload(&inner.store).await {
                        tracing::warn!(%error, "Cannot reload tenants and keys; keeping the last ones read.");
                    }
                }
            },
        );
        let reloader = hub.clone();
        hub.inner.services.spawn(
            "schema reload",
            services::Stage::Consumers,
            services::Ending::Abort,
            |_| async move {
                let inner = &reloader.inner;
                loop {
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(schemas::RELOAD_EVERY) => {}
                    }
                    if let Err(error) = inner.schemas.reload(&inner.store).await {
                        tracing::warn!(%error, "Cannot reload event schemas; keeping the last ones read.");
                    }
                }
            },
        );
        Ok(hub)
    }

    pub fn hub_id(&self) -> &str {
        &self.inner.config.hub_id
    }

    /// The caller a request's key stands for (`None`: no key was given). With
    /// authentication off, no key means every right.
    pub fn authenticate(&self, key: Option<&str>) -> Result<access::Caller, access::AccessError> {
        self.inner.access.authenticate(key)
    }

    pub fn auth_mode(&self) -> access::AuthMode {
        self.inner.access.mode()
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> &HubStats {
        &self.inner.stats
    }

    pub fn store(&self) -> &AnyStore {
        &self.inner.store
    }

    /// Number of live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.inner
            .fanout
            .lock()
            .expect("fanout lock")
            .subscribers
            .len()
    }

    /// The NATS client, when NATS is configured (connected or not).
    pub fn nats_client(&self) -> Option<async_nats::Client> {
        self.inner.nats.as_ref().map(|link| link.client.clone())
    }

    /// The NATS connection's state; `None` when NATS is not configured.
    pub fn nats_status(&self) -> Option<NatsStatus> {
        self.inner.nats.as_ref().map(|link| NatsStatus {
            connected: link.is_connected(),
            healthy: link.is_healthy(),
            url: link.config.redacted_servers(),
        })
    }

    /// The relay's position: (every event of this hub up to this seq is in JetStream,
    /// the log's head as the relay last saw it). `None` when the relay is off.
    pub fn relay_position(&self) -> Option<(Seq, Seq)> {
        let link = self.inner.nats.as_ref()?;
        link.config.relay.then(|| {
            let status = &self.inner.relay_status;
            (
                status.cursor.load(Ordering::Relaxed),
                status.head.load(Ordering::Relaxed),
            )
        })
    }

    /// Hubs heard on `hub.global.presence.announced` recently (this one included while
    /// NATS is up).
    pub fn hubs(&self) -> Vec<HubPresence> {
        self.inner.presence.recent()
    }

    /// Seed 002's subject prefixing: `project.created` becomes
    /// `hub.<hub_id>.project.created`; a subject that starts with `hub.` is kept.
    pub fn qualify_subject(&self, subject: &str) -> Result<Subject, herald_core::SubjectError> {
        Subject::new(herald_core::qualify_subject(
            &self.inner.config.hub_id,
            subject,
        ))
    }

    /// An origin for events published on this hub by `service`.
    pub fn origin(&self, service: Option<String>, user: Option<String>) -> Origin {
        Origin {
            hub_id: self.inner.config.hub_id.clone(),
            service,
            user,
        }
    }

    /// A new event on this hub from validated text: a convenience for library users.
    pub fn new_event(&self, subject: &str, payload_json: &str) -> Result<NewEvent, NewEventError> {
        let subject = Subject::new(subject)?;
        let payload = Payload::from_json(payload_json.to_owned())?;
        Ok(NewEvent::new(
            subject,
            payload,
            self.origin(Some("herald".into()), None),
            None,
        ))
    }

    /// Stores one event durably, then delivers it to live subscribers.
    pub async fn publish(&self, event: NewEvent) -> Result<Published, HubError> {
        let mut results = self.publish_batch(vec![event]).await?;
        Ok(results.pop().expect("one result per event"))
    }

    /// Stores several events in one transaction: all of them or none.
    pub async fn publish_batch(
        &self,
        mut events: Vec<NewEvent>,
    ) -> Result<Vec<Published>, HubError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.validate_schemas(&events)?;
        if self.inner.access.has_tenants() {
            for event in events.iter_mut().filter(|e| e.tenant.is_none()) {
                event.tenant = self.inner.access.owner_of(event.subject.as_str());
            }
        }
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError::ShuttingDown);
        }
        let started = std::time::Instant::now();
        // A no-op unless tracing is on; it continues each event's trace context.
        let span = trace::publish_span(&mut events);
        let (reply, answer) = oneshot::channel();
        self.inner
            .publish_tx
            .send(committer::Request::Publish { events, reply })
            .await
            .map_err(|_| HubError::ShuttingDown)?;
        let result = answer.await.map_err(|_| HubError::ShuttingDown)?;
        metrics::histogram!("herald_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if !span.is_none() {
            trace::record_published(&span, &result);
        }
        result
    }

    /// Checks events against every event schema whose pattern matches their subjects
    /// (see [`schemas`]): [`HubError::SchemaViolation`] names the first event and schema
    /// that fail. [`Hub::publish_batch`] calls it; other ways of storing events must too.
    pub fn validate_schemas(&self, events: &[NewEvent]) -> Result<(), HubError> {
        self.inner.schemas.validate(events)
    }

    /// Every event schema, by name. Unchecked: clients go through [`Hub::as_caller`].
    pub fn schemas(&self) -> Vec<schemas::SchemaInfo> {
        self.inner.schemas.list()
    }

    pub fn schema(&self, name: &str) -> Option<schemas::SchemaInfo> {
        self.inner.schemas.get(name)
    }

    /// Creates or replaces an event schema; it applies to publishes on this instance at
    /// once, and on others sharing the store within [`schemas::RELOAD_EVERY`].
    pub async fn put_schema(
        &self,
        name: &str,
        subject_pattern: &str,
        schema: serde_json::Value,
    ) -> Result<(schemas::PutOutcome, schemas::SchemaInfo), schemas::SchemaError> {
        self.inner
            .schemas
            .put(&self.inner.store, name, subject_pattern, schema)
            .await
    }

    /// Deletes an event schema; false when there was none of that name.
    pub async fn delete_schema(&self, name: &str) -> Result<bool, schemas::SchemaError> {
        self.inner.schemas.delete(&self.inner.store, name).await
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Event>, HubError> {
        Ok(self.inner.store.get(id).await?)
    }

    pub async fn query(&self, query: Query) -> Result<Page, HubError> {
        Ok(self.inner.store.query(query).await?)
    }

    /// The seq of the first event committed at or after `since`, minus one: the
    /// position to resume from to see everything since then.
    pub async fn seq_before(&self, since: Timestamp) -> Result<Seq, HubError> {
        let page = self
            .query(Query {
                since: Some(since),
                limit: 1,
                ..Query::default()
            })
            .await?;
        Ok(match page.events.first() {
            Some(event) => event.seq - 1,
            None => page.scanned_to,
        })
    }

    /// Subscribes to events matching `pattern`, starting at `start`. Dropping the
    /// subscription unsubscribes.
    pub async fn subscribe(
        &self,
        pattern: Pattern,
        start: StartAt,
    ) -> Result<Subscription, HubError> {
        let (after, since) = match start {
            StartAt::Live => (None, None),
            StartAt::AfterSeq(seq) => (Some(seq), None),
            StartAt::Since(ts) => (Some(self.seq_before(ts).await?), Some(ts)),
        };
        Ok(Subscription::register(
            self.inner.clone(),
            pattern,
            after,
            since,
        ))
    }

    /// Joins the live queue group `group` on `pattern` (NATS core queue semantics, within
    /// this instance): each event committed from now on that matches goes to one member
    /// of the group, at most once — a member whose queue is full is passed over, and an
    /// event no member can take is dropped (counted in [`HubStats::queue_group_drops`]).
    /// Members with the same group name and pattern form one group.
    pub fn subscribe_queue(&self, pattern: Pattern, group: &str) -> Subscription {
        Subscription::register_member(self.inner.clone(), pattern, group)
    }

    /// Whether the store can be read and written: unhealthy when it cannot be read, when
    /// the last commit failed (see [`write_health::FAILURE_MEMORY`]), or when a commit has
    /// been running longer than [`write_health::STALL_AFTER`].
    pub async fn health(&self) -> StoreHealth {
        let writes = self.write_state();
        let store = match tokio::time::timeout(HEALTH_READ_TIMEOUT, self.inner.store.health()).await
        {
            Ok(store) => store,
            Err(_) => StoreHealth {
                healthy: false,
                detail: format!(
                    "the store did not answer a read within {} s",
                    HEALTH_READ_TIMEOUT.as_secs()
                ),
            },
        };
        if store.healthy && !writes.is_ok() {
            return StoreHealth {
                healthy: false,
                detail: writes.to_string(),
            };
        }
        store
    }

    /// How commits are doing.
    pub fn write_state(&self) -> WriteState {
        self.inner.writes.state()
    }

    /// A token cancelled when shutdown begins (for tasks that should stop with the hub).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Stops taking publishes, commits what is already queued, ends every
    /// subscription, and closes the store. Safe to call more than once.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.services.stop_all(&self.inner).await;
    }

    /// The hub's background services and their states, in the order shutdown stops them.
    pub fn services(&self) -> Vec<ServiceInfo> {
        self.inner.services.list()
    }
}

/// How long a service that follows the log gets to save its cursor and stop.
const STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the hub's services (the rules' consumers start with [`rules::Rules::start`]).
fn start_services(
    inner: &Arc<Inner>,
    publish_rx: mpsc::Receiver<committer::Request>,
    consumer_ops: mpsc::Receiver<consumers::Request>,
    external_commits: Option<watch::Receiver<Seq>>,
) {
    use services::{Ending, Stage};
    let services = &inner.services;
    let hub = inner.clone();
    services.spawn("committer", Stage::Intake, Ending::Drain, |_| {
        committer::run(hub, publish_rx)
    });
    let hub = inner.clone();
    services.spawn("consumer ops", Stage::Intake, Ending::Drain, |_| {
        consumers::run_ops(hub, consumer_ops)
    });
    if let Some(commits) = external_commits {
        let hub = inner.clone();
        services.spawn(
            "fan-out follower",
            Stage::Followers,
            Ending::Within(STOP_WITHIN),
            |_| follower::run(hub, commits),
        );
    }
    if let Some(link) = &inner.nats {
        if link.config.relay {
            let (hub, link) = (inner.clone(), link.clone());
            services.spawn(
                "nats relay",
                Stage::Followers,
                Ending::Within(STOP_WITHIN),
                |status| nats::relay::run(hub, link, status),
            );
        }
        for pattern in &link.config.bridge {
            let (hub, link, pattern) = (inner.clone(), link.clone(), pattern.clone());
            services.spawn(
                format!("nats bridge {pattern}"),
                Stage::Followers,
                Ending::Within(STOP_WITHIN),
                |_| nats::bridge::run(hub, link, pattern),
            );
        }
        if let Some(interval) = link.config.presence_interval {
            let (hub, link) = (inner.clone(), link.clone());
            services.spawn(
                "nats presence",
                Stage::Followers,
                Ending::Within(STOP_WITHIN),
                |_| nats::presence::run(hub, link, interval),
            );
        }
    }
    let hub = inner.clone();
    services.spawn(
        "cursor book",
        Stage::Savers,
        Ending::Within(STOP_WITHIN),
        |_| cursors::run(hub),
    );
    services.then(
        "cursor book",
        Box::new(|inner| {
            Box::pin(async move {
                if let Err(error) = inner.cursors.flush(&inner.store).await {
                    tracing::error!(%error, "Cannot save the rules' cursors at shutdown.");
                }
            })
        }),
    );
    services.add(
        "subscriptions",
        Stage::Subscriptions,
        Box::new(|inner| {
            Box::pin(async move {
                let mut fanout = inner.fanout.lock().expect("fanout lock");
                fanout.subscribers.clear();
                fanout.tree = SubjectTree::new();
            })
        }),
    );
    services.add(
        "store",
        Stage::Store,
        Box::new(|inner| {
            Box::pin(async move {
                if let Err(error) = inner.store.close().await {
                    tracing::error!(%error, "Closing the store failed.");
                }
            })
        }),
    );
}

/// Gives `event` to one member of each queue group in `members` (group, subscriber id,
/// slot): the members take turns by seq, and a full member is passed over. Answers how
/// many groups got it and how many dropped it (every member full).
fn offer_to_groups(
    event: &Arc<Event>,
    mut members: Vec<(&Arc<str>, u64, &subscription::LiveSlot)>,
) -> (u64, u64) {
    // Ids come from the tree in no fixed order: sort for a stable turn order.
    members.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
    let (mut queued, mut dropped) = (0, 0);
    for group in members.chunk_by(|a, b| a.0 == b.0) {
        let first = (event.seq % group.len() as u64) as usize;
        let taken = (0..group.len())
            .map(|k| group[(first + k) % group.len()].2)
            .any(|slot| slot.offer_once(event));
        if taken {
            queued += 1;
        } else {
            dropped += 1;
        }
    }
    (queued, dropped)
}

impl Inner {
    /// Delivers committed events to matching live subscribers, in seq order. Events at
    /// or below the fan-out head were delivered already and are skipped.
    fn fan_out(&self, events: &[Arc<Event>]) {
        let fanout = self.fanout.lock().expect("fanout lock");
        self.fan_out_locked(fanout, events);
    }

    /// Fans out `events` (consecutive seqs, as one commit stored them) only if they
    /// continue the fan-out head with no gap: the head is at least the seq before the
    /// first. Decided under the fan-out lock, so the follower cannot interleave. Returns
    /// false, having done nothing, when events committed before them (by another
    /// instance) are not fanned out yet.
    fn fan_out_if_next(&self, events: &[Arc<Event>]) -> bool {
        let Some(first) = events.first() else {
            return true;
        };
        let fanout = self.fanout.lock().expect("fanout lock");
        if fanout.head.saturating_add(1) < first.seq {
            return false;
        }
        self.fan_out_locked(fanout, events);
        true
    }

    fn fan_out_locked(&self, mut fanout: std::sync::MutexGuard<'_, Fanout>, events: &[Arc<Event>]) {
        let Fanout {
            tree,
            subscribers,
            head,
        } = &mut *fanout;
        let mut delivered = 0u64;
        let mut overflowed = 0u64;
        for event in events {
            if event.seq <= *head {
                continue;
            }
            let mut members: Vec<(&Arc<str>, u64, &subscription::LiveSlot)> = Vec::new();
            tree.for_each_match(event.subject.as_str(), |id| {
                if let Some(slot) = subscribers.get(id) {
                    if let Some(group) = &slot.group {
                        members.push((group, *id, slot));
                        return;
                    }
                    match slot.offer(event) {
                        subscription::Offer::Queued => delivered += 1,
                        subscription::Offer::Overflowed => overflowed += 1,
                        subscription::Offer::Skipped => {}
                    }
                }
            });
            if !members.is_empty() {
                let (queued, dropped) = offer_to_groups(event, members);
                delivered += queued;
                self.stats
                    .queue_group_drops
                    .fetch_add(dropped, Ordering::Relaxed);
            }
            *head = event.seq;
        }
        let head = *head;
        drop(fanout);
        self.committed.send_if_modified(|seen| {
            let moved = head > *seen;
            *seen = (*seen).max(head);
            moved
        });
        self.stats
            .live_deliveries
            .fetch_add(delivered, Ordering::Relaxed);
        self.stats
            .subscriber_overflows
            .fetch_add(overflowed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_kind_and_their_source() {
        let error = HubError::from(StoreError::Unavailable("disk full".into()));
        assert!(matches!(error, HubError::Unavailable(_)), "{error:?}");
        // Said once, not "store unavailable: store unavailable: …".
        assert_eq!(error.to_string(), "store unavailable: disk full");

        let error = HubError::from(StoreError::Corrupt("bad row".into()));
        assert!(matches!(error, HubError::Store(_)), "{error:?}");
        assert_eq!(error.to_string(), "stored data is corrupt: bad row");

        assert!(matches!(
            HubError::from(StoreError::Closed),
            HubError::ShuttingDown
        ));
    }

    #[test]
    fn new_event_says_which_part_is_wrong() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let hub = crate::testing::open_hub(&dir).await;
            assert!(matches!(
                hub.new_event("hub..x", "{}"),
                Err(NewEventError::Subject(_))
            ));
            let error = hub.new_event("hub.local.x", "[1]").unwrap_err();
            assert!(matches!(error, NewEventError::Payload(_)), "{error:?}");
            assert_eq!(
                error.to_string(),
                "payload must be a JSON object, not an array"
            );
            assert!(matches!(
                hub.new_event("hub.local.x", "{"),
                Err(NewEventError::Payload(herald_core::PayloadTextError::Json(
                    _
                )))
            ));
            hub.shutdown().await;
        });
    }
}
