//! Durable consumers (`/api/consumers`): create, read, delete; fetch with a long poll;
//! ack, NAK, progress and term; dead letters listed, redriven and discarded.
//!
//! Every change of delivery state is answered only once it is durable (see
//! `herald_hub::consumers`).

use crate::auth::Authenticated;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::Seq;
use herald_hub::consumers::{valid_name, ConsumerError, PutOutcome, MAX_ACK_IDS, MAX_FETCH_BATCH};
use serde_json::{Map, Value};

use super::{body_rejection, parse_json_object, parse_seq};
use crate::error::{ApiError, ErrorCode};
use crate::wire::consumers::{
    consumer_config, Consumer, ConsumerDeadLetterJson, ConsumerDeadLetterList, ConsumerList,
    FetchResponse, FieldError, Fields, Message, RedriveResponse, SettleResponse, SettleVerb,
};
use crate::AppState;

/// Dead letters answered when `limit` is not given.
const DEFAULT_DEAD_LETTER_LIMIT: usize = 100;
/// Longest `wait_ms` of a fetch.
const MAX_WAIT_MS: i64 = 60_000;

fn invalid_body(error: FieldError) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidBody,
        format!("`{}` {}", error.field, error.message),
    )
}

fn object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(body_rejection)?;
    parse_json_object(&body)
}

/// Refuses the names of internal consumers (a routing rule's `rule:<id>`): over this API
/// they do not exist.
fn user_consumer(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ConsumerError::NotFound(name.to_owned()).into())
    }
}

/// `GET /api/consumers`.
#[utoipa::path(
    get,
    path = "/api/consumers",
    tag = "consumers",
    summary = "List durable consumers",
    description = "Every consumer with its settings and state, by name.",
    responses(
        (status = 200, description = "The consumers.", body = ConsumerList),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn list_consumers(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<ConsumerList>, ApiError> {
    let consumers: Vec<Consumer> = state
        .hub
        .as_caller(&caller)
        .list_consumers()
        .await?
        .into_iter()
        .map(Consumer::from)
        .collect();
    Ok(Json(ConsumerList {
        count: consumers.len(),
        consumers,
    }))
}

/// `PUT /api/consumers/{name}`.
#[utoipa::path(
    put,
    path = "/api/consumers/{name}",
    tag = "consumers",
    summary = "Create or update a durable consumer",
    description = "Creates the consumer (201), or answers the existing one (200) — updating \
        `ack_wait_ms`, `max_deliver`, `backoff_ms`, `max_ack_pending` and `description` when \
        they differ. `filter_subjects`, `deliver_policy` and its `opt_start_*` cannot change: \
        a different value is `409 consumer_conflict`. Defaults: `deliver_policy` `all`, \
        `ack_wait_ms` 30000, `max_deliver` 5 (`-1`: unlimited), `max_ack_pending` 1000, \
        and without `backoff_ms` a failed delivery waits 1 s, doubling up to 5 minutes, \
        with ±10 % jitter. The backoff applies to NAKs without `delay_ms` and to deliveries \
        whose ack wait ran out (after it).",
    params(("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name.")),
    request_body(content((crate::wire::schema::ConsumerRequest = "application/json"))),
    responses(
        (status = 200, description = "It existed (updated where asked).", body = Consumer),
        (status = 201, description = "Created.", body = Consumer),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 409, response = crate::wire::schema::Conflict),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn put_consumer(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let config = consumer_config(object(body)?).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidConsumer,
            format!("{}: {}", e.field, e.message),
        )
    })?;
    let (outcome, info) = state
        .hub
        .as_caller(&caller)
        .put_consumer(&name, config)
        .await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated | PutOutcome::Unchanged => StatusCode::OK,
    };
    Ok((status, Json(Consumer::from(info))).into_response())
}

/// `GET /api/consumers/{name}`.
#[utoipa::path(
    get,
    path = "/api/consumers/{name}",
    tag = "consumers",
    summary = "Read a durable consumer",
    params(("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name.")),
    responses(
        (status = 200, description = "Its settings and state.", body = Consumer),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn get_consumer(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
) -> Result<Json<Consumer>, ApiError> {
    user_consumer(&name)?;
    Ok(Json(Consumer::from(
        state.hub.as_caller(&caller).consumer_info(&name).await?,
    )))
}

/// `DELETE /api/consumers/{name}`.
#[utoipa::path(
    delete,
    path = "/api/consumers/{name}",
    tag = "consumers",
    summary = "Delete a durable consumer",
    description = "Deletes the consumer with its pending messages and dead letters. The events \
        stay in the log.",
    params(("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn delete_consumer(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    user_consumer(&name)?;
    state.hub.as_caller(&caller).delete_consumer(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/consumers/{name}/fetch`.
#[utoipa::path(
    post,
    path = "/api/consumers/{name}/fetch",
    tag = "consumers",
    summary = "Fetch messages",
    description = "Hands out up to `batch` messages (default 1, at most 1000): due \
        redeliveries first, then new events in seq order, as far as `max_ack_pending` \
        allows. Each is held for this client until it is settled or its ack wait ends. \
        With `wait_ms` (at most 60000, and never past the server's request timeout) the \
        call waits for messages and answers as soon as any is available; an empty list when \
        none came in time. Any number of clients may fetch from one consumer, on any \
        instance: a message is with one of them at a time.",
    params(("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name.")),
    request_body(content((crate::wire::schema::FetchRequest = "application/json"))),
    responses(
        (status = 200, description = "The messages (possibly none).", body = FetchResponse),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn fetch(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let fields = Fields::new(object(body)?, &["batch", "wait_ms"]).map_err(invalid_body)?;
    let batch = fields
        .integer("batch", 1..=MAX_FETCH_BATCH as i64)
        .map_err(invalid_body)?
        .unwrap_or(1) as usize;
    let wait_ms = fields
        .integer("wait_ms", 0..=MAX_WAIT_MS)
        .map_err(invalid_body)?
        .unwrap_or(0) as u64;
    // Answer (possibly empty) before the request timeout cuts the request off.
    let longest = state
        .limits
        .request_timeout
        .saturating_sub(Duration::from_secs(1));
    let wait = Duration::from_millis(wait_ms).min(longest);
    user_consumer(&name)?;
    let messages = state
        .hub
        .as_caller(&caller)
        .fetch(&name, batch, wait)
        .await?;
    Ok(Json(FetchResponse {
        messages: messages.iter().map(Message::from).collect(),
    })
    .into_response())
}

/// The `ack_ids` of a settle body.
fn ack_ids(fields: &Fields) -> Result<Vec<String>, ApiError> {
    fields
        .strings("ack_ids", MAX_ACK_IDS)
        .map_err(invalid_body)?
        .ok_or_else(|| {
            invalid_body(FieldError {
                field: "ack_ids",
                message: "is required: the ack ids of the deliveries".into(),
            })
        })
}

/// The settle routes: `ack_ids` and the verb's options from the body, then the hub.
async fn settle(
    state: &AppState,
    caller: &herald_hub::access::Caller,
    name: &str,
    body: Result<Bytes, BytesRejection>,
    verb: SettleVerb,
) -> Result<Json<SettleResponse>, ApiError> {
    let mut known = vec!["ack_ids"];
    known.extend(verb.options());
    let fields =
        Fields::with_nullable(object(body)?, &known, verb.options()).map_err(invalid_body)?;
    let ids = ack_ids(&fields)?;
    let how = verb.settle(&fields).map_err(invalid_body)?;
    user_consumer(name)?;
    Ok(Json(
        state
            .hub
            .as_caller(caller)
            .settle(name, &ids, how)
            .await?
            .into(),
    ))
}

/// `POST /api/consumers/{name}/ack`.
#[utoipa::path(
    post,
    path = "/api/consumers/{name}/ack",
    tag = "consumers",
    summary = "Ack messages",
    description = "Settles the deliveries: they are not delivered again. Answered only once \
        durable: an acked message never comes back, also after a crash. An ack of an \
        earlier delivery of a message still counts (the work was done). Unknown or \
        already settled ack ids are listed in `unknown`, not an error.",
    params(("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name.")),
    request_body(content((crate::wire::schema::AckRequest = "application/json"))),
    responses(
        (status = 200, description = "Settled.", body = SettleResponse),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn ack(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettleResponse>, ApiError> {
    settle(&state, &caller, &name, body, SettleVerb::Ack).await
}

/// `POST /api/consumers/{name}/nak`.
#[utoipa::path(
    post,
    path = "/api/consumers/{name}/nak",
    tag = "consumers",
    summary = "NAK messages",
    description = "Gives the deliveries back: each is delivered again after `delay_ms`, or \
        after the consumer's backoff for its number of failures when absent. A NAK of a \
        message's last allowed delivery (`max_deliver`) sends it to the dead letters at \
        once, with `reason` as its `last_error`.",
    params(("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name.")),
    request_body(content((crate::wire::schema::NakRequest = "application/json"))),
    responses(
        (status = 200, description = "Given back.", body = SettleResponse),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn nak(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettleResponse>, ApiError> {
    settle(&state, &caller, &name, body, SettleVerb::Nak).await
}

/// `POST /api/consumers/{name}/progress`.
#[utoipa::path(
    post,
    path = "/api/consumers/{name}/progress",
    tag = "consumers",
    summary = "Extend the ack wait",
    description = "Restarts the ack wait of deliveries still being worked on.",
    params(("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name.")),
    request_body(content((crate::wire::schema::AckRequest = "application/json"))),
    responses(
        (status = 200, description = "Extended.", body = SettleResponse),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn progress(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettleResponse>, ApiError> {
    settle(&state, &caller, &name, body, SettleVerb::Progress).await
}

/// `POST /api/consumers/{name}/term`.
#[utoipa::path(
    post,
    path = "/api/consumers/{name}/term",
    tag = "consumers",
    summary = "Give up on messages",
    description = "Sends the deliveries straight to the consumer's dead letters, with `reason` \
        as their `last_error`.",
    params(("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name.")),
    request_body(content((crate::wire::schema::TermRequest = "application/json"))),
    responses(
        (status = 200, description = "Dead-lettered.", body = SettleResponse),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn term(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettleResponse>, ApiError> {
    settle(&state, &caller, &name, body, SettleVerb::Term).await
}

/// `GET /api/consumers/{name}/dead-letters`.
#[utoipa::path(
    get,
    path = "/api/consumers/{name}/dead-letters",
    tag = "consumers",
    summary = "List a consumer's dead letters",
    description = "Messages the consumer gave up on (`max_deliver` deliveries without an ack, \
        or termed), in seq order. Page with `after_seq` = the last `event.seq` seen. Unknown \
        or repeated parameters are `400 invalid_query`.",
    params(
        ("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name."),
        ("limit" = Option<crate::wire::schema::Limit>, Query, description = "Most dead letters to answer (default 100)."),
        ("after_seq" = Option<crate::wire::schema::SeqParam>, Query, description = "Only dead letters with a larger seq."),
    ),
    responses(
        (status = 200, description = "The dead letters.", body = ConsumerDeadLetterList),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    user_consumer(&name)?;
    let (limit, after_seq) = dead_letter_query(raw.as_deref())?;
    let dead = state
        .hub
        .as_caller(&caller)
        .consumer_dead_letters(&name, after_seq, limit)
        .await?;
    let dead_letters: Vec<ConsumerDeadLetterJson> =
        dead.iter().map(ConsumerDeadLetterJson::from).collect();
    Ok(Json(ConsumerDeadLetterList {
        count: dead_letters.len(),
        dead_letters,
    })
    .into_response())
}

/// The `limit` and `after_seq` of a dead-letter listing.
pub(super) fn dead_letter_query(raw: Option<&str>) -> Result<(usize, Seq), ApiError> {
    super::page_params(raw, DEFAULT_DEAD_LETTER_LIMIT, "after_seq")
}

/// `POST /api/consumers/{name}/dead-letters/redrive`.
#[utoipa::path(
    post,
    path = "/api/consumers/{name}/dead-letters/redrive",
    tag = "consumers",
    summary = "Redrive dead letters",
    description = "Sends the dead letters with these `seqs` (all of them when `seqs` is absent \
        or the body is empty) back for delivery, their delivery count reset. Seqs that are \
        not dead letters are skipped.",
    params(("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name.")),
    request_body(content((crate::wire::schema::RedriveRequest = "application/json"))),
    responses(
        (status = 200, description = "How many went back.", body = RedriveResponse),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn redrive(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RedriveResponse>, ApiError> {
    user_consumer(&name)?;
    let seqs = redrive_seqs(body)?;
    let redriven = state.hub.as_caller(&caller).redrive(&name, seqs).await?;
    Ok(Json(RedriveResponse { redriven }))
}

/// The `seqs` of a redrive body (`None`: all).
pub(super) fn redrive_seqs(
    body: Result<Bytes, BytesRejection>,
) -> Result<Option<Vec<Seq>>, ApiError> {
    let body = body.map_err(body_rejection)?;
    let seqs = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let fields = Fields::with_nullable(parse_json_object(&body)?, &["seqs"], &["seqs"])
            .map_err(invalid_body)?;
        fields
            .integers("seqs", MAX_ACK_IDS, 1..=i64::MAX as u64)
            .map_err(invalid_body)?
    };
    Ok(seqs)
}

/// `DELETE /api/consumers/{name}/dead-letters/{seq}`.
#[utoipa::path(
    delete,
    path = "/api/consumers/{name}/dead-letters/{seq}",
    tag = "consumers",
    summary = "Discard a dead letter",
    params(
        ("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name."),
        ("seq" = u64, Path, description = "The dead letter's event seq."),
    ),
    responses(
        (status = 204, description = "Discarded."),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn discard_dead_letter(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((name, seq)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let seq = parse_seq("seq", &seq)?;
    user_consumer(&name)?;
    if state
        .hub
        .as_caller(&caller)
        .discard_dead_letter(&name, seq)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            ErrorCode::DeadLetterNotFound,
            format!("consumer {name:?} has no dead letter with seq {seq}"),
        ))
    }
}
