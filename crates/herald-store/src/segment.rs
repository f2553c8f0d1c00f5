//! An append-only log of numbered records in segment files: the start of the embedded
//! store's own log (issue 11, step 4). Not yet used by [`crate::EmbeddedStore`].
//!
//! - **Segments**: files named by the seq of their first record
//!   (`00000000000000000001.seg`), each up to [`SegmentOptions::segment_bytes`]. A
//!   sealed segment is synced, and gets a dense index beside it (`.idx`: each record's
//!   byte offset, a `u32` per record, like Iggy's per-message index), so that opening a
//!   large log reads only the active segment and a record is found by its seq with two
//!   positional reads. The active segment's offsets are in memory; a sealed one's stay
//!   on disk, so memory stays flat in the size of the log.
//! - **Records**: `len: u32 | crc: u32 | seq: u64 | body`, little-endian; the CRC-32
//!   covers the seq and the body. A batch is one `write` and one `fdatasync`: seqs are
//!   answered only after it.
//! - **Recovery**: the active segment is scanned at open and cut at the first record
//!   that is short, has a bad CRC or an unexpected seq (a torn write from a crash:
//!   nothing after it was ever acknowledged, since its batch's sync did not return).
//! - **Readers** ([`LogReader`]) read while the writer appends: each segment is opened
//!   once and read with positional reads, and a reader never looks past the last sync.
//! - **Preallocation**: a thread keeps a zero-filled spare segment ready (`next.spare`),
//!   and a roll renames it into place. A sync of a write into blocks that exist is the
//!   cheap kind; one that must also record a file's growth is not (p99 2.2 ms against
//!   0.2 ms on this disk, BENCHMARKS.md). Recovery stops at the zeros as at any end, and
//!   a sealed segment is cut to its records.
//! - **Failures**: a failed write is cut back off the file and nothing of the batch
//!   stays (a full disk can recover); a failed sync is final (fail-stop): the kernel may
//!   have dropped the unsynced pages, so no later sync proves anything, and every later
//!   append is refused; the batch whose sync failed is cut off, so that it does not come
//!   back at the next open either. Reads never return a record past the last sync.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Bytes before each record's body.
const HEADER: u64 = 16;
/// Bytes of one index entry: a record's offset in its segment.
const INDEX_ENTRY: u64 = 4;
/// How much a reader reads from a segment at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Tuning for a [`SegmentLog`].
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// A segment is sealed once a batch would take it past this size (at most 2 GiB - 1:
    /// offsets in a segment are 31 bits).
    pub segment_bytes: u64,
    /// The largest record body accepted (and believed when recovering).
    pub max_record_bytes: u32,
    /// Keep a zero-filled spare segment ready for the next roll.
    pub preallocate: bool,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 16 * 1024 * 1024,
            preallocate: true,
        }
    }
}

/// Why an append stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The write failed (a full disk, say) and was cut off again: nothing of the batch
    /// is stored, and a later append may succeed.
    #[error("cannot write to the log: {0}")]
    Write(io::Error),
    /// A sync failed, now or earlier: the log refuses every append until it is reopened.
    #[error("the log failed to sync ({0}); it refuses writes until Herald restarts")]
    Failed(String),
    /// A record is larger than [`SegmentOptions::max_record_bytes`].
    #[error("a record of {0} bytes is larger than the log accepts")]
    TooLarge(usize),
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub body: Vec<u8>,
}

/// What opening found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Bytes cut off the active segment's tail (a torn write).
    pub truncated_bytes: u64,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Opened once and read with positional reads, so every reader shares it (and the
    /// writer appends to the active segment's through it).
    file: File,
    /// Where each of its records starts. Grows while the segment is active.
    offsets: RwLock<Offsets>,
    /// Bytes of whole, synced records: readers never look past it, so they never meet a
    /// batch that is being written.
    synced_len: AtomicU64,
}

impl Segment {
    fn new(
        first_seq: u64,
        path: PathBuf,
        file: File,
        offsets: Offsets,
        synced_len: u64,
    ) -> Arc<Self> {
        Arc::new(Segment {
            first_seq,
            path,
            file,
            offsets: RwLock::new(offsets),
            synced_len: AtomicU64::new(synced_len),
        })
    }

    /// The bytes of record `seq` (its frame, header included), if this segment holds it
    /// and it is synced.
    fn span(&self, seq: u64) -> io::Result<Option<Range<u64>>> {
        // The synced length first: an index entry is added before the length that covers
        // it is published, so every record below this length has its entry and the next
        // one's (or ends at this length).
        let synced = self.synced_len.load(Ordering::Acquire);
        let Some(i) = seq.checked_sub(self.first_seq) else {
            return Ok(None);
        };
        let offsets = self.offsets.read().expect("offsets lock");
        let Some((entry, next)) = offsets.get(i)? else {
            return Ok(None);
        };
        let start = entry.start;
        let end = next.unwrap_or(synced);
        if end > synced || entry.removed {
            // Not synced yet, or removed by a compaction.
            return Ok(None);
        }
        if end < start + HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("damaged index for seq {seq} in {}", self.path.display()),
            ));
        }
        Ok(Some(start..end))
    }
}

impl Segment {
    /// Where record `seq` starts (or would: a removed record's next one), if this
    /// segment has a place for it.
    fn start_of(&self, seq: u64) -> io::Result<Option<u64>> {
        let Some(i) = seq.checked_sub(self.first_seq) else {
            return Ok(None);
        };
        let offsets = self.offsets.read().expect("offsets lock");
        Ok(offsets.get(i)?.map(|(entry, _)| entry.start))
    }
}

/// A segment's record offsets: `offsets[i]` is where record `first_seq + i` starts; a
/// record a compaction removed starts where the next one does (an empty span).
enum Offsets {
    /// The active segment's (and a sealed one's whose index could not be written).
    Memory(Vec<u32>),
    /// A sealed segment's `.idx` file, opened once and read with positional reads.
    File { file: File, records: u64 },
}

impl Offsets {
    fn len(&self) -> u64 {
        match self {
            Offsets::Memory(offsets) => offsets.len() as u64,
            Offsets::File { records, .. } => *records,
        }
    }

    /// Record `i`'s entry, and the next one's start (if there is a next one).
    fn get(&self, i: u64) -> io::Result<Option<(Entry, Option<u64>)>> {
        if i >= self.len() {
            return Ok(None);
        }
        let (entry, next) = match self {
            Offsets::Memory(offsets) => {
                let i = i as usize;
                (offsets[i], offsets.get(i + 1).copied())
            }
            Offsets::File { file, records } => {
                let mut entries = [0u8; 2 * INDEX_ENTRY as usize];
                let n = if i + 1 < *records { 2 } else { 1 };
                file.read_exact_at(&mut entries[..n * INDEX_ENTRY as usize], i * INDEX_ENTRY)?;
                let entry = |k: usize| {
                    u32::from_le_bytes(entries[4 * k..4 * k + 4].try_into().expect("4 bytes"))
                };
                (entry(0), (n == 2).then(|| entry(1)))
            }
        };
        Ok(Some((
            Entry::from(entry),
            next.map(|n| Entry::from(n).start),
        )))
    }
}

/// Zeros kept written ahead of the active segment's records (see
/// [`SegmentLog::zero_ahead`]).
const ZERO_AHEAD: u64 = 1 << 20;

/// The top bit of an index entry marks a record a compaction removed (offsets stay
/// below it: segments are at most [`MAX_SEGMENT_BYTES`]).
const REMOVED: u32 = 1 << 31;
const MAX_SEGMENT_BYTES: u64 = REMOVED as u64 - 1;

/// One index entry: where a record starts (a removed one: where the next one does).
#[derive(Clone, Copy)]
struct Entry {
    start: u64,
    removed: bool,
}

impl From<u32> for Entry {
    fn from(raw: u32) -> Self {
        Entry {
            start: u64::from(raw & !REMOVED),
            removed: raw & REMOVED != 0,
        }
    }
}

/// What the writer and every [`LogReader`] share.
struct Shared {
    options: SegmentOptions,
    dir: PathBuf,
    /// In seq order; the last one is the active segment.
    segments: RwLock<Vec<Arc<Segment>>>,
    /// The last seq whose batch was synced: reads stop there.
    durable_seq: AtomicU64,
    /// Held while sealed segments are rewritten or removed, one change at a time.
    reshaping: std::sync::Mutex<()>,
}

/// The log's writer. One writer: `append` takes `&mut self`; any number of
/// [`LogReader`]s read at the same time.
pub struct SegmentLog {
    dir: PathBuf,
    shared: Arc<Shared>,
    active: Arc<Segment>,
    active_len: u64,
    /// The active segment's file length: past `active_len`, zeros written ahead.
    allocated: u64,
    next_seq: u64,
    failed: Option<String>,
    /// Asks the preparer thread for a spare segment (dropped: it stops).
    prepare: Option<std::sync::mpsc::SyncSender<()>>,
    /// Whether the active segment's spare was asked for: once it is half full, so a
    /// log that stays small never writes one (64 MiB of zeros at every start).
    spare_asked: bool,
}

/// Reads the log while its writer appends: cheap to clone, `Send` and `Sync`.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl SegmentLog {
    /// Opens the log in `dir` (creating it), cutting a torn tail off the active segment.
    pub fn open(dir: impl AsRef<Path>, options: SegmentOptions) -> io::Result<(Self, Recovered)> {
        let dir = dir.as_ref().to_path_buf();
        let options = SegmentOptions {
            segment_bytes: options.segment_bytes.min(MAX_SEGMENT_BYTES),
            ..options
        };
        std::fs::create_dir_all(&dir)?;
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".seg.new") || name.ends_with(".idx.new") {
                // A compaction's copy that a crash left unfinished.
                std::fs::remove_file(dir.join(name))?;
                continue;
            }
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        if firsts.is_empty() {
            firsts.push(1);
            File::create(segment_path(&dir, 1))?;
            sync_dir(&dir)?;
        }
        let last = firsts.len() - 1;
        let mut segments = Vec::with_capacity(firsts.len());
        for &first_seq in &firsts[..last] {
            let path = segment_path(&dir, first_seq);
            let file = File::open(&path)?;
            let mut len = file.metadata()?.len();
            let offsets = match open_index(&path, &file, len, first_seq, &options) {
                Some(offsets) => offsets,
                None => {
                    // Also a segment whose cut to its records was lost: reads stop at
                    // its last whole record.
                    let scanned = scan(&path, first_seq, &options, Gaps::Compacted)?;
                    len = scanned.valid_len;
                    sealed_offsets(&path, scanned.offsets)
                }
            };
            segments.push(Segment::new(first_seq, path, file, offsets, len));
        }

        // The active segment: keep its whole records, cut what follows them.
        let first_seq = firsts[last];
        let active_path = segment_path(&dir, first_seq);
        let scanned = scan(&active_path, first_seq, &options, Gaps::Refused)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active_path)?;
        let on_disk = file.metadata()?.len();
        let mut recovered = Recovered::default();
        if on_disk > scanned.valid_len {
            // Zeros are a spare's preallocation, not a torn write: cut without a word.
            let torn = !all_zero(&file, scanned.valid_len, on_disk)?;
            file.set_len(scanned.valid_len)?;
            file.sync_data()?;
            if torn {
                recovered.truncated_bytes = on_disk - scanned.valid_len;
                tracing::warn!(
                    segment = %active_path.display(),
                    cut = recovered.truncated_bytes,
                    "Cut a torn write off the log's tail."
                );
            }
        }
        let active = Segment::new(
            first_seq,
            active_path,
            file,
            Offsets::Memory(scanned.offsets),
            scanned.valid_len,
        );
        segments.push(active.clone());
        let next_seq = scanned.next_seq;
        let shared = Arc::new(Shared {
            options,
            dir: dir.clone(),
            segments: RwLock::new(segments),
            durable_seq: AtomicU64::new(next_seq - 1),
            reshaping: std::sync::Mutex::new(()),
        });
        let _ = std::fs::remove_file(spare_path(&dir).with_extension("tmp"));
        let prepare = if shared.options.preallocate {
            let (prepare, asked) = std::sync::mpsc::sync_channel(1);
            let (dir, bytes) = (dir.clone(), shared.options.segment_bytes);
            std::thread::Builder::new()
                .name("herald-log-spare".into())
                .spawn(move || {
                    while asked.recv().is_ok() {
                        if let Err(error) = prepare_spare(&dir, bytes) {
                            tracing::warn!(%error, "Cannot prepare the log's next segment; it will grow as it is written.");
                        }
                    }
                })?;
            Some(prepare)
        } else {
            None
        };
        Ok((
            SegmentLog {
                dir,
                shared,
                active,
                active_len: scanned.valid_len,
                allocated: scanned.valid_len,
                next_seq,
                failed: None,
                prepare,
                spare_asked: false,
            },
            recovered,
        ))
    }

    /// Makes `dir` a log whose first seq is `first_seq` (an empty one starts at 1):
    /// for a log that takes over seqs given elsewhere. `dir` must hold no segment.
    pub fn start_at(dir: impl AsRef<Path>, first_seq: u64) -> io::Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            if entry?.file_name().to_string_lossy().ends_with(".seg") {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} holds a log already", dir.display()),
                ));
            }
        }
        File::create(segment_path(dir, first_seq.max(1)))?.sync_all()?;
        sync_dir(dir)
    }

    /// The seqs of each sealed segment, oldest first (`first..next segment's first`).
    pub fn sealed(&self) -> Vec<Range<u64>> {
        self.reader().sealed()
    }

    /// Removes the oldest sealed segments whose records all have seqs at or below
    /// `through` (retention deleted them all): readers stop seeing them at once, then
    /// their files are deleted. The active segment stays. The log's first seq after.
    pub fn remove_through(&mut self, through: u64) -> io::Result<u64> {
        let _reshaping = self.shared.reshaping.lock().expect("reshaping lock");
        let removed: Vec<Arc<Segment>> = {
            let mut segments = self.shared.segments.write().expect("segments lock");
            let keep_from = segments
                .windows(2)
                .take_while(|pair| pair[1].first_seq <= through.saturating_add(1))
                .count();
            segments.drain(..keep_from).collect()
        };
        for segment in &removed {
            std::fs::remove_file(&segment.path)?;
            match std::fs::remove_file(index_path(&segment.path)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(self.reader().first_seq())
    }

    /// Writes zeros past `end` (up to [`ZERO_AHEAD`], within the segment's size), synced
    /// with the batch before them: the next batches then write into blocks the file has,
    /// so their `fdatasync` changes no size (a sync that grows a file also writes its
    /// metadata: 0.8 ms against 0.2 ms here). A failure costs only that: the file is cut
    /// back to the records.
    fn zero_ahead(&mut self, end: u64) {
        let target = (end + ZERO_AHEAD).min(self.shared.options.segment_bytes.max(end));
        if target <= self.allocated {
            return;
        }
        // From one static page of zeros: no buffer of a MiB left with the allocator.
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let file = &self.active.file;
        let mut written = Ok(());
        let mut at = self.allocated;
        while at < target && written.is_ok() {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            written = file.write_all_at(&ZEROS[..n], at);
            at += n as u64;
        }
        match written {
            Ok(()) => self.allocated = target,
            Err(error) => {
                tracing::debug!(%error, "Cannot write zeros ahead of the log's records.");
                if file.set_len(end).is_ok() {
                    self.allocated = end;
                }
            }
        }
    }

    /// Seals the active segment now (when it holds records), so it can be compacted.
    pub fn seal_active(&mut self) -> Result<(), AppendError> {
        if self.active_len == 0 {
            return Ok(());
        }
        if let Some(reason) = &self.failed {
            return Err(AppendError::Failed(reason.clone()));
        }
        self.roll()
    }

    /// The active segment's seqs (`first..next`).
    pub fn active_seqs(&self) -> Range<u64> {
        self.active.first_seq..self.next_seq
    }

    /// A handle that compacts sealed segments from another thread.
    pub fn compactor(&self) -> Compactor {
        Compactor {
            shared: self.shared.clone(),
        }
    }

    /// A reader of this log, for other threads.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    /// The seq the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last seq on disk (0 when empty).
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// Appends `bodies` as one batch: one write, one sync. Their seqs, once on disk.
    pub fn append<B: AsRef<[u8]>>(&mut self, bodies: &[B]) -> Result<Range<u64>, AppendError> {
        if let Some(reason) = &self.failed {
            return Err(AppendError::Failed(reason.clone()));
        }
        let first = self.next_seq;
        if bodies.is_empty() {
            return Ok(first..first);
        }
        let max_record = self.shared.options.max_record_bytes as usize;
        let mut frames = Vec::with_capacity(
            bodies
                .iter()
                .map(|b| b.as_ref().len() + HEADER as usize)
                .sum(),
        );
        for (i, body) in bodies.iter().enumerate() {
            let body = body.as_ref();
            if body.len() > max_record {
                return Err(AppendError::TooLarge(body.len()));
            }
            encode(&mut frames, first + i as u64, body);
        }
        // Offsets in a segment are 31 bits: a batch that opens a segment must fit them.
        if frames.len() as u64 > MAX_SEGMENT_BYTES {
            return Err(AppendError::TooLarge(frames.len()));
        }
        if self.active_len > 0
            && self.active_len + frames.len() as u64 > self.shared.options.segment_bytes
        {
            self.roll()?;
        }

        let start = self.active_len;
        let file = &self.active.file;
        if let Err(error) = file.write_all_at(&frames, start) {
            // Cut the partial write back off, so nothing of the batch stays.
            if let Err(cut) = file.set_len(start) {
                self.failed = Some(format!("{error}; cutting it back failed: {cut}"));
            }
            self.allocated = start;
            return Err(AppendError::Write(error));
        }
        let end = start + frames.len() as u64;
        self.allocated = self.allocated.max(end);
        if self.shared.options.preallocate && end + ZERO_AHEAD / 2 > self.allocated {
            self.zero_ahead(end);
        }
        let file = &self.active.file;
        if let Err(error) = file.sync_data() {
            // Never acknowledged, so it must not come back at the next open either:
            // cut it off (which needs no sync to hold while the machine stays up).
            self.failed = Some(match file.set_len(start) {
                Ok(()) => error.to_string(),
                Err(cut) => format!("{error}; cutting the batch back off failed: {cut}"),
            });
            return Err(AppendError::Failed(error.to_string()));
        }
        self.index_batch(start, bodies);
        self.active_len += frames.len() as u64;
        self.next_seq = first + bodies.len() as u64;
        // The bytes first, then the seq: a reader that sees the seq sees its bytes.
        self.active
            .synced_len
            .store(self.active_len, Ordering::Release);
        self.shared
            .durable_seq
            .store(self.next_seq - 1, Ordering::Release);
        if !self.spare_asked && self.active_len >= self.shared.options.segment_bytes / 2 {
            if let Some(prepare) = &self.prepare {
                self.spare_asked = prepare.try_send(()).is_ok();
            }
        }
        Ok(first..self.next_seq)
    }

    /// Up to `max` records from `from_seq` on (never past the last sync), in seq order.
    pub fn read(&self, from_seq: u64, max: usize) -> io::Result<Vec<Record>> {
        self.reader().read(from_seq, max)
    }

    /// The record with this seq, if it is synced: one read of its index entries and one
    /// of its bytes.
    pub fn read_one(&self, seq: u64) -> io::Result<Option<Record>> {
        self.reader().read_one(seq)
    }

    /// Adds the index entries of a batch written at `start`.
    fn index_batch<B: AsRef<[u8]>>(&mut self, start: u64, bodies: &[B]) {
        let mut offsets = self.active.offsets.write().expect("offsets lock");
        let Offsets::Memory(offsets) = &mut *offsets else {
            unreachable!("the active segment's offsets are in memory");
        };
        let mut offset = start;
        for body in bodies {
            // Fits in 31 bits: the batch ends within `segment_bytes`, or it opened the
            // segment and is itself at most `MAX_SEGMENT_BYTES`.
            offsets.push(offset as u32);
            offset += HEADER + body.as_ref().len() as u64;
        }
    }

    /// Seals the active segment (synced, with its index beside it) and starts the next.
    /// A failed write leaves the log as it was (the next append tries again); a failed
    /// sync is final, like a batch's.
    fn roll(&mut self) -> Result<(), AppendError> {
        // A preallocated segment is cut to its records first (a sync covers the size).
        let file = &self.active.file;
        if file.metadata().map_err(AppendError::Write)?.len() > self.active_len {
            file.set_len(self.active_len).map_err(AppendError::Write)?;
        }
        self.synced(|log| log.active.file.sync_data())?;
        let index = {
            let offsets = self.active.offsets.read().expect("offsets lock");
            let Offsets::Memory(offsets) = &*offsets else {
                unreachable!("the active segment's offsets are in memory");
            };
            write_index(&index_path(&self.active.path), offsets).map_err(AppendError::Write)?
        };
        self.synced(|_| index.sync_data())?;
        // Sealed: its offsets are read from the file from now on, not kept in memory.
        let records = self.active.offsets.read().expect("offsets lock").len();
        *self.active.offsets.write().expect("offsets lock") = Offsets::File {
            file: index,
            records,
        };
        // No record has the next seq yet, so a file of that name can only be an empty
        // (or zero-filled) one left by a roll that failed after creating it. The spare,
        // when one is ready, becomes it.
        let path = segment_path(&self.dir, self.next_seq);
        let spare = self.prepare.is_some() && std::fs::rename(spare_path(&self.dir), &path).is_ok();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!spare)
            .open(&path)
            .map_err(AppendError::Write)?;
        self.synced(|log| sync_dir(&log.dir))?;
        self.spare_asked = false;
        let active = Segment::new(self.next_seq, path, file, Offsets::Memory(Vec::new()), 0);
        self.shared
            .segments
            .write()
            .expect("segments lock")
            .push(active.clone());
        self.allocated = if spare {
            active.file.metadata().map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        self.active = active;
        self.active_len = 0;
        Ok(())
    }

    /// Runs a sync; if it fails, the log refuses every append from then on.
    fn synced(&mut self, sync: impl FnOnce(&Self) -> io::Result<()>) -> Result<(), AppendError> {
        sync(self).map_err(|error| {
            self.failed = Some(error.to_string());
            AppendError::Failed(error.to_string())
        })
    }
}

impl LogReader {
    /// The seqs of each sealed segment, oldest first (`first..next segment's first`).
    pub fn sealed(&self) -> Vec<Range<u64>> {
        let segments = self.shared.segments.read().expect("segments lock");
        segments
            .windows(2)
            .map(|pair| pair[0].first_seq..pair[1].first_seq)
            .collect()
    }

    /// The last seq a read can return (0 when empty).
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// The seq of the log's first record (its oldest segment's first seq).
    pub fn first_seq(&self) -> u64 {
        self.shared.segments.read().expect("segments lock")[0].first_seq
    }

    /// Up to `max` records from `from_seq` on (never past the last sync), in seq order.
    pub fn read(&self, from_seq: u64, max: usize) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        let from_seq = from_seq.max(1);
        let durable_seq = self.durable_seq();
        if max == 0 || from_seq > durable_seq {
            return Ok(out);
        }
        let segments: Vec<Arc<Segment>> = {
            let all = self.shared.segments.read().expect("segments lock");
            let first = all
                .partition_point(|s| s.first_seq <= from_seq)
                .saturating_sub(1);
            all[first..].to_vec()
        };
        let options = &self.shared.options;
        for segment in &segments {
            if segment.first_seq > durable_seq {
                break;
            }
            let end = segment.synced_len.load(Ordering::Acquire);
            let offset = if from_seq <= segment.first_seq {
                0
            } else {
                match segment.start_of(from_seq)? {
                    Some(start) if start <= end => start,
                    _ => continue,
                }
            };
            let mut reader = Positional::new(&segment.file, offset, end);
            let mut position = offset;
            loop {
                let Some((seq, body)) = read_record(&mut reader, options)? else {
                    // Recovery cut every torn tail, and nothing past the last sync is
                    // read: a bad record before the end is damage to synced data, not
                    // the end of the log.
                    if position < end {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "damaged record at byte {position} of {}",
                                segment.path.display()
                            ),
                        ));
                    }
                    break;
                };
                position += HEADER + body.len() as u64;
                if seq > durable_seq {
                    return Ok(out);
                }
                if seq >= from_seq {
                    out.push(Record { seq, body });
                    if out.len() == max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The record with this seq, if it is synced: one read of its index entries and one
    /// of its bytes. Damage (a bad CRC, another seq) is an error naming the seq.
    pub fn read_one(&self, seq: u64) -> io::Result<Option<Record>> {
        if seq == 0 || seq > self.durable_seq() {
            return Ok(None);
        }
        let segment = {
            let all = self.shared.segments.read().expect("segments lock");
            let at = all.partition_point(|s| s.first_seq <= seq);
            match at.checked_sub(1) {
                Some(i) => all[i].clone(),
                None => return Ok(None),
            }
        };
        let Some(span) = segment.span(seq)? else {
            return Ok(None);
        };
        let mut frame = vec![0u8; (span.end - span.start) as usize];
        segment.file.read_exact_at(&mut frame, span.start)?;
        match read_record(&mut frame.as_slice(), &self.shared.options)? {
            Some((found, body))
                if found == seq && HEADER + body.len() as u64 == span.end - span.start =>
            {
                Ok(Some(Record { seq, body }))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "damaged record for seq {seq} at byte {} of {}",
                    span.start,
                    segment.path.display()
                ),
            )),
        }
    }
}

/// Buffered positional reads of a shared file, up to `end`: no seek, so any number of
/// readers use one open file.
struct Positional<'a> {
    file: &'a File,
    position: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
}

impl<'a> Positional<'a> {
    fn new(file: &'a File, position: u64, end: u64) -> Self {
        Positional {
            file,
            position,
            end,
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Positional<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            let left = self.end.saturating_sub(self.position);
            if left == 0 {
                return Ok(0);
            }
            let want = (READ_CHUNK as u64).min(left) as usize;
            self.buf.resize(want, 0);
            let n = self.file.read_at(&mut self.buf, self.position)?;
            self.buf.truncate(n);
            self.at = 0;
            self.position += n as u64;
            if n == 0 {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Drop for SegmentLog {
    /// Cuts the zeros written ahead: a log closed cleanly ends at its last record.
    fn drop(&mut self) {
        if self.failed.is_none() && self.allocated > self.active_len {
            let _ = self.active.file.set_len(self.active_len);
        }
    }
}

/// Rewrites sealed segments without the records they no longer need, giving the space
/// back (retention's deletes). Runs beside the writer and the readers: a sealed segment
/// never changes otherwise, and readers holding the old one read on from its open file.
#[derive(Clone)]
pub struct Compactor {
    shared: Arc<Shared>,
}

impl Compactor {
    /// Rewrites the sealed segment starting at `first_seq` with only the records `keep`
    /// accepts: written aside with its index, synced, renamed over the old one. The
    /// others' seqs read as absent from then on. How many records it holds now; `None`
    /// when no sealed segment starts there.
    ///
    /// The copy is written without the reshaping lock, which the writer takes to remove
    /// segments (under the append lock): only the renames and the swap hold it, so a
    /// compaction never holds up an append for longer than they take.
    pub fn compact(&self, first_seq: u64, keep: impl Fn(u64) -> bool) -> io::Result<Option<u64>> {
        let segment = {
            let segments = self.shared.segments.read().expect("segments lock");
            let sealed = &segments[..segments.len() - 1];
            match sealed.iter().find(|s| s.first_seq == first_seq) {
                Some(segment) => segment.clone(),
                None => return Ok(None),
            }
        };
        let options = &self.shared.options;
        let records = segment.offsets.read().expect("offsets lock").len();
        let end = segment.synced_len.load(Ordering::Acquire);
        let aside = segment.path.with_extension("seg.new");
        let index_aside = segment.path.with_extension("idx.new");
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, File::create(&aside)?);
        let mut offsets = Vec::with_capacity(records as usize);
        let (mut written, mut kept, mut next) = (0u64, 0u64, first_seq);
        let mut reader = Positional::new(&segment.file, 0, end);
        let mut frame = Vec::new();
        let mut position = 0u64;
        while let Some((seq, body)) = read_record(&mut reader, options)? {
            position += HEADER + body.len() as u64;
            // Records removed before: their place is where the next one starts.
            while next < seq {
                offsets.push(written as u32 | REMOVED);
                next += 1;
            }
            next = seq + 1;
            if keep(seq) {
                offsets.push(written as u32);
                frame.clear();
                encode(&mut frame, seq, &body);
                out.write_all(&frame)?;
                written += frame.len() as u64;
                kept += 1;
            } else {
                offsets.push(written as u32 | REMOVED);
            }
        }
        if position < end {
            let _ = std::fs::remove_file(&aside);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "damaged record at byte {position} of {}",
                    segment.path.display()
                ),
            ));
        }
        while next < first_seq + records {
            offsets.push(written as u32 | REMOVED);
            next += 1;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        write_index(&index_aside, &offsets)?.sync_all()?;
        let _reshaping = self.shared.reshaping.lock().expect("reshaping lock");
        let still_there = self
            .shared
            .segments
            .read()
            .expect("segments lock")
            .iter()
            .any(|s| Arc::ptr_eq(s, &segment));
        if !still_there {
            // Removed whole meanwhile: the copy is not needed.
            let _ = std::fs::remove_file(&aside);
            let _ = std::fs::remove_file(&index_aside);
            return Ok(None);
        }
        // The segment first: a crash before the index's rename leaves an index that does
        // not fit it, which the next open rebuilds by a scan.
        std::fs::rename(&aside, &segment.path)?;
        std::fs::rename(&index_aside, index_path(&segment.path))?;
        sync_dir(&self.shared.dir)?;
        let file = File::open(&segment.path)?;
        let index = File::open(index_path(&segment.path))?;
        let compacted = Segment::new(
            first_seq,
            segment.path.clone(),
            file,
            Offsets::File {
                file: index,
                records,
            },
            written,
        );
        let mut segments = self.shared.segments.write().expect("segments lock");
        if let Some(slot) = segments.iter_mut().find(|s| s.first_seq == first_seq) {
            *slot = compacted;
        }
        Ok(Some(kept))
    }
}

fn spare_path(dir: &Path) -> PathBuf {
    dir.join("next.spare")
}

/// Writes a zero-filled segment of `bytes` as `next.spare`, unless one is there: aside,
/// synced, then renamed, so a spare is always whole. A failure leaves nothing behind.
fn prepare_spare(dir: &Path, bytes: u64) -> io::Result<()> {
    let spare = spare_path(dir);
    if spare.exists() {
        return Ok(());
    }
    let aside = spare.with_extension("tmp");
    let written = (|| {
        let file = File::create(&aside)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < bytes {
            let n = (bytes - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
            // A MiB at a time: one sync of the whole spare held the disk for ~30 ms,
            // and the commits' syncs waited behind it.
            file.sync_data()?;
        }
        file.sync_all()?;
        std::fs::rename(&aside, &spare)?;
        sync_dir(dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&aside);
    }
    written
}

/// Whether `file` holds only zeros from `from` to `to`.
fn all_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

fn index_path(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn crc(seq: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

fn encode(out: &mut Vec<u8>, seq: u64, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(seq, body).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
}

/// The next whole, valid record, or `None` at the end or at a torn or corrupt one.
fn read_record(
    reader: &mut impl Read,
    options: &SegmentOptions,
) -> io::Result<Option<(u64, Vec<u8>)>> {
    let mut header = [0u8; HEADER as usize];
    if !read_full(reader, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sum = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if len > options.max_record_bytes {
        return Ok(None);
    }
    let mut body = vec![0u8; len as usize];
    if !read_full(reader, &mut body)? || crc(seq, &body) != sum {
        return Ok(None);
    }
    Ok(Some((seq, body)))
}

/// Fills `buf`; false if the input ended first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

struct Scanned {
    valid_len: u64,
    next_seq: u64,
    offsets: Vec<u32>,
}

/// Whether a scan takes a record past the next seq: a sealed segment that was compacted
/// lacks the records it removed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gaps {
    Compacted,
    Refused,
}

/// Reads a segment from its start: where its whole records with the expected seqs end,
/// and where each starts (a removed record starts where the next one does).
fn scan(path: &Path, first_seq: u64, options: &SegmentOptions, gaps: Gaps) -> io::Result<Scanned> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let (mut offset, mut next_seq, mut offsets) = (0u64, first_seq, Vec::new());
    while let Some((seq, body)) = read_record(&mut reader, options)? {
        if offset > MAX_SEGMENT_BYTES {
            break;
        }
        let start = offset as u32;
        if seq < next_seq || (seq > next_seq && gaps == Gaps::Refused) {
            break;
        }
        while next_seq < seq {
            offsets.push(start | REMOVED);
            next_seq += 1;
        }
        offsets.push(start);
        offset += HEADER + body.len() as u64;
        next_seq += 1;
    }
    Ok(Scanned {
        valid_len: offset,
        next_seq,
        offsets,
    })
}

/// Writes an index file; the caller syncs it.
fn write_index(path: &Path, offsets: &[u32]) -> io::Result<File> {
    let bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(&bytes)?;
    Ok(file)
}

/// A sealed segment's index, if it describes the segment: whole entries, the first at
/// 0, and the last at a record with the last seq that ends the file. Checked with two
/// reads, not by reading it all, so opening a large log stays quick; an entry damaged
/// in between makes that one read an error (the record's seq and CRC are checked).
fn open_index(
    segment: &Path,
    segment_file: &File,
    segment_len: u64,
    first_seq: u64,
    options: &SegmentOptions,
) -> Option<Offsets> {
    let file = OpenOptions::new()
        .read(true)
        .open(index_path(segment))
        .ok()?;
    let len = file.metadata().ok()?.len();
    if len == 0 || len % INDEX_ENTRY != 0 {
        return None;
    }
    let records = len / INDEX_ENTRY;
    let offsets = Offsets::File { file, records };
    let first = offsets.get(0).ok()??.0.start;
    let last = offsets.get(records - 1).ok()??.0.start;
    let mut reader = Positional::new(segment_file, last, segment_len);
    let (seq, body) = read_record(&mut reader, options).ok()??;
    let whole = first == 0
        && seq == first_seq + records - 1
        && last + HEADER + body.len() as u64 == segment_len;
    whole.then_some(offsets)
}

/// A sealed segment's offsets from a scan, written as its index (kept in memory if the
/// index cannot be written: the log still opens on a full disk).
fn sealed_offsets(segment: &Path, offsets: Vec<u32>) -> Offsets {
    let records = offsets.len() as u64;
    match write_index(&index_path(segment), &offsets).and_then(|file| {
        file.sync_data()?;
        Ok(file)
    }) {
        Ok(file) => Offsets::File { file, records },
        Err(error) => {
            tracing::warn!(segment = %segment.display(), %error, "Cannot rewrite a segment's index; keeping it in memory.");
            Offsets::Memory(offsets)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SegmentOptions {
        SegmentOptions {
            segment_bytes: 4096,
            max_record_bytes: 1024 * 1024,
            preallocate: true,
        }
    }

    fn body(seq: u64) -> Vec<u8> {
        format!(
            "{{\"n\":{seq},\"pad\":\"{}\"}}",
            "x".repeat((seq % 97) as usize)
        )
        .into_bytes()
    }

    fn fill(log: &mut SegmentLog, batches: u64, per: u64) {
        for _ in 0..batches {
            let first = log.next_seq();
            let bodies: Vec<Vec<u8>> = (first..first + per).map(body).collect();
            let seqs = log.append(&bodies).unwrap();
            assert_eq!(seqs, first..first + per);
        }
    }

    fn assert_reads_back(log: &SegmentLog, from: u64, through: u64) {
        let records = log.read(from, usize::MAX).unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (from..=through).collect::<Vec<_>>());
        for record in records {
            assert_eq!(record.body, body(record.seq), "record {}", record.seq);
        }
        for seq in from..=through {
            let record = log
                .read_one(seq)
                .unwrap()
                .expect("every synced seq is found");
            assert_eq!(
                (record.seq, record.body),
                (seq, body(seq)),
                "read_one({seq})"
            );
        }
        assert_eq!(log.read_one(0).unwrap(), None);
        assert_eq!(log.read_one(log.durable_seq() + 1).unwrap(), None);
    }

    fn active_segment(dir: &Path) -> PathBuf {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segments.sort();
        segments.pop().unwrap()
    }

    /// Compacting a sealed segment keeps what it is told to, in place: the others read
    /// as absent (one by one and in a read across it), its file shrinks, and the same
    /// holds after a reopen, after one with its index lost (rebuilt by a scan over the
    /// gaps), and after a crash that left a copy aside.
    #[test]
    fn a_compacted_segment_keeps_only_what_it_is_told_to() {
        let dir = tempfile::tempdir().unwrap();
        let options = SegmentOptions {
            preallocate: false,
            ..small()
        };
        let (mut log, _) = SegmentLog::open(dir.path(), options.clone()).unwrap();
        fill(&mut log, 60, 3);
        let sealed = log.sealed();
        assert!(sealed.len() >= 3, "{sealed:?}");
        let target = sealed[1].clone();
        let path = segment_path(dir.path(), target.start);
        let before = std::fs::metadata(&path).unwrap().len();
        // Keep every third record, and never the segment's first or last.
        let keep = |seq: u64| seq.is_multiple_of(3) && seq != target.start && seq != target.end - 1;
        let kept = log
            .compactor()
            .compact(target.start, keep)
            .unwrap()
            .unwrap();
        assert_eq!(kept, target.clone().filter(|&s| keep(s)).count() as u64);
        assert!(std::fs::metadata(&path).unwrap().len() < before / 2);
        assert_eq!(log.compactor().compact(log.next_seq(), keep).unwrap(), None);

        let through = log.next_seq() - 1;
        let expected: Vec<u64> = (1..=through)
            .filter(|s| !target.contains(s) || keep(*s))
            .collect();
        let check = |log: &SegmentLog| {
            let seqs: Vec<u64> = log
                .read(1, usize::MAX)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect();
            assert_eq!(seqs, expected);
            for seq in 1..=through {
                let found = log.read_one(seq).unwrap();
                assert_eq!(found.is_some(), expected.contains(&seq), "seq {seq}");
                if let Some(record) = found {
                    assert_eq!(record.body, body(seq));
                }
                // A read from any seq starts at the first kept one at or after it.
                let first = log.read(seq, 1).unwrap();
                assert_eq!(
                    first.first().map(|r| r.seq),
                    expected.iter().copied().find(|&s| s >= seq),
                    "read from {seq}"
                );
            }
        };
        check(&log);
        drop(log);
        let (log, _) = SegmentLog::open(dir.path(), options.clone()).unwrap();
        check(&log);
        drop(log);
        std::fs::remove_file(index_path(&path)).unwrap();
        std::fs::write(path.with_extension("seg.new"), b"a copy cut short").unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), options).unwrap();
        assert!(!path.with_extension("seg.new").exists());
        check(&log);
        // And the log goes on.
        fill(&mut log, 1, 1);
        assert_eq!(
            log.read_one(through + 1).unwrap().unwrap().body,
            body(through + 1)
        );
    }

    /// Removing the oldest segments: their records are gone for readers at once and
    /// after a reopen; the rest read back; the active segment always stays.
    #[test]
    fn the_oldest_segments_are_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        fill(&mut log, 40, 7);
        let sealed = log.sealed();
        assert!(sealed.len() >= 4, "{sealed:?}");
        // Through the middle of the third segment: the first two go.
        let through = sealed[2].start + 1;
        assert_eq!(log.remove_through(through).unwrap(), sealed[2].start);
        assert!(!segment_path(dir.path(), 1).exists());
        assert!(!index_path(&segment_path(dir.path(), 1)).exists());
        assert_eq!(log.read_one(sealed[1].start).unwrap(), None);
        assert_eq!(log.read(1, 1).unwrap()[0].seq, sealed[2].start);
        assert_reads_back(&log, sealed[2].start, 280);
        drop(log);
        let (mut log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        assert_eq!(log.reader().first_seq(), sealed[2].start);
        assert_reads_back(&log, sealed[2].start, 280);
        // Everything: all but the active segment.
        log.remove_through(u64::MAX - 1).unwrap();
        assert!(log.sealed().is_empty());
        let active_first = log.reader().first_seq();
        assert_reads_back(&log, active_first, 280);
        fill(&mut log, 1, 3);
        assert_reads_back(&log, active_first, 283);
    }

    #[test]
    fn records_read_back_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, recovered) = SegmentLog::open(dir.path(), small()).unwrap();
        assert_eq!(recovered, Recovered::default());
        assert_eq!(log.durable_seq(), 0);
        assert!(log.read(1, 10).unwrap().is_empty());
        fill(&mut log, 40, 7);
        assert!(
            active_segment(dir.path()) > segment_path(dir.path(), 1),
            "it rolled"
        );
        assert_reads_back(&log, 1, 280);
        assert_reads_back(&log, 137, 280);
        assert_eq!(log.read(100, 3).unwrap().len(), 3);
        drop(log);

        let (mut log, recovered) = SegmentLog::open(dir.path(), small()).unwrap();
        assert_eq!(recovered.truncated_bytes, 0);
        assert_eq!(log.next_seq(), 281);
        assert_reads_back(&log, 1, 280);
        fill(&mut log, 1, 5);
        assert_reads_back(&log, 250, 285);
    }

    /// Readers on other threads while the writer appends and rolls: every read is a
    /// gap-free run of whole records from its start, never past the last sync, and
    /// never an error from meeting a batch that is being written.
    #[test]
    fn readers_on_other_threads_see_whole_synced_records_while_the_writer_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2u64)
            .map(|r| {
                let reader = log.reader();
                let done = done.clone();
                std::thread::spawn(move || {
                    let (mut reads, mut last_seen) = (0u64, 0u64);
                    while !done.load(Ordering::Acquire) {
                        let durable_before = reader.durable_seq();
                        let from = 1 + (reads * 13 + r) % durable_before.max(1);
                        let records = reader.read(from, usize::MAX).unwrap();
                        let through = records.last().map_or(from - 1, |r| r.seq);
                        assert!(through >= durable_before, "a read stopped short");
                        assert!(through >= last_seen, "the log went back");
                        for (record, seq) in records.iter().zip(from..) {
                            assert_eq!(record.seq, seq);
                            assert_eq!(record.body, body(seq), "record {seq}");
                        }
                        let one = reader.read_one(durable_before).unwrap();
                        if durable_before > 0 {
                            let one = one.expect("a synced seq is found");
                            assert_eq!(one.body, body(durable_before), "read_one");
                        }
                        // Past the head seen: nothing, or a record synced since.
                        let head = reader.durable_seq();
                        if let Some(next) = reader.read_one(head + 1).unwrap() {
                            assert!(reader.durable_seq() > head, "read past the last sync");
                            assert_eq!(next.body, body(head + 1));
                        }
                        last_seen = through;
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for _ in 0..300 {
            fill(&mut log, 1, 3);
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
        assert!(
            active_segment(dir.path()) > segment_path(dir.path(), 100),
            "it rolled many times"
        );
        assert_reads_back(&log, 1, 900);
    }

    #[test]
    fn a_missing_or_damaged_index_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        fill(&mut log, 80, 5);
        drop(log);
        let mut indexes: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "idx"))
            .collect();
        indexes.sort();
        assert!(indexes.len() >= 2);
        assert!(indexes.len() >= 4);
        std::fs::remove_file(&indexes[0]).unwrap();
        std::fs::write(&indexes[1], b"garbage").unwrap();
        // Whole entries, but one short: its last entry is not the segment's last record.
        let short = std::fs::read(&indexes[2]).unwrap();
        std::fs::write(&indexes[2], &short[..short.len() - INDEX_ENTRY as usize]).unwrap();
        // Whole entries, the first not at 0.
        let mut shifted = std::fs::read(&indexes[3]).unwrap();
        shifted[0] = 16;
        std::fs::write(&indexes[3], &shifted).unwrap();
        let (log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        assert_reads_back(&log, 1, 400);
        assert_reads_back(&log, 33, 400);
        drop(log);
        // Rebuilt on disk too: the same bytes as a sealed segment's own.
        assert_eq!(std::fs::read(&indexes[2]).unwrap(), short);
        assert_eq!(std::fs::read(&indexes[0]).unwrap().len() % 4, 0);
    }

    /// An index entry damaged between its first and last (open checks only those) sends
    /// a read to the wrong bytes: that read is an error naming the seq, never another
    /// record's body.
    #[test]
    fn a_damaged_index_entry_is_an_error_naming_the_seq() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        fill(&mut log, 30, 5);
        drop(log);
        let index = index_path(&segment_path(dir.path(), 1));
        let mut bytes = std::fs::read(&index).unwrap();
        assert!(bytes.len() >= 5 * INDEX_ENTRY as usize);
        // Entry 2 (seq 3) now points at seq 4's record.
        let fourth: [u8; 4] = bytes[12..16].try_into().unwrap();
        bytes[8..12].copy_from_slice(&fourth);
        std::fs::write(&index, &bytes).unwrap();
        let (log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        let error = log.read_one(3).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(error.to_string().contains("seq 3"), "{error}");
        assert_eq!(log.read_one(4).unwrap().unwrap().body, body(4));
        assert_reads_back(&log, 5, 150);
    }

    fn wait_for_spare(dir: &Path) {
        let started = std::time::Instant::now();
        while !spare_path(dir).exists() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "no spare"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The spare is made once the active segment is half full (a small log never
    /// writes one). A roll takes it: the new segment is written into blocks that exist;
    /// the sealed one is cut to its records; a reopen cuts the zeros quietly and a torn
    /// write among them loudly.
    #[test]
    fn rolls_take_a_zero_filled_spare_and_recovery_tells_zeros_from_torn_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        let mut through = 0;
        while log.active_len < 4096 / 2 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!spare_path(dir.path()).exists(), "a spare under half full");
            fill(&mut log, 1, 5);
            through += 5;
        }
        wait_for_spare(dir.path());
        while active_segment(dir.path()) == segment_path(dir.path(), 1) {
            fill(&mut log, 1, 5);
            through += 5;
        }
        let active = active_segment(dir.path());
        assert_eq!(
            std::fs::metadata(&active).unwrap().len(),
            4096,
            "the spare, whole"
        );
        let sealed = std::fs::metadata(segment_path(dir.path(), 1))
            .unwrap()
            .len();
        assert_eq!(
            sealed,
            log.read(1, usize::MAX)
                .unwrap()
                .iter()
                .filter(|r| r.seq < through - 4)
                .map(|r| HEADER + r.body.len() as u64)
                .sum::<u64>(),
            "the sealed segment holds its records and nothing more"
        );
        fill(&mut log, 1, 2);
        through += 2;
        assert_reads_back(&log, 1, through);
        drop(log);

        let (log, recovered) = SegmentLog::open(dir.path(), small()).unwrap();
        assert_eq!(recovered.truncated_bytes, 0, "zeros are not a torn write");
        assert_reads_back(&log, 1, through);
        drop(log);
        let data = std::fs::metadata(&active).unwrap().len();
        assert!(data < 4096, "cut to its records");

        // A torn batch in a zero-filled tail.
        let file = OpenOptions::new().write(true).open(&active).unwrap();
        file.set_len(4096).unwrap();
        file.write_all_at(b"torn", data + 100).unwrap();
        drop(file);
        let (mut log, recovered) = SegmentLog::open(dir.path(), small()).unwrap();
        assert_eq!(recovered.truncated_bytes, 4096 - data);
        assert_reads_back(&log, 1, through);
        fill(&mut log, 1, 3);
        assert_reads_back(&log, 1, through + 3);
    }

    /// A sealed segment whose cut to its records did not reach the disk (zeros after its
    /// last record, its index lost) still reads to its end and no further.
    #[test]
    fn a_sealed_segment_with_a_zero_tail_reads_to_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        fill(&mut log, 40, 5);
        drop(log);
        let first = segment_path(dir.path(), 1);
        let file = OpenOptions::new().write(true).open(&first).unwrap();
        file.set_len(4096 + 512).unwrap();
        drop(file);
        std::fs::remove_file(index_path(&first)).unwrap();
        let (log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        assert_reads_back(&log, 1, 200);
    }

    /// A crash mid-write leaves part of a batch after the last whole record: "truncate to
    /// the last whole record, never lose an acknowledged one" (issue 11).
    #[test]
    fn a_torn_write_is_cut_off_and_the_seqs_go_on() {
        for torn in [3usize, 15, 16, 40] {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, _) = SegmentLog::open(dir.path(), small()).unwrap();
            fill(&mut log, 3, 4);
            drop(log);
            let active = active_segment(dir.path());
            let whole = std::fs::metadata(&active).unwrap().len();
            // The start of a batch that never finished: a frame cut after `torn` bytes.
            let mut frame = Vec::new();
            encode(&mut frame, 13, &body(13));
            let mut file = OpenOptions::new().append(true).open(&active).unwrap();
            file.write_all(&frame[..torn.min(frame.len() - 1)]).unwrap();
            drop(file);

            let (mut log, recovered) = SegmentLog::open(dir.path(), small()).unwrap();
            assert_eq!(recovered.truncated_bytes, torn.min(frame.len() - 1) as u64);
            assert_eq!(std::fs::metadata(&active).unwrap().len(), whole);
            assert_eq!(log.next_seq(), 13);
            assert_reads_back(&log, 1, 12);
            fill(&mut log, 1, 2);
            assert_reads_back(&log, 1, 14);
        }
    }

    /// A record whose bytes were not all written before the crash (its CRC fails) ends
    /// the log there, like a short one: its batch's sync never returned.
    #[test]
    fn a_corrupt_tail_record_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        fill(&mut log, 2, 3);
        drop(log);
        let active = active_segment(dir.path());
        let mut bytes = std::fs::read(&active).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&active, &bytes).unwrap();

        let (log, recovered) = SegmentLog::open(dir.path(), small()).unwrap();
        assert_eq!(recovered.truncated_bytes, HEADER + body(6).len() as u64);
        assert_eq!(log.next_seq(), 6);
        assert_reads_back(&log, 1, 5);
    }

    /// The active segment keeps zeros written ahead of its records (so syncs change no
    /// size): a crash leaves them, and the next open cuts them without calling it a
    /// torn write; a clean close cuts them itself; without preallocation there are none.
    #[test]
    fn zeros_ahead_of_the_records_are_cut_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let options = SegmentOptions {
            segment_bytes: 8 << 20,
            ..small()
        };
        let (mut log, _) = SegmentLog::open(dir.path(), options.clone()).unwrap();
        fill(&mut log, 10, 3);
        let active = active_segment(dir.path());
        let records = log.active_len;
        assert!(std::fs::metadata(&active).unwrap().len() >= records + ZERO_AHEAD / 2);
        // A crash: the files as they are.
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
        let (copied, recovered) = SegmentLog::open(copy.path(), options.clone()).unwrap();
        assert_eq!(recovered.truncated_bytes, 0, "zeros are not a torn write");
        assert_reads_back(&copied, 1, 30);
        drop(copied);
        drop(log);
        assert_eq!(std::fs::metadata(&active).unwrap().len(), records);

        let plain = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(
            plain.path(),
            SegmentOptions {
                preallocate: false,
                ..options
            },
        )
        .unwrap();
        fill(&mut log, 10, 3);
        assert_eq!(
            std::fs::metadata(active_segment(plain.path()))
                .unwrap()
                .len(),
            log.active_len
        );
    }

    #[test]
    fn oversized_records_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let options = SegmentOptions {
            max_record_bytes: 100,
            ..small()
        };
        let (mut log, _) = SegmentLog::open(dir.path(), options).unwrap();
        let result = log.append(&[vec![b'a'; 10], vec![b'b'; 101]]);
        assert!(
            matches!(result, Err(AppendError::TooLarge(101))),
            "{result:?}"
        );
        assert_eq!(log.next_seq(), 1);
        assert!(log.read(1, 10).unwrap().is_empty());
        assert_eq!(log.append(&[b"ok"]).unwrap(), 1..2);
    }

    /// "A full disk (ENOSPC → … nothing acknowledged that is not stored, recovery when
    /// space returns)" (issue 11).
    #[test]
    fn a_full_disk_stores_nothing_of_the_failed_batch_and_recovers() {
        let Some(disk) = crate::testing::SmallDisk::mount("256k") else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return;
        };
        let dir = disk.dir.path().join("log");
        let options = SegmentOptions {
            segment_bytes: 1024 * 1024,
            // The spare would take the small disk's space at a time of its own.
            preallocate: false,
            ..small()
        };
        let (mut log, _) = SegmentLog::open(&dir, options.clone()).unwrap();
        let big = |seq: u64| format!("{seq:08}").repeat(1000).into_bytes();
        let mut acked = 0u64;
        let failure = loop {
            let first = log.next_seq();
            match log.append(&[big(first), big(first + 1)]) {
                Ok(seqs) => acked = seqs.end - 1,
                Err(error) => break error,
            }
            assert!(acked < 1000, "the disk never filled");
        };
        assert!(matches!(failure, AppendError::Write(_)), "{failure:?}");
        assert_eq!(log.next_seq(), acked + 1);
        let on_disk = std::fs::metadata(active_segment(&dir)).unwrap().len();
        assert_eq!(
            on_disk,
            acked * (HEADER + 8000),
            "the failed batch was cut off"
        );
        assert_eq!(log.read(1, usize::MAX).unwrap().len() as u64, acked);

        disk.resize("4m");
        let seqs = log.append(&[big(acked + 1)]).unwrap();
        assert_eq!(seqs, acked + 1..acked + 2);
        drop(log);
        let (log, recovered) = SegmentLog::open(&dir, options).unwrap();
        assert_eq!(recovered.truncated_bytes, 0);
        let records = log.read(1, usize::MAX).unwrap();
        assert_eq!(records.len() as u64, acked + 1);
        assert!(records.iter().all(|r| r.body == big(r.seq)));
    }

    const CRASH_CHILD_DIR: &str = "HERALD_SEGMENT_CRASH_CHILD_DIR";

    /// The child of [`a_kill_9_loses_no_acknowledged_record`]: appends batches until it
    /// is killed, printing each batch's last seq once `append` returned it.
    #[test]
    #[ignore = "the child process of a_kill_9_loses_no_acknowledged_record"]
    fn crash_child_appends_until_killed() {
        let dir = std::env::var(CRASH_CHILD_DIR).expect("run by its parent test");
        let (mut log, _) = SegmentLog::open(dir, small()).unwrap();
        let mut out = std::io::stdout();
        loop {
            let first = log.next_seq();
            let bodies: Vec<Vec<u8>> = (first..first + 5).map(body).collect();
            let seqs = log.append(&bodies).unwrap();
            writeln!(out, "acked {}", seqs.end - 1).unwrap();
            out.flush().unwrap();
        }
    }

    /// kill -9 while a process appends: every seq it was answered is there after, whole,
    /// and the log goes on from there.
    #[test]
    fn a_kill_9_loses_no_acknowledged_record() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let mut acked = 0u64;
        for round in 0..3 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "segment::tests::crash_child_appends_until_killed",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CRASH_CHILD_DIR, dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Drain the child's output on a thread, remembering the last seq answered.
            let stdout = child.stdout.take().unwrap();
            let (last_tx, last_rx) = std::sync::mpsc::channel();
            let reader = std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(seq) = line.strip_prefix("acked ") {
                        let _ = last_tx.send(seq.trim().parse::<u64>().unwrap());
                    }
                }
            });
            let started = std::time::Instant::now();
            let mut seen_this_round = 0;
            while seen_this_round < 20 && started.elapsed() < std::time::Duration::from_secs(20) {
                if let Ok(seq) = last_rx.recv_timeout(std::time::Duration::from_millis(100)) {
                    acked = acked.max(seq);
                    seen_this_round += 1;
                }
            }
            assert!(
                seen_this_round >= 20,
                "round {round}: the child appended too little"
            );
            std::thread::sleep(std::time::Duration::from_millis(20 + 37 * round));
            child.kill().unwrap();
            child.wait().unwrap();
            reader.join().unwrap();
            while let Ok(seq) = last_rx.try_recv() {
                acked = acked.max(seq);
            }

            let (log, _) = SegmentLog::open(dir.path(), small()).unwrap();
            assert!(
                log.durable_seq() >= acked,
                "round {round}: {acked} was answered, the log ends at {}",
                log.durable_seq()
            );
            assert_reads_back(&log, 1, log.durable_seq());
        }
    }

    const FAIL_SYNC_CHILD_DIR: &str = "HERALD_SEGMENT_FAIL_SYNC_CHILD_DIR";

    /// The child of [`a_failed_sync_is_final_and_its_batch_never_comes_back`], run with
    /// syncs it can make fail (`crate::testing::FailingSync`).
    #[test]
    #[ignore = "the child process of a_failed_sync_is_final_and_its_batch_never_comes_back"]
    fn fail_sync_child() {
        let dir = std::env::var(FAIL_SYNC_CHILD_DIR).expect("run by its parent test");
        let trigger = std::env::var(crate::testing::FailingSync::TRIGGER_VAR).unwrap();
        let (mut log, _) = SegmentLog::open(&dir, small()).unwrap();
        fill(&mut log, 3, 5);

        std::fs::write(&trigger, b"").unwrap();
        let failed = log.append(&[body(16)]);
        assert!(matches!(failed, Err(AppendError::Failed(_))), "{failed:?}");
        // The disk works again, but a sync that succeeds now proves nothing about the
        // pages the failed one lost: the log stays stopped.
        std::fs::remove_file(&trigger).unwrap();
        let refused = log.append(&[body(16)]);
        assert!(
            matches!(refused, Err(AppendError::Failed(_))),
            "{refused:?}"
        );
        assert_eq!(log.durable_seq(), 15);
        assert_reads_back(&log, 1, 15);
        drop(log);

        // Reopened (Herald restarted): the batch whose sync failed is not there, and the
        // log goes on from the last acknowledged seq.
        let (mut log, _) = SegmentLog::open(&dir, small()).unwrap();
        assert_eq!(log.next_seq(), 16, "the unacknowledged batch came back");
        fill(&mut log, 2, 5);
        assert_reads_back(&log, 1, 25);
    }

    /// An `fsync` error (the disk failing): the append is refused, every later one too
    /// (fail-stop), reads stop at the last acknowledged seq, and after a reopen the
    /// refused batch is not there. Runs in a child process, whose `fsync` and `fdatasync`
    /// a preloaded library makes fail on demand.
    #[test]
    fn a_failed_sync_is_final_and_its_batch_never_comes_back() {
        crate::testing::FailingSync::run_in_child(
            "segment::tests::fail_sync_child",
            FAIL_SYNC_CHILD_DIR,
            &[],
        );
    }

    /// Damage inside synced data is an error on read, never a silent end of the log.
    #[test]
    fn damage_before_the_tail_is_an_error_not_an_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), small()).unwrap();
        fill(&mut log, 30, 5);
        let first = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[HEADER as usize + 2] ^= 0xff;
        std::fs::write(&first, &bytes).unwrap();
        let error = log.read(1, usize::MAX).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        // Reads that start past the damage still work.
        assert_reads_back(&log, 100, 150);
    }
}
