//! The tenants and keys of the store, held in memory so that authenticating a request
//! is a hash and a map lookup; reloaded every [`RELOAD_EVERY`](super::RELOAD_EVERY).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use herald_core::{Pattern, Permissions, Timestamp};
use herald_store::{AccessKind, AccessRecord, AnyStore, Store};
use serde::{Deserialize, Serialize};

use super::{
    secret, valid_tenant_id, AccessConfig, AccessError, AuthMode, Caller, CreatedKey, KeyInfo,
    Limits, NewKey, NewTenant, Tenant, MAX_DESCRIPTION_CHARS, MAX_KEYS, MAX_PATTERNS, MAX_TENANTS,
};

/// A key's `last_used_at` is written back at most this often (it is a hint, not a log).
const LAST_USED_EVERY_MICROS: i64 = 60_000_000;
/// How often the bytes each tenant stores are read from the store again (other
/// instances' publishes), while some storage quota exists.
const USAGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) struct Registry {
    config: AccessConfig,
    /// Rate buckets and stream counts, kept across reloads.
    meters: super::limits::Meters,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Keys used since the last write-back, with when.
    used: Mutex<HashMap<String, Timestamp>>,
    /// Serializes changes on this instance (create, delete, reload).
    changes: tokio::sync::Mutex<()>,
    /// Payload bytes per tenant, for `max_stored_bytes`: read from the store when a quota
    /// exists (and every [`USAGE_REFRESH`]), counted up by this instance's publishes.
    usage: Mutex<Usage>,
}

#[derive(Default)]
struct Usage {
    bytes: HashMap<String, u64>,
    /// Bytes of publishes admitted against a quota and not yet stored or refused.
    reserved: HashMap<String, u64>,
    read_at: Option<std::time::Instant>,
}

#[derive(Default)]
struct Snapshot {
    tenants: BTreeMap<String, Tenant>,
    keys: HashMap<String, KeyEntry>,
}

struct KeyEntry {
    info: KeyInfo,
    hash: String,
    caller: Caller,
}

impl Registry {
    pub(crate) async fn open(config: AccessConfig, store: &AnyStore) -> Result<Self, AccessError> {
        let registry = Registry {
            config,
            meters: Default::default(),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            used: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            usage: Mutex::new(Usage::default()),
        };
        registry.reload(store).await?;
        Ok(registry)
    }

    pub(crate) fn mode(&self) -> AuthMode {
        self.config.mode
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("access snapshot lock").clone()
    }

    /// The caller a request's key text stands for; `None` text is "no key given".
    pub(crate) fn authenticate(&self, key: Option<&str>) -> Result<Caller, AccessError> {
        let Some(text) = key else {
            return match self.config.mode {
                AuthMode::Off => Ok(Caller::trusted()),
                AuthMode::Required => Err(AccessError::Unauthenticated),
            };
        };
        if let Some(id) = secret::parse_id(text) {
            let snapshot = self.snapshot();
            let entry = snapshot
                .keys
                .get(id)
                .filter(|entry| secret::matches(text, &entry.hash))
                .ok_or(AccessError::Unauthenticated)?;
            let now = Timestamp::now();
            if entry.info.expires_at.is_some_and(|at| at <= now) {
                return Err(AccessError::Unauthenticated);
            }
            if let Some(tenant) = &entry.info.tenant {
                if !snapshot.tenants.contains_key(tenant) {
                    return Err(AccessError::Unauthenticated);
                }
            }
            self.used
                .lock()
                .expect("access usage lock")
                .insert(entry.info.id.clone(), now);
            return Ok(entry.caller.clone());
        }
        match &self.config.admin_key_hash {
            Some(hash) if secret::matches(text, hash) => Ok(Caller::environment_admin()),
            _ => Err(AccessError::Unauthenticated),
        }
    }

    /// The tenant whose subject spaces hold `subject`, if any.
    pub(crate) fn owner_of(&self, subject: &str) -> Option<String> {
        let snapshot = self.snapshot();
        if snapshot.tenants.is_empty() {
            return None;
        }
        snapshot
            .tenants
            .values()
            .find(|t| t.subjects.iter().any(|p| p.matches(subject)))
            .map(|t| t.id.clone())
    }

    pub(crate) fn has_tenants(&self) -> bool {
        !self.snapshot().tenants.is_empty()
    }

    /// Reads tenants and keys from the store, and writes back when keys were last used.
    pub(crate) async fn reload(&self, store: &AnyStore) -> Result<(), AccessError> {
        let _changing = self.changes.lock().await;
        self.write_back_usage(store).await?;
        self.reload_locked(store).await?;
        let stale = self
            .usage
            .lock()
            .expect("usage lock")
            .read_at
            .is_some_and(|at| at.elapsed() >= USAGE_REFRESH);
        if stale {
            self.read_usage(store).await?;
        }
        Ok(())
    }

    /// Reads the bytes each tenant stores from the store.
    async fn read_usage(&self, store: &AnyStore) -> Result<(), AccessError> {
        let bytes: HashMap<String, u64> = store.tenant_payload_bytes().await?.into_iter().collect();
        let mut usage = self.usage.lock().expect("usage lock");
        usage.bytes = bytes;
        usage.read_at = Some(std::time::Instant::now());
        Ok(())
    }

    /// The payload bytes `tenant` stores (read from the store the first time a quota is
    /// checked).
    pub(crate) async fn stored_bytes(
        &self,
        store: &AnyStore,
        tenant: &str,
    ) -> Result<u64, AccessError> {
        let known = self.usage.lock().expect("usage lock").read_at.is_some();
        if !known {
            self.read_usage(store).await?;
        }
        Ok(self
            .usage
            .lock()
            .expect("usage lock")
            .bytes
            .get(tenant)
            .copied()
            .unwrap_or(0))
    }

    /// Holds `bytes` of `tenant`'s quota for a publish in flight, so that publishes at
    /// once cannot pass the quota together; `Err(used)` (stored and held) when they do
    /// not fit. Settle the reservation once the publish is answered.
    pub(crate) fn reserve_stored_bytes(
        &self,
        tenant: &str,
        bytes: u64,
        quota: u64,
    ) -> Result<Reservation<'_>, u64> {
        let mut usage = self.usage.lock().expect("usage lock");
        let stored = usage.bytes.get(tenant).copied().unwrap_or(0);
        let held = usage.reserved.entry(tenant.to_owned()).or_default();
        let used = stored.saturating_add(*held);
        if used.saturating_add(bytes) > quota {
            return Err(used);
        }
        *held += bytes;
        Ok(Reservation {
            registry: self,
            tenant: tenant.to_owned(),
            bytes,
            settled: false,
        })
    }

    fn settle(&self, tenant: &str, reserved: u64, stored: u64) {
        let mut usage = self.usage.lock().expect("usage lock");
        if let Some(held) = usage.reserved.get_mut(tenant) {
            *held = held.saturating_sub(reserved);
        }
        if usage.read_at.is_some() && stored > 0 {
            *usage.bytes.entry(tenant.to_owned()).or_default() += stored;
        }
    }

    async fn reload_locked(&self, store: &AnyStore) -> Result<(), AccessError> {
        let mut tenants = BTreeMap::new();
        for record in store.list_access(AccessKind::Tenant).await? {
            match serde_json::from_str::<TenantDoc>(&record.body) {
                Ok(doc) => {
                    if let Some(tenant) = doc.into_tenant() {
                        tenants.insert(tenant.id.clone(), tenant);
                    }
                }
                Err(error) => {
                    tracing::warn!(tenant = %record.id, %error, "skipping an unreadable tenant")
                }
            }
        }
        let mut keys = HashMap::new();
        for record in store.list_access(AccessKind::Key).await? {
            let doc = match serde_json::from_str::<KeyDoc>(&record.body) {
                Ok(doc) => doc,
                Err(error) => {
                    tracing::warn!(key = %record.id, %error, "skipping an unreadable key");
                    continue;
                }
            };
            let hash = doc.hash.clone();
            let Some(info) = doc.into_info() else {
                tracing::warn!(key = %record.id, "skipping a key with unreadable rights");
                continue;
            };
            let tenant = info.tenant.as_ref().and_then(|t| tenants.get(t));
            let enforcer = self.meters.enforcer(
                &info.id,
                &info.limits,
                tenant.map(|t: &Tenant| (t.id.as_str(), &t.limits)),
            );
            let caller = Caller::for_key(&info, tenant, enforcer);
            keys.insert(info.id.clone(), KeyEntry { info, hash, caller });
        }
        *self.snapshot.write().expect("access snapshot lock") =
            Arc::new(Snapshot { tenants, keys });
        Ok(())
    }

    async fn write_back_usage(&self, store: &AnyStore) -> Result<(), AccessError> {
        let used: Vec<(String, Timestamp)> = {
            let mut used = self.used.lock().expect("access usage lock");
            let snapshot = self.snapshot();
            let due: Vec<String> = used
                .iter()
                .filter(|(id, at)| {
                    snapshot.keys.get(*id).is_some_and(|entry| {
                        entry.info.last_used_at.is_none_or(|last| {
                            at.as_micros() - last.as_micros() >= LAST_USED_EVERY_MICROS
                        })
                    })
                })
                .map(|(id, _)| id.clone())
                .collect();
            due.into_iter()
                .filter_map(|id| used.remove_entry(&id))
                .collect()
        };
        let snapshot = self.snapshot();
        for (id, at) in used {
            let Some(entry) = snapshot.keys.get(&id) else {
                continue;
            };
            let mut info = entry.info.clone();
            info.last_used_at = Some(at);
            let body = KeyDoc::new(&info, &entry.hash).to_json();
            // A key deleted meanwhile is simply not updated.
            store
                .replace_access(AccessKind::Key, AccessRecord { id, body })
                .await?;
        }
        Ok(())
    }

    pub(crate) fn tenants(&self) -> Vec<Tenant> {
        self.snapshot().tenants.values().cloned().collect()
    }

    pub(crate) fn tenant(&self, id: &str) -> Option<Tenant> {
        self.snapshot().tenants.get(id).cloned()
    }

    pub(crate) async fn create_tenant(
        &self,
        store: &AnyStore,
        new: NewTenant,
    ) -> Result<Tenant, AccessError> {
        if !valid_tenant_id(&new.id) {
            return Err(AccessError::Invalid {
                field: "id",
                message: format!(
                    "a tenant id is 1 to 63 lowercase ASCII letters, digits, '-' or '_', \
                     starting with a letter or digit (not `rule`); got {:?}",
                    new.id
                ),
            });
        }
        if new.subjects.is_empty() || new.subjects.len() > MAX_PATTERNS {
            return Err(AccessError::Invalid {
                field: "subjects",
                message: format!("a tenant owns 1 to {MAX_PATTERNS} subject patterns"),
            });
        }
        let _changing = self.changes.lock().await;
        self.reload_locked(store).await?;
        let snapshot = self.snapshot();
        if snapshot.tenants.len() >= MAX_TENANTS {
            return Err(AccessError::Conflict(format!(
                "the hub already has {MAX_TENANTS} tenants, the most it keeps"
            )));
        }
        for other in snapshot.tenants.values() {
            if other.id == new.id {
                continue;
            }
            for mine in &new.subjects {
                if let Some(theirs) = other.subjects.iter().find(|p| p.overlaps(mine)) {
                    return Err(AccessError::Conflict(format!(
                        "subject space {mine} overlaps {theirs} of tenant {:?}: tenants' spaces must be apart",
                        other.id
                    )));
                }
            }
        }
        let tenant = Tenant {
            id: new.id,
            subjects: new.subjects,
            limits: new.limits,
            created_at: Timestamp::now(),
        };
        let record = AccessRecord {
            id: tenant.id.clone(),
            body: TenantDoc::from(&tenant).to_json(),
        };
        if !store.insert_access(AccessKind::Tenant, record).await? {
            return Err(AccessError::Conflict(format!(
                "a tenant with id {:?} already exists",
                tenant.id
            )));
        }
        self.reload_locked(store).await?;
        Ok(tenant)
    }

    /// Deletes a tenant and revokes its keys (its events stay in the log).
    pub(crate) async fn delete_tenant(
        &self,
        store: &AnyStore,
        id: &str,
    ) -> Result<bool, AccessError> {
        let _changing = self.changes.lock().await;
        if !store.delete_access(AccessKind::Tenant, id).await? {
            return Ok(false);
        }
        for record in store.list_access(AccessKind::Key).await? {
            let owned = serde_json::from_str::<KeyDoc>(&record.body)
                .is_ok_and(|doc| doc.tenant.as_deref() == Some(id));
            if owned {
                store.delete_access(AccessKind::Key, &record.id).await?;
            }
        }
        self.reload_locked(store).await?;
        Ok(true)
    }

    pub(crate) fn keys(&self) -> Vec<KeyInfo> {
        let mut keys: Vec<KeyInfo> = self
            .snapshot()
            .keys
            .values()
            .map(|e| e.info.clone())
            .collect();
        keys.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        keys
    }

    pub(crate) fn key(&self, id: &str) -> Option<KeyInfo> {
        self.snapshot().keys.get(id).map(|e| e.info.clone())
    }

    pub(crate) async fn create_key(
        &self,
        store: &AnyStore,
        new: NewKey,
    ) -> Result<CreatedKey, AccessError> {
        if let Some(description) = &new.description {
            if description.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(AccessError::Invalid {
                    field: "description",
                    message: format!("at most {MAX_DESCRIPTION_CHARS} characters"),
                });
            }
        }
        for (field, rights) in [("publish", &new.publish), ("subscribe", &new.subscribe)] {
            if let Some(rights) = rights {
                if rights.allow.len() > MAX_PATTERNS / 2 || rights.deny.len() > MAX_PATTERNS / 2 {
                    return Err(AccessError::Invalid {
                        field,
                        message: format!(
                            "at most {} allow and {} deny patterns",
                            MAX_PATTERNS / 2,
                            MAX_PATTERNS / 2
                        ),
                    });
                }
            }
        }
        let _changing = self.changes.lock().await;
        self.reload_locked(store).await?;
        let snapshot = self.snapshot();
        if let Some(tenant) = &new.tenant {
            if !snapshot.tenants.contains_key(tenant) {
                return Err(AccessError::NotFound(format!(
                    "no tenant has the id {tenant:?}"
                )));
            }
        }
        if snapshot.keys.len() >= MAX_KEYS {
            return Err(AccessError::Conflict(format!(
                "the hub already has {MAX_KEYS} keys, the most it keeps"
            )));
        }
        let made = secret::generate();
        let info = KeyInfo {
            id: made.id,
            tenant: new.tenant,
            description: new.description,
            publish: new.publish.unwrap_or_else(Permissions::all),
            subscribe: new.subscribe.unwrap_or_else(Permissions::all),
            admin: new.admin,
            limits: new.limits,
            expires_at: new.expires_at,
            created_at: Timestamp::now(),
            last_used_at: None,
        };
        let record = AccessRecord {
            id: info.id.clone(),
            body: KeyDoc::new(&info, &secret::hash(&made.text)).to_json(),
        };
        if !store.insert_access(AccessKind::Key, record).await? {
            return Err(AccessError::Conflict("key id collision; try again".into()));
        }
        self.reload_locked(store).await?;
        Ok(CreatedKey {
            info,
            secret: made.text,
        })
    }

    pub(crate) async fn delete_key(&self, store: &AnyStore, id: &str) -> Result<bool, AccessError> {
        let _changing = self.changes.lock().await;
        let deleted = store.delete_access(AccessKind::Key, id).await?;
        self.reload_locked(store).await?;
        Ok(deleted)
    }
}

impl Caller {
    /// The admin of `HERALD_ADMIN_KEY`.
    fn environment_admin() -> Caller {
        let info = KeyInfo {
            id: "environment-admin".into(),
            tenant: None,
            description: None,
            publish: Permissions::all(),
            subscribe: Permissions::all(),
            admin: true,
            limits: Limits::default(),
            expires_at: None,
            created_at: Timestamp::from_micros(0),
            last_used_at: None,
        };
        Caller::for_key(&info, None, Default::default())
    }
}

// The stored documents. Field names are part of the on-disk format: add, never rename.

#[derive(Serialize, Deserialize)]
struct TenantDoc {
    id: String,
    subjects: Vec<String>,
    #[serde(default)]
    limits: Limits,
    created_at: i64,
}

impl From<&Tenant> for TenantDoc {
    fn from(t: &Tenant) -> Self {
        TenantDoc {
            id: t.id.clone(),
            subjects: t.subjects.iter().map(|p| p.as_str().to_owned()).collect(),
            limits: t.limits.clone(),
            created_at: t.created_at.as_micros(),
        }
    }
}

impl TenantDoc {
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a tenant serializes")
    }

    fn into_tenant(self) -> Option<Tenant> {
        Some(Tenant {
            subjects: patterns(&self.subjects)?,
            id: self.id,
            limits: self.limits,
            created_at: Timestamp::from_micros(self.created_at),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct RightsDoc {
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

impl From<&Permissions> for RightsDoc {
    fn from(p: &Permissions) -> Self {
        let text = |ps: &[Pattern]| ps.iter().map(|p| p.as_str().to_owned()).collect();
        RightsDoc {
            allow: text(&p.allow),
            deny: text(&p.deny),
        }
    }
}

impl RightsDoc {
    fn into_permissions(self) -> Option<Permissions> {
        Some(Permissions {
            allow: patterns(&self.allow)?,
            deny: patterns(&self.deny)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct KeyDoc {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    publish: RightsDoc,
    subscribe: RightsDoc,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_used_at: Option<i64>,
    /// SHA-256 of the key text ([`secret::hash`]).
    hash: String,
}

impl KeyDoc {
    fn new(info: &KeyInfo, hash: &str) -> Self {
        KeyDoc {
            id: info.id.clone(),
            tenant: info.tenant.clone(),
            description: info.description.clone(),
            publish: (&info.publish).into(),
            subscribe: (&info.subscribe).into(),
            admin: info.admin,
            limits: info.limits.clone(),
            expires_at: info.expires_at.map(Timestamp::as_micros),
            created_at: info.created_at.as_micros(),
            last_used_at: info.last_used_at.map(Timestamp::as_micros),
            hash: hash.to_owned(),
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a key serializes")
    }

    fn into_info(self) -> Option<KeyInfo> {
        Some(KeyInfo {
            id: self.id,
            tenant: self.tenant,
            description: self.description,
            publish: self.publish.into_permissions()?,
            subscribe: self.subscribe.into_permissions()?,
            admin: self.admin,
            limits: self.limits,
            expires_at: self.expires_at.map(Timestamp::from_micros),
            created_at: Timestamp::from_micros(self.created_at),
            last_used_at: self.last_used_at.map(Timestamp::from_micros),
        })
    }
}

fn patterns(texts: &[String]) -> Option<Vec<Pattern>> {
    texts.iter().map(|t| Pattern::parse(t).ok()).collect()
}

/// Creates an admin key directly in a store (`herald keys create --admin`), for the
/// first key of a hub that requires one. Instances pick it up at their next reload.
pub async fn create_admin_key(
    store: &AnyStore,
    description: Option<String>,
) -> Result<CreatedKey, AccessError> {
    let registry = Registry::open(AccessConfig::default(), store).await?;
    registry
        .create_key(
            store,
            NewKey {
                description,
                admin: true,
                ..NewKey::default()
            },
        )
        .await
}

/// Quota bytes held for a publish in flight; released when dropped unsettled (the
/// publish failed: nothing was stored).
pub(crate) struct Reservation<'a> {
    registry: &'a Registry,
    tenant: String,
    bytes: u64,
    settled: bool,
}

impl Reservation<'_> {
    /// The publish is answered: `stored` bytes of it are new in the log.
    pub(crate) fn settle(mut self, stored: u64) {
        self.settled = true;
        self.registry.settle(&self.tenant, self.bytes, stored);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.registry.settle(&self.tenant, self.bytes, 0);
        }
    }
}
