//! Online backups of the embedded store: a consistent copy taken through a read-only
//! connection (one WAL snapshot) while the hub keeps writing, and its verification.
//!
//! With the event log (`<db>-events/`), its segments and deletes journal are copied
//! after the database's snapshot, so the copy holds every event the snapshot's
//! consumers and aggregates name. A segment is copied from one open file (a compaction
//! renaming a new one in does not tear it); the active one's tail may end mid-record,
//! which the copy's first open cuts like a crash's. The postings and saved subjects are
//! not copied: the verification's open rebuilds them from the segments.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::schema;
use crate::{Result, StoreError};

/// What a verified store file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFileInfo {
    pub schema_version: i64,
    /// The seq of its newest event (0: none).
    pub head_seq: u64,
    pub events: u64,
    pub bytes: u64,
}

fn read_only(path: &Path) -> Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Open(format!("cannot open {}: {e}", path.display())))
}

/// Copies the store at `source` to `target` (which must not exist) as of one moment,
/// while other processes may be writing to it, then verifies the copy.
pub fn backup(source: &Path, target: &Path) -> Result<StoreFileInfo> {
    if !source.exists() {
        return Err(StoreError::Open(format!(
            "no store at {}",
            source.display()
        )));
    }
    if target.exists() {
        return Err(StoreError::Open(format!(
            "{} exists already",
            target.display()
        )));
    }
    let conn = read_only(source)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(super::map_error)?;
    let target_text = target
        .to_str()
        .ok_or_else(|| StoreError::Open(format!("{} is not UTF-8", target.display())))?;
    conn.execute("VACUUM INTO ?1", [target_text])
        .map_err(|e| StoreError::Unavailable(format!("copying the store failed: {e}")))?;
    let log = super::log_dir(source);
    if log.exists() {
        copy_log(&log, &super::log_dir(target))
            .map_err(|e| StoreError::Unavailable(format!("copying the event log failed: {e}")))?;
    }
    verify(target)
}

/// Copies a live event log's segments (with their indexes) and deletes journal.
fn copy_log(from: &Path, to: &Path) -> std::io::Result<()> {
    let segments = to.join("segments");
    std::fs::create_dir_all(&segments)?;
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(from.join("segments"))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let text = name.to_string_lossy();
        if !(text.ends_with(".seg") || text.ends_with(".idx")) {
            continue;
        }
        // Removed meanwhile (retention took the whole segment): nothing to keep.
        match copy_file(&from.join("segments").join(&name), &segments.join(&name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    match copy_file(&from.join("deleted"), &to.join("deleted")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => other?,
    }
    std::fs::File::open(&segments)?.sync_all()?;
    std::fs::File::open(to)?.sync_all()
}

/// Copies one file from the handle opened first, and syncs the copy.
fn copy_file(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut source = std::fs::File::open(from)?;
    let mut target = std::fs::File::create(to)?;
    std::io::copy(&mut source, &mut target)?;
    target.sync_all()
}

/// Checks a store file page by page (`PRAGMA integrity_check`) and reads what it holds.
pub fn verify(path: &Path) -> Result<StoreFileInfo> {
    let conn = read_only(path)?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    if check != "ok" {
        return Err(StoreError::Corrupt(format!(
            "{} fails its integrity check: {check}",
            path.display()
        )));
    }
    let schema_version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(super::map_error)?;
    if schema_version == 0 || schema_version > schema::SCHEMA_VERSION {
        return Err(StoreError::Open(format!(
            "{} is not a Herald store this version can open (schema version {schema_version})",
            path.display()
        )));
    }
    let (head, events): (i64, i64) = conn
        .query_row(
            "SELECT IFNULL(MAX(seq), 0), count(*) FROM events",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(super::map_error)?;
    let mut bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let log = super::log_dir(path);
    if log.exists() {
        // Opening reads every segment (rebuilding what a copy leaves out): a damaged
        // record fails it.
        let (opened, _) = crate::event_log::EventLog::open(&log, Default::default())
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", log.display())))?;
        let reader = opened.reader();
        let log_head = reader.head();
        let count = reader.count_between(1..=log_head);
        drop(opened);
        bytes += super::log_writes::dir_bytes(&log).unwrap_or(0);
        return Ok(StoreFileInfo {
            schema_version,
            head_seq: (head.max(0) as u64).max(log_head),
            events: events.max(0) as u64 + count,
            bytes,
        });
    }
    Ok(StoreFileInfo {
        schema_version,
        head_seq: head.max(0) as u64,
        events: events.max(0) as u64,
        bytes,
    })
}

/// Puts the verified backup `backup` in place as the store at `target`, while no Herald
/// uses it (its lock is taken for the duration). An existing store is replaced only with
/// `replace`; its WAL files go with it.
pub fn restore(backup: &Path, target: &Path, replace: bool) -> Result<StoreFileInfo> {
    let info = verify(backup)?;
    if target.exists() && !replace {
        return Err(StoreError::Open(format!(
            "{} exists; restore over it with --force (it is replaced)",
            target.display()
        )));
    }
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open(format!("cannot create {}: {e}", dir.display())))?;
    }
    let lock_path = super::lock_path(target);
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Open(format!("cannot open {}: {e}", lock_path.display())))?;
    lock.try_lock().map_err(|_| {
        StoreError::Open(format!(
            "{} is in use by a running Herald: stop it first",
            target.display()
        ))
    })?;
    let io = |what: &str, e: std::io::Error| StoreError::Open(format!("{what}: {e}"));
    let staging = target.with_extension("restoring");
    std::fs::copy(backup, &staging).map_err(|e| io("copying the backup", e))?;
    std::fs::File::open(&staging)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("syncing the copy", e))?;
    for suffix in ["-wal", "-shm"] {
        let mut name = target.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::remove_file(std::path::PathBuf::from(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing the old WAL", e)),
        }
    }
    // The event log goes with it (or an old one goes away), staged the same way.
    let target_log = super::log_dir(target);
    let backup_log = super::log_dir(backup);
    let staging_log = super::log_dir(&staging);
    if staging_log.exists() {
        std::fs::remove_dir_all(&staging_log).map_err(|e| io("clearing a staged log", e))?;
    }
    if backup_log.exists() {
        copy_log(&backup_log, &staging_log).map_err(|e| io("copying the event log", e))?;
    }
    if target_log.exists() {
        std::fs::remove_dir_all(&target_log).map_err(|e| io("removing the old event log", e))?;
    }
    if staging_log.exists() {
        std::fs::rename(&staging_log, &target_log)
            .map_err(|e| io("putting the event log in place", e))?;
    }
    std::fs::rename(&staging, target).map_err(|e| io("putting the copy in place", e))?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    let restored = verify(target)?;
    drop(lock);
    if restored.head_seq != info.head_seq || restored.events != info.events {
        return Err(StoreError::Corrupt(
            "the restored store differs from the backup".into(),
        ));
    }
    Ok(restored)
}
