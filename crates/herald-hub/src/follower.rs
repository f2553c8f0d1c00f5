//! Fan-out that follows the log, for stores shared by several processes (PostgreSQL).
//!
//! With other writers, local commits are not the whole log: another instance may commit
//! seq 91..100 while this one commits 101..110. Fanning out our own batch first would
//! make live subscribers skip 91..100. So in shared mode one task reads the store after
//! the last seq fanned out, in seq order, and fans out what it finds. It wakes after each
//! local commit, whenever the store reports another writer's commit (PostgreSQL NOTIFY),
//! and once a second regardless, so a lost notification only delays delivery. The store
//! guarantees that seqs become visible in order, so reading "after the head" never skips.

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
    loop {
        catch_up(&inner).await;
        tokio::select! {
            () = wake.notified() => {}
            changed = async {
                match commits.as_mut() {
                    Some(receiver) => receiver.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    // The store stopped reporting commits; keep polling.
                    commits = None;
                }
            }
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
