//! The subject index, written in bulk.
//!
//! An index on `events (subject)` puts each event's entry in its subject's part of a
//! B-tree: a commit of 20 events over 20 subjects writes 20 leaf pages of it, and the
//! WAL's cost is per page written (the profile of a durable publish: two thirds of its
//! pages were that index's). So the index is its own table, `subject_seqs`, filled
//! [`BATCH`] events at a time in subject order — a few pages per subject per batch — and
//! the events after the last batch (the *tail*, fewer than [`BATCH`] plus one commit)
//! are found by reading the log itself, which is in seq order and in the page cache.
//!
//! Every reader goes through this module: [`first_seqs`] and [`count_after`] see the
//! index and the tail as one list, and writers that delete events tell it with
//! [`forget`] and [`forget_from`].

use std::collections::HashSet;

use herald_core::Seq;
use rusqlite::{params, Connection, OptionalExtension};

/// Events indexed per batch: a batch writes a few pages per subject it holds, and a
/// reader of a subject reads at most this many rows (plus one commit's) of the log.
pub(super) const BATCH: Seq = 256;

/// The cursor (in `cursors`) that holds the last seq the index covers.
pub(super) const INDEXED_THROUGH: &str = "herald:subject-index";

/// The last seq `subject_seqs` covers: later events are in the tail.
pub(super) fn indexed_through(conn: &Connection) -> rusqlite::Result<Seq> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM cursors WHERE name = ?1")?
        .query_row([INDEXED_THROUGH], |row| row.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0).max(0) as Seq)
}

/// Indexes the tail when it holds [`BATCH`] events or more (`all`: whatever it holds).
/// Runs in the transaction that appended up to `head`, so the index and its cursor
/// commit with the events, in the same sync.
pub(super) fn catch_up(tx: &Connection, head: Seq, all: bool) -> rusqlite::Result<()> {
    let indexed = indexed_through(tx)?;
    if head <= indexed || (!all && head - indexed < BATCH) {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO subject_seqs (subject, seq)
         SELECT subject, seq FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY subject, seq",
    )?
    .execute(params![indexed as i64, head as i64])?;
    set_indexed_through(tx, head)
}

fn set_indexed_through(tx: &Connection, seq: Seq) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO cursors (name, seq) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
    )?
    .execute(params![INDEXED_THROUGH, seq as i64])
    .map(drop)
}

/// The first `limit` seqs in `(lo, hi]` of events on any of `subjects`, in seq order.
pub(super) fn first_seqs(
    conn: &Connection,
    subjects: &[String],
    lo: Seq,
    hi: Seq,
    limit: usize,
) -> rusqlite::Result<Vec<Seq>> {
    if subjects.is_empty() {
        return Ok(Vec::new());
    }
    let indexed = indexed_through(conn)?;
    let mut seqs: Vec<Seq> = Vec::new();
    if lo < indexed.min(hi) {
        let mut stmt = conn.prepare_cached(
            "SELECT seq FROM subject_seqs
             WHERE subject = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4",
        )?;
        for subject in subjects {
            let rows = stmt.query_map(
                params![subject, lo as i64, indexed.min(hi) as i64, limit as i64],
                |row| row.get::<_, i64>(0),
            )?;
            for seq in rows {
                seqs.push(seq?.max(0) as Seq);
            }
        }
        seqs.sort_unstable();
        seqs.truncate(limit);
    }
    if seqs.len() < limit && hi > indexed {
        let wanted = Subjects::new(subjects);
        tail(conn, lo.max(indexed), hi, |seq, subject| {
            if wanted.contains(subject) {
                seqs.push(seq);
            }
            seqs.len() < limit
        })?;
    }
    Ok(seqs)
}

/// How many events on any of `subjects` come after `after`.
pub(super) fn count_after(
    conn: &Connection,
    subjects: &[String],
    after: Seq,
) -> rusqlite::Result<u64> {
    if subjects.is_empty() {
        return Ok(0);
    }
    let indexed = indexed_through(conn)?;
    let mut total = 0u64;
    if after < indexed {
        let mut stmt = conn.prepare_cached(
            "SELECT count(*) FROM subject_seqs WHERE subject = ?1 AND seq > ?2 AND seq <= ?3",
        )?;
        for subject in subjects {
            total += stmt
                .query_row(params![subject, after as i64, indexed as i64], |row| {
                    row.get::<_, i64>(0)
                })?
                .max(0) as u64;
        }
    }
    let wanted = Subjects::new(subjects);
    tail(conn, after.max(indexed), Seq::MAX, |_, subject| {
        total += u64::from(wanted.contains(subject));
        true
    })?;
    Ok(total)
}

/// Removes a deleted event from the index (nothing when it is in the tail).
pub(super) fn forget(tx: &Connection, subject: &str, seq: Seq) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM subject_seqs WHERE subject = ?1 AND seq = ?2")?
        .execute(params![subject, seq as i64])
        .map(drop)
}

/// Removes the events of `subjects` from `first` on, which are being deleted, and moves
/// the index's end back before them.
pub(super) fn forget_from(
    tx: &Connection,
    subjects: impl IntoIterator<Item = impl AsRef<str>>,
    first: Seq,
) -> rusqlite::Result<()> {
    let mut delete =
        tx.prepare_cached("DELETE FROM subject_seqs WHERE subject = ?1 AND seq >= ?2")?;
    for subject in subjects {
        delete.execute(params![subject.as_ref(), first as i64])?;
    }
    if indexed_through(tx)? >= first {
        set_indexed_through(tx, first.saturating_sub(1))?;
    }
    Ok(())
}

/// Calls `each(seq, subject)` for the events in `(after, through]`, in seq order, until it
/// returns false.
fn tail(
    conn: &Connection,
    after: Seq,
    through: Seq,
    mut each: impl FnMut(Seq, &str) -> bool,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, subject FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![after as i64, through.min(i64::MAX as Seq) as i64])?;
    while let Some(row) = rows.next()? {
        let seq = row.get::<_, i64>(0)?.max(0) as Seq;
        if !each(seq, row.get_ref(1)?.as_str()?) {
            break;
        }
    }
    Ok(())
}

/// A set of subjects to test the tail's events against: a comparison for one, a hash
/// set for more.
enum Subjects<'a> {
    One(&'a str),
    Many(HashSet<&'a str>),
}

impl<'a> Subjects<'a> {
    fn new(subjects: &'a [String]) -> Self {
        match subjects {
            [one] => Subjects::One(one),
            many => Subjects::Many(many.iter().map(String::as_str).collect()),
        }
    }

    fn contains(&self, subject: &str) -> bool {
        match self {
            Subjects::One(one) => *one == subject,
            Subjects::Many(many) => many.contains(subject),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECTS: [&str; 5] = ["hub.a", "hub.b", "hub.c.x", "hub.c.y", "other"];

    /// A database with the current schema and `commits` commits of growing sizes, each
    /// followed by the append path's [`catch_up`]; the stored (seq, subject) pairs.
    fn store(commits: usize) -> (Connection, Vec<(Seq, &'static str)>) {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in super::super::schema::MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        let mut stored = Vec::new();
        for commit in 0..commits {
            let tx = conn.transaction().unwrap();
            for _ in 0..commit % 41 + 1 {
                append(&tx, &mut stored);
            }
            catch_up(&tx, stored.len() as Seq, false).unwrap();
            tx.commit().unwrap();
        }
        (conn, stored)
    }

    fn append(conn: &Connection, stored: &mut Vec<(Seq, &'static str)>) {
        let seq = stored.last().map_or(0, |s| s.0) + 1;
        let subject = SUBJECTS[(seq * 7 % 11 % 5) as usize];
        conn.execute(
            "INSERT INTO events (seq, id, subject, correlation_id, ts, hub_id, payload)
             VALUES (?1, randomblob(16), ?2, randomblob(16), ?1, 'h', '{}')",
            params![seq as i64, subject],
        )
        .unwrap();
        stored.push((seq, subject));
    }

    fn expected(stored: &[(Seq, &str)], subjects: &[String], lo: Seq, hi: Seq) -> Vec<Seq> {
        stored
            .iter()
            .filter(|(seq, s)| *seq > lo && *seq <= hi && subjects.iter().any(|w| w == s))
            .map(|(seq, _)| *seq)
            .collect()
    }

    fn sets() -> Vec<Vec<String>> {
        [
            &["hub.a"][..],
            &["hub.c.x", "hub.c.y"],
            &SUBJECTS,
            &["hub.none"],
            &[],
        ]
        .iter()
        .map(|set| set.iter().map(|s| s.to_string()).collect())
        .collect()
    }

    /// Reads see the index and the tail as one list, whatever the bounds: below, across
    /// and above the index's end, with every limit.
    #[test]
    fn the_index_and_the_tail_read_as_one_list() {
        let (conn, stored) = store(100);
        let head = stored.len() as Seq;
        let indexed = indexed_through(&conn).unwrap();
        assert!(indexed > BATCH && indexed < head, "{indexed} of {head}");
        assert!(head - indexed < BATCH, "the tail is shorter than a batch");
        let bounds = [0, 1, 100, indexed - 3, indexed, indexed + 2, head - 1, head];
        for subjects in sets() {
            for &lo in &bounds {
                for &hi in &bounds {
                    let all = expected(&stored, &subjects, lo, hi);
                    for limit in [1, 7, 100, 5_000] {
                        let want: Vec<Seq> = all.iter().copied().take(limit).collect();
                        let got = first_seqs(&conn, &subjects, lo, hi, limit).unwrap();
                        assert_eq!(got, want, "{subjects:?} in ({lo}, {hi}] limit {limit}");
                    }
                }
                let count = count_after(&conn, &subjects, lo).unwrap();
                assert_eq!(count, expected(&stored, &subjects, lo, head).len() as u64);
            }
        }
    }

    /// Deleted events leave the index, whether indexed or in the tail; deleting from a
    /// seq on (the store's recovery from a failed sync) moves the index's end back, and
    /// the seqs written again after it are indexed afresh.
    #[test]
    fn deleted_events_leave_the_index() {
        let (conn, mut stored) = store(60);
        let indexed = indexed_through(&conn).unwrap();
        let head = stored.len() as Seq;
        for seq in [3, indexed - 1, head - 1] {
            let (_, subject) = stored[seq as usize - 1];
            conn.execute("DELETE FROM events WHERE seq = ?1", [seq as i64])
                .unwrap();
            forget(&conn, subject, seq).unwrap();
        }
        stored.retain(|(seq, _)| ![3, indexed - 1, head - 1].contains(seq));
        for subjects in sets() {
            let got = first_seqs(&conn, &subjects, 0, head, 5_000).unwrap();
            assert_eq!(got, expected(&stored, &subjects, 0, head), "{subjects:?}");
        }

        let first = indexed - 200;
        conn.execute("DELETE FROM events WHERE seq >= ?1", [first as i64])
            .unwrap();
        forget_from(&conn, SUBJECTS, first).unwrap();
        stored.retain(|(seq, _)| *seq < first);
        assert_eq!(indexed_through(&conn).unwrap(), first - 1);
        for _ in 0..BATCH + 10 {
            append(&conn, &mut stored);
        }
        let head = stored.last().unwrap().0;
        catch_up(&conn, head, false).unwrap();
        assert_eq!(indexed_through(&conn).unwrap(), head);
        for subjects in sets() {
            let got = first_seqs(&conn, &subjects, 0, head, 5_000).unwrap();
            assert_eq!(got, expected(&stored, &subjects, 0, head), "{subjects:?}");
            let count = count_after(&conn, &subjects, first - 5).unwrap();
            assert_eq!(
                count,
                expected(&stored, &subjects, first - 5, head).len() as u64
            );
        }
    }

    /// A batch is indexed in the commit that completes it, and only then: the append
    /// path writes the index once per [`BATCH`] events, not once per commit.
    #[test]
    fn the_index_grows_a_batch_at_a_time() {
        let (conn, stored) = store(0);
        let mut stored = stored;
        let mut ends = Vec::new();
        for _ in 0..3 * BATCH + 5 {
            append(&conn, &mut stored);
            catch_up(&conn, stored.len() as Seq, false).unwrap();
            ends.push(indexed_through(&conn).unwrap());
        }
        ends.dedup();
        assert_eq!(ends, vec![0, BATCH, 2 * BATCH, 3 * BATCH]);
        catch_up(&conn, stored.len() as Seq, true).unwrap();
        assert_eq!(indexed_through(&conn).unwrap(), stored.len() as Seq);
    }
}
