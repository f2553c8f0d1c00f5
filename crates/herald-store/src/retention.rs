//! Retention: which stored events to delete, by policy. Both backends read the same
//! facts (the `subjects` table's counts and bytes, each policy's oldest events) and this
//! module decides; each backend only runs the SQL.
//!
//! Each event belongs to the first policy whose pattern matches its subject; events
//! matching none are kept forever. A policy deletes its oldest events while any of its
//! limits is exceeded: older than `max_age`, more than `max_events`, more than
//! `max_bytes` of payload. An aggregate's events count towards the limits but are only
//! deleted when the policy includes aggregates (an event-sourced stream must not be cut
//! by an age policy meant for telemetry).

use std::time::Duration;

use herald_core::{Pattern, Seq, Timestamp};

/// The cursor (see [`crate::Store::save_cursor`]) holding the highest seq retention
/// deleted: seqs above it are gap-free.
pub const DELETED_THROUGH: &str = "herald:retention-deleted-through";

/// One retention policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub subjects: Pattern,
    pub max_age: Option<Duration>,
    pub max_events: Option<u64>,
    /// Payload bytes.
    pub max_bytes: Option<u64>,
    /// Delete aggregates' events too (default: keep them).
    pub include_aggregates: bool,
}

impl RetentionPolicy {
    /// Whether the policy limits anything.
    pub fn limits(&self) -> bool {
        self.max_age.is_some() || self.max_events.is_some() || self.max_bytes.is_some()
    }
}

/// What one pass of [`crate::Store::enforce_retention`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPass {
    pub deleted_events: u64,
    pub deleted_bytes: u64,
    /// The pass stopped at its budget: there may be more to delete now.
    pub more: bool,
}

/// A subject as the `subjects` table counts it.
pub(crate) struct SubjectTotals {
    pub subject: String,
    pub events: u64,
    pub bytes: u64,
}

/// One of a policy's oldest events, as read for the decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub seq: Seq,
    pub bytes: u64,
    pub aggregate: bool,
    /// Index of its subject in its policy's list.
    pub subject: u32,
}

/// The subjects of each policy (by the first policy that matches), with the policy's
/// totals. Policies without limits or without subjects are left out.
pub(crate) fn group(
    policies: &[RetentionPolicy],
    subjects: Vec<SubjectTotals>,
) -> Vec<(&RetentionPolicy, Vec<String>, u64, u64)> {
    let mut groups: Vec<(&RetentionPolicy, Vec<String>, u64, u64)> =
        policies.iter().map(|p| (p, Vec::new(), 0, 0)).collect();
    for totals in subjects {
        if totals.events == 0 {
            continue;
        }
        if let Some(group) = groups
            .iter_mut()
            .find(|(p, ..)| p.subjects.matches(&totals.subject))
        {
            group.1.push(totals.subject);
            group.2 += totals.events;
            group.3 += totals.bytes;
        }
    }
    groups.retain(|(p, subjects, ..)| p.limits() && !subjects.is_empty());
    groups
}

/// The last seq committed before `now - max_age` (0: none), from the backend's time
/// index: events at or below it are too old.
pub(crate) fn age_cutoff(policy: &RetentionPolicy, now: Timestamp) -> Option<i64> {
    let age = policy.max_age?;
    let age = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
    Some(now.as_micros().saturating_sub(age))
}

/// Which of a policy's oldest events (in seq order) to delete, at most `budget`.
/// `cutoff_seq`: the last seq too old for its `max_age`.
pub(crate) fn choose(
    policy: &RetentionPolicy,
    candidates: &[Candidate],
    events: u64,
    bytes: u64,
    cutoff_seq: Option<Seq>,
    budget: usize,
) -> Vec<Candidate> {
    let mut excess_events = policy
        .max_events
        .map_or(0, |max| events.saturating_sub(max));
    let mut excess_bytes = policy.max_bytes.map_or(0, |max| bytes.saturating_sub(max));
    let mut chosen = Vec::new();
    for candidate in candidates {
        let too_old = cutoff_seq.is_some_and(|cutoff| candidate.seq <= cutoff);
        if !too_old && excess_events == 0 && excess_bytes == 0 {
            break;
        }
        if chosen.len() == budget {
            break;
        }
        if candidate.aggregate && !policy.include_aggregates {
            continue;
        }
        excess_events = excess_events.saturating_sub(1);
        excess_bytes = excess_bytes.saturating_sub(candidate.bytes);
        chosen.push(*candidate);
    }
    chosen
}

/// What a pass deletes, for a backend that reads synchronously: each policy's group
/// (see [`group`]) gets what is left of `budget`; `last_before(ts)` is the last seq
/// committed before a time (0: none), `oldest(policy, subjects, limit)` the policy's
/// oldest events. The events with their subjects, and whether more are due.
pub(crate) fn select<E>(
    policies: &[RetentionPolicy],
    totals: Vec<SubjectTotals>,
    now: Timestamp,
    budget: usize,
    mut last_before: impl FnMut(i64) -> Result<Seq, E>,
    mut oldest: impl FnMut(&RetentionPolicy, &[String], usize) -> Result<Vec<Candidate>, E>,
) -> Result<(Vec<(Candidate, String)>, bool), E> {
    let mut deleted: Vec<(Candidate, String)> = Vec::new();
    let mut more = false;
    for (policy, subjects, events, bytes) in group(policies, totals) {
        let left = budget - deleted.len();
        if left == 0 {
            more = true;
            break;
        }
        let cutoff_seq = match age_cutoff(policy, now) {
            None => None,
            Some(ts) => Some(last_before(ts)?),
        };
        let candidates = oldest(policy, &subjects, left)?;
        let chosen = choose(policy, &candidates, events, bytes, cutoff_seq, left);
        deleted.extend(
            chosen
                .into_iter()
                .map(|c| (c, subjects[c.subject as usize].clone())),
        );
    }
    if deleted.len() == budget {
        more = true;
    }
    Ok((deleted, more))
}

/// How many of the `deleted` events (seq, subject) each consumer (name, filters,
/// delivered seq) had not been handed yet: what it skipped. Consumers that skipped
/// nothing are left out.
pub(crate) fn skipped(
    consumers: &[(String, Vec<Pattern>, Seq)],
    deleted: &[(Seq, &str)],
) -> Vec<(String, u64)> {
    consumers
        .iter()
        .filter_map(|(name, filters, delivered)| {
            let n = deleted
                .iter()
                .filter(|(seq, subject)| {
                    *seq > *delivered && filters.iter().any(|f| f.matches(subject))
                })
                .count() as u64;
            (n > 0).then(|| (name.clone(), n))
        })
        .collect()
}

/// Merges per-subject lists of oldest events (each in seq order) into one, oldest
/// first, keeping `limit`.
pub(crate) fn merge(mut lists: Vec<Vec<Candidate>>, limit: usize) -> Vec<Candidate> {
    let mut all: Vec<Candidate> = lists.drain(..).flatten().collect();
    all.sort_unstable_by_key(|c| c.seq);
    all.truncate(limit);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_events: Option<u64>, max_bytes: Option<u64>) -> RetentionPolicy {
        RetentionPolicy {
            subjects: Pattern::parse("hub.>").unwrap(),
            max_age: None,
            max_events,
            max_bytes,
            include_aggregates: false,
        }
    }

    fn candidates(n: u64) -> Vec<Candidate> {
        (1..=n)
            .map(|seq| Candidate {
                seq,
                bytes: 10,
                aggregate: seq % 4 == 0,
                subject: 0,
            })
            .collect()
    }

    #[test]
    fn deletes_the_oldest_beyond_each_limit_and_keeps_aggregates() {
        let chosen = choose(&policy(Some(5), None), &candidates(10), 10, 100, None, 100);
        // Five too many; seq 4 is an aggregate's and is kept.
        assert_eq!(
            chosen.iter().map(|c| c.seq).collect::<Vec<_>>(),
            [1, 2, 3, 5, 6]
        );
        let chosen = choose(&policy(None, Some(75)), &candidates(10), 10, 100, None, 100);
        assert_eq!(chosen.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let chosen = choose(&policy(None, None), &candidates(10), 10, 100, Some(6), 100);
        assert_eq!(
            chosen.iter().map(|c| c.seq).collect::<Vec<_>>(),
            [1, 2, 3, 5, 6]
        );
        let chosen = choose(&policy(Some(0), None), &candidates(10), 10, 100, None, 2);
        assert_eq!(chosen.len(), 2, "at most the budget");
    }

    #[test]
    fn the_first_matching_policy_wins() {
        let narrow = RetentionPolicy {
            subjects: Pattern::parse("hub.*.metrics.>").unwrap(),
            ..policy(Some(1), None)
        };
        let wide = policy(Some(1), None);
        let policies = [narrow, wide];
        let groups = group(
            &policies,
            vec![
                SubjectTotals {
                    subject: "hub.a.metrics.cpu".into(),
                    events: 3,
                    bytes: 30,
                },
                SubjectTotals {
                    subject: "hub.a.orders".into(),
                    events: 2,
                    bytes: 20,
                },
                SubjectTotals {
                    subject: "other.x".into(),
                    events: 9,
                    bytes: 90,
                },
            ],
        );
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].1, ["hub.a.metrics.cpu"]);
        assert_eq!((groups[0].2, groups[0].3), (3, 30));
        assert_eq!(groups[1].1, ["hub.a.orders"]);
    }
}
