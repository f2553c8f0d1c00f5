//! Every error the API can answer, in one table: code, HTTP status, JSON-RPC code, and
//! the JSON body `{"error": {"code": "...", "message": "..."}}`.
//!
//! Codes are part of the wire contract: a code keeps its meaning forever. Retire codes;
//! never reuse them.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_hub::schemas::{SchemaError, SchemaViolation};
use herald_hub::HubError;
use serde::Serialize;

/// Defines [`ErrorCode`] from one table: variant, wire code, HTTP status and the
/// JSON-RPC code the same condition gets on `/rpc` (explicit for every code, so that a
/// new status never falls into a JSON-RPC kind by accident). The same table gives
/// [`ErrorCode::ALL`], which the OpenAPI document lists per status.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal => $status:ident, $rpc:ident,)+) => {
        /// What went wrong, as clients see it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }

            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)+
                }
            }

            /// The JSON-RPC `error.code` of this condition.
            pub fn rpc(self) -> RpcCode {
                match self {
                    $(ErrorCode::$variant => RpcCode::$rpc,)+
                }
            }
        }
    };
}

error_codes! {
    /// The body is not valid JSON.
    InvalidJson = "invalid_json" => BAD_REQUEST, ParseError,
    /// The body is JSON but not the shape the endpoint takes.
    InvalidBody = "invalid_body" => UNPROCESSABLE_ENTITY, InvalidParams,
    InvalidSubject = "invalid_subject" => UNPROCESSABLE_ENTITY, InvalidParams,
    InvalidPayload = "invalid_payload" => UNPROCESSABLE_ENTITY, InvalidParams,
    InvalidCorrelationId = "invalid_correlation_id" => UNPROCESSABLE_ENTITY, InvalidParams,
    /// One or more events of a batch are invalid (see `items`), or the batch is empty or too big.
    InvalidBatch = "invalid_batch" => UNPROCESSABLE_ENTITY, InvalidParams,
    /// A CloudEvent is missing a required attribute, has a bad `specversion`, or
    /// otherwise breaks the CloudEvents v1.0 spec.
    InvalidCloudEvent = "invalid_cloudevent" => UNPROCESSABLE_ENTITY, InvalidParams,
    /// A query-string parameter is missing its value, malformed or out of range.
    InvalidQuery = "invalid_query" => BAD_REQUEST, InvalidParams,
    InvalidEventId = "invalid_event_id" => BAD_REQUEST, InvalidParams,
    PayloadTooLarge = "payload_too_large" => PAYLOAD_TOO_LARGE, InvalidRequest,
    QueryTooLong = "query_too_long" => BAD_REQUEST, InvalidRequest,
    /// `GET /api/events/stream` without a WebSocket upgrade.
    WebsocketRequired = "websocket_required" => BAD_REQUEST, InvalidRequest,
    RequestTimeout = "request_timeout" => REQUEST_TIMEOUT, Unavailable,
    /// The request line or a header is not valid HTTP/1.1 (answered before any route).
    BadRequest = "bad_request" => BAD_REQUEST, InvalidRequest,
    /// The URI is longer than the server reads.
    UriTooLong = "uri_too_long" => URI_TOO_LONG, InvalidRequest,
    /// Too many request headers, or too large.
    HeadersTooLarge = "headers_too_large" => REQUEST_HEADER_FIELDS_TOO_LARGE, InvalidRequest,
    NotFound = "not_found" => NOT_FOUND, InvalidRequest,
    EventNotFound = "event_not_found" => NOT_FOUND, EventNotFound,
    /// A routing rule is malformed (`POST /api/rules`); nothing was stored.
    InvalidRule = "invalid_rule" => UNPROCESSABLE_ENTITY, InvalidParams,
    RuleNotFound = "rule_not_found" => NOT_FOUND, InvalidParams,
    /// A routing rule with that id already exists.
    RuleExists = "rule_exists" => CONFLICT, InvalidParams,
    /// The hub already keeps the most routing rules it takes.
    TooManyRules = "too_many_rules" => CONFLICT, InvalidRequest,
    /// No dead letter has that id (NATS bridge) or seq (consumer).
    DeadLetterNotFound = "dead_letter_not_found" => NOT_FOUND, InvalidParams,
    /// No durable consumer has that name.
    ConsumerNotFound = "consumer_not_found" => NOT_FOUND, InvalidParams,
    /// A consumer's settings are malformed or out of range (the message names the
    /// field); nothing was created or changed.
    InvalidConsumer = "invalid_consumer" => UNPROCESSABLE_ENTITY, InvalidParams,
    /// The consumer exists with another value of a field that cannot change
    /// (`filter_subjects`, `deliver_policy`, `opt_start_seq`, `opt_start_time`).
    ConsumerConflict = "consumer_conflict" => CONFLICT, InvalidParams,
    /// The hub already keeps the most consumers it takes (`--max-consumers`).
    TooManyConsumers = "too_many_consumers" => CONFLICT, InvalidRequest,
    /// An aggregate request names a bad type or id, or its body is malformed.
    InvalidAggregate = "invalid_aggregate" => UNPROCESSABLE_ENTITY, InvalidParams,
    /// The aggregate has no events.
    AggregateNotFound = "aggregate_not_found" => NOT_FOUND, InvalidParams,
    /// The aggregate has no snapshot.
    SnapshotNotFound = "snapshot_not_found" => NOT_FOUND, InvalidParams,
    /// The aggregate is not at the expected version (`current_version` says where it
    /// is); nothing was written.
    VersionConflict = "version_conflict" => CONFLICT, InvalidParams,
    MethodNotAllowed = "method_not_allowed" => METHOD_NOT_ALLOWED, InvalidRequest,
    /// No API key, or one that is malformed, unknown, revoked or expired
    /// (`HERALD_AUTH=required`).
    Unauthenticated = "unauthenticated" => UNAUTHORIZED, Unauthenticated,
    /// The API key lacks the right (publish or subscribe on a subject, admin).
    Forbidden = "forbidden" => FORBIDDEN, Forbidden,
    /// Over a publish rate, or at a count limit (streams, consumers, rules), of the key or
    /// its tenant; nothing was stored. `Retry-After` and `RateLimit-*` say when to retry.
    RateLimited = "rate_limited" => TOO_MANY_REQUESTS, Unavailable,
    /// A tenant or key is malformed; nothing was stored.
    InvalidAccess = "invalid_access" => UNPROCESSABLE_ENTITY, InvalidParams,
    /// A tenant with that id exists, its subject space overlaps another's, or an event
    /// id is taken by an event the key may not see.
    Conflict = "conflict" => CONFLICT, InvalidParams,
    TenantNotFound = "tenant_not_found" => NOT_FOUND, InvalidParams,
    KeyNotFound = "key_not_found" => NOT_FOUND, InvalidParams,
    /// An event's payload fails an event schema whose pattern matches its subject
    /// (`error.schema`, `error.index`, `error.violations`); nothing of the request was stored.
    SchemaViolation = "schema_violation" => UNPROCESSABLE_ENTITY, SchemaViolation,
    /// An event schema's name, pattern or JSON Schema document cannot be used (the
    /// message says why; for a document, the validator's own message); nothing was stored.
    InvalidSchema = "invalid_schema" => UNPROCESSABLE_ENTITY, InvalidParams,
    SchemaNotFound = "schema_not_found" => NOT_FOUND, InvalidParams,
    /// The hub already keeps the most event schemas it takes (`--max-schemas`).
    TooManySchemas = "too_many_schemas" => CONFLICT, InvalidRequest,
    /// A retention policy is malformed (the message names it and the field).
    InvalidRetention = "invalid_retention" => UNPROCESSABLE_ENTITY, InvalidParams,
    TooManyStreams = "too_many_streams" => SERVICE_UNAVAILABLE, Unavailable,
    /// The server is at its connection cap (`HERALD_MAX_CONNECTIONS`); only health checks
    /// are answered on the reserve above it.
    TooManyConnections = "too_many_connections" => SERVICE_UNAVAILABLE, Unavailable,
    /// The request ran out of time after its events reached the commit queue: they may
    /// or may not be stored. Publish again with the same ids (`event_ids`) to settle it.
    OutcomeUnknown = "outcome_unknown" => SERVICE_UNAVAILABLE, Unavailable,
    StoreUnavailable = "store_unavailable" => SERVICE_UNAVAILABLE, Unavailable,
    ShuttingDown = "shutting_down" => SERVICE_UNAVAILABLE, Unavailable,
    Internal = "internal_error" => INTERNAL_SERVER_ERROR, Internal,
}

/// The `error.code` numbers of this endpoint. They keep their meaning forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcCode {
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    Internal,
    Unavailable,
    EventNotFound,
    Unauthenticated,
    Forbidden,
    SchemaViolation,
}

impl RpcCode {
    /// Every code, in the order `GET /rpc/methods` lists them.
    pub const ALL: [RpcCode; 10] = [
        RpcCode::ParseError,
        RpcCode::InvalidRequest,
        RpcCode::MethodNotFound,
        RpcCode::InvalidParams,
        RpcCode::Internal,
        RpcCode::Unavailable,
        RpcCode::EventNotFound,
        RpcCode::Unauthenticated,
        RpcCode::Forbidden,
        RpcCode::SchemaViolation,
    ];

    pub fn number(self) -> i64 {
        match self {
            RpcCode::ParseError => -32700,
            RpcCode::InvalidRequest => -32600,
            RpcCode::MethodNotFound => -32601,
            RpcCode::InvalidParams => -32602,
            RpcCode::Internal => -32603,
            RpcCode::Unavailable => -32000,
            RpcCode::EventNotFound => -32004,
            RpcCode::Unauthenticated => -32001,
            RpcCode::Forbidden => -32003,
            RpcCode::SchemaViolation => -32022,
        }
    }

    /// The start of every message with this code: `"Method not found: invalid.method"`.
    pub fn title(self) -> &'static str {
        match self {
            RpcCode::ParseError => "Parse error",
            RpcCode::InvalidRequest => "Invalid Request",
            RpcCode::MethodNotFound => "Method not found",
            RpcCode::InvalidParams => "Invalid params",
            RpcCode::Internal => "Internal error",
            RpcCode::Unavailable => "Unavailable",
            RpcCode::EventNotFound => "Event not found",
            RpcCode::Unauthenticated => "Unauthenticated",
            RpcCode::Forbidden => "Forbidden",
            RpcCode::SchemaViolation => "Schema violation",
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            RpcCode::ParseError => "the body is not valid JSON (the response's id is null)",
            RpcCode::InvalidRequest => {
                "not a JSON-RPC 2.0 request: `jsonrpc` is not \"2.0\", `method` is not a string, \
                 `params` is not an object or array, `id` is not a string, number or null, an \
                 empty batch, a batch of more than 1000 requests, or a body over the size limit"
            }
            RpcCode::MethodNotFound => "no such method; `data.available_methods` lists them all",
            RpcCode::InvalidParams => {
                "a parameter is missing, unknown, of the wrong type or invalid; `data.param` \
                 names it and `data.reason` says why. Nothing of the call was stored"
            }
            RpcCode::Internal => "a bug or damaged data on the server; not worth retrying",
            RpcCode::Unavailable => {
                "the store cannot serve right now or the hub is shutting down; nothing of the \
                 call was stored. Retry after `data.retry_after_secs`"
            }
            RpcCode::EventNotFound => "`bus.get`: no event has this id",
            RpcCode::Unauthenticated => {
                "the hub requires an API key and none valid came with the request                  (`Authorization: Bearer <key>` on `POST /rpc`)"
            }
            RpcCode::Forbidden => "the API key lacks the right to this call's subject or operation",
            RpcCode::SchemaViolation => {
                "an event's payload fails an event schema whose pattern matches its subject; \
                 `data.schema` names it, `data.index` the event, `data.violations` each failing \
                 `path` and `message`. Nothing of the call was stored"
            }
        }
    }
}

/// An error answer. Build one with [`ApiError::new`]; it renders itself.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// For a rejected batch: what is wrong with each bad item.
    pub items: Vec<ItemError>,
    /// For `outcome_unknown`: the ids to publish again.
    pub event_ids: Vec<uuid::Uuid>,
    /// For `rate_limited`: the `Retry-After` and `RateLimit-*` headers' values.
    pub rate_limit: Option<Box<RateLimitHeaders>>,
    /// For `version_conflict`: the aggregate's version.
    pub current_version: Option<u64>,
    /// For `schema_violation`: which event, which schema, and where.
    pub schema_violation: Option<std::sync::Arc<SchemaViolation>>,
}

/// What a `429` tells a client about the limit it hit (the IETF RateLimit header fields,
/// draft-ietf-httpapi-ratelimit-headers).
#[derive(Debug, Clone, Copy)]
pub struct RateLimitHeaders {
    /// Events per window (`RateLimit-Limit`).
    pub limit: u32,
    /// Whole seconds until a retry can succeed (`Retry-After`, `RateLimit-Reset`).
    pub reset_secs: u64,
}

/// Why one item of a batch was rejected.
#[derive(Debug, Clone)]
pub struct ItemError {
    pub index: usize,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            items: Vec::new(),
            event_ids: Vec::new(),
            rate_limit: None,
            current_version: None,
            schema_violation: None,
        }
    }

    /// `422 schema_violation` with its details.
    pub fn schema_violation(violation: std::sync::Arc<SchemaViolation>) -> Self {
        let mut error = ApiError::new(ErrorCode::SchemaViolation, violation.to_string());
        error.schema_violation = Some(violation);
        error
    }

    pub fn with_event_ids(mut self, ids: Vec<uuid::Uuid>) -> Self {
        self.event_ids = ids;
        self
    }

    pub fn with_items(mut self, items: Vec<ItemError>) -> Self {
        self.items = items;
        self
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    items: Vec<ItemDetail<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    event_ids: &'a [uuid::Uuid],
    #[serde(skip_serializing_if = "Option::is_none")]
    current_version: Option<u64>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    schema_violation: Option<ViolationDetail<'a>>,
}

/// The details of `schema_violation`, in the REST body and in JSON-RPC `data` alike.
#[derive(Serialize)]
pub(crate) struct ViolationDetail<'a> {
    schema: &'a str,
    index: usize,
    violations: Vec<ViolationItem<'a>>,
}

#[derive(Serialize)]
struct ViolationItem<'a> {
    path: &'a str,
    message: &'a str,
}

impl<'a> ViolationDetail<'a> {
    pub(crate) fn new(violation: &'a SchemaViolation) -> Self {
        ViolationDetail {
            schema: &violation.schema,
            index: violation.index,
            violations: violation
                .violations
                .iter()
                .map(|v| ViolationItem {
                    path: &v.path,
                    message: &v.message,
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct ItemDetail<'a> {
    index: usize,
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code.as_str(), message = %self.message, "Request failed.");
        }
        let body = Body {
            error: Detail {
                code: self.code.as_str(),
                message: &self.message,
                items: self
                    .items
                    .iter()
                    .map(|item| ItemDetail {
                        index: item.index,
                        code: item.code.as_str(),
                        message: &item.message,
                    })
                    .collect(),
                event_ids: &self.event_ids,
                current_version: self.current_version,
                schema_violation: self.schema_violation.as_deref().map(ViolationDetail::new),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(
            self.code,
            ErrorCode::PayloadTooLarge | ErrorCode::RequestTimeout
        ) {
            // The rest of the body was not read, so this connection cannot carry another
            // request: say so instead of leaving the client to find a closed socket.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(limit) = self.rate_limit.as_deref() {
            let headers = response.headers_mut();
            for (name, value) in [
                ("retry-after", limit.reset_secs),
                ("ratelimit-limit", u64::from(limit.limit)),
                ("ratelimit-remaining", 0),
                ("ratelimit-reset", limit.reset_secs),
            ] {
                headers.insert(name, HeaderValue::from(value));
            }
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<herald_hub::consumers::ConsumerError> for ApiError {
    fn from(error: herald_hub::consumers::ConsumerError) -> Self {
        use herald_hub::consumers::ConsumerError;
        match error {
            ConsumerError::NotFound(_) => {
                ApiError::new(ErrorCode::ConsumerNotFound, error.to_string())
            }
            ConsumerError::Invalid(_) => {
                ApiError::new(ErrorCode::InvalidConsumer, error.to_string())
            }
            ConsumerError::Conflict { .. } | ConsumerError::Contended(_) => {
                ApiError::new(ErrorCode::ConsumerConflict, error.to_string())
            }
            ConsumerError::LimitReached(_) => {
                ApiError::new(ErrorCode::TooManyConsumers, error.to_string())
            }
            ConsumerError::Hub(error) => error.into(),
            other => {
                tracing::error!(error = %other, "Internal error.");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl From<herald_hub::access::AccessError> for ApiError {
    fn from(error: herald_hub::access::AccessError) -> Self {
        use herald_hub::access::AccessError;
        match error {
            AccessError::Unauthenticated => {
                ApiError::new(ErrorCode::Unauthenticated, error.to_string())
            }
            AccessError::Forbidden(message) => ApiError::new(ErrorCode::Forbidden, message),
            AccessError::Invalid { .. } => {
                ApiError::new(ErrorCode::InvalidAccess, error.to_string())
            }
            AccessError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            AccessError::NotFound(message) => ApiError::new(ErrorCode::TenantNotFound, message),
            AccessError::Hub(error) => error.into(),
            other => {
                tracing::error!(error = %other, "Internal error.");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl From<herald_hub::aggregates::AggregateError> for ApiError {
    fn from(error: herald_hub::aggregates::AggregateError) -> Self {
        use herald_hub::aggregates::AggregateError;
        match error {
            AggregateError::Hub(error) => error.into(),
            AggregateError::Invalid(message) => ApiError::new(ErrorCode::InvalidAggregate, message),
            AggregateError::VersionConflict { current_version } => {
                let mut error = ApiError::new(
                    ErrorCode::VersionConflict,
                    format!(
                        "the aggregate is at version {current_version}, not at the expected one; nothing was written"
                    ),
                );
                error.current_version = Some(current_version);
                error
            }
            AggregateError::SnapshotAhead {
                current_version, ..
            } => {
                let mut api = ApiError::new(ErrorCode::VersionConflict, error.to_string());
                api.current_version = Some(current_version);
                api
            }
            AggregateError::IdTaken(id) => ApiError::new(
                ErrorCode::Conflict,
                format!("event id {id} is already used by another event; nothing was written"),
            ),
            AggregateError::NotFound => {
                ApiError::new(ErrorCode::AggregateNotFound, "no such aggregate")
            }
            other => {
                tracing::error!(error = %other, "Internal error.");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl From<SchemaError> for ApiError {
    fn from(error: SchemaError) -> Self {
        match error {
            SchemaError::Invalid { .. } => {
                ApiError::new(ErrorCode::InvalidSchema, error.to_string())
            }
            SchemaError::NotFound(_) => ApiError::new(ErrorCode::SchemaNotFound, error.to_string()),
            SchemaError::LimitReached(message) => ApiError::new(ErrorCode::TooManySchemas, message),
            SchemaError::Forbidden(message) => ApiError::new(ErrorCode::Forbidden, message),
            SchemaError::Hub(error) => error.into(),
            other => {
                tracing::error!(error = %other, "Internal error.");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl From<HubError> for ApiError {
    fn from(error: HubError) -> Self {
        match error {
            HubError::Unavailable(error) => {
                ApiError::new(ErrorCode::StoreUnavailable, error.to_string())
            }
            HubError::ShuttingDown => ApiError::new(
                ErrorCode::ShuttingDown,
                "the hub is shutting down; retry on another instance or later",
            ),
            HubError::Forbidden(message) => ApiError::new(ErrorCode::Forbidden, message),
            HubError::RateLimited(limited) => {
                let mut error = ApiError::new(ErrorCode::RateLimited, limited.to_string());
                error.rate_limit = Some(Box::new(RateLimitHeaders {
                    limit: limited.per_second,
                    reset_secs: limited.retry_after.as_secs_f64().ceil().max(1.0) as u64,
                }));
                error
            }
            HubError::LimitReached(message) => ApiError::new(ErrorCode::RateLimited, message),
            HubError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            HubError::SchemaViolation(violation) => ApiError::schema_violation(violation),
            other => {
                tracing::error!(error = %other, "Internal error.");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unavailable_store_is_a_503_with_retry_after() {
        let response = ApiError::from(HubError::from(herald_store::StoreError::Unavailable(
            "disk full".into(),
        )))
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "store_unavailable");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk full"));
    }

    #[test]
    fn internal_errors_hide_details() {
        let error = ApiError::from(HubError::Internal("secret path /var/x".into()));
        assert_eq!(error.code, ErrorCode::Internal);
        assert!(!error.message.contains("secret"));
    }
}
