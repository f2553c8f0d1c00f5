//! What the fuzz targets share: one real server state (a hub on an embedded store in a
//! scratch directory) per fuzzing process, the plain-text request format of the HTTP
//! targets, and the invariants every accepted event must satisfy.
//!
//! Inputs are text, not `arbitrary` structures, so that the corpus can be seeded with
//! the project's own examples and every crashing input can be read and replayed with
//! curl.

use std::path::PathBuf;
use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use herald_core::{NewEvent, Pattern, Subject, Timestamp};
use herald_hub::{Hub, HubConfig};
use herald_server::http::cloudevents;
use herald_server::{ApiError, AppState, Limits};
use herald_store::{AnyStore, EmbeddedOptions, EmbeddedStore, Store};
use tokio_util::sync::CancellationToken;

/// A running hub and the state the handlers take, shared by every run of a target.
pub struct Server {
    pub runtime: tokio::runtime::Runtime,
    pub state: AppState,
}

impl Server {
    /// The seq of the last committed event.
    pub fn head(&self) -> u64 {
        self.runtime
            .block_on(self.state.hub.store().head())
            .expect("the scratch store answers")
    }
}

/// The process's server, started on first use.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime starts");
        let dir = scratch_dir();
        let state = runtime.block_on(async {
            let store = EmbeddedStore::open(dir.join("herald.db"), EmbeddedOptions::default())
                .await
                .expect("the scratch store opens");
            let hub = Hub::open(HubConfig::new("fuzz-hub"), AnyStore::Embedded(store))
                .await
                .expect("the hub starts");
            AppState::new(hub, Limits::default(), CancellationToken::new())
        });
        Server { runtime, state }
    })
}

/// A fresh directory for this process's store, on tmpfs when there is one (so commits
/// cost no disk syncs). Directories of fuzzing processes that have exited are removed.
fn scratch_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
    .join("herald-fuzz");
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !PathBuf::from("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the scratch directory can be made");
    dir
}

/// A request in the text format of the HTTP targets:
///
/// ```text
/// first line
/// header-name: value
/// …
///
/// body
/// ```
///
/// Everything after the first blank line is the body, byte for byte. Header lines that
/// are not valid HTTP headers are skipped. An input without a blank line is all head.
pub struct TextRequest<'a> {
    pub first_line: &'a str,
    pub headers: HeaderMap,
    pub body: &'a [u8],
}

impl<'a> TextRequest<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&data[..i], &data[i + 2..]),
            None => (data, &data[data.len()..]),
        };
        let mut lines = head.split(|b| *b == b'\n');
        let first_line = lines
            .next()
            .and_then(|line| std::str::from_utf8(line).ok())
            .unwrap_or("");
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let name = HeaderName::from_bytes(&line[..colon]);
            let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        TextRequest {
            first_line,
            headers,
            body,
        }
    }
}

/// A rejection must be the client's fault: a 4xx, never a 5xx.
pub fn assert_client_error(error: &ApiError) {
    assert!(
        error.code.status().is_client_error(),
        "an input was answered {} ({}): {}",
        error.code.status(),
        error.code.as_str(),
        error.message
    );
}

/// What must hold for every event a CloudEvents parser accepted: the attributes are
/// valid, the subject and id are the ones the mapping gives, the payload is a JSON
/// object, and the event reads back as a structured CloudEvent that parses to the same
/// attributes, id, subject and data.
pub fn check_cloudevent(state: &AppState, event: &NewEvent) {
    let attributes = event
        .cloudevent
        .as_deref()
        .expect("an event parsed from a CloudEvent keeps its attributes");
    attributes
        .validate()
        .expect("accepted attributes are valid");
    assert_eq!(
        attributes.herald_subject().as_ref(),
        Ok(&event.subject),
        "the subject is the mapping's"
    );
    assert_eq!(event.id, attributes.herald_id(), "the id is the mapping's");
    check_subject(&event.subject);
    assert!(
        event.payload.get().trim_start().starts_with('{'),
        "the payload is a JSON object"
    );
    // Reading back: the stored event, written as a structured CloudEvent, parses to the
    // same event, its data byte for byte.
    let stored = event.clone().commit(1, Timestamp::now());
    let read_back = serde_json::to_vec(&cloudevents::to_structured(&stored))
        .expect("a stored event serializes");
    let again = cloudevents::parse_structured_body(state, &read_back, None).unwrap_or_else(|e| {
        panic!(
            "the read-back event {} is rejected: {}",
            String::from_utf8_lossy(&read_back),
            e.message
        )
    });
    assert_eq!(
        again.cloudevent, event.cloudevent,
        "the attributes read back as sent"
    );
    assert_eq!(again.id, event.id);
    assert_eq!(again.subject, event.subject);
    assert_eq!(again.payload, event.payload, "the data reads back as sent");
}

/// A subject the parsers hand out must be one `Subject::new` accepts as it is.
pub fn check_subject(subject: &Subject) {
    let text = subject.as_str();
    assert_eq!(Subject::new(text).as_ref(), Ok(subject));
    let pattern = Pattern::parse(text).expect("a subject is a pattern");
    assert!(pattern.is_literal() && pattern.matches(text));
}
