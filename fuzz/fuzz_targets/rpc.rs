//! JSON-RPC 2.0 over HTTP: the `POST /rpc` handler on any body, against a real hub.
//!
//! Every answer is HTTP 200 with a response object (or a non-empty array of them for a
//! batch), or 204 with no body when there was nothing to answer. Each response object
//! is `{"jsonrpc": "2.0", "id", "result" | "error"}`; a single request's response
//! carries the request's `id` or `null`; a single request that failed stored nothing.
#![no_main]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use herald_fuzz::server;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let server = server();
    let head_before = server.head();
    let (status, body) = server.runtime.block_on(async {
        let response = herald_server::rpc::handle(
            State(server.state.clone()),
            HeaderMap::new(),
            Ok(Bytes::copy_from_slice(data)),
        )
        .await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the response body reads");
        (status, body)
    });
    if status == StatusCode::NO_CONTENT {
        assert!(body.is_empty(), "a 204 has no body");
        return;
    }
    assert_eq!(status, StatusCode::OK, "every answer is 200 or 204");
    // Members are read as raw JSON: `id` is echoed as sent, and `serde_json::Value`
    // cannot hold every number JSON can (`1e999`).
    let answer: &RawValue = serde_json::from_slice(&body).expect("the answer is JSON");
    let is_batch = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if let Ok(responses) = serde_json::from_str::<Vec<&RawValue>>(answer.get()) {
        assert!(!responses.is_empty(), "an empty array is never an answer");
        assert!(is_batch, "only a batch is answered with an array");
        for response in responses {
            check_response(response);
        }
        return;
    }
    let response = check_response(answer);
    let request: Option<Members> = serde_json::from_slice(data).ok();
    if let Some(request) = request {
        if response["id"].get() != "null" {
            assert_eq!(
                Some(response["id"].get()),
                request.get("id").map(|id| id.get()),
                "the id is echoed as sent"
            );
        }
        if response.contains_key("error") {
            assert_eq!(server.head(), head_before, "a failed call stored nothing");
        }
    }
});

type Members<'a> = BTreeMap<String, &'a RawValue>;

/// Checks one response object and returns its members.
fn check_response(response: &RawValue) -> Members<'_> {
    let members: Members = serde_json::from_str(response.get())
        .unwrap_or_else(|e| panic!("a response is a JSON object ({e}): {response}"));
    assert_eq!(members.get("jsonrpc").map(|v| v.get()), Some(r#""2.0""#));
    let id = members.get("id").expect("a response has an id").get();
    assert!(
        id == "null"
            || id.starts_with('"')
            || id.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']),
        "a response's id is a string, a number or null: {response}"
    );
    match (members.get("result"), members.get("error")) {
        (Some(_), None) => {}
        (None, Some(error)) => {
            let error: Members = serde_json::from_str(error.get())
                .unwrap_or_else(|e| panic!("an error is a JSON object ({e}): {response}"));
            let code = error.get("code").expect("an error has a code").get();
            assert!(
                code.parse::<i64>().is_ok(),
                "an error code is an integer: {response}"
            );
            let message = error.get("message").expect("an error has a message");
            assert!(
                serde_json::from_str::<String>(message.get()).is_ok(),
                "an error message is a string: {response}"
            );
        }
        _ => panic!("a response has a result or an error, not both: {response}"),
    }
    members
}
