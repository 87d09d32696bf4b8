//! The web app, embedded at build time (see `build.rs`) and served at `/`.
//!
//! Files of the built app are served by path; any other path that is not a server route serves
//! `index.html`, so that the app's own links (`/rooms/{id}`, `/embed/rooms/{id}`) load it and it
//! routes in the browser. Paths under the server's own prefixes never fall back to the app.

use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

mod assets {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// Prefixes that belong to the server, not to the app: an unknown path under them is a 404.
const SERVER_PREFIXES: &[&str] = &["api", "rtc", "twirp", "metrics", "healthz", "readyz"];

/// Whether the embedded app is the real build (else a page saying how to build it).
pub fn built() -> bool {
    assets::BUILT
}

/// The fallback handler: an embedded file, else `index.html` for app routes, else 404.
pub async fn app(method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = uri.path().trim_start_matches('/');
    let first = path.split('/').next().unwrap_or_default();
    if SERVER_PREFIXES.contains(&first) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    if let Some(bytes) = file(path) {
        let immutable = path.starts_with("assets/");
        return asset(path, bytes, immutable);
    }
    // A missing file (it has an extension) is a 404; anything else is a route of the app.
    let last = path.rsplit('/').next().unwrap_or_default();
    if last.contains('.') {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    match file("index.html") {
        Some(bytes) => asset("index.html", bytes, false),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn file(path: &str) -> Option<&'static [u8]> {
    assets::ASSETS
        .iter()
        .find(|(name, _)| *name == path)
        .map(|(_, bytes)| *bytes)
}

/// One file with its type; hashed build output (`assets/`) is cached for good, the rest revalidated.
fn asset(path: &str, bytes: &'static [u8], immutable: bool) -> Response {
    let cache = if immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(path)),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        bytes,
    )
        .into_response()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    async fn get(path: &str) -> (StatusCode, String, String) {
        let uri: Uri = path.parse().expect("a valid path");
        let response = app(Method::GET, uri).await;
        let status = response.status();
        let kind = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = to_bytes(response.into_body(), 1 << 24)
            .await
            .expect("a body");
        (status, kind, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn app_routes_serve_index_html() {
        for path in ["/", "/rooms/abc", "/embed/rooms/abc", "/new?x=1"] {
            let (status, kind, body) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(kind.starts_with("text/html"), "{path}: {kind}");
            assert!(body.contains("<html"), "{path}");
        }
    }

    #[tokio::test]
    async fn server_prefixes_and_missing_files_are_not_found() {
        for path in [
            "/api/nope",
            "/rtc/x",
            "/twirp/x",
            "/healthz/x",
            "/missing.js",
        ] {
            let (status, _, _) = get(path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
        let response = app(Method::POST, Uri::from_static("/")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
