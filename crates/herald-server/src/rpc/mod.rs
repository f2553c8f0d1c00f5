//! JSON-RPC 2.0 over HTTP: `POST /rpc` (seed 002's "JSON-RPC Endpoint") and
//! `GET /rpc/methods`, which lists every method, its params and result, and every error
//! code, from the same table that dispatches.
//!
//! Layout: [`methods`] (the typed table of methods; the durable consumers' methods are in
//! [`consumers`], what a method is in [`call`]), [`params`] (reading `params`),
//! [`error`] (the error codes, rendered in one place), [`wire`] (the JSON shapes). This
//! module does the framing:
//!
//! - a body that is not JSON is `-32700` with `id: null`; a body over the server's size
//!   limit is `-32600` with `id: null`;
//! - an array is a batch: its calls run one after another, in order, and the answer is
//!   the array of their responses (notifications have none). An empty array is a single
//!   `-32600`; so is a batch of more than [`MAX_BATCH_REQUESTS`];
//! - a request without an `id` member is a notification: it runs, and is not answered
//!   (not even with an error). `"id": null` is a call. A request that is not a valid
//!   request object is answered, with its `id` when it could be read, else `null`;
//! - `id` is echoed byte for byte as sent;
//! - every response is HTTP 200 (errors included); when there is nothing to answer
//!   (only notifications) the answer is 204 with no body.

pub mod call;
pub mod consumers;
pub mod error;
pub mod methods;
pub mod params;
pub mod store;
pub mod wire;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::value::RawValue;

use crate::error::ErrorCode;
use crate::AppState;
use error::{RpcCode, RpcError};
use methods::Call;
use params::kind;

pub use crate::wire::MAX_BATCH_REQUESTS;

/// `POST /rpc`. The body is parsed as JSON whatever its content type.
#[utoipa::path(
    post,
    path = "/rpc",
    tag = "rpc",
    summary = "JSON-RPC 2.0",
    description = "One request, or a batch (an array, run in order). Every answer is HTTP 200, \
        errors included (a body that is not JSON is `-32700`, one over the size limit \
        `-32600`, both with `id: null`); when only notifications were sent the answer is 204 \
        with no body. `GET /rpc/methods` lists the methods, their params and results, and the \
        error codes. Publishing methods take the `X-Correlation-ID` header as the default \
        correlation id (a UUID).",
    request_body(content((crate::wire::schema::RpcBody = "application/json"))),
    responses(
        (status = 200, description = "The response, or the array of responses of a batch.", body = crate::wire::schema::RpcAnswer),
        (status = 204, description = "Only notifications were sent: nothing to answer."),
    ),
)]
pub async fn handle(
    State(state): State<AppState>,
    crate::auth::Authenticated(caller): crate::auth::Authenticated,
    slot: Option<axum::Extension<crate::PublishSlot>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return answer_one(&failure(RawValue::NULL, body_rejection(rejection))),
    };
    let top: &RawValue = match serde_json::from_slice(&body) {
        Ok(top) => top,
        Err(error) => {
            let error = RpcError::parse_error(format!("the body is not valid JSON: {error}"));
            return answer_one(&failure(RawValue::NULL, error));
        }
    };
    if let Some(axum::Extension(slot)) = slot {
        if !may_publish(top) {
            slot.release();
        }
    }
    let call = Call {
        state: &state,
        caller: &caller,
        headers: &headers,
        received: std::time::Instant::now(),
    };
    if kind(top) != "an array" {
        return match answer(&call, top).await {
            Some(response) => answer_one(&response),
            None => StatusCode::NO_CONTENT.into_response(),
        };
    }
    let requests: Vec<&RawValue> = match serde_json::from_str(top.get()) {
        Ok(requests) => requests,
        Err(error) => {
            return answer_one(&failure(
                RawValue::NULL,
                RpcError::parse_error(error.to_string()),
            ))
        }
    };
    if requests.is_empty() {
        let error = RpcError::invalid_request("the batch is empty");
        return answer_one(&failure(RawValue::NULL, error));
    }
    if requests.len() > MAX_BATCH_REQUESTS {
        let error = RpcError::invalid_request(format!(
            "the batch has {} requests; the limit is {MAX_BATCH_REQUESTS}",
            requests.len()
        ))
        .with("max_batch_requests", MAX_BATCH_REQUESTS);
        return answer_one(&failure(RawValue::NULL, error));
    }
    let mut responses = Vec::with_capacity(requests.len());
    for request in requests {
        if let Some(response) = answer(&call, request).await {
            responses.push(response);
        }
    }
    if responses.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        Json(responses).into_response()
    }
}

/// `GET /rpc/methods` (and `POST`, as seed 002's manual test does).
#[utoipa::path(
    method(get, post),
    path = "/rpc/methods",
    tag = "rpc",
    summary = "JSON-RPC methods and error codes",
    description = "Every method of `POST /rpc` with its params and result, and every error \
        code, from the table that dispatches. `POST` takes no body (any is ignored).",
    responses((status = 200, description = "The method table.", body = wire::Discovery)),
)]
pub async fn methods() -> Json<wire::Discovery> {
    Json(wire::Discovery {
        jsonrpc: "2.0",
        endpoint: "/rpc",
        methods: methods::METHODS,
        errors: methods::errors(),
    })
}

/// Runs one request object; `None` for a notification.
async fn answer<'a>(call: &Call<'_>, raw: &'a RawValue) -> Option<wire::Response<'a>> {
    let request: wire::Request<'a> = match serde_json::from_str(raw.get()) {
        Ok(request) => request,
        Err(error) => {
            let detail = if kind(raw) == "an object" {
                error.to_string()
            } else {
                format!("a request must be a JSON object, not {}", kind(raw))
            };
            return Some(failure(RawValue::NULL, RpcError::invalid_request(detail)));
        }
    };
    let id = match request.id {
        Some(id) if !matches!(kind(id), "a string" | "a number" | "null") => {
            let error = RpcError::invalid_request(format!(
                "`id` must be a string, a number or null, not {}",
                kind(id)
            ));
            return Some(failure(RawValue::NULL, error));
        }
        id => id,
    };
    let reply_to = id.unwrap_or(RawValue::NULL);
    let version = request
        .jsonrpc
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    if version.as_deref() != Some("2.0") {
        let got = request
            .jsonrpc
            .map_or("nothing".to_owned(), |v| crate::http::truncate(v.get()));
        let error = RpcError::invalid_request(format!("`jsonrpc` must be \"2.0\", got {got}"));
        return Some(failure(reply_to, error));
    }
    let method = request
        .method
        .and_then(|m| serde_json::from_str::<String>(m.get()).ok());
    let Some(method) = method else {
        let got = request.method.map_or("nothing", kind);
        let error = RpcError::invalid_request(format!("`method` must be a string, got {got}"));
        return Some(failure(reply_to, error));
    };
    if let Some(params) = request.params {
        if !matches!(kind(params), "an object" | "an array") {
            let error = RpcError::invalid_request(format!(
                "`params` must be an object or an array, not {}",
                kind(params)
            ));
            return Some(failure(reply_to, error));
        }
    }
    let outcome = methods::dispatch(call, &method, request.params)
        .await
        .unwrap_or_else(|| Err(RpcError::method_not_found(&method, methods::names())));
    // Label by method only for known methods, so clients cannot grow the label set.
    let label = methods::names()
        .into_iter()
        .find(|name| *name == method)
        .unwrap_or("unknown");
    let code = outcome.as_ref().map_or_else(|e| e.rpc.number(), |_| 0);
    ::metrics::counter!("herald_rpc_calls_total", "method" => label, "code" => code.to_string())
        .increment(1);
    let id = id?;
    Some(match outcome {
        Ok(result) => wire::Response {
            jsonrpc: "2.0",
            id,
            result: Some(result),
            error: None,
        },
        Err(error) => failure(id, error),
    })
}

fn failure(id: &RawValue, error: RpcError) -> wire::Response<'_> {
    wire::Response {
        jsonrpc: "2.0",
        id,
        result: None,
        error: Some(error.to_wire()),
    }
}

fn answer_one(response: &wire::Response<'_>) -> Response {
    Json(response).into_response()
}

/// A refusal at the edge ([`crate::auth::admit`]) for `/rpc`: a JSON-RPC error object
/// with the HTTP status of the condition, so that JSON-RPC clients read it as one.
pub(crate) fn refusal(error: crate::ApiError) -> Response {
    let status = error.code.status();
    let mut response = answer_one(&failure(RawValue::NULL, RpcError::from(error)));
    *response.status_mut() = status;
    response
}

/// The answer to a request whose declared body is over the limit, sent before reading it.
pub(crate) fn body_too_large() -> Response {
    let mut response = answer_one(&failure(
        RawValue::NULL,
        RpcError::new(
            RpcCode::InvalidRequest,
            ErrorCode::PayloadTooLarge,
            "the request body is larger than the configured limit for /rpc (HERALD_MAX_BATCH_BODY_BYTES)",
        ),
    ));
    // The body stays unread, so this connection cannot carry another request.
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

fn body_rejection(rejection: BytesRejection) -> RpcError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        RpcError::new(
            RpcCode::InvalidRequest,
            ErrorCode::PayloadTooLarge,
            "the request body is larger than the configured limit for /rpc (HERALD_MAX_BATCH_BODY_BYTES)",
        )
    } else {
        RpcError::invalid_request(rejection.body_text())
    }
}

/// Whether a request (or batch) may publish: it calls a `bus.publish*` method, or its
/// methods cannot be read cheaply (then it keeps its publish permit, to be safe).
fn may_publish(top: &RawValue) -> bool {
    #[derive(serde::Deserialize)]
    struct MethodOnly {
        method: Option<serde_json::Value>,
    }
    let publishes = |m: &MethodOnly| match &m.method {
        Some(serde_json::Value::String(name)) => name.starts_with("bus.publish"),
        _ => false,
    };
    if let Ok(one) = serde_json::from_str::<MethodOnly>(top.get()) {
        return publishes(&one);
    }
    match serde_json::from_str::<Vec<MethodOnly>>(top.get()) {
        Ok(many) => many.iter().any(publishes),
        Err(_) => true,
    }
}
