//! The embedded store's query planner.
//!
//! Every query is answered in seq order from one read snapshot. Filters are applied
//! exactly in Rust (subject patterns never become SQL `LIKE`); SQL only narrows what is
//! read, through one of three paths:
//!
//! - **by correlation id**, through its index;
//! - **by aggregate** (type and id), through its index;
//! - **by subject**: the distinct subjects that can match are looked up in the
//!   `subjects` table (a range scan on the pattern's literal prefix), each one's first
//!   seqs are read from the subject index, and the lists are merged;
//! - **by seq**: a scan of the log in seq order, filtering as it goes — chosen when the
//!   pattern matches so much of the log that the scan finds `limit` events quickly.
//!
//! Time bounds become seq bounds first: the store's timestamps never go down in seq order,
//! so a binary search over seq finds them ([`first_at_or_after`]) and no index on the
//! timestamp is kept (one index fewer for every event appended).

use herald_core::{Event, Pattern, Seq};
use rusqlite::{params, Connection, OptionalExtension};

use super::{row_to_event, EVENT_COLUMNS};
use crate::plan::{self, accepts, Ended, Path, ScanBudget};
use crate::{Page, Query, MAX_QUERY_LIMIT};

/// Rows read per step of a scan by seq.
const SCAN_CHUNK: i64 = 512;

/// The ends of the log. Two statements: SQLite answers a lone MIN or MAX from the
/// B-tree's edge, but both in one statement by reading the whole table (measured: 71 ms
/// per time-bounded query on 2M events).
const FIRST_SEQ: &str = "SELECT MIN(seq) FROM events";
const LAST_SEQ: &str = "SELECT MAX(seq) FROM events";
/// One step of the binary search: the first event at or after a seq.
const EVENT_AT_OR_AFTER: &str = "SELECT seq, ts FROM events WHERE seq >= ?1 ORDER BY seq LIMIT 1";

/// The seq of the first event committed at or after `ts` (µs since the epoch), if any.
///
/// A binary search over seq, which the store's timestamps follow (they never go down in
/// seq order): each step reads the first event at or after a seq through the table's
/// own B-tree, ~log2(head) steps in all. Gaps that retention left are no matter.
pub(super) fn first_at_or_after(conn: &Connection, ts: i64) -> rusqlite::Result<Option<Seq>> {
    let first: Option<i64> = conn
        .prepare_cached(FIRST_SEQ)?
        .query_row([], |row| row.get(0))?;
    let last: Option<i64> = conn
        .prepare_cached(LAST_SEQ)?
        .query_row([], |row| row.get(0))?;
    let (Some(mut lo), Some(mut hi)) = (first, last) else {
        return Ok(None);
    };
    let mut probe = conn.prepare_cached(EVENT_AT_OR_AFTER)?;
    // `hi` is stored, so every probe at or below it finds an event.
    let mut at = |seq: i64| -> rusqlite::Result<(i64, i64)> {
        probe.query_row([seq], |row| Ok((row.get(0)?, row.get(1)?)))
    };
    if at(hi)?.1 < ts {
        return Ok(None);
    }
    // The smallest `lo` whose first event at or after it is at or after `ts`.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if at(mid)?.1 >= ts {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some(at(lo)?.0.max(0) as Seq))
}

/// The seq of the last event committed before `ts` (µs since the epoch), if any.
pub(super) fn last_before(conn: &Connection, ts: i64) -> rusqlite::Result<Option<Seq>> {
    let last: Option<i64> = match first_at_or_after(conn, ts)? {
        Some(first) => conn
            .prepare_cached("SELECT seq FROM events WHERE seq < ?1 ORDER BY seq DESC LIMIT 1")?
            .query_row([first as i64], |row| row.get(0))
            .optional()?,
        None => conn
            .prepare_cached("SELECT MAX(seq) FROM events")?
            .query_row([], |row| row.get(0))?,
    };
    Ok(last.map(|seq| seq.max(0) as Seq))
}

pub(super) fn run(conn: &Connection, query: &Query, budget: usize) -> rusqlite::Result<Page> {
    // One snapshot for every statement below.
    let tx = conn.unchecked_transaction()?;
    read(&tx, query, budget)
}

/// [`run`] inside a transaction the caller holds; `budget` is the scan budget in rows.
pub(super) fn read(tx: &Connection, query: &Query, budget: usize) -> rusqlite::Result<Page> {
    let limit = query.limit.clamp(1, MAX_QUERY_LIMIT);
    let head: Seq = tx
        .prepare_cached("SELECT IFNULL(MAX(seq), 0) FROM events")?
        .query_row([], |row| row.get::<_, i64>(0).map(|s| s as Seq))?;
    let complete = Page {
        events: Vec::new(),
        scanned_to: head.max(query.after_seq),
    };

    let mut lo = query.after_seq;
    let mut hi = head;
    if let Some(since) = query.since {
        match first_at_or_after(tx, since.as_micros())? {
            Some(seq) => lo = lo.max(seq - 1),
            None => return Ok(complete),
        }
    }
    if let Some(until) = query.until {
        let last = last_before(tx, until.as_micros().saturating_add(1))?;
        hi = hi.min(last.unwrap_or(0));
    }
    if lo >= hi {
        return Ok(complete);
    }

    let path = choose_path(tx, query, head, limit)?;
    let mut budget = ScanBudget::new(budget);
    let (events, ended) = match path {
        Path::Correlation => by_correlation(tx, query, lo, hi, limit, &mut budget)?,
        Path::Aggregate => by_aggregate(tx, query, lo, hi, limit, &mut budget)?,
        Path::Subjects(subjects) => by_subjects(tx, query, &subjects, lo, hi, limit)?,
        Path::Scan => by_scan(tx, query, lo, hi, limit, &mut budget)?,
    };
    let scanned_to = match ended {
        Ended::Exhausted => complete.scanned_to,
        Ended::StoppedAfter(seq) => seq,
    };
    Ok(Page { events, scanned_to })
}

fn choose_path(
    conn: &Connection,
    query: &Query,
    head: Seq,
    limit: usize,
) -> rusqlite::Result<Path> {
    match plan::first_step(query) {
        Ok(path) => Ok(path),
        Err(pattern) => Ok(plan::choose(
            candidate_subjects(conn, pattern)?,
            head,
            limit,
        )),
    }
}

/// The stored subjects that match `pattern`, with their total event count; `None` when
/// there are too many to examine.
fn candidate_subjects(
    conn: &Connection,
    pattern: &Pattern,
) -> rusqlite::Result<Option<(Vec<String>, u64)>> {
    let (mut stmt, range) = match plan::candidate_range(pattern) {
        Some((lower, upper)) => (
            conn.prepare_cached(
                "SELECT subject, events FROM subjects WHERE subject >= ?1 AND subject < ?2",
            )?,
            vec![lower, upper],
        ),
        None => (
            conn.prepare_cached("SELECT subject, events FROM subjects")?,
            Vec::new(),
        ),
    };
    let rows = stmt.query_map(rusqlite::params_from_iter(range), |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
    })?;
    plan::candidates(pattern, rows)
}

/// What one pass of [`collect`] saw.
struct Collected {
    /// The seq of the last row read, accepted or not.
    last_read: Option<Seq>,
    /// Why it stopped before the rows ran out (`limit` events, or the budget), if it did.
    stopped: bool,
}

/// Adds the events matching `query` from the rows `sql` yields (in seq order) to `out`,
/// stopping when `out` holds `limit` or the budget is spent.
fn collect(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    (query, limit): (&Query, usize),
    budget: &mut ScanBudget,
    out: &mut Vec<Event>,
) -> rusqlite::Result<Collected> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut last_read = None;
    while let Some(row) = rows.next()? {
        let event = row_to_event(row)?;
        last_read = Some(event.seq);
        if plan::offer(query, limit, budget, out, event).is_some() {
            return Ok(Collected {
                last_read,
                stopped: true,
            });
        }
    }
    Ok(Collected {
        last_read,
        stopped: false,
    })
}

/// How a single pass of [`collect`] over a whole range ended.
fn ended(collected: &Collected) -> Ended {
    match (collected.stopped, collected.last_read) {
        (true, Some(seq)) => Ended::StoppedAfter(seq),
        _ => Ended::Exhausted,
    }
}

fn by_correlation(
    conn: &Connection,
    query: &Query,
    lo: Seq,
    hi: Seq,
    limit: usize,
    budget: &mut ScanBudget,
) -> rusqlite::Result<(Vec<Event>, Ended)> {
    let id = query.correlation_id.expect("correlation path needs an id");
    let mut out = Vec::new();
    let collected = collect(
        conn,
        &format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE correlation_id = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq"
        ),
        params![id.as_bytes(), lo as i64, hi as i64],
        (query, limit),
        budget,
        &mut out,
    )?;
    Ok((out, ended(&collected)))
}

fn by_aggregate(
    conn: &Connection,
    query: &Query,
    lo: Seq,
    hi: Seq,
    limit: usize,
    budget: &mut ScanBudget,
) -> rusqlite::Result<(Vec<Event>, Ended)> {
    let mut out = Vec::new();
    let collected = collect(
        conn,
        &format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND seq > ?3 AND seq <= ?4 ORDER BY seq"
        ),
        params![query.aggregate_type, query.aggregate_id, lo as i64, hi as i64],
        (query, limit),
        budget,
        &mut out,
    )?;
    Ok((out, ended(&collected)))
}

fn by_subjects(
    conn: &Connection,
    query: &Query,
    subjects: &[String],
    lo: Seq,
    hi: Seq,
    limit: usize,
) -> rusqlite::Result<(Vec<Event>, Ended)> {
    let seqs = super::subject_index::first_seqs(conn, subjects, lo, hi, limit)?;
    let ended = plan::merge_ended(&seqs, limit);

    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
    ))?;
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let event = stmt.query_row([seq as i64], row_to_event)?;
        if accepts(query, &event) {
            out.push(event);
        }
    }
    Ok((out, ended))
}

fn by_scan(
    conn: &Connection,
    query: &Query,
    lo: Seq,
    hi: Seq,
    limit: usize,
    budget: &mut ScanBudget,
) -> rusqlite::Result<(Vec<Event>, Ended)> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"
    );
    let mut out = Vec::new();
    let mut from = lo;
    let unfiltered = query.subject.is_none()
        && query.since.is_none()
        && query.until.is_none()
        && query.payload_contains.is_none();
    while from < hi {
        // With nothing to filter, read exactly what is wanted; otherwise step in chunks.
        let chunk = if unfiltered {
            (limit - out.len()) as i64
        } else {
            SCAN_CHUNK
        };
        let collected = collect(
            conn,
            &sql,
            params![from as i64, hi as i64, chunk],
            (query, limit),
            budget,
            &mut out,
        )?;
        if collected.stopped {
            return Ok((out, ended(&collected)));
        }
        match collected.last_read {
            Some(seq) => from = seq,
            None => break,
        }
    }
    Ok((out, Ended::Exhausted))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary searches agree with a plain scan: seqs with gaps (retention), runs of
    /// equal timestamps (a batch shares its commit time), bounds before, between, on and
    /// after the stored times, and an empty log.
    #[test]
    fn time_bounds_found_by_binary_search_match_a_scan() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE events (seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL)")
            .unwrap();
        assert_eq!(first_at_or_after(&conn, 0).unwrap(), None);
        assert_eq!(last_before(&conn, 0).unwrap(), None);

        let mut stored = Vec::new();
        let mut ts = 1_000;
        for seq in 3..400i64 {
            if seq % 7 == 0 || (100..130).contains(&seq) {
                continue; // deleted
            }
            if seq % 5 == 0 {
                ts += 10;
            }
            stored.push((seq, ts));
            conn.execute("INSERT INTO events VALUES (?1, ?2)", [seq, ts])
                .unwrap();
        }
        for probe in 900..ts + 20 {
            let first = stored
                .iter()
                .find(|(_, t)| *t >= probe)
                .map(|(s, _)| *s as Seq);
            let last = stored
                .iter()
                .rev()
                .find(|(_, t)| *t < probe)
                .map(|(s, _)| *s as Seq);
            assert_eq!(
                first_at_or_after(&conn, probe).unwrap(),
                first,
                "at or after {probe}"
            );
            assert_eq!(last_before(&conn, probe).unwrap(), last, "before {probe}");
        }
    }

    /// The search reads a few rows, never the table: every statement it runs seeks in
    /// the B-tree (no full-scan step), ~log2(rows) probes of a handful of steps each.
    #[test]
    fn time_bounds_never_scan_the_table() {
        use rusqlite::StatementStatus::{FullscanStep, VmStep};
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
             INSERT INTO events SELECT i, 1000 + i / 10 FROM n;",
        )
        .unwrap();
        assert_eq!(first_at_or_after(&conn, 5_000).unwrap(), Some(40_000));
        assert_eq!(last_before(&conn, 5_000).unwrap(), Some(39_999));
        for sql in [FIRST_SEQ, LAST_SEQ, EVENT_AT_OR_AFTER] {
            let stmt = conn.prepare_cached(sql).unwrap();
            assert_eq!(stmt.get_status(FullscanStep), 0, "{sql} scanned the table");
            assert!(
                stmt.get_status(VmStep) < 5_000,
                "{sql}: {} steps",
                stmt.get_status(VmStep)
            );
        }
    }
}
