//! Routing rules against a real store and real HTTP receivers (axum on loopback):
//! retries and signatures, isolation of a failing rule, the circuit breaker, several
//! rules per event, handler closures, disabled rules, resuming after a restart, and
//! instances sharing a store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use herald_core::{NewEvent, Origin, Pattern, Payload, Subject, Timestamp};
use herald_hub::rules::{
    Action, BreakerState, CircuitBreaker, RuleError, RuleId, RuleOptions, RuleSpec, Webhook,
};
use herald_hub::{Hub, HubConfig};
use herald_store::{AnyStore, EmbeddedOptions, EmbeddedStore, Store};
use hmac::{KeyInit, Mac};
use serde_json::Value;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn open_hub(dir: &tempfile::TempDir) -> Hub {
    let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
        .await
        .unwrap();
    Hub::open(config("test"), AnyStore::Embedded(store))
        .await
        .unwrap()
}

/// The receivers here listen on 127.0.0.1, which the webhook guard refuses by default.
fn config(hub_id: &str) -> HubConfig {
    let mut config = HubConfig::new(hub_id);
    config.webhook_allow_private = true;
    config
}

fn event(subject: &str, n: usize) -> NewEvent {
    NewEvent::new(
        Subject::new(subject).unwrap(),
        Payload::from_json(format!(r#"{{"n":{n}}}"#)).unwrap(),
        Origin {
            hub_id: "test".into(),
            service: None,
            user: None,
        },
        None,
    )
}

fn pattern(text: &str) -> Pattern {
    Pattern::parse(text).unwrap()
}

// ---- a webhook receiver -----------------------------------------------------------------

/// How the receiver answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// 200 at once.
    Accept,
    /// 500 to the first `n` attempts of each `webhook-id`, then 200.
    FailFirst(usize),
    /// 500, always.
    Fail,
    /// 400, always (not worth retrying).
    Reject,
    /// Never answers (within a minute).
    Hang,
}

#[derive(Debug, Clone)]
struct Request {
    id: String,
    timestamp: String,
    signature: Option<String>,
    content_type: String,
    body: Bytes,
    status: u16,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

struct Shared {
    mode: Mutex<Mode>,
    requests: Mutex<Vec<Request>>,
    attempts: Mutex<HashMap<String, usize>>,
    hanging: AtomicUsize,
}

struct Receiver {
    url: String,
    shared: Arc<Shared>,
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            requests: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            hanging: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, shared }
    }

    fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The requests answered 2xx.
    fn delivered(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    /// Waits until `n` requests were answered 2xx; returns them.
    async fn wait_delivered(&self, n: usize, within: Duration) -> Vec<Request> {
        let ok = wait_until(within, || self.delivered().len() >= n).await;
        let delivered = self.delivered();
        assert!(
            ok,
            "expected {n} deliveries within {within:?}, got {} (of {} requests)",
            delivered.len(),
            self.requests().len()
        );
        delivered
    }
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let id = header("webhook-id").unwrap_or_default();
    let attempt = {
        let mut attempts = shared.attempts.lock().unwrap();
        let count = attempts.entry(id.clone()).or_default();
        *count += 1;
        *count
    };
    let mode = *shared.mode.lock().unwrap();
    let status = match mode {
        Mode::Accept => StatusCode::OK,
        Mode::FailFirst(n) if attempt <= n => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::FailFirst(_) => StatusCode::OK,
        Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Reject => StatusCode::BAD_REQUEST,
        Mode::Hang => StatusCode::GATEWAY_TIMEOUT,
    };
    shared.requests.lock().unwrap().push(Request {
        id,
        timestamp: header("webhook-timestamp").unwrap_or_default(),
        signature: header("webhook-signature"),
        content_type: header("content-type").unwrap_or_default(),
        body,
        // A hanging answer is recorded as never given.
        status: if mode == Mode::Hang {
            0
        } else {
            status.as_u16()
        },
    });
    if mode == Mode::Hang {
        shared.hanging.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    status
}

async fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Recomputes the Standard Webhooks signature independently of the hub's code.
fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn webhook_rule(pattern_text: &str, url: &str) -> RuleSpec {
    RuleSpec::new(
        pattern(pattern_text),
        Action::Webhook(Webhook::new(url).unwrap()),
    )
}

fn stats(hub: &Hub, id: &str) -> herald_hub::rules::RuleStats {
    hub.routing_rule(id).expect("the rule exists").stats
}

// ---- tests ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_retried_until_accepted_and_signed() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    let receiver = Receiver::start(Mode::FailFirst(2)).await;
    let webhook = Webhook::new(&receiver.url)
        .unwrap()
        .with_secret(SECRET)
        .unwrap()
        .with_max_attempts(5)
        .unwrap();
    let mut spec = RuleSpec::new(pattern("hub.test.>"), Action::Webhook(webhook));
    spec.description = Some("audit".into());
    spec.id = Some(RuleId::new("audit.trail:v1").unwrap());
    let rule = hub.add_rule(spec).await.unwrap();
    assert!(rule.persisted && rule.enabled);

    let published = hub
        .publish(event("hub.test.project.created", 7))
        .await
        .unwrap();
    let delivered = receiver.wait_delivered(1, Duration::from_secs(15)).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "two 500s, then a 200: {requests:?}");
    assert_eq!(delivered.len(), 1);
    let expected_id = herald_hub::rules::webhook::message_id(&rule.id, published.event.id);
    // Standard Webhooks: "It's important that both the message id and the timestamp not
    // be user controlled, or at the very least not be allowed to include any `.` to
    // prevent certain attacks." The rule id here has a dot.
    assert!(
        expected_id.starts_with("msg_") && !expected_id.contains('.'),
        "{expected_id}"
    );
    for request in &requests {
        assert_eq!(
            request.id, expected_id,
            "webhook-id is stable across retries"
        );
        assert_eq!(request.content_type, "application/json");
        let timestamp: i64 = request.timestamp.parse().expect("unix seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - timestamp).abs() < 60, "webhook-timestamp is now");
        assert_eq!(
            request.signature.as_deref(),
            Some(
                expected_signature(SECRET, &request.id, &request.timestamp, &request.body).as_str()
            ),
            "the signature verifies"
        );
        let body = request.json();
        assert_eq!(body["id"], published.event.id.to_string());
        assert_eq!(body["seq"], published.event.seq);
        assert_eq!(body["subject"], "hub.test.project.created");
        assert_eq!(body["payload"]["n"], 7);
    }
    assert!(
        wait_until(Duration::from_secs(5), || stats(&hub, rule.id.as_str())
            == herald_hub::rules::RuleStats {
                delivered: 1,
                failed: 0,
                retries: 2
            })
        .await,
        "{:?}",
        stats(&hub, rule.id.as_str())
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_blocks_neither_publishing_nor_other_rules() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    let hanging = Receiver::start(Mode::Hang).await;
    let failing = Receiver::start(Mode::Fail).await;
    let rejecting = Receiver::start(Mode::Reject).await;
    let healthy = Receiver::start(Mode::Accept).await;
    let slow = Webhook::new(&hanging.url)
        .unwrap()
        .with_timeout(Duration::from_secs(60))
        .unwrap();
    hub.add_rule(RuleSpec::new(pattern("hub.>"), Action::Webhook(slow)))
        .await
        .unwrap();
    let failing_rule = hub
        .add_rule(RuleSpec::new(
            pattern("hub.>"),
            Action::Webhook(
                Webhook::new(&failing.url)
                    .unwrap()
                    .with_max_attempts(20)
                    .unwrap(),
            ),
        ))
        .await
        .unwrap();
    let rejected_rule = hub
        .add_rule(webhook_rule("hub.>", &rejecting.url))
        .await
        .unwrap();
    hub.add_rule(webhook_rule("hub.>", &healthy.url))
        .await
        .unwrap();

    const EVENTS: usize = 40;
    let started = Instant::now();
    for i in 0..EVENTS {
        hub.publish(event("hub.t.x", i)).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "publishing is not slowed by rules: {:?}",
        started.elapsed()
    );
    let delivered = healthy
        .wait_delivered(EVENTS, Duration::from_secs(20))
        .await;
    let mut seqs: Vec<u64> = delivered
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (1..=EVENTS as u64).collect::<Vec<_>>());
    // The hanging rule holds at most its in-flight bound; the failing one retries (5xx)
    // and the rejecting one gives up at once (4xx).
    assert!(
        wait_until(Duration::from_secs(5), || hanging
            .shared
            .hanging
            .load(Ordering::SeqCst)
            == herald_hub::rules::WEBHOOK_IN_FLIGHT)
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        hanging.requests().len(),
        herald_hub::rules::WEBHOOK_IN_FLIGHT,
        "a stuck rule has at most its in-flight bound of requests open"
    );
    assert!(stats(&hub, failing_rule.id.as_str()).retries >= 1);
    assert!(
        wait_until(Duration::from_secs(10), || stats(
            &hub,
            rejected_rule.id.as_str()
        )
        .failed
            == EVENTS as u64)
        .await
    );
    assert_eq!(rejecting.requests().len(), EVENTS, "4xx is not retried");
    assert_eq!(stats(&hub, rejected_rule.id.as_str()).retries, 0);
    let started = Instant::now();
    hub.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown does not wait for hanging deliveries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_holds_events_back_without_skipping_any() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Mode::Fail).await;
    let webhook = Webhook::new(&receiver.url)
        .unwrap()
        .with_max_attempts(20)
        .unwrap()
        .with_circuit_breaker(
            CircuitBreaker::new(3, Duration::from_secs(1), Duration::from_secs(2)).unwrap(),
        );
    let mut spec = RuleSpec::new(pattern("hub.cb.>"), Action::Webhook(webhook));
    spec.id = Some(RuleId::new("cb").unwrap());
    let breaker = |hub: &Hub| hub.routing_rule("cb").unwrap().breaker.unwrap();

    // First run: the receiver fails; the breaker opens and nothing is sent while it is.
    let hub = open_hub(&dir).await;
    let rule = hub.add_rule(spec).await.unwrap();
    let status = rule.breaker.expect("webhook rules have a breaker");
    assert_eq!((status.state, status.trips), (BreakerState::Closed, 0));
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(hub.publish(event("hub.cb.x", n)).await.unwrap().event.id);
    }
    let start_seq = 0;
    assert!(
        wait_until(Duration::from_secs(10), || breaker(&hub).state
            == BreakerState::Open)
        .await
    );
    let status = breaker(&hub);
    assert_eq!(status.trips, 1);
    assert!(status.consecutive_failures >= 3, "{status:?}");
    // Attempts sent before it opened may still be answered; then nothing more.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = receiver.requests().len();
    assert!((3..=4).contains(&sent), "{sent}");
    let until_probe = status.next_probe_at.unwrap().as_micros() - Timestamp::now().as_micros();
    assert!(until_probe > 300_000, "{until_probe} µs");
    tokio::time::sleep(Duration::from_micros(until_probe as u64 - 100_000)).await;
    assert_eq!(
        receiver.requests().len(),
        sent,
        "nothing is sent while open"
    );
    assert_eq!(stats(&hub, "cb").failed, 0, "no event is given up");
    // The probe fails: open again, for twice as long.
    assert!(
        wait_until(Duration::from_secs(5), || breaker(&hub).trips == 2).await,
        "{:?}",
        breaker(&hub)
    );
    let status = breaker(&hub);
    assert_eq!(status.state, BreakerState::Open);
    assert_eq!(
        status.next_probe_at.unwrap().as_micros() - status.opened_at.unwrap().as_micros(),
        2_000_000
    );
    assert_eq!(receiver.requests().len(), sent + 1, "one probe");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    hub.shutdown().await;
    let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
        .await
        .unwrap();
    let state = store.consumer_state("rule:cb").await.unwrap().unwrap();
    // The breaker may open before the rule fetched the last event: it then waits
    // undelivered instead of delivered and unacked.
    assert_eq!(
        (
            state.ack_floor,
            state.num_ack_pending + state.num_pending,
            state.num_dead_letters
        ),
        (start_seq, 4, 0),
        "the rule's consumer holds the events that wait: {state:?}"
    );
    store.close().await.unwrap();

    // Second run: the rule resumes with its consumer; the receiver recovers during the
    // cool-down, the probe closes the breaker, and every event arrives.
    let hub = open_hub(&dir).await;
    assert!(
        wait_until(Duration::from_secs(10), || breaker(&hub).state
            == BreakerState::Open)
        .await
    );
    receiver.set_mode(Mode::Accept);
    let delivered = receiver.wait_delivered(4, Duration::from_secs(10)).await;
    let mut got: Vec<String> = delivered
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "every event, none skipped");
    let status = breaker(&hub);
    assert_eq!(status.state, BreakerState::Closed);
    assert_eq!((status.consecutive_failures, status.trips), (0, 1));
    assert!(status.opened_at.is_none() && status.next_probe_at.is_none());
    assert!(
        wait_until(Duration::from_secs(5), || stats(&hub, "cb").delivered == 4).await,
        "{:?}",
        stats(&hub, "cb")
    );
    assert_eq!(stats(&hub, "cb").failed, 0);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_rules_match_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    let receivers = [
        Receiver::start(Mode::Accept).await,
        Receiver::start(Mode::Accept).await,
        Receiver::start(Mode::Accept).await,
        Receiver::start(Mode::Accept).await,
    ];
    for (text, receiver) in [
        "hub.*.project.*",
        "hub.a.>",
        "hub.a.project.created",
        "hub.b.>",
    ]
    .iter()
    .zip(&receivers)
    {
        hub.add_rule(webhook_rule(text, &receiver.url))
            .await
            .unwrap();
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    hub.add_routing_rule(pattern("hub.a.project.*"), move |event| {
        let tx = tx.clone();
        async move {
            tx.send(event.id).map_err(|e| e.to_string())?;
            Ok(())
        }
    });
    let published = hub
        .publish(event("hub.a.project.created", 1))
        .await
        .unwrap();
    for receiver in &receivers[..3] {
        let delivered = receiver.wait_delivered(1, Duration::from_secs(10)).await;
        assert_eq!(delivered[0].json()["id"], published.event.id.to_string());
    }
    let handled = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handled, published.event.id);
    // A later event for the fourth rule only: the first event never reached it.
    hub.publish(event("hub.b.x", 2)).await.unwrap();
    let delivered = receivers[3]
        .wait_delivered(1, Duration::from_secs(10))
        .await;
    assert_eq!(delivered[0].json()["subject"], "hub.b.x");
    assert_eq!(receivers[3].requests().len(), 1);
    for receiver in &receivers[..3] {
        assert_eq!(receiver.requests().len(), 1);
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_rules_isolate_errors_and_panics() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let id = {
        let seen = seen.clone();
        hub.add_routing_rule_with(
            pattern("hub.h.>"),
            RuleOptions {
                enabled: true,
                description: Some("collects".into()),
            },
            move |event| {
                let seen = seen.clone();
                async move {
                    let n = event.payload.get().to_owned();
                    seen.lock().unwrap().push(event.seq);
                    if n.contains("\"n\":1}") {
                        return Err("one is odd".to_owned());
                    }
                    if n.contains("\"n\":2}") {
                        panic!("two panics");
                    }
                    Ok(())
                }
            },
        )
        .unwrap()
    };
    let listed = hub.routing_rules();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert!(listed[0].action.is_none() && !listed[0].persisted);
    assert_eq!(listed[0].description.as_deref(), Some("collects"));
    assert_eq!(listed[0].subject_pattern.as_str(), "hub.h.>");

    for n in 0..5 {
        hub.publish(event("hub.h.x", n)).await.unwrap();
    }
    hub.publish(event("hub.other", 9)).await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || seen.lock().unwrap().len() == 5).await);
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 4, 5], "in seq order");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let s = stats(&hub, id.as_str());
            s.delivered == 3 && s.failed == 2
        })
        .await,
        "{:?}",
        stats(&hub, id.as_str())
    );

    assert!(hub.remove_routing_rule(&id));
    assert!(!hub.remove_routing_rule(&id));
    assert!(hub.routing_rules().is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    hub.publish(event("hub.h.x", 7)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.lock().unwrap().len(), 5, "a removed rule runs no more");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_rules_do_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    let receiver = Receiver::start(Mode::Accept).await;
    let mut spec = webhook_rule("hub.>", &receiver.url);
    spec.enabled = false;
    let rule = hub.add_rule(spec).await.unwrap();
    assert!(!rule.enabled);
    let calls = Arc::new(AtomicUsize::new(0));
    {
        let calls = calls.clone();
        hub.add_routing_rule_with(
            pattern("hub.>"),
            RuleOptions {
                enabled: false,
                description: None,
            },
            move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            },
        )
        .unwrap();
    }
    // An enabled rule, to know when the event has gone through the engine.
    let control = Receiver::start(Mode::Accept).await;
    hub.add_rule(webhook_rule("hub.>", &control.url))
        .await
        .unwrap();
    hub.publish(event("hub.t.x", 1)).await.unwrap();
    control.wait_delivered(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.requests().is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(stats(&hub, rule.id.as_str()).delivered, 0);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_resume_from_the_cursor_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Mode::Accept).await;
    let mut spec = webhook_rule("hub.r.>", &receiver.url);
    spec.id = Some(herald_hub::rules::RuleId::new("resume").unwrap());
    spec.action = Action::Webhook(
        Webhook::new(&receiver.url)
            .unwrap()
            .with_timeout(Duration::from_secs(60))
            .unwrap(),
    );
    let mut ids = Vec::new();
    {
        let hub = open_hub(&dir).await;
        // Events from before the rule existed are not delivered.
        hub.publish(event("hub.r.x", 0)).await.unwrap();
        hub.add_rule(spec.clone()).await.unwrap();
        for n in 1..=5 {
            ids.push(hub.publish(event("hub.r.x", n)).await.unwrap().event.id);
        }
        receiver.wait_delivered(5, Duration::from_secs(10)).await;
        // The receiver stops answering: these stay in flight until shutdown.
        receiver.set_mode(Mode::Hang);
        for n in 6..=10 {
            ids.push(hub.publish(event("hub.r.x", n)).await.unwrap().event.id);
        }
        assert!(
            wait_until(Duration::from_secs(10), || receiver
                .shared
                .hanging
                .load(Ordering::SeqCst)
                == 5)
            .await
        );
        // Let the cursor be saved past the first five (it is saved about once a second).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        hub.shutdown().await;
    }
    receiver.set_mode(Mode::Accept);
    let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
        .await
        .unwrap();
    assert_eq!(
        store
            .consumer_state("rule:resume")
            .await
            .unwrap()
            .unwrap()
            .ack_floor,
        6,
        "the consumer's ack floor stops before the first unfinished delivery"
    );
    store.close().await.unwrap();

    let hub = open_hub(&dir).await;
    let listed = hub.routing_rules();
    assert_eq!(listed.len(), 1, "the rule was kept in the store");
    assert_eq!(listed[0].id.as_str(), "resume");
    for n in 11..=12 {
        ids.push(hub.publish(event("hub.r.x", n)).await.unwrap().event.id);
    }
    let delivered = receiver.wait_delivered(12, Duration::from_secs(10)).await;
    let got: Vec<String> = delivered
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "every event once, none skipped");

    // Removing the rule removes it from the store too.
    assert!(hub.remove_rule("resume").await.unwrap());
    assert!(!hub.remove_rule("resume").await.unwrap());
    hub.shutdown().await;
    let hub = open_hub(&dir).await;
    assert!(hub.routing_rules().is_empty());
    hub.shutdown().await;
}

/// A rule stored before rules had consumers (only its cursor `rule:<id>`) gets a consumer
/// that starts after that cursor: nothing before it is sent again, nothing after it is
/// skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_from_before_consumers_starts_after_its_old_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Mode::Accept).await;
    let hub = open_hub(&dir).await;
    let mut ids = Vec::new();
    for n in 1..=4 {
        ids.push(hub.publish(event("hub.u.x", n)).await.unwrap().event.id);
    }
    hub.shutdown().await;
    let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
        .await
        .unwrap();
    store
        .put_rule(herald_store::StoredRule {
            id: "old".into(),
            body: serde_json::json!({
                "subject_pattern": "hub.u.>", "enabled": true, "description": null,
                "created_at": "2025-11-05T12:00:00.000000Z",
                "action": {"type": "webhook", "url": receiver.url, "secret": null,
                           "timeout_ms": 5000, "max_attempts": 5}})
            .to_string(),
        })
        .await
        .unwrap();
    // The old engine had finished everything up to seq 2.
    store.save_cursor("rule:old", 2).await.unwrap();
    assert!(store.consumer("rule:old").await.unwrap().is_none());
    store.close().await.unwrap();

    let hub = open_hub(&dir).await;
    ids.push(hub.publish(event("hub.u.x", 5)).await.unwrap().event.id);
    let delivered = receiver.wait_delivered(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = ids[2..].iter().map(|id| id.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "seqs 3 to 5, once each: {delivered:?}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_validated_and_ids_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open_hub(&dir).await;
    let mut spec = webhook_rule("hub.>", "http://127.0.0.1:9/hook");
    spec.id = Some(herald_hub::rules::RuleId::new("one").unwrap());
    hub.add_rule(spec.clone()).await.unwrap();
    assert!(matches!(
        hub.add_rule(spec.clone()).await,
        Err(RuleError::Exists(_))
    ));
    let mut long = webhook_rule("hub.>", "http://127.0.0.1:9/hook");
    long.description = Some("x".repeat(2000));
    assert!(matches!(
        hub.add_rule(long).await,
        Err(RuleError::Invalid(_))
    ));
    for bad in ["", "a b", "a/b", &"x".repeat(200)] {
        assert!(herald_hub::rules::RuleId::new(bad).is_err(), "{bad:?}");
    }

    // Loading: unchanged rules stay, changed ones are replaced, new ones added.
    let mut changed = spec.clone();
    changed.description = Some("changed".into());
    let mut other = webhook_rule("hub.x.>", "https://example.com/");
    other.id = Some(herald_hub::rules::RuleId::new("two").unwrap());
    let loaded = hub
        .load_rules(vec![changed.clone(), other.clone()])
        .await
        .unwrap();
    assert_eq!(loaded.len(), 2);
    let listed = hub.routing_rules();
    assert_eq!(
        listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert_eq!(listed[0].description.as_deref(), Some("changed"));
    let mut anonymous = other.clone();
    anonymous.id = None;
    assert!(hub.load_rules(vec![anonymous]).await.is_err());
    hub.shutdown().await;

    let hub = open_hub(&dir).await;
    let listed = hub.routing_rules();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].description.as_deref(), Some("changed"));
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_store_take_in_each_others_rule_changes() {
    use herald_store::testing::TestPostgres;
    use herald_store::{PostgresOptions, PostgresStore};
    async fn pg_hub(url: &str, hub_id: &str) -> Hub {
        let store = PostgresStore::open(url, PostgresOptions::default())
            .await
            .unwrap();
        Hub::open(config(hub_id), AnyStore::Postgres(store))
            .await
            .unwrap()
    }
    let url = TestPostgres::shared().create_database().await.unwrap();
    let a = pg_hub(&url, "a").await;
    let b = pg_hub(&url, "b").await;
    let receiver = Receiver::start(Mode::Accept).await;
    let mut spec = webhook_rule("hub.>", &receiver.url);
    spec.id = Some(herald_hub::rules::RuleId::new("shared").unwrap());
    a.add_rule(spec).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || b
            .routing_rule("shared")
            .is_some())
        .await,
        "b takes in the rule a added"
    );
    // Both instances run it, on the rule's one consumer: the receiver gets each event
    // once.
    let mut expected = Vec::new();
    for n in 0..6 {
        let publisher = if n % 2 == 0 { &a } else { &b };
        let published = publisher.publish(event("hub.b.x", n)).await.unwrap();
        expected.push(herald_hub::rules::webhook::message_id(
            &RuleId::new("shared").unwrap(),
            published.event.id,
        ));
    }
    receiver.wait_delivered(6, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got: Vec<String> = receiver.requests().into_iter().map(|r| r.id).collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "each event once in the cluster");
    assert!(a.remove_rule("shared").await.unwrap());
    assert!(
        wait_until(Duration::from_secs(15), || b
            .routing_rule("shared")
            .is_none())
        .await,
        "b drops the rule a removed"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_guard_refuses_private_targets_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
        .await
        .unwrap();
    let hub = Hub::open(HubConfig::new("test"), AnyStore::Embedded(store))
        .await
        .unwrap();
    // Literal addresses: refused when the rule is made.
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
    ] {
        match hub.add_rule(webhook_rule("hub.>", url)).await {
            Err(error @ herald_hub::rules::RuleError::ForbiddenTarget(_)) => {
                assert!(
                    error.to_string().contains("--webhook-allow-private"),
                    "{error}"
                );
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    assert!(hub.routing_rules().is_empty(), "nothing was stored");

    // A name that resolves to loopback: refused when connecting, and the event goes to
    // the rule's dead letters at once with the guard's reason.
    let receiver = Receiver::start(Mode::Accept).await;
    let mut spec = webhook_rule("hub.>", &receiver.url.replace("127.0.0.1", "localhost"));
    spec.id = Some(RuleId::new("to-localhost").unwrap());
    hub.add_rule(spec).await.unwrap();
    let published = hub.publish(event("hub.guard.x", 1)).await.unwrap();
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = hub
            .rule_dead_letters("to-localhost", 0, 10)
            .await
            .unwrap()
            .unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 1, "the event is a dead letter");
    assert_eq!(dead[0].event.id, published.event.id);
    assert_eq!(dead[0].deliveries, 1, "not retried");
    let reason = dead[0].last_error.clone().unwrap_or_default();
    assert!(
        reason.contains("localhost resolves only to forbidden addresses"),
        "{reason}"
    );
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the receiver"
    );
    assert_eq!(stats(&hub, "to-localhost").failed, 1);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_rule_to_a_literal_private_address_is_refused_at_send_time() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(Mode::Accept).await;
    let mut spec = webhook_rule("hub.>", &receiver.url);
    spec.id = Some(RuleId::new("stored-loopback").unwrap());
    let hub = open_hub(&dir).await; // allows private targets
    hub.add_rule(spec).await.unwrap();
    hub.shutdown().await;

    // Reopened without the allowance: the stored rule is kept, but refused per attempt.
    let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
        .await
        .unwrap();
    let hub = Hub::open(HubConfig::new("test"), AnyStore::Embedded(store))
        .await
        .unwrap();
    assert!(hub.routing_rule("stored-loopback").is_some());
    hub.publish(event("hub.guard.y", 1)).await.unwrap();
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = hub
            .rule_dead_letters("stored-loopback", 0, 10)
            .await
            .unwrap()
            .unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 1, "the event is a dead letter");
    let reason = dead[0].last_error.clone().unwrap_or_default();
    assert!(
        reason.starts_with("127.0.0.1 is a loopback address"),
        "{reason}"
    );
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the receiver"
    );
    hub.shutdown().await;
}
