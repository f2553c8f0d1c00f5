//! Publishing over HTTP: the `POST /api/events` and `POST /api/events:batch` handlers on
//! any headers and body, against a real hub. Input as text (see
//! `herald_fuzz::TextRequest`); a first line ending in `:batch` picks the batch route:
//!
//! ```text
//! POST /api/events:batch
//! content-type: application/json
//!
//! {"events": [{"subject": "hub.local-hub.project.created", "payload": {}}]}
//! ```
//!
//! A rejection is a 4xx with the error body `{"error": {"code", "message"}}` and stores
//! nothing. An acceptance answers 201 (or 200 when every event was a duplicate) and
//! stores exactly the events it reports as new.
#![no_main]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use herald_fuzz::{assert_client_error, server, TextRequest};
use herald_server::http::publish::{publish_batch, publish_event};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let request = TextRequest::parse(data);
    let batch_route = request.first_line.trim_end().ends_with(":batch");
    let server = server();
    let head_before = server.head();
    let outcome = server.runtime.block_on(async {
        let state = State(server.state.clone());
        let body = Ok(Bytes::copy_from_slice(request.body));
        let outcome = if batch_route {
            publish_batch(state, request.headers, body).await
        } else {
            publish_event(state, request.headers, body).await
        };
        match outcome {
            Ok(response) => {
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("the response body reads");
                Ok((status, body))
            }
            Err(error) => {
                assert_client_error(&error);
                let response = error.clone().into_response();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("the response body reads");
                Err((error, body))
            }
        }
    });
    let head_after = server.head();
    match outcome {
        Err((error, body)) => {
            assert_eq!(head_after, head_before, "a rejected publish stored nothing");
            let body: Value = serde_json::from_slice(&body).expect("an error body is JSON");
            assert_eq!(body["error"]["code"], Value::from(error.code.as_str()));
            assert!(body["error"]["message"].is_string());
        }
        Ok((status, body)) => {
            let body: Value = serde_json::from_slice(&body).expect("an answer is JSON");
            let results: Vec<&Value> = match body.get("results") {
                Some(Value::Array(results)) => {
                    assert_eq!(body["count"], Value::from(results.len()));
                    results.iter().collect()
                }
                _ => vec![&body],
            };
            let new = results
                .iter()
                .filter(|r| r["duplicate"] == Value::Bool(false))
                .count();
            let expected = if new == 0 {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            assert_eq!(status, expected, "{body}");
            assert_eq!(
                head_after - head_before,
                new as u64,
                "exactly the new events were stored: {body}"
            );
            for result in results {
                assert!(result["seq"].as_u64().is_some_and(|seq| seq <= head_after));
                assert!(result["event_id"].is_string());
            }
        }
    }
});
