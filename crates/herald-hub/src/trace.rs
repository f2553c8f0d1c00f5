//! OpenTelemetry spans of the event path, and the W3C trace context each hop hands on.
//!
//! The spans (all at target `herald::trace`, so the log filter and the exporter's
//! filter can tell them apart from log lines):
//! - `publish` per publish request (a batch is one request), the child of the trace
//!   context the request came with;
//! - `commit` per group commit (many requests, one transaction), linked to the trace
//!   of every request in it, with `fan_out` as its child;
//! - `relay` per event relayed to NATS and `webhook` per delivery attempt, children of
//!   the event's stored trace context;
//! - `consumer fetch` / `consumer ack` per consumer call.
//!
//! **Off by default, and then free**: every span is made only when [`enabled`] (the
//! binary turns it on when it installs an exporter); otherwise it is `Span::none()`,
//! which allocates nothing. An event's stored trace context is then handed on exactly
//! as it came (the spec's forwarding mode). When tracing is on, the hub participates:
//! what it stores and sends on continues the trace with its own span as the parent
//! (the spec's "Update parent-id" mutation), and events published without a trace
//! context get the one of their `publish` span.

use std::sync::atomic::{AtomicBool, Ordering};

use herald_core::{Event, NewEvent, TraceContext};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Links one span may carry (a commit of many requests links to the first ones).
const MAX_LINKS: usize = 128;

/// Turns span creation on (once an OpenTelemetry layer is installed) or off.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether spans are made at all.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The OpenTelemetry span context a W3C trace context names (a remote parent).
pub fn span_context(trace: &TraceContext) -> SpanContext {
    let state = trace
        .tracestate
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanContext::new(
        TraceId::from_bytes(trace.trace_id),
        SpanId::from_bytes(trace.parent_id),
        TraceFlags::new(trace.flags & TraceFlags::SAMPLED.to_u8()),
        true,
        state,
    )
}

/// Makes `span` the child of `parent` (before it is first used).
fn set_parent(span: &Span, parent: &TraceContext) {
    let cx = opentelemetry::Context::new().with_remote_span_context(span_context(parent));
    // Fails only when the span is disabled or started: then there is no parent to set.
    let _ = span.set_parent(cx);
}

/// What `span` hands on: its trace, with itself as the parent, and `tracestate` as it
/// came. `None` when the span is not an OpenTelemetry one.
fn continued_by(span: &Span, tracestate: Option<&str>) -> Option<TraceContext> {
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if !sc.is_valid() {
        return None;
    }
    Some(TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        parent_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8(),
        tracestate: tracestate.map(str::to_owned),
    })
}

/// The trace context to send with `event` from within `span`: continued by the span
/// when tracing is on, else the stored one as it is.
pub fn outgoing(span: &Span, event: &Event) -> Option<TraceContext> {
    let stored = event.trace.as_deref();
    if enabled() {
        if let Some(next) = continued_by(span, stored.and_then(|t| t.tracestate.as_deref())) {
            return Some(next);
        }
    }
    stored.cloned()
}

/// The `publish` span of one request, the child of the trace context of its first
/// traced event (the others' become links). Each event's trace context is then
/// continued by this span: events of the same trace (or of none) get the span as their
/// parent; an event of another trace keeps its own.
pub fn publish_span(events: &mut [NewEvent]) -> Span {
    if !enabled() {
        return Span::none();
    }
    let subject = events.first().map_or("", |e| e.subject.as_str());
    let name = format!("publish {subject}");
    let span = tracing::info_span!(
        target: "herald::trace",
        parent: None,
        "publish",
        otel.name = name.as_str(),
        otel.kind = "producer",
        messaging.system = "herald",
        messaging.operation.type = "send",
        messaging.destination.name = subject,
        messaging.batch.message_count = events.len(),
        herald.seq = tracing::field::Empty,
        herald.duplicates = tracing::field::Empty,
    );
    let mut parent: Option<&TraceContext> = None;
    let mut links = 0;
    for trace in events.iter().filter_map(|e| e.trace.as_deref()) {
        match parent {
            None => {
                set_parent(&span, trace);
                parent = Some(trace);
            }
            Some(first) if first.trace_id != trace.trace_id && links < MAX_LINKS => {
                span.add_link(span_context(trace));
                links += 1;
            }
            Some(_) => {}
        }
    }
    let Some(own) = continued_by(&span, None) else {
        return span;
    };
    for event in events.iter_mut() {
        match &mut event.trace {
            Some(trace) if trace.trace_id == own.trace_id => {
                trace.parent_id = own.parent_id;
                trace.flags = own.flags;
            }
            Some(_) => {}
            None => event.trace = Some(Box::new(own.clone())),
        }
    }
    span
}

/// Notes a request's outcome on its `publish` span: the first seq, the duplicates, or
/// the error.
pub fn record_published(span: &Span, result: &Result<Vec<crate::Published>, crate::HubError>) {
    match result {
        Ok(published) => {
            if let Some(first) = published.first() {
                span.record("herald.seq", first.event.seq);
            }
            let duplicates = published.iter().filter(|p| p.duplicate).count();
            span.record("herald.duplicates", duplicates);
        }
        Err(error) => {
            span.set_status(opentelemetry::trace::Status::error(error.to_string()));
        }
    }
}

/// The `commit` span of one group commit: a root of its own (it serves many traces),
/// linked to each distinct trace context of its events.
pub fn commit_span(events: &[NewEvent], requests: usize) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: "herald::trace",
        parent: None,
        "commit",
        herald.events = events.len(),
        herald.requests = requests,
    );
    let mut last: Option<&TraceContext> = None;
    let mut links = 0;
    for trace in events.iter().filter_map(|e| e.trace.as_deref()) {
        if links == MAX_LINKS {
            break;
        }
        if last.is_some_and(|l| l.trace_id == trace.trace_id && l.parent_id == trace.parent_id) {
            continue;
        }
        span.add_link(span_context(trace));
        last = Some(trace);
        links += 1;
    }
    span
}

/// The `fan_out` span of a commit's events, under `commit`.
pub fn fan_out_span(commit: &Span, events: usize) -> Span {
    if commit.is_none() {
        return Span::none();
    }
    tracing::info_span!(target: "herald::trace", parent: commit, "fan_out", herald.events = events)
}

/// The `relay` span of one event sent to NATS, the child of its trace context.
pub fn relay_span(event: &Event) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = format!("relay {}", event.subject.as_str());
    let span = tracing::info_span!(
        target: "herald::trace",
        parent: None,
        "relay",
        otel.name = name.as_str(),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.destination.name = event.subject.as_str(),
        messaging.message.id = %event.id,
        herald.seq = event.seq,
    );
    if let Some(trace) = event.trace.as_deref() {
        set_parent(&span, trace);
    }
    span
}

/// The `webhook` span of one delivery attempt, the child of the event's trace context.
pub fn webhook_span(event: &Event, rule: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = format!("webhook {rule}");
    let span = tracing::info_span!(
        target: "herald::trace",
        parent: None,
        "webhook",
        otel.name = name.as_str(),
        otel.kind = "client",
        herald.rule = rule,
        messaging.message.id = %event.id,
        herald.seq = event.seq,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(trace) = event.trace.as_deref() {
        set_parent(&span, trace);
    }
    span
}

/// Notes a webhook attempt's outcome on its span.
pub(crate) fn record_attempt(span: &Span, attempt: &crate::rules::webhook::Attempt) {
    use crate::rules::webhook::Attempt;
    let error = match attempt {
        Attempt::Delivered => None,
        Attempt::Retry(reason, _) => Some(reason.clone()),
        Attempt::Refused(status) => {
            span.record("http.response.status_code", status.as_u16());
            Some(format!("refused: {status}"))
        }
        Attempt::Forbidden(reason) => Some(reason.clone()),
    };
    match error {
        None => span.record("otel.status_code", "OK"),
        Some(reason) => {
            span.set_status(opentelemetry::trace::Status::error(reason));
            span
        }
    };
}

/// The span of one consumer call (`fetch`, `ack`, ...); [`link_messages`] links it to
/// the trace of each message it hands out.
pub fn consumer_span(operation: &'static str, consumer: &str, messages: usize) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = format!("consumer {operation} {consumer}");
    tracing::info_span!(
        target: "herald::trace",
        parent: None,
        "consumer",
        otel.name = name.as_str(),
        otel.kind = "consumer",
        messaging.system = "herald",
        messaging.operation.type = operation,
        messaging.consumer.group.name = consumer,
        messaging.batch.message_count = messages,
    )
}

/// Links a consumer call's span to the trace of each message (the first
/// [`MAX_LINKS`]) and notes how many there were.
pub fn link_messages<'a>(span: &Span, events: impl IntoIterator<Item = &'a Event>) {
    if span.is_none() {
        return;
    }
    let mut count = 0usize;
    for event in events {
        if let Some(trace) = event.trace.as_deref() {
            if count < MAX_LINKS {
                span.add_link(span_context(trace));
            }
        }
        count += 1;
    }
    span.record("messaging.batch.message_count", count);
}
