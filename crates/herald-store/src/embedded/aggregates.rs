//! The embedded store's aggregates: their versions, their events and their snapshots.

use herald_core::{Payload, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};

use super::{row_to_event, EVENT_COLUMNS};
use crate::aggregate::{AggregateKey, AggregatePage, Snapshot, SnapshotSaved, SNAPSHOTS_KEPT};

/// The aggregate's version (0 when it has no events).
pub(super) fn version(conn: &Connection, key: &AggregateKey) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT version FROM aggregates WHERE tenant = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3",
    )?
    .query_row(
        params![key.scope(), key.aggregate_type, key.aggregate_id],
        |row| row.get::<_, i64>(0),
    )
    .optional()
    .map(|v| v.map_or(0, crate::u64_from_sql))
}

pub(super) fn set_version(
    conn: &Connection,
    key: &AggregateKey,
    version: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO aggregates (tenant, aggregate_type, aggregate_id, version) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (tenant, aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version",
    )?
    .execute(params![
        key.scope(),
        key.aggregate_type,
        key.aggregate_id,
        crate::u64_to_sql(version)
    ])
    .map(drop)
}

pub(super) fn load(
    conn: &Connection,
    key: &AggregateKey,
    from_version: u64,
    limit: usize,
) -> rusqlite::Result<Option<AggregatePage>> {
    let version = version(conn, key)?;
    if version == 0 {
        return Ok(None);
    }
    // Versions grow with seqs within one aggregate, so seq order is version order.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events
         WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND tenant IS ?3 AND aggregate_version >= ?4
         ORDER BY seq LIMIT ?5"
    ))?;
    let events = stmt
        .query_map(
            params![
                key.aggregate_type,
                key.aggregate_id,
                key.tenant,
                crate::u64_to_sql(from_version),
                limit as i64
            ],
            row_to_event,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(AggregatePage { version, events }))
}

pub(super) fn save_snapshot(
    conn: &Connection,
    key: &AggregateKey,
    version: u64,
    state: &Payload,
    now: Timestamp,
) -> rusqlite::Result<SnapshotSaved> {
    let current = self::version(conn, key)?;
    if current == 0 {
        return Ok(SnapshotSaved::UnknownAggregate);
    }
    if version > current {
        return Ok(SnapshotSaved::AheadOfAggregate {
            current_version: current,
        });
    }
    conn.prepare_cached(
        "INSERT INTO snapshots (tenant, aggregate_type, aggregate_id, version, state, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (tenant, aggregate_type, aggregate_id, version)
         DO UPDATE SET state = excluded.state, created_at = excluded.created_at",
    )?
    .execute(params![
        key.scope(),
        key.aggregate_type,
        key.aggregate_id,
        crate::u64_to_sql(version),
        state.get(),
        now.as_micros()
    ])?;
    conn.prepare_cached(
        "DELETE FROM snapshots WHERE tenant = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3
         AND version NOT IN (SELECT version FROM snapshots
                             WHERE tenant = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3
                             ORDER BY version DESC LIMIT ?4)",
    )?
    .execute(params![
        key.scope(),
        key.aggregate_type,
        key.aggregate_id,
        SNAPSHOTS_KEPT as i64
    ])?;
    Ok(SnapshotSaved::Saved)
}

pub(super) fn load_snapshot(
    conn: &Connection,
    key: &AggregateKey,
) -> rusqlite::Result<Option<Snapshot>> {
    let row = conn
        .prepare_cached(
            "SELECT version, state, created_at FROM snapshots
             WHERE tenant = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3
             ORDER BY version DESC LIMIT 1",
        )?
        .query_row(
            params![key.scope(), key.aggregate_type, key.aggregate_id],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()?;
    row.map(|(version, state, created_at)| {
        let state = Payload::from_json(state).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
        })?;
        Ok(Snapshot {
            version: crate::u64_from_sql(version),
            state,
            created_at: Timestamp::from_micros(created_at),
        })
    })
    .transpose()
}
