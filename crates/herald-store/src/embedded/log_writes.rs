//! The embedded store's writes when its events are kept in the event log
//! ([`crate::event_log`]): appends, aggregate appends and retention's deletes. Reads go
//! through [`super::events::Events`].
//!
//! One writer appends (a mutex around the [`EventLog`]); it numbers the events, so seqs
//! stay gap-free and times never go down, as with the table. An aggregate append holds
//! it while it checks the version, so no other append slips in between. Aggregates'
//! versions and snapshots stay in SQLite: the version row is written after the log's
//! append, and the log's own last event of the aggregate covers a row a crash lost.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use herald_core::{Event, NewEvent, Seq, Timestamp};
use uuid::Uuid;

use super::fail_stop::FailStop;
use super::{aggregates, map_error, Inner};
use crate::aggregate::{AggregateAppend, AggregateAppended, AggregateKey, AggregatePage, Decision};
use crate::event_log::{store_error, EventLog, EventLogOptions, EventReader, Key};
use crate::segment::AppendError;
use crate::{Appended, Result, StoreError};

pub(super) struct LogSide {
    writer: Mutex<Option<LogWriter>>,
    pub(super) reader: EventReader,
}

struct LogWriter {
    log: EventLog,
    last_ts: i64,
}

impl LogSide {
    /// Opens the log in `dir`; with its head and the head's time.
    pub(super) fn open(dir: &Path) -> Result<(LogSide, Seq, i64)> {
        let (log, recovered) = EventLog::open(dir, EventLogOptions::default())
            .map_err(|e| StoreError::Open(format!("cannot open {}: {e}", dir.display())))?;
        if recovered.truncated_bytes > 0 {
            tracing::warn!(
                bytes = recovered.truncated_bytes,
                "Cut a torn write off the event log's tail (never acknowledged)."
            );
        }
        let reader = log.reader();
        let head = reader.head();
        let last_ts = match reader.event(head).map_err(store_error)? {
            Some(event) => event.timestamp.as_micros(),
            None => i64::MIN,
        };
        let side = LogSide {
            writer: Mutex::new(Some(LogWriter { log, last_ts })),
            reader,
        };
        Ok((side, head, last_ts))
    }

    /// Stops the writer; its drop flushes the postings.
    pub(super) fn close(&self) {
        self.writer.lock().expect("log writer").take();
    }

    /// [`crate::Store::append`]: an event whose id is stored (or earlier in the batch)
    /// is answered with the stored one and not written again.
    pub(super) fn append(
        &self,
        batch: Vec<NewEvent>,
        fail_stop: &FailStop,
        head: &AtomicU64,
    ) -> Result<Vec<Appended>> {
        let mut guard = self.writer.lock().expect("log writer");
        let writer = guard.as_mut().ok_or(StoreError::Closed)?;
        fail_stop.check()?;
        let ts = Timestamp::now().as_micros().max(writer.last_ts);
        let timestamp = Timestamp::from_micros(ts);
        let mut next_seq = writer.log.next_seq();
        let mut events: Vec<Event> = Vec::with_capacity(batch.len());
        // Per event: the index of the new one in `events`, or the stored one.
        let mut order: Vec<std::result::Result<usize, Event>> = Vec::with_capacity(batch.len());
        let mut in_batch: HashMap<Uuid, usize> = HashMap::new();
        for event in batch {
            if let Some(&i) = in_batch.get(&event.id) {
                order.push(Err(events[i].clone()));
                continue;
            }
            let known = if event.has_fresh_id() {
                None
            } else {
                self.reader.by_id(event.id).map_err(store_error)?
            };
            if let Some(stored) = known {
                order.push(Err(stored));
                continue;
            }
            in_batch.insert(event.id, events.len());
            order.push(Ok(events.len()));
            events.push(event.commit(next_seq, timestamp));
            next_seq += 1;
        }
        write(writer, &events, fail_stop, ts)?;
        if let Some(last) = events.last() {
            head.store(last.seq, Ordering::Release);
        }
        let mut stored = events.into_iter();
        Ok(order
            .into_iter()
            .map(|slot| match slot {
                Ok(_) => Appended::Stored(stored.next().expect("one per new event")),
                Err(existing) => Appended::Duplicate(existing),
            })
            .collect())
    }

    /// [`crate::Store::append_aggregate`].
    pub(super) fn append_aggregate(
        &self,
        append: AggregateAppend,
        inner: &Inner,
    ) -> Result<AggregateAppended> {
        let mut guard = self.writer.lock().expect("log writer");
        let writer = guard.as_mut().ok_or(StoreError::Closed)?;
        inner.fail_stop.check()?;
        let row = with_sqlite_writer(inner, |conn| aggregates::version(conn, &append.key))?;
        let current = row.max(version_in_log(&self.reader, &append.key).map_err(store_error)?);
        let stored = append
            .events
            .iter()
            .map(|e| self.reader.by_id(e.id))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(store_error)?;
        match crate::aggregate::decide(&append, current, &stored) {
            Decision::Answer(answer) => return Ok(answer),
            Decision::Write => {}
        }
        let ts = Timestamp::now().as_micros().max(writer.last_ts);
        let first_seq = writer.log.next_seq();
        let count = append.events.len() as u64;
        let committed = crate::aggregate::commit_events(
            append.events,
            first_seq,
            current,
            Timestamp::from_micros(ts),
        );
        let events: Vec<Event> = committed.iter().map(|a| a.event().clone()).collect();
        write(writer, &events, &inner.fail_stop, ts)?;
        inner.head.store(first_seq + count - 1, Ordering::Release);
        let version = current + count;
        // Stored and synced in the log: a lost row is covered by the log's last event.
        if let Err(error) = with_sqlite_writer(inner, |conn| {
            aggregates::set_version(conn, &append.key, version)
        }) {
            tracing::warn!(%error, "Cannot record an aggregate's version; the log has it.");
        }
        Ok(AggregateAppended::Written {
            version,
            events: committed,
        })
    }
}

impl LogSide {
    /// Deletes events (retention); the events deleted.
    pub(super) fn delete(&self, seqs: &[Seq]) -> Result<Vec<Event>> {
        let mut guard = self.writer.lock().expect("log writer");
        let writer = guard.as_mut().ok_or(StoreError::Closed)?;
        writer.log.delete(seqs).map_err(store_error)
    }
}

/// Appends numbered events and moves the writer's clock on.
fn write(writer: &mut LogWriter, events: &[Event], fail_stop: &FailStop, ts: i64) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    writer.log.append(events).map_err(|error| match error {
        AppendError::Write(error) => {
            StoreError::Unavailable(format!("cannot write to the event log: {error}"))
        }
        AppendError::Failed(reason) => {
            fail_stop.trip("the event log", &reason);
            StoreError::Unavailable(format!("the event log failed to sync: {reason}"))
        }
        AppendError::TooLarge(bytes) => StoreError::Internal(format!(
            "an event of {bytes} bytes is larger than the event log's records"
        )),
    })?;
    writer.last_ts = ts;
    Ok(())
}

fn with_sqlite_writer<T>(
    inner: &Inner,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> Result<T> {
    let guard = inner.writer.lock().expect("writer mutex");
    let writer = guard.as_ref().ok_or(StoreError::Closed)?;
    f(&writer.conn).map_err(map_error)
}

/// The seqs of one aggregate's events, oldest first.
fn aggregate_seqs(reader: &EventReader, key: &AggregateKey) -> std::io::Result<Vec<Seq>> {
    let key = Key::TenantAggregate(key.scope(), &key.aggregate_type, &key.aggregate_id);
    reader.seqs(key, 0, usize::MAX)
}

fn version_of(event: &Event) -> u64 {
    event.aggregate.as_deref().map_or(0, |a| a.version)
}

/// The version of the aggregate's newest event in the log (0: none).
fn version_in_log(reader: &EventReader, key: &AggregateKey) -> std::io::Result<u64> {
    let seqs = aggregate_seqs(reader, key)?;
    for &seq in seqs.iter().rev() {
        if let Some(event) = reader.event(seq)? {
            return Ok(version_of(&event));
        }
    }
    Ok(0)
}

/// [`crate::Store::load_aggregate`]: `row` is the version SQLite keeps for it.
pub(super) fn load_aggregate(
    reader: &EventReader,
    key: &AggregateKey,
    row: u64,
    from_version: u64,
    limit: usize,
) -> std::io::Result<Option<AggregatePage>> {
    let seqs = aggregate_seqs(reader, key)?;
    let read = |seq: Seq| reader.event(seq);
    let version = match seqs.last() {
        Some(&last) => row.max(read(last)?.as_ref().map_or(0, version_of)),
        None => row,
    };
    if version == 0 {
        return Ok(None);
    }
    // Versions grow with seqs: the first at or past `from_version` by binary search.
    let (mut lo, mut hi) = (0, seqs.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let below = match read(seqs[mid])? {
            Some(event) => version_of(&event) < from_version,
            // Deleted since the seqs were read: its neighbours decide.
            None => true,
        };
        if below {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut events = Vec::with_capacity(limit.min(seqs.len() - lo));
    for &seq in &seqs[lo..] {
        if events.len() == limit {
            break;
        }
        if let Some(event) = read(seq)? {
            events.push(event);
        }
    }
    Ok(Some(AggregatePage { version, events }))
}

/// Bytes of the files under `dir`.
pub(super) fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
