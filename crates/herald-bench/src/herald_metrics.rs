//! Best-effort reading of herald's Prometheus metrics (`GET /metrics`): how many
//! events each group commit carried, and histograms such as the relay's delay. Not part
//! of the wire contract: when the endpoint or a metric is missing, the figures are
//! simply left out.

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

/// The value of the unlabelled counter or gauge `name`.
pub async fn read_value(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut connection = Connection::open(addr).await.ok()?;
    let response = connection.get("/metrics").await.ok()?;
    if response.status != 200 {
        return None;
    }
    String::from_utf8_lossy(&response.body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.trim().parse().ok())
}

/// A Prometheus histogram at one instant: cumulative counts by upper bound (`le`).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// (upper bound, observations ≤ it), ascending; the last bound is +Inf.
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// The observations made between `earlier` and this reading.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(bound, _)| *bound == le)
                .map_or(0.0, |(_, count)| *count)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, count)| (*le, (count - before(*le)).max(0.0)))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The `q` quantile as PromQL's `histogram_quantile` estimates it: linear
    /// interpolation inside the bucket holding it (the largest finite bound when it
    /// falls in the +Inf bucket). `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, count) in &self.buckets {
            if *count >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = count - below;
                let share = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * share);
            }
            (lower, below) = (*le, *count);
        }
        Some(lower)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// Reads the histogram `name` (without labels).
pub async fn read_histogram(addr: SocketAddr, name: &str) -> Option<Histogram> {
    let mut connection = Connection::open(addr).await.ok()?;
    let response = connection.get("/metrics").await.ok()?;
    if response.status != 200 {
        return None;
    }
    parse_histogram(&String::from_utf8_lossy(&response.body), name)
}

fn parse_histogram(text: &str, name: &str) -> Option<Histogram> {
    let bucket_prefix = format!("{name}_bucket{{le=\"");
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (None, None);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        if let Some(le) = key
            .strip_prefix(&bucket_prefix)
            .and_then(|rest| rest.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((le, value));
        } else if key.strip_prefix(name) == Some("_sum") {
            sum = Some(value);
        } else if key.strip_prefix(name) == Some("_count") {
            count = Some(value);
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.is_empty() {
        return None;
    }
    Some(Histogram {
        buckets,
        sum: sum?,
        count: count?,
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

    #[test]
    fn parses_histograms_and_estimates_quantiles() {
        let text = "# TYPE d histogram\nd_bucket{le=\"0.01\"} 50\nd_bucket{le=\"0.1\"} 90\n\
                    d_bucket{le=\"+Inf\"} 100\nd_sum 3.5\nd_count 100\nother_count 7\n";
        let h = parse_histogram(text, "d").unwrap();
        assert_eq!(h.count, 100.0);
        assert_eq!(h.buckets.len(), 3);
        assert!((h.quantile(0.5).unwrap() - 0.01).abs() < 1e-12);
        assert!((h.quantile(0.7).unwrap() - 0.055).abs() < 1e-12);
        assert_eq!(h.quantile(0.99), Some(0.1));
        assert_eq!(h.mean(), Some(0.035));
        let earlier = Histogram {
            buckets: vec![(0.01, 50.0), (0.1, 50.0), (f64::INFINITY, 50.0)],
            sum: 0.5,
            count: 50.0,
        };
        let delta = h.since(&earlier);
        assert_eq!(delta.count, 50.0);
        assert!((delta.quantile(0.5).unwrap() - 0.06625).abs() < 1e-12);
        assert!(parse_histogram(text, "missing").is_none());
    }
}
