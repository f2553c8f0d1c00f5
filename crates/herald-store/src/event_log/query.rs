//! Queries over the event log: the embedded store's planner (`embedded/query.rs`) on
//! the log's postings instead of SQLite's tables, with the same plan (`crate::plan`):
//! by correlation id, by aggregate, by a merge of the subjects a pattern can match, or a
//! scan by seq; time bounds become seq bounds by binary search; every path stops at the
//! scan budget and says where (`Page::scanned_to`).

use herald_core::{Event, Pattern, Seq, Timestamp};

use super::{EventReader, Key};
use crate::plan::{self, accepts, Ended, Path, ScanBudget};
use crate::{Page, Query, MAX_QUERY_LIMIT};

/// Events read per step of a scan by seq.
const SCAN_CHUNK: usize = 512;

type Result<T> = std::io::Result<T>;

/// Answers `query` from the log as of its head now; `budget` is the scan budget in
/// events read.
pub fn run(reader: &EventReader, query: &Query, budget: usize) -> Result<Page> {
    let limit = query.limit.clamp(1, MAX_QUERY_LIMIT);
    let head = reader.head();
    let complete = Page {
        events: Vec::new(),
        scanned_to: head.max(query.after_seq),
    };
    let mut lo = query.after_seq;
    let mut hi = head;
    if let Some(since) = query.since {
        match reader.first_at_or_after(since)? {
            Some(seq) => lo = lo.max(seq - 1),
            None => return Ok(complete),
        }
    }
    if let Some(until) = query.until {
        let after = Timestamp::from_micros(until.as_micros().saturating_add(1));
        if let Some(first_after) = reader.first_at_or_after(after)? {
            hi = hi.min(first_after - 1);
        }
    }
    if lo >= hi {
        return Ok(complete);
    }

    let path = match plan::first_step(query) {
        Ok(path) => path,
        Err(pattern) => plan::choose(candidates(reader, pattern), head, limit),
    };
    let mut budget = ScanBudget::new(budget);
    let range = (lo, hi, limit);
    let (events, ended) = match path {
        Path::Correlation => {
            let id = query.correlation_id.expect("correlation path needs an id");
            by_key(reader, Key::Correlation(id), query, range, &mut budget)?
        }
        Path::Aggregate => {
            let kind = query.aggregate_type.as_deref().expect("aggregate path");
            let id = query.aggregate_id.as_deref().expect("aggregate path");
            by_key(reader, Key::Aggregate(kind, id), query, range, &mut budget)?
        }
        Path::Subjects(subjects) => by_subjects(reader, &subjects, query, range)?,
        Path::Scan => by_scan(reader, query, range, &mut budget)?,
    };
    let scanned_to = match ended {
        Ended::Exhausted => complete.scanned_to,
        Ended::StoppedAfter(seq) => seq,
    };
    Ok(Page { events, scanned_to })
}

/// The stored subjects that can match `pattern`, with their event counts.
fn candidates(reader: &EventReader, pattern: &Pattern) -> Option<(Vec<String>, u64)> {
    use std::ops::Bound;
    let range = plan::candidate_range(pattern);
    let (from, to) = match &range {
        Some((lower, upper)) => (
            Bound::Included(lower.as_str()),
            Bound::Excluded(upper.as_str()),
        ),
        None => (Bound::Unbounded, Bound::Unbounded),
    };
    let rows = reader
        .subjects(from, to)
        .into_iter()
        .map(|(subject, stats)| Ok::<_, std::convert::Infallible>((subject, stats.events)));
    match plan::candidates(pattern, rows) {
        Ok(candidates) => candidates,
        Err(never) => match never {},
    }
}

/// The events with `key` in `(lo, hi]`, filtered, up to `limit`, under the budget.
fn by_key(
    reader: &EventReader,
    key: Key<'_>,
    query: &Query,
    (lo, hi, limit): (Seq, Seq, usize),
    budget: &mut ScanBudget,
) -> Result<(Vec<Event>, Ended)> {
    let mut out = Vec::new();
    let mut from = lo + 1;
    loop {
        let seqs = reader.seqs(key, from, SCAN_CHUNK)?;
        let Some(&last) = seqs.last() else {
            return Ok((out, Ended::Exhausted));
        };
        for seq in seqs {
            if seq > hi {
                return Ok((out, Ended::Exhausted));
            }
            let Some(event) = stored(reader, seq)? else {
                continue;
            };
            if let Some(ended) = plan::offer(query, limit, budget, &mut out, event) {
                return Ok((out, ended));
            }
        }
        from = last + 1;
    }
}

/// The first `limit` seqs in `(lo, hi]` of any of `subjects`, merged, read and filtered.
fn by_subjects(
    reader: &EventReader,
    subjects: &[String],
    query: &Query,
    (lo, hi, limit): (Seq, Seq, usize),
) -> Result<(Vec<Event>, Ended)> {
    let mut seqs = Vec::new();
    for subject in subjects {
        seqs.extend(
            reader
                .seqs(Key::Subject(subject), lo + 1, limit)?
                .into_iter()
                .filter(|&seq| seq <= hi),
        );
    }
    seqs.sort_unstable();
    seqs.truncate(limit);
    let ended = plan::merge_ended(&seqs, limit);
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let Some(event) = stored(reader, seq)? else {
            continue;
        };
        if accepts(query, &event) {
            out.push(event);
        }
    }
    Ok((out, ended))
}

/// The log in seq order from `lo`, filtered, up to `limit`, under the budget.
fn by_scan(
    reader: &EventReader,
    query: &Query,
    (lo, hi, limit): (Seq, Seq, usize),
    budget: &mut ScanBudget,
) -> Result<(Vec<Event>, Ended)> {
    let mut out = Vec::new();
    let mut from = lo + 1;
    // Every event read is decoded: read what is still wanted first (a dense pattern
    // finds it there), then in chunks; with nothing to filter, only what is wanted.
    let unfiltered = query
        .subject
        .as_ref()
        .is_none_or(|p| p.matches_everything())
        && query.since.is_none()
        && query.until.is_none()
        && query.payload_contains.is_none();
    let mut first = true;
    while from <= hi {
        let wanted = if unfiltered || first {
            limit - out.len()
        } else {
            SCAN_CHUNK
        };
        first = false;
        let chunk = wanted.min((hi - from + 1) as usize);
        let (events, last_read) = reader.read(from, chunk)?;
        let Some(last) = last_read else {
            break;
        };
        for event in events {
            if event.seq > hi {
                return Ok((out, Ended::Exhausted));
            }
            if let Some(ended) = plan::offer(query, limit, budget, &mut out, event) {
                return Ok((out, ended));
            }
        }
        from = last + 1;
    }
    Ok((out, Ended::Exhausted))
}

/// An event a posting names: below the head, so it is in the log, unless retention
/// deleted it since the postings were read (`None`).
fn stored(reader: &EventReader, seq: Seq) -> Result<Option<Event>> {
    match reader.event(seq)? {
        Some(event) => Ok(Some(event)),
        None if reader.was_deleted(seq) => Ok(None),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the postings name seq {seq}, which is not in the log"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{EmbeddedOptions, EmbeddedStore};
    use crate::event_log::{EventLog, EventLogOptions};
    use crate::segment::SegmentOptions;
    use crate::Store;
    use herald_core::{AggregateEvent, NewEvent, Origin, Payload, Subject};
    use uuid::Uuid;

    const BUDGET: usize = 60;

    fn new_event(n: u64) -> NewEvent {
        let subjects = [
            "hub.a.created",
            "hub.a.deleted",
            "hub.b.created",
            "ops.x.y",
            "hub.c.d.e",
        ];
        let subject = if n.is_multiple_of(11) {
            format!("hub.many.s{}", n % 37)
        } else {
            subjects[(n % 5) as usize].to_owned()
        };
        let mut event = NewEvent::new(
            Subject::new(subject).unwrap(),
            Payload::from_json(format!("{{\"n\":{n},\"tag\":\"t{}\"}}", n % 9)).unwrap(),
            Origin {
                hub_id: "hub-1".into(),
                service: None,
                user: None,
            },
            Some(Uuid::from_u128(u128::from(n / 10) + 1)),
        );
        if n.is_multiple_of(6) {
            event.aggregate = Some(Box::new(AggregateEvent {
                aggregate_type: "order".into(),
                aggregate_id: format!("o-{}", n % 4),
                version: n / 24 + 1,
                event_type: "order.placed".into(),
                metadata: None,
            }));
        }
        event
    }

    fn queries(events: &[Event]) -> Vec<Query> {
        let mut out = Vec::new();
        let patterns = [
            None,
            Some("hub.>"),
            Some("hub.*.created"),
            Some("hub.a.>"),
            Some("hub.a.created"),
            Some("hub.many.*"),
            Some("*.x.>"),
            Some("*.nomatch.>"),
            Some("nomatch"),
        ];
        let head = events.len() as u64;
        for pattern in patterns {
            for after_seq in [0, 1, head / 3, head - 5, head, head + 10] {
                for limit in [1, 7, 100] {
                    out.push(Query {
                        subject: pattern.map(|p| Pattern::parse_filter(p).unwrap()),
                        after_seq,
                        limit,
                        ..Query::default()
                    });
                }
            }
        }
        let times: Vec<Timestamp> = events.iter().map(|e| e.timestamp).collect();
        for (since, until) in [
            (Some(times[10]), None),
            (None, Some(times[200])),
            (Some(times[50]), Some(times[51])),
            (
                Some(Timestamp::from_micros(times[0].as_micros() - 5)),
                Some(times[299]),
            ),
            (
                Some(Timestamp::from_micros(times[299].as_micros() + 5)),
                None,
            ),
        ] {
            for pattern in [None, Some("hub.a.>")] {
                out.push(Query {
                    subject: pattern.map(|p| Pattern::parse_filter(p).unwrap()),
                    since,
                    until,
                    limit: 50,
                    ..Query::default()
                });
            }
        }
        for correlation in [1u128, 7, 31, 999] {
            out.push(Query {
                correlation_id: Some(Uuid::from_u128(correlation)),
                limit: 5,
                ..Query::default()
            });
        }
        for (kind, id) in [
            ("order", "o-0"),
            ("order", "o-2"),
            ("order", "o-1"),
            ("nope", "o-0"),
        ] {
            out.push(Query {
                aggregate_type: Some(kind.into()),
                aggregate_id: Some(id.into()),
                after_seq: 13,
                limit: 9,
                ..Query::default()
            });
        }
        for text in ["\"t3\"", "nothing"] {
            out.push(Query {
                payload_contains: Some(text.into()),
                limit: 20,
                ..Query::default()
            });
        }
        out
    }

    /// The same events in the SQLite store and in the log: every query answers the same
    /// page, with the same `scanned_to`, on every path (correlation, aggregate, subjects,
    /// scans under the budget, time bounds).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_agree_with_the_sqlite_store() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions {
            query_scan_budget: BUDGET,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open(dir.path().join("herald.db"), options)
            .await
            .unwrap();
        let log_options = EventLogOptions {
            segments: SegmentOptions {
                segment_bytes: 8192,
                ..SegmentOptions::default()
            },
            flush_every: 150,
        };
        let (mut log, _) = EventLog::open(&dir.path().join("log"), log_options).unwrap();
        let mut all = Vec::new();
        let mut n = 0;
        for batch in 0..70u64 {
            let news: Vec<NewEvent> = (0..batch % 9 + 1)
                .map(|_| {
                    n += 1;
                    new_event(n)
                })
                .collect();
            let events: Vec<Event> = store
                .append(news)
                .await
                .unwrap()
                .into_iter()
                .map(|a| a.into_event())
                .collect();
            log.append(&events).unwrap();
            all.extend(events);
        }
        assert!(all.len() >= 300, "{} events", all.len());
        let reader = log.reader();
        for query in queries(&all) {
            let want = store.query(query.clone()).await.unwrap();
            let got = run(&reader, &query, BUDGET).unwrap();
            let seqs = |page: &Page| page.events.iter().map(|e| e.seq).collect::<Vec<_>>();
            assert_eq!(
                (seqs(&got), got.scanned_to),
                (seqs(&want), want.scanned_to),
                "{query:?}"
            );
            assert_eq!(got.events, want.events, "{query:?}");
        }
    }
}
