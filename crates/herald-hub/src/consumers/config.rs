//! A consumer's settings, their defaults and their bounds.

use herald_core::{Pattern, Seq, Timestamp};
use herald_store::{Backoff, DeliveryPolicy};
use serde::{Deserialize, Serialize};

/// Longest consumer name.
pub const MAX_NAME_LEN: usize = 128;
/// Most filter patterns per consumer.
pub const MAX_FILTERS: usize = 16;
/// Longest ack wait, and longest backoff step: one day.
pub const MAX_DELAY_MS: u64 = 86_400_000;
/// Shortest ack wait.
pub const MIN_ACK_WAIT_MS: u64 = 10;
/// Most steps of a backoff schedule.
pub const MAX_BACKOFF_STEPS: usize = 64;
/// Largest `max_ack_pending`.
pub const MAX_ACK_PENDING: u32 = 100_000;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;

/// Where a new consumer starts in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverPolicy {
    /// From the first event.
    All,
    /// From the first event committed after the consumer was created.
    New,
    /// From this seq (inclusive).
    ByStartSeq { opt_start_seq: Seq },
    /// From the first event committed at or after this time.
    ByStartTime { opt_start_time: Timestamp },
}

/// A consumer's settings as given, defaults filled in. Filters and start are fixed at
/// creation; the rest may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    pub filter_subjects: Vec<Pattern>,
    pub deliver_policy: DeliverPolicy,
    pub ack_wait_ms: u64,
    /// `None`: unlimited (`-1` on the wire).
    pub max_deliver: Option<u32>,
    /// `None`: 1 s doubling to 5 min, with jitter.
    pub backoff_ms: Option<Vec<u64>>,
    pub max_ack_pending: u32,
    pub description: Option<String>,
}

impl ConsumerConfig {
    pub const DEFAULT_ACK_WAIT_MS: u64 = 30_000;
    pub const DEFAULT_MAX_DELIVER: u32 = 5;
    pub const DEFAULT_MAX_ACK_PENDING: u32 = 1000;

    /// A consumer of `filters` from the start of the log, with every default.
    pub fn new(filters: Vec<Pattern>) -> Self {
        ConsumerConfig {
            filter_subjects: filters,
            deliver_policy: DeliverPolicy::All,
            ack_wait_ms: Self::DEFAULT_ACK_WAIT_MS,
            max_deliver: Some(Self::DEFAULT_MAX_DELIVER),
            backoff_ms: None,
            max_ack_pending: Self::DEFAULT_MAX_ACK_PENDING,
            description: None,
        }
    }

    /// Checks every bound; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidConsumer> {
        let invalid =
            |field: &'static str, message: String| Err(InvalidConsumer { field, message });
        if self.filter_subjects.is_empty() {
            return invalid(
                "filter_subjects",
                "at least one subject pattern is needed".into(),
            );
        }
        if self.filter_subjects.len() > MAX_FILTERS {
            return invalid(
                "filter_subjects",
                format!("at most {MAX_FILTERS} subject patterns"),
            );
        }
        if !(MIN_ACK_WAIT_MS..=MAX_DELAY_MS).contains(&self.ack_wait_ms) {
            return invalid(
                "ack_wait_ms",
                format!("must be between {MIN_ACK_WAIT_MS} and {MAX_DELAY_MS}"),
            );
        }
        if self.max_deliver == Some(0) {
            return invalid("max_deliver", "must be -1 (unlimited) or at least 1".into());
        }
        if let Some(steps) = &self.backoff_ms {
            if steps.is_empty() || steps.len() > MAX_BACKOFF_STEPS {
                return invalid(
                    "backoff_ms",
                    format!("must hold 1 to {MAX_BACKOFF_STEPS} delays"),
                );
            }
            if steps.iter().any(|&d| d > MAX_DELAY_MS) {
                return invalid(
                    "backoff_ms",
                    format!("each delay must be at most {MAX_DELAY_MS} ms"),
                );
            }
        }
        if !(1..=MAX_ACK_PENDING).contains(&self.max_ack_pending) {
            return invalid(
                "max_ack_pending",
                format!("must be between 1 and {MAX_ACK_PENDING}"),
            );
        }
        if let DeliverPolicy::ByStartSeq { opt_start_seq: 0 } = self.deliver_policy {
            return invalid("opt_start_seq", "seqs start at 1".into());
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS)
        {
            return invalid(
                "description",
                format!("at most {MAX_DESCRIPTION_CHARS} characters"),
            );
        }
        Ok(())
    }

    /// The first field that cannot change on an existing consumer and differs, if any.
    pub fn immutable_difference(&self, other: &ConsumerConfig) -> Option<&'static str> {
        if self.filter_subjects != other.filter_subjects {
            return Some("filter_subjects");
        }
        if self.deliver_policy != other.deliver_policy {
            return Some(match (&self.deliver_policy, &other.deliver_policy) {
                (DeliverPolicy::ByStartSeq { .. }, DeliverPolicy::ByStartSeq { .. }) => {
                    "opt_start_seq"
                }
                (DeliverPolicy::ByStartTime { .. }, DeliverPolicy::ByStartTime { .. }) => {
                    "opt_start_time"
                }
                _ => "deliver_policy",
            });
        }
        None
    }

    /// What the store enforces.
    pub(crate) fn policy(&self) -> DeliveryPolicy {
        DeliveryPolicy {
            ack_wait_ms: self.ack_wait_ms,
            max_deliver: self.max_deliver,
            backoff: match &self.backoff_ms {
                Some(steps) => Backoff::Schedule(steps.clone()),
                None => Backoff::Exponential,
            },
            max_ack_pending: self.max_ack_pending,
        }
    }
}

/// The stored form of a [`ConsumerConfig`] (the store's `meta`): plain values, so that
/// it reads back whatever the wire shape becomes.
#[derive(Serialize, Deserialize)]
struct Stored {
    filter_subjects: Vec<String>,
    deliver_policy: String,
    opt_start_seq: Option<Seq>,
    opt_start_time_us: Option<i64>,
    ack_wait_ms: u64,
    max_deliver: Option<u32>,
    backoff_ms: Option<Vec<u64>>,
    max_ack_pending: u32,
    description: Option<String>,
}

impl ConsumerConfig {
    pub(crate) fn to_stored(&self) -> String {
        let (deliver_policy, opt_start_seq, opt_start_time_us) = match &self.deliver_policy {
            DeliverPolicy::All => ("all", None, None),
            DeliverPolicy::New => ("new", None, None),
            DeliverPolicy::ByStartSeq { opt_start_seq } => {
                ("by_start_seq", Some(*opt_start_seq), None)
            }
            DeliverPolicy::ByStartTime { opt_start_time } => {
                ("by_start_time", None, Some(opt_start_time.as_micros()))
            }
        };
        serde_json::to_string(&Stored {
            filter_subjects: self
                .filter_subjects
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            deliver_policy: deliver_policy.into(),
            opt_start_seq,
            opt_start_time_us,
            ack_wait_ms: self.ack_wait_ms,
            max_deliver: self.max_deliver,
            backoff_ms: self.backoff_ms.clone(),
            max_ack_pending: self.max_ack_pending,
            description: self.description.clone(),
        })
        .expect("plain values serialize")
    }

    pub(crate) fn from_stored(text: &str) -> Result<Self, String> {
        let stored: Stored = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let deliver_policy = match (
            stored.deliver_policy.as_str(),
            stored.opt_start_seq,
            stored.opt_start_time_us,
        ) {
            ("all", _, _) => DeliverPolicy::All,
            ("new", _, _) => DeliverPolicy::New,
            ("by_start_seq", Some(opt_start_seq), _) => DeliverPolicy::ByStartSeq { opt_start_seq },
            ("by_start_time", _, Some(us)) => DeliverPolicy::ByStartTime {
                opt_start_time: Timestamp::from_micros(us),
            },
            (other, _, _) => return Err(format!("unknown deliver policy {other:?}")),
        };
        let filter_subjects = stored
            .filter_subjects
            .iter()
            .map(|f| Pattern::parse_filter(f).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(ConsumerConfig {
            filter_subjects,
            deliver_policy,
            ack_wait_ms: stored.ack_wait_ms,
            max_deliver: stored.max_deliver,
            backoff_ms: stored.backoff_ms,
            max_ack_pending: stored.max_ack_pending,
            description: stored.description,
        })
    }
}

/// Whether `name` may name a consumer: 1 to 128 ASCII letters, digits, `-` and `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `name` is a consumer clients may reach as stored: a [`valid_name`], or a
/// tenant's `<tenant>:<name>` (see [`crate::access`]). The hub's own consumers
/// (`rule:<id>`) are not.
pub fn is_user_name(name: &str) -> bool {
    match name.split_once(':') {
        None => valid_name(name),
        Some((tenant, own)) => crate::access::valid_tenant_id(tenant) && valid_name(own),
    }
}

/// A setting out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidConsumer {
    pub field: &'static str,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConsumerConfig {
        ConsumerConfig::new(vec![Pattern::parse_filter("hub.>").unwrap()])
    }

    #[test]
    fn defaults_are_valid_and_bounds_name_their_field() {
        assert_eq!(config().validate(), Ok(()));
        let field = |c: ConsumerConfig| c.validate().unwrap_err().field;
        assert_eq!(field(ConsumerConfig::new(vec![])), "filter_subjects");
        assert_eq!(
            field(ConsumerConfig {
                ack_wait_ms: 0,
                ..config()
            }),
            "ack_wait_ms"
        );
        assert_eq!(
            field(ConsumerConfig {
                max_deliver: Some(0),
                ..config()
            }),
            "max_deliver"
        );
        assert_eq!(
            field(ConsumerConfig {
                backoff_ms: Some(vec![]),
                ..config()
            }),
            "backoff_ms"
        );
        assert_eq!(
            field(ConsumerConfig {
                backoff_ms: Some(vec![MAX_DELAY_MS + 1]),
                ..config()
            }),
            "backoff_ms"
        );
        assert_eq!(
            field(ConsumerConfig {
                max_ack_pending: 0,
                ..config()
            }),
            "max_ack_pending"
        );
        assert_eq!(
            field(ConsumerConfig {
                deliver_policy: DeliverPolicy::ByStartSeq { opt_start_seq: 0 },
                ..config()
            }),
            "opt_start_seq"
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("orders-worker_1"));
        assert!(valid_name(&"a".repeat(128)));
        for bad in ["", "a.b", "a b", "é", "a/b", &"a".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn stored_form_round_trips() {
        let c = ConsumerConfig {
            deliver_policy: DeliverPolicy::ByStartTime {
                opt_start_time: Timestamp::from_micros(1_700_000_000_000_000),
            },
            backoff_ms: Some(vec![1, 2]),
            max_deliver: None,
            description: Some("d".into()),
            ..config()
        };
        assert_eq!(ConsumerConfig::from_stored(&c.to_stored()).unwrap(), c);
    }
}
