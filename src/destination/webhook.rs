//! `kind = "webhook"`: the rendered JSON to any HTTP endpoint, signed the Standard Webhooks
//! way (standardwebhooks.com) so the receiver can trust it.
//!
//! Every request carries `webhook-id` (the same on every attempt of one delivery, so the
//! receiver can drop repeats), `webhook-timestamp` (seconds, of this attempt) and, when a
//! signing secret is set, `webhook-signature`: `v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">` with the secret's bytes (the base64 after `whsec_`), one
//! signature per secret during a rotation, space-separated. Any 2xx is sent; `408`, `429`,
//! `5xx`, timeouts and connection errors retry (after `Retry-After` when given); any other
//! answer, a redirect included, is permanent.

use super::http::{judge_2xx, send};
use super::{
    BuildEnv, Common, Context, Destination, DestinationConfig, DestinationKind, Kind, Limits,
    Options, Outcome, Reported, SendFuture, Table,
};
use crate::render::{Body, TemplateKind};
use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The largest body sent unless `max_body_bytes` says otherwise.
pub const DEFAULT_MAX_BODY_BYTES: i64 = 1024 * 1024;

/// Headers kitebridge sets itself; the config may not replace them.
const RESERVED: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// The kind.
#[derive(Debug)]
pub struct WebhookKind;

/// A signing secret's bytes (never printed).
#[derive(Clone, PartialEq, Eq)]
struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

/// What a webhook destination keeps besides its URL.
#[derive(Debug, Clone, PartialEq)]
struct HookOptions {
    method: reqwest::Method,
    /// Every header sent besides the signature's: the configured ones (their values marked
    /// sensitive, so they never print) and `Content-Type`.
    headers: HeaderMap,
    /// The current secret first, then the previous ones; empty: unsigned.
    keys: Vec<SigningKey>,
    max_body_bytes: usize,
}

impl Kind for WebhookKind {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn template_kind(&self) -> TemplateKind {
        TemplateKind::Webhook
    }

    /// Programs, not people, read these: no pace unless the operator sets one.
    fn default_limits(&self) -> Limits {
        Limits {
            rate: None,
            burst: 1,
            concurrency: 4,
        }
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "method",
            "headers",
            "signing_secret",
            "previous_signing_secrets",
            "max_body_bytes",
        ]
    }

    fn configure(&self, table: &mut Table, _: &Common) -> Result<Options, Reported> {
        let method = match table.text("method")? {
            None => reqwest::Method::POST,
            Some((m, _)) if m.eq_ignore_ascii_case("post") => reqwest::Method::POST,
            Some((m, _)) if m.eq_ignore_ascii_case("put") => reqwest::Method::PUT,
            Some((m, span)) => {
                let shown = Table::shown(table.entry("method").expect("read"), &m);
                return Err(table.problem(
                    Some(span),
                    format!("method {shown} is not \"POST\" or \"PUT\""),
                ));
            }
        };
        let headers = headers(table)?;
        let current = table.text("signing_secret")?;
        let previous = table.texts("previous_signing_secrets")?;
        let mut keys = Vec::new();
        let current_set = current.as_ref().is_some_and(|(s, _)| !s.is_empty());
        for (i, secret) in current
            .iter()
            .map(|(s, _)| s.clone())
            .chain(previous.iter().cloned())
            .enumerate()
        {
            if secret.is_empty() {
                continue; // `${OLD_SECRET:-}` left out
            }
            let key = if i == 0 && current_set {
                "signing_secret"
            } else {
                "previous_signing_secrets"
            };
            match decode_secret(&secret) {
                Ok(bytes) => keys.push(SigningKey(bytes)),
                Err(why) => {
                    let span = table.entry(key).map(|e| e.span.clone());
                    return Err(table.problem(span, format!("{key}: {why}")));
                }
            }
        }
        if !current_set && !keys.is_empty() {
            let span = table
                .entry("previous_signing_secrets")
                .map(|e| e.span.clone());
            return Err(table.problem(
                span,
                "previous_signing_secrets are kept during a rotation only: set signing_secret too",
            ));
        }
        let max_body_bytes = table.integer(
            "max_body_bytes",
            1..=64 * 1024 * 1024,
            DEFAULT_MAX_BODY_BYTES,
        )? as usize;
        Ok(Options::new(HookOptions {
            method,
            headers,
            keys,
            max_body_bytes,
        }))
    }

    fn fit(&self, _: &mut Body) -> Result<(), String> {
        // The size limit is each destination's own (`max_body_bytes`), judged when sending.
        Ok(())
    }

    fn check_body(&self, body: &Body) -> Result<(), String> {
        match body {
            Body::Json(_) => Ok(()),
            Body::Text(_) => Err("a webhook body must be JSON".into()),
        }
    }

    fn build(&self, config: &DestinationConfig, env: &BuildEnv) -> Option<Arc<dyn Destination>> {
        let options = config.options.get::<HookOptions>()?;
        Some(Arc::new(Webhook {
            name: config.name.clone(),
            kind: config.kind,
            url: config.url.clone()?,
            method: options.method.clone(),
            headers: options.headers.clone(),
            keys: options.keys.clone(),
            max_body_bytes: options.max_body_bytes,
            timeout: config.timeout,
            client: env.client.clone(),
        }))
    }
}

/// `headers = { Name = "value" }`: valid names, none that kitebridge sets, values that can be
/// sent (never quoted back: they are secrets); with `Content-Type` added.
fn headers(table: &mut Table) -> Result<HeaderMap, Reported> {
    let span = table.entry("headers").map(|e| e.span.clone());
    let mut out = HeaderMap::new();
    for (name, value) in table.text_map("headers")? {
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            return Err(table.problem(span, format!("headers: {name:?} is not a header name")));
        };
        if RESERVED.contains(&header.as_str()) {
            return Err(table.problem(
                span,
                format!("headers: {name} is set by kitebridge and cannot be replaced"),
            ));
        }
        let Ok(mut value) = HeaderValue::from_str(&value) else {
            return Err(table.problem(
                span,
                format!("headers: the value of {name} holds characters a header cannot carry"),
            ));
        };
        value.set_sensitive(true);
        out.append(header, value);
    }
    out.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(out)
}

/// The key bytes of a `whsec_…` secret.
fn decode_secret(secret: &str) -> Result<Vec<u8>, &'static str> {
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err("a signing secret starts with whsec_ followed by base64");
    };
    let bytes = STANDARD
        .decode(encoded.trim())
        .map_err(|_| "the part after whsec_ is not base64")?;
    if !(24..=64).contains(&bytes.len()) {
        return Err("a signing secret holds 24 to 64 bytes (Standard Webhooks)");
    }
    Ok(bytes)
}

/// The `webhook-id` of a delivery: the same on every attempt, and unique across stores (the
/// delivery's creation time is in it, so a store started afresh reuses no id).
pub fn webhook_id(delivery: i64, created_at_ms: i64) -> String {
    format!("msg_kb{created_at_ms}d{delivery}")
}

/// The `webhook-signature` value for `body`: `v1,<base64>` per key, space-separated.
pub fn sign(id: &str, timestamp: i64, body: &[u8], keys: &[&[u8]]) -> String {
    keys.iter()
        .map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A signed webhook.
#[derive(Debug)]
struct Webhook {
    name: String,
    kind: DestinationKind,
    url: Secret,
    method: reqwest::Method,
    headers: HeaderMap,
    keys: Vec<SigningKey>,
    max_body_bytes: usize,
    timeout: Duration,
    client: reqwest::Client,
}

impl Destination for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> DestinationKind {
        self.kind
    }

    fn send<'a>(&'a self, body: &'a Body, context: &'a Context) -> SendFuture<'a> {
        Box::pin(async move {
            let bytes = body.to_bytes();
            if bytes.len() > self.max_body_bytes {
                return Outcome::Permanent {
                    status: None,
                    reason: format!(
                        "the body is {} bytes, over max_body_bytes ({})",
                        bytes.len(),
                        self.max_body_bytes
                    ),
                };
            }
            let id = if context.message_id.is_empty() {
                format!("msg_kbtest{}", fastrand::u64(..))
            } else {
                context.message_id.clone()
            };
            let timestamp = chrono::Utc::now().timestamp();
            let mut request = self
                .client
                .request(self.method.clone(), self.url.expose())
                .headers(self.headers.clone())
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp);
            if !self.keys.is_empty() {
                let keys: Vec<&[u8]> = self.keys.iter().map(|k| k.0.as_slice()).collect();
                request = request.header("webhook-signature", sign(&id, timestamp, &bytes, &keys));
            }
            match send(request, bytes, self.timeout).await {
                Ok(answer) => judge_2xx(&answer),
                Err(outcome) => outcome,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::answer;
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries
    /// (github.com/standard-webhooks/standard-webhooks, libraries' test suites): this id,
    /// timestamp, body and secret sign to this signature.
    #[test]
    fn signs_the_published_example() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
            &[&key],
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn signs_once_per_key_during_a_rotation() {
        let (a, b) = (vec![1u8; 32], vec![2u8; 32]);
        let both = sign("msg_1", 1, b"{}", &[&a, &b]);
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign("msg_1", 1, b"{}", &[&a]));
        assert_eq!(parts[1], sign("msg_1", 1, b"{}", &[&b]));
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_a_sensible_length() {
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_not base64!").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
        assert_eq!(
            decode_secret(&format!("whsec_{}", STANDARD.encode([7u8; 32])))
                .unwrap()
                .len(),
            32
        );
    }

    #[test]
    fn ids_are_stable_per_delivery_and_differ_between_deliveries() {
        assert_eq!(
            webhook_id(7, 1_700_000_000_000),
            webhook_id(7, 1_700_000_000_000)
        );
        assert_ne!(
            webhook_id(7, 1_700_000_000_000),
            webhook_id(8, 1_700_000_000_000)
        );
        assert_ne!(
            webhook_id(7, 1_700_000_000_000),
            webhook_id(7, 1_800_000_000_000)
        );
    }

    #[test]
    fn judges_answers_as_specified() {
        let judge = |status, retry_after| judge_2xx(&answer(status, "", retry_after));
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(judge(status, None).label(), "sent", "{status}");
        }
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(judge(status, None).label(), "retry", "{status}");
        }
        assert!(matches!(
            judge(503, Some(7)),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        for status in [301, 302, 307, 400, 401, 403, 404, 409, 410, 422] {
            assert_eq!(judge(status, None).label(), "permanent", "{status}");
        }
    }
}
