//! The JSON shapes of `/api/schemas`: event schemas (a subject pattern and a JSON Schema
//! every matching event's payload must satisfy).

use herald_hub::schemas::SchemaInfo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

/// The schema of a JSON Schema document, for the OpenAPI document.
fn json_schema_document() -> utoipa::openapi::schema::Schema {
    super::schema::raw(json!({
        "type": ["object", "boolean"],
        "description": "A JSON Schema (2020-12 unless its `$schema` names 2019-09 or draft 7) \
            that the payload (a JSON object) must satisfy.",
    }))
}

/// `PUT /api/schemas/{name}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRequest {
    pub subject_pattern: String,
    pub schema: Value,
}

/// An event schema.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventSchema {
    #[schema(value_type = crate::wire::schema::SchemaName)]
    pub name: String,
    /// Events whose subject matches it are checked.
    #[schema(value_type = crate::wire::schema::SubjectPattern)]
    pub subject_pattern: String,
    #[schema(schema_with = json_schema_document)]
    pub schema: Value,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC: the last PUT.
    pub updated_at: String,
}

impl From<SchemaInfo> for EventSchema {
    fn from(info: SchemaInfo) -> Self {
        EventSchema {
            name: info.name,
            subject_pattern: info.subject_pattern.as_str().to_owned(),
            schema: info.schema,
            created_at: info.created_at.to_rfc3339(),
            updated_at: info.updated_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventSchemaList {
    pub schemas: Vec<EventSchema>,
    pub count: usize,
}
