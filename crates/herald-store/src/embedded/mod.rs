//! The embedded store: one SQLite file in WAL mode, zero set-up.
//!
//! - **Durability**: `synchronous=FULL`, so a commit returns only after the WAL is
//!   synced. The hub hands over whole batches (group commit), so one sync covers many
//!   events. Consumer transactions commit without the sync and are synced just after,
//!   outside the writer lock ([`WalSync`]), so the next transaction works meanwhile;
//!   fetches are not synced at all before their answer (see [`crate::consumer`]).
//! - **One writer**: a single connection behind a mutex writes; the process holds an
//!   exclusive lock file beside the database so a second Herald cannot write to it too.
//!   The writer keeps the next seq and the last timestamp in memory, which is what makes
//!   seqs gap-free and timestamps non-decreasing.
//! - **Readers**: a small pool of read-only connections; WAL lets them read a consistent
//!   snapshot while the writer commits. Calls run on tokio's blocking threads.
//! - **Checkpoints** run on a background thread, so commits never pay for them.
//! - **A failed sync is final** ([`fail_stop`]): writes are refused until a restart, and
//!   the events of the commit that failed are deleted at the next open.

mod aggregates;
pub mod backup;
mod consumers;
mod events;
mod fail_stop;
mod log_writes;
mod migrate_log;
mod query;
mod retention;
mod schema;
mod subject_index;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use herald_core::{
    AggregateEvent, Event, NewEvent, Origin, Payload, Seq, Subject, Timestamp, TraceContext,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::aggregate::{
    AggregateAppend, AggregateAppended, AggregateKey, AggregatePage, Decision, Snapshot,
    SnapshotSaved,
};
use crate::consumer::{
    ConsumerCall, ConsumerDeadLetter, ConsumerOp, ConsumerOutcome, ConsumerRecord, ConsumerState,
    CreateConsumer, DeliveryPolicy, NewConsumer,
};
use crate::retention::{RetentionPass, RetentionPolicy};
use crate::{
    AccessKind, AccessRecord, Appended, DeadLetter, NewDeadLetter, Page, Query, Result, Store,
    StoreError, StoreHealth, StoredRule, StoredSchema,
};
use events::Events;
use fail_stop::FailStop;

/// Tuning for the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Read-only connections kept for queries (each runs on a blocking thread).
    pub read_connections: usize,
    /// How often the background thread checkpoints the WAL into the database file.
    /// Often, so each checkpoint's sync of the database file is small: the WAL's sync of
    /// a commit waits behind it on the same disk (500 ms: publish p99 12 ms at 5,000
    /// events/s; 100 ms: 3 ms, later 2.1 ms; 25 ms: 1.9 ms and a p99.9 half as long, at
    /// the same throughput; BENCHMARKS.md).
    pub checkpoint_interval: Duration,
    /// Bytes of frames in the WAL past which the checkpointer makes the writer start the
    /// WAL over.
    pub wal_restart_bytes: u64,
    /// Most rows one query (or consumer fetch) reads that its filters refuse (see
    /// [`crate::QUERY_SCAN_BUDGET`]).
    pub query_scan_budget: usize,
    /// Keep the events in the event log ([`crate::event_log`], in `<db>-events/`)
    /// instead of the database's `events` table; everything else stays in SQLite.
    pub event_log: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            read_connections: 4,
            checkpoint_interval: Duration::from_millis(25),
            wal_restart_bytes: 64 * 1024 * 1024,
            query_scan_budget: crate::QUERY_SCAN_BUDGET,
            event_log: true,
        }
    }
}

/// The SQLite-backed store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<Writer>>,
    idle_readers: Mutex<Vec<Connection>>,
    reader_permits: Semaphore,
    /// A read-only connection of its own for health checks, which must answer while
    /// queries hold every pooled reader.
    health_reader: Mutex<Option<Connection>>,
    head: AtomicU64,
    closed: AtomicBool,
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    /// The exclusive lock on `<db>.lock`, held until the store is closed.
    lock: Mutex<Option<File>>,
    /// Syncs consumer transactions, which commit without SQLite's own sync.
    wal: WalSync,
    fail_stop: Arc<FailStop>,
    /// See [`EmbeddedOptions::query_scan_budget`].
    scan_budget: usize,
    /// The events' log, when they are kept there ([`EmbeddedOptions::event_log`]).
    log: Option<log_writes::LogSide>,
}

/// Syncs the WAL outside the writer lock, for transactions committed without SQLite's
/// own sync: the writer goes on with the next transaction while this one's frames reach
/// the disk, and one `fdatasync` covers every commit written before it.
///
/// A failed sync is final ([`FailStop`]): the kernel may have dropped the unsynced
/// pages, so a later sync that succeeds proves nothing, and no later commit may be answered.
struct WalSync {
    path: PathBuf,
    /// The WAL, opened at the first sync; its lock also serialises syncs.
    file: Mutex<Option<File>>,
    /// Commits written to the WAL without a sync, counted.
    written: AtomicU64,
    /// Every commit up to this count is on disk.
    synced: AtomicU64,
    fail_stop: Arc<FailStop>,
}

impl WalSync {
    fn new(db: &Path, fail_stop: Arc<FailStop>) -> Self {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        WalSync {
            path: PathBuf::from(path),
            file: Mutex::new(None),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            fail_stop,
        }
    }

    /// Counts a commit just written (call it under the writer lock, after the commit).
    fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Fails once a sync has failed.
    fn check(&self) -> Result<()> {
        self.fail_stop.check()
    }

    /// Returns once commit number `commit` is on disk.
    fn sync_through(&self, commit: u64) -> Result<()> {
        self.check()?;
        if self.synced.load(Ordering::Acquire) >= commit {
            return Ok(());
        }
        let mut file = self.file.lock().expect("WAL sync");
        self.check()?;
        if self.synced.load(Ordering::Acquire) >= commit {
            return Ok(());
        }
        // Commits counted so far are written: this sync covers them all.
        let target = self.written.load(Ordering::Acquire);
        let result = match &*file {
            Some(file) => file.sync_data(),
            None => File::open(&self.path).and_then(|opened| {
                let synced = opened.sync_data();
                *file = Some(opened);
                synced
            }),
        };
        if let Err(error) = result {
            self.fail_stop.trip("the WAL", &error);
            return Err(StoreError::Unavailable(format!(
                "cannot sync the WAL: {error}"
            )));
        }
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }
}

struct Writer {
    conn: Connection,
    next_seq: Seq,
    last_ts: i64,
}

/// Columns read back for an event, in the order [`row_to_event`] expects.
pub(crate) const EVENT_COLUMNS: &str =
    "seq, id, subject, correlation_id, ts, hub_id, service, user, payload, cloudevent, tenant, \
     aggregate_type, aggregate_id, aggregate_version, event_type, metadata, traceparent, tracestate";

impl Inner {
    /// Maps an error of the writer, stopping every write if it is a failed sync.
    fn write_error(&self, error: rusqlite::Error) -> StoreError {
        self.fail_stop.trip_on_sync_failure("a commit", &error);
        map_error(error)
    }

    /// Commits a transaction that stores events from `first_seq` on. If its sync fails,
    /// those events are marked to be deleted at the next open (see [`fail_stop`]).
    fn commit_events(&self, tx: rusqlite::Transaction<'_>, first_seq: Seq) -> Result<()> {
        tx.commit().map_err(|error| {
            self.fail_stop
                .trip_unacknowledged("a commit of events", &error, first_seq);
            map_error(error)
        })
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store at `path`, applies migrations and recovers
    /// the log's head.
    pub async fn open(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, options))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    fn open_blocking(path: PathBuf, options: EmbeddedOptions) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Open(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let lock_path = lock_path(&path);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Open(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Open(format!(
                    "{} is in use by another Herald process",
                    path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Open(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )))
            }
        }

        let mut conn = Connection::open(&path)
            .map_err(|e| StoreError::Open(format!("cannot open {}: {e}", path.display())))?;
        schema::configure_writer(&mut conn)?;
        schema::migrate(&mut conn)?;
        fail_stop::discard_unacknowledged(&mut conn, &path)?;
        let fail_stop = Arc::new(FailStop::new(&path));
        let (last_seq, last_ts): (Seq, i64) = conn
            .query_row(
                "SELECT seq, ts FROM events ORDER BY seq DESC LIMIT 1",
                [],
                |row| Ok((row.get::<_, i64>(0)? as Seq, row.get(1)?)),
            )
            .optional()
            .map_err(open_error)?
            .unwrap_or((0, i64::MIN));
        // Retention may have deleted the newest events: their seqs are never given again.
        let deleted_through: i64 = conn
            .query_row(
                "SELECT IFNULL(MAX(seq), 0) FROM cursors WHERE name = ?1",
                [crate::retention::DELETED_THROUGH],
                |row| row.get(0),
            )
            .map_err(open_error)?;
        let mut last_seq = last_seq.max(deleted_through.max(0) as Seq);
        let mut last_ts = last_ts;
        let log = if options.event_log {
            migrate_log::migrate(&mut conn, &log_dir(&path), last_seq)?;
            let (side, head, head_ts) = log_writes::LogSide::open(&log_dir(&path))?;
            last_seq = head;
            last_ts = head_ts;
            Some(side)
        } else {
            None
        };

        let checkpointer = spawn_checkpointer(
            &path,
            options.checkpoint_interval,
            options.wal_restart_bytes,
            fail_stop.clone(),
        )?;
        tracing::info!(path = %path.display(), head = last_seq, "Embedded store opened.");
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path: path.clone(),
                writer: Mutex::new(Some(Writer {
                    conn,
                    next_seq: last_seq + 1,
                    last_ts,
                })),
                idle_readers: Mutex::new(Vec::new()),
                reader_permits: Semaphore::new(options.read_connections.max(1)),
                health_reader: Mutex::new(None),
                head: AtomicU64::new(last_seq),
                closed: AtomicBool::new(false),
                checkpointer: Mutex::new(Some(checkpointer)),
                lock: Mutex::new(Some(lock)),
                wal: WalSync::new(&path, fail_stop.clone()),
                fail_stop,
                scan_budget: options.query_scan_budget,
                log,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A reader of the event log, when the events are kept there.
    fn log_reader(&self) -> Option<crate::event_log::EventReader> {
        self.inner.log.as_ref().map(|log| log.reader.clone())
    }

    /// Runs a read of the event log on a blocking thread, holding a reader permit like
    /// a read of SQLite does (so queries never take every blocking thread).
    async fn on_log<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .inner
            .reader_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
            .map_err(crate::event_log::store_error)
    }

    /// Runs `f` on a pooled read-only connection, on a blocking thread.
    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .inner
            .reader_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            if inner.closed.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            let pooled = inner.idle_readers.lock().expect("reader pool").pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&inner.path).map_err(map_error)?,
            };
            let result = f(&conn).map_err(map_error);
            if !inner.closed.load(Ordering::Acquire) {
                inner.idle_readers.lock().expect("reader pool").push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    /// Runs `f` on the writer connection, on a blocking thread. Each statement `f` runs
    /// outside a transaction commits (and syncs, `synchronous=FULL`) on its own.
    async fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let guard = inner.writer.lock().expect("writer mutex");
            let writer = guard.as_ref().ok_or(StoreError::Closed)?;
            inner.fail_stop.check()?;
            f(&writer.conn).map_err(|e| inner.write_error(e))
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    /// Runs `f` in one transaction on the writer connection, committing (and syncing) when
    /// it succeeds and rolling back when it fails.
    async fn in_write_transaction<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, consumers::Failure> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.writer.lock().expect("writer mutex");
            let writer = guard.as_mut().ok_or(StoreError::Closed)?;
            transact(&mut writer.conn, &inner.fail_stop, f)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    /// Like [`Self::in_write_transaction`], but the commit does not wait for the disk
    /// while holding the writer: with `sync`, it is synced afterwards, together with
    /// whatever else was committed meanwhile (see [`WalSync`]), and this returns once it
    /// is durable; without, it is synced with the next commit that is.
    async fn in_group_synced_transaction<T: Send + 'static>(
        &self,
        sync: bool,
        f: impl FnOnce(&Connection) -> Result<T, consumers::Failure> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // After a failed sync nothing more is written, synced or not.
            inner.wal.check()?;
            let (value, commit) = {
                let mut guard = inner.writer.lock().expect("writer mutex");
                let writer = guard.as_mut().ok_or(StoreError::Closed)?;
                writer
                    .conn
                    .execute_batch("PRAGMA synchronous = NORMAL")
                    .map_err(map_error)?;
                let result = transact(&mut writer.conn, &inner.fail_stop, f);
                let restored = writer.conn.execute_batch("PRAGMA synchronous = FULL");
                let value = result?;
                restored.map_err(map_error)?;
                (value, inner.wal.written())
            };
            if sync {
                inner.wal.sync_through(commit)?;
            }
            Ok(value)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    /// Runs `f` on one snapshot of a reader connection.
    async fn in_read_snapshot<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, consumers::Failure> + Send + 'static,
    ) -> Result<T> {
        self.with_reader(move |conn| {
            let tx = conn.unchecked_transaction()?;
            Ok(f(&tx))
        })
        .await?
        .map_err(consumers::Failure::into_store_error)
    }

    /// [`Store::append`], on the calling thread (it blocks: not on a runtime worker).
    pub fn append_here(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        if let Some(log) = &inner.log {
            return log.append(batch, &inner.fail_stop, &inner.head);
        }
        let mut guard = inner.writer.lock().expect("writer mutex");
        let writer = guard.as_mut().ok_or(StoreError::Closed)?;
        inner.fail_stop.check()?;
        let ts = Timestamp::now().as_micros().max(writer.last_ts);
        let timestamp = Timestamp::from_micros(ts);
        let mut next_seq = writer.next_seq;
        let mut out = Vec::with_capacity(batch.len());

        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_error)?;
        {
            let mut insert = tx.prepare_cached(INSERT_EVENT).map_err(map_error)?;
            let mut subjects = SubjectCounts::default();
            for event in batch {
                let inserted =
                    insert_event(&mut insert, &event, next_seq, ts).map_err(map_error)?;
                if inserted == 1 {
                    subjects.add(event.subject.as_str(), event.payload.get().len(), next_seq);
                    out.push(Appended::Stored(event.commit(next_seq, timestamp)));
                    next_seq += 1;
                } else {
                    let existing =
                        get_by_id(&tx, event.id)
                            .map_err(map_error)?
                            .ok_or_else(|| {
                                StoreError::Internal(format!(
                                    "id {} conflicted but is not stored",
                                    event.id
                                ))
                            })?;
                    out.push(Appended::Duplicate(existing));
                }
            }
            subjects.write(&tx).map_err(map_error)?;
            subject_index::catch_up(&tx, next_seq - 1, false).map_err(map_error)?;
        }
        inner.commit_events(tx, writer.next_seq)?;

        writer.next_seq = next_seq;
        writer.last_ts = ts;
        inner.head.store(next_seq - 1, Ordering::Release);
        Ok(out)
    }

    /// [`Store::append_aggregate`], on the calling thread (it blocks: not on a runtime
    /// worker).
    pub fn append_aggregate_here(&self, append: AggregateAppend) -> Result<AggregateAppended> {
        if append.events.is_empty() {
            return Err(StoreError::Internal(
                "an aggregate append needs events".into(),
            ));
        }
        let inner = &self.inner;
        if let Some(log) = &inner.log {
            return log.append_aggregate(append, inner);
        }
        let mut guard = inner.writer.lock().expect("writer mutex");
        let writer = guard.as_mut().ok_or(StoreError::Closed)?;
        inner.fail_stop.check()?;
        let ts = Timestamp::now().as_micros().max(writer.last_ts);
        let first_seq = writer.next_seq;
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_error)?;
        let current = aggregates::version(&tx, &append.key).map_err(map_error)?;
        let stored = append
            .events
            .iter()
            .map(|e| get_by_id(&tx, e.id))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(map_error)?;
        match crate::aggregate::decide(&append, current, &stored) {
            Decision::Answer(answer) => return Ok(answer),
            Decision::Write => {}
        }
        let count = append.events.len() as u64;
        let mut events = append.events;
        crate::aggregate::number(&mut events, current);
        {
            let mut insert = tx.prepare_cached(INSERT_EVENT).map_err(map_error)?;
            let mut subjects = SubjectCounts::default();
            for (seq, event) in (first_seq..).zip(&events) {
                let inserted = insert_event(&mut insert, event, seq, ts).map_err(map_error)?;
                if inserted != 1 {
                    return Err(StoreError::Internal(format!(
                        "id {} conflicted after it was looked up",
                        event.id
                    )));
                }
                subjects.add(event.subject.as_str(), event.payload.get().len(), seq);
            }
            subjects.write(&tx).map_err(map_error)?;
            subject_index::catch_up(&tx, first_seq + count - 1, false).map_err(map_error)?;
            aggregates::set_version(&tx, &append.key, current + count).map_err(map_error)?;
        }
        let events =
            crate::aggregate::commit_events(events, first_seq, current, Timestamp::from_micros(ts));
        inner.commit_events(tx, first_seq)?;
        writer.next_seq = first_seq + count;
        writer.last_ts = ts;
        inner.head.store(first_seq + count - 1, Ordering::Release);
        Ok(AggregateAppended::Written {
            version: current + count,
            events,
        })
    }
}

/// Writes an event with its seq and commit time; 0 when its id is stored.
const INSERT_EVENT: &str = "INSERT INTO events (seq, id, subject, correlation_id, ts, hub_id, service, user, payload, cloudevent, tenant,
                                        aggregate_type, aggregate_id, aggregate_version, event_type, metadata, traceparent, tracestate)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
     ON CONFLICT (id) DO NOTHING";

fn insert_event(
    insert: &mut rusqlite::CachedStatement<'_>,
    event: &NewEvent,
    seq: Seq,
    ts: i64,
) -> rusqlite::Result<usize> {
    let aggregate = event.aggregate.as_deref();
    insert.execute(params![
        seq as i64,
        event.id.as_bytes(),
        event.subject.as_str(),
        event.correlation_id.as_bytes(),
        ts,
        event.origin.hub_id,
        event.origin.service,
        event.origin.user,
        event.payload.get(),
        event
            .cloudevent
            .as_deref()
            .map(crate::codec::encode_cloudevent),
        event.tenant,
        aggregate.map(|a| a.aggregate_type.as_str()),
        aggregate.map(|a| a.aggregate_id.as_str()),
        aggregate.map(|a| crate::u64_to_sql(a.version)),
        aggregate.map(|a| a.event_type.as_str()),
        aggregate
            .and_then(|a| a.metadata.as_ref())
            .map(Payload::get),
        event.trace.as_deref().map(TraceContext::traceparent),
        event.trace.as_deref().and_then(|t| t.tracestate.as_deref()),
    ])
}

/// Per subject, the events a transaction adds, their payload bytes and its last seq, for
/// the `subjects` table.
#[derive(Default)]
struct SubjectCounts(HashMap<String, (i64, i64, Seq)>);

impl SubjectCounts {
    fn add(&mut self, subject: &str, bytes: usize, seq: Seq) {
        let entry = match self.0.get_mut(subject) {
            Some(entry) => entry,
            None => self.0.entry(subject.to_owned()).or_insert((0, 0, 0)),
        };
        entry.0 += 1;
        entry.1 += bytes as i64;
        entry.2 = seq;
    }

    fn write(self, tx: &Connection) -> rusqlite::Result<()> {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO subjects (subject, events, bytes, last_seq) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (subject) DO UPDATE
             SET events = events + excluded.events, bytes = bytes + excluded.bytes,
                 last_seq = excluded.last_seq",
        )?;
        for (subject, (count, bytes, last_seq)) in self.0 {
            upsert.execute(params![subject, count, bytes, last_seq as i64])?;
        }
        Ok(())
    }
}

impl Store for EmbeddedStore {
    async fn create_consumer(
        &self,
        consumer: NewConsumer,
        max_consumers: usize,
    ) -> Result<CreateConsumer> {
        let now = Timestamp::now();
        self.in_write_transaction(move |conn| {
            consumers::create(conn, &consumer, max_consumers, now)
        })
        .await
    }

    async fn update_consumer(
        &self,
        name: &str,
        policy: DeliveryPolicy,
        meta: String,
    ) -> Result<Option<ConsumerRecord>> {
        let name = name.to_owned();
        self.in_write_transaction(move |conn| consumers::update(conn, &name, &policy, &meta))
            .await
    }

    async fn consumer(&self, name: &str) -> Result<Option<ConsumerRecord>> {
        let name = name.to_owned();
        self.in_read_snapshot(move |conn| consumers::get(conn, &name))
            .await
    }

    async fn consumers(&self) -> Result<Vec<ConsumerRecord>> {
        self.in_read_snapshot(consumers::list).await
    }

    async fn delete_consumer(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.in_write_transaction(move |conn| consumers::delete(conn, &name))
            .await
    }

    async fn consumer_state(&self, name: &str) -> Result<Option<ConsumerState>> {
        let name = name.to_owned();
        let log = self.log_reader();
        self.in_read_snapshot(move |conn| {
            consumers::state(conn, Events::new(conn, log.as_ref()), &name)
        })
        .await
    }

    async fn consumer_ops(
        &self,
        now: Timestamp,
        calls: Vec<ConsumerCall>,
    ) -> Result<Vec<ConsumerOutcome>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        // A fetch-only batch is answered once written, not synced (see `crate::consumer`).
        let sync = calls
            .iter()
            .any(|call| !matches!(call.op, ConsumerOp::Fetch { .. }));
        let budget = self.inner.scan_budget;
        let log = self.log_reader();
        self.in_group_synced_transaction(sync, move |conn| {
            let events = Events::new(conn, log.as_ref());
            calls
                .iter()
                .map(|call| consumers::apply(conn, events, now, call, budget))
                .collect()
        })
        .await
    }

    async fn consumer_dead_letters(
        &self,
        name: &str,
        after_seq: Seq,
        limit: usize,
    ) -> Result<Option<Vec<ConsumerDeadLetter>>> {
        let name = name.to_owned();
        let log = self.log_reader();
        self.in_read_snapshot(move |conn| {
            let events = Events::new(conn, log.as_ref());
            consumers::dead_letters(conn, events, &name, after_seq, limit)
        })
        .await
    }

    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.append_here(batch))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    async fn get(&self, id: Uuid) -> Result<Option<Event>> {
        if let Some(reader) = self.log_reader() {
            return self.on_log(move || reader.by_id(id)).await;
        }
        self.with_reader(move |conn| get_by_id(conn, id)).await
    }

    async fn append_aggregate(&self, append: AggregateAppend) -> Result<AggregateAppended> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.append_aggregate_here(append))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    async fn load_aggregate(
        &self,
        key: AggregateKey,
        from_version: u64,
        limit: usize,
    ) -> Result<Option<AggregatePage>> {
        let limit = limit.clamp(1, crate::MAX_QUERY_LIMIT);
        if let Some(reader) = self.log_reader() {
            let version = {
                let key = key.clone();
                self.with_reader(move |conn| aggregates::version(conn, &key))
                    .await?
            };
            return self
                .on_log(move || {
                    log_writes::load_aggregate(&reader, &key, version, from_version, limit)
                })
                .await;
        }
        self.with_reader(move |conn| {
            let tx = conn.unchecked_transaction()?;
            aggregates::load(&tx, &key, from_version, limit)
        })
        .await
    }

    async fn save_snapshot(
        &self,
        key: AggregateKey,
        version: u64,
        state: Payload,
    ) -> Result<SnapshotSaved> {
        let now = Timestamp::now();
        self.in_write_transaction(move |conn| {
            Ok(aggregates::save_snapshot(conn, &key, version, &state, now)?)
        })
        .await
    }

    async fn load_snapshot(&self, key: AggregateKey) -> Result<Option<Snapshot>> {
        self.with_reader(move |conn| aggregates::load_snapshot(conn, &key))
            .await
    }

    async fn enforce_retention(
        &self,
        policies: Vec<RetentionPolicy>,
        now: Timestamp,
        budget: usize,
    ) -> Result<RetentionPass> {
        if policies.iter().all(|p| !p.limits()) {
            return Ok(RetentionPass::default());
        }
        let budget = budget.max(1);
        if let Some(reader) = self.log_reader() {
            let (chosen, more) = self
                .on_log(move || retention::choose_in_log(&reader, &policies, now, budget))
                .await?;
            if chosen.is_empty() {
                return Ok(RetentionPass::default());
            }
            let store = self.clone();
            let seqs: Vec<Seq> = chosen.iter().map(|(c, _)| c.seq).collect();
            let deleted = tokio::task::spawn_blocking(move || {
                store.inner.log.as_ref().expect("log mode").delete(&seqs)
            })
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))??;
            let gone: Vec<(Seq, String)> = deleted
                .iter()
                .map(|e| (e.seq, e.subject.as_str().to_owned()))
                .collect();
            self.in_write_transaction(move |conn| {
                let gone: Vec<(Seq, &str)> = gone.iter().map(|(s, n)| (*s, n.as_str())).collect();
                retention::note_deleted(conn, &gone)
            })
            .await?;
            return Ok(RetentionPass {
                deleted_events: deleted.len() as u64,
                deleted_bytes: deleted.iter().map(|e| e.payload.get().len() as u64).sum(),
                more,
            });
        }
        let pass = self
            .in_write_transaction(move |conn| retention::enforce(conn, &policies, now, budget))
            .await?;
        if pass.deleted_events > 0 {
            // Give the freed pages back to the file system (databases created with
            // incremental auto-vacuum; a no-op for older ones).
            // The pragma frees one page per step: run it to the end.
            self.with_writer(|conn| {
                let mut stmt = conn.prepare("PRAGMA incremental_vacuum")?;
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            })
            .await?;
        }
        Ok(pass)
    }

    async fn load_setting(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_owned();
        self.with_reader(move |conn| {
            conn.prepare_cached("SELECT body FROM settings WHERE name = ?1")?
                .query_row([name], |row| row.get(0))
                .optional()
        })
        .await
    }

    async fn save_setting(&self, name: &str, body: String) -> Result<()> {
        let name = name.to_owned();
        self.with_writer(move |conn| {
            conn.prepare_cached(
                "INSERT INTO settings (name, body) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![name, body])
            .map(drop)
        })
        .await
    }

    async fn query(&self, query: Query) -> Result<Page> {
        let budget = self.inner.scan_budget;
        if let Some(reader) = self.log_reader() {
            return self
                .on_log(move || crate::event_log::query::run(&reader, &query, budget))
                .await;
        }
        self.with_reader(move |conn| query::run(conn, &query, budget))
            .await
    }

    async fn head(&self) -> Result<Seq> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(self.inner.head.load(Ordering::Acquire))
    }

    async fn health(&self) -> StoreHealth {
        let inner = self.inner.clone();
        let checked = tokio::task::spawn_blocking(move || {
            if inner.closed.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            inner.fail_stop.check()?;
            let mut reader = inner.health_reader.lock().expect("health reader");
            if reader.is_none() {
                *reader = Some(open_reader(&inner.path).map_err(map_error)?);
            }
            let conn = reader.as_ref().expect("opened above");
            conn.query_row("SELECT 1 FROM events LIMIT 1", [], |_| Ok(()))
                .optional()
                .map_err(map_error)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))
        .and_then(|checked| checked);
        match checked {
            Ok(_) => StoreHealth {
                healthy: true,
                detail: "embedded store is readable".into(),
            },
            Err(error) => StoreHealth {
                healthy: false,
                detail: error.to_string(),
            },
        }
    }

    fn external_commits(&self) -> Option<tokio::sync::watch::Receiver<Seq>> {
        // The lock file keeps every other process out: local commits are all there is.
        None
    }

    async fn tenant_payload_bytes(&self) -> Result<Vec<(String, u64)>> {
        if let Some(reader) = self.log_reader() {
            return Ok(reader.tenant_bytes());
        }
        self.with_reader(|conn| {
            conn.prepare_cached(
                "SELECT tenant, SUM(length(CAST(payload AS BLOB))) FROM events
                 WHERE tenant IS NOT NULL GROUP BY tenant",
            )?
            .query_map([], |row| {
                Ok((row.get(0)?, crate::u64_from_sql(row.get::<_, i64>(1)?)))
            })?
            .collect()
        })
        .await
    }

    async fn size_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for suffix in ["", "-wal"] {
            let mut name = self.inner.path.as_os_str().to_owned();
            name.push(suffix);
            match tokio::fs::metadata(&name).await {
                Ok(meta) => total += meta.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Unavailable(e.to_string())),
            }
        }
        if self.inner.log.is_some() {
            let dir = log_dir(&self.inner.path);
            total += tokio::task::spawn_blocking(move || log_writes::dir_bytes(&dir))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
                .map_err(crate::event_log::store_error)?;
        }
        Ok(total)
    }

    async fn close(&self) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            if inner.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            inner.reader_permits.close();
            if let Some((stop, handle)) = inner.checkpointer.lock().expect("checkpointer").take() {
                drop(stop);
                let _ = handle.join();
            }
            inner.idle_readers.lock().expect("reader pool").clear();
            inner.health_reader.lock().expect("health reader").take();
            if let Some(log) = &inner.log {
                // Flushes the postings, so the next open replays nothing.
                log.close();
            }
            if let Some(writer) = inner.writer.lock().expect("writer mutex").take() {
                if inner.fail_stop.has_failed() {
                    // No checkpoint after a failed sync, not even SQLite's own at close:
                    // the WAL stays, to be replayed at the next start.
                    skip_checkpoint_on_close(&writer.conn);
                } else if let Err(error) = writer
                    .conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                {
                    tracing::warn!(%error, "Final checkpoint failed; the WAL is replayed at next start.");
                }
                writer.conn.close().map_err(|(_, e)| map_error(e))?;
            }
            // Only now may another process open the file.
            inner.lock.lock().expect("lock file").take();
            tracing::info!(path = %inner.path.display(), "Embedded store closed.");
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    async fn load_cursor(&self, name: &str) -> Result<Seq> {
        let name = name.to_owned();
        let seq = self
            .with_reader(move |conn| {
                conn.prepare_cached("SELECT seq FROM cursors WHERE name = ?1")?
                    .query_row([name], |row| row.get::<_, i64>(0))
                    .optional()
            })
            .await?;
        Ok(seq.map_or(0, |seq| seq.max(0) as Seq))
    }

    async fn save_cursor(&self, name: &str, seq: Seq) -> Result<()> {
        let seq = crate::seq_to_sql(seq)?;
        let name = name.to_owned();
        self.with_writer(move |conn| {
            conn.prepare_cached(
                "INSERT INTO cursors (name, seq) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![name, seq])
            .map(|_| ())
        })
        .await
    }

    async fn save_cursors(&self, cursors: Vec<(String, Seq)>) -> Result<()> {
        let rows = crate::collapse_cursors(cursors)?;
        if rows.is_empty() {
            return Ok(());
        }
        self.with_writer(move |conn| {
            let tx = conn.unchecked_transaction()?;
            {
                let mut statement = tx.prepare_cached(
                    "INSERT INTO cursors (name, seq) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
                )?;
                for (name, seq) in &rows {
                    statement.execute(params![name, seq])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn list_rules(&self) -> Result<Vec<StoredRule>> {
        self.with_reader(|conn| {
            conn.prepare_cached("SELECT id, body FROM rules ORDER BY position")?
                .query_map([], |row| {
                    Ok(StoredRule {
                        id: row.get(0)?,
                        body: row.get(1)?,
                    })
                })?
                .collect()
        })
        .await
    }

    async fn put_rule(&self, rule: StoredRule) -> Result<()> {
        self.with_writer(move |conn| {
            conn.prepare_cached(
                "INSERT INTO rules (id, body) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![rule.id, rule.body])
            .map(|_| ())
        })
        .await
    }

    async fn delete_rule(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.with_writer(move |conn| {
            conn.prepare_cached("DELETE FROM rules WHERE id = ?1")?
                .execute([id])
                .map(|deleted| deleted > 0)
        })
        .await
    }

    async fn list_schemas(&self) -> Result<Vec<StoredSchema>> {
        self.with_reader(|conn| {
            conn.prepare_cached("SELECT name, body FROM schemas ORDER BY name")?
                .query_map([], |row| {
                    Ok(StoredSchema {
                        name: row.get(0)?,
                        body: row.get(1)?,
                    })
                })?
                .collect()
        })
        .await
    }

    async fn put_schema(&self, schema: StoredSchema) -> Result<bool> {
        // One writer connection: nothing changes the row between the two statements.
        self.with_writer(move |conn| {
            let existed = conn
                .prepare_cached("SELECT 1 FROM schemas WHERE name = ?1")?
                .exists([&schema.name])?;
            conn.prepare_cached(
                "INSERT INTO schemas (name, body) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![schema.name, schema.body])?;
            Ok(!existed)
        })
        .await
    }

    async fn delete_schema(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.with_writer(move |conn| {
            conn.prepare_cached("DELETE FROM schemas WHERE name = ?1")?
                .execute([name])
                .map(|deleted| deleted > 0)
        })
        .await
    }

    async fn list_access(&self, kind: AccessKind) -> Result<Vec<AccessRecord>> {
        self.with_reader(move |conn| {
            conn.prepare_cached("SELECT id, body FROM access WHERE kind = ?1 ORDER BY id")?
                .query_map([kind.as_str()], |row| {
                    Ok(AccessRecord {
                        id: row.get(0)?,
                        body: row.get(1)?,
                    })
                })?
                .collect()
        })
        .await
    }

    async fn insert_access(&self, kind: AccessKind, record: AccessRecord) -> Result<bool> {
        self.with_writer(move |conn| {
            conn.prepare_cached(
                "INSERT INTO access (kind, id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, id) DO NOTHING",
            )?
            .execute(params![kind.as_str(), record.id, record.body])
            .map(|inserted| inserted > 0)
        })
        .await
    }

    async fn replace_access(&self, kind: AccessKind, record: AccessRecord) -> Result<bool> {
        self.with_writer(move |conn| {
            conn.prepare_cached("UPDATE access SET body = ?3 WHERE kind = ?1 AND id = ?2")?
                .execute(params![kind.as_str(), record.id, record.body])
                .map(|updated| updated > 0)
        })
        .await
    }

    async fn delete_access(&self, kind: AccessKind, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.with_writer(move |conn| {
            conn.prepare_cached("DELETE FROM access WHERE kind = ?1 AND id = ?2")?
                .execute(params![kind.as_str(), id])
                .map(|deleted| deleted > 0)
        })
        .await
    }

    async fn add_dead_letters(&self, letters: Vec<NewDeadLetter>, keep: usize) -> Result<u64> {
        if letters.is_empty() {
            return Ok(0);
        }
        let keep = crate::u64_to_sql(keep.max(1) as u64);
        let received_at = Timestamp::now().as_micros();
        self.with_writer(move |conn| {
            let tx = conn.unchecked_transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO bridge_dead_letters
                         (received_at, stream, stream_seq, subject, headers, body, body_size, reason)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for letter in &letters {
                    insert.execute(params![
                        received_at,
                        letter.stream,
                        crate::u64_to_sql(letter.stream_seq),
                        letter.subject,
                        crate::encode_headers(&letter.headers),
                        letter.body,
                        crate::u64_to_sql(letter.body_size),
                        letter.reason,
                    ])?;
                }
            }
            let dropped = tx
                .prepare_cached(
                    "DELETE FROM bridge_dead_letters WHERE id <= (
                         SELECT id FROM bridge_dead_letters ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                )?
                .execute([keep])?;
            tx.commit()?;
            Ok(dropped as u64)
        })
        .await
    }

    async fn dead_letters(&self, after_id: u64, limit: usize) -> Result<Vec<DeadLetter>> {
        let after_id = crate::u64_to_sql(after_id);
        let limit = crate::u64_to_sql(limit as u64);
        self.with_reader(move |conn| {
            conn.prepare_cached(
                "SELECT id, received_at, stream, stream_seq, subject, headers, body, body_size, reason
                 FROM bridge_dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map([after_id, limit], |row| {
                let headers: String = row.get(5)?;
                Ok(DeadLetter {
                    id: crate::u64_from_sql(row.get(0)?),
                    received_at: Timestamp::from_micros(row.get(1)?),
                    letter: NewDeadLetter {
                        stream: row.get(2)?,
                        stream_seq: crate::u64_from_sql(row.get(3)?),
                        subject: row.get(4)?,
                        headers: crate::decode_headers(&headers).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                5,
                                rusqlite::types::Type::Text,
                                e.into(),
                            )
                        })?,
                        body: row.get(6)?,
                        body_size: crate::u64_from_sql(row.get(7)?),
                        reason: row.get(8)?,
                    },
                })
            })?
            .collect()
        })
        .await
    }

    async fn delete_dead_letter(&self, id: u64) -> Result<bool> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(false);
        };
        self.with_writer(move |conn| {
            conn.prepare_cached("DELETE FROM bridge_dead_letters WHERE id = ?1")?
                .execute([id])
                .map(|deleted| deleted > 0)
        })
        .await
    }

    async fn count_dead_letters(&self) -> Result<u64> {
        self.with_reader(|conn| {
            conn.prepare_cached("SELECT COUNT(*) FROM bridge_dead_letters")?
                .query_row([], |row| row.get::<_, i64>(0))
        })
        .await
        .map(crate::u64_from_sql)
    }
}

/// Bytes of the files under `dir` (for tests of the log's space).
#[cfg(test)]
pub(crate) fn dir_bytes_for_tests(dir: &Path) -> u64 {
    log_writes::dir_bytes(dir).unwrap()
}

/// Where the event log of the database at `path` lives: `<db>-events/`.
pub(super) fn log_dir(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-events");
    PathBuf::from(name)
}

pub(super) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// Runs `f` in one transaction on the writer connection: committed when it succeeds,
/// rolled back when it fails.
fn transact<T>(
    conn: &mut Connection,
    fail_stop: &FailStop,
    f: impl FnOnce(&Connection) -> Result<T, consumers::Failure>,
) -> Result<T> {
    fail_stop.check()?;
    // Take the write lock first (waiting out a checkpoint), as appends do: a deferred
    // transaction that reads and then writes fails at once with "database is locked"
    // instead of waiting.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_error)?;
    let value = f(&tx).map_err(consumers::Failure::into_store_error)?;
    tx.commit().map_err(|error| {
        fail_stop.trip_on_sync_failure("a commit", &error);
        map_error(error)
    })?;
    Ok(value)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    schema::configure_reader(&mut conn)?;
    Ok(conn)
}

/// Longest wait between checkpoint attempts while they fail.
const CHECKPOINT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// At most one log line per this while checkpoints fail.
const CHECKPOINT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Passive checkpoints tried, back to back, to catch up with the writer before a restart.
const CATCH_UP_ROUNDS: usize = 8;
/// What each WAL frame adds to a page: its header.
const WAL_FRAME_HEADER_BYTES: u64 = 24;
/// Frames a restart may be left to copy: it copies them holding the write lock.
const CATCH_UP_WITHIN_FRAMES: i64 = 256;
/// Tries for a lock a restart needs, [`schema::BUSY_RETRY_EVERY`] apart, before it gives
/// up until the next round: while it waits for readers it holds the write lock, so every
/// publish waits as long.
const RESTART_RETRIES: i32 = 10;

/// Checkpoints the WAL every `interval` on a thread of its own, until its sender drops.
///
/// A passive checkpoint never restarts the WAL while writes keep coming, so under
/// sustained load the WAL (and its index in shared memory) would grow without bound.
/// Once the frames in use pass `wal_restart_bytes`, the checkpointer first catches up
/// with passive checkpoints (which never block a commit), then runs a RESTART
/// checkpoint: it takes the write lock between two commits, copies the few frames left,
/// waits (at most ~1 ms) for readers of the old frames, and the next commit writes the
/// WAL from its start again (cut back to `journal_size_limit`). If readers are still
/// there it gives up until the next round rather than hold commits. Not TRUNCATE:
/// truncating a 64 MiB file under the lock stalled commits for ~50 ms every second or
/// two under sustained load.
fn spawn_checkpointer(
    path: &Path,
    interval: Duration,
    wal_restart_bytes: u64,
    fail_stop: Arc<FailStop>,
) -> Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    fn retry_briefly(attempt: i32) -> bool {
        if attempt >= RESTART_RETRIES {
            return false;
        }
        std::thread::sleep(schema::BUSY_RETRY_EVERY);
        true
    }
    let mut conn = Connection::open(path).map_err(open_error)?;
    conn.busy_handler(Some(retry_briefly)).map_err(open_error)?;
    // The writer checkpoints at close; this one must not (above all after a failed sync).
    skip_checkpoint_on_close(&conn);
    let frame_bytes: u64 = conn
        .query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0))
        .map_err(open_error)? as u64
        + WAL_FRAME_HEADER_BYTES;
    let (stop, stopped) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("herald-checkpoint".into())
        .spawn(move || {
            // While checkpoints fail (a full disk, a read-only file), try less often and
            // log once a minute with the count, instead of twice a second.
            let mut wait = interval;
            let mut failures = 0u64;
            let mut last_logged: Option<std::time::Instant> = None;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                if fail_stop.has_failed() {
                    // The WAL holds what the database file may have lost: keep it.
                    continue;
                }
                let (frames, behind) = match passive_checkpoint(&conn) {
                    Ok(progress) => {
                        if failures > 0 {
                            tracing::info!(failures, "WAL checkpoints succeed again.");
                        }
                        failures = 0;
                        wait = interval;
                        progress
                    }
                    Err(error) => {
                        fail_stop.trip_on_sync_failure("the database file after a checkpoint", &error);
                        failures += 1;
                        wait = (wait * 2).min(CHECKPOINT_MAX_BACKOFF);
                        if last_logged.is_none_or(|at| at.elapsed() >= CHECKPOINT_LOG_EVERY) {
                            last_logged = Some(std::time::Instant::now());
                            tracing::warn!(%error, failures, retry_in = ?wait, "WAL checkpoint failed.");
                        }
                        continue;
                    }
                };
                let wal_bytes = frames as u64 * frame_bytes;
                if wal_bytes > wal_restart_bytes {
                    if let Err(error) = restart_wal(&conn, behind) {
                        fail_stop.trip_on_sync_failure("the database file after a checkpoint", &error);
                        tracing::debug!(%error, wal_bytes, "WAL restart deferred.");
                    }
                }
            }
        })
        .map_err(|e| StoreError::Open(format!("cannot start checkpoint thread: {e}")))?;
    Ok((stop, handle))
}

/// Turns off the checkpoint SQLite runs when the last connection to a database closes.
fn skip_checkpoint_on_close(conn: &Connection) {
    use rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE;
    if let Err(error) = conn.set_db_config(SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true) {
        tracing::warn!(%error, "Cannot turn off the checkpoint at close.");
    }
}

/// Copies what it can of the WAL into the database without waiting for anyone; the
/// frames in use in the WAL, and how many of them it left behind (written meanwhile, or
/// still read by a reader).
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        let (log, copied): (i64, i64) = (row.get(1)?, row.get(2)?);
        Ok((log.max(0), (log - copied).max(0)))
    })
}

/// Catches up with passive checkpoints, then makes the writer start the WAL over.
fn restart_wal(conn: &Connection, mut behind: i64) -> rusqlite::Result<()> {
    for _ in 0..CATCH_UP_ROUNDS {
        if behind <= CATCH_UP_WITHIN_FRAMES {
            break;
        }
        behind = passive_checkpoint(conn)?.1;
    }
    // Its first column is 1 when it could not take a lock in time.
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get(0))?;
    if busy != 0 {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("readers still use the WAL".into()),
        ));
    }
    Ok(())
}

pub(crate) fn get_by_id(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<Event>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"))?;
    stmt.query_row([id.as_bytes()], row_to_event).optional()
}

/// Decodes a row selected with [`EVENT_COLUMNS`].
pub(crate) fn row_to_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    fn corrupt(
        column: usize,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, error.into())
    }
    let uuid = |column: usize| -> rusqlite::Result<Uuid> {
        let bytes: [u8; 16] = row.get(column)?;
        Ok(Uuid::from_bytes(bytes))
    };
    let subject: String = row.get(2)?;
    let payload: String = row.get(8)?;
    Ok(Event {
        seq: row.get::<_, i64>(0)? as Seq,
        id: uuid(1)?,
        subject: Subject::from_stored(subject).map_err(|e| corrupt(2, e.to_string()))?,
        correlation_id: uuid(3)?,
        timestamp: Timestamp::from_micros(row.get(4)?),
        origin: Origin {
            hub_id: row.get(5)?,
            service: row.get(6)?,
            user: row.get(7)?,
        },
        payload: Payload::from_json(payload).map_err(|e| corrupt(8, e))?,
        cloudevent: match row.get::<_, Option<String>>(9)? {
            None => None,
            Some(text) => Some(Box::new(
                crate::codec::decode_cloudevent(&text).map_err(|e| corrupt(9, e))?,
            )),
        },
        tenant: row.get(10)?,
        aggregate: match row.get::<_, Option<String>>(11)? {
            None => None,
            Some(aggregate_type) => Some(Box::new(AggregateEvent {
                aggregate_type,
                aggregate_id: row.get(12)?,
                version: crate::u64_from_sql(row.get(13)?),
                event_type: row.get(14)?,
                metadata: match row.get::<_, Option<String>>(15)? {
                    None => None,
                    Some(text) => Some(Payload::from_json(text).map_err(|e| corrupt(15, e))?),
                },
            })),
        },
        trace: crate::codec::decode_trace(row.get(16)?, row.get(17)?),
    })
}

fn open_error(error: rusqlite::Error) -> StoreError {
    StoreError::Open(error.to_string())
}

/// Sorts SQLite failures into what callers can act on: try again later, or a bug.
pub(crate) fn map_error(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match &error {
        rusqlite::Error::SqliteFailure(e, _) => match e.code {
            DiskFull
            | SystemIoFailure
            | DatabaseBusy
            | DatabaseLocked
            | CannotOpen
            | ReadOnly
            | OutOfMemory
            | FileLockingProtocolFailed => StoreError::Unavailable(error.to_string()),
            DatabaseCorrupt | NotADatabase => StoreError::Corrupt(error.to_string()),
            _ => StoreError::Internal(error.to_string()),
        },
        rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
            StoreError::Corrupt(error.to_string())
        }
        _ => StoreError::Internal(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
        EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        crate::conformance::run(|| {
            n += 1;
            let path = dir.path().join(format!("c{n}.db"));
            async move {
                EmbeddedStore::open(path, EmbeddedOptions::default())
                    .await
                    .unwrap()
            }
        })
        .await;
    }

    /// The same suite with the events in the event log.
    #[tokio::test]
    async fn conformance_with_the_event_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        crate::conformance::run(|| {
            n += 1;
            let path = dir.path().join(format!("c{n}.db"));
            async move {
                let options = EmbeddedOptions {
                    event_log: false,
                    ..EmbeddedOptions::default()
                };
                EmbeddedStore::open(path, options).await.unwrap()
            }
        })
        .await;
    }

    #[test]
    fn the_event_column_count_matches_the_list() {
        assert_eq!(EVENT_COLUMNS.split(", ").count(), 18);
        assert_eq!(
            crate::postgres::EVENT_COLUMNS.split(", ").count(),
            crate::postgres::EVENT_COLUMN_COUNT
        );
    }

    /// Opening an existing store writes nothing (no WAL frame): on a full disk, a write
    /// at open would keep Herald from starting at all.
    #[tokio::test]
    async fn opening_an_existing_store_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store
            .append(vec![crate::conformance::event("hub.t.x", 0, None)])
            .await
            .unwrap();
        store.close().await.unwrap();
        let wal = dir.path().join("herald.db-wal");
        let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        assert_eq!(wal_len(), 0, "the close checkpointed and cut the WAL");

        let store = open(&dir).await;
        assert_eq!(store.head().await.unwrap(), 1);
        assert_eq!(wal_len(), 0, "opening wrote to the WAL");
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn cursors_and_rules_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store.save_cursor("relay", 42).await.unwrap();
        let rule = StoredRule {
            id: "r1".into(),
            body: crate::conformance::AWKWARD_RULE_BODY.into(),
        };
        store.put_rule(rule.clone()).await.unwrap();
        store.close().await.unwrap();
        assert!(matches!(
            store.load_cursor("relay").await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(
            store.save_cursor("relay", 43).await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(store.list_rules().await, Err(StoreError::Closed)));
        assert!(matches!(
            store.put_rule(rule.clone()).await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(
            store.delete_rule("r1").await,
            Err(StoreError::Closed)
        ));
        drop(store);
        let store = open(&dir).await;
        assert_eq!(store.load_cursor("relay").await.unwrap(), 42);
        assert_eq!(store.list_rules().await.unwrap(), vec![rule]);
        store.close().await.unwrap();
    }

    /// A database written by an older Herald (every migration but the last ones) opens,
    /// migrates, and keeps its events.
    #[tokio::test]
    async fn an_old_schema_migrates_at_open() {
        for old_version in 1..schema::SCHEMA_VERSION {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("herald.db");
            {
                let conn = Connection::open(&path).unwrap();
                for sql in &schema::MIGRATIONS[..old_version as usize] {
                    conn.execute_batch(sql).unwrap();
                }
                conn.pragma_update(None, "user_version", old_version)
                    .unwrap();
                conn.execute(
                    "INSERT INTO events (seq, id, subject, correlation_id, ts, hub_id, payload)
                     VALUES (1, ?1, 'hub.old', ?1, 1000, 'h', '{\"old\":true}')",
                    [Uuid::now_v7().as_bytes()],
                )
                .unwrap();
            }
            let store = open(&dir).await;
            assert_eq!(store.head().await.unwrap(), 1, "from version {old_version}");
            let page = store.query(Query::default()).await.unwrap();
            assert_eq!(page.events[0].payload.get(), r#"{"old":true}"#);
            let by_subject = Query {
                subject: Some(herald_core::Pattern::parse("hub.old").unwrap()),
                ..Query::default()
            };
            let page = store.query(by_subject).await.unwrap();
            assert_eq!(
                page.events.len(),
                1,
                "by subject, from version {old_version}"
            );
            assert_eq!(store.load_cursor("relay").await.unwrap(), 0);
            store.save_cursor("relay", 1).await.unwrap();
            store
                .put_rule(StoredRule {
                    id: "r".into(),
                    body: "{}".into(),
                })
                .await
                .unwrap();
            assert_eq!(store.list_rules().await.unwrap().len(), 1);
            let letter = crate::conformance::dead_letter(1, b"x");
            assert_eq!(store.add_dead_letters(vec![letter], 10).await.unwrap(), 0);
            assert_eq!(store.count_dead_letters().await.unwrap(), 1);
            let appended = store
                .append(crate::conformance::events("hub.new", 1))
                .await
                .unwrap();
            assert_eq!(appended[0].event().seq, 2);
            store.close().await.unwrap();
            drop(store);
            let conn = Connection::open(&path).unwrap();
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .unwrap();
            assert_eq!(version, schema::SCHEMA_VERSION);
        }
    }

    /// Subjects with format characters (U+202E) were accepted before they were refused:
    /// such events still read back.
    #[tokio::test]
    async fn events_stored_with_format_characters_still_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let table = EmbeddedOptions {
            event_log: false,
            ..EmbeddedOptions::default()
        };
        EmbeddedStore::open(dir.path().join("herald.db"), table)
            .await
            .unwrap()
            .close()
            .await
            .unwrap();
        {
            let conn = Connection::open(dir.path().join("herald.db")).unwrap();
            conn.execute(
                "INSERT INTO events (seq, id, subject, correlation_id, ts, hub_id, payload)
                 VALUES (1, ?1, 'hub.a\u{202e}b', ?1, 1000, 'h', '{}')",
                [Uuid::now_v7().as_bytes()],
            )
            .unwrap();
        }
        let store = open(&dir).await;
        let page = store.query(Query::default()).await.unwrap();
        assert_eq!(page.events[0].subject.as_str(), "hub.a\u{202e}b");
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(&dir).await;
        let err = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
            .await
            .err()
            .expect("second open must fail");
        assert!(err.to_string().contains("in use"), "{err}");
        first.close().await.unwrap();
        drop(first);
        let again = open(&dir).await;
        again.close().await.unwrap();
    }

    #[tokio::test]
    async fn head_and_seq_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let batch = crate::conformance::events("hub.t.a", 5);
        store.append(batch).await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let store = open(&dir).await;
        assert_eq!(store.head().await.unwrap(), 5);
        let appended = store
            .append(crate::conformance::events("hub.t.a", 1))
            .await
            .unwrap();
        assert_eq!(appended[0].event().seq, 6);
        assert!(matches!(store.append(vec![]).await, Ok(v) if v.is_empty()));
        store.close().await.unwrap();
        assert!(matches!(store.head().await, Err(StoreError::Closed)));
        assert!(store
            .append(crate::conformance::events("hub.t.a", 1))
            .await
            .is_err());
    }

    /// A reader that keeps one snapshot open pins the WAL: a restart cannot happen until
    /// it ends. The restart must then give up at once rather than hold the write lock
    /// while it waits (it held commits for up to 1 s), and must happen once the reader
    /// is gone, so the WAL stays bounded under sustained writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_pinning_the_wal_holds_no_commit_and_the_wal_still_restarts() {
        const RESTART_AT: u64 = 1024 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let options = EmbeddedOptions {
            checkpoint_interval: Duration::from_millis(10),
            wal_restart_bytes: RESTART_AT,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open(&path, options).await.unwrap();
        let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4000));
        let batch = || -> Vec<NewEvent> {
            (0..16)
                .map(|_| {
                    let mut event = crate::conformance::event("hub.t.wal", 0, None);
                    event.payload = Payload::from_json(payload.clone()).unwrap();
                    event
                })
                .collect()
        };
        store.append(batch()).await.unwrap();

        let (pinned, pinned_rx) = std::sync::mpsc::channel();
        let reader_path = path.clone();
        let reader = std::thread::spawn(move || {
            let conn =
                Connection::open_with_flags(reader_path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
            let tx = conn.unchecked_transaction().unwrap();
            let _: i64 = tx
                .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
                .unwrap();
            pinned.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
        });
        pinned_rx.recv().unwrap();

        let mut slowest = Duration::ZERO;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(3000) {
            let at = std::time::Instant::now();
            store.append(batch()).await.unwrap();
            slowest = slowest.max(at.elapsed());
        }
        reader.join().unwrap();
        // A commit may be slow on a busy machine, but not by the restart's old wait.
        assert!(
            slowest < Duration::from_millis(500),
            "a commit waited {slowest:?} while a reader pinned the WAL"
        );

        // With the reader gone the WAL restarts: it holds at most a few restarts' worth
        // of frames, not everything written since the start.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let probe = Connection::open(&path).unwrap();
        // -1 while the store's own checkpointer holds the checkpoint lock: ask again.
        let mut frames: i64 = -1;
        for _ in 0..200 {
            frames = probe
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
                .unwrap();
            if frames >= 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(frames >= 0, "the probe never got to checkpoint");
        let written = store.head().await.unwrap() * 4096;
        assert!(written > 8 * RESTART_AT, "wrote only {written} bytes");
        assert!(
            (frames as u64) * 4096 < 4 * RESTART_AT,
            "the WAL still holds {frames} frames after {written} bytes written"
        );
        store.close().await.unwrap();
    }
}
