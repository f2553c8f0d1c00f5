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
//! Time bounds become seq bounds first: the store's timestamps never go down in seq order.

use herald_core::{Event, Pattern, Seq};
use rusqlite::{params, Connection, OptionalExtension};

use super::{row_to_event, EVENT_COLUMNS};
use crate::plan::{self, accepts, Ended, Path, ScanBudget};
use crate::{Page, Query, MAX_QUERY_LIMIT};

/// Rows read per step of a scan by seq.
const SCAN_CHUNK: i64 = 512;

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
        let first: Option<i64> = tx
            .query_row(
                "SELECT seq FROM events WHERE ts >= ?1 ORDER BY ts, seq LIMIT 1",
                [since.as_micros()],
                |row| row.get(0),
            )
            .optional()?;
        match first {
            Some(seq) => lo = lo.max(seq as Seq - 1),
            None => return Ok(complete),
        }
    }
    if let Some(until) = query.until {
        let last: Option<i64> = tx
            .query_row(
                "SELECT seq FROM events WHERE ts <= ?1 ORDER BY ts DESC, seq DESC LIMIT 1",
                [until.as_micros()],
                |row| row.get(0),
            )
            .optional()?;
        hi = hi.min(last.map_or(0, |s| s as Seq));
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
        if accepts(query, &event) {
            out.push(event);
            if out.len() == limit {
                return Ok(Collected {
                    last_read,
                    stopped: true,
                });
            }
        }
        if !budget.take() {
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
    // The first `limit` seqs of each subject (an index-only read), merged.
    let mut seqs: Vec<i64> = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT seq FROM events WHERE subject = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4",
        )?;
        for subject in subjects {
            let rows = stmt.query_map(
                params![subject, lo as i64, hi as i64, limit as i64],
                |row| row.get::<_, i64>(0),
            )?;
            for seq in rows {
                seqs.push(seq?);
            }
        }
    }
    seqs.sort_unstable();
    seqs.truncate(limit);
    let ended = match seqs.last() {
        Some(&last) if seqs.len() == limit => Ended::StoppedAfter(last as Seq),
        _ => Ended::Exhausted,
    };

    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
    ))?;
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let event = stmt.query_row([seq], row_to_event)?;
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
