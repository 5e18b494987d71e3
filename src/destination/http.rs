//! The shared HTTP client, the host allow-list, and the parts of answer handling every HTTP
//! destination has in common.

use super::{Context, Destination, DestinationKind, Outcome, SendFuture};
use crate::render::Body;
use crate::secret::Secret;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use std::time::Duration;

/// How much of an error answer is kept as the reason.
const REASON_BYTES: usize = 300;

/// How much of any answer is read (a Slack Web API answer echoes the whole message).
const ANSWER_BYTES: usize = 64 * 1024;

/// The process-wide HTTP client: rustls with the ring provider, pooled connections.
pub fn client() -> reqwest::Client {
    crate::crypto::install_provider();
    reqwest::Client::builder()
        .user_agent(concat!("kitebridge/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        // The host allow-list is checked on the configured URL only; following a redirect
        // would carry the message to a host nobody checked. A 3xx is a permanent failure.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client builds with a crypto provider installed")
}

/// `Retry-After` as seconds or an HTTP date; `None` when absent or unreadable.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
        .or(Some(Duration::ZERO))
}

/// What came back from one POST.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// The body (its first 64 KiB), as text.
    pub body: String,
}

/// POSTs JSON `body` to `url`; a transport failure becomes a retryable [`Outcome`] whose reason
/// never contains the URL.
pub async fn post_json(
    client: &reqwest::Client,
    url: &Secret,
    bearer: Option<&Secret>,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer, Outcome> {
    let mut request = client
        .post(url.expose())
        .header(CONTENT_TYPE, "application/json; charset=utf-8");
    if let Some(token) = bearer {
        request = request.bearer_auth(token.expose());
    }
    send(request, body, timeout).await
}

/// Sends `request` with `body`, reading (the start of) the answer; a transport failure becomes
/// a retryable [`Outcome`] whose reason never contains the URL.
pub async fn send(
    request: reqwest::RequestBuilder,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer, Outcome> {
    let response = request
        .timeout(timeout)
        .body(body)
        .send()
        .await
        .map_err(|e| transport_failure(e, timeout))?;
    let status = response.status().as_u16();
    let retry_after = parse_retry_after(response.headers());
    let bytes = response.bytes().await.unwrap_or_default();
    let end = bytes.len().min(ANSWER_BYTES);
    Ok(Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&bytes[..end]).trim().to_string(),
    })
}

fn transport_failure(e: reqwest::Error, timeout: Duration) -> Outcome {
    if e.is_builder() {
        // The request cannot even be built (a malformed URL): trying again will not help.
        return Outcome::Permanent {
            status: None,
            reason: "the destination URL cannot be used".into(),
        };
    }
    let reason = if e.is_timeout() {
        format!("no answer within {}", humantime::format_duration(timeout))
    } else {
        // reqwest prints the URL, which is a secret: strip it, then add the cause chain (from
        // hyper and the OS, which names no URL) so "connection refused" is visible.
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text.chars().take(REASON_BYTES).collect()
    };
    Outcome::Retry {
        status: None,
        after: None,
        reason,
    }
}

/// Classifies what every HTTP destination has in common: 429, 408 and 5xx retry (with their
/// `Retry-After`), other 4xx and anything unexpected (a redirect included) are permanent. `None` means a 2xx the caller must judge itself.
pub fn classify_common(answer: &Answer) -> Option<Outcome> {
    let status = Some(answer.status);
    let reason = || {
        if answer.body.is_empty() {
            format!("HTTP {}", answer.status)
        } else {
            let body: String = answer.body.chars().take(REASON_BYTES).collect();
            format!("HTTP {}: {body}", answer.status)
        }
    };
    match answer.status {
        200..=299 => None,
        408 | 429 | 500..=599 => Some(Outcome::Retry {
            status,
            after: answer.retry_after,
            reason: reason(),
        }),
        _ => Some(Outcome::Permanent {
            status,
            reason: reason(),
        }),
    }
}

/// Any 2xx is sent; the rest as [`classify_common`] says.
pub fn judge_2xx(answer: &Answer) -> Outcome {
    classify_common(answer).unwrap_or(Outcome::Sent {
        status: Some(answer.status),
    })
}

/// An incoming webhook (Slack's, Teams'): one POST of the rendered JSON to one URL, its answer
/// judged by its kind.
#[derive(Debug)]
pub struct IncomingWebhook {
    /// The destination's name.
    pub name: String,
    /// Its kind.
    pub kind: DestinationKind,
    /// Where to post.
    pub url: Secret,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The shared client.
    pub client: reqwest::Client,
    /// How an answer is judged.
    pub judge: fn(&Answer) -> Outcome,
}

impl Destination for IncomingWebhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> DestinationKind {
        self.kind
    }

    fn send<'a>(&'a self, body: &'a Body, _: &'a Context) -> SendFuture<'a> {
        Box::pin(async move {
            match post_json(&self.client, &self.url, None, body.to_bytes(), self.timeout).await {
                Ok(answer) => (self.judge)(&answer),
                Err(outcome) => outcome,
            }
        })
    }
}

/// Whether `host` is allowed by one of `patterns` (`example.com`, or `*.example.com` for any
/// subdomain): `[delivery] allowed_hosts`, the only hosts messages may be sent to.
pub fn host_allowed(patterns: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    patterns.iter().any(|p| match p.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == *p,
    })
}

/// An answer, for tests of the judging functions.
#[cfg(test)]
pub(super) fn answer(status: u16, body: &str, retry_after: Option<u64>) -> Answer {
    Answer {
        status,
        retry_after: retry_after.map(Duration::from_secs),
        body: body.into(),
    }
}
