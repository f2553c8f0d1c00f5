//! The JSON shapes of `POST /rpc` and `GET /rpc/methods`: the JSON-RPC 2.0 envelope
//! (requests are read without losing a byte of `id` or `params`), the results of the
//! methods of seed 002, and the method table as published.
//!
//! Events inside results have the shape of `GET /api/events` ([`crate::wire::Event`]).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use crate::error::ErrorCode;

/// One request object, every member kept as the text it was sent as, so that `id` is
/// echoed exactly and payloads are stored exactly. `Some` means present, even as `null`:
/// `"id": null` is a call, a missing `id` a notification. Unknown members are ignored.
#[derive(Debug, Deserialize)]
pub struct Request<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    pub jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub id: Option<&'a RawValue>,
}

/// A member that is present, `null` included (plain `Option` would read `null` as absent).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(deserializer).map(Some)
}

/// One response object: `result` or `error`, never both.
#[derive(Debug, Serialize)]
pub struct Response<'a> {
    pub jsonrpc: &'static str,
    pub id: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
}

/// The `error` member of a response.
#[derive(Debug, Serialize)]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
    pub data: Value,
}

/// `bus.publish`, and each item of `bus.publish_batch`.
#[derive(Debug, Serialize)]
pub struct Published<'a> {
    pub published: bool,
    pub subject: &'a str,
    pub correlation_id: Uuid,
    pub event_id: Uuid,
    pub seq: u64,
    pub timestamp: String,
    /// An event with this id was already stored: the ids are that event's.
    pub duplicate: bool,
}

impl<'a> From<&'a herald_hub::Published> for Published<'a> {
    fn from(published: &'a herald_hub::Published) -> Self {
        let event = &published.event;
        Published {
            published: true,
            subject: event.subject.as_str(),
            correlation_id: event.correlation_id,
            event_id: event.id,
            seq: event.seq,
            timestamp: event.timestamp.to_rfc3339(),
            duplicate: published.duplicate,
        }
    }
}

/// `bus.publish_batch`.
#[derive(Debug, Serialize)]
pub struct PublishedBatch<'a> {
    pub results: Vec<Published<'a>>,
    pub count: usize,
}

/// `bus.subscribe`.
#[derive(Debug, Serialize)]
pub struct Events<'a> {
    pub events: Vec<crate::wire::Event<'a>>,
    pub count: usize,
}

/// `bus.query`.
#[derive(Debug, Serialize)]
pub struct QueryPage<'a> {
    pub events: Vec<crate::wire::Event<'a>>,
    pub count: usize,
    /// Where the next page starts (`after_seq` of the next call), like the REST
    /// `X-Next-After-Seq` header: it moves on even when nothing matched.
    pub next_after_seq: u64,
}

/// `hub.info`.
#[derive(Debug, Serialize)]
pub struct HubInfo<'a> {
    pub hub_id: &'a str,
    pub version: &'static str,
    pub status: &'static str,
}

/// `hub.health`.
#[derive(Debug, Serialize)]
pub struct HubHealth {
    pub status: &'static str,
    pub services: Services,
}

#[derive(Debug, Serialize)]
pub struct Services {
    pub nats: &'static str,
    pub database: &'static str,
}

/// `consumer.put`: what `PUT /api/consumers/{name}` tells by its status, in the result.
#[derive(Debug, Serialize)]
pub struct ConsumerPut {
    /// `false`: it existed (updated where asked).
    pub created: bool,
    pub consumer: crate::wire::consumers::Consumer,
}

/// `consumer.delete`.
#[derive(Debug, Serialize)]
pub struct ConsumerDeleted {
    pub deleted: bool,
}

/// `consumer.discard`.
#[derive(Debug, Serialize)]
pub struct DeadLetterDiscarded {
    pub discarded: bool,
}

/// A method as `GET /rpc/methods` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MethodSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub params: &'static [ParamSpec],
    pub result: ResultSpec,
}

/// One parameter. Params are given by name (an object) or by position (an array, in
/// this order); `null` counts as absent.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct ParamSpec {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub required: bool,
    pub description: &'static str,
    /// `data.code` of an error in this parameter.
    #[serde(skip)]
    pub error: ErrorCode,
}

/// The shape of a method's result.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultSpec {
    pub description: &'static str,
    pub fields: &'static [FieldSpec],
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldSpec {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub description: &'static str,
}

/// An error code as `GET /rpc/methods` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorSpec {
    pub code: i64,
    pub message: &'static str,
    pub meaning: &'static str,
}

/// `GET /rpc/methods`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Discovery {
    pub jsonrpc: &'static str,
    pub endpoint: &'static str,
    pub methods: &'static [MethodSpec],
    pub errors: Vec<ErrorSpec>,
}
