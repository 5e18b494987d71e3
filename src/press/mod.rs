//! Answering button presses: Slack's interaction requests ([`slack`]) and the Teams confirm
//! pages with their sign-in ([`teams`]). Both end the same way ([`PressDesk::carry_out`]):
//! the policy decides, the store claims the button's nonce (so it acts once, whichever replica
//! and however many people press it), Buildkite's API is called, and every press (allowed or
//! not) becomes an audit row, a log line and a count in `kitebridge_actions_total`.

mod carry;
pub mod slack;
pub mod teams;

use crate::actions::ActionsConfig;
use crate::actions::buildkite::Buildkite;
use crate::actions::oidc::Oidc;
use crate::actions::policy::{self, Decision, Person};
use crate::actions::slack_api::SlackApi;
use crate::actions::token::{self, Grant, TokenError};
use crate::metrics::Metrics;
use crate::reload::Live;
use crate::render::TemplateKind;
use crate::store::{Press, Store, now_ms};
use arc_swap::ArcSwap;
use axum::routing::{get, post};
use std::sync::{Arc, Mutex};

/// How long a claim outlives its button.
const CLAIM_MARGIN_MS: i64 = 3_600_000;

/// Presses answered at once; more get `503` straight away (each can cost calls to Slack,
/// Buildkite or the sign-in provider, so a flood must not queue up).
const MAX_CONCURRENT_PRESSES: usize = 64;

/// What the press handlers share.
#[derive(Debug)]
pub struct PressDesk {
    live: Arc<ArcSwap<Live>>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    /// The clients for the `[actions]` in force, rebuilt (and their caches emptied) only when
    /// a reload changes it.
    clients: Mutex<Option<Arc<Clients>>>,
}

/// The API clients one `[actions]` config needs.
#[derive(Debug)]
pub struct Clients {
    /// The config they were made for.
    pub config: Arc<ActionsConfig>,
    /// Buildkite's REST API.
    pub buildkite: Buildkite,
    /// Slack's Web API, with `[actions.slack]`.
    pub slack: Option<SlackApi>,
    /// The sign-in provider, with `[actions.oidc]`.
    pub oidc: Option<Oidc>,
}

/// Who pressed, for the audit and the message that says who did it.
#[derive(Debug, Clone)]
pub struct Presser {
    /// Slack user id or email.
    pub id: String,
    /// How to name them.
    pub name: String,
    /// `slack` or `teams`.
    pub channel: &'static str,
    /// Where from: Slack team and channel, or the browser's address.
    pub source: String,
    /// What policies judge.
    pub person: Person,
}

/// How a press ended, for the person and the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Buildkite did it; the summary is for people.
    Done(String),
    /// No policy allows it for this person.
    Denied(String),
    /// Someone pressed first.
    Duplicate {
        /// Who.
        by: String,
        /// When (ms).
        at: i64,
    },
    /// Buildkite refused; nothing was done, and the button can be pressed again.
    Failed(String),
    /// No usable answer from Buildkite (or Slack): it may or may not have happened.
    Unavailable(String),
}

impl Verdict {
    /// The audit and metrics label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Done(_) => "done",
            Self::Denied(_) => "denied",
            Self::Duplicate { .. } => "duplicate",
            Self::Failed(_) => "failed",
            Self::Unavailable(_) => "unavailable",
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            Self::Done(s) | Self::Denied(s) | Self::Failed(s) | Self::Unavailable(s) => {
                Some(s.clone())
            }
            Self::Duplicate { by, at } => Some(format!("already done by {by} at {at}")),
        }
    }
}

impl PressDesk {
    /// The desk for the service whose live config is `live`.
    pub fn new(live: Arc<ArcSwap<Live>>, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            live,
            store,
            metrics,
            client: crate::destination::client(),
            clients: Mutex::new(None),
        }
    }

    /// The clients for the `[actions]` in force; `None` when buttons are off.
    pub fn clients(&self) -> Option<Arc<Clients>> {
        let config = self.live.load().config.actions.clone()?;
        let mut held = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = held.as_ref().filter(|c| *c.config == *config) {
            return Some(c.clone());
        }
        let b = &config.buildkite;
        let clients = Arc::new(Clients {
            buildkite: Buildkite::new(self.client.clone(), &b.api_url, &b.org, b.token.clone()),
            slack: config
                .slack
                .as_ref()
                .map(|s| SlackApi::new(self.client.clone(), &s.api_url, s.token.clone())),
            oidc: match (&config.oidc, config.callback_url()) {
                (Some(o), Some(callback)) => Some(Oidc::new(
                    self.client.clone(),
                    &o.issuer,
                    &o.client_id,
                    o.client_secret.clone(),
                    &callback,
                )),
                _ => None,
            },
            config,
        });
        *held = Some(clients.clone());
        Some(clients)
    }

    /// The live config.
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// The shared HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// Reads a button's token, auditing a bad one.
    pub async fn grant(
        &self,
        clients: &Clients,
        token: &str,
        presser: &Presser,
    ) -> Result<Grant, TokenError> {
        let e = match token::verify(token, &clients.config.keys, now_secs()) {
            Ok(grant) => return Ok(grant),
            Err(e) => e,
        };
        let outcome = match e {
            TokenError::Expired => "expired",
            TokenError::Forged => "forged",
            TokenError::Malformed => "malformed",
        };
        let press = row(None, presser, outcome, Some(e.to_string()));
        audit(self.store.as_ref(), &self.metrics, press).await;
        Err(e)
    }

    /// Decides, claims and acts on `grant` for `presser`, and records it.
    pub async fn carry_out(&self, clients: &Clients, grant: &Grant, presser: &Presser) -> Verdict {
        let verdict = self.decide_and_act(clients, grant, presser).await;
        let press = row(Some(grant), presser, verdict.outcome(), verdict.detail());
        audit(self.store.as_ref(), &self.metrics, press).await;
        verdict
    }

    async fn decide_and_act(&self, clients: &Clients, grant: &Grant, presser: &Presser) -> Verdict {
        if let Err(why) = self.still_offered(grant, presser.channel) {
            return Verdict::Denied(why);
        }
        match policy::decide(&clients.config.policies, grant, &presser.person) {
            Decision::Allowed { .. } => {}
            Decision::NotCovered => {
                return Verdict::Denied(format!(
                    "no policy allows {} on {} (branch {})",
                    grant.action,
                    grant.pipeline,
                    if grant.branch.is_empty() {
                        "unknown"
                    } else {
                        &grant.branch
                    }
                ));
            }
            Decision::NotAdmitted => {
                return Verdict::Denied(format!(
                    "{} is not allowed to {} on {}",
                    presser.name, grant.action, grant.pipeline
                ));
            }
        }
        // Kept an hour past the button's expiry: replicas' clocks differ, and a claim must
        // outlive every replica's idea of when the button stops acting.
        let expires = grant.expires * 1000 + CLAIM_MARGIN_MS;
        match self
            .store
            .claim_nonce(&grant.nonce, &presser.name, now_ms(), expires)
            .await
        {
            Ok(None) => {}
            Ok(Some(claim)) => {
                return Verdict::Duplicate {
                    by: claim.by,
                    at: claim.at,
                };
            }
            Err(e) => {
                return Verdict::Unavailable(format!("the store could not claim the button: {e}"));
            }
        }
        let unblocker = self.unblocker(presser);
        match carry::carry(
            &clients.buildkite,
            &clients.config.buildkite.org,
            grant,
            unblocker.as_deref(),
            &clients.config.buildkite.unblock_fields,
        )
        .await
        {
            Ok(done) => Verdict::Done(done.summary),
            Err(crate::actions::buildkite::BuildkiteError::Refused { message, .. }) => {
                // Nothing happened: the button may be pressed again.
                if let Err(e) = self.store.release_nonce(&grant.nonce, &presser.name).await {
                    tracing::warn!(error = %e, "could not release a button's claim after Buildkite refused");
                }
                Verdict::Failed(message)
            }
            Err(crate::actions::buildkite::BuildkiteError::Unavailable(why)) => {
                Verdict::Unavailable(why)
            }
        }
    }

    /// Whether the button is still one the config shows, where it was pressed: its
    /// destination exists and is of the kind pressed from (a Slack button's token opened as a
    /// Teams link would skip Slack's checks), and its route still shows this action (taking a
    /// button off a route takes it away from messages already posted).
    fn still_offered(&self, grant: &Grant, channel: &str) -> Result<(), String> {
        let live = self.live.load();
        let pressed_in = match channel {
            "slack" => TemplateKind::Slack,
            _ => TemplateKind::Teams,
        };
        let posted = live
            .config
            .destinations
            .iter()
            .any(|d| d.name == grant.destination && d.kind.template_kind() == pressed_in);
        if !posted {
            return Err(format!(
                "this button was not posted to a {channel} destination named {:?}",
                grant.destination
            ));
        }
        let shown = live
            .config
            .routes
            .iter()
            .any(|r| r.name == grant.route && r.buttons.contains(&grant.action));
        if !shown {
            return Err(format!(
                "route {:?} no longer shows {} buttons",
                grant.route, grant.action
            ));
        }
        Ok(())
    }

    /// Records a refused request that carried a button (a form without its CSRF token, no
    /// sign-in, a token that disagrees with its button): what it names, when it can be read.
    pub async fn record_refusal(
        &self,
        clients: &Clients,
        token: &str,
        presser: &Presser,
        outcome: &str,
        detail: &str,
    ) {
        let grant = token::verify(token, &clients.config.keys, now_secs()).ok();
        let press = row(grant.as_ref(), presser, outcome, Some(detail.into()));
        audit(self.store.as_ref(), &self.metrics, press).await;
    }

    /// Records a press that ended before the policy was asked (who pressed could not be
    /// told, or may never act).
    pub async fn record_only(&self, grant: &Grant, presser: &Presser, verdict: &Verdict) {
        let press = row(Some(grant), presser, verdict.outcome(), verdict.detail());
        audit(self.store.as_ref(), &self.metrics, press).await;
    }

    /// The presser's Buildkite user id, when `[[people]]` gives one for their email.
    fn unblocker(&self, presser: &Presser) -> Option<String> {
        let email = presser.person.email.as_deref()?;
        self.live
            .load()
            .config
            .people
            .find(email)
            .and_then(|p| p.buildkite_id.clone())
    }
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> i64 {
    now_ms() / 1000
}

/// The audit row of a press of `grant` (unknown when its token could not be read).
fn row(grant: Option<&Grant>, presser: &Presser, outcome: &str, detail: Option<String>) -> Press {
    Press {
        id: 0,
        at: now_ms(),
        action: grant.map_or("unknown", |g| g.action.as_str()).into(),
        target: grant.map(Grant::target).unwrap_or_default(),
        route: grant.map(|g| g.route.clone()).unwrap_or_default(),
        destination: grant.map(|g| g.destination.clone()).unwrap_or_default(),
        channel: presser.channel.into(),
        presser: presser.id.clone(),
        presser_name: Some(presser.name.clone()),
        source: presser.source.clone(),
        outcome: outcome.into(),
        detail,
    }
}

/// Records a press: a store row, a log line and a count.
async fn audit(store: &dyn Store, metrics: &Metrics, press: Press) {
    metrics
        .actions
        .with_label_values(&[press.action.as_str(), press.outcome.as_str()])
        .inc();
    tracing::info!(
        action = %press.action,
        target = %press.target,
        route = %press.route,
        destination = %press.destination,
        channel = %press.channel,
        presser = %press.presser,
        source = %press.source,
        outcome = %press.outcome,
        detail = press.detail.as_deref().unwrap_or(""),
        "button pressed"
    );
    if let Err(e) = store.record_press(press).await {
        tracing::error!(error = %e, "could not record a button press in the audit");
    }
}

/// The routes that answer presses: the Slack interactions path when `[actions.slack]` is set
/// at start, and the Teams confirm pages and sign-in.
pub fn router(desk: Arc<PressDesk>) -> axum::Router {
    let slack_path = desk
        .live
        .load()
        .config
        .actions
        .as_ref()
        .and_then(|a| a.slack.as_ref())
        .map(|s| s.path.clone());
    let mut router = axum::Router::new()
        .route("/actions/login", get(teams::login))
        .route("/actions/callback", get(teams::callback))
        .route(
            "/actions/{token}",
            get(teams::confirm_page).post(teams::confirm),
        );
    if let Some(path) = slack_path {
        router = router.route(&path, post(slack::interaction));
    }
    let metrics = desk.metrics.clone();
    router
        .route_layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    move |_: tower::BoxError| {
                        let metrics = metrics.clone();
                        async move {
                            metrics
                                .actions
                                .with_label_values(&["unknown", "overloaded"])
                                .inc();
                            tracing::warn!("button press refused: too many at once");
                            (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                "too many presses at once; try again",
                            )
                        }
                    },
                ))
                .load_shed()
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    MAX_CONCURRENT_PRESSES,
                )),
        )
        .with_state(desk)
}
