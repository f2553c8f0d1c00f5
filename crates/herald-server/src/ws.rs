//! `GET /api/events/stream`: events as WebSocket text frames `{"subject", "data"}`.
//!
//! Each stream is a hub [`Subscription`]: it replays from `from_seq` / `since` when
//! asked, then continues live with no gap and no duplicate. Frames are written in
//! batches with one flush. A client that does not read makes the write block; the hub
//! meanwhile switches its subscription to catch-up, so nothing piles up in memory. A
//! write blocked longer than the send timeout closes the stream with a frame naming
//! the seq to resume from.

use crate::auth::Authenticated;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use futures_util::{FutureExt, SinkExt, StreamExt};
use herald_core::{Event, Pattern, Seq};
use herald_hub::{StartAt, Subscription};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{interval_at, timeout, Instant};

use crate::error::{ApiError, ErrorCode};
use crate::http::{
    form_pairs, invalid_query, parse_seq, parse_subject_filter, parse_timestamp, truncate,
};
use crate::wire::StreamFrame;
use crate::AppState;

/// Frames written before each flush, at most.
const MAX_FRAMES_PER_FLUSH: usize = 128;
/// Largest message a client may send us (we expect none but control frames).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// A stream's socket buffers. The WebSocket library's defaults (128 KiB each) are sized
/// for bulk transfers: its read buffer alone cost every open stream ~128 KiB of RSS,
/// although clients here send a few small control messages. Writes are flushed per
/// batch anyway; a write buffer past this size is written out at once.
pub(crate) const READ_BUFFER: usize = 4 * 1024;
pub(crate) const WRITE_BUFFER: usize = 16 * 1024;

/// Close codes (RFC 6455).
const GOING_AWAY: u16 = 1001;
const POLICY_VIOLATION: u16 = 1008;
const INTERNAL_ERROR: u16 = 1011;

struct StreamParams {
    pattern: Pattern,
    start: StartAt,
    /// A live queue group to join: each event goes to one member.
    queue: Option<String>,
}

fn parse_params(raw: &str) -> Result<StreamParams, ApiError> {
    let mut pattern = None;
    let mut from_seq = None;
    let mut since = None;
    let mut queue = None;
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in form_pairs(raw)? {
        if seen.contains(&key) {
            return Err(invalid_query(format!(
                "`{}` is given more than once",
                truncate(&key)
            )));
        }
        seen.push(key.clone());
        match key.as_str() {
            "subject" => pattern = Some(parse_subject_filter(&value)?),
            "from_seq" => from_seq = Some(parse_seq("from_seq", &value)?),
            "since" => since = Some(parse_timestamp("since", &value)?),
            // The key of a browser WebSocket (see `auth`), already used.
            "access_token" => {}
            "queue" => {
                if !herald_hub::consumers::valid_name(&value) {
                    return Err(invalid_query(format!(
                        "`queue` is 1 to 128 ASCII letters, digits, '-' or '_', got {:?}",
                        truncate(&value)
                    )));
                }
                queue = Some(value)
            }
            other => {
                return Err(invalid_query(format!(
                    "unknown parameter `{}`; known: subject, from_seq, since, queue",
                    truncate(other)
                )))
            }
        }
    }
    let start = match (from_seq, since) {
        (Some(_), Some(_)) => return Err(invalid_query("give `from_seq` or `since`, not both")),
        (Some(seq), None) => StartAt::AfterSeq(seq),
        (None, Some(ts)) => StartAt::Since(ts),
        (None, None) => StartAt::Live,
    };
    if queue.is_some() && start != StartAt::Live {
        return Err(invalid_query(
            "a `queue` member is live only: leave out `from_seq` and `since`",
        ));
    }
    Ok(StreamParams {
        pattern: pattern.unwrap_or_else(|| Pattern::parse("hub.>").expect("valid pattern")),
        start,
        queue,
    })
}

/// Validates the request and subscribes before upgrading, so that every mistake is an
/// ordinary HTTP error and no event committed after the upgrade can be missed.
#[utoipa::path(
    get,
    path = "/api/events/stream",
    tag = "events",
    summary = "Stream events (WebSocket)",
    description = "A GET that upgrades to a WebSocket (RFC 6455: `Connection: Upgrade`, \
        `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`). Each matching \
        event is then one text frame, a `StreamFrame`: \
        `{\"subject\": \"…\", \"data\": <Event>}`. With `from_seq` the stored matching events \
        with a larger seq are replayed first, with `since` those committed since then; \
        without either the stream is live from the moment of connecting. Give at most one of \
        them. To resume after a disconnect, reconnect with `from_seq` = the last seq \
        received: every matching event after it comes exactly once, in order. With \
        `queue=NAME` the stream joins a live queue group (NATS core queue semantics, within \
        this instance): streams with the same `queue` and `subject` share the events, each \
        to one of them, at most once (no replay; for at-least-once sharing use a durable \
        consumer). Idle streams \
        are pinged. A client that does not read for the send timeout is closed with code \
        1008, and at shutdown streams close with 1001; the close reason names the `from_seq` \
        to resume from. Every mistake is an ordinary HTTP error before the upgrade.",
    params(
        ("subject" = Option<crate::wire::schema::SubjectPattern>, Query, description = "Which subjects; default `hub.>`."),
        ("from_seq" = Option<crate::wire::schema::SeqParam>, Query, description = "Replay stored events with a larger seq first."),
        ("since" = Option<crate::wire::schema::Instant>, Query, description = "Replay stored events committed since this instant first."),
        ("queue" = Option<crate::wire::schema::ConsumerName>, Query, description = "Join this live queue group (not with `from_seq` or `since`)."),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol. Frames from the \
            server are text, each a `StreamFrame` (see components): \
            `{\"subject\": \"hub.local-hub.project.started\", \"data\": {\"id\": \"…\", \"seq\": 7, …}}`.",
            headers(
                ("Upgrade" = String, description = "`websocket`"),
                ("Connection" = String, description = "`upgrade`"),
                ("Sec-WebSocket-Accept" = String, description = "RFC 6455's answer to `Sec-WebSocket-Key`."),
            )),
        (status = 400, response = crate::wire::schema::BadRequest),
        (status = 503, response = crate::wire::schema::ServiceUnavailable),
    ),
)]
pub async fn stream(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    RawQuery(raw): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let params = parse_params(raw.as_deref().unwrap_or(""))?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            ErrorCode::WebsocketRequired,
            format!(
                "this endpoint streams over WebSocket ({}); connect with a WebSocket client, e.g. websocat",
                rejection.body_text()
            ),
        )
    })?;
    let permit = state.stream_permit()?;
    let slot = caller.open_stream()?;
    let subscription = match &params.queue {
        Some(group) => state
            .hub
            .as_caller(&caller)
            .subscribe_queue(params.pattern, group)?,
        None => {
            state
                .hub
                .as_caller(&caller)
                .subscribe(params.pattern, params.start)
                .await?
        }
    };
    let streams = state.streams.clone();
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            streams.track_future(async move {
                // Counted against the key's and tenant's streams while open.
                let _slot = slot;
                run(socket, subscription, state, permit).await
            })
        }))
}

enum Ending {
    /// The client went away: nothing to send.
    ClientGone,
    Close(u16, String),
}

async fn run(
    socket: WebSocket,
    mut subscription: Subscription,
    state: AppState,
    _permit: OwnedSemaphorePermit,
) {
    let limits = state.limits.clone();
    let (mut sink, mut incoming) = socket.split();
    let mut ping = interval_at(
        Instant::now() + limits.ws_ping_interval,
        limits.ws_ping_interval,
    );
    // The last seq the client has been sent and flushed: where it should resume.
    let mut delivered: Seq = subscription.position();
    let resume = |seq: Seq| format!("reconnect with from_seq={seq}");

    let ending = loop {
        tokio::select! {
            biased;
            () = state.shutdown.cancelled() => {
                break Ending::Close(GOING_AWAY, format!("server shutting down; {}", resume(delivered)));
            }
            message = incoming.next() => match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break Ending::ClientGone,
                Some(Ok(_)) => {} // Pongs and anything else a client sends are ignored.
            },
            _ = ping.tick() => {
                match timeout(limits.ws_send_timeout, sink.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ending::ClientGone,
                    Err(_) => break Ending::Close(POLICY_VIOLATION, format!("client not reading; {}", resume(delivered))),
                }
            }
            item = subscription.next() => {
                let first = match item {
                    None => break Ending::Close(GOING_AWAY, format!("hub shutting down; {}", resume(delivered))),
                    Some(Err(error)) => {
                        tracing::warn!(%error, "Stream failed to read the store.");
                        break Ending::Close(INTERNAL_ERROR, format!("store unavailable; {}", resume(delivered)));
                    }
                    Some(Ok(event)) => event,
                };
                // Take whatever else is ready now, and send it all with one flush.
                let mut batch = vec![first];
                let mut ending = None;
                while batch.len() < MAX_FRAMES_PER_FLUSH {
                    match subscription.next().now_or_never() {
                        Some(Some(Ok(event))) => batch.push(event),
                        Some(None) => {
                            ending = Some(Ending::Close(GOING_AWAY, "hub shutting down".to_owned()));
                            break;
                        }
                        Some(Some(Err(_))) | None => break,
                    }
                }
                let last = batch.last().map_or(delivered, |e| e.seq);
                let sent = tokio::select! {
                    sent = timeout(limits.ws_send_timeout, send_batch(&mut sink, &batch)) => sent,
                    // A write blocked on a client that stopped reading must not hold up shutdown.
                    () = state.shutdown.cancelled() => {
                        break Ending::Close(GOING_AWAY, format!("server shutting down; {}", resume(delivered)));
                    }
                };
                match sent {
                    Ok(Ok(())) => {
                        delivered = last;
                        ::metrics::counter!("herald_ws_messages_sent_total").increment(batch.len() as u64);
                    }
                    Ok(Err(_)) => break Ending::ClientGone,
                    Err(_) => {
                        tracing::info!(delivered, "Closing a stream whose client stopped reading.");
                        break Ending::Close(POLICY_VIOLATION, format!("client not reading; {}", resume(delivered)));
                    }
                }
                if let Some(ending) = ending {
                    break ending;
                }
            }
        }
    };

    if let Ending::Close(code, reason) = ending {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // Best effort: a client that stopped reading may never take it.
        let _ = timeout(
            std::time::Duration::from_secs(1),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

async fn send_batch(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    batch: &[std::sync::Arc<Event>],
) -> Result<(), axum::Error> {
    for event in batch {
        let text = serde_json::to_string(&StreamFrame::from(event.as_ref()))
            .expect("an event always serializes");
        sink.feed(Message::Text(text.into())).await?;
    }
    sink.flush().await
}
