//! The PostgreSQL store's query planner: the embedded planner's paths and semantics
//! (`embedded/query.rs`), over one `REPEATABLE READ READ ONLY` snapshot.
//!
//! Filters are applied exactly in Rust; SQL only narrows what is read, with bound
//! parameters only (subject patterns never become `LIKE`):
//!
//! - **by correlation id**, through the `(correlation_id, seq)` index, in chunks;
//! - **by subject**: the distinct subjects that can match are range-scanned in the
//!   `subjects` table by the pattern's literal prefix (`COLLATE "C"`: byte order), matched
//!   in Rust, and the first `limit` seqs of each are merged in one statement (a lateral
//!   read of the `(subject, seq)` index per subject);
//! - **by seq**: a scan of the log in seq order, in chunks, filtering as it goes.
//!
//! Time bounds become seq bounds first: timestamps never go down in seq order.

use deadpool_postgres::Object;
use herald_core::{Event, Pattern, Seq};
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

use super::{row_to_event, Failure, EVENT_COLUMNS};
use crate::{Page, Query, MAX_QUERY_LIMIT};

/// Distinct subjects read from the `subjects` table before giving up on the merge path.
const MAX_SUBJECTS_EXAMINED: usize = 10_000;
/// Most subjects merged; past this a scan by seq is cheaper anyway.
const MAX_SUBJECTS_MERGED: usize = 1_000;
/// Rows read per step of a scan (by seq or by correlation id).
const SCAN_CHUNK: i64 = 512;

enum Path {
    Correlation,
    Subjects(Vec<String>),
    Scan,
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

pub(super) async fn run(client: &mut Object, query: Query) -> Result<Page, Failure> {
    let limit = query.limit.clamp(1, MAX_QUERY_LIMIT);
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let page = plan_and_read(&tx, &query, limit).await?;
    tx.commit().await?;
    Ok(page)
}

async fn plan_and_read(tx: &Tx<'_>, query: &Query, limit: usize) -> Result<Page, Failure> {
    let head_stmt = tx.prepare_cached("SELECT seq FROM log_head").await?;
    let head = tx.query_one(&head_stmt, &[]).await?.get::<_, i64>(0) as Seq;
    let complete = Page {
        events: Vec::new(),
        scanned_to: head.max(query.after_seq),
    };

    let mut lo = query.after_seq;
    let mut hi = head;
    if let Some(since) = query.since {
        let stmt = tx
            .prepare_cached("SELECT seq FROM events WHERE ts >= $1 ORDER BY ts, seq LIMIT 1")
            .await?;
        match tx.query_opt(&stmt, &[&since.as_micros()]).await? {
            Some(row) => lo = lo.max(row.get::<_, i64>(0) as Seq - 1),
            None => return Ok(complete),
        }
    }
    if let Some(until) = query.until {
        let stmt = tx
            .prepare_cached(
                "SELECT seq FROM events WHERE ts <= $1 ORDER BY ts DESC, seq DESC LIMIT 1",
            )
            .await?;
        let last = tx.query_opt(&stmt, &[&until.as_micros()]).await?;
        hi = hi.min(last.map_or(0, |row| row.get::<_, i64>(0) as Seq));
    }
    if lo >= hi {
        return Ok(complete);
    }

    let (events, exhausted) = match choose_path(tx, query, head, limit).await? {
        Path::Correlation => by_correlation(tx, query, lo, hi, limit).await?,
        Path::Subjects(subjects) => by_subjects(tx, query, &subjects, lo, hi, limit).await?,
        Path::Scan => by_scan(tx, query, lo, hi, limit).await?,
    };
    let scanned_to = if exhausted {
        complete.scanned_to
    } else {
        events.last().map_or(lo, |e| e.seq)
    };
    Ok(Page { events, scanned_to })
}

async fn choose_path(tx: &Tx<'_>, query: &Query, head: Seq, limit: usize) -> Result<Path, Failure> {
    if query.correlation_id.is_some() {
        return Ok(Path::Correlation);
    }
    let Some(pattern) = query.subject.as_ref().filter(|p| !p.matches_everything()) else {
        return Ok(Path::Scan);
    };
    if pattern.is_literal() {
        return Ok(Path::Subjects(vec![pattern.as_str().to_owned()]));
    }
    let Some((subjects, matching_events)) = candidate_subjects(tx, pattern).await? else {
        return Ok(Path::Scan);
    };
    if subjects.is_empty() {
        return Ok(Path::Subjects(subjects));
    }
    // Rows each path is expected to read: the merge reads up to `limit` seqs per
    // subject; the scan reads until it has seen `limit` matches at the pattern's density.
    let merge_cost = subjects.len() as u128 * limit as u128;
    let scan_cost = limit as u128 * head.max(1) as u128 / matching_events.max(1) as u128;
    if subjects.len() <= MAX_SUBJECTS_MERGED && merge_cost <= scan_cost {
        Ok(Path::Subjects(subjects))
    } else {
        Ok(Path::Scan)
    }
}

/// The stored subjects that match `pattern`, with their total event count; `None` when
/// there are too many to examine.
async fn candidate_subjects(
    tx: &Tx<'_>,
    pattern: &Pattern,
) -> Result<Option<(Vec<String>, u64)>, Failure> {
    let prefix = pattern.literal_prefix();
    // The prefix ends with '.', and '/' is the next byte: [prefix, upper) holds exactly
    // the subjects that start with the prefix (the column sorts bytewise, COLLATE "C").
    let upper = match prefix.strip_suffix('.') {
        Some(stem) => format!("{stem}/"),
        None => String::new(),
    };
    let cap = MAX_SUBJECTS_EXAMINED as i64 + 1;
    let rows = if prefix.is_empty() {
        let stmt = tx
            .prepare_cached("SELECT subject, events FROM subjects ORDER BY subject LIMIT $1")
            .await?;
        tx.query(&stmt, &[&cap]).await?
    } else {
        let stmt = tx
            .prepare_cached(
                "SELECT subject, events FROM subjects WHERE subject >= $1 AND subject < $2
                 ORDER BY subject LIMIT $3",
            )
            .await?;
        tx.query(&stmt, &[&prefix, &upper, &cap]).await?
    };
    if rows.len() > MAX_SUBJECTS_EXAMINED {
        return Ok(None);
    }
    let mut subjects = Vec::new();
    let mut matching_events = 0u64;
    for row in rows {
        let subject: String = row.get(0);
        if pattern.matches(&subject) {
            matching_events += row.get::<_, i64>(1).max(0) as u64;
            subjects.push(subject);
            if subjects.len() > MAX_SUBJECTS_MERGED {
                return Ok(None);
            }
        }
    }
    Ok(Some((subjects, matching_events)))
}

/// Whether an event passes every filter of the query. The SQL paths narrow the read; this
/// decides.
fn accepts(query: &Query, event: &Event) -> bool {
    query
        .subject
        .as_ref()
        .is_none_or(|p| p.matches(event.subject.as_str()))
        && query.since.is_none_or(|t| event.timestamp >= t)
        && query.until.is_none_or(|t| event.timestamp <= t)
        && query
            .correlation_id
            .is_none_or(|c| event.correlation_id == c)
}

/// Reads `sql` (which takes the bounds `$1 < seq <= $2` and `LIMIT $3` after `extra`)
/// chunk by chunk in seq order, keeping the events `query` accepts, until `limit` are kept
/// or the range runs out. Returns the events and whether the range ran out.
async fn chunked(
    tx: &Tx<'_>,
    sql: &str,
    extra: Option<&(dyn ToSql + Sync)>,
    query: &Query,
    (lo, hi): (Seq, Seq),
    limit: usize,
    exact: bool,
) -> Result<(Vec<Event>, bool), Failure> {
    let stmt = tx.prepare_cached(sql).await?;
    let mut out = Vec::new();
    let mut from = lo;
    let hi_param = hi as i64;
    while from < hi {
        // With nothing to filter in Rust, read exactly what is wanted.
        let chunk = if exact {
            (limit - out.len()) as i64
        } else {
            SCAN_CHUNK
        };
        let from_param = from as i64;
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(4);
        if let Some(extra) = extra {
            params.push(extra);
        }
        params.extend([&from_param as &(dyn ToSql + Sync), &hi_param, &chunk]);
        let rows = tx.query(&stmt, &params).await?;
        let Some(last) = rows.last() else { break };
        let last_read = last.get::<_, i64>(0) as Seq;
        let read = rows.len() as i64;
        for row in &rows {
            let event = row_to_event(row)?;
            if accepts(query, &event) {
                out.push(event);
                if out.len() == limit {
                    return Ok((out, false));
                }
            }
        }
        if read < chunk {
            break;
        }
        from = last_read;
    }
    Ok((out, true))
}

async fn by_correlation(
    tx: &Tx<'_>,
    query: &Query,
    lo: Seq,
    hi: Seq,
    limit: usize,
) -> Result<(Vec<Event>, bool), Failure> {
    let id = query.correlation_id.expect("correlation path needs an id");
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events
         WHERE correlation_id = $1 AND seq > $2 AND seq <= $3
         ORDER BY correlation_id, seq LIMIT $4"
    );
    let exact = query.subject.is_none();
    chunked(tx, &sql, Some(&id), query, (lo, hi), limit, exact).await
}

async fn by_subjects(
    tx: &Tx<'_>,
    query: &Query,
    subjects: &[String],
    lo: Seq,
    hi: Seq,
    limit: usize,
) -> Result<(Vec<Event>, bool), Failure> {
    if subjects.is_empty() {
        return Ok((Vec::new(), true));
    }
    // The first `limit` seqs of each subject (index-only reads), merged, then the rows.
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq IN (
                 SELECT x.seq FROM UNNEST($1::text[]) AS s(subject)
                 CROSS JOIN LATERAL (
                     SELECT e.seq FROM events e
                     WHERE e.subject = s.subject AND e.seq > $2 AND e.seq <= $3
                     -- The same order as `seq` (the subject is fixed), but one only the
                     -- (subject, seq) index gives: the planner must not walk the primary
                     -- key instead, which is slow for a rare subject.
                     ORDER BY e.subject, e.seq LIMIT $4
                 ) AS x
                 ORDER BY x.seq LIMIT $4
             )
             ORDER BY seq"
        ))
        .await?;
    let rows = tx
        .query(
            &stmt,
            &[&subjects, &(lo as i64), &(hi as i64), &(limit as i64)],
        )
        .await?;
    let exhausted = rows.len() < limit;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let event = row_to_event(row)?;
        if accepts(query, &event) {
            out.push(event);
        }
    }
    Ok((out, exhausted))
}

async fn by_scan(
    tx: &Tx<'_>,
    query: &Query,
    lo: Seq,
    hi: Seq,
    limit: usize,
) -> Result<(Vec<Event>, bool), Failure> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
    );
    let exact = query.subject.is_none() && query.since.is_none() && query.until.is_none();
    chunked(tx, &sql, None, query, (lo, hi), limit, exact).await
}
