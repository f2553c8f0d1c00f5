//! Postings: for each key, the seqs of the events that carry it, kept as a small
//! log-structured merge of sorted runs ([`crate::run`]): the segment log's indexes by
//! subject, correlation id, id and aggregate (issue 11). One structure serves them all;
//! the caller prefixes each kind of key.
//!
//! - New entries go to a **memtable** in memory; [`Postings::flush`] writes it as a run,
//!   so memory stays bounded (the caller flushes every few thousand events).
//! - Runs are **merged** in tiers ([`Postings::compact`]): [`TIER`] runs of one tier
//!   become one of the next, so a lookup visits few runs and an entry is rewritten once
//!   per tier (~0.1 µs per entry per merge, `examples/run_cost.rs`).
//! - The **manifest** names the live runs and the last seq they cover; it is replaced
//!   atomically (written aside, synced, renamed), so a crash leaves the old set or the
//!   new. Postings are derived data: after a crash the caller adds the log's events past
//!   [`Postings::indexed_through`] again. Files the manifest does not name are leftovers
//!   of a flush or merge cut short, and are deleted at open.
//!
//! Lookups take a snapshot of the runs (`Arc`s), so a merge may replace them meanwhile:
//! an unlinked file stays readable through its open handle.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::run::{merge_runs, write_run, Run};

/// Runs of one tier merged into one of the next.
pub const TIER: usize = 4;
const MANIFEST: &str = "MANIFEST";
const MANIFEST_MAGIC: &str = "herald-postings 1";

/// A run and the tier it belongs to (flushed runs are tier 0).
struct Live {
    name: String,
    tier: u32,
    run: Arc<Run>,
}

struct State {
    /// Oldest first.
    runs: Vec<Live>,
    indexed_through: u64,
    next_file: u64,
}

/// Entries not yet in a run: each key's seqs, in order. A hash map, sorted only when
/// flushed: most keys (ids, correlation ids) have one seq, and a tree of them cost more
/// than everything else the log does per event. Hashed with foldhash (seeded per
/// process), not SipHash: adding keys is on the commit's path, and SipHash was a fifth
/// of it.
type Memtable = HashMap<MemKey, Seqs, foldhash::fast::RandomState>;

/// Keys this long or shorter are kept in place (an id or a correlation id takes 17
/// bytes): no allocation per key.
const INLINE_KEY: usize = 22;

/// A memtable key: short ones in place, the rest boxed. Hashes and compares as its
/// bytes, so the map is searched by `&[u8]`.
#[derive(Clone)]
enum MemKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Boxed(Box<[u8]>),
}

impl MemKey {
    fn new(key: &[u8]) -> MemKey {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            MemKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            MemKey::Boxed(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            MemKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            MemKey::Boxed(bytes) => bytes,
        }
    }
}

impl std::borrow::Borrow<[u8]> for MemKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::hash::Hash for MemKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq for MemKey {
    fn eq(&self, other: &MemKey) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for MemKey {}

/// A key's seqs: most keys have one, which then needs no allocation of its own.
enum Seqs {
    One(u64),
    Many(Vec<u64>),
}

impl Seqs {
    fn as_slice(&self) -> &[u64] {
        match self {
            Seqs::One(seq) => std::slice::from_ref(seq),
            Seqs::Many(seqs) => seqs,
        }
    }

    fn push(&mut self, seq: u64) {
        match self {
            Seqs::One(first) => *self = Seqs::Many(vec![*first, seq]),
            Seqs::Many(seqs) => seqs.push(seq),
        }
    }

    /// Drops the seqs from `from` on; whether any is left.
    fn cut_from(&mut self, from: u64) -> bool {
        match self {
            Seqs::One(seq) => *seq < from,
            Seqs::Many(seqs) => {
                seqs.truncate(seqs.partition_point(|&s| s < from));
                !seqs.is_empty()
            }
        }
    }
}

#[derive(Default)]
struct Memtables {
    /// Where entries are added.
    active: Memtable,
    /// Distinct keys of the last memtable flushed: room made at once for as many when
    /// a fresh memtable gets its first entry, so it never grows by rehashing.
    expected_keys: usize,
    /// The highest seq added to `active`.
    active_through: u64,
    /// A memtable being written as a run: lookups still read it.
    frozen: Option<Arc<Memtable>>,
}

/// The postings of one log directory.
pub struct Postings {
    dir: PathBuf,
    /// Lock order: `held`, then `state`, then `memtables` (a flush takes `held` only
    /// to freeze the memtable).
    memtables: RwLock<Memtables>,
    /// Entries in the active memtable.
    pending: std::sync::atomic::AtomicUsize,
    state: RwLock<State>,
    /// Serialises flushes and merges (each rewrites the manifest).
    writing: Mutex<()>,
    /// Held while the memtable holds entries whose seqs may yet be withdrawn
    /// ([`Postings::hold`]): a flush does not freeze the memtable meanwhile.
    held: Mutex<()>,
}

impl Postings {
    /// Opens (creating) the postings in `dir`: the runs the manifest names; every other
    /// run file there is deleted.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<Postings> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let (names, indexed_through, next_file) = read_manifest(&dir)?;
        let mut runs = Vec::with_capacity(names.len());
        for (name, tier) in &names {
            runs.push(Live {
                name: name.clone(),
                tier: *tier,
                run: Arc::new(Run::open(&dir.join(name))?),
            });
        }
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(".run") || name.ends_with(".tmp");
            if ours && !names.iter().any(|(n, _)| *n == name) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(Postings {
            dir,
            memtables: RwLock::new(Memtables::default()),
            pending: Default::default(),
            state: RwLock::new(State {
                runs,
                indexed_through,
                next_file,
            }),
            writing: Mutex::new(()),
            held: Mutex::new(()),
        })
    }

    /// The last seq whose entries are in runs (0 when none): entries of later seqs are
    /// lost with the memtable in a crash, and must be added again.
    pub fn indexed_through(&self) -> u64 {
        self.state.read().expect("postings state").indexed_through
    }

    /// Holds off flushes and merges while the guard lives (tests copy a live log's
    /// files as a crash would leave them: at one instant).
    #[cfg(test)]
    pub(crate) fn pause(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().expect("postings writer")
    }

    /// Entries added since the last flush.
    pub fn pending(&self) -> usize {
        self.pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many runs a lookup visits.
    pub fn runs(&self) -> usize {
        self.state.read().expect("postings state").runs.len()
    }

    /// Adds `(key, seq)` pairs, seqs above every seq added before.
    pub fn add<'a>(&self, entries: impl IntoIterator<Item = (&'a [u8], u64)>) {
        let mut memtables = self.memtables.write().expect("memtables");
        let memtables = &mut *memtables;
        let mut added = 0;
        for (key, seq) in entries {
            memtables.active_through = memtables.active_through.max(seq);
            let memtable = &mut memtables.active;
            if memtable.capacity() == 0 {
                memtable.reserve(memtables.expected_keys + memtables.expected_keys / 8);
            }
            match memtable.get_mut(key) {
                Some(seqs) => seqs.push(seq),
                None => {
                    memtable.insert(MemKey::new(key), Seqs::One(seq));
                }
            }
            added += 1;
        }
        self.pending
            .fetch_add(added, std::sync::atomic::Ordering::Relaxed);
    }

    /// Keeps the memtable from being flushed while the guard lives: entries added
    /// meanwhile stay where [`Postings::withdraw_from`] can take them back (a writer
    /// adds an append's keys while its sync runs, and withdraws them if it fails).
    pub fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.held.lock().expect("postings hold")
    }

    /// Takes back every entry of `from` or a later seq added while `_held`.
    pub fn withdraw_from(&self, from: u64, _held: &std::sync::MutexGuard<'_, ()>) {
        let mut memtables = self.memtables.write().expect("memtables");
        memtables.active.retain(|_, seqs| seqs.cut_from(from));
        let left: usize = memtables.active.values().map(|s| s.as_slice().len()).sum();
        memtables.active_through = memtables.active_through.min(from.saturating_sub(1));
        self.pending
            .store(left, std::sync::atomic::Ordering::Relaxed);
    }

    /// Up to `max` seqs of `key`, from `from` on, in order: from every run and the
    /// memtable.
    pub fn seqs(&self, key: &[u8], from: u64, max: usize) -> io::Result<Vec<u64>> {
        // The runs and the memtables in one view: a flush moves entries from a memtable
        // to a run under the state lock, so they are in one or the other here.
        let mut all = Vec::new();
        let runs: Vec<Arc<Run>> = {
            let state = self.state.read().expect("postings state");
            let memtables = self.memtables.read().expect("memtables");
            for memtable in memtables
                .frozen
                .as_deref()
                .into_iter()
                .chain([&memtables.active])
            {
                if let Some(seqs) = memtable.get(key) {
                    let seqs = seqs.as_slice();
                    let start = seqs.partition_point(|&s| s < from);
                    all.extend(seqs[start..].iter().take(max));
                }
            }
            state.runs.iter().map(|live| live.run.clone()).collect()
        };
        for run in &runs {
            // Most keys (ids, correlation ids) are in one run of many.
            if run.may_contain(key)? {
                all.extend(run.values(key, from, max)?);
            }
        }
        all.sort_unstable();
        all.dedup();
        all.truncate(max);
        Ok(all)
    }

    /// Writes the memtable as a run: every seq added so far is then in runs. Adds go on
    /// meanwhile, into a fresh memtable.
    pub fn flush(&self) -> io::Result<()> {
        let _writing = self.writing.lock().expect("postings writer");
        let (frozen, through) = {
            let _held = self.held.lock().expect("postings hold");
            let mut memtables = self.memtables.write().expect("memtables");
            let frozen = Arc::new(std::mem::take(&mut memtables.active));
            memtables.frozen = Some(frozen.clone());
            memtables.expected_keys = frozen.len();
            self.pending.store(0, std::sync::atomic::Ordering::Relaxed);
            (frozen, memtables.active_through)
        };
        let through = through.max(self.indexed_through());
        let mut keys: Vec<(&[u8], &Seqs)> = frozen
            .iter()
            .map(|(key, seqs)| (key.as_slice(), seqs))
            .collect();
        keys.sort_unstable_by_key(|(key, _)| *key);
        let entries = keys
            .into_iter()
            .flat_map(|(key, seqs)| seqs.as_slice().iter().map(move |&seq| (key, seq)));
        let written = self.write_flushed(entries, through);
        if written.is_err() {
            // Back into the active memtable, so that nothing is lost for lookups.
            let mut memtables = self.memtables.write().expect("memtables");
            if let Some(frozen) = memtables.frozen.take() {
                for (key, seqs) in frozen.iter() {
                    let mut merged = seqs.as_slice().to_vec();
                    if let Some(later) = memtables.active.remove(key) {
                        merged.extend_from_slice(later.as_slice());
                    }
                    memtables.active.insert(key.clone(), Seqs::Many(merged));
                }
            }
        }
        written
    }

    fn write_flushed<'a>(
        &self,
        mut entries: impl Iterator<Item = (&'a [u8], u64)>,
        through: u64,
    ) -> io::Result<()> {
        let first = entries.next();
        let mut runs_after = Vec::new();
        let name = {
            let mut state = self.state.write().expect("postings state");
            state.next_file += 1;
            format!("{:016}.run", state.next_file)
        };
        if let Some(first) = first {
            write_run(&self.dir.join(&name), std::iter::once(first).chain(entries))?;
            runs_after.push(Live {
                name: name.clone(),
                tier: 0,
                run: Arc::new(Run::open(&self.dir.join(&name))?),
            });
        }
        {
            let mut state = self.state.write().expect("postings state");
            let mut names: Vec<(String, u32)> = state
                .runs
                .iter()
                .map(|l| (l.name.clone(), l.tier))
                .collect();
            names.extend(runs_after.iter().map(|l| (l.name.clone(), l.tier)));
            write_manifest(&self.dir, &names, through, state.next_file)?;
            state.runs.extend(runs_after);
            state.indexed_through = through;
            // Under the state lock: a lookup sees the entries in the new run or in the
            // frozen memtable, never in neither.
            self.memtables.write().expect("memtables").frozen = None;
        }
        Ok(())
    }

    /// Merges the newest [`TIER`] runs of a tier into one of the next tier, as long as a
    /// tier has that many. Lookups go on meanwhile.
    pub fn compact(&self) -> io::Result<()> {
        let _writing = self.writing.lock().expect("postings writer");
        loop {
            let (inputs, tier, name) = {
                let mut state = self.state.write().expect("postings state");
                let Some(tier) = full_tier(&state.runs) else {
                    return Ok(());
                };
                let inputs: Vec<(String, Arc<Run>)> = state
                    .runs
                    .iter()
                    .filter(|l| l.tier == tier)
                    .map(|l| (l.name.clone(), l.run.clone()))
                    .collect();
                state.next_file += 1;
                (inputs, tier, format!("{:016}.run", state.next_file))
            };
            let path = self.dir.join(&name);
            let runs: Vec<&Run> = inputs.iter().map(|(_, run)| run.as_ref()).collect();
            merge_runs(&runs, &path)?;
            let merged = Arc::new(Run::open(&path)?);
            let mut state = self.state.write().expect("postings state");
            // The merged run takes the place of the oldest input: runs stay in age order.
            let mut runs = Vec::with_capacity(state.runs.len());
            let mut placed = false;
            for live in state.runs.drain(..) {
                if inputs.iter().any(|(n, _)| *n == live.name) {
                    if !placed {
                        runs.push(Live {
                            name: name.clone(),
                            tier: tier + 1,
                            run: merged.clone(),
                        });
                        placed = true;
                    }
                } else {
                    runs.push(live);
                }
            }
            let names: Vec<(String, u32)> = runs.iter().map(|l| (l.name.clone(), l.tier)).collect();
            let written = write_manifest(&self.dir, &names, state.indexed_through, state.next_file);
            if let Err(error) = written {
                // Keep the inputs (and their names): put the old list back.
                let mut restored = Vec::new();
                for live in runs {
                    if live.name == name {
                        for (input, run) in &inputs {
                            restored.push(Live {
                                name: input.clone(),
                                tier,
                                run: run.clone(),
                            });
                        }
                    } else {
                        restored.push(live);
                    }
                }
                state.runs = restored;
                let _ = std::fs::remove_file(&path);
                return Err(error);
            }
            state.runs = runs;
            drop(state);
            for (input, _) in &inputs {
                let _ = std::fs::remove_file(self.dir.join(input));
            }
        }
    }
}

/// The lowest tier holding [`TIER`] runs, if any.
fn full_tier(runs: &[Live]) -> Option<u32> {
    let mut counts = BTreeMap::new();
    for live in runs {
        *counts.entry(live.tier).or_insert(0usize) += 1;
    }
    counts
        .into_iter()
        .find(|&(_, count)| count >= TIER)
        .map(|(tier, _)| tier)
}

/// `herald-postings 1`, then `through <seq>`, `next <n>`, one `run <tier> <name>` per
/// run, and `crc <crc32 of the lines before>`.
fn write_manifest(dir: &Path, runs: &[(String, u32)], through: u64, next: u64) -> io::Result<()> {
    let mut text = format!("{MANIFEST_MAGIC}\nthrough {through}\nnext {next}\n");
    for (name, tier) in runs {
        text.push_str(&format!("run {tier} {name}\n"));
    }
    let sum = crc32fast::hash(text.as_bytes());
    text.push_str(&format!("crc {sum}\n"));
    let aside = dir.join("MANIFEST.new");
    let mut file = File::create(&aside)?;
    file.write_all(text.as_bytes())?;
    file.sync_data()?;
    std::fs::rename(&aside, dir.join(MANIFEST))?;
    File::open(dir)?.sync_all()
}

type Manifest = (Vec<(String, u32)>, u64, u64);

fn read_manifest(dir: &Path) -> io::Result<Manifest> {
    let text = match std::fs::read_to_string(dir.join(MANIFEST)) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok((Vec::new(), 0, 0));
        }
        Err(error) => return Err(error),
    };
    let damaged = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("damaged postings manifest in {}", dir.display()),
        )
    };
    let body_end = text.rfind("crc ").ok_or_else(damaged)?;
    let sum: u32 = text[body_end + 4..].trim().parse().map_err(|_| damaged())?;
    if crc32fast::hash(&text.as_bytes()[..body_end]) != sum {
        return Err(damaged());
    }
    let mut lines = text[..body_end].lines();
    if lines.next() != Some(MANIFEST_MAGIC) {
        return Err(damaged());
    }
    let mut number = |prefix: &str| -> io::Result<u64> {
        lines
            .next()
            .and_then(|l| l.strip_prefix(prefix))
            .and_then(|n| n.parse().ok())
            .ok_or_else(damaged)
    };
    let through = number("through ")?;
    let next = number("next ")?;
    let mut runs = Vec::new();
    for line in lines {
        let mut parts = line
            .strip_prefix("run ")
            .ok_or_else(damaged)?
            .splitn(2, ' ');
        let tier = parts
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(damaged)?;
        let name = parts.next().ok_or_else(damaged)?;
        if name.contains('/') || !name.ends_with(".run") {
            return Err(damaged());
        }
        runs.push((name.to_owned(), tier));
    }
    Ok((runs, through, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn key(n: u64) -> Vec<u8> {
        format!("S:hub.k{}", n % 13).into_bytes()
    }

    fn check(postings: &Postings, model: &BTreeSet<(Vec<u8>, u64)>, probes: u64) {
        for k in 0..13u64 {
            let key = key(k);
            for from in [0, 1, probes / 3, probes / 2 + 1, probes] {
                for max in [1, 7, usize::MAX] {
                    let want: Vec<u64> = model
                        .iter()
                        .filter(|(kk, s)| *kk == key && *s >= from)
                        .map(|(_, s)| *s)
                        .take(max)
                        .collect();
                    assert_eq!(
                        postings.seqs(&key, from, max).unwrap(),
                        want,
                        "k{k} from {from} max {max}"
                    );
                }
            }
        }
    }

    /// Adds, flushes, merges and reopens, checked against a plain set after each step.
    #[test]
    fn lookups_agree_with_a_set_through_flushes_merges_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut postings = Postings::open(dir.path()).unwrap();
        let mut model = BTreeSet::new();
        let mut seq = 0u64;
        for round in 0..40u64 {
            let keys: Vec<(Vec<u8>, u64)> = (0..(round % 5 + 1) * 17)
                .map(|_| {
                    seq += 1;
                    (key(seq * 7 + round), seq)
                })
                .collect();
            postings.add(keys.iter().map(|(k, s)| (k.as_slice(), *s)));
            model.extend(keys);
            check(&postings, &model, seq);
            postings.flush().unwrap();
            assert_eq!(postings.indexed_through(), seq);
            postings.compact().unwrap();
            check(&postings, &model, seq);
            if round % 9 == 8 {
                drop(postings);
                postings = Postings::open(dir.path()).unwrap();
                assert_eq!(postings.indexed_through(), seq);
                check(&postings, &model, seq);
            }
        }
        assert!(postings.runs() < 2 * TIER * 3, "{} runs", postings.runs());
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            files,
            postings.runs() + 1,
            "runs and the manifest, nothing else"
        );
    }

    /// A crash loses the memtable (the caller adds those entries again from the log)
    /// and leaves run files no manifest names, which the next open deletes.
    #[test]
    fn a_crash_loses_only_what_was_not_flushed_and_leftovers_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let postings = Postings::open(dir.path()).unwrap();
        postings.add([(b"a".as_slice(), 1), (b"b".as_slice(), 2)]);
        postings.flush().unwrap();
        postings.add([(b"a".as_slice(), 3)]);
        drop(postings);
        // A flush or merge cut short: a run and a temporary file the manifest never got.
        std::fs::write(dir.path().join("0000000000000099.run"), b"partial").unwrap();
        std::fs::write(dir.path().join("0000000000000100.tmp"), b"partial").unwrap();
        std::fs::write(dir.path().join("MANIFEST.new"), b"partial").unwrap();

        let postings = Postings::open(dir.path()).unwrap();
        assert_eq!(postings.indexed_through(), 2);
        assert_eq!(postings.seqs(b"a", 0, 10).unwrap(), vec![1]);
        assert!(!dir.path().join("0000000000000099.run").exists());
        assert!(!dir.path().join("0000000000000100.tmp").exists());
        postings.add([(b"a".as_slice(), 3)]);
        assert_eq!(postings.seqs(b"a", 0, 10).unwrap(), vec![1, 3]);
    }

    /// Lookups while one thread adds and another flushes and merges: every entry added
    /// before a lookup began is found, whichever memtable or run holds it by then.
    #[test]
    fn lookups_see_every_entry_added_before_them_while_flushes_and_merges_run() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let postings = Arc::new(Postings::open(dir.path()).unwrap());
        let added = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (postings, done) = (postings.clone(), done.clone());
            std::thread::spawn(move || {
                let mut flushes = 0;
                while !done.load(Ordering::Acquire) {
                    postings.flush().unwrap();
                    postings.compact().unwrap();
                    flushes += 1;
                }
                flushes
            })
        };
        let reader = {
            let (postings, added, done) = (postings.clone(), added.clone(), done.clone());
            std::thread::spawn(move || {
                let mut lookups = 0;
                while !done.load(Ordering::Acquire) {
                    let through = added.load(Ordering::Acquire);
                    let k = lookups % 13;
                    let found = postings.seqs(&key(k), 0, usize::MAX).unwrap();
                    let want = (1..=through).filter(|s| s % 13 == k).count();
                    let seen = found.iter().filter(|&&s| s <= through).count();
                    assert_eq!(seen, want, "key {k} through {through}");
                    lookups += 1;
                }
                lookups
            })
        };
        for seq in 1..=3_000u64 {
            let key = key(seq);
            postings.add([(key.as_slice(), seq)]);
            added.store(seq, Ordering::Release);
            if seq % 50 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        done.store(true, Ordering::Release);
        assert!(flusher.join().unwrap() > 3);
        assert!(reader.join().unwrap() > 10);
    }

    #[test]
    fn a_damaged_manifest_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let postings = Postings::open(dir.path()).unwrap();
        postings.add([(b"a".as_slice(), 1)]);
        postings.flush().unwrap();
        drop(postings);
        let path = dir.path().join(MANIFEST);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("through 1", "through 9")).unwrap();
        let error = Postings::open(dir.path()).err().expect("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }
}
