//! The JSON shapes of tenants and API keys (`/api/tenants`, `/api/keys`), and their
//! conversions from and to the hub's access types. A key's secret appears in exactly one
//! shape, [`CreatedKey`], the answer to its creation.

use herald_core::{Pattern, Permissions, Timestamp};
use herald_hub::access;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Limits of a tenant or a key; every one optional (none: only the hub's own limits).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1)]
    pub publish_per_second: Option<u32>,
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1)]
    pub publish_burst: Option<u32>,
    /// Payload bytes per second (up to one second's worth at once).
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1)]
    pub publish_bytes_per_second: Option<u32>,
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections: Option<u32>,
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_streams: Option<u32>,
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_consumers: Option<u32>,
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_rules: Option<u32>,
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_stored_bytes: Option<u64>,
}

/// A whole number of the field's type; JSON Schema's `integer` includes `5.0`, so a
/// number with a zero fraction is taken too.
fn whole<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let value = herald_core::json::non_negative_whole_number(&number)
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number of 0 or more")))?;
    T::try_from(value)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{value} is too large")))
}

impl From<Limits> for access::Limits {
    fn from(l: Limits) -> Self {
        access::Limits {
            publish_per_second: l.publish_per_second,
            publish_burst: l.publish_burst,
            publish_bytes_per_second: l.publish_bytes_per_second,
            max_connections: l.max_connections,
            max_streams: l.max_streams,
            max_consumers: l.max_consumers,
            max_rules: l.max_rules,
            max_stored_bytes: l.max_stored_bytes,
        }
    }
}

impl From<&access::Limits> for Limits {
    fn from(l: &access::Limits) -> Self {
        Limits {
            publish_per_second: l.publish_per_second,
            publish_burst: l.publish_burst,
            publish_bytes_per_second: l.publish_bytes_per_second,
            max_connections: l.max_connections,
            max_streams: l.max_streams,
            max_consumers: l.max_consumers,
            max_rules: l.max_rules,
            max_stored_bytes: l.max_stored_bytes,
        }
    }
}

/// `POST /api/tenants` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "acme", "subjects": ["hub.acme.>"], "limits": {"publish_per_second": 500}}))]
pub struct TenantRequest {
    /// 1 to 63 lowercase letters, digits, `-` or `_` (not `rule`).
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub id: String,
    /// The subject spaces the tenant owns (patterns, apart from every other tenant's
    /// and from the hub's audit log `hub.<hub_id>.audit.>`).
    #[schema(value_type = Vec<crate::wire::schema::AsciiSubjectPattern>, min_items = 1, max_items = 64)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

/// A tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub subjects: Vec<String>,
    pub limits: Limits,
    /// RFC 3339, UTC.
    pub created_at: String,
}

impl From<&access::Tenant> for Tenant {
    fn from(t: &access::Tenant) -> Self {
        Tenant {
            id: t.id.clone(),
            subjects: t.subjects.iter().map(|p| p.as_str().to_owned()).collect(),
            limits: (&t.limits).into(),
            created_at: t.created_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
    pub count: usize,
}

/// Allow and deny subject patterns. A subject is allowed when an allow pattern matches
/// it and no deny pattern does (deny wins; no allow pattern: nothing).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rights {
    #[serde(default)]
    #[schema(value_type = Vec<crate::wire::schema::AsciiSubjectPattern>, max_items = 32)]
    pub allow: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<crate::wire::schema::AsciiSubjectPattern>, max_items = 32)]
    pub deny: Vec<String>,
}

impl From<&Permissions> for Rights {
    fn from(p: &Permissions) -> Self {
        let text = |ps: &[Pattern]| ps.iter().map(|p| p.as_str().to_owned()).collect();
        Rights {
            allow: text(&p.allow),
            deny: text(&p.deny),
        }
    }
}

/// `POST /api/keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "tenant": "acme",
    "description": "orders service",
    "publish": {"allow": ["hub.acme.orders.>"]},
    "subscribe": {"allow": ["hub.acme.>"], "deny": ["hub.acme.audit.>"]}
}))]
pub struct KeyRequest {
    /// The tenant the key belongs to: its rights are narrowed to the tenant's subject
    /// spaces and its events stamped with it. Without one, the key's rights alone apply.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// Absent: the tenant's whole subject spaces (an admin key without tenant: all).
    #[serde(default)]
    pub publish: Option<Rights>,
    #[serde(default)]
    pub subscribe: Option<Rights>,
    /// May manage tenants and keys and read `/metrics`.
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub limits: Limits,
    /// RFC 3339; the key is refused from then on.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A key as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct Key {
    pub id: String,
    pub tenant: Option<String>,
    pub description: Option<String>,
    pub publish: Rights,
    pub subscribe: Rights,
    pub admin: bool,
    pub limits: Limits,
    pub expires_at: Option<String>,
    pub created_at: String,
    /// Updated at most once a minute.
    pub last_used_at: Option<String>,
}

impl From<&access::KeyInfo> for Key {
    fn from(k: &access::KeyInfo) -> Self {
        Key {
            id: k.id.clone(),
            tenant: k.tenant.clone(),
            description: k.description.clone(),
            publish: (&k.publish).into(),
            subscribe: (&k.subscribe).into(),
            admin: k.admin,
            limits: (&k.limits).into(),
            expires_at: k.expires_at.map(Timestamp::to_rfc3339),
            created_at: k.created_at.to_rfc3339(),
            last_used_at: k.last_used_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// The answer to `POST /api/keys`: the key, and its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: Key,
    /// The secret to send as `Authorization: Bearer <key>`. Only a hash is kept: store it
    /// now, it cannot be shown again.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<Key>,
    pub count: usize,
}
