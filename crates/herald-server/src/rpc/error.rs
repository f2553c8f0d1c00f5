//! JSON-RPC errors, built and rendered in one place.
//!
//! [`RpcCode`] is the table of the `error.code` numbers this endpoint answers with (the
//! five of the JSON-RPC 2.0 spec and two server errors of our own); `GET /rpc/methods`
//! lists it. Every error also carries `data.code`, the snake_case code of the same
//! condition in the REST API's table ([`ErrorCode`]), so a client can branch on one
//! vocabulary whichever endpoint it uses.
//!
//! Choices:
//! - a store that cannot serve right now, or a hub that is shutting down, is `-32000`
//!   "Unavailable" with `data.retry: true` and `data.retry_after_secs` (the REST API's
//!   503 + `Retry-After`), not `-32603`: clients retry `-32000` and report `-32603`;
//! - an event id that is well formed but not stored is `-32004` "Event not found".

use herald_hub::HubError;
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorCode};
use crate::rpc::wire;

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
}

impl RpcCode {
    /// Every code, in the order `GET /rpc/methods` lists them.
    pub const ALL: [RpcCode; 7] = [
        RpcCode::ParseError,
        RpcCode::InvalidRequest,
        RpcCode::MethodNotFound,
        RpcCode::InvalidParams,
        RpcCode::Internal,
        RpcCode::Unavailable,
        RpcCode::EventNotFound,
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
        }
    }
}

/// An error answer to one call. Its [`RpcCode`] gives `error.code`; `data.code` is the
/// REST code of the same condition.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub rpc: RpcCode,
    pub code: ErrorCode,
    /// What follows the title in `error.message`.
    pub detail: String,
    /// `error.data`, besides `code`.
    pub data: Map<String, Value>,
}

impl RpcError {
    pub fn new(rpc: RpcCode, code: ErrorCode, detail: impl Into<String>) -> Self {
        RpcError {
            rpc,
            code,
            detail: detail.into(),
            data: Map::new(),
        }
    }

    /// Adds a member to `error.data`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.data.insert(key.to_owned(), value.into());
        self
    }

    pub fn parse_error(detail: impl Into<String>) -> Self {
        RpcError::new(RpcCode::ParseError, ErrorCode::InvalidJson, detail)
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        RpcError::new(RpcCode::InvalidRequest, ErrorCode::InvalidBody, detail)
    }

    pub fn method_not_found(method: &str, available: Vec<&'static str>) -> Self {
        RpcError::new(
            RpcCode::MethodNotFound,
            ErrorCode::NotFound,
            crate::http::truncate(method),
        )
        .with("available_methods", available)
    }

    /// Parameter `param` is wrong: `reason` follows its name (`"is required"`).
    pub fn invalid_param(code: ErrorCode, param: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        RpcError::new(RpcCode::InvalidParams, code, format!("`{param}` {reason}"))
            .with("param", param)
            .with("reason", reason)
    }

    /// The `error` member of a response.
    pub fn to_wire(&self) -> wire::ErrorObject {
        let mut data = Map::with_capacity(self.data.len() + 1);
        data.insert("code".to_owned(), self.code.as_str().into());
        data.extend(self.data.iter().map(|(k, v)| (k.clone(), v.clone())));
        wire::ErrorObject {
            code: self.rpc.number(),
            message: format!("{}: {}", self.rpc.title(), self.detail),
            data: Value::Object(data),
        }
    }
}

/// REST errors (from the shared validation and from [`HubError`]) keep their code in
/// `data.code` and get the JSON-RPC code of their kind.
impl From<ApiError> for RpcError {
    fn from(error: ApiError) -> Self {
        let status = error.code.status();
        let rpc = match error.code {
            ErrorCode::InvalidJson => RpcCode::ParseError,
            ErrorCode::EventNotFound => RpcCode::EventNotFound,
            ErrorCode::InvalidQuery | ErrorCode::InvalidEventId => RpcCode::InvalidParams,
            // Every "the body is JSON but a field is wrong" code (invalid_subject, …).
            _ if status.as_u16() == 422 => RpcCode::InvalidParams,
            _ if status.as_u16() == 503 || status.as_u16() == 408 => RpcCode::Unavailable,
            _ if status.is_client_error() => RpcCode::InvalidRequest,
            _ => RpcCode::Internal,
        };
        let rpc_error = RpcError::new(rpc, error.code, error.message);
        match rpc {
            RpcCode::Unavailable => {
                tracing::warn!(code = error.code.as_str(), message = %rpc_error.detail, "RPC call failed.");
                rpc_error.with("retry", true).with("retry_after_secs", 1)
            }
            RpcCode::Internal => rpc_error.with("retry", false),
            _ => rpc_error,
        }
    }
}

impl From<HubError> for RpcError {
    fn from(error: HubError) -> Self {
        RpcError::from(ApiError::from(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_in_the_reserved_ranges() {
        let mut numbers: Vec<i64> = RpcCode::ALL.iter().map(|c| c.number()).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), RpcCode::ALL.len());
        for code in RpcCode::ALL {
            let n = code.number();
            assert!(
                (-32768..=-32000).contains(&n),
                "{code:?} = {n} is outside the JSON-RPC reserved range"
            );
        }
    }

    #[test]
    fn unavailable_store_is_retryable() {
        let error = RpcError::from(HubError::Unavailable("disk full".into())).to_wire();
        assert_eq!(error.code, -32000);
        assert!(error.message.contains("disk full"), "{}", error.message);
        assert_eq!(error.data["code"], "store_unavailable");
        assert_eq!(error.data["retry"], true);
        let error = RpcError::from(HubError::ShuttingDown).to_wire();
        assert_eq!(error.code, -32000);
        assert_eq!(error.data["code"], "shutting_down");
    }

    #[test]
    fn rest_codes_keep_their_kind() {
        for (code, rpc) in [
            (ErrorCode::InvalidJson, -32700),
            (ErrorCode::InvalidSubject, -32602),
            (ErrorCode::InvalidBatch, -32602),
            (ErrorCode::InvalidQuery, -32602),
            (ErrorCode::InvalidEventId, -32602),
            (ErrorCode::EventNotFound, -32004),
            (ErrorCode::PayloadTooLarge, -32600),
            (ErrorCode::StoreUnavailable, -32000),
            (ErrorCode::Internal, -32603),
        ] {
            let error = RpcError::from(ApiError::new(code, "x")).to_wire();
            assert_eq!(error.code, rpc, "{code:?}");
            assert_eq!(error.data["code"], code.as_str());
        }
    }

    #[test]
    fn internal_errors_hide_details() {
        let error = RpcError::from(HubError::Internal("secret path /var/x".into())).to_wire();
        assert_eq!(error.code, -32603);
        assert!(!error.message.contains("secret"), "{}", error.message);
        assert_eq!(error.data["retry"], false);
    }

    #[test]
    fn method_not_found_matches_the_seed() {
        let error = RpcError::method_not_found("invalid.method", vec!["bus.publish"]).to_wire();
        assert_eq!(error.code, -32601);
        assert_eq!(error.message, "Method not found: invalid.method");
        assert_eq!(error.data["available_methods"][0], "bus.publish");
    }
}
