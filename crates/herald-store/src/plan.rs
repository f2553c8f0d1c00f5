//! What the backends' query planners share: the exact filter, the caps and the cost rule
//! that choose a read path. Each backend turns a [`Path`] into its own SQL; no backend
//! decides anything about matching on its own.
//!
//! SQL only ever sees subjects as bound values compared with `=`, `>=` and `<` (never
//! `LIKE`), so characters that are special elsewhere — `*`, `>`, `%` inside a token (NATS
//! literals), `%` and `_` (SQL patterns) — are plain bytes here. A pattern's wildcards are
//! its [`Token::One`](herald_core::Token) and [`Token::Rest`](herald_core::Token) tokens
//! only, never a character inside a literal token.

use herald_core::{Event, Pattern, Seq};

use crate::Query;

/// Distinct subjects read from the `subjects` table before giving up on the merge path.
pub(crate) const MAX_SUBJECTS_EXAMINED: usize = 10_000;
/// Most subjects merged; past this a scan by seq is cheaper anyway.
pub(crate) const MAX_SUBJECTS_MERGED: usize = 1_000;

/// How a read path ended: the range ran out, or it stopped (with `limit` events, or at
/// the scan budget) after reading the row with this seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Exhausted,
    StoppedAfter(Seq),
}

/// Counts the rows a query reads against the store's scan budget
/// ([`crate::QUERY_SCAN_BUDGET`] unless configured).
pub(crate) struct ScanBudget(usize);

impl ScanBudget {
    pub(crate) fn new(rows: usize) -> Self {
        ScanBudget(rows.max(1))
    }

    /// Counts one row read; false once the budget is spent.
    pub(crate) fn take(&mut self) -> bool {
        self.0 = self.0.saturating_sub(1);
        self.0 > 0
    }
}

/// How a query reads the log.
pub(crate) enum Path {
    /// Through the correlation-id index.
    Correlation,
    /// Through the aggregate index (type and id).
    Aggregate,
    /// The first seqs of each of these subjects, merged (empty: nothing can match).
    Subjects(Vec<String>),
    /// The log in seq order, filtering as it goes.
    Scan,
}

/// The path when it follows from the query alone; otherwise the wildcard pattern whose
/// stored subjects the backend must look up (see [`candidate_range`], [`choose`]).
pub(crate) fn first_step(query: &Query) -> Result<Path, &Pattern> {
    if query.correlation_id.is_some() {
        return Ok(Path::Correlation);
    }
    if query.aggregate_type.is_some() && query.aggregate_id.is_some() {
        return Ok(Path::Aggregate);
    }
    let Some(pattern) = query.subject.as_ref().filter(|p| !p.matches_everything()) else {
        return Ok(Path::Scan);
    };
    if pattern.is_literal() {
        return Ok(Path::Subjects(vec![pattern.as_str().to_owned()]));
    }
    Err(pattern)
}

/// The range `[lower, upper)` of stored subjects that can match `pattern`: those that
/// start with its literal prefix. `None` when the pattern starts with a wildcard.
pub(crate) fn candidate_range(pattern: &Pattern) -> Option<(String, String)> {
    let prefix = pattern.literal_prefix();
    // The prefix ends with '.', and '/' is the next character.
    let upper = format!("{}/", prefix.strip_suffix('.')?);
    Some((prefix, upper))
}

/// Keeps the subjects of `rows` (subject, events stored) that match `pattern`, with their
/// total event count; `None` when there are too many to examine or to merge.
pub(crate) fn candidates<E>(
    pattern: &Pattern,
    rows: impl IntoIterator<Item = Result<(String, u64), E>>,
) -> Result<Option<(Vec<String>, u64)>, E> {
    let mut subjects = Vec::new();
    let mut matching_events = 0u64;
    for (examined, row) in rows.into_iter().enumerate() {
        if examined >= MAX_SUBJECTS_EXAMINED {
            return Ok(None);
        }
        let (subject, events) = row?;
        if pattern.matches(&subject) {
            matching_events += events;
            subjects.push(subject);
            if subjects.len() > MAX_SUBJECTS_MERGED {
                return Ok(None);
            }
        }
    }
    Ok(Some((subjects, matching_events)))
}

/// Chooses between merging the candidate subjects and scanning by seq, by the rows each
/// is expected to read: the merge up to `limit` seqs per subject; the scan until it has
/// seen `limit` matches at the pattern's density in a log of `head` events.
pub(crate) fn choose(candidates: Option<(Vec<String>, u64)>, head: Seq, limit: usize) -> Path {
    let Some((subjects, matching_events)) = candidates else {
        return Path::Scan;
    };
    if subjects.is_empty() {
        return Path::Subjects(subjects);
    }
    let merge_cost = subjects.len() as u128 * limit as u128;
    let scan_cost = limit as u128 * head.max(1) as u128 / matching_events.max(1) as u128;
    if subjects.len() <= MAX_SUBJECTS_MERGED && merge_cost <= scan_cost {
        Path::Subjects(subjects)
    } else {
        Path::Scan
    }
}

/// How a merge of subjects' first seqs (sorted, at most `limit`) ended: a full page
/// stops after its last seq; a short one read everything up to its bound.
pub(crate) fn merge_ended(seqs: &[Seq], limit: usize) -> Ended {
    match seqs.last() {
        Some(&last) if seqs.len() == limit => Ended::StoppedAfter(last),
        _ => Ended::Exhausted,
    }
}

/// Offers the next event a read path found (in seq order) to its page: kept when the
/// query accepts it. `Some` when the read must stop after it: the page is full, or the
/// scan budget is spent.
pub(crate) fn offer(
    query: &Query,
    limit: usize,
    budget: &mut ScanBudget,
    page: &mut Vec<Event>,
    event: Event,
) -> Option<Ended> {
    let seq = event.seq;
    if accepts(query, &event) {
        page.push(event);
        if page.len() == limit {
            return Some(Ended::StoppedAfter(seq));
        }
    }
    if !budget.take() {
        return Some(Ended::StoppedAfter(seq));
    }
    None
}

/// Whether an event passes every filter of the query. The SQL paths narrow the read; this
/// decides.
pub(crate) fn accepts(query: &Query, event: &Event) -> bool {
    query
        .payload_contains
        .as_deref()
        .is_none_or(|text| event.payload.get().contains(text))
        && query
            .subject
            .as_ref()
            .is_none_or(|p| p.matches(event.subject.as_str()))
        && query.since.is_none_or(|t| event.timestamp >= t)
        && query.until.is_none_or(|t| event.timestamp <= t)
        && query
            .correlation_id
            .is_none_or(|c| event.correlation_id == c)
        && (query.aggregate_type.is_none() && query.aggregate_id.is_none()
            || event.aggregate.as_deref().is_some_and(|a| {
                query
                    .aggregate_type
                    .as_ref()
                    .is_none_or(|t| *t == a.aggregate_type)
                    && query
                        .aggregate_id
                        .as_ref()
                        .is_none_or(|id| *id == a.aggregate_id)
            }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_tokens_with_wildcard_characters_are_plain_text() {
        let filter = |text: &str| Pattern::parse_filter(text).unwrap();
        assert_eq!(
            candidate_range(&filter("hub.x.foo*.>")),
            Some(("hub.x.foo*.".to_owned(), "hub.x.foo*/".to_owned()))
        );
        assert_eq!(
            candidate_range(&filter("hub.*.foo*")),
            Some(("hub.".to_owned(), "hub/".to_owned()))
        );
        assert_eq!(candidate_range(&filter("*.a%.>")), None);
        for literal in ["hub.x.foo*", "hub.x.>a", "hub.x.a%", "hub.x.a_b"] {
            let query = Query {
                subject: Some(filter(literal)),
                ..Query::default()
            };
            match first_step(&query) {
                Ok(Path::Subjects(subjects)) => assert_eq!(subjects, vec![literal.to_owned()]),
                _ => panic!("{literal} is one subject, looked up exactly"),
            }
        }
    }
}
