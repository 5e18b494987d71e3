//! Loading and validating the TOML config into the runtime form the service uses.
//!
//! The raw file ([`raw`]) is parsed with spans, every string is interpolated from the
//! environment ([`interpolate`]), and everything is checked once: globs and regexes compiled,
//! durations, addresses and URLs parsed, names cross-checked. Problems are collected, not
//! stopped at, and each names the file and line. After this, nothing re-validates.

pub mod interpolate;
mod raw;

use crate::deliver::DestinationKind;
use crate::ingress::auth::{AuthMode, Credentials};
use crate::queue::{Limits, RetryPolicy, Settings};
use crate::routing::{Condition, PatternList, Route, Test};
use crate::secret::Secret;
use crate::store::sqlite::Durability;
use ipnet::IpNet;
use raw::{RawConfig, RawRoute, Text};
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// A config that could not be loaded: one line per problem, each naming file and line.
#[derive(Debug, Error)]
pub struct ConfigError {
    /// The problems, formatted `file:line: what is wrong`.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The Buildkite webhook path.
    pub path: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

/// One `[destinations.NAME]`.
#[derive(Debug, Clone)]
pub struct DestinationConfig {
    /// The table key.
    pub name: String,
    /// What it is.
    pub kind: DestinationKind,
    /// The webhook URL; `None` for `console`, and for a Slack or Teams destination whose URL
    /// interpolated to empty (it is then disabled).
    pub url: Option<Secret>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Pace and parallelism.
    pub limits: Limits,
}

impl DestinationConfig {
    /// Whether messages are sent to it (a webhook destination needs its URL).
    pub fn enabled(&self) -> bool {
        self.kind == DestinationKind::Console || self.url.is_some()
    }
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// `[server]`.
    pub server: ServerConfig,
    /// Tokens and auth mode from `[buildkite]`.
    pub credentials: Credentials,
    /// `[buildkite] allowed_ips`; empty allows every address.
    pub allowed_ips: Vec<IpNet>,
    /// `[test_engine] key`; `None` turns the Test Engine endpoint off.
    pub test_engine_key: Option<Secret>,
    /// `[storage] path`, resolved against the config file's folder.
    pub storage_path: PathBuf,
    /// `[storage] durability`.
    pub durability: Durability,
    /// `[delivery]` and the queue parts of `[storage]`.
    pub queue: Settings,
    /// `[delivery] shutdown_deadline`: how long in-flight work may finish at shutdown.
    pub shutdown_deadline: Duration,
    /// `[templates] dir`, resolved against the config file's folder.
    pub templates_dir: Option<PathBuf>,
    /// Destinations in name order.
    pub destinations: Vec<DestinationConfig>,
    /// Routes in file order.
    pub routes: Vec<Route>,
}

impl Config {
    /// Reads and validates `path`, interpolating from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![format!("{}: cannot read: {e}", path.display())],
        })?;
        Self::parse(path, &text, |name| std::env::var(name).ok())
    }

    /// Validates `text` as if read from `path`, with `env` answering variable look-ups.
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut c = Check {
            file: path.display().to_string(),
            src: text,
            env: &env,
            problems: Vec::new(),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                c.problem(e.span(), without_literals(e.message().trim_end()));
                return Err(ConfigError {
                    problems: c.problems,
                });
            }
        };
        let base = path.parent().unwrap_or(Path::new(""));
        let config = c.validate(raw, base);
        match config {
            Some(config) if c.problems.is_empty() => Ok(config),
            _ => Err(ConfigError {
                problems: c.problems,
            }),
        }
    }

    /// The destination named `name`.
    pub fn destination(&self, name: &str) -> Option<&DestinationConfig> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

/// The parser quotes offending values (`invalid type: string "…"`); a value may be a secret,
/// so quoted literals are left out. Key names, quoted with backticks, stay.
fn without_literals(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quote = false;
    let mut escaped = false;
    for c in message.chars() {
        if in_quote {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_quote = false;
                    out.push_str("\"…\"");
                }
                _ => escaped = false,
            }
        } else if c == '"' {
            in_quote = true;
        } else {
            out.push(c);
        }
    }
    out
}

struct Check<'a> {
    file: String,
    src: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

/// Default per-request timeout for webhook destinations.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Check<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn problem(&mut self, span: Option<Range<usize>>, msg: impl fmt::Display) {
        let line = match span {
            Some(span) => format!("{}:{}", self.file, self.line(&span)),
            None => self.file.clone(),
        };
        self.problems.push(format!("{line}: {msg}"));
    }

    /// The interpolated value of `t`, or a problem naming `what`.
    fn text(&mut self, t: &Text, what: &str) -> Option<String> {
        match interpolate::expand(t.get_ref(), |n| (self.env)(n)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(Some(t.span()), format!("{what}: {e}"));
                None
            }
        }
    }

    fn texts(&mut self, list: &[Text], what: &str) -> Vec<String> {
        list.iter().filter_map(|t| self.text(t, what)).collect()
    }

    /// How to quote a value in a message: as written when it came from the environment, so
    /// a secret put in the wrong place is not echoed.
    fn shown(t: &Text, value: &str) -> String {
        if t.get_ref().contains("${") {
            format!("{:?} (as interpolated)", t.get_ref())
        } else {
            format!("{value:?}")
        }
    }

    fn duration(&mut self, t: Option<&Text>, what: &str, default: Duration) -> Duration {
        let Some(t) = t else { return default };
        let Some(v) = self.text(t, what) else {
            return default;
        };
        match humantime::parse_duration(&v) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.problem(
                    Some(t.span()),
                    format!(
                        "{what}: {} is not a duration such as \"30s\" or \"5m\"",
                        Self::shown(t, &v)
                    ),
                );
                default
            }
        }
    }

    fn validate(&mut self, raw: RawConfig, base: &Path) -> Option<Config> {
        let server = self.server(&raw);
        let (credentials, allowed_ips) = self.buildkite(&raw);
        let test_engine_key = raw
            .test_engine
            .key
            .as_ref()
            .and_then(|k| self.text(k, "test_engine.key"))
            .filter(|k| !k.is_empty())
            .map(Secret::new);
        let storage_path = raw
            .storage
            .path
            .as_ref()
            .and_then(|p| self.text(p, "storage.path"))
            .unwrap_or_else(|| "kitebridge.db".into());
        let durability = self.durability(raw.storage.durability.as_ref());
        let dedupe_window = match raw.storage.dedupe_window.as_ref() {
            Some(t) if t.get_ref().trim() == "0" || t.get_ref().trim() == "0s" => None,
            other => Some(self.duration(other, "storage.dedupe_window", Duration::from_secs(600))),
        };
        let retention = self.duration(
            raw.storage.retention.as_ref(),
            "storage.retention",
            Duration::from_secs(7 * 86_400),
        );
        let policy = self.policy(&raw.delivery);
        let shutdown_deadline = self.duration(
            raw.delivery.shutdown_deadline.as_ref(),
            "delivery.shutdown_deadline",
            Duration::from_secs(10),
        );
        let templates_dir = raw
            .templates
            .dir
            .as_ref()
            .and_then(|d| self.text(d, "templates.dir"))
            .filter(|d| !d.is_empty())
            .map(|d| base.join(d));
        let destinations = self.destinations(&raw);
        let names: HashSet<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
        let routes = self.routes(&raw.routes, &names);
        Some(Config {
            path: PathBuf::from(&self.file),
            server: server?,
            credentials: credentials?,
            allowed_ips,
            test_engine_key,
            storage_path: base.join(storage_path),
            durability,
            queue: Settings {
                policy,
                dedupe_window,
                retention,
            },
            shutdown_deadline,
            templates_dir,
            destinations,
            routes,
        })
    }

    fn server(&mut self, raw: &RawConfig) -> Option<ServerConfig> {
        let s = &raw.server;
        let listen = match &s.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 8686)),
            Some(t) => {
                let v = self.text(t, "server.listen")?;
                match v.parse() {
                    Ok(addr) => addr,
                    Err(_) => {
                        self.problem(
                            Some(t.span()),
                            format!(
                                "server.listen: {} is not an address such as \"127.0.0.1:8686\"",
                                Self::shown(t, &v)
                            ),
                        );
                        return None;
                    }
                }
            }
        };
        let path = match &s.path {
            None => "/webhooks/buildkite".to_string(),
            Some(t) => {
                let v = self.text(t, "server.path")?;
                if !v.starts_with('/') || v.contains(['{', '}', '*', ' ']) {
                    self.problem(
                        Some(t.span()),
                        format!(
                            "server.path: {} must start with / and hold no {{ }} * or spaces",
                            Self::shown(t, &v)
                        ),
                    );
                    return None;
                }
                v
            }
        };
        let max_body_bytes = match &s.max_body_bytes {
            None => 1024 * 1024,
            Some(n) if (1024..=64 * 1024 * 1024).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.problem(
                    Some(n.span()),
                    "server.max_body_bytes must be between 1024 and 67108864",
                );
                return None;
            }
        };
        Some(ServerConfig {
            listen,
            path,
            max_body_bytes,
        })
    }

    fn buildkite(&mut self, raw: &RawConfig) -> (Option<Credentials>, Vec<IpNet>) {
        let bk = raw.buildkite.get_ref();
        let token = self.text(&bk.token, "buildkite.token");
        if token.as_deref() == Some("") {
            self.problem(
                Some(bk.token.span()),
                "buildkite.token is empty: set it to the webhook's token (also the HMAC key in signature mode)",
            );
        }
        let mut tokens: Vec<Secret> = token
            .into_iter()
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .collect();
        for t in &bk.previous_tokens {
            match self.text(t, "buildkite.previous_tokens") {
                Some(v) if v.is_empty() => {
                    self.problem(Some(t.span()), "buildkite.previous_tokens: empty token")
                }
                Some(v) => tokens.push(Secret::new(v)),
                None => {}
            }
        }
        let mode = match &bk.mode {
            None => Some(AuthMode::Auto),
            Some(t) => {
                match self.text(t, "buildkite.mode").as_deref() {
                    Some("auto") => Some(AuthMode::Auto),
                    Some("signature") => Some(AuthMode::Signature),
                    Some("token") => Some(AuthMode::Token),
                    Some(other) => {
                        self.problem(
                        Some(t.span()),
                        format!("buildkite.mode: {} is not one of \"signature\", \"token\", \"auto\"", Self::shown(t, other)),
                    );
                        None
                    }
                    None => None,
                }
            }
        };
        let replay_window = self.duration(
            bk.replay_window.as_ref(),
            "buildkite.replay_window",
            Duration::from_secs(300),
        );
        let mut allowed = Vec::new();
        for t in &bk.allowed_ips {
            let Some(v) = self.text(t, "buildkite.allowed_ips") else {
                continue;
            };
            match v.parse::<IpNet>().or_else(|_| v.parse::<IpAddr>().map(IpNet::from)) {
                Ok(net) => allowed.push(net),
                Err(_) => self.problem(
                    Some(t.span()),
                    format!("buildkite.allowed_ips: {} is not a CIDR such as \"192.0.2.0/24\" or an address", Self::shown(t, &v)),
                ),
            }
        }
        let credentials = match (tokens.is_empty(), mode) {
            (false, Some(mode)) => Some(Credentials {
                tokens,
                mode,
                replay_window,
            }),
            _ => None,
        };
        (credentials, allowed)
    }

    fn destinations(&mut self, raw: &RawConfig) -> Vec<DestinationConfig> {
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
                        "{what}: kind {} is not one of \"slack\", \"teams\", \"console\"",
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
                timeout,
                limits,
            });
        }
        out
    }

    fn durability(&mut self, t: Option<&Text>) -> Durability {
        let Some(t) = t else { return Durability::Full };
        match self.text(t, "storage.durability").as_deref() {
            Some("full") | None => Durability::Full,
            Some("normal") => Durability::Normal,
            Some(other) => {
                let shown = Self::shown(t, other);
                self.problem(
                    Some(t.span()),
                    format!("storage.durability: {shown} is not \"full\" or \"normal\""),
                );
                Durability::Full
            }
        }
    }

    fn policy(&mut self, d: &raw::RawDelivery) -> RetryPolicy {
        let defaults = RetryPolicy::default();
        let policy = RetryPolicy {
            max_age: self.duration(d.max_age.as_ref(), "delivery.max_age", defaults.max_age),
            max_retry_after: self.duration(
                d.max_retry_after.as_ref(),
                "delivery.max_retry_after",
                defaults.max_retry_after,
            ),
            backoff_initial: self.duration(
                d.backoff_initial.as_ref(),
                "delivery.backoff_initial",
                defaults.backoff_initial,
            ),
            backoff_max: self.duration(
                d.backoff_max.as_ref(),
                "delivery.backoff_max",
                defaults.backoff_max,
            ),
        };
        if policy.backoff_initial > policy.backoff_max {
            self.problem(
                d.backoff_initial.as_ref().map(|t| t.span()),
                "delivery.backoff_initial is longer than delivery.backoff_max",
            );
        }
        policy
    }

    /// Pace and parallelism, with each kind's defaults: Slack about 1 message per second per
    /// webhook, Teams about 4, the console unlimited.
    fn limits(&mut self, what: &str, kind: DestinationKind, d: &raw::RawDestination) -> Limits {
        let (rate, burst, concurrency) = match kind {
            DestinationKind::Slack => (Some(1.0), 3, 1),
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
        Limits {
            rate,
            burst: count(&d.burst, "burst", burst) as u32,
            concurrency: count(&d.concurrency, "concurrency", concurrency),
        }
    }

    fn routes(
        &mut self,
        raw: &[toml::Spanned<RawRoute>],
        destinations: &HashSet<&str>,
    ) -> Vec<Route> {
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for (i, spanned) in raw.iter().enumerate() {
            let span = spanned.span();
            let r = spanned.get_ref();
            let name = match &r.name {
                Some(n) => self.text(n, "route name").unwrap_or_default(),
                None => String::new(),
            };
            if name.is_empty() {
                self.problem(Some(span), format!("route #{}: name is required", i + 1));
                continue;
            }
            if !seen.insert(name.clone()) {
                self.problem(
                    Some(span),
                    format!("route {name:?}: another route has the same name"),
                );
                continue;
            }
            if let Some(route) = self.route(&name, r, destinations, span) {
                routes.push(route);
            }
        }
        routes
    }

    fn patterns(&mut self, route: &str, field: &str, list: &[Text]) -> Option<PatternList> {
        let values = self.texts(list, &format!("route {route:?} {field}"));
        match PatternList::new(&values) {
            Ok(p) => Some(p),
            Err(e) => {
                let span = list
                    .iter()
                    .find(|t| t.get_ref() == &e.pattern)
                    .map(|t| t.span())
                    .or_else(|| list.first().map(|t| t.span()));
                self.problem(span, format!("route {route:?} {field}: {e}"));
                None
            }
        }
    }

    fn route(
        &mut self,
        name: &str,
        r: &RawRoute,
        destinations: &HashSet<&str>,
        span: Range<usize>,
    ) -> Option<Route> {
        let events = self.patterns(name, "events", &r.events);
        let pipelines = self.patterns(name, "pipelines", &r.pipelines);
        let branches = self.patterns(name, "branches", &r.branches);
        let states = self.patterns(name, "states", &r.states);
        if r.to.is_empty() {
            self.problem(
                Some(span.clone()),
                format!("route {name:?}: `to` must name at least one destination"),
            );
        }
        let mut to = Vec::new();
        for t in &r.to {
            let Some(dest) = self.text(t, &format!("route {name:?} to")) else {
                continue;
            };
            if !destinations.contains(dest.as_str()) {
                self.problem(
                    Some(t.span()),
                    format!("route {name:?}: unknown destination {dest:?}"),
                );
            } else if to.contains(&dest) {
                self.problem(
                    Some(t.span()),
                    format!("route {name:?}: destination {dest:?} listed twice"),
                );
            } else {
                to.push(dest);
            }
        }
        let template = r
            .template
            .as_ref()
            .and_then(|t| self.text(t, &format!("route {name:?} template")));
        let mut when = Vec::new();
        for w in &r.when {
            if let Some(c) = self.condition(name, w) {
                when.push(c);
            }
        }
        let route = Route {
            name: name.to_string(),
            events: events?,
            pipelines: pipelines?,
            branches: branches?,
            states: states?,
            when,
            to,
            template,
            continue_matching: r.continue_matching,
        };
        (route.to.len() == r.to.len() && route.when.len() == r.when.len() && !r.to.is_empty())
            .then_some(route)
    }

    fn condition(&mut self, route: &str, w: &toml::Spanned<raw::RawWhen>) -> Option<Condition> {
        let span = w.span();
        let w = w.get_ref();
        let what = format!("route {route:?} when");
        let path = self.text(&w.path, &format!("{what} path"))?;
        let ops = [
            w.equals.is_some(),
            w.in_.is_some(),
            w.matches.is_some(),
            w.exists.is_some(),
        ];
        if ops.iter().filter(|o| **o).count() != 1 {
            self.problem(
                Some(span.clone()),
                format!("{what} {path:?}: give exactly one of equals, in, matches, exists"),
            );
            return None;
        }
        let test = if let Some(v) = &w.equals {
            Test::Equals(self.json(v, &what, &span)?)
        } else if let Some(list) = &w.in_ {
            Test::In(
                list.iter()
                    .map(|v| self.json(v, &what, &span))
                    .collect::<Option<_>>()?,
            )
        } else if let Some(re) = &w.matches {
            let pattern = self.text(re, &format!("{what} matches"))?;
            match Condition::regex(&pattern) {
                Ok(t) => t,
                Err(e) => {
                    self.problem(Some(re.span()), format!("{what} {path:?}: {e}"));
                    return None;
                }
            }
        } else {
            Test::Exists(w.exists.unwrap_or(true))
        };
        match Condition::new(&path, test) {
            Ok(c) => Some(c),
            Err(e) => {
                self.problem(Some(w.path.span()), format!("{what}: {e}"));
                None
            }
        }
    }

    /// A TOML value as JSON, interpolating strings.
    fn json(
        &mut self,
        v: &toml::Value,
        what: &str,
        span: &Range<usize>,
    ) -> Option<serde_json::Value> {
        Some(match v {
            toml::Value::String(s) => match interpolate::expand(s, |n| (self.env)(n)) {
                Ok(s) => serde_json::Value::String(s),
                Err(e) => {
                    self.problem(Some(span.clone()), format!("{what}: {e}"));
                    return None;
                }
            },
            toml::Value::Integer(i) => serde_json::Value::from(*i),
            toml::Value::Float(f) => serde_json::Value::from(*f),
            toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
            other => {
                self.problem(
                    Some(span.clone()),
                    format!(
                        "{what}: compare with a string, number or boolean, not {}",
                        other.type_str()
                    ),
                );
                return None;
            }
        })
    }
}

#[cfg(test)]
mod tests;
