//! Moving a store's events from its `events` table into the event log, at the first
//! open with the log.
//!
//! The events are copied in seq order into `<db>-events.migrating/`, which is renamed
//! to `<db>-events/` once complete and synced: a crash before the rename leaves the
//! table as it was (the next open starts the copy over), and after it the log is whole
//! and the table is only emptied. Seqs stay what they were: the log starts at the
//! table's first seq, and gaps retention left (and the seqs it used up past the last
//! event) are filled with placeholders deleted at once, so no seq is given twice.

use std::path::Path;

use herald_core::{Event, Origin, Payload, Seq, Subject, Timestamp};
use rusqlite::{params, Connection};
use uuid::Uuid;

use super::{map_error, row_to_event, subject_index, EVENT_COLUMNS};
use crate::event_log::{EventLog, EventLogOptions};
use crate::{Result, StoreError};

/// Events copied per append.
const CHUNK: i64 = 4096;

/// Moves the table's events into the log at `dir` (see the module docs); `given` is the
/// highest seq the store has given (its newest event's, or past it one retention
/// deleted). Nothing to do when the table is empty.
pub(super) fn migrate(conn: &mut Connection, dir: &Path, given: Seq) -> Result<()> {
    let (first, last, count): (Option<i64>, Option<i64>, i64) = conn
        .query_row(
            "SELECT MIN(seq), MAX(seq), COUNT(*) FROM events",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .map_err(map_error)?;
    let failed = |e: &dyn std::fmt::Display| {
        StoreError::Open(format!(
            "cannot move the events into the event log at {}: {e}",
            dir.display()
        ))
    };
    let (Some(first), Some(last)) = (first, last) else {
        // No events, but seqs used up: the new log starts past them.
        if !dir.exists() && given > 0 {
            let aside = aside(dir);
            if aside.exists() {
                std::fs::remove_dir_all(&aside).map_err(|e| failed(&e))?;
            }
            EventLog::start_at(&aside, given + 1)
                .and_then(|()| std::fs::rename(&aside, dir))
                .map_err(|e| failed(&e))?;
        }
        return Ok(());
    };
    if !dir.exists() {
        tracing::info!(
            events = count,
            "Moving the store's events into the event log (once)."
        );
        let started = std::time::Instant::now();
        let aside = aside(dir);
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(|e| failed(&e))?;
        }
        let through = (last.max(0) as Seq).max(given);
        copy(conn, &aside, first.max(1) as Seq, through).map_err(|e| failed(&e))?;
        std::fs::rename(&aside, dir).map_err(|e| failed(&e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| failed(&e))?;
        }
        tracing::info!(
            events = count,
            seconds = started.elapsed().as_secs_f64(),
            "Moved the events into the event log."
        );
    }
    if !dir.join(FROM_TABLE).exists() {
        // A log this copy did not make: which of the two is right is not for us to say.
        return Err(StoreError::Open(format!(
            "both the events table and the event log at {} hold events; \
             move one of them away",
            dir.display()
        )));
    }
    // The log is whole: the table and its indexes go.
    let tx = conn.transaction().map_err(map_error)?;
    tx.execute_batch("DELETE FROM events; DELETE FROM subjects; DELETE FROM subject_seqs;")
        .map_err(map_error)?;
    tx.execute(
        "DELETE FROM cursors WHERE name = ?1",
        params![subject_index::INDEXED_THROUGH],
    )
    .map_err(map_error)?;
    tx.commit().map_err(map_error)?;
    // Give the table's pages back (databases with incremental auto-vacuum).
    conn.execute_batch("PRAGMA incremental_vacuum")
        .map_err(map_error)?;
    Ok(())
}

/// The file in a log that says the log was copied from the table, in full.
const FROM_TABLE: &str = "from-table";

fn aside(dir: &Path) -> std::path::PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".migrating");
    name.into()
}

/// Copies the table into a new log at `dir` starting at `first`, filling the log up to
/// `through`.
fn copy(conn: &Connection, dir: &Path, first: Seq, through: Seq) -> std::io::Result<()> {
    EventLog::start_at(dir, first)?;
    let (log, _) = EventLog::open(dir, EventLogOptions::default())?;
    let mut copier = Copier {
        log,
        batch: Vec::new(),
        gaps: Vec::new(),
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))
        .map_err(std::io::Error::other)?;
    let mut after = first - 1;
    loop {
        let rows = stmt
            .query_map(params![after as i64, CHUNK], row_to_event)
            .map_err(std::io::Error::other)?
            .collect::<rusqlite::Result<Vec<Event>>>()
            .map_err(std::io::Error::other)?;
        let Some(last) = rows.last().map(|e| e.seq) else {
            break;
        };
        for event in rows {
            copier.fill_to(event.seq, event.timestamp)?;
            copier.push(event)?;
        }
        after = last;
    }
    copier.fill_to(through + 1, Timestamp::now())?;
    copier.flush()?;
    let Copier { mut log, gaps, .. } = copier;
    for chunk in gaps.chunks(CHUNK as usize) {
        log.delete(chunk)?;
    }
    // Dropping the log flushes its postings and subjects.
    drop(log);
    let mut marker = std::fs::File::create(dir.join(FROM_TABLE))?;
    std::io::Write::write_all(&mut marker, b"copied from the events table\n")?;
    marker.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Appends events to the new log a chunk at a time.
struct Copier {
    log: EventLog,
    batch: Vec<Event>,
    /// The placeholders' seqs.
    gaps: Vec<Seq>,
}

impl Copier {
    fn next_seq(&self) -> Seq {
        self.log.next_seq() + self.batch.len() as Seq
    }

    fn push(&mut self, event: Event) -> std::io::Result<()> {
        self.batch.push(event);
        if self.batch.len() >= CHUNK as usize {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.log
            .append(&self.batch)
            .map_err(std::io::Error::other)?;
        self.batch.clear();
        Ok(())
    }

    /// Placeholders for the seqs up to (not including) `seq`, at the time of the event
    /// that follows them (so times still never go down in seq order).
    fn fill_to(&mut self, seq: Seq, timestamp: Timestamp) -> std::io::Result<()> {
        while self.next_seq() < seq {
            let missing = self.next_seq();
            self.gaps.push(missing);
            self.push(placeholder(missing, timestamp))?;
        }
        Ok(())
    }
}

/// An event standing for a seq retention took, deleted as soon as it is written.
fn placeholder(seq: Seq, timestamp: Timestamp) -> Event {
    Event {
        seq,
        id: Uuid::now_v7(),
        subject: Subject::new("herald.retention.gap").expect("a valid subject"),
        origin: Origin {
            hub_id: String::new(),
            service: None,
            user: None,
        },
        correlation_id: Uuid::nil(),
        payload: Payload::from_json("{}".to_owned()).expect("an object"),
        timestamp,
        cloudevent: None,
        tenant: None,
        aggregate: None,
        trace: None,
    }
}

#[cfg(test)]
mod tests {
    use herald_core::{ExpectedVersion, Pattern};

    use super::super::{log_dir, EmbeddedOptions, EmbeddedStore};
    use crate::aggregate::{AggregateAppend, AggregateAppended, AggregateKey};
    use crate::conformance::event;
    use crate::retention::RetentionPolicy;
    use crate::{Query, Store};

    async fn open(path: &std::path::Path, event_log: bool) -> EmbeddedStore {
        let options = EmbeddedOptions {
            event_log,
            ..EmbeddedOptions::default()
        };
        EmbeddedStore::open(path, options).await.unwrap()
    }

    async fn all(store: &EmbeddedStore) -> Vec<herald_core::Event> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = store
                .query(Query {
                    after_seq: after,
                    limit: 1000,
                    ..Query::default()
                })
                .await
                .unwrap();
            if page.events.is_empty() && page.scanned_to <= after {
                return out;
            }
            after = page.scanned_to;
            out.extend(page.events);
            if after >= store.head().await.unwrap() {
                return out;
            }
        }
    }

    fn key() -> AggregateKey {
        AggregateKey {
            tenant: None,
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
        }
    }

    async fn append_to_order(
        store: &EmbeddedStore,
        expected: ExpectedVersion,
    ) -> AggregateAppended {
        let mut new = event("hub.orders.o-1", 0, None);
        new.aggregate = Some(Box::new(herald_core::AggregateEvent {
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            version: 0,
            event_type: "placed".into(),
            metadata: None,
        }));
        store
            .append_aggregate(AggregateAppend {
                key: key(),
                expected,
                events: vec![new],
            })
            .await
            .unwrap()
    }

    /// A store written with the `events` table opens with the event log holding the
    /// same events under the same seqs (gaps retention left stay gaps), ids still
    /// deduplicated, aggregates going on from their versions, and new seqs going on
    /// from the old head; a copy cut short is started over.
    #[tokio::test]
    async fn a_table_store_moves_into_the_event_log_at_first_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let store = open(&path, false).await;
        let mut ids = Vec::new();
        for round in 0..30 {
            let batch: Vec<_> = (0..100)
                .map(|i| event(&format!("hub.s{}.x", (round * 100 + i) % 7), i, None))
                .collect();
            ids.extend(batch.iter().map(|e| e.id));
            store.append(batch).await.unwrap();
            if round == 10 {
                append_to_order(&store, ExpectedVersion::Any).await;
                append_to_order(&store, ExpectedVersion::Any).await;
            }
        }
        // Retention takes the oldest of one subject: gaps inside the log.
        let pass = store
            .enforce_retention(
                vec![RetentionPolicy {
                    subjects: Pattern::parse_filter("hub.s3.x").unwrap(),
                    max_age: None,
                    max_events: Some(100),
                    max_bytes: None,
                    include_aggregates: false,
                }],
                herald_core::Timestamp::now(),
                10_000,
            )
            .await
            .unwrap();
        assert!(pass.deleted_events > 300, "{pass:?}");
        let before = all(&store).await;
        let head = store.head().await.unwrap();
        store.close().await.unwrap();
        drop(store);

        // A copy cut short by a crash: left aside, never read.
        std::fs::create_dir_all(dir.path().join("herald.db-events.migrating/segments")).unwrap();
        std::fs::write(
            dir.path()
                .join("herald.db-events.migrating/segments/00000000000000000001.seg"),
            b"half",
        )
        .unwrap();

        let store = open(&path, true).await;
        assert!(log_dir(&path).join("segments").is_dir());
        assert!(!dir.path().join("herald.db-events.migrating").exists());
        assert_eq!(store.head().await.unwrap(), head);
        let after = all(&store).await;
        assert_eq!(after.len(), before.len());
        assert_eq!(after, before);
        for id in [ids[0], ids[1500], ids[ids.len() - 1]] {
            let stored = store.get(id).await.unwrap();
            let expected = before.iter().find(|e| e.id == id).cloned();
            assert_eq!(stored, expected);
        }
        // The same id is still a duplicate.
        let again = before.last().unwrap().clone();
        let mut new = event("hub.s1.x", 0, None);
        new.id = again.id;
        let appended = store.append(vec![new]).await.unwrap();
        assert_eq!(appended[0], crate::Appended::Duplicate(again));
        // New seqs go on from the old head; the aggregate from version 2.
        let appended = store
            .append(vec![event("hub.s1.x", 1, None)])
            .await
            .unwrap();
        assert_eq!(appended[0].event().seq, head + 1);
        match append_to_order(&store, ExpectedVersion::Exactly(2)).await {
            AggregateAppended::Written { version, .. } => assert_eq!(version, 3),
            other => panic!("{other:?}"),
        }
        store.close().await.unwrap();
        drop(store);

        // The table is empty now, and a second open copies nothing again.
        let conn = rusqlite::Connection::open(&path).unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 0);
        drop(conn);
        let store = open(&path, true).await;
        assert_eq!(store.head().await.unwrap(), head + 2);
        assert_eq!(all(&store).await.len(), before.len() + 2);
        store.close().await.unwrap();
    }

    /// A log that is not the table's copy is never taken for it: with events in both,
    /// the store refuses to open and deletes nothing.
    #[tokio::test]
    async fn events_in_both_the_table_and_a_log_refuse_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let store = open(&path, true).await;
        store
            .append(vec![event("hub.log.x", 0, None)])
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        let store = open(&path, false).await;
        store
            .append(vec![event("hub.table.x", 0, None)])
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        let options = EmbeddedOptions {
            event_log: true,
            ..EmbeddedOptions::default()
        };
        let error = EmbeddedStore::open(&path, options).await.err().unwrap();
        assert!(error.to_string().contains("both"), "{error}");
        let store = open(&path, false).await;
        assert_eq!(store.head().await.unwrap(), 1);
        store.close().await.unwrap();
    }

    /// A store whose events retention deleted to the last still never gives their seqs
    /// again after it moves to the event log.
    #[tokio::test]
    async fn seqs_retention_used_up_are_not_given_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let store = open(&path, false).await;
        store
            .append((0..50).map(|i| event("hub.gone.x", i, None)).collect())
            .await
            .unwrap();
        store
            .enforce_retention(
                vec![RetentionPolicy {
                    subjects: Pattern::parse_filter("hub.>").unwrap(),
                    max_age: None,
                    max_events: Some(0),
                    max_bytes: None,
                    include_aggregates: false,
                }],
                herald_core::Timestamp::now(),
                10_000,
            )
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        let store = open(&path, true).await;
        assert_eq!(store.head().await.unwrap(), 50);
        let appended = store
            .append(vec![event("hub.new.x", 0, None)])
            .await
            .unwrap();
        assert_eq!(appended[0].event().seq, 51);
        store.close().await.unwrap();
    }
}
