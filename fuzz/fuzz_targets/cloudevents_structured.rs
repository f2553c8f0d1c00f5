//! CloudEvents structured mode: `parse_structured_body` on any body. Every rejection is
//! a 4xx; every accepted event satisfies `check_cloudevent`.
#![no_main]

use herald_fuzz::{assert_client_error, check_cloudevent, server};
use herald_server::http::cloudevents;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let state = &server().state;
    match cloudevents::parse_structured_body(state, data, None) {
        Ok(event) => check_cloudevent(state, &event),
        Err(error) => assert_client_error(&error),
    }
});
