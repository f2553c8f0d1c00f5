//! What one method of `POST /rpc` is ([`RpcMethod`]), what it sees of its request
//! ([`Call`]), and the helpers its spec and result are written with. Apart from
//! [`crate::rpc::methods`], which lists the methods, so that method modules (such as
//! [`crate::rpc::consumers`]) and the table do not import each other.

use std::future::Future;
use std::time::Instant;

use axum::http::HeaderMap;
use herald_hub::HubError;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ErrorCode;
use crate::rpc::error::RpcError;
use crate::rpc::params::Params;
use crate::rpc::wire::{FieldSpec, ParamSpec, ResultSpec};
use crate::AppState;

/// The `origin.service` of events published through JSON-RPC.
pub const ORIGIN_SERVICE: &str = "herald-rpc";

/// `limit` when a call gives none.
pub(crate) const DEFAULT_LIMIT: u64 = 100;

/// What a method sees of the HTTP request it arrived in.
pub struct Call<'a> {
    pub state: &'a AppState,
    /// Who is asking: every hub call goes through `state.hub.as_caller(caller)`.
    pub caller: &'a herald_hub::access::Caller,
    pub headers: &'a HeaderMap,
    /// When the request's body had been read. Its answer is due within the server's
    /// request timeout, counted from (a little before) this instant; long polls end
    /// in time for it.
    pub received: Instant,
}

/// One JSON-RPC method.
pub trait RpcMethod {
    const NAME: &'static str;
    const DESCRIPTION: &'static str;
    /// In positional order.
    const PARAMS: &'static [ParamSpec];
    const RESULT: ResultSpec;
    /// The params, read and validated.
    type Params;

    /// Reads the params (unknown and missing required ones are already rejected).
    fn parse(params: Params<'_>) -> Result<Self::Params, RpcError>;

    /// Runs the call and returns its `result`.
    fn call(
        call: &Call<'_>,
        params: Self::Params,
    ) -> impl Future<Output = Result<Box<RawValue>, RpcError>> + Send;
}

/// A method's `result`.
pub(crate) fn to_result<T: Serialize>(value: &T) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(value).map_err(|error| {
        RpcError::from(HubError::Internal(format!(
            "serializing a result failed: {error}"
        )))
    })
}

pub(crate) const fn param(
    name: &'static str,
    ty: &'static str,
    required: bool,
    error: ErrorCode,
    description: &'static str,
) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        required,
        description,
        error,
    }
}

pub(crate) const fn field(
    name: &'static str,
    ty: &'static str,
    description: &'static str,
) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        description,
    }
}

/// The given params among `names`, as the JSON object an HTTP body would be.
pub(crate) fn body(
    params: &mut Params<'_>,
    names: &[&'static str],
) -> Result<Map<String, Value>, RpcError> {
    let mut object = Map::new();
    for &name in names {
        if let Some(raw) = params.take(name) {
            let value: Value = serde_json::from_str(raw.get())
                .map_err(|e| params.invalid(name, format!("cannot be read: {e}")))?;
            object.insert(name.to_owned(), value);
        }
    }
    Ok(object)
}
