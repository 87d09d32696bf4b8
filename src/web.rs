//! The web app, embedded at build time (see `build.rs`) and served at `/`.
//!
//! Files of the built app are served by path; any other path that is not a server route serves
//! `index.html`, so that the app's own links (`/rooms/{id}`, `/embed/rooms/{id}`) load it and it
//! routes in the browser. Paths under the server's own prefixes never fall back to the app.
//!
//! A room's page (`/rooms/{id}`) is the same `index.html` with the room's Open Graph and Twitter
//! card tags written into its head, so that a shared link previews with the room's title, host
//! and state in apps that read those tags without running the page's script.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use stoa_control::Control;
use stoa_control::model::{RoomId, RoomState};
use stoa_control::view::RoomCardView;

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

/// The routes whose `index.html` carries tags of their own: `/rooms/{id}`.
pub fn router(control: Control) -> Router {
    Router::new()
        .route("/rooms/{id}", get(room_page))
        .with_state(control)
}

/// `index.html` with the room's preview tags; the plain page when the room is unknown or the
/// store does not answer (the app then says so itself).
async fn room_page(State(control): State<Control>, Path(id): Path<String>) -> Response {
    let Some(bytes) = file("index.html") else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let card = match RoomId::parse(&id) {
        Ok(id) => control
            .room(&id)
            .await
            .ok()
            .map(|doc| stoa_control::view::card(&doc)),
        Err(_) => None,
    };
    let Some(card) = card else {
        return asset("index.html", bytes, false);
    };
    let html = with_preview(&String::from_utf8_lossy(bytes), &card);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        html,
    )
        .into_response()
}

/// `index` with `<title>` and the description replaced by the room's, and Open Graph and
/// Twitter card tags added to its head.
fn with_preview(index: &str, card: &RoomCardView) -> String {
    let title = escape(&card.title);
    let description = escape(&preview_text(card));
    let tags = format!(
        "<title>{title} · Stoa</title>\n\
         <meta name=\"description\" content=\"{description}\" />\n\
         <meta property=\"og:site_name\" content=\"Stoa\" />\n\
         <meta property=\"og:type\" content=\"website\" />\n\
         <meta property=\"og:title\" content=\"{title}\" />\n\
         <meta property=\"og:description\" content=\"{description}\" />\n\
         <meta name=\"twitter:card\" content=\"summary\" />\n\
         <meta name=\"twitter:title\" content=\"{title}\" />\n\
         <meta name=\"twitter:description\" content=\"{description}\" />\n"
    );
    // The built page's own generic title and description give way to the room's.
    let mut out = String::with_capacity(index.len() + tags.len());
    for line in index.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("<title>") || t.starts_with("<meta name=\"description\"") {
            continue;
        }
        if t.starts_with("</head>") {
            out.push_str(&tags);
        }
        out.push_str(line);
    }
    out
}

/// One line on the room: its state, its host, its audience or time, its topic.
fn preview_text(card: &RoomCardView) -> String {
    let mut parts = vec![match card.state {
        RoomState::Live => "Live now".to_owned(),
        RoomState::Scheduled => match card.scheduled_for {
            Some(at) => format!("Scheduled for {}", utc(at)),
            None => "Scheduled".to_owned(),
        },
        RoomState::Ended | RoomState::Archived => "Ended".to_owned(),
    }];
    if !card.host_name.is_empty() {
        parts.push(format!("hosted by {}", card.host_name));
    }
    if card.state == RoomState::Live {
        let n = card.listeners;
        parts.push(format!("{n} listening"));
    }
    let mut text = parts.join(" · ");
    if !card.topic.is_empty() {
        text.push_str(". ");
        text.push_str(&card.topic);
    }
    text
}

/// Unix ms as `2026-12-07 10:00 UTC`.
fn utc(ms: u64) -> String {
    let at = i64::try_from(ms / 1000)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    at.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// Text for an HTML attribute or element.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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

    fn card(state: RoomState) -> RoomCardView {
        RoomCardView {
            id: "aaaaaaaaaaaaaaaa".into(),
            title: "Ask <me> \"anything\" & more".into(),
            topic: "Plans".into(),
            kind: stoa_control::model::RoomKind::Stage,
            state,
            scheduled_for: Some(1_796_637_600_000),
            started_at: None,
            ended_at: None,
            listeners: 3,
            speakers: vec!["Hana".into()],
            host_name: "Hana".into(),
        }
    }

    #[test]
    fn room_pages_carry_escaped_preview_tags_in_place_of_the_generic_ones() {
        let index = "<html>\n<head>\n<meta charset=\"utf-8\" />\n<meta name=\"description\" content=\"Live audio rooms\" />\n<title>Stoa</title>\n</head>\n<body></body>\n</html>\n";
        let html = with_preview(index, &card(RoomState::Live));
        let title = "Ask &lt;me&gt; &quot;anything&quot; &amp; more";
        assert!(
            html.contains(&format!("<title>{title} · Stoa</title>")),
            "{html}"
        );
        assert!(html.contains(&format!(
            "<meta property=\"og:title\" content=\"{title}\" />"
        )));
        assert!(html.contains("<meta name=\"twitter:card\" content=\"summary\" />"));
        assert!(html.contains(
            "<meta property=\"og:description\" content=\"Live now · hosted by Hana · 3 listening. Plans\" />"
        ));
        assert_eq!(html.matches("<title>").count(), 1);
        assert_eq!(html.matches("name=\"description\"").count(), 1);
        assert!(!html.contains("Live audio rooms"));
        assert!(html.find("og:title").unwrap() < html.find("</head>").unwrap());

        let scheduled = preview_text(&card(RoomState::Scheduled));
        assert_eq!(
            scheduled,
            "Scheduled for 2026-12-07 10:00 UTC · hosted by Hana. Plans"
        );
        assert!(preview_text(&card(RoomState::Ended)).starts_with("Ended · hosted by Hana"));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_709_251_199_000), "2024-02-29 23:59 UTC");
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
