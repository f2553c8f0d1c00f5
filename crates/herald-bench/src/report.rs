//! Markdown output: tables, and the description of the machine a run happened on.
//!
//! Tables and headings go to stdout so `herald-bench all > out.md` is pasteable into
//! BENCHMARKS.md; progress goes to stderr.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::stats::{ms, thousands, Samples};

/// A Markdown table built row by row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut out = line(&self.header);
        out.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Prints a progress line to stderr.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[herald-bench] {}", format!($($arg)*))
    };
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The file system type holding `path` (from /proc/self/mounts, longest mount prefix).
pub fn filesystem_of(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return "unknown".into();
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = fields.next()?;
            let fs_type = fields.next()?;
            path.starts_with(mount_point).then(|| {
                (
                    mount_point.len(),
                    format!("{fs_type} (mounted at {mount_point})"),
                )
            })
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "unknown".into())
}

/// Total and idle CPU time of the machine so far (jiffies), from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((fields.iter().take(8).sum(), idle))
}

/// How late a thread wakes from 200 µs sleeps on this machine while nothing else of
/// the benchmark runs (the scheduling noise every latency figure includes), and how
/// busy the machine's CPUs were meanwhile (other work on the machine skews a run).
pub fn sleep_jitter(duration: Duration) -> (String, String) {
    let before = cpu_jiffies();
    let jitter = sleep_jitter_only(duration);
    let busy = match (before, cpu_jiffies()) {
        (Some((total0, idle0)), Some((total1, idle1))) if total1 > total0 => {
            let busy = 1.0 - (idle1 - idle0) as f64 / (total1 - total0) as f64;
            format!(
                "{:.0}% of all cores (while this tool only slept; above ~5% something else is running)",
                busy * 100.0
            )
        }
        _ => "unknown".into(),
    };
    (jitter, busy)
}

fn sleep_jitter_only(duration: Duration) -> String {
    let sleep = Duration::from_micros(200);
    let end = Instant::now() + duration;
    let mut overshoots = Vec::new();
    while Instant::now() < end {
        let before = Instant::now();
        std::thread::sleep(sleep);
        overshoots.push(before.elapsed().saturating_sub(sleep).as_nanos() as u64);
    }
    let samples = Samples::new(overshoots);
    format!(
        "p50 {}, p99 {}, p99.9 {}, max {} ({} sleeps of 200 µs in {} s)",
        ms(samples.quantile(0.5)),
        ms(samples.quantile(0.99)),
        ms(samples.quantile(0.999)),
        ms(samples.max()),
        thousands(samples.len() as u64),
        duration.as_secs_f64()
    )
}

/// Runs `sync` so dirty pages left by an earlier run (or scenario) are written back
/// before the next measurement instead of during it.
pub fn flush_page_cache() {
    let _ = Command::new("sync").status();
}

/// How a sync probe writes before each sync.
#[derive(Clone, Copy)]
pub enum SyncProbe {
    /// Append to a growing file, then `fsync` (what SQLite does to a growing WAL).
    AppendFsync,
    /// Overwrite the start of the file, then `fdatasync` (no metadata to commit).
    OverwriteFdatasync,
}

/// How long writing `chunk` bytes to a file in `dir` and syncing it takes: the floor
/// of every durable commit there (at most 100 syncs or 2 s).
pub fn sync_latency(dir: &Path, chunk: usize, probe: SyncProbe) -> String {
    let measure = || -> std::io::Result<Samples> {
        let mut file = tempfile::tempfile_in(dir)?;
        let block = vec![0x5a_u8; chunk];
        if let SyncProbe::OverwriteFdatasync = probe {
            file.write_all(&block)?;
            file.sync_all()?;
        }
        let give_up = Instant::now() + Duration::from_secs(2);
        let mut durations = Vec::new();
        while durations.len() < 100 && Instant::now() < give_up {
            let started = Instant::now();
            match probe {
                SyncProbe::AppendFsync => {
                    file.write_all(&block)?;
                    file.sync_all()?;
                }
                SyncProbe::OverwriteFdatasync => {
                    file.write_all_at(&block, 0)?;
                    file.sync_data()?;
                }
            }
            durations.push(started.elapsed().as_nanos() as u64);
        }
        Ok(Samples::new(durations))
    };
    match measure() {
        Ok(samples) => format!(
            "p50 {}, p99 {}, max {} ({} syncs)",
            ms(samples.quantile(0.5)),
            ms(samples.quantile(0.99)),
            ms(samples.max()),
            samples.len()
        ),
        Err(error) => format!("could not measure: {error}"),
    }
}

/// A Markdown description of the machine and the run's settings.
pub fn machine_table(
    data_parent: &Path,
    herald_bin: &Path,
    mode: &str,
    (jitter, busy): (String, String),
) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown".into());
    let kernel = read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    let load = read_trimmed("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into());
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"])
        .map(|hash| {
            let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{hash} (uncommitted changes)")
            } else {
                hash
            }
        })
        .unwrap_or_else(|| "unknown".into());
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "(unset)".into());

    let mut table = Table::new(&["Machine", "Value"]);
    let rows = [
        (
            "date (UTC)",
            chrono::Utc::now().format("%Y-%m-%d %H:%M").to_string(),
        ),
        ("cores (nproc)", cores),
        ("CPU", cpu),
        ("memory", memory),
        ("kernel", kernel),
        ("load average at start", load),
        ("CPU busy before the run", busy),
        ("wake-up lateness of a sleeping thread (idle)", jitter),
        (
            "data directory",
            format!(
                "{} on {}",
                data_parent.display(),
                filesystem_of(data_parent)
            ),
        ),
        (
            "data directory: append 4 KiB + fsync",
            sync_latency(data_parent, 4096, SyncProbe::AppendFsync),
        ),
        (
            "data directory: append 256 KiB + fsync",
            sync_latency(data_parent, 256 * 1024, SyncProbe::AppendFsync),
        ),
        (
            "data directory: overwrite 256 KiB + fdatasync",
            sync_latency(data_parent, 256 * 1024, SyncProbe::OverwriteFdatasync),
        ),
        ("herald binary", herald_bin.display().to_string()),
        ("git commit", commit),
        ("RUST_LOG", rust_log),
        ("mode", mode.to_string()),
    ];
    for (name, value) in rows {
        table.row(vec![name.to_string(), value]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_markdown() {
        let mut table = Table::new(&["a", "b"]);
        table.row(vec!["1".into(), "2".into()]);
        assert_eq!(table.render(), "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }
}
