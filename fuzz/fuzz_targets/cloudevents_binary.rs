//! CloudEvents binary mode: `parse_binary` on any headers and body, given as text
//! (see `herald_fuzz::TextRequest`; the first line is ignored):
//!
//! ```text
//! POST /api/events
//! ce-specversion: 1.0
//! ce-id: 1
//! ce-source: /s
//! ce-type: com.example.x
//! content-type: application/json
//!
//! {"a": 1}
//! ```
//!
//! Every rejection is a 4xx; every accepted event satisfies `check_cloudevent`.
#![no_main]

use herald_fuzz::{assert_client_error, check_cloudevent, server, TextRequest};
use herald_server::http::cloudevents;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let request = TextRequest::parse(data);
    let state = &server().state;
    match cloudevents::parse_binary(state, &request.headers, request.body, None) {
        Ok(event) => check_cloudevent(state, &event),
        Err(error) => assert_client_error(&error),
    }
});
