//! Authentication at the edge: the request's API key becomes a [`Caller`] in the
//! request's extensions, which every handler hands to the hub
//! ([`Hub::as_caller`](herald_hub::Hub::as_caller)). What a caller may do is decided in
//! the hub, not here.
//!
//! A key comes as `Authorization: Bearer <key>`, as `X-API-Key: <key>`, or — for browser
//! WebSockets, which cannot set headers — as `?access_token=<key>` on an upgrade request.

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use herald_hub::access::Caller;

use crate::{ApiError, AppState};

pub(crate) static API_KEY_HEADER: header::HeaderName = header::HeaderName::from_static("x-api-key");

/// Puts the caller the request's key stands for in its extensions, unless `access` is
/// open; otherwise why not (the edge answers it, in the route's shape, with
/// [`challenge`]).
pub(crate) fn admit(
    state: &AppState,
    access: crate::Access,
    request: &mut Request,
) -> Result<(), ApiError> {
    if access != crate::Access::Open {
        let caller = caller_of(state, request)?;
        request.extensions_mut().insert(caller);
    }
    Ok(())
}

/// The caller the request's key stands for, its connection counted against the key's
/// `max_connections`.
pub(crate) fn caller_of(state: &AppState, request: &Request) -> Result<Caller, ApiError> {
    let key = key_of(request);
    let caller = state
        .hub
        .authenticate(key.as_deref())
        .map_err(ApiError::from)?;
    if let Some(seat) = request
        .extensions()
        .get::<crate::listener::ConnectionSeat>()
    {
        seat.claim(&caller)?;
    }
    Ok(caller)
}

/// Adds the `WWW-Authenticate` challenge to a `401` (RFC 6750 §3).
pub(crate) fn challenge(response: &mut Response) {
    if response.status() == axum::http::StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"herald\""),
        );
    }
}

/// The key the request carries, if any. An `Authorization` header of another scheme
/// (Basic, from a proxy) is not a key.
fn key_of(request: &Request) -> Option<String> {
    let headers = request.headers();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        if let Ok(text) = value.to_str() {
            let mut parts = text.trim().splitn(2, ' ');
            let scheme = parts.next().unwrap_or_default();
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(parts.next().unwrap_or_default().trim().to_owned());
            }
        }
    }
    if let Some(value) = headers.get(&API_KEY_HEADER) {
        return Some(value.to_str().unwrap_or_default().trim().to_owned());
    }
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        let query = request.uri().query().unwrap_or_default();
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
        if let Some((_, value)) = pairs.into_iter().find(|(name, _)| name == "access_token") {
            return Some(value);
        }
    }
    None
}

/// The caller of a request that went through [`authenticate`]. Routes without
/// authentication (health) must not ask for it; should one do, it gets no rights.
pub struct Authenticated(pub Caller);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Authenticated {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Authenticated(
            parts
                .extensions
                .get::<Caller>()
                .cloned()
                .unwrap_or_else(Caller::nobody),
        ))
    }
}
