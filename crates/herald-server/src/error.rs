//! Every error the API can answer, in one table: code, HTTP status, and the JSON body
//! `{"error": {"code": "...", "message": "..."}}`.
//!
//! Codes are part of the wire contract: a code keeps its meaning forever. Retire codes;
//! never reuse them.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_hub::HubError;
use serde::Serialize;

/// Defines [`ErrorCode`] from one table: variant, wire code and HTTP status. The same
/// table gives [`ErrorCode::ALL`], which the OpenAPI document lists per status.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal => $status:ident,)+) => {
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
        }
    };
}

error_codes! {
    /// The body is not valid JSON.
    InvalidJson = "invalid_json" => BAD_REQUEST,
    /// The body is JSON but not the shape the endpoint takes.
    InvalidBody = "invalid_body" => UNPROCESSABLE_ENTITY,
    InvalidSubject = "invalid_subject" => UNPROCESSABLE_ENTITY,
    InvalidPayload = "invalid_payload" => UNPROCESSABLE_ENTITY,
    InvalidCorrelationId = "invalid_correlation_id" => UNPROCESSABLE_ENTITY,
    /// One or more events of a batch are invalid (see `items`), or the batch is empty or too big.
    InvalidBatch = "invalid_batch" => UNPROCESSABLE_ENTITY,
    /// A CloudEvent is missing a required attribute, has a bad `specversion`, or
    /// otherwise breaks the CloudEvents v1.0 spec.
    InvalidCloudEvent = "invalid_cloudevent" => UNPROCESSABLE_ENTITY,
    /// A query-string parameter is missing its value, malformed or out of range.
    InvalidQuery = "invalid_query" => BAD_REQUEST,
    InvalidEventId = "invalid_event_id" => BAD_REQUEST,
    PayloadTooLarge = "payload_too_large" => PAYLOAD_TOO_LARGE,
    QueryTooLong = "query_too_long" => BAD_REQUEST,
    /// `GET /api/events/stream` without a WebSocket upgrade.
    WebsocketRequired = "websocket_required" => BAD_REQUEST,
    RequestTimeout = "request_timeout" => REQUEST_TIMEOUT,
    NotFound = "not_found" => NOT_FOUND,
    EventNotFound = "event_not_found" => NOT_FOUND,
    /// A routing rule is malformed (`POST /api/rules`); nothing was stored.
    InvalidRule = "invalid_rule" => UNPROCESSABLE_ENTITY,
    RuleNotFound = "rule_not_found" => NOT_FOUND,
    /// A routing rule with that id already exists.
    RuleExists = "rule_exists" => CONFLICT,
    /// The hub already keeps the most routing rules it takes.
    TooManyRules = "too_many_rules" => CONFLICT,
    /// No NATS bridge dead letter has that id.
    DeadLetterNotFound = "dead_letter_not_found" => NOT_FOUND,
    MethodNotAllowed = "method_not_allowed" => METHOD_NOT_ALLOWED,
    TooManyStreams = "too_many_streams" => SERVICE_UNAVAILABLE,
    StoreUnavailable = "store_unavailable" => SERVICE_UNAVAILABLE,
    ShuttingDown = "shutting_down" => SERVICE_UNAVAILABLE,
    Internal = "internal_error" => INTERNAL_SERVER_ERROR,
}

/// An error answer. Build one with [`ApiError::new`]; it renders itself.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// For a rejected batch: what is wrong with each bad item.
    pub items: Vec<ItemError>,
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
        }
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
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<HubError> for ApiError {
    fn from(error: HubError) -> Self {
        match error {
            HubError::Unavailable(message) => ApiError::new(ErrorCode::StoreUnavailable, message),
            HubError::ShuttingDown => ApiError::new(
                ErrorCode::ShuttingDown,
                "the hub is shutting down; retry on another instance or later",
            ),
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
        let response = ApiError::from(HubError::Unavailable("disk full".into())).into_response();
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
