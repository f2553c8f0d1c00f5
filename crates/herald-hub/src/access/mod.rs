//! Who may do what: tenants, API keys, and the [`Caller`] every client call carries.
//!
//! - A **tenant** owns subject spaces (`hub.acme.>`). Every event published by one of
//!   its keys is stamped with it, and its keys' rights are narrowed to its spaces.
//! - A **key** is a secret ([`secret`]) with publish and subscribe rights (allow and
//!   deny patterns, deny wins), optionally admin, optionally expiring.
//! - A [`Caller`] is what a request authenticated as. Client calls go through
//!   [`Hub::as_caller`](crate::Hub::as_caller), which checks the caller's rights in one
//!   place ([`Scoped`]); the hub's own methods stay unchecked for trusted, in-process use.
//!
//! Tenants and keys live in the store; each instance keeps a snapshot in memory and
//! reloads it every [`RELOAD_EVERY`], so a key revoked on one instance is refused by
//! every instance sharing the store within that time.

mod limits;
mod registry;
mod scoped;
pub mod secret;

use std::sync::Arc;
use std::time::Duration;

use herald_core::{Event, Pattern, Permissions, Timestamp};

pub use limits::{RateLimited, StreamSlot};
pub use registry::create_admin_key;
pub(crate) use registry::Registry;
pub use scoped::Scoped;

/// How often each instance reloads tenants and keys from the store.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Most tenants, keys, and subject patterns per tenant or right: explicit bounds.
pub const MAX_TENANTS: usize = 1000;
pub const MAX_KEYS: usize = 10_000;
pub const MAX_PATTERNS: usize = 64;
/// Longest key description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// The tenant ids [`valid_tenant_id`] accepts (for API documents).
pub const TENANT_ID_REGEX: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";

/// Whether `id` can name a tenant: 1 to 63 lowercase ASCII letters, digits, `-` or `_`,
/// starting with a letter or digit; `rule` is reserved (the routing rules' consumers).
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id != "rule"
        && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether a request must carry a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Requests without a key act with every right (a laptop, the seeds' examples). A key,
    /// when given, is still checked and used.
    #[default]
    Off,
    /// Every request but health needs a valid key.
    Required,
}

/// Settings of access control.
#[derive(Clone, Default)]
pub struct AccessConfig {
    pub mode: AuthMode,
    /// SHA-256 ([`secret::hash`]) of a secret that acts as an admin key (from
    /// `HERALD_ADMIN_KEY`); only the hash is kept.
    pub admin_key_hash: Option<String>,
}

impl std::fmt::Debug for AccessConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessConfig")
            .field("mode", &self.mode)
            .field("admin_key", &self.admin_key_hash.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Limits of a tenant or a key (a key's apply on top of its tenant's). `None`: no limit
/// beyond the hub's own. Stored as is in tenants' and keys' documents: field names are
/// part of the on-disk format.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_per_second: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_burst: Option<u32>,
    /// Payload bytes per second (a bucket holding one second's worth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_bytes_per_second: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consumers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rules: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_stored_bytes: Option<u64>,
}

/// A tenant: an owner of subject spaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub subjects: Vec<Pattern>,
    pub limits: Limits,
    pub created_at: Timestamp,
}

/// A tenant to create.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub id: String,
    pub subjects: Vec<Pattern>,
    pub limits: Limits,
}

/// A key as listed: never its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: Option<String>,
    pub description: Option<String>,
    pub publish: Permissions,
    pub subscribe: Permissions,
    pub admin: bool,
    pub limits: Limits,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// A key to create. Rights left out are the tenant's whole subject spaces (for a key
/// without a tenant: every subject).
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub tenant: Option<String>,
    pub description: Option<String>,
    pub publish: Option<Permissions>,
    pub subscribe: Option<Permissions>,
    pub admin: bool,
    pub limits: Limits,
    pub expires_at: Option<Timestamp>,
}

/// A key just made: the only time its secret is seen.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub info: KeyInfo,
    pub secret: String,
}

/// Why an access call was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// No key, or one that is malformed, unknown, revoked or expired. Which of these is
    /// not said, so that probing learns nothing.
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthenticated,
    /// The key is valid but lacks the right; the message names the key's own request only.
    #[error("{0}")]
    Forbidden(String),
    #[error("`{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Hub(#[from] crate::HubError),
}

impl From<herald_store::StoreError> for AccessError {
    fn from(error: herald_store::StoreError) -> Self {
        AccessError::Hub(error.into())
    }
}

/// Who is asking: what a request authenticated as. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Caller(Arc<CallerInner>);

#[derive(Debug)]
struct CallerInner {
    key_id: Option<String>,
    tenant: Option<String>,
    admin: bool,
    /// Already narrowed to the tenant's subject spaces.
    publish: Permissions,
    subscribe: Permissions,
    limits: Limits,
    tenant_limits: Option<Limits>,
    enforcer: limits::Enforcer,
}

impl Caller {
    /// Every right, no tenant: requests when authentication is off, and in-process use.
    pub fn trusted() -> Caller {
        Caller(Arc::new(CallerInner {
            key_id: None,
            tenant: None,
            admin: true,
            publish: Permissions::all(),
            subscribe: Permissions::all(),
            limits: Limits::default(),
            tenant_limits: None,
            enforcer: limits::Enforcer::default(),
        }))
    }

    /// No right at all (a request that skipped authentication by mistake).
    pub fn nobody() -> Caller {
        Caller(Arc::new(CallerInner {
            key_id: None,
            tenant: None,
            admin: false,
            publish: Permissions::none(),
            subscribe: Permissions::none(),
            limits: Limits::default(),
            tenant_limits: None,
            enforcer: limits::Enforcer::default(),
        }))
    }

    fn for_key(info: &KeyInfo, tenant: Option<&Tenant>, enforcer: limits::Enforcer) -> Caller {
        let narrow = |rights: &Permissions| match tenant {
            Some(tenant) => rights.within(&tenant.subjects),
            None => rights.clone(),
        };
        Caller(Arc::new(CallerInner {
            key_id: Some(info.id.clone()),
            tenant: info.tenant.clone(),
            admin: info.admin,
            publish: narrow(&info.publish),
            subscribe: narrow(&info.subscribe),
            limits: info.limits.clone(),
            tenant_limits: tenant.map(|t| t.limits.clone()),
            enforcer,
        }))
    }

    /// Takes `n` events and `bytes` payload bytes from the key's and tenant's publish
    /// rates.
    pub fn take_publish(&self, n: usize, bytes: usize) -> Result<(), RateLimited> {
        self.0.enforcer.take_publish(
            u32::try_from(n).unwrap_or(u32::MAX),
            u32::try_from(bytes).unwrap_or(u32::MAX),
        )
    }

    /// Counts one more connection using this key against the key's and tenant's
    /// `max_connections`; the slot gives it back when dropped (with the connection).
    pub fn open_connection(&self) -> Result<StreamSlot, crate::HubError> {
        self.0.enforcer.open_connection().map_err(|(scope, max)| {
            crate::HubError::LimitReached(format!(
                "this {scope} already has {max} connections open, the most it may"
            ))
        })
    }

    /// Refuses a publish at once while the key's or tenant's bucket is known to be empty
    /// (before its body is parsed); the real check is at admission.
    pub fn publish_refused(&self) -> Result<(), RateLimited> {
        self.0.enforcer.publish_refused()
    }

    /// Counts one more open stream against the key's and tenant's `max_streams`; the
    /// slot gives it back when dropped.
    pub fn open_stream(&self) -> Result<StreamSlot, crate::HubError> {
        self.0.enforcer.open_stream().map_err(|(scope, max)| {
            crate::HubError::LimitReached(format!(
                "this {scope} already has {max} streams open, the most it may"
            ))
        })
    }

    /// The smaller of the key's and the tenant's `max_stored_bytes`.
    pub fn stored_bytes_limit(&self) -> Option<u64> {
        let key = self.0.limits.max_stored_bytes;
        let tenant = self
            .0
            .tenant_limits
            .as_ref()
            .and_then(|l| l.max_stored_bytes);
        match (key, tenant) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The smaller of the key's and the tenant's value of a count limit.
    pub fn count_limit(&self, limit: impl Fn(&Limits) -> Option<u32>) -> Option<u32> {
        let key = limit(&self.0.limits);
        let tenant = self.0.tenant_limits.as_ref().and_then(&limit);
        match (key, tenant) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The id of the key, `None` when no key was used.
    pub fn key_id(&self) -> Option<&str> {
        self.0.key_id.as_deref()
    }

    pub fn tenant(&self) -> Option<&str> {
        self.0.tenant.as_deref()
    }

    pub fn is_admin(&self) -> bool {
        self.0.admin
    }

    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    pub fn publish_rights(&self) -> &Permissions {
        &self.0.publish
    }

    pub fn subscribe_rights(&self) -> &Permissions {
        &self.0.subscribe
    }

    pub fn may_publish(&self, subject: &str) -> bool {
        self.0.publish.allows(subject)
    }

    /// Whether this caller may read `event`: its subject is within the subscribe rights
    /// and, for a tenant's key, the event is that tenant's.
    pub fn may_see(&self, event: &Event) -> bool {
        self.0.subscribe.allows(event.subject.as_str())
            && match &self.0.tenant {
                Some(tenant) => event.tenant.as_deref() == Some(tenant.as_str()),
                None => true,
            }
    }

    /// Refuses a non-admin caller.
    pub fn require_admin(&self) -> Result<(), AccessError> {
        if self.0.admin {
            Ok(())
        } else {
            Err(AccessError::Forbidden(
                "this operation needs an admin key".into(),
            ))
        }
    }

    /// The name the store keeps for this caller's consumer, rule or queue group `name`:
    /// a tenant's names live in their own namespace (`<tenant>:<name>`).
    pub fn scoped_name(&self, name: &str) -> String {
        match &self.0.tenant {
            Some(tenant) => format!("{tenant}:{name}"),
            None => name.to_owned(),
        }
    }

    /// The caller's own name for a stored name: `None` when it is not in the caller's
    /// namespace (another tenant's: as if absent). Callers without a tenant see every
    /// name as stored.
    pub fn unscoped_name<'a>(&self, stored: &'a str) -> Option<&'a str> {
        match &self.0.tenant {
            Some(tenant) => stored
                .strip_prefix(tenant.as_str())
                .and_then(|rest| rest.strip_prefix(':')),
            None => Some(stored),
        }
    }
}
