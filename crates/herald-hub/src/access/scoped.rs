//! The hub as one caller sees it: every client-facing call, with that caller's rights
//! checked here and nowhere else.
//!
//! - Publishing needs the publish right on every subject; the event is stamped with the
//!   caller's tenant (or, for callers without one, the tenant owning the subject).
//! - Reading (get, query, streams) sees only what [`Caller::may_see`]: a filter wider
//!   than the rights is narrowed, an event out of reach is "not found".
//! - Consumers and rules live in the caller's tenant namespace; another tenant's are
//!   absent. Their filters must lie within the subscribe rights, a republish target
//!   within the publish rights.

use std::time::Duration;

use herald_core::{Event, ExpectedVersion, NewEvent, Pattern, Seq};
use herald_store::{AggregateKey, AggregatePage, Page, Query, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{AccessError, Caller, CreatedKey, KeyInfo, NewKey, NewTenant, Tenant};
use herald_store::consumer::ConsumerDeadLetter;

use crate::aggregates::{AggregateError, AggregateWritten, DomainEvent};
use crate::consumers::{
    ConsumerConfig, ConsumerError, ConsumerInfo, Message, PutOutcome, Settle, Settled,
};
use crate::retention::{PolicySpec, RetentionError};
use crate::rules::{Action, RuleError, RuleId, RuleInfo, RuleSpec};
use crate::{Hub, HubError, Published, StartAt, Subscription};

/// Store pages a narrowed query reads at most before answering with what it found (the
/// page's `scanned_to` tells the client where to go on).
const QUERY_SCAN_PAGES: usize = 8;

/// The hub as `caller` sees it ([`Hub::as_caller`]).
pub struct Scoped<'a> {
    hub: &'a Hub,
    caller: &'a Caller,
}

impl Hub {
    /// The hub as `caller` sees it: the calls of clients, checked against its rights.
    pub fn as_caller<'a>(&'a self, caller: &'a Caller) -> Scoped<'a> {
        Scoped { hub: self, caller }
    }
}

fn forbidden(message: String) -> HubError {
    HubError::Forbidden(message)
}

fn admin_only(error: AccessError) -> HubError {
    match error {
        AccessError::Hub(error) => error,
        other => HubError::Forbidden(other.to_string()),
    }
}

impl Scoped<'_> {
    pub fn caller(&self) -> &Caller {
        self.caller
    }

    /// Records an administrative action of a caller with a key as an event on
    /// `hub.<hub_id>.audit.<action>` (seed 004's compliance logging): who (key id and
    /// tenant), what, on what. It belongs to no tenant, so only admins read it; it never
    /// holds a secret. Actions without a key (authentication off) are not recorded.
    async fn audit(&self, action: &str, target: serde_json::Value) {
        let Some(key_id) = self.caller.key_id() else {
            return;
        };
        let subject = format!("hub.{}.audit.{action}", self.hub.hub_id());
        let payload = serde_json::json!({
            "action": action,
            "actor": {"key_id": key_id, "tenant": self.caller.tenant()},
            "target": target,
        });
        let event = herald_core::Subject::new(subject).map(|subject| {
            NewEvent::new(
                subject,
                herald_core::Payload::from_value(payload.as_object().expect("an object")),
                self.hub.origin(Some("herald-audit".into()), None),
                None,
            )
        });
        let result = match event {
            Ok(event) => self.hub.publish(event).await.map(|_| ()),
            Err(error) => Err(HubError::Internal(error.to_string())),
        };
        if let Err(error) = result {
            tracing::error!(%error, action, key_id, "Cannot record an audit event.");
        }
    }

    // ---- events ----

    /// Checks the publish right on every subject (all or nothing) and stamps the tenant.
    pub fn admit(&self, events: &mut [NewEvent]) -> Result<(), HubError> {
        for event in events.iter() {
            if !self.caller.may_publish(event.subject.as_str()) {
                return Err(forbidden(format!(
                    "this key may not publish to {}",
                    event.subject
                )));
            }
        }
        let bytes: usize = events.iter().map(|e| e.payload.get().len()).sum();
        self.caller
            .take_publish(events.len(), bytes)
            .map_err(HubError::RateLimited)?;
        // Callers without a tenant: the hub stamps the subject's owner at publish.
        if let Some(tenant) = self.caller.tenant() {
            for event in events.iter_mut() {
                event.tenant = Some(tenant.to_owned());
                // A CloudEvent's id derives from its `(source, id)`; within a tenant, so
                // that two tenants' producers never collide (nor learn of each other).
                if let Some(attributes) = &event.cloudevent {
                    let derived = attributes.herald_id();
                    if event.id == derived {
                        event.id = Uuid::new_v5(&derived, tenant.as_bytes());
                    }
                }
            }
        }
        Ok(())
    }

    pub async fn publish(&self, event: NewEvent) -> Result<Published, HubError> {
        let mut results = self.publish_batch(vec![event]).await?;
        Ok(results.pop().expect("one result per event"))
    }

    pub async fn publish_batch(
        &self,
        mut events: Vec<NewEvent>,
    ) -> Result<Vec<Published>, HubError> {
        self.admit(&mut events)?;
        self.publish_admitted(events).await
    }

    /// Publishes events that passed [`Scoped::admit`]. A tenant's storage quota
    /// (`max_stored_bytes`) is checked here, against the payload bytes its events hold.
    pub async fn publish_admitted(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Published>, HubError> {
        let reservation = self.reserve_quota(&events).await?;
        let published = self.hub.publish_batch(events).await?;
        if let Some(reservation) = reservation {
            let added: u64 = published
                .iter()
                .filter(|p| !p.duplicate)
                .map(|p| p.event.payload.get().len() as u64)
                .sum();
            reservation.settle(added);
        }
        // A duplicate id answers with the stored event: never one the caller may not see.
        if published
            .iter()
            .any(|p| p.duplicate && !self.caller.may_see(&p.event))
        {
            return Err(HubError::Conflict(
                "an event with this id already exists".into(),
            ));
        }
        Ok(published)
    }

    /// Checks a tenant's storage quota (`max_stored_bytes`) for `events`, against the
    /// payload bytes its events hold plus those of its publishes in flight on this
    /// instance, and holds their bytes until the publish is answered (settle the
    /// reservation with what was stored; dropped, it is released). Instances sharing a
    /// store see each other's usage within the usage refresh.
    async fn reserve_quota(
        &self,
        events: &[NewEvent],
    ) -> Result<Option<super::registry::Reservation<'_>>, HubError> {
        let Some((tenant, quota)) = self
            .caller
            .tenant()
            .and_then(|tenant| Some((tenant, self.caller.stored_bytes_limit()?)))
        else {
            return Ok(None);
        };
        let registry = &self.hub.inner.access;
        // Reads the usage from the store first when this instance has not yet.
        registry
            .stored_bytes(&self.hub.inner.store, tenant)
            .await
            .map_err(|error| match error {
                AccessError::Hub(error) => error,
                other => HubError::Internal(other.to_string()),
            })?;
        let adding: u64 = events.iter().map(|e| e.payload.get().len() as u64).sum();
        registry
            .reserve_stored_bytes(tenant, adding, quota)
            .map(Some)
            .map_err(|used| {
                HubError::LimitReached(format!(
                    "this tenant's events hold {used} bytes of payload (stored and being \
                     stored); its quota is {quota} (max_stored_bytes)"
                ))
            })
    }

    // ---- retention ----

    /// The retention policies (admin keys only), as the store keeps them now.
    pub async fn retention(&self) -> Result<Vec<PolicySpec>, HubError> {
        self.caller.require_admin().map_err(admin_only)?;
        self.hub
            .inner
            .retention
            .reload(&self.hub.inner.store)
            .await?;
        Ok(self.hub.retention())
    }

    /// Replaces the retention policies (admin keys only).
    pub async fn set_retention(&self, specs: Vec<PolicySpec>) -> Result<(), RetentionError> {
        self.caller.require_admin().map_err(admin_only)?;
        let target = serde_json::to_value(&specs).unwrap_or_default();
        self.hub.set_retention(specs).await?;
        self.audit("retention.replaced", target).await;
        Ok(())
    }

    // ---- aggregates ----

    /// The caller's aggregate of that type and id: in its tenant's namespace.
    fn aggregate_key(&self, aggregate_type: &str, aggregate_id: &str) -> AggregateKey {
        AggregateKey {
            tenant: self.caller.tenant().map(str::to_owned),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
        }
    }

    /// Appends to one of the caller's aggregates. Needs the publish right on every
    /// event's subject, and counts against the publish rates and the storage quota as a
    /// publish does. A caller without a tenant may not write into a tenant's subjects:
    /// the aggregate would be outside that tenant's namespace.
    pub async fn append_to_aggregate(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        expected: ExpectedVersion,
        events: Vec<DomainEvent>,
        service: Option<String>,
    ) -> Result<AggregateWritten, AggregateError> {
        let key = self.aggregate_key(aggregate_type, aggregate_id);
        let mut events = self.hub.aggregate_events(&key, events, service)?;
        if self.caller.tenant().is_none() && self.hub.inner.access.has_tenants() {
            for event in &events {
                if let Some(owner) = self.hub.inner.access.owner_of(event.subject.as_str()) {
                    return Err(forbidden(format!(
                        "{} is in tenant {owner}'s subjects: append to its aggregates with one of its keys",
                        event.subject
                    ))
                    .into());
                }
            }
        }
        self.admit(&mut events)?;
        let reservation = self.reserve_quota(&events).await?;
        let written = self.hub.append_to_aggregate(key, expected, events).await?;
        if let Some(reservation) = reservation {
            let added: u64 = written
                .events
                .iter()
                .filter(|a| !a.is_duplicate())
                .map(|a| a.event().payload.get().len() as u64)
                .sum();
            reservation.settle(added);
        }
        Ok(written)
    }

    /// One of the caller's aggregates, its events narrowed to what the caller may see.
    pub async fn load_aggregate(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<AggregatePage, AggregateError> {
        let mut page = self
            .hub
            .load_aggregate(
                self.aggregate_key(aggregate_type, aggregate_id),
                from_version,
                limit,
            )
            .await?;
        page.events.retain(|e| self.caller.may_see(e));
        Ok(page)
    }

    /// The aggregate's event at `version`, if it has one.
    async fn event_at_version(
        &self,
        key: AggregateKey,
        version: u64,
    ) -> Result<Option<Event>, AggregateError> {
        let page = self.hub.load_aggregate(key, version, 1).await?;
        Ok(page
            .events
            .into_iter()
            .next()
            .filter(|e| e.aggregate.as_deref().is_some_and(|a| a.version == version)))
    }

    /// Saves a snapshot of one of the caller's aggregates. Rights follow the aggregate's
    /// events: it needs the publish right on the subject of the event at `version` (the
    /// state a snapshot holds comes from the events up to it).
    pub async fn save_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        version: u64,
        state: herald_core::Payload,
    ) -> Result<(), AggregateError> {
        let key = self.aggregate_key(aggregate_type, aggregate_id);
        if let Some(event) = self.event_at_version(key.clone(), version).await? {
            if !self.caller.may_publish(event.subject.as_str()) {
                return Err(forbidden(format!(
                    "this key may not publish to {}, so not snapshot its aggregate",
                    event.subject
                ))
                .into());
            }
        }
        self.hub.save_snapshot(key, version, state).await
    }

    /// The latest snapshot of one of the caller's aggregates: `None` also when the
    /// caller may not see the aggregate's event at the snapshot's version.
    pub async fn load_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<herald_store::Snapshot>, AggregateError> {
        let key = self.aggregate_key(aggregate_type, aggregate_id);
        let Some(snapshot) = self.hub.load_snapshot(key.clone()).await? else {
            return Ok(None);
        };
        match self.event_at_version(key, snapshot.version).await {
            Ok(Some(event)) if !self.caller.may_see(&event) => Ok(None),
            Ok(_) | Err(AggregateError::NotFound) => Ok(Some(snapshot)),
            Err(error) => Err(error),
        }
    }

    /// An event by id; `None` also when the caller may not see it.
    pub async fn get(&self, id: Uuid) -> Result<Option<Event>, HubError> {
        Ok(self.hub.get(id).await?.filter(|e| self.caller.may_see(e)))
    }

    /// A query narrowed to what the caller may see.
    pub async fn query(&self, query: Query) -> Result<Page, HubError> {
        let wanted = query.subject.clone().unwrap_or_else(Pattern::all);
        let narrowed = self.caller.subscribe_rights().narrow(&wanted);
        let mut query = query;
        match narrowed.as_slice() {
            [] => {
                return Ok(Page {
                    events: Vec::new(),
                    scanned_to: self.hub.inner.store.head().await?,
                })
            }
            // One pattern (a tenant's usual case): the store filters by it.
            [one] => query.subject = Some(one.clone()),
            // Several: the store filters by the wanted pattern, the rest here.
            _ => {}
        }
        let limit = query.limit.max(1);
        let mut events = Vec::new();
        let mut scanned_to = query.after_seq;
        for _ in 0..QUERY_SCAN_PAGES {
            let page = self.hub.query(query.clone()).await?;
            let full = page.events.len() >= limit;
            for event in page.events {
                scanned_to = event.seq;
                if self.caller.may_see(&event) {
                    events.push(event);
                    if events.len() == limit {
                        return Ok(Page { events, scanned_to });
                    }
                }
            }
            scanned_to = scanned_to.max(page.scanned_to);
            if !full {
                break;
            }
            query.after_seq = scanned_to;
        }
        Ok(Page { events, scanned_to })
    }

    /// The log's head (the seq of the newest event, seen or not).
    pub async fn head(&self) -> Result<Seq, HubError> {
        Ok(self.hub.inner.store.head().await?)
    }

    pub async fn seq_before(&self, since: herald_core::Timestamp) -> Result<Seq, HubError> {
        self.hub.seq_before(since).await
    }

    /// A subscription narrowed to what the caller may see. A pattern that can match
    /// nothing allowed is refused rather than left silent.
    pub async fn subscribe(
        &self,
        pattern: Pattern,
        start: StartAt,
    ) -> Result<Subscription, HubError> {
        let pattern = self.narrow_stream(pattern)?;
        Ok(self
            .hub
            .subscribe(pattern, start)
            .await?
            .visible_to(self.caller.clone()))
    }

    /// A live queue group, named in the caller's namespace.
    pub fn subscribe_queue(&self, pattern: Pattern, group: &str) -> Result<Subscription, HubError> {
        let pattern = self.narrow_stream(pattern)?;
        Ok(self
            .hub
            .subscribe_queue(pattern, &self.caller.scoped_name(group))
            .visible_to(self.caller.clone()))
    }

    fn narrow_stream(&self, pattern: Pattern) -> Result<Pattern, HubError> {
        let narrowed = self.caller.subscribe_rights().narrow(&pattern);
        match narrowed.as_slice() {
            [] => Err(forbidden(format!(
                "this key may not subscribe to {pattern}"
            ))),
            [one] => Ok(one.clone()),
            _ => Ok(pattern),
        }
    }

    /// Hubs heard on the bus: presence is an event stream like any other, so it needs the
    /// subscribe right on its subject.
    pub fn hubs(&self) -> Result<Vec<crate::HubPresence>, HubError> {
        let subject = crate::nats::PRESENCE_SUBJECT;
        if !self.caller.subscribe_rights().allows(subject) {
            return Err(forbidden(format!(
                "this key may not subscribe to {subject}, where hubs announce themselves"
            )));
        }
        Ok(self.hub.hubs())
    }

    // ---- consumers ----

    fn check_filters(&self, config: &ConsumerConfig) -> Result<(), ConsumerError> {
        for filter in &config.filter_subjects {
            if !self.caller.subscribe_rights().allows_all_of(filter) {
                return Err(forbidden(format!(
                    "filter {filter} reaches beyond this key's subscribe rights"
                ))
                .into());
            }
        }
        Ok(())
    }

    fn own_info(&self, mut info: ConsumerInfo) -> ConsumerInfo {
        if let Some(name) = self.caller.unscoped_name(&info.name) {
            info.name = name.to_owned();
        }
        info
    }

    fn not_found(&self, error: ConsumerError, name: &str) -> ConsumerError {
        match error {
            ConsumerError::NotFound(_) => ConsumerError::NotFound(name.to_owned()),
            ConsumerError::Conflict { field, .. } => ConsumerError::Conflict {
                name: name.to_owned(),
                field,
            },
            ConsumerError::Contended(_) => ConsumerError::Contended(name.to_owned()),
            other => other,
        }
    }

    pub async fn put_consumer(
        &self,
        name: &str,
        config: ConsumerConfig,
    ) -> Result<(PutOutcome, ConsumerInfo), ConsumerError> {
        crate::consumers::check_name(name)?;
        self.check_filters(&config)?;
        let scoped = self.caller.scoped_name(name);
        if let Some(max) = self.caller.count_limit(|l| l.max_consumers) {
            let store = &self.hub.inner.store;
            if store.consumer(&scoped).await?.is_none() {
                let own = store
                    .consumers()
                    .await?
                    .iter()
                    .filter(|c| self.caller.unscoped_name(&c.name).is_some())
                    .count();
                if own >= max as usize {
                    return Err(HubError::LimitReached(format!(
                        "this tenant already has {max} consumers, the most it may"
                    ))
                    .into());
                }
            }
        }
        match self.hub.put_consumer(&scoped, config).await {
            Ok((outcome, info)) => {
                if outcome != PutOutcome::Unchanged {
                    let action = if outcome == PutOutcome::Created {
                        "consumer.created"
                    } else {
                        "consumer.updated"
                    };
                    self.audit(action, serde_json::json!({"consumer": scoped}))
                        .await;
                }
                Ok((outcome, self.own_info(info)))
            }
            Err(error) => Err(self.not_found(error, name)),
        }
    }

    pub async fn consumer_info(&self, name: &str) -> Result<ConsumerInfo, ConsumerError> {
        let scoped = self.caller.scoped_name(name);
        match self.hub.consumer_info(&scoped).await {
            Ok(info) => Ok(self.own_info(info)),
            Err(error) => Err(self.not_found(error, name)),
        }
    }

    pub async fn list_consumers(&self) -> Result<Vec<ConsumerInfo>, ConsumerError> {
        Ok(self
            .hub
            .list_consumers()
            .await?
            .into_iter()
            .filter(|info| self.caller.unscoped_name(&info.name).is_some())
            .map(|info| self.own_info(info))
            .collect())
    }

    pub async fn delete_consumer(&self, name: &str) -> Result<(), ConsumerError> {
        let scoped = self.caller.scoped_name(name);
        self.hub
            .delete_consumer(&scoped)
            .await
            .map_err(|e| self.not_found(e, name))?;
        self.audit("consumer.deleted", serde_json::json!({"consumer": scoped}))
            .await;
        Ok(())
    }

    pub async fn fetch_until(
        &self,
        name: &str,
        batch: usize,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Vec<Message>, ConsumerError> {
        let scoped = self.caller.scoped_name(name);
        self.hub
            .fetch_until(&scoped, batch, wait, stop)
            .await
            .map_err(|e| self.not_found(e, name))
    }

    pub async fn fetch(
        &self,
        name: &str,
        batch: usize,
        wait: Duration,
    ) -> Result<Vec<Message>, ConsumerError> {
        self.fetch_until(name, batch, wait, &CancellationToken::new())
            .await
    }

    pub async fn settle(
        &self,
        name: &str,
        ack_ids: &[String],
        how: Settle,
    ) -> Result<Settled, ConsumerError> {
        let scoped = self.caller.scoped_name(name);
        self.hub
            .settle(&scoped, ack_ids, how)
            .await
            .map_err(|e| self.not_found(e, name))
    }

    pub async fn consumer_dead_letters(
        &self,
        name: &str,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Vec<ConsumerDeadLetter>, ConsumerError> {
        let scoped = self.caller.scoped_name(name);
        self.hub
            .consumer_dead_letters(&scoped, after_seq, limit)
            .await
            .map_err(|e| self.not_found(e, name))
    }

    pub async fn redrive(&self, name: &str, seqs: Option<Vec<Seq>>) -> Result<u64, ConsumerError> {
        let scoped = self.caller.scoped_name(name);
        let redriven = self
            .hub
            .redrive(&scoped, seqs)
            .await
            .map_err(|e| self.not_found(e, name))?;
        self.audit(
            "consumer.redriven",
            serde_json::json!({"consumer": scoped, "count": redriven}),
        )
        .await;
        Ok(redriven)
    }

    pub async fn discard_dead_letter(&self, name: &str, seq: Seq) -> Result<bool, ConsumerError> {
        let scoped = self.caller.scoped_name(name);
        self.hub
            .discard_dead_letter(&scoped, seq)
            .await
            .map_err(|e| self.not_found(e, name))
    }

    // ---- rules ----

    fn scoped_rule_id(&self, id: &str) -> Result<RuleId, RuleError> {
        RuleId::new(self.caller.scoped_name(id))
    }

    fn own_rule(&self, mut info: RuleInfo) -> Option<RuleInfo> {
        let own = self.caller.unscoped_name(info.id.as_str())?.to_owned();
        if self.caller.tenant().is_some() {
            info.id = RuleId::new(own).ok()?;
        }
        Some(info)
    }

    pub fn routing_rules(&self) -> Vec<RuleInfo> {
        self.hub
            .routing_rules()
            .into_iter()
            .filter_map(|info| self.own_rule(info))
            .collect()
    }

    pub fn routing_rule(&self, id: &str) -> Option<RuleInfo> {
        let scoped = self.caller.scoped_name(id);
        self.hub
            .routing_rule(&scoped)
            .and_then(|info| self.own_rule(info))
    }

    pub async fn add_rule(&self, mut spec: RuleSpec) -> Result<RuleInfo, RuleError> {
        if !self
            .caller
            .subscribe_rights()
            .allows_all_of(&spec.subject_pattern)
        {
            return Err(forbidden(format!(
                "subject pattern {} reaches beyond this key's subscribe rights",
                spec.subject_pattern
            ))
            .into());
        }
        if let Action::Republish { subject } = &spec.action {
            if !self.caller.may_publish(subject.as_str()) {
                return Err(forbidden(format!("this key may not publish to {subject}")).into());
            }
        }
        if let Some(max) = self.caller.count_limit(|l| l.max_rules) {
            if self.routing_rules().len() >= max as usize {
                return Err(HubError::LimitReached(format!(
                    "this tenant already has {max} rules, the most it may"
                ))
                .into());
            }
        }
        if self.caller.tenant().is_some() {
            let id = match &spec.id {
                Some(id) => id.as_str().to_owned(),
                None => RuleId::generate().as_str().to_owned(),
            };
            spec.id = Some(self.scoped_rule_id(&id)?);
        }
        match self.hub.add_rule(spec).await {
            Ok(info) => {
                self.audit(
                    "rule.created",
                    serde_json::json!({"rule": info.id.as_str()}),
                )
                .await;
                self.own_rule(info)
                    .ok_or_else(|| HubError::Internal("a rule outside its namespace".into()).into())
            }
            Err(RuleError::Exists(id)) => {
                let own = self
                    .caller
                    .unscoped_name(id.as_str())
                    .and_then(|own| RuleId::new(own).ok());
                Err(RuleError::Exists(own.unwrap_or(id)))
            }
            Err(error) => Err(error),
        }
    }

    pub async fn remove_rule(&self, id: &str) -> Result<bool, HubError> {
        let scoped = self.caller.scoped_name(id);
        let removed = self.hub.remove_rule(&scoped).await?;
        if removed {
            self.audit("rule.deleted", serde_json::json!({"rule": scoped}))
                .await;
        }
        Ok(removed)
    }

    pub async fn rule_dead_letters(
        &self,
        id: &str,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Option<Vec<ConsumerDeadLetter>>, HubError> {
        self.hub
            .rule_dead_letters(&self.caller.scoped_name(id), after_seq, limit)
            .await
    }

    pub async fn redrive_rule(
        &self,
        id: &str,
        seqs: Option<Vec<Seq>>,
    ) -> Result<Option<u64>, HubError> {
        let scoped = self.caller.scoped_name(id);
        let redriven = self.hub.redrive_rule(&scoped, seqs).await?;
        if let Some(count) = redriven {
            self.audit(
                "rule.redriven",
                serde_json::json!({"rule": scoped, "count": count}),
            )
            .await;
        }
        Ok(redriven)
    }

    pub async fn discard_rule_dead_letter(
        &self,
        id: &str,
        seq: Seq,
    ) -> Result<Option<bool>, HubError> {
        self.hub
            .discard_rule_dead_letter(&self.caller.scoped_name(id), seq)
            .await
    }

    // ---- event schemas (admin only) ----

    fn require_schema_admin(&self) -> Result<(), crate::schemas::SchemaError> {
        self.caller
            .require_admin()
            .map_err(|error| crate::schemas::SchemaError::Forbidden(error.to_string()))
    }

    pub fn schemas(&self) -> Result<Vec<crate::schemas::SchemaInfo>, crate::schemas::SchemaError> {
        self.require_schema_admin()?;
        Ok(self.hub.schemas())
    }

    pub fn schema(
        &self,
        name: &str,
    ) -> Result<crate::schemas::SchemaInfo, crate::schemas::SchemaError> {
        self.require_schema_admin()?;
        self.hub
            .schema(name)
            .ok_or_else(|| crate::schemas::SchemaError::NotFound(name.to_owned()))
    }

    pub async fn put_schema(
        &self,
        name: &str,
        subject_pattern: &str,
        schema: serde_json::Value,
    ) -> Result<(crate::schemas::PutOutcome, crate::schemas::SchemaInfo), crate::schemas::SchemaError>
    {
        self.require_schema_admin()?;
        let (outcome, info) = self.hub.put_schema(name, subject_pattern, schema).await?;
        let action = match outcome {
            crate::schemas::PutOutcome::Created => "schema.created",
            crate::schemas::PutOutcome::Replaced => "schema.replaced",
        };
        self.audit(
            action,
            serde_json::json!({"schema": name, "subject_pattern": info.subject_pattern.as_str()}),
        )
        .await;
        Ok((outcome, info))
    }

    pub async fn delete_schema(&self, name: &str) -> Result<(), crate::schemas::SchemaError> {
        self.require_schema_admin()?;
        if !self.hub.delete_schema(name).await? {
            return Err(crate::schemas::SchemaError::NotFound(name.to_owned()));
        }
        self.audit("schema.deleted", serde_json::json!({"schema": name}))
            .await;
        Ok(())
    }

    // ---- tenants and keys (admin only) ----

    pub fn tenants(&self) -> Result<Vec<Tenant>, AccessError> {
        self.caller.require_admin()?;
        Ok(self.hub.inner.access.tenants())
    }

    pub fn tenant(&self, id: &str) -> Result<Option<Tenant>, AccessError> {
        self.caller.require_admin()?;
        Ok(self.hub.inner.access.tenant(id))
    }

    pub async fn create_tenant(&self, new: NewTenant) -> Result<Tenant, AccessError> {
        self.caller.require_admin()?;
        let audit_space = Pattern::parse(&format!("hub.{}.audit.>", self.hub.hub_id()))
            .map_err(|e| HubError::Internal(e.to_string()))?;
        if let Some(clash) = new.subjects.iter().find(|p| p.overlaps(&audit_space)) {
            return Err(AccessError::Conflict(format!(
                "subject space {clash} overlaps {audit_space}, the hub's audit log"
            )));
        }
        let tenant = self
            .hub
            .inner
            .access
            .create_tenant(&self.hub.inner.store, new)
            .await?;
        let subjects: Vec<&str> = tenant.subjects.iter().map(Pattern::as_str).collect();
        self.audit(
            "tenant.created",
            serde_json::json!({"tenant": tenant.id, "subjects": subjects}),
        )
        .await;
        Ok(tenant)
    }

    pub async fn delete_tenant(&self, id: &str) -> Result<bool, AccessError> {
        self.caller.require_admin()?;
        let deleted = self
            .hub
            .inner
            .access
            .delete_tenant(&self.hub.inner.store, id)
            .await?;
        if deleted {
            self.audit("tenant.deleted", serde_json::json!({"tenant": id}))
                .await;
        }
        Ok(deleted)
    }

    pub fn keys(&self) -> Result<Vec<KeyInfo>, AccessError> {
        self.caller.require_admin()?;
        Ok(self.hub.inner.access.keys())
    }

    pub fn key(&self, id: &str) -> Result<Option<KeyInfo>, AccessError> {
        self.caller.require_admin()?;
        Ok(self.hub.inner.access.key(id))
    }

    pub async fn create_key(&self, new: NewKey) -> Result<CreatedKey, AccessError> {
        self.caller.require_admin()?;
        let made = self
            .hub
            .inner
            .access
            .create_key(&self.hub.inner.store, new)
            .await?;
        self.audit(
            "key.created",
            serde_json::json!({"key_id": made.info.id, "tenant": made.info.tenant,
                               "admin": made.info.admin}),
        )
        .await;
        Ok(made)
    }

    pub async fn delete_key(&self, id: &str) -> Result<bool, AccessError> {
        self.caller.require_admin()?;
        let deleted = self
            .hub
            .inner
            .access
            .delete_key(&self.hub.inner.store, id)
            .await?;
        if deleted {
            self.audit("key.revoked", serde_json::json!({"key_id": id}))
                .await;
        }
        Ok(deleted)
    }
}
