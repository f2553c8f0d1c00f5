//! Aggregates on PostgreSQL. An append takes the log head's row lock, as every append
//! does, so it is serialised with every other append of every instance: the version it
//! reads in `aggregates` cannot change before it commits.

use deadpool_postgres::Object;
use herald_core::{Payload, Seq, Timestamp};
use tokio_postgres::types::ToSql;

use super::{row_to_event, Failure, EVENT_COLUMNS};
use crate::aggregate::{
    commit_events, decide, AggregateAppend, AggregateAppended, AggregateKey, AggregatePage,
    Decision, Snapshot, SnapshotSaved, SNAPSHOTS_KEPT,
};
use crate::StoreError;

const LOCK_HEAD: &str = "SELECT seq, ts FROM log_head FOR UPDATE";

const VERSION: &str = "SELECT version FROM aggregates
     WHERE tenant = $1 AND aggregate_type = $2 AND aggregate_id = $3";

const INSERT_EVENT: &str = r#"INSERT INTO events (seq, id, subject, correlation_id, ts, hub_id, service, "user", payload, cloudevent, tenant,
                    aggregate_type, aggregate_id, aggregate_version, event_type, metadata, traceparent, tracestate)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"#;

const UPSERT_SUBJECT: &str =
    "INSERT INTO subjects (subject, events, bytes, last_seq) VALUES ($1, 1, $3, $2)
     ON CONFLICT (subject) DO UPDATE
     SET events = subjects.events + 1, bytes = subjects.bytes + excluded.bytes,
         last_seq = excluded.last_seq";

const SET_VERSION: &str = "INSERT INTO aggregates (tenant, aggregate_type, aggregate_id, version)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (tenant, aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version";

async fn version(
    client: &deadpool_postgres::Transaction<'_>,
    key: &AggregateKey,
) -> Result<u64, Failure> {
    let stmt = client.prepare_cached(VERSION).await?;
    let row = client
        .query_opt(
            &stmt,
            &[&key.scope(), &key.aggregate_type, &key.aggregate_id],
        )
        .await?;
    Ok(row.map_or(0, |r| crate::u64_from_sql(r.get(0))))
}

pub(super) async fn append(
    client: &mut Object,
    append: AggregateAppend,
) -> Result<AggregateAppended, Failure> {
    let lookup = client
        .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
        .await?;
    let tx = client.transaction().await?;
    let head = tx.query_one(LOCK_HEAD, &[]).await?;
    let head_seq = head.get::<_, i64>(0) as Seq;
    let head_ts: i64 = head.get(1);
    let current = version(&tx, &append.key).await?;
    let mut stored = Vec::with_capacity(append.events.len());
    for event in &append.events {
        let rows = tx.query(&lookup, &[&event.id]).await?;
        stored.push(rows.first().map(row_to_event).transpose()?);
    }
    match decide(&append, current, &stored) {
        Decision::Answer(answer) => {
            tx.rollback().await?;
            return Ok(answer);
        }
        Decision::Write => {}
    }
    let ts = Timestamp::now().as_micros().max(head_ts);
    let count = append.events.len() as u64;
    let key = append.key;
    let events = commit_events(
        append.events,
        head_seq + 1,
        current,
        Timestamp::from_micros(ts),
    );
    let insert = tx.prepare_cached(INSERT_EVENT).await?;
    let upsert = tx.prepare_cached(UPSERT_SUBJECT).await?;
    for appended in &events {
        let event = appended.event();
        let aggregate = event.aggregate.as_deref();
        let cloudevent = event
            .cloudevent
            .as_deref()
            .map(crate::codec::encode_cloudevent);
        let seq = event.seq as i64;
        let traceparent = event
            .trace
            .as_deref()
            .map(herald_core::TraceContext::traceparent);
        let tracestate = event.trace.as_deref().and_then(|t| t.tracestate.as_deref());
        let params: [&(dyn ToSql + Sync); 18] = [
            &seq,
            &event.id,
            &event.subject.as_str(),
            &event.correlation_id,
            &ts,
            &event.origin.hub_id,
            &event.origin.service,
            &event.origin.user,
            &event.payload.get(),
            &cloudevent,
            &event.tenant,
            &aggregate.map(|a| a.aggregate_type.as_str()),
            &aggregate.map(|a| a.aggregate_id.as_str()),
            &aggregate.map(|a| crate::u64_to_sql(a.version)),
            &aggregate.map(|a| a.event_type.as_str()),
            &aggregate
                .and_then(|a| a.metadata.as_ref())
                .map(Payload::get),
            &traceparent,
            &tracestate,
        ];
        tx.execute(&insert, &params).await?;
        let bytes = event.payload.get().len() as i64;
        tx.execute(&upsert, &[&event.subject.as_str(), &seq, &bytes])
            .await?;
    }
    let new_head = (head_seq + count) as i64;
    let new_version = crate::u64_to_sql(current + count);
    tx.execute(
        SET_VERSION,
        &[
            &key.scope(),
            &key.aggregate_type,
            &key.aggregate_id,
            &new_version,
        ],
    )
    .await?;
    tx.execute("UPDATE log_head SET seq = $1, ts = $2", &[&new_head, &ts])
        .await?;
    tx.execute(
        "SELECT pg_notify('herald_log', $1)",
        &[&new_head.to_string()],
    )
    .await?;
    tx.commit().await?;
    Ok(AggregateAppended::Written {
        version: current + count,
        events,
    })
}

pub(super) async fn load(
    client: &mut Object,
    key: &AggregateKey,
    from_version: u64,
    limit: usize,
) -> Result<Option<AggregatePage>, Failure> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND tenant IS NOT DISTINCT FROM $3
               AND aggregate_version >= $4
             ORDER BY aggregate_type, aggregate_id, seq LIMIT $5"
        ))
        .await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version = version(&tx, key).await?;
    if version == 0 {
        return Ok(None);
    }
    let from = crate::u64_to_sql(from_version);
    let limit = limit as i64;
    let rows = tx
        .query(
            &stmt,
            &[
                &key.aggregate_type,
                &key.aggregate_id,
                &key.tenant,
                &from,
                &limit,
            ],
        )
        .await?;
    let events = rows
        .iter()
        .map(row_to_event)
        .collect::<Result<Vec<_>, StoreError>>()?;
    tx.commit().await?;
    Ok(Some(AggregatePage { version, events }))
}

pub(super) async fn save_snapshot(
    client: &mut Object,
    key: &AggregateKey,
    version: u64,
    state: &Payload,
    now: Timestamp,
) -> Result<SnapshotSaved, Failure> {
    let tx = client.transaction().await?;
    let current = self::version(&tx, key).await?;
    if current == 0 {
        return Ok(SnapshotSaved::UnknownAggregate);
    }
    if version > current {
        return Ok(SnapshotSaved::AheadOfAggregate {
            current_version: current,
        });
    }
    let version = crate::u64_to_sql(version);
    tx.execute(
        "INSERT INTO snapshots (tenant, aggregate_type, aggregate_id, version, state, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant, aggregate_type, aggregate_id, version)
         DO UPDATE SET state = excluded.state, created_at = excluded.created_at",
        &[
            &key.scope(),
            &key.aggregate_type,
            &key.aggregate_id,
            &version,
            &state.get(),
            &now.as_micros(),
        ],
    )
    .await?;
    tx.execute(
        "DELETE FROM snapshots WHERE tenant = $1 AND aggregate_type = $2 AND aggregate_id = $3
         AND version NOT IN (SELECT version FROM snapshots
                             WHERE tenant = $1 AND aggregate_type = $2 AND aggregate_id = $3
                             ORDER BY version DESC LIMIT $4)",
        &[
            &key.scope(),
            &key.aggregate_type,
            &key.aggregate_id,
            &(SNAPSHOTS_KEPT as i64),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(SnapshotSaved::Saved)
}

pub(super) async fn load_snapshot(
    client: &mut Object,
    key: &AggregateKey,
) -> Result<Option<Snapshot>, Failure> {
    let row = client
        .query_opt(
            "SELECT version, state, created_at FROM snapshots
             WHERE tenant = $1 AND aggregate_type = $2 AND aggregate_id = $3
             ORDER BY version DESC LIMIT 1",
            &[&key.scope(), &key.aggregate_type, &key.aggregate_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let state = Payload::from_json(row.get(1))
        .map_err(|e| StoreError::Corrupt(format!("stored snapshot: {e}")))?;
    Ok(Some(Snapshot {
        version: crate::u64_from_sql(row.get(0)),
        state,
        created_at: Timestamp::from_micros(row.get(2)),
    }))
}
