//! `/api/schemas`: event schemas, checked at ingest on every way in (admin keys only; the
//! hub checks). See `herald_hub::schemas`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_hub::schemas::PutOutcome;

use super::{body_rejection, parse_json_object};
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::wire::event_schemas::{EventSchema, EventSchemaList, SchemaRequest};
use crate::AppState;

/// `GET /api/schemas`.
#[utoipa::path(
    get,
    path = "/api/schemas",
    tag = "schemas",
    summary = "List event schemas",
    description = "Every event schema, by name. Admin keys only.",
    responses(
        (status = 200, description = "The schemas.", body = EventSchemaList),
    ),
)]
pub async fn list_schemas(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<EventSchemaList>, ApiError> {
    let schemas: Vec<EventSchema> = state
        .hub
        .as_caller(&caller)
        .schemas()?
        .into_iter()
        .map(EventSchema::from)
        .collect();
    Ok(Json(EventSchemaList {
        count: schemas.len(),
        schemas,
    }))
}

/// `PUT /api/schemas/{name}`.
#[utoipa::path(
    put,
    path = "/api/schemas/{name}",
    tag = "schemas",
    summary = "Create or replace an event schema",
    description = "From now on, every event published whose subject matches `subject_pattern` \
        (on every way in: REST, batches, CloudEvents, JSON-RPC, the NATS bridge) must have a \
        payload that satisfies `schema`, and every other schema whose pattern matches; \
        otherwise the request is `422 schema_violation`, naming the schema, the event's index \
        and each failing instance path, and nothing is stored (the bridge keeps such a message \
        as a dead letter). Applies on this instance at once and on others sharing the store \
        within 2 s. A document the validator refuses is `422 invalid_schema` with its message; \
        so is a `$schema` other than 2020-12, 2019-09 or draft 7, a `$ref` to another document \
        (nothing is ever fetched), a `pattern` with look-around or back-references, and a \
        document over `--max-schema-bytes`. Admin keys only.",
    params(("name" = crate::wire::schema::SchemaName, Path, description = "The schema's name.")),
    request_body(content((crate::wire::schema::SchemaRequest = "application/json"))),
    responses(
        (status = 200, description = "Replaced.", body = EventSchema),
        (status = 201, description = "Created.", body = EventSchema),
        (status = 409, response = crate::wire::schema::Conflict),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
    ),
)]
pub async fn put_schema(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_rejection)?;
    let request: SchemaRequest = parse_json_object(&body)?;
    let (outcome, info) = state
        .hub
        .as_caller(&caller)
        .put_schema(&name, &request.subject_pattern, request.schema)
        .await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Replaced => StatusCode::OK,
    };
    Ok((status, Json(EventSchema::from(info))).into_response())
}

/// `GET /api/schemas/{name}`.
#[utoipa::path(
    get,
    path = "/api/schemas/{name}",
    tag = "schemas",
    summary = "Read an event schema",
    description = "Admin keys only.",
    params(("name" = crate::wire::schema::SchemaName, Path, description = "The schema's name.")),
    responses(
        (status = 200, description = "The schema.", body = EventSchema),
        (status = 404, response = crate::wire::schema::NotFound),
    ),
)]
pub async fn get_schema(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
) -> Result<Json<EventSchema>, ApiError> {
    Ok(Json(EventSchema::from(
        state.hub.as_caller(&caller).schema(&name)?,
    )))
}

/// `DELETE /api/schemas/{name}`.
#[utoipa::path(
    delete,
    path = "/api/schemas/{name}",
    tag = "schemas",
    summary = "Delete an event schema",
    description = "Publishes stop being checked against it (at once here, within 2 s on other \
        instances). Events already stored stay. Admin keys only.",
    params(("name" = crate::wire::schema::SchemaName, Path, description = "The schema's name.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, response = crate::wire::schema::NotFound),
    ),
)]
pub async fn delete_schema(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.hub.as_caller(&caller).delete_schema(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
