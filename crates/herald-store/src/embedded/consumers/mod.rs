//! Durable consumers in the embedded store (see [`crate::consumer`] for the model).
//!
//! Every function here runs on the writer connection inside a transaction its caller
//! holds, except the read-only ones, which run on a reader's snapshot. First deliveries
//! are kept per fetch ([`batch`]); everything else is a row per message in
//! `consumer_pending`.

mod batch;

use herald_core::{Pattern, Seq, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};

use self::batch::Batch;
use super::events::Events;
use crate::consumer::{
    decode_filters, decode_policy, due_after_delivery, due_once_held, encode_filters,
    encode_policy, exhausted, merge_pages, ms_to_micros, AckId, ConsumerCall, ConsumerDeadLetter,
    ConsumerOp, ConsumerOutcome, ConsumerRecord, ConsumerState, CreateConsumer, DeadReason,
    Delivery, DeliveryPolicy, Fetched, NewConsumer,
};
use crate::{plan, Query, Result, StoreError};

type Sql<T> = std::result::Result<T, Failure>;

/// Given-up messages a fetch moves to the dead letters at most, beyond its batch (the
/// rest follow with the next fetches and the upkeep sweeps).
const SWEEP_CHUNK: usize = 1000;

/// Due batches read at a time while moving their members to pending rows.
const BATCHES_PER_READ: usize = 16;

/// A failure inside a consumer transaction: SQLite's, or data that does not decode.
pub(super) enum Failure {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Sql(error)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Store(crate::event_log::store_error(error))
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::Store(error)
    }
}

impl Failure {
    pub(super) fn into_store_error(self) -> StoreError {
        match self {
            Failure::Sql(e) => super::map_error(e),
            Failure::Store(e) => e,
        }
    }
}

const CONSUMER_COLUMNS: &str = "name, epoch, filters, policy, meta, created_at";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(ConsumerRecordRow, Seq)> {
    Ok((
        ConsumerRecordRow {
            name: row.get(0)?,
            epoch: row.get::<_, i64>(1)? as u32,
            filters: row.get(2)?,
            policy: row.get(3)?,
            meta: row.get(4)?,
            created_at: row.get(5)?,
        },
        row.get::<_, Option<i64>>(6)?.unwrap_or(0).max(0) as Seq,
    ))
}

/// A consumer row before its JSON columns are decoded.
struct ConsumerRecordRow {
    name: String,
    epoch: u32,
    filters: String,
    policy: String,
    meta: String,
    created_at: i64,
}

impl ConsumerRecordRow {
    fn decode(self) -> Result<ConsumerRecord> {
        Ok(ConsumerRecord {
            filters: decode_filters(&self.filters)?,
            policy: decode_policy(&self.policy)?,
            name: self.name,
            epoch: self.epoch,
            meta: self.meta,
            created_at: Timestamp::from_micros(self.created_at),
        })
    }
}

/// The consumer's record, its `delivered_seq` and its count of pending messages.
struct Loaded {
    record: ConsumerRecord,
    delivered_seq: Seq,
    ack_pending: u64,
}

fn load(conn: &Connection, name: &str) -> Sql<Option<Loaded>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {CONSUMER_COLUMNS}, delivered_seq, ack_pending FROM consumers WHERE name = ?1"
        ))?
        .query_row([name], |row| {
            Ok((row_to_record(row)?, row.get::<_, i64>(7)?.max(0) as u64))
        })
        .optional()?;
    let Some(((record, delivered_seq), ack_pending)) = row else {
        return Ok(None);
    };
    Ok(Some(Loaded {
        record: record.decode()?,
        delivered_seq,
        ack_pending,
    }))
}

pub(super) fn create(
    conn: &Connection,
    consumer: &NewConsumer,
    max_consumers: usize,
    now: Timestamp,
) -> Sql<CreateConsumer> {
    if let Some(loaded) = load(conn, &consumer.name)? {
        return Ok(CreateConsumer::Exists(loaded.record));
    }
    let count: i64 = conn.query_row("SELECT count(*) FROM consumers", [], |row| row.get(0))?;
    if count as usize >= max_consumers {
        return Ok(CreateConsumer::LimitReached);
    }
    conn.prepare_cached(
        "INSERT INTO consumers (name, epoch, filters, policy, meta, created_at, delivered_seq, ack_pending)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
    )?
    .execute(params![
        consumer.name,
        i64::from(consumer.epoch),
        encode_filters(&consumer.filters),
        encode_policy(&consumer.policy),
        consumer.meta,
        now.as_micros(),
        crate::seq_to_sql(consumer.start_after)?,
    ])?;
    Ok(CreateConsumer::Created(ConsumerRecord {
        name: consumer.name.clone(),
        epoch: consumer.epoch,
        filters: consumer.filters.clone(),
        policy: consumer.policy.clone(),
        meta: consumer.meta.clone(),
        created_at: now,
    }))
}

pub(super) fn update(
    conn: &Connection,
    name: &str,
    policy: &DeliveryPolicy,
    meta: &str,
) -> Sql<Option<ConsumerRecord>> {
    let changed = conn
        .prepare_cached("UPDATE consumers SET policy = ?2, meta = ?3 WHERE name = ?1")?
        .execute(params![name, encode_policy(policy), meta])?;
    if changed == 0 {
        return Ok(None);
    }
    Ok(load(conn, name)?.map(|l| l.record))
}

pub(super) fn get(conn: &Connection, name: &str) -> Sql<Option<ConsumerRecord>> {
    Ok(load(conn, name)?.map(|l| l.record))
}

pub(super) fn list(conn: &Connection) -> Sql<Vec<ConsumerRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CONSUMER_COLUMNS}, delivered_seq FROM consumers ORDER BY name"
    ))?;
    let rows = stmt
        .query_map([], row_to_record)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .map(|(row, _)| row.decode())
        .collect::<Result<_>>()?)
}

pub(super) fn delete(conn: &Connection, name: &str) -> Sql<bool> {
    conn.prepare_cached("DELETE FROM consumer_pending WHERE consumer = ?1")?
        .execute([name])?;
    batch::delete_all(conn, name)?;
    conn.prepare_cached("DELETE FROM consumer_dead_letters WHERE consumer = ?1")?
        .execute([name])?;
    let deleted = conn
        .prepare_cached("DELETE FROM consumers WHERE name = ?1")?
        .execute([name])?;
    Ok(deleted == 1)
}

pub(super) fn state(
    conn: &Connection,
    events: Events<'_>,
    name: &str,
) -> Sql<Option<ConsumerState>> {
    let Some(loaded) = load(conn, name)? else {
        return Ok(None);
    };
    let lowest_row: Option<i64> = conn
        .prepare_cached("SELECT min(seq) FROM consumer_pending WHERE consumer = ?1")?
        .query_row([name], |row| row.get(0))?;
    let lowest_batched = batch::lowest(conn, name)?.and_then(|b| b.open_seqs().next());
    let lowest_pending = [lowest_row.map(|s| s as Seq), lowest_batched]
        .into_iter()
        .flatten()
        .min();
    let redelivered: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM consumer_pending WHERE consumer = ?1 AND deliveries > 1",
        )?
        .query_row([name], |row| row.get(0))?;
    let dead: i64 = conn
        .prepare_cached("SELECT count(*) FROM consumer_dead_letters WHERE consumer = ?1")?
        .query_row([name], |row| row.get(0))?;
    let skipped: i64 = conn
        .prepare_cached("SELECT skipped_by_retention FROM consumers WHERE name = ?1")?
        .query_row([name], |row| row.get(0))?;
    Ok(Some(ConsumerState {
        skipped_by_retention: skipped.max(0) as u64,
        ack_floor: lowest_pending.map_or(loaded.delivered_seq, |s| s.saturating_sub(1)),
        delivered_seq: loaded.delivered_seq,
        num_pending: events.count_matching_after(&loaded.record.filters, loaded.delivered_seq)?,
        num_ack_pending: loaded.ack_pending,
        num_redelivered: redelivered.max(0) as u64,
        num_dead_letters: dead.max(0) as u64,
    }))
}

/// Events after `after` that match any of `filters`, counted per matching subject through
/// the subject index when there are not too many subjects, by a scan otherwise.
pub(super) fn count_matching_after(conn: &Connection, filters: &[Pattern], after: Seq) -> Sql<u64> {
    let after = crate::seq_to_sql(after)?;
    // Seqs are gap-free above what retention deleted: there the head says the count.
    let deleted_through: i64 = conn
        .prepare_cached("SELECT IFNULL(MAX(seq), 0) FROM cursors WHERE name = ?1")?
        .query_row([crate::retention::DELETED_THROUGH], |row| row.get(0))?;
    if filters.iter().any(Pattern::matches_everything) {
        let sql = if after >= deleted_through {
            "SELECT IFNULL(MAX(seq), 0) - ?1 FROM events"
        } else {
            "SELECT count(*) FROM events WHERE seq > ?1"
        };
        let count: i64 = conn
            .prepare_cached(sql)?
            .query_row([after], |row| row.get(0))?;
        return Ok(count.max(0) as u64);
    }
    let mut subjects = Vec::new();
    {
        let mut stmt = conn.prepare_cached("SELECT subject FROM subjects")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let subject: String = row.get(0)?;
            if filters.iter().any(|f| f.matches(&subject)) {
                subjects.push(subject);
                if subjects.len() > plan::MAX_SUBJECTS_MERGED {
                    break;
                }
            }
        }
    }
    if subjects.len() <= plan::MAX_SUBJECTS_MERGED {
        return Ok(super::subject_index::count_after(
            conn,
            &subjects,
            after.max(0) as Seq,
        )?);
    }
    let mut stmt = conn.prepare_cached("SELECT subject FROM events WHERE seq > ?1")?;
    let mut rows = stmt.query([after])?;
    let mut total = 0u64;
    while let Some(row) = rows.next()? {
        let subject: String = row.get(0)?;
        if filters.iter().any(|f| f.matches(&subject)) {
            total += 1;
        }
    }
    Ok(total)
}

pub(super) fn dead_letters(
    conn: &Connection,
    events: Events<'_>,
    name: &str,
    after_seq: Seq,
    limit: usize,
) -> Sql<Option<Vec<ConsumerDeadLetter>>> {
    if load(conn, name)?.is_none() {
        return Ok(None);
    }
    let limit = limit.min(crate::MAX_QUERY_LIMIT);
    if limit == 0 {
        return Ok(Some(Vec::new()));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT seq, deliveries, reason, last_error, first_delivered_at, dead_at
         FROM consumer_dead_letters WHERE consumer = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut out = Vec::with_capacity(limit);
    let mut after = crate::seq_to_sql(after_seq)?;
    // A letter whose event retention deleted is passed over: read on until the page is
    // full or the letters end.
    loop {
        let rows = stmt
            .query_map(params![name, after, limit as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let exhausted = rows.len() < limit;
        for (seq, deliveries, reason, last_error, first, dead) in rows {
            after = seq;
            let Some(event) = events.event(seq.max(0) as Seq)? else {
                continue;
            };
            out.push(ConsumerDeadLetter {
                event,
                deliveries: deliveries.max(0) as u32,
                reason: DeadReason::parse(&reason)?,
                last_error,
                first_delivered_at: Timestamp::from_micros(first),
                dead_at: Timestamp::from_micros(dead),
            });
            if out.len() == limit {
                return Ok(Some(out));
            }
        }
        if exhausted {
            return Ok(Some(out));
        }
    }
}

/// Applies one call, inside the caller's transaction; `budget` is the store's scan budget
/// for reading new events.
pub(super) fn apply(
    conn: &Connection,
    events: Events<'_>,
    now: Timestamp,
    call: &ConsumerCall,
    budget: usize,
) -> Sql<ConsumerOutcome> {
    let Some(mut consumer) = load(conn, &call.consumer)? else {
        return Ok(ConsumerOutcome::NotFound);
    };
    let before = (consumer.delivered_seq, consumer.ack_pending);
    let name = call.consumer.as_str();
    let outcome = match &call.op {
        ConsumerOp::Fetch { batch } => {
            ConsumerOutcome::Fetched(fetch(conn, events, &mut consumer, *batch, now, budget)?)
        }
        ConsumerOp::Ack(ids) => {
            // Any delivery of the message may ack it: no need to read the row first.
            // Acks usually come a fetch at a time, so the last batch read stays at hand.
            let mut done = 0;
            let mut unknown = Vec::new();
            let mut at_hand: Option<Batch> = None;
            for (index, id) in ids.iter().enumerate() {
                let acked = id.epoch == consumer.record.epoch
                    && id.seq <= i64::MAX as Seq
                    && ack(conn, &mut consumer, &mut at_hand, id.seq)?;
                if acked {
                    done += 1;
                } else {
                    unknown.push(index);
                }
            }
            if let Some(batch) = at_hand {
                batch::save(conn, name, &batch)?;
            }
            ConsumerOutcome::Settled { done, unknown }
        }
        ConsumerOp::Nak {
            ids,
            delay_ms,
            reason,
        } => settle(conn, &mut consumer, ids, |conn, c, id, pending| {
            if pending.deliveries != id.delivery {
                return Ok(false);
            }
            if exhausted(&c.record.policy, pending.deliveries) {
                bury(
                    conn,
                    name,
                    c,
                    id.seq,
                    &pending,
                    DeadReason::MaxDeliver,
                    reason.as_deref(),
                    now,
                )?;
                return Ok(true);
            }
            let delay = delay_ms
                .unwrap_or_else(|| c.record.policy.backoff.delay_ms(id.seq, pending.deliveries));
            conn.prepare_cached(
                "UPDATE consumer_pending SET held_until = ?3, due_at = ?4, last_error = ?5
                 WHERE consumer = ?1 AND seq = ?2",
            )?
            .execute(params![
                name,
                id.seq as i64,
                now.as_micros(),
                now.as_micros().saturating_add(ms_to_micros(delay)),
                reason.as_deref().or(pending.last_error.as_deref()),
            ])?;
            Ok(true)
        })?,
        ConsumerOp::Progress(ids) => settle(conn, &mut consumer, ids, |conn, c, id, pending| {
            if pending.deliveries != id.delivery {
                return Ok(false);
            }
            let (held, due) = due_after_delivery(&c.record.policy, id.seq, pending.deliveries, now);
            conn.prepare_cached(
                "UPDATE consumer_pending SET held_until = ?3, due_at = ?4
                 WHERE consumer = ?1 AND seq = ?2",
            )?
            .execute(params![name, id.seq as i64, held, due])?;
            Ok(true)
        })?,
        ConsumerOp::Term { ids, reason } => {
            settle(conn, &mut consumer, ids, |conn, c, id, pending| {
                if pending.deliveries != id.delivery {
                    return Ok(false);
                }
                bury(
                    conn,
                    name,
                    c,
                    id.seq,
                    &pending,
                    DeadReason::Term,
                    reason.as_deref(),
                    now,
                )?;
                Ok(true)
            })?
        }
        ConsumerOp::Release(ids) => settle(conn, &mut consumer, ids, |conn, _, id, pending| {
            if pending.deliveries != id.delivery || pending.held_until <= now.as_micros() {
                return Ok(false);
            }
            conn.prepare_cached(
                "UPDATE consumer_pending SET deliveries = deliveries - 1, held_until = ?3, due_at = ?3
                 WHERE consumer = ?1 AND seq = ?2",
            )?
            .execute(params![name, id.seq as i64, now.as_micros()])?;
            Ok(true)
        })?,
        ConsumerOp::Redrive { seqs } => {
            ConsumerOutcome::Redriven(redrive(conn, &mut consumer, seqs.as_deref())?)
        }
        ConsumerOp::Discard { seq } => {
            let deleted = conn
                .prepare_cached(
                    "DELETE FROM consumer_dead_letters WHERE consumer = ?1 AND seq = ?2",
                )?
                .execute(params![name, crate::seq_to_sql(*seq)?])?;
            ConsumerOutcome::Discarded(deleted == 1)
        }
    };
    // An idle poll writes nothing (and so costs no sync).
    if (consumer.delivered_seq, consumer.ack_pending) != before {
        conn.prepare_cached(
            "UPDATE consumers SET delivered_seq = ?2, ack_pending = ?3 WHERE name = ?1",
        )?
        .execute(params![
            name,
            crate::seq_to_sql(consumer.delivered_seq)?,
            consumer.ack_pending as i64
        ])?;
    }
    Ok(outcome)
}

/// A pending message's row.
struct Pending {
    deliveries: u32,
    held_until: i64,
    due_at: i64,
    first_delivered_at: i64,
    last_error: Option<String>,
}

fn pending(conn: &Connection, name: &str, seq: Seq) -> Sql<Option<Pending>> {
    Ok(conn
        .prepare_cached(
            "SELECT deliveries, held_until, due_at, first_delivered_at, last_error
             FROM consumer_pending WHERE consumer = ?1 AND seq = ?2",
        )?
        .query_row(params![name, seq as i64], |row| {
            Ok(Pending {
                deliveries: row.get::<_, i64>(0)?.max(0) as u32,
                held_until: row.get(1)?,
                due_at: row.get(2)?,
                first_delivered_at: row.get(3)?,
                last_error: row.get(4)?,
            })
        })
        .optional()?)
}

/// Acks `seq` wherever it is pending: in the batch at hand, as a row, or in another
/// batch (which becomes the one at hand). False when it is not pending.
fn ack(
    conn: &Connection,
    consumer: &mut Loaded,
    at_hand: &mut Option<Batch>,
    seq: Seq,
) -> Sql<bool> {
    if let Some(batch) = at_hand.as_mut() {
        if let Some(index) = batch.open_index(seq) {
            batch.close(index);
            consumer.ack_pending = consumer.ack_pending.saturating_sub(1);
            return Ok(true);
        }
    }
    // Not pending at hand: what is there goes back first, so the reads below see it.
    let name = consumer.record.name.clone();
    if let Some(previous) = at_hand.take() {
        batch::save(conn, &name, &previous)?;
    }
    if delete_pending(conn, &name, consumer, seq)? {
        return Ok(true);
    }
    let Some(mut batch) = batch::containing(conn, &name, seq)? else {
        return Ok(false);
    };
    let index = batch.open_index(seq).expect("containing() checked it");
    batch.close(index);
    consumer.ack_pending = consumer.ack_pending.saturating_sub(1);
    *at_hand = Some(batch);
    Ok(true)
}

/// The pending row of `seq`, moving the message out of its batch first when it is
/// pending there (see [`batch`]).
fn materialize(conn: &Connection, consumer: &Loaded, seq: Seq) -> Sql<Option<Pending>> {
    let name = consumer.record.name.as_str();
    if let Some(found) = pending(conn, name, seq)? {
        return Ok(Some(found));
    }
    let Some(mut batch) = batch::containing(conn, name, seq)? else {
        return Ok(None);
    };
    let index = batch.open_index(seq).expect("containing() checked it");
    batch.close(index);
    batch::save(conn, name, &batch)?;
    let row = first_delivery_row(&consumer.record.policy, &batch, seq);
    insert_pending(conn, name, seq, &row)?;
    Ok(Some(row))
}

/// A batch member's state as a pending row.
fn first_delivery_row(policy: &DeliveryPolicy, batch: &Batch, seq: Seq) -> Pending {
    Pending {
        deliveries: 1,
        held_until: batch.held_until,
        due_at: due_once_held(policy, seq, 1, batch.held_until),
        first_delivered_at: batch.delivered_at,
        last_error: None,
    }
}

fn insert_pending(conn: &Connection, name: &str, seq: Seq, row: &Pending) -> Sql<()> {
    conn.prepare_cached(
        "INSERT INTO consumer_pending
         (consumer, seq, deliveries, held_until, due_at, first_delivered_at, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        name,
        crate::seq_to_sql(seq)?,
        i64::from(row.deliveries),
        row.held_until,
        row.due_at,
        row.first_delivered_at,
        row.last_error,
    ])?;
    Ok(())
}

/// Moves the members of batches whose ack wait (plus backoff) ended to pending rows, so
/// that the row-by-row logic redelivers them or gives up on them; up to about `limit`.
fn materialize_due_batches(
    conn: &Connection,
    consumer: &Loaded,
    now: Timestamp,
    limit: usize,
) -> Sql<()> {
    let name = consumer.record.name.as_str();
    let mut moved = 0;
    while moved < limit {
        let due = batch::due(conn, name, now.as_micros(), BATCHES_PER_READ)?;
        if due.is_empty() {
            break;
        }
        for batch in due {
            for seq in batch.open_seqs().collect::<Vec<_>>() {
                let row = first_delivery_row(&consumer.record.policy, &batch, seq);
                insert_pending(conn, name, seq, &row)?;
                moved += 1;
            }
            batch::remove(conn, name, &batch)?;
        }
    }
    Ok(())
}

/// Runs `action` on each id that names a pending message of this consumer; counts what
/// it settled and reports the rest as unknown.
fn settle(
    conn: &Connection,
    consumer: &mut Loaded,
    ids: &[AckId],
    mut action: impl FnMut(&Connection, &mut Loaded, &AckId, Pending) -> Sql<bool>,
) -> Sql<ConsumerOutcome> {
    let mut done = 0;
    let mut unknown = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let found = if id.epoch == consumer.record.epoch && id.seq <= i64::MAX as Seq {
            materialize(conn, consumer, id.seq)?
        } else {
            None
        };
        let settled = match found {
            Some(p) => action(conn, consumer, id, p)?,
            None => false,
        };
        if settled {
            done += 1;
        } else {
            unknown.push(index);
        }
    }
    Ok(ConsumerOutcome::Settled { done, unknown })
}

/// Moves a pending message to the dead letters.
#[allow(clippy::too_many_arguments)]
fn bury(
    conn: &Connection,
    name: &str,
    consumer: &mut Loaded,
    seq: Seq,
    pending: &Pending,
    reason: DeadReason,
    error: Option<&str>,
    now: Timestamp,
) -> Sql<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO consumer_dead_letters
         (consumer, seq, deliveries, reason, last_error, first_delivered_at, dead_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        name,
        seq as i64,
        i64::from(pending.deliveries),
        reason.as_str(),
        error.or(pending.last_error.as_deref()),
        pending.first_delivered_at,
        now.as_micros(),
    ])?;
    delete_pending(conn, name, consumer, seq).map(drop)
}

/// Removes a pending message; false when it was not pending.
fn delete_pending(conn: &Connection, name: &str, consumer: &mut Loaded, seq: Seq) -> Sql<bool> {
    let deleted = conn
        .prepare_cached("DELETE FROM consumer_pending WHERE consumer = ?1 AND seq = ?2")?
        .execute(params![name, seq as i64])?;
    if deleted == 1 {
        consumer.ack_pending = consumer.ack_pending.saturating_sub(1);
    }
    Ok(deleted == 1)
}

fn fetch(
    conn: &Connection,
    events: Events<'_>,
    consumer: &mut Loaded,
    batch: usize,
    now: Timestamp,
    budget: usize,
) -> Sql<Fetched> {
    let name = consumer.record.name.clone();
    let policy = consumer.record.policy.clone();
    let epoch = consumer.record.epoch;
    let mut fetched = Fetched::default();

    materialize_due_batches(conn, consumer, now, batch + SWEEP_CHUNK)?;
    // Due messages in seq order. A last delivery is due when its ack wait ends (see
    // `due_after_delivery`): it is given up on; the others go out again, up to `batch`.
    let due: Vec<(Seq, Pending)> = conn
        .prepare_cached(
            "SELECT seq, deliveries, held_until, due_at, first_delivered_at, last_error
             FROM consumer_pending
             WHERE consumer = ?1 AND due_at <= ?2 ORDER BY seq LIMIT ?3",
        )?
        .query_map(
            params![name, now.as_micros(), (batch + SWEEP_CHUNK) as i64],
            |row| {
                Ok((
                    row.get::<_, i64>(0)? as Seq,
                    Pending {
                        deliveries: row.get::<_, i64>(1)?.max(0) as u32,
                        held_until: row.get(2)?,
                        due_at: row.get(3)?,
                        first_delivered_at: row.get(4)?,
                        last_error: row.get(5)?,
                    },
                ))
            },
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut redeliveries = Vec::new();
    for (seq, pending) in due {
        if exhausted(&policy, pending.deliveries) {
            bury(
                conn,
                &name,
                consumer,
                seq,
                &pending,
                DeadReason::MaxDeliver,
                None,
                now,
            )?;
            fetched.dead_lettered += 1;
        } else if redeliveries.len() < batch {
            redeliveries.push((seq, pending.deliveries));
        }
    }
    if batch == 0 {
        fetched.next_due = next_due(conn, &name, now)?;
        return Ok(fetched);
    }

    for (seq, deliveries) in redeliveries {
        let delivery = deliveries + 1;
        let Some(event) = events.event(seq)? else {
            // The event is gone from the log: nothing left to deliver.
            delete_pending(conn, &name, consumer, seq)?;
            continue;
        };
        let (held, due_at) = due_after_delivery(&policy, seq, delivery, now);
        conn.prepare_cached(
            "UPDATE consumer_pending
             SET deliveries = ?3, held_until = ?4, due_at = ?5,
                 first_delivered_at = IFNULL(first_delivered_at, ?6)
             WHERE consumer = ?1 AND seq = ?2",
        )?
        .execute(params![
            name,
            seq as i64,
            i64::from(delivery),
            held,
            due_at,
            now.as_micros()
        ])?;
        fetched.messages.push(Delivery {
            event,
            ack_id: AckId {
                seq,
                delivery,
                epoch,
            },
        });
    }

    // Then new events, as far as the pending set has room.
    let room = (u64::from(policy.max_ack_pending)).saturating_sub(consumer.ack_pending) as usize;
    let wanted = room.min(batch - fetched.messages.len());
    if wanted > 0 {
        let page = next_events(
            events,
            &consumer.record.filters,
            consumer.delivered_seq,
            wanted,
            budget,
        )?;
        if !page.events.is_empty() {
            let seqs: Vec<Seq> = page.events.iter().map(|e| e.seq).collect();
            let (held, _) = due_after_delivery(&policy, seqs[0], 1, now);
            let due_at = seqs
                .iter()
                .map(|&seq| due_once_held(&policy, seq, 1, held))
                .min()
                .unwrap_or(held);
            batch::insert(
                conn,
                &name,
                &Batch::new(seqs, held, due_at, now.as_micros()),
            )?;
        }
        for event in page.events {
            consumer.ack_pending += 1;
            fetched.messages.push(Delivery {
                ack_id: AckId {
                    seq: event.seq,
                    delivery: 1,
                    epoch,
                },
                event,
            });
        }
        consumer.delivered_seq = consumer.delivered_seq.max(page.scanned_to);
        if fetched.messages.len() < batch {
            fetched.read_stopped_early = consumer.delivered_seq < events.head()?;
        }
    }
    fetched.at_max_ack_pending = consumer.ack_pending >= u64::from(policy.max_ack_pending);
    fetched.next_due = next_due(conn, &name, now)?;
    Ok(fetched)
}

fn next_due(conn: &Connection, name: &str, now: Timestamp) -> Sql<Option<Timestamp>> {
    let row: Option<i64> = conn
        .prepare_cached(
            "SELECT min(due_at) FROM consumer_pending WHERE consumer = ?1 AND due_at > ?2",
        )?
        .query_row(params![name, now.as_micros()], |row| row.get(0))?;
    let batched = batch::next_due(conn, name, now.as_micros())?;
    Ok([row, batched]
        .into_iter()
        .flatten()
        .min()
        .map(Timestamp::from_micros))
}

/// The next `limit` events after `after` matching any filter.
fn next_events(
    events: Events<'_>,
    filters: &[Pattern],
    after: Seq,
    limit: usize,
    budget: usize,
) -> Sql<crate::Page> {
    let mut pages = Vec::with_capacity(filters.len());
    for filter in filters {
        pages.push(events.query(
            &Query {
                subject: Some(filter.clone()),
                after_seq: after,
                limit,
                ..Query::default()
            },
            budget,
        )?);
    }
    Ok(merge_pages(pages, limit))
}

fn redrive(conn: &Connection, consumer: &mut Loaded, seqs: Option<&[Seq]>) -> Sql<u64> {
    let name = consumer.record.name.clone();
    let chosen: Vec<(Seq, i64)> = match seqs {
        None => conn
            .prepare_cached(
                "SELECT seq, first_delivered_at FROM consumer_dead_letters WHERE consumer = ?1",
            )?
            .query_map([&name], |row| {
                Ok((row.get::<_, i64>(0)? as Seq, row.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?,
        Some(seqs) => {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, first_delivered_at FROM consumer_dead_letters
                 WHERE consumer = ?1 AND seq = ?2",
            )?;
            let mut out = Vec::new();
            for &seq in seqs {
                if let Some(row) = stmt
                    .query_row(params![name, crate::seq_to_sql(seq)?], |row| {
                        Ok((row.get::<_, i64>(0)? as Seq, row.get(1)?))
                    })
                    .optional()?
                {
                    out.push(row);
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        }
    };
    for (seq, first) in &chosen {
        conn.prepare_cached("DELETE FROM consumer_dead_letters WHERE consumer = ?1 AND seq = ?2")?
            .execute(params![name, *seq as i64])?;
        conn.prepare_cached(
            "INSERT INTO consumer_pending
             (consumer, seq, deliveries, held_until, due_at, first_delivered_at, last_error)
             VALUES (?1, ?2, 0, 0, 0, ?3, NULL)",
        )?
        .execute(params![name, *seq as i64, first])?;
        consumer.ack_pending += 1;
    }
    Ok(chosen.len() as u64)
}
