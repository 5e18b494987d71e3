//! The operator endpoints: `/healthz`, `/readyz`, `/metrics` and `POST /-/reload`.

use super::AppState;
use crate::auth::secret_eq;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Alive.
pub(super) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// The metrics, with the queue gauges read from the store now.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    if let Ok(Ok(stats)) = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.queue.store().queue_stats(),
    )
    .await
    {
        let now = crate::store::now_ms();
        m.queue_depth.reset();
        m.oldest_pending_seconds.reset();
        m.dead_letters.reset();
        // Every enabled destination shows, drained or not.
        for d in state
            .live
            .load()
            .config
            .destinations
            .iter()
            .filter(|d| d.enabled())
        {
            let d = [d.name.as_str()];
            m.queue_depth.with_label_values(&d).set(0);
            m.dead_letters.with_label_values(&d).set(0);
            m.oldest_pending_seconds.with_label_values(&d).set(0.0);
        }
        for s in stats {
            let d = [s.destination.as_str()];
            m.queue_depth.with_label_values(&d).set(s.pending as i64);
            m.dead_letters.with_label_values(&d).set(s.dead as i64);
            let age = s.oldest_age_ms(now).map_or(0.0, |ms| ms as f64 / 1000.0);
            m.oldest_pending_seconds.with_label_values(&d).set(age);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// Ready when the store takes a write within two seconds, and not shutting down.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    let probe = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.queue.store().probe(),
    )
    .await;
    match probe {
        Ok(Ok(())) => Json(json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "not ready: the store is not writable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "error": e.to_string()})),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": "the store did not answer within 2s"})),
        )
            .into_response(),
    }
}

/// `POST /-/reload`: with `Authorization: Bearer <reload_token>`; off (404) without a token.
pub(super) async fn reload(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let live = state.live.load();
    let Some(expected) = &live.config.server.reload_token else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "not found"}))).into_response();
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !secret_eq(expected.expose(), presented) {
        tracing::warn!("reload refused: wrong or missing token");
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid reload token"})),
        )
            .into_response();
    }
    drop(live);
    match state.reloader.reload().await {
        Ok(summary) => Json(json!({"status": "reloaded", "summary": summary})).into_response(),
        Err(problems) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"status": "refused", "problems": problems})),
        )
            .into_response(),
    }
}
