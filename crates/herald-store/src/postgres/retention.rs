//! Retention on PostgreSQL: one pass is one transaction, and one instance at a time runs
//! one (a transaction-scoped advisory lock; the others skip their pass). See
//! [`crate::retention`] for what is deleted.

use std::collections::HashMap;

use deadpool_postgres::Object;
use herald_core::{Seq, Timestamp};

use super::Failure;
use crate::retention::{self, Candidate, RetentionPass, RetentionPolicy, SubjectTotals};

/// The advisory lock a retention pass holds (`herald` `ret` in ASCII).
const RETENTION_LOCK_KEY: i64 = 0x6865_7261_6c64_7274;

/// Deleted events after which a round of retention vacuums the tables it deleted from.
pub(super) const VACUUM_AFTER: u64 = 10_000;
/// How long that vacuum may run.
pub(super) const VACUUM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Makes the space of deleted rows reusable (outside any transaction, as VACUUM must be).
pub(super) async fn vacuum(client: &mut Object) -> Result<(), Failure> {
    // One statement per call: several in one simple query form an implicit transaction.
    client.batch_execute("SET statement_timeout = 0").await?;
    let vacuumed = client
        .batch_execute("VACUUM (ANALYZE) events, subjects")
        .await;
    client.batch_execute("RESET statement_timeout").await?;
    vacuumed?;
    Ok(())
}

/// Subjects of a policy read one by one; past this, its events are found by a scan.
const MAX_SUBJECTS_PER_POLICY: usize = 1_000;

pub(super) async fn enforce(
    client: &mut Object,
    policies: &[RetentionPolicy],
    now: Timestamp,
    budget: usize,
) -> Result<RetentionPass, Failure> {
    let tx = client.transaction().await?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1)",
            &[&RETENTION_LOCK_KEY],
        )
        .await?
        .get(0);
    if !locked {
        tx.rollback().await?;
        return Ok(RetentionPass::default());
    }
    let totals: Vec<SubjectTotals> = tx
        .query("SELECT subject, events, bytes FROM subjects", &[])
        .await?
        .iter()
        .map(|row| SubjectTotals {
            subject: row.get(0),
            events: row.get::<_, i64>(1).max(0) as u64,
            bytes: row.get::<_, i64>(2).max(0) as u64,
        })
        .collect();
    let groups = retention::group(policies, totals);
    let mut deleted: Vec<(Candidate, String)> = Vec::new();
    let mut more = false;
    for (policy, subjects, events, bytes) in groups {
        let left = budget - deleted.len();
        if left == 0 {
            more = true;
            break;
        }
        let cutoff_seq = match retention::age_cutoff(policy, now) {
            None => None,
            Some(ts) => Some(
                tx.query_opt(
                    "SELECT seq FROM events WHERE ts < $1 ORDER BY ts DESC, seq DESC LIMIT 1",
                    &[&ts],
                )
                .await?
                .map_or(0, |row| row.get::<_, i64>(0).max(0) as Seq),
            ),
        };
        let candidates = oldest(&tx, policy, &subjects, left).await?;
        let chosen = retention::choose(policy, &candidates, events, bytes, cutoff_seq, left);
        deleted.extend(
            chosen
                .into_iter()
                .map(|c| (c, subjects[c.subject as usize].clone())),
        );
    }
    if deleted.len() == budget {
        more = true;
    }
    if deleted.is_empty() {
        tx.rollback().await?;
        return Ok(RetentionPass::default());
    }

    let seqs: Vec<i64> = deleted.iter().map(|(c, _)| c.seq as i64).collect();
    tx.execute("DELETE FROM events WHERE seq = ANY($1)", &[&seqs])
        .await?;
    let mut per_subject: HashMap<&str, (i64, i64)> = HashMap::new();
    for (candidate, subject) in &deleted {
        let entry = per_subject.entry(subject.as_str()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += candidate.bytes as i64;
    }
    let names: Vec<&str> = per_subject.keys().copied().collect();
    let counts: Vec<i64> = names.iter().map(|n| per_subject[n].0).collect();
    let bytes: Vec<i64> = names.iter().map(|n| per_subject[n].1).collect();
    tx.execute(
        "UPDATE subjects s SET events = GREATEST(s.events - d.events, 0),
                              bytes = GREATEST(s.bytes - d.bytes, 0)
         FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS d(subject, events, bytes)
         WHERE s.subject = d.subject",
        &[&names, &counts, &bytes],
    )
    .await?;
    let mut consumers = Vec::new();
    for row in tx
        .query("SELECT name, filters, delivered_seq FROM consumers", &[])
        .await?
    {
        let filters: String = row.get(1);
        consumers.push((
            row.get::<_, String>(0),
            crate::consumer::decode_filters(&filters)?,
            row.get::<_, i64>(2).max(0) as Seq,
        ));
    }
    let gone: Vec<(Seq, &str)> = deleted
        .iter()
        .map(|(c, subject)| (c.seq, subject.as_str()))
        .collect();
    for (name, n) in retention::skipped(&consumers, &gone) {
        tx.execute(
            "UPDATE consumers SET skipped_by_retention = skipped_by_retention + $2 WHERE name = $1",
            &[&name, &(n as i64)],
        )
        .await?;
    }
    let highest = deleted.iter().map(|(c, _)| c.seq).max().unwrap_or(0) as i64;
    tx.execute(
        "INSERT INTO cursors (name, seq) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET seq = GREATEST(cursors.seq, excluded.seq)",
        &[&retention::DELETED_THROUGH, &highest],
    )
    .await?;
    tx.commit().await?;
    Ok(RetentionPass {
        deleted_events: deleted.len() as u64,
        deleted_bytes: deleted.iter().map(|(c, _)| c.bytes).sum(),
        more,
    })
}

/// The policy's oldest events (at most `limit`), in seq order.
async fn oldest(
    tx: &deadpool_postgres::Transaction<'_>,
    policy: &RetentionPolicy,
    subjects: &[String],
    limit: usize,
) -> Result<Vec<Candidate>, Failure> {
    let limit_param = limit as i64;
    if subjects.len() <= MAX_SUBJECTS_PER_POLICY {
        let stmt = tx
            .prepare_cached(
                "SELECT seq, octet_length(payload), aggregate_type IS NOT NULL FROM events
                 WHERE subject = $1 AND ($2 OR aggregate_type IS NULL) ORDER BY seq LIMIT $3",
            )
            .await?;
        let mut lists = Vec::with_capacity(subjects.len());
        for (index, subject) in subjects.iter().enumerate() {
            let rows = tx
                .query(&stmt, &[subject, &policy.include_aggregates, &limit_param])
                .await?;
            lists.push(
                rows.iter()
                    .map(|row| Candidate {
                        seq: row.get::<_, i64>(0).max(0) as Seq,
                        bytes: row.get::<_, i32>(1).max(0) as u64,
                        aggregate: row.get(2),
                        subject: index as u32,
                    })
                    .collect(),
            );
        }
        return Ok(retention::merge(lists, limit));
    }
    let index: HashMap<&str, u32> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i as u32))
        .collect();
    let rows = tx
        .query(
            "SELECT seq, octet_length(payload), aggregate_type IS NOT NULL, subject
             FROM events ORDER BY seq LIMIT $1",
            &[&((limit * 4) as i64)],
        )
        .await?;
    let mut out = Vec::new();
    for row in &rows {
        let subject: &str = row.get(3);
        if let Some(&i) = index.get(subject) {
            let aggregate: bool = row.get(2);
            if policy.include_aggregates || !aggregate {
                out.push(Candidate {
                    seq: row.get::<_, i64>(0).max(0) as Seq,
                    bytes: row.get::<_, i32>(1).max(0) as u64,
                    aggregate,
                    subject: i,
                });
                if out.len() == limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}
