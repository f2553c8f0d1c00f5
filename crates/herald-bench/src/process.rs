//! The servers under test as child processes, and what /proc says about them.
//!
//! A server is started with `--listen 127.0.0.1:0`; its port is read from the one line
//! it prints on stdout (`... listening on http://127.0.0.1:PORT`). Its stderr goes to a
//! log file in its own temporary directory. It is stopped with SIGTERM (then killed
//! after a grace period), and killed on drop if the benchmark fails half-way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::progress;

/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server a child process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Herald,
    Ceiling,
}

impl ServerKind {
    pub fn label(self) -> &'static str {
        match self {
            ServerKind::Herald => "herald",
            ServerKind::Ceiling => "ceiling (no-op axum)",
        }
    }
}

/// A running server child process.
pub struct ServerProcess {
    pub kind: ServerKind,
    pub addr: SocketAddr,
    pub pid: u32,
    /// The API key clients send (a herald that requires one).
    pub bearer: Option<String>,
    child: Child,
    /// Kept open so the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    dir: TempDir,
    log_path: PathBuf,
}

impl ServerProcess {
    /// Starts `herald serve` on an ephemeral loopback port with a fresh store in a new
    /// temporary directory under `data_parent`.
    pub async fn herald(herald_bin: &Path, data_parent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herald-bench-")
            .tempdir_in(data_parent)
            .with_context(|| format!("cannot create a directory in {}", data_parent.display()))?;
        let db = dir.path().join("herald.db");
        Self::herald_with_data(herald_bin, dir, db.as_os_str()).await
    }

    /// Starts `herald serve` on an ephemeral loopback port with `--data <url>` (e.g. a
    /// `postgres://` URL); its log goes to a new temporary directory under `data_parent`.
    pub async fn herald_on(herald_bin: &Path, data_parent: &Path, url: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herald-bench-")
            .tempdir_in(data_parent)
            .with_context(|| format!("cannot create a directory in {}", data_parent.display()))?;
        Self::herald_with_data(herald_bin, dir, url.as_ref()).await
    }

    /// [`ServerProcess::herald`] with extra `herald serve` flags (e.g. `--nats-url`).
    pub async fn herald_with_args(
        herald_bin: &Path,
        data_parent: &Path,
        extra_args: &[String],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herald-bench-")
            .tempdir_in(data_parent)
            .with_context(|| format!("cannot create a directory in {}", data_parent.display()))?;
        Self::herald_reopen(herald_bin, dir, extra_args).await
    }

    /// [`ServerProcess::herald`] with extra environment variables (e.g. `HERALD_AUTH`).
    pub async fn herald_with_env(
        herald_bin: &Path,
        data_parent: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herald-bench-")
            .tempdir_in(data_parent)
            .with_context(|| format!("cannot create a directory in {}", data_parent.display()))?;
        let db = dir.path().join("herald.db");
        let mut command = herald_command(herald_bin, db.as_os_str());
        command.envs(env.iter().copied());
        Self::start(ServerKind::Herald, command, dir)
            .await
            .with_context(|| format!("starting {}", herald_bin.display()))
    }

    /// Starts `herald serve` on the store `herald.db` in `dir` (one a stopped herald left
    /// there: see [`ServerProcess::stop_keeping_data`]), with extra flags.
    pub async fn herald_reopen(
        herald_bin: &Path,
        dir: TempDir,
        extra_args: &[String],
    ) -> Result<Self> {
        let db = dir.path().join("herald.db");
        let mut command = herald_command(herald_bin, db.as_os_str());
        command.args(extra_args);
        Self::start(ServerKind::Herald, command, dir)
            .await
            .with_context(|| format!("starting {}", herald_bin.display()))
    }

    async fn herald_with_data(
        herald_bin: &Path,
        dir: TempDir,
        data: &std::ffi::OsStr,
    ) -> Result<Self> {
        Self::start(ServerKind::Herald, herald_command(herald_bin, data), dir)
            .await
            .with_context(|| format!("starting {}", herald_bin.display()))
    }

    /// Starts this binary's `ceiling-server` subcommand on an ephemeral loopback port.
    pub async fn ceiling(data_parent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herald-bench-ceiling-")
            .tempdir_in(data_parent)?;
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut command = Command::new(exe);
        command
            .arg("ceiling-server")
            .arg("--listen")
            .arg("127.0.0.1:0");
        Self::start(ServerKind::Ceiling, command, dir).await
    }

    async fn start(kind: ServerKind, mut command: Command, dir: TempDir) -> Result<Self> {
        let log_path = dir.path().join("server.stderr.log");
        // Appended to: a herald restarted on the same store keeps the first run's log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("the child exited at once")?;
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout pipe")?);
        let mut line = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, stdout.read_line(&mut line)).await;
        let addr = match read {
            Ok(Ok(n)) if n > 0 => parse_listening_line(&line)
                .with_context(|| format!("unexpected first stdout line {line:?}"))?,
            Ok(Ok(_)) => {
                let status = child.wait().await?;
                bail!(
                    "the server exited ({status}) before printing its listening line; stderr:\n{}",
                    log_tail(&log_path)
                );
            }
            Ok(Err(error)) => return Err(error).context("reading the server's stdout"),
            Err(_) => bail!(
                "no listening line after {START_TIMEOUT:?}; stderr:\n{}",
                log_tail(&log_path)
            ),
        };
        if !addr.ip().is_loopback() {
            bail!("the server listens on {addr}, not on a loopback address; refusing to load it");
        }
        progress!("{} started: pid {pid}, {addr}", kind.label());
        Ok(ServerProcess {
            kind,
            addr,
            pid,
            bearer: None,
            child,
            _stdout: stdout,
            dir,
            log_path,
        })
    }

    /// A snapshot of the process's memory, CPU time and I/O.
    pub fn sample(&self) -> Result<ProcSample> {
        ProcSample::of(&self.pid.to_string())
    }

    /// The server's files (store, WAL...; not its log) and their sizes, by name; a
    /// directory (the event log's) as `name/` with the sum of the files under it.
    pub fn data_files(&self) -> Vec<(String, u64)> {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return Vec::new();
        };
        let mut files: Vec<(String, u64)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path() != self.log_path)
            .filter_map(|e| {
                let metadata = e.metadata().ok()?;
                let name = e.file_name().to_string_lossy().into_owned();
                if metadata.is_dir() {
                    Some((format!("{name}/"), tree_bytes(&e.path())))
                } else {
                    metadata.is_file().then_some((name, metadata.len()))
                }
            })
            .collect();
        files.sort();
        files
    }

    /// Bytes the server's files take, and a `name size + name size` breakdown.
    pub fn data_summary(&self) -> (u64, String) {
        let files = self.data_files();
        let total = files.iter().map(|(_, size)| size).sum();
        let breakdown = files
            .iter()
            .map(|(name, size)| format!("`{name}` {}", crate::stats::mib(*size)))
            .collect::<Vec<_>>()
            .join(" + ");
        (total, breakdown)
    }

    /// The size of the server's stderr log.
    pub fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log_path).map_or(0, |m| m.len())
    }

    /// Stops the server with SIGTERM, waits for it to exit, and kills it if it does
    /// not. Returns how long the shutdown took.
    pub async fn stop(mut self) -> Result<Duration> {
        self.terminate().await
    }

    /// [`ServerProcess::stop`], but keeps the server's directory (and its store) for
    /// [`ServerProcess::herald_reopen`].
    pub async fn stop_keeping_data(mut self) -> Result<TempDir> {
        self.terminate().await?;
        Ok(self.dir)
    }

    async fn terminate(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    progress!(
                        "{} exited with {status} after SIGTERM; stderr tail:\n{}",
                        self.kind.label(),
                        log_tail(&self.log_path)
                    );
                }
            }
            Err(_) => {
                progress!(
                    "{} did not exit {STOP_TIMEOUT:?} after SIGTERM; killing it",
                    self.kind.label()
                );
                self.child.kill().await?;
            }
        }
        Ok(started.elapsed())
    }
}

/// `herald serve` on an ephemeral loopback port with `--data <data>`.
fn herald_command(herald_bin: &Path, data: &std::ffi::OsStr) -> Command {
    let mut command = Command::new(herald_bin);
    command
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data")
        .arg(data)
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL");
    command
}

/// Parses `... listening on http://127.0.0.1:PORT`.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on http://")?;
    rest.trim().trim_end_matches('/').parse().ok()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// What /proc says about a process at one instant.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// User + system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// The parts of the RSS: anonymous memory (heap), mapped files, shared memory.
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    pub rss_shmem_bytes: u64,
    /// Peak RSS.
    pub hwm_bytes: u64,
    pub threads: u64,
    /// Bytes the process caused to be written to storage (None if unreadable).
    pub write_bytes: Option<u64>,
}

impl ProcSample {
    /// Samples `/proc/<pid>` (`pid` may be `self`).
    pub fn of(pid: &str) -> Result<Self> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are the 14th
        // and 15th fields of the line, so the 12th and 13th after the name.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let cpu_ticks = ticks(11).unwrap_or(0) + ticks(12).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let write_bytes = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .ok()
            .and_then(|io| {
                io.lines()
                    .find(|l| l.starts_with("write_bytes:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            });
        Ok(ProcSample {
            at,
            cpu_seconds: cpu_ticks as f64 / clock_ticks_per_second(),
            rss_bytes: field("VmRSS:") * 1024,
            rss_anon_bytes: field("RssAnon:") * 1024,
            rss_file_bytes: field("RssFile:") * 1024,
            rss_shmem_bytes: field("RssShmem:") * 1024,
            hwm_bytes: field("VmHWM:") * 1024,
            threads: field("Threads:"),
            write_bytes,
        })
    }

    /// CPU used between two samples, as a share of one core (1.0 = one core busy).
    pub fn cores_used_since(&self, earlier: &ProcSample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (self.cpu_seconds - earlier.cpu_seconds) / wall
    }

    /// Storage bytes written between two samples.
    pub fn written_since(&self, earlier: &ProcSample) -> Option<u64> {
        Some(self.write_bytes?.saturating_sub(earlier.write_bytes?))
    }
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`, 100 if unknown).
fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Bytes of the files under `dir`, at any depth.
fn tree_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        assert_eq!(
            parse_listening_line("herald listening on http://127.0.0.1:40123\n"),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("ceiling listening on http://127.0.0.1:9/"),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(parse_listening_line("starting"), None);
    }

    #[test]
    fn samples_this_process() {
        let sample = ProcSample::of("self").unwrap();
        assert!(sample.rss_bytes > 0);
        assert!(sample.threads >= 1);
    }
}
