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
    write_entries(path, entries.into_iter().map(Ok))
}

/// Merges runs into one at `path`, like [`write_run`]: every entry in order, one that
/// several runs hold written once. A damaged input is an error, and leaves no run.
pub fn merge_runs(runs: &[&Run], path: &Path) -> io::Result<u64> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    let mut sources: Vec<_> = runs.iter().map(|run| run.entries()).collect();
    let mut heads = BinaryHeap::new();
    for (i, source) in sources.iter_mut().enumerate() {
        if let Some(entry) = source.next() {
            let (key, value) = entry?;
            heads.push(Reverse((key, value, i)));
        }
    }
    let mut last: Option<(Vec<u8>, u64)> = None;
    let merged = std::iter::from_fn(move || loop {
        let Reverse((key, value, i)) = heads.pop()?;
        match sources[i].next() {
            Some(Ok((next_key, next_value))) => heads.push(Reverse((next_key, next_value, i))),
            Some(Err(error)) => return Some(Err(error)),
            None => {}
        }
        if last.as_ref().is_some_and(|(k, v)| (k, *v) == (&key, value)) {
            continue;
        }
        last = Some((key.clone(), value));
        return Some(Ok((key, value)));
    });
    write_entries(path, merged)
}

/// Writes entries that may fail to be read: the first error removes what was written.
fn write_entries<K: AsRef<[u8]>>(
    path: &Path,
    entries: impl Iterator<Item = io::Result<(K, u64)>>,
) -> io::Result<u64> {
    let temporary = path.with_extension("tmp");
    let written = write_temporary(&temporary, entries).and_then(|count| {
        std::fs::rename(&temporary, path)?;
        Ok(count)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn write_temporary<K: AsRef<[u8]>>(
    temporary: &Path,
    entries: impl Iterator<Item = io::Result<(K, u64)>>,
) -> io::Result<u64> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temporary)?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let mut fences: Vec<Fence> = Vec::new();
    let mut block: Vec<u8> = Vec::with_capacity(BLOCK_BYTES + MAX_KEY_BYTES + 16);
    let mut first: Option<(Vec<u8>, u64)> = None;
    let mut last: Option<(Vec<u8>, u64)> = None;
    let (mut offset, mut count) = (0u64, 0u64);
    let mut hashes: Vec<u64> = Vec::new();
    let mut close = |block: &mut Vec<u8>,
                     first: &mut Option<(Vec<u8>, u64)>,
                     out: &mut BufWriter<File>,
                     offset: &mut u64|
     -> io::Result<()> {
        let Some((key, value)) = first.take() else {
            return Ok(());
        };
        let sum = crc32fast::hash(block);
        block.extend_from_slice(&sum.to_le_bytes());
        out.write_all(block)?;
        fences.push(Fence {
            offset: *offset,
            len: block.len() as u32,
            key,
            value,
        });
        *offset += block.len() as u64;
        block.clear();
        Ok(())
    };
    for entry in entries {
        let (key, value) = entry?;
        let key = key.as_ref();
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid_input(format!(
                "a run key of {} bytes is longer than {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        if let Some((last_key, last_value)) = &last {
            if (last_key.as_slice(), *last_value) >= (key, value) {
                return Err(invalid_input(
                    "run entries must be strictly increasing".into(),
                ));
            }
        }
        if first.is_none() {
            first = Some((key.to_vec(), value));
        }
        if last
            .as_ref()
            .is_none_or(|(last_key, _)| last_key.as_slice() != key)
        {
            hashes.push(key_hash(key));
        }
        block.extend_from_slice(&(key.len() as u16).to_le_bytes());
        block.extend_from_slice(key);
        block.extend_from_slice(&value.to_le_bytes());
        count += 1;
        match &mut last {
            Some((last_key, last_value)) => {
                last_key.clear();
                last_key.extend_from_slice(key);
                *last_value = value;
            }
            None => last = Some((key.to_vec(), value)),
        }
        if block.len() >= BLOCK_BYTES {
            close(&mut block, &mut first, &mut out, &mut offset)?;
        }
    }
    close(&mut block, &mut first, &mut out, &mut offset)?;

    let mut index = Vec::new();
    for fence in &fences {
        index.extend_from_slice(&fence.offset.to_le_bytes());
        index.extend_from_slice(&fence.len.to_le_bytes());
        index.extend_from_slice(&(fence.key.len() as u16).to_le_bytes());
        index.extend_from_slice(&fence.key);
        index.extend_from_slice(&fence.value.to_le_bytes());
    }
    let sum = crc32fast::hash(&index);
    index.extend_from_slice(&sum.to_le_bytes());
    out.write_all(&index)?;

    let blocks = (hashes.len() as u64 * FILTER_BITS_PER_KEY).div_ceil(u64::from(FILTER_BITS));
    let mut filter = vec![[0u8; 64]; blocks as usize];
    for &hash in &hashes {
        let (block, bits) = filter_bits(hash, blocks);
        for bit in bits {
            filter[block as usize][(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    for block in &filter {
        out.write_all(block)?;
        out.write_all(&crc32fast::hash(block).to_le_bytes())?;
    }
    let filter_at = offset + index.len() as u64;
    for word in [offset, index.len() as u64, filter_at, blocks, count, MAGIC] {
        out.write_all(&word.to_le_bytes())?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    Ok(count)
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

    /// Every entry in order, for merging runs.
    pub fn entries(&self) -> impl Iterator<Item = io::Result<(Vec<u8>, u64)>> + '_ {
        self.fences.iter().flat_map(move |fence| {
            let entries: Vec<io::Result<(Vec<u8>, u64)>> = match self.block(fence) {
                Err(error) => vec![Err(error)],
                Ok(block) => {
                    let mut out = Vec::new();
                    let mut at = block.as_slice();
                    while !at.is_empty() {
                        match entry(at) {
                            Some((key, value, rest)) => {
                                out.push(Ok((key.to_vec(), value)));
                                at = rest;
                            }
                            None => {
                                out.push(Err(self.damaged(fence, "a damaged entry")));
                                break;
                            }
                        }
                    }
                    out
                }
            };
            entries
        })
    }

    /// A block's entries, its CRC checked.
    fn block(&self, fence: &Fence) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; fence.len as usize];
        self.file.read_exact_at(&mut bytes, fence.offset)?;
        if bytes.len() < 4 {
            return Err(self.damaged(fence, "a short block"));
        }
        let sum = bytes.split_off(bytes.len() - 4);
        if crc32fast::hash(&bytes) != u32::from_le_bytes(sum.try_into().expect("4")) {
            return Err(self.damaged(fence, "a damaged block"));
        }
        Ok(bytes)
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
