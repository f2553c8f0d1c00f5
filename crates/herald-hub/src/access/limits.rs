//! Enforcing the [`Limits`] of tenants and keys: publish rates as token buckets (GCRA,
//! from `governor`), and open streams as counters. A caller carries the buckets and
//! counters of its key and of its tenant; both must allow.
//!
//! Buckets live as long as their quota does: reloading tenants and keys every few
//! seconds keeps each one (and what it has counted) unless its quota changed.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota};

use super::Limits;

/// A publish was refused for its rate: the details a client needs to back off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// Whose limit: `key` or `tenant`.
    pub scope: &'static str,
    /// What is counted: `events` or `bytes` (of payload).
    pub unit: &'static str,
    /// Units per second allowed.
    pub per_second: u32,
    /// Units allowed at once (the bucket's size).
    pub burst: u32,
    /// When a retry of the same request can succeed.
    pub retry_after: Duration,
}

impl std::fmt::Display for RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "over this {}'s publish rate ({} {} per second, bursts of {}); retry in {} ms",
            self.scope,
            self.per_second,
            self.unit,
            self.burst,
            self.retry_after.as_millis()
        )
    }
}

/// One publish-rate token bucket.
pub(crate) struct Bucket {
    unit: &'static str,
    per_second: u32,
    burst: u32,
    limiter: DefaultDirectRateLimiter,
    /// Until when (nanoseconds after `since`) the last refusal said the bucket is empty:
    /// lets a flood be refused before its body is parsed, without touching the bucket.
    refused_until: AtomicU64,
    since: Instant,
}

impl Bucket {
    fn new(unit: &'static str, per_second: u32, burst: u32) -> Option<Bucket> {
        let rate = NonZeroU32::new(per_second)?;
        let size = NonZeroU32::new(burst.max(1))?;
        Some(Bucket {
            unit,
            per_second,
            burst: size.get(),
            limiter: DefaultDirectRateLimiter::direct(Quota::per_second(rate).allow_burst(size)),
            refused_until: AtomicU64::new(0),
            since: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Refused for the wait a recent refusal announced, if it has not passed yet.
    fn still_refused(&self, scope: &'static str) -> Result<(), RateLimited> {
        let until = self.refused_until.load(Ordering::Acquire);
        let now = self.now();
        if now < until {
            return Err(RateLimited {
                scope,
                unit: self.unit,
                per_second: self.per_second,
                burst: self.burst,
                retry_after: Duration::from_nanos(until - now),
            });
        }
        Ok(())
    }

    /// Takes `n` tokens, or says when they will be there (all or nothing).
    fn take(&self, n: u32, scope: &'static str) -> Result<(), RateLimited> {
        let refused = |retry_after| RateLimited {
            scope,
            unit: self.unit,
            per_second: self.per_second,
            burst: self.burst,
            retry_after,
        };
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match self.limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                // Empty until one token is back, whatever this request's size.
                let one_token = Duration::from_secs_f64(1.0 / f64::from(self.per_second));
                let until = self.now().saturating_add(
                    u64::try_from(wait.min(one_token).as_nanos()).unwrap_or(u64::MAX),
                );
                self.refused_until.fetch_max(until, Ordering::AcqRel);
                Err(refused(wait))
            }
            // More than a full bucket: never in one request (the wait says how long a
            // full bucket takes, for the client's information).
            Err(_) => Err(refused(Duration::from_secs_f64(
                f64::from(self.burst) / f64::from(self.per_second),
            ))),
        }
    }
}

/// Open streams (or connections) of one key or tenant.
#[derive(Default)]
pub(crate) struct StreamCount(AtomicU32);

/// A count limit: its most and the shared count.
pub(crate) type Count = Option<(u32, Arc<StreamCount>)>;

/// The limits one caller is held to: its key's and its tenant's.
#[derive(Default)]
pub(crate) struct Enforcer {
    pub(crate) key_rate: Option<Arc<Bucket>>,
    pub(crate) tenant_rate: Option<Arc<Bucket>>,
    pub(crate) key_bytes: Option<Arc<Bucket>>,
    pub(crate) tenant_bytes: Option<Arc<Bucket>>,
    pub(crate) key_streams: Count,
    pub(crate) tenant_streams: Count,
    pub(crate) key_connections: Count,
    pub(crate) tenant_connections: Count,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer").finish_non_exhaustive()
    }
}

impl Enforcer {
    /// Takes `n` events' and `bytes` payload bytes' worth of publish rate from the key
    /// and the tenant.
    pub(crate) fn take_publish(&self, n: u32, bytes: u32) -> Result<(), RateLimited> {
        for (bucket, amount, scope) in [
            (&self.key_rate, n, "key"),
            (&self.tenant_rate, n, "tenant"),
            (&self.key_bytes, bytes, "key"),
            (&self.tenant_bytes, bytes, "tenant"),
        ] {
            if let Some(bucket) = bucket {
                bucket.take(amount, scope)?;
            }
        }
        Ok(())
    }

    /// Refuses at once while a recent refusal of the key's or tenant's bucket still holds
    /// (a cheap check before a publish's body is parsed; [`Enforcer::take_publish`] is
    /// the real one).
    pub(crate) fn publish_refused(&self) -> Result<(), RateLimited> {
        for (bucket, scope) in [
            (&self.key_rate, "key"),
            (&self.tenant_rate, "tenant"),
            (&self.key_bytes, "key"),
            (&self.tenant_bytes, "tenant"),
        ] {
            if let Some(bucket) = bucket {
                bucket.still_refused(scope)?;
            }
        }
        Ok(())
    }

    /// A slot for one more open stream, or which limit is reached.
    pub(crate) fn open_stream(&self) -> Result<StreamSlot, (&'static str, u32)> {
        claim([("key", &self.key_streams), ("tenant", &self.tenant_streams)])
    }

    /// A slot for one more connection using this key, or which limit is reached.
    pub(crate) fn open_connection(&self) -> Result<StreamSlot, (&'static str, u32)> {
        claim([
            ("key", &self.key_connections),
            ("tenant", &self.tenant_connections),
        ])
    }
}

/// Claims one unit of each count, or none (and which limit is reached).
fn claim(limits: [(&'static str, &Count); 2]) -> Result<StreamSlot, (&'static str, u32)> {
    let mut taken: Vec<Arc<StreamCount>> = Vec::new();
    for (scope, limit) in limits {
        let Some((max, count)) = limit else { continue };
        let claimed = count
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < *max).then_some(open + 1)
            })
            .is_ok();
        if !claimed {
            drop(StreamSlot(taken));
            return Err((scope, *max));
        }
        taken.push(count.clone());
    }
    Ok(StreamSlot(taken))
}

/// An open stream or connection counted against its key's and tenant's limits, until
/// dropped.
pub struct StreamSlot(Vec<Arc<StreamCount>>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        for count in &self.0 {
            count.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A bucket with the quota it was made for (events per second, burst).
type QuotaBucket = (u32, u32, Arc<Bucket>);

/// The buckets and counters of every key and tenant, kept across reloads.
#[derive(Default)]
pub(crate) struct Meters {
    rates: Mutex<HashMap<String, QuotaBucket>>,
    streams: Mutex<HashMap<String, Arc<StreamCount>>>,
}

impl Meters {
    fn rate(&self, id: String, limits: &Limits) -> Option<Arc<Bucket>> {
        let per_second = limits.publish_per_second?;
        let burst = limits.publish_burst.unwrap_or(per_second);
        self.bucket(id, "events", per_second, burst)
    }

    fn bytes(&self, id: String, limits: &Limits) -> Option<Arc<Bucket>> {
        let per_second = limits.publish_bytes_per_second?;
        self.bucket(id, "bytes", per_second, per_second)
    }

    fn bucket(
        &self,
        id: String,
        unit: &'static str,
        per_second: u32,
        burst: u32,
    ) -> Option<Arc<Bucket>> {
        let mut rates = self.rates.lock().expect("rate meters lock");
        if let Some((p, b, bucket)) = rates.get(&id) {
            if (*p, *b) == (per_second, burst) {
                return Some(bucket.clone());
            }
        }
        let bucket = Arc::new(Bucket::new(unit, per_second, burst)?);
        rates.insert(id, (per_second, burst, bucket.clone()));
        Some(bucket)
    }

    fn count(&self, id: String, max: Option<u32>) -> Count {
        let max = max?;
        let mut counts = self.streams.lock().expect("count meters lock");
        Some((max, counts.entry(id).or_default().clone()))
    }

    /// The enforcer of a key (`key_id`, `key_limits`) of a tenant (if any).
    pub(crate) fn enforcer(
        &self,
        key_id: &str,
        key_limits: &Limits,
        tenant: Option<(&str, &Limits)>,
    ) -> Enforcer {
        Enforcer {
            key_rate: self.rate(format!("key:{key_id}"), key_limits),
            tenant_rate: tenant.and_then(|(id, l)| self.rate(format!("tenant:{id}"), l)),
            key_bytes: self.bytes(format!("bytes:key:{key_id}"), key_limits),
            tenant_bytes: tenant.and_then(|(id, l)| self.bytes(format!("bytes:tenant:{id}"), l)),
            key_streams: self.count(format!("streams:key:{key_id}"), key_limits.max_streams),
            tenant_streams: tenant
                .and_then(|(id, l)| self.count(format!("streams:tenant:{id}"), l.max_streams)),
            key_connections: self.count(
                format!("connections:key:{key_id}"),
                key_limits.max_connections,
            ),
            tenant_connections: tenant.and_then(|(id, l)| {
                self.count(format!("connections:tenant:{id}"), l.max_connections)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_wait() {
        let bucket = Bucket::new("events", 10, 5).unwrap();
        for _ in 0..5 {
            bucket.take(1, "key").unwrap();
        }
        let refused = bucket.take(1, "key").unwrap_err();
        assert_eq!(refused.scope, "key");
        assert!(refused.retry_after > Duration::ZERO);
        assert!(refused.retry_after <= Duration::from_millis(100));
        // A request larger than the bucket can never pass.
        assert!(Bucket::new("events", 10, 5)
            .unwrap()
            .take(6, "key")
            .is_err());
        assert!(Bucket::new("events", 0, 5).is_none());
    }

    #[test]
    fn stream_slots_count_against_key_and_tenant_and_free_on_drop() {
        let meters = Meters::default();
        let limits = Limits {
            max_streams: Some(2),
            ..Limits::default()
        };
        let tenant = Limits {
            max_streams: Some(3),
            ..Limits::default()
        };
        let one = meters.enforcer("k1", &limits, Some(("t", &tenant)));
        let two = meters.enforcer("k2", &limits, Some(("t", &tenant)));
        let a = one.open_stream().unwrap();
        let _b = one.open_stream().unwrap();
        assert_eq!(one.open_stream().err(), Some(("key", 2)));
        let _c = two.open_stream().unwrap();
        assert_eq!(two.open_stream().err(), Some(("tenant", 3)));
        drop(a);
        assert!(two.open_stream().is_ok());
    }

    #[test]
    fn buckets_survive_a_reload_with_the_same_quota() {
        let meters = Meters::default();
        let limits = Limits {
            publish_per_second: Some(1),
            publish_burst: Some(1),
            ..Limits::default()
        };
        meters
            .enforcer("k", &limits, None)
            .take_publish(1, 10)
            .unwrap();
        let again = meters.enforcer("k", &limits, None);
        assert!(
            again.take_publish(1, 10).is_err(),
            "the reload kept the count"
        );
    }
}
