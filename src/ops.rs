//! Operator endpoints: `/healthz`, `/readyz`, `/metrics`, and the drain gate in front of
//! `/rtc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::metrics::{self, QUERY_TIMEOUT, Sources};

/// Set once a shutdown signal arrives; never cleared.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    /// Whether the server is draining.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Start draining: readiness fails and joins are refused from now on.
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The text `/rtc` answers with while draining.
pub const DRAINING_MESSAGE: &str = "server is shutting down; join another node or retry later";

#[derive(Debug, Clone)]
struct OpsState {
    draining: Draining,
    sources: Option<Sources>,
    prometheus: Option<PrometheusHandle>,
}

/// `/healthz` always; `/readyz` and `/metrics` when their sources are given.
pub fn router(
    draining: Draining,
    sources: Option<Sources>,
    prometheus: Option<PrometheusHandle>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .with_state(OpsState {
            draining,
            sources,
            prometheus,
        })
}

/// 200 when the engine and the session service answer and the server is not draining.
async fn readyz(State(state): State<OpsState>) -> Response {
    if state.draining.get() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let Some(sources) = &state.sources else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not started").into_response();
    };
    let snapshot = sources.snapshot(false).await;
    if snapshot.signaling.is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "signaling not answering").into_response();
    }
    if snapshot.sfu.is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "media engine not answering",
        )
            .into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

/// Reads every source (bounded by [`QUERY_TIMEOUT`] each) and renders Prometheus text.
async fn scrape(State(state): State<OpsState>) -> Response {
    let Some(prometheus) = &state.prometheus else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled").into_response();
    };
    let mut histograms = String::new();
    if let Some(sources) = &state.sources {
        let snapshot = sources.snapshot(state.draining.get()).await;
        if snapshot.signaling.is_none() || snapshot.sfu.is_none() {
            tracing::warn!(timeout = ?QUERY_TIMEOUT, "a metrics source did not answer");
        }
        metrics::record(&snapshot);
        histograms = metrics::render_histograms(&snapshot);
    }
    prometheus.run_upkeep();
    let mut text = prometheus.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&histograms);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Middleware for the join routes: 503 with a reason while draining.
pub async fn refuse_while_draining(
    State(draining): State<Draining>,
    request: Request,
    next: Next,
) -> Response {
    if draining.get() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
            DRAINING_MESSAGE,
        )
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;

    use super::*;

    async fn call(app: Router, path: &str) -> (StatusCode, String) {
        use tower::ServiceExt;
        let request = Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn drain_gate_refuses_only_while_draining() {
        let draining = Draining::default();
        let app = Router::new()
            .route("/rtc", get(|| async { "joined" }))
            .layer(axum::middleware::from_fn_with_state(
                draining.clone(),
                refuse_while_draining,
            ));
        assert_eq!(
            call(app.clone(), "/rtc").await,
            (StatusCode::OK, "joined".to_owned())
        );
        draining.start();
        assert_eq!(
            call(app, "/rtc").await,
            (StatusCode::SERVICE_UNAVAILABLE, DRAINING_MESSAGE.to_owned())
        );
    }

    #[tokio::test]
    async fn readyz_fails_while_draining_and_healthz_stays_up() {
        let draining = Draining::default();
        let app = router(draining.clone(), None, None);
        assert_eq!(call(app.clone(), "/healthz").await.0, StatusCode::OK);
        draining.start();
        assert_eq!(
            call(app.clone(), "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "draining".to_owned())
        );
        assert_eq!(call(app, "/healthz").await.0, StatusCode::OK);
    }
}
