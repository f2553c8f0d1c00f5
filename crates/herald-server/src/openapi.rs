//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json` (and rendered for
//! people at `GET /docs`).
//!
//! The document is generated from the code: each handler carries its `#[utoipa::path]`,
//! each wire type derives `ToSchema`, and what a derive cannot say is written as JSON
//! Schema in [`crate::wire::schema`]. This module only gathers them (it is the one
//! module that imports the handlers for their annotations; only the router imports it),
//! and unit tests check every route of [`crate::router`] against the document.
//!
//! [`ApiDoc::openapi`] is built once; [`document`] returns the cached JSON.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{Schema, SchemaType};
use utoipa::openapi::{OpenApi as Document, RefOr, Required};
use utoipa::{Modify, OpenApi};

use crate::wire::schema::{
    raw, AckRequest, AsciiSubjectPattern, BadRequest, CloudEvent, CloudEventBatch,
    CloudEventSource, Conflict, ConsumerName, ConsumerRequest, CorrelationId, ErrorItem, EventId,
    FetchRequest, Forbidden, HeadersTooLarge, Instant, Limit, MethodNotAllowed, NakRequest,
    NotFound, OriginText, PayloadTooLarge, PublishAnswer, PublishBatchRequest, RedriveRequest,
    RequestTimeout, RpcAnswer, RpcBody, RpcRequest, RpcResponse, SeqParam, ServiceUnavailable,
    StoredCloudEvent, Subject, SubjectPattern, TermRequest, TooManyRequests, Unauthorized,
    UnprocessableEntity, UriTooLong,
};

/// The document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Herald is a durable event hub: services publish events over HTTP; it \
            stores every event it acknowledges (a `201` is sent only once the event is synced \
            to disk), gives each a place in one ordered log (`seq`), streams them live over \
            WebSocket, and lets you query and replay them.\n\n\
            Every response carries `X-Correlation-ID`: the request's, or a fresh one. Every \
            error is JSON, `{\"error\": {\"code\", \"message\", \"items\"?}}`; a method a route \
            does not take is `405` with `Allow`; a query string over the configured limit is \
            `400 query_too_long` and a request that takes too long `408 request_timeout`, on \
            every route.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::http::index,
        crate::http::publish::publish_event,
        crate::http::query_events,
        crate::http::publish::publish_batch,
        crate::ws::stream,
        crate::http::get_event,
        crate::http::event_schemas::list_schemas,
        crate::http::event_schemas::put_schema,
        crate::http::event_schemas::get_schema,
        crate::http::event_schemas::delete_schema,
        crate::http::access::create_tenant,
        crate::http::access::list_tenants,
        crate::http::access::get_tenant,
        crate::http::access::delete_tenant,
        crate::http::access::create_key,
        crate::http::access::list_keys,
        crate::http::access::get_key,
        crate::http::access::delete_key,
        crate::http::rules::list_rules,
        crate::http::rules::add_rule,
        crate::http::rules::get_rule,
        crate::http::rules::delete_rule,
        crate::http::rules::list_dead_letters,
        crate::http::rules::redrive_dead_letters,
        crate::http::rules::discard_dead_letter,
        crate::http::publish::publish_legacy,
        crate::http::bridge::list_dead_letters,
        crate::http::bridge::delete_dead_letter,
        crate::http::retention::get_retention,
        crate::http::retention::put_retention,
        crate::http::aggregates::append,
        crate::http::aggregates::load,
        crate::http::aggregates::save_snapshot,
        crate::http::aggregates::load_snapshot,
        crate::http::consumers::list_consumers,
        crate::http::consumers::put_consumer,
        crate::http::consumers::get_consumer,
        crate::http::consumers::delete_consumer,
        crate::http::consumers::fetch,
        crate::http::consumers::ack,
        crate::http::consumers::nak,
        crate::http::consumers::progress,
        crate::http::consumers::term,
        crate::consumer_stream::stream,
        crate::http::consumers::list_dead_letters,
        crate::http::consumers::redrive,
        crate::http::consumers::discard_dead_letter,
        crate::http::health,
        crate::http::nats_health,
        crate::http::hubs,
        crate::metrics::render,
        crate::rpc::handle,
        crate::rpc::methods,
        openapi_json,
        docs,
    ),
    components(
        schemas(
            crate::wire::PublishRequest,
            crate::wire::PublishResponse,
            crate::wire::BatchResponse,
            crate::wire::StreamFrame,
            crate::http::rules::RuleRequestSchema,
            crate::http::rules::RuleIdSchema,
            crate::http::rules::Rule,
            crate::http::rules::RuleAction,
            crate::http::rules::RuleStats,
            crate::http::rules::RuleList,
            crate::http::bridge::DeadLetter,
            crate::http::bridge::DeadLetterHeader,
            crate::http::bridge::DeadLetterList,
            crate::wire::event_schemas::EventSchema,
            crate::wire::event_schemas::EventSchemaList,
            crate::wire::schema::SchemaName,
            crate::wire::schema::SchemaRequest,
            crate::wire::access::Limits,
            crate::wire::access::TenantRequest,
            crate::wire::access::Tenant,
            crate::wire::access::TenantList,
            crate::wire::access::Rights,
            crate::wire::access::KeyRequest,
            crate::wire::access::Key,
            crate::wire::access::CreatedKey,
            crate::wire::access::KeyList,
            crate::http::retention::RetentionPolicies,
            crate::http::retention::RetentionPolicySchema,
            crate::http::retention::RetentionRequest,
            crate::wire::schema::MaxAge,
            crate::wire::aggregates::AppendBody,
            crate::wire::aggregates::AppendEvent,
            crate::wire::aggregates::SnapshotBody,
            crate::wire::aggregates::AppendResponse,
            crate::wire::aggregates::AppendedEvent,
            crate::wire::aggregates::AggregateEvents,
            crate::wire::aggregates::Snapshot,
            crate::wire::schema::AggregateType,
            crate::wire::schema::ExpectedVersion,
            crate::wire::schema::EventType,
            crate::wire::schema::AggregateId,
            crate::wire::schema::PayloadText,
            crate::wire::consumers::Consumer,
            crate::wire::consumers::ConsumerState,
            crate::wire::consumers::ConsumerList,
            crate::wire::consumers::Message,
            crate::wire::consumers::FetchResponse,
            crate::wire::consumers::SettleResponse,
            crate::wire::consumers::ConsumerDeadLetterJson,
            crate::wire::consumers::ConsumerDeadLetterList,
            crate::wire::consumers::RedriveResponse,
            ConsumerName,
            ConsumerRequest,
            FetchRequest,
            AckRequest,
            NakRequest,
            TermRequest,
            RedriveRequest,
            Subject,
            SubjectPattern,
            AsciiSubjectPattern,
            OriginText,
            SeqParam,
            Limit,
            Instant,
            EventId,
            CorrelationId,
            CloudEvent,
            CloudEventSource,
            CloudEventBatch,
            StoredCloudEvent,
            PublishBatchRequest,
            PublishAnswer,
            RpcRequest,
            RpcBody,
            RpcResponse,
            RpcAnswer,
            ErrorItem,
        ),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            TooManyRequests,
            NotFound,
            MethodNotAllowed,
            Conflict,
            RequestTimeout,
            PayloadTooLarge,
            UriTooLong,
            HeadersTooLarge,
            UnprocessableEntity,
            ServiceUnavailable,
        )
    ),
    tags(
        (name = "events", description = "Publish, query, read and stream events."),
        (name = "cloudevents", description = "CloudEvents v1.0 (see also `POST /api/events`)."),
        (name = "rules", description = "Routing rules: act on every event matching a subject pattern (webhooks, NATS republish)."),
        (name = "retention", description = "Retention policies (admin keys only): which events the log keeps, by subject pattern."),
        (name = "aggregates", description = "The event store: aggregates appended on an expected version, loaded by version, with snapshots."),
        (name = "schemas", description = "Event schemas (admin keys only): JSON Schemas that the payload of every event on a matching subject must satisfy, on every way in."),
        (name = "consumers", description = "Durable consumers: fetch events, ack, NAK with backoff, dead letters you can list and redrive; any number of clients per consumer."),
        (name = "rpc", description = "JSON-RPC 2.0."),
        (name = "access", description = "Tenants and API keys (admin keys only): who may publish and read which subjects."),
        (name = "operations", description = "Health, metrics and this document."),
    ),
    modifiers(&Everywhere, &Links),
)]
pub struct ApiDoc;

/// The document as JSON text, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc.to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document",
    description = "The OpenAPI 3.1 description of this API, generated from the server's code.",
    responses((status = 200, description = "The OpenAPI document.", body = Object)),
)]
pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document(),
    )
        .into_response()
}

/// `GET /docs`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "operations",
    summary = "This document, for people",
    description = "A small HTML page that renders `/openapi.json` with a viewer loaded from a \
        CDN (it needs internet access in the browser; `/openapi.json` itself does not).",
    responses((status = 200, description = "An HTML page.", body = String, content_type = "text/html")),
)]
pub async fn docs() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        DOCS_PAGE,
    )
        .into_response()
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Herald API</title>
</head>
<body>
<noscript>This page renders <a href="/openapi.json">/openapi.json</a> with JavaScript.</noscript>
<redoc spec-url="/openapi.json"></redoc>
<script src="https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"></script>
</body>
</html>
"#;

/// What applies to every operation: the `X-Correlation-ID` header both ways, and the
/// errors any route can answer (`400 query_too_long` or malformed HTTP, `408`, `414`,
/// `431`, and `503 too_many_connections` on the reserve above the connection cap).
struct Everywhere;

const CORRELATION: &str = "X-Correlation-ID";

impl Modify for Everywhere {
    fn modify(&self, openapi: &mut Document) {
        let response_header = || {
            HeaderBuilder::new()
                .schema(raw(json!({"type": "string"})))
                .description(Some(
                    "The request's X-Correlation-ID, or a fresh UUID; on a publish, the \
                     event's correlation id.",
                ))
                .build()
        };
        let mut seen = std::collections::HashMap::<String, usize>::new();
        for item in openapi.paths.paths.values_mut() {
            for (_, operation) in operations(item) {
                if let Some(id) = &operation.operation_id {
                    *seen.entry(id.clone()).or_default() += 1;
                }
            }
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let public = crate::PUBLIC_PATHS.contains(&path.as_str());
            for (method, operation) in operations(item) {
                if !public {
                    for (status, name) in [
                        ("401", "Unauthorized"),
                        ("403", "Forbidden"),
                        ("429", "TooManyRequests"),
                    ] {
                        operation
                            .responses
                            .responses
                            .entry(status.to_owned())
                            .or_insert_with(|| {
                                RefOr::Ref(utoipa::openapi::Ref::from_response_name(name))
                            });
                    }
                }
                // One handler serving two methods gets one id per method.
                if let Some(id) = operation.operation_id.as_mut() {
                    if seen[id.as_str()] > 1 {
                        *id = format!("{id}_{method}");
                    }
                }
                let parameters = operation.parameters.get_or_insert_with(Vec::new);
                for parameter in parameters.iter_mut() {
                    if let Some(schema) = parameter.schema.take() {
                        parameter.schema = Some(not_null(schema));
                    }
                }
                if !parameters
                    .iter()
                    .any(|p| p.name.eq_ignore_ascii_case(CORRELATION))
                {
                    parameters.push(correlation_parameter(false));
                }
                for (status, name) in [
                    ("400", "BadRequest"),
                    ("408", "RequestTimeout"),
                    ("414", "UriTooLong"),
                    ("431", "HeadersTooLarge"),
                    ("503", "ServiceUnavailable"),
                ] {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| {
                            RefOr::Ref(utoipa::openapi::Ref::from_response_name(name))
                        });
                }
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response
                            .headers
                            .insert(CORRELATION.to_owned(), response_header());
                    }
                }
            }
        }
        if let Some(components) = openapi.components.as_mut() {
            for response in components.responses.values_mut() {
                if let RefOr::T(response) = response {
                    response
                        .headers
                        .insert(CORRELATION.to_owned(), response_header());
                }
            }
        }
    }
}

/// OpenAPI links from what creates a resource to where it is read: they tell clients
/// (and stateful test tools) which answer field names the new resource. Without them a
/// tool guesses, and took a CloudEvent's own `id` (any string) from a publish's body for
/// the event id of `GET /api/events/{id}` (a UUID).
struct Links;

/// A link from the answers of one operation to another operation.
struct Link {
    path: &'static str,
    method: &'static str,
    statuses: &'static [&'static str],
    name: &'static str,
    operation: &'static str,
    parameter: &'static str,
    /// A runtime expression giving the parameter.
    value: &'static str,
}

const LINKS: &[Link] = &[
    Link {
        path: "/api/events",
        method: "post",
        statuses: &["200", "201"],
        name: "GetEvent",
        operation: "get_event",
        parameter: "id",
        value: "$response.body#/event_id",
    },
    Link {
        path: "/api/rules",
        method: "post",
        statuses: &["201"],
        name: "GetRule",
        operation: "get_rule",
        parameter: "id",
        value: "$response.body#/id",
    },
    Link {
        path: "/api/consumers/{name}",
        method: "put",
        statuses: &["200", "201"],
        name: "GetConsumer",
        operation: "get_consumer",
        parameter: "name",
        value: "$request.path.name",
    },
];

impl Modify for Links {
    fn modify(&self, openapi: &mut Document) {
        for link in LINKS {
            let (path, method) = (link.path, link.method);
            let operation = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| operations(item).find(|(m, _)| *m == method))
                .map(|(_, operation)| operation)
                .unwrap_or_else(|| panic!("a link from {method} {path}, which is not documented"));
            for status in link.statuses {
                let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status)
                else {
                    panic!("a link from {method} {path} {status}, which is not an inline response");
                };
                // As JSON: utoipa's `Link` writes `operation_id`, not `operationId`.
                let extensions = response.extensions.get_or_insert_with(Default::default);
                let mut links = extensions.remove("links").unwrap_or_else(|| json!({}));
                links[link.name] = json!({
                    "operationId": link.operation,
                    "parameters": {link.parameter: link.value},
                });
                extensions.extend([("links".to_owned(), links)]);
            }
        }
    }
}

/// A parameter is text on the wire and is absent rather than null: `Option<T>` params
/// are `T`, not `T | null`.
fn not_null(schema: RefOr<Schema>) -> RefOr<Schema> {
    let is_null = |item: &RefOr<Schema>| {
        matches!(item, RefOr::T(Schema::Object(o))
            if o.schema_type == SchemaType::Type(utoipa::openapi::Type::Null))
    };
    match schema {
        RefOr::T(Schema::OneOf(one_of)) if one_of.items.iter().any(is_null) => {
            let mut rest: Vec<RefOr<Schema>> =
                one_of.items.into_iter().filter(|i| !is_null(i)).collect();
            if rest.len() == 1 {
                rest.remove(0)
            } else {
                let mut one_of = utoipa::openapi::schema::OneOf::new();
                one_of.items = rest;
                RefOr::T(Schema::OneOf(one_of))
            }
        }
        RefOr::T(Schema::Object(mut object)) => {
            if let SchemaType::Array(types) = &mut object.schema_type {
                types.retain(|t| *t != utoipa::openapi::Type::Null);
                if types.len() == 1 {
                    object.schema_type = SchemaType::Type(types[0].clone());
                }
            }
            RefOr::T(Schema::Object(object))
        }
        other => other,
    }
}

/// The request's `X-Correlation-ID`: a UUID where a publish uses it, else any text echoed
/// back.
pub fn correlation_parameter(publishes: bool) -> Parameter {
    let (schema, description) = if publishes {
        (
            json!({"type": "string", "format": "uuid"}),
            "The correlation id of events published without their own (a UUID; anything \
             else is `422 invalid_correlation_id`). Echoed on the response.",
        )
    } else {
        (
            json!({"type": "string"}),
            "Echoed on the response; a fresh UUID when absent.",
        )
    };
    ParameterBuilder::new()
        .name(CORRELATION)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(raw(schema)))
        .build()
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("options", item.options.as_mut()),
        ("head", item.head.as_mut()),
        ("patch", item.patch.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|o| (method, o)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use herald_hub::{Hub, HubConfig};
    use herald_store::{AnyStore, EmbeddedOptions, EmbeddedStore};
    use serde_json::Value;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::*;
    use crate::error::ErrorCode;
    use crate::{AppState, Limits};

    fn doc() -> Value {
        serde_json::from_str(document()).unwrap()
    }

    #[test]
    fn is_openapi_3_1() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    }

    /// Every `$ref` points at a component that exists.
    /// Every link names an operation that exists and parameters that operation takes,
    /// and the publish answers link to the event they stored.
    #[test]
    fn links_reach_operations_and_their_parameters() {
        let doc = doc();
        let mut operations = std::collections::HashMap::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                if let Some(id) = operation["operationId"].as_str() {
                    operations.insert(id.to_owned(), operation.clone());
                }
            }
        }
        let mut links = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                let Some(responses) = operation["responses"].as_object() else {
                    continue;
                };
                for response in responses.values() {
                    let Some(found) = response["links"].as_object() else {
                        continue;
                    };
                    for (name, link) in found {
                        links += 1;
                        let target = &operations[link["operationId"].as_str().unwrap()];
                        for parameter in link["parameters"].as_object().unwrap().keys() {
                            assert!(
                                target["parameters"]
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .any(|p| p["name"] == parameter.as_str()),
                                "link {name}: no parameter {parameter}"
                            );
                        }
                    }
                }
            }
        }
        assert!(links >= 3, "{links} links");
        for status in ["200", "201"] {
            assert_eq!(
                doc["paths"]["/api/events"]["post"]["responses"][status]["links"]["GetEvent"],
                json!({"operationId": "get_event", "parameters": {"id": "$response.body#/event_id"}})
            );
        }
    }

    #[test]
    fn references_resolve() {
        fn walk(value: &Value, doc: &Value, seen: &mut usize) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        let pointer = target.trim_start_matches('#');
                        assert!(doc.pointer(pointer).is_some(), "dangling {target}");
                        *seen += 1;
                    }
                    map.values().for_each(|v| walk(v, doc, seen));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc, seen)),
                _ => {}
            }
        }
        let doc = doc();
        let mut seen = 0;
        walk(&doc, &doc, &mut seen);
        assert!(seen > 10);
    }

    async fn state() -> (AppState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("herald.db"), EmbeddedOptions::default())
            .await
            .unwrap();
        let hub = Hub::open(HubConfig::new("local-hub"), AnyStore::Embedded(store))
            .await
            .unwrap();
        (
            AppState::new(hub, Limits::default(), CancellationToken::new()),
            dir,
        )
    }

    /// Every `POST` route is either one that publishes, and so takes a publish slot at
    /// the edge (`PUBLISHING_PATHS`), or one listed here as not publishing: a new `POST`
    /// route fails this test until it is put on one side or the other.
    #[test]
    fn every_post_route_is_known_to_publish_or_not() {
        // Acks, fetches and redrives act on stored events; keys, tenants and rules are
        // settings; `/rpc/methods` lists methods.
        const NOT_PUBLISHING: &[&str] = &[
            "/api/consumers/{name}/ack",
            "/api/consumers/{name}/dead-letters/redrive",
            "/api/consumers/{name}/fetch",
            "/api/consumers/{name}/nak",
            "/api/consumers/{name}/progress",
            "/api/consumers/{name}/term",
            "/api/keys",
            "/api/rules",
            "/api/rules/{id}/dead-letters/redrive",
            "/api/tenants",
            "/rpc/methods",
        ];
        let doc = doc();
        let posts: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, item)| item.get("post").is_some())
            .map(|(path, _)| path.as_str())
            .collect();
        let known: BTreeSet<&str> = crate::PUBLISHING_PATHS
            .iter()
            .chain(NOT_PUBLISHING)
            .copied()
            .collect();
        assert_eq!(posts, known, "POST routes vs publishing and not publishing");
    }

    /// Every route of the router is in the document with exactly the methods the router
    /// takes (read from its `Allow` header), and the document has nothing else.
    #[tokio::test]
    async fn every_route_is_documented() {
        let doc = doc();
        let paths = doc["paths"].as_object().unwrap();
        let (state, _dir) = state().await;
        let routes: Vec<&str> = crate::routes(&state).iter().map(|(p, _)| *p).collect();
        let app = crate::router(state.clone());
        let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
        let registered: BTreeSet<&str> = routes.iter().copied().collect();
        assert_eq!(documented, registered, "documented vs registered paths");
        for path in routes {
            let uri = path.replace("{id}", "0190a6f4-e89b-72d3-a456-426614174000");
            let response = app
                .clone()
                .oneshot(
                    Request::builder()
                        .method(Method::from_bytes(b"PROPFIND").unwrap())
                        .uri(&uri)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            let allow = response.headers()[header::ALLOW].to_str().unwrap();
            let taken: BTreeSet<String> = allow
                .split(',')
                .map(|m| m.trim().to_ascii_lowercase())
                .filter(|m| m != "head")
                .collect();
            let described: BTreeSet<String> = paths[path]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    [
                        "get", "put", "post", "delete", "options", "head", "patch", "trace",
                    ]
                    .contains(&k.as_str())
                })
                .cloned()
                .collect();
            assert_eq!(taken, described, "methods of {path}");
            for method in &described {
                let operation = &paths[path][method];
                let responses = operation["responses"].as_object().unwrap();
                for status in ["400", "408"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
                assert!(
                    operation["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == CORRELATION),
                    "{method} {path}: X-Correlation-ID"
                );
            }
        }
        state.hub.shutdown().await;
    }

    /// Every error code is documented under its status.
    #[test]
    fn every_error_code_is_documented() {
        let doc = doc();
        let responses = doc["components"]["responses"].as_object().unwrap();
        for code in ErrorCode::ALL {
            if *code == ErrorCode::Internal {
                continue;
            }
            let found = responses.values().any(|response| {
                response["content"]["application/json"]["schema"]["properties"]["error"]
                    ["properties"]["code"]["enum"]
                    .as_array()
                    .is_some_and(|codes| codes.contains(&json!(code.as_str())))
            });
            assert!(found, "{code:?}");
        }
    }
}
