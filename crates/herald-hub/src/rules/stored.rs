//! How a durable rule is kept in the store: `StoredRule.body` is this JSON (the
//! webhook's secret included: the hub needs it to sign).
//!
//! ```json
//! {"subject_pattern": "hub.*.project.>", "enabled": true, "description": null,
//!  "created_at": "2025-11-05T12:00:00.000000Z",
//!  "action": {"type": "webhook", "url": "https://…", "secret": "whsec_…",
//!             "timeout_ms": 5000, "max_attempts": 5,
//!             "circuit_breaker": {"failure_threshold": 5, "cool_down_ms": 30000,
//!                                 "max_cool_down_ms": 300000}}}
//! ```
//!
//! `circuit_breaker` may be absent (rules stored before it existed): the defaults apply.

use std::time::Duration;

use herald_core::{Pattern, Subject, Timestamp};
use herald_store::StoredRule;
use serde::{Deserialize, Serialize};

use super::{Action, CircuitBreaker, RuleError, RuleId, RuleSpec, Webhook};

#[derive(Serialize, Deserialize)]
struct Body {
    subject_pattern: String,
    action: ActionBody,
    enabled: bool,
    description: Option<String>,
    created_at: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ActionBody {
    Webhook {
        url: String,
        secret: Option<String>,
        timeout_ms: u64,
        max_attempts: u32,
        #[serde(default)]
        circuit_breaker: Option<BreakerBody>,
    },
    Republish {
        subject: String,
    },
}

#[derive(Serialize, Deserialize)]
struct BreakerBody {
    failure_threshold: u32,
    cool_down_ms: u64,
    max_cool_down_ms: u64,
}

pub(super) fn encode(spec: &RuleSpec, created_at: Timestamp) -> String {
    let action = match &spec.action {
        Action::Webhook(webhook) => ActionBody::Webhook {
            url: webhook.url().to_owned(),
            secret: webhook.secret_text().map(str::to_owned),
            timeout_ms: webhook.timeout().as_millis() as u64,
            max_attempts: webhook.max_attempts(),
            circuit_breaker: Some(BreakerBody {
                failure_threshold: webhook.circuit_breaker().failure_threshold(),
                cool_down_ms: webhook.circuit_breaker().cool_down().as_millis() as u64,
                max_cool_down_ms: webhook.circuit_breaker().max_cool_down().as_millis() as u64,
            }),
        },
        Action::Republish { subject } => ActionBody::Republish {
            subject: subject.to_string(),
        },
    };
    let body = Body {
        subject_pattern: spec.subject_pattern.to_string(),
        action,
        enabled: spec.enabled,
        description: spec.description.clone(),
        created_at: created_at.to_rfc3339(),
    };
    serde_json::to_string(&body).expect("a rule serializes")
}

/// Why a stored rule cannot be read back.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("the rule's body is not the expected JSON: {0}")]
    Body(#[from] serde_json::Error),
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Subject(#[from] herald_core::SubjectError),
    #[error(transparent)]
    Timestamp(#[from] herald_core::TimestampError),
}

/// The spec (with its id) and creation time of a stored rule.
pub(super) fn decode(rule: &StoredRule) -> Result<(RuleSpec, Timestamp), DecodeError> {
    let body: Body = serde_json::from_str(&rule.body)?;
    let action = match body.action {
        ActionBody::Webhook {
            url,
            secret,
            timeout_ms,
            max_attempts,
            circuit_breaker,
        } => {
            let breaker = match circuit_breaker {
                Some(b) => CircuitBreaker::new(
                    b.failure_threshold,
                    Duration::from_millis(b.cool_down_ms),
                    Duration::from_millis(b.max_cool_down_ms),
                )?,
                None => CircuitBreaker::default(),
            };
            let mut webhook = Webhook::new(&url)
                .and_then(|w| w.with_timeout(Duration::from_millis(timeout_ms)))
                .and_then(|w| w.with_max_attempts(max_attempts))?
                .with_circuit_breaker(breaker);
            if let Some(secret) = secret {
                webhook = webhook.with_secret(&secret)?;
            }
            Action::Webhook(webhook)
        }
        ActionBody::Republish { subject } => Action::Republish {
            subject: Subject::new(subject)?,
        },
    };
    let spec = RuleSpec {
        id: Some(RuleId::new(rule.id.clone())?),
        subject_pattern: Pattern::parse(&body.subject_pattern)?,
        action,
        enabled: body.enabled,
        description: body.description,
    };
    let created_at = Timestamp::parse(&body.created_at)?;
    Ok((spec, created_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let webhook = Webhook::new("https://example.com/hook?x=1")
            .unwrap()
            .with_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap()
            .with_timeout(Duration::from_millis(1500))
            .unwrap()
            .with_max_attempts(3)
            .unwrap()
            .with_circuit_breaker(
                CircuitBreaker::new(7, Duration::from_millis(250), Duration::from_secs(9)).unwrap(),
            );
        let created = Timestamp::from_micros(1_700_000_000_000_000);
        for action in [
            Action::Webhook(webhook),
            Action::Republish {
                subject: Subject::new("audit.copy").unwrap(),
            },
        ] {
            let spec = RuleSpec {
                id: Some(RuleId::new("r-1").unwrap()),
                subject_pattern: Pattern::parse("hub.*.project.>").unwrap(),
                action,
                enabled: false,
                description: Some("d".into()),
            };
            let stored = StoredRule {
                id: "r-1".into(),
                body: encode(&spec, created),
            };
            assert_eq!(decode(&stored).unwrap(), (spec, created));
        }
        // A rule stored before breakers existed gets the default one.
        let old = StoredRule {
            id: "old".into(),
            body: r#"{"subject_pattern": "hub.>", "enabled": true, "description": null,
                "created_at": "2025-11-05T12:00:00.000000Z",
                "action": {"type": "webhook", "url": "https://example.com/", "secret": null,
                           "timeout_ms": 5000, "max_attempts": 5}}"#
                .into(),
        };
        let (spec, _) = decode(&old).unwrap();
        let Action::Webhook(webhook) = spec.action else {
            panic!("a webhook")
        };
        assert_eq!(webhook.circuit_breaker(), CircuitBreaker::default());
        let bad = StoredRule {
            id: "r".into(),
            body: "{}".into(),
        };
        assert!(decode(&bad).is_err());
    }
}
