//! The behaviour every [`Store`] backend must show, as one suite that runs against each.
//!
//! A backend's tests call [`run`] with a function that opens a fresh, empty store. A
//! feature of the store contract is done when this suite passes on every backend.

pub(crate) mod aggregates;
mod consumers;
mod retention;

use std::future::Future;

use herald_core::{NewEvent, Origin, Pattern, Payload, Seq, Subject, Timestamp};
use uuid::Uuid;

use crate::{
    AccessKind, AccessRecord, Appended, NewDeadLetter, Query, Store, StoredRule, StoredSchema,
};

/// `n` new events on `subject`, with payloads `{"n": 0..n}`.
pub fn events(subject: &str, n: usize) -> Vec<NewEvent> {
    (0..n).map(|i| event(subject, i, None)).collect()
}

/// One new event on `subject` with payload `{"n": i}`.
pub fn event(subject: &str, i: usize, correlation_id: Option<Uuid>) -> NewEvent {
    let payload = Payload::from_json(format!(r#"{{"n":{i}}}"#)).expect("valid payload");
    NewEvent::new(
        Subject::new(subject).expect("valid subject"),
        payload,
        Origin {
            hub_id: "conformance".into(),
            service: Some("suite".into()),
            user: None,
        },
        correlation_id,
    )
}

/// Runs every check, each on a fresh store from `open`.
pub async fn run<S, F, Fut>(mut open: F)
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    empty_store(&open().await).await;
    append_assigns_seq_in_order(&open().await).await;
    duplicate_ids_are_stored_once(&open().await).await;
    filters_combine(&open().await).await;
    planner_agrees_with_naive_filtering(&open().await).await;
    paging_sees_everything_once(&open().await).await;
    concurrent_appends_get_distinct_dense_seqs(&open().await).await;
    cloudevent_attributes_round_trip(&open().await).await;
    trace_contexts_round_trip(&open().await).await;
    cursors_start_at_zero_and_never_go_back(&open().await).await;
    rules_keep_their_order_and_text(&open().await).await;
    tenants_and_keys_are_kept_by_kind_and_id(&open().await).await;
    schemas_are_kept_by_name(&open().await).await;
    an_events_tenant_round_trips(&open().await).await;
    wildcard_characters_inside_tokens_are_literal(&open().await).await;
    dead_letters_keep_their_order_bytes_and_bound(&open().await).await;
    no_query_reads_more_than_its_scan_budget(&open().await).await;
    payload_text_filters_exactly(&open().await).await;
    aggregates::run(&open().await).await;
    consumers::run(&open().await).await;
    retention::run(&open().await).await;
}

/// A pattern that starts with a wildcard and matches nothing, on a store with more
/// distinct subjects than the planner examines, is read by scan: each query stops at
/// [`crate::QUERY_SCAN_BUDGET`] rows with a `scanned_to` to go on from, and following it
/// finds what matches at the end. A consumer with that filter reads on the same way.
async fn no_query_reads_more_than_its_scan_budget<S: Store>(store: &S) {
    let budget = crate::QUERY_SCAN_BUDGET as u64;
    let total = budget + budget / 4;
    let distinct = crate::plan::MAX_SUBJECTS_EXAMINED + 100;
    let mut batch = Vec::new();
    for i in 0..total as usize {
        batch.push(event(&format!("hub.s{}.x", i % distinct), i, None));
        if batch.len() == 1000 {
            store.append(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    batch.extend((0..3).map(|i| event("hub.nomatch.end", i, None)));
    store.append(batch).await.unwrap();
    let head = total + 3;

    let pattern = Pattern::parse_filter("*.nomatch.>").unwrap();
    let query = |after_seq| Query {
        subject: Some(pattern.clone()),
        after_seq,
        limit: 100,
        ..Query::default()
    };
    let first = store.query(query(0)).await.unwrap();
    assert!(first.events.is_empty());
    assert!(
        first.scanned_to > 0 && first.scanned_to <= budget,
        "the first page stops at the budget: {}",
        first.scanned_to
    );
    let mut after = first.scanned_to;
    let mut found = Vec::new();
    for _ in 0..10 {
        let page = store.query(query(after)).await.unwrap();
        assert!(page.scanned_to > after, "no progress after {after}");
        found.extend(page.events.iter().map(|e| e.seq));
        after = page.scanned_to;
        if after == head {
            break;
        }
    }
    assert_eq!(found, vec![head - 2, head - 1, head]);
    consumers::a_sparse_filter_reads_on_past_the_scan_budget(store).await;
}

/// `payload_contains` keeps the events whose stored payload text contains the text,
/// alone and with other filters, on every path.
async fn payload_text_filters_exactly<S: Store>(store: &S) {
    let correlation = Uuid::now_v7();
    let batch: Vec<NewEvent> = (0..30)
        .map(|i| event(&format!("hub.t.s{}", i % 3), i, Some(correlation)))
        .collect();
    store.append(batch).await.unwrap();
    let seqs = |events: Vec<herald_core::Event>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    let text = |t: &str| Some(t.to_owned());
    for (query, expected) in [
        (
            Query {
                payload_contains: text(r#""n":12}"#),
                ..Query::default()
            },
            vec![13],
        ),
        (
            Query {
                payload_contains: text(r#""n":1"#),
                subject: Some(Pattern::parse_filter("hub.t.s1").unwrap()),
                ..Query::default()
            },
            vec![2, 11, 14, 17, 20],
        ),
        (
            Query {
                payload_contains: text(r#""n":2"#),
                correlation_id: Some(correlation),
                limit: 3,
                ..Query::default()
            },
            vec![3, 21, 22],
        ),
        (
            Query {
                payload_contains: text("absent"),
                ..Query::default()
            },
            vec![],
        ),
    ] {
        let got = seqs(store.query(query.clone()).await.unwrap().events);
        assert_eq!(got, expected, "{query:?}");
    }
}

/// `*`, `>` and `%` inside a token are ordinary characters (as in NATS), and so are SQL's
/// `LIKE` characters `%` and `_`: every planner path matches them exactly.
async fn wildcard_characters_inside_tokens_are_literal<S: Store>(store: &S) {
    let subjects = [
        "hub.x.foo*",
        "hub.x.foo",
        "hub.x.foobar",
        "hub.x.foo*.y",
        "hub.y.foo*",
        "hub.x.foo%",
        "hub.x.fooz",
        "hub.x.a%",
        "hub.x.a_b",
        "hub.x.aXb",
        "hub.x.ab",
        "hub.x.*a",
        "hub.x.>a",
        "hub.x.a>",
        "hub.x.foo/",
        "hub.x.foo+",
        "hub.x.**",
    ];
    let batch: Vec<NewEvent> = subjects
        .iter()
        .enumerate()
        .map(|(i, subject)| event(subject, i, None))
        .collect();
    store.append(batch).await.unwrap();
    let all = store.query(Query::default()).await.unwrap().events;
    assert_eq!(all.len(), subjects.len());
    for (pattern, expected_count) in [
        ("hub.x.foo*", 1),
        ("hub.*.foo*", 2),
        ("hub.x.foo*.>", 1),
        ("hub.x.foo*.*", 1),
        ("hub.x.a%", 1),
        ("hub.x.a_b", 1),
        ("hub.%.foo%", 1),
        ("hub.x.*a", 1),
        ("hub.x.>a", 1),
        ("*.x.>a", 1),
        ("hub.x.**", 1),
        ("hub.x.>", subjects.len() - 1),
        ("hub.*.*", subjects.len() - 1),
    ] {
        let p = Pattern::parse_filter(pattern).unwrap();
        let expected: Vec<Seq> = all
            .iter()
            .filter(|e| p.matches(e.subject.as_str()))
            .map(|e| e.seq)
            .collect();
        assert_eq!(expected.len(), expected_count, "{pattern}");
        for limit in [1, 100] {
            let got: Vec<Seq> = store
                .query(Query {
                    subject: Some(p.clone()),
                    limit,
                    ..Query::default()
                })
                .await
                .unwrap()
                .events
                .iter()
                .map(|e| e.seq)
                .collect();
            let wanted: Vec<Seq> = expected.iter().copied().take(limit).collect();
            assert_eq!(got, wanted, "pattern {pattern} limit {limit}");
        }
    }
}

/// A dead letter with every kind of awkward content.
pub fn dead_letter(stream_seq: u64, body: &[u8]) -> NewDeadLetter {
    NewDeadLetter {
        stream: "HERALD".into(),
        stream_seq,
        subject: format!("hub.x.bad\u{202e}{stream_seq}"),
        headers: vec![
            ("Nats-Msg-Id".into(), format!("m-{stream_seq}")),
            ("X-Twice".into(), "1".into()),
            ("X-Twice".into(), "2 \"quoted\" ünï".into()),
        ],
        body: body.to_vec(),
        body_size: body.len() as u64 + 7,
        reason: "subject token \"bad\\u{202e}\" contains U+202E".into(),
    }
}

async fn dead_letters_keep_their_order_bytes_and_bound<S: Store>(store: &S) {
    assert!(store.dead_letters(0, 100).await.unwrap().is_empty());
    assert_eq!(store.count_dead_letters().await.unwrap(), 0);
    assert_eq!(store.add_dead_letters(Vec::new(), 10).await.unwrap(), 0);

    let bytes: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xfe]).collect();
    let first = vec![dead_letter(7, &bytes), dead_letter(8, b"{\"a\":1}")];
    assert_eq!(store.add_dead_letters(first.clone(), 10).await.unwrap(), 0);
    let kept = store.dead_letters(0, 100).await.unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].letter, first[0], "kept exactly, bytes and all");
    assert_eq!(kept[1].letter, first[1]);
    assert!(kept[0].id < kept[1].id, "numbered in the order added");
    assert!(kept[0].received_at.as_micros() > 0);
    assert_eq!(store.count_dead_letters().await.unwrap(), 2);

    // Paging by id.
    let page = store.dead_letters(kept[0].id, 100).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, kept[1].id);
    assert_eq!(store.dead_letters(0, 1).await.unwrap()[0].id, kept[0].id);
    assert!(store
        .dead_letters(kept[1].id, 100)
        .await
        .unwrap()
        .is_empty());

    // Bounded: past `keep`, the oldest go, and the count of dropped ones comes back.
    let more: Vec<NewDeadLetter> = (9..14).map(|n| dead_letter(n, b"x")).collect();
    assert_eq!(store.add_dead_letters(more, 4).await.unwrap(), 3);
    let kept_now = store.dead_letters(0, 100).await.unwrap();
    let seqs: Vec<u64> = kept_now.iter().map(|d| d.letter.stream_seq).collect();
    assert_eq!(seqs, vec![10, 11, 12, 13], "the newest four");
    assert!(kept_now.windows(2).all(|w| w[0].id < w[1].id));
    assert!(kept_now[0].id > kept[1].id, "ids are never reused");

    // Discarding one.
    assert!(store.delete_dead_letter(kept_now[1].id).await.unwrap());
    assert!(!store.delete_dead_letter(kept_now[1].id).await.unwrap());
    assert!(!store.delete_dead_letter(u64::MAX).await.unwrap());
    assert_eq!(store.count_dead_letters().await.unwrap(), 3);
    let seqs: Vec<u64> = store
        .dead_letters(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|d| d.letter.stream_seq)
        .collect();
    assert_eq!(seqs, vec![10, 12, 13]);

    // Dead letters live beside the log, not in it.
    assert_eq!(store.head().await.unwrap(), 0);
}

/// A rule body with quotes, backslashes, escapes and non-ASCII text, and key order and
/// spacing a JSON re-encoding would change: it must come back byte for byte.
pub const AWKWARD_RULE_BODY: &str = r#"{ "z": 1, "name": "zoë \"quoted\" 'single' \\ back", "emoji": "🚀",
  "cjk": "日本語", "esc": "\u00e9\n", "a": [1, 2.50, null], "z": 2 }"#;

async fn cursors_start_at_zero_and_never_go_back<S: Store>(store: &S) {
    assert_eq!(store.load_cursor("relay").await.unwrap(), 0, "never saved");
    store.save_cursor("relay", 10).await.unwrap();
    assert_eq!(store.load_cursor("relay").await.unwrap(), 10);
    store.save_cursor("relay", 25).await.unwrap();
    assert_eq!(store.load_cursor("relay").await.unwrap(), 25);
    store.save_cursor("relay", 7).await.unwrap();
    assert_eq!(
        store.load_cursor("relay").await.unwrap(),
        25,
        "a cursor never moves backwards"
    );
    store.save_cursor("relay", 25).await.unwrap();
    assert_eq!(store.load_cursor("relay").await.unwrap(), 25);

    // Names are independent, and compared exactly.
    assert_eq!(store.load_cursor("rules").await.unwrap(), 0);
    store.save_cursor("rules", 3).await.unwrap();
    store.save_cursor("Relay", 1).await.unwrap();
    store.save_cursor("relay ⚙ 'x'", 99).await.unwrap();
    assert_eq!(store.load_cursor("rules").await.unwrap(), 3);
    assert_eq!(store.load_cursor("Relay").await.unwrap(), 1);
    assert_eq!(store.load_cursor("relay ⚙ 'x'").await.unwrap(), 99);
    assert_eq!(store.load_cursor("relay").await.unwrap(), 25);

    // The largest seq a database integer holds.
    let max = i64::MAX as Seq;
    store.save_cursor("far", max).await.unwrap();
    assert_eq!(store.load_cursor("far").await.unwrap(), max);
    assert!(
        store.save_cursor("far", max + 1).await.is_err(),
        "a seq beyond the database's range is refused"
    );
    assert_eq!(store.load_cursor("far").await.unwrap(), max);

    // Concurrent saves of one cursor: the largest wins, whatever the order.
    let saves =
        futures_util::future::join_all((1..=20).map(|i| store.save_cursor("race", i * 10))).await;
    assert!(saves.iter().all(Result::is_ok));
    assert_eq!(store.load_cursor("race").await.unwrap(), 200);

    // Several at once: one transaction, the same rules; a name twice keeps the larger.
    store
        .save_cursors(vec![
            ("batch-a".into(), 5),
            ("batch-b".into(), 9),
            ("batch-a".into(), 7),
            ("race".into(), 3),
        ])
        .await
        .unwrap();
    assert_eq!(store.load_cursor("batch-a").await.unwrap(), 7);
    assert_eq!(store.load_cursor("batch-b").await.unwrap(), 9);
    assert_eq!(
        store.load_cursor("race").await.unwrap(),
        200,
        "never backwards"
    );
    store.save_cursors(Vec::new()).await.unwrap();
    assert!(store
        .save_cursors(vec![("ok".into(), 1), ("far".into(), max + 1)])
        .await
        .is_err());
    assert_eq!(store.load_cursor("ok").await.unwrap(), 0, "all or nothing");
}

async fn rules_keep_their_order_and_text<S: Store>(store: &S) {
    let rule = |id: &str, body: &str| StoredRule {
        id: id.into(),
        body: body.into(),
    };
    let ids = |rules: Vec<StoredRule>| rules.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert!(store.list_rules().await.unwrap().is_empty());

    store.put_rule(rule("b", r#"{"n":1}"#)).await.unwrap();
    store.put_rule(rule("a", r#"{"n":2}"#)).await.unwrap();
    store.put_rule(rule("c", r#"{"n":3}"#)).await.unwrap();
    assert_eq!(
        store.list_rules().await.unwrap(),
        vec![
            rule("b", r#"{"n":1}"#),
            rule("a", r#"{"n":2}"#),
            rule("c", r#"{"n":3}"#)
        ],
        "in the order first added, not by id"
    );

    // Replacing keeps the rule's place.
    store.put_rule(rule("a", r#"{"n":20}"#)).await.unwrap();
    assert_eq!(
        store.list_rules().await.unwrap(),
        vec![
            rule("b", r#"{"n":1}"#),
            rule("a", r#"{"n":20}"#),
            rule("c", r#"{"n":3}"#)
        ]
    );

    assert!(store.delete_rule("b").await.unwrap());
    assert!(!store.delete_rule("b").await.unwrap(), "already deleted");
    assert!(!store.delete_rule("nothing").await.unwrap());
    assert_eq!(ids(store.list_rules().await.unwrap()), vec!["a", "c"]);

    // Deleted and added again: it goes to the end.
    store.put_rule(rule("b", r#"{"n":4}"#)).await.unwrap();
    assert_eq!(ids(store.list_rules().await.unwrap()), vec!["a", "c", "b"]);

    // The body is kept exactly as given; ids are compared exactly.
    store
        .put_rule(rule("ünï \"id\"", AWKWARD_RULE_BODY))
        .await
        .unwrap();
    store.put_rule(rule("A", "{}")).await.unwrap();
    let rules = store.list_rules().await.unwrap();
    assert_eq!(ids(rules.clone()), vec!["a", "c", "b", "ünï \"id\"", "A"]);
    assert_eq!(rules[3].body.as_bytes(), AWKWARD_RULE_BODY.as_bytes());
    assert_eq!(rules[0].body, r#"{"n":20}"#);

    // Rules and cursors live beside the log, not in it.
    assert_eq!(store.head().await.unwrap(), 0);
}

/// Tenants and keys: insert refuses an existing id, replace needs one, kinds are apart.
async fn tenants_and_keys_are_kept_by_kind_and_id<S: Store>(store: &S) {
    let record = |id: &str, body: &str| AccessRecord {
        id: id.into(),
        body: body.into(),
    };
    assert!(store.list_access(AccessKind::Key).await.unwrap().is_empty());
    assert!(store
        .insert_access(AccessKind::Tenant, record("acme", r#"{"v":1}"#))
        .await
        .unwrap());
    assert!(!store
        .insert_access(AccessKind::Tenant, record("acme", r#"{"v":2}"#))
        .await
        .unwrap());
    assert!(store
        .insert_access(AccessKind::Key, record("acme", "key body"))
        .await
        .unwrap());
    assert!(store
        .insert_access(AccessKind::Tenant, record("beta", "{}"))
        .await
        .unwrap());
    assert_eq!(
        store.list_access(AccessKind::Tenant).await.unwrap(),
        vec![record("acme", r#"{"v":1}"#), record("beta", "{}")]
    );
    assert!(store
        .replace_access(AccessKind::Tenant, record("acme", r#"{"v":3}"#))
        .await
        .unwrap());
    assert!(!store
        .replace_access(AccessKind::Tenant, record("gamma", "{}"))
        .await
        .unwrap());
    assert!(store
        .delete_access(AccessKind::Tenant, "acme")
        .await
        .unwrap());
    assert!(!store
        .delete_access(AccessKind::Tenant, "acme")
        .await
        .unwrap());
    assert_eq!(
        store.list_access(AccessKind::Key).await.unwrap(),
        vec![record("acme", "key body")]
    );
    assert_eq!(
        store.list_access(AccessKind::Tenant).await.unwrap(),
        vec![record("beta", "{}")]
    );
}

/// Event schemas: put says whether the name is new, replaces the body in place, lists
/// by name (bytewise), keeps the text exactly, and delete says whether it found one.
async fn schemas_are_kept_by_name<S: Store>(store: &S) {
    let schema = |name: &str, body: &str| StoredSchema {
        name: name.into(),
        body: body.into(),
    };
    assert!(store.list_schemas().await.unwrap().is_empty());
    assert!(store
        .put_schema(schema("orders", r#"{"v":1}"#))
        .await
        .unwrap());
    assert!(!store
        .put_schema(schema("orders", r#"{"v":2}"#))
        .await
        .unwrap());
    assert!(store.put_schema(schema("Zeta", "{}")).await.unwrap());
    assert!(store
        .put_schema(schema("alpha", AWKWARD_RULE_BODY))
        .await
        .unwrap());
    let listed = store.list_schemas().await.unwrap();
    assert_eq!(
        listed,
        vec![
            schema("Zeta", "{}"),
            schema("alpha", AWKWARD_RULE_BODY),
            schema("orders", r#"{"v":2}"#),
        ]
    );
    assert!(store.delete_schema("orders").await.unwrap());
    assert!(!store.delete_schema("orders").await.unwrap());
    assert!(!store.delete_schema("missing").await.unwrap());
    assert_eq!(
        store.list_schemas().await.unwrap(),
        vec![schema("Zeta", "{}"), schema("alpha", AWKWARD_RULE_BODY)]
    );
    // A name deleted can be put again, as new.
    assert!(store.put_schema(schema("orders", "{}")).await.unwrap());
}

/// The tenant stamped on an event is read back by get, query and seq.
async fn an_events_tenant_round_trips<S: Store>(store: &S) {
    let mut tenanted = event("hub.acme.x", 0, None);
    tenanted.tenant = Some("acme".into());
    let plain = event("hub.open.x", 1, None);
    store
        .append(vec![tenanted.clone(), plain.clone()])
        .await
        .unwrap();
    let got = store.get(tenanted.id).await.unwrap().unwrap();
    assert_eq!(got.tenant.as_deref(), Some("acme"));
    assert_eq!(store.get(plain.id).await.unwrap().unwrap().tenant, None);
    let page = store.query(Query::default()).await.unwrap();
    let tenants: Vec<Option<&str>> = page.events.iter().map(|e| e.tenant.as_deref()).collect();
    assert_eq!(tenants, vec![Some("acme"), None]);
    // Payload bytes per tenant (`{"n":0}` is 7 bytes; a multi-byte payload counts bytes).
    let mut more = event("hub.acme.y", 0, None);
    more.payload = Payload::from_json(r#"{"é":"€"}"#.to_owned()).unwrap();
    more.tenant = Some("acme".into());
    store.append(vec![more]).await.unwrap();
    let bytes = store.tenant_payload_bytes().await.unwrap();
    assert_eq!(
        bytes,
        vec![("acme".to_owned(), 7 + r#"{"é":"€"}"#.len() as u64)]
    );
}

async fn cloudevent_attributes_round_trip<S: Store>(store: &S) {
    use herald_core::{CloudEventAttributes, DataForm, ExtensionValue};
    let mut extensions = std::collections::BTreeMap::new();
    extensions.insert("tenantid".to_owned(), ExtensionValue::String("t1".into()));
    extensions.insert("priority".to_owned(), ExtensionValue::Integer(-3));
    extensions.insert("urgent".to_owned(), ExtensionValue::Boolean(true));
    let attributes = CloudEventAttributes {
        id: "A234-1234-1234".into(),
        source: "/orders".into(),
        specversion: "1.0".into(),
        ty: "com.example.order.created".into(),
        subject: Some("order/7".into()),
        time: Some("2018-04-05T17:31:00+02:00".into()),
        datacontenttype: Some("text/plain".into()),
        dataschema: Some("https://example.com/schema".into()),
        extensions,
        data_form: DataForm::Wrapped,
    };
    let mut new = event("com.example.order.created", 0, None);
    new.id = attributes.herald_id();
    new.cloudevent = Some(Box::new(attributes.clone()));
    let stored = store.append(vec![new]).await.unwrap();
    let got = store.get(stored[0].event().id).await.unwrap().unwrap();
    assert_eq!(got.cloudevent.as_deref(), Some(&attributes));
    let plain = store.append(events("hub.plain", 1)).await.unwrap();
    assert!(plain[0].event().cloudevent.is_none());
    let queried = store.query(Query::default()).await.unwrap();
    assert_eq!(queried.events[0].cloudevent.as_deref(), Some(&attributes));
    assert!(queried.events[1].cloudevent.is_none());
}

/// An event's W3C trace context (`traceparent`, `tracestate`) reads back as stored, by
/// every way of reading and of writing (a plain append, an aggregate's); events without
/// one read back without one.
async fn trace_contexts_round_trip<S: Store>(store: &S) {
    use herald_core::{AggregateEvent, ExpectedVersion, TraceContext};
    let with_state = TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    )
    .unwrap();
    let without_state = TraceContext::parse(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        None,
    )
    .unwrap();
    let mut batch = events("hub.traced", 3);
    batch[0].trace = Some(Box::new(with_state.clone()));
    batch[2].trace = Some(Box::new(without_state.clone()));
    let stored = store.append(batch).await.unwrap();
    let expected = [Some(&with_state), None, Some(&without_state)];
    let got: Vec<_> = stored.iter().map(|a| a.event().trace.as_deref()).collect();
    assert_eq!(got, expected);
    for (appended, expected) in stored.iter().zip(expected) {
        let read = store.get(appended.event().id).await.unwrap().unwrap();
        assert_eq!(read.trace.as_deref(), expected);
    }
    let queried = store.query(Query::default()).await.unwrap();
    let got: Vec<_> = queried.events.iter().map(|e| e.trace.as_deref()).collect();
    assert_eq!(got, expected);

    let mut aggregate_event = event("hub.traced.order", 9, None);
    aggregate_event.aggregate = Some(Box::new(AggregateEvent {
        aggregate_type: "order".into(),
        aggregate_id: "o-traced".into(),
        version: 0,
        event_type: "order.created".into(),
        metadata: None,
    }));
    aggregate_event.trace = Some(Box::new(with_state.clone()));
    let id = aggregate_event.id;
    let outcome = store
        .append_aggregate(crate::AggregateAppend {
            key: crate::AggregateKey {
                tenant: None,
                aggregate_type: "order".into(),
                aggregate_id: "o-traced".into(),
            },
            expected: ExpectedVersion::NoStream,
            events: vec![aggregate_event],
        })
        .await
        .unwrap();
    assert!(matches!(outcome, crate::AggregateAppended::Written { .. }));
    let read = store.get(id).await.unwrap().unwrap();
    assert_eq!(read.trace.as_deref(), Some(&with_state));
}

async fn empty_store<S: Store>(store: &S) {
    assert_eq!(store.head().await.unwrap(), 0);
    let page = store.query(Query::default()).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.scanned_to, 0);
    assert!(store.get(Uuid::now_v7()).await.unwrap().is_none());
    assert!(store.health().await.healthy);
}

async fn append_assigns_seq_in_order<S: Store>(store: &S) {
    let first = store.append(events("hub.a.x", 3)).await.unwrap();
    let second = store.append(events("hub.a.y", 2)).await.unwrap();
    let seqs: Vec<Seq> = first.iter().chain(&second).map(|a| a.event().seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert!(first.iter().all(|a| !a.is_duplicate()));
    let stamps: Vec<Timestamp> = first
        .iter()
        .chain(&second)
        .map(|a| a.event().timestamp)
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "timestamps never go down"
    );
    assert_eq!(store.head().await.unwrap(), 5);
    assert!(store.size_bytes().await.unwrap() > 0);

    let stored = first[1].event();
    let got = store.get(stored.id).await.unwrap().expect("stored event");
    assert_eq!(&got, stored, "an event reads back exactly as stored");

    let all = store.query(Query::default()).await.unwrap();
    assert_eq!(all.events.len(), 5);
    assert_eq!(all.scanned_to, 5);
    assert_eq!(all.events[4].payload.get(), r#"{"n":1}"#);
}

async fn duplicate_ids_are_stored_once<S: Store>(store: &S) {
    let original = event("hub.d.x", 0, None);
    let stored = store.append(vec![original.clone()]).await.unwrap();
    assert!(matches!(&stored[0], Appended::Stored(e) if e.seq == 1));

    let mut retry = original.clone();
    retry.payload = Payload::from_json(r#"{"different":true}"#.into()).unwrap();
    let again = store
        .append(vec![event("hub.d.y", 1, None), retry])
        .await
        .unwrap();
    assert!(matches!(&again[0], Appended::Stored(e) if e.seq == 2));
    match &again[1] {
        Appended::Duplicate(e) => {
            assert_eq!(e.seq, 1);
            assert_eq!(e.payload.get(), r#"{"n":0}"#, "the original is kept");
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }

    // The same id twice in one batch: the first is stored, the second refers to it.
    let twin = event("hub.d.z", 2, None);
    let both = store.append(vec![twin.clone(), twin]).await.unwrap();
    assert!(matches!(&both[0], Appended::Stored(e) if e.seq == 3));
    assert!(matches!(&both[1], Appended::Duplicate(e) if e.seq == 3));
    assert_eq!(store.head().await.unwrap(), 3, "duplicates take no seq");
}

async fn filters_combine<S: Store>(store: &S) {
    let corr = Uuid::now_v7();
    store
        .append(vec![
            event("hub.local.project.created", 0, Some(corr)),
            event("hub.local.project.started", 1, Some(corr)),
            event("hub.other.project.created", 2, None),
            event("hub.local.audit.security.completed", 3, Some(corr)),
        ])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let later = store
        .append(vec![event("hub.local.project.stopped", 4, None)])
        .await
        .unwrap();
    let later_ts = later[0].event().timestamp;

    let subjects = |q: Query| async move {
        store
            .query(q)
            .await
            .unwrap()
            .events
            .into_iter()
            .map(|e| e.subject.into_string())
            .collect::<Vec<_>>()
    };
    let pattern = |p: &str| Some(Pattern::parse_filter(p).unwrap());

    assert_eq!(
        subjects(Query {
            subject: pattern("hub.*.project.created"),
            ..Query::default()
        })
        .await,
        vec!["hub.local.project.created", "hub.other.project.created"]
    );
    assert_eq!(
        subjects(Query {
            subject: pattern("hub.%.project.%"),
            ..Query::default()
        })
        .await
        .len(),
        4
    );
    assert_eq!(
        subjects(Query {
            subject: pattern("hub.local.>"),
            ..Query::default()
        })
        .await
        .len(),
        4
    );
    assert_eq!(
        subjects(Query {
            subject: pattern("hub.local.project.started"),
            ..Query::default()
        })
        .await,
        vec!["hub.local.project.started"]
    );
    assert!(subjects(Query {
        subject: pattern("hub.nothing.>"),
        ..Query::default()
    })
    .await
    .is_empty());
    assert_eq!(
        subjects(Query {
            correlation_id: Some(corr),
            ..Query::default()
        })
        .await
        .len(),
        3
    );
    assert_eq!(
        subjects(Query {
            correlation_id: Some(corr),
            subject: pattern("hub.*.project.*"),
            ..Query::default()
        })
        .await
        .len(),
        2
    );
    assert_eq!(
        subjects(Query {
            since: Some(later_ts),
            ..Query::default()
        })
        .await,
        vec!["hub.local.project.stopped"]
    );
    assert_eq!(
        subjects(Query {
            until: Some(Timestamp::from_micros(later_ts.as_micros() - 1)),
            ..Query::default()
        })
        .await
        .len(),
        4
    );
    assert!(subjects(Query {
        since: Some(Timestamp::from_micros(later_ts.as_micros() + 1)),
        ..Query::default()
    })
    .await
    .is_empty());
    assert_eq!(
        subjects(Query {
            after_seq: 3,
            ..Query::default()
        })
        .await,
        vec![
            "hub.local.audit.security.completed",
            "hub.local.project.stopped"
        ]
    );
    assert_eq!(
        subjects(Query {
            limit: 2,
            ..Query::default()
        })
        .await,
        vec!["hub.local.project.created", "hub.local.project.started"]
    );
}

/// Enough subjects and events that every planner path runs, checked against filtering
/// the whole log by hand.
async fn planner_agrees_with_naive_filtering<S: Store>(store: &S) {
    let mut batch = Vec::new();
    for i in 0..600 {
        let subject = match i % 10 {
            0..=5 => format!("hub.h{}.busy.tick", i % 3),
            6 | 7 => format!("hub.h{}.order.{}.created", i % 2, i % 40),
            8 => format!("hub.h0.rare.{}", i % 7),
            _ => "other.root".to_string(),
        };
        batch.push(event(&subject, i, None));
        if batch.len() == 97 {
            store.append(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    store.append(batch).await.unwrap();
    let all = collect_all(
        store,
        Query {
            limit: 1000,
            ..Query::default()
        },
    )
    .await;
    assert_eq!(all.len(), 600);

    for pattern in [
        ">",
        "hub.>",
        "hub.*.busy.tick",
        "hub.h0.>",
        "hub.*.order.*.created",
        "hub.h1.order.>",
        "hub.h0.rare.*",
        "*.root",
        "hub.h0.rare.3",
        "hub.*.*.*",
        "nothing.*",
    ] {
        for limit in [1, 7, 100, 1000] {
            for after_seq in [0, 250, 599, 600] {
                let p = Pattern::parse(pattern).unwrap();
                let expected: Vec<Seq> = all
                    .iter()
                    .filter(|e| e.seq > after_seq && p.matches(e.subject.as_str()))
                    .map(|e| e.seq)
                    .take(limit)
                    .collect();
                let page = store
                    .query(Query {
                        subject: Some(p),
                        after_seq,
                        limit,
                        ..Query::default()
                    })
                    .await
                    .unwrap();
                let got: Vec<Seq> = page.events.iter().map(|e| e.seq).collect();
                assert_eq!(
                    got, expected,
                    "pattern {pattern} limit {limit} after {after_seq}"
                );
                if got.len() < limit {
                    assert_eq!(
                        page.scanned_to,
                        600.max(after_seq),
                        "a short page covers the log"
                    );
                } else {
                    assert_eq!(page.scanned_to, *got.last().unwrap());
                }
            }
        }
    }
}

async fn collect_all<S: Store>(store: &S, mut query: Query) -> Vec<herald_core::Event> {
    let mut out = Vec::new();
    loop {
        let page = store.query(query.clone()).await.unwrap();
        let done = page.events.len() < query.limit;
        out.extend(page.events);
        query.after_seq = page.scanned_to;
        if done {
            return out;
        }
    }
}

async fn paging_sees_everything_once<S: Store>(store: &S) {
    for i in 0..25 {
        store
            .append(events(&format!("hub.p.s{}", i % 4), 9))
            .await
            .unwrap();
    }
    let pages = collect_all(
        store,
        Query {
            subject: Some(Pattern::parse("hub.p.*").unwrap()),
            limit: 10,
            ..Query::default()
        },
    )
    .await;
    let seqs: Vec<Seq> = pages.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=225).collect::<Vec<_>>());
}

async fn concurrent_appends_get_distinct_dense_seqs<S: Store>(store: &S) {
    let mut seqs: Vec<Seq> = Vec::new();
    let results = futures_util::future::join_all(
        (0..8).map(|t| store.append(events(&format!("hub.c.t{t}"), 25))),
    )
    .await;
    for batch in results {
        let batch = batch.unwrap();
        let batch_seqs: Vec<Seq> = batch.iter().map(|a| a.event().seq).collect();
        assert!(
            batch_seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "a batch is contiguous"
        );
        seqs.extend(batch_seqs);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
}
