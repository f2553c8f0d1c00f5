//! The event store's methods (`store.*`, seed 003's verbs): `/api/aggregates` over
//! JSON-RPC, with the same params as its bodies and the same results as its answers.
//! Events and snapshots are read by the HTTP API's own field reading
//! ([`append_request`], [`snapshot_request`]), so messages cannot drift apart.

use herald_store::MAX_QUERY_LIMIT;
use serde_json::value::RawValue;

use crate::error::{ApiError, ErrorCode};
use crate::rpc::call::{
    body, field, param, to_result, Call, RpcMethod, DEFAULT_LIMIT, ORIGIN_SERVICE,
};
use crate::rpc::error::RpcError;
use crate::rpc::params::Params;
use crate::rpc::wire::{FieldSpec, ParamSpec, ResultSpec};
use crate::wire::aggregates::{
    append_request, snapshot_request, AggregateEvents, AppendResponse, FieldError, Snapshot,
};

const TYPE: ParamSpec = param(
    "aggregate_type",
    "string",
    true,
    ErrorCode::InvalidAggregate,
    "the aggregate's type: 1 to 64 ASCII letters, digits, '_' or '-'",
);

const ID: ParamSpec = param(
    "aggregate_id",
    "string",
    true,
    ErrorCode::InvalidAggregate,
    "the aggregate's id: 1 to 256 bytes without whitespace or control characters",
);

const SNAPSHOT_FIELDS: &[FieldSpec] = &[
    field("version", "integer", "the version the state is at"),
    field("state", "object", "the state as saved"),
    field("created_at", "string", "RFC 3339 UTC"),
];

/// The aggregate's type and id, checked.
fn aggregate(params: &mut Params<'_>) -> Result<(String, String), RpcError> {
    let aggregate_type = params
        .string("aggregate_type")?
        .ok_or_else(|| params.invalid("aggregate_type", "is required"))?;
    let aggregate_id = params
        .string("aggregate_id")?
        .ok_or_else(|| params.invalid("aggregate_id", "is required"))?;
    herald_core::aggregate::check_aggregate_type(&aggregate_type)
        .map_err(|e| params.invalid("aggregate_type", e.to_string()))?;
    herald_core::aggregate::check_aggregate_id(&aggregate_id)
        .map_err(|e| params.invalid("aggregate_id", e.to_string()))?;
    Ok((aggregate_type, aggregate_id))
}

/// A field the HTTP API's reading refused, as an error in its param (`events[2].type`
/// belongs to `events`).
fn field_error(params: &Params<'_>, error: FieldError) -> RpcError {
    let param = error.field.split(['[', '.']).next().unwrap_or("events");
    params
        .invalid(param, format!("{} {}", error.field, error.message))
        .with("field", error.field)
}

fn refused(error: herald_hub::aggregates::AggregateError) -> RpcError {
    RpcError::from(ApiError::from(error))
}

/// `store.append`.
pub struct StoreAppend;

/// `store.append`'s params.
pub struct AppendParams {
    aggregate_type: String,
    aggregate_id: String,
    request: crate::wire::aggregates::AppendRequest,
}

impl RpcMethod for StoreAppend {
    const NAME: &'static str = "store.append";
    const DESCRIPTION: &'static str = "Append events to an aggregate atomically if it is at \
        `expected_version` (as POST /api/aggregates/{type}/{id}/events). A mismatch is -32602 \
        with `data.code` version_conflict and `data.current_version`; nothing is stored. \
        Re-sending an append with the same event ids answers as the first time (with \
        `duplicate` true).";
    const PARAMS: &'static [ParamSpec] = &[
        TYPE,
        ID,
        param(
            "expected_version",
            "string",
            false,
            ErrorCode::InvalidAggregate,
            "\"any\" (default), \"no_stream\", \"exists\" or the version (an integer)",
        ),
        param(
            "events",
            "array",
            true,
            ErrorCode::InvalidAggregate,
            "1 to 1000 events: {type, payload, id?, subject?, metadata?, correlation_id?}",
        ),
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "{aggregate_type, aggregate_id, version, events: [{event_id, seq, \
            version}], duplicate}: `duplicate` is true when every event was stored already",
        fields: &[
            field(
                "version",
                "integer",
                "the version of the append's last event",
            ),
            field(
                "events",
                "array",
                "{event_id, seq, version} per event, in order",
            ),
            field(
                "duplicate",
                "boolean",
                "nothing new was stored (a re-sent append)",
            ),
        ],
    };
    type Params = AppendParams;

    fn parse(mut params: Params<'_>) -> Result<AppendParams, RpcError> {
        let (aggregate_type, aggregate_id) = aggregate(&mut params)?;
        let object = body(&mut params, &["expected_version", "events"])?;
        let request = append_request(&object, None).map_err(|e| field_error(&params, e))?;
        Ok(AppendParams {
            aggregate_type,
            aggregate_id,
            request,
        })
    }

    async fn call(call: &Call<'_>, params: AppendParams) -> Result<Box<RawValue>, RpcError> {
        let written = call
            .state
            .hub
            .as_caller(call.caller)
            .append_to_aggregate(
                &params.aggregate_type,
                &params.aggregate_id,
                params.request.expected,
                params
                    .request
                    .with_trace(crate::http::publish::header_trace(call.headers)),
                Some(ORIGIN_SERVICE.into()),
            )
            .await
            .map_err(refused)?;
        #[derive(serde::Serialize)]
        struct Result {
            #[serde(flatten)]
            response: AppendResponse,
            duplicate: bool,
        }
        to_result(&Result {
            duplicate: written.events.iter().all(|a| a.is_duplicate()),
            response: AppendResponse::new(&params.aggregate_type, &params.aggregate_id, &written),
        })
    }
}

/// `store.load`.
pub struct StoreLoad;

/// `store.load`'s params.
pub struct LoadParams {
    aggregate_type: String,
    aggregate_id: String,
    from_version: u64,
    limit: usize,
}

impl RpcMethod for StoreLoad {
    const NAME: &'static str = "store.load";
    const DESCRIPTION: &'static str = "An aggregate's events from `from_version` on, in \
        version order (as GET /api/aggregates/{type}/{id}/events). An unknown aggregate is \
        -32602 with `data.code` aggregate_not_found.";
    const PARAMS: &'static [ParamSpec] = &[
        TYPE,
        ID,
        param(
            "from_version",
            "integer",
            false,
            ErrorCode::InvalidAggregate,
            "the first version to answer; default 1",
        ),
        param(
            "limit",
            "integer",
            false,
            ErrorCode::InvalidAggregate,
            "1 to 1000; default 100",
        ),
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "{aggregate_type, aggregate_id, version, events}: the events as \
            GET /api/events answers them, in version order",
        fields: &[
            field("version", "integer", "the aggregate's current version"),
            field("events", "array", "its events from `from_version` on"),
        ],
    };
    type Params = LoadParams;

    fn parse(mut params: Params<'_>) -> Result<LoadParams, RpcError> {
        let (aggregate_type, aggregate_id) = aggregate(&mut params)?;
        Ok(LoadParams {
            aggregate_type,
            aggregate_id,
            from_version: params
                .integer("from_version", 0, i64::MAX as u64)?
                .unwrap_or(1),
            limit: params
                .integer("limit", 1, MAX_QUERY_LIMIT as u64)?
                .unwrap_or(DEFAULT_LIMIT) as usize,
        })
    }

    async fn call(call: &Call<'_>, params: LoadParams) -> Result<Box<RawValue>, RpcError> {
        let page = call
            .state
            .hub
            .as_caller(call.caller)
            .load_aggregate(
                &params.aggregate_type,
                &params.aggregate_id,
                params.from_version,
                params.limit,
            )
            .await
            .map_err(refused)?;
        to_result(&AggregateEvents {
            aggregate_type: &params.aggregate_type,
            aggregate_id: &params.aggregate_id,
            version: page.version,
            events: page.events.iter().map(Into::into).collect(),
        })
    }
}

/// `store.save_snapshot`.
pub struct StoreSaveSnapshot;

/// `store.save_snapshot`'s params.
pub struct SaveParams {
    aggregate_type: String,
    aggregate_id: String,
    version: u64,
    state: herald_core::Payload,
}

impl RpcMethod for StoreSaveSnapshot {
    const NAME: &'static str = "store.save_snapshot";
    const DESCRIPTION: &'static str = "Keep an aggregate's state at `version` (as \
        PUT /api/aggregates/{type}/{id}/snapshot). A version above the aggregate's is -32602 \
        with `data.code` version_conflict.";
    const PARAMS: &'static [ParamSpec] = &[
        TYPE,
        ID,
        param(
            "version",
            "integer",
            true,
            ErrorCode::InvalidAggregate,
            "the version the state is at (1 to the aggregate's version)",
        ),
        param(
            "state",
            "object",
            true,
            ErrorCode::InvalidAggregate,
            "the state: a JSON object",
        ),
    ];
    const RESULT: ResultSpec = ResultSpec {
        description: "the latest snapshot, as store.load_snapshot answers it",
        fields: SNAPSHOT_FIELDS,
    };
    type Params = SaveParams;

    fn parse(mut params: Params<'_>) -> Result<SaveParams, RpcError> {
        let (aggregate_type, aggregate_id) = aggregate(&mut params)?;
        let object = body(&mut params, &["version", "state"])?;
        let (version, state) = snapshot_request(&object).map_err(|e| field_error(&params, e))?;
        Ok(SaveParams {
            aggregate_type,
            aggregate_id,
            version,
            state,
        })
    }

    async fn call(call: &Call<'_>, params: SaveParams) -> Result<Box<RawValue>, RpcError> {
        let hub = call.state.hub.as_caller(call.caller);
        hub.save_snapshot(
            &params.aggregate_type,
            &params.aggregate_id,
            params.version,
            params.state,
        )
        .await
        .map_err(refused)?;
        latest(&hub, &params.aggregate_type, &params.aggregate_id).await
    }
}

async fn latest(
    hub: &herald_hub::access::Scoped<'_>,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Box<RawValue>, RpcError> {
    match hub
        .load_snapshot(aggregate_type, aggregate_id)
        .await
        .map_err(refused)?
    {
        Some(snapshot) => to_result(&Snapshot::from(&snapshot)),
        None => Err(RpcError::from(ApiError::new(
            ErrorCode::SnapshotNotFound,
            "this aggregate has no snapshot",
        ))),
    }
}

/// `store.load_snapshot`.
pub struct StoreLoadSnapshot;

impl RpcMethod for StoreLoadSnapshot {
    const NAME: &'static str = "store.load_snapshot";
    const DESCRIPTION: &'static str = "An aggregate's latest snapshot (as \
        GET /api/aggregates/{type}/{id}/snapshot); none is -32602 with `data.code` \
        snapshot_not_found. Load the rest with store.load from its version + 1.";
    const PARAMS: &'static [ParamSpec] = &[TYPE, ID];
    const RESULT: ResultSpec = ResultSpec {
        description: "{version, state, created_at}",
        fields: SNAPSHOT_FIELDS,
    };
    type Params = (String, String);

    fn parse(mut params: Params<'_>) -> Result<(String, String), RpcError> {
        aggregate(&mut params)
    }

    async fn call(call: &Call<'_>, (t, id): (String, String)) -> Result<Box<RawValue>, RpcError> {
        latest(&call.state.hub.as_caller(call.caller), &t, &id).await
    }
}
