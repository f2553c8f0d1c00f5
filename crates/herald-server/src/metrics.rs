//! Prometheus metrics at `GET /metrics`.
//!
//! Histograms are recorded where things happen (the hub records commit and publish
//! timings through the `metrics` facade; this module records HTTP requests). Counters
//! the hub already keeps ([`herald_hub::HubStats`]) and gauges are read at scrape time,
//! so the hot path pays for nothing twice.
//!
//! | metric | type | what |
//! | --- | --- | --- |
//! | `herald_events_published_total{result}` | counter | events by outcome: `stored`, `duplicate`, `failed` |
//! | `herald_commits_total` | counter | store transactions |
//! | `herald_commit_batch_events` | histogram | events per transaction (group commit) |
//! | `herald_commit_duration_seconds` | histogram | time to commit and sync a batch |
//! | `herald_publish_duration_seconds` | histogram | publish call to durable answer |
//! | `herald_store_size_bytes` | gauge | bytes on disk |
//! | `herald_log_head_seq` | gauge | seq of the last committed event |
//! | `herald_live_subscribers` | gauge | live subscriptions (streams and library users) |
//! | `herald_live_deliveries_total` | counter | events handed to live subscribers |
//! | `herald_subscriber_catchups_total` | counter | times a slow subscriber was dropped to catch-up from the store |
//! | `herald_ws_streams` | gauge | open WebSocket streams |
//! | `herald_ws_messages_sent_total` | counter | event frames written to WebSocket streams |
//! | `herald_http_requests_total{method,route,status}` | counter | HTTP requests by matched route (methods outside the standard ones as `OTHER`) |
//! | `herald_http_request_duration_seconds{method,route}` | histogram | HTTP request latency |
//! | `herald_rpc_calls_total{method,code}` | counter | JSON-RPC calls by method and error code (`0` = success) |
//! | `herald_nats_connected` | gauge | 1 while connected to NATS (absent without NATS) |
//! | `herald_relay_lag_events` | gauge | events committed but not yet acknowledged by JetStream |
//! | `herald_relay_acked_seq` | gauge | the relay's cursor |
//! | `herald_relay_delay_seconds` | histogram | commit to JetStream PubAck, per relayed event |
//! | `herald_relay_published_total` / `_skipped_total` / `_errors_total` | counter | relayed events; events outside the stream's subjects; interruptions |
//! | `herald_rule_actions_total{rule,outcome}` | counter | routing-rule actions: `delivered`, `failed`, `retried` |
//! | `herald_rule_action_duration_seconds{rule}` | histogram | one action (a webhook attempt, a republish, a handler call) |
//! | `herald_rule_breaker_state{rule}` | gauge | a webhook rule's circuit breaker: 0 closed, 1 open, 2 half-open |
//! | `herald_rule_breaker_trips_total{rule}` | counter | times a webhook rule's circuit breaker opened |
//! | `herald_bridge_ingested_total` / `_duplicates_total` / `_skipped_total` / `_errors_total` | counter | NATS messages stored as events; already stored; relayed by this hub; interruptions |
//! | `herald_bridge_dead_letters_total` / `_dead_letters_dropped_total` | counter | NATS messages kept as dead letters instead of events; dead letters dropped past the limit |
//! | `herald_bridge_dead_letters` | gauge | dead letters kept in the store |

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use herald_store::Store;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls reuse it). `None`
/// when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ];
            let sizes = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("herald_commit_batch_events".into()),
                        &sizes,
                    )
                })
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    match metrics::set_global_recorder(recorder) {
                        Ok(()) => {
                            // Histogram samples are kept until folded into buckets; without
                            // upkeep they pile up between scrapes (or forever, unscraped).
                            let upkeep = handle.clone();
                            let _ = std::thread::Builder::new()
                                .name("herald-metrics".into())
                                .spawn(move || loop {
                                    std::thread::sleep(std::time::Duration::from_secs(5));
                                    upkeep.run_upkeep();
                                });
                            Some(handle)
                        }
                        Err(_) => {
                            tracing::warn!(
                                "A metrics recorder was already installed; /metrics is empty."
                            );
                            None
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "Cannot build the metrics recorder.");
                    None
                }
            }
        })
        .clone()
}

/// Counts and times an HTTP request by method, matched route and status (see
/// [`crate::edge`]).
pub(crate) struct HttpTimer {
    started: Instant,
    method: &'static str,
}

impl HttpTimer {
    /// Starts timing a request that matched a route (the fallback's answers are not
    /// counted: their paths are the client's to choose).
    pub(crate) fn start(method: &axum::http::Method) -> Self {
        HttpTimer {
            started: Instant::now(),
            method: method_label(method),
        }
    }

    /// Records the request; `route` is its matched path.
    pub(crate) fn finish(self, series: &HttpSeries, route: &str, response: &Response) {
        let elapsed = self.started.elapsed();
        let (method, status) = (self.method, response.status().as_u16());
        // The access log, off unless `RUST_LOG` asks for debug.
        tracing::debug!(%method, %route, status, ?elapsed, "Request answered.");
        series.record(method, route, status, elapsed.as_secs_f64());
    }
}

/// The HTTP metrics' handles, by route, method and status: the recorder's own lookup
/// (hashing the key, allocating its labels) ran twice per request. Routes, methods
/// ([`method_label`]) and statuses are few, so this stays small.
#[derive(Default)]
pub(crate) struct HttpSeries(std::sync::RwLock<HashMap<String, RouteSeries>>);

#[derive(Default)]
struct RouteSeries {
    requests: HashMap<(&'static str, u16), metrics::Counter>,
    durations: HashMap<&'static str, metrics::Histogram>,
}

impl HttpSeries {
    fn record(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        {
            let known = self.0.read().unwrap_or_else(|e| e.into_inner());
            if let Some(series) = known.get(route) {
                if let (Some(requests), Some(durations)) = (
                    series.requests.get(&(method, status)),
                    series.durations.get(method),
                ) {
                    requests.increment(1);
                    durations.record(seconds);
                    return;
                }
            }
        }
        let mut known = self.0.write().unwrap_or_else(|e| e.into_inner());
        let series = known.entry(route.to_owned()).or_default();
        series
            .requests
            .entry((method, status))
            .or_insert_with(|| {
                metrics::counter!("herald_http_requests_total", "method" => method, "route" => route.to_owned(), "status" => status.to_string())
            })
            .increment(1);
        series
            .durations
            .entry(method)
            .or_insert_with(|| {
                metrics::histogram!("herald_http_request_duration_seconds", "method" => method, "route" => route.to_owned())
            })
            .record(seconds);
    }
}

/// A request method as a label: the standard ones by name, any other as `OTHER` (a
/// client may send any token as a method; labels must stay few).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// `GET /metrics`, in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "The Prometheus text exposition format (0.0.4): events published by result, \
        publish and commit latency, group-commit batch sizes, store size, head seq, live \
        subscribers, streams and frames, catch-ups, HTTP requests by route and status, \
        JSON-RPC calls, routing-rule actions and circuit breakers, and durable consumers \
        (pending, ack pending, dead letters, delivered, redelivered, acked, delivery latency).",
    responses((status = 200, description = "The metrics.", body = String, content_type = "text/plain")),
)]
pub async fn render(
    State(state): State<AppState>,
    crate::auth::Authenticated(caller): crate::auth::Authenticated,
) -> Response {
    if let Err(error) = caller.require_admin() {
        return crate::ApiError::from(error).into_response();
    }
    let stats = state.hub.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    for (result, value) in [
        ("stored", load(&stats.events_stored)),
        ("duplicate", load(&stats.events_duplicate)),
        ("failed", load(&stats.events_failed)),
    ] {
        metrics::counter!("herald_events_published_total", "result" => result).absolute(value);
    }
    metrics::counter!("herald_commits_total").absolute(load(&stats.commits));
    metrics::counter!("herald_live_deliveries_total").absolute(load(&stats.live_deliveries));
    metrics::counter!("herald_subscriber_catchups_total")
        .absolute(load(&stats.subscriber_overflows));
    metrics::counter!("herald_queue_group_drops_total").absolute(load(&stats.queue_group_drops));
    metrics::gauge!("herald_live_subscribers").set(state.hub.subscriber_count() as f64);
    metrics::gauge!("herald_ws_streams").set(state.open_streams() as f64);
    if let Ok(head) = state.hub.store().head().await {
        metrics::gauge!("herald_log_head_seq").set(head as f64);
    }
    if let Ok(bytes) = state.hub.store().size_bytes().await {
        metrics::gauge!("herald_store_size_bytes").set(bytes as f64);
    }
    if let Some(status) = state.hub.nats_status() {
        metrics::gauge!("herald_nats_connected").set(if status.connected { 1.0 } else { 0.0 });
    }
    if let Some((acked, head)) = state.hub.relay_position() {
        metrics::gauge!("herald_relay_lag_events").set(head.saturating_sub(acked) as f64);
        metrics::gauge!("herald_relay_acked_seq").set(acked as f64);
    }
    let body = state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
