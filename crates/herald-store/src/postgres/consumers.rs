//! Durable consumers in the PostgreSQL store (see [`crate::consumer`] for the model; the
//! outcomes are the embedded store's, `embedded/consumers.rs`).
//!
//! # One message, one client — across instances
//!
//! [`ops`] runs a batch of calls in one READ COMMITTED transaction that first locks every
//! consumer row the batch names (`SELECT … FOR UPDATE`, in name order, so two batches
//! naming the same consumers never wait for each other in a cycle). Whoever else changes
//! a consumer's delivery state — another batch on this or another instance, a delete —
//! takes the same row lock first, so the changes to one consumer are applied one
//! transaction after the other. READ COMMITTED, not REPEATABLE READ, is what makes that
//! safe: the lock is granted once the previous holder committed, the locked row is read
//! in its newest version, and each statement after it takes a new snapshot that holds
//! everything the previous holder wrote (its pending rows, its `delivered_seq`). A
//! message is therefore handed out again only once its `due_at` has passed, whichever
//! instance asks.
//!
//! New events are read with the query planner (`query::plan_and_read`) inside the same
//! transaction: it reads `log_head` first and bounds every read by it, and an append
//! commits its events with the head that covers them, so the read sees every event up
//! to that head (see the module docs of [`super`]).
//!
//! Within a batch the consumer rows are kept in memory and written back once, at the end;
//! the pending rows are written per call, as one statement per kind of change (`UNNEST`
//! arrays), several of them pipelined in one round trip.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Object;
use herald_core::{Pattern, Seq, Timestamp};
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};

use super::query::{plan_and_read, Tx};
use super::{row_to_event, Failure, EVENT_COLUMNS, EVENT_COLUMN_COUNT};
use crate::consumer::{
    decode_filters, decode_policy, due_after_delivery, encode_filters, encode_policy, exhausted,
    merge_pages, ms_to_micros, AckId, ConsumerCall, ConsumerDeadLetter, ConsumerOp,
    ConsumerOutcome, ConsumerRecord, ConsumerState, CreateConsumer, DeadReason, Delivery,
    DeliveryPolicy, Fetched, NewConsumer,
};
use crate::{plan, Page, Query, StoreError};

type Res<T> = Result<T, Failure>;

/// The key of the advisory lock that serialises consumer creation, so that instances
/// creating consumers at once keep to the limit ("HERALDC" in ASCII).
const CREATE_LOCK_KEY: i64 = 0x48_4552_414C_4443;

const CONSUMER_COLUMNS: &str =
    "name, epoch, filters, policy, meta, created_at, delivered_seq, ack_pending";

/// A consumer's row: its record and delivery counters.
struct Loaded {
    record: ConsumerRecord,
    delivered_seq: Seq,
    ack_pending: u64,
}

fn decode_consumer(row: &Row) -> Res<Loaded> {
    let column = |e: tokio_postgres::Error| StoreError::Corrupt(format!("consumer row: {e}"));
    let filters: String = row.try_get(2).map_err(column)?;
    let policy: String = row.try_get(3).map_err(column)?;
    Ok(Loaded {
        record: ConsumerRecord {
            name: row.try_get(0).map_err(column)?,
            epoch: row.try_get::<_, i64>(1).map_err(column)? as u32,
            filters: decode_filters(&filters)?,
            policy: decode_policy(&policy)?,
            meta: row.try_get(4).map_err(column)?,
            created_at: Timestamp::from_micros(row.try_get(5).map_err(column)?),
        },
        delivered_seq: row.try_get::<_, i64>(6).map_err(column)?.max(0) as Seq,
        ack_pending: row.try_get::<_, i64>(7).map_err(column)?.max(0) as u64,
    })
}

fn seq_param(seq: Seq) -> Res<i64> {
    Ok(crate::seq_to_sql(seq)?)
}

/// A count of deliveries as stored (an `INTEGER`).
fn deliveries_param(deliveries: u32) -> i32 {
    i32::try_from(deliveries).unwrap_or(i32::MAX)
}

async fn load(client: &impl deadpool_postgres::GenericClient, name: &str) -> Res<Option<Loaded>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers WHERE name = $1"
        ))
        .await?;
    client
        .query_opt(&stmt, &[&name])
        .await?
        .map(|row| decode_consumer(&row))
        .transpose()
}

pub(super) async fn create(
    client: &mut Object,
    consumer: NewConsumer,
    max_consumers: usize,
    now: Timestamp,
) -> Res<CreateConsumer> {
    let lock = client
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await?;
    let existing = client
        .prepare_cached(&format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers WHERE name = $1"
        ))
        .await?;
    let count = client
        .prepare_cached("SELECT count(*) FROM consumers")
        .await?;
    let insert = client
        .prepare_cached(
            "INSERT INTO consumers
                 (name, epoch, filters, policy, meta, created_at, delivered_seq, ack_pending)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
        )
        .await?;
    let tx = client.transaction().await?;
    // Pipelined: the look-ups run (and take their snapshots) once the lock is granted.
    let lock_params: [&(dyn ToSql + Sync); 1] = [&CREATE_LOCK_KEY];
    let name_params: [&(dyn ToSql + Sync); 1] = [&consumer.name];
    let (_, found, counted) = tokio::try_join!(
        biased;
        tx.query_one(&lock, &lock_params),
        tx.query_opt(&existing, &name_params),
        tx.query_one(&count, &[]),
    )?;
    if let Some(row) = found {
        tx.rollback().await?;
        return Ok(CreateConsumer::Exists(decode_consumer(&row)?.record));
    }
    if counted.get::<_, i64>(0).max(0) as usize >= max_consumers {
        tx.rollback().await?;
        return Ok(CreateConsumer::LimitReached);
    }
    tx.execute(
        &insert,
        &[
            &consumer.name,
            &i64::from(consumer.epoch),
            &encode_filters(&consumer.filters),
            &encode_policy(&consumer.policy),
            &consumer.meta,
            &now.as_micros(),
            &seq_param(consumer.start_after)?,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(CreateConsumer::Created(ConsumerRecord {
        name: consumer.name,
        epoch: consumer.epoch,
        filters: consumer.filters,
        policy: consumer.policy,
        meta: consumer.meta,
        created_at: now,
    }))
}

pub(super) async fn update(
    client: &mut Object,
    name: &str,
    policy: &DeliveryPolicy,
    meta: &str,
) -> Res<Option<ConsumerRecord>> {
    // The row lock of the UPDATE waits for a batch of operations on this consumer.
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE consumers SET policy = $2, meta = $3 WHERE name = $1
             RETURNING {CONSUMER_COLUMNS}"
        ))
        .await?;
    client
        .query_opt(&stmt, &[&name, &encode_policy(policy), &meta])
        .await?
        .map(|row| Ok(decode_consumer(&row)?.record))
        .transpose()
}

pub(super) async fn get(client: &mut Object, name: &str) -> Res<Option<ConsumerRecord>> {
    Ok(load(&*client, name).await?.map(|l| l.record))
}

pub(super) async fn list(client: &mut Object) -> Res<Vec<ConsumerRecord>> {
    // `name` is COLLATE "C": byte order.
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers ORDER BY name"
        ))
        .await?;
    client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|row| Ok(decode_consumer(row)?.record))
        .collect()
}

pub(super) async fn delete(client: &mut Object, name: &str) -> Res<bool> {
    let consumer = client
        .prepare_cached("DELETE FROM consumers WHERE name = $1")
        .await?;
    let pending = client
        .prepare_cached("DELETE FROM consumer_pending WHERE consumer = $1")
        .await?;
    let dead = client
        .prepare_cached("DELETE FROM consumer_dead_letters WHERE consumer = $1")
        .await?;
    let tx = client.transaction().await?;
    // The consumer's row first: its lock waits for a batch of operations still writing
    // pending rows, and the two deletes after it (new snapshots) then see those rows.
    let params: [&(dyn ToSql + Sync); 1] = [&name];
    let (deleted, _, _) = tokio::try_join!(
        biased;
        tx.execute(&consumer, &params),
        tx.execute(&pending, &params),
        tx.execute(&dead, &params),
    )?;
    tx.commit().await?;
    Ok(deleted == 1)
}

pub(super) async fn state(client: &mut Object, name: &str) -> Res<Option<ConsumerState>> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let Some(loaded) = load(&tx, name).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    let counts = tx
        .prepare_cached(
            "SELECT (SELECT min(seq) FROM consumer_pending WHERE consumer = $1),
                    (SELECT count(*) FROM consumer_pending WHERE consumer = $1 AND deliveries > 1),
                    (SELECT count(*) FROM consumer_dead_letters WHERE consumer = $1),
                    (SELECT seq FROM log_head),
                    (SELECT skipped_by_retention FROM consumers WHERE name = $1),
                    (SELECT COALESCE(MAX(seq), 0) FROM cursors WHERE name = $2)",
        )
        .await?;
    let row = tx
        .query_one(&counts, &[&name, &crate::retention::DELETED_THROUGH])
        .await?;
    let lowest_pending: Option<i64> = row.get(0);
    let redelivered: i64 = row.get(1);
    let dead: i64 = row.get(2);
    let head = row.get::<_, i64>(3).max(0) as Seq;
    let skipped: Option<i64> = row.get(4);
    let deleted_through = row.get::<_, i64>(5).max(0) as Seq;
    let num_pending = count_matching_after(
        &tx,
        &loaded.record.filters,
        loaded.delivered_seq,
        head,
        deleted_through,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(ConsumerState {
        ack_floor: lowest_pending.map_or(loaded.delivered_seq, |s| {
            (s.max(0) as Seq).saturating_sub(1)
        }),
        delivered_seq: loaded.delivered_seq,
        num_pending,
        num_ack_pending: loaded.ack_pending,
        num_redelivered: redelivered.max(0) as u64,
        num_dead_letters: dead.max(0) as u64,
        skipped_by_retention: skipped.unwrap_or(0).max(0) as u64,
    }))
}

/// Events in `(after, head]` that match any of `filters`. Seqs are gap-free here (see
/// the module docs of [`super`]), so a filter that matches everything needs no count;
/// otherwise the events of each matching subject are counted through the subject index
/// when there are not too many subjects, and grouped by subject in one scan when there are.
async fn count_matching_after(
    tx: &Tx<'_>,
    filters: &[Pattern],
    after: Seq,
    head: Seq,
    deleted_through: Seq,
) -> Res<u64> {
    if filters.iter().any(Pattern::matches_everything) {
        // Seqs are gap-free above what retention deleted.
        if after >= deleted_through {
            return Ok(head.saturating_sub(after));
        }
        let stmt = tx
            .prepare_cached("SELECT count(*) FROM events WHERE seq > $1 AND seq <= $2")
            .await?;
        let row = tx
            .query_one(&stmt, &[&seq_param(after)?, &seq_param(head)?])
            .await?;
        return Ok(row.get::<_, i64>(0).max(0) as u64);
    }
    let after = seq_param(after)?;
    let head = seq_param(head)?;
    let mut subjects: HashSet<String> = HashSet::new();
    let mut too_many = false;
    let ranged = tx
        .prepare_cached("SELECT subject FROM subjects WHERE subject >= $1 AND subject < $2")
        .await?;
    let all = tx.prepare_cached("SELECT subject FROM subjects").await?;
    'filters: for filter in filters {
        let rows = match plan::candidate_range(filter) {
            Some((lower, upper)) => tx.query(&ranged, &[&lower, &upper]).await?,
            None => tx.query(&all, &[]).await?,
        };
        for row in &rows {
            let subject: String = row.get(0);
            if filter.matches(&subject) {
                subjects.insert(subject);
                if subjects.len() > plan::MAX_SUBJECTS_MERGED {
                    too_many = true;
                    break 'filters;
                }
            }
        }
    }
    if !too_many {
        if subjects.is_empty() {
            return Ok(0);
        }
        let subjects: Vec<String> = subjects.into_iter().collect();
        let stmt = tx
            .prepare_cached(
                "SELECT count(*) FROM UNNEST($1::text[]) AS s(subject)
                 CROSS JOIN LATERAL (
                     SELECT 1 FROM events e
                     WHERE e.subject = s.subject AND e.seq > $2 AND e.seq <= $3
                 ) AS x",
            )
            .await?;
        let row = tx.query_one(&stmt, &[&subjects, &after, &head]).await?;
        return Ok(row.get::<_, i64>(0).max(0) as u64);
    }
    let stmt = tx
        .prepare_cached(
            "SELECT subject, count(*) FROM events WHERE seq > $1 AND seq <= $2 GROUP BY subject",
        )
        .await?;
    let mut total = 0u64;
    for row in tx.query(&stmt, &[&after, &head]).await? {
        let subject: String = row.get(0);
        if filters.iter().any(|f| f.matches(&subject)) {
            total += row.get::<_, i64>(1).max(0) as u64;
        }
    }
    Ok(total)
}

fn prefixed_event_columns() -> String {
    EVENT_COLUMNS
        .split(", ")
        .map(|c| format!("e.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) async fn dead_letters(
    client: &mut Object,
    name: &str,
    after_seq: Seq,
    limit: usize,
) -> Res<Option<Vec<ConsumerDeadLetter>>> {
    let after_seq = seq_param(after_seq)?;
    let limit = limit.min(crate::MAX_QUERY_LIMIT) as i64;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let exists = tx
        .prepare_cached("SELECT 1 FROM consumers WHERE name = $1")
        .await?;
    let letters = tx
        .prepare_cached(&format!(
            "SELECT {}, d.deliveries, d.reason, d.last_error, d.first_delivered_at, d.dead_at
             FROM consumer_dead_letters d JOIN events e ON e.seq = d.seq
             WHERE d.consumer = $1 AND d.seq > $2 ORDER BY d.seq LIMIT $3",
            prefixed_event_columns()
        ))
        .await?;
    let exists_params: [&(dyn ToSql + Sync); 1] = [&name];
    let letters_params: [&(dyn ToSql + Sync); 3] = [&name, &after_seq, &limit];
    let (found, rows) = tokio::try_join!(
        biased;
        tx.query_opt(&exists, &exists_params),
        tx.query(&letters, &letters_params),
    )?;
    tx.commit().await?;
    if found.is_none() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let reason: String = row.get(EVENT_COLUMN_COUNT + 1);
        out.push(ConsumerDeadLetter {
            event: row_to_event(row)?,
            deliveries: row.get::<_, i32>(EVENT_COLUMN_COUNT).max(0) as u32,
            reason: DeadReason::parse(&reason)?,
            last_error: row.get(EVENT_COLUMN_COUNT + 2),
            first_delivered_at: Timestamp::from_micros(row.get(EVENT_COLUMN_COUNT + 3)),
            dead_at: Timestamp::from_micros(row.get(EVENT_COLUMN_COUNT + 4)),
        });
    }
    Ok(Some(out))
}

/// Applies the calls in order in one transaction; see the module docs for the locking.
pub(super) async fn ops(
    client: &mut Object,
    now: Timestamp,
    calls: Vec<ConsumerCall>,
    budget: usize,
) -> Res<Vec<ConsumerOutcome>> {
    let lock = client
        .prepare_cached(&format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers WHERE name = ANY($1::text[])
             ORDER BY name FOR UPDATE"
        ))
        .await?;
    let write_back = client
        .prepare_cached(
            "UPDATE consumers c SET delivered_seq = u.delivered_seq, ack_pending = u.ack_pending
             FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS u(name, delivered_seq, ack_pending)
             WHERE c.name = u.name",
        )
        .await?;
    let mut names: Vec<&str> = calls.iter().map(|c| c.consumer.as_str()).collect();
    names.sort_unstable();
    names.dedup();

    let tx = client.transaction().await?;
    // ORDER BY before FOR UPDATE: the rows are locked in name order.
    let rows = tx.query(&lock, &[&names]).await?;
    let mut consumers: HashMap<String, (Loaded, (Seq, u64))> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let loaded = decode_consumer(row)?;
        let before = (loaded.delivered_seq, loaded.ack_pending);
        consumers.insert(loaded.record.name.clone(), (loaded, before));
    }

    let mut outcomes = Vec::with_capacity(calls.len());
    for call in &calls {
        let Some((consumer, _)) = consumers.get_mut(&call.consumer) else {
            outcomes.push(ConsumerOutcome::NotFound);
            continue;
        };
        outcomes.push(apply(&tx, consumer, now, &call.op, budget).await?);
    }

    let mut changed_names = Vec::new();
    let mut delivered = Vec::new();
    let mut ack_pending = Vec::new();
    for (name, (loaded, before)) in &consumers {
        if (loaded.delivered_seq, loaded.ack_pending) != *before {
            changed_names.push(name.as_str());
            delivered.push(seq_param(loaded.delivered_seq)?);
            ack_pending.push(i64::try_from(loaded.ack_pending).unwrap_or(i64::MAX));
        }
    }
    if !changed_names.is_empty() {
        tx.execute(&write_back, &[&changed_names, &delivered, &ack_pending])
            .await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

async fn apply(
    tx: &Tx<'_>,
    consumer: &mut Loaded,
    now: Timestamp,
    op: &ConsumerOp,
    budget: usize,
) -> Res<ConsumerOutcome> {
    let now_us = now.as_micros();
    Ok(match op {
        ConsumerOp::Fetch { batch } => {
            ConsumerOutcome::Fetched(fetch(tx, consumer, *batch, now, budget).await?)
        }
        ConsumerOp::Ack(ids) => ack(tx, consumer, ids).await?,
        ConsumerOp::Nak {
            ids,
            delay_ms,
            reason,
        } => {
            settle(tx, consumer, ids, now, |policy, id, pending| {
                if pending.deliveries != id.delivery {
                    return Effect::Unknown;
                }
                if exhausted(policy, pending.deliveries) {
                    return Effect::Bury(DeadReason::MaxDeliver, reason.clone());
                }
                let delay =
                    delay_ms.unwrap_or_else(|| policy.backoff.delay_ms(id.seq, pending.deliveries));
                pending.held_until = now_us;
                pending.due_at = now_us.saturating_add(ms_to_micros(delay));
                if reason.is_some() {
                    pending.last_error.clone_from(reason);
                }
                Effect::Changed
            })
            .await?
        }
        ConsumerOp::Progress(ids) => {
            settle(tx, consumer, ids, now, |policy, id, pending| {
                if pending.deliveries != id.delivery {
                    return Effect::Unknown;
                }
                let (held, due) = due_after_delivery(policy, id.seq, pending.deliveries, now);
                pending.held_until = held;
                pending.due_at = due;
                Effect::Changed
            })
            .await?
        }
        ConsumerOp::Term { ids, reason } => {
            settle(tx, consumer, ids, now, |_, id, pending| {
                if pending.deliveries != id.delivery {
                    return Effect::Unknown;
                }
                Effect::Bury(DeadReason::Term, reason.clone())
            })
            .await?
        }
        ConsumerOp::Release(ids) => {
            settle(tx, consumer, ids, now, |_, id, pending| {
                if pending.deliveries != id.delivery || pending.held_until <= now_us {
                    return Effect::Unknown;
                }
                pending.deliveries = pending.deliveries.saturating_sub(1);
                pending.held_until = now_us;
                pending.due_at = now_us;
                Effect::Changed
            })
            .await?
        }
        ConsumerOp::Redrive { seqs } => {
            ConsumerOutcome::Redriven(redrive(tx, consumer, seqs.as_deref()).await?)
        }
        ConsumerOp::Discard { seq } => {
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM consumer_dead_letters WHERE consumer = $1 AND seq = $2",
                )
                .await?;
            let deleted = match i64::try_from(*seq) {
                Ok(seq) => tx.execute(&stmt, &[&consumer.record.name, &seq]).await?,
                Err(_) => 0,
            };
            ConsumerOutcome::Discarded(deleted == 1)
        }
    })
}

/// The seqs of `ids` that can name a pending message of this consumer (its epoch, a seq
/// the database can hold).
fn candidate_seqs(consumer: &Loaded, ids: &[AckId]) -> Vec<i64> {
    let mut seqs: Vec<i64> = ids
        .iter()
        .filter(|id| id.epoch == consumer.record.epoch)
        .filter_map(|id| i64::try_from(id.seq).ok())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}

/// ACK: one statement. An earlier delivery's ack still counts, so only the seq matters.
async fn ack(tx: &Tx<'_>, consumer: &mut Loaded, ids: &[AckId]) -> Res<ConsumerOutcome> {
    let seqs = candidate_seqs(consumer, ids);
    let mut removed: HashSet<Seq> = HashSet::new();
    if !seqs.is_empty() {
        let stmt = tx
            .prepare_cached(
                "DELETE FROM consumer_pending WHERE consumer = $1 AND seq = ANY($2::int8[])
                 RETURNING seq",
            )
            .await?;
        for row in tx.query(&stmt, &[&consumer.record.name, &seqs]).await? {
            removed.insert(row.get::<_, i64>(0) as Seq);
        }
    }
    let mut done = 0u64;
    let mut unknown = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        // Each removed row settles the first id that names it; a repeat is unknown.
        if id.epoch == consumer.record.epoch && removed.remove(&id.seq) {
            done += 1;
        } else {
            unknown.push(index);
        }
    }
    consumer.ack_pending = consumer.ack_pending.saturating_sub(done);
    Ok(ConsumerOutcome::Settled { done, unknown })
}

/// A pending message's row, as read and changed in memory.
#[derive(Clone)]
struct Pending {
    deliveries: u32,
    held_until: i64,
    due_at: i64,
    first_delivered_at: Option<i64>,
    last_error: Option<String>,
}

/// What settling one id did to its pending message.
enum Effect {
    /// Not settled: another delivery, or not in a state this operation applies to.
    Unknown,
    /// Changed in place.
    Changed,
    /// Moved to the dead letters, with this reason and the error given (if any).
    Bury(DeadReason, Option<String>),
}

/// A pending message as it ends up after one operation.
enum Fate {
    Changed(Pending),
    Buried(Pending, DeadReason, i64),
}

/// NAK, PROGRESS, TERM, RELEASE: reads the pending rows the ids name in one statement,
/// applies `action` to each id in order in memory (an id given twice sees what the first
/// did), then writes the changes back in one pipelined round trip.
async fn settle(
    tx: &Tx<'_>,
    consumer: &mut Loaded,
    ids: &[AckId],
    now: Timestamp,
    mut action: impl FnMut(&DeliveryPolicy, &AckId, &mut Pending) -> Effect,
) -> Res<ConsumerOutcome> {
    let seqs = candidate_seqs(consumer, ids);
    let mut rows: HashMap<Seq, Pending> = HashMap::with_capacity(seqs.len());
    if !seqs.is_empty() {
        let stmt = tx
            .prepare_cached(
                "SELECT seq, deliveries, held_until, due_at, first_delivered_at, last_error
                 FROM consumer_pending WHERE consumer = $1 AND seq = ANY($2::int8[])",
            )
            .await?;
        for row in tx.query(&stmt, &[&consumer.record.name, &seqs]).await? {
            rows.insert(
                row.get::<_, i64>(0) as Seq,
                Pending {
                    deliveries: row.get::<_, i32>(1).max(0) as u32,
                    held_until: row.get(2),
                    due_at: row.get(3),
                    first_delivered_at: row.get(4),
                    last_error: row.get(5),
                },
            );
        }
    }
    let mut fates: HashMap<Seq, Fate> = HashMap::new();
    let mut done = 0u64;
    let mut unknown = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let settled = match rows.get_mut(&id.seq) {
            Some(pending) if id.epoch == consumer.record.epoch => {
                let mut changed = pending.clone();
                match action(&consumer.record.policy, id, &mut changed) {
                    Effect::Unknown => false,
                    Effect::Changed => {
                        *pending = changed.clone();
                        fates.insert(id.seq, Fate::Changed(changed));
                        true
                    }
                    Effect::Bury(reason, error) => {
                        if error.is_some() {
                            changed.last_error = error;
                        }
                        rows.remove(&id.seq);
                        fates.insert(id.seq, Fate::Buried(changed, reason, now.as_micros()));
                        true
                    }
                }
            }
            _ => false,
        };
        if settled {
            done += 1;
        } else {
            unknown.push(index);
        }
    }
    write_fates(tx, consumer, fates).await?;
    Ok(ConsumerOutcome::Settled { done, unknown })
}

/// Writes what [`settle`] decided: changed rows in one `UPDATE`, buried ones moved to the
/// dead letters in one statement.
async fn write_fates(tx: &Tx<'_>, consumer: &mut Loaded, fates: HashMap<Seq, Fate>) -> Res<()> {
    let name = &consumer.record.name;
    let mut changed = PendingColumns::default();
    let mut buried = PendingColumns::default();
    let mut reasons: Vec<&'static str> = Vec::new();
    let mut dead_at: Vec<i64> = Vec::new();
    for (seq, fate) in &fates {
        match fate {
            Fate::Changed(p) => changed.push(*seq, p),
            Fate::Buried(p, reason, at) => {
                buried.push(*seq, p);
                reasons.push(reason.as_str());
                dead_at.push(*at);
            }
        }
    }
    let update = tx
        .prepare_cached(
            "UPDATE consumer_pending p
             SET deliveries = u.deliveries, held_until = u.held_until, due_at = u.due_at,
                 last_error = u.last_error
             FROM UNNEST($2::int8[], $3::int4[], $4::int8[], $5::int8[], $6::text[])
                  AS u(seq, deliveries, held_until, due_at, last_error)
             WHERE p.consumer = $1 AND p.seq = u.seq",
        )
        .await?;
    let bury = tx
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM consumer_pending WHERE consumer = $1 AND seq = ANY($2::int8[])
                 RETURNING seq
             )
             INSERT INTO consumer_dead_letters
                 (consumer, seq, deliveries, reason, last_error, first_delivered_at, dead_at)
             SELECT $1, u.seq, u.deliveries, u.reason, u.last_error, u.first_delivered_at, u.dead_at
             FROM UNNEST($2::int8[], $3::int4[], $4::text[], $5::text[], $6::int8[], $7::int8[])
                  AS u(seq, deliveries, reason, last_error, first_delivered_at, dead_at)
             WHERE u.seq IN (SELECT seq FROM gone)
             ON CONFLICT (consumer, seq) DO UPDATE
             SET deliveries = excluded.deliveries, reason = excluded.reason,
                 last_error = excluded.last_error,
                 first_delivered_at = excluded.first_delivered_at, dead_at = excluded.dead_at",
        )
        .await?;
    let first_delivered: Vec<i64> = buried
        .first_delivered_at
        .iter()
        .zip(&dead_at)
        .map(|(first, dead)| first.unwrap_or(*dead))
        .collect();
    let update_params: [&(dyn ToSql + Sync); 6] = [
        name,
        &changed.seqs,
        &changed.deliveries,
        &changed.held_until,
        &changed.due_at,
        &changed.last_error,
    ];
    let bury_params: [&(dyn ToSql + Sync); 7] = [
        name,
        &buried.seqs,
        &buried.deliveries,
        &reasons,
        &buried.last_error,
        &first_delivered,
        &dead_at,
    ];
    let (_, moved) = tokio::try_join!(
        biased;
        async {
            if changed.seqs.is_empty() {
                return Ok(0);
            }
            tx.execute(&update, &update_params).await
        },
        async {
            if buried.seqs.is_empty() {
                return Ok(0);
            }
            tx.execute(&bury, &bury_params).await
        },
    )?;
    consumer.ack_pending = consumer.ack_pending.saturating_sub(moved);
    Ok(())
}

/// Pending rows as column arrays, for `UNNEST`.
#[derive(Default)]
struct PendingColumns {
    seqs: Vec<i64>,
    deliveries: Vec<i32>,
    held_until: Vec<i64>,
    due_at: Vec<i64>,
    first_delivered_at: Vec<Option<i64>>,
    last_error: Vec<Option<String>>,
}

impl PendingColumns {
    fn push(&mut self, seq: Seq, pending: &Pending) {
        self.seqs.push(seq as i64);
        self.deliveries.push(deliveries_param(pending.deliveries));
        self.held_until.push(pending.held_until);
        self.due_at.push(pending.due_at);
        self.first_delivered_at.push(pending.first_delivered_at);
        self.last_error.push(pending.last_error.clone());
    }
}

async fn fetch(
    tx: &Tx<'_>,
    consumer: &mut Loaded,
    batch: usize,
    now: Timestamp,
    budget: usize,
) -> Res<Fetched> {
    let name = consumer.record.name.clone();
    let policy = consumer.record.policy.clone();
    let epoch = consumer.record.epoch;
    let now_us = now.as_micros();
    let mut fetched = Fetched::default();

    let bury_expired = tx
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM consumer_pending
                 WHERE consumer = $1 AND due_at <= $2 AND deliveries >= $3
                 RETURNING seq, deliveries, first_delivered_at, last_error
             )
             INSERT INTO consumer_dead_letters
                 (consumer, seq, deliveries, reason, last_error, first_delivered_at, dead_at)
             SELECT $1, seq, deliveries, 'max_deliver', last_error,
                    COALESCE(first_delivered_at, $2), $2
             FROM gone
             ON CONFLICT (consumer, seq) DO UPDATE
             SET deliveries = excluded.deliveries, reason = excluded.reason,
                 last_error = excluded.last_error,
                 first_delivered_at = excluded.first_delivered_at, dead_at = excluded.dead_at",
        )
        .await?;
    let due = tx
        .prepare_cached(&format!(
            "SELECT {}, p.seq, p.deliveries FROM consumer_pending p
             LEFT JOIN events e ON e.seq = p.seq
             WHERE p.consumer = $1 AND p.due_at <= $2 ORDER BY p.seq LIMIT $3",
            prefixed_event_columns()
        ))
        .await?;
    let next_due = tx
        .prepare_cached(
            "SELECT min(due_at) FROM consumer_pending WHERE consumer = $1 AND due_at > $2",
        )
        .await?;

    // Last deliveries whose ack wait ran out are given up on (a last delivery is due when
    // its ack wait ends: see `due_after_delivery`); then the due redeliveries, in seq
    // order (pipelined: the second runs after the first).
    let max = policy.max_deliver.map(deliveries_param);
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let (buried, due_rows) = tokio::try_join!(
        biased;
        async {
            match max {
                Some(max) => tx.execute(&bury_expired, &[&name, &now_us, &max]).await,
                None => Ok(0),
            }
        },
        async {
            if batch == 0 {
                return Ok(Vec::new());
            }
            tx.query(&due, &[&name, &now_us, &limit]).await
        },
    )?;
    fetched.dead_lettered = buried;
    consumer.ack_pending = consumer.ack_pending.saturating_sub(buried);
    if batch == 0 {
        let row = tx.query_one(&next_due, &[&name, &now_us]).await?;
        fetched.next_due = row.get::<_, Option<i64>>(0).map(Timestamp::from_micros);
        return Ok(fetched);
    }

    let mut redelivered = PendingColumns::default();
    let mut gone: Vec<i64> = Vec::new();
    for row in &due_rows {
        let seq = row.get::<_, i64>(EVENT_COLUMN_COUNT) as Seq;
        let deliveries = row.get::<_, i32>(EVENT_COLUMN_COUNT + 1).max(0) as u32;
        if row.get::<_, Option<i64>>(0).is_none() {
            // The event is not in the log: nothing left to deliver.
            gone.push(seq as i64);
            continue;
        }
        let delivery = deliveries + 1;
        let (held_until, due_at) = due_after_delivery(&policy, seq, delivery, now);
        redelivered.push(
            seq,
            &Pending {
                deliveries: delivery,
                held_until,
                due_at,
                first_delivered_at: None,
                last_error: None,
            },
        );
        fetched.messages.push(Delivery {
            event: row_to_event(row)?,
            ack_id: AckId {
                seq,
                delivery,
                epoch,
            },
        });
    }

    // Those are deleted below.
    consumer.ack_pending = consumer.ack_pending.saturating_sub(gone.len() as u64);

    // Then new events, as far as the pending set has room.
    let room = u64::from(policy.max_ack_pending).saturating_sub(consumer.ack_pending) as usize;
    let wanted = room.min(batch - fetched.messages.len());
    let mut fresh = PendingColumns::default();
    if wanted > 0 {
        let page = next_events(
            tx,
            &consumer.record.filters,
            consumer.delivered_seq,
            wanted,
            budget,
        )
        .await?;
        for event in page.events {
            let (held_until, due_at) = due_after_delivery(&policy, event.seq, 1, now);
            fresh.push(
                event.seq,
                &Pending {
                    deliveries: 1,
                    held_until,
                    due_at,
                    first_delivered_at: Some(now_us),
                    last_error: None,
                },
            );
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
            let head_stmt = tx.prepare_cached("SELECT seq FROM log_head").await?;
            let head = tx.query_one(&head_stmt, &[]).await?.get::<_, i64>(0) as Seq;
            fetched.read_stopped_early = consumer.delivered_seq < head;
        }
    }

    let redeliver = tx
        .prepare_cached(
            "UPDATE consumer_pending p
             SET deliveries = u.deliveries, held_until = u.held_until, due_at = u.due_at,
                 first_delivered_at = COALESCE(p.first_delivered_at, $2)
             FROM UNNEST($3::int8[], $4::int4[], $5::int8[], $6::int8[])
                  AS u(seq, deliveries, held_until, due_at)
             WHERE p.consumer = $1 AND p.seq = u.seq",
        )
        .await?;
    let drop_gone = tx
        .prepare_cached(
            "DELETE FROM consumer_pending WHERE consumer = $1 AND seq = ANY($2::int8[])",
        )
        .await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO consumer_pending
                 (consumer, seq, deliveries, held_until, due_at, first_delivered_at, last_error)
             SELECT $1, u.seq, 1, u.held_until, u.due_at, $2, NULL
             FROM UNNEST($3::int8[], $4::int8[], $5::int8[]) AS u(seq, held_until, due_at)",
        )
        .await?;
    let redeliver_params: [&(dyn ToSql + Sync); 6] = [
        &name,
        &now_us,
        &redelivered.seqs,
        &redelivered.deliveries,
        &redelivered.held_until,
        &redelivered.due_at,
    ];
    let insert_params: [&(dyn ToSql + Sync); 5] = [
        &name,
        &now_us,
        &fresh.seqs,
        &fresh.held_until,
        &fresh.due_at,
    ];
    let next_due_params: [&(dyn ToSql + Sync); 2] = [&name, &now_us];
    // Pipelined, in this order: the writes, then the next due time they leave.
    let (_, _, inserted, next) = tokio::try_join!(
        biased;
        async {
            if redelivered.seqs.is_empty() {
                return Ok(0);
            }
            tx.execute(&redeliver, &redeliver_params).await
        },
        async {
            if gone.is_empty() {
                return Ok(0);
            }
            tx.execute(&drop_gone, &[&name, &gone]).await
        },
        async {
            if fresh.seqs.is_empty() {
                return Ok(0);
            }
            tx.execute(&insert, &insert_params).await
        },
        tx.query_one(&next_due, &next_due_params),
    )?;
    consumer.ack_pending += inserted;
    fetched.at_max_ack_pending = consumer.ack_pending >= u64::from(policy.max_ack_pending);
    fetched.next_due = next.get::<_, Option<i64>>(0).map(Timestamp::from_micros);
    Ok(fetched)
}

/// The next `limit` events after `after` matching any filter, read in the caller's
/// transaction.
async fn next_events(
    tx: &Tx<'_>,
    filters: &[Pattern],
    after: Seq,
    limit: usize,
    budget: usize,
) -> Res<Page> {
    let mut pages = Vec::with_capacity(filters.len());
    for filter in filters {
        let query = Query {
            subject: Some(filter.clone()),
            after_seq: after,
            limit,
            ..Query::default()
        };
        pages.push(plan_and_read(tx, &query, budget).await?);
    }
    Ok(merge_pages(pages, limit))
}

async fn redrive(tx: &Tx<'_>, consumer: &mut Loaded, seqs: Option<&[Seq]>) -> Res<u64> {
    let name = &consumer.record.name;
    let moved = match seqs {
        None => {
            let stmt = tx
                .prepare_cached(
                    "WITH moved AS (
                         DELETE FROM consumer_dead_letters WHERE consumer = $1
                         RETURNING seq, first_delivered_at
                     )
                     INSERT INTO consumer_pending
                         (consumer, seq, deliveries, held_until, due_at, first_delivered_at, last_error)
                     SELECT $1, seq, 0, 0, 0, first_delivered_at, NULL FROM moved",
                )
                .await?;
            tx.execute(&stmt, &[name]).await?
        }
        Some(seqs) => {
            let seqs: Vec<i64> = seqs.iter().filter_map(|&s| i64::try_from(s).ok()).collect();
            if seqs.is_empty() {
                return Ok(0);
            }
            let stmt = tx
                .prepare_cached(
                    "WITH moved AS (
                         DELETE FROM consumer_dead_letters
                         WHERE consumer = $1 AND seq = ANY($2::int8[])
                         RETURNING seq, first_delivered_at
                     )
                     INSERT INTO consumer_pending
                         (consumer, seq, deliveries, held_until, due_at, first_delivered_at, last_error)
                     SELECT $1, seq, 0, 0, 0, first_delivered_at, NULL FROM moved",
                )
                .await?;
            tx.execute(&stmt, &[name, &seqs]).await?
        }
    };
    consumer.ack_pending += moved;
    Ok(moved)
}
