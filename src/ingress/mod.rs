//! The HTTP receiver: `POST /webhooks/buildkite` (path configurable), the Test Engine endpoint,
//! `/healthz` and `/readyz`.
//!
//! Checks run cheapest first and on the raw bytes: caller address, auth headers, body size,
//! token or signature, and only then JSON parsing. Every refusal is a 4xx with a one-line
//! reason and a log line. An authentic event is stored with its deliveries before the answer
//! goes back; if the store cannot take it, the answer is 503 and nothing is kept.

pub mod auth;
mod error;

pub use error::IngressError;

use crate::config::Config;
use crate::event::{Event, VerifiedBody};
use crate::metrics::Metrics;
use crate::mute::Muted;
use crate::queue::Queue;
use crate::routing::Router;
use crate::store::Accepted;
use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The validated config.
    pub config: Arc<Config>,
    /// The compiled routes.
    pub router: Arc<Router>,
    /// Where accepted events are kept until delivered.
    pub queue: Queue,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// The service's HTTP routes.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(&state.config.server.path, post(buildkite))
        .route("/webhooks/test-engine/{key}", post(test_engine))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The metrics, with the queue gauges read from the store now.
async fn metrics(State(state): State<AppState>) -> Response {
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
        for s in stats {
            let d = [s.destination.as_str()];
            m.queue_depth.with_label_values(&d).set(s.pending as i64);
            m.dead_letters.with_label_values(&d).set(s.dead as i64);
            let age = s
                .oldest_created_at
                .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
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

/// Ready when the store takes a write within two seconds.
async fn readyz(State(state): State<AppState>) -> Response {
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

const TOKEN: &str = "x-buildkite-token";
const SIGNATURE: &str = "x-buildkite-signature";
const EVENT: &str = "x-buildkite-event";

/// The value of a header that may appear at most once; `Err` names the header.
fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, &'static str> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(name);
    }
    first.to_str().map(Some).map_err(|_| name)
}

fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip().to_canonical())
}

fn check_address(config: &Config, ip: Option<IpAddr>) -> Result<(), IngressError> {
    if config.allowed_ips.is_empty() {
        return Ok(());
    }
    match ip {
        Some(ip) if config.allowed_ips.iter().any(|net| net.contains(&ip)) => Ok(()),
        Some(ip) => Err(IngressError::Forbidden(ip)),
        None => Err(IngressError::Forbidden(IpAddr::from([0, 0, 0, 0]))),
    }
}

/// How long a client may take to send its body. Buildkite sends it at once; a client that
/// trickles bytes must not hold a connection (or shutdown) for ever.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn read_body(req: Request, limit: usize) -> Result<Bytes, IngressError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngressError::TooLarge(limit));
    }
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(req.into_body(), limit));
    match read.await {
        Err(_) => Err(IngressError::SlowBody(BODY_TIMEOUT)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(IngressError::TooLarge(limit))
            } else {
                Err(IngressError::BadRequest(
                    "could not read the request body".into(),
                ))
            }
        }
    }
}

/// The `X-Buildkite-Event` header, if given once as text.
fn event_header(headers: &HeaderMap) -> Result<Option<String>, IngressError> {
    single_header(headers, EVENT)
        .map(|v| v.map(str::to_string))
        .map_err(|name| {
            IngressError::BadRequest(format!("{name} header must appear once, as text"))
        })
}

fn refuse(
    state: &AppState,
    err: IngressError,
    ip: Option<IpAddr>,
    request_id: Option<&str>,
) -> Response {
    state
        .metrics
        .events
        .with_label_values(&["unknown", err.verdict()])
        .inc();
    tracing::warn!(
        status = err.status().as_u16(),
        reason = %err,
        peer = ?ip,
        request_id,
        "webhook refused"
    );
    err.into_response()
}

async fn buildkite(State(state): State<AppState>, req: Request) -> Response {
    let ip = peer(&req);
    let request_id = req
        .headers()
        .get("x-buildkite-request")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(64).collect::<String>());
    match receive_buildkite(&state, ip, req).await {
        Ok(response) => response,
        Err(err) => refuse(&state, err, ip, request_id.as_deref()),
    }
}

async fn receive_buildkite(
    state: &AppState,
    ip: Option<IpAddr>,
    req: Request,
) -> Result<Response, IngressError> {
    let config = &state.config;
    check_address(config, ip)?;
    let headers = req.headers();
    let bad_header =
        |name: &'static str| IngressError::Unauthorized(auth::AuthError::BadHeader(name));
    let token = single_header(headers, TOKEN).map_err(bad_header)?;
    let signature = single_header(headers, SIGNATURE).map_err(bad_header)?;
    let presented = config.credentials.presented(token, signature)?;
    // Judged only after authentication, so an unauthenticated caller always gets 401.
    let header_event = event_header(headers);
    let body = read_body(req, config.server.max_body_bytes).await?;
    let now = chrono::Utc::now();
    let verified = config
        .credentials
        .verify(&presented, body, now.timestamp())?;
    let event = Event::parse(&verified, header_event?.as_deref(), now)?;
    accept(state, &verified, event).await
}

async fn test_engine(
    State(state): State<AppState>,
    Path(key): Path<String>,
    req: Request,
) -> Response {
    let ip = peer(&req);
    match receive_test_engine(&state, ip, &key, req).await {
        Ok(response) => response,
        Err(err) => refuse(&state, err, ip, None),
    }
}

async fn receive_test_engine(
    state: &AppState,
    ip: Option<IpAddr>,
    key: &str,
    req: Request,
) -> Result<Response, IngressError> {
    let config = &state.config;
    let Some(expected) = &config.test_engine_key else {
        return Err(IngressError::NotFound);
    };
    check_address(config, ip)?;
    if !auth::secret_eq(expected.expose(), key) {
        return Err(IngressError::BadKey);
    }
    let header_event = event_header(req.headers())?;
    let body = read_body(req, config.server.max_body_bytes).await?;
    // The secret path segment is this endpoint's authentication; it vouches only for Test
    // Engine's own events, so it cannot be used to inject build or agent events.
    let now = chrono::Utc::now();
    let verified = VerifiedBody::trusted(body);
    let event = Event::parse(&verified, header_event.as_deref(), now)?;
    if event.family() != "workflow" {
        return Err(IngressError::BadRequest(
            "the Test Engine endpoint takes only workflow.* events".into(),
        ));
    }
    accept(state, &verified, event).await
}

async fn accept(
    state: &AppState,
    body: &VerifiedBody,
    event: Event,
) -> Result<Response, IngressError> {
    let (name, pipeline, build, subject_state) = (
        event.name().to_string(),
        event.pipeline_slug().map(str::to_string),
        event.build_number(),
        event.state().map(str::to_string),
    );
    let intake = state
        .queue
        .accept(event, body.bytes().clone(), state.router.clone())
        .await
        .map_err(IngressError::Unavailable)?;
    let (id, duplicate, transition) = match &intake.accepted {
        Accepted::New {
            event_id,
            transition,
            ..
        } => (
            *event_id,
            false,
            transition.as_ref().map(|t| t.kind.as_str()),
        ),
        Accepted::Duplicate { event_id } => (*event_id, true, None),
    };
    let plan = &intake.plan;
    state
        .metrics
        .event(&name, if duplicate { "duplicate" } else { "accepted" });
    for route in &plan.routes {
        state.metrics.routes.with_label_values(&[route]).inc();
    }
    let held = plan
        .muted
        .iter()
        .filter(|m| matches!(m.2, Muted::Hold(..)))
        .count();
    let dropped = plan.muted.len() - held;
    tracing::info!(
        id,
        event = %name,
        pipeline,
        build,
        state = subject_state,
        transition,
        routes = %plan.routes.join(", "),
        deliveries = plan.deliveries.len(),
        held,
        dropped,
        duplicate,
        "event accepted"
    );
    let status = if name == "ping" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let label = match (duplicate, name == "ping") {
        (true, _) => "duplicate",
        (false, true) => "ok",
        (false, false) => "accepted",
    };
    let mut answer = json!({
        "status": label,
        "id": id,
        "event": name,
        "routes": plan.routes,
        "deliveries": plan.deliveries.len(),
    });
    if let Some(t) = transition {
        answer["transition"] = json!(t);
    }
    if !plan.muted.is_empty() {
        answer["muted"] = json!({"held": held, "dropped": dropped});
    }
    Ok((status, Json(answer)).into_response())
}
