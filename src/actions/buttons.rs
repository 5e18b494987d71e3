//! Which buttons a message shows: the actions its route opted into (`buttons = […]`) that fit
//! the event (retry on a failed job or build, rebuild on a failed or canceled build, unblock
//! on a blocked build, cancel on a running one), each with its signed token. Templates see
//! them as `kb.actions`.

use super::action::Action;
use super::settings::ActionsConfig;
use super::token::{self, Grant};
use crate::event::Event;
use crate::render::TemplateKind;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// One button, as templates see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Button {
    /// `retry_failed`, `rebuild`, `unblock` or `cancel`.
    pub action: &'static str,
    /// Slack's `action_id`: `kb:` and the action.
    pub action_id: String,
    /// The label.
    pub label: &'static str,
    /// Slack's button style, when it has one.
    pub style: Option<&'static str>,
    /// The signed token (Slack's button `value`).
    pub value: String,
    /// The confirm page's link (Teams), when `[actions] public_url` is set.
    pub url: Option<String>,
}

/// What buttons each route shows, and how they are signed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buttons {
    config: Option<Arc<ActionsConfig>>,
    routes: HashMap<String, Vec<Action>>,
}

impl Buttons {
    /// Buttons for the routes in `routes` (name → actions), signed by `config`.
    pub fn new(config: Option<Arc<ActionsConfig>>, routes: HashMap<String, Vec<Action>>) -> Self {
        Self { config, routes }
    }

    /// The buttons a message of `route` to `destination` (whose templates are of `kind`)
    /// shows for `event`. Teams cards cannot call back, so theirs carry a confirm page's link.
    pub fn for_event(
        &self,
        event: &Event,
        route: &str,
        destination: &str,
        kind: TemplateKind,
    ) -> Vec<Button> {
        // A webhook's receiver is a program, not a person: nothing there can press a button,
        // and its tokens would only be noise in a payload others parse.
        if kind == TemplateKind::Webhook {
            return Vec::new();
        }
        let links = kind == TemplateKind::Teams;
        let (Some(config), Some(wanted)) = (&self.config, self.routes.get(route)) else {
            return Vec::new();
        };
        let Some(target) = Target::of(event, &config.buildkite.org) else {
            return Vec::new();
        };
        let expires = event.received_at().timestamp() + config.ttl.as_secs() as i64;
        Action::ALL
            .into_iter()
            .filter(|a| wanted.contains(a) && fits(*a, event))
            .map(|action| {
                let job = (action == Action::RetryFailed && event.family() == "job")
                    .then(|| target.job.clone())
                    .flatten();
                let one_job = job.is_some();
                let grant = Grant {
                    action,
                    org: config.buildkite.org.clone(),
                    pipeline: target.pipeline.clone(),
                    build: target.build,
                    job,
                    branch: target.branch.clone(),
                    route: route.to_string(),
                    destination: destination.to_string(),
                    expires,
                    nonce: token::nonce(event.id(), action),
                };
                let value = token::sign(&grant, config.signing_key());
                Button {
                    action: action.as_str(),
                    action_id: format!("kb:{action}"),
                    // On a job's message the retry is of that job.
                    label: match (action, one_job) {
                        (Action::RetryFailed, true) => "Retry job",
                        _ => action.label(),
                    },
                    style: action.style(),
                    url: links.then(|| config.link(&value)).flatten(),
                    value,
                }
            })
            .collect()
    }
}

/// The build (and job) an event is about, in the configured organization.
struct Target {
    pipeline: String,
    build: u64,
    branch: String,
    job: Option<String>,
}

impl Target {
    fn of(event: &Event, org: &str) -> Option<Self> {
        if !matches!(event.family(), "build" | "job") {
            return None;
        }
        if !org_of(event).is_some_and(|o| o.eq_ignore_ascii_case(org)) {
            return None;
        }
        Some(Self {
            pipeline: event.pipeline_slug()?.to_string(),
            build: event.build_number()?,
            branch: event.branch().unwrap_or_default().to_string(),
            job: event
                .lookup("job.id")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

/// The organization slug, from the pipeline's API URL or else the build's page.
fn org_of(event: &Event) -> Option<&str> {
    let api = event
        .lookup("pipeline.url")
        .and_then(Value::as_str)
        .and_then(|u| u.split("/organizations/").nth(1))
        .and_then(|rest| rest.split('/').next());
    let web = || {
        event
            .lookup("build.web_url")
            .and_then(Value::as_str)
            .and_then(|u| u.split("://").nth(1))
            .and_then(|rest| rest.split('/').nth(1))
    };
    api.or_else(web).filter(|o| !o.is_empty())
}

/// Whether `action` makes sense on what `event` says.
fn fits(action: Action, event: &Event) -> bool {
    let build_state = event.lookup("build.state").and_then(Value::as_str);
    match (action, event.family()) {
        (Action::RetryFailed, "build") => {
            event.name() == "build.finished" && build_state == Some("failed")
        }
        (Action::RetryFailed, "job") => {
            let soft = event.lookup("job.soft_failed") == Some(&Value::Bool(true));
            event.name() == "job.finished"
                && !soft
                && matches!(event.state(), Some("failed" | "timed_out" | "broken"))
                && event.lookup("job.id").is_some()
        }
        (Action::Rebuild, "build") => {
            event.name() == "build.finished" && matches!(build_state, Some("failed" | "canceled"))
        }
        (Action::Unblock, "build") => event.is_blocked_build(),
        (Action::Cancel, "build" | "job") => {
            !event.is_blocked_build()
                && matches!(build_state, Some("scheduled" | "running" | "failing"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::settings::BuildkiteSettings;
    use crate::secret::Secret;
    use chrono::Utc;
    use std::time::Duration;

    fn fixture(name: &str) -> Event {
        let path = format!(
            "{}/tests/fixtures/buildkite/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let body: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let event = body["event"].as_str().unwrap().to_string();
        Event::from_value(&event, body, Utc::now())
    }

    fn buttons(org: &str) -> Buttons {
        let config = ActionsConfig {
            keys: vec![Secret::new("test-signing-key-test-signing-key")],
            ttl: Duration::from_secs(3600),
            public_url: Some("https://alerts.example/".into()),
            buildkite: BuildkiteSettings {
                org: org.into(),
                token: Secret::new("bk-token"),
                api_url: "http://127.0.0.1:1/v2".into(),
                unblock_fields: Default::default(),
            },
            slack: None,
            oidc: None,
            policies: Vec::new(),
        };
        let routes = HashMap::from([("r".to_string(), Action::ALL.to_vec())]);
        Buttons::new(Some(Arc::new(config)), routes)
    }

    fn shown(event: &str) -> Vec<&'static str> {
        buttons("acme")
            .for_event(&fixture(event), "r", "d", TemplateKind::Teams)
            .into_iter()
            .map(|b| b.action)
            .collect()
    }

    #[test]
    fn each_event_shows_the_buttons_that_fit_it() {
        assert_eq!(shown("build.finished.json"), ["retry_failed", "rebuild"]);
        assert_eq!(shown("build.finished.canceled.json"), ["rebuild"]);
        assert!(shown("build.finished.passed.json").is_empty());
        assert_eq!(shown("job.finished.json"), ["retry_failed", "cancel"]);
        assert_eq!(shown("build.running.json"), ["cancel"]);
        assert_eq!(shown("build.failing.json"), ["cancel"]);
        assert!(shown("agent.lost.json").is_empty());
        assert!(shown("ping.json").is_empty());
    }

    #[test]
    fn a_blocked_build_shows_unblock() {
        let b = buttons("fluid-project").for_event(
            &fixture("build.finished.blocked.json"),
            "r",
            "d",
            TemplateKind::Teams,
        );
        assert_eq!(b.iter().map(|b| b.action).collect::<Vec<_>>(), ["unblock"]);
    }

    #[test]
    fn builds_of_another_organization_show_none() {
        assert!(
            buttons("other")
                .for_event(
                    &fixture("build.finished.json"),
                    "r",
                    "d",
                    TemplateKind::Teams
                )
                .is_empty()
        );
    }

    #[test]
    fn webhook_bodies_carry_no_buttons() {
        let event = fixture("build.finished.json");
        let b = buttons("acme");
        assert!(
            !b.for_event(&event, "r", "d", TemplateKind::Slack)
                .is_empty()
        );
        assert!(
            b.for_event(&event, "r", "d", TemplateKind::Webhook)
                .is_empty()
        );
    }

    #[test]
    fn routes_without_buttons_show_none() {
        assert!(
            buttons("acme")
                .for_event(
                    &fixture("build.finished.json"),
                    "x",
                    "d",
                    TemplateKind::Teams
                )
                .is_empty()
        );
    }

    #[test]
    fn a_button_carries_a_verifiable_grant_and_a_link() {
        let b = buttons("acme");
        let event = fixture("job.finished.json");
        let retry = &b.for_event(&event, "r", "d", TemplateKind::Teams)[0];
        assert_eq!(retry.action_id, "kb:retry_failed");
        assert_eq!(
            retry.label, "Retry job",
            "on a job's message it retries that job"
        );
        let keys = &[Secret::new("test-signing-key-test-signing-key")];
        let grant = token::verify(&retry.value, keys, Utc::now().timestamp()).unwrap();
        assert_eq!(grant.action, Action::RetryFailed);
        assert_eq!(
            (grant.org.as_str(), grant.pipeline.as_str(), grant.build),
            ("acme", "web-app", 1842)
        );
        assert_eq!(
            grant.job.as_deref(),
            Some("0190e2f4-2222-7000-8000-000000000042")
        );
        assert_eq!(
            (grant.route.as_str(), grant.destination.as_str()),
            ("r", "d")
        );
        let slack = b.for_event(&event, "r", "d", TemplateKind::Slack);
        assert!(
            slack[0].url.is_none(),
            "Slack buttons call back; only Teams gets links"
        );
        assert_eq!(
            retry.url.as_deref(),
            Some(format!("https://alerts.example/actions/{}", retry.value).as_str())
        );
    }
}
