//! Sorted runs: immutable files of `(key, value)` entries in order, the building block of
//! the segment log's own indexes (issue 11). Inserting each event into a B-tree costs
//! ~10–15 µs of CPU per event inside the server even in bulk and unsynced (BENCHMARKS.md,
//! "The log alone, and SQLite behind it in bulk"); a run is written once, in order, when
//! a segment is sealed (its subjects, correlation ids and ids) or when runs are merged,
//! and read with positional reads.
//!
//! Layout, little-endian:
//! - **blocks** of about [`BLOCK_BYTES`]: entries `key_len: u16 | key | value: u64`,
//!   then a CRC-32 of the block's entries;
//! - **fences**, one per block: `offset: u64 | len: u32 | key_len: u16 | first key |
//!   first value: u64`, then their CRC-32. Opening reads them into memory, so a lookup
//!   is a binary search in memory and one read per block it visits;
//! - **a filter** of the distinct keys (a blocked Bloom filter, ~10 bits per key, 7 bits
//!   in one 64-byte block per key, each block with its CRC-32): a lookup of a key the run
//!   does not hold reads 68 bytes instead of a block of entries (an id is in one run of
//!   many). A damaged filter block answers "maybe", never a wrong "no";
//! - **footer**: `fences offset | fences len | filter offset | filter blocks | entries |
//!   magic`, `u64`s.
//!
//! A damaged block or fence is an error naming the file, never a wrong answer.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of entries after which a block is closed.
pub const BLOCK_BYTES: usize = 32 * 1024;
/// A run being written is synced every this many bytes, not only once at its end: a
/// merge writes tens of MiB, and one sync of all of them held the disk for tens of ms,
/// which every commit's `fdatasync` meanwhile waited behind (up to 64 ms, `strace`
/// under batch ingest).
pub const SYNC_EVERY: u64 = 1 << 20;
/// The longest key a run holds (subjects are at most 256 bytes; an aggregate key a
/// little more).
pub const MAX_KEY_BYTES: usize = 4096;
const FOOTER: u64 = 48;
const MAGIC: u64 = u64::from_le_bytes(*b"HRLDRUN2");
/// Bits of one filter block, and its bytes on disk with its CRC.
const FILTER_BITS: u32 = 512;
const FILTER_BLOCK: u64 = 64 + 4;
/// Bits set per key, and bits per key overall (~1 % false "maybe").
const FILTER_PROBES: u32 = 7;
const FILTER_BITS_PER_KEY: u64 = 10;

/// Where a block starts, and its first entry.
#[derive(Debug, Clone)]
struct Fence {
    offset: u64,
    len: u32,
    key: Vec<u8>,
    value: u64,
}

/// An open run: its fences in memory, its blocks on disk.
#[derive(Debug)]
pub struct Run {
    path: PathBuf,
    file: File,
    fences: Vec<Fence>,
    entries: u64,
    filter_at: u64,
    filter_blocks: u64,
}

/// A key's hash for the filter: FNV-1a, then the SplitMix64 finaliser to spread it.
fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The filter block of a hash, and its bits in that block.
fn filter_bits(hash: u64, blocks: u64) -> (u64, impl Iterator<Item = u32>) {
    let block = (hash >> 32) % blocks;
    let (a, b) = (hash as u32, ((hash >> 32) as u32) | 1);
    let bits = (0..FILTER_PROBES).map(move |i| a.wrapping_add(i.wrapping_mul(b)) % FILTER_BITS);
    (block, bits)
}

/// Writes `entries` (strictly increasing by key, then value) as a run at `path`: to a
/// temporary file, synced, then renamed over `path` (the caller syncs the directory).
pub fn write_run<K: AsRef<[u8]>>(
    path: &Path,
    entries: impl IntoIterator<Item = (K, u64)>,
) -> io::Result<u64> {
    write_with(path, None, |writer| {
        for (key, value) in entries {
            writer.push(key.as_ref(), value)?;
        }
        Ok(())
    })
}

/// Merges runs into one at `path`, like [`write_run`]: every entry in order, one that
/// several runs hold written once. A damaged input is an error, and leaves no run.
///
/// Entries are taken from the run with the smallest head for as long as they stay below
/// every other run's head: runs of time-ordered keys (ids) and of later seqs of the same
/// subject rarely interleave, so most entries cost one comparison and no copy but the
/// one into the new block.
pub fn merge_runs(runs: &[&Run], path: &Path) -> io::Result<u64> {
    let mut cursors = runs
        .iter()
        .map(|run| Cursor::new(run))
        .collect::<io::Result<Vec<_>>>()?;
    let mut bound_key: Vec<u8> = Vec::new();
    let keys_at_most = runs.iter().map(|run| run.len()).sum();
    write_with(path, Some(keys_at_most), |writer| loop {
        // The run with the smallest head, and the smallest head of the others.
        let mut smallest: Option<usize> = None;
        let mut second: Option<usize> = None;
        for (i, cursor) in cursors.iter().enumerate() {
            let Some(head) = cursor.head() else { continue };
            match smallest {
                Some(s) if head >= cursors[s].head().expect("a head") => {
                    if second.is_none_or(|t| head < cursors[t].head().expect("a head")) {
                        second = Some(i);
                    }
                }
                _ => {
                    second = smallest;
                    smallest = Some(i);
                }
            }
        }
        let Some(from) = smallest else {
            return Ok(());
        };
        let bound = second.map(|t| {
            let (key, value) = cursors[t].head().expect("a head");
            bound_key.clear();
            bound_key.extend_from_slice(key);
            value
        });
        let cursor = &mut cursors[from];
        // The smallest head is taken even when another run holds the same entry (that
        // one is then passed over as the writer's last).
        let mut first = true;
        while let Some((key, value)) = cursor.head() {
            if !first
                && bound.is_some_and(|value_bound| (key, value) >= (&bound_key[..], value_bound))
            {
                break;
            }
            first = false;
            if !writer.is_last(key, value) {
                writer.push(key, value)?;
            }
            cursor.advance()?;
        }
    })
}

/// Writes a run through a [`RunWriter`] on a temporary file, renamed to `path` once
/// whole and synced; any error removes what was written.
fn write_with(
    path: &Path,
    keys_at_most: Option<u64>,
    fill: impl FnOnce(&mut RunWriter) -> io::Result<()>,
) -> io::Result<u64> {
    let temporary = path.with_extension("tmp");
    let written = RunWriter::create(&temporary, keys_at_most).and_then(|mut writer| {
        fill(&mut writer)?;
        let count = writer.finish()?;
        std::fs::rename(&temporary, path)?;
        Ok(count)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Lays out a run's entries, given in order, as blocks, then fences, filter and footer.
struct RunWriter {
    out: BufWriter<File>,
    fences: Vec<Fence>,
    /// The open block's entries.
    block: Vec<u8>,
    /// The open block's first entry (its fence), once it has one.
    block_first: Option<(Vec<u8>, u64)>,
    /// The last entry written, once one is.
    last_key: Vec<u8>,
    last_value: Option<u64>,
    offset: u64,
    /// Bytes of blocks synced so far.
    synced: u64,
    count: u64,
    filter: KeyFilter,
}

/// The filter of the distinct keys, while a run is written.
enum KeyFilter {
    /// Their hashes, laid out at the end, once their number is known (8 bytes a key).
    Hashes(Vec<u64>),
    /// Sized for at most so many keys (a merge knows it: its inputs' entries), and
    /// filled as they come: ~1.25 bytes per entry of the inputs. A merge of tens of
    /// millions of entries otherwise held 8 bytes per key in memory until its end.
    Sized(Vec<[u8; 64]>),
}

impl KeyFilter {
    fn add(&mut self, hash: u64) {
        match self {
            KeyFilter::Hashes(hashes) => hashes.push(hash),
            KeyFilter::Sized(filter) => set_bits(filter, hash),
        }
    }

    fn into_blocks(self) -> Vec<[u8; 64]> {
        match self {
            KeyFilter::Sized(filter) => filter,
            KeyFilter::Hashes(hashes) => {
                let mut filter = vec![[0u8; 64]; filter_blocks(hashes.len() as u64)];
                for hash in hashes {
                    set_bits(&mut filter, hash);
                }
                filter
            }
        }
    }
}

/// Filter blocks for `keys` keys.
fn filter_blocks(keys: u64) -> usize {
    (keys * FILTER_BITS_PER_KEY).div_ceil(u64::from(FILTER_BITS)) as usize
}

fn set_bits(filter: &mut [[u8; 64]], hash: u64) {
    let (block, bits) = filter_bits(hash, filter.len() as u64);
    for bit in bits {
        filter[block as usize][(bit / 8) as usize] |= 1 << (bit % 8);
    }
}

impl RunWriter {
    /// A writer to `temporary`; `keys_at_most`, when known, sizes the filter up front.
    fn create(temporary: &Path, keys_at_most: Option<u64>) -> io::Result<RunWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(temporary)?;
        Ok(RunWriter {
            out: BufWriter::with_capacity(256 * 1024, file),
            fences: Vec::new(),
            block: Vec::with_capacity(BLOCK_BYTES + MAX_KEY_BYTES + 16),
            block_first: None,
            last_key: Vec::new(),
            last_value: None,
            offset: 0,
            synced: 0,
            count: 0,
            filter: match keys_at_most {
                Some(keys) => KeyFilter::Sized(vec![[0u8; 64]; filter_blocks(keys)]),
                None => KeyFilter::Hashes(Vec::new()),
            },
        })
    }

    /// Whether `(key, value)` is the entry written last.
    fn is_last(&self, key: &[u8], value: u64) -> bool {
        self.last_value == Some(value) && self.last_key == key
    }

    /// Appends an entry; an error unless it comes after the last one.
    fn push(&mut self, key: &[u8], value: u64) -> io::Result<()> {
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid_input(format!(
                "a run key of {} bytes is longer than {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        let new_key = match self.last_value {
            None => true,
            Some(last_value) => match self.last_key.as_slice().cmp(key) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal if last_value < value => false,
                _ => {
                    return Err(invalid_input(
                        "run entries must be strictly increasing".into(),
                    ))
                }
            },
        };
        if new_key {
            self.filter.add(key_hash(key));
            self.last_key.clear();
            self.last_key.extend_from_slice(key);
        }
        self.last_value = Some(value);
        if self.block_first.is_none() {
            self.block_first = Some((key.to_vec(), value));
        }
        self.block
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.block.extend_from_slice(key);
        self.block.extend_from_slice(&value.to_le_bytes());
        self.count += 1;
        if self.block.len() >= BLOCK_BYTES {
            self.close_block()?;
        }
        Ok(())
    }

    fn close_block(&mut self) -> io::Result<()> {
        let Some((key, value)) = self.block_first.take() else {
            return Ok(());
        };
        let sum = crc32fast::hash(&self.block);
        self.block.extend_from_slice(&sum.to_le_bytes());
        self.out.write_all(&self.block)?;
        self.fences.push(Fence {
            offset: self.offset,
            len: self.block.len() as u32,
            key,
            value,
        });
        self.offset += self.block.len() as u64;
        self.block.clear();
        if self.offset - self.synced >= SYNC_EVERY {
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.synced = self.offset;
        }
        Ok(())
    }

    /// Writes the last block, the fences, the filter and the footer, and syncs.
    fn finish(mut self) -> io::Result<u64> {
        self.close_block()?;
        let mut index = Vec::new();
        for fence in &self.fences {
            index.extend_from_slice(&fence.offset.to_le_bytes());
            index.extend_from_slice(&fence.len.to_le_bytes());
            index.extend_from_slice(&(fence.key.len() as u16).to_le_bytes());
            index.extend_from_slice(&fence.key);
            index.extend_from_slice(&fence.value.to_le_bytes());
        }
        let sum = crc32fast::hash(&index);
        index.extend_from_slice(&sum.to_le_bytes());
        self.out.write_all(&index)?;

        let filter =
            std::mem::replace(&mut self.filter, KeyFilter::Hashes(Vec::new())).into_blocks();
        let blocks = filter.len() as u64;
        for block in &filter {
            self.out.write_all(block)?;
            self.out.write_all(&crc32fast::hash(block).to_le_bytes())?;
        }
        let filter_at = self.offset + index.len() as u64;
        for word in [
            self.offset,
            index.len() as u64,
            filter_at,
            blocks,
            self.count,
            MAGIC,
        ] {
            self.out.write_all(&word.to_le_bytes())?;
        }
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        Ok(self.count)
    }
}

/// Reads a run's entries in order, one block in memory at a time, lending each entry
/// rather than copying it.
pub struct Cursor<'a> {
    run: &'a Run,
    /// The fence of the next block to read.
    next_block: usize,
    /// The block in memory, its CRC checked and cut off.
    block: Vec<u8>,
    /// Where the head entry starts in `block`, and where the one after it does.
    at: usize,
    next_at: usize,
    head: Option<(std::ops::Range<usize>, u64)>,
}

impl<'a> Cursor<'a> {
    /// A cursor on the run's first entry.
    pub fn new(run: &'a Run) -> io::Result<Cursor<'a>> {
        let mut cursor = Cursor {
            run,
            next_block: 0,
            block: Vec::new(),
            at: 0,
            next_at: 0,
            head: None,
        };
        cursor.advance()?;
        Ok(cursor)
    }

    /// The entry the cursor is on; `None` past the last.
    pub fn head(&self) -> Option<(&[u8], u64)> {
        self.head
            .as_ref()
            .map(|(key, value)| (&self.block[key.clone()], *value))
    }

    /// Moves to the next entry, reading the next block when this one is done.
    pub fn advance(&mut self) -> io::Result<()> {
        self.at = self.next_at;
        while self.at == self.block.len() {
            let Some(fence) = self.run.fences.get(self.next_block) else {
                self.head = None;
                return Ok(());
            };
            self.run.read_block(fence, &mut self.block)?;
            self.next_block += 1;
            self.at = 0;
        }
        let fence = &self.run.fences[self.next_block - 1];
        let rest = &self.block[self.at..];
        let (key, value, after) =
            entry(rest).ok_or_else(|| self.run.damaged(fence, "a damaged entry"))?;
        let key_at = self.at + 2;
        self.head = Some((key_at..key_at + key.len(), value));
        self.next_at = self.block.len() - after.len();
        Ok(())
    }
}

impl Run {
    /// Opens a run, reading its fences; an error if the file is not a whole run.
    pub fn open(path: &Path) -> io::Result<Run> {
        let file = File::open(path)?;
        let damaged = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        let len = file.metadata()?.len();
        if len < FOOTER {
            return Err(damaged("too short to be a run"));
        }
        let mut footer = [0u8; FOOTER as usize];
        file.read_exact_at(&mut footer, len - FOOTER)?;
        let word = |i: usize| u64::from_le_bytes(footer[8 * i..8 * i + 8].try_into().expect("8"));
        let (index_at, index_len, filter_at, filter_blocks, entries, magic) =
            (word(0), word(1), word(2), word(3), word(4), word(5));
        let filter_end = filter_blocks
            .checked_mul(FILTER_BLOCK)
            .and_then(|bytes| bytes.checked_add(filter_at));
        if magic != MAGIC
            || index_len < 4
            || index_at.checked_add(index_len) != Some(filter_at)
            || filter_end != Some(len - FOOTER)
        {
            return Err(damaged("bad footer"));
        }
        let mut index = vec![0u8; index_len as usize];
        file.read_exact_at(&mut index, index_at)?;
        let (body, sum) = index.split_at(index.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(sum.try_into().expect("4")) {
            return Err(damaged("damaged fences"));
        }
        let mut fences = Vec::new();
        let mut at = body;
        while !at.is_empty() {
            let fence = (|| {
                let offset = u64::from_le_bytes(at.get(0..8)?.try_into().ok()?);
                let len = u32::from_le_bytes(at.get(8..12)?.try_into().ok()?);
                let key_len = u16::from_le_bytes(at.get(12..14)?.try_into().ok()?) as usize;
                let key = at.get(14..14 + key_len)?.to_vec();
                let value =
                    u64::from_le_bytes(at.get(14 + key_len..22 + key_len)?.try_into().ok()?);
                at = &at[22 + key_len..];
                Some(Fence {
                    offset,
                    len,
                    key,
                    value,
                })
            })()
            .ok_or_else(|| damaged("damaged fences"))?;
            if fence.offset + u64::from(fence.len) > index_at {
                return Err(damaged("a block past the fences"));
            }
            fences.push(fence);
        }
        Ok(Run {
            path: path.to_path_buf(),
            file,
            fences,
            entries,
            filter_at,
            filter_blocks,
        })
    }

    /// Whether the run may hold `key`: `false` only when it certainly does not. One read
    /// of 68 bytes.
    pub fn may_contain(&self, key: &[u8]) -> io::Result<bool> {
        if self.filter_blocks == 0 {
            return Ok(false);
        }
        let (block, mut bits) = filter_bits(key_hash(key), self.filter_blocks);
        let mut bytes = [0u8; FILTER_BLOCK as usize];
        self.file
            .read_exact_at(&mut bytes, self.filter_at + block * FILTER_BLOCK)?;
        let (filter, sum) = bytes.split_at(64);
        if crc32fast::hash(filter) != u32::from_le_bytes(sum.try_into().expect("4")) {
            return Ok(true);
        }
        Ok(bits.all(|bit| filter[(bit / 8) as usize] & (1 << (bit % 8)) != 0))
    }

    /// How many entries the run holds.
    pub fn len(&self) -> u64 {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Up to `max` values of `key`, from `from` on (inclusive), in order.
    pub fn values(&self, key: &[u8], from: u64, max: usize) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        // The last block whose first entry is at or before (key, from): every entry from
        // (key, from) on is in it or after it.
        let start = self
            .fences
            .partition_point(|f| (f.key.as_slice(), f.value) <= (key, from))
            .saturating_sub(1);
        for fence in &self.fences[start..] {
            if fence.key.as_slice() > key {
                break;
            }
            let block = self.block(fence)?;
            let mut at = block.as_slice();
            while !at.is_empty() {
                let (entry_key, value, rest) =
                    entry(at).ok_or_else(|| self.damaged(fence, "a damaged entry"))?;
                at = rest;
                match entry_key.cmp(key) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Greater => return Ok(out),
                    std::cmp::Ordering::Equal if value < from => continue,
                    std::cmp::Ordering::Equal => {
                        out.push(value);
                        if out.len() == max {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every entry in order, each copied out (a [`Cursor`] lends them instead).
    pub fn entries(&self) -> impl Iterator<Item = io::Result<(Vec<u8>, u64)>> + '_ {
        let mut cursor = Some(Cursor::new(self));
        std::iter::from_fn(move || match cursor.take()? {
            Err(error) => Some(Err(error)),
            Ok(mut on) => {
                let (key, value) = on.head()?;
                let entry = (key.to_vec(), value);
                match on.advance() {
                    Ok(()) => cursor = Some(Ok(on)),
                    Err(error) => cursor = Some(Err(error)),
                }
                Some(Ok(entry))
            }
        })
    }

    /// A block's entries, its CRC checked.
    fn block(&self, fence: &Fence) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.read_block(fence, &mut bytes)?;
        Ok(bytes)
    }

    /// Reads a block's entries into `bytes` (replacing what it held), its CRC checked.
    fn read_block(&self, fence: &Fence, bytes: &mut Vec<u8>) -> io::Result<()> {
        bytes.clear();
        bytes.resize(fence.len as usize, 0);
        self.file.read_exact_at(bytes, fence.offset)?;
        if bytes.len() < 4 {
            return Err(self.damaged(fence, "a short block"));
        }
        let body = bytes.len() - 4;
        let sum = u32::from_le_bytes(bytes[body..].try_into().expect("4"));
        bytes.truncate(body);
        if crc32fast::hash(bytes) != sum {
            return Err(self.damaged(fence, "a damaged block"));
        }
        Ok(())
    }

    fn damaged(&self, fence: &Fence, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what} at byte {}", self.path.display(), fence.offset),
        )
    }
}

/// One entry off the front of a block: key, value and the rest.
fn entry(at: &[u8]) -> Option<(&[u8], u64, &[u8])> {
    let key_len = u16::from_le_bytes(at.get(0..2)?.try_into().ok()?) as usize;
    let key = at.get(2..2 + key_len)?;
    let value = u64::from_le_bytes(at.get(2 + key_len..10 + key_len)?.try_into().ok()?);
    Some((key, value, &at[10 + key_len..]))
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Subjects with a few values each, one with many (spanning blocks), in order.
    fn sample() -> Vec<(Vec<u8>, u64)> {
        let mut entries = Vec::new();
        for s in 0..300u64 {
            let key = format!("hub.bench.s{s:04}").into_bytes();
            let values = if s == 150 { 5_000 } else { s % 7 + 1 };
            for v in 0..values {
                entries.push((key.clone(), 3 * v + s));
            }
        }
        entries.sort();
        entries
    }

    fn expected(entries: &[(Vec<u8>, u64)], key: &[u8], from: u64, max: usize) -> Vec<u64> {
        entries
            .iter()
            .filter(|(k, v)| k.as_slice() == key && *v >= from)
            .map(|(_, v)| *v)
            .take(max)
            .collect()
    }

    #[test]
    fn values_read_back_for_every_key_from_every_kind_of_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subjects.run");
        let entries = sample();
        let written = write_run(&path, entries.iter().map(|(k, v)| (k, *v))).unwrap();
        assert_eq!(written, entries.len() as u64);
        let run = Run::open(&path).unwrap();
        assert_eq!(run.len(), entries.len() as u64);
        assert!(run.fences.len() > 3, "several blocks");
        for s in (0..300u64).step_by(7).chain([149, 150, 151, 299]) {
            let key = format!("hub.bench.s{s:04}").into_bytes();
            for from in [0, s, s + 1, s + 3 * 40, s + 3 * 4_999, u64::MAX] {
                for max in [1, 3, 100, usize::MAX] {
                    assert_eq!(
                        run.values(&key, from, max).unwrap(),
                        expected(&entries, &key, from, max),
                        "s{s} from {from} max {max}"
                    );
                }
            }
        }
        // Keys before, between and after the stored ones.
        for missing in ["a", "hub.bench.s0000x", "hub.bench.s0150 ", "zzz", ""] {
            assert!(run.values(missing.as_bytes(), 0, 10).unwrap().is_empty());
        }
        let all: Vec<(Vec<u8>, u64)> = run.entries().collect::<io::Result<_>>().unwrap();
        assert_eq!(all, entries);
    }

    /// The filter never says "no" to a key the run holds, says it to almost every key it
    /// does not, and a damaged filter block says "maybe".
    #[test]
    fn the_filter_never_misses_a_key_and_passes_over_most_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.run");
        let entries: Vec<(Vec<u8>, u64)> = {
            let mut e: Vec<(Vec<u8>, u64)> = (0..20_000u64)
                .map(|i| {
                    (
                        format!("I:{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).into_bytes(),
                        i,
                    )
                })
                .collect();
            e.sort();
            e
        };
        write_run(&path, entries.iter().map(|(k, v)| (k, *v))).unwrap();
        let run = Run::open(&path).unwrap();
        assert!(entries.iter().all(|(k, _)| run.may_contain(k).unwrap()));
        let maybes = (0..20_000u64)
            .filter(|i| run.may_contain(format!("X:{i}").as_bytes()).unwrap())
            .count();
        assert!(
            maybes < 20_000 / 33,
            "{maybes} of 20,000 absent keys said maybe"
        );
        // Damage every filter block: every answer is "maybe".
        let mut bytes = std::fs::read(&path).unwrap();
        let at = run.filter_at as usize;
        for block in 0..run.filter_blocks as usize {
            bytes[at + block * FILTER_BLOCK as usize] ^= 0xff;
        }
        let damaged = dir.path().join("damaged.run");
        std::fs::write(&damaged, &bytes).unwrap();
        let run = Run::open(&damaged).unwrap();
        assert!((0..100u64).all(|i| run.may_contain(format!("X:{i}").as_bytes()).unwrap()));
    }

    #[test]
    fn an_empty_run_opens_and_finds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.run");
        write_run::<&[u8]>(&path, []).unwrap();
        let run = Run::open(&path).unwrap();
        assert!(run.is_empty());
        assert!(!run.may_contain(b"x").unwrap());
        assert!(run.values(b"x", 0, 10).unwrap().is_empty());
        assert_eq!(run.entries().count(), 0);
    }

    #[test]
    fn entries_out_of_order_or_too_long_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.run");
        for entries in [
            vec![(b"b".to_vec(), 1), (b"a".to_vec(), 2)],
            vec![(b"a".to_vec(), 2), (b"a".to_vec(), 1)],
            vec![(b"a".to_vec(), 1), (b"a".to_vec(), 1)],
            vec![(vec![b'k'; MAX_KEY_BYTES + 1], 1)],
        ] {
            let error = write_run(&path, entries).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
            assert!(!path.exists(), "nothing is left under the run's name");
            assert!(!path.with_extension("tmp").exists(), "nor beside it");
        }
    }

    /// Runs merge into one holding every entry once, in order, across block edges and
    /// with entries that several runs hold.
    #[test]
    fn runs_merge_into_one() {
        let dir = tempfile::tempdir().unwrap();
        let all = sample();
        // Three overlapping thirds (every entry in at least one, many in two), and an
        // empty run.
        let parts: Vec<Vec<(Vec<u8>, u64)>> = vec![
            all.iter().step_by(2).cloned().collect(),
            all.iter().skip(1).step_by(2).cloned().collect(),
            all.iter().step_by(3).cloned().collect(),
            Vec::new(),
        ];
        let mut runs = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let path = dir.path().join(format!("{i}.run"));
            write_run(&path, part.iter().map(|(k, v)| (k, *v))).unwrap();
            runs.push(Run::open(&path).unwrap());
        }
        let merged = dir.path().join("merged.run");
        let refs: Vec<&Run> = runs.iter().collect();
        assert_eq!(merge_runs(&refs, &merged).unwrap(), all.len() as u64);
        let run = Run::open(&merged).unwrap();
        let back: Vec<(Vec<u8>, u64)> = run.entries().collect::<io::Result<_>>().unwrap();
        assert_eq!(back, all);
        assert_eq!(
            run.values(b"hub.bench.s0150", 0, usize::MAX).unwrap(),
            expected(&all, b"hub.bench.s0150", 0, usize::MAX)
        );
        assert_eq!(merge_runs(&[], &merged).unwrap(), 0);
    }

    /// Runs that interleave entry by entry, lie wholly apart, repeat each other or share
    /// a key across their seqs merge into the sorted union, each entry once.
    #[test]
    fn runs_of_every_shape_merge_into_their_sorted_union() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        for round in 0..40 {
            let runs_count = 1 + random(6) as usize;
            let mut parts: Vec<Vec<(Vec<u8>, u64)>> = Vec::new();
            for part in 0..runs_count {
                let mut entries: Vec<(Vec<u8>, u64)> = (0..random(3_000))
                    .map(|_| {
                        // Few keys (shared, like subjects) or many (like ids), some runs
                        // in a key range of their own.
                        let keys = if round % 2 == 0 { 7 } else { 100_000 };
                        let base = if round % 3 == 0 {
                            part as u64 * 1_000_000
                        } else {
                            0
                        };
                        let key = format!("k{:07}", base + random(keys)).into_bytes();
                        (key, random(50_000))
                    })
                    .collect();
                entries.sort();
                entries.dedup();
                parts.push(entries);
            }
            if round % 5 == 0 {
                parts.push(parts[0].clone());
            }
            let mut runs = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let path = dir.path().join(format!("{round}-{i}.run"));
                write_run(&path, part.iter().map(|(k, v)| (k, *v))).unwrap();
                runs.push(Run::open(&path).unwrap());
            }
            let mut union: Vec<(Vec<u8>, u64)> = parts.concat();
            union.sort();
            union.dedup();
            let merged = dir.path().join(format!("{round}-merged.run"));
            let refs: Vec<&Run> = runs.iter().collect();
            assert_eq!(merge_runs(&refs, &merged).unwrap(), union.len() as u64);
            let merged = Run::open(&merged).unwrap();
            let back: Vec<(Vec<u8>, u64)> = merged.entries().collect::<io::Result<_>>().unwrap();
            assert!(back == union, "round {round}: {runs_count} runs");
            // The filter, sized from the inputs, never says "no" to a key the run holds.
            assert!(union
                .iter()
                .all(|(key, _)| merged.may_contain(key).unwrap()));
        }
    }

    /// A damaged input stops the merge with its error and leaves no run behind.
    #[test]
    fn a_damaged_input_fails_the_merge_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let all = sample();
        let good = dir.path().join("good.run");
        write_run(&good, all.iter().map(|(k, v)| (k, *v))).unwrap();
        let bad = dir.path().join("bad.run");
        write_run(&bad, all.iter().map(|(k, v)| (k, *v + 1_000_000))).unwrap();
        let mut bytes = std::fs::read(&bad).unwrap();
        bytes[BLOCK_BYTES * 2] ^= 0xff; // inside the third block
        std::fs::write(&bad, &bytes).unwrap();
        let (good, bad) = (Run::open(&good).unwrap(), Run::open(&bad).unwrap());
        let merged = dir.path().join("merged.run");
        let error = merge_runs(&[&good, &bad], &merged).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(!merged.exists() && !merged.with_extension("tmp").exists());
    }

    /// Every flipped byte of a run is either an error (on open or on the read that meets
    /// it) or leaves the answers exactly right: never a wrong value.
    #[test]
    fn damage_is_an_error_never_a_wrong_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.run");
        let entries: Vec<(Vec<u8>, u64)> = (0..40u64)
            .map(|i| (format!("k{:02}", i / 4).into_bytes(), i))
            .collect();
        write_run(&path, entries.iter().map(|(k, v)| (k, *v))).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let damaged = dir.path().join("damaged.run");
        for at in 0..bytes.len() {
            let mut copy = bytes.clone();
            copy[at] ^= 0x5a;
            std::fs::write(&damaged, &copy).unwrap();
            let Ok(run) = Run::open(&damaged) else {
                continue;
            };
            for k in 0..10u64 {
                let key = format!("k{k:02}").into_bytes();
                if let Ok(values) = run.values(&key, 0, usize::MAX) {
                    assert_eq!(
                        values,
                        expected(&entries, &key, 0, usize::MAX),
                        "byte {at} flipped"
                    );
                }
            }
        }
        // Cut short anywhere: never opens.
        for len in 0..bytes.len() {
            std::fs::write(&damaged, &bytes[..len]).unwrap();
            assert!(Run::open(&damaged).is_err(), "cut at {len}");
        }
    }
}
