//! `/api/retention`: the retention policies (admin keys only).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use herald_hub::retention::{PolicySpec, RetentionError};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{body_rejection, parse_json_object};
use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorCode};
use crate::AppState;

/// The policies, first match first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionPolicies {
    #[schema(value_type = Vec<RetentionPolicySchema>)]
    pub policies: Vec<PolicySpec>,
}

/// One retention policy.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RetentionPolicySchema {
    /// The subjects it governs; an event belongs to the first policy whose pattern
    /// matches its subject, and events matching none are kept forever.
    #[schema(value_type = crate::wire::schema::SubjectPattern)]
    subjects: String,
    /// Keep events at most this old: whole seconds, or `30d`, `12h`, `15m`, `45s`, `2w`.
    #[schema(value_type = Option<crate::wire::schema::MaxAge>)]
    max_age: Option<()>,
    /// Keep at most this many events (the newest).
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    max_events: Option<u64>,
    /// Keep at most this many bytes of payload (the newest events).
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    max_bytes: Option<u64>,
    /// Delete aggregates' events too (default false: they are kept, and count towards
    /// the limits).
    include_aggregates: Option<bool>,
}

/// `{"policies": [...]}`, the body of `PUT /api/retention`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RetentionRequest {
    #[schema(max_items = 100)]
    policies: Vec<RetentionPolicySchema>,
}

fn refused(error: RetentionError) -> ApiError {
    match error {
        RetentionError::Invalid(message) => ApiError::new(ErrorCode::InvalidRetention, message),
        RetentionError::Hub(error) => error.into(),
        other => ApiError::from(herald_hub::HubError::Internal(other.to_string())),
    }
}

/// JSON numbers written as `5.0` where a whole number is meant become `5`.
fn whole_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(whole) = herald_core::json::non_negative_whole_number(n) {
                *value = Value::from(whole);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(members) => members.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// `GET /api/retention`.
#[utoipa::path(
    get,
    path = "/api/retention",
    tag = "retention",
    summary = "Read the retention policies",
    description = "The policies in force, first match first. Admin keys only.",
    responses((status = 200, description = "The policies.", body = RetentionPolicies)),
)]
pub async fn get_retention(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<RetentionPolicies>, ApiError> {
    Ok(Json(RetentionPolicies {
        policies: state.hub.as_caller(&caller).retention().await?,
    }))
}

/// `PUT /api/retention`.
#[utoipa::path(
    put,
    path = "/api/retention",
    tag = "retention",
    summary = "Replace the retention policies",
    description = "Replaces every policy. Deletion runs in the background, oldest events \
        first, in bounded transactions; a consumer that had not been handed a deleted event \
        counts it in `state.skipped_by_retention`. Admin keys only.",
    request_body(content = RetentionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "In force.", body = RetentionPolicies),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn put_retention(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RetentionPolicies>, ApiError> {
    let body = body.map_err(body_rejection)?;
    let mut value: serde_json::Map<String, Value> = parse_json_object(&body)?;
    let mut policies = value
        .remove("policies")
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRetention, "`policies` is required"))?;
    if let Some(unknown) = value.keys().next() {
        return Err(ApiError::new(
            ErrorCode::InvalidRetention,
            format!("`{unknown}` is not a field (policies)"),
        ));
    }
    whole_numbers(&mut policies);
    // `null` is an absent member, as everywhere in the API.
    if let Value::Array(items) = &mut policies {
        for item in items {
            if let Value::Object(members) = item {
                members.retain(|_, v| !v.is_null());
            }
        }
    }
    let specs: Vec<PolicySpec> = serde_json::from_value(policies)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRetention, format!("`policies`: {e}")))?;
    let hub = state.hub.as_caller(&caller);
    hub.set_retention(specs).await.map_err(refused)?;
    Ok(Json(RetentionPolicies {
        policies: hub.retention().await?,
    }))
}
