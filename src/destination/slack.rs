//! `kind = "slack"`: a Slack incoming webhook, one POST of the rendered Block Kit JSON.
//!
//! Slack answers `200 ok`; `429` carries `Retry-After`; errors such as `invalid_payload`,
//! `channel_not_found` or `channel_is_archived` come back as 4xx bodies.

pub mod limits;

use super::http::{IncomingWebhook, judge_2xx};
use super::{BuildEnv, Destination, DestinationConfig, Kind, Limits};
use crate::render::{Body, TemplateKind};
use std::sync::Arc;

/// The kind.
#[derive(Debug)]
pub struct Slack;

impl Kind for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn template_kind(&self) -> TemplateKind {
        TemplateKind::Slack
    }

    fn default_limits(&self) -> Limits {
        LIMITS
    }

    fn fit(&self, body: &mut Body) -> Result<(), String> {
        fit(body)
    }

    fn check_body(&self, body: &Body) -> Result<(), String> {
        check_body(body)
    }

    fn build(&self, config: &DestinationConfig, env: &BuildEnv) -> Option<Arc<dyn Destination>> {
        Some(Arc::new(IncomingWebhook {
            name: config.name.clone(),
            kind: config.kind,
            url: config.url.clone()?,
            timeout: config.timeout,
            client: env.client.clone(),
            judge: judge_2xx,
        }))
    }
}

/// About one message per second, as Slack asks of a webhook (and of a channel, for the Web API).
pub const LIMITS: Limits = Limits {
    rate: Some(1.0),
    burst: 3,
    concurrency: 1,
};

/// Brings a Slack body (an incoming webhook's or a `chat.postMessage`'s) within Slack's limits.
pub fn fit(body: &mut Body) -> Result<(), String> {
    if let Body::Json(value) = body {
        limits::enforce(value);
    }
    Ok(())
}

/// A Slack body needs something to show.
pub fn check_body(body: &Body) -> Result<(), String> {
    let Body::Json(v) = body else {
        return Err("a Slack body must be JSON".into());
    };
    if ["text", "blocks", "attachments"]
        .iter()
        .any(|k| v.get(*k).is_some())
    {
        Ok(())
    } else {
        Err("a Slack body needs text, blocks or attachments".into())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::super::http::answer;
    use super::*;
    use std::time::Duration;

    use judge_2xx as judge;

    #[test]
    fn classifies_slack_answers() {
        assert_eq!(
            judge(&answer(200, "ok", None)),
            Outcome::Sent { status: Some(200) }
        );
        assert!(matches!(
            judge(&answer(429, "rate_limited", Some(3))),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        for status in [408, 500, 502, 503] {
            assert_eq!(
                judge(&answer(status, "", None)).label(),
                "retry",
                "{status}"
            );
        }
        for (status, body) in [
            (400, "invalid_payload"),
            (403, "action_prohibited"),
            (404, "channel_not_found"),
            (410, "channel_is_archived"),
        ] {
            let outcome = judge(&answer(status, body, None));
            assert!(
                matches!(&outcome, Outcome::Permanent { reason, .. } if reason.contains(body)),
                "{outcome:?}"
            );
        }
    }
}
