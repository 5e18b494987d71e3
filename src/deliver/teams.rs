//! Microsoft Teams specifics: Workflows (Power Automate) webhooks answer `202 Accepted` like any
//! webhook; the retiring Office 365 connectors (`*.webhook.office.com`) answer `200` with body
//! `1`, and report throttling and other errors inside a `200` body.

use super::Outcome;
use super::http::Answer;

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
        Some(inner) if inner != answer.status => super::webhook::judge(
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

#[cfg(test)]
mod tests {
    use super::*;

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
