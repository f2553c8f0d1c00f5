//! Whether commits are getting through, for `/health`: a store can be readable while
//! every write fails (disk full, read-only remount, EPERM) or hangs (a frozen
//! filesystem, a lock held elsewhere). The committer reports each commit here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A commit running longer than this makes the hub unhealthy.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// How long a failed commit (with no success since) keeps the hub unhealthy when nothing
/// else is published: after that, health turns optimistic again, so that a load balancer
/// sends traffic that shows whether the store has recovered.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(30);

/// What the committer has seen. Times are milliseconds since `base`, plus one (0 = never).
pub(crate) struct WriteHealth {
    base: Instant,
    running_since: AtomicU64,
    last_success: AtomicU64,
    last_failure: AtomicU64,
    last_error: Mutex<String>,
}

/// How writes are doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteState {
    Ok,
    /// The last commit failed (with this error) and none has succeeded since.
    Failing(String),
    /// A commit has been running for this long.
    Stalled(Duration),
}

impl WriteState {
    pub fn is_ok(&self) -> bool {
        matches!(self, WriteState::Ok)
    }
}

impl std::fmt::Display for WriteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteState::Ok => f.write_str("commits succeed"),
            WriteState::Failing(error) => write!(f, "commits fail: {error}"),
            WriteState::Stalled(for_how_long) => write!(
                f,
                "a commit has been running for {:.1} s",
                for_how_long.as_secs_f64()
            ),
        }
    }
}

impl Default for WriteHealth {
    fn default() -> Self {
        WriteHealth {
            base: Instant::now(),
            running_since: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
            last_failure: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        }
    }
}

impl WriteHealth {
    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    pub(crate) fn begin(&self) {
        self.running_since.store(self.now(), Ordering::Relaxed);
    }

    pub(crate) fn succeeded(&self) {
        self.running_since.store(0, Ordering::Relaxed);
        self.last_success.store(self.now(), Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error.to_owned();
        self.running_since.store(0, Ordering::Relaxed);
        self.last_failure.store(self.now(), Ordering::Relaxed);
    }

    pub(crate) fn state(&self) -> WriteState {
        let now = self.now();
        let running_since = self.running_since.load(Ordering::Relaxed);
        if running_since != 0 {
            let running = Duration::from_millis(now.saturating_sub(running_since));
            if running > STALL_AFTER {
                return WriteState::Stalled(running);
            }
        }
        let failure = self.last_failure.load(Ordering::Relaxed);
        let success = self.last_success.load(Ordering::Relaxed);
        if failure > success && now - failure <= FAILURE_MEMORY.as_millis() as u64 {
            let error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
            return WriteState::Failing(error.clone());
        }
        WriteState::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_counts_until_the_next_success() {
        let health = WriteHealth::default();
        assert_eq!(health.state(), WriteState::Ok);
        health.begin();
        health.failed("disk full");
        assert_eq!(health.state(), WriteState::Failing("disk full".into()));
        health.begin();
        assert!(
            !health.state().is_ok(),
            "a running commit does not clear a failure"
        );
        health.succeeded();
        assert_eq!(health.state(), WriteState::Ok);
    }
}
