//! A circuit breaker per webhook rule: after `failure_threshold` attempts in a row fail
//! for want of a healthy receiver (network errors, timeouts, 408, 429, 5xx), the rule
//! stops sending for a cool-down, then lets one probe through (half-open): its success
//! closes the breaker, its failure opens it again for twice as long (up to
//! `max_cool_down`). Any answer other than those (2xx, 3xx, 4xx) shows the receiver is up
//! and resets the count.
//!
//! While the breaker is open, the rule takes no messages from its consumer (one fetched
//! just before it opened is given back unsent), so events wait: none is skipped and
//! none uses up attempts. Waiting holds no request slot, so an open breaker costs other
//! rules nothing.

use std::sync::Mutex;
use std::time::Duration;

use herald_core::Timestamp;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{RuleError, RuleId};

/// Failed attempts in a row that open the breaker, when not given.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
pub const MAX_FAILURE_THRESHOLD: u32 = 1000;
/// The first cool-down, when not given.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(30);
/// The longest cool-down (repeated trips double it up to this), when not given.
pub const DEFAULT_MAX_COOL_DOWN: Duration = Duration::from_secs(300);
pub const MIN_COOL_DOWN: Duration = Duration::from_millis(100);
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(3600);

/// How a webhook rule's breaker behaves (part of the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    cool_down: Duration,
    max_cool_down: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            cool_down: DEFAULT_COOL_DOWN,
            max_cool_down: DEFAULT_MAX_COOL_DOWN,
        }
    }
}

impl CircuitBreaker {
    /// Opens after `failure_threshold` (1 to 1000) failed attempts in a row, for
    /// `cool_down`, doubling on each failed probe up to `max_cool_down` (both from
    /// 100 ms to 1 h, the maximum at least the first).
    pub fn new(
        failure_threshold: u32,
        cool_down: Duration,
        max_cool_down: Duration,
    ) -> Result<Self, RuleError> {
        let invalid = |message: String| Err(RuleError::Invalid(message));
        if !(1..=MAX_FAILURE_THRESHOLD).contains(&failure_threshold) {
            return invalid(format!(
                "`circuit_breaker.failure_threshold` must be from 1 to {MAX_FAILURE_THRESHOLD}"
            ));
        }
        for (field, value) in [
            ("cool_down_ms", cool_down),
            ("max_cool_down_ms", max_cool_down),
        ] {
            if !(MIN_COOL_DOWN..=MAX_COOL_DOWN).contains(&value) {
                return invalid(format!(
                    "`circuit_breaker.{field}` must be from {} to {}",
                    MIN_COOL_DOWN.as_millis(),
                    MAX_COOL_DOWN.as_millis()
                ));
            }
        }
        if max_cool_down < cool_down {
            return invalid(
                "`circuit_breaker.max_cool_down_ms` must be at least `cool_down_ms`".into(),
            );
        }
        Ok(CircuitBreaker {
            failure_threshold,
            cool_down,
            max_cool_down,
        })
    }

    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    pub fn cool_down(&self) -> Duration {
        self.cool_down
    }

    pub fn max_cool_down(&self) -> Duration {
        self.max_cool_down
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Deliveries go out.
    Closed,
    /// Nothing goes out until the cool-down has passed.
    Open,
    /// One probe is out; the others wait for its outcome.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the `herald_rule_breaker_state` gauge: 0, 1 or 2.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// A breaker as [`RuleInfo`](super::RuleInfo) shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerStatus {
    pub state: BreakerState,
    /// Failed attempts since the last answer that showed the receiver up.
    pub consecutive_failures: u32,
    /// Times the breaker opened (a failed probe opens it again) since the rule started.
    pub trips: u64,
    /// When it last opened; `None` while closed.
    pub opened_at: Option<Timestamp>,
    /// When an open breaker lets the next delivery through as a probe; `None` unless open.
    pub next_probe_at: Option<Timestamp>,
}

/// What an attempt said about the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    /// It answered (2xx, 3xx, 4xx other than 408 and 429).
    Up,
    /// It did not answer, or answered 408, 429 or 5xx.
    Down,
}

/// One rule's breaker at work.
pub(super) struct Breaker {
    rule: RuleId,
    settings: CircuitBreaker,
    inner: Mutex<Inner>,
    /// Wakes deliveries waiting for the breaker when it changes.
    changed: Notify,
}

struct Inner {
    mode: Mode,
    consecutive_failures: u32,
    trips: u64,
    /// The cool-down of the next opening from half-open.
    cool_down: Duration,
    opened_at: Option<Timestamp>,
    next_probe_at: Option<Timestamp>,
}

#[derive(Clone, Copy)]
enum Mode {
    Closed,
    Open {
        until: Instant,
    },
    /// `probing`: a probe is out (false when one was abandoned, so the next may go).
    HalfOpen {
        probing: bool,
    },
}

/// Leave to send one attempt; settle it with its outcome.
pub(super) struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Breaker {
    pub(super) fn new(rule: RuleId, settings: CircuitBreaker) -> Self {
        let breaker = Breaker {
            rule,
            settings,
            inner: Mutex::new(Inner {
                mode: Mode::Closed,
                consecutive_failures: 0,
                trips: 0,
                cool_down: settings.cool_down,
                opened_at: None,
                next_probe_at: None,
            }),
            changed: Notify::new(),
        };
        breaker.set_gauge(BreakerState::Closed);
        breaker
    }

    pub(super) fn status(&self) -> BreakerStatus {
        let inner = self.inner.lock().expect("breaker lock");
        BreakerStatus {
            state: inner.mode.state(),
            consecutive_failures: inner.consecutive_failures,
            trips: inner.trips,
            opened_at: inner.opened_at,
            next_probe_at: inner.next_probe_at,
        }
    }

    /// Waits until an attempt may go out: at once while closed; after the cool-down
    /// while open (the first one through is the probe); after the probe while half-open.
    #[cfg(test)]
    pub(super) async fn admit(&self) -> Pass<'_> {
        loop {
            self.ready().await;
            if let Some(pass) = self.try_admit() {
                return pass;
            }
        }
    }

    /// Leave for an attempt if one may go out now (see [`Breaker::ready`]); `None` while
    /// open or while a probe is out.
    pub(super) fn try_admit(&self) -> Option<Pass<'_>> {
        let mut inner = self.inner.lock().expect("breaker lock");
        match inner.mode {
            Mode::Closed => Some(self.pass(false)),
            Mode::Open { until } if Instant::now() >= until => {
                inner.mode = Mode::HalfOpen { probing: true };
                drop(inner);
                self.set_gauge(BreakerState::HalfOpen);
                tracing::info!(rule = %self.rule, "Webhook circuit breaker half-open: sending one probe.");
                Some(self.pass(true))
            }
            Mode::HalfOpen { probing: false } => {
                inner.mode = Mode::HalfOpen { probing: true };
                Some(self.pass(true))
            }
            Mode::Open { .. } | Mode::HalfOpen { probing: true } => None,
        }
    }

    /// Waits until [`Breaker::try_admit`] would let an attempt out; true when that
    /// attempt is a probe (then it should go alone).
    pub(super) async fn ready(&self) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let open_until = {
                let inner = self.inner.lock().expect("breaker lock");
                match inner.mode {
                    Mode::Closed => return false,
                    Mode::Open { until } if Instant::now() >= until => return true,
                    Mode::HalfOpen { probing: false } => return true,
                    Mode::Open { until } => Some(until),
                    Mode::HalfOpen { probing: true } => None,
                }
            };
            match open_until {
                Some(until) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn pass(&self, probe: bool) -> Pass<'_> {
        Pass {
            breaker: self,
            probe,
            settled: false,
        }
    }

    fn settle(&self, probe: bool, health: Health) {
        let mut inner = self.inner.lock().expect("breaker lock");
        match health {
            Health::Up => {
                inner.consecutive_failures = 0;
                if !matches!(inner.mode, Mode::Closed) {
                    inner.mode = Mode::Closed;
                    inner.cool_down = self.settings.cool_down;
                    inner.opened_at = None;
                    inner.next_probe_at = None;
                    drop(inner);
                    self.set_gauge(BreakerState::Closed);
                    tracing::info!(rule = %self.rule, "Webhook circuit breaker closed: the receiver answered.");
                    self.changed.notify_waiters();
                }
            }
            Health::Down => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                let cool_down = match inner.mode {
                    Mode::HalfOpen { .. } if probe => {
                        let doubled = inner
                            .cool_down
                            .saturating_mul(2)
                            .min(self.settings.max_cool_down);
                        inner.cool_down = doubled;
                        doubled
                    }
                    Mode::Closed
                        if inner.consecutive_failures >= self.settings.failure_threshold =>
                    {
                        inner.cool_down
                    }
                    // Counted; an attempt sent before the breaker opened changes nothing else.
                    _ => return,
                };
                let now = Timestamp::now();
                let next_probe_at = Timestamp::from_micros(
                    now.as_micros()
                        .saturating_add(cool_down.as_micros().min(i64::MAX as u128) as i64),
                );
                inner.mode = Mode::Open {
                    until: Instant::now() + cool_down,
                };
                inner.trips += 1;
                inner.opened_at = Some(now);
                inner.next_probe_at = Some(next_probe_at);
                let consecutive_failures = inner.consecutive_failures;
                let trips = inner.trips;
                drop(inner);
                self.set_gauge(BreakerState::Open);
                metrics::counter!("herald_rule_breaker_trips_total", "rule" => self.rule.to_string())
                    .increment(1);
                tracing::warn!(
                    rule = %self.rule,
                    consecutive_failures,
                    trips,
                    cool_down_ms = cool_down.as_millis() as u64,
                    %next_probe_at,
                    "Webhook circuit breaker opened: deliveries of this rule wait for the cool-down."
                );
                self.changed.notify_waiters();
            }
        }
    }

    /// A probe given up without an outcome (the rule stopped): let the next one go.
    fn abandon(&self, probe: bool) {
        if !probe {
            return;
        }
        let mut inner = self.inner.lock().expect("breaker lock");
        if let Mode::HalfOpen { probing: true } = inner.mode {
            inner.mode = Mode::HalfOpen { probing: false };
            drop(inner);
            self.changed.notify_waiters();
        }
    }

    fn set_gauge(&self, state: BreakerState) {
        metrics::gauge!("herald_rule_breaker_state", "rule" => self.rule.to_string())
            .set(state.gauge());
    }
}

impl Mode {
    fn state(self) -> BreakerState {
        match self {
            Mode::Closed => BreakerState::Closed,
            Mode::Open { .. } => BreakerState::Open,
            Mode::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

impl Pass<'_> {
    /// Records what the attempt said about the receiver.
    pub(super) fn settle(mut self, health: Health) {
        self.settled = true;
        self.breaker.settle(self.probe, health);
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.abandon(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cool_down_ms: u64, max_ms: u64) -> Breaker {
        Breaker::new(
            RuleId::new("r").unwrap(),
            CircuitBreaker::new(
                threshold,
                Duration::from_millis(cool_down_ms),
                Duration::from_millis(max_ms),
            )
            .unwrap(),
        )
    }

    /// Whether `admit` would let an attempt out within `wait`.
    async fn admits_within(breaker: &Breaker, wait: Duration) -> Option<bool> {
        tokio::time::timeout(wait, breaker.admit())
            .await
            .ok()
            .map(|pass| {
                let probe = pass.probe;
                std::mem::forget(pass);
                probe
            })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_probes_doubles_and_closes() {
        let breaker = breaker(3, 1000, 3000);
        for _ in 0..2 {
            breaker.admit().await.settle(Health::Down);
        }
        assert_eq!(breaker.status().state, BreakerState::Closed);
        // An answer resets the count.
        breaker.admit().await.settle(Health::Up);
        assert_eq!(breaker.status().consecutive_failures, 0);
        for _ in 0..3 {
            breaker.admit().await.settle(Health::Down);
        }
        let status = breaker.status();
        assert_eq!(status.state, BreakerState::Open);
        assert_eq!((status.trips, status.consecutive_failures), (1, 3));
        let (opened, next) = (status.opened_at.unwrap(), status.next_probe_at.unwrap());
        assert_eq!(next.as_micros() - opened.as_micros(), 1_000_000);

        // Nothing goes out during the cool-down; then one probe, and the rest wait for it.
        assert_eq!(
            admits_within(&breaker, Duration::from_millis(999)).await,
            None
        );
        let probe = breaker.admit().await;
        assert!(probe.probe);
        assert_eq!(breaker.status().state, BreakerState::HalfOpen);
        assert_eq!(admits_within(&breaker, Duration::from_secs(10)).await, None);
        // A failed probe opens it again for twice as long, then up to the maximum.
        probe.settle(Health::Down);
        let status = breaker.status();
        assert_eq!((status.state, status.trips), (BreakerState::Open, 2));
        assert_eq!(
            status.next_probe_at.unwrap().as_micros() - status.opened_at.unwrap().as_micros(),
            2_000_000
        );
        let started = Instant::now();
        breaker.admit().await.settle(Health::Down);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let started = Instant::now();
        breaker.admit().await.settle(Health::Down);
        assert_eq!(started.elapsed(), Duration::from_secs(3), "capped");
        assert_eq!(breaker.status().trips, 4);

        // A successful probe closes it.
        let probe = breaker.admit().await;
        assert!(probe.probe);
        probe.settle(Health::Up);
        let status = breaker.status();
        assert_eq!(status.state, BreakerState::Closed);
        assert_eq!((status.consecutive_failures, status.trips), (0, 4));
        assert!(status.opened_at.is_none() && status.next_probe_at.is_none());
        assert_eq!(
            admits_within(&breaker, Duration::from_millis(1)).await,
            Some(false)
        );
        // The cool-down starts again from the first value.
        for _ in 0..3 {
            breaker.admit().await.settle(Health::Down);
        }
        let status = breaker.status();
        assert_eq!(
            status.next_probe_at.unwrap().as_micros() - status.opened_at.unwrap().as_micros(),
            1_000_000
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_when_the_probe_succeeds_and_an_abandoned_probe_frees_the_slot() {
        let breaker = std::sync::Arc::new(breaker(1, 1000, 1000));
        breaker.admit().await.settle(Health::Down);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let probe = breaker.admit().await;
        assert!(probe.probe);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let breaker = breaker.clone();
                tokio::spawn(async move {
                    let pass = breaker.admit().await;
                    let probe = pass.probe;
                    pass.settle(Health::Up);
                    probe
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        // The probe is abandoned: one waiter becomes the probe.
        drop(probe);
        let mut probes = 0;
        for waiter in waiters {
            probes += usize::from(waiter.await.unwrap());
        }
        assert_eq!(
            probes, 1,
            "exactly one waiter probed; its success let the others out"
        );
        assert_eq!(breaker.status().state, BreakerState::Closed);
    }

    #[test]
    fn settings_are_checked() {
        let ms = Duration::from_millis;
        assert!(CircuitBreaker::new(0, ms(1000), ms(1000)).is_err());
        assert!(CircuitBreaker::new(1001, ms(1000), ms(1000)).is_err());
        assert!(CircuitBreaker::new(5, ms(99), ms(1000)).is_err());
        assert!(CircuitBreaker::new(5, ms(1000), ms(999)).is_err());
        assert!(CircuitBreaker::new(5, ms(1000), ms(3_600_001)).is_err());
        assert!(CircuitBreaker::new(1, ms(100), ms(3_600_000)).is_ok());
    }
}
