//! Routing rules (seed 002): `GET /api/rules`, `POST /api/rules`,
//! `GET /api/rules/{id}`, `DELETE /api/rules/{id}`, a rule's dead letters
//! (`/api/rules/{id}/dead-letters`, shaped as a consumer's), and the rules file of
//! `herald serve --rules` (a JSON array of `POST /api/rules` bodies, each with an `id`).
//!
//! Rules are validated completely before anything is stored: the request schema in the
//! OpenAPI document says exactly what is accepted (the URL and secret expressions are
//! the ones `herald_hub` checks with). A webhook's secret is never shown: answers carry
//! `secret_set` instead.

use crate::auth::Authenticated;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::{Pattern, Subject};
use herald_hub::rules::{
    self as hub_rules, Action, BreakerStatus, CircuitBreaker, RuleError, RuleId, RuleInfo,
    RuleSpec, Webhook,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::schema::{Object, Schema, SchemaType};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use super::consumers::{dead_letter_query, redrive_seqs};
use super::{body_rejection, parse_json_object, parse_seq, truncate};
use crate::error::{ApiError, ErrorCode};
use crate::wire::consumers::{ConsumerDeadLetterJson, ConsumerDeadLetterList, RedriveResponse};
use crate::AppState;

// ---- wire shapes -------------------------------------------------------------------------

/// `POST /api/rules` body (documented by [`RuleRequestSchema`]). Fields are checked by
/// [`parse_rule`] so that each problem gets its own message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    pub id: Option<String>,
    pub subject_pattern: Option<String>,
    pub action: Option<ActionRequest>,
    pub enabled: Option<bool>,
    pub description: Option<String>,
}

/// The `action` of a [`RuleRequest`]: every field of every type, checked by type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub url: Option<String>,
    pub secret: Option<String>,
    /// A JSON number: `5000.0` is as good as `5000` (JSON Schema calls both integers).
    pub timeout_ms: Option<serde_json::Number>,
    pub max_attempts: Option<serde_json::Number>,
    pub circuit_breaker: Option<BreakerRequest>,
    pub subject: Option<String>,
}

/// The `action.circuit_breaker` of a webhook [`ActionRequest`]; absent fields take the
/// defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerRequest {
    pub failure_threshold: Option<serde_json::Number>,
    pub cool_down_ms: Option<serde_json::Number>,
    pub max_cool_down_ms: Option<serde_json::Number>,
}

/// A routing rule as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rule {
    /// The rule's id (`/api/rules/{id}`).
    pub id: String,
    /// The subject pattern events must match (canonical: `%` shown as `*`).
    pub subject_pattern: String,
    pub action: RuleAction,
    /// A disabled rule does nothing.
    pub enabled: bool,
    pub description: Option<String>,
    /// When the rule was created, RFC 3339 UTC with microseconds.
    #[schema(format = DateTime)]
    pub created_at: String,
    pub stats: RuleStats,
}

/// What a rule does. The webhook's secret is never shown.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuleAction {
    /// POST the event to `url`, signed when `secret_set` (Standard Webhooks headers).
    Webhook {
        url: String,
        secret_set: bool,
        #[schema(minimum = 100, maximum = 60000)]
        timeout_ms: u64,
        #[schema(minimum = 1, maximum = 20)]
        max_attempts: u32,
        circuit_breaker: CircuitBreakerConfig,
    },
    /// Publish the event to this NATS subject.
    Republish { subject: String },
    /// A closure of a program embedding the hub (not managed over HTTP).
    Handler,
}

/// When a webhook's circuit breaker opens, and for how long.
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitBreakerConfig {
    /// Failed attempts in a row (no answer, 408, 429, 5xx) that open the breaker.
    #[schema(minimum = 1, maximum = 1000)]
    pub failure_threshold: u32,
    /// How long it stays open the first time.
    #[schema(minimum = 100, maximum = 3600000)]
    pub cool_down_ms: u64,
    /// Each failed probe doubles the cool-down, up to this.
    #[schema(minimum = 100, maximum = 3600000)]
    pub max_cool_down_ms: u64,
}

impl From<CircuitBreaker> for CircuitBreakerConfig {
    fn from(breaker: CircuitBreaker) -> Self {
        CircuitBreakerConfig {
            failure_threshold: breaker.failure_threshold(),
            cool_down_ms: breaker.cool_down().as_millis() as u64,
            max_cool_down_ms: breaker.max_cool_down().as_millis() as u64,
        }
    }
}

/// What a rule did on this instance since it started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleStats {
    /// Events whose action succeeded.
    pub delivered: u64,
    /// Events given up on: after their last attempt, or refused (they are in the rule's
    /// dead letters).
    pub failed: u64,
    /// Attempts that failed and are retried.
    pub retries: u64,
    /// A webhook rule's circuit breaker; `null` for other rules and disabled ones.
    pub breaker: Option<BreakerStats>,
}

/// Where a webhook rule's circuit breaker is. While it is `open`, deliveries wait (none
/// is skipped); then one probe goes out (`half_open`): success closes it, failure opens
/// it again for twice as long.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerStats {
    /// `closed`, `open` or `half_open`.
    #[schema(pattern = "^(closed|open|half_open)$")]
    pub state: String,
    /// Failed attempts since the receiver last answered.
    pub consecutive_failures: u32,
    /// Times the breaker opened since the server started (or the rule changed).
    pub trips: u64,
    /// When it last opened; `null` while closed.
    #[schema(format = DateTime)]
    pub opened_at: Option<String>,
    /// When an open breaker lets the next delivery through as a probe; `null` unless
    /// open.
    #[schema(format = DateTime)]
    pub next_probe_at: Option<String>,
}

impl From<BreakerStatus> for BreakerStats {
    fn from(status: BreakerStatus) -> Self {
        BreakerStats {
            state: status.state.as_str().to_owned(),
            consecutive_failures: status.consecutive_failures,
            trips: status.trips,
            opened_at: status.opened_at.map(|t| t.to_rfc3339()),
            next_probe_at: status.next_probe_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// `GET /api/rules`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleList {
    pub rules: Vec<Rule>,
    pub count: usize,
}

impl From<RuleInfo> for Rule {
    fn from(info: RuleInfo) -> Self {
        let action = match info.action {
            Some(Action::Webhook(webhook)) => RuleAction::Webhook {
                url: webhook.url().to_owned(),
                secret_set: webhook.secret_set(),
                timeout_ms: webhook.timeout().as_millis() as u64,
                max_attempts: webhook.max_attempts(),
                circuit_breaker: webhook.circuit_breaker().into(),
            },
            Some(Action::Republish { subject }) => RuleAction::Republish {
                subject: subject.to_string(),
            },
            None => RuleAction::Handler,
        };
        Rule {
            id: info.id.to_string(),
            subject_pattern: info.subject_pattern.to_string(),
            action,
            enabled: info.enabled,
            description: info.description,
            created_at: info.created_at.to_rfc3339(),
            stats: RuleStats {
                delivered: info.stats.delivered,
                failed: info.stats.failed,
                retries: info.stats.retries,
                breaker: info.breaker.map(BreakerStats::from),
            },
        }
    }
}

// ---- handlers ------------------------------------------------------------------------------

/// `GET /api/rules`.
#[utoipa::path(
    get,
    path = "/api/rules",
    tag = "rules",
    summary = "List routing rules",
    description = "Every rule, in the order they were added (seed 002's `get_routing_rules`). \
        Secrets are never shown.",
    responses((status = 200, description = "The rules.", body = RuleList)),
)]
pub async fn list_rules(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Json<RuleList> {
    let rules: Vec<Rule> = state
        .hub
        .as_caller(&caller)
        .routing_rules()
        .into_iter()
        .map(Rule::from)
        .collect();
    Json(RuleList {
        count: rules.len(),
        rules,
    })
}

/// `POST /api/rules`.
#[utoipa::path(
    post,
    path = "/api/rules",
    tag = "rules",
    summary = "Add a routing rule",
    description = "Stores a rule and starts it with the next event committed (events already \
        stored are not sent). Every event whose subject matches `subject_pattern` is then \
        delivered by the action, at least once (also across restarts): a `webhook` POSTs the \
        event (the JSON of `GET /api/events/{id}`) with the Standard Webhooks headers \
        `webhook-id` (`msg_` + 32 hex digits, a function of the rule id and event id: the \
        same on every attempt), `webhook-timestamp` and, with a `secret`, \
        `webhook-signature` (`v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`), \
        retrying network errors, 408, 429 and 5xx with exponential backoff up to \
        `max_attempts`, then keeping the event in the rule's dead letters (as it does at \
        once for other answers); after `circuit_breaker.failure_threshold` such failures in a row \
        the rule stops sending for a cool-down, then probes (events wait; none is \
        skipped); a `republish` publishes it to a NATS \
        subject (it fails, and is counted, while NATS is not configured). Webhook targets \
        on loopback, private, link-local or metadata addresses are refused unless the \
        server runs with `--webhook-allow-private`: a literal address with `422 \
        invalid_rule`, a name resolving to one at delivery (the event goes to the dead \
        letters). A failing rule never delays publishing or other rules. With several instances on one database, \
        each event is delivered once in the cluster.",
    request_body(content((RuleRequestSchema = "application/json"))),
    responses(
        (status = 201, description = "Stored and running.",
            headers(("Location" = String, description = "`/api/rules/{id}`.")),
            body = Rule),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 409, response = crate::wire::schema::Conflict),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn add_rule(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_rejection)?;
    let request: RuleRequest = parse_json_object(&body)?;
    let spec = parse_rule(request)?;
    let info = state
        .hub
        .as_caller(&caller)
        .add_rule(spec)
        .await
        .map_err(rule_error)?;
    let location = format!("/api/rules/{}", info.id);
    let mut response = (StatusCode::CREATED, Json(Rule::from(info))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// `GET /api/rules/{id}`.
#[utoipa::path(
    get,
    path = "/api/rules/{id}",
    tag = "rules",
    summary = "Read one routing rule",
    params(("id" = RuleIdSchema, Path, description = "The rule's id.")),
    responses(
        (status = 200, description = "The rule.", body = Rule),
        (status = 404, response = crate::wire::schema::NotFound),
    ),
)]
pub async fn get_rule(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Rule>, ApiError> {
    state
        .hub
        .as_caller(&caller)
        .routing_rule(&id)
        .map(|info| Json(Rule::from(info)))
        .ok_or_else(|| not_found(&id))
}

/// `DELETE /api/rules/{id}`.
#[utoipa::path(
    delete,
    path = "/api/rules/{id}",
    tag = "rules",
    summary = "Remove a routing rule",
    description = "Deletes the rule (seed 002's `remove_routing_rule`). Once answered, the \
        rule runs no more actions; deliveries in flight are abandoned.",
    params(("id" = RuleIdSchema, Path, description = "The rule's id.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn delete_rule(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.hub.as_caller(&caller).remove_rule(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}

/// `GET /api/rules/{id}/dead-letters`.
#[utoipa::path(
    get,
    path = "/api/rules/{id}/dead-letters",
    tag = "rules",
    summary = "List a rule's dead letters",
    description = "The events a webhook or republish rule gave up on, in seq order: reason \
        `max_deliver` after `max_attempts` failed attempts (5 for a republish), `term` when \
        the receiver refused the event (3xx, 4xx other than 408 and 429); `last_error` says \
        how the last attempt failed. Page with `after_seq` = the last `event.seq` seen. \
        Unknown or repeated parameters are `400 invalid_query`.",
    params(
        ("id" = RuleIdSchema, Path, description = "The rule's id."),
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
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (limit, after_seq) = dead_letter_query(raw.as_deref())?;
    let dead = state
        .hub
        .as_caller(&caller)
        .rule_dead_letters(&id, after_seq, limit)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let dead_letters: Vec<ConsumerDeadLetterJson> =
        dead.iter().map(ConsumerDeadLetterJson::from).collect();
    Ok(Json(ConsumerDeadLetterList {
        count: dead_letters.len(),
        dead_letters,
    })
    .into_response())
}

/// `POST /api/rules/{id}/dead-letters/redrive`.
#[utoipa::path(
    post,
    path = "/api/rules/{id}/dead-letters/redrive",
    tag = "rules",
    summary = "Redrive a rule's dead letters",
    description = "Sends the rule's dead letters with these `seqs` (all of them when `seqs` is \
        absent or the body is empty) back for delivery, each with `max_attempts` attempts \
        anew (and the same `webhook-id`). Seqs that are not dead letters are skipped.",
    params(("id" = RuleIdSchema, Path, description = "The rule's id.")),
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
pub async fn redrive_dead_letters(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RedriveResponse>, ApiError> {
    let seqs = redrive_seqs(body)?;
    let redriven = state
        .hub
        .as_caller(&caller)
        .redrive_rule(&id, seqs)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(RedriveResponse { redriven }))
}

/// `DELETE /api/rules/{id}/dead-letters/{seq}`.
#[utoipa::path(
    delete,
    path = "/api/rules/{id}/dead-letters/{seq}",
    tag = "rules",
    summary = "Discard a rule's dead letter",
    params(
        ("id" = RuleIdSchema, Path, description = "The rule's id."),
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
    Path((id, seq)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let seq = parse_seq("seq", &seq)?;
    match state
        .hub
        .as_caller(&caller)
        .discard_rule_dead_letter(&id, seq)
        .await?
    {
        None => Err(not_found(&id)),
        Some(true) => Ok(StatusCode::NO_CONTENT),
        Some(false) => Err(ApiError::new(
            ErrorCode::DeadLetterNotFound,
            format!("rule {:?} has no dead letter with seq {seq}", truncate(&id)),
        )),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::RuleNotFound,
        format!("no rule with id {:?}", truncate(id)),
    )
}

/// The API error for a rule the hub refused.
pub fn rule_error(error: RuleError) -> ApiError {
    match error {
        RuleError::Invalid(message) => ApiError::new(ErrorCode::InvalidRule, message),
        RuleError::Exists(id) => ApiError::new(
            ErrorCode::RuleExists,
            format!("a rule with id {id} already exists; DELETE it first to replace it"),
        ),
        RuleError::TooMany => ApiError::new(
            ErrorCode::TooManyRules,
            format!(
                "this hub already has {} rules, the most it keeps",
                hub_rules::MAX_RULES
            ),
        ),
        // A policy refusal rather than a malformed rule, but the same answer: the
        // message names the field, the address and the flag that allows it.
        error @ RuleError::ForbiddenTarget(_) => {
            ApiError::new(ErrorCode::InvalidRule, error.to_string())
        }
        RuleError::Hub(error) => error.into(),
        other => ApiError::new(ErrorCode::InvalidRule, other.to_string()),
    }
}

// ---- parsing ------------------------------------------------------------------------------

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRule, message)
}

/// Checks a rule request completely; `422 invalid_rule` names the field.
pub fn parse_rule(request: RuleRequest) -> Result<RuleSpec, ApiError> {
    let in_action = |error: RuleError| match error {
        RuleError::Invalid(message) => invalid(format!("`action`: {message}")),
        other => rule_error(other),
    };
    let id = request
        .id
        .map(RuleId::new)
        .transpose()
        .map_err(rule_error)?;
    let pattern = request
        .subject_pattern
        .ok_or_else(|| invalid("`subject_pattern` is required"))?;
    let subject_pattern =
        Pattern::parse_filter(&pattern).map_err(|e| invalid(format!("`subject_pattern`: {e}")))?;
    let action = request
        .action
        .ok_or_else(|| invalid("`action` is required"))?;
    let kind = action
        .kind
        .as_deref()
        .ok_or_else(|| invalid("`action.type` is required: `webhook` or `republish`"))?;
    let only_for = |field: &str, present: bool, kind: &str| {
        if present {
            Err(invalid(format!(
                "`action.{field}` is only for {kind} actions"
            )))
        } else {
            Ok(())
        }
    };
    let action = match kind {
        "webhook" => {
            only_for("subject", action.subject.is_some(), "republish")?;
            let url = action
                .url
                .ok_or_else(|| invalid("`action.url` is required for a webhook"))?;
            let mut webhook = Webhook::new(&url).map_err(in_action)?;
            if let Some(secret) = &action.secret {
                webhook = webhook.with_secret(secret).map_err(in_action)?;
            }
            if let Some(ms) = &action.timeout_ms {
                webhook = webhook
                    .with_timeout(Duration::from_millis(whole("timeout_ms", ms)?))
                    .map_err(in_action)?;
            }
            if let Some(attempts) = &action.max_attempts {
                let attempts = u32::try_from(whole("max_attempts", attempts)?).unwrap_or(u32::MAX);
                webhook = webhook.with_max_attempts(attempts).map_err(in_action)?;
            }
            if let Some(breaker) = &action.circuit_breaker {
                let default = CircuitBreaker::default();
                let millis =
                    |field: &str, value: &Option<serde_json::Number>, default: Duration| {
                        value.as_ref().map_or(Ok(default), |number| {
                            whole(&format!("circuit_breaker.{field}"), number)
                                .map(Duration::from_millis)
                        })
                    };
                let threshold = match &breaker.failure_threshold {
                    Some(number) => {
                        u32::try_from(whole("circuit_breaker.failure_threshold", number)?)
                            .unwrap_or(u32::MAX)
                    }
                    None => default.failure_threshold(),
                };
                // Each bound defaults to fit the other when only one is given: a first
                // cool-down above the default maximum raises the maximum with it, and a
                // maximum below the default first cool-down lowers that.
                let given_max = breaker
                    .max_cool_down_ms
                    .as_ref()
                    .map(|n| {
                        whole("circuit_breaker.max_cool_down_ms", n).map(Duration::from_millis)
                    })
                    .transpose()?;
                let cool_down = millis(
                    "cool_down_ms",
                    &breaker.cool_down_ms,
                    given_max.map_or(default.cool_down(), |max| default.cool_down().min(max)),
                )?;
                // A maximum below the first cool-down means the cool-down never grows.
                let max_cool_down = given_max.unwrap_or(default.max_cool_down()).max(cool_down);
                let breaker =
                    CircuitBreaker::new(threshold, cool_down, max_cool_down).map_err(in_action)?;
                webhook = webhook.with_circuit_breaker(breaker);
            }
            Action::Webhook(webhook)
        }
        "republish" => {
            only_for("url", action.url.is_some(), "webhook")?;
            only_for("secret", action.secret.is_some(), "webhook")?;
            only_for("timeout_ms", action.timeout_ms.is_some(), "webhook")?;
            only_for("max_attempts", action.max_attempts.is_some(), "webhook")?;
            only_for(
                "circuit_breaker",
                action.circuit_breaker.is_some(),
                "webhook",
            )?;
            let subject = action
                .subject
                .ok_or_else(|| invalid("`action.subject` is required for a republish"))?;
            Action::Republish {
                subject: Subject::new(subject)
                    .map_err(|e| invalid(format!("`action.subject`: {e}")))?,
            }
        }
        other => {
            return Err(invalid(format!(
                "`action.type` must be `webhook` or `republish`, not {:?}",
                truncate(other)
            )))
        }
    };
    let spec = RuleSpec {
        id,
        subject_pattern,
        action,
        enabled: request.enabled.unwrap_or(true),
        description: request.description,
    };
    spec.validate().map_err(rule_error)?;
    Ok(spec)
}

/// A non-negative whole JSON number (`17` or `17.0`).
fn whole(field: &str, number: &serde_json::Number) -> Result<u64, ApiError> {
    herald_core::json::non_negative_whole_number(number).ok_or_else(|| {
        invalid(format!(
            "`action.{field}` must be a non-negative whole number, not {number}"
        ))
    })
}

/// Reads a rules file: a JSON array of `POST /api/rules` bodies (or `{"rules": [...]}`),
/// each with an `id`. The error names the rule (counting from 1) and the problem.
pub fn parse_rules_file(text: &str) -> Result<Vec<RuleSpec>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum File {
        List(Vec<Value>),
        Object { rules: Vec<Value> },
    }
    let file: File = serde_json::from_str(text).map_err(|e| {
        format!("a rules file is a JSON array of rules (or {{\"rules\": [...]}}): {e}")
    })?;
    let (File::List(items) | File::Object { rules: items }) = file;
    let mut specs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let n = i + 1;
        let request: RuleRequest =
            serde_json::from_value(item).map_err(|e| format!("rule {n}: {e}"))?;
        if request.id.is_none() {
            return Err(format!(
                "rule {n}: `id` is required in a rules file (so that restarts replace it)"
            ));
        }
        let spec = parse_rule(request).map_err(|e| format!("rule {n}: {}", e.message))?;
        if specs.iter().any(|s: &RuleSpec| s.id == spec.id) {
            return Err(format!("rule {n}: another rule has the same `id`"));
        }
        specs.push(spec);
    }
    Ok(specs)
}

// ---- OpenAPI schemas ------------------------------------------------------------------------

/// A JSON Schema written as JSON (as `crate::openapi` does for what derives cannot say).
fn raw(value: Value) -> RefOr<Schema> {
    let Value::Object(map) = value else {
        panic!("a schema is a JSON object");
    };
    let mut object = Object::with_type(SchemaType::AnyValue);
    let mut extensions = Extensions::default();
    extensions.extend(map);
    object.extensions = Some(extensions);
    RefOr::T(Schema::Object(object))
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn nullable(mut schema: Value, kind: &str) -> Value {
    schema["type"] = json!([kind, "null"]);
    schema
}

/// A rule id.
pub struct RuleIdSchema;

impl PartialSchema for RuleIdSchema {
    fn schema() -> RefOr<Schema> {
        raw(json!({
            "type": "string",
            "description": "ASCII letters, digits, `-`, `_`, `.` and `:`, starting with a letter \
                or digit, at most 128 characters.",
            "pattern": hub_rules::RULE_ID_REGEX,
            "examples": ["audit-webhook"],
        }))
    }
}

impl ToSchema for RuleIdSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "RuleId".into()
    }
}

/// The body of `POST /api/rules`.
pub struct RuleRequestSchema;

impl PartialSchema for RuleRequestSchema {
    fn schema() -> RefOr<Schema> {
        use herald_hub::rules::webhook;
        let webhook_action = json!({
            "type": "object",
            "description": "POST each event to `url`.",
            "additionalProperties": false,
            "required": ["type", "url"],
            "properties": {
                "type": {"const": "webhook"},
                "url": {
                    "type": "string",
                    "maxLength": webhook::MAX_URL_BYTES,
                    "pattern": webhook::URL_REGEX,
                    "description": "`http` or `https`, with a DNS name or an IPv4 address; no \
                        user name or password, no fragment.",
                    "examples": ["https://example.com/hooks/herald"],
                },
                "secret": {
                    "anyOf": [
                        {"type": "string", "pattern": webhook::SECRET_REGEX},
                        {"type": "string", "pattern": webhook::RAW_SECRET_REGEX},
                        {"type": "null"},
                    ],
                    "description": "Signs deliveries (`webhook-signature`). `whsec_` + base64 of \
                        24 to 64 random bytes (Standard Webhooks; the decoded bytes are the key), \
                        or 8 to 256 printable ASCII characters, no spaces (their bytes are the key). Never \
                        shown again.",
                },
                "timeout_ms": nullable(json!({
                    "minimum": webhook::MIN_TIMEOUT.as_millis() as u64,
                    "maximum": webhook::MAX_TIMEOUT.as_millis() as u64,
                    "description": "Time one attempt may take; default 5000.",
                }), "integer"),
                "max_attempts": nullable(json!({
                    "minimum": 1,
                    "maximum": webhook::MAX_ATTEMPTS,
                    "description": "Attempts per event; default 5.",
                }), "integer"),
                "circuit_breaker": nullable(json!({
                    "description": "After `failure_threshold` failed attempts in a row (no \
                        answer, 408, 429, 5xx) the rule stops sending for `cool_down_ms`, then \
                        sends one probe: success closes the breaker, failure opens it again for \
                        twice as long, up to `max_cool_down_ms`. Events wait; none is skipped.",
                    "additionalProperties": false,
                    "properties": {
                        "failure_threshold": nullable(json!({
                            "minimum": 1,
                            "maximum": hub_rules::MAX_FAILURE_THRESHOLD,
                            "description": "Default 5.",
                        }), "integer"),
                        "cool_down_ms": nullable(json!({
                            "minimum": hub_rules::MIN_COOL_DOWN.as_millis() as u64,
                            "maximum": hub_rules::MAX_COOL_DOWN.as_millis() as u64,
                            "description": "Default 30000 (or `max_cool_down_ms`, if smaller).",
                        }), "integer"),
                        "max_cool_down_ms": nullable(json!({
                            "minimum": hub_rules::MIN_COOL_DOWN.as_millis() as u64,
                            "maximum": hub_rules::MAX_COOL_DOWN.as_millis() as u64,
                            "description": "The longest cool-down after doubling; default \
                                300000. Below `cool_down_ms`, it is `cool_down_ms` (the \
                                cool-down does not grow).",
                        }), "integer"),
                    },
                }), "object"),
            },
        });
        let republish_action = json!({
            "type": "object",
            "description": "Publish each event (its JSON, with Herald's headers) to a NATS \
                subject. Fails, and is counted, while NATS is not configured.",
            "additionalProperties": false,
            "required": ["type", "subject"],
            "properties": {
                "type": {"const": "republish"},
                "subject": reference("Subject"),
            },
        });
        raw(json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["subject_pattern", "action"],
            "properties": {
                "id": nullable(json!({
                    "pattern": hub_rules::RULE_ID_REGEX,
                    "description": "The rule's id; a UUID is generated when absent. An id that \
                        exists is `409 rule_exists`.",
                }), "string"),
                "subject_pattern": reference("SubjectPattern"),
                "action": {"oneOf": [webhook_action, republish_action]},
                "enabled": nullable(json!({"description": "Default true."}), "boolean"),
                "description": nullable(json!({"maxLength": hub_rules::MAX_DESCRIPTION_CHARS}), "string"),
            },
            "examples": [{
                "id": "audit-webhook",
                "subject_pattern": "hub.*.audit.>",
                "action": {"type": "webhook", "url": "https://example.com/hooks/herald",
                    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
                "description": "Audit trail",
            }],
        }))
    }
}

impl ToSchema for RuleRequestSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "RuleRequest".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<RuleSpec, ApiError> {
        parse_rule(serde_json::from_value(body).unwrap())
    }

    #[test]
    fn parses_and_checks_rules() {
        let spec = parse(json!({
            "id": "a1",
            "subject_pattern": "hub.%.project.>",
            "action": {"type": "webhook", "url": "http://127.0.0.1:1/x", "timeout_ms": 200.0, "max_attempts": 2, "secret": null},
            "enabled": null,
        }))
        .unwrap();
        assert_eq!(spec.subject_pattern.as_str(), "hub.*.project.>");
        assert!(spec.enabled);
        let spec = parse(json!({
            "subject_pattern": "hub.>",
            "action": {"type": "republish", "subject": "audit.copy"},
            "enabled": false,
        }))
        .unwrap();
        assert!(spec.id.is_none() && !spec.enabled);
        let breaker_of = |spec: RuleSpec| match spec.action {
            Action::Webhook(webhook) => webhook.circuit_breaker(),
            other => panic!("not a webhook: {other:?}"),
        };
        let spec = parse(json!({
            "subject_pattern": "hub.>",
            "action": {"type": "webhook", "url": "http://x", "circuit_breaker": {"failure_threshold": 2, "cool_down_ms": 1500}},
        }))
        .unwrap();
        assert_eq!(
            breaker_of(spec),
            CircuitBreaker::new(2, Duration::from_millis(1500), Duration::from_secs(300)).unwrap()
        );
        // Each bound fits the other: a maximum below the first cool-down keeps it fixed,
        // and an unset first cool-down is no larger than the maximum.
        for (breaker, first, most) in [
            (
                json!({"cool_down_ms": 5000, "max_cool_down_ms": 1000}),
                5000,
                5000,
            ),
            (json!({"max_cool_down_ms": 1000}), 1000, 1000),
        ] {
            let spec = parse(json!({
                "subject_pattern": "hub.>",
                "action": {"type": "webhook", "url": "http://x", "circuit_breaker": breaker},
            }))
            .unwrap();
            assert_eq!(
                breaker_of(spec),
                CircuitBreaker::new(5, Duration::from_millis(first), Duration::from_millis(most))
                    .unwrap()
            );
        }
        let spec = parse(json!({
            "subject_pattern": "hub.>",
            "action": {"type": "webhook", "url": "http://x", "circuit_breaker": {"cool_down_ms": 600000.0}},
        }))
        .unwrap();
        assert_eq!(
            breaker_of(spec).max_cool_down(),
            Duration::from_secs(600),
            "a long first cool-down raises the default maximum"
        );
        for (bad, needle) in [
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://x", "circuit_breaker": {"failure_threshold": 0}}}),
                "circuit_breaker.failure_threshold",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://x", "circuit_breaker": {"cool_down_ms": 50}}}),
                "circuit_breaker.cool_down_ms",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://x", "circuit_breaker": {"max_cool_down_ms": -1}}}),
                "circuit_breaker.max_cool_down_ms",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "republish", "subject": "a", "circuit_breaker": {}}}),
                "action.circuit_breaker",
            ),
            (
                json!({"action": {"type": "republish", "subject": "a"}}),
                "subject_pattern",
            ),
            (json!({"subject_pattern": "hub.>"}), "`action`"),
            (
                json!({"subject_pattern": "hub..x", "action": {"type": "republish", "subject": "a"}}),
                "subject_pattern",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "republish", "subject": "a.*"}}),
                "action.subject",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "republish", "subject": "a", "url": "http://x"}}),
                "action.url",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "ftp://x"}}),
                "url",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://x", "subject": "a"}}),
                "action.subject",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://x", "secret": "nope"}}),
                "secret",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://x", "timeout_ms": 1}}),
                "timeout_ms",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://x", "timeout_ms": 150.5}}),
                "timeout_ms",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://x", "max_attempts": -1}}),
                "max_attempts",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "webhook", "url": "http://x", "max_attempts": 1e12}}),
                "max_attempts",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "email"}}),
                "action.type",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {}}),
                "action.type",
            ),
            (
                json!({"id": "-x", "subject_pattern": "hub.>", "action": {"type": "republish", "subject": "a"}}),
                "id",
            ),
            (
                json!({"subject_pattern": "hub.>", "action": {"type": "republish", "subject": "a"}, "description": "x".repeat(1025)}),
                "description",
            ),
        ] {
            let error = parse(bad.clone()).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidRule, "{bad}");
            assert!(error.message.contains(needle), "{bad}: {}", error.message);
        }
    }

    #[test]
    fn rules_files() {
        let specs = parse_rules_file(
            r#"[{"id": "a", "subject_pattern": "hub.>", "action": {"type": "republish", "subject": "x"}}]"#,
        )
        .unwrap();
        assert_eq!(specs.len(), 1);
        let specs = parse_rules_file(r#"{"rules": []}"#).unwrap();
        assert!(specs.is_empty());
        for (bad, needle) in [
            ("nope", "JSON array"),
            (
                r#"[{"subject_pattern": "hub.>", "action": {"type": "republish", "subject": "x"}}]"#,
                "rule 1: `id`",
            ),
            (
                r#"[{"id": "a", "subject_pattern": "hub.>", "action": {"type": "republish", "subject": "x"}, "extra": 1}]"#,
                "rule 1: unknown field",
            ),
            (
                r#"[{"id": "a", "subject_pattern": "hub.>", "action": {"type": "republish", "subject": "x"}},
                 {"id": "a", "subject_pattern": "hub.>", "action": {"type": "republish", "subject": "y"}}]"#,
                "rule 2: another",
            ),
        ] {
            let error = parse_rules_file(bad).unwrap_err();
            assert!(error.contains(needle), "{bad}: {error}");
        }
    }
}
