//! Slack incoming webhooks: success is `200 ok`; `429` carries `Retry-After`; errors such as
//! `invalid_payload`, `channel_not_found` or `no_service` come back as 4xx text bodies.

use super::http::{Answer, classify_common, post_json};
use super::{Context, Destination, DestinationKind, Outcome, SendFuture};
use crate::render::Body;
use crate::secret::Secret;
use std::time::Duration;

/// A Slack incoming webhook.
#[derive(Debug)]
pub struct Slack {
    name: String,
    url: Secret,
    timeout: Duration,
    client: reqwest::Client,
}

impl Slack {
    /// A Slack destination posting to `url`.
    pub fn new(name: String, url: Secret, timeout: Duration, client: reqwest::Client) -> Self {
        Self {
            name,
            url,
            timeout,
            client,
        }
    }
}

/// Judges a Slack webhook answer.
pub fn classify(answer: &Answer) -> Outcome {
    classify_common(answer).unwrap_or(Outcome::Sent {
        status: Some(answer.status),
    })
}

impl Destination for Slack {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> DestinationKind {
        DestinationKind::Slack
    }

    fn send<'a>(&'a self, body: &'a Body, _: &'a Context) -> SendFuture<'a> {
        Box::pin(async move {
            match post_json(&self.client, &self.url, None, body.to_bytes(), self.timeout).await {
                Ok(answer) => classify(&answer),
                Err(outcome) => outcome,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str, retry_after: Option<u64>) -> Answer {
        Answer {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            body: body.into(),
        }
    }

    #[test]
    fn classifies_slack_answers() {
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
}
