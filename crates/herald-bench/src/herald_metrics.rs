//! Best-effort reading of herald's Prometheus counters (`GET /metrics`), to report
//! how many events each group commit carried. Not part of the wire contract: when the
//! endpoint or a counter is missing, the figures are simply left out.

use std::net::SocketAddr;

use crate::client::Connection;

/// Herald's commit counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CommitCounters {
    pub commits: f64,
    pub events_stored: f64,
}

impl CommitCounters {
    /// Events per commit between two readings.
    pub fn events_per_commit_since(&self, earlier: &CommitCounters) -> Option<f64> {
        let commits = self.commits - earlier.commits;
        (commits > 0.0).then(|| (self.events_stored - earlier.events_stored) / commits)
    }
}

/// Reads `herald_commits_total` and `herald_events_published_total{result="stored"}`.
pub async fn read(addr: SocketAddr) -> Option<CommitCounters> {
    let mut connection = Connection::open(addr).await.ok()?;
    let response = connection.get("/metrics").await.ok()?;
    if response.status != 200 {
        return None;
    }
    parse(&String::from_utf8_lossy(&response.body))
}

fn parse(text: &str) -> Option<CommitCounters> {
    let mut commits = None;
    let mut events_stored = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        if name == "herald_commits_total" {
            commits = Some(value);
        } else if name.starts_with("herald_events_published_total{")
            && name.contains("result=\"stored\"")
        {
            events_stored = Some(value);
        }
    }
    Some(CommitCounters {
        commits: commits?,
        events_stored: events_stored?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# TYPE herald_commits_total counter\nherald_commits_total 10\n\
                    herald_events_published_total{result=\"duplicate\"} 3\n\
                    herald_events_published_total{result=\"stored\"} 640\n";
        let counters = parse(text).unwrap();
        assert_eq!(counters.commits, 10.0);
        assert_eq!(counters.events_stored, 640.0);
        let earlier = CommitCounters {
            commits: 5.0,
            events_stored: 320.0,
        };
        assert_eq!(counters.events_per_commit_since(&earlier), Some(64.0));
        assert!(parse("nothing 1\n").is_none());
    }
}
