//! Publishing: `POST /api/events` (one event) and `POST /api/events:batch` (up to
//! [`MAX_BATCH_EVENTS`], all or nothing).
//!
//! A publish may carry its own event `id` (a UUID). Publishing an id that is already
//! stored stores nothing and answers `200` with the original event and
//! `"duplicate": true` — also when two such requests race, and after a restart: the
//! store's unique id index decides, for as long as the original event is kept.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::{NewEvent, Payload, Subject};
use herald_hub::access::Caller;
use herald_hub::Published;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::cloudevents::{self, Mode};
use super::{body_rejection, json_error, parse_all, parse_json_object, parse_uuid, truncate};
use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorCode};
use crate::wire;
use crate::{AppState, CORRELATION_HEADER};

pub use crate::wire::{MAX_BATCH_EVENTS, MAX_ORIGIN_FIELD};

/// `POST /api/events`: a Herald event, or a CloudEvent in any of the three HTTP
/// binding modes (see [`cloudevents`]).
#[utoipa::path(
    post,
    path = "/api/events",
    tag = "events",
    summary = "Publish an event",
    description = "Stores one event and answers once it is durably committed. The body is \
        parsed as JSON whatever its content type, except for the CloudEvents media types: \
        `application/cloudevents+json` (one structured CloudEvent) and \
        `application/cloudevents-batch+json` (an array of them, all or nothing; answered like \
        `POST /api/events:batch`). CloudEvents binary mode works too: attributes in `ce-*` \
        headers (`ce-specversion: 1.0`, `ce-id`, `ce-source`, `ce-type`, extensions as \
        `ce-<name>`), the data as the body and its media type in `Content-Type`.",
    params(("X-Correlation-ID" = Option<crate::wire::schema::CorrelationId>, Header, description = "The correlation id of an event published without its own (a UUID; anything else is `422 invalid_correlation_id`).")),
    request_body(content(
        (wire::PublishRequest = "application/json"),
        (crate::wire::schema::CloudEvent = "application/cloudevents+json"),
        (crate::wire::schema::CloudEventBatch = "application/cloudevents-batch+json"),
    )),
    responses(
        (status = 201, description = "Stored (for a CloudEvents batch: at least one event was new, and the answer is a `BatchResponse`).",
            headers(("Location" = String, description = "`/api/events/{id}` of the new event (single events only).")),
            body = crate::wire::schema::PublishAnswer),
        (status = 200, description = "Every event was already stored (same `id`, or the same CloudEvent `source` and `id`): nothing new was stored; the answer describes the original.",
            headers(("Location" = String, description = "`/api/events/{id}` of the event (single events only).")),
            body = crate::wire::schema::PublishAnswer),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 409, response = crate::wire::schema::Conflict),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn publish_event(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A flood past its rate is refused before its body is parsed.
    caller
        .publish_refused()
        .map_err(|limited| ApiError::from(herald_hub::HubError::RateLimited(limited)))?;
    let body = body.map_err(body_rejection)?;
    let header_correlation = header_correlation_id(&headers)?;
    let trace = header_trace(&headers);
    let mut event = match cloudevents::mode(&headers) {
        Mode::Herald => {
            ensure_not_empty(&body)?;
            let request: wire::PublishRequest = parse_json_object(&body)?;
            new_event(&state, request, header_correlation)?
        }
        Mode::Structured => {
            ensure_not_empty(&body)?;
            cloudevents::parse_structured_body(&state, &body, header_correlation)?
        }
        Mode::Binary => cloudevents::parse_binary(&state, &headers, &body, header_correlation)?,
        Mode::Batch => {
            ensure_not_empty(&body)?;
            let events = cloudevents::parse_batch(&state, &body, header_correlation)?;
            return publish_many(&state, &caller, with_trace(events, trace)).await;
        }
    };
    if event.trace.is_none() {
        event.trace = trace.map(Box::new);
    }
    let published = state.publish(&caller, event).await?;
    let event = &published.event;
    let status = if published.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut response = (status, Json(wire::PublishResponse::from(&published))).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&event.correlation_id.to_string()) {
        headers.insert(CORRELATION_HEADER.clone(), value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("/api/events/{}", event.id)) {
        headers.insert(header::LOCATION, value);
    }
    Ok(response)
}

/// `{"events": [...]}`, the documented batch body (a bare array is accepted too).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    /// Borrowed from the body: each is parsed on its own, so that a bad one is
    /// reported with its index.
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// `POST /api/events:batch`: every event is checked first; if any is invalid the whole
/// batch is rejected with the index and reason of each bad one. Otherwise all are
/// committed in one transaction. Answers `201` when at least one event was new, `200`
/// when every one was a duplicate.
#[utoipa::path(
    post,
    path = "/api/events:batch",
    tag = "events",
    summary = "Publish up to 1000 events at once",
    description = "Every event is checked first: if any is invalid, nothing is stored and the \
        answer is `422 invalid_batch` with `error.items`. Otherwise all are committed in one \
        transaction. The body may be up to 4 MiB (`HERALD_MAX_BATCH_BODY_BYTES`). A \
        `application/cloudevents-batch+json` body is a CloudEvents batch.",
    params(("X-Correlation-ID" = Option<crate::wire::schema::CorrelationId>, Header, description = "The correlation id of events published without their own (a UUID; anything else is `422 invalid_correlation_id`).")),
    request_body(content(
        (crate::wire::schema::PublishBatchRequest = "application/json"),
        (crate::wire::schema::CloudEventBatch = "application/cloudevents-batch+json"),
    )),
    responses(
        (status = 201, description = "Stored: at least one event was new. One result per event, in order.", body = wire::BatchResponse),
        (status = 200, description = "Every event was already stored; nothing new was stored.", body = wire::BatchResponse),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 409, response = crate::wire::schema::Conflict),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn publish_batch(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A flood past its rate is refused before its body is parsed.
    caller
        .publish_refused()
        .map_err(|limited| ApiError::from(herald_hub::HubError::RateLimited(limited)))?;
    let body = body.map_err(body_rejection)?;
    ensure_not_empty(&body)?;
    let header_correlation = header_correlation_id(&headers)?;
    let trace = header_trace(&headers);
    if cloudevents::mode(&headers) == Mode::Batch {
        let events = cloudevents::parse_batch(&state, &body, header_correlation)?;
        return publish_many(&state, &caller, with_trace(events, trace)).await;
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let items: Vec<&RawValue> = if first == Some(b'[') {
        serde_json::from_slice(&body).map_err(json_error)?
    } else {
        parse_json_object::<BatchBody>(&body)?.events
    };
    if items.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidBatch,
            "the batch is empty; send {\"events\": [...]} with 1 to 1000 events",
        ));
    }
    if items.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::new(
            ErrorCode::InvalidBatch,
            format!(
                "the batch has {} events; the limit is {MAX_BATCH_EVENTS}",
                items.len()
            ),
        ));
    }
    let events = parse_all(items.iter(), "events", |item| {
        parse_json_object::<wire::PublishRequest>(item.get().as_bytes())
            .and_then(|request| new_event(&state, request, header_correlation))
    })?;
    publish_many(&state, &caller, with_trace(events, trace)).await
}

/// Commits validated events in one transaction and answers with a result per event.
async fn publish_many(
    state: &AppState,
    caller: &Caller,
    events: Vec<NewEvent>,
) -> Result<Response, ApiError> {
    // An empty CloudEvents batch is valid (JSON format §4.3): nothing to store.
    let published = if events.is_empty() {
        Vec::new()
    } else {
        state.publish_batch(caller, events).await?
    };
    let status = if published.iter().all(|p| p.duplicate) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let results: Vec<wire::PublishResponse> =
        published.iter().map(wire::PublishResponse::from).collect();
    let count = results.len();
    Ok((status, Json(wire::BatchResponse { results, count })).into_response())
}

fn ensure_not_empty(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            r#"the request body is empty; send a JSON object such as {"subject": "hub.local-hub.project.created", "payload": {}}"#,
        ));
    }
    Ok(())
}

/// The request's W3C trace context (`traceparent`, `tracestate` headers), when it has a
/// valid one. An invalid `traceparent` is ignored, never refused: "If the `trace-id`
/// value is invalid (for example if it contains non-allowed characters or all zeros),
/// vendors MUST ignore the `traceparent`." Several `tracestate` fields are one list
/// ("they MUST be combined into a single header"); several `traceparent`s are none.
pub(crate) fn header_trace(headers: &HeaderMap) -> Option<herald_core::TraceContext> {
    let mut parents = headers.get_all("traceparent").iter();
    let traceparent = parents.next()?.to_str().ok()?;
    if parents.next().is_some() {
        return None;
    }
    let mut tracestate = String::new();
    for value in headers.get_all("tracestate") {
        let Ok(text) = value.to_str() else { continue };
        if !tracestate.is_empty() {
            tracestate.push(',');
        }
        tracestate.push_str(text);
    }
    herald_core::TraceContext::parse(traceparent, Some(&tracestate))
}

/// Gives events without a trace context of their own (a CloudEvent's extension) the
/// request's.
pub(crate) fn with_trace(
    mut events: Vec<NewEvent>,
    trace: Option<herald_core::TraceContext>,
) -> Vec<NewEvent> {
    if let Some(trace) = trace {
        for event in events.iter_mut().filter(|e| e.trace.is_none()) {
            event.trace = Some(Box::new(trace.clone()));
        }
    }
    events
}

/// The `X-Correlation-ID` header as a UUID, when present.
pub(crate) fn header_correlation_id(headers: &HeaderMap) -> Result<Option<Uuid>, ApiError> {
    let Some(value) = headers.get(&CORRELATION_HEADER) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    parse_uuid(text).map(Some).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidCorrelationId,
            format!(
                "the X-Correlation-ID header must be a UUID, got {:?}",
                truncate(text)
            ),
        )
    })
}

/// Validates one publish request into a new event. `fallback_correlation` (the
/// request's header) is used when the body has no `correlation_id`.
pub(crate) fn new_event(
    state: &AppState,
    request: wire::PublishRequest,
    fallback_correlation: Option<Uuid>,
) -> Result<NewEvent, ApiError> {
    let subject = match request.subject {
        None => {
            return Err(ApiError::new(
                ErrorCode::InvalidSubject,
                "`subject` is required",
            ))
        }
        Some(s) => Subject::new(s)
            .map_err(|e| ApiError::new(ErrorCode::InvalidSubject, format!("`subject`: {e}")))?,
    };
    let payload = match request.payload {
        None => {
            return Err(ApiError::new(
                ErrorCode::InvalidPayload,
                "`payload` is required (a JSON object; use {} for none)",
            ))
        }
        Some(raw) => {
            herald_core::check_payload(raw.get())
                .map_err(|e| ApiError::new(ErrorCode::InvalidPayload, format!("`payload` {e}")))?;
            Payload::from_raw(raw)
                .map_err(|e| ApiError::new(ErrorCode::InvalidPayload, format!("`payload`: {e}")))?
        }
    };
    let correlation_id = match request.correlation_id {
        Some(text) => Some(parse_uuid(&text).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidCorrelationId,
                format!("`correlation_id` must be a UUID, got {:?}", truncate(&text)),
            )
        })?),
        None => fallback_correlation,
    };
    let id = match request.id {
        None => None,
        Some(text) => match parse_uuid(&text) {
            Some(id) if !id.is_nil() => Some(id),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidEventId,
                    format!("`id` must be a non-nil UUID, got {:?}", truncate(&text)),
                ))
            }
        },
    };
    let (service, user) = match request.origin {
        None => (Some("herald-http".to_owned()), None),
        Some(origin) => {
            for (name, value) in [("service", &origin.service), ("user", &origin.user)] {
                if value.as_ref().is_some_and(|v| v.len() > MAX_ORIGIN_FIELD) {
                    return Err(ApiError::new(
                        ErrorCode::InvalidBody,
                        format!("`origin.{name}` is longer than {MAX_ORIGIN_FIELD} bytes"),
                    ));
                }
            }
            (origin.service, origin.user)
        }
    };
    let mut event = NewEvent::new(
        subject,
        payload,
        state.hub.origin(service, user),
        correlation_id,
    );
    if let Some(id) = id {
        event.id = id;
    }
    Ok(event)
}

impl From<&Published> for wire::PublishResponse {
    fn from(published: &Published) -> Self {
        let event = &published.event;
        wire::PublishResponse {
            event_id: event.id,
            correlation_id: event.correlation_id,
            timestamp: event.timestamp.to_rfc3339(),
            seq: event.seq,
            duplicate: published.duplicate,
        }
    }
}

/// Seed 004's `POST /events/publish?source=URI` with `{event_type, data, tenant_id}`:
/// stored as a CloudEvent (`tenant_id` becomes the `tenantid` extension).
#[utoipa::path(
    post,
    path = "/events/publish",
    tag = "cloudevents",
    summary = "Publish a CloudEvent (seed 004's route)",
    description = "Stores a CloudEvent of type `event_type` and source `source`; `tenant_id` \
        becomes the `tenantid` extension. Unknown query parameters are `400 invalid_query`.",
    params(
        ("source" = crate::wire::schema::CloudEventSource, Query, description = "The CloudEvent's `source` (a URI-reference)."),
        ("X-Correlation-ID" = Option<crate::wire::schema::CorrelationId>, Header, description = "The correlation id when the body gives none that is a UUID (a UUID; anything else is `422 invalid_correlation_id`)."),
    ),
    request_body(content((cloudevents::LegacyPublish = "application/json"))),
    responses(
        (status = 201, description = "Stored.", body = wire::PublishResponse),
        (status = 200, description = "Already stored (same `source` and `id`); the answer describes the original.", body = wire::PublishResponse),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 409, response = crate::wire::schema::Conflict),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn publish_legacy(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A flood past its rate is refused before its body is parsed.
    caller
        .publish_refused()
        .map_err(|limited| ApiError::from(herald_hub::HubError::RateLimited(limited)))?;
    let body = body.map_err(body_rejection)?;
    ensure_not_empty(&body)?;
    let mut source = None;
    for (key, value) in super::form_pairs(raw.as_deref().unwrap_or(""))? {
        match key.as_str() {
            "source" => source = Some(value),
            other => {
                return Err(super::invalid_query(format!(
                    "unknown parameter `{}`; known: source",
                    truncate(other)
                )))
            }
        }
    }
    let source = source.filter(|s| !s.is_empty()).ok_or_else(|| {
        super::invalid_query("`source` (the event's CloudEvents source URI) is required")
    })?;
    let request: cloudevents::LegacyPublish = parse_json_object(&body)?;
    let structured = cloudevents::legacy_to_structured(source, request)?;
    let mut event =
        cloudevents::parse_structured(&state, structured, header_correlation_id(&headers)?)?;
    if event.trace.is_none() {
        event.trace = header_trace(&headers).map(Box::new);
    }
    let published = state.publish(&caller, event).await?;
    let status = if published.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(wire::PublishResponse::from(&published))).into_response())
}
