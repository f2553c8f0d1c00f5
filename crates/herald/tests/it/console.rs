//! The web console through the binary: `/console` and its files are served with their
//! content types, a strict Content-Security-Policy and revalidation headers, also
//! without a key when keys are required (they hold no data), while the API beside them
//! still refuses a request without one.

use crate::harness::*;

const ADMIN: &str = "admin-secret-for-console-tests-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_without_a_key_and_the_api_is_not() {
    let herald = TestHerald::start_with_env(
        None,
        &[],
        &[("HERALD_AUTH", "required"), ("HERALD_ADMIN_KEY", ADMIN)],
    )
    .await;

    for path in ["/console", "/console/"] {
        let response = herald.http.get(herald.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(
            headers["content-type"], "text/html; charset=utf-8",
            "{path}"
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.starts_with("default-src 'self'"), "{policy}");
        assert!(policy.contains("script-src 'self';"), "{policy}");
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["cache-control"], "no-cache");
        let page = response.text().await.unwrap();
        assert!(page.contains(r#"<script src="/console/app.js" defer></script>"#));
    }

    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let url = herald.url(&format!("/console/{file}"));
        let response = herald.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{file}");
        assert_eq!(response.headers()["content-type"], content_type, "{file}");
        assert!(response.headers().contains_key("content-security-policy"));
        let etag = response.headers()["etag"].clone();
        assert!(!response.bytes().await.unwrap().is_empty());
        // A client holding this version is told so, without the body.
        let again = herald
            .http
            .get(&url)
            .header("if-none-match", etag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file}");
        assert_eq!(again.headers()["etag"], etag);
    }

    let missing = herald
        .http
        .get(herald.url("/console/secrets.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().contains_key("content-security-policy"));

    // The API beside it still wants a key.
    let api = herald
        .http
        .get(herald.url("/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let api = herald
        .http
        .get(herald.url("/api/events"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200);
}
