//! Validation of `[actions]` (buttons that act) and of the routes that show buttons.

use super::check::Check;
use super::raw::{RawActions, RawConfig, RawPolicy, Text};
use crate::actions::policy::{Globs, Policy};
use crate::actions::{Action, ActionsConfig, BuildkiteSettings, OidcSettings, SlackSettings};
use crate::destination::DestinationConfig;
use crate::render::TemplateKind;
use crate::routing::Route;
use crate::secret::Secret;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// The shortest signing key: 32 bytes, as long as the HMAC-SHA256 it keys.
const MIN_KEY_BYTES: usize = 32;
/// The longest a button may act: a month-old alert is history, not a call to act.
const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Paths the service answers itself, which the interactions path must not take.
const TAKEN: [&str; 5] = ["/healthz", "/readyz", "/metrics", "/-/", "/actions/"];

impl Check<'_> {
    /// `[actions]`; `None` when absent or switched off by an empty `signing_key`.
    /// `webhook_path` is the Buildkite webhook's path (`[server] path`), which the interactions
    /// path must not take.
    pub(super) fn actions(
        &mut self,
        raw: &RawConfig,
        webhook_path: &str,
    ) -> Option<Arc<ActionsConfig>> {
        let spanned = raw.actions.as_ref()?;
        let (span, a) = (spanned.span(), spanned.get_ref());
        let key = self.text(&a.signing_key, "actions.signing_key")?;
        if key.trim().is_empty() {
            self.warning(
                a.signing_key.span(),
                "actions.signing_key is empty: buttons are off",
            );
            return None;
        }
        let problems = self.problems.len();
        let mut keys = vec![self.key(&a.signing_key, key)];
        for t in &a.previous_signing_keys {
            if let Some(k) = self.text(t, "actions.previous_signing_keys")
                && !k.trim().is_empty()
            {
                keys.push(self.key(t, k));
            }
        }
        let ttl = self.duration(a.ttl.as_ref(), "actions.ttl", Duration::from_secs(86_400));
        if ttl > MAX_TTL {
            self.problem(
                a.ttl.as_ref().map(|t| t.span()),
                "actions.ttl: at most 30 days",
            );
        }
        let public_url = self
            .optional(a.public_url.as_ref(), "actions.public_url")
            .and_then(|u| self.web_url(a.public_url.as_ref(), "actions.public_url", u, true));
        let buildkite = self.actions_buildkite(a, span.clone());
        let slack = self.actions_slack(a, webhook_path);
        let oidc = self.actions_oidc(a);
        if oidc.is_some() && public_url.is_none() {
            self.problem(
                a.oidc.as_ref().map(|o| o.span()),
                "actions.oidc needs actions.public_url: the sign-in provider sends people back to {public_url}/actions/callback",
            );
        }
        let policies: Vec<Policy> = a
            .policies
            .iter()
            .filter_map(|p| self.policy_entry(p.get_ref(), p.span()))
            .collect();
        if a.policies.is_empty() {
            self.warning(
                span.clone(),
                "[actions] has no [[actions.policies]]: every press will be refused",
            );
        }
        // Every entry that could not be read (a key, a policy…) left a problem.
        let complete = self.problems.len() == problems;
        let config = ActionsConfig {
            keys,
            ttl,
            public_url,
            buildkite: buildkite?,
            slack,
            oidc,
            policies,
        };
        complete.then(|| Arc::new(config))
    }

    fn key(&mut self, t: &Text, key: String) -> Secret {
        if key.len() < MIN_KEY_BYTES {
            self.problem(
                Some(t.span()),
                format!("actions signing key: at least {MIN_KEY_BYTES} bytes (for example `openssl rand -base64 32`)"),
            );
        }
        Secret::new(key)
    }

    /// `value` as an http(s) URL without a trailing slash; plain http only for loopback hosts
    /// where `https_only`.
    fn web_url(
        &mut self,
        t: Option<&Text>,
        what: &str,
        value: String,
        https_only: bool,
    ) -> Option<String> {
        let span = t.map(|t| t.span());
        match reqwest::Url::parse(value.trim()) {
            Ok(u)
                if u.scheme() == "https"
                    || (u.scheme() == "http" && (!https_only || is_loopback(&u))) =>
            {
                Some(value.trim().trim_end_matches('/').to_string())
            }
            Ok(_) if https_only => {
                self.problem(span, format!("{what}: must be an https:// URL"));
                None
            }
            _ => {
                self.problem(span, format!("{what}: not an http(s) URL"));
                None
            }
        }
    }

    fn actions_buildkite(
        &mut self,
        a: &RawActions,
        span: Range<usize>,
    ) -> Option<BuildkiteSettings> {
        let Some(b) = &a.buildkite else {
            self.problem(
                Some(span),
                "[actions] needs [actions.buildkite] with org and token: buttons act through Buildkite's REST API",
            );
            return None;
        };
        let b = b.get_ref();
        let org = self.text(&b.org, "actions.buildkite.org")?;
        if org.trim().is_empty() {
            self.problem(Some(b.org.span()), "actions.buildkite.org is empty");
        }
        let token = self.text(&b.token, "actions.buildkite.token")?;
        crate::secret::remember(&token);
        if token.trim().is_empty() {
            self.problem(Some(b.token.span()), "actions.buildkite.token is empty");
        }
        let api_url = match &b.api_url {
            None => "https://api.buildkite.com/v2".to_string(),
            Some(t) => {
                let v = self.text(t, "actions.buildkite.api_url")?;
                self.web_url(Some(t), "actions.buildkite.api_url", v, true)?
            }
        };
        let mut unblock_fields = serde_json::Map::new();
        for (k, v) in b.unblock_fields.iter().flatten() {
            let value = self.text(v, "actions.buildkite.unblock_fields")?;
            unblock_fields.insert(k.get_ref().clone(), value.into());
        }
        Some(BuildkiteSettings {
            org: org.trim().to_string(),
            token: Secret::new(token.trim()),
            api_url,
            unblock_fields,
        })
    }

    fn actions_slack(&mut self, a: &RawActions, webhook_path: &str) -> Option<SlackSettings> {
        let s = a.slack.as_ref()?.get_ref();
        let secret = self.text(&s.signing_secret, "actions.slack.signing_secret")?;
        let token = self.text(&s.token, "actions.slack.token")?;
        for (t, v) in [(&s.signing_secret, &secret), (&s.token, &token)] {
            if v.trim().is_empty() {
                self.problem(
                    Some(t.span()),
                    "actions.slack: signing_secret and token are both required",
                );
            }
        }
        let path = match &s.path {
            None => "/slack/interactions".to_string(),
            Some(t) => self.text(t, "actions.slack.path")?,
        };
        let clash = TAKEN
            .iter()
            .any(|p| path.starts_with(p) || path == p.trim_end_matches('/'))
            || webhook_path == path
            || path.starts_with("/webhooks/test-engine/");
        if !path.starts_with('/') || path.contains(['{', '}', '*', '?', '#']) || clash {
            self.problem(
                s.path.as_ref().map(|t| t.span()),
                format!("actions.slack.path: {path:?} must be a plain path starting with / that the service does not answer already"),
            );
        }
        let api_url = match &s.api_url {
            None => "https://slack.com/api".to_string(),
            Some(t) => {
                let v = self.text(t, "actions.slack.api_url")?;
                self.web_url(Some(t), "actions.slack.api_url", v, true)?
            }
        };
        Some(SlackSettings {
            signing_secret: Secret::new(secret),
            path,
            api_url,
            token: Secret::new(token),
        })
    }

    fn actions_oidc(&mut self, a: &RawActions) -> Option<OidcSettings> {
        let o = a.oidc.as_ref()?.get_ref();
        let issuer = self.text(&o.issuer, "actions.oidc.issuer")?;
        let issuer = self.web_url(Some(&o.issuer), "actions.oidc.issuer", issuer, true)?;
        let client_id = self.text(&o.client_id, "actions.oidc.client_id")?;
        let client_secret = self.text(&o.client_secret, "actions.oidc.client_secret")?;
        if client_id.trim().is_empty() || client_secret.trim().is_empty() {
            self.problem(
                Some(o.client_id.span()),
                "actions.oidc: client_id and client_secret are both required",
            );
        }
        Some(OidcSettings {
            issuer,
            client_id,
            client_secret: Secret::new(client_secret),
        })
    }

    fn policy_entry(&mut self, p: &RawPolicy, span: Range<usize>) -> Option<Policy> {
        let at = format!("{}:{}", self.file, self.line(&span));
        let what = |field: &str| format!("policy at {at} {field}");
        let globs = |this: &mut Self, field: &str, list: &[Text]| {
            let values = this.texts(list, &what(field));
            Globs::new(&values)
                .map_err(|e| {
                    this.problem(
                        list.first().map(|t| t.span()),
                        format!("{}: {e}", what(field)),
                    )
                })
                .ok()
        };
        let pipelines = globs(self, "pipelines", &p.pipelines);
        let branches = globs(self, "branches", &p.branches);
        let mut allow = Vec::new();
        for t in &p.allow {
            match Action::parse(t.get_ref()) {
                Some(a) => allow.push(a),
                None => self.problem(
                    Some(t.span()),
                    format!(
                        "{}: unknown action {:?} (known: retry_failed, rebuild, unblock, cancel)",
                        what("allow"),
                        t.get_ref()
                    ),
                ),
            }
        }
        if p.allow.is_empty() {
            self.problem(
                Some(span.clone()),
                format!("{}: allow names no action", what("allow")),
            );
        }
        let lower = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect()
        };
        let policy = Policy {
            pipelines: pipelines?,
            branches: branches?,
            allow,
            slack_users: self.texts(&p.slack_users, &what("slack_users")),
            slack_usergroups: self.texts(&p.slack_usergroups, &what("slack_usergroups")),
            emails: lower(self.texts(&p.emails, &what("emails"))),
            email_domains: lower(self.texts(&p.email_domains, &what("email_domains")))
                .into_iter()
                .map(|d| d.trim_start_matches('@').to_string())
                .collect(),
            at,
        };
        if !policy.admits_anyone() {
            self.warning(
                span,
                "this policy names no slack_users, slack_usergroups, emails or email_domains: it admits nobody",
            );
        }
        (policy.allow.len() == p.allow.len()).then_some(policy)
    }

    /// Routes with buttons need `[actions]`, and what their destinations need to answer a
    /// press: `[actions.slack]` for Slack, `public_url` and `[actions.oidc]` for Teams.
    pub(super) fn route_buttons(
        &mut self,
        raw: &RawConfig,
        routes: &[Route],
        destinations: &[DestinationConfig],
        actions: Option<&ActionsConfig>,
    ) {
        let disabled = raw.actions.is_some() && actions.is_none();
        for (route, r) in routes
            .iter()
            .filter(|r| !r.buttons.is_empty())
            .filter_map(|route| {
                raw.routes
                    .iter()
                    .find(|r| {
                        r.get_ref()
                            .name
                            .as_ref()
                            .is_some_and(|n| n.get_ref() == &route.name)
                    })
                    .map(|r| (route, r))
            })
        {
            let span = r
                .get_ref()
                .buttons
                .first()
                .map(|t| t.span())
                .unwrap_or(r.span());
            let Some(actions) = actions else {
                if disabled {
                    self.warning(span, format!("route {:?} buttons: [actions] is off (no signing_key), so no buttons are shown", route.name));
                } else {
                    self.problem(Some(span), format!("route {:?} buttons: needs an [actions] section (signing_key, [actions.buildkite], policies)", route.name));
                }
                continue;
            };
            for d in destinations.iter().filter(|d| route.to.contains(&d.name)) {
                let missing = match d.kind.template_kind() {
                    TemplateKind::Slack if actions.slack.is_none() => {
                        Some("[actions.slack] (signing_secret, token)")
                    }
                    TemplateKind::Teams
                        if actions.public_url.is_none() || actions.oidc.is_none() =>
                    {
                        Some(
                            "actions.public_url and [actions.oidc] (Teams buttons are links to a sign-in page)",
                        )
                    }
                    _ => None,
                };
                if let Some(missing) = missing {
                    self.problem(
                        Some(span.clone()),
                        format!(
                            "route {:?} buttons: destination {:?} ({}) needs {missing}",
                            route.name,
                            d.name,
                            d.kind.as_str()
                        ),
                    );
                }
            }
        }
    }
}

fn is_loopback(u: &reqwest::Url) -> bool {
    let host = u.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
