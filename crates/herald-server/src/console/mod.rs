//! The web console at `/console`: a page, a script and a style sheet, embedded in the
//! binary, that show the hub through its public API only (REST, the WebSocket stream and
//! `/metrics`). The server holds no console state and offers the console nothing the API
//! does not offer every client.
//!
//! These routes need no key, also when keys are required: they serve the same bytes to
//! everyone and hold no data. The page asks for a key and sends it on its API calls,
//! where it is checked as on any other call. They are not API operations, so they are
//! left out of the OpenAPI document ([`crate::routes`] does not list them).
//!
//! Every answer carries a strict `Content-Security-Policy` (no inline script or style,
//! nothing from another origin), `X-Content-Type-Options: nosniff`, and an `ETag` with
//! `Cache-Control: no-cache`, so browsers revalidate and a new binary's assets are never
//! served from a stale cache.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::{ApiError, ErrorCode};
use crate::AppState;

/// The path the console is served under.
pub const PATH: &str = "/console";

/// The policy every console answer carries: only this origin's script, styles, images
/// and connections (WebSockets to this origin included); no inline script, no plugins,
/// no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("assets/index.html"),
};

/// The files under `/console/`, by name.
const ASSETS: &[Asset] = &[
    INDEX,
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

/// The console's routes, without authentication: `/console`, `/console/` (the page) and
/// `/console/{file}` (the page's files).
pub fn router() -> Router<AppState> {
    Router::new()
        .route(PATH, get(index))
        .route("/console/", get(index))
        .route("/console/{file}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => serve(asset, &headers),
        None => with_policy(
            ApiError::new(ErrorCode::NotFound, "the console has no such file").into_response(),
        ),
    }
}

/// The asset, or `304 Not Modified` when the client holds this version.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = etag(asset);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("an etag is a valid header"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_policy(response)
}

/// Adds the security headers every console answer carries.
fn with_policy(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A strong validator of the asset's bytes, computed once per asset.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                asset.body.hash(&mut hasher);
                format!("\"{:016x}-{}\"", hasher.finish(), asset.body.len())
            })
            .collect()
    });
    let index = ASSETS
        .iter()
        .position(|a| a.name == asset.name)
        .expect("every asset is in ASSETS");
    &tags[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads its script and styles from files (the policy forbids inline ones),
    /// and every file it names is served.
    #[test]
    fn the_page_names_only_served_files() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("<style"), "inline style");
        assert!(!page.contains(" style="), "inline style attribute");
        for name in ["app.js", "style.css", "favicon.svg"] {
            assert!(page.contains(&format!("/console/{name}")), "{name}");
            assert!(ASSETS.iter().any(|a| a.name == name), "{name}");
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    /// Nothing is fetched from another origin, and event data never goes through
    /// `innerHTML` (the script builds elements and sets `textContent`).
    #[test]
    fn the_script_stays_on_this_origin_and_off_inner_html() {
        let script = std::str::from_utf8(ASSETS[1].body).unwrap();
        assert!(!script.contains("innerHTML"));
        assert!(!script.contains("outerHTML"));
        assert!(!script.contains("insertAdjacentHTML"));
        assert!(!script.contains("eval("));
        assert!(!script.contains("https://"));
    }

    #[test]
    fn etags_differ_by_content() {
        let tags: std::collections::BTreeSet<&str> = ASSETS.iter().map(etag).collect();
        assert_eq!(tags.len(), ASSETS.len());
    }
}
