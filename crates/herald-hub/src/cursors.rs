//! Cursors of many consumers, saved together.
//!
//! Every durable routing rule keeps a cursor. Saving each on its own would cost one
//! store transaction (and one sync) per rule per second: with hundreds of rules that is
//! a flood of writes competing with publishes. Consumers note their positions here
//! instead, and one task saves whatever moved in a single transaction once a second
//! (and once more at shutdown).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::Seq;
use herald_store::{Store, StoreError};

use crate::Inner;

/// How often noted cursors are saved.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct CursorBook {
    pending: Mutex<HashMap<String, Seq>>,
}

impl CursorBook {
    /// Records that consumer `name` has finished everything up to `seq`.
    pub fn note(&self, name: &str, seq: Seq) {
        let mut pending = self.pending.lock().expect("cursor book lock");
        let entry = pending.entry(name.to_owned()).or_insert(seq);
        *entry = (*entry).max(seq);
    }

    /// Saves what was noted; on failure the positions are kept for the next try.
    pub async fn flush(&self, store: &impl Store) -> Result<(), StoreError> {
        let batch: Vec<(String, Seq)> =
            std::mem::take(&mut *self.pending.lock().expect("cursor book lock"))
                .into_iter()
                .collect();
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(error) = store.save_cursors(batch.clone()).await {
            for (name, seq) in batch {
                self.note(&name, seq);
            }
            return Err(error);
        }
        Ok(())
    }
}

/// Saves noted cursors once a second until shutdown (the hub flushes once more after
/// its consumers have stopped).
pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(FLUSH_EVERY) => {}
            () = inner.shutdown.cancelled() => return,
        }
        if let Err(error) = inner.cursors.flush(&inner.store).await {
            tracing::warn!(%error, "Cannot save consumer cursors; retrying.");
        }
    }
}
