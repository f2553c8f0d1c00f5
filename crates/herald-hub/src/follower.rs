//! Fan-out that follows the log, for stores shared by several processes (PostgreSQL).
//!
//! With other writers, local commits are not the whole log: another instance may commit
//! seq 91..100 while this one commits 101..110. Fanning out our own batch first would
//! make live subscribers skip 91..100. So in shared mode one task reads the store after
//! the last seq fanned out, in seq order, and fans out what it finds. It wakes after each
//! local commit the committer could not fan out itself, whenever the store reports a
//! commit beyond the fan-out head (PostgreSQL NOTIFY), and once a second regardless, so a
//! lost notification only delays delivery. The store guarantees that seqs become visible
//! in order, so reading "after the head" never skips.
//!
//! The shortcut: commit order is seq order on such a store, so when a local commit got
//! seqs `a..=b` and the fan-out head is `a - 1`, every earlier seq is already fanned out
//! and the committer fans out its own batch without reading it back
//! (`Inner::fan_out_if_next`). Both it and this task fan out under the
//! fan-out lock, and events at or below the head are skipped, so neither can duplicate or
//! reorder what the other did.

use std::sync::Arc;
use std::time::Duration;

use herald_core::Seq;
use herald_store::{Query, Store, MAX_QUERY_LIMIT};
use tokio::sync::watch;

use crate::Inner;

/// The longest a committed event waits for fan-out when every wake-up is lost.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) async fn run(inner: Arc<Inner>, commits: watch::Receiver<Seq>) {
    let wake = inner
        .follow_log
        .as_ref()
        .expect("the follower runs only in follow-log mode");
    let mut commits = Some(commits);
    // The last head a notification reported: a repeat (the listener's nudge after a
    // reconnect) or an unreadable one (0) means "look anyway".
    let mut last_notified: Seq = 0;
    let mut look = true;
    loop {
        if look {
            catch_up(&inner).await;
        }
        look = true;
        tokio::select! {
            () = wake.notified() => {}
            changed = async {
                match commits.as_mut() {
                    Some(receiver) => receiver.changed().await,
                    None => std::future::pending().await,
                }
            } => match changed {
                Ok(()) => {
                    let notified = *commits
                        .as_mut()
                        .expect("a receiver just reported")
                        .borrow_and_update();
                    if notified > last_notified {
                        last_notified = notified;
                        // Our own commits notify too, and the committer usually fans
                        // them out itself: nothing to read when the head is there.
                        look = notified > inner.fanout.lock().expect("fanout lock").head;
                    }
                }
                Err(_) => {
                    // The store stopped reporting commits; keep polling.
                    commits = None;
                }
            },
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = inner.shutdown.cancelled() => break,
        }
    }
    tracing::debug!("Log follower stopped.");
}

/// Fans out every event committed after the fan-out head.
async fn catch_up(inner: &Inner) {
    loop {
        let head = inner.fanout.lock().expect("fanout lock").head;
        let query = Query {
            after_seq: head,
            limit: MAX_QUERY_LIMIT,
            ..Query::default()
        };
        match inner.store.query(query).await {
            Ok(page) => {
                let full = page.events.len() == MAX_QUERY_LIMIT;
                let events: Vec<_> = page.events.into_iter().map(Arc::new).collect();
                inner.fan_out(&events);
                if !full {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot read the log to fan out; retrying.");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
        }
    }
}
