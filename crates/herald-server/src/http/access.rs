//! `/api/tenants` and `/api/keys`: who may use the hub (admin keys only; the hub checks).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::{Pattern, Permissions, Timestamp};
use herald_hub::access::{self, AccessError};

use super::{body_rejection, parse_json_object, truncate};
use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorCode};
use crate::wire::access::{
    CreatedKey, Key, KeyList, KeyRequest, Rights, Tenant, TenantList, TenantRequest,
};
use crate::AppState;

fn invalid(field: &'static str, message: String) -> ApiError {
    ApiError::from(AccessError::Invalid { field, message })
}

fn patterns(field: &'static str, texts: &[String]) -> Result<Vec<Pattern>, ApiError> {
    texts
        .iter()
        .map(|text| {
            if !text.is_ascii() {
                return Err(invalid(
                    field,
                    format!(
                        "{:?}: subject spaces and rights are ASCII patterns",
                        truncate(text)
                    ),
                ));
            }
            Pattern::parse_filter(text).map_err(|e| {
                invalid(
                    field,
                    format!("{:?} is not a subject pattern: {e}", truncate(text)),
                )
            })
        })
        .collect()
}

fn rights(field: &'static str, rights: Option<Rights>) -> Result<Option<Permissions>, ApiError> {
    rights
        .map(|r| {
            Ok(Permissions {
                allow: patterns(field, &r.allow)?,
                deny: patterns(field, &r.deny)?,
            })
        })
        .transpose()
}

/// Publish rates of 0 would refuse everything: at least 1, as the schema says.
fn check_limits(limits: &crate::wire::access::Limits) -> Result<(), ApiError> {
    for (field, value) in [
        ("limits.publish_per_second", limits.publish_per_second),
        ("limits.publish_burst", limits.publish_burst),
        (
            "limits.publish_bytes_per_second",
            limits.publish_bytes_per_second,
        ),
    ] {
        if value == Some(0) {
            return Err(invalid(field, "must be at least 1".into()));
        }
    }
    Ok(())
}

fn created(location: String, body: impl serde::Serialize) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `POST /api/tenants`.
#[utoipa::path(
    post,
    path = "/api/tenants",
    tag = "access",
    summary = "Create a tenant",
    description = "A tenant owns subject spaces (patterns that may not overlap another \
        tenant's). Events its keys publish are stamped with it (`tenant_id`), and its keys' \
        rights are narrowed to its spaces. Admin keys only.",
    request_body(content((TenantRequest = "application/json"))),
    responses(
        (status = 201, description = "Created.", body = Tenant),
        (status = 409, response = crate::wire::schema::Conflict),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
    ),
)]
pub async fn create_tenant(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let body = body.map_err(body_rejection)?;
    let request: TenantRequest = parse_json_object(&body)?;
    check_limits(&request.limits)?;
    let new = access::NewTenant {
        subjects: patterns("subjects", &request.subjects)?,
        id: request.id,
        limits: request.limits.into(),
    };
    let tenant = state.hub.as_caller(&caller).create_tenant(new).await?;
    Ok(created(
        format!("/api/tenants/{}", tenant.id),
        Tenant::from(&tenant),
    ))
}

/// `GET /api/tenants`.
#[utoipa::path(
    get,
    path = "/api/tenants",
    tag = "access",
    summary = "List tenants",
    description = "Every tenant, by id. Admin keys only.",
    responses((status = 200, description = "The tenants.", body = TenantList)),
)]
pub async fn list_tenants(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<TenantList>, ApiError> {
    let tenants: Vec<Tenant> = state
        .hub
        .as_caller(&caller)
        .tenants()?
        .iter()
        .map(Tenant::from)
        .collect();
    Ok(Json(TenantList {
        count: tenants.len(),
        tenants,
    }))
}

fn tenant_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::TenantNotFound,
        format!("no tenant has the id {:?}", truncate(id)),
    )
}

/// `GET /api/tenants/{id}`.
#[utoipa::path(
    get,
    path = "/api/tenants/{id}",
    tag = "access",
    summary = "Show a tenant",
    description = "Admin keys only.",
    params(("id" = String, Path, description = "The tenant's id.")),
    responses(
        (status = 200, description = "The tenant.", body = Tenant),
        (status = 404, response = crate::wire::schema::NotFound),
    ),
)]
pub async fn get_tenant(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    match state.hub.as_caller(&caller).tenant(&id)? {
        Some(tenant) => Ok(Json(Tenant::from(&tenant))),
        None => Err(tenant_not_found(&id)),
    }
}

/// `DELETE /api/tenants/{id}`.
#[utoipa::path(
    delete,
    path = "/api/tenants/{id}",
    tag = "access",
    summary = "Delete a tenant",
    description = "Deletes the tenant and revokes its keys at once (on every instance \
        sharing the store within 2 s). Its events stay in the log. Admin keys only.",
    params(("id" = String, Path, description = "The tenant's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, response = crate::wire::schema::NotFound),
    ),
)]
pub async fn delete_tenant(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.hub.as_caller(&caller).delete_tenant(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(tenant_not_found(&id))
    }
}

/// `POST /api/keys`.
#[utoipa::path(
    post,
    path = "/api/keys",
    tag = "access",
    summary = "Create an API key",
    description = "Answers the key's secret (`key`, `hrld_…`) this once: only a hash is \
        kept. Rights left out are the tenant's whole subject spaces. A key of a tenant is \
        narrowed to the tenant's spaces whatever its patterns say. An admin key belongs to \
        no tenant (`409` with both). Admin keys only.",
    request_body(content((KeyRequest = "application/json"))),
    responses(
        (status = 201, description = "Created; `key` is the secret.", body = CreatedKey),
        (status = 404, response = crate::wire::schema::NotFound),
        (status = 409, response = crate::wire::schema::Conflict),
        (status = 413, response = crate::wire::schema::PayloadTooLarge),
        (status = 422, response = crate::wire::schema::UnprocessableEntity),
    ),
)]
pub async fn create_key(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let body = body.map_err(body_rejection)?;
    let request: KeyRequest = parse_json_object(&body)?;
    check_limits(&request.limits)?;
    if request.admin && request.tenant.is_some() {
        // Admin rights span every tenant: a key of one tenant holding them would let that
        // tenant's holder manage the others.
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "`admin`: an admin key manages every tenant, so it cannot belong to one; leave out \
             `tenant`",
        ));
    }
    let expires_at = request
        .expires_at
        .as_deref()
        .map(|text| Timestamp::parse(text).map_err(|e| invalid("expires_at", e.to_string())))
        .transpose()?;
    let new = access::NewKey {
        tenant: request.tenant,
        description: request.description,
        publish: rights("publish", request.publish)?,
        subscribe: rights("subscribe", request.subscribe)?,
        admin: request.admin,
        limits: request.limits.into(),
        expires_at,
    };
    let made = state.hub.as_caller(&caller).create_key(new).await?;
    Ok(created(
        format!("/api/keys/{}", made.info.id),
        CreatedKey {
            info: Key::from(&made.info),
            key: made.secret,
        },
    ))
}

/// `GET /api/keys`.
#[utoipa::path(
    get,
    path = "/api/keys",
    tag = "access",
    summary = "List API keys",
    description = "Every key's id, tenant, rights, `created_at` and `last_used_at`; never a \
        secret. Admin keys only.",
    responses((status = 200, description = "The keys.", body = KeyList)),
)]
pub async fn list_keys(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<KeyList>, ApiError> {
    let keys: Vec<Key> = state
        .hub
        .as_caller(&caller)
        .keys()?
        .iter()
        .map(Key::from)
        .collect();
    Ok(Json(KeyList {
        count: keys.len(),
        keys,
    }))
}

fn key_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::KeyNotFound,
        format!("no key has the id {:?}", truncate(id)),
    )
}

/// `GET /api/keys/{id}`.
#[utoipa::path(
    get,
    path = "/api/keys/{id}",
    tag = "access",
    summary = "Show an API key",
    description = "Never its secret. Admin keys only.",
    params(("id" = String, Path, description = "The key's id.")),
    responses(
        (status = 200, description = "The key.", body = Key),
        (status = 404, response = crate::wire::schema::NotFound),
    ),
)]
pub async fn get_key(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Key>, ApiError> {
    match state.hub.as_caller(&caller).key(&id)? {
        Some(key) => Ok(Json(Key::from(&key))),
        None => Err(key_not_found(&id)),
    }
}

/// `DELETE /api/keys/{id}`.
#[utoipa::path(
    delete,
    path = "/api/keys/{id}",
    tag = "access",
    summary = "Revoke an API key",
    description = "Refused at once on this instance, and on every instance sharing the \
        store within 2 s. Admin keys only.",
    params(("id" = String, Path, description = "The key's id.")),
    responses(
        (status = 204, description = "Revoked."),
        (status = 404, response = crate::wire::schema::NotFound),
    ),
)]
pub async fn delete_key(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.hub.as_caller(&caller).delete_key(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(key_not_found(&id))
    }
}
