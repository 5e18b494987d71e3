//! Incoming webhooks, Slack's and Teams': one POST of the rendered JSON.
//!
//! Slack answers `200 ok`, Teams Workflows `202`; `429` carries `Retry-After`; errors such as
//! `invalid_payload`, `channel_not_found` or a rejected card come back as 4xx bodies. Teams'
//! legacy Office 365 connectors alone report errors inside a `200` body (see [`super::teams`]).

use super::http::{Answer, classify_common, post_json};
use super::{Context, Destination, DestinationKind, Outcome, SendFuture, teams};
use crate::render::Body;
use crate::secret::Secret;
use std::time::Duration;

/// A Slack or Teams incoming webhook.
#[derive(Debug)]
pub struct Webhook {
    name: String,
    kind: DestinationKind,
    url: Secret,
    /// A Teams legacy connector, whose `200` answers must be read.
    legacy: bool,
    timeout: Duration,
    client: reqwest::Client,
}

impl Webhook {
    /// A webhook destination of `kind` (Slack or Teams) posting to `url`.
    pub fn new(
        name: String,
        kind: DestinationKind,
        url: Secret,
        timeout: Duration,
        client: reqwest::Client,
    ) -> Self {
        Self {
            legacy: kind == DestinationKind::Teams && teams::is_legacy_connector(url.expose()),
            name,
            kind,
            url,
            timeout,
            client,
        }
    }
}

/// Judges a webhook's answer; `legacy` for Teams' Office 365 connectors.
pub fn judge(answer: &Answer, legacy: bool) -> Outcome {
    classify_common(answer).unwrap_or_else(|| {
        if legacy {
            teams::judge_legacy_200(answer)
        } else {
            Outcome::Sent {
                status: Some(answer.status),
            }
        }
    })
}

impl Destination for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> DestinationKind {
        self.kind
    }

    fn send<'a>(&'a self, body: &'a Body, _: &'a Context) -> SendFuture<'a> {
        Box::pin(async move {
            match post_json(&self.client, &self.url, None, body.to_bytes(), self.timeout).await {
                Ok(answer) => judge(&answer, self.legacy),
                Err(outcome) => outcome,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::answer;
    use super::*;

    #[test]
    fn classifies_slack_answers() {
        let classify = |a: &Answer| judge(a, false);
        assert_eq!(
            classify(&answer(200, "ok", None)),
            Outcome::Sent { status: Some(200) }
        );
        assert!(matches!(
            classify(&answer(429, "rate_limited", Some(3))),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        for status in [408, 500, 502, 503] {
            assert_eq!(
                classify(&answer(status, "", None)).label(),
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
            let outcome = classify(&answer(status, body, None));
            assert!(
                matches!(&outcome, Outcome::Permanent { reason, .. } if reason.contains(body)),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn workflows_accept_with_202_and_retry_throttling() {
        let answer = |status, body| answer(status, body, None);
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
        let answer = |status, body| answer(status, body, None);
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
}
