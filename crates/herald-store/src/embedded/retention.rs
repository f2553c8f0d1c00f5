//! Retention on the embedded store: one pass is one write transaction (see
//! [`crate::retention`] for what is deleted).

use std::collections::HashMap;
use std::ops::Bound;

use herald_core::{Seq, Timestamp};
use rusqlite::{params, Connection};

use crate::event_log::{EventReader, Key};
use crate::retention::{self, Candidate, RetentionPass, RetentionPolicy, SubjectTotals};

/// Subjects of a policy read one by one; past this, its events are found by a scan.
const MAX_SUBJECTS_PER_POLICY: usize = 1_000;

pub(super) fn enforce(
    conn: &Connection,
    policies: &[RetentionPolicy],
    now: Timestamp,
    budget: usize,
) -> crate::Result<RetentionPass, super::consumers::Failure> {
    // Every event in the index: the oldest of a subject may be in its tail.
    let head: i64 = conn
        .prepare_cached("SELECT IFNULL(MAX(seq), 0) FROM events")?
        .query_row([], |row| row.get(0))?;
    super::subject_index::catch_up(conn, head.max(0) as Seq, true)?;
    let totals = conn
        .prepare_cached("SELECT subject, events, bytes FROM subjects")?
        .query_map([], |row| {
            Ok(SubjectTotals {
                subject: row.get(0)?,
                events: row.get::<_, i64>(1)?.max(0) as u64,
                bytes: row.get::<_, i64>(2)?.max(0) as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let (deleted, more) = retention::select(
        policies,
        totals,
        now,
        budget,
        |ts| Ok::<_, rusqlite::Error>(super::query::last_before(conn, ts)?.unwrap_or(0)),
        |policy, subjects, limit| oldest(conn, policy, subjects, limit),
    )?;
    if deleted.is_empty() {
        return Ok(RetentionPass::default());
    }

    let mut per_subject: HashMap<&str, (i64, i64)> = HashMap::new();
    {
        let mut delete = conn.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
        for (candidate, subject) in &deleted {
            delete.execute([candidate.seq as i64])?;
            super::subject_index::forget(conn, subject, candidate.seq)?;
            let entry = per_subject.entry(subject.as_str()).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += candidate.bytes as i64;
        }
    }
    {
        let mut update = conn.prepare_cached(
            "UPDATE subjects SET events = MAX(events - ?2, 0), bytes = MAX(bytes - ?3, 0)
             WHERE subject = ?1",
        )?;
        for (subject, (count, bytes)) in &per_subject {
            update.execute(params![subject, count, bytes])?;
        }
    }
    let gone: Vec<(Seq, &str)> = deleted
        .iter()
        .map(|(c, subject)| (c.seq, subject.as_str()))
        .collect();
    note_deleted(conn, &gone)?;
    Ok(RetentionPass {
        deleted_events: deleted.len() as u64,
        deleted_bytes: deleted.iter().map(|(c, _)| c.bytes).sum(),
        more,
    })
}

/// What one pass deletes from the event log (the same choice as [`enforce`] makes on
/// the table): the events with their subjects, and whether more are due.
pub(super) fn choose_in_log(
    reader: &EventReader,
    policies: &[RetentionPolicy],
    now: Timestamp,
    budget: usize,
) -> std::io::Result<(Vec<(Candidate, String)>, bool)> {
    let totals = reader
        .subjects(Bound::Unbounded, Bound::Unbounded)
        .into_iter()
        .map(|(subject, stats)| SubjectTotals {
            subject,
            events: stats.events,
            bytes: stats.bytes,
        })
        .collect();
    retention::select(
        policies,
        totals,
        now,
        budget,
        |ts| {
            Ok(
                match reader.first_at_or_after(Timestamp::from_micros(ts))? {
                    Some(first) => first - 1,
                    None => reader.head(),
                },
            )
        },
        |policy, subjects, limit| oldest_in_log(reader, policy, subjects, limit),
    )
}

/// [`oldest`], in the event log.
fn oldest_in_log(
    reader: &EventReader,
    policy: &RetentionPolicy,
    subjects: &[String],
    limit: usize,
) -> std::io::Result<Vec<Candidate>> {
    let candidate = |event: &herald_core::Event, subject: u32| Candidate {
        seq: event.seq,
        bytes: event.payload.get().len() as u64,
        aggregate: event.aggregate.is_some(),
        subject,
    };
    if subjects.len() <= MAX_SUBJECTS_PER_POLICY {
        let mut lists = Vec::with_capacity(subjects.len());
        for (index, subject) in subjects.iter().enumerate() {
            let mut list = Vec::new();
            let mut from = 0;
            // Read on past aggregate events the policy keeps, up to `limit` candidates.
            'subject: loop {
                let seqs = reader.seqs(Key::Subject(subject), from, limit)?;
                let Some(&last) = seqs.last() else { break };
                for seq in &seqs {
                    let Some(event) = reader.event(*seq)? else {
                        continue;
                    };
                    if policy.include_aggregates || event.aggregate.is_none() {
                        list.push(candidate(&event, index as u32));
                        if list.len() == limit {
                            break 'subject;
                        }
                    }
                }
                if seqs.len() < limit {
                    break;
                }
                from = last + 1;
            }
            lists.push(list);
        }
        return Ok(retention::merge(lists, limit));
    }
    // Many subjects: read the log from its start, keeping this policy's events (a
    // bounded read: a few times what may be deleted).
    let index: HashMap<&str, u32> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i as u32))
        .collect();
    let mut out = Vec::new();
    for event in reader.events(0, limit * 4)? {
        if let Some(&i) = index.get(event.subject.as_str()) {
            if policy.include_aggregates || event.aggregate.is_none() {
                out.push(candidate(&event, i));
                if out.len() == limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Counts the deleted events (seq, subject) each consumer had not been handed yet, and
/// records the highest seq deleted (a seq never given again).
pub(super) fn note_deleted(
    conn: &Connection,
    gone: &[(Seq, &str)],
) -> crate::Result<(), super::consumers::Failure> {
    let consumers = conn
        .prepare_cached("SELECT name, filters, delivered_seq FROM consumers")?
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .map(|(name, filters, delivered)| {
            Ok((
                name,
                crate::consumer::decode_filters(&filters)?,
                delivered.max(0) as Seq,
            ))
        })
        .collect::<crate::Result<Vec<_>>>()?;
    {
        let mut add = conn.prepare_cached(
            "UPDATE consumers SET skipped_by_retention = skipped_by_retention + ?2 WHERE name = ?1",
        )?;
        for (name, n) in retention::skipped(&consumers, gone) {
            add.execute(params![name, n as i64])?;
        }
    }
    let highest = gone.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
    conn.prepare_cached(
        "INSERT INTO cursors (name, seq) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET seq = MAX(seq, excluded.seq)",
    )?
    .execute(params![retention::DELETED_THROUGH, highest as i64])?;
    Ok(())
}

/// The policy's oldest events (at most `limit`), in seq order.
fn oldest(
    conn: &Connection,
    policy: &RetentionPolicy,
    subjects: &[String],
    limit: usize,
) -> rusqlite::Result<Vec<Candidate>> {
    let candidate = |row: &rusqlite::Row<'_>, subject: u32| -> rusqlite::Result<Candidate> {
        Ok(Candidate {
            seq: row.get::<_, i64>(0)?.max(0) as Seq,
            bytes: row.get::<_, i64>(1)?.max(0) as u64,
            aggregate: row.get(2)?,
            subject,
        })
    };
    if subjects.len() <= MAX_SUBJECTS_PER_POLICY {
        let mut stmt = conn.prepare_cached(
            "SELECT e.seq, length(CAST(e.payload AS BLOB)), e.aggregate_type IS NOT NULL
             FROM subject_seqs s JOIN events e ON e.seq = s.seq
             WHERE s.subject = ?1 AND (?2 OR e.aggregate_type IS NULL) ORDER BY s.seq LIMIT ?3",
        )?;
        let mut lists = Vec::with_capacity(subjects.len());
        for (index, subject) in subjects.iter().enumerate() {
            let list = stmt
                .query_map(
                    params![subject, policy.include_aggregates, limit as i64],
                    |row| candidate(row, index as u32),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            lists.push(list);
        }
        return Ok(retention::merge(lists, limit));
    }
    // Many subjects: read the log from its start, keeping this policy's events (a
    // bounded read: a few times what may be deleted).
    let index: HashMap<&str, u32> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i as u32))
        .collect();
    let mut stmt = conn.prepare_cached(
        "SELECT seq, length(CAST(payload AS BLOB)), aggregate_type IS NOT NULL, subject
         FROM events ORDER BY seq LIMIT ?1",
    )?;
    let mut rows = stmt.query([(limit * 4) as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let subject: String = row.get(3)?;
        if let Some(&i) = index.get(subject.as_str()) {
            let c = candidate(row, i)?;
            if policy.include_aggregates || !c.aggregate {
                out.push(c);
                if out.len() == limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}
