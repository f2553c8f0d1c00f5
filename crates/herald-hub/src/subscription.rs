//! Catch-up subscriptions: read from the store until caught up, then live.
//!
//! The join protocol, which gives no gap and no duplicate:
//! 1. Register in the fan-out table, under its lock, and note `head`, the last seq
//!    fanned out. Every event after `head` will be offered to this subscription's
//!    queue; every event up to `head` is already in the store.
//! 2. If the subscription starts before `head`, read the store from its position
//!    until a page comes back short (the store has nothing more that matches).
//! 3. Go live: take events from the queue, skipping any seq already delivered.
//!
//! When the queue overflows, fan-out stops filling it and raises a flag. Once the
//! subscriber has drained what the queue holds, it lowers the flag (so new events queue
//! again) and repeats step 2 from its last seq. Memory stays bounded by the queue and
//! one page, whatever the subscriber's speed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::Stream;
use herald_core::{Event, Pattern, Seq, Timestamp};
use herald_store::{Query, Store};
use tokio::sync::mpsc;

use crate::{HubError, Inner};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// With the next event committed.
    Live,
    /// With the first stored event after this seq (0 = the beginning of the log).
    AfterSeq(Seq),
    /// With the first event committed at or after this instant.
    Since(Timestamp),
}

/// The hub's side of a live subscriber.
pub(crate) struct LiveSlot {
    queue: mpsc::Sender<Arc<Event>>,
    overflowed: Arc<AtomicBool>,
    /// For a member of a live queue group: the group (its name and pattern). Each event
    /// goes to one member of a group, at most once; a full member is passed over.
    pub(crate) group: Option<Arc<str>>,
}

pub(crate) enum Offer {
    Queued,
    Overflowed,
    Skipped,
}

impl LiveSlot {
    /// Offers an event to a queue-group member: `false` when its queue is full or gone
    /// (the event then goes to another member, or to none).
    pub(crate) fn offer_once(&self, event: &Arc<Event>) -> bool {
        self.queue.try_send(event.clone()).is_ok()
    }

    /// Offers an event without ever waiting: a full queue flips the subscriber to catch-up.
    pub(crate) fn offer(&self, event: &Arc<Event>) -> Offer {
        if self.overflowed.load(Ordering::Acquire) {
            return Offer::Skipped;
        }
        match self.queue.try_send(event.clone()) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Release);
                Offer::Overflowed
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Skipped,
        }
    }
}

enum Mode {
    CatchingUp,
    Live,
}

/// A stream of events matching a pattern, in seq order, without gaps or duplicates.
/// Dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Inner>,
    id: u64,
    pattern: Pattern,
    since: Option<Timestamp>,
    queue: mpsc::Receiver<Arc<Event>>,
    overflowed: Arc<AtomicBool>,
    /// The last seq delivered (or skipped as not wanted).
    position: Seq,
    mode: Mode,
    backlog: VecDeque<Arc<Event>>,
    /// How far the last page read the store: the next page starts after it once the
    /// backlog is delivered.
    read_to: Seq,
    /// When set, events this caller may not see are passed over.
    visible_to: Option<crate::access::Caller>,
}

impl Subscription {
    pub(crate) fn register(
        hub: Arc<Inner>,
        pattern: Pattern,
        after: Option<Seq>,
        since: Option<Timestamp>,
    ) -> Self {
        Self::register_in(hub, pattern, after, since, None)
    }

    /// A live member of the queue group `group` (see [`Hub::subscribe_queue`](crate::Hub::subscribe_queue)).
    pub(crate) fn register_member(hub: Arc<Inner>, pattern: Pattern, group: &str) -> Self {
        let key: Arc<str> = format!("{group} {}", pattern.as_str()).into();
        Self::register_in(hub, pattern, None, None, Some(key))
    }

    fn register_in(
        hub: Arc<Inner>,
        pattern: Pattern,
        after: Option<Seq>,
        since: Option<Timestamp>,
        group: Option<Arc<str>>,
    ) -> Self {
        let (tx, queue) = mpsc::channel(hub.config.subscriber_queue.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        let id = hub.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let head = {
            let mut fanout = hub.fanout.lock().expect("fanout lock");
            fanout.tree.insert(&pattern, id);
            fanout.subscribers.insert(
                id,
                LiveSlot {
                    queue: tx,
                    overflowed: overflowed.clone(),
                    group,
                },
            );
            fanout.head
        };
        let (position, mode) = match after {
            Some(seq) if seq < head => (seq, Mode::CatchingUp),
            Some(seq) => (seq, Mode::Live),
            None => (head, Mode::Live),
        };
        Subscription {
            hub,
            id,
            pattern,
            since,
            queue,
            overflowed,
            position,
            mode,
            backlog: VecDeque::new(),
            read_to: 0,
            visible_to: None,
        }
    }

    /// Passes over the events `caller` may not see.
    pub(crate) fn visible_to(mut self, caller: crate::access::Caller) -> Self {
        self.visible_to = Some(caller);
        self
    }

    /// The next event (that the caller may see, when the subscription has one). `None`
    /// when the hub shuts down. An error (the store failed during catch-up) leaves the
    /// subscription usable: calling again retries from the same place.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, HubError>> {
        loop {
            let event = match self.next_any().await? {
                Ok(event) => event,
                Err(error) => return Some(Err(error)),
            };
            match &self.visible_to {
                Some(caller) if !caller.may_see(&event) => continue,
                _ => return Some(Ok(event)),
            }
        }
    }

    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// The seq of the last event this subscription has moved past: resume from here.
    pub fn position(&self) -> Seq {
        self.position
    }

    /// The next event of the pattern, whoever may see it.
    async fn next_any(&mut self) -> Option<Result<Arc<Event>, HubError>> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.position = event.seq;
                return Some(Ok(event));
            }
            match self.mode {
                Mode::CatchingUp => match self.read_page().await {
                    Ok(()) => {}
                    Err(HubError::ShuttingDown) => return None,
                    Err(error) => return Some(Err(error)),
                },
                Mode::Live => {
                    let event = match self.queue.try_recv() {
                        Ok(event) => event,
                        Err(mpsc::error::TryRecvError::Disconnected) => return None,
                        Err(mpsc::error::TryRecvError::Empty) => {
                            if self.overflowed.swap(false, Ordering::AcqRel) {
                                // Everything the queue held is delivered; the rest is in the store.
                                self.mode = Mode::CatchingUp;
                                continue;
                            }
                            self.queue.recv().await?
                        }
                    };
                    if event.seq <= self.position {
                        continue;
                    }
                    if self.since.is_some_and(|t| event.timestamp < t) {
                        self.position = event.seq;
                        continue;
                    }
                    self.position = event.seq;
                    return Some(Ok(event));
                }
            }
        }
    }

    async fn read_page(&mut self) -> Result<(), HubError> {
        let limit = self.hub.config.catch_up_page.max(1);
        // Every event fanned out so far (and so every one this subscription's queue may
        // have missed) is at or below this head, and in the store.
        let fanned_out = self.hub.fanout.lock().expect("fanout lock").head;
        let page = self
            .hub
            .store
            .query(Query {
                subject: Some(self.pattern.clone()),
                after_seq: self.position.max(self.read_to),
                since: self.since,
                limit,
                ..Query::default()
            })
            .await?;
        // A short page can also be a query that stopped at its scan budget: only one
        // that reached the fan-out head is the end of the catch-up.
        let complete = page.events.len() < limit && page.scanned_to >= fanned_out;
        self.read_to = page.scanned_to;
        self.backlog.extend(page.events.into_iter().map(Arc::new));
        if complete {
            // Nothing more matches up to `scanned_to`; live events take over from there.
            self.mode = Mode::Live;
            if self.backlog.is_empty() {
                self.position = self.position.max(page.scanned_to);
            }
        }
        Ok(())
    }

    /// The subscription as a `Stream` of events.
    pub fn into_stream(self) -> impl Stream<Item = Result<Arc<Event>, HubError>> + Send {
        futures_util::stream::unfold(self, |mut sub| async move {
            let item = sub.next().await?;
            Some((item, sub))
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut fanout) = self.hub.fanout.lock() {
            fanout.tree.remove(&self.pattern, &self.id);
            fanout.subscribers.remove(&self.id);
        }
    }
}
