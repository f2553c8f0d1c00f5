//! The log tail: one way to follow the log from a saved cursor, for every task that acts
//! on committed events at its own pace (the NATS relay, the routing rules).
//!
//! A [`LogTail`] reads the log after its start position — pages of the log itself, or a
//! [`Subscription`] of a pattern (store catch-up, then live) — and hands its user the
//! events it keeps (a `prepare` function filters and maps them, off the user's path, in
//! the reader task). The user completes them in any order with [`LogTail::finish`]. The
//! tail keeps the **low-water mark**: the highest seq at or below which every event was
//! finished or left out by the filter. That mark, and only that mark, is saved as the
//! cursor, through one path (straight to the store, or noted in the hub's
//! [`CursorBook`](crate::cursors::CursorBook) which saves many together).
//!
//! What it guarantees its user:
//! - **At least once**: every kept event after the start position is handed out; after a
//!   restart everything above the saved cursor is handed out again, so an event whose
//!   work had not finished is never lost (it may come twice).
//! - **The cursor never passes an unfinished seq**: what is saved is the low-water mark.
//! - **Bounded memory**: at most `window` events in flight, and a few pages read ahead
//!   (`window / page` of them).
//! - **Resume after a crash** from the saved low-water mark ([`Start::Saved`]); after an
//!   error in the same process, from the in-memory mark when it is further (a retry
//!   does not depend on the last save).
//!
//! The reader wakes on every commit fanned out (the hub's `committed` watch, or the
//! subscription's live queue) and at least every `poll`, so a lost wake-up only delays.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{Event, Pattern, Seq};
use herald_store::{Query, Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::{Inner, Subscription};

/// How long the subscription reader waits before reading again after a store error.
const SUBSCRIPTION_RETRY: Duration = Duration::from_secs(1);

/// The seqs in flight and the low-water mark below them.
#[derive(Debug)]
pub(crate) struct Window {
    in_flight: BTreeSet<Seq>,
    /// Every seq up to here was handed out or left out by the filter.
    read_to: Seq,
    capacity: usize,
}

impl Window {
    pub(crate) fn new(from: Seq, capacity: usize) -> Self {
        Window {
            in_flight: BTreeSet::new(),
            read_to: from,
            capacity: capacity.max(1),
        }
    }

    /// Whether `more` items can be taken without exceeding the capacity.
    pub(crate) fn has_room_for(&self, more: usize) -> bool {
        self.in_flight.len() + more.min(self.capacity) <= self.capacity
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// `seq` was handed out and is not finished yet.
    pub(crate) fn take(&mut self, seq: Seq) {
        self.in_flight.insert(seq);
        self.read_to = self.read_to.max(seq);
    }

    /// Everything up to `seq` was read: what was not taken is not wanted.
    pub(crate) fn read_to(&mut self, seq: Seq) {
        self.read_to = self.read_to.max(seq);
    }

    /// `seq` is finished; false when it was not in flight.
    pub(crate) fn finish(&mut self, seq: Seq) -> bool {
        self.in_flight.remove(&seq)
    }

    /// The highest seq at or below which everything is finished.
    pub(crate) fn low_water(&self) -> Seq {
        self.in_flight
            .first()
            .map_or(self.read_to, |first| first - 1)
    }
}

/// Where the low-water mark is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Saving {
    /// In the store, one transaction per save (the relay: one cursor, saved often).
    Store,
    /// Noted in the hub's cursor book, which saves every noted cursor together once a
    /// second (the rules: many cursors).
    Book,
}

/// Where a tail starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// After the saved cursor, or after `at_least` when that is further.
    Saved { at_least: Seq },
    /// After this seq, whatever is saved.
    After(Seq),
}

/// Where a tail's events come from.
pub(crate) enum Source<T> {
    /// Pages of the whole log; `prepare` keeps (and maps) what the user wants.
    Log(Box<dyn FnMut(Event) -> Option<T> + Send>),
    /// A subscription of `pattern`: catch-up from the store, then the live fan-out.
    Subscription {
        pattern: Pattern,
        prepare: Box<dyn FnMut(Arc<Event>) -> Option<T> + Send>,
    },
}

pub(crate) struct TailConfig {
    /// Names the tail in log lines.
    pub label: String,
    /// The cursor the low-water mark is saved under; `None`: it is never saved.
    pub cursor: Option<String>,
    pub saving: Saving,
    /// Saves at most this often while events flow (also when idle, and at the end).
    pub save_every: Duration,
    /// Most events in flight.
    pub window: usize,
    /// Events read from the log per page (a page is taken only when it fits the window).
    pub page: usize,
    /// Wake-up when no commit is announced (covers a missed announcement).
    pub poll: Duration,
    /// Ends the reader.
    pub stop: CancellationToken,
    /// Where the reader reports the log's head as it last saw it.
    pub head: Option<Arc<AtomicU64>>,
}

/// Why a tail could not go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TailError {
    #[error("{doing}: {source}")]
    Store {
        doing: &'static str,
        #[source]
        source: StoreError,
    },
}

/// A page the reader prepared.
struct Batch<T> {
    items: Vec<(Seq, T)>,
    /// Every event up to here is in `items` or was left out.
    read_to: Seq,
}

/// A follower of the log with a window of work in flight and a saved low-water mark.
pub(crate) struct LogTail<T> {
    inner: Arc<Inner>,
    cursor: Option<String>,
    saving: Saving,
    save_every: Duration,
    page: usize,
    window: Window,
    saved: Seq,
    last_save: Instant,
    /// A second cursor saved in the same transaction as the mark (see
    /// [`LogTail::keep_beside`]).
    beside: Option<(String, Seq)>,
    batches: mpsc::Receiver<Result<Batch<T>, TailError>>,
    _reader: AbortOnDropHandle<()>,
}

impl<T: Send + 'static> LogTail<T> {
    /// Loads the cursor (for [`Start::Saved`]) and starts reading after it.
    pub(crate) async fn open(
        inner: &Arc<Inner>,
        config: TailConfig,
        source: Source<T>,
        start: Start,
    ) -> Result<Self, TailError> {
        let (from, saved) = match start {
            Start::After(seq) => (seq, seq),
            Start::Saved { at_least } => {
                let stored =
                    match &config.cursor {
                        Some(name) => inner.store.load_cursor(name).await.map_err(|source| {
                            TailError::Store {
                                doing: "loading the cursor",
                                source,
                            }
                        })?,
                        None => 0,
                    };
                (stored.max(at_least), stored)
            }
        };
        let page = config.page.clamp(1, config.window.max(1));
        let (batches_tx, batches) = mpsc::channel((config.window / page).max(1));
        let reader = match source {
            Source::Log(prepare) => tokio::spawn(read_log(
                inner.clone(),
                from,
                page,
                config.poll,
                config.stop.clone(),
                config.head.clone(),
                prepare,
                batches_tx,
            )),
            Source::Subscription { pattern, prepare } => {
                let subscription = Subscription::register(inner.clone(), pattern, Some(from), None);
                tokio::spawn(read_subscription(
                    subscription,
                    config.label.clone(),
                    config.stop.clone(),
                    prepare,
                    batches_tx,
                ))
            }
        };
        Ok(LogTail {
            inner: inner.clone(),
            cursor: config.cursor,
            saving: config.saving,
            save_every: config.save_every,
            page,
            window: Window::new(from, config.window),
            saved,
            last_save: Instant::now(),
            beside: None,
            batches,
            _reader: AbortOnDropHandle::new(reader),
        })
    }

    /// Whether another page fits the window: take one with [`LogTail::next`] only then.
    pub(crate) fn has_room(&self) -> bool {
        self.window.has_room_for(self.page)
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.window.len()
    }

    /// The next prepared page, its events now in flight. `None` when the reader ended
    /// (shutdown, or the hub going away). Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<Result<Vec<(Seq, T)>, TailError>> {
        let batch = match self.batches.recv().await? {
            Ok(batch) => batch,
            Err(error) => return Some(Err(error)),
        };
        for (seq, _) in &batch.items {
            self.window.take(*seq);
        }
        self.window.read_to(batch.read_to);
        Some(Ok(batch.items))
    }

    /// The work on `seq` is finished (done, or given up for good).
    pub(crate) fn finish(&mut self, seq: Seq) {
        self.window.finish(seq);
    }

    /// The low-water mark: every event up to here is finished.
    pub(crate) fn done(&self) -> Seq {
        self.window.low_water()
    }

    /// When a save is due: the mark moved, and `save_every` after the last save. `None`
    /// while there is nothing to save. Wait for it with [`until`] (a plain value, so
    /// that it can be waited on in a `select!` next to [`LogTail::next`]).
    pub(crate) fn save_deadline(&self) -> Option<tokio::time::Instant> {
        (self.cursor.is_some() && self.done() > self.saved)
            .then(|| (self.last_save + self.save_every).into())
    }

    /// Saves the mark when it moved and `save_every` has passed.
    pub(crate) async fn save_if_due(&mut self) -> Result<(), StoreError> {
        if self.last_save.elapsed() >= self.save_every {
            self.save().await?;
        }
        Ok(())
    }

    /// Notes a value to save with the mark, in the same transaction, under cursor
    /// `name` (which never moves backwards either): a position elsewhere that must
    /// agree with the mark after a crash. Only with [`Saving::Store`].
    pub(crate) fn keep_beside(&mut self, name: &str, value: Seq) {
        match &mut self.beside {
            Some((_, kept)) => *kept = value,
            None => self.beside = Some((name.to_owned(), value)),
        }
    }

    /// Saves the mark now when it moved (at the end of a run).
    pub(crate) async fn save(&mut self) -> Result<(), StoreError> {
        let done = self.done();
        let Some(name) = &self.cursor else {
            return Ok(());
        };
        if done <= self.saved {
            return Ok(());
        }
        match (&self.saving, &self.beside) {
            (Saving::Store, Some((beside, value))) => {
                let cursors = vec![(name.clone(), done), (beside.clone(), *value)];
                self.inner.store.save_cursors(cursors).await?
            }
            (Saving::Store, None) => self.inner.store.save_cursor(name, done).await?,
            (Saving::Book, _) => self.inner.cursors.note(name, done),
        }
        self.saved = done;
        self.last_save = Instant::now();
        Ok(())
    }
}

/// Follows the log after `from` and hands over prepared pages, in seq order. Ends when
/// the tail is dropped, at `stop`, or after sending an error.
#[allow(clippy::too_many_arguments)]
async fn read_log<T>(
    inner: Arc<Inner>,
    from: Seq,
    page: usize,
    poll: Duration,
    stop: CancellationToken,
    head_gauge: Option<Arc<AtomicU64>>,
    mut prepare: Box<dyn FnMut(Event) -> Option<T> + Send>,
    batches: mpsc::Sender<Result<Batch<T>, TailError>>,
) {
    let report = |head: Seq| {
        if let Some(gauge) = &head_gauge {
            gauge.store(head, Ordering::Relaxed);
        }
    };
    let mut read_to = from;
    let mut commits = inner.committed.subscribe();
    let mut head = (*commits.borrow_and_update()).max(read_to);
    loop {
        if read_to < head {
            let query = Query {
                after_seq: read_to,
                limit: page,
                ..Query::default()
            };
            let found = match inner.store.query(query).await {
                Ok(found) => found,
                Err(source) => {
                    let error = TailError::Store {
                        doing: "reading the log",
                        source,
                    };
                    let _ = batches.send(Err(error)).await;
                    return;
                }
            };
            let short = found.events.len() < page;
            let mut items = Vec::with_capacity(found.events.len());
            for event in found.events {
                let seq = event.seq;
                if let Some(item) = prepare(event) {
                    items.push((seq, item));
                }
            }
            read_to = read_to.max(found.scanned_to);
            if short {
                head = head.max(read_to);
            }
            report(head);
            if batches.send(Ok(Batch { items, read_to })).await.is_err() {
                return;
            }
            continue;
        }
        let polled = tokio::select! {
            changed = commits.changed() => changed.is_err(),
            () = tokio::time::sleep(poll) => true,
            () = batches.closed() => return,
            () = stop.cancelled() => return,
        };
        head = head.max(*commits.borrow_and_update());
        if polled {
            match inner.store.head().await {
                Ok(store_head) => head = head.max(store_head),
                Err(source) => {
                    let error = TailError::Store {
                        doing: "reading the log's head",
                        source,
                    };
                    let _ = batches.send(Err(error)).await;
                    return;
                }
            }
        }
        report(head);
    }
}

/// Hands over the events of a subscription one at a time; a store error during
/// catch-up is retried from the same place. Ends with the hub, at `stop`, or when the
/// tail is dropped.
async fn read_subscription<T>(
    mut subscription: Subscription,
    label: String,
    stop: CancellationToken,
    mut prepare: Box<dyn FnMut(Arc<Event>) -> Option<T> + Send>,
    batches: mpsc::Sender<Result<Batch<T>, TailError>>,
) {
    loop {
        match subscription.next().await {
            None => return,
            Some(Ok(event)) => {
                let seq = event.seq;
                let items = prepare(event).map(|item| (seq, item)).into_iter().collect();
                let batch = Batch {
                    items,
                    read_to: seq,
                };
                if batches.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
            Some(Err(error)) => {
                tracing::warn!(tail = %label, %error, "A log tail cannot read the log; retrying.");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SUBSCRIPTION_RETRY) => {}
                }
            }
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Doubling waits after consecutive failures, up to `first << max_step`.
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    max_step: u32,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max_step: u32) -> Self {
        Backoff {
            first,
            max_step,
            failures: 0,
        }
    }

    /// The next wait is the longest.
    pub(crate) fn slowest(&mut self) {
        self.failures = self.failures.max(self.max_step);
    }

    /// The wait the next [`Backoff::pause`] takes.
    pub(crate) fn delay(&self) -> Duration {
        self.first * (1u32 << self.failures.min(self.max_step))
    }

    /// Waits; true when `stop` came first.
    pub(crate) async fn pause(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.delay();
        self.failures = self.failures.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => false,
            () = stop.cancelled() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_water_mark_waits_for_the_oldest_unfinished_seq() {
        let mut window = Window::new(10, 8);
        for seq in [11, 12, 14, 15] {
            window.take(seq);
        }
        // 13 was left out by the filter; 16 too, and the page ends there.
        window.read_to(16);
        assert_eq!(window.low_water(), 10);
        // Finishing out of order never moves the mark over an unfinished seq.
        assert!(window.finish(14));
        assert_eq!(window.low_water(), 10);
        assert!(window.finish(12));
        assert_eq!(window.low_water(), 10);
        assert!(window.finish(11));
        assert_eq!(window.low_water(), 14, "15 is still in flight");
        assert!(!window.finish(11), "finishing twice is noticed");
        assert!(window.finish(15));
        assert_eq!(window.low_water(), 16, "13 and 16 were not wanted");
    }

    #[test]
    fn the_window_is_bounded() {
        let mut window = Window::new(0, 4);
        assert!(window.has_room_for(4));
        assert!(
            window.has_room_for(5),
            "a page larger than the window still fits an empty one"
        );
        for seq in 1..=3 {
            window.take(seq);
        }
        assert!(window.has_room_for(1));
        assert!(!window.has_room_for(2));
        window.take(4);
        assert!(!window.has_room_for(1));
        window.finish(2);
        assert!(window.has_room_for(1));
        assert_eq!(window.len(), 3);
        assert_eq!(window.low_water(), 0, "1 is still in flight");
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let mut backoff = Backoff::new(Duration::from_millis(100), 5);
        assert_eq!(backoff.delay(), Duration::from_millis(100));
        backoff.failures = 3;
        assert_eq!(backoff.delay(), Duration::from_millis(800));
        backoff.failures = 40;
        assert_eq!(backoff.delay(), Duration::from_millis(3200));
        let mut backoff = Backoff::new(Duration::from_millis(100), 5);
        backoff.slowest();
        assert_eq!(backoff.delay(), Duration::from_millis(3200));
    }

    fn config(stop: &CancellationToken, window: usize, page: usize) -> TailConfig {
        TailConfig {
            label: "test".into(),
            cursor: Some("test-tail".into()),
            saving: Saving::Store,
            save_every: Duration::from_millis(10),
            window,
            page,
            poll: Duration::from_millis(50),
            stop: stop.clone(),
            head: None,
        }
    }

    /// Keeps the events whose subject ends in `.kept`.
    fn kept(event: Event) -> Option<String> {
        event
            .subject
            .as_str()
            .ends_with(".kept")
            .then(|| event.subject.into_string())
    }

    async fn next_seqs(tail: &mut LogTail<String>) -> Vec<Seq> {
        let page = tokio::time::timeout(Duration::from_secs(5), tail.next())
            .await
            .expect("a page in time")
            .expect("the reader runs")
            .expect("the log is readable");
        page.into_iter().map(|(seq, _)| seq).collect()
    }

    #[tokio::test]
    async fn a_tail_resumes_from_its_saved_low_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let hub = crate::testing::open_hub(&dir).await;
        let stop = CancellationToken::new();
        for n in 1..=6 {
            let subject = if n == 3 {
                "hub.local.skipped"
            } else {
                "hub.local.kept"
            };
            hub.publish(hub.new_event(subject, &format!(r#"{{"n":{n}}}"#)).unwrap())
                .await
                .unwrap();
        }
        let mut tail = LogTail::open(
            &hub.inner,
            config(&stop, 8, 8),
            Source::Log(Box::new(kept)),
            Start::Saved { at_least: 0 },
        )
        .await
        .unwrap();
        assert_eq!(next_seqs(&mut tail).await, vec![1, 2, 4, 5, 6]);
        assert_eq!(tail.in_flight(), 5);
        // Finished out of order: 1, 2 and 5; 4 and 6 are unfinished.
        for seq in [5, 2, 1] {
            tail.finish(seq);
        }
        assert_eq!(tail.done(), 3, "3 was not wanted; 4 is unfinished");
        tokio::time::sleep(Duration::from_millis(20)).await;
        tail.save_if_due().await.unwrap();
        drop(tail);
        assert_eq!(hub.inner.store.load_cursor("test-tail").await.unwrap(), 3);

        // A new tail (as after a crash) hands out everything above the saved mark again.
        let mut tail = LogTail::open(
            &hub.inner,
            config(&stop, 8, 8),
            Source::Log(Box::new(kept)),
            Start::Saved { at_least: 0 },
        )
        .await
        .unwrap();
        assert_eq!(next_seqs(&mut tail).await, vec![4, 5, 6]);
        for seq in [6, 4, 5] {
            tail.finish(seq);
        }
        tail.save().await.unwrap();
        assert_eq!(hub.inner.store.load_cursor("test-tail").await.unwrap(), 6);

        // It wakes on a commit.
        hub.publish(hub.new_event("hub.local.kept", "{}").unwrap())
            .await
            .unwrap();
        assert_eq!(next_seqs(&mut tail).await, vec![7]);
        drop(tail);
        stop.cancel();
        hub.shutdown().await;
    }

    #[tokio::test]
    async fn a_tail_takes_a_page_only_when_it_fits_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let hub = crate::testing::open_hub(&dir).await;
        let stop = CancellationToken::new();
        for _ in 0..10 {
            hub.publish(hub.new_event("hub.local.kept", "{}").unwrap())
                .await
                .unwrap();
        }
        let mut tail = LogTail::open(
            &hub.inner,
            config(&stop, 4, 2),
            Source::Log(Box::new(kept)),
            Start::After(0),
        )
        .await
        .unwrap();
        assert_eq!(next_seqs(&mut tail).await, vec![1, 2]);
        assert!(tail.has_room());
        assert_eq!(next_seqs(&mut tail).await, vec![3, 4]);
        assert!(!tail.has_room(), "four in flight fill the window");
        tail.finish(3);
        assert!(
            !tail.has_room(),
            "a page of two does not fit in one free place"
        );
        tail.finish(1);
        assert!(tail.has_room());
        assert_eq!(tail.done(), 1);
        drop(tail);
        stop.cancel();
        hub.shutdown().await;
    }
}
