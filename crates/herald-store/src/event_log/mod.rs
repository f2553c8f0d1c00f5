//! The events' own log (issue 11): the segment log ([`crate::segment`]) holding events
//! as records ([`crate::record`]), with postings ([`crate::postings`]) by subject,
//! correlation id, id and aggregate beside it. Not yet behind a store.
//!
//! - **Append**: numbered events become one batch of records (one `write`, one
//!   `fdatasync`); their keys go to the postings' memtable, and only then are they
//!   visible ([`EventReader::head`]), so a read by key never misses an event below the
//!   head it saw. A large batch's keys are added while its sync runs (readers pass over
//!   seqs above the head), and withdrawn if the append fails.
//! - **Postings are flushed and merged on a thread of their own**, never on the append's
//!   path: every [`EventLogOptions::flush_every`] entries, and at close.
//! - **Subjects**: each distinct subject's events, payload bytes and last seq, in memory
//!   (what a query's plan and retention read), saved beside the postings at each flush.
//! - **Open** replays the records past the postings' `indexed_through` (and past the
//!   saved subjects') into memory: what a crash lost of them comes back from the log.
//! - **Deletes** (retention) go to a journal of seqs (`deleted`, CRC per entry, synced
//!   before the call returns) and a set in memory; every read skips them. A sealed
//!   segment whose records are all deleted is removed (its files, and its seqs from the
//!   set); rewriting segments only partly deleted is to come, and so is compacting the
//!   journal (it keeps 16 bytes per deleted event).

pub mod query;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use herald_core::{Event, Seq, Timestamp};
use uuid::Uuid;

use crate::postings::Postings;
use crate::segment::{AppendError, Compactor, LogReader, Recovered, SegmentLog, SegmentOptions};

/// A failure of the log as the store reports it: damage is corruption, anything else
/// (a full disk, an I/O error) leaves the store unable to serve for now.
pub(crate) fn store_error(error: std::io::Error) -> crate::StoreError {
    if error.kind() == std::io::ErrorKind::InvalidData {
        crate::StoreError::Corrupt(error.to_string())
    } else {
        crate::StoreError::Unavailable(error.to_string())
    }
}

/// Tuning for an [`EventLog`].
#[derive(Debug, Clone)]
pub struct EventLogOptions {
    pub segments: SegmentOptions,
    /// Postings entries kept in memory before they are written as a run (three or four
    /// per event).
    pub flush_every: usize,
}

impl Default for EventLogOptions {
    fn default() -> Self {
        EventLogOptions {
            segments: SegmentOptions::default(),
            flush_every: 64 * 1024,
        }
    }
}

/// What the postings find events by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Subject(&'a str),
    Correlation(Uuid),
    Id(Uuid),
    /// Type and id, in every tenant (what a query by aggregate reads).
    Aggregate(&'a str, &'a str),
    /// Tenant (empty: none), type and id: one aggregate's own events, whose versions
    /// grow with their seqs.
    TenantAggregate(&'a str, &'a str, &'a str),
}

impl Key<'_> {
    /// The bytes in the postings: a kind byte, then the key (an aggregate's type and id
    /// apart by a NUL, which neither may hold).
    fn bytes(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Key::Subject(subject) => {
                out.push(b'S');
                out.extend_from_slice(subject.as_bytes());
            }
            Key::Correlation(id) => {
                out.push(b'C');
                out.extend_from_slice(id.as_bytes());
            }
            Key::Id(id) => {
                out.push(b'I');
                out.extend_from_slice(id.as_bytes());
            }
            Key::Aggregate(kind, id) => {
                out.push(b'A');
                out.extend_from_slice(kind.as_bytes());
                out.push(0);
                out.extend_from_slice(id.as_bytes());
            }
            Key::TenantAggregate(tenant, kind, id) => {
                out.push(b'T');
                for (i, part) in [tenant, kind, id].into_iter().enumerate() {
                    if i > 0 {
                        out.push(0);
                    }
                    out.extend_from_slice(part.as_bytes());
                }
            }
        }
    }
}

/// Every key an event is found by.
fn keys(event: &Event) -> impl Iterator<Item = Key<'_>> {
    let aggregate = event.aggregate.as_deref();
    [
        Some(Key::Subject(event.subject.as_str())),
        Some(Key::Correlation(event.correlation_id)),
        Some(Key::Id(event.id)),
        aggregate.map(|a| Key::Aggregate(&a.aggregate_type, &a.aggregate_id)),
        aggregate.map(|a| {
            Key::TenantAggregate(
                event.tenant.as_deref().unwrap_or(""),
                &a.aggregate_type,
                &a.aggregate_id,
            )
        }),
    ]
    .into_iter()
    .flatten()
}

/// What the log holds of one subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubjectStats {
    pub events: u64,
    /// Payload bytes.
    pub bytes: u64,
    pub last_seq: Seq,
}

/// The subjects, the tenants' payload bytes, the last seq they count, and how many
/// journal deletes they count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Subjects {
    stats: BTreeMap<String, SubjectStats>,
    tenant_bytes: BTreeMap<String, u64>,
    through: Seq,
    deletes: u64,
}

impl Subjects {
    fn add(&mut self, event: &Event) {
        if event.seq <= self.through {
            return;
        }
        let subject = event.subject.as_str();
        let stats = match self.stats.get_mut(subject) {
            Some(stats) => stats,
            None => self.stats.entry(subject.to_owned()).or_default(),
        };
        stats.events += 1;
        stats.bytes += event.payload.get().len() as u64;
        stats.last_seq = event.seq;
        if let Some(tenant) = &event.tenant {
            let bytes = match self.tenant_bytes.get_mut(tenant.as_str()) {
                Some(bytes) => bytes,
                None => self.tenant_bytes.entry(tenant.clone()).or_default(),
            };
            *bytes += event.payload.get().len() as u64;
        }
        self.through = event.seq;
    }

    /// Takes a deleted event off its subject's counts.
    fn remove(&mut self, event: &Event) {
        let subject = event.subject.as_str();
        if let Some(stats) = self.stats.get_mut(subject) {
            stats.events = stats.events.saturating_sub(1);
            stats.bytes = stats.bytes.saturating_sub(event.payload.get().len() as u64);
            if stats.events == 0 {
                self.stats.remove(subject);
            }
        }
        if let Some(bytes) = event
            .tenant
            .as_deref()
            .and_then(|t| self.tenant_bytes.get_mut(t))
        {
            *bytes = bytes.saturating_sub(event.payload.get().len() as u64);
        }
        self.deletes += 1;
    }
}

/// Bytes of one entry of the deletes journal: `seq: u64 | crc32(seq): u32 | 0: u32`.
const DELETE_ENTRY: usize = 16;
const DELETES_FILE: &str = "deleted";

fn delete_entry(seq: Seq) -> [u8; DELETE_ENTRY] {
    let mut entry = [0u8; DELETE_ENTRY];
    entry[..8].copy_from_slice(&seq.to_le_bytes());
    entry[8..12].copy_from_slice(&crc32fast::hash(&seq.to_le_bytes()).to_le_bytes());
    entry
}

/// The deletes journal's seqs, in the order written; a torn tail (a crash mid-write:
/// a short or damaged last entry) is cut off.
fn read_deletes(dir: &Path) -> std::io::Result<Vec<Seq>> {
    let path = dir.join(DELETES_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut seqs = Vec::with_capacity(bytes.len() / DELETE_ENTRY);
    for entry in bytes.chunks(DELETE_ENTRY) {
        let Ok(seq_bytes) = <[u8; 8]>::try_from(&entry[..entry.len().min(8)]) else {
            break;
        };
        let seq = u64::from_le_bytes(seq_bytes);
        if entry.len() < DELETE_ENTRY || entry != delete_entry(seq) {
            break;
        }
        seqs.push(seq);
    }
    let whole = (seqs.len() * DELETE_ENTRY) as u64;
    if whole < bytes.len() as u64 {
        let file = std::fs::OpenOptions::new().write(true).open(&path)?;
        file.set_len(whole)?;
        file.sync_data()?;
    }
    Ok(seqs)
}

struct Shared {
    reader: LogReader,
    compactor: Compactor,
    /// Per sealed segment (by first seq): how many of its records a compaction removed
    /// (since this open; unknown ones count as none, so at worst one is redone).
    removed: std::sync::Mutex<HashMap<Seq, u64>>,
    /// Set by a delete: the flusher looks for segments worth compacting.
    compact_due: AtomicBool,
    postings: Postings,
    subjects: RwLock<Subjects>,
    /// Deleted seqs: every read skips them.
    deleted: RwLock<std::collections::BTreeSet<Seq>>,
    /// Serialises saving the subjects (the flusher's and a removal's).
    saving: std::sync::Mutex<()>,
    dir: PathBuf,
    /// The last seq whose keys are in the postings: reads stop here.
    visible: AtomicU64,
    stopping: AtomicBool,
}

/// Batches of this many events or more have their keys added beside their sync, on a
/// thread of its own: below it, starting the thread costs more than it saves.
const KEYS_BESIDE_SYNC: usize = 256;

/// The writer: one per log directory.
pub struct EventLog {
    log: SegmentLog,
    shared: Arc<Shared>,
    flush_every: usize,
    wake: mpsc::SyncSender<()>,
    flusher: Option<JoinHandle<()>>,
    key: Vec<u8>,
    bodies: Vec<Vec<u8>>,
}

/// Reads the log and its postings while the writer appends: cheap to clone.
#[derive(Clone)]
pub struct EventReader {
    shared: Arc<Shared>,
}

impl EventLog {
    /// Opens the log in `dir` (its segments in `segments/`, postings in `postings/`),
    /// cutting a torn tail and adding to the postings what a crash lost of them.
    pub fn open(dir: &Path, options: EventLogOptions) -> std::io::Result<(EventLog, Recovered)> {
        let (log, recovered) = SegmentLog::open(dir.join("segments"), options.segments)?;
        let postings = Postings::open(dir.join("postings"))?;
        let mut subjects = read_subjects(dir).unwrap_or_else(|error| {
            tracing::warn!(%error, "Cannot read the log's saved subjects; counting them again.");
            Subjects::default()
        });
        let reader = log.reader();
        let mut key = Vec::new();
        let indexed = postings.indexed_through();
        let mut from = indexed.min(subjects.through) + 1;
        loop {
            let records = reader.read(from, 4096)?;
            let Some(last) = records.last().map(|r| r.seq) else {
                break;
            };
            for record in &records {
                let event = crate::record::decode(record.seq, &record.body)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                if event.seq > indexed {
                    add_keys(&postings, &event, &mut key);
                }
                subjects.add(&event);
            }
            from = last + 1;
        }
        // Deletes the saved subjects do not count yet: their events are in the log.
        let deletes = read_deletes(dir)?;
        for &seq in deletes.iter().skip(subjects.deletes as usize) {
            if let Some(record) = reader.read_one(seq)? {
                let event = crate::record::decode(record.seq, &record.body)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                subjects.remove(&event);
            }
        }
        subjects.deletes = deletes.len() as u64;
        let shared = Arc::new(Shared {
            subjects: RwLock::new(subjects),
            saving: std::sync::Mutex::new(()),
            deleted: RwLock::new(
                deletes
                    .into_iter()
                    .filter(|&seq| seq >= reader.first_seq())
                    .collect(),
            ),
            dir: dir.to_path_buf(),
            visible: AtomicU64::new(log.durable_seq()),
            compactor: log.compactor(),
            removed: std::sync::Mutex::new(HashMap::new()),
            compact_due: AtomicBool::new(false),
            reader,
            postings,
            stopping: AtomicBool::new(false),
        });
        let (wake, woken) = mpsc::sync_channel(1);
        let flusher = {
            let shared = shared.clone();
            let flush_every = options.flush_every;
            std::thread::Builder::new()
                .name("herald-postings".into())
                .spawn(move || flush_loop(&shared, &woken, flush_every))?
        };
        Ok((
            EventLog {
                log,
                shared,
                flush_every: options.flush_every,
                wake,
                flusher: Some(flusher),
                key,
                bodies: Vec::new(),
            },
            recovered,
        ))
    }

    /// Makes `dir` an empty log whose first event will have `first_seq`.
    pub fn start_at(dir: &Path, first_seq: Seq) -> std::io::Result<()> {
        SegmentLog::start_at(dir.join("segments"), first_seq)
    }

    /// The seq the next event must have.
    pub fn next_seq(&self) -> Seq {
        self.log.next_seq()
    }

    /// Appends numbered events (from [`Self::next_seq`] on, in order) as one batch:
    /// stored and synced when this returns `Ok`, and visible to readers.
    pub fn append(&mut self, events: &[Event]) -> Result<(), AppendError> {
        let next = self.log.next_seq();
        if let Some((i, event)) = events
            .iter()
            .enumerate()
            .find(|(i, e)| e.seq != next + *i as u64)
        {
            return Err(AppendError::Write(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("event {i} has seq {}, not {}", event.seq, next + i as u64),
            )));
        }
        self.bodies.resize_with(events.len(), Vec::new);
        for (event, body) in events.iter().zip(&mut self.bodies) {
            body.clear();
            crate::record::encode(event, body);
        }
        let bodies = &self.bodies[..events.len()];
        if events.len() < KEYS_BESIDE_SYNC {
            self.log.append(bodies)?;
            for event in events {
                add_keys(&self.shared.postings, event, &mut self.key);
            }
        } else {
            // A large batch's keys are added on a thread of its own while this one
            // writes and syncs: they take as long as the sync (~0.4 ms per 1,000
            // events), and readers pass over seqs above the head until it moves. If the
            // append fails, they are withdrawn (the flusher cannot have taken them).
            let postings = &self.shared.postings;
            let held = postings.hold();
            let log = &mut self.log;
            let add_all = || {
                let mut key = Vec::new();
                for event in events {
                    add_keys(postings, event, &mut key);
                }
            };
            let appended = std::thread::scope(|scope| {
                // No thread to be had (a process at its limit): the keys are added here.
                let adding = std::thread::Builder::new()
                    .name("herald-log-keys".into())
                    .spawn_scoped(scope, add_all);
                let appended = log.append(bodies);
                match adding {
                    Ok(adding) => {
                        if adding.join().is_err() {
                            tracing::error!("Adding a batch's keys to the postings panicked.");
                        }
                    }
                    Err(_) => add_all(),
                }
                appended
            });
            if let Err(error) = appended {
                postings.withdraw_from(next, &held);
                return Err(error);
            }
        }
        {
            let mut subjects = self.shared.subjects.write().expect("subjects");
            for event in events {
                subjects.add(event);
            }
        }
        if let Some(last) = events.last() {
            self.shared.visible.store(last.seq, Ordering::Release);
        }
        if self.shared.postings.pending() >= self.flush_every {
            let _ = self.wake.try_send(());
        }
        Ok(())
    }

    /// Deletes events (retention): synced in the journal when this returns, and skipped
    /// by every read from then on. Seqs not stored, or deleted already, are passed over.
    /// The events deleted.
    pub fn delete(&mut self, seqs: &[Seq]) -> std::io::Result<Vec<Event>> {
        let mut wanted = seqs.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        {
            let deleted = self.shared.deleted.read().expect("deleted");
            wanted.retain(|seq| !deleted.contains(seq));
        }
        let reader = self.reader();
        let mut events = Vec::with_capacity(wanted.len());
        for seq in wanted {
            if let Some(event) = reader.event(seq)? {
                events.push(event);
            }
        }
        if events.is_empty() {
            return Ok(events);
        }
        let mut journal = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.shared.dir.join(DELETES_FILE))?;
        let entries: Vec<u8> = events.iter().flat_map(|e| delete_entry(e.seq)).collect();
        journal.write_all(&entries)?;
        journal.sync_data()?;
        {
            let mut subjects = self.shared.subjects.write().expect("subjects");
            let mut deleted = self.shared.deleted.write().expect("deleted");
            for event in &events {
                deleted.insert(event.seq);
                subjects.remove(event);
            }
        }
        self.remove_deleted_segments()?;
        // The active segment is sealed once most of it is deleted, so a compaction can
        // give its space back too.
        let active = self.log.active_seqs();
        let records = active.end - active.start;
        let deleted = self
            .shared
            .deleted
            .read()
            .expect("deleted")
            .range(active)
            .count() as u64;
        if deleted >= SEAL_WHEN_DELETED && deleted * 2 >= records {
            self.log
                .seal_active()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        self.shared.compact_due.store(true, Ordering::Release);
        let _ = self.wake.try_send(());
        Ok(events)
    }

    /// Removes the oldest sealed segments whose every record is deleted, and their seqs
    /// from the set in memory (reads below the log's first seq find nothing anyway).
    fn remove_deleted_segments(&mut self) -> std::io::Result<()> {
        let through = {
            let deleted = self.shared.deleted.read().expect("deleted");
            self.log
                .sealed()
                .into_iter()
                .take_while(|seqs| {
                    deleted.range(seqs.clone()).count() as u64 == seqs.end - seqs.start
                })
                .last()
                .map(|seqs| seqs.end - 1)
        };
        if let Some(through) = through {
            // The saved subjects must count these deletes first: once the records are
            // gone, a replay of the journal could not take them off again.
            self.shared.save_subjects()?;
            let first = self.log.remove_through(through)?;
            let mut deleted = self.shared.deleted.write().expect("deleted");
            *deleted = deleted.split_off(&first);
        }
        Ok(())
    }

    /// A reader, for other threads.
    pub fn reader(&self) -> EventReader {
        EventReader {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EventLog {
    /// Flushes the postings, so the next open has nothing to replay.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.wake.try_send(());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// Deleted records in the active segment past which it is sealed (with half of it
/// deleted), to be compacted.
const SEAL_WHEN_DELETED: u64 = 1024;

fn add_keys(postings: &Postings, event: &Event, buf: &mut Vec<u8>) {
    for key in keys(event) {
        key.bytes(buf);
        postings.add([(buf.as_slice(), event.seq)]);
    }
}

/// Flushes and merges the postings when the writer asks, at least every second that
/// has entries pending a long time, and once more when the log closes.
fn flush_loop(shared: &Shared, woken: &mpsc::Receiver<()>, flush_every: usize) {
    let mut pending_before = 0;
    // After a failure (a full disk, say), the next try waits, doubling to a minute, and
    // the failure is logged once per wait: the writer's wake-ups cannot make a flood.
    let mut retry_at: Option<(std::time::Instant, Duration)> = None;
    loop {
        let asked = woken.recv_timeout(Duration::from_secs(1));
        let stopping = shared.stopping.load(Ordering::Acquire)
            || matches!(asked, Err(mpsc::RecvTimeoutError::Disconnected));
        let pending = shared.postings.pending();
        // Nothing added for a second: flushed too, so an idle log holds no memtable
        // (up to ~6 MB at `flush_every`) and a crash has nothing to replay.
        let idle = pending > 0 && pending == pending_before;
        pending_before = pending;
        let waiting = retry_at.is_some_and(|(at, _)| std::time::Instant::now() < at);
        if stopping || (!waiting && (pending >= flush_every || idle)) {
            // Postings are derived: a failure here costs a longer replay at the next
            // open, not an event.
            match shared
                .postings
                .flush()
                .and_then(|()| shared.postings.compact())
                .and_then(|()| shared.save_subjects())
            {
                Ok(()) => retry_at = None,
                Err(error) => {
                    let wait = retry_at.map_or(Duration::from_secs(1), |(_, wait)| {
                        (wait * 2).min(Duration::from_secs(60))
                    });
                    tracing::warn!(%error, retry_in_secs = wait.as_secs(), "Cannot write the log's postings; will retry.");
                    retry_at = Some((std::time::Instant::now() + wait, wait));
                }
            }
        }
        if shared.compact_due.swap(false, Ordering::AcqRel) {
            if let Err(error) = shared.compact() {
                tracing::warn!(%error, "Cannot compact the log's segments; will retry at the next delete.");
            }
        }
        if stopping {
            return;
        }
    }
}

impl Shared {
    /// Rewrites each sealed segment whose records still in its file are half deleted or
    /// more, without them. (A segment deleted whole is removed by the writer.)
    fn compact(&self) -> std::io::Result<()> {
        let sealed = self.reader.sealed();
        let Some(end) = sealed.last().map(|seqs| seqs.end) else {
            return Ok(());
        };
        let deleted: std::collections::BTreeSet<Seq> = self
            .deleted
            .read()
            .expect("deleted")
            .range(..end)
            .copied()
            .collect();
        let mut saved = false;
        for seqs in sealed {
            let records = seqs.end - seqs.start;
            let first = seqs.start;
            let gone = deleted.range(seqs).count() as u64;
            let removed = *self
                .removed
                .lock()
                .expect("removed")
                .get(&first)
                .unwrap_or(&0);
            let newly = gone.saturating_sub(removed);
            if newly == 0 || gone == records || newly * 2 < records - removed {
                continue;
            }
            if !saved {
                // The saved subjects must count these deletes first: once the records
                // are gone, a replay of the journal could not take them off again.
                self.save_subjects()?;
                saved = true;
            }
            if let Some(kept) = self
                .compactor
                .compact(first, |seq| !deleted.contains(&seq))?
            {
                self.removed
                    .lock()
                    .expect("removed")
                    .insert(first, records - kept);
            }
        }
        Ok(())
    }

    fn save_subjects(&self) -> std::io::Result<()> {
        let _saving = self.saving.lock().expect("saving subjects");
        let subjects = self.subjects.read().expect("subjects").clone();
        write_subjects(&self.dir, &subjects)
    }
}

const SUBJECTS_FILE: &str = "subjects";
const SUBJECTS_MAGIC: &[u8; 8] = b"HRLDSUB2";

/// Saves the subjects: `magic | through: u64 | deletes: u64 | count: u64`, then per
/// subject `len: u32 | subject | events | bytes | last_seq` (u64s), then `count: u64`
/// and per tenant `len: u32 | tenant | bytes: u64`, then a CRC-32 of it all; written
/// aside, synced and renamed.
fn write_subjects(dir: &Path, subjects: &Subjects) -> std::io::Result<()> {
    let mut bytes = SUBJECTS_MAGIC.to_vec();
    bytes.extend_from_slice(&subjects.through.to_le_bytes());
    bytes.extend_from_slice(&subjects.deletes.to_le_bytes());
    bytes.extend_from_slice(&(subjects.stats.len() as u64).to_le_bytes());
    for (subject, stats) in &subjects.stats {
        bytes.extend_from_slice(&(subject.len() as u32).to_le_bytes());
        bytes.extend_from_slice(subject.as_bytes());
        for n in [stats.events, stats.bytes, stats.last_seq] {
            bytes.extend_from_slice(&n.to_le_bytes());
        }
    }
    bytes.extend_from_slice(&(subjects.tenant_bytes.len() as u64).to_le_bytes());
    for (tenant, n) in &subjects.tenant_bytes {
        bytes.extend_from_slice(&(tenant.len() as u32).to_le_bytes());
        bytes.extend_from_slice(tenant.as_bytes());
        bytes.extend_from_slice(&n.to_le_bytes());
    }
    let sum = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    let aside = dir.join("subjects.new");
    let mut file = std::fs::File::create(&aside)?;
    file.write_all(&bytes)?;
    file.sync_data()?;
    std::fs::rename(&aside, dir.join(SUBJECTS_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The saved subjects: none when there is no file; an error when it is damaged.
fn read_subjects(dir: &Path) -> std::io::Result<Subjects> {
    let bytes = match std::fs::read(dir.join(SUBJECTS_FILE)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Subjects::default())
        }
        Err(error) => return Err(error),
    };
    let damaged = || std::io::Error::new(std::io::ErrorKind::InvalidData, "damaged subjects file");
    if bytes.len() < 36 || !bytes.starts_with(SUBJECTS_MAGIC) {
        return Err(damaged());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(sum.try_into().expect("4")) {
        return Err(damaged());
    }
    let mut at = &body[8..];
    let mut take = |n: usize| -> std::io::Result<&[u8]> {
        if at.len() < n {
            return Err(damaged());
        }
        let (head, rest) = at.split_at(n);
        at = rest;
        Ok(head)
    };
    let through = u64::from_le_bytes(take(8)?.try_into().expect("8"));
    let deletes = u64::from_le_bytes(take(8)?.try_into().expect("8"));
    let count = u64::from_le_bytes(take(8)?.try_into().expect("8"));
    let mut subjects = Subjects {
        stats: BTreeMap::new(),
        tenant_bytes: BTreeMap::new(),
        through,
        deletes,
    };
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
        let subject = std::str::from_utf8(take(len)?)
            .map_err(|_| damaged())?
            .to_owned();
        let mut n = [0u64; 3];
        for slot in &mut n {
            *slot = u64::from_le_bytes(take(8)?.try_into().expect("8"));
        }
        subjects.stats.insert(
            subject,
            SubjectStats {
                events: n[0],
                bytes: n[1],
                last_seq: n[2],
            },
        );
    }
    let count = u64::from_le_bytes(take(8)?.try_into().expect("8"));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
        let tenant = std::str::from_utf8(take(len)?)
            .map_err(|_| damaged())?
            .to_owned();
        let n = u64::from_le_bytes(take(8)?.try_into().expect("8"));
        subjects.tenant_bytes.insert(tenant, n);
    }
    if !at.is_empty() {
        return Err(damaged());
    }
    Ok(subjects)
}

impl EventReader {
    /// The subjects between two bounds (a query's candidates: the range its pattern's
    /// literal prefix allows), with what the log holds of each.
    pub fn subjects(&self, from: Bound<&str>, to: Bound<&str>) -> Vec<(String, SubjectStats)> {
        let subjects = self.shared.subjects.read().expect("subjects");
        subjects
            .stats
            .range::<str, _>((from, to))
            .map(|(subject, stats)| (subject.clone(), *stats))
            .collect()
    }

    /// Each tenant's payload bytes stored.
    pub fn tenant_bytes(&self) -> Vec<(String, u64)> {
        let subjects = self.shared.subjects.read().expect("subjects");
        subjects
            .tenant_bytes
            .iter()
            .filter(|(_, &bytes)| bytes > 0)
            .map(|(tenant, &bytes)| (tenant.clone(), bytes))
            .collect()
    }

    /// How many events are stored with seqs in `seqs` (deleted ones not counted).
    pub fn count_between(&self, seqs: std::ops::RangeInclusive<Seq>) -> u64 {
        let first = self.shared.reader.first_seq().max(1).max(*seqs.start());
        let last = self.head().min(*seqs.end());
        if first > last {
            return 0;
        }
        let deleted = self.shared.deleted.read().expect("deleted");
        last - first + 1 - deleted.range(first..=last).count() as u64
    }

    /// The last seq a read returns (0 when empty).
    pub fn head(&self) -> Seq {
        self.shared.visible.load(Ordering::Acquire)
    }

    /// The event with this seq.
    pub fn event(&self, seq: Seq) -> std::io::Result<Option<Event>> {
        if self.is_deleted(seq) {
            return Ok(None);
        }
        self.stored_event(seq)
    }

    fn is_deleted(&self, seq: Seq) -> bool {
        self.shared.deleted.read().expect("deleted").contains(&seq)
    }

    /// Whether `seq` was deleted (and perhaps its segment removed since).
    pub(crate) fn was_deleted(&self, seq: Seq) -> bool {
        self.is_deleted(seq) || seq < self.shared.reader.first_seq()
    }

    /// The record of `seq` as an event, deleted or not.
    fn stored_event(&self, seq: Seq) -> std::io::Result<Option<Event>> {
        if seq > self.head() {
            return Ok(None);
        }
        let Some(record) = self.shared.reader.read_one(seq)? else {
            return Ok(None);
        };
        crate::record::decode(record.seq, &record.body)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Up to `max` events from `from_seq` on, in order (deleted ones left out).
    pub fn events(&self, from_seq: Seq, max: usize) -> std::io::Result<Vec<Event>> {
        Ok(self.read(from_seq, max)?.0)
    }

    /// Up to `max` records from `from_seq` on, in order, as events, deleted ones left
    /// out; and the last seq read, deleted or not: where the next read starts after.
    pub fn read(&self, from_seq: Seq, max: usize) -> std::io::Result<(Vec<Event>, Option<Seq>)> {
        let head = self.head();
        let records = self.shared.reader.read(from_seq, max)?;
        let mut out = Vec::with_capacity(records.len());
        let mut last_read = None;
        let deleted = self.shared.deleted.read().expect("deleted");
        for record in records {
            if record.seq > head {
                break;
            }
            last_read = Some(record.seq);
            if deleted.contains(&record.seq) {
                continue;
            }
            out.push(
                crate::record::decode(record.seq, &record.body)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            );
        }
        Ok((out, last_read))
    }

    /// Up to `max` seqs of events with this key, from `from` on, in order.
    pub fn seqs(&self, key: Key<'_>, from: Seq, max: usize) -> std::io::Result<Vec<Seq>> {
        let head = self.head();
        let mut bytes = Vec::new();
        key.bytes(&mut bytes);
        let mut out = Vec::new();
        let mut from = from;
        // Deleted seqs are left out: ask again past them until `max` or the end.
        loop {
            let seqs = self.shared.postings.seqs(&bytes, from, max)?;
            let Some(&last) = seqs.last() else {
                return Ok(out);
            };
            let exhausted = seqs.len() < max;
            // Below the first seq: in a segment removed whole.
            let first = self.shared.reader.first_seq();
            let deleted = self.shared.deleted.read().expect("deleted");
            for seq in seqs {
                if seq > head {
                    return Ok(out);
                }
                if seq >= first && !deleted.contains(&seq) {
                    out.push(seq);
                    if out.len() == max {
                        return Ok(out);
                    }
                }
            }
            if exhausted {
                return Ok(out);
            }
            from = last + 1;
        }
    }

    /// The seq of the first event committed at or after `ts`, if any: a binary search
    /// over seq, which the store's timestamps follow (they never go down in seq order),
    /// ~log2(head) reads by seq, so no index on time is kept. (A seq whose record a
    /// compaction removed may be answered: no record lies between it and the first one.)
    pub fn first_at_or_after(&self, ts: Timestamp) -> std::io::Result<Option<Seq>> {
        let head = self.head();
        let first = self.shared.reader.first_seq().max(1);
        // The time of the first record at or after a seq (deleted records count: their
        // times are in order with the others'); past the last one, "later than any".
        let at_or_later = |seq: Seq| -> std::io::Result<bool> {
            let Some(record) = self.shared.reader.read(seq, 1)?.pop() else {
                return Ok(true);
            };
            if record.seq > head {
                return Ok(true);
            }
            let event = crate::record::decode(record.seq, &record.body)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            Ok(event.timestamp >= ts)
        };
        if head < first {
            return Ok(None);
        }
        // The smallest seq in first..=head + 1 whose first record is at or after `ts`.
        let (mut lo, mut hi) = (first, head + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if at_or_later(mid)? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok((lo <= head).then_some(lo))
    }

    /// The event with this id.
    pub fn by_id(&self, id: Uuid) -> std::io::Result<Option<Event>> {
        match self.seqs(Key::Id(id), 0, 1)?.first() {
            Some(&seq) => self.event(seq),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{AggregateEvent, Origin, Payload, Subject};
    use std::collections::BTreeSet;

    fn event(seq: Seq) -> Event {
        let correlation = Uuid::from_u128(u128::from(seq / 3) + 1);
        Event {
            seq,
            id: Uuid::from_u128(0xABCD_0000 + u128::from(seq)),
            subject: Subject::new(format!("hub.t{}.created", seq % 5)).unwrap(),
            origin: Origin {
                hub_id: "hub-1".into(),
                service: None,
                user: None,
            },
            correlation_id: correlation,
            payload: Payload::from_json(format!("{{\"n\":{seq}}}")).unwrap(),
            timestamp: Timestamp::from_micros(1_000_000 + seq as i64),
            cloudevent: None,
            tenant: None,
            aggregate: seq.is_multiple_of(4).then(|| {
                Box::new(AggregateEvent {
                    aggregate_type: "order".into(),
                    aggregate_id: format!("o-{}", seq % 8),
                    version: seq / 8 + 1,
                    event_type: "order.placed".into(),
                    metadata: None,
                })
            }),
            trace: None,
        }
    }

    fn small() -> EventLogOptions {
        EventLogOptions {
            segments: SegmentOptions {
                segment_bytes: 4096,
                ..SegmentOptions::default()
            },
            flush_every: 40,
        }
    }

    fn append(log: &mut EventLog, count: u64) {
        let first = log.next_seq();
        let events: Vec<Event> = (first..first + count).map(event).collect();
        log.append(&events).unwrap();
    }

    /// Every way of finding an event agrees with the events appended.
    fn check(reader: &EventReader, through: Seq) {
        assert_eq!(reader.head(), through);
        let all: Vec<Event> = (1..=through).map(event).collect();
        assert_eq!(reader.events(1, usize::MAX).unwrap(), all);
        for seq in (1..=through).step_by(7) {
            assert_eq!(reader.event(seq).unwrap(), Some(event(seq)));
            assert_eq!(reader.by_id(event(seq).id).unwrap(), Some(event(seq)));
        }
        assert_eq!(reader.event(through + 1).unwrap(), None);
        for t in 0..5 {
            let subject = format!("hub.t{t}.created");
            let want: Vec<Seq> = (1..=through).filter(|s| s % 5 == t).collect();
            assert_eq!(
                reader.seqs(Key::Subject(&subject), 0, usize::MAX).unwrap(),
                want
            );
            let from = through / 2;
            let page: Vec<Seq> = want
                .iter()
                .copied()
                .filter(|&s| s >= from)
                .take(10)
                .collect();
            assert_eq!(reader.seqs(Key::Subject(&subject), from, 10).unwrap(), page);
        }
        let correlation = Uuid::from_u128(2);
        let want: Vec<Seq> = (1..=through).filter(|s| s / 3 == 1).collect();
        assert_eq!(
            reader.seqs(Key::Correlation(correlation), 0, 99).unwrap(),
            want
        );
        let want: Vec<Seq> = (1..=through).filter(|s| s % 8 == 4).collect();
        assert_eq!(
            reader.seqs(Key::Aggregate("order", "o-4"), 0, 99).unwrap(),
            want
        );
        assert!(reader
            .seqs(Key::Aggregate("order", "o-3"), 0, 99)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn events_are_found_by_seq_id_subject_correlation_and_aggregate_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(dir.path(), small()).unwrap();
        for _ in 0..30 {
            append(&mut log, 7);
        }
        check(&log.reader(), 210);
        drop(log);
        let (mut log, recovered) = EventLog::open(dir.path(), small()).unwrap();
        assert_eq!(recovered, Recovered::default());
        check(&log.reader(), 210);
        append(&mut log, 5);
        check(&log.reader(), 215);
    }

    /// A crash loses the postings not yet flushed: the copy of a live log's files (as
    /// a kill -9 leaves them) opens with every event found by every key.
    #[test]
    fn postings_a_crash_lost_come_back_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let options = EventLogOptions {
            flush_every: 100,
            ..small()
        };
        let (mut log, _) = EventLog::open(dir.path(), options.clone()).unwrap();
        for _ in 0..40 {
            append(&mut log, 3);
        }
        std::thread::sleep(Duration::from_millis(200));
        // Fewer entries than a flush takes: these stay in memory.
        append(&mut log, 3);
        // Copied while running: some postings flushed, the rest only in memory.
        let copy = tempfile::tempdir().unwrap();
        copy_live(&log, dir.path(), copy.path());
        let (copied, _) = EventLog::open(copy.path(), options).unwrap();
        let flushed = copied.shared.postings.indexed_through();
        assert!(flushed > 0 && flushed <= 120, "flushed through {flushed}");
        check(&copied.reader(), 123);
        drop(log);
    }

    /// The time search agrees with a scan, with runs of equal timestamps (a batch
    /// shares its commit time), and bounds before, on, between and after them.
    #[test]
    fn the_first_event_at_or_after_a_time_is_found_by_binary_search() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(dir.path(), small()).unwrap();
        assert_eq!(
            log.reader()
                .first_at_or_after(Timestamp::from_micros(0))
                .unwrap(),
            None
        );
        let mut all = Vec::new();
        for batch in 0..40u64 {
            let first = log.next_seq();
            let events: Vec<Event> = (first..first + batch % 4 + 1)
                .map(|seq| Event {
                    timestamp: Timestamp::from_micros(1_000 + 10 * batch as i64),
                    ..event(seq)
                })
                .collect();
            log.append(&events).unwrap();
            all.extend(events);
        }
        let reader = log.reader();
        for probe in 990..1_420i64 {
            let want = all
                .iter()
                .find(|e| e.timestamp.as_micros() >= probe)
                .map(|e| e.seq);
            let found = reader
                .first_at_or_after(Timestamp::from_micros(probe))
                .unwrap();
            assert_eq!(found, want, "at or after {probe}");
        }
    }

    /// What `check`'s events add up to per subject, through `through`.
    fn expected_subjects(through: Seq) -> Vec<(String, SubjectStats)> {
        let mut stats: BTreeMap<String, SubjectStats> = BTreeMap::new();
        for event in (1..=through).map(event) {
            let entry = stats.entry(event.subject.as_str().to_owned()).or_default();
            entry.events += 1;
            entry.bytes += event.payload.get().len() as u64;
            entry.last_seq = event.seq;
        }
        stats.into_iter().collect()
    }

    /// The subjects' counts agree with the events across reopening, a crash (a copy of
    /// a live log's files) and a lost or damaged saved file.
    #[test]
    fn subjects_count_what_the_log_holds_across_reopening_and_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(dir.path(), small()).unwrap();
        for _ in 0..30 {
            append(&mut log, 7);
        }
        let all = |log: &EventLog| log.reader().subjects(Bound::Unbounded, Bound::Unbounded);
        assert_eq!(all(&log), expected_subjects(210));
        assert_eq!(
            log.reader()
                .subjects(Bound::Included("hub.t1"), Bound::Excluded("hub.t3")),
            expected_subjects(210)[1..3].to_vec()
        );
        std::thread::sleep(Duration::from_millis(100));
        append(&mut log, 4);
        let copy = tempfile::tempdir().unwrap();
        copy_live(&log, dir.path(), copy.path());
        drop(log);
        let (copied, _) = EventLog::open(copy.path(), small()).unwrap();
        assert_eq!(all(&copied), expected_subjects(214));
        drop(copied);
        let (log, _) = EventLog::open(dir.path(), small()).unwrap();
        assert_eq!(all(&log), expected_subjects(214));
        drop(log);
        for damage in [None, Some(b"garbage".as_slice())] {
            match damage {
                None => std::fs::remove_file(dir.path().join(SUBJECTS_FILE)).unwrap(),
                Some(bytes) => std::fs::write(dir.path().join(SUBJECTS_FILE), bytes).unwrap(),
            }
            let (log, _) = EventLog::open(dir.path(), small()).unwrap();
            assert_eq!(all(&log), expected_subjects(214), "after {damage:?}");
        }
        // The postings lost, the subjects saved: the replay rebuilds the postings from
        // the start and counts no event twice.
        std::fs::remove_dir_all(dir.path().join("postings")).unwrap();
        let (log, _) = EventLog::open(dir.path(), small()).unwrap();
        assert_eq!(all(&log), expected_subjects(214));
        check(&log.reader(), 214);
    }

    /// Copies a live log's files as a crash leaves them, at one instant: flushes,
    /// merges and saves held off meanwhile.
    fn copy_live(log: &EventLog, from: &Path, to: &Path) {
        let _flushes = log.shared.postings.pause();
        let _saves = log.shared.saving.lock().unwrap();
        copy_dir(from, to);
    }

    fn copy_dir(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(&target).unwrap();
                copy_dir(&entry.path(), &target);
            } else {
                // A spare segment being prepared may be renamed away meanwhile.
                match std::fs::copy(entry.path(), target) {
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    copied => drop(copied.unwrap()),
                }
            }
        }
    }

    /// What every read must give once `deleted` are deleted.
    fn check_with_deletes(log: &EventLog, through: Seq, deleted: &BTreeSet<Seq>) {
        let reader = log.reader();
        let kept: Vec<Event> = (1..=through)
            .filter(|s| !deleted.contains(s))
            .map(event)
            .collect();
        assert_eq!(reader.events(1, usize::MAX).unwrap(), kept);
        assert_eq!(reader.count_between(1..=through), kept.len() as u64);
        // Time bounds find the first kept event at or after a time, over deleted and
        // compacted records alike.
        for event in kept.iter().step_by(37) {
            let bound = reader.first_at_or_after(event.timestamp).unwrap().unwrap();
            let first_kept = kept.iter().find(|e| e.seq >= bound).map(|e| e.seq);
            assert_eq!(first_kept, Some(event.seq), "time of {}", event.seq);
        }
        assert_eq!(
            reader.count_between(through / 2..=Seq::MAX),
            kept.iter().filter(|e| e.seq >= through / 2).count() as u64
        );
        for seq in 1..=through {
            let want = (!deleted.contains(&seq)).then(|| event(seq));
            assert_eq!(reader.event(seq).unwrap(), want, "seq {seq}");
            assert_eq!(reader.by_id(event(seq).id).unwrap(), want, "id of {seq}");
        }
        for t in 0..5u64 {
            let subject = format!("hub.t{t}.created");
            let want: Vec<Seq> = kept.iter().map(|e| e.seq).filter(|s| s % 5 == t).collect();
            assert_eq!(
                reader.seqs(Key::Subject(&subject), 0, usize::MAX).unwrap(),
                want
            );
            // Pages past runs of deleted seqs are full, not cut short.
            assert_eq!(
                reader.seqs(Key::Subject(&subject), 0, 5).unwrap(),
                want[..5.min(want.len())].to_vec()
            );
            let stats = reader.subjects(Bound::Included(&subject), Bound::Included(&subject));
            let bytes: u64 = kept
                .iter()
                .filter(|e| e.seq % 5 == t)
                .map(|e| e.payload.get().len() as u64)
                .sum();
            assert_eq!(
                stats.first().map(|(_, s)| (s.events, s.bytes)),
                Some((want.len() as u64, bytes)),
                "{subject}"
            );
        }
        for (after_seq, limit) in [(0, 10), (100, 50), (150, 1000)] {
            let query = crate::Query {
                after_seq,
                limit,
                ..crate::Query::default()
            };
            let page = query::run(&reader, &query, 1_000_000).unwrap();
            let want: Vec<Seq> = kept
                .iter()
                .map(|e| e.seq)
                .filter(|&s| s > after_seq)
                .take(limit)
                .collect();
            assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
        }
    }

    /// Checks a copy of the live log (what a crash leaves), then the log reopened.
    fn crash_and_reopen(
        log: EventLog,
        dir: &Path,
        through: Seq,
        deleted: &BTreeSet<Seq>,
    ) -> EventLog {
        let copy = tempfile::tempdir().unwrap();
        copy_live(&log, dir, copy.path());
        let (copied, _) = EventLog::open(copy.path(), small()).unwrap();
        check_with_deletes(&copied, through, deleted);
        drop(copied);
        drop(log);
        let (log, _) = EventLog::open(dir, small()).unwrap();
        check_with_deletes(&log, through, deleted);
        log
    }

    /// Retention's deletes: every read skips them (pages stay full past runs of them),
    /// the subjects' counts drop, and all of it holds across reopening, a crash (a copy
    /// of a live log) and a torn journal entry.
    #[test]
    fn deleted_events_are_skipped_by_every_read_and_counted_off_their_subjects() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(dir.path(), small()).unwrap();
        for _ in 0..30 {
            append(&mut log, 7);
        }
        let mut deleted: BTreeSet<Seq> = (1..150).step_by(3).collect();
        deleted.extend(160..=200);
        let first: Vec<Seq> = deleted.iter().copied().take(20).collect();
        let rest: Vec<Seq> = deleted.iter().copied().skip(20).collect();
        assert_eq!(log.delete(&first).unwrap().len(), 20);
        // Again, and with seqs not stored: passed over.
        assert!(log.delete(&[first[0], 5_000]).unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(log.delete(&rest).unwrap().len(), rest.len());
        check_with_deletes(&log, 210, &deleted);

        drop(crash_and_reopen(log, dir.path(), 210, &deleted));

        // A torn last entry (a crash mid-write): cut off, the whole ones kept.
        let journal = dir.path().join(DELETES_FILE);
        let mut bytes = std::fs::read(&journal).unwrap();
        bytes.extend_from_slice(&delete_entry(205)[..9]);
        std::fs::write(&journal, &bytes).unwrap();
        let (mut log, _) = EventLog::open(dir.path(), small()).unwrap();
        check_with_deletes(&log, 210, &deleted);
        assert_eq!(
            std::fs::metadata(&journal).unwrap().len() as usize,
            deleted.len() * DELETE_ENTRY
        );
        log.delete(&[205]).unwrap();
        deleted.insert(205);
        check_with_deletes(&log, 210, &deleted);
    }

    /// Sealed segments whose events are all deleted are removed; reads, counts and
    /// pages stay right, before and after reopening and after a crash.
    #[test]
    fn segments_whose_events_are_all_deleted_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(dir.path(), small()).unwrap();
        for _ in 0..30 {
            append(&mut log, 7);
        }
        let sealed = log.log.sealed();
        assert!(sealed.len() >= 3, "{sealed:?}");
        // All of the first two segments but one seq, and some later ones.
        let mut deleted: BTreeSet<Seq> = (1..sealed[1].end).collect();
        deleted.remove(&(sealed[1].start + 1));
        deleted.extend((sealed[2].start..210).step_by(4));
        log.delete(&deleted.iter().copied().collect::<Vec<_>>())
            .unwrap();
        assert!(!dir
            .path()
            .join("segments")
            .join(format!("{:020}.seg", 1))
            .exists());
        assert!(dir
            .path()
            .join("segments")
            .join(format!("{:020}.seg", sealed[1].start))
            .exists());
        check_with_deletes(&log, 210, &deleted);
        // The last one of the second segment: it goes too.
        log.delete(&[sealed[1].start + 1]).unwrap();
        deleted.insert(sealed[1].start + 1);
        assert!(!dir
            .path()
            .join("segments")
            .join(format!("{:020}.seg", sealed[1].start))
            .exists());
        assert_eq!(
            log.reader()
                .shared
                .deleted
                .read()
                .unwrap()
                .range(..sealed[2].start)
                .count(),
            0
        );
        check_with_deletes(&log, 210, &deleted);

        crash_and_reopen(log, dir.path(), 210, &deleted);
    }

    /// Segments mostly deleted are rewritten without the deleted events, the active one
    /// first sealed for it: the space comes back, and every read, count and page stays
    /// right, before and after reopening and after a crash.
    #[test]
    fn mostly_deleted_segments_give_their_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let options = EventLogOptions {
            segments: SegmentOptions {
                segment_bytes: 1024 * 1024,
                preallocate: false,
                ..SegmentOptions::default()
            },
            flush_every: 1000,
        };
        let (mut log, _) = EventLog::open(dir.path(), options).unwrap();
        for _ in 0..30 {
            append(&mut log, 100);
        }
        let segments = dir.path().join("segments");
        let before = crate::embedded::dir_bytes_for_tests(&segments);
        assert!(log.log.sealed().is_empty(), "one active segment");
        let deleted: BTreeSet<Seq> = (1..=2900).filter(|s| s % 10 != 0).collect();
        log.delete(&deleted.iter().copied().collect::<Vec<_>>())
            .unwrap();
        assert_eq!(log.log.sealed().len(), 1, "the active one was sealed");
        let started = std::time::Instant::now();
        while crate::embedded::dir_bytes_for_tests(&segments) * 4 > before {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} of {before} bytes left",
                crate::embedded::dir_bytes_for_tests(&segments)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        check_with_deletes(&log, 3000, &deleted);
        // More of it deleted: compacted again.
        let mut deleted = deleted;
        let more: Vec<Seq> = (1..=2900).filter(|s| s % 20 == 0).collect();
        log.delete(&more).unwrap();
        deleted.extend(more);
        std::thread::sleep(Duration::from_millis(1500));
        check_with_deletes(&log, 3000, &deleted);
        crash_and_reopen(log, dir.path(), 3000, &deleted);
    }

    /// A log with nothing appended for a second flushes its memtable: an idle hub holds
    /// none in memory.
    #[test]
    fn an_idle_log_flushes_its_memtable() {
        let dir = tempfile::tempdir().unwrap();
        let options = EventLogOptions {
            flush_every: 1_000_000,
            ..small()
        };
        let (mut log, _) = EventLog::open(dir.path(), options).unwrap();
        append(&mut log, 50);
        assert!(log.shared.postings.pending() > 0);
        let started = std::time::Instant::now();
        while log.shared.postings.pending() > 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "never flushed");
            std::thread::sleep(Duration::from_millis(50));
        }
        check(&log.reader(), 50);
    }

    /// Queries while retention deletes and compacts: an event deleted between reading
    /// its posting and reading it is passed over, never an error.
    #[test]
    fn queries_read_on_while_events_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(dir.path(), small()).unwrap();
        for _ in 0..40 {
            append(&mut log, 50);
        }
        let reader = log.reader();
        let stop = Arc::new(AtomicBool::new(false));
        let querying = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut pages = 0;
                while !stop.load(Ordering::Acquire) {
                    for pattern in ["hub.t1.created", "hub.*.created", ">"] {
                        let query = crate::Query {
                            subject: Some(herald_core::Pattern::parse_filter(pattern).unwrap()),
                            since: Some(Timestamp::from_micros(1_000_500)),
                            limit: 100,
                            ..crate::Query::default()
                        };
                        query::run(&reader, &query, 1_000_000).unwrap();
                        pages += 1;
                    }
                }
                pages
            })
        };
        for chunk in (1..=1900).collect::<Vec<Seq>>().chunks(50) {
            log.delete(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::Release);
        assert!(querying.join().unwrap() > 0);
    }

    #[test]
    fn events_out_of_sequence_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(dir.path(), small()).unwrap();
        let refused = log.append(&[event(1), event(3)]);
        assert!(matches!(refused, Err(AppendError::Write(_))), "{refused:?}");
        assert_eq!(log.next_seq(), 1);
        assert_eq!(log.reader().head(), 0);
        append(&mut log, 2);
        check(&log.reader(), 2);
    }

    const WITHDRAW_CHILD_DIR: &str = "HERALD_EVENT_LOG_WITHDRAW_CHILD_DIR";

    /// The child of [`keys_of_a_batch_whose_sync_failed_point_at_nothing_later`], run
    /// with syncs it can make fail (`crate::testing::FailingSync`).
    #[test]
    #[ignore = "the child process of keys_of_a_batch_whose_sync_failed_point_at_nothing_later"]
    fn withdraw_child() {
        let dir = PathBuf::from(std::env::var(WITHDRAW_CHILD_DIR).expect("run by its parent test"));
        let trigger = std::env::var(crate::testing::FailingSync::TRIGGER_VAR).unwrap();
        let options = || EventLogOptions {
            segments: SegmentOptions {
                preallocate: false,
                ..SegmentOptions::default()
            },
            ..EventLogOptions::default()
        };
        // Batches large enough for their keys to be added beside the sync.
        let batch = |first: Seq, subject: &str| -> Vec<Event> {
            (first..first + KEYS_BESIDE_SYNC as Seq)
                .map(|seq| Event {
                    subject: Subject::new(subject).unwrap(),
                    aggregate: None,
                    ..event(seq)
                })
                .collect()
        };
        let failed_from = 1 + KEYS_BESIDE_SYNC as Seq;
        {
            let (mut log, _) = EventLog::open(&dir, options()).unwrap();
            log.append(&batch(1, "hub.kept")).unwrap();
            std::fs::write(&trigger, b"").unwrap();
            assert!(log.append(&batch(failed_from, "hub.failed")).is_err());
            std::fs::remove_file(&trigger).unwrap();
        } // closed: the postings are flushed into a run
        let (mut log, _) = EventLog::open(&dir, options()).unwrap();
        assert_eq!(
            log.next_seq(),
            failed_from,
            "the failed batch is not in the log"
        );
        log.append(&batch(failed_from, "hub.later")).unwrap();
        let reader = log.reader();
        assert_eq!(
            reader
                .seqs(Key::Subject("hub.failed"), 0, usize::MAX)
                .unwrap(),
            Vec::<Seq>::new(),
            "the failed batch's keys point at the events that took its seqs"
        );
        let later = reader
            .seqs(Key::Subject("hub.later"), 0, usize::MAX)
            .unwrap();
        assert_eq!(later.len(), KEYS_BESIDE_SYNC);
        let kept = reader
            .seqs(Key::Subject("hub.kept"), 0, usize::MAX)
            .unwrap();
        assert_eq!(kept.len(), KEYS_BESIDE_SYNC);
    }

    /// A batch whose keys were added while its sync ran, and whose sync failed: its keys
    /// are withdrawn, so after a restart they do not point at the events that take its
    /// seqs. Runs in a child process, whose `fsync` and `fdatasync` a preloaded library
    /// makes fail on demand.
    #[test]
    fn keys_of_a_batch_whose_sync_failed_point_at_nothing_later() {
        crate::testing::FailingSync::run_in_child(
            "event_log::tests::withdraw_child",
            WITHDRAW_CHILD_DIR,
            &[],
        );
    }
}
