//! `GET /api/consumers/{name}/stream`: a durable consumer pushed over a WebSocket.
//!
//! The server sends messages as text frames `{"ack_id", "delivery", "event"}` while the
//! socket holds fewer than its credit (`max_in_flight`, at most the consumer's
//! `max_ack_pending`) unsettled messages; the client settles them with frames
//! `{"ack": [ids]}`, `{"nak": [ids], "delay_ms"?, "reason"?}`, `{"term": [ids],
//! "reason"?}` or `{"progress": [ids]}`, each answered (once durable) with
//! `{"result": "ack"|"nak"|"term"|"progress", "done", "unknown"}`. A malformed frame is
//! answered `{"error": {"code", "message"}}` and the stream goes on. When the socket
//! closes, what it held unsettled is released for immediate redelivery.
//!
//! A fetcher task takes messages from the hub while there is credit and hands them to
//! the socket's loop; it is stopped only between fetches, so no message taken from the
//! store is left behind unsent and unreleased.

use crate::auth::Authenticated;
use herald_hub::access::Caller;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use herald_hub::consumers::{Message, Settle, MAX_ACK_IDS};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio::time::{interval_at, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ErrorCode};
use crate::http::{form_pairs, invalid_query, truncate};
use crate::wire::consumers::{Fields, SettleVerb};
use crate::AppState;

/// Largest frame a client may send (ack ids of a full credit fit easily).
const MAX_CLIENT_MESSAGE: usize = 1024 * 1024;
/// Messages taken per fetch, at most.
const FETCH_BATCH: usize = 256;
/// How long one fetch waits before the fetcher looks at its stop signal again.
const FETCH_WAIT: Duration = Duration::from_secs(1);

const GOING_AWAY: u16 = 1001;
const POLICY_VIOLATION: u16 = 1008;
const INTERNAL_ERROR: u16 = 1011;

#[utoipa::path(
    get,
    path = "/api/consumers/{name}/stream",
    tag = "consumers",
    summary = "Consume over a WebSocket (push)",
    description = "A GET that upgrades to a WebSocket. The server pushes messages as text \
        frames `{\"ack_id\", \"delivery\", \"event\"}` while the socket holds fewer than \
        `max_in_flight` unsettled ones (default and maximum: the consumer's \
        `max_ack_pending`). The client settles with text frames `{\"ack\": [ack_id, …]}`, \
        `{\"nak\": […], \"delay_ms\"?: N, \"reason\"?: \"…\"}`, `{\"term\": […], \"reason\"?: \"…\"}` \
        or `{\"progress\": […]}`; each is answered, once durable, with `{\"result\": \"ack\", \
        \"done\": n, \"unknown\": […]}`. A malformed frame is answered `{\"error\": {…}}`. \
        Any number of sockets (and fetching clients) may share a consumer; each message is \
        with one of them at a time. When a socket closes, the messages it held unsettled \
        are delivered again at once.",
    params(
        ("name" = crate::wire::schema::ConsumerName, Path, description = "The consumer's name."),
        ("max_in_flight" = Option<u32>, Query, description = "Most unsettled messages this socket holds."),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; frames as described."),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn stream(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let mut max_in_flight = None;
    for (key, value) in form_pairs(raw.as_deref().unwrap_or(""))? {
        match key.as_str() {
            "max_in_flight" if max_in_flight.is_none() => {
                max_in_flight = Some(value.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(
                    || {
                        invalid_query(format!(
                            "`max_in_flight` must be a whole number of at least 1, got {:?}",
                            truncate(&value)
                        ))
                    },
                )?)
            }
            "max_in_flight" => {
                return Err(invalid_query("`max_in_flight` is given more than once"))
            }
            // The key of a browser WebSocket (see `auth`), already used.
            "access_token" => {}
            other => {
                return Err(invalid_query(format!(
                    "unknown parameter `{}`; known: max_in_flight",
                    truncate(other)
                )))
            }
        }
    }
    let info = state.hub.as_caller(&caller).consumer_info(&name).await?;
    let credit = max_in_flight
        .unwrap_or(usize::MAX)
        .min(info.config.max_ack_pending as usize);
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            ErrorCode::WebsocketRequired,
            format!(
                "this endpoint streams over WebSocket ({}); connect with a WebSocket client",
                rejection.body_text()
            ),
        )
    })?;
    let permit = state.stream_permit()?;
    let slot = caller.open_stream()?;
    let streams = state.streams.clone();
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(crate::ws::READ_BUFFER)
        .write_buffer_size(crate::ws::WRITE_BUFFER)
        .on_upgrade(move |socket| {
            streams.track_future(async move {
                // Counted against the key's and tenant's streams while open.
                let _slot = slot;
                run(socket, name, credit, state, caller, permit).await
            })
        }))
}

/// The socket's credit, shared with its fetcher.
struct Credit {
    limit: usize,
    held: AtomicUsize,
    freed: Notify,
}

impl Credit {
    fn free(&self) -> usize {
        self.limit.saturating_sub(self.held.load(Ordering::Acquire))
    }

    fn release(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
        self.freed.notify_one();
    }
}

enum FetcherEvent {
    Messages(Vec<Message>),
    Failed(String),
}

/// Fetches while there is credit, until `stop`.
async fn fetcher(
    state: AppState,
    caller: Caller,
    name: String,
    credit: Arc<Credit>,
    stop: CancellationToken,
    out: mpsc::Sender<FetcherEvent>,
) {
    while !stop.is_cancelled() {
        let free = credit.free();
        if free == 0 {
            tokio::select! {
                _ = credit.freed.notified() => {}
                _ = stop.cancelled() => return,
            }
            continue;
        }
        match state
            .hub
            .as_caller(&caller)
            .fetch_until(&name, free.min(FETCH_BATCH), FETCH_WAIT, &stop)
            .await
        {
            Ok(messages) if messages.is_empty() => {}
            Ok(messages) => {
                credit.held.fetch_add(messages.len(), Ordering::AcqRel);
                // The socket's loop takes them, or releases them if it is closing.
                if out.send(FetcherEvent::Messages(messages)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = out.send(FetcherEvent::Failed(error.to_string())).await;
                return;
            }
        }
    }
}

enum Ending {
    ClientGone,
    Close(u16, String),
}

async fn run(
    socket: WebSocket,
    name: String,
    limit: usize,
    state: AppState,
    caller: Caller,
    _permit: OwnedSemaphorePermit,
) {
    let limits = state.limits.clone();
    let (mut sink, mut incoming) = socket.split();
    let credit = Arc::new(Credit {
        limit,
        held: AtomicUsize::new(0),
        freed: Notify::new(),
    });
    let stop = CancellationToken::new();
    let (tx, mut from_fetcher) = mpsc::channel(1);
    let fetch_task = tokio::spawn(fetcher(
        state.clone(),
        caller.clone(),
        name.clone(),
        credit.clone(),
        stop.clone(),
        tx,
    ));
    let mut held: HashSet<String> = HashSet::new();
    let mut ping = interval_at(
        Instant::now() + limits.ws_ping_interval,
        limits.ws_ping_interval,
    );

    let ending = loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break Ending::Close(GOING_AWAY, "server shutting down".into()),
            message = incoming.next() => match message {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break Ending::ClientGone,
                Some(Ok(WsMessage::Text(text))) => {
                    let answer = settle_frame(&state, &caller, &name, text.as_str(), &mut held, &credit).await;
                    let sent = timeout(limits.ws_send_timeout, sink.send(WsMessage::Text(answer.to_string().into()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break Ending::ClientGone;
                    }
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    let answer = error_frame(ErrorCode::InvalidBody, "frames are JSON text");
                    if sink.send(WsMessage::Text(answer.to_string().into())).await.is_err() {
                        break Ending::ClientGone;
                    }
                }
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                match timeout(limits.ws_send_timeout, sink.send(WsMessage::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ending::ClientGone,
                    Err(_) => break Ending::Close(POLICY_VIOLATION, "client not reading".into()),
                }
            }
            event = from_fetcher.recv() => match event {
                None => break Ending::Close(INTERNAL_ERROR, "the consumer stopped".into()),
                Some(FetcherEvent::Failed(reason)) => break Ending::Close(INTERNAL_ERROR, truncate_reason(&reason)),
                Some(FetcherEvent::Messages(messages)) => {
                    for message in &messages {
                        held.insert(message.ack_id.clone());
                    }
                    let sent = timeout(limits.ws_send_timeout, async {
                        for message in &messages {
                            let text = serde_json::to_string(&crate::wire::consumers::Message::from(message))
                                .expect("a message always serializes");
                            sink.feed(WsMessage::Text(text.into())).await?;
                        }
                        sink.flush().await
                    })
                    .await;
                    match sent {
                        Ok(Ok(())) => {
                            ::metrics::counter!("herald_ws_messages_sent_total").increment(messages.len() as u64);
                        }
                        Ok(Err(_)) => break Ending::ClientGone,
                        Err(_) => break Ending::Close(POLICY_VIOLATION, "client not reading".into()),
                    }
                }
            },
        }
    };

    // Stop fetching; whatever the fetcher took after all is released with the rest. The
    // channel ends when the fetcher does (it drops its sender), so nothing it sent is lost.
    stop.cancel();
    while let Some(event) = from_fetcher.recv().await {
        if let FetcherEvent::Messages(messages) = event {
            held.extend(messages.into_iter().map(|m| m.ack_id));
        }
    }
    let _ = fetch_task.await;
    if !held.is_empty() {
        let ids: Vec<String> = held.into_iter().collect();
        if let Err(error) = state
            .hub
            .as_caller(&caller)
            .settle(&name, &ids, Settle::Release)
            .await
        {
            tracing::warn!(%error, consumer = %name, "Cannot release a closed stream's messages; they come back after their ack wait.");
        }
    }
    if let Ending::Close(code, reason) = ending {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = timeout(
            Duration::from_secs(1),
            sink.send(WsMessage::Close(Some(frame))),
        )
        .await;
    }
}

/// A close reason fits in a control frame (125 bytes).
fn truncate_reason(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.chars() {
        if out.len() + c.len_utf8() > 120 {
            break;
        }
        out.push(c);
    }
    out
}

fn error_frame(code: ErrorCode, message: &str) -> Value {
    json!({"error": {"code": code.as_str(), "message": message}})
}

/// Applies one client frame; answers the frame to send back.
async fn settle_frame(
    state: &AppState,
    caller: &Caller,
    name: &str,
    text: &str,
    held: &mut HashSet<String>,
    credit: &Credit,
) -> Value {
    let object: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return error_frame(ErrorCode::InvalidBody, "a frame is a JSON object"),
        Err(error) => {
            return error_frame(
                ErrorCode::InvalidJson,
                &format!("the frame is not valid JSON: {error}"),
            )
        }
    };
    let verb = ["ack", "nak", "term", "progress"]
        .into_iter()
        .filter(|v| object.contains_key(*v))
        .collect::<Vec<_>>();
    let [verb] = verb[..] else {
        return error_frame(
            ErrorCode::InvalidBody,
            "a frame has exactly one of `ack`, `nak`, `term` or `progress`",
        );
    };
    let how = SettleVerb::parse(verb).expect("one of the four verbs");
    let mut known = vec![verb];
    known.extend(how.options());
    let parsed = (|| {
        let fields = Fields::with_nullable(object, &known, how.options())?;
        let ids = fields.strings(verb, MAX_ACK_IDS)?.unwrap_or_default();
        Ok::<_, crate::wire::consumers::FieldError>((ids, how.settle(&fields)?))
    })();
    let (ids, how) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            return error_frame(
                ErrorCode::InvalidBody,
                &format!("`{}` {}", error.field, error.message),
            )
        }
    };
    match state
        .hub
        .as_caller(caller)
        .settle(name, &ids, how.clone())
        .await
    {
        Ok(settled) => {
            if how != Settle::Progress {
                let before = held.len();
                for id in &ids {
                    held.remove(id);
                }
                let freed = before - held.len();
                if freed > 0 {
                    credit.release(freed);
                }
            }
            json!({"result": verb, "done": settled.done, "unknown": settled.unknown})
        }
        Err(error) => {
            let error = ApiError::from(error);
            error_frame(error.code, &error.message)
        }
    }
}
