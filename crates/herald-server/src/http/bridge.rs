//! The NATS bridge's dead letters: messages published on NATS that the bridge could not
//! ingest (an invalid subject, a body over the limit, an event the store refused). The
//! bridge keeps each one in the store before acknowledging it, so none is lost silently;
//! operators list them with `GET /api/bridge/dead-letters` and discard them with
//! `DELETE /api/bridge/dead-letters/{id}`.

use crate::auth::Authenticated;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use herald_hub::HubError;
use herald_store::Store;
use serde::Serialize;
use utoipa::ToSchema;

use super::truncate;
use crate::error::{ApiError, ErrorCode};
use crate::AppState;

/// Dead letters answered when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;

/// A NATS message the bridge kept instead of ingesting it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    /// Its number: increasing in the order kept, never reused (`after_id` pages on it).
    pub id: u64,
    /// When it was kept, RFC 3339 UTC with microseconds.
    #[schema(format = DateTime)]
    pub received_at: String,
    /// Why it was not ingested.
    pub reason: String,
    /// The JetStream stream it was read from, and its sequence number there.
    pub stream: String,
    pub stream_seq: u64,
    /// The NATS subject it was published on.
    pub subject: String,
    /// Its headers, in the order received (a name may repeat).
    pub headers: Vec<DeadLetterHeader>,
    /// The body as text, when it is UTF-8 (else `body_base64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The body's size as received, in bytes.
    pub body_size: u64,
    /// Only the first bytes of the body were kept (a body larger than 64 KiB).
    pub body_truncated: bool,
}

/// One header of a dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterHeader {
    pub name: String,
    pub value: String,
}

/// `GET /api/bridge/dead-letters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// Oldest first.
    pub dead_letters: Vec<DeadLetter>,
    /// How many are in this answer.
    pub count: usize,
}

impl From<herald_store::DeadLetter> for DeadLetter {
    fn from(kept: herald_store::DeadLetter) -> Self {
        let letter = kept.letter;
        let body_truncated = (letter.body.len() as u64) < letter.body_size;
        let (body, body_base64) = match String::from_utf8(letter.body) {
            Ok(text) => (Some(text), None),
            Err(error) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(error.as_bytes())),
            ),
        };
        DeadLetter {
            id: kept.id,
            received_at: kept.received_at.to_rfc3339(),
            reason: letter.reason,
            stream: letter.stream,
            stream_seq: letter.stream_seq,
            subject: letter.subject,
            headers: letter
                .headers
                .into_iter()
                .map(|(name, value)| DeadLetterHeader { name, value })
                .collect(),
            body,
            body_base64,
            body_size: letter.body_size,
            body_truncated,
        }
    }
}

/// `GET /api/bridge/dead-letters`.
#[utoipa::path(
    get,
    path = "/api/bridge/dead-letters",
    tag = "operations",
    summary = "List the NATS bridge's dead letters",
    description = "Messages published on NATS that the bridge could not ingest (an invalid \
        subject, a body over `--nats-bridge-max-body-bytes`, an event the store refused), \
        oldest first. Each was kept before it was acknowledged to JetStream. At most \
        `--nats-dead-letters-max` are kept; past that the oldest are dropped (counted in \
        `herald_bridge_dead_letters_dropped_total`). Page with `after_id` = the last `id` \
        seen. Unknown or repeated parameters are `400 invalid_query`.",
    params(
        ("limit" = Option<crate::wire::schema::Limit>, Query, description = "Most dead letters to answer."),
        ("after_id" = Option<crate::wire::schema::SeqParam>, Query, description = "Only dead letters with a larger `id`."),
    ),
    responses(
        (status = 200, description = "The dead letters.", body = DeadLetterList),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    RawQuery(raw): RawQuery,
) -> Result<Json<DeadLetterList>, ApiError> {
    caller.require_admin()?;
    let (limit, after_id) = super::page_params(raw.as_deref(), DEFAULT_LIMIT, "after_id")?;
    let kept = state
        .hub
        .store()
        .dead_letters(after_id, limit)
        .await
        .map_err(HubError::from)?;
    let dead_letters: Vec<DeadLetter> = kept.into_iter().map(DeadLetter::from).collect();
    Ok(Json(DeadLetterList {
        count: dead_letters.len(),
        dead_letters,
    }))
}

/// `DELETE /api/bridge/dead-letters/{id}`.
#[utoipa::path(
    delete,
    path = "/api/bridge/dead-letters/{id}",
    tag = "operations",
    summary = "Discard a dead letter",
    description = "Deletes one dead letter (once it has been dealt with). The message is not \
        ingested: publish it again to NATS, fixed, for that.",
    params(("id" = u64, Path, description = "The dead letter's `id`.")),
    responses(
        (status = 204, description = "Discarded."),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn delete_dead_letter(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let not_found = || {
        ApiError::new(
            ErrorCode::DeadLetterNotFound,
            format!("no dead letter with id {:?}", truncate(&id)),
        )
    };
    let number: u64 = id.parse().map_err(|_| not_found())?;
    let deleted = state
        .hub
        .store()
        .delete_dead_letter(number)
        .await
        .map_err(HubError::from)?;
    if !deleted {
        return Err(not_found());
    }
    herald_hub::nats::update_dead_letter_gauge(&state.hub).await;
    Ok(StatusCode::NO_CONTENT)
}
