//! Herald's HTTP and WebSocket API, as a library: [`router`] builds the app (tests use it
//! as production does) and [`serve`] runs it on a listener until a shutdown token fires.
//!
//! Layout: [`error`] (the one table of error codes), [`wire`] (JSON shapes), [`http`]
//! (REST handlers), [`ws`] (the live stream), [`rpc`] (JSON-RPC), [`openapi`] (the
//! OpenAPI 3.1 document, generated from the handlers; every route is in [`routes`]), and
//! `console` (the web console at `/console`, feature `console`, outside the API).
//! Only this crate knows about HTTP and JSON.

pub mod auth;
#[cfg(feature = "console")]
pub mod console;
pub mod consumer_stream;
pub mod error;
pub mod http;
mod hyper_errors;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod rpc;
pub mod tls;
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
    /// Most TCP connections served at once.
    pub max_connections: usize,
    /// Connections accepted above `max_connections` to answer health checks and refuse
    /// the rest with `503 too_many_connections`; more wait in the listen backlog.
    pub reserve_connections: usize,
    /// Longest wait for a request's head, counted from when the server starts waiting
    /// for it (so it also closes keep-alive connections left idle that long).
    pub header_read_timeout: Duration,
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
            reserve_connections: 32,
            header_read_timeout: Duration::from_secs(10),
            max_inflight_publishes: 512,
            request_timeout: Duration::from_secs(30),
            ws_ping_interval: Duration::from_secs(30),
            ws_send_timeout: Duration::from_secs(30),
        }
    }
}

/// What the handlers share: one `Arc`, so that the clone every middleware and handler
/// takes per request costs one atomic increment (a profile showed the clone of the
/// separate fields — a cancellation token among them — at about 15% of the hub's
/// request CPU).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The fields of [`AppState`].
pub struct Shared {
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
    /// The HTTP metrics' handles, looked up once per route, method and status.
    http_series: metrics::HttpSeries,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(hub: Hub, limits: Limits, shutdown: CancellationToken) -> Self {
        let stream_permits = Arc::new(Semaphore::new(limits.max_streams));
        let publish_permits = Arc::new(Semaphore::new(limits.max_inflight_publishes.max(1)));
        AppState(Arc::new(Shared {
            hub,
            limits: Arc::new(limits),
            shutdown,
            streams: TaskTracker::new(),
            stream_permits,
            publish_permits,
            metrics: metrics::install(),
            http_series: metrics::HttpSeries::default(),
        }))
    }

    /// Publishes one event as `caller`, noting it on the request's commit ticket first
    /// (see `within_request_timeout`).
    pub async fn publish(
        &self,
        caller: &herald_hub::access::Caller,
        event: herald_core::NewEvent,
    ) -> Result<herald_hub::Published, herald_hub::HubError> {
        let mut results = self.publish_batch(caller, vec![event]).await?;
        Ok(results.pop().expect("one result per event"))
    }

    /// Publishes events in one transaction as `caller`, noting them on the request's
    /// commit ticket once admitted (a refused batch never reaches the commit queue).
    pub async fn publish_batch(
        &self,
        caller: &herald_hub::access::Caller,
        mut events: Vec<herald_core::NewEvent>,
    ) -> Result<Vec<herald_hub::Published>, herald_hub::HubError> {
        let hub = self.hub.as_caller(caller);
        hub.admit(&mut events)?;
        commit_ticket::note(events.iter().map(|e| e.id));
        hub.publish_admitted(events).await
    }

    /// A slot for one more WebSocket stream, or `503 too_many_streams` at the limit.
    pub fn stream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.stream_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::TooManyStreams,
                    format!(
                        "the server has {} streams open, its limit (HERALD_MAX_STREAMS)",
                        self.limits.max_streams
                    ),
                )
            })
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
    // The console's page and files: no key needed (they hold no data), no API operation.
    #[cfg(feature = "console")]
    let app = app.merge(console::router());
    app.fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

/// Routes answered without an API key, also when one is required: the health checks
/// of load balancers and orchestrators. (The console's page and files, under `/console`,
/// are answered without one too; they are not API routes: see the `console` module.)
pub const PUBLIC_PATHS: &[&str] = &["/health", "/health/nats"];

/// Routes whose `POST` publishes: each such request holds one of `max_inflight_publishes`
/// slots while its body is read and committed ([`PublishSlot`]). A test makes every new
/// `POST` route be put here or on its list of routes that do not publish.
const PUBLISHING_PATHS: &[&str] = &[
    "/api/events",
    "/api/events:batch",
    "/events/publish",
    "/api/aggregates/{aggregate_type}/{aggregate_id}/events",
    "/rpc",
];

/// How the edge lets a request reach its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No key needed: health checks, the console's files, and what no route matched.
    Open,
    /// A key, refused as a REST error.
    Key,
    /// A key, refused as a JSON-RPC error object.
    RpcKey,
}

/// The access rule of a matched route (`None`: no route matched, the answer is a 404).
/// Every API route needs a key but the listed public ones.
fn access_of(route: Option<&str>) -> Access {
    match route {
        None => Access::Open,
        Some(path) if PUBLIC_PATHS.contains(&path) => Access::Open,
        Some(path) if path == "/console" || path.starts_with("/console/") => Access::Open,
        Some("/rpc") => Access::RpcKey,
        Some(_) => Access::Key,
    }
}

/// Every route, path and handlers: the one list [`router`] registers, and the one the
/// OpenAPI tests compare with the document ([`openapi`]).
pub fn routes(state: &AppState) -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/", get(http::index)),
        (
            "/api/events",
            post(http::publish_event).get(http::query_events),
        ),
        (
            "/api/events:batch",
            post(http::publish_batch)
                .layer(DefaultBodyLimit::max(state.limits.max_batch_body_bytes)),
        ),
        ("/api/events/stream", get(ws::stream)),
        ("/events/publish", post(http::publish_legacy)),
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
            "/api/rules/{id}/dead-letters",
            get(http::rules::list_dead_letters),
        ),
        (
            "/api/rules/{id}/dead-letters/redrive",
            post(http::rules::redrive_dead_letters),
        ),
        (
            "/api/rules/{id}/dead-letters/{seq}",
            delete(http::rules::discard_dead_letter),
        ),
        (
            "/api/bridge/dead-letters",
            get(http::bridge::list_dead_letters),
        ),
        (
            "/api/bridge/dead-letters/{id}",
            delete(http::bridge::delete_dead_letter),
        ),
        (
            "/api/aggregates/{aggregate_type}/{aggregate_id}/events",
            post(http::aggregates::append).get(http::aggregates::load),
        ),
        (
            "/api/aggregates/{aggregate_type}/{aggregate_id}/snapshot",
            get(http::aggregates::load_snapshot).put(http::aggregates::save_snapshot),
        ),
        (
            "/api/retention",
            get(http::retention::get_retention).put(http::retention::put_retention),
        ),
        ("/api/consumers", get(http::consumers::list_consumers)),
        (
            "/api/consumers/{name}",
            get(http::consumers::get_consumer)
                .put(http::consumers::put_consumer)
                .delete(http::consumers::delete_consumer),
        ),
        ("/api/consumers/{name}/fetch", post(http::consumers::fetch)),
        ("/api/consumers/{name}/ack", post(http::consumers::ack)),
        ("/api/consumers/{name}/nak", post(http::consumers::nak)),
        (
            "/api/consumers/{name}/progress",
            post(http::consumers::progress),
        ),
        ("/api/consumers/{name}/term", post(http::consumers::term)),
        ("/api/consumers/{name}/stream", get(consumer_stream::stream)),
        (
            "/api/consumers/{name}/dead-letters",
            get(http::consumers::list_dead_letters),
        ),
        (
            "/api/consumers/{name}/dead-letters/redrive",
            post(http::consumers::redrive),
        ),
        (
            "/api/consumers/{name}/dead-letters/{seq}",
            delete(http::consumers::discard_dead_letter),
        ),
        ("/api/schemas", get(http::event_schemas::list_schemas)),
        (
            "/api/schemas/{name}",
            get(http::event_schemas::get_schema)
                .put(http::event_schemas::put_schema)
                .delete(http::event_schemas::delete_schema),
        ),
        (
            "/api/tenants",
            get(http::access::list_tenants).post(http::access::create_tenant),
        ),
        (
            "/api/tenants/{id}",
            get(http::access::get_tenant).delete(http::access::delete_tenant),
        ),
        (
            "/api/keys",
            get(http::access::list_keys).post(http::access::create_key),
        ),
        (
            "/api/keys/{id}",
            get(http::access::get_key).delete(http::access::delete_key),
        ),
        ("/health", get(http::health)),
        ("/health/nats", get(http::nats_health)),
        ("/api/hubs", get(http::hubs)),
        ("/metrics", get(metrics::render)),
        (
            "/rpc",
            post(rpc::handle).layer(DefaultBodyLimit::max(state.limits.max_batch_body_bytes)),
        ),
        ("/rpc/methods", get(rpc::methods).post(rpc::methods)),
        ("/openapi.json", get(openapi::openapi_json)),
        ("/docs", get(openapi::docs)),
    ]
}

/// What every request passes through, in the order written: the reserve connection's
/// refusal, the size guard, the request timeout, authentication ([`access_of`]), a
/// publish slot for a publishing `POST`, the correlation id echoed, and the request
/// counted and timed (routes only, by their matched path).
///
/// One layer, not seven: each `from_fn` layer costs a request a boxed future and a clone
/// of the service stack below it (the profile of a publish showed the stack's boxing,
/// cloning and dropping at ~8 % of herald's CPU), and one table of routes decides
/// who may reach what.
async fn edge(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(refusal) = refusal_on_reserve(&state, &request) {
        return refusal;
    }
    let correlation_id = request.headers().get(&CORRELATION_HEADER).cloned();
    let matched = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let timer = matched
        .is_some()
        .then(|| metrics::HttpTimer::start(request.method()));
    let route = matched.as_ref().map(|p| p.as_str());
    let access = access_of(route);
    let publishes = request.method() == axum::http::Method::POST
        && route.is_some_and(|r| PUBLISHING_PATHS.contains(&r));
    let shared = &state;
    let answer = async move {
        if let Some(refusal) = refusal_by_size(shared, &request) {
            return refusal;
        }
        if let Err(error) = auth::admit(shared, access, &mut request) {
            let mut refusal = match access {
                Access::RpcKey => rpc::refusal(error),
                _ => axum::response::IntoResponse::into_response(error),
            };
            auth::challenge(&mut refusal);
            return refusal;
        }
        if publishes {
            // Waits its turn inside the request timeout.
            let permit = shared.publish_permits.clone().acquire_owned().await.ok();
            request
                .extensions_mut()
                .insert(PublishSlot(Arc::new(std::sync::Mutex::new(permit))));
        }
        next.run(request).await
    };
    let mut response = within_request_timeout(&state, answer).await;
    echo_correlation_id(&mut response, correlation_id);
    if let (Some(timer), Some(route)) = (timer, &matched) {
        timer.finish(&state.http_series, route.as_str(), &response);
    }
    response
}

/// Echoes the request's `X-Correlation-ID` (or a fresh one) on a response that has not
/// set its own.
fn echo_correlation_id(response: &mut Response, incoming: Option<HeaderValue>) {
    if !response.headers().contains_key(&CORRELATION_HEADER) {
        let value = incoming.unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                .expect("a UUID is a valid header")
        });
        response
            .headers_mut()
            .insert(CORRELATION_HEADER.clone(), value);
    }
}

/// The refusal of what cannot be served, at once: a query string over `max_query_bytes`,
/// and a body whose `Content-Length` is over the route's limit (before reading any of it).
fn refusal_by_size(state: &AppState, request: &Request) -> Option<Response> {
    use axum::response::IntoResponse;
    let limits = &state.limits;
    let len = request.uri().query().map_or(0, str::len);
    if len > limits.max_query_bytes {
        return Some(
            ApiError::new(
                ErrorCode::QueryTooLong,
                format!(
                    "the query string is {len} bytes; the limit is {}",
                    limits.max_query_bytes
                ),
            )
            .into_response(),
        );
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared {
        let limit = match request.uri().path() {
            "/api/events:batch" | "/rpc" => limits.max_batch_body_bytes,
            _ => limits.max_body_bytes,
        };
        if declared > limit as u64 {
            if request.uri().path() == "/rpc" {
                // JSON-RPC answers in-band, as it does for a body found too large.
                return Some(rpc::body_too_large());
            }
            return Some(
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the body is {declared} bytes; the limit for this route is {limit}"),
                )
                .into_response(),
            );
        }
    }
    None
}

/// The publish permit a request holds (see [`edge`]). A handler that finds,
/// once the body is read, that it publishes nothing (a JSON-RPC `consumer.fetch` that
/// may wait a minute) gives it back, so waiting calls never hold up publishers.
#[derive(Clone)]
pub struct PublishSlot(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl PublishSlot {
    pub fn release(&self) {
        self.0.lock().expect("publish slot").take();
    }
}

/// `answer`, or `408 request_timeout` when a request (reading its body included) takes
/// longer than `request_timeout` — unless its events already went to the commit queue:
/// then they may yet be stored, so the answer is `503 outcome_unknown` with their ids,
/// never a rejection (see [`commit_ticket`]).
async fn within_request_timeout(
    state: &AppState,
    answer: impl std::future::Future<Output = Response>,
) -> Response {
    use axum::response::IntoResponse;
    let limit = state.limits.request_timeout;
    let ticket = commit_ticket::Ticket::default();
    let answer = commit_ticket::scope(ticket.clone(), answer);
    match tokio::time::timeout(limit, answer).await {
        Ok(response) => response,
        Err(_) => match ticket.submitted() {
            None => ApiError::new(
                ErrorCode::RequestTimeout,
                format!("the request took longer than {} s", limit.as_secs_f64()),
            )
            .into_response(),
            Some(ids) => ApiError::new(
                ErrorCode::OutcomeUnknown,
                format!(
                    "the events reached the commit queue but were not committed within {} s; \
                     they may or may not be stored: publish them again with the same ids \
                     to settle it",
                    limit.as_secs_f64()
                ),
            )
            .with_event_ids(ids)
            .into_response(),
        },
    }
}

/// On a connection of the reserve above the connection cap, the refusal of everything
/// but health checks and metrics.
fn refusal_on_reserve(state: &AppState, request: &Request) -> Option<Response> {
    use axum::response::IntoResponse;
    if request.extensions().get::<listener::Admission>() != Some(&listener::Admission::Reserve) {
        return None;
    }
    Some(match request.uri().path() {
        "/health" | "/health/nats" | "/metrics" => return None,
        "/api/events/stream" if state.stream_permits.available_permits() == 0 => ApiError::new(
            ErrorCode::TooManyStreams,
            format!(
                "the server has {} streams open, its limit (HERALD_MAX_STREAMS)",
                state.limits.max_streams
            ),
        )
        .into_response(),
        _ => ApiError::new(
            ErrorCode::TooManyConnections,
            format!(
                "the server has {} connections open, its limit (HERALD_MAX_CONNECTIONS); retry shortly",
                state.limits.max_connections
            ),
        )
        .into_response(),
    })
}

/// Which events of the current request went to the commit queue, so that a timeout can
/// tell "rejected" from "outcome unknown". Handlers publish through
/// [`AppState::publish`] / [`AppState::publish_batch`], which note the ids here.
mod commit_ticket {
    use std::future::Future;
    use std::sync::{Arc, Mutex};

    use uuid::Uuid;

    #[derive(Clone, Default)]
    pub struct Ticket(Arc<Mutex<Option<Vec<Uuid>>>>);

    tokio::task_local! {
        static TICKET: Ticket;
    }

    impl Ticket {
        /// The ids sent to the commit queue, if any were.
        pub fn submitted(&self) -> Option<Vec<Uuid>> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    pub fn scope<F: Future>(ticket: Ticket, future: F) -> impl Future<Output = F::Output> {
        TICKET.scope(ticket, future)
    }

    /// Notes `ids` as submitted on the current request's ticket, if it has one.
    pub fn note(ids: impl Iterator<Item = Uuid>) {
        let _ = TICKET.try_with(|ticket| {
            let mut slot = ticket.0.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(Vec::new).extend(ids);
        });
    }
}

/// Serves `state` on `listener` until `state.shutdown` fires, then stops accepting,
/// lets in-flight requests finish, closes streams, and waits for them up to `grace`.
pub async fn serve(listener: TcpListener, state: AppState, grace: Duration) -> std::io::Result<()> {
    serve_with_tls(listener, state, grace, None).await
}

/// [`serve`], over TLS when `tls` is set (HTTPS and WSS; the same limits apply).
pub async fn serve_with_tls(
    listener: TcpListener,
    state: AppState,
    grace: Duration,
    tls: Option<Arc<tls::Tls>>,
) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let streams = state.streams.clone();
    let limits = listener::ConnectionLimits {
        max_connections: state.limits.max_connections,
        reserve: state.limits.reserve_connections,
        header_read_timeout: state.limits.header_read_timeout,
    };
    let app = router(state);
    let result = listener::serve_connections(listener, app, limits, tls, shutdown).await;
    streams.close();
    if tokio::time::timeout(grace, streams.wait()).await.is_err() {
        tracing::warn!(
            open = streams.len(),
            "Streams still open after the shutdown grace period."
        );
    }
    result
}
