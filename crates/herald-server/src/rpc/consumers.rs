//! The durable consumers' methods (`consumer.*`): the HTTP API of `/api/consumers` over
//! JSON-RPC, with the same params as its bodies and the same results as its answers.
//!
//! Params other than `name` are handed to the HTTP API's own field reading
//! ([`Fields`], [`consumer_config`]) as the object an HTTP body would be, so ranges,
//! defaults and messages cannot drift apart. Like every JSON-RPC param, `null` counts as
//! absent.
//!
//! Refusals of the consumer engine keep their REST code in `data.code` and get the
//! JSON-RPC code of the error table; those about one param (the consumer `name`, a
//! setting, a dead letter's `seq`) also name it in `data.param`.

use std::time::Duration;

use herald_hub::consumers::{
    ConsumerError, PutOutcome, Settle, MAX_ACK_IDS, MAX_FETCH_BATCH, MAX_FETCH_WAIT,
};
use herald_store::MAX_QUERY_LIMIT;
use serde_json::value::RawValue;

use crate::error::{ApiError, ErrorCode};
use crate::rpc::call::{body, field, param, to_result, Call, RpcMethod, DEFAULT_LIMIT};
use crate::rpc::error::RpcError;
use crate::rpc::params::Params;
use crate::rpc::wire::{self, FieldSpec, ParamSpec, ResultSpec};
use crate::wire::consumers::{
    consumer_config, Consumer, ConsumerDeadLetterJson, ConsumerDeadLetterList,
    ConsumerList as ConsumerListJson, FetchResponse, FieldError, Fields, Message, RedriveResponse,
    SettleResponse, SettleVerb,
};

/// The config fields of `consumer.put`, as `PUT /api/consumers/{name}` takes them.
const CONFIG_FIELDS: &[&str] = &[
    "filter_subjects",
    "deliver_policy",
    "opt_start_seq",
    "opt_start_time",
    "ack_wait_ms",
    "max_deliver",
    "backoff_ms",
    "max_ack_pending",
    "description",
];

const fn name_param(error: ErrorCode) -> ParamSpec {
    param(
        "name",
        "string",
        true,
        error,
        "the consumer's name: 1 to 128 ASCII letters, digits, '-' or '_'",
    )
}

const NAME: ParamSpec = name_param(ErrorCode::InvalidBody);

const ACK_IDS: ParamSpec = param(
    "ack_ids",
    "array",
    true,
    ErrorCode::InvalidBody,
    "the `ack_id`s of the deliveries (strings from consumer.fetch), at most 10000",
);

const REASON: ParamSpec = param(
    "reason",
    "string",
    false,
    ErrorCode::InvalidBody,
    "why, at most 1024 characters; kept as the dead letter's `last_error`",
);

const CONSUMER_FIELDS: &[FieldSpec] = &[
    field("name", "string", "the consumer's name"),
    field(
        "filter_subjects",
        "array",
        "the subject patterns it takes (any of them)",
    ),
    field(
        "deliver_policy",
        "string",
        "all, new, by_start_seq or by_start_time",
    ),
    field(
        "opt_start_seq",
        "integer",
        "with by_start_seq only: the first seq",
    ),
    field(
        "opt_start_time",
        "string",
        "with by_start_time only: the first instant, RFC 3339",
    ),
    field("ack_wait_ms", "integer", "how long a delivery is held"),
    field(
        "max_deliver",
        "integer",
        "deliveries per message; -1: unlimited",
    ),
    field(
        "backoff_ms",
        "array",
        "delays before redeliveries; null: 1 s doubling to 5 minutes, ±10 % jitter",
    ),
    field("max_ack_pending", "integer", "most deliveries out at once"),
    field("description", "string", "free text, or null"),
    field("created_at", "string", "RFC 3339 UTC"),
    field(
        "state",
        "object",
        "{ack_floor, last_delivered_seq, num_pending, num_ack_pending, num_redelivered, \
         num_dead_letters, skipped_by_retention, stalled}",
    ),
];

const SETTLED_FIELDS: &[FieldSpec] = &[
    field(
        "done",
        "integer",
        "how many deliveries were settled as asked",
    ),
    field(
        "unknown",
        "array",
        "ack ids that are malformed, unknown, already settled or of an earlier delivery \
         (not an error)",
    ),
];

/// A refusal of the consumer engine, through the error table's JSON-RPC column, naming
/// the param it is about where there is one.
fn refused(error: ConsumerError) -> RpcError {
    let param = match &error {
        ConsumerError::NotFound(_) => Some("name"),
        ConsumerError::Invalid(invalid) => Some(invalid.field),
        ConsumerError::Conflict { field, .. } => Some(*field),
        _ => None,
    };
    let reason = error.to_string();
    let rpc = RpcError::from(ApiError::from(error));
    match param {
        Some(param) => rpc.with("param", param).with("reason", reason),
        None => rpc,
    }
}

/// A field the HTTP API's field reading refused, as an error in that param.
fn field_error(params: &Params<'_>, error: FieldError) -> RpcError {
    params.invalid(error.field, error.message)
}

/// The required `name`.
fn name(params: &mut Params<'_>) -> Result<String, RpcError> {
    let name = params.string("name")?;
    name.ok_or_else(|| params.invalid("name", "is required"))
}

/// `consumer.put`.
pub struct ConsumerPut;

/// `consumer.put`'s params.
pub struct PutParams {
    name: String,
    config: herald_hub::consumers::ConsumerConfig,
}

impl RpcMethod for ConsumerPut {
    const NAME: &'static str = "consumer.put";
    const DESCRIPTION: &'static str = "Create a durable consumer, or answer the existing one \
        (as PUT /api/consumers/{name}), updating `ack_wait_ms`, `max_deliver`, `backoff_ms`, \
        `max_ack_pending` and `description` when they differ. `filter_subjects`, \
        `deliver_policy` and its `opt_start_*` cannot change: a different value is -32602 \
        with `data.code` consumer_conflict. A malformed setting is -32602 with `data.code` \
        invalid_consumer and `data.param` naming it.";
    const PARAMS: &'static [ParamSpec] = &[
        name_param(ErrorCode::InvalidConsumer),
        param(
            "filter_subjects",
            "array",
            true,
            ErrorCode::InvalidConsumer,
            "subject patterns to consume (`*` one token, `>` the rest), 1 to 16",
        ),
        param(
            "deliver_policy",
            "string",
            false,
            ErrorCode::InvalidConsumer,
            "all (default), new, by_start_seq (with opt_start_seq) or by_start_time (with \
             opt_start_time)",
        ),
        param(
            "opt_start_seq",
            "integer",
            false,
            ErrorCode::InvalidConsumer,
            "the first seq to deliver, with deliver_policy by_start_seq",
        ),
        param(
            "opt_start_time",
            "string",
            false,
            ErrorCode::InvalidConsumer,
            "RFC 3339: the first instant to deliver, with deliver_policy by_start_time",
        ),
        param(
            "ack_wait_ms",
            "integer",
            false,
            ErrorCode::InvalidConsumer,
            "how long a delivery is held before it is redelivered; default 30000",
        ),
        param(
            "max_deliver",
            "integer",
            false,
            ErrorCode::InvalidConsumer,
            "deliveries before a message goes to the dead letters; -1 unlimited; default 5",
        ),
        param(
            "backoff_ms",
            "array",
            false,
            ErrorCode::InvalidConsumer,
            "delays (ms) before the 1st, 2nd, … redelivery, the last repeating; default 1 s \
             doubling to 5 minutes, ±10 % jitter",
        ),
        param(
            "max_ack_pending",
            "integer",
            false,
            ErrorCode::InvalidConsumer,
            "most deliveries out at once; default 1000",
        ),
        param(
            "description",
            "string",
            false,
            ErrorCode::InvalidConsumer,
            "free text, at most 1024 characters",
        ),
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "{created, consumer}: `created` is false when it existed; `consumer` is \
            as GET /api/consumers/{name} answers it (fields below)",
        fields: CONSUMER_FIELDS,
    };
    type Params = PutParams;

    fn parse(mut params: Params<'_>) -> Result<PutParams, RpcError> {
        let name = name(&mut params)?;
        let object = body(&mut params, CONFIG_FIELDS)?;
        let config = consumer_config(object).map_err(|e| field_error(&params, e))?;
        Ok(PutParams { name, config })
    }

    async fn call(call: &Call<'_>, params: PutParams) -> Result<Box<RawValue>, RpcError> {
        let (outcome, info) = call
            .state
            .hub
            .as_caller(call.caller)
            .put_consumer(&params.name, params.config)
            .await
            .map_err(refused)?;
        to_result(&wire::ConsumerPut {
            created: outcome == PutOutcome::Created,
            consumer: Consumer::from(info),
        })
    }
}

/// `consumer.get`.
pub struct ConsumerGet;

impl RpcMethod for ConsumerGet {
    const NAME: &'static str = "consumer.get";
    const DESCRIPTION: &'static str = "One durable consumer's settings and state (as \
        GET /api/consumers/{name}). An unknown name is -32602 with `data.code` \
        consumer_not_found.";
    const PARAMS: &'static [ParamSpec] = &[NAME];
    const RESULT: ResultSpec = ResultSpec {
        description: "the consumer",
        fields: CONSUMER_FIELDS,
    };
    type Params = String;

    fn parse(mut params: Params<'_>) -> Result<String, RpcError> {
        name(&mut params)
    }

    async fn call(call: &Call<'_>, name: String) -> Result<Box<RawValue>, RpcError> {
        let info = call
            .state
            .hub
            .as_caller(call.caller)
            .consumer_info(&name)
            .await
            .map_err(refused)?;
        to_result(&Consumer::from(info))
    }
}

/// `consumer.list`.
pub struct ConsumerList;

impl RpcMethod for ConsumerList {
    const NAME: &'static str = "consumer.list";
    const DESCRIPTION: &'static str =
        "Every durable consumer with its settings and state, by name (as GET /api/consumers).";
    const PARAMS: &'static [ParamSpec] = &[];
    const RESULT: ResultSpec = ResultSpec {
        description: "{consumers, count}: each consumer as consumer.get answers it",
        fields: &[
            field("consumers", "array", "the consumers, by name"),
            field("count", "integer", "how many"),
        ],
    };
    type Params = ();

    fn parse(_: Params<'_>) -> Result<(), RpcError> {
        Ok(())
    }

    async fn call(call: &Call<'_>, (): ()) -> Result<Box<RawValue>, RpcError> {
        let consumers: Vec<Consumer> = call
            .state
            .hub
            .as_caller(call.caller)
            .list_consumers()
            .await
            .map_err(refused)?
            .into_iter()
            .map(Consumer::from)
            .collect();
        to_result(&ConsumerListJson {
            count: consumers.len(),
            consumers,
        })
    }
}

/// `consumer.delete`.
pub struct ConsumerDelete;

impl RpcMethod for ConsumerDelete {
    const NAME: &'static str = "consumer.delete";
    const DESCRIPTION: &'static str = "Delete a durable consumer with its pending messages and \
        dead letters (as DELETE /api/consumers/{name}). The events stay in the log.";
    const PARAMS: &'static [ParamSpec] = &[NAME];
    const RESULT: ResultSpec = ResultSpec {
        description: "{deleted: true}",
        fields: &[field("deleted", "boolean", "always true")],
    };
    type Params = String;

    fn parse(mut params: Params<'_>) -> Result<String, RpcError> {
        name(&mut params)
    }

    async fn call(call: &Call<'_>, name: String) -> Result<Box<RawValue>, RpcError> {
        call.state
            .hub
            .as_caller(call.caller)
            .delete_consumer(&name)
            .await
            .map_err(refused)?;
        to_result(&wire::ConsumerDeleted { deleted: true })
    }
}

/// `consumer.fetch`.
pub struct ConsumerFetch;

/// `consumer.fetch`'s params.
pub struct FetchParams {
    name: String,
    batch: usize,
    wait: Duration,
}

impl RpcMethod for ConsumerFetch {
    const NAME: &'static str = "consumer.fetch";
    const DESCRIPTION: &'static str = "Hand out up to `batch` messages (as POST \
        /api/consumers/{name}/fetch): due redeliveries first, then new events in seq order, \
        as far as `max_ack_pending` allows. Each is held for this client until it is \
        settled or its ack wait ends. With `wait_ms` the call waits for messages and \
        answers as soon as any is available, or with none when none came in time; the wait \
        ends before the server's request timeout, counted from the start of the HTTP \
        request (in a batch, calls before it use up part of it).";
    const PARAMS: &'static [ParamSpec] = &[
        NAME,
        param(
            "batch",
            "integer",
            false,
            ErrorCode::InvalidBody,
            "most messages, 1 to 1000; default 1",
        ),
        param(
            "wait_ms",
            "integer",
            false,
            ErrorCode::InvalidBody,
            "how long to wait for messages, 0 to 60000; default 0 (answer at once)",
        ),
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "{messages}: possibly none; each message is {ack_id, delivery, event} \
            (fields below)",
        fields: &[
            field(
                "ack_id",
                "string",
                "hand it to consumer.ack, .nak, .progress or .term to settle this delivery",
            ),
            field(
                "delivery",
                "integer",
                "which delivery this is (1 for the first)",
            ),
            field("event", "object", "the event, as GET /api/events/{id}"),
        ],
    };
    type Params = FetchParams;

    fn parse(mut params: Params<'_>) -> Result<FetchParams, RpcError> {
        let name = name(&mut params)?;
        let fields = Fields::new(
            body(&mut params, &["batch", "wait_ms"])?,
            &["batch", "wait_ms"],
        )
        .map_err(|e| field_error(&params, e))?;
        let batch = fields
            .integer("batch", 1..=MAX_FETCH_BATCH as i64)
            .map_err(|e| field_error(&params, e))?
            .unwrap_or(1) as usize;
        let wait_ms = fields
            .integer("wait_ms", 0..=MAX_FETCH_WAIT.as_millis() as i64)
            .map_err(|e| field_error(&params, e))?
            .unwrap_or(0) as u64;
        Ok(FetchParams {
            name,
            batch,
            wait: Duration::from_millis(wait_ms),
        })
    }

    async fn call(call: &Call<'_>, params: FetchParams) -> Result<Box<RawValue>, RpcError> {
        // Answer (possibly empty) a second before the request timeout cuts the request
        // off, as the HTTP handler does.
        let left = call
            .state
            .limits
            .request_timeout
            .saturating_sub(Duration::from_secs(1))
            .saturating_sub(call.received.elapsed());
        let messages = call
            .state
            .hub
            .as_caller(call.caller)
            .fetch(&params.name, params.batch, params.wait.min(left))
            .await
            .map_err(refused)?;
        to_result(&FetchResponse {
            messages: messages.iter().map(Message::from).collect(),
        })
    }
}

/// One settle call: whose deliveries, and how.
pub struct SettleParams {
    name: String,
    ack_ids: Vec<String>,
    how: Settle,
}

/// Reads `name`, `ack_ids` and the verb's options of a settle call (the spec has already
/// refused any other parameter).
fn settle_params(params: &mut Params<'_>, verb: SettleVerb) -> Result<SettleParams, RpcError> {
    let name = name(params)?;
    let mut known = vec!["ack_ids"];
    known.extend(verb.options());
    let fields = Fields::new(body(params, &known)?, &known).map_err(|e| field_error(params, e))?;
    let ack_ids = fields
        .strings("ack_ids", MAX_ACK_IDS)
        .map_err(|e| field_error(params, e))?
        .ok_or_else(|| params.invalid("ack_ids", "is required"))?;
    let how = verb.settle(&fields).map_err(|e| field_error(params, e))?;
    Ok(SettleParams { name, ack_ids, how })
}

async fn settle(call: &Call<'_>, params: SettleParams) -> Result<Box<RawValue>, RpcError> {
    let settled = call
        .state
        .hub
        .as_caller(call.caller)
        .settle(&params.name, &params.ack_ids, params.how)
        .await
        .map_err(refused)?;
    to_result(&SettleResponse::from(settled))
}

/// `consumer.ack`.
pub struct ConsumerAck;

impl RpcMethod for ConsumerAck {
    const NAME: &'static str = "consumer.ack";
    const DESCRIPTION: &'static str = "Settle deliveries: they are not delivered again (as POST \
        /api/consumers/{name}/ack). Answered only once durable. An ack of an earlier \
        delivery of a message still counts; unknown or already settled ack ids are listed \
        in `unknown`, not an error.";
    const PARAMS: &'static [ParamSpec] = &[NAME, ACK_IDS];
    const RESULT: ResultSpec = ResultSpec {
        description: "{done, unknown}",
        fields: SETTLED_FIELDS,
    };
    type Params = SettleParams;

    fn parse(mut params: Params<'_>) -> Result<SettleParams, RpcError> {
        settle_params(&mut params, SettleVerb::Ack)
    }

    async fn call(call: &Call<'_>, params: SettleParams) -> Result<Box<RawValue>, RpcError> {
        settle(call, params).await
    }
}

/// `consumer.nak`.
pub struct ConsumerNak;

impl RpcMethod for ConsumerNak {
    const NAME: &'static str = "consumer.nak";
    const DESCRIPTION: &'static str = "Give deliveries back (as POST \
        /api/consumers/{name}/nak): each is delivered again after `delay_ms`, or after the \
        consumer's backoff when absent. A NAK of a message's last allowed delivery \
        (`max_deliver`) sends it to the dead letters at once, with `reason` as its \
        `last_error`.";
    const PARAMS: &'static [ParamSpec] = &[
        NAME,
        ACK_IDS,
        param(
            "delay_ms",
            "integer",
            false,
            ErrorCode::InvalidBody,
            "redeliver after this long; default: the consumer's backoff",
        ),
        REASON,
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "{done, unknown}",
        fields: SETTLED_FIELDS,
    };
    type Params = SettleParams;

    fn parse(mut params: Params<'_>) -> Result<SettleParams, RpcError> {
        settle_params(&mut params, SettleVerb::Nak)
    }

    async fn call(call: &Call<'_>, params: SettleParams) -> Result<Box<RawValue>, RpcError> {
        settle(call, params).await
    }
}

/// `consumer.progress`.
pub struct ConsumerProgress;

impl RpcMethod for ConsumerProgress {
    const NAME: &'static str = "consumer.progress";
    const DESCRIPTION: &'static str = "Restart the ack wait of deliveries still being worked \
        on (as POST /api/consumers/{name}/progress).";
    const PARAMS: &'static [ParamSpec] = &[NAME, ACK_IDS];
    const RESULT: ResultSpec = ResultSpec {
        description: "{done, unknown}",
        fields: SETTLED_FIELDS,
    };
    type Params = SettleParams;

    fn parse(mut params: Params<'_>) -> Result<SettleParams, RpcError> {
        settle_params(&mut params, SettleVerb::Progress)
    }

    async fn call(call: &Call<'_>, params: SettleParams) -> Result<Box<RawValue>, RpcError> {
        settle(call, params).await
    }
}

/// `consumer.term`.
pub struct ConsumerTerm;

impl RpcMethod for ConsumerTerm {
    const NAME: &'static str = "consumer.term";
    const DESCRIPTION: &'static str = "Give up on deliveries: they go straight to the \
        consumer's dead letters, with `reason` as their `last_error` (as POST \
        /api/consumers/{name}/term).";
    const PARAMS: &'static [ParamSpec] = &[NAME, ACK_IDS, REASON];
    const RESULT: ResultSpec = ResultSpec {
        description: "{done, unknown}",
        fields: SETTLED_FIELDS,
    };
    type Params = SettleParams;

    fn parse(mut params: Params<'_>) -> Result<SettleParams, RpcError> {
        settle_params(&mut params, SettleVerb::Term)
    }

    async fn call(call: &Call<'_>, params: SettleParams) -> Result<Box<RawValue>, RpcError> {
        settle(call, params).await
    }
}

/// `consumer.dead_letters`.
pub struct ConsumerDeadLetters;

/// `consumer.dead_letters`' params.
pub struct DeadLetterPage {
    name: String,
    limit: usize,
    after_seq: u64,
}

impl RpcMethod for ConsumerDeadLetters {
    const NAME: &'static str = "consumer.dead_letters";
    const DESCRIPTION: &'static str = "Messages the consumer gave up on (`max_deliver` \
        deliveries without an ack, or termed), in seq order (as GET \
        /api/consumers/{name}/dead-letters). Page with `after_seq` = the last `event.seq` \
        seen.";
    const PARAMS: &'static [ParamSpec] = &[
        NAME,
        param(
            "limit",
            "integer",
            false,
            ErrorCode::InvalidQuery,
            "most dead letters, 1 to 1000; default 100",
        ),
        param(
            "after_seq",
            "integer",
            false,
            ErrorCode::InvalidQuery,
            "only dead letters with a larger seq; default 0",
        ),
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "{dead_letters, count}: each dead letter has the fields below",
        fields: &[
            field("event", "object", "the event, as GET /api/events/{id}"),
            field("deliveries", "integer", "how many times it was delivered"),
            field("reason", "string", "max_deliver or term"),
            field(
                "last_error",
                "string",
                "the `reason` of the last NAK or term, or null",
            ),
            field("first_delivered_at", "string", "RFC 3339 UTC"),
            field("dead_at", "string", "RFC 3339 UTC"),
        ],
    };
    type Params = DeadLetterPage;

    fn parse(mut params: Params<'_>) -> Result<DeadLetterPage, RpcError> {
        Ok(DeadLetterPage {
            name: name(&mut params)?,
            limit: params
                .integer("limit", 1, MAX_QUERY_LIMIT as u64)?
                .unwrap_or(DEFAULT_LIMIT) as usize,
            after_seq: params.seq("after_seq")?.unwrap_or(0),
        })
    }

    async fn call(call: &Call<'_>, page: DeadLetterPage) -> Result<Box<RawValue>, RpcError> {
        let dead = call
            .state
            .hub
            .as_caller(call.caller)
            .consumer_dead_letters(&page.name, page.after_seq, page.limit)
            .await
            .map_err(refused)?;
        let dead_letters: Vec<ConsumerDeadLetterJson> =
            dead.iter().map(ConsumerDeadLetterJson::from).collect();
        to_result(&ConsumerDeadLetterList {
            count: dead_letters.len(),
            dead_letters,
        })
    }
}

/// `consumer.redrive`.
pub struct ConsumerRedrive;

impl RpcMethod for ConsumerRedrive {
    const NAME: &'static str = "consumer.redrive";
    const DESCRIPTION: &'static str = "Send the dead letters with these `seqs` (all of them \
        when `seqs` is absent) back for delivery, their delivery count reset (as POST \
        /api/consumers/{name}/dead-letters/redrive). Seqs that are not dead letters are \
        skipped.";
    const PARAMS: &'static [ParamSpec] = &[
        NAME,
        param(
            "seqs",
            "array",
            false,
            ErrorCode::InvalidBody,
            "the event seqs of the dead letters, at most 10000; default: every dead letter",
        ),
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "{redriven}",
        fields: &[field(
            "redriven",
            "integer",
            "how many dead letters went back to delivery",
        )],
    };
    type Params = (String, Option<Vec<u64>>);

    fn parse(mut params: Params<'_>) -> Result<(String, Option<Vec<u64>>), RpcError> {
        let name = name(&mut params)?;
        let fields = Fields::new(body(&mut params, &["seqs"])?, &["seqs"])
            .map_err(|e| field_error(&params, e))?;
        let seqs = fields
            .integers("seqs", MAX_ACK_IDS, 1..=i64::MAX as u64)
            .map_err(|e| field_error(&params, e))?;
        Ok((name, seqs))
    }

    async fn call(
        call: &Call<'_>,
        (name, seqs): (String, Option<Vec<u64>>),
    ) -> Result<Box<RawValue>, RpcError> {
        let redriven = call
            .state
            .hub
            .as_caller(call.caller)
            .redrive(&name, seqs)
            .await
            .map_err(refused)?;
        to_result(&RedriveResponse { redriven })
    }
}

/// `consumer.discard`.
pub struct ConsumerDiscard;

impl RpcMethod for ConsumerDiscard {
    const NAME: &'static str = "consumer.discard";
    const DESCRIPTION: &'static str = "Discard one dead letter (as DELETE \
        /api/consumers/{name}/dead-letters/{seq}). A seq that is not a dead letter of the \
        consumer is -32602 with `data.code` dead_letter_not_found.";
    const PARAMS: &'static [ParamSpec] = &[
        NAME,
        param(
            "seq",
            "integer",
            true,
            ErrorCode::InvalidQuery,
            "the dead letter's event seq",
        ),
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "{discarded: true}",
        fields: &[field("discarded", "boolean", "always true")],
    };
    type Params = (String, u64);

    fn parse(mut params: Params<'_>) -> Result<(String, u64), RpcError> {
        let name = name(&mut params)?;
        let seq = params.seq("seq")?;
        let seq = seq.ok_or_else(|| params.invalid("seq", "is required"))?;
        Ok((name, seq))
    }

    async fn call(call: &Call<'_>, (name, seq): (String, u64)) -> Result<Box<RawValue>, RpcError> {
        if call
            .state
            .hub
            .as_caller(call.caller)
            .discard_dead_letter(&name, seq)
            .await
            .map_err(refused)?
        {
            to_result(&wire::DeadLetterDiscarded { discarded: true })
        } else {
            let reason = format!("is not a dead letter of consumer {name:?}");
            Err(RpcError::from(ApiError::new(
                ErrorCode::DeadLetterNotFound,
                format!("consumer {name:?} has no dead letter with seq {seq}"),
            ))
            .with("param", "seq")
            .with("reason", reason))
        }
    }
}
