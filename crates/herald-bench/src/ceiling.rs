//! The ceiling: a no-op axum server with Herald's routes, run as a child process like
//! herald so both are measured the same way on the same cores.
//!
//! - `POST /api/events` parses the body with serde into the same shape Herald accepts
//!   (`{subject, payload, correlation_id?}`, payload a `serde_json::Value`), stores
//!   nothing, and answers 201 with a receipt like Herald's. When WebSocket clients are
//!   connected it also forwards the event to them (an in-memory broadcast), so the
//!   publish → receipt latency has a floor to compare with.
//! - `GET /api/events` answers a fixed, pre-serialized page of 100 events of Herald's
//!   shape: the floor of a query (HTTP plus moving ~40 KB over loopback).
//! - `GET /api/events/stream` is the WebSocket the broadcast goes to; with `?replay=N`
//!   it first sends N events of Herald's frame shape, serialized one by one from
//!   memory: the floor of a catch-up.
//! - `GET /health` answers 200.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::SinkExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::workload;

/// The publish body, as Herald accepts it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    subject: String,
    payload: serde_json::Value,
    correlation_id: Option<String>,
}

/// The publish receipt, shaped like Herald's.
#[derive(Serialize)]
struct Receipt {
    event_id: &'static str,
    correlation_id: String,
    timestamp: &'static str,
    seq: u64,
}

/// The stream frame, shaped like Herald's `{"subject", "data": <event>}`.
#[derive(Serialize)]
struct StreamFrame<'a> {
    subject: &'a str,
    data: StreamEvent<'a>,
}

#[derive(Serialize)]
struct StreamEvent<'a> {
    seq: u64,
    subject: &'a str,
    payload: &'a serde_json::Value,
}

struct Shared {
    next_seq: AtomicU64,
    stream: broadcast::Sender<Arc<str>>,
    query_page: Bytes,
}

const FIXED_ID: &str = "0193a4b2-7c1d-7e3f-8a9b-0c1d2e3f4a5b";
const FIXED_TIMESTAMP: &str = "2025-11-03T12:00:00.123456Z";

async fn publish(State(shared): State<Arc<Shared>>, Json(body): Json<PublishBody>) -> Response {
    let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
    if shared.stream.receiver_count() > 0 {
        let frame = StreamFrame {
            subject: &body.subject,
            data: StreamEvent {
                seq,
                subject: &body.subject,
                payload: &body.payload,
            },
        };
        if let Ok(text) = serde_json::to_string(&frame) {
            let _ = shared.stream.send(text.into());
        }
    }
    let receipt = Receipt {
        event_id: FIXED_ID,
        correlation_id: body.correlation_id.unwrap_or_else(|| FIXED_ID.to_string()),
        timestamp: FIXED_TIMESTAMP,
        seq,
    };
    (StatusCode::CREATED, Json(receipt)).into_response()
}

async fn query(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        shared.query_page.clone(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct StreamParams {
    replay: Option<u64>,
}

async fn stream(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<StreamParams>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let receiver = shared.stream.subscribe();
    let replay = params.replay.unwrap_or(0);
    upgrade.on_upgrade(move |socket| forward(socket, replay, receiver))
}

async fn forward(mut socket: WebSocket, replay: u64, mut events: broadcast::Receiver<Arc<str>>) {
    let payload: serde_json::Value = serde_json::json!({
        "n": 0, "order": "order-00000000", "pad": "x".repeat(160),
    });
    for seq in 1..=replay {
        let subject = workload::subject(seq);
        let frame = StreamFrame {
            subject: &subject,
            data: StreamEvent {
                seq,
                subject: &subject,
                payload: &payload,
            },
        };
        let Ok(text) = serde_json::to_string(&frame) else {
            return;
        };
        if socket.feed(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
    if socket.flush().await.is_err() {
        return;
    }
    loop {
        match events.recv().await {
            Ok(text) => {
                if socket
                    .send(Message::Text(text.as_ref().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "healthy"}))
}

/// A page of 100 events shaped like Herald's query answer.
fn query_page() -> Bytes {
    let events: Vec<serde_json::Value> = (1..=100u64)
        .map(|seq| {
            let body: serde_json::Value =
                serde_json::from_slice(&workload::publish_body(&workload::subject(seq), seq))
                    .expect("the workload's bodies are JSON");
            serde_json::json!({
                "id": FIXED_ID,
                "seq": seq,
                "subject": body["subject"],
                "origin": {"hub_id": "local-hub", "service": null, "user": null},
                "correlation_id": FIXED_ID,
                "payload": body["payload"],
                "timestamp": FIXED_TIMESTAMP,
            })
        })
        .collect();
    Bytes::from(serde_json::to_vec(&events).expect("JSON serializes"))
}

/// Serves the ceiling until the process is killed; prints
/// `ceiling listening on http://ADDR` once bound.
pub async fn serve(listen: SocketAddr) -> Result<()> {
    let (frames, _) = broadcast::channel(65_536);
    let shared = Arc::new(Shared {
        next_seq: AtomicU64::new(0),
        stream: frames,
        query_page: query_page(),
    });
    let app = Router::new()
        .route("/api/events", post(publish).get(query))
        .route("/api/events/stream", get(stream))
        .route("/health", get(health))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("ceiling listening on http://{}", listener.local_addr()?);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
