//! The methods of `POST /rpc`, in one typed table.
//!
//! Each method is a type implementing [`RpcMethod`] (see [`crate::rpc::call`]): its name, description, params and
//! result shape (what `GET /rpc/methods` publishes), how its params are read, and what
//! it does. The [`methods!`] list below generates both [`METHODS`] (the published table)
//! and [`dispatch`] from the same names, so the two cannot drift apart.

use std::collections::VecDeque;

use axum::http::HeaderMap;
use herald_core::{Event, NewEvent, Pattern, Payload, Seq, Subject};
use herald_hub::access::Scoped;
use herald_hub::HubError;
use herald_store::{Query, MAX_QUERY_LIMIT};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::http::truncate;
use crate::rpc::call::{field, param, to_result, DEFAULT_LIMIT};
pub use crate::rpc::call::{Call, RpcMethod};
use crate::rpc::consumers;
use crate::rpc::error::{RpcCode, RpcError};
use crate::rpc::params::{kind, Params};
use crate::rpc::store;
use crate::rpc::wire::{self, FieldSpec, MethodSpec, ParamSpec, ResultSpec};
use crate::CORRELATION_HEADER;

pub use crate::rpc::call::ORIGIN_SERVICE;
/// Most events in one `bus.publish_batch` (as `POST /api/events:batch`).
pub const MAX_BATCH_EVENTS: usize = crate::wire::MAX_BATCH_EVENTS;

/// Generates [`METHODS`] and [`dispatch`] from one list of [`RpcMethod`] types.
macro_rules! methods {
    ($($method:ty),+ $(,)?) => {
        /// Every method, as `GET /rpc/methods` lists them.
        pub static METHODS: &[MethodSpec] = &[$(MethodSpec {
            name: <$method as RpcMethod>::NAME,
            description: <$method as RpcMethod>::DESCRIPTION,
            params: <$method as RpcMethod>::PARAMS,
            result: <$method as RpcMethod>::RESULT,
        }),+];

        /// Runs method `name`; `None` when there is no such method.
        pub async fn dispatch(
            call: &Call<'_>,
            name: &str,
            params: Option<&RawValue>,
        ) -> Option<Result<Box<RawValue>, RpcError>> {
            $(if name == <$method as RpcMethod>::NAME {
                return Some(run::<$method>(call, params).await);
            })+
            None
        }
    };
}

methods![
    BusPublish,
    BusSubscribe,
    HubInfo,
    HubHealth,
    BusGet,
    BusQuery,
    BusPublishBatch,
    store::StoreAppend,
    store::StoreLoad,
    store::StoreLoadSnapshot,
    store::StoreSaveSnapshot,
    StoreQuery,
    consumers::ConsumerPut,
    consumers::ConsumerGet,
    consumers::ConsumerList,
    consumers::ConsumerDelete,
    consumers::ConsumerFetch,
    consumers::ConsumerAck,
    consumers::ConsumerNak,
    consumers::ConsumerProgress,
    consumers::ConsumerTerm,
    consumers::ConsumerDeadLetters,
    consumers::ConsumerRedrive,
    consumers::ConsumerDiscard,
];

async fn run<M: RpcMethod>(
    call: &Call<'_>,
    params: Option<&RawValue>,
) -> Result<Box<RawValue>, RpcError> {
    let params = Params::parse(M::NAME, M::PARAMS, params)?;
    let params = M::parse(params)?;
    M::call(call, params).await
}

/// The names of every method, for `-32601`'s `data.available_methods`.
pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

const EVENT_FIELDS: &[FieldSpec] = &[
    field("id", "string", "the event's id (UUID)"),
    field("seq", "integer", "its place in the hub's log"),
    field("subject", "string", "its subject"),
    field("origin", "object", "{hub_id, service, user}"),
    field("correlation_id", "string", "UUID"),
    field("payload", "object", "as published"),
    field("timestamp", "string", "commit time, RFC 3339 UTC"),
];

const PUBLISHED_FIELDS: &[FieldSpec] = &[
    field("published", "boolean", "always true: the event is stored"),
    field("subject", "string", "the event's subject"),
    field(
        "correlation_id",
        "string",
        "the given or generated correlation id (UUID)",
    ),
    field("event_id", "string", "the event's id (UUID)"),
    field("seq", "integer", "its place in the hub's log"),
    field("timestamp", "string", "commit time, RFC 3339 UTC"),
    field(
        "duplicate",
        "boolean",
        "an event with the given `id` was already stored; the fields are that event's",
    ),
];

const EVENT_PARAMS: [ParamSpec; 3] = [
    param(
        "payload",
        "object",
        true,
        ErrorCode::InvalidPayload,
        "a JSON object ({} for none), stored as sent",
    ),
    param(
        "correlation_id",
        "string",
        false,
        ErrorCode::InvalidCorrelationId,
        "UUID; else the X-Correlation-ID header's; else a fresh one",
    ),
    param(
        "id",
        "string",
        false,
        ErrorCode::InvalidEventId,
        "non-nil UUID for an idempotent publish: if an event with this id is stored, it \
         is answered with `duplicate: true` and nothing new is stored; else a fresh UUIDv7",
    ),
];

/// An event to publish, from `bus.publish`'s params or one item of `bus.publish_batch`.
pub struct EventParams {
    subject: Subject,
    payload: Payload,
    correlation_id: Option<Uuid>,
    id: Option<Uuid>,
}

impl EventParams {
    /// Reads everything but the subject.
    fn parse(subject: Subject, params: &mut Params<'_>) -> Result<Self, RpcError> {
        let payload = params.payload("payload")?;
        let payload = payload.ok_or_else(|| params.invalid("payload", "is required"))?;
        Ok(EventParams {
            subject,
            payload,
            correlation_id: params.correlation("correlation_id")?,
            id: match params.uuid("id")? {
                Some(id) if id.is_nil() => {
                    return Err(params.invalid("id", "must not be the nil UUID"))
                }
                id => id,
            },
        })
    }

    fn into_new_event(self, call: &Call<'_>) -> Result<NewEvent, RpcError> {
        let correlation_id = match self.correlation_id {
            Some(id) => Some(id),
            None => header_correlation_id(call.headers)?,
        };
        let hub = &call.state.hub;
        let mut event = NewEvent::new(
            self.subject,
            self.payload,
            hub.origin(Some(ORIGIN_SERVICE.to_owned()), None),
            correlation_id,
        );
        if let Some(id) = self.id {
            event.id = id;
        }
        // The HTTP request's `traceparent`, as for `POST /api/events`.
        event.trace = crate::http::publish::header_trace(call.headers).map(Box::new);
        Ok(event)
    }
}

/// The request's `X-Correlation-ID`, which must be a UUID when present (as for
/// `POST /api/events`).
fn header_correlation_id(headers: &HeaderMap) -> Result<Option<Uuid>, RpcError> {
    let Some(value) = headers.get(&CORRELATION_HEADER) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    Uuid::try_parse(text.trim()).map(Some).map_err(|_| {
        RpcError::invalid_param(
            ErrorCode::InvalidCorrelationId,
            "X-Correlation-ID",
            format!(
                "(the header, used when `correlation_id` is not given) must be a UUID, got {:?}",
                truncate(text)
            ),
        )
    })
}

/// `bus.publish`.
pub struct BusPublish;

impl RpcMethod for BusPublish {
    const NAME: &'static str = "bus.publish";
    const DESCRIPTION: &'static str = "Publish one event. Answered once it is durably stored.";
    const PARAMS: &'static [ParamSpec] = &[
        param(
            "topic",
            "string",
            true,
            ErrorCode::InvalidSubject,
            "a literal subject (no wildcards), e.g. hub.local-hub.project.started",
        ),
        EVENT_PARAMS[0],
        EVENT_PARAMS[1],
        EVENT_PARAMS[2],
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "the stored event's ids",
        fields: PUBLISHED_FIELDS,
    };
    type Params = EventParams;

    fn parse(mut params: Params<'_>) -> Result<EventParams, RpcError> {
        let subject = params.subject("topic")?;
        let subject = subject.ok_or_else(|| params.invalid("topic", "is required"))?;
        EventParams::parse(subject, &mut params)
    }

    async fn call(call: &Call<'_>, params: EventParams) -> Result<Box<RawValue>, RpcError> {
        let event = params.into_new_event(call)?;
        let published = call.state.publish(call.caller, event).await?;
        to_result(&wire::Published::from(&published))
    }
}

/// `bus.publish_batch`.
pub struct BusPublishBatch;

/// The fields of one item of `bus.publish_batch`.
static BATCH_ITEM: &[ParamSpec] = &[
    param(
        "topic",
        "string",
        false,
        ErrorCode::InvalidSubject,
        "a literal subject; give `topic` or `subject`",
    ),
    param(
        "subject",
        "string",
        false,
        ErrorCode::InvalidSubject,
        "the same as `topic`",
    ),
    EVENT_PARAMS[0],
    EVENT_PARAMS[1],
    EVENT_PARAMS[2],
];

impl BusPublishBatch {
    fn parse_item(item: &RawValue) -> Result<EventParams, RpcError> {
        if kind(item) != "an object" {
            return Err(RpcError::invalid_param(
                ErrorCode::InvalidBody,
                "event",
                format!(
                    "must be an object {{topic, payload, correlation_id?, id?}}, not {}",
                    kind(item)
                ),
            ));
        }
        let mut params = Params::parse(Self::NAME, BATCH_ITEM, Some(item))?;
        let subject = match (params.subject("topic")?, params.subject("subject")?) {
            (Some(subject), None) | (None, Some(subject)) => subject,
            (None, None) => return Err(params.invalid("topic", "is required (or `subject`)")),
            (Some(_), Some(_)) => {
                return Err(params.invalid("topic", "and `subject` are both given; give one"))
            }
        };
        EventParams::parse(subject, &mut params)
    }
}

impl RpcMethod for BusPublishBatch {
    const NAME: &'static str = "bus.publish_batch";
    const DESCRIPTION: &'static str = "Publish 1 to 1000 events in one transaction: all of them \
        or none. One invalid event rejects the batch (-32602, `data.errors` lists each \
        problem with its index) and nothing is stored.";
    const PARAMS: &'static [ParamSpec] = &[param(
        "events",
        "array",
        true,
        ErrorCode::InvalidBatch,
        "objects {topic (or subject), payload, correlation_id?, id?}, as for bus.publish",
    )];
    const RESULT: ResultSpec = ResultSpec {
        description: "{results, count}: one bus.publish result per event, in order",
        fields: &[
            field(
                "results",
                "array",
                "bus.publish results, in the order of `events`",
            ),
            field("count", "integer", "number of results"),
        ],
    };
    type Params = Vec<EventParams>;

    fn parse(mut params: Params<'_>) -> Result<Vec<EventParams>, RpcError> {
        let items = params.array("events")?.unwrap_or_default();
        if items.is_empty() || items.len() > MAX_BATCH_EVENTS {
            return Err(params.invalid(
                "events",
                format!("has {} events; send 1 to {MAX_BATCH_EVENTS}", items.len()),
            ));
        }
        let mut events = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match Self::parse_item(item) {
                Ok(event) => events.push(event),
                Err(error) => errors.push(serde_json::json!({
                    "index": index,
                    "param": error.data.get("param"),
                    "code": error.code.as_str(),
                    "message": error.detail,
                })),
            }
        }
        if let Some(first) = errors.first() {
            let reason = format!(
                "has {} invalid event(s), so none was published; the first: events[{}]: {}",
                errors.len(),
                first["index"],
                first["message"].as_str().unwrap_or_default()
            );
            return Err(params.invalid("events", reason).with("errors", errors));
        }
        Ok(events)
    }

    async fn call(call: &Call<'_>, params: Vec<EventParams>) -> Result<Box<RawValue>, RpcError> {
        let events = params
            .into_iter()
            .map(|event| event.into_new_event(call))
            .collect::<Result<Vec<_>, _>>()?;
        let published = call.state.publish_batch(call.caller, events).await?;
        let results: Vec<wire::Published<'_>> = published.iter().map(Into::into).collect();
        to_result(&wire::PublishedBatch {
            count: results.len(),
            results,
        })
    }
}

/// `bus.subscribe`: despite the seed's name, a read of the recent past (live delivery
/// is the WebSocket stream's job).
pub struct BusSubscribe;

/// `bus.subscribe`'s params.
pub struct RecentParams {
    pattern: Option<Pattern>,
    limit: usize,
}

impl RpcMethod for BusSubscribe {
    const NAME: &'static str = "bus.subscribe";
    const DESCRIPTION: &'static str = "The most recent events whose subject matches a pattern, \
        oldest first. (It does not subscribe: for live events use the WebSocket \
        GET /api/events/stream.)";
    const PARAMS: &'static [ParamSpec] = &[
        param(
            "subject",
            "string",
            false,
            ErrorCode::InvalidQuery,
            "pattern: `*` one token, `>` the rest, `%` as `*` (e.g. hub.*.project.>); \
             default: every subject",
        ),
        param(
            "limit",
            "integer",
            false,
            ErrorCode::InvalidQuery,
            "how many of the newest matching events, 1 to 1000; default 100",
        ),
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "{events, count}: the newest `limit` matching events in seq order; \
            each event has the fields below (as GET /api/events)",
        fields: EVENT_FIELDS,
    };
    type Params = RecentParams;

    fn parse(mut params: Params<'_>) -> Result<RecentParams, RpcError> {
        Ok(RecentParams {
            pattern: params
                .pattern("subject")?
                .filter(|p| !p.matches_everything()),
            limit: params
                .integer("limit", 1, MAX_QUERY_LIMIT as u64)?
                .unwrap_or(DEFAULT_LIMIT) as usize,
        })
    }

    async fn call(call: &Call<'_>, params: RecentParams) -> Result<Box<RawValue>, RpcError> {
        let events = newest(
            &call.state.hub.as_caller(call.caller),
            params.pattern,
            params.limit,
        )
        .await?;
        to_result(&wire::Events {
            count: events.len(),
            events: events.iter().map(Into::into).collect(),
        })
    }
}

/// The newest `n` events matching `pattern`, in seq order.
///
/// The store only reads forward, so this reads backwards in segments of the log, each
/// twice as long as the one before (starting at `n`), taking the newest events still
/// needed from each, until it has `n` or has reached the start of the log. Events
/// committed meanwhile (after the head seen at the start) are left out.
async fn newest(
    hub: &Scoped<'_>,
    pattern: Option<Pattern>,
    n: usize,
) -> Result<Vec<Event>, HubError> {
    let head = hub.head().await?;
    let mut newest: VecDeque<Event> = VecDeque::with_capacity(n);
    let mut hi = head;
    let mut length = (n as Seq).max(128);
    while hi > 0 && newest.len() < n {
        let lo = hi.saturating_sub(length);
        let segment = newest_in(hub, &pattern, lo, hi, n - newest.len()).await?;
        for event in segment.into_iter().rev() {
            newest.push_front(event);
        }
        hi = lo;
        length = length.saturating_mul(2);
    }
    Ok(newest.into())
}

/// The newest `n` events matching `pattern` with `lo < seq <= hi`, in seq order.
async fn newest_in(
    hub: &Scoped<'_>,
    pattern: &Option<Pattern>,
    lo: Seq,
    hi: Seq,
    n: usize,
) -> Result<VecDeque<Event>, HubError> {
    // The segment holds at most `hi - lo` matches: a page that long cannot overshoot by
    // more than the segment's length.
    let page_limit =
        usize::try_from(hi - lo).map_or(MAX_QUERY_LIMIT, |len| len.min(MAX_QUERY_LIMIT));
    let mut kept: VecDeque<Event> = VecDeque::with_capacity(n.min(page_limit));
    let mut after = lo;
    loop {
        let page = hub
            .query(Query {
                subject: pattern.clone(),
                after_seq: after,
                limit: page_limit,
                ..Query::default()
            })
            .await?;
        let full = page.events.len() == page_limit;
        for event in page.events {
            if event.seq > hi {
                return Ok(kept);
            }
            if kept.len() == n {
                kept.pop_front();
            }
            kept.push_back(event);
        }
        if !full || page.scanned_to >= hi || page.scanned_to <= after {
            return Ok(kept);
        }
        after = page.scanned_to;
    }
}

/// `bus.query`.
pub struct BusQuery;

impl RpcMethod for BusQuery {
    const NAME: &'static str = "bus.query";
    const DESCRIPTION: &'static str = "Events matching every filter given, oldest first: the \
        filters of GET /api/events. Page with `after_seq` = the previous `next_after_seq`.";
    const PARAMS: &'static [ParamSpec] = &[
        param(
            "subject",
            "string",
            false,
            ErrorCode::InvalidQuery,
            "pattern: `*` one token, `>` the rest, `%` as `*`, or a literal subject",
        ),
        param(
            "since",
            "string",
            false,
            ErrorCode::InvalidQuery,
            "RFC 3339 instant, inclusive (no offset = UTC)",
        ),
        param(
            "until",
            "string",
            false,
            ErrorCode::InvalidQuery,
            "RFC 3339 instant, inclusive (no offset = UTC)",
        ),
        param(
            "correlation_id",
            "string",
            false,
            ErrorCode::InvalidQuery,
            "UUID",
        ),
        param(
            "limit",
            "integer",
            false,
            ErrorCode::InvalidQuery,
            "1 to 1000; default 100",
        ),
        param(
            "after_seq",
            "integer",
            false,
            ErrorCode::InvalidQuery,
            "only events with a larger seq; default 0",
        ),
        param(
            "aggregate_type",
            "string",
            false,
            ErrorCode::InvalidQuery,
            "only events of aggregates of this type",
        ),
        param(
            "aggregate_id",
            "string",
            false,
            ErrorCode::InvalidQuery,
            "only events of aggregates with this id",
        ),
        param(
            "payload_contains",
            "string",
            false,
            ErrorCode::InvalidQuery,
            "only events whose payload's JSON text contains this text (1 to 256 characters)",
        ),
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "{events, count, next_after_seq}: matching events in seq order (fields \
            below, as GET /api/events); `next_after_seq` is where the next page starts, \
            even when nothing matched",
        fields: EVENT_FIELDS,
    };
    type Params = Query;

    fn parse(mut params: Params<'_>) -> Result<Query, RpcError> {
        let query = Query {
            subject: params.pattern("subject")?,
            since: params.timestamp("since")?,
            until: params.timestamp("until")?,
            correlation_id: params.uuid("correlation_id")?,
            limit: params
                .integer("limit", 1, MAX_QUERY_LIMIT as u64)?
                .unwrap_or(DEFAULT_LIMIT) as usize,
            after_seq: params.seq("after_seq")?.unwrap_or(0),
            aggregate_type: params.string("aggregate_type")?,
            aggregate_id: params.string("aggregate_id")?,
            payload_contains: params.string("payload_contains")?,
        };
        if query
            .payload_contains
            .as_ref()
            .is_some_and(|text| text.is_empty() || text.chars().count() > 256)
        {
            return Err(params.invalid("payload_contains", "must be 1 to 256 characters"));
        }
        if let (Some(since), Some(until)) = (query.since, query.until) {
            if since > until {
                return Err(params.invalid("since", "is later than `until`"));
            }
        }
        Ok(query)
    }

    async fn call(call: &Call<'_>, query: Query) -> Result<Box<RawValue>, RpcError> {
        let limit = query.limit;
        let page = call.state.hub.as_caller(call.caller).query(query).await?;
        // As `GET /api/events`'s X-Next-After-Seq.
        let next_after_seq = if page.events.len() < limit {
            page.scanned_to
        } else {
            page.events.last().map_or(page.scanned_to, |e| e.seq)
        };
        to_result(&wire::QueryPage {
            count: page.events.len(),
            events: page.events.iter().map(Into::into).collect(),
            next_after_seq,
        })
    }
}

/// `store.query`: `bus.query` under seed 003's name.
pub struct StoreQuery;

impl RpcMethod for StoreQuery {
    const NAME: &'static str = "store.query";
    const DESCRIPTION: &'static str = "Events matching every filter given, oldest first (as \
        bus.query, with the same params; `aggregate_type` and `aggregate_id` select an \
        aggregate's events).";
    const PARAMS: &'static [ParamSpec] = BusQuery::PARAMS;
    const RESULT: ResultSpec = BusQuery::RESULT;
    type Params = Query;

    fn parse(params: Params<'_>) -> Result<Query, RpcError> {
        BusQuery::parse(params)
    }

    async fn call(call: &Call<'_>, query: Query) -> Result<Box<RawValue>, RpcError> {
        BusQuery::call(call, query).await
    }
}

/// `bus.get`.
pub struct BusGet;

impl RpcMethod for BusGet {
    const NAME: &'static str = "bus.get";
    const DESCRIPTION: &'static str =
        "One event by id. An id that is not stored is error -32004 (event not found).";
    const PARAMS: &'static [ParamSpec] = &[param(
        "event_id",
        "string",
        true,
        ErrorCode::InvalidEventId,
        "the event's id (UUID)",
    )];
    const RESULT: ResultSpec = ResultSpec {
        description: "the event (as GET /api/events/{id})",
        fields: EVENT_FIELDS,
    };
    type Params = Uuid;

    fn parse(mut params: Params<'_>) -> Result<Uuid, RpcError> {
        let id = params.uuid("event_id")?;
        id.ok_or_else(|| params.invalid("event_id", "is required"))
    }

    async fn call(call: &Call<'_>, id: Uuid) -> Result<Box<RawValue>, RpcError> {
        match call.state.hub.as_caller(call.caller).get(id).await? {
            Some(event) => to_result(&crate::wire::Event::from(&event)),
            None => Err(RpcError::from(ApiError::new(
                ErrorCode::EventNotFound,
                format!("no event with id {id}"),
            ))
            .with("event_id", id.to_string())),
        }
    }
}

/// `hub.info`.
pub struct HubInfo;

impl RpcMethod for HubInfo {
    const NAME: &'static str = "hub.info";
    const DESCRIPTION: &'static str = "What this hub is.";
    const PARAMS: &'static [ParamSpec] = &[];
    const RESULT: ResultSpec = ResultSpec {
        description: "{hub_id, version, status}",
        fields: &[
            field("hub_id", "string", "this hub's id (HUB_ID)"),
            field("version", "string", "Herald's version"),
            field(
                "status",
                "string",
                "\"running\", or \"shutting_down\" once shutdown has begun",
            ),
        ],
    };
    type Params = ();

    fn parse(_: Params<'_>) -> Result<(), RpcError> {
        Ok(())
    }

    async fn call(call: &Call<'_>, (): ()) -> Result<Box<RawValue>, RpcError> {
        let state = call.state;
        let stopping = state.shutdown.is_cancelled() || state.hub.shutdown_token().is_cancelled();
        to_result(&wire::HubInfo {
            hub_id: state.hub.hub_id(),
            version: env!("CARGO_PKG_VERSION"),
            status: if stopping { "shutting_down" } else { "running" },
        })
    }
}

/// `hub.health`.
pub struct HubHealth;

impl RpcMethod for HubHealth {
    const NAME: &'static str = "hub.health";
    const DESCRIPTION: &'static str =
        "Health of the hub and its dependencies (as GET /health, but always a result).";
    const PARAMS: &'static [ParamSpec] = &[];
    const RESULT: ResultSpec = ResultSpec {
        description: "{status, services: {nats, database}}",
        fields: &[
            field(
                "status",
                "string",
                "\"healthy\"; \"degraded\" while NATS is configured but unreachable; \"unhealthy\" when the store fails",
            ),
            field(
                "services",
                "object",
                "{nats: \"healthy\" | \"unhealthy\" | \"disabled\", database: \"healthy\" | \"unhealthy\"}",
            ),
        ],
    };
    type Params = ();

    fn parse(_: Params<'_>) -> Result<(), RpcError> {
        Ok(())
    }

    async fn call(call: &Call<'_>, (): ()) -> Result<Box<RawValue>, RpcError> {
        let healthy = call.state.hub.health().await.healthy;
        let database = if healthy { "healthy" } else { "unhealthy" };
        let nats = match call.state.hub.nats_status() {
            None => "disabled",
            Some(n) if n.healthy => "healthy",
            Some(_) => "unhealthy",
        };
        let status = match (healthy, nats) {
            (false, _) => "unhealthy",
            (true, "unhealthy") => "degraded",
            (true, _) => "healthy",
        };
        to_result(&wire::HubHealth {
            status,
            services: wire::Services { nats, database },
        })
    }
}

/// Every code `GET /rpc/methods` documents.
pub fn errors() -> Vec<wire::ErrorSpec> {
    RpcCode::ALL
        .iter()
        .map(|code| wire::ErrorSpec {
            code: code.number(),
            message: code.title(),
            meaning: code.meaning(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppState, Limits};
    use herald_hub::HubConfig;
    use herald_store::{AnyStore, EmbeddedOptions, EmbeddedStore};
    use std::time::Instant;
    use tokio_util::sync::CancellationToken;

    const EXPECTED: &[&str] = &[
        "bus.publish",
        "bus.subscribe",
        "hub.info",
        "hub.health",
        "bus.get",
        "bus.query",
        "bus.publish_batch",
        "store.append",
        "store.load",
        "store.load_snapshot",
        "store.save_snapshot",
        "store.query",
        "consumer.put",
        "consumer.get",
        "consumer.list",
        "consumer.delete",
        "consumer.fetch",
        "consumer.ack",
        "consumer.nak",
        "consumer.progress",
        "consumer.term",
        "consumer.dead_letters",
        "consumer.redrive",
        "consumer.discard",
    ];

    #[test]
    fn the_table_is_well_formed() {
        assert_eq!(names(), EXPECTED);
        for method in METHODS {
            let mut names: Vec<_> = method.params.iter().map(|p| p.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), method.params.len(), "{}", method.name);
            assert!(!method.description.is_empty(), "{}", method.name);
        }
    }

    /// Every listed method dispatches, and nothing else does: each call is given an
    /// unknown param, so it is rejected before it runs.
    #[tokio::test]
    async fn every_listed_method_dispatches_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
            .await
            .unwrap();
        let hub = herald_hub::Hub::open(HubConfig::new("test"), AnyStore::Embedded(store))
            .await
            .unwrap();
        let state = AppState::new(hub.clone(), Limits::default(), CancellationToken::new());
        let headers = HeaderMap::new();
        let caller = herald_hub::access::Caller::trusted();
        let call = Call {
            state: &state,
            caller: &caller,
            headers: &headers,
            received: Instant::now(),
        };
        let params = RawValue::from_string(r#"{"no_such_param": 1}"#.to_owned()).unwrap();
        for method in METHODS {
            let outcome = dispatch(&call, method.name, Some(&params)).await;
            let error = outcome
                .unwrap_or_else(|| panic!("{} is listed but does not dispatch", method.name))
                .unwrap_err();
            assert_eq!(error.rpc, RpcCode::InvalidParams, "{}", method.name);
            assert_eq!(error.data["param"], "no_such_param");
        }
        for name in [
            "",
            "bus",
            "bus.publish ",
            "BUS.PUBLISH",
            "rpc.discover",
            "bus.tail",
        ] {
            assert!(
                dispatch(&call, name, None).await.is_none(),
                "{name:?} dispatches but is not listed"
            );
        }
        hub.shutdown().await;
    }
}
