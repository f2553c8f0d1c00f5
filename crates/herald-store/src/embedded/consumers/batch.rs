//! First deliveries kept as batches: the messages one fetch handed out for the first time
//! share one row of `consumer_batches` (their seqs, and a bit each for "still pending")
//! instead of a row each in `consumer_pending`. A fetch of 100 new events then writes one
//! row, and acking them rewrites or deletes that row — a few pages per commit instead of
//! a B-tree insert and delete per message, which was most of fetch + ack's store cost.
//!
//! A message is pending in exactly one place: open in a batch, or a row of
//! `consumer_pending`. Anything but an ack (a NAK, progress, term or release, or the end
//! of the ack wait) first moves the message to `consumer_pending`
//! ([`super::materialize`]), where the rest of the model works row by row as before.
//! Batches of one consumer never overlap: each holds seqs above everything delivered
//! before it.

use herald_core::Seq;
use rusqlite::{params, Connection, OptionalExtension};

use super::Sql;
use crate::StoreError;

/// One fetch's first deliveries.
pub(super) struct Batch {
    /// The members' seqs, ascending; the first is the row's key.
    pub seqs: Vec<Seq>,
    /// A bit per member of `seqs`: set while it is pending here.
    open: Vec<u8>,
    pub open_count: u32,
    pub held_until: i64,
    pub due_at: i64,
    pub delivered_at: i64,
}

impl Batch {
    /// A batch of `seqs` (ascending, not empty), all pending.
    pub fn new(seqs: Vec<Seq>, held_until: i64, due_at: i64, delivered_at: i64) -> Batch {
        let mut open = vec![0xFFu8; seqs.len().div_ceil(8)];
        if !seqs.len().is_multiple_of(8) {
            *open.last_mut().expect("not empty") = (1u8 << (seqs.len() % 8)) - 1;
        }
        Batch {
            open_count: seqs.len() as u32,
            seqs,
            open,
            held_until,
            due_at,
            delivered_at,
        }
    }

    pub fn first_seq(&self) -> Seq {
        self.seqs[0]
    }

    /// The index of `seq` when it is a member still pending here.
    pub fn open_index(&self, seq: Seq) -> Option<usize> {
        let index = self.seqs.binary_search(&seq).ok()?;
        (self.open[index / 8] & (1 << (index % 8)) != 0).then_some(index)
    }

    /// Takes member `index` out (acked, or moved to `consumer_pending`).
    pub fn close(&mut self, index: usize) {
        let bit = 1u8 << (index % 8);
        if self.open[index / 8] & bit != 0 {
            self.open[index / 8] &= !bit;
            self.open_count -= 1;
        }
    }

    /// The members still pending here, in seq order.
    pub fn open_seqs(&self) -> impl Iterator<Item = Seq> + '_ {
        self.seqs
            .iter()
            .enumerate()
            .filter(|(i, _)| self.open[i / 8] & (1 << (i % 8)) != 0)
            .map(|(_, &seq)| seq)
    }

    fn encode_members(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.seqs.len() * 2);
        for pair in self.seqs.windows(2) {
            let mut gap = pair[1] - pair[0];
            loop {
                let byte = (gap & 0x7F) as u8;
                gap >>= 7;
                if gap == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    fn decode(
        first_seq: i64,
        members: &[u8],
        open: Vec<u8>,
        open_count: i64,
        times: (i64, i64, i64),
    ) -> Result<Batch, StoreError> {
        let corrupt = || StoreError::Internal(format!("consumer batch at {first_seq} is corrupt"));
        let mut seqs = vec![first_seq.max(0) as Seq];
        let (mut gap, mut shift) = (0u64, 0u32);
        for &byte in members {
            if shift > 63 {
                return Err(corrupt());
            }
            gap |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                let last = *seqs.last().expect("not empty");
                seqs.push(
                    last.checked_add(gap)
                        .filter(|_| gap > 0)
                        .ok_or_else(corrupt)?,
                );
                (gap, shift) = (0, 0);
            } else {
                shift += 7;
            }
        }
        if shift != 0 || open.len() != seqs.len().div_ceil(8) {
            return Err(corrupt());
        }
        let (held_until, due_at, delivered_at) = times;
        Ok(Batch {
            seqs,
            open,
            open_count: open_count.max(0) as u32,
            held_until,
            due_at,
            delivered_at,
        })
    }
}

const BATCH_COLUMNS: &str =
    "first_seq, members, open, open_count, held_until, due_at, delivered_at";

fn row_to_batch(row: &rusqlite::Row<'_>) -> rusqlite::Result<Sql<Batch>> {
    let first_seq: i64 = row.get(0)?;
    let members: Vec<u8> = row.get(1)?;
    let open: Vec<u8> = row.get(2)?;
    let open_count: i64 = row.get(3)?;
    let times = (row.get(4)?, row.get(5)?, row.get(6)?);
    Ok(Batch::decode(first_seq, &members, open, open_count, times).map_err(Into::into))
}

/// The batch in which `seq` is still pending, if any.
pub(super) fn containing(conn: &Connection, consumer: &str, seq: Seq) -> Sql<Option<Batch>> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {BATCH_COLUMNS} FROM consumer_batches
             WHERE consumer = ?1 AND first_seq <= ?2 ORDER BY first_seq DESC LIMIT 1"
        ))?
        .query_row(params![consumer, seq as i64], row_to_batch)
        .optional()?;
    match found {
        Some(batch) => {
            let batch = batch?;
            Ok(batch.open_index(seq).is_some().then_some(batch))
        }
        None => Ok(None),
    }
}

/// The consumer's batch with the lowest seqs.
pub(super) fn lowest(conn: &Connection, consumer: &str) -> Sql<Option<Batch>> {
    conn.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS} FROM consumer_batches
         WHERE consumer = ?1 ORDER BY first_seq LIMIT 1"
    ))?
    .query_row([consumer], row_to_batch)
    .optional()?
    .transpose()
}

/// Up to `limit` batches due by `now`, earliest first.
pub(super) fn due(conn: &Connection, consumer: &str, now: i64, limit: usize) -> Sql<Vec<Batch>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS} FROM consumer_batches
         WHERE consumer = ?1 AND due_at <= ?2 ORDER BY due_at LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(params![consumer, now, limit as i64], row_to_batch)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().collect()
}

/// The earliest due time after `now` of the consumer's batches.
pub(super) fn next_due(conn: &Connection, consumer: &str, now: i64) -> Sql<Option<i64>> {
    Ok(conn
        .prepare_cached(
            "SELECT min(due_at) FROM consumer_batches WHERE consumer = ?1 AND due_at > ?2",
        )?
        .query_row(params![consumer, now], |row| row.get(0))?)
}

pub(super) fn insert(conn: &Connection, consumer: &str, batch: &Batch) -> Sql<()> {
    conn.prepare_cached(
        "INSERT INTO consumer_batches
         (consumer, first_seq, members, open, open_count, held_until, due_at, delivered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        consumer,
        crate::seq_to_sql(batch.first_seq())?,
        batch.encode_members(),
        batch.open,
        i64::from(batch.open_count),
        batch.held_until,
        batch.due_at,
        batch.delivered_at,
    ])?;
    Ok(())
}

/// Deletes the batch's row.
pub(super) fn remove(conn: &Connection, consumer: &str, batch: &Batch) -> Sql<()> {
    conn.prepare_cached("DELETE FROM consumer_batches WHERE consumer = ?1 AND first_seq = ?2")?
        .execute(params![consumer, crate::seq_to_sql(batch.first_seq())?])?;
    Ok(())
}

/// Writes back which members are still pending; deletes the row when none is.
pub(super) fn save(conn: &Connection, consumer: &str, batch: &Batch) -> Sql<()> {
    let first_seq = crate::seq_to_sql(batch.first_seq())?;
    if batch.open_count == 0 {
        remove(conn, consumer, batch)?;
    } else {
        conn.prepare_cached(
            "UPDATE consumer_batches SET open = ?3, open_count = ?4
             WHERE consumer = ?1 AND first_seq = ?2",
        )?
        .execute(params![
            consumer,
            first_seq,
            batch.open,
            i64::from(batch.open_count)
        ])?;
    }
    Ok(())
}

pub(super) fn delete_all(conn: &Connection, consumer: &str) -> Sql<()> {
    conn.prepare_cached("DELETE FROM consumer_batches WHERE consumer = ?1")?
        .execute([consumer])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_open_bits_survive_encoding() {
        let seqs = vec![5, 6, 200, 201, 70_000, 1 << 40];
        let mut batch = Batch::new(seqs.clone(), 10, 20, 1);
        batch.close(1);
        batch.close(5);
        let decoded = Batch::decode(
            5,
            &batch.encode_members(),
            batch.open.clone(),
            i64::from(batch.open_count),
            (10, 20, 1),
        )
        .expect("decodes");
        assert_eq!(decoded.seqs, seqs);
        assert_eq!(
            decoded.open_seqs().collect::<Vec<_>>(),
            vec![5, 200, 201, 70_000]
        );
        assert_eq!(decoded.open_count, 4);
        assert_eq!(decoded.open_index(6), None);
        assert_eq!(decoded.open_index(7), None);
        assert_eq!(decoded.open_index(200), Some(2));
    }

    #[test]
    fn closing_twice_counts_once() {
        let mut batch = Batch::new((1..=9).collect(), 0, 0, 0);
        assert_eq!(batch.open_count, 9);
        batch.close(8);
        batch.close(8);
        assert_eq!(batch.open_count, 8);
        assert_eq!(batch.open_seqs().count(), 8);
    }

    #[test]
    fn a_truncated_gap_is_corrupt() {
        assert!(Batch::decode(1, &[0x80], vec![0x03], 2, (0, 0, 0)).is_err());
        assert!(Batch::decode(1, &[0x00], vec![0x03], 2, (0, 0, 0)).is_err());
    }
}
