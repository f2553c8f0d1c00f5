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
//! - an event id that is well formed but not stored is `-32004` "Event not found";
//! - a payload that fails an event schema is `-32022` "Schema violation", with the
//!   schema, the event's index and the violations in `data`.

use herald_hub::HubError;
use serde_json::{Map, Value};

pub use crate::error::RpcCode;
use crate::error::{ApiError, ErrorCode};
use crate::rpc::wire;

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

    /// Adds `data.event_ids` when there are any (`outcome_unknown`).
    fn with_event_ids(self, ids: &[uuid::Uuid]) -> Self {
        if ids.is_empty() {
            return self;
        }
        let ids: Vec<Value> = ids.iter().map(|id| Value::from(id.to_string())).collect();
        self.with("event_ids", ids)
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
        let rpc = error.code.rpc();
        let mut rpc_error =
            RpcError::new(rpc, error.code, error.message).with_event_ids(&error.event_ids);
        if let Some(version) = error.current_version {
            rpc_error = rpc_error.with("current_version", version);
        }
        if let Some(violation) = &error.schema_violation {
            if let Ok(Value::Object(details)) =
                serde_json::to_value(crate::error::ViolationDetail::new(violation))
            {
                rpc_error.data.extend(details);
            }
        }
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
        let error = RpcError::from(HubError::from(herald_store::StoreError::Unavailable(
            "disk full".into(),
        )))
        .to_wire();
        assert_eq!(error.code, -32000);
        assert!(error.message.contains("disk full"), "{}", error.message);
        assert_eq!(error.data["code"], "store_unavailable");
        assert_eq!(error.data["retry"], true);
        let error = RpcError::from(HubError::ShuttingDown).to_wire();
        assert_eq!(error.code, -32000);
        assert_eq!(error.data["code"], "shutting_down");
    }

    #[test]
    fn every_rest_code_has_its_own_json_rpc_kind() {
        // The column is explicit: a new code cannot fall into a kind by its status.
        for code in ErrorCode::ALL {
            let rpc = code.rpc();
            assert!(RpcCode::ALL.contains(&rpc), "{code:?}");
            if code.status().is_server_error() && *code != ErrorCode::Internal {
                assert_eq!(rpc, RpcCode::Unavailable, "{code:?}");
            }
        }
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
