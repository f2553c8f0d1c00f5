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
use crate::plan::{self, accepts, Ended, Path, ScanBudget};
use crate::{Page, Query, MAX_QUERY_LIMIT};

/// Rows read per step of a scan (by seq or by correlation id).
const SCAN_CHUNK: i64 = 512;

pub(super) type Tx<'a> = deadpool_postgres::Transaction<'a>;

pub(super) async fn run(client: &mut Object, query: Query, budget: usize) -> Result<Page, Failure> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let page = plan_and_read(&tx, &query, budget).await?;
    tx.commit().await?;
    Ok(page)
}

/// [`run`] inside a transaction the caller holds, READ COMMITTED included (the consumer
/// transactions, which must see what the previous holder of a consumer's lock
/// committed). That is consistent too: the head is read first, and every read after it
/// is bounded by it; an append commits its events together with the head that covers
/// them, so each later statement's snapshot holds every event up to that head, and
/// events are never changed or removed.
/// `budget` is the scan budget in rows.
pub(super) async fn plan_and_read(
    tx: &Tx<'_>,
    query: &Query,
    budget: usize,
) -> Result<Page, Failure> {
    let limit = query.limit.clamp(1, MAX_QUERY_LIMIT);
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

    let budget = &mut ScanBudget::new(budget);
    let (events, ended) = match choose_path(tx, query, head, limit).await? {
        Path::Correlation => by_correlation(tx, query, lo, hi, limit, budget).await?,
        Path::Aggregate => by_aggregate(tx, query, lo, hi, limit, budget).await?,
        Path::Subjects(subjects) => by_subjects(tx, query, &subjects, lo, hi, limit).await?,
        Path::Scan => by_scan(tx, query, lo, hi, limit, budget).await?,
    };
    let scanned_to = match ended {
        Ended::Exhausted => complete.scanned_to,
        Ended::StoppedAfter(seq) => seq,
    };
    Ok(Page { events, scanned_to })
}

async fn choose_path(tx: &Tx<'_>, query: &Query, head: Seq, limit: usize) -> Result<Path, Failure> {
    match plan::first_step(query) {
        Ok(path) => Ok(path),
        Err(pattern) => Ok(plan::choose(
            candidate_subjects(tx, pattern).await?,
            head,
            limit,
        )),
    }
}

/// The stored subjects that match `pattern`, with their total event count; `None` when
/// there are too many to examine.
async fn candidate_subjects(
    tx: &Tx<'_>,
    pattern: &Pattern,
) -> Result<Option<(Vec<String>, u64)>, Failure> {
    // The `subject` column sorts bytewise (COLLATE "C"), as the range needs.
    let range = plan::candidate_range(pattern);
    let cap = plan::MAX_SUBJECTS_EXAMINED as i64 + 1;
    let rows = if let Some((prefix, upper)) = range {
        let stmt = tx
            .prepare_cached(
                "SELECT subject, events FROM subjects WHERE subject >= $1 AND subject < $2
                 ORDER BY subject LIMIT $3",
            )
            .await?;
        tx.query(&stmt, &[&prefix, &upper, &cap]).await?
    } else {
        let stmt = tx
            .prepare_cached("SELECT subject, events FROM subjects ORDER BY subject LIMIT $1")
            .await?;
        tx.query(&stmt, &[&cap]).await?
    };
    plan::candidates::<Failure>(
        pattern,
        rows.iter()
            .map(|row| Ok((row.get::<_, String>(0), row.get::<_, i64>(1).max(0) as u64))),
    )
}

/// Reads `sql` (which takes the bounds `$1 < seq <= $2` and `LIMIT $3` after `extra`)
/// chunk by chunk in seq order, keeping the events `query` accepts, until `limit` are kept,
/// the scan budget is spent or the range runs out. Returns the events and how it ended.
#[allow(clippy::too_many_arguments)] // one read path's parts, all needed
async fn chunked(
    tx: &Tx<'_>,
    sql: &str,
    extra: Option<&(dyn ToSql + Sync)>,
    query: &Query,
    (lo, hi): (Seq, Seq),
    limit: usize,
    exact: bool,
    budget: &mut ScanBudget,
) -> Result<(Vec<Event>, Ended), Failure> {
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
            if let Some(ended) = plan::offer(query, limit, budget, &mut out, row_to_event(row)?) {
                return Ok((out, ended));
            }
        }
        if read < chunk {
            break;
        }
        from = last_read;
    }
    Ok((out, Ended::Exhausted))
}

async fn by_aggregate(
    tx: &Tx<'_>,
    query: &Query,
    lo: Seq,
    hi: Seq,
    limit: usize,
    budget: &mut ScanBudget,
) -> Result<(Vec<Event>, Ended), Failure> {
    let aggregate: Vec<&str> = [&query.aggregate_type, &query.aggregate_id]
        .into_iter()
        .map(|v| v.as_deref().expect("aggregate path needs a type and an id"))
        .collect();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events
         WHERE aggregate_type = ($1::text[])[1] AND aggregate_id = ($1::text[])[2]
           AND seq > $2 AND seq <= $3
         ORDER BY aggregate_type, aggregate_id, seq LIMIT $4"
    );
    let exact = query.subject.is_none() && query.correlation_id.is_none();
    chunked(
        tx,
        &sql,
        Some(&aggregate),
        query,
        (lo, hi),
        limit,
        exact,
        budget,
    )
    .await
}

async fn by_correlation(
    tx: &Tx<'_>,
    query: &Query,
    lo: Seq,
    hi: Seq,
    limit: usize,
    budget: &mut ScanBudget,
) -> Result<(Vec<Event>, Ended), Failure> {
    let id = query.correlation_id.expect("correlation path needs an id");
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events
         WHERE correlation_id = $1 AND seq > $2 AND seq <= $3
         ORDER BY correlation_id, seq LIMIT $4"
    );
    let exact = query.subject.is_none();
    chunked(tx, &sql, Some(&id), query, (lo, hi), limit, exact, budget).await
}

async fn by_subjects(
    tx: &Tx<'_>,
    query: &Query,
    subjects: &[String],
    lo: Seq,
    hi: Seq,
    limit: usize,
) -> Result<(Vec<Event>, Ended), Failure> {
    if subjects.is_empty() {
        return Ok((Vec::new(), Ended::Exhausted));
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
    let ended = match rows.last() {
        Some(last) if rows.len() == limit => Ended::StoppedAfter(last.get::<_, i64>(0) as Seq),
        _ => Ended::Exhausted,
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let event = row_to_event(row)?;
        if accepts(query, &event) {
            out.push(event);
        }
    }
    Ok((out, ended))
}

async fn by_scan(
    tx: &Tx<'_>,
    query: &Query,
    lo: Seq,
    hi: Seq,
    limit: usize,
    budget: &mut ScanBudget,
) -> Result<(Vec<Event>, Ended), Failure> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
    );
    let exact = query.subject.is_none()
        && query.since.is_none()
        && query.until.is_none()
        && query.payload_contains.is_none();
    chunked(tx, &sql, None, query, (lo, hi), limit, exact, budget).await
}
