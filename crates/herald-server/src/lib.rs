//! Herald's HTTP and WebSocket API, as a library: [`router`] builds the app (tests use it
//! as production does) and [`serve`] runs it on a listener until a shutdown token fires.
//!
//! Layout: [`error`] (the one table of error codes), [`wire`] (JSON shapes), [`http`]
//! (REST handlers), [`ws`] (the live stream), [`rpc`] (JSON-RPC), [`openapi`] (the
//! OpenAPI 3.1 document, generated from the handlers; every route is in [`routes`]).
//! Only this crate knows about HTTP and JSON.

pub mod error;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod rpc;
pub mod wire;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use herald_hub::Hub;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::{ApiError, ErrorCode};

/// The header that carries a request's correlation id, echoed on every response.
pub static CORRELATION_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

/// Limits the server enforces on clients. Every one is configurable.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest body of `POST /api/events:batch`, in bytes.
    pub max_batch_body_bytes: usize,
    /// Longest query string accepted, in bytes.
    pub max_query_bytes: usize,
    /// Most WebSocket streams open at once.
    pub max_streams: usize,
    /// Most TCP connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Most publish requests being read or committed at once; more wait their turn. With
    /// `max_body_bytes` this bounds the memory publishes can take.
    pub max_inflight_publishes: usize,
    /// Longest a request may take, body included (WebSocket streams are not affected).
    pub request_timeout: Duration,
    /// How often an idle stream is pinged.
    pub ws_ping_interval: Duration,
    /// How long one write to a stream may block before the client is judged stuck and
    /// disconnected (with a close frame naming the seq to resume from).
    pub ws_send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            max_batch_body_bytes: 4 * 1024 * 1024,
            max_query_bytes: 8 * 1024,
            max_streams: 10_000,
            max_connections: 10_000,
            max_inflight_publishes: 512,
            request_timeout: Duration::from_secs(30),
            ws_ping_interval: Duration::from_secs(30),
            ws_send_timeout: Duration::from_secs(30),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub limits: Arc<Limits>,
    /// Fires when the server begins shutting down; streams close on it.
    pub shutdown: CancellationToken,
    /// Tracks stream tasks, which outlive their HTTP request.
    pub streams: TaskTracker,
    stream_permits: Arc<Semaphore>,
    publish_permits: Arc<Semaphore>,
    /// Renders `/metrics`; `None` when another metrics recorder owns the process.
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl AppState {
    pub fn new(hub: Hub, limits: Limits, shutdown: CancellationToken) -> Self {
        let stream_permits = Arc::new(Semaphore::new(limits.max_streams));
        let publish_permits = Arc::new(Semaphore::new(limits.max_inflight_publishes.max(1)));
        AppState {
            hub,
            limits: Arc::new(limits),
            shutdown,
            streams: TaskTracker::new(),
            stream_permits,
            publish_permits,
            metrics: metrics::install(),
        }
    }

    /// WebSocket streams open now.
    pub fn open_streams(&self) -> usize {
        self.limits.max_streams - self.stream_permits.available_permits()
    }
}

/// The whole API as an axum app: every route of [`routes`], and what applies to all.
pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let mut app = Router::new();
    for (path, methods) in routes(&state) {
        app = app.route(path, methods);
    }
    app.fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard_query_length,
        ))
        .layer(axum::middleware::from_fn(echo_correlation_id))
        .route_layer(axum::middleware::from_fn(metrics::track_http))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_duration,
        ))
        .with_state(state)
}

/// Every route, path and handlers: the one list [`router`] registers, and the one the
/// OpenAPI tests compare with the document ([`openapi`]).
pub fn routes(state: &AppState) -> Vec<(&'static str, MethodRouter<AppState>)> {
    let limit_publishes = || axum::middleware::from_fn_with_state(state.clone(), limit_publishes);
    vec![
        ("/", get(http::index)),
        (
            "/api/events",
            post(http::publish_event)
                .layer(limit_publishes())
                .merge(get(http::query_events)),
        ),
        (
            "/api/events:batch",
            post(http::publish_batch)
                .layer(DefaultBodyLimit::max(state.limits.max_batch_body_bytes))
                .layer(limit_publishes()),
        ),
        ("/api/events/stream", get(ws::stream)),
        (
            "/events/publish",
            post(http::publish_legacy).layer(limit_publishes()),
        ),
        ("/api/events/{id}", get(http::get_event)),
        (
            "/api/rules",
            get(http::rules::list_rules).post(http::rules::add_rule),
        ),
        (
            "/api/rules/{id}",
            get(http::rules::get_rule).delete(http::rules::delete_rule),
        ),
        (
            "/api/bridge/dead-letters",
            get(http::bridge::list_dead_letters),
        ),
        (
            "/api/bridge/dead-letters/{id}",
            delete(http::bridge::delete_dead_letter),
        ),
        ("/health", get(http::health)),
        ("/health/nats", get(http::nats_health)),
        ("/api/hubs", get(http::hubs)),
        ("/metrics", get(metrics::render)),
        (
            "/rpc",
            post(rpc::handle)
                .layer(DefaultBodyLimit::max(state.limits.max_batch_body_bytes))
                .layer(limit_publishes()),
        ),
        ("/rpc/methods", get(rpc::methods).post(rpc::methods)),
        ("/openapi.json", get(openapi::openapi_json)),
        ("/docs", get(openapi::docs)),
    ]
}

/// Echoes the request's `X-Correlation-ID` (or a fresh one) on every response that has
/// not set its own.
async fn echo_correlation_id(request: Request, next: Next) -> Response {
    let incoming = request.headers().get(&CORRELATION_HEADER).cloned();
    let mut response = next.run(request).await;
    if !response.headers().contains_key(&CORRELATION_HEADER) {
        let value = incoming.unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                .expect("a UUID is a valid header")
        });
        response
            .headers_mut()
            .insert(CORRELATION_HEADER.clone(), value);
    }
    response
}

async fn guard_query_length(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let len = request.uri().query().map_or(0, str::len);
    if len > state.limits.max_query_bytes {
        return ApiError::new(
            ErrorCode::QueryTooLong,
            format!(
                "the query string is {len} bytes; the limit is {}",
                state.limits.max_query_bytes
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Admits a publish only while fewer than `max_inflight_publishes` are being read or
/// committed, before its body is read.
async fn limit_publishes(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let _permit = state.publish_permits.clone().acquire_owned().await;
    next.run(request).await
}

/// Answers `408 request_timeout` when a request (reading its body included) takes
/// longer than `request_timeout`.
async fn limit_duration(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let limit = state.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::RequestTimeout,
            format!("the request took longer than {} s", limit.as_secs_f64()),
        )
        .into_response(),
    }
}

/// Serves `state` on `listener` until `state.shutdown` fires, then stops accepting,
/// lets in-flight requests finish, closes streams, and waits for them up to `grace`.
pub async fn serve(listener: TcpListener, state: AppState, grace: Duration) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let streams = state.streams.clone();
    let listener = listener::LimitedListener::new(listener, state.limits.max_connections);
    let app = router(state);
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let result = server.await;
    streams.close();
    if tokio::time::timeout(grace, streams.wait()).await.is_err() {
        tracing::warn!(
            open = streams.len(),
            "Streams still open after the shutdown grace period."
        );
    }
    result
}
