//! The event store of seed 003: `/api/aggregates/{type}/{id}/events` (append on an
//! expected version, load by version) and `/api/aggregates/{type}/{id}/snapshot`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_store::MAX_QUERY_LIMIT;
use serde_json::{Map, Value};

use super::publish::{header_correlation_id, header_trace};
use super::{body_rejection, form_pairs, invalid_query, parse_json_object, truncate};
use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorCode};
use crate::wire;
use crate::wire::aggregates::{
    append_request, snapshot_request, AggregateEvents, AppendResponse, FieldError, Snapshot,
};
use crate::AppState;

fn object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(body_rejection)?;
    parse_json_object(&body)
}

fn invalid(error: FieldError) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidAggregate,
        format!("`{}` {}", error.field, error.message),
    )
}

/// `POST /api/aggregates/{aggregate_type}/{aggregate_id}/events`.
#[utoipa::path(
    post,
    path = "/api/aggregates/{aggregate_type}/{aggregate_id}/events",
    tag = "aggregates",
    summary = "Append to an aggregate",
    description = "Appends events to an aggregate atomically if it is at the expected version \
        (`any`, `no_stream`, `exists`, or a number): they get the versions that follow. \
        Otherwise `409 version_conflict` with `current_version`, and nothing is stored. An \
        event without a `subject` goes to `hub.<hub_id>.<aggregate_type>.<event type>`. \
        Re-sending an append with the same event ids on a condition that held the first \
        time stores nothing and answers `200` as the first time did.",
    params(
        ("aggregate_type" = crate::wire::schema::AggregateType, Path, description = "The aggregate's type."),
        ("aggregate_id" = crate::wire::schema::AggregateId, Path, description = "The aggregate's id."),
        ("X-Correlation-ID" = Option<crate::wire::schema::CorrelationId>, Header, description = "The correlation id of events without their own."),
    ),
    request_body(content = crate::wire::aggregates::AppendBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored.", body = AppendResponse),
        (status = 200, description = "A re-sent append: every event was stored already by it; nothing new was stored.", body = AppendResponse),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 409, response = crate::wire::schema::Conflict),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn append(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller
        .publish_refused()
        .map_err(|limited| ApiError::from(herald_hub::HubError::RateLimited(limited)))?;
    herald_hub::aggregates::check_aggregate(&aggregate_type, &aggregate_id)?;
    let correlation = header_correlation_id(&headers)?;
    let request = append_request(&object(body)?, correlation).map_err(invalid)?;
    let written = state
        .hub
        .as_caller(&caller)
        .append_to_aggregate(
            &aggregate_type,
            &aggregate_id,
            request.expected,
            request.with_trace(header_trace(&headers)),
            Some("herald-http".into()),
        )
        .await?;
    let status = if written.events.iter().all(|a| a.is_duplicate()) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(AppendResponse::new(
            &aggregate_type,
            &aggregate_id,
            &written,
        )),
    )
        .into_response())
}

/// `GET /api/aggregates/{aggregate_type}/{aggregate_id}/events`.
#[utoipa::path(
    get,
    path = "/api/aggregates/{aggregate_type}/{aggregate_id}/events",
    tag = "aggregates",
    summary = "Load an aggregate",
    description = "The aggregate's events from `from_version` on, in version order, and its \
        current version. To load from a snapshot, ask from the snapshot's version + 1.",
    params(
        ("aggregate_type" = crate::wire::schema::AggregateType, Path, description = "The aggregate's type."),
        ("aggregate_id" = crate::wire::schema::AggregateId, Path, description = "The aggregate's id."),
        ("from_version" = Option<crate::wire::schema::SeqParam>, Query, description = "The first version to answer (default 1)."),
        ("limit" = Option<crate::wire::schema::Limit>, Query, description = "Most events to answer (default 100)."),
    ),
    responses(
        (status = 200, description = "The events, in version order.", body = AggregateEvents),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn load(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    herald_hub::aggregates::check_aggregate(&aggregate_type, &aggregate_id)?;
    let (from_version, limit) = load_params(raw.as_deref().unwrap_or(""))?;
    let page = state
        .hub
        .as_caller(&caller)
        .load_aggregate(&aggregate_type, &aggregate_id, from_version, limit)
        .await?;
    Ok(Json(AggregateEvents {
        aggregate_type: &aggregate_type,
        aggregate_id: &aggregate_id,
        version: page.version,
        events: page.events.iter().map(wire::Event::from).collect(),
    })
    .into_response())
}

/// `from_version` and `limit`; anything else is `400 invalid_query`.
fn load_params(raw: &str) -> Result<(u64, usize), ApiError> {
    let mut from_version = 1;
    let mut limit = 100;
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in form_pairs(raw)? {
        if seen.contains(&key) {
            return Err(invalid_query(format!("`{key}` is given more than once")));
        }
        seen.push(key.clone());
        match key.as_str() {
            "from_version" => {
                from_version = value
                    .parse::<u64>()
                    .ok()
                    .filter(|v| *v <= i64::MAX as u64)
                    .ok_or_else(|| {
                        invalid_query(format!(
                            "`from_version` must be a whole number ≥ 0, got {:?}",
                            truncate(&value)
                        ))
                    })?
            }
            "limit" => {
                limit = match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_QUERY_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(invalid_query(format!(
                            "`limit` must be a whole number from 1 to {MAX_QUERY_LIMIT}, got {:?}",
                            truncate(&value)
                        )))
                    }
                }
            }
            other => {
                return Err(invalid_query(format!(
                    "unknown parameter `{}` (from_version, limit)",
                    truncate(other)
                )))
            }
        }
    }
    Ok((from_version, limit))
}

/// `PUT /api/aggregates/{aggregate_type}/{aggregate_id}/snapshot`.
#[utoipa::path(
    put,
    path = "/api/aggregates/{aggregate_type}/{aggregate_id}/snapshot",
    tag = "aggregates",
    summary = "Save a snapshot",
    description = "Keeps the aggregate's state at `version` (at most the aggregate's \
        version: otherwise `409 version_conflict`). The newest two snapshots are kept; one \
        saved again at the same version replaces the earlier.",
    params(
        ("aggregate_type" = crate::wire::schema::AggregateType, Path, description = "The aggregate's type."),
        ("aggregate_id" = crate::wire::schema::AggregateId, Path, description = "The aggregate's id."),
    ),
    request_body(content = crate::wire::aggregates::SnapshotBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Saved; the latest snapshot.", body = Snapshot),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 409, response = crate::wire::schema::Conflict),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn save_snapshot(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    herald_hub::aggregates::check_aggregate(&aggregate_type, &aggregate_id)?;
    let (version, snapshot_state) = snapshot_request(&object(body)?).map_err(invalid)?;
    let hub = state.hub.as_caller(&caller);
    hub.save_snapshot(&aggregate_type, &aggregate_id, version, snapshot_state)
        .await?;
    latest_snapshot(&hub, &aggregate_type, &aggregate_id).await
}

/// `GET /api/aggregates/{aggregate_type}/{aggregate_id}/snapshot`.
#[utoipa::path(
    get,
    path = "/api/aggregates/{aggregate_type}/{aggregate_id}/snapshot",
    tag = "aggregates",
    summary = "Load the latest snapshot",
    params(
        ("aggregate_type" = crate::wire::schema::AggregateType, Path, description = "The aggregate's type."),
        ("aggregate_id" = crate::wire::schema::AggregateId, Path, description = "The aggregate's id."),
    ),
    responses(
        (status = 200, description = "The snapshot with the highest version.", body = Snapshot),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn load_snapshot(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    herald_hub::aggregates::check_aggregate(&aggregate_type, &aggregate_id)?;
    latest_snapshot(
        &state.hub.as_caller(&caller),
        &aggregate_type,
        &aggregate_id,
    )
    .await
}

async fn latest_snapshot(
    hub: &herald_hub::access::Scoped<'_>,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Response, ApiError> {
    match hub.load_snapshot(aggregate_type, aggregate_id).await? {
        Some(snapshot) => Ok(Json(Snapshot::from(&snapshot)).into_response()),
        None => Err(ApiError::new(
            ErrorCode::SnapshotNotFound,
            "this aggregate has no snapshot",
        )),
    }
}
