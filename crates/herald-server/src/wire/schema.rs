//! The JSON Schemas of the API that a derive cannot say: the subject grammar, the
//! CloudEvents formats, the JSON-RPC envelope and the error bodies, written as JSON
//! Schema next to the constants they depend on. Handlers name them in their
//! `#[utoipa::path]` annotations; [`crate::openapi`] gathers them into the document.
//! Unit tests check the regular expressions against `herald_core`.

use std::sync::OnceLock;

use axum::http::StatusCode;
use herald_core::{MAX_SUBJECT_BYTES, MAX_SUBJECT_TOKENS};
use herald_store::MAX_QUERY_LIMIT;
use serde_json::{json, Value};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, Schema, SchemaType};
use utoipa::openapi::{ContentBuilder, RefOr};
use utoipa::{PartialSchema, ToResponse, ToSchema};

use crate::error::{ErrorCode, RpcCode};
use crate::wire::{MAX_BATCH_EVENTS, MAX_BATCH_REQUESTS, MAX_ORIGIN_FIELD};

// ---------------------------------------------------------------------------------------
// The subject grammar as JSON Schema (ECMA-262 regular expressions).

/// Characters that may not appear in a token besides the separator: what
/// `char::is_whitespace` or `char::is_control` accept, and the format characters
/// (category Cf, herald_core's rules). Those of the Basic Multilingual Plane are written
/// as `\uXXXX` ranges; the few beyond it (U+110BD, U+1D173, U+E0001, …) are written as
/// the characters themselves, one by one, because no escape for them is read the same by
/// ECMA-262 (`\u{…}` needs the `u` flag), Python and Rust. Engines that match code points
/// (ECMA-262 with `u`, as JSON Schema validators use it, Python, Rust) then refuse exactly
/// what the server refuses; one matching UTF-16 units still compiles the class.
fn excluded() -> &'static str {
    static EXCLUDED: OnceLock<String> = OnceLock::new();
    EXCLUDED.get_or_init(|| {
        let format = |code: &u32| {
            char::from_u32(*code).is_some_and(herald_core::subject::is_format_character)
        };
        let mut class = String::from(
            r"\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000",
        );
        class.push_str(&ranges((0x80..=0xFFFF).filter(format)));
        class.extend(
            (0x1_0000..=0x10_FFFF)
                .filter(format)
                .filter_map(char::from_u32),
        );
        class
    })
}

/// Ascending code points as the ranges of a regular-expression class (`\u00AD\u0600-\u0605`).
fn ranges(codes: impl IntoIterator<Item = u32>) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for code in codes {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == code => *last = code,
            _ => runs.push((code, code)),
        }
    }
    runs.iter()
        .map(|&(first, last)| {
            if first == last {
                format!("\\u{first:04X}")
            } else {
                format!("\\u{first:04X}-\\u{last:04X}")
            }
        })
        .collect()
}

/// The classes of a token's characters: any character, and any but the ones in `but`
/// (for a one-character token, which must not be a wildcard). ASCII: printable ASCII
/// but `.`.
fn token_classes(ascii: bool, but: &str) -> (String, String) {
    if ascii {
        let token = |code: &u32| *code != u32::from('.');
        (
            format!("[{}]", ranges((0x21..=0x7E).filter(token))),
            format!(
                "[{}]",
                ranges(
                    (0x21..=0x7E)
                        .filter(token)
                        .filter(|code| !but.chars().any(|c| u32::from(c) == *code))
                )
            ),
        )
    } else {
        let excluded = excluded();
        (format!("[^.{excluded}]"), format!("[^{but}.{excluded}]"))
    }
}

/// A literal subject, as `herald_core::Subject::new` accepts it (its length aside), of
/// ASCII characters only or of any. As in NATS, `*` and `>` are wildcards only as whole
/// tokens; inside a longer token they are ordinary characters.
pub fn subject_regex(ascii: bool) -> String {
    // A token is any run of allowed characters except exactly `*`, `>` or `%`.
    let (any, single) = token_classes(ascii, "*>%");
    let token = format!("(?:{any}{any}+|{single})");
    format!("^{token}(?:\\.{token}){{0,{}}}$", MAX_SUBJECT_TOKENS - 1)
}

/// A filter, as `herald_core::Pattern::parse_filter` accepts it (its length aside):
/// literal tokens, `*` (or a whole-token `%`) for one token, and a last `>` for the rest.
pub fn pattern_regex(ascii: bool, allow_empty: bool) -> String {
    // Any token but exactly `>`, which only the last may be.
    let (any, single) = token_classes(ascii, ">");
    let token = format!("(?:{any}{any}+|{single})");
    let max = MAX_SUBJECT_TOKENS - 1;
    let body = format!("(?:{token}\\.){{0,{max}}}(?:{token}|>)");
    if allow_empty {
        format!("^(?:{body})?$")
    } else {
        format!("^(?:{body})$")
    }
}

/// A string of at most `max_bytes` bytes of UTF-8 matching `regex(ascii)`. JSON Schema's
/// `maxLength` counts characters, so this takes ASCII text up to `max_bytes` characters
/// or any text up to `max_bytes / 4` (a character is at most 4 bytes): every string it
/// admits is within the limit. (The server also takes longer non-ASCII text that fits.)
fn byte_bounded(mut schema: Value, max_bytes: usize, regex: impl Fn(bool) -> String) -> Value {
    let branch = |ascii: bool, max_length: usize| {
        let mut branch = json!({"maxLength": max_length});
        let pattern = regex(ascii);
        if !pattern.is_empty() {
            branch["pattern"] = json!(pattern);
        }
        branch
    };
    schema["type"] = json!("string");
    schema["anyOf"] = json!([branch(true, max_bytes), branch(false, max_bytes / 4)]);
    schema
}

/// A JSON Schema written as JSON, for what the derives cannot express.
pub fn raw(value: Value) -> Schema {
    let Value::Object(map) = value else {
        panic!("a schema is a JSON object");
    };
    let mut object = Object::with_type(SchemaType::AnyValue);
    let mut extensions = Extensions::default();
    extensions.extend(map);
    object.extensions = Some(extensions);
    Schema::Object(object)
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Implements `ToSchema` for a marker type whose schema is written as JSON.
macro_rules! raw_schema {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                RefOr::T(raw($schema))
            }
        }

        impl ToSchema for $name {}
    };
}

raw_schema! {
    /// A literal subject, to publish to.
    Subject => byte_bounded(json!({
        "description": format!(
            "A literal subject: tokens separated by single dots (`hub.local-hub.project.created`), \
             at most {MAX_SUBJECT_BYTES} bytes (UTF-8) and {MAX_SUBJECT_TOKENS} tokens. Tokens are \
             non-empty and have no whitespace, control characters or Unicode format characters \
             (category Cf, such as U+202E or U+200B); no token is exactly `*`, `>` or `%`. As in \
             NATS, `*` and `>` inside a longer token are ordinary characters (`hub.x.foo*`)."
        ),
        "minLength": 1,
        "examples": ["hub.local-hub.project.created"],
    }), MAX_SUBJECT_BYTES, subject_regex)
}

raw_schema! {
    /// A subject pattern, to filter by.
    SubjectPattern => byte_bounded(json!({
        "description": format!(
            "A subject pattern: literal tokens, `*` for exactly one token (a whole-token `%` \
             means the same), and `>` as the last token for one or more tokens: \
             `hub.*.project.>`, `hub.%.project.%`, or a literal subject. As in NATS, these are \
             wildcards only as whole tokens: `hub.*.foo*` has one wildcard and the literal token \
             `foo*`. Tokens have no whitespace, control or format (Cf) characters. At most \
             {MAX_SUBJECT_BYTES} bytes and {MAX_SUBJECT_TOKENS} tokens."
        ),
        "minLength": 1,
        "examples": ["hub.local-hub.>", "hub.*.project.*"],
    }), MAX_SUBJECT_BYTES, |ascii| pattern_regex(ascii, false))
}

raw_schema! {
    /// A subject pattern of ASCII characters: a tenant's subject space, or a key's right.
    AsciiSubjectPattern => json!({
        "type": "string",
        "description": format!(
            "A subject pattern (see SubjectPattern) of printable ASCII characters only, at most \
             {MAX_SUBJECT_BYTES} bytes: tenants' subject spaces and keys' rights."
        ),
        "minLength": 1,
        "maxLength": MAX_SUBJECT_BYTES,
        "pattern": pattern_regex(true, false),
        "examples": ["hub.acme.>"],
    })
}

raw_schema! {
    /// `origin.service` or `origin.user`: at most 256 bytes of UTF-8.
    OriginText => byte_bounded(json!({}), MAX_ORIGIN_FIELD, |ascii| {
        if ascii { "^[\\u0000-\\u007F]*$".to_owned() } else { String::new() }
    })
}

raw_schema! {
    /// A `seq` in a query string (`after_seq`, `from_seq`).
    SeqParam => json!({
        "type": "integer",
        "minimum": 0,
        "maximum": i64::MAX,
    })
}

raw_schema! {
    /// `limit` of `GET /api/events`.
    Limit => json!({
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_QUERY_LIMIT,
        "default": herald_store::Query::default().limit,
    })
}

raw_schema! {
    /// A correlation id: a UUID.
    CorrelationId => json!({"type": "string", "format": "uuid"})
}

raw_schema! {
    /// An event id chosen by the publisher: a UUID, not the nil UUID.
    EventId => json!({
        "type": "string",
        "format": "uuid",
        "description": "A UUID other than the nil UUID.",
        "pattern": "^(?!0{8}-0{4}-0{4}-0{4}-0{12}$)[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$",
    })
}

raw_schema! {
    /// A structured-mode CloudEvent v1.0 (`application/cloudevents+json`).
    CloudEvent => json!({
        "type": "object",
        "description": "A CloudEvent v1.0 in structured mode. Its Herald subject is the \
            `heraldsubject` extension when given, else `type` (which must then be a literal \
            subject). Its event id is derived from (`source`, `id`), so re-sending it is a \
            duplicate. `correlationid`, when a UUID, becomes the correlation id. The payload is \
            `data` when it is an object, else `{\"data\": …}` (`data: null` included) or \
            `{\"data_base64\": …}`; `data` must nest at most 100 levels, hold no number beyond \
            a 64-bit float, no lone surrogate escape and no repeated member name. \
            Extension attributes are named by lowercase letters or digits (at least one) and \
            hold a string, a boolean, a 32-bit integer, or null (ignored). Strings hold no \
            control characters.",
        "required": ["specversion", "id", "source", "type"],
        "properties": {
            "specversion": {"type": "string", "enum": ["1.0"]},
            "id": {"type": "string", "minLength": 1, "pattern": CE_STRING_PATTERN},
            "source": reference("CloudEventSource"),
            "type": {"type": "string", "minLength": 1, "pattern": CE_STRING_PATTERN},
            "subject": {"type": ["string", "null"], "minLength": 1, "pattern": CE_STRING_PATTERN},
            "time": {"type": ["string", "null"], "format": "date-time"},
            "datacontenttype": {
                "description": "A media type (RFC 2046): `type/subtype` and optional parameters.",
                "type": ["string", "null"],
                "pattern": media_type_regex(),
            },
            "dataschema": {
                "description": "An absolute URI (RFC 3986; a fragment is allowed).",
                "type": ["string", "null"],
                "pattern": uri_regex(false),
            },
            "data": {"description": "Any JSON value."},
            "data_base64": {
                "type": ["string", "null"],
                "contentEncoding": "base64",
                "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$",
            },
            "heraldsubject": {
                "description": "Extension: the Herald subject to store the event under \
                    (a value that is not a string is ignored).",
                "anyOf": [
                    reference("Subject"),
                    {
                        "type": ["boolean", "integer", "null"],
                        "minimum": i32::MIN,
                        "maximum": i32::MAX,
                    },
                ],
            },
            "correlationid": {
                "description": "Extension: the correlation id, used when it is a UUID.",
                "type": ["string", "boolean", "integer", "null"],
                "minimum": i32::MIN,
                "maximum": i32::MAX,
                "pattern": CE_STRING_PATTERN,
            },
        },
        "propertyNames": {"pattern": "^(?:[a-z0-9]+|data_base64)$"},
        "additionalProperties": {
            "type": ["string", "boolean", "integer", "null"],
            "minimum": i32::MIN,
            "maximum": i32::MAX,
            "pattern": CE_STRING_PATTERN,
        },
        "anyOf": [
            {
                "required": ["heraldsubject"],
                "properties": {"heraldsubject": {"type": "string"}},
            },
            {"properties": {"type": reference("Subject")}},
        ],
        "not": {
            "required": ["data", "data_base64"],
            "properties": {"data_base64": {"type": "string"}},
        },
        "examples": [{
            "specversion": "1.0",
            "id": "A234-1234-1234",
            "source": "https://example.com/orders",
            "type": "com.example.order.created",
            "data": {"order_id": "42"},
        }],
    })
}

raw_schema! {
    /// An event read back as a structured CloudEvent.
    StoredCloudEvent => json!({
        "type": "object",
        "description": "A structured CloudEvent v1.0. Events published as CloudEvents read back \
            with every attribute as sent; others get `id` = the event id, `source` = \
            `/herald/<hub_id>`, `type` = the subject, `time` = the commit time, and the \
            extensions `correlationid` and `heraldseq`.",
        "required": ["specversion", "id", "source", "type"],
        "properties": {
            "specversion": {"type": "string", "enum": ["1.0"]},
            "id": {"type": "string", "minLength": 1},
            "source": {"type": "string", "minLength": 1},
            "type": {"type": "string", "minLength": 1},
            "subject": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"type": "string"},
            "dataschema": {"type": "string"},
            "data": {"description": "Any JSON value."},
            "data_base64": {"type": "string", "contentEncoding": "base64"},
            "heraldseq": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": {"type": ["string", "boolean", "integer"]},
    })
}

/// A CloudEvents String (spec, Type System): no control characters (U+0000-U+001F,
/// U+007F-U+009F) and no noncharacters of the first plane (the server also refuses those
/// of the other planes).
pub const CE_STRING_PATTERN: &str =
    "^[^\\u0000-\\u001F\\u007F-\\u009F\\uFDD0-\\uFDEF\\uFFFE\\uFFFF]*$";

/// RFC 3986 pieces, as `herald_core::cloudevent::check_uri_reference` reads them.
const URI_PCT: &str = "%[0-9A-Fa-f]{2}";
const URI_UNRESERVED_SUB: &str = "A-Za-z0-9\\-._~!$&'()*+,;=";

fn uri_regex(relative_allowed: bool) -> String {
    let us = URI_UNRESERVED_SUB;
    let pct = URI_PCT;
    let seg = format!("(?:[{us}:@]|{pct})*");
    let seg_nz = format!("(?:[{us}:@]|{pct})+");
    let seg_nc = format!("(?:[{us}@]|{pct})+");
    let query = format!("(?:[{us}:@/?]|{pct})*");
    let host = format!("(?:\\[(?:[0-9A-Fa-f:.]+|[vV][{us}:]*)\\]|(?:[{us}]|{pct})*)");
    let authority = format!("(?:(?:[{us}:]|{pct})*@)?{host}(?::[0-9]*)?");
    let with_authority = format!("//{authority}(?:/{seg}(?:/{seg})*)?");
    let scheme = "[A-Za-z][A-Za-z0-9+.\\-]*";
    let hier = format!("(?:{with_authority}|/?(?:{seg_nz}(?:/{seg})*)?)");
    let relative =
        format!("(?:{with_authority}|/(?:{seg_nz}(?:/{seg})*)?|(?:{seg_nc}(?:/{seg})*)?)");
    let head = if relative_allowed {
        format!("(?:{scheme}:{hier}|{relative})")
    } else {
        format!("{scheme}:{hier}")
    };
    format!("^{head}(?:\\?{query})?(?:#{query})?$")
}

/// An RFC 2045 media type with parameters, as `herald_core::cloudevent::check_media_type`
/// reads it.
fn media_type_regex() -> String {
    let token = "[!#$%&'*+\\-.0-9A-Z^_`a-z{|}~]+";
    let quoted = "\"(?:[ !#-\\[\\]-~]|\\\\[ -~])*\"";
    format!("^ *{token}/{token}(?: *; *{token}=(?:{token}|{quoted}))* *$")
}

raw_schema! {
    /// A CloudEvent `source`: a non-empty URI-reference (RFC 3986 §4.1).
    CloudEventSource => json!({
        "type": "string",
        "minLength": 1,
        "pattern": uri_regex(true),
        "examples": ["https://example.com/orders"],
    })
}

raw_schema! {
    /// A batch of structured CloudEvents (`application/cloudevents-batch+json`).
    CloudEventBatch => json!({
        "type": "array",
        "maxItems": MAX_BATCH_EVENTS,
        "items": reference("CloudEvent"),
    })
}

raw_schema! {
    /// The body of `POST /api/events:batch`.
    PublishBatchRequest => json!({
        "description": format!(
            "`{{\"events\": [...]}}` or a bare array: 1 to {MAX_BATCH_EVENTS} publish requests. \
             If any is invalid, nothing is stored (`422 invalid_batch` with `items`)."
        ),
        "oneOf": [
            {
                "type": "object",
                "required": ["events"],
                "additionalProperties": false,
                "properties": {
                    "events": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_BATCH_EVENTS,
                        "items": reference("PublishRequest"),
                    },
                },
            },
            {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH_EVENTS,
                "items": reference("PublishRequest"),
            },
        ],
    })
}

raw_schema! {
    /// The answer of `POST /api/events`: one event's, or a CloudEvents batch's.
    PublishAnswer => json!({
        "oneOf": [reference("PublishResponse"), reference("BatchResponse")],
    })
}

raw_schema! {
    /// An `RFC 3339` instant in a query string.
    Instant => json!({
        "type": "string",
        "format": "date-time",
        "description": "An RFC 3339 instant (`2025-11-03T12:00:00Z`); a date-time without an \
            offset is taken as UTC.",
    })
}

raw_schema! {
    /// A JSON-RPC 2.0 request object.
    RpcRequest => json!({
        "type": "object",
        "description": "A JSON-RPC 2.0 request. Without `id` it is a notification: it runs \
            and is not answered. `GET /rpc/methods` lists the methods and their params.",
        "required": ["jsonrpc", "method"],
        "properties": {
            "jsonrpc": {"type": "string", "enum": ["2.0"]},
            "method": {"type": "string", "examples": ["bus.publish"]},
            "params": {"type": ["object", "array"]},
            "id": {"type": ["string", "number", "null"]},
        },
        "examples": [{
            "jsonrpc": "2.0",
            "method": "bus.publish",
            "params": {"topic": "hub.local-hub.project.created", "payload": {"project_id": "123"}},
            "id": 1,
        }],
    })
}

raw_schema! {
    /// The body of `POST /rpc`: one request or a batch.
    RpcBody => json!({
        "oneOf": [
            reference("RpcRequest"),
            {
                "type": "array",
                "description": format!("A batch of 1 to {MAX_BATCH_REQUESTS} requests, run in order."),
                "minItems": 1,
                "maxItems": MAX_BATCH_REQUESTS,
                "items": reference("RpcRequest"),
            },
        ],
    })
}

raw_schema! {
    /// A JSON-RPC 2.0 response object.
    RpcResponse => json!({
        "type": "object",
        "description": "`result` on success, else `error`; `id` as the request sent it (null \
            when it could not be read).",
        "required": ["jsonrpc", "id"],
        "properties": {
            "jsonrpc": {"type": "string", "enum": ["2.0"]},
            "id": {"type": ["string", "number", "null"]},
            "result": {"description": "The method's result (see `GET /rpc/methods`)."},
            "error": {
                "type": "object",
                "required": ["code", "message", "data"],
                "properties": {
                    "code": {
                        "type": "integer",
                        "enum": RpcCode::ALL.iter().map(|c| c.number()).collect::<Vec<_>>(),
                    },
                    "message": {"type": "string"},
                    "data": {
                        "type": "object",
                        "required": ["code"],
                        "properties": {
                            "code": {
                                "type": "string",
                                "description": "The REST API's code for the same condition.",
                            },
                        },
                    },
                },
            },
        },
        "oneOf": [{"required": ["result"]}, {"required": ["error"]}],
    })
}

raw_schema! {
    /// The answer of `POST /rpc`: one response or a batch of them.
    RpcAnswer => json!({
        "oneOf": [
            reference("RpcResponse"),
            {"type": "array", "minItems": 1, "items": reference("RpcResponse")},
        ],
    })
}

raw_schema! {
    /// Why one item of a batch was rejected.
    ErrorItem => json!({
        "type": "object",
        "required": ["index", "code", "message"],
        "properties": {
            "index": {"type": "integer", "minimum": 0, "description": "Position in the batch."},
            "code": {"type": "string", "enum": ErrorCode::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>()},
            "message": {"type": "string"},
        },
    })
}

/// The error body for the codes of one status, from the [`ErrorCode`] table.
fn error_body(status: StatusCode) -> Value {
    let codes: Vec<&str> = ErrorCode::ALL
        .iter()
        .filter(|code| code.status() == status)
        .map(|code| code.as_str())
        .collect();
    let mut detail = json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "enum": codes},
            "message": {"type": "string", "description": "For people; may change."},
        },
    });
    if status == StatusCode::SERVICE_UNAVAILABLE {
        detail["properties"]["event_ids"] = json!({
            "type": "array",
            "description": "For `outcome_unknown`: the events that may or may not be stored; publish them again with these ids to settle it.",
            "items": {"type": "string", "format": "uuid"},
        });
    }
    if status == StatusCode::CONFLICT {
        detail["properties"]["current_version"] = json!({
            "type": "integer",
            "minimum": 0,
            "description": "For `version_conflict`: the version the aggregate is at.",
        });
    }
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        detail["properties"]["items"] = json!({
            "type": "array",
            "description": "For `invalid_batch`: what is wrong with each bad item.",
            "items": reference("ErrorItem"),
        });
        detail["properties"]["schema"] = json!({
            "type": "string",
            "description": "For `schema_violation`: the event schema the payload fails.",
        });
        detail["properties"]["index"] = json!({
            "type": "integer",
            "minimum": 0,
            "description": "For `schema_violation`: the event's position in the request (0 for one event).",
        });
        detail["properties"]["violations"] = json!({
            "type": "array",
            "description": format!(
                "For `schema_violation`: where the payload fails (at most {}).",
                herald_hub::schemas::MAX_VIOLATIONS
            ),
            "items": {
                "type": "object",
                "required": ["path", "message"],
                "properties": {
                    "path": {"type": "string", "description": "A JSON Pointer into the payload; empty for the payload itself."},
                    "message": {"type": "string"},
                },
            },
        });
    }
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": detail},
    })
}

raw_schema! {
    /// A maximum age: whole seconds, or a number with a unit.
    MaxAge => json!({
        "oneOf": [
            {"type": "integer", "minimum": 1, "maximum": 9_007_199_254_740_991_u64},
            {"type": "string", "pattern": "^[1-9][0-9]{0,8}[smhdw]$"},
        ],
        "examples": ["30d", 3600],
    })
}

raw_schema! {
    /// The condition of an append to an aggregate.
    ExpectedVersion => json!({
        "oneOf": [
            {"type": "string", "enum": ["any", "no_stream", "exists"]},
            {"type": "integer", "minimum": 0, "maximum": i64::MAX},
        ],
        "examples": ["no_stream", 3],
    })
}

raw_schema! {
    /// What happened, as the domain names it: dot-separated tokens (any such text
    /// without wildcards or whitespace is accepted; this pattern describes the usual ones).
    EventType => json!({
        "type": "string",
        "maxLength": herald_core::aggregate::MAX_EVENT_TYPE_BYTES,
        "pattern": "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+){0,31}$",
        "examples": ["context.created"],
    })
}

raw_schema! {
    /// An aggregate's type: a token of its events' default subject.
    AggregateType => json!({
        "type": "string",
        "pattern": "^[A-Za-z0-9_-]{1,64}$",
        "examples": ["context"],
    })
}

raw_schema! {
    /// An event schema's name.
    SchemaName => json!({
        "type": "string",
        "pattern": "^[A-Za-z0-9_-]{1,128}$",
        "examples": ["orders"],
    })
}

raw_schema! {
    /// An aggregate's id: 1 to 256 bytes without commas, whitespace, control or format
    /// characters (any such string is accepted; this pattern describes the usual ones).
    AggregateId => json!({
        "type": "string",
        "pattern": "^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,255}$",
        "examples": ["c-42"],
    })
}

raw_schema! {
    /// Text to look for in payloads: 1 to 256 characters.
    PayloadText => json!({
        "type": "string",
        "minLength": 1,
        "maxLength": 256,
        "examples": ["o-1001"],
    })
}

raw_schema! {
    /// `PUT /api/schemas/{name}` body.
    SchemaRequest => json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["subject_pattern", "schema"],
        "properties": {
            "subject_pattern": reference("SubjectPattern"),
            "schema": {
                "type": ["object", "boolean"],
                "description": "A JSON Schema (2020-12 unless its `$schema` names 2019-09 or \
                    draft 7; no `$ref` to other documents; `pattern`s without look-around or \
                    back-references) that the payload of every event whose subject matches \
                    `subject_pattern` must satisfy.",
            },
        },
    })
}

raw_schema! {
    /// A durable consumer's name.
    ConsumerName => json!({
        "type": "string",
        "pattern": "^[A-Za-z0-9_-]{1,128}$",
        "examples": ["orders-worker"],
    })
}

/// The schema of a consumer's ack ids (opaque strings).
fn ack_ids_schema() -> Value {
    json!({
        "type": "array",
        "maxItems": herald_hub::consumers::MAX_ACK_IDS,
        "items": {"type": "string", "maxLength": 64},
        "description": "The `ack_id`s of the deliveries, as fetched.",
    })
}

fn reason_schema() -> Value {
    json!({
        "type": ["string", "null"],
        "maxLength": super::consumers::MAX_REASON_CHARS,
        "description": "Why, kept as the message's `last_error`.",
    })
}

raw_schema! {
    /// `PUT /api/consumers/{name}` body.
    ConsumerRequest => json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["filter_subjects"],
        "allOf": [
            {
                "if": {"required": ["opt_start_seq"]},
                "then": {"required": ["deliver_policy"], "properties": {"deliver_policy": {"const": "by_start_seq"}}},
            },
            {
                "if": {"required": ["opt_start_time"]},
                "then": {"required": ["deliver_policy"], "properties": {"deliver_policy": {"const": "by_start_time"}}},
            },
            {
                "if": {"required": ["deliver_policy"], "properties": {"deliver_policy": {"const": "by_start_seq"}}},
                "then": {"required": ["opt_start_seq"]},
            },
            {
                "if": {"required": ["deliver_policy"], "properties": {"deliver_policy": {"const": "by_start_time"}}},
                "then": {"required": ["opt_start_time"]},
            },
        ],
        "properties": {
            "filter_subjects": {
                "type": "array",
                "minItems": 1,
                "maxItems": herald_hub::consumers::MAX_FILTERS,
                "items": reference("SubjectPattern"),
            },
            "deliver_policy": {
                "type": "string",
                "enum": ["all", "new", "by_start_seq", "by_start_time"],
                "default": "all",
                "description": "Where it starts: the first event (`all`), the first one committed after creation (`new`), `opt_start_seq`, or the first committed at or after `opt_start_time`.",
            },
            "opt_start_seq": {"type": "integer", "minimum": 1, "maximum": i64::MAX, "description": "With `by_start_seq` only (required then)."},
            "opt_start_time": {"type": "string", "format": "date-time", "description": "With `by_start_time` only (required then)."},
            "ack_wait_ms": {"type": "integer", "minimum": 10, "maximum": herald_hub::consumers::MAX_DELAY_MS, "default": 30000},
            "max_deliver": {"type": "integer", "minimum": -1, "maximum": i32::MAX, "not": {"const": 0}, "default": 5, "description": "Deliveries before a message goes to the dead letters; -1: unlimited."},
            "backoff_ms": {
                "type": ["array", "null"],
                "minItems": 1,
                "maxItems": 64,
                "items": {"type": "integer", "minimum": 0, "maximum": herald_hub::consumers::MAX_DELAY_MS},
                "description": "The delay before the n-th retry of a failed delivery; the last repeats. Without it: 1 s doubling to 5 min, ±10 % jitter.",
            },
            "max_ack_pending": {"type": "integer", "minimum": 1, "maximum": herald_hub::consumers::MAX_ACK_PENDING, "default": 1000},
            "description": {"type": ["string", "null"], "maxLength": 1024},
        },
    })
}

raw_schema! {
    /// `POST /api/consumers/{name}/fetch` body.
    FetchRequest => json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "batch": {"type": "integer", "minimum": 1, "maximum": herald_hub::consumers::MAX_FETCH_BATCH, "default": 1},
            "wait_ms": {"type": "integer", "minimum": 0, "maximum": 60000, "default": 0},
        },
    })
}

raw_schema! {
    /// `POST /api/consumers/{name}/ack` (and `/progress`) body.
    AckRequest => json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["ack_ids"],
        "properties": {"ack_ids": ack_ids_schema()},
    })
}

raw_schema! {
    /// `POST /api/consumers/{name}/nak` body.
    NakRequest => json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["ack_ids"],
        "properties": {
            "ack_ids": ack_ids_schema(),
            "delay_ms": {"type": ["integer", "null"], "minimum": 0, "maximum": herald_hub::consumers::MAX_DELAY_MS, "description": "Without it, the consumer's backoff applies."},
            "reason": reason_schema(),
        },
    })
}

raw_schema! {
    /// `POST /api/consumers/{name}/term` body.
    TermRequest => json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["ack_ids"],
        "properties": {"ack_ids": ack_ids_schema(), "reason": reason_schema()},
    })
}

raw_schema! {
    /// `POST /api/consumers/{name}/dead-letters/redrive` body (may be empty: all).
    RedriveRequest => json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "seqs": {
                "type": ["array", "null"],
                "maxItems": herald_hub::consumers::MAX_ACK_IDS,
                "items": {"type": "integer", "minimum": 1, "maximum": i64::MAX},
                "description": "The dead letters' seqs; all of them when absent.",
            },
        },
    })
}

/// Implements `ToResponse` for the error answers of one status.
macro_rules! error_responses {
    ($($name:ident = $status:ident, $description:literal;)+) => {$(
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                let status = StatusCode::$status;
                let mut response = ResponseBuilder::new()
                    .description(format!(
                        "{} Codes: {}.",
                        $description,
                        ErrorCode::ALL
                            .iter()
                            .filter(|code| code.status() == status)
                            .map(|code| format!("`{}`", code.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(raw(error_body(status)))).build(),
                    );
                if status == StatusCode::TOO_MANY_REQUESTS {
                    for (name, description) in [
                        ("RateLimit-Limit", "Events per second the limit allows."),
                        ("RateLimit-Remaining", "Events left now (0)."),
                        ("RateLimit-Reset", "Seconds until a retry can succeed."),
                    ] {
                        response = response.header(
                            name,
                            HeaderBuilder::new()
                                .schema(raw(json!({"type": "string", "pattern": "^[0-9]+$"})))
                                .description(Some(description))
                                .build(),
                        );
                    }
                }
                if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
                    response = response.header(
                        "Retry-After",
                        HeaderBuilder::new()
                            .schema(raw(json!({"type": "string", "pattern": "^[0-9]+$"})))
                            .description(Some("Seconds to wait before retrying."))
                            .build(),
                    );
                }
                (stringify!($name), RefOr::T(response.build()))
            }
        }
    )+};
}

error_responses! {
    BadRequest = BAD_REQUEST, "The request is malformed.";
    Unauthorized = UNAUTHORIZED, "No valid API key came with the request (`HERALD_AUTH=required`): send `Authorization: Bearer <key>`, `X-API-Key`, or on a WebSocket `?access_token=`.";
    Forbidden = FORBIDDEN, "The API key lacks the right: publish or subscribe on this subject, or admin.";
    TooManyRequests = TOO_MANY_REQUESTS, "Over a publish rate or a count limit of the key or its tenant; nothing was stored. Retry after `Retry-After` seconds (`RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` say more).";
    NotFound = NOT_FOUND, "Nothing there.";
    MethodNotAllowed = METHOD_NOT_ALLOWED, "The route does not take this method (see `Allow`).";
    Conflict = CONFLICT, "The request conflicts with what exists; nothing was changed.";
    RequestTimeout = REQUEST_TIMEOUT, "The request took longer than the configured timeout.";
    PayloadTooLarge = PAYLOAD_TOO_LARGE, "The body is larger than the configured limit.";
    UriTooLong = URI_TOO_LONG, "The URI is longer than the server reads.";
    HeadersTooLarge = REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many request headers, or too large.";
    UnprocessableEntity = UNPROCESSABLE_ENTITY, "The body is JSON but not a valid request; nothing was stored.";
    ServiceUnavailable = SERVICE_UNAVAILABLE, "The server cannot serve this now; nothing was stored. Retry after `Retry-After` seconds.";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subject regular expressions agree with `herald_core` on tricky inputs (the
    /// ASCII ones on ASCII inputs, rejecting others).
    #[test]
    fn subject_regexes_agree_with_herald_core() {
        let long_ok = vec!["a"; MAX_SUBJECT_TOKENS].join(".");
        let long_bad = vec!["a"; MAX_SUBJECT_TOKENS + 1].join(".");
        let rest_ok = format!("{}.>", vec!["a"; MAX_SUBJECT_TOKENS - 1].join("."));
        let rest_bad = format!("{}.>", vec!["a"; MAX_SUBJECT_TOKENS].join("."));
        let samples = [
            "",
            "a",
            "hub.local-hub.project.created",
            "com.example.order.created",
            "%",
            "%%",
            "a.%",
            "a.%b",
            "a.b%",
            "*",
            ">",
            "a.*",
            "a.>",
            "a.>.b",
            "a*",
            "a>b",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a\tb",
            "a\u{7f}",
            "a\u{85}",
            "a\u{a0}",
            "a\u{2003}",
            "a\u{3000}",
            "a\u{feff}",
            "a\u{202e}b",
            "hub.\u{200b}",
            "a\u{ad}",
            "\u{2066}.x",
            "a\u{1f600}",
            "a\u{1d177}",
            "\u{110bd}.b",
            "a.\u{e0001}",
            "a\u{e007f}b",
            "\u{10000}",
            "hub.x.foo*",
            "hub.*.foo*",
            "x>y.>",
            "foo.*-",
            "*bar",
            ">bar",
            ">>",
            "**",
            "%.>a",
            ">.a",
            "a.>>",
            "a.>.>",
            "foo%",
            "*.*",
            "%",
            "é.ü",
            "!#$&'()+,-/0123456789:;<=?@AZ[\\]^_`az{|}~",
            "hub.%.project.%",
            "hub.*.project.>",
            &long_ok,
            &long_bad,
            &rest_ok,
            &rest_bad,
        ];
        for ascii in [false, true] {
            let literal = regex::Regex::new(&subject_regex(ascii)).unwrap();
            let filter = regex::Regex::new(&pattern_regex(ascii, false)).unwrap();
            let query = regex::Regex::new(&pattern_regex(ascii, true)).unwrap();
            for sample in samples {
                let admitted = !ascii || sample.is_ascii();
                assert_eq!(
                    literal.is_match(sample),
                    admitted && herald_core::Subject::new(sample).is_ok(),
                    "literal {sample:?} (ascii: {ascii})"
                );
                assert_eq!(
                    filter.is_match(sample),
                    admitted && herald_core::Pattern::parse_filter(sample).is_ok(),
                    "filter {sample:?} (ascii: {ascii})"
                );
                assert_eq!(
                    query.is_match(sample),
                    admitted
                        && (sample.is_empty()
                            || herald_core::Pattern::parse_filter(sample).is_ok()),
                    "query {sample:?} (ascii: {ascii})"
                );
            }
        }
    }

    #[test]
    fn cloudevent_patterns_agree_with_the_server() {
        use herald_core::cloudevent::{check_media_type, check_uri_reference, is_valid_string};
        let uri_reference = regex::Regex::new(&uri_regex(true)).unwrap();
        let absolute_uri = regex::Regex::new(&uri_regex(false)).unwrap();
        for sample in [
            "https://example.com/orders",
            "/mycontext",
            "cloudevents/spec/pull/123",
            "mailto:a@b.c",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "//host/x",
            "//user:pw@host:80/p?q=1#f",
            "http://[::1]:8080/",
            "http://[v7.x]/",
            "s:",
            "s:/a",
            "s:a//b",
            "s:///x",
            "a//b",
            "/a:b",
            "?q",
            "#f",
            "",
            "a:b:c",
            "1a:b",
            "a b",
            "/50%",
            "/%zz",
            "/%41",
            "/x#y#z",
            "//host:80x",
            "//a[b",
            "//[::1]x",
            "//[zz]",
            "//a@b@c",
            "s://a]",
            "caf\u{e9}",
            "x?a#b?c/",
            "s:?#",
            "a:/b:c",
            ":x",
            "/:x",
            "./a:b",
            "%3A:x",
        ] {
            let checked = check_uri_reference(sample);
            assert_eq!(
                uri_reference.is_match(sample),
                checked.is_ok(),
                "uri-reference {sample:?}"
            );
            assert_eq!(
                absolute_uri.is_match(sample),
                checked == Ok(true),
                "absolute uri {sample:?}"
            );
        }
        let media = regex::Regex::new(&media_type_regex()).unwrap();
        for sample in [
            "application/json",
            "text/plain; charset=utf-8",
            "text/plain;charset=\"a b\"",
            " a/b ",
            "a/b;c=d;e=f",
            "xyz",
            "a/",
            "/b",
            "a/b;",
            "a/b; c",
            "a/b; c=",
            "a/b; c=\"open",
            "a/b c",
            "a b/c",
            "a/b;c=\"\\\"\"",
            "a/b;c=\"\u{e9}\"",
            "a/b\t;c=d",
            "a/b; c=d e",
            "a/b;c=d;",
            "a@b/c",
        ] {
            assert_eq!(
                media.is_match(sample),
                check_media_type(sample).is_ok(),
                "media type {sample:?}"
            );
        }
        let string = regex::Regex::new(CE_STRING_PATTERN).unwrap();
        for sample in [
            "plain",
            "caf\u{e9}",
            "\u{a0}",
            "a\u{1}",
            "\u{7f}",
            "\u{9f}",
            "\u{fdd0}",
            "\u{fffe}",
            "\u{fdf0}",
            "\n",
        ] {
            assert_eq!(
                string.is_match(sample),
                is_valid_string(sample),
                "string {sample:?}"
            );
        }
    }
}
