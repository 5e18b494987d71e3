//! Microsoft Teams: Workflows (Power Automate) webhooks answer `202 Accepted`; legacy Office 365
//! connectors (`*.webhook.office.com`) answer `200` with body `1`, and report throttling and
//! other errors inside a `200` body.

use super::http::{Answer, classify_common, post_json};
use super::{Context, Destination, DestinationKind, Outcome, SendFuture};
use crate::render::Body;
use crate::secret::Secret;
use std::time::Duration;

/// A Teams webhook.
#[derive(Debug)]
pub struct Teams {
    name: String,
    url: Secret,
    legacy: bool,
    timeout: Duration,
    client: reqwest::Client,
}

impl Teams {
    /// A Teams destination posting to `url`.
    pub fn new(name: String, url: Secret, timeout: Duration, client: reqwest::Client) -> Self {
        Self {
            legacy: is_legacy_connector(url.expose()),
            name,
            url,
            timeout,
            client,
        }
    }
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

/// Judges a Teams answer; `legacy` for Office 365 connectors.
pub fn classify(answer: &Answer, legacy: bool) -> Outcome {
    if let Some(outcome) = classify_common(answer) {
        return outcome;
    }
    let status = Some(answer.status);
    if !legacy {
        return Outcome::Sent { status };
    }
    let body = answer.body.as_str();
    if body == "1" || body.is_empty() {
        return Outcome::Sent { status };
    }
    // Legacy connectors wrap the real answer: "Microsoft Teams endpoint returned HTTP error 429
    // with ContextId …". Judge that status as if it had come as one.
    match embedded_status(body) {
        Some(inner) if inner != answer.status => classify(
            &Answer {
                status: inner,
                retry_after: answer.retry_after,
                body: body.to_string(),
            },
            false,
        ),
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

impl Destination for Teams {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> DestinationKind {
        DestinationKind::Teams
    }

    fn send<'a>(&'a self, body: &'a Body, _: &'a Context) -> SendFuture<'a> {
        Box::pin(async move {
            match post_json(&self.client, &self.url, None, body.to_bytes(), self.timeout).await {
                Ok(answer) => classify(&answer, self.legacy),
                Err(outcome) => outcome,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            retry_after: None,
            body: body.into(),
        }
    }

    #[test]
    fn workflows_accept_with_202_and_retry_throttling() {
        assert_eq!(
            classify(&answer(202, ""), false),
            Outcome::Sent { status: Some(202) }
        );
        assert_eq!(classify(&answer(429, ""), false).label(), "retry");
        assert_eq!(classify(&answer(502, ""), false).label(), "retry");
        assert_eq!(
            classify(&answer(400, "bad card"), false).label(),
            "permanent"
        );
        assert_eq!(classify(&answer(404, ""), false).label(), "permanent");
    }

    #[test]
    fn legacy_connectors_report_inside_200_bodies() {
        assert_eq!(
            classify(&answer(200, "1"), true),
            Outcome::Sent { status: Some(200) }
        );
        let throttled = classify(
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
            classify(&answer(200, "Summary or Text is required."), true).label(),
            "permanent"
        );
    }

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
}
