//! The webhook action: POST the event as JSON, signed the
//! [Standard Webhooks](https://www.standardwebhooks.com/) way, retried with backoff.
//!
//! Every attempt sends `content-type: application/json`, the body
//! [`envelope::to_json`](crate::envelope::to_json) (the event as `GET /api/events/{id}`
//! shows it), and the headers
//!
//! - `webhook-id`: [`message_id`]: `msg_` and 32 hex digits of the UUIDv5 of the rule id
//!   in the event id's namespace. It is the same for every attempt, after restarts and on
//!   every instance (dedupe on it), differs for every (rule, event), and never contains a
//!   `.`: the specification says the id must "not be allowed to include any `.`", which a
//!   rule id may;
//! - `webhook-timestamp`: the attempt's time, in Unix seconds;
//! - `webhook-signature`: `v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//!   when the rule has a secret. The key is the base64-decoded part after `whsec_` for a
//!   secret of that form, else the secret's bytes.
//!
//! A 2xx answer is a delivery (the rule acks the message). Network errors, timeouts,
//! 408, 429 and 5xx are retried after 0.5 s, 1 s, 2 s, … (doubling up to 30 s, ±25 %
//! jitter; a `Retry-After` in seconds is honoured up to 60 s): the rule NAKs the message
//! with that delay and the error, and its consumer sends the event to the rule's dead
//! letters once `max_attempts` attempts failed. Other answers (3xx, 4xx) send it there
//! at once (a term). Redirects are not followed. Each rule has a circuit breaker
//! ([`CircuitBreaker`]): while it is open, events wait without being sent.
//!
//! **Targets.** Unless the hub allows private targets, the [`guard`](super::guard)
//! refuses addresses on the hub's own machine and networks at connect time; such an
//! attempt goes straight to the dead letters (a term) with the guard's reason.
//!
//! **Request slots.** A rule has at most [`WEBHOOK_IN_FLIGHT`] deliveries in flight (its
//! consumer hands out no more, retries waiting for their backoff included), so a
//! receiver that hangs can hold at most that many requests. Each rule's first open request uses a slot of its own (its `Lane`); the
//! others take slots from a hub-wide pool of [`SHARED_REQUESTS`], which bounds sockets
//! and request bodies to `rules + SHARED_REQUESTS`. So a rule's first request never waits
//! for a slot another rule holds: however many receivers hang, every rule keeps at least
//! one request going. Hanging rules hold pool slots only until their breaker
//! opens (their timeouts are failures); an open breaker sends one probe at a time, on
//! the rule's own slot. With the defaults, pool slots run out only when more than 36
//! rules hang at once, each until its first timeouts.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use herald_core::Event;
use hmac::{KeyInit, Mac};
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::breaker::{Breaker, CircuitBreaker, Health};
use super::guard::{self, ForbiddenTarget, GuardedResolver};
use super::{RuleError, RuleId, SHARED_REQUESTS, WEBHOOK_IN_FLIGHT};

/// Longest webhook URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// The per-attempt timeout when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per event when not given.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const MAX_ATTEMPTS: u32 = 20;
/// The prefix of Standard Webhooks secrets (the rest is base64).
pub const SECRET_PREFIX: &str = "whsec_";

/// The webhook URLs [`Webhook::new`] accepts (for API documents; ECMA-262 compatible).
pub const URL_REGEX: &str = concat!(
    "^https?://",
    "(?:(?:[A-Za-z0-9](?:-?[A-Za-z0-9])*\\.)*[A-Za-z](?:-?[A-Za-z0-9])*",
    "|(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})",
    "(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?",
    "(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?",
    "(?:\\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$",
);
/// Standard Webhooks secrets: `whsec_` + padded base64 of 24 to 64 bytes.
pub const SECRET_REGEX: &str = concat!(
    "^whsec_(?:(?:[A-Za-z0-9+/]{4}){8,21}",
    "|(?:[A-Za-z0-9+/]{4}){8,21}[A-Za-z0-9+/]{2}==",
    "|(?:[A-Za-z0-9+/]{4}){8,20}[A-Za-z0-9+/]{3}=)$",
);
/// Other secrets (used as bytes): 8 to 256 printable ASCII characters, not starting
/// with `whsec_`. An ECMA-262 pattern (for the OpenAPI document); the code checks the same
/// with [`is_raw_secret`].
pub const RAW_SECRET_REGEX: &str = "^(?!whsec_)[!-~]{8,256}$";

/// Whether `secret` is a raw secret (see [`RAW_SECRET_REGEX`]).
pub fn is_raw_secret(secret: &str) -> bool {
    !secret.starts_with(SECRET_PREFIX)
        && (8..=256).contains(&secret.len())
        && secret.bytes().all(|b| b.is_ascii_graphic())
}

struct Regexes {
    url: regex::Regex,
    secret: regex::Regex,
}

fn regexes() -> &'static Regexes {
    static REGEXES: OnceLock<Regexes> = OnceLock::new();
    REGEXES.get_or_init(|| Regexes {
        url: regex::Regex::new(URL_REGEX).expect("a valid regex"),
        secret: regex::Regex::new(SECRET_REGEX).expect("a valid regex"),
    })
}

/// Standard base64 that takes any bits in the last character (as other Standard
/// Webhooks libraries do), padding required.
fn lenient_base64() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    )
}

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Most bytes of an answer read (and discarded, so the connection can be reused).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A webhook target: where, signed with what, how patiently.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    url: reqwest::Url,
    secret: Option<Secret>,
    timeout: Duration,
    max_attempts: u32,
    circuit_breaker: CircuitBreaker,
}

#[derive(Clone, PartialEq, Eq)]
struct Secret {
    text: String,
    key: Vec<u8>,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url.as_str())
            .field("secret_set", &self.secret.is_some())
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("circuit_breaker", &self.circuit_breaker)
            .finish()
    }
}

fn invalid(message: impl Into<String>) -> RuleError {
    RuleError::Invalid(message.into())
}

impl Webhook {
    /// A webhook to an `http` or `https` URL with a DNS name or an IPv4 address, an
    /// optional port, path and query (no user name or password, no fragment, no IPv6
    /// literal: exactly what [`URL_REGEX`] matches), unsigned, with the default timeout
    /// and attempts.
    pub fn new(url: &str) -> Result<Self, RuleError> {
        if url.len() > MAX_URL_BYTES {
            return Err(invalid(format!(
                "`url` is {} bytes; the limit is {MAX_URL_BYTES}",
                url.len()
            )));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid("`url` must start with http:// or https://"));
        }
        let authority = url.split_once("://").map_or("", |(_, rest)| {
            rest.split(['/', '?', '#']).next().unwrap_or("")
        });
        if authority.contains('@') {
            return Err(invalid(
                "`url` may not contain a user name or password (it is shown by GET /api/rules); \
                 use `secret` to authenticate deliveries",
            ));
        }
        if !regexes().url.is_match(url) {
            return Err(invalid(
                "`url` must be http(s)://HOST[:PORT][/PATH][?QUERY] with a DNS name (its last \
                 label starting with a letter) or an IPv4 address as HOST, a port up to 65535, \
                 and only unreserved, sub-delim, `:`, `@`, `/` and `%` characters after it \
                 (no fragment, no IPv6 literal)",
            ));
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| invalid(format!("`url` is not a valid URL: {e}")))?;
        Ok(Webhook {
            url: parsed,
            secret: None,
            timeout: DEFAULT_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            circuit_breaker: CircuitBreaker::default(),
        })
    }

    /// Signs deliveries with `secret`: `whsec_` followed by the base64 (standard
    /// alphabet, padded) of 24 to 64 bytes, as Standard Webhooks has it; or 8 to 256
    /// printable ASCII characters (no spaces), whose bytes are the key. Exactly what
    /// [`SECRET_REGEX`] or [`RAW_SECRET_REGEX`] match.
    pub fn with_secret(mut self, secret: &str) -> Result<Self, RuleError> {
        let key = if let Some(encoded) = secret.strip_prefix(SECRET_PREFIX) {
            if !regexes().secret.is_match(secret) {
                return Err(invalid(
                    "`secret`: the part after `whsec_` must be padded base64 of 24 to 64 bytes",
                ));
            }
            lenient_base64()
                .decode(encoded)
                .map_err(|_| invalid("`secret`: the part after `whsec_` must be base64"))?
        } else {
            if !is_raw_secret(secret) {
                return Err(invalid(
                    "`secret` must be `whsec_` + base64, or 8 to 256 printable ASCII \
                     characters without spaces",
                ));
            }
            secret.as_bytes().to_vec()
        };
        self.secret = Some(Secret {
            text: secret.to_owned(),
            key,
        });
        Ok(self)
    }

    /// The time one attempt may take, from 100 ms to 60 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, RuleError> {
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
            return Err(invalid(format!(
                "`timeout_ms` must be from {} to {}",
                MIN_TIMEOUT.as_millis(),
                MAX_TIMEOUT.as_millis()
            )));
        }
        self.timeout = timeout;
        Ok(self)
    }

    /// Attempts per event, 1 to 20.
    pub fn with_max_attempts(mut self, attempts: u32) -> Result<Self, RuleError> {
        if !(1..=MAX_ATTEMPTS).contains(&attempts) {
            return Err(invalid(format!(
                "`max_attempts` must be from 1 to {MAX_ATTEMPTS}"
            )));
        }
        self.max_attempts = attempts;
        Ok(self)
    }

    /// When this target's breaker opens and for how long (see [`CircuitBreaker`]).
    pub fn with_circuit_breaker(mut self, circuit_breaker: CircuitBreaker) -> Self {
        self.circuit_breaker = circuit_breaker;
        self
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Whether deliveries are signed (the secret itself is never shown).
    pub fn secret_set(&self) -> bool {
        self.secret.is_some()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    pub fn circuit_breaker(&self) -> CircuitBreaker {
        self.circuit_breaker
    }

    pub(super) fn secret_text(&self) -> Option<&str> {
        self.secret.as_ref().map(|s| s.text.as_str())
    }
}

/// The `webhook-id` of `event_id`'s deliveries by `rule`: `msg_` and the 32 hex digits of
/// UUIDv5(namespace = the event id, name = the rule id). A function of the pair alone (so
/// stable across attempts, restarts and instances), distinct for distinct pairs (the
/// namespace has a fixed length, so the hashed bytes differ), and free of `.` whatever
/// the rule id holds.
pub fn message_id(rule: &RuleId, event_id: uuid::Uuid) -> String {
    format!(
        "msg_{}",
        uuid::Uuid::new_v5(&event_id, rule.as_str().as_bytes()).simple()
    )
}

/// The `webhook-signature` value for a message: `v1,<base64 HMAC-SHA256>` of
/// `"{msg_id}.{timestamp}.{body}"`, keyed as [`Webhook::with_secret`] says. For
/// receivers written in Rust (and tests).
pub fn signature(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, RuleError> {
    let webhook = Webhook::new("http://localhost/")?.with_secret(secret)?;
    let key = &webhook.secret.as_ref().expect("just set").key;
    Ok(sign(key, msg_id, timestamp, body))
}

fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// Why an attempt could not be sent at all.
#[derive(Debug, thiserror::Error)]
pub(super) enum DeliveryError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] Arc<reqwest::Error>),
    #[error("the hub is shutting down")]
    ShuttingDown,
}

/// The HTTP client and the hub-wide pool of request slots (see the module docs).
pub(crate) struct Delivery {
    client: OnceLock<Result<reqwest::Client, Arc<reqwest::Error>>>,
    shared: Arc<Semaphore>,
    /// Whether webhooks may reach what the [`guard`](super::guard) forbids.
    allow_private: bool,
}

/// One webhook rule's own delivery budget: its reserved request slot and its breaker.
pub(super) struct Lane {
    reserved: Semaphore,
    pub(super) breaker: Breaker,
}

impl Lane {
    pub(super) fn new(rule: RuleId, webhook: &Webhook) -> Self {
        Lane {
            reserved: Semaphore::new(1),
            breaker: Breaker::new(rule, webhook.circuit_breaker),
        }
    }
}

const _: () = assert!(WEBHOOK_IN_FLIGHT >= 1 && SHARED_REQUESTS >= WEBHOOK_IN_FLIGHT);

/// How one attempt went.
pub(crate) enum Attempt {
    Delivered,
    /// Failed; worth trying again (after at least this long, if the receiver said).
    Retry(String, Option<Duration>),
    /// Refused for good (3xx, 4xx other than 408 and 429).
    Refused(StatusCode),
    /// Not sent: the guard forbids the target's address (the reason says which).
    Forbidden(String),
}

impl Attempt {
    /// What the attempt said about the receiver (for the breaker).
    pub(super) fn health(&self) -> Health {
        match self {
            Attempt::Retry(..) => Health::Down,
            // A forbidden target says nothing about a receiver; it must not hold up the
            // rule's other events behind an open breaker.
            Attempt::Delivered | Attempt::Refused(_) | Attempt::Forbidden(_) => Health::Up,
        }
    }
}

impl Delivery {
    /// `allow_private`: let webhooks reach what the [`guard`](super::guard) forbids.
    pub(crate) fn new(allow_private: bool) -> Self {
        Delivery {
            client: OnceLock::new(),
            shared: Arc::new(Semaphore::new(SHARED_REQUESTS)),
            allow_private,
        }
    }

    /// The guard's refusal of `webhook`'s URL when its host is a forbidden literal
    /// address (names are checked by the resolver when connecting).
    pub(crate) fn literal_refusal(&self, webhook: &Webhook) -> Option<ForbiddenTarget> {
        if self.allow_private {
            return None;
        }
        guard::literal_refusal(&webhook.url)
    }

    fn client(&self) -> Result<&reqwest::Client, DeliveryError> {
        self.client
            .get_or_init(|| {
                // No redirects: besides being the documented behaviour, following one
                // to a literal address would bypass the guard's resolver.
                let builder = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
                    .connect_timeout(Duration::from_secs(10));
                let builder = if self.allow_private {
                    builder
                } else {
                    builder.dns_resolver(Arc::new(GuardedResolver))
                };
                builder.build().map_err(Arc::new)
            })
            .as_ref()
            .map_err(|error| DeliveryError::Client(error.clone()))
    }

    /// A request slot for `lane`'s rule: its own if free, else the first of its own or
    /// one of the pool.
    async fn slot<'a>(&'a self, lane: &'a Lane) -> Result<SemaphorePermit<'a>, DeliveryError> {
        if let Ok(permit) = lane.reserved.try_acquire() {
            return Ok(permit);
        }
        let permit = tokio::select! {
            biased;
            permit = lane.reserved.acquire() => permit,
            permit = self.shared.acquire() => permit,
        };
        permit.map_err(|_| DeliveryError::ShuttingDown)
    }

    /// Sends one attempt of one event on a request slot of `lane`'s rule. The caller
    /// holds the breaker's pass and settles it with [`Attempt::health`].
    pub(super) async fn attempt(
        &self,
        rule: &RuleId,
        webhook: &Webhook,
        lane: &Lane,
        event: &Event,
    ) -> Result<Attempt, DeliveryError> {
        if let Some(refusal) = self.literal_refusal(webhook) {
            return Ok(Attempt::Forbidden(refusal.to_string()));
        }
        let client = self.client()?;
        let msg_id = message_id(rule, event.id);
        let body = Bytes::from(crate::envelope::to_json(event));
        let _slot = self.slot(lane).await?;
        let span = crate::trace::webhook_span(event, rule.as_str());
        let trace = if span.is_none() {
            event.trace.as_deref().cloned()
        } else {
            crate::trace::outgoing(&span, event)
        };
        let attempt = send(client, webhook, &msg_id, body, trace.as_ref()).await;
        if !span.is_none() {
            crate::trace::record_attempt(&span, &attempt);
        }
        Ok(attempt)
    }
}

async fn send(
    client: &reqwest::Client,
    webhook: &Webhook,
    msg_id: &str,
    body: Bytes,
    trace: Option<&herald_core::TraceContext>,
) -> Attempt {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut request = client
        .post(webhook.url.clone())
        .timeout(webhook.timeout)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(trace) = trace {
        request = request.header("traceparent", trace.traceparent());
        if let Some(state) = &trace.tracestate {
            request = request.header("tracestate", state.as_str());
        }
    }
    if let Some(secret) = &webhook.secret {
        request = request.header(
            "webhook-signature",
            sign(&secret.key, msg_id, timestamp, &body),
        );
    }
    let mut response = match request.body(body).send().await {
        Ok(response) => response,
        Err(error) => {
            return match guard::find_refusal(&error) {
                Some(refusal) => Attempt::Forbidden(refusal.to_string()),
                None => Attempt::Retry(describe(error), None),
            }
        }
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // Read (a bounded part of) the answer so the connection can carry the next request.
    let mut read = 0;
    while read < MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) => break,
            Err(error) if status.is_success() => {
                // The receiver answered 2xx: it has the event, whatever happens to the rest.
                tracing::debug!(error = %error.without_url(), "Reading a webhook answer failed.");
                break;
            }
            Err(error) => return Attempt::Retry(describe(error), retry_after),
        }
    }
    if status.is_success() {
        Attempt::Delivered
    } else if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Attempt::Retry(format!("answered {status}"), retry_after)
    } else {
        Attempt::Refused(status)
    }
}

/// A request error and its causes, without the URL (which may carry a token).
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.len() > 512 {
        let mut end = 512;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The wait before attempt `attempt + 1` without jitter: 0.5 s doubling per attempt up
/// to 30 s.
fn base_backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.max(1).saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// The wait before attempt `attempt + 1`: [`base_backoff`] ±25 %.
fn backoff(attempt: u32) -> Duration {
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0; // 0 ≤ j < 1
    base_backoff(attempt).mul_f64(0.75 + 0.5 * jitter)
}

/// The wait before retrying after the `attempt`-th attempt failed: the backoff, or the
/// receiver's `Retry-After` (up to 60 s) when longer.
pub(super) fn retry_delay(attempt: u32, retry_after: Option<Duration>) -> Duration {
    backoff(attempt).max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
}

/// The backoff without jitter, one delay (ms) per retry of `attempts` (at least one):
/// the schedule of a rule's consumer, used when a delivery's ack wait runs out (its
/// instance stopped) rather than when the rule NAKs it.
pub(super) fn backoff_schedule_ms(attempts: u32) -> Vec<u64> {
    (1..attempts.max(2))
        .map(|attempt| base_backoff(attempt).as_millis() as u64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        // The example of the Standard Webhooks specification (and its reference libraries).
        let signature = signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn message_ids_are_dot_free_stable_and_distinct() {
        let events = [
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7(),
            uuid::Uuid::nil(),
        ];
        let rules = ["a.b", "a_b", "a:b", "ab", "a.b.", "audit-hook", "x"];
        let mut seen = std::collections::HashSet::new();
        for event in events {
            for rule in rules {
                let rule = RuleId::new(rule).unwrap();
                let id = message_id(&rule, event);
                assert_eq!(id, message_id(&rule, event), "stable");
                assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
                assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
                assert!(seen.insert(id), "distinct per (rule, event)");
            }
        }
    }

    #[test]
    fn validation() {
        for good in [
            "https://example.com/x",
            "http://127.0.0.1:8080/hook?x=1&y=%20",
            "http://localhost",
            "https://a.b-c.example:443/x/y/",
            "http://h0st.example.org/a'b?c'd",
        ] {
            assert!(Webhook::new(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://example.com/",
            "not a url",
            "http://user:pw@example.com/",
            "http://@example.com/",
            "file:///etc/passwd",
            "HTTP://example.com/",
            "http://[::1]/",
            "http://1.2.3.999/",
            "http://01.2.3.4/",
            "http://foo.123/",
            "http://foo.0x1f/",
            "http://-a.example/",
            "http://a..b/",
            "http://example.com#frag",
            "http://example.com:65536/",
            "http://example.com:/",
            "http://exa mple.com/",
            "http://example.com/a b",
        ] {
            assert!(Webhook::new(bad).is_err(), "{bad}");
        }
        let hook = Webhook::new("http://127.0.0.1:9/").unwrap();
        assert!(hook.clone().with_secret("whsec_!!!").is_err());
        assert!(hook.clone().with_secret("whsec_c2hvcnQ=").is_err());
        assert!(hook.clone().with_secret("short").is_err());
        assert!(hook.clone().with_secret("a long enough secret").is_err());
        assert!(hook.clone().with_secret("a_long_enough_secret").is_ok());
        assert!(hook.clone().with_secret("seven77").is_err());
        assert!(hook.clone().with_secret("whsec_not-base64!").is_err());
        assert!(hook.clone().with_secret("a-long-enough-secret").is_ok());
        assert!(hook
            .clone()
            .with_timeout(Duration::from_millis(50))
            .is_err());
        assert!(hook.clone().with_max_attempts(0).is_err());
        assert!(hook.clone().with_max_attempts(21).is_err());
        let shown = format!("{:?}", hook.with_secret("a-long-enough-secret").unwrap());
        assert!(!shown.contains("enough"), "{shown}");
    }

    /// The published expressions admit nothing the parsers then refuse (so a request
    /// valid by the OpenAPI document is accepted), and whsec_ secrets decode to 24 to 64
    /// bytes.
    mod regexes_agree_with_parsers {
        use super::*;
        use proptest::prelude::*;

        fn unanchored(regex: &str) -> String {
            regex
                .trim_start_matches('^')
                .trim_end_matches('$')
                .to_owned()
        }

        proptest! {
            #[test]
            fn urls(url in proptest::string::string_regex(&unanchored(URL_REGEX)).unwrap()) {
                prop_assume!(url.len() <= MAX_URL_BYTES);
                prop_assert!(Webhook::new(&url).is_ok(), "{}", url);
            }

            #[test]
            fn secrets(secret in proptest::string::string_regex(&unanchored(SECRET_REGEX)).unwrap()) {
                let hook = Webhook::new("http://localhost/").unwrap().with_secret(&secret);
                prop_assert!(hook.is_ok(), "{}", secret);
                let key = &hook.unwrap().secret.unwrap().key;
                prop_assert!((24..=64).contains(&key.len()));
            }

            #[test]
            fn raw_secrets(secret in proptest::string::string_regex("[!-~]{8,256}").unwrap()) {
                prop_assume!(!secret.starts_with(SECRET_PREFIX));
                prop_assert!(is_raw_secret(&secret));
                prop_assert!(Webhook::new("http://localhost/").unwrap().with_secret(&secret).is_ok());
            }
        }

        #[test]
        fn secret_lengths_are_exact() {
            let engine = base64::engine::general_purpose::STANDARD;
            for bytes in 0..100usize {
                let secret = format!("whsec_{}", engine.encode(vec![7u8; bytes]));
                let accepted = Webhook::new("http://localhost/")
                    .unwrap()
                    .with_secret(&secret)
                    .is_ok();
                assert_eq!(accepted, (24..=64).contains(&bytes), "{bytes} bytes");
            }
        }
    }

    #[test]
    fn the_consumer_schedule_is_the_backoff_without_jitter() {
        assert_eq!(backoff_schedule_ms(1), [500]);
        assert_eq!(backoff_schedule_ms(4), [500, 1000, 2000]);
        let long = backoff_schedule_ms(MAX_ATTEMPTS);
        assert_eq!(long.len(), MAX_ATTEMPTS as usize - 1);
        assert_eq!(long[5], 16_000);
        assert!(long[6..].iter().all(|&ms| ms == 30_000), "{long:?}");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        for (attempt, base) in [(1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (40, 30.0)] {
            let wait = backoff(attempt).as_secs_f64();
            assert!(
                wait >= base * 0.75 && wait <= base * 1.25,
                "attempt {attempt}: {wait}"
            );
        }
    }
}
