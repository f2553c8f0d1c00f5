//! Event schemas: JSON Schemas that the payload of every event published on a matching
//! subject must satisfy, checked at ingest on every way in.
//!
//! - A schema has a name, a subject pattern and a JSON Schema document (2020-12 by
//!   default; 2019-09 and draft 7 when its `$schema` says so). It is compiled once, when
//!   it is put or first read from the store; publishing only runs compiled validators.
//! - [`Hub::publish_batch`](crate::Hub::publish_batch) calls [`Schemas::validate`] before
//!   anything reaches the committer, so REST, batches, CloudEvents, JSON-RPC and the NATS
//!   bridge are all checked in this one place: an event must satisfy **every** schema
//!   whose pattern matches its subject, or the whole batch is refused with
//!   [`HubError::SchemaViolation`] and nothing is stored.
//! - An event whose subject matches no schema costs one walk of a [`SubjectTree`]; its
//!   payload is parsed (once) only when some schema matches.
//! - Schemas live in the store (`schemas` table, both backends). Each instance keeps a
//!   snapshot of compiled validators and reloads it every [`RELOAD_EVERY`], recompiling
//!   only documents that changed; a change made on this instance applies at once.
//! - A schema cannot make the server fetch anything: `$ref`s to other documents are
//!   refused when the schema is put (the validator runs offline), and `pattern`s use a
//!   regular-expression engine that runs in linear time (no look-around or
//!   back-references), so no schema can make validation backtrack without bound.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_core::{NewEvent, Pattern, SubjectTree, Timestamp};
use herald_store::{AnyStore, Store, StoredSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::HubError;

/// How often each instance reloads schemas from the store (other instances' changes).
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Most violations reported for one event.
pub const MAX_VIOLATIONS: usize = 20;
/// Longest violation message, in characters (messages may quote the instance).
const MAX_MESSAGE_CHARS: usize = 300;
/// The longest schema name.
pub const MAX_NAME_LEN: usize = 128;
/// The `$schema` values taken, and the draft each names (absent: 2020-12).
const KNOWN_DRAFTS: &[(&str, &str)] = &[
    ("https://json-schema.org/draft/2020-12/schema", "2020-12"),
    ("https://json-schema.org/draft/2019-09/schema", "2019-09"),
    ("http://json-schema.org/draft-07/schema", "draft-07"),
];

/// Bounds of the schema registry: explicit and configurable, like every other.
#[derive(Debug, Clone)]
pub struct SchemaLimits {
    /// Most schemas the hub keeps.
    pub max_schemas: usize,
    /// Largest schema document, in bytes of compact JSON.
    pub max_schema_bytes: usize,
}

impl Default for SchemaLimits {
    fn default() -> Self {
        SchemaLimits {
            max_schemas: 1000,
            max_schema_bytes: 64 * 1024,
        }
    }
}

/// Whether `name` may name a schema: 1 to 128 ASCII letters, digits, `-` and `_` (the
/// rule of consumer names).
pub fn valid_name(name: &str) -> bool {
    crate::consumers::valid_name(name)
}

/// A schema as put and as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaInfo {
    pub name: String,
    pub subject_pattern: Pattern,
    pub schema: Value,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Whether a put made the schema or replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Replaced,
}

/// Why a schema call was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The name, pattern or document is not acceptable; the message says why (for a
    /// document the validator refuses, its own message).
    #[error("`{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no schema is named {0:?}")]
    NotFound(String),
    /// The hub keeps [`SchemaLimits::max_schemas`] already.
    #[error("{0}")]
    LimitReached(String),
    /// The caller is not an admin.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Hub(#[from] HubError),
}

impl From<herald_store::StoreError> for SchemaError {
    fn from(error: herald_store::StoreError) -> Self {
        SchemaError::Hub(error.into())
    }
}

/// Why an event was refused: the first schema it fails (by name) and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// The event's position in its batch (0 for a single publish).
    pub index: usize,
    pub subject: String,
    pub schema: String,
    /// At most [`MAX_VIOLATIONS`] failures, each with its instance path (a JSON Pointer
    /// into the payload; empty for the payload itself).
    pub violations: Vec<Violation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event {} ({}) does not match schema {:?}",
            self.index, self.subject, self.schema
        )?;
        for (i, violation) in self.violations.iter().enumerate() {
            let path = if violation.path.is_empty() {
                "(payload)"
            } else {
                &violation.path
            };
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{path}: {}", violation.message)?;
        }
        Ok(())
    }
}

/// A schema's document as stored (the hub's own format: field names are on disk).
#[derive(Serialize, Deserialize)]
struct SchemaDoc {
    subject_pattern: String,
    schema: Value,
    created_at: String,
    updated_at: String,
}

/// A schema ready to validate with.
struct Compiled {
    info: SchemaInfo,
    /// The stored body, to tell at a reload whether it changed.
    body: String,
    validator: jsonschema::Validator,
}

#[derive(Default)]
struct Snapshot {
    by_name: BTreeMap<String, Arc<Compiled>>,
    tree: SubjectTree<Arc<Compiled>>,
}

impl PartialEq for Compiled {
    /// The tree removes by value; names are unique.
    fn eq(&self, other: &Self) -> bool {
        self.info.name == other.info.name
    }
}

impl Snapshot {
    fn new(by_name: BTreeMap<String, Arc<Compiled>>) -> Self {
        let mut tree = SubjectTree::new();
        for compiled in by_name.values() {
            tree.insert(&compiled.info.subject_pattern, compiled.clone());
        }
        Snapshot { by_name, tree }
    }
}

/// The registry: compiled schemas in a snapshot swapped whole on every change, so that
/// validating takes a read lock only long enough to clone an `Arc`.
pub(crate) struct Schemas {
    limits: SchemaLimits,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serializes changes on this instance (put, delete, reload).
    changes: tokio::sync::Mutex<()>,
}

impl Schemas {
    pub(crate) async fn open(limits: SchemaLimits, store: &AnyStore) -> Result<Self, HubError> {
        let schemas = Schemas {
            limits,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            changes: tokio::sync::Mutex::new(()),
        };
        schemas.reload(store).await?;
        Ok(schemas)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("schema snapshot lock").clone()
    }

    fn swap(&self, snapshot: Snapshot) {
        *self.snapshot.write().expect("schema snapshot lock") = Arc::new(snapshot);
    }

    /// Reads every schema from the store, compiling only those that changed. A stored
    /// schema that no longer compiles (written by a newer version, say) is skipped with a
    /// warning rather than blocking every publish.
    pub(crate) async fn reload(&self, store: &AnyStore) -> Result<(), HubError> {
        let _changing = self.changes.lock().await;
        self.reload_locked(store).await
    }

    async fn reload_locked(&self, store: &AnyStore) -> Result<(), HubError> {
        let stored = store.list_schemas().await?;
        let current = self.snapshot();
        let unchanged = stored.len() == current.by_name.len()
            && stored.iter().all(|s| {
                current
                    .by_name
                    .get(&s.name)
                    .is_some_and(|c| c.body == s.body)
            });
        if unchanged {
            return Ok(());
        }
        let mut by_name = BTreeMap::new();
        for record in stored {
            if let Some(compiled) = current.by_name.get(&record.name) {
                if compiled.body == record.body {
                    by_name.insert(record.name, compiled.clone());
                    continue;
                }
            }
            match compile_stored(&record) {
                Ok(compiled) => {
                    by_name.insert(record.name, Arc::new(compiled));
                }
                Err(error) => {
                    tracing::warn!(schema = %record.name, %error, "Skipping a stored schema that cannot be used.");
                }
            }
        }
        self.swap(Snapshot::new(by_name));
        Ok(())
    }

    pub(crate) fn list(&self) -> Vec<SchemaInfo> {
        self.snapshot()
            .by_name
            .values()
            .map(|c| c.info.clone())
            .collect()
    }

    pub(crate) fn get(&self, name: &str) -> Option<SchemaInfo> {
        self.snapshot().by_name.get(name).map(|c| c.info.clone())
    }

    /// Checks and compiles a schema, stores it, and applies it on this instance at once.
    pub(crate) async fn put(
        &self,
        store: &AnyStore,
        name: &str,
        subject_pattern: &str,
        schema: Value,
    ) -> Result<(PutOutcome, SchemaInfo), SchemaError> {
        if !valid_name(name) {
            return Err(SchemaError::Invalid {
                field: "name",
                message: format!(
                    "must be 1 to {MAX_NAME_LEN} ASCII letters, digits, `-` or `_`, got {:?}",
                    name.chars().take(64).collect::<String>()
                ),
            });
        }
        let pattern = Pattern::parse_filter(subject_pattern).map_err(|e| SchemaError::Invalid {
            field: "subject_pattern",
            message: e.to_string(),
        })?;
        let size = serde_json::to_string(&schema).map(|s| s.len()).unwrap_or(0);
        if size > self.limits.max_schema_bytes {
            return Err(SchemaError::Invalid {
                field: "schema",
                message: format!(
                    "is {size} bytes as compact JSON; the limit is {} (HERALD_MAX_SCHEMA_BYTES)",
                    self.limits.max_schema_bytes
                ),
            });
        }
        let validator = compile(&schema).map_err(|message| SchemaError::Invalid {
            field: "schema",
            message,
        })?;
        let _changing = self.changes.lock().await;
        // Start from what the store holds now: another instance may have changed it.
        self.reload_locked(store).await?;
        let current = self.snapshot();
        let existing = current.by_name.get(name);
        if existing.is_none() && current.by_name.len() >= self.limits.max_schemas {
            return Err(SchemaError::LimitReached(format!(
                "the hub keeps {} schemas, its limit (HERALD_MAX_SCHEMAS); delete one first",
                current.by_name.len()
            )));
        }
        let now = Timestamp::now();
        let created_at = existing.map_or(now, |c| c.info.created_at);
        let doc = SchemaDoc {
            subject_pattern: pattern.as_str().to_owned(),
            schema: schema.clone(),
            created_at: created_at.to_rfc3339(),
            updated_at: now.to_rfc3339(),
        };
        let body = serde_json::to_string(&doc).map_err(|e| HubError::Internal(e.to_string()))?;
        let created = store
            .put_schema(StoredSchema {
                name: name.to_owned(),
                body: body.clone(),
            })
            .await?;
        let info = SchemaInfo {
            name: name.to_owned(),
            subject_pattern: pattern,
            schema,
            created_at,
            updated_at: now,
        };
        let mut by_name = current.by_name.clone();
        by_name.insert(
            name.to_owned(),
            Arc::new(Compiled {
                info: info.clone(),
                body,
                validator,
            }),
        );
        self.swap(Snapshot::new(by_name));
        let outcome = if created {
            PutOutcome::Created
        } else {
            PutOutcome::Replaced
        };
        Ok((outcome, info))
    }

    /// Deletes a schema from the store and stops applying it here at once.
    pub(crate) async fn delete(&self, store: &AnyStore, name: &str) -> Result<bool, SchemaError> {
        let _changing = self.changes.lock().await;
        let deleted = store.delete_schema(name).await?;
        let current = self.snapshot();
        if current.by_name.contains_key(name) {
            let mut by_name = current.by_name.clone();
            by_name.remove(name);
            self.swap(Snapshot::new(by_name));
        }
        Ok(deleted)
    }

    /// Checks every event against every schema whose pattern matches its subject. The
    /// first failure (events in order, schemas by name) refuses the whole batch.
    pub(crate) fn validate(&self, events: &[NewEvent]) -> Result<(), HubError> {
        let snapshot = self.snapshot();
        if snapshot.tree.is_empty() {
            return Ok(());
        }
        let mut matching: Vec<&Arc<Compiled>> = Vec::new();
        for (index, event) in events.iter().enumerate() {
            matching.clear();
            snapshot
                .tree
                .for_each_match(event.subject.as_str(), |c| matching.push(c));
            if matching.is_empty() {
                continue;
            }
            matching.sort_by(|a, b| a.info.name.cmp(&b.info.name));
            let payload: Value = serde_json::from_str(event.payload.get())
                .map_err(|e| HubError::Internal(format!("a stored payload is not JSON: {e}")))?;
            for compiled in &matching {
                if compiled.validator.is_valid(&payload) {
                    continue;
                }
                let violations = compiled
                    .validator
                    .iter_errors(&payload)
                    .take(MAX_VIOLATIONS)
                    .map(|error| Violation {
                        path: error.instance_path().as_str().to_owned(),
                        message: shorten(error.to_string()),
                    })
                    .collect();
                return Err(HubError::SchemaViolation(Arc::new(SchemaViolation {
                    index,
                    subject: event.subject.as_str().to_owned(),
                    schema: compiled.info.name.clone(),
                    violations,
                })));
            }
        }
        Ok(())
    }
}

fn shorten(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message;
    }
    let mut short: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    short.push('…');
    short
}

/// Compiles a schema document, or says why it cannot be used (the validator's message).
pub(crate) fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    match schema {
        Value::Object(object) => {
            if let Some(declared) = object.get("$schema") {
                let known = declared.as_str().and_then(|uri| {
                    let uri = uri.strip_suffix('#').unwrap_or(uri);
                    KNOWN_DRAFTS.iter().find(|(known, _)| *known == uri)
                });
                if known.is_none() {
                    let drafts: Vec<&str> = KNOWN_DRAFTS.iter().map(|(uri, _)| *uri).collect();
                    return Err(format!(
                        "`$schema` {declared} is not a draft this hub validates; use one of {} \
                         (or leave it out for 2020-12)",
                        drafts.join(", ")
                    ));
                }
            }
        }
        Value::Bool(_) => {}
        other => {
            return Err(format!(
                "a JSON Schema is an object or a boolean, not {}",
                match other {
                    Value::Null => "null",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    _ => "an array",
                }
            ))
        }
    }
    jsonschema::options()
        .offline()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map_err(|error| error.to_string())
}

fn compile_stored(record: &StoredSchema) -> Result<Compiled, String> {
    let doc: SchemaDoc = serde_json::from_str(&record.body).map_err(|e| e.to_string())?;
    let subject_pattern = Pattern::parse_filter(&doc.subject_pattern).map_err(|e| e.to_string())?;
    let validator = compile(&doc.schema)?;
    let created_at = Timestamp::parse(&doc.created_at).map_err(|e| e.to_string())?;
    let updated_at = Timestamp::parse(&doc.updated_at).map_err(|e| e.to_string())?;
    Ok(Compiled {
        info: SchemaInfo {
            name: record.name.clone(),
            subject_pattern,
            schema: doc.schema,
            created_at,
            updated_at,
        },
        body: record.body.clone(),
        validator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn orders_schema() -> Value {
        json!({
            "type": "object",
            "required": ["order_id", "amount"],
            "properties": {
                "order_id": {"type": "string"},
                "amount": {"type": "number", "minimum": 0},
            },
        })
    }

    fn violation(error: HubError) -> SchemaViolation {
        match error {
            HubError::SchemaViolation(v) => (*v).clone(),
            other => panic!("expected a schema violation, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn matching_events_are_validated_and_refused_events_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let hub = crate::testing::open_hub(&dir).await;
        let (outcome, info) = hub
            .put_schema("orders", "hub.*.orders.>", orders_schema())
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::Created);
        assert_eq!(info.subject_pattern.as_str(), "hub.*.orders.>");

        let good = hub
            .new_event("hub.local.orders.created", r#"{"order_id":"a","amount":3}"#)
            .unwrap();
        hub.publish(good).await.unwrap();

        let bad = hub
            .new_event("hub.local.orders.created", r#"{"amount":-1}"#)
            .unwrap();
        let error = violation(hub.publish(bad).await.unwrap_err());
        assert_eq!(error.schema, "orders");
        assert_eq!(error.index, 0);
        let paths: Vec<&str> = error.violations.iter().map(|v| v.path.as_str()).collect();
        // "required": the payload itself is the instance that fails (an empty pointer).
        assert!(paths.contains(&""), "{paths:?}");
        assert!(paths.contains(&"/amount"), "{paths:?}");
        assert_eq!(hub.store().head().await.unwrap(), 1);

        // A subject no pattern matches is not checked.
        let other = hub.new_event("hub.local.users.created", "{}").unwrap();
        hub.publish(other).await.unwrap();
        hub.shutdown().await;
    }

    #[tokio::test]
    async fn one_bad_event_refuses_the_whole_batch_and_names_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let hub = crate::testing::open_hub(&dir).await;
        hub.put_schema("orders", "hub.*.orders.>", orders_schema())
            .await
            .unwrap();
        let batch = vec![
            hub.new_event("hub.local.orders.a", r#"{"order_id":"a","amount":1}"#)
                .unwrap(),
            hub.new_event("hub.local.orders.b", r#"{"order_id":7,"amount":1}"#)
                .unwrap(),
        ];
        let error = violation(hub.publish_batch(batch).await.unwrap_err());
        assert_eq!(error.index, 1);
        assert_eq!(error.violations[0].path, "/order_id");
        assert_eq!(hub.store().head().await.unwrap(), 0);
        hub.shutdown().await;
    }

    #[tokio::test]
    async fn every_matching_schema_must_accept_the_payload() {
        let dir = tempfile::tempdir().unwrap();
        let hub = crate::testing::open_hub(&dir).await;
        hub.put_schema("a-wide", "hub.>", json!({"type": "object"}))
            .await
            .unwrap();
        hub.put_schema(
            "b-narrow",
            "hub.local.orders.*",
            json!({"required": ["id"]}),
        )
        .await
        .unwrap();
        let event = hub.new_event("hub.local.orders.x", r#"{"n":1}"#).unwrap();
        assert_eq!(
            violation(hub.publish(event).await.unwrap_err()).schema,
            "b-narrow"
        );
        hub.delete_schema("b-narrow").await.unwrap();
        let event = hub.new_event("hub.local.orders.x", r#"{"n":1}"#).unwrap();
        hub.publish(event).await.unwrap();
        hub.shutdown().await;
    }

    #[tokio::test]
    async fn violations_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let hub = crate::testing::open_hub(&dir).await;
        hub.put_schema(
            "strings",
            "hub.>",
            json!({"additionalProperties": {"type": "string"}}),
        )
        .await
        .unwrap();
        let payload: serde_json::Map<String, Value> =
            (0..50).map(|i| (format!("k{i}"), json!(i))).collect();
        let event = hub
            .new_event("hub.local.x", &Value::Object(payload).to_string())
            .unwrap();
        let error = violation(hub.publish(event).await.unwrap_err());
        assert_eq!(error.violations.len(), MAX_VIOLATIONS);
        hub.shutdown().await;
    }

    #[test]
    fn unusable_documents_are_refused_with_the_validators_message() {
        // JSON Schema 2020-12 core §4.3.1: "A JSON Schema MUST be an object or a boolean."
        assert!(compile(&json!(true)).is_ok());
        assert!(compile(&json!(false)).is_ok());
        let message = compile(&json!([1])).err().unwrap();
        assert!(message.contains("object or a boolean"), "{message}");
        // A keyword of the wrong type, as the meta-schema says.
        let message = compile(&json!({"type": "nope"})).err().unwrap();
        assert!(message.contains("nope"), "{message}");
        let message = compile(&json!({"minimum": "3"})).err().unwrap();
        assert!(!message.is_empty());
        // An unknown draft.
        let message = compile(&json!({"$schema": "http://json-schema.org/draft-03/schema#"}))
            .err()
            .unwrap();
        assert!(
            message.contains("not a draft this hub validates"),
            "{message}"
        );
        for known in [
            "https://json-schema.org/draft/2020-12/schema",
            "https://json-schema.org/draft/2019-09/schema",
            "http://json-schema.org/draft-07/schema#",
        ] {
            assert!(compile(&json!({"$schema": known})).is_ok(), "{known}");
        }
    }

    #[test]
    fn nothing_is_fetched_and_patterns_run_in_linear_time() {
        // A `$ref` to another document would be a fetch: refused, at once.
        let started = std::time::Instant::now();
        let message = compile(&json!({"$ref": "https://example.com/other.json"}))
            .err()
            .unwrap();
        assert!(message.contains("example.com"), "{message}");
        let message = compile(&json!({"$ref": "file:///etc/passwd"}))
            .err()
            .unwrap();
        assert!(!message.is_empty());
        assert!(started.elapsed() < Duration::from_secs(2));
        // A `$ref` inside the document is fine.
        let local = json!({"$defs": {"id": {"type": "string"}}, "properties": {"id": {"$ref": "#/$defs/id"}}});
        let validator = compile(&local).unwrap();
        assert!(!validator.is_valid(&json!({"id": 1})));
        // Look-around needs backtracking: refused.
        assert!(compile(&json!({"pattern": "^(?=a)a$"})).is_err());
        let validator = compile(&json!({"pattern": "^(a+)+$"})).unwrap();
        let evil = format!("{}!", "a".repeat(10_000));
        let started = std::time::Instant::now();
        assert!(!validator.is_valid(&json!(evil)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn names_patterns_and_sizes_are_checked_before_anything_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let hub = crate::testing::open_hub(&dir).await;
        let invalid = |result: Result<_, SchemaError>| match result {
            Err(SchemaError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(
            invalid(hub.put_schema("a b", "hub.>", json!({})).await),
            "name"
        );
        assert_eq!(
            invalid(hub.put_schema("x", "hub..y", json!({})).await),
            "subject_pattern"
        );
        let big = json!({"description": "x".repeat(SchemaLimits::default().max_schema_bytes)});
        assert_eq!(invalid(hub.put_schema("x", "hub.>", big).await), "schema");
        assert!(hub.store().list_schemas().await.unwrap().is_empty());
        hub.shutdown().await;
    }

    #[tokio::test]
    async fn changes_in_the_store_are_picked_up_by_a_reload_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let hub = crate::testing::open_hub(&dir).await;
        let (_, first) = hub
            .put_schema("orders", "hub.*.orders.>", orders_schema())
            .await
            .unwrap();
        // Another instance replaces it (straight into the store).
        let doc = SchemaDoc {
            subject_pattern: "hub.>".into(),
            schema: json!({"required": ["z"]}),
            created_at: first.created_at.to_rfc3339(),
            updated_at: Timestamp::now().to_rfc3339(),
        };
        hub.store()
            .put_schema(StoredSchema {
                name: "orders".into(),
                body: serde_json::to_string(&doc).unwrap(),
            })
            .await
            .unwrap();
        hub.inner.schemas.reload(hub.store()).await.unwrap();
        let info = hub.schema("orders").unwrap();
        assert_eq!(info.subject_pattern.as_str(), "hub.>");
        assert_eq!(info.created_at, first.created_at);
        let (outcome, replaced) = hub.put_schema("orders", "hub.>", json!({})).await.unwrap();
        assert_eq!(outcome, PutOutcome::Replaced);
        assert_eq!(replaced.created_at, first.created_at);
        hub.shutdown().await;

        let hub = crate::testing::open_hub(&dir).await;
        assert_eq!(hub.schemas().len(), 1);
        assert_eq!(hub.schema("orders").unwrap().schema, json!({}));
        hub.shutdown().await;
    }
}
