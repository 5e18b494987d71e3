//! The HTTP receiver: `POST /webhooks/buildkite` (path configurable), the Test Engine endpoint,
//! and the operator endpoints (`/healthz`, `/readyz`, `/metrics`, `POST /-/reload`).
//!
//! Checks run cheapest first and on the raw bytes: caller address, auth headers, body size,
//! token or signature, and only then JSON parsing. Every refusal is a 4xx with a one-line
//! reason and a log line. An authentic event is stored with its deliveries before the answer
//! goes back; if the store cannot take it, the answer is 503 and nothing is kept. Each request
//! runs on the config that was live when it arrived, so a reload never splits one.

mod client;
mod error;
mod ops;

pub use client::client_ip;
pub use error::IngressError;

use crate::auth;
use crate::event::{Event, VerifiedBody};
use crate::metrics::Metrics;
use crate::mute::Muted;
use crate::queue::Queue;
use crate::reload::{Live, Reloader};
use crate::store::Accepted;
use arc_swap::ArcSwap;
use axum::Json;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use client::{check_address, peer, read_body, single_header};
use ipnet::IpNet;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The config and routes in force; swapped whole by a reload.
    pub live: Arc<ArcSwap<Live>>,
    /// Where accepted events are kept until delivered.
    pub queue: Queue,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Reloads the config (`POST /-/reload`, SIGHUP).
    pub reloader: Arc<Reloader>,
    /// Buildkite's published webhook addresses, when `allowed_ips` names `"buildkite"`.
    pub buildkite_ips: Arc<ArcSwap<Vec<IpNet>>>,
    /// Set once shutdown has begun: `/readyz` answers 503 so a load balancer moves traffic
    /// away, while requests are still served until the drain time is over.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// The service's HTTP routes. The two webhook endpoints share one concurrency cap: requests
/// beyond it are answered 503 at once rather than queued, so a flood cannot pile up memory or
/// time. Probes, metrics and reload stay outside it, so an orchestrator still sees the service.
pub fn router(state: AppState) -> axum::Router {
    let live = state.live.load();
    let (path, cap) = (
        live.config.server.path.clone(),
        live.config.server.max_concurrent_requests,
    );
    let metrics = state.metrics.clone();
    let webhooks = axum::Router::new()
        .route(&path, post(buildkite))
        .route("/webhooks/test-engine/{key}", post(test_engine))
        // `route_layer` applies the layer to each route separately; the global limit's one
        // semaphore makes the cap a total, not one per route.
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |_: tower::BoxError| {
                    let metrics = metrics.clone();
                    async move {
                        metrics.refused(None, "overloaded");
                        tracing::warn!("request refused: too many requests at once");
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(json!({"error": "too many requests at once; try again"})),
                        )
                    }
                }))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(cap)),
        );
    axum::Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/-/reload", post(ops::reload))
        .merge(webhooks)
        .with_state(state)
}

const TOKEN: &str = "x-buildkite-token";
const SIGNATURE: &str = "x-buildkite-signature";
const EVENT: &str = "x-buildkite-event";

/// The `X-Buildkite-Event` header, if given once as text.
fn event_header(headers: &HeaderMap) -> Result<Option<String>, IngressError> {
    single_header(headers, EVENT)
        .map(|v| v.map(str::to_string))
        .map_err(|name| {
            IngressError::BadRequest(format!("{name} header must appear once, as text"))
        })
}

/// Logs and counts a refused request and answers it. `claimed` is the `X-Buildkite-Event`
/// header it came with, which only picks a metrics label.
fn refuse(
    state: &AppState,
    err: IngressError,
    claimed: Option<&HeaderValue>,
    ip: Option<IpAddr>,
    request_id: Option<&HeaderValue>,
) -> Response {
    state
        .metrics
        .refused(claimed.and_then(|v| v.to_str().ok()), err.verdict());
    let request_id = request_id
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(64).collect::<String>());
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
    let live = state.live.load_full();
    let ip = client_ip(
        peer(&req),
        req.headers(),
        &live.config.server.trusted_proxies,
    );
    // Kept (cheap: shared bytes) for the log line and metrics label of a refusal.
    let claimed = req.headers().get(EVENT).cloned();
    let request_id = req.headers().get("x-buildkite-request").cloned();
    match receive_buildkite(&state, &live, ip, req).await {
        Ok(response) => response,
        Err(err) => refuse(&state, err, claimed.as_ref(), ip, request_id.as_ref()),
    }
}

async fn receive_buildkite(
    state: &AppState,
    live: &Live,
    ip: Option<IpAddr>,
    req: Request,
) -> Result<Response, IngressError> {
    let config = &live.config;
    check_address(config, &state.buildkite_ips.load(), ip)?;
    let headers = req.headers();
    let bad_header =
        |name: &'static str| IngressError::Unauthorized(auth::AuthError::BadHeader(name));
    let token = single_header(headers, TOKEN).map_err(bad_header)?;
    let signature = single_header(headers, SIGNATURE).map_err(bad_header)?;
    let presented = config.credentials.presented(token, signature)?;
    // Judged only after authentication, so only an authenticated caller learns that its event
    // header is malformed.
    let header_event = event_header(headers);
    let body = read_body(req, &config.server).await?;
    let now = chrono::Utc::now();
    let verified = config
        .credentials
        .verify(&presented, body, now.timestamp())?;
    let event = Event::parse(&verified, header_event?.as_deref(), now)?;
    accept(state, live, &verified, event).await
}

async fn test_engine(
    State(state): State<AppState>,
    Path(key): Path<String>,
    req: Request,
) -> Response {
    let live = state.live.load_full();
    let ip = client_ip(
        peer(&req),
        req.headers(),
        &live.config.server.trusted_proxies,
    );
    match receive_test_engine(&state, &live, ip, &key, req).await {
        Ok(response) => response,
        Err(err) => refuse(&state, err, None, ip, None),
    }
}

async fn receive_test_engine(
    state: &AppState,
    live: &Live,
    ip: Option<IpAddr>,
    key: &str,
    req: Request,
) -> Result<Response, IngressError> {
    let config = &live.config;
    let Some(expected) = &config.test_engine_key else {
        return Err(IngressError::NotFound);
    };
    check_address(config, &state.buildkite_ips.load(), ip)?;
    if !auth::secret_eq(expected.expose(), key) {
        return Err(IngressError::BadKey);
    }
    let header_event = event_header(req.headers())?;
    let body = read_body(req, &config.server).await?;
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
    accept(state, live, &verified, event).await
}

async fn accept(
    state: &AppState,
    live: &Live,
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
        .accept(event, body.bytes().clone(), live.router.clone())
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
        .filter(|m| matches!(m.muted, Muted::Hold(..)))
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
