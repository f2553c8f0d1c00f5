//! Where the embedded store reads its events: the SQLite `events` table, or the event
//! log ([`crate::event_log`]). Queries, gets, consumers and aggregates read through
//! [`Events`], so each is written once for both.

use std::ops::Bound;

use herald_core::{Event, Pattern, Seq};
use rusqlite::{Connection, OptionalExtension};

use super::consumers::Failure;
use super::{query, row_to_event, EVENT_COLUMNS};
use crate::event_log::{EventReader, Key};
use crate::{plan, Page, Query};

type Sql<T> = std::result::Result<T, Failure>;

/// Events read from one of the two places. Below the head, the log's events never
/// change but for retention's deletes, so a read of the log beside a SQLite transaction
/// sees what the transaction would.
#[derive(Clone, Copy)]
pub(super) enum Events<'a> {
    Table(&'a Connection),
    Log(&'a EventReader),
}

impl<'a> Events<'a> {
    /// The log when there is one, else the table through `conn`.
    pub(super) fn new(conn: &'a Connection, log: Option<&'a EventReader>) -> Self {
        match log {
            Some(reader) => Events::Log(reader),
            None => Events::Table(conn),
        }
    }

    pub(super) fn event(&self, seq: Seq) -> Sql<Option<Event>> {
        match self {
            Events::Table(conn) => Ok(conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
                ))?
                .query_row([crate::seq_to_sql(seq)?], row_to_event)
                .optional()?),
            Events::Log(reader) => Ok(reader.event(seq)?),
        }
    }

    /// The newest event's seq (0: none).
    pub(super) fn head(&self) -> Sql<Seq> {
        match self {
            Events::Table(conn) => {
                let head: i64 = conn
                    .prepare_cached("SELECT IFNULL(MAX(seq), 0) FROM events")?
                    .query_row([], |row| row.get(0))?;
                Ok(head.max(0) as Seq)
            }
            Events::Log(reader) => Ok(reader.head()),
        }
    }

    /// A query, within the scan budget.
    pub(super) fn query(&self, query: &Query, budget: usize) -> Sql<Page> {
        match self {
            Events::Table(conn) => Ok(query::read(conn, query, budget)?),
            Events::Log(reader) => Ok(crate::event_log::query::run(reader, query, budget)?),
        }
    }

    /// Events after `after` that match any of `filters`, counted per matching subject
    /// when there are not too many subjects, by a scan otherwise.
    pub(super) fn count_matching_after(&self, filters: &[Pattern], after: Seq) -> Sql<u64> {
        match self {
            Events::Table(conn) => super::consumers::count_matching_after(conn, filters, after),
            Events::Log(reader) => log_count_matching_after(reader, filters, after),
        }
    }
}

fn log_count_matching_after(reader: &EventReader, filters: &[Pattern], after: Seq) -> Sql<u64> {
    if filters.iter().any(Pattern::matches_everything) {
        return Ok(reader.count_between(after.saturating_add(1)..=Seq::MAX));
    }
    let subjects: Vec<String> = reader
        .subjects(Bound::Unbounded, Bound::Unbounded)
        .into_iter()
        .filter(|(subject, stats)| {
            stats.last_seq > after && filters.iter().any(|f| f.matches(subject))
        })
        .map(|(subject, _)| subject)
        .take(plan::MAX_SUBJECTS_MERGED + 1)
        .collect();
    if subjects.len() <= plan::MAX_SUBJECTS_MERGED {
        let mut total = 0;
        for subject in &subjects {
            total += reader
                .seqs(Key::Subject(subject), after.saturating_add(1), usize::MAX)?
                .len() as u64;
        }
        return Ok(total);
    }
    let mut total = 0;
    let mut from = after.saturating_add(1);
    loop {
        let (events, last_read) = reader.read(from, 4096)?;
        total += events
            .iter()
            .filter(|e| filters.iter().any(|f| f.matches(e.subject.as_str())))
            .count() as u64;
        match last_read {
            Some(last) => from = last + 1,
            None => return Ok(total),
        }
    }
}
