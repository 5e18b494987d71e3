//! The answers to requests that are not authentic, well-formed events.

use crate::auth::AuthError;
use crate::event::EventError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;

/// Why a webhook request was refused. Each maps to one 4xx (or 503) with a one-line reason.
#[derive(Debug, Error)]
pub enum IngressError {
    /// The caller's address is outside `allowed_ips`.
    #[error("address {0} is not allowed")]
    Forbidden(std::net::IpAddr),
    /// Token or signature check failed.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// The Test Engine key in the path is wrong.
    #[error("invalid Test Engine key")]
    BadKey,
    /// The body or a header is not a well-formed event.
    #[error(transparent)]
    BadEvent(#[from] EventError),
    /// A header other than the auth ones is unusable.
    #[error("{0}")]
    BadRequest(String),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0:?}")]
    SlowBody(std::time::Duration),
    /// The body is over `max_body_bytes`.
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    /// The Test Engine endpoint is off.
    #[error("not found")]
    NotFound,
    /// The event could not be stored; Buildkite should send it again.
    #[error("storage unavailable, event not accepted: {0}")]
    Unavailable(crate::store::StoreError),
}

impl IngressError {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::Forbidden(_) => StatusCode::FORBIDDEN,
            IngressError::Unauthorized(_) | IngressError::BadKey => StatusCode::UNAUTHORIZED,
            IngressError::BadEvent(_) | IngressError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IngressError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            IngressError::NotFound => StatusCode::NOT_FOUND,
            IngressError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IngressError {
    /// The verdict label this refusal is counted under in the metrics.
    pub fn verdict(&self) -> &'static str {
        match self {
            IngressError::Forbidden(_) => "forbidden",
            IngressError::Unauthorized(_) | IngressError::BadKey => "unauthorised",
            IngressError::BadEvent(_) | IngressError::BadRequest(_) => "malformed",
            IngressError::TooLarge(_) => "too_large",
            IngressError::SlowBody(_) => "timeout",
            IngressError::NotFound => "not_found",
            IngressError::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}
