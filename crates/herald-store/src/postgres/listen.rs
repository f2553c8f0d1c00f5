//! Wake-ups when another instance commits: one dedicated connection (outside the pool)
//! runs `LISTEN herald_log`; every append sends `pg_notify('herald_log', <new head>)`
//! inside its transaction, so the notification arrives after the commit.
//!
//! Notifications are hints, not the log: a reader that wakes reads the store by seq. The
//! listener reconnects with backoff when its connection drops, and nudges its receivers
//! after every (re)connect, because notifications sent while it was away are lost.

use std::time::Duration;

use futures_util::StreamExt;
use herald_core::Seq;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;

use super::Tls;

/// Starts the listener; it stops when every receiver is gone.
pub(super) fn spawn(
    config: tokio_postgres::Config,
    tls: Tls,
    redacted_url: String,
) -> watch::Receiver<Seq> {
    let (commits, receiver) = watch::channel(0);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while !commits.is_closed() {
            match config.connect(tls.clone()).await {
                Ok((client, mut connection)) => {
                    let (heads, mut incoming) = mpsc::unbounded_channel::<Seq>();
                    let driver = tokio::spawn(async move {
                        let mut messages =
                            futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(Ok(message)) = messages.next().await {
                            if let AsyncMessage::Notification(note) = message {
                                let _ = heads.send(note.payload().parse().unwrap_or(0));
                            }
                        }
                    });
                    if let Err(error) = client.batch_execute("LISTEN herald_log").await {
                        tracing::warn!(url = %redacted_url, %error, "LISTEN failed; retrying.");
                    } else {
                        backoff = Duration::from_millis(100);
                        // Whatever was committed while we were not listening. (Copy the
                        // value first: a borrow guard held across the send would deadlock.)
                        let last = *commits.borrow();
                        commits.send_replace(last);
                        loop {
                            tokio::select! {
                                head = incoming.recv() => match head {
                                    Some(head) => { commits.send_replace(head); }
                                    None => break,
                                },
                                () = commits.closed() => break,
                            }
                        }
                    }
                    driver.abort();
                    drop(client);
                }
                Err(error) => {
                    tracing::warn!(url = %redacted_url, %error, "Cannot connect to listen for commits; retrying.");
                }
            }
            if commits.is_closed() {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    receiver
}
