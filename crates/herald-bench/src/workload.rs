//! The events the benchmark publishes: subjects, ~300-byte request bodies, and the
//! query patterns used against the filled store.
//!
//! Subjects are `hub.bench.<domain>.<action>` over 8 domains × 4 actions (32 distinct
//! subjects), plus a rare `hub.bench.audit.login` (one event in 1,000 during the fill)
//! so that a sparse pattern can be queried too.

use bytes::Bytes;
use serde_json::json;

pub const DOMAINS: [&str; 8] = [
    "orders",
    "users",
    "payments",
    "invoices",
    "shipments",
    "inventory",
    "carts",
    "reviews",
];
pub const ACTIONS: [&str; 4] = ["created", "updated", "deleted", "archived"];

/// The subject published once every [`RARE_EVERY`] events during the store fill.
pub const RARE_SUBJECT: &str = "hub.bench.audit.login";
pub const RARE_EVERY: u64 = 1_000;

/// The pattern every benchmark event matches (what the WebSocket client subscribes to).
pub const ALL_BENCH_EVENTS: &str = "hub.bench.>";

/// Number of distinct regular subjects.
pub const SUBJECT_COUNT: usize = DOMAINS.len() * ACTIONS.len();

/// The `n`-th regular subject (wrapping), spreading consecutive events over domains
/// and actions.
pub fn subject(n: u64) -> String {
    let n = n as usize % SUBJECT_COUNT;
    format!(
        "hub.bench.{}.{}",
        DOMAINS[n % DOMAINS.len()],
        ACTIONS[n / DOMAINS.len()]
    )
}

/// A `POST /api/events:batch` body, `{"events":[...]}`, of publish bodies.
pub fn batch_body<B: AsRef<[u8]>>(bodies: impl IntoIterator<Item = B>) -> Bytes {
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(br#"{"events":["#);
    for (i, body) in bodies.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(body.as_ref());
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// Pads a payload so the whole request body is about 300 bytes.
const PAD: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor \
    incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation \
    ullamco laboris nisi ut aliquip ex ea commodo consequat";

/// A publish body of about 300 bytes (payload ~250 bytes) for event `n` on `subject`.
pub fn publish_body(subject: &str, n: u64) -> Bytes {
    let body = json!({
        "subject": subject,
        "payload": {
            "id": n,
            "customer": format!("cust-{:06}", n % 1_000_000),
            "amount_cents": (n * 7919) % 100_000,
            "currency": "EUR",
            "items": [{"sku": format!("sku-{:04}", n % 9973), "qty": 1 + n % 5}],
            "note": &PAD[..126 + (n % 8) as usize],
        }
    });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
}

/// The body of the `n`-th event of the store fill: regular subjects, except the rare
/// one every [`RARE_EVERY`] events.
pub fn fill_body(n: u64) -> Bytes {
    if n % RARE_EVERY == 0 {
        publish_body(RARE_SUBJECT, n)
    } else {
        publish_body(&subject(n), n)
    }
}

/// `count` ready-made bodies over every regular subject, cycled by the throughput
/// scenario so the load generator never formats JSON.
pub fn body_pool(count: usize) -> Vec<Bytes> {
    (0..count as u64)
        .map(|n| publish_body(&subject(n), n))
        .collect()
}

/// A pre-built pool of fill bodies indexed by `n % RARE_EVERY`.
pub fn fill_pool() -> Vec<Bytes> {
    (0..RARE_EVERY).map(fill_body).collect()
}

/// A latency-probe body: carries its phase, index, the time it was due on the
/// schedule and the time it was sent (nanoseconds since the run's common `Instant`),
/// padded to the same ~300 bytes.
pub fn probe_body(subject: &str, phase: u8, index: u64, due_ns: u64, sent_ns: u64) -> Bytes {
    let body = json!({
        "subject": subject,
        "payload": {
            "phase": phase,
            "i": index,
            "due_ns": due_ns,
            "sent_ns": sent_ns,
            "customer": format!("cust-{:06}", index % 1_000_000),
            "currency": "EUR",
            "note": &PAD[..130],
        }
    });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
}

/// A query pattern of scenario (c).
pub struct QueryPattern {
    pub pattern: &'static str,
    pub description: &'static str,
}

pub fn query_patterns() -> Vec<QueryPattern> {
    vec![
        QueryPattern {
            pattern: "hub.bench.*.created",
            description: "one-token wildcard",
        },
        QueryPattern {
            pattern: "hub.bench.orders.>",
            description: "trailing wildcard",
        },
        QueryPattern {
            pattern: "hub.bench.orders.created",
            description: "literal subject",
        },
        QueryPattern {
            pattern: "hub.>",
            description: "everything",
        },
        QueryPattern {
            pattern: "hub.bench.audit.>",
            description: "sparse (1 in 1,000)",
        },
    ]
}

/// How many of the first `events` fill events match `pattern`.
pub fn count_fill_matches(pattern: &str, events: u64) -> u64 {
    let regular: Vec<bool> = (0..SUBJECT_COUNT as u64)
        .map(|n| pattern_matches(pattern, &subject(n)))
        .collect();
    let rare = pattern_matches(pattern, RARE_SUBJECT);
    (0..events)
        .filter(|&n| {
            if n % RARE_EVERY == 0 {
                rare
            } else {
                regular[n as usize % SUBJECT_COUNT]
            }
        })
        .count() as u64
}

/// Percent-encodes a query-string value (keeps only unreserved characters).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether a literal subject matches a NATS pattern (`*` one token, `>` the rest).
pub fn pattern_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match token {
            ">" => return subject_tokens.next().is_some(),
            "*" => {
                if subject_tokens.next().is_none() {
                    return false;
                }
            }
            literal => {
                if subject_tokens.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_about_300_bytes() {
        for n in [0, 1, 7, 999, 123_456] {
            let len = publish_body(&subject(n), n).len();
            assert!((270..=330).contains(&len), "body of {len} bytes");
        }
        let probe = probe_body(&subject(3), 1, 123_456, 9_876_543_000, 9_876_543_210);
        assert!((250..=330).contains(&probe.len()), "{}", probe.len());
    }

    #[test]
    fn subjects_cover_every_domain_and_action() {
        let distinct: std::collections::HashSet<_> = (0..64).map(subject).collect();
        assert_eq!(distinct.len(), SUBJECT_COUNT);
    }

    #[test]
    fn fill_subject_counts_each_pattern() {
        let n = 4 * RARE_EVERY;
        let expected = [
            ("hub.bench.*.created", 999),
            ("hub.bench.orders.>", 496),
            ("hub.bench.orders.created", 124),
            ("hub.>", 4_000),
            ("hub.bench.audit.>", 4),
        ];
        for (pattern, count) in expected {
            assert_eq!(count_fill_matches(pattern, n), count, "{pattern}");
        }
    }

    #[test]
    fn encodes_wildcards() {
        assert_eq!(encode_query_value("hub.bench.>"), "hub.bench.%3E");
        assert_eq!(encode_query_value("hub.*.x"), "hub.%2A.x");
    }
}
