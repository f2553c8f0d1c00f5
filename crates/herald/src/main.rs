//! The `herald` binary: `herald serve` runs the hub; `publish`, `query`, `tail` and
//! `consumer` talk to a running hub over HTTP.

mod admin;
mod backup;
mod client;
mod config;
mod consumer;
mod otel;
mod serve;
mod transfer;

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// glibc's allocator took about 13% of the server's CPU in the fetch + ack profile
/// (BENCHMARKS.md); mimalloc's thread-local free lists cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages for its arena (`MADV_HUGEPAGE`), so an idle
/// hub's few MiB of heap took 16 MiB of 2 MiB pages: 35 MiB RSS instead of 21 MiB
/// (issue 11's target: ≤ 30 MB). Off for this process, before the arena grows.
/// The flag belongs to the process, not the thread. Failing to set it costs only memory.
/// The arena's first pages are taken before `main`, so mimalloc is also built never to
/// ask for them (its `no_thp` feature): they held 4 MiB of huge pages for a few KiB.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// `herald --version`: the release and the git commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HERALD_GIT_COMMIT"),
    ")"
);

/// Herald: a durable event hub in one binary.
///
/// Start a hub with `herald serve` (events are stored in ./data/herald.db; nothing else
/// to install), then publish, query and stream events over HTTP and WebSocket, or with
/// the client commands below.
#[derive(Debug, Parser)]
#[command(name = "herald", version = VERSION, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub. Settings: defaults < herald.toml (or --config FILE) < environment < flags.
    Serve(Box<config::ServeArgs>),
    /// Print the effective configuration of `herald serve` as TOML, with where each value
    /// came from; secrets are redacted. Takes the same flags, environment and file.
    Config(Box<config::ServeArgs>),
    /// Apply the store's schema migrations and exit.
    Migrate(serve::MigrateArgs),
    /// Publish one event to a running hub.
    Publish(client::PublishArgs),
    /// Query stored events of a running hub (prints a JSON array).
    Query(client::QueryArgs),
    /// Stream events from a running hub, one JSON object per line.
    Tail(client::TailArgs),
    /// Manage and consume durable consumers of a running hub (JSON output).
    Consumer(consumer::ConsumerArgs),
    /// Write a hub's events as NDJSON, one event per line, in seq order.
    Export(transfer::ExportArgs),
    /// Re-publish a filtered range of a hub's events, in seq order, to another hub
    /// (idempotent by event id) or to a webhook (`--webhook`).
    Replay(transfer::ReplayArgs),
    /// Publish the events of an NDJSON export into a hub (idempotent by event id).
    Import(transfer::ImportArgs),
    /// Copy the embedded store to DIR while the hub keeps serving, verified, with a
    /// manifest of what it holds.
    Backup(backup::BackupArgs),
    /// Put a backup made by `herald backup` in place (the hub must be stopped).
    Restore(backup::RestoreArgs),
    /// Manage API keys: `create --admin` in the store; `list`, `add`, `revoke` through a
    /// running hub.
    Keys(serve::KeysArgs),
    /// Manage a running hub's routing rules and their dead letters (JSON output).
    Rules(admin::RulesArgs),
    /// Manage a running hub's tenants (admin key; JSON output).
    Tenants(admin::TenantsArgs),
    /// Print a shell completion script: `herald completions bash > /etc/bash_completion.d/herald`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herald: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            // Parsed again with the configuration file's values under the environment's.
            Command::Serve(_) => serve::run(config::load("serve")?.config).await,
            Command::Config(_) => {
                print!("{}", config::render(&config::load("config")?)?);
                Ok(ExitCode::SUCCESS)
            }
            Command::Migrate(_) => {
                let command = Cli::command().find_subcommand("migrate").cloned();
                let command = command.context("the migrate command")?;
                serve::migrate(config::load_store(command, 1)?).await
            }
            Command::Keys(args) => {
                let args = match args.into_http() {
                    Ok(http) => return admin::keys(http).await,
                    Err(args) => args,
                };
                let command = Cli::command()
                    .find_subcommand("keys")
                    .and_then(|keys| keys.find_subcommand("create"))
                    .cloned();
                let command = command.context("the keys create command")?;
                serve::keys(args, config::load_store(command, 2)?).await
            }
            Command::Backup(args) => {
                let command = Cli::command().find_subcommand("backup").cloned();
                let command = command.context("the backup command")?;
                backup::backup(args, config::load_store(command, 1)?).await
            }
            Command::Restore(args) => {
                let command = Cli::command().find_subcommand("restore").cloned();
                let command = command.context("the restore command")?;
                backup::restore(args, config::load_store(command, 1)?).await
            }
            Command::Publish(args) => client::publish(args).await,
            Command::Query(args) => client::query(args).await,
            Command::Tail(args) => client::tail(args).await,
            Command::Consumer(args) => consumer::run(args).await,
            Command::Rules(args) => admin::rules(args).await,
            Command::Tenants(args) => admin::tenants(args).await,
            Command::Export(args) => transfer::export(args).await,
            Command::Import(args) => transfer::import(args).await,
            Command::Replay(args) => transfer::replay(args).await,
            Command::Completions { shell } => {
                let mut command = Cli::command();
                clap_complete::generate(shell, &mut command, "herald", &mut std::io::stdout());
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("herald: {error:#}");
            ExitCode::FAILURE
        }
    }
}
