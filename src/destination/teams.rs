//! `kind = "teams"`: a Microsoft Teams Workflows (Power Automate) webhook, or a retiring
//! Office 365 connector, posted an Adaptive Card.
//!
//! Workflows answer `202 Accepted` like any webhook; `429` carries `Retry-After`; a rejected
//! card comes back as a 4xx. The legacy connectors (`*.webhook.office.com`) answer `200` with
//! body `1`, and report throttling and other errors inside a `200` body.

use super::http::{Answer, IncomingWebhook, classify_common, judge_2xx};
use super::{BuildEnv, Destination, DestinationConfig, Kind, Limits, Outcome};
use crate::render::{Body, TemplateKind, truncate};
use serde_json::Value;
use std::sync::Arc;
use thiserror::Error;

/// The kind.
#[derive(Debug)]
pub struct Teams;

impl Kind for Teams {
    fn name(&self) -> &'static str {
        "teams"
    }

    fn template_kind(&self) -> TemplateKind {
        TemplateKind::Teams
    }

    /// Workflows take about four messages a second per webhook.
    fn default_limits(&self) -> Limits {
        Limits {
            rate: Some(4.0),
            burst: 4,
            concurrency: 2,
        }
    }

    fn fit(&self, body: &mut Body) -> Result<(), String> {
        match body {
            Body::Json(value) => enforce(value).map_err(|e| e.to_string()),
            Body::Text(_) => Ok(()),
        }
    }

    fn check_body(&self, body: &Body) -> Result<(), String> {
        let envelope = "a Teams body must be {\"type\":\"message\",\"attachments\":[{\"contentType\":\"application/vnd.microsoft.card.adaptive\",\"content\":{\"type\":\"AdaptiveCard\",\"body\":[…]}}]}";
        let Body::Json(v) = body else {
            return Err(envelope.into());
        };
        let card = &v["attachments"][0];
        let ok = v["type"] == "message"
            && card["contentType"] == "application/vnd.microsoft.card.adaptive"
            && card["content"]["type"] == "AdaptiveCard"
            && card["content"]["body"].is_array();
        if ok { Ok(()) } else { Err(envelope.into()) }
    }

    fn build(&self, config: &DestinationConfig, env: &BuildEnv) -> Option<Arc<dyn Destination>> {
        let url = config.url.clone()?;
        let legacy = is_legacy_connector(url.expose());
        Some(Arc::new(IncomingWebhook {
            name: config.name.clone(),
            kind: config.kind,
            url,
            timeout: config.timeout,
            client: env.client.clone(),
            judge: if legacy { judge_legacy } else { judge_2xx },
        }))
    }
}

/// Judges a legacy Office 365 connector's answer, which may report an error inside a 2xx.
pub fn judge_legacy(answer: &Answer) -> Outcome {
    classify_common(answer).unwrap_or_else(|| judge_legacy_200(answer))
}

/// True for the retiring Office 365 connector URLs, whose answers differ.
pub fn is_legacy_connector(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .is_some_and(|h| {
            h.ends_with(".webhook.office.com")
                || h == "outlook.office.com"
                || h == "outlook.office365.com"
        })
}

/// Judges a legacy connector's 2xx answer by its body.
pub fn judge_legacy_200(answer: &Answer) -> Outcome {
    let status = Some(answer.status);
    let body = answer.body.as_str();
    if body == "1" || body.is_empty() {
        return Outcome::Sent { status };
    }
    // Legacy connectors wrap the real answer: "Microsoft Teams endpoint returned HTTP error 429
    // with ContextId …". Judge that status as if it had come as one.
    match embedded_status(body) {
        Some(inner) if inner != answer.status => judge_2xx(&Answer {
            status: inner,
            retry_after: answer.retry_after,
            body: body.to_string(),
        }),
        _ => Outcome::Permanent {
            status,
            reason: format!("HTTP {}: {body}", answer.status),
        },
    }
}

/// The status in a legacy connector's "… HTTP error NNN …" body.
fn embedded_status(body: &str) -> Option<u16> {
    let lower = body.to_ascii_lowercase();
    let rest = &lower[lower.find("http error")? + "http error".len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|s| (100..600).contains(s))
}

/// Bytes in the whole posted body (Teams refuses bodies over about 28 KB).
pub const MAX_BYTES: usize = 28_000;
/// A body that cannot be brought within limits.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("body is {size} bytes, over the {limit}-byte limit, and has no long text left to shorten")]
pub struct TooLarge {
    /// Bytes after shortening what could be shortened.
    pub size: usize,
    /// The limit.
    pub limit: usize,
}

/// Brings a Teams body under [`MAX_BYTES`] by shortening its longest texts, repeatedly.
pub fn enforce(body: &mut Value) -> Result<(), TooLarge> {
    loop {
        let size = serde_json::to_vec(body).map_or(usize::MAX, |v| v.len());
        if size <= MAX_BYTES {
            return Ok(());
        }
        let Some(longest) = longest_text(body) else {
            return Err(TooLarge {
                size,
                limit: MAX_BYTES,
            });
        };
        let Value::String(s) = longest else {
            unreachable!("longest_text only returns strings")
        };
        let chars = s.chars().count();
        if chars <= 40 {
            return Err(TooLarge {
                size,
                limit: MAX_BYTES,
            });
        }
        // Cut by the excess (bytes ≥ chars, so this is enough or close), at least by half of
        // what is left over 40 so the loop ends quickly.
        let excess = size - MAX_BYTES;
        let target = chars.saturating_sub(excess.max((chars - 40) / 2)).max(40);
        *s = truncate(s, target);
    }
}

/// The longest string under a `text`, `value` or `title` key anywhere in `v`.
fn longest_text(v: &mut Value) -> Option<&mut Value> {
    fn walk<'a>(v: &'a mut Value, best: &mut Option<(usize, &'a mut Value)>) {
        match v {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if let Value::String(s) = child {
                        if matches!(key.as_str(), "text" | "value" | "title")
                            && best.as_ref().is_none_or(|(len, _)| s.len() > *len)
                        {
                            *best = Some((s.len(), child));
                        }
                    } else {
                        walk(child, best);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|c| walk(c, best)),
            _ => {}
        }
    }
    let mut best = None;
    walk(v, &mut best);
    best.map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::super::http::answer as answer_with;
    use super::*;

    fn judge(answer: &Answer, legacy: bool) -> Outcome {
        if legacy {
            judge_legacy(answer)
        } else {
            judge_2xx(answer)
        }
    }
    use serde_json::json;

    #[test]
    fn recognises_legacy_connector_urls() {
        assert!(is_legacy_connector(
            "https://acme.webhook.office.com/webhookb2/x@y/IncomingWebhook/z/w"
        ));
        assert!(is_legacy_connector("https://outlook.office.com/webhook/x"));
        assert!(!is_legacy_connector(
            "https://prod-12.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=s"
        ));
        assert!(!is_legacy_connector(
            "https://x.webhook.office.com.evil.example/"
        ));
    }

    #[test]
    fn workflows_accept_with_202_and_retry_throttling() {
        let answer = |status, body| answer_with(status, body, None);
        assert_eq!(
            judge(&answer(202, ""), false),
            Outcome::Sent { status: Some(202) }
        );
        assert_eq!(judge(&answer(429, ""), false).label(), "retry");
        assert_eq!(judge(&answer(502, ""), false).label(), "retry");
        assert_eq!(judge(&answer(400, "bad card"), false).label(), "permanent");
        assert_eq!(judge(&answer(404, ""), false).label(), "permanent");
    }

    #[test]
    fn legacy_connectors_report_inside_200_bodies() {
        let answer = |status, body| answer_with(status, body, None);
        assert_eq!(
            judge(&answer(200, "1"), true),
            Outcome::Sent { status: Some(200) }
        );
        let throttled = judge(
            &answer(
                200,
                "Microsoft Teams endpoint returned HTTP error 429 with ContextId …",
            ),
            true,
        );
        assert!(
            matches!(
                throttled,
                Outcome::Retry {
                    status: Some(429),
                    ..
                }
            ),
            "{throttled:?}"
        );
        assert_eq!(
            judge(&answer(200, "Summary or Text is required."), true).label(),
            "permanent"
        );
    }

    #[test]
    fn teams_bodies_shrink_under_the_byte_limit_keeping_urls() {
        let mut body = json!({"type": "message", "attachments": [{"content": {
            "body": [{"type": "TextBlock", "text": "\"é".repeat(40_000)},
                     {"type": "FactSet", "facts": [{"title": "t", "value": "v".repeat(30_000)}]}],
            "actions": [{"type": "Action.OpenUrl", "title": "View", "url": "https://buildkite.com/x"}]}}]});
        enforce(&mut body).unwrap();
        assert!(serde_json::to_vec(&body).unwrap().len() <= MAX_BYTES);
        assert_eq!(
            body["attachments"][0]["content"]["actions"][0]["url"],
            "https://buildkite.com/x"
        );
    }

    #[test]
    fn teams_body_made_of_many_short_texts_is_reported() {
        let facts: Vec<_> = (0..2_000)
            .map(|_| json!({"title": "t", "value": "v".repeat(20)}))
            .collect();
        let mut body = json!({"facts": facts});
        assert!(enforce(&mut body).is_err());
    }
}
