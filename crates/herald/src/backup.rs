//! `herald backup DIR` and `herald restore DIR`: seed 004's disaster recovery for the
//! embedded store. A backup is a consistent copy taken while the hub keeps serving (one
//! read snapshot of the file), verified page by page, with a manifest of what it holds;
//! a restore verifies it again and puts it in place while no hub uses the file. For
//! PostgreSQL, use its own tools (see the README).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use herald_store::embedded::backup::{self, StoreFileInfo};
use herald_store::StoreConfig;
use serde::{Deserialize, Serialize};

use crate::config::StoreSettings;

/// The store file inside a backup directory.
const STORE_FILE: &str = "herald.db";
/// What the backup holds, written beside it.
const MANIFEST: &str = "herald-backup.json";

/// `herald backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Directory to write the backup to (created if missing; must hold no backup yet).
    pub dir: PathBuf,
    /// Configuration file whose `[store]` table to use (default: ./herald.toml when it
    /// exists).
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    store: StoreSettings,
}

/// `herald restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A directory written by `herald backup`.
    pub dir: PathBuf,
    /// Replace an existing store (the hub must be stopped either way).
    #[arg(long)]
    pub force: bool,
    /// Configuration file whose `[store]` table to use (default: ./herald.toml when it
    /// exists).
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    store: StoreSettings,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    created_at: String,
    herald_version: String,
    source: String,
    schema_version: i64,
    head_seq: u64,
    events: u64,
    bytes: u64,
}

fn embedded_path(store: &StoreSettings) -> anyhow::Result<PathBuf> {
    match StoreConfig::parse(&store.data).map_err(anyhow::Error::msg)? {
        StoreConfig::Embedded { path } => Ok(path),
        StoreConfig::Postgres { .. } => anyhow::bail!(
            "backup and restore are for the embedded store; on PostgreSQL use pg_dump / \
             pg_basebackup with point-in-time recovery (see the README)"
        ),
    }
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> herald_store::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

pub async fn backup(args: BackupArgs, store: StoreSettings) -> anyhow::Result<ExitCode> {
    let source = embedded_path(&store)?;
    let dir = args.dir;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = dir.join(STORE_FILE);
    let (from, to) = (source.clone(), target.clone());
    let info = blocking(move || backup::backup(&from, &to)).await?;
    let manifest = manifest(&source, &info);
    let text = serde_json::to_string_pretty(&manifest)?;
    write_synced(&dir.join(MANIFEST), text.as_bytes())?;
    println!("{}", serde_json::to_string(&manifest)?);
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(args: RestoreArgs, store: StoreSettings) -> anyhow::Result<ExitCode> {
    let target = embedded_path(&store)?;
    let manifest_path = args.dir.join(MANIFEST);
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?,
    )
    .with_context(|| format!("{} is not a backup manifest", manifest_path.display()))?;
    let backup_file = args.dir.join(STORE_FILE);
    let force = args.force;
    let (from, to) = (backup_file, target.clone());
    let info = blocking(move || backup::restore(&from, &to, force)).await?;
    if info.head_seq != manifest.head_seq || info.events != manifest.events {
        anyhow::bail!(
            "the backup holds {} events up to seq {}, but its manifest says {} up to {}",
            info.events,
            info.head_seq,
            manifest.events,
            manifest.head_seq
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "restored": target.display().to_string(),
            "head_seq": info.head_seq,
            "events": info.events,
            "backup_created_at": manifest.created_at,
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn manifest(source: &Path, info: &StoreFileInfo) -> Manifest {
    Manifest {
        format: 1,
        created_at: herald_core::Timestamp::now().to_rfc3339(),
        herald_version: env!("CARGO_PKG_VERSION").to_owned(),
        source: source.display().to_string(),
        schema_version: info.schema_version,
        head_seq: info.head_seq,
        events: info.events,
        bytes: info.bytes,
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}
