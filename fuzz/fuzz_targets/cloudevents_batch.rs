//! CloudEvents batch mode: `parse_batch` on any body. A rejection is a 4xx whose items
//! (one per bad event) are in order; an accepted batch holds at most 1000 events, each of
//! which satisfies `check_cloudevent`.
#![no_main]

use herald_fuzz::{assert_client_error, check_cloudevent, server};
use herald_server::http::cloudevents;
use herald_server::http::publish::MAX_BATCH_EVENTS;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let state = &server().state;
    match cloudevents::parse_batch(state, data, None) {
        Ok(events) => {
            assert!(events.len() <= MAX_BATCH_EVENTS);
            for event in &events {
                check_cloudevent(state, event);
            }
        }
        Err(error) => {
            assert_client_error(&error);
            for pair in error.items.windows(2) {
                assert!(pair[0].index < pair[1].index, "item errors are in order");
            }
            for item in &error.items {
                assert!(item.index < MAX_BATCH_EVENTS);
                assert!(item.code.status().is_client_error());
            }
        }
    }
});
