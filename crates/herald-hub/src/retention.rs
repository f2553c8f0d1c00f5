//! Retention policies: which events the log keeps (see `herald_store::retention` for
//! how a pass decides). The policies are kept in the store as one setting, so that every
//! instance sharing it applies the same ones; a background service reloads them and runs
//! passes, oldest events first, a bounded batch per transaction.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_core::{Pattern, Timestamp};
use herald_store::{RetentionPolicy, Store};
use serde::{Deserialize, Serialize};

use crate::{Hub, HubError, Inner};

/// The store setting that holds the policies (JSON, [`PolicySpec`]s).
const SETTING: &str = "retention";
/// The largest `max_events` or `max_bytes` (2^53 - 1: exact in every JSON reader).
pub const MAX_LIMIT: u64 = 9_007_199_254_740_991;
/// Most policies.
pub const MAX_POLICIES: usize = 100;
/// Events deleted per transaction.
const PASS_BUDGET: usize = 2_000;
/// Passes per round before the service lets others write for a while.
const PASSES_PER_ROUND: usize = 50;

/// One policy as written in the API and in configuration. Seed 004's stream settings
/// are accepted under their names (`MAX_AGE`, `MAX_MSGS`, `MAX_BYTES`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The subjects it governs (a pattern); an event belongs to the first policy whose
    /// pattern matches its subject.
    pub subjects: String,
    /// Keep events at most this old: seconds, or `30d`, `12h`, `15m`, `45s`, `2w`.
    #[serde(default, alias = "MAX_AGE", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<AgeSpec>,
    #[serde(
        default,
        alias = "MAX_MSGS",
        alias = "max_msgs",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_events: Option<u64>,
    /// Payload bytes.
    #[serde(default, alias = "MAX_BYTES", skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Delete aggregates' events too. By default they are kept (and still count
    /// towards `max_events` and `max_bytes`): an event-sourced stream must not be cut by
    /// a policy meant for telemetry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_aggregates: bool,
}

/// A maximum age: whole seconds, or a number with a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgeSpec {
    Seconds(u64),
    Text(String),
}

impl AgeSpec {
    pub fn duration(&self) -> Result<Duration, String> {
        match self {
            AgeSpec::Seconds(s) => Ok(Duration::from_secs(*s)),
            AgeSpec::Text(text) => parse_age(text),
        }
    }
}

/// `30d`, `12h`, `15m`, `45s`, `2w`, or whole seconds.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("max_age {text:?} is not a duration such as 30d, 12h, 15m, 45s or 2w");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

impl PolicySpec {
    /// The policy the store applies, or what is wrong with this one.
    pub fn to_policy(&self) -> Result<RetentionPolicy, String> {
        let subjects = Pattern::parse_filter(&self.subjects)
            .map_err(|e| format!("subjects {:?}: {e}", self.subjects))?;
        if let Some(AgeSpec::Seconds(seconds)) = self.max_age {
            if seconds > MAX_LIMIT {
                return Err(format!("max_age must be at most {MAX_LIMIT} seconds"));
            }
        }
        let max_age = self.max_age.as_ref().map(AgeSpec::duration).transpose()?;
        if max_age.is_some_and(|age| age.is_zero()) {
            return Err("max_age must be more than 0".into());
        }
        for (name, value) in [
            ("max_events", self.max_events),
            ("max_bytes", self.max_bytes),
        ] {
            if value.is_some_and(|v| v > MAX_LIMIT) {
                return Err(format!("{name} must be at most {MAX_LIMIT}"));
            }
        }
        Ok(RetentionPolicy {
            subjects,
            max_age,
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            include_aggregates: self.include_aggregates,
        })
    }
}

/// Why a list of policies was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("{0}")]
    Invalid(String),
}

/// Checks a list of policies; the store's form of each.
pub fn check(specs: &[PolicySpec]) -> Result<Vec<RetentionPolicy>, RetentionError> {
    if specs.len() > MAX_POLICIES {
        return Err(RetentionError::Invalid(format!(
            "at most {MAX_POLICIES} policies, not {}",
            specs.len()
        )));
    }
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            spec.to_policy()
                .map_err(|e| RetentionError::Invalid(format!("policies[{i}]: {e}")))
        })
        .collect()
}

/// The policies in force on this instance.
#[derive(Default)]
pub(crate) struct Policies {
    current: RwLock<Arc<(Vec<PolicySpec>, Vec<RetentionPolicy>)>>,
}

impl Policies {
    fn get(&self) -> Arc<(Vec<PolicySpec>, Vec<RetentionPolicy>)> {
        self.current.read().expect("retention lock").clone()
    }

    fn set(&self, specs: Vec<PolicySpec>, policies: Vec<RetentionPolicy>) {
        *self.current.write().expect("retention lock") = Arc::new((specs, policies));
    }

    /// Reads the policies the store keeps (another instance may have changed them).
    pub(crate) async fn reload(&self, store: &impl Store) -> Result<(), HubError> {
        let Some(text) = store.load_setting(SETTING).await? else {
            return Ok(());
        };
        let specs: Vec<PolicySpec> = serde_json::from_str(&text)
            .map_err(|e| HubError::Internal(format!("stored retention policies: {e}")))?;
        let policies = check(&specs).map_err(|e| HubError::Internal(e.to_string()))?;
        self.set(specs, policies);
        Ok(())
    }
}

impl Hub {
    /// The retention policies in force.
    pub fn retention(&self) -> Vec<PolicySpec> {
        self.inner.retention.get().0.clone()
    }

    /// Replaces the retention policies: kept in the store, in force here at once and on
    /// other instances sharing the store within their next round.
    pub async fn set_retention(&self, specs: Vec<PolicySpec>) -> Result<(), RetentionError> {
        let policies = check(&specs)?;
        let text = serde_json::to_string(&specs).expect("policies serialize");
        self.inner
            .store
            .save_setting(SETTING, text)
            .await
            .map_err(HubError::from)?;
        self.inner.retention.set(specs, policies);
        self.inner.retention_wake.notify_one();
        Ok(())
    }
}

/// The background service: every `interval` (or at once after a change), reloads the
/// policies and deletes what they no longer keep.
pub(crate) async fn run(inner: Arc<Inner>, interval: Duration) {
    loop {
        tokio::select! {
            () = inner.shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = inner.retention_wake.notified() => {}
        }
        if let Err(error) = inner.retention.reload(&inner.store).await {
            tracing::warn!(%error, "Cannot reload the retention policies; keeping the last ones read.");
        }
        let policies = inner.retention.get().1.clone();
        if policies.iter().all(|p| !p.limits()) {
            continue;
        }
        for _ in 0..PASSES_PER_ROUND {
            if inner.shutdown.is_cancelled() {
                return;
            }
            match inner
                .store
                .enforce_retention(policies.clone(), Timestamp::now(), PASS_BUDGET)
                .await
            {
                Ok(pass) => {
                    metrics::counter!("herald_retention_deleted_events_total")
                        .increment(pass.deleted_events);
                    metrics::counter!("herald_retention_deleted_bytes_total")
                        .increment(pass.deleted_bytes);
                    if pass.deleted_events > 0 {
                        tracing::debug!(
                            events = pass.deleted_events,
                            bytes = pass.deleted_bytes,
                            "Retention deleted events."
                        );
                    }
                    if !pass.more {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "A retention pass failed; retrying next round.");
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_seed_names() {
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(43_200));
        assert!(parse_age("3 fortnights").is_err());
        assert!(parse_age("").is_err());
        let spec: PolicySpec = serde_json::from_str(
            r#"{"subjects": "hub.*.metrics.>", "MAX_AGE": "7d", "MAX_MSGS": 1000, "MAX_BYTES": 1048576}"#,
        )
        .unwrap();
        let policy = spec.to_policy().unwrap();
        assert_eq!(policy.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(
            (policy.max_events, policy.max_bytes),
            (Some(1000), Some(1_048_576))
        );
        assert!(!policy.include_aggregates);
        assert!(serde_json::from_str::<PolicySpec>(r#"{"subjects": "a", "max_agee": 1}"#).is_err());
        assert!(check(&[PolicySpec {
            subjects: "hub.>.x".into(),
            max_age: None,
            max_events: Some(1),
            max_bytes: None,
            include_aggregates: false,
        }])
        .is_err());
    }
}
