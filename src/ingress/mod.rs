//! The HTTP receiver: `POST /webhooks/buildkite` (path configurable), the Test Engine endpoint,
//! `/healthz` and `/readyz`.
//!
//! Checks run cheapest first and on the raw bytes: caller address, auth headers, body size,
//! token or signature, and only then JSON parsing. Every refusal is a 4xx with a one-line
//! reason and a log line; an accepted event is handed to the dispatcher and answered at once.

pub mod auth;
mod error;

pub use error::IngressError;

use crate::config::Config;
use crate::dispatch::{Dispatcher, plan};
use crate::event::{Event, VerifiedBody};
use crate::routing::Router;
use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The validated config.
    pub config: Arc<Config>,
    /// The compiled routes.
    pub router: Arc<Router>,
    /// Where accepted events go.
    pub dispatcher: Dispatcher,
}

/// The service's HTTP routes.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(&state.config.server.path, post(buildkite))
        .route("/webhooks/test-engine/{key}", post(test_engine))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(|| async { Json(json!({"status": "ready"})) }),
        )
        .with_state(state)
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

async fn read_body(req: Request, limit: usize) -> Result<Bytes, IngressError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngressError::TooLarge(limit));
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                IngressError::TooLarge(limit)
            } else {
                IngressError::BadRequest("could not read the request body".into())
            }
        })
}

fn refuse(err: IngressError, ip: Option<IpAddr>, request_id: Option<&str>) -> Response {
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
        Err(err) => refuse(err, ip, request_id.as_deref()),
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
    let header_event = single_header(headers, EVENT)
        .map_err(|name| {
            IngressError::BadRequest(format!("{name} header must appear once, as text"))
        })?
        .map(str::to_string);
    let body = read_body(req, config.server.max_body_bytes).await?;
    let now = chrono::Utc::now();
    let verified = config
        .credentials
        .verify(&presented, body, now.timestamp())?;
    accept(state, &verified, header_event.as_deref(), now)
}

async fn test_engine(
    State(state): State<AppState>,
    Path(key): Path<String>,
    req: Request,
) -> Response {
    let ip = peer(&req);
    match receive_test_engine(&state, ip, &key, req).await {
        Ok(response) => response,
        Err(err) => refuse(err, ip, None),
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
    if !bool::from(expected.expose().as_bytes().ct_eq(key.as_bytes())) {
        return Err(IngressError::BadKey);
    }
    let header_event = single_header(req.headers(), EVENT)
        .map_err(|name| {
            IngressError::BadRequest(format!("{name} header must appear once, as text"))
        })?
        .map(str::to_string);
    let body = read_body(req, config.server.max_body_bytes).await?;
    // The secret path segment is this endpoint's authentication.
    accept(
        state,
        &VerifiedBody::trusted(body),
        header_event.as_deref(),
        chrono::Utc::now(),
    )
}

fn accept(
    state: &AppState,
    body: &VerifiedBody,
    header_event: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Response, IngressError> {
    let event = Event::parse(body, header_event, now)?;
    let routes = state.router.route(&event);
    let planned = plan(&routes, |d| state.dispatcher.has_destination(d));
    let route_names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    tracing::info!(
        event = event.name(),
        pipeline = event.pipeline_slug(),
        build = event.build_number(),
        state = event.state(),
        routes = %route_names.join(", "),
        deliveries = planned.len(),
        "event accepted"
    );
    let (status, label) = if event.name() == "ping" {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::ACCEPTED, "accepted")
    };
    let answer = json!({
        "status": label,
        "event": event.name(),
        "routes": route_names,
        "deliveries": planned.len(),
    });
    state.dispatcher.dispatch(event, planned);
    Ok((status, Json(answer)).into_response())
}
