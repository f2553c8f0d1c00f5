//! REST handlers: query, get, health; publishing is in [`publish`].
//!
//! Request parsing is done by hand from the raw body and query pairs, so every mistake a
//! client can make gets its own error code and a message naming the field.

pub mod access;
pub mod aggregates;
pub mod bridge;
pub mod cloudevents;
pub mod consumers;
pub mod event_schemas;
pub mod publish;
pub mod retention;
pub mod rules;

pub use publish::{publish_batch, publish_event, publish_legacy};

use crate::auth::Authenticated;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::{NewEvent, Pattern, Seq, Timestamp};
use herald_store::{Query, Store, MAX_QUERY_LIMIT};
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode, ItemError};
use crate::wire;
use crate::AppState;

/// `GET /`.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    summary = "What this server is",
    responses(
        (status = 200, description = "The server's name, version, hub id and the seq of the last committed event.", body = wire::Index),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn index(State(state): State<AppState>) -> Result<Json<wire::Index>, ApiError> {
    let head_seq = state
        .hub
        .store()
        .head()
        .await
        .map_err(herald_hub::HubError::from)?;
    Ok(Json(wire::Index {
        name: "herald",
        version: env!("CARGO_PKG_VERSION"),
        hub_id: state.hub.hub_id().to_owned(),
        head_seq,
    }))
}

/// `GET /api/events`.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    summary = "Query events",
    description = "Events matching every filter given, in `seq` order. Page with `after_seq` = \
        the `X-Next-After-Seq` of the previous page. Unknown or repeated parameters are \
        `400 invalid_query`, and so is `since` later than `until`. With \
        `Accept: application/cloudevents-batch+json` the answer is a CloudEvents batch.",
    params(
        ("subject" = Option<crate::wire::schema::SubjectPattern>, Query, description = "A subject pattern; leave it out for every subject. Percent-encode `>` as `%3E`."),
        ("since" = Option<crate::wire::schema::Instant>, Query, description = "Only events committed at or after this instant."),
        ("until" = Option<crate::wire::schema::Instant>, Query, description = "Only events committed at or before this instant (not before `since`)."),
        ("correlation_id" = Option<uuid::Uuid>, Query, description = "Only events with this correlation id."),
        ("after_seq" = Option<crate::wire::schema::SeqParam>, Query, description = "Only events with a larger seq."),
        ("aggregate_type" = Option<crate::wire::schema::AggregateType>, Query, description = "Only events of aggregates of this type."),
        ("aggregate_id" = Option<crate::wire::schema::AggregateId>, Query, description = "Only events of aggregates with this id."),
        ("payload_contains" = Option<crate::wire::schema::PayloadText>, Query, description = "Only events whose payload, as its stored JSON text, contains this text (case-sensitive). Read by scan: combine it with other filters on a long log, and follow `X-Next-After-Seq`."),
        ("limit" = Option<crate::wire::schema::Limit>, Query, description = "Most events to answer."),
    ),
    responses(
        (status = 200, description = "The matching events, oldest first.",
            headers(("X-Next-After-Seq" = u64, description = "The `after_seq` of the next page; it moves on even when nothing in the scanned range matched.")),
            content(
                (Vec<wire::EventSchema> = "application/json"),
                (Vec<crate::wire::schema::StoredCloudEvent> = "application/cloudevents-batch+json"),
            )),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn query_events(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = parse_query(raw.as_deref().unwrap_or(""))?;
    let limit = query.limit;
    let page = state.hub.as_caller(&caller).query(query).await?;
    let mut response = if cloudevents::accepts(&headers, cloudevents::BATCH) {
        let batch: Vec<_> = page.events.iter().map(cloudevents::to_structured).collect();
        cloudevents::respond(StatusCode::OK, cloudevents::BATCH, batch)
    } else {
        let events: Vec<wire::Event<'_>> = page.events.iter().map(wire::Event::from).collect();
        Json(events).into_response()
    };
    // Where the next page starts: useful when a page is empty because nothing matched.
    let next = if page.events.len() < limit {
        page.scanned_to
    } else {
        page.events.last().map_or(page.scanned_to, |e| e.seq)
    };
    response
        .headers_mut()
        .insert("x-next-after-seq", HeaderValue::from(next));
    Ok(response)
}

/// Longest `payload_contains` text, in characters.
const MAX_PAYLOAD_TEXT: usize = 256;

/// Parses the query string of `GET /api/events`. Unknown or repeated parameters are
/// errors: a misspelt filter must not silently return everything.
pub fn parse_query(raw: &str) -> Result<Query, ApiError> {
    let mut query = Query::default();
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in form_pairs(raw)? {
        if seen.contains(&key) {
            return Err(invalid_query(format!("`{key}` is given more than once")));
        }
        seen.push(key.clone());
        match key.as_str() {
            "subject" => query.subject = Some(parse_subject_filter(&value)?),
            "since" => query.since = Some(parse_timestamp("since", &value)?),
            "until" => query.until = Some(parse_timestamp("until", &value)?),
            "correlation_id" => {
                query.correlation_id = Some(parse_uuid(&value).ok_or_else(|| {
                    invalid_query(format!("`correlation_id` must be a UUID, got {:?}", truncate(&value)))
                })?)
            }
            "aggregate_type" => {
                herald_core::aggregate::check_aggregate_type(&value)
                    .map_err(|e| invalid_query(format!("`aggregate_type`: {e}")))?;
                query.aggregate_type = Some(value);
            }
            "aggregate_id" => {
                herald_core::aggregate::check_aggregate_id(&value)
                    .map_err(|e| invalid_query(format!("`aggregate_id`: {e}")))?;
                query.aggregate_id = Some(value);
            }
            "payload_contains" => {
                if value.is_empty() || value.chars().count() > MAX_PAYLOAD_TEXT {
                    return Err(invalid_query(format!(
                        "`payload_contains` must be 1 to {MAX_PAYLOAD_TEXT} characters"
                    )));
                }
                query.payload_contains = Some(value);
            }
            "limit" => {
                query.limit = match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_QUERY_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(invalid_query(format!(
                            "`limit` must be a whole number from 1 to {MAX_QUERY_LIMIT}, got {:?}",
                            truncate(&value)
                        )))
                    }
                }
            }
            "after_seq" => query.after_seq = parse_seq("after_seq", &value)?,
            other => {
                return Err(invalid_query(format!(
                    "unknown parameter `{}`; known: subject, since, until, correlation_id, limit, after_seq, aggregate_type, aggregate_id, payload_contains",
                    truncate(other)
                )))
            }
        }
    }
    if let (Some(since), Some(until)) = (query.since, query.until) {
        if since > until {
            return Err(invalid_query("`since` is later than `until`"));
        }
    }
    Ok(query)
}

/// `GET /api/events/{id}`.
#[utoipa::path(
    get,
    path = "/api/events/{id}",
    tag = "events",
    summary = "Read one event",
    description = "With `Accept: application/cloudevents+json` the answer is the structured \
        CloudEvent (events not published as CloudEvents get `id` = the event id, `source` = \
        `/herald/<hub_id>`, `type` = the subject, and the extensions `correlationid` and \
        `heraldseq`).",
    params(("id" = crate::wire::schema::EventId, Path, description = "The event's id.")),
    responses(
        (status = 200, description = "The event.",
            headers(("X-Herald-Seq" = u64, description = "The event's seq (CloudEvents answers only).")),
            content(
                (wire::EventSchema = "application/json"),
                (crate::wire::schema::StoredCloudEvent = "application/cloudevents+json"),
            )),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn get_event(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidEventId,
            format!("event ids are UUIDs, got {:?}", truncate(&id)),
        )
    })?;
    match state.hub.as_caller(&caller).get(id).await? {
        Some(event) if cloudevents::accepts(&headers, cloudevents::STRUCTURED) => {
            let mut response = cloudevents::respond(
                StatusCode::OK,
                cloudevents::STRUCTURED,
                cloudevents::to_structured(&event),
            );
            response
                .headers_mut()
                .insert("x-herald-seq", HeaderValue::from(event.seq));
            Ok(response)
        }
        Some(event) => Ok(Json(wire::Event::from(&event)).into_response()),
        None => Err(ApiError::new(
            ErrorCode::EventNotFound,
            format!("no event with id {id}"),
        )),
    }
}

/// `GET /health`: 200 while the store works (NATS being away only degrades the status
/// to `degraded`), 503 when the store does not.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Health",
    responses(
        (status = 200, description = "The store works (`status`: `healthy`, or `degraded` while NATS is configured but unreachable).", body = wire::Health),
        (status = 503, description = "The store cannot be read, commits fail, or a commit hangs (`status`: `unhealthy`).", body = wire::Health),
    ),
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let store = state.hub.health().await;
    let nats = state.hub.nats_status();
    let nats_connected = nats.as_ref().is_some_and(|n| n.connected);
    let (status, code) = if !store.healthy {
        ("unhealthy", StatusCode::SERVICE_UNAVAILABLE)
    } else if nats.as_ref().is_some_and(|n| !n.healthy) {
        ("degraded", StatusCode::OK)
    } else {
        ("healthy", StatusCode::OK)
    };
    let body = wire::Health {
        status,
        nats: match &nats {
            None => "disabled",
            Some(n) if n.healthy => "healthy",
            Some(_) => "unhealthy",
        },
        database: if store.healthy {
            "healthy"
        } else {
            "unhealthy"
        },
        timestamp: Timestamp::now().to_rfc3339(),
        details: wire::HealthDetails {
            nats_connected,
            database_connected: store.healthy,
            database_writable: state.hub.write_state().is_ok(),
            database_error: (!store.healthy).then(|| store.detail.clone()),
            running: !state.shutdown.is_cancelled(),
        },
    };
    (code, Json(body)).into_response()
}

/// `GET /health/nats`: the NATS connection (`url` is `null` when NATS is not configured,
/// and never shows credentials).
#[utoipa::path(
    get,
    path = "/health/nats",
    tag = "operations",
    summary = "NATS connection",
    responses((status = 200, description = "The connection's state.", body = wire::NatsHealth)),
)]
pub async fn nats_health(State(state): State<AppState>) -> Json<wire::NatsHealth> {
    let status = state.hub.nats_status();
    Json(wire::NatsHealth {
        connected: status.as_ref().is_some_and(|s| s.connected),
        url: status.map(|s| s.url),
        relay: state
            .hub
            .relay_position()
            .map(|(cursor, head)| wire::RelayHealth {
                acked_seq: cursor,
                head_seq: head,
            }),
    })
}

/// `GET /api/hubs`: hubs heard announcing themselves on NATS recently (seed 002's
/// federation presence).
#[utoipa::path(
    get,
    path = "/api/hubs",
    tag = "operations",
    summary = "Hubs seen on the bus",
    responses((status = 200, description = "Hubs whose last announcement is within three of their intervals; empty without NATS.", body = wire::HubList)),
)]
pub async fn hubs(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<wire::HubList>, ApiError> {
    let hubs: Vec<wire::HubInfo> = state
        .hub
        .as_caller(&caller)
        .hubs()?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(wire::HubList {
        count: hubs.len(),
        hubs,
    }))
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; see GET / and the README for the API",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

pub(crate) fn invalid_query(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, message)
}

/// Splits a query string into decoded `(name, value)` pairs
/// (`application/x-www-form-urlencoded`: `+` is a space, `%XX` a byte). Escapes that do
/// not decode — a `%` without two hex digits, bytes that are not UTF-8 — are errors
/// naming the parameter: decoding them loosely would filter by other text than the
/// client meant. One exception keeps seed 000's `subject=hub.%.project.%` working: a
/// `%` that is a whole dot-separated token stays a `%` (the pattern wildcard).
pub(crate) fn form_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode_form_component(name)
                .map_err(|e| invalid_query(format!("a parameter name {e}")))?;
            let value = decode_form_component(value)
                .map_err(|e| invalid_query(format!("`{}` {e}", truncate(&name))))?;
            Ok((name, value))
        })
        .collect()
}

/// Decodes one name or value of a query string; errors complete "`name` …".
fn decode_form_component(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let escape = bytes
                    .get(i + 1..i + 3)
                    .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit));
                if let Some(hex) = escape {
                    out.push(hex_value(hex[0]) << 4 | hex_value(hex[1]));
                    i += 3;
                    continue;
                }
                let whole_token =
                    (i == 0 || bytes[i - 1] == b'.') && bytes.get(i + 1).is_none_or(|b| *b == b'.');
                if !whole_token {
                    return Err(format!(
                        "has a `%` that is not a `%XX` escape (at {:?}); write a literal `%` as `%25`",
                        truncate(&text[i..])
                    ));
                }
                out.push(b'%');
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "has percent-escapes that are not UTF-8 text".to_owned())
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// The `subject` query parameter: a pattern. Empty is an error, not "everything": a
/// client that sends `subject=` most likely lost its filter on the way.
pub(crate) fn parse_subject_filter(value: &str) -> Result<Pattern, ApiError> {
    if value.is_empty() {
        return Err(invalid_query(
            "`subject` is empty; leave it out to match every subject, or give a pattern such as `hub.>`",
        ));
    }
    Pattern::parse_filter(value).map_err(|e| invalid_query(format!("`subject`: {e}")))
}

pub(crate) fn parse_timestamp(name: &str, value: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse(value).map_err(|e| invalid_query(format!("`{name}`: {e}")))
}

pub(crate) fn parse_seq(name: &str, value: &str) -> Result<Seq, ApiError> {
    value
        .parse::<Seq>()
        .ok()
        .filter(|s| *s <= i64::MAX as u64)
        .ok_or_else(|| {
            invalid_query(format!(
                "`{name}` must be a non-negative whole number, got {:?}",
                truncate(value)
            ))
        })
}

/// The paging parameters of a listing: `limit` (1 to [`MAX_QUERY_LIMIT`], else
/// `default_limit`) and the position to list after (named `after`). Unknown or repeated
/// parameters are errors.
pub(crate) fn page_params(
    raw: Option<&str>,
    default_limit: usize,
    after: &str,
) -> Result<(usize, Seq), ApiError> {
    let mut limit = default_limit;
    let mut after_value = 0;
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in form_pairs(raw.unwrap_or(""))? {
        if seen.contains(&key) {
            return Err(invalid_query(format!("`{key}` is given more than once")));
        }
        seen.push(key.clone());
        if key == "limit" {
            limit = value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_QUERY_LIMIT).contains(n))
                .ok_or_else(|| {
                    invalid_query(format!(
                        "`limit` must be a whole number from 1 to {MAX_QUERY_LIMIT}, got {:?}",
                        truncate(&value)
                    ))
                })?;
        } else if key == after {
            after_value = parse_seq(after, &value)?;
        } else {
            return Err(invalid_query(format!(
                "unknown parameter `{}`; known: limit, {after}",
                truncate(&key)
            )));
        }
    }
    Ok((limit, after_value))
}

pub(crate) fn parse_uuid(text: &str) -> Option<Uuid> {
    Uuid::try_parse(text.trim()).ok()
}

/// At most 64 characters of client input, for echoing it in messages.
pub(crate) fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Parses every item of a batch. If any is invalid, the whole batch is rejected with
/// the index, code and message of each bad item (`what` names the items in the message).
pub(crate) fn parse_all<T>(
    items: impl ExactSizeIterator<Item = T>,
    what: &str,
    mut parse: impl FnMut(T) -> Result<NewEvent, ApiError>,
) -> Result<Vec<NewEvent>, ApiError> {
    let total = items.len();
    let mut events = Vec::with_capacity(total);
    let mut errors = Vec::new();
    for (index, item) in items.enumerate() {
        match parse(item) {
            Ok(event) => events.push(event),
            Err(error) => errors.push(ItemError {
                index,
                code: error.code,
                message: error.message,
            }),
        }
    }
    if errors.is_empty() {
        return Ok(events);
    }
    Err(ApiError::new(
        ErrorCode::InvalidBatch,
        format!(
            "{} of {total} {what} are invalid; nothing was stored",
            errors.len()
        ),
    )
    .with_items(errors))
}

/// Parses a body that must be one JSON object into `T`. Syntax errors are 400
/// `invalid_json` (even when a type mismatch comes first in the text); valid JSON that is
/// not an object, or not the right shape, is 422 `invalid_body`. (serde would otherwise
/// read a struct from an array of its fields.)
pub(crate) fn parse_json_object<'a, T: serde::Deserialize<'a>>(
    body: &'a [u8],
) -> Result<T, ApiError> {
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let not_object = || {
        let kind = match first {
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b'n') => "null",
            Some(b't' | b'f') => "a boolean",
            _ => "a number",
        };
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("the body must be a JSON object, not {kind}"),
        )
    };
    match serde_json::from_slice::<T>(body) {
        Ok(value) if first == Some(b'{') => Ok(value),
        Ok(_) => Err(not_object()),
        Err(error) if error.classify() == serde_json::error::Category::Data => {
            if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                return Err(json_error(syntax));
            }
            if first != Some(b'{') {
                return Err(not_object());
            }
            Err(json_error(error))
        }
        Err(error) => Err(json_error(error)),
    }
}

pub(crate) fn json_error(error: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Data => ApiError::new(ErrorCode::InvalidBody, error.to_string()),
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {error}"),
        ),
    }
}

pub(crate) fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the request body is larger than the configured limit (HERALD_MAX_BODY_BYTES)",
        )
    } else {
        ApiError::new(ErrorCode::InvalidBody, rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query("subject=hub.%25.project.%25&limit=10&after_seq=5").unwrap();
        assert_eq!(q.subject.unwrap().as_str(), "hub.*.project.*");
        assert_eq!((q.limit, q.after_seq), (10, 5));
        assert_eq!(parse_query("").unwrap(), Query::default());
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=abc",
            "limit=-1",
            "since=garbage",
            "until=2025-13-01",
            "correlation_id=nope",
            "after_seq=-3",
            "subject=hub..x",
            "subject=hub.>.x",
            "sbject=hub.>",
            "limit=1&limit=2",
            "since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z",
        ] {
            let err = parse_query(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidQuery, "{bad}");
        }
        // An unescaped `+` in the offset arrives as a space and is still understood.
        assert!(parse_query("since=2025-11-03T12:00:00+00:00").is_ok());
    }

    #[test]
    fn query_escapes_decode_exactly_or_are_refused() {
        // RFC 3986 §2.1: "A percent-encoded octet is encoded as a character triplet,
        // consisting of the percent character "%" followed by the two hexadecimal digits
        // representing that octet's numeric value."
        let subject = |raw: &str| parse_query(raw).map(|q| q.subject.unwrap().as_str().to_owned());
        assert_eq!(subject("subject=hub.%3E").unwrap(), "hub.>");
        assert_eq!(subject("subject=hub.%3e").unwrap(), "hub.>");
        assert_eq!(subject("subject=caf%C3%A9.x").unwrap(), "café.x");
        // Seed 000 sends `%` unescaped as a whole-token wildcard.
        assert_eq!(
            subject("subject=hub.%.project.%").unwrap(),
            "hub.*.project.*"
        );
        assert_eq!(subject("subject=%.x").unwrap(), "*.x");
        for (bad, says) in [
            ("subject=", "`subject` is empty"),
            (
                "subject=%FF",
                "`subject` has percent-escapes that are not UTF-8",
            ),
            (
                "subject=hub.%C0%A0",
                "`subject` has percent-escapes that are not UTF-8",
            ),
            (
                "subject=%zz",
                "`subject` has a `%` that is not a `%XX` escape",
            ),
            (
                "subject=hub.a%",
                "`subject` has a `%` that is not a `%XX` escape",
            ),
            (
                "subject=hub.%2",
                "`subject` has a `%` that is not a `%XX` escape",
            ),
            ("limit=1%", "`limit` has a `%`"),
            ("li%FFmit=1", "a parameter name has percent-escapes"),
        ] {
            let err = parse_query(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidQuery, "{bad}");
            assert!(err.message.contains(says), "{bad}: {}", err.message);
        }
    }
}
