//! Validation of `[destinations.NAME]`.

use super::check::Check;
use super::raw::{self, RawConfig};
use super::{DEFAULT_TIMEOUT, DestinationConfig};
use crate::deliver::DestinationKind;
use crate::queue::Limits;
use crate::secret::Secret;

/// Where the Slack Web API lives, unless a destination's `url` says otherwise.
pub const DEFAULT_SLACK_API: &str = "https://slack.com/api";

impl Check<'_> {
    pub(super) fn destinations(
        &mut self,
        raw: &RawConfig,
        allowed_hosts: &[String],
    ) -> Vec<DestinationConfig> {
        let mut out = Vec::new();
        for (name, dest) in &raw.destinations {
            let (name_span, name) = (name.span(), name.get_ref().clone());
            let what = format!("destination {name:?}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                self.problem(
                    Some(name_span),
                    format!("{what}: names may hold only letters, digits, - and _"),
                );
                continue;
            }
            let d = dest.get_ref();
            let Some(kind_text) = self.text(&d.kind, &format!("{what} kind")) else {
                continue;
            };
            let Some(kind) = DestinationKind::parse(&kind_text) else {
                self.problem(
                    Some(d.kind.span()),
                    format!(
                        "{what}: kind {} is not one of \"slack\", \"slack_app\", \"teams\", \"console\"",
                        Self::shown(&d.kind, &kind_text)
                    ),
                );
                continue;
            };
            let url = match (&d.url, kind) {
                (Some(t), DestinationKind::Console) => {
                    self.problem(
                        Some(t.span()),
                        format!("{what}: a console destination takes no url"),
                    );
                    continue;
                }
                (None, DestinationKind::Console) => None,
                (None, DestinationKind::SlackApp)
                    if super::host_allowed(allowed_hosts, "slack.com") =>
                {
                    Some(Secret::new(DEFAULT_SLACK_API))
                }
                (None, DestinationKind::SlackApp) => {
                    self.problem(
                        Some(dest.span()),
                        format!("{what}: host \"slack.com\" is not in delivery.allowed_hosts"),
                    );
                    continue;
                }
                (None, _) => {
                    self.problem(
                        Some(dest.span()),
                        format!("{what}: url is required for kind {kind_text:?} (use \"${{VAR:-}}\" to make it optional)"),
                    );
                    continue;
                }
                (Some(t), _) => {
                    let Some(url) = self.text(t, &format!("{what} url")) else {
                        continue;
                    };
                    let parsed = reqwest::Url::parse(&url).ok().filter(|u| {
                        matches!(u.scheme(), "https" | "http") && u.host_str().is_some()
                    });
                    let host = parsed
                        .as_ref()
                        .and_then(|u| u.host_str().map(str::to_string));
                    if let Some(host) = host.filter(|h| !super::host_allowed(allowed_hosts, h)) {
                        // The host alone is no secret; the path and query are.
                        self.problem(
                            Some(t.span()),
                            format!("{what}: host {host:?} is not in delivery.allowed_hosts (add it there if it is meant)"),
                        );
                        continue;
                    }
                    if !url.is_empty() && parsed.is_none() {
                        // The URL is a secret: say what is wrong without repeating it.
                        self.problem(
                            Some(t.span()),
                            format!("{what}: url is not an https:// (or http://) URL"),
                        );
                        continue;
                    }
                    (!url.is_empty()).then(|| Secret::new(url))
                }
            };
            let (token, channel) = match self.slack_app(&what, kind, d, dest.span()) {
                Some(found) => found,
                None => continue,
            };
            let timeout = self.duration(
                d.timeout.as_ref(),
                &format!("{what} timeout"),
                DEFAULT_TIMEOUT,
            );
            let limits = self.limits(&what, kind, d);
            out.push(DestinationConfig {
                name,
                kind,
                url,
                token,
                channel,
                timeout,
                limits,
            });
        }
        out
    }

    /// `token` and `channel`: required for `slack_app`, refused elsewhere. `None` on a problem.
    fn slack_app(
        &mut self,
        what: &str,
        kind: DestinationKind,
        d: &raw::RawDestination,
        span: std::ops::Range<usize>,
    ) -> Option<(Option<Secret>, Option<String>)> {
        if kind != DestinationKind::SlackApp {
            if let Some(t) = d.token.as_ref().or(d.channel.as_ref()) {
                self.problem(
                    Some(t.span()),
                    format!("{what}: token and channel are for kind \"slack_app\" only"),
                );
                return None;
            }
            return Some((None, None));
        }
        let Some(token) = &d.token else {
            self.problem(
                Some(span.clone()),
                format!("{what}: token is required for kind \"slack_app\" (a bot token, xoxb-…)"),
            );
            return None;
        };
        let token = self.text(token, &format!("{what} token"))?;
        let Some(channel_text) = &d.channel else {
            self.problem(Some(span), format!("{what}: channel is required for kind \"slack_app\" (a channel id such as \"C0123ABCD\")"));
            return None;
        };
        let channel = self.text(channel_text, &format!("{what} channel"))?;
        if !is_slack_id(&channel, &['C', 'G', 'D']) {
            self.problem(
                Some(channel_text.span()),
                format!("{what}: channel must be a channel id such as \"C0123ABCD\" (updates need the id, not the name)"),
            );
            return None;
        }
        Some((
            (!token.is_empty()).then(|| Secret::new(token)),
            Some(channel),
        ))
    }

    /// Pace and parallelism, with each kind's defaults: Slack about 1 message per second per
    /// webhook, Teams about 4, the console unlimited.
    fn limits(&mut self, what: &str, kind: DestinationKind, d: &raw::RawDestination) -> Limits {
        let (rate, burst, concurrency) = match kind {
            DestinationKind::Slack | DestinationKind::SlackApp => (Some(1.0), 3, 1),
            DestinationKind::Teams => (Some(4.0), 4, 2),
            DestinationKind::Console => (None, 1, 1),
        };
        let rate = match &d.rate {
            None => rate,
            Some(r) if *r.get_ref() == 0.0 => None,
            Some(r) if r.get_ref().is_finite() && *r.get_ref() >= 0.001 => Some(*r.get_ref()),
            Some(r) => {
                self.problem(
                    Some(r.span()),
                    format!("{what}: rate must be messages per second (at least 0.001), or 0 for no limit"),
                );
                rate
            }
        };
        let mut count = |v: &Option<toml::Spanned<i64>>, key: &str, default: usize| match v {
            None => default,
            Some(n) if (1..=1000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.problem(
                    Some(n.span()),
                    format!("{what}: {key} must be between 1 and 1000"),
                );
                default
            }
        };
        let concurrency = count(&d.concurrency, "concurrency", concurrency);
        let burst = count(&d.burst, "burst", burst) as u32;
        if kind == DestinationKind::SlackApp
            && concurrency > 1
            && let Some(n) = &d.concurrency
        {
            // Two attempts for one build at once could both find no message and both post.
            self.problem(Some(n.span()), format!("{what}: concurrency must be 1 for kind \"slack_app\", which updates one message per build in order"));
        }
        Limits {
            rate,
            burst,
            concurrency,
        }
    }
}

/// Whether `id` looks like a Slack id starting with one of `first` (`U…` for members, `C…` for
/// channels): upper-case letters and digits only.
pub(super) fn is_slack_id(id: &str, first: &[char]) -> bool {
    id.len() >= 3
        && id.starts_with(first)
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}
