//! The validation pass: turns the raw file into a [`Config`], collecting one problem (with
//! file and line) per mistake instead of stopping at the first.

use super::raw::{self, RawConfig, Text};
use super::{Config, ServerConfig, interpolate};
use crate::auth::{AuthMode, Credentials};
use crate::queue::{RetryPolicy, Settings};
use crate::secret::Secret;
use ipnet::IpNet;
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[server] drain` for replicas on a shared store: a few health checks of a load balancer.
pub const DEFAULT_SHARED_DRAIN: Duration = Duration::from_secs(5);

/// The state of one validation pass.
pub(super) struct Check<'a> {
    pub(super) file: String,
    pub(super) src: &'a str,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) problems: Vec<String>,
    /// What is allowed but surely not meant (a route that can never match).
    pub(super) warnings: Vec<String>,
}

impl Check<'_> {
    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    pub(super) fn problem(&mut self, span: Option<Range<usize>>, msg: impl fmt::Display) {
        let line = match span {
            Some(span) => format!("{}:{}", self.file, self.line(&span)),
            None => self.file.clone(),
        };
        self.problems.push(format!("{line}: {msg}"));
    }

    pub(super) fn warning(&mut self, span: Range<usize>, msg: impl fmt::Display) {
        let line = format!("{}:{}", self.file, self.line(&span));
        self.warnings.push(format!("{line}: warning: {msg}"));
    }

    /// The interpolated value of `t`, or a problem naming `what`.
    pub(super) fn text(&mut self, t: &Text, what: &str) -> Option<String> {
        match interpolate::expand(t.get_ref(), |n| (self.env)(n)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(Some(t.span()), format!("{what}: {e}"));
                None
            }
        }
    }

    pub(super) fn texts(&mut self, list: &[Text], what: &str) -> Vec<String> {
        list.iter().filter_map(|t| self.text(t, what)).collect()
    }

    /// How to quote a value in a message: as written when it came from the environment, so
    /// a secret put in the wrong place is not echoed.
    pub(super) fn shown(t: &Text, value: &str) -> String {
        if t.get_ref().contains("${") {
            format!("{:?} (as interpolated)", t.get_ref())
        } else {
            format!("{value:?}")
        }
    }

    /// `t`, interpolated, unless absent or blank.
    pub(super) fn optional(&mut self, t: Option<&Text>, what: &str) -> Option<String> {
        self.text(t?, what).filter(|v| !v.trim().is_empty())
    }

    /// A duration above zero, or `default` when absent (or wrong: then with a problem).
    pub(super) fn duration(&mut self, t: Option<&Text>, what: &str, default: Duration) -> Duration {
        t.and_then(|t| self.duration_of(t, what, false))
            .unwrap_or(default)
    }

    /// `t`, interpolated, as a duration (zero only where `zero_ok`); `None` after a problem.
    pub(super) fn duration_of(&mut self, t: &Text, what: &str, zero_ok: bool) -> Option<Duration> {
        let v = self.text(t, what)?;
        match humantime::parse_duration(v.trim()) {
            Ok(d) if zero_ok || !d.is_zero() => Some(d),
            _ => {
                self.problem(
                    Some(t.span()),
                    format!(
                        "{what}: {} is not a duration such as \"30s\" or \"5m\"",
                        Self::shown(t, &v)
                    ),
                );
                None
            }
        }
    }

    pub(super) fn validate(&mut self, raw: RawConfig, base: &Path) -> Option<Config> {
        let storage = self.storage(&raw.storage, base);
        let server = self.server(&raw, base, storage.shared());
        let (credentials, (allowed_ips, allow_buildkite_ips)) = self.buildkite(&raw);
        let meta_url = match &raw.buildkite.get_ref().meta_url {
            None => super::BUILDKITE_META_URL.to_string(),
            Some(t) => self.text(t, "buildkite.meta_url").unwrap_or_default(),
        };
        let allowed_hosts: Vec<String> = match &raw.delivery.allowed_hosts {
            None => super::DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            Some(list) => self
                .texts(list, "delivery.allowed_hosts")
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        };
        let test_engine_key = self
            .optional(raw.test_engine.key.as_ref(), "test_engine.key")
            .map(Secret::new);
        // Zero turns duplicate detection off.
        let dedupe_window = match raw.storage.dedupe_window.as_ref() {
            None => Some(Duration::from_secs(600)),
            Some(t) => self
                .duration_of(t, "storage.dedupe_window", true)
                .filter(|d| !d.is_zero()),
        };
        let retention = self.duration(
            raw.storage.retention.as_ref(),
            "storage.retention",
            Duration::from_secs(7 * 86_400),
        );
        // Duplicates are found among the stored events, and retention prunes those.
        if let Some(window) = dedupe_window.filter(|w| *w > retention) {
            self.problem(
                raw.storage.dedupe_window.as_ref().map(|t| t.span()),
                format!(
                    "storage.dedupe_window ({}) is longer than storage.retention ({}): duplicates are only found among events still stored",
                    humantime::format_duration(window),
                    humantime::format_duration(retention)
                ),
            );
        }
        // The embedded store looks for a copy with one probe of its index per minute of the
        // window: cheap for minutes, a real cost per event for days.
        if let (None, Some(window), Some(t)) = (
            raw.storage.url.as_ref(),
            dedupe_window,
            raw.storage.dedupe_window.as_ref(),
        ) && window > Duration::from_secs(3600)
        {
            self.warning(
                t.span(),
                format!(
                    "storage.dedupe_window ({}) makes each event look for a copy in {} minutes of the embedded store, one index probe each: windows over an hour slow intake",
                    humantime::format_duration(window),
                    window.as_secs() / 60 + 1
                ),
            );
        }
        let policy = self.policy(&raw.delivery);
        let shutdown_deadline = self.duration(
            raw.delivery.shutdown_deadline.as_ref(),
            "delivery.shutdown_deadline",
            Duration::from_secs(10),
        );
        let templates_dir = self
            .optional(raw.templates.dir.as_ref(), "templates.dir")
            .map(|d| base.join(d));
        let destinations = self.destinations(&raw, &allowed_hosts);
        let names: HashSet<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
        let people = self.people(&raw);
        let mutes = self.mutes(&raw);
        let routes = self.routes(&raw.routes, &names, &mutes);
        let webhook_path = server
            .as_ref()
            .map_or("/webhooks/buildkite", |s| s.path.as_str());
        let actions = self.actions(&raw, webhook_path);
        self.route_buttons(&raw, &routes, &destinations, actions.as_deref());
        let buttons = crate::actions::Buttons::new(
            actions.clone(),
            routes
                .iter()
                .filter(|r| !r.buttons.is_empty())
                .map(|r| (r.name.clone(), r.buttons.clone()))
                .collect(),
        );
        Some(Config {
            path: PathBuf::from(&self.file),
            server: server?,
            credentials: credentials?,
            allowed_ips,
            allow_buildkite_ips,
            meta_url,
            test_engine_key,
            storage,
            queue: Settings {
                policy,
                dedupe_window,
                retention,
                buttons: std::sync::Arc::new(buttons),
            },
            shutdown_deadline,
            allowed_hosts: allowed_hosts.clone(),
            templates_dir,
            destinations,
            routes,
            actions,
            people: std::sync::Arc::new(people),
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    fn server(&mut self, raw: &RawConfig, base: &Path, shared: bool) -> Option<ServerConfig> {
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
        let read_timeout = self.duration(
            s.read_timeout.as_ref(),
            "server.read_timeout",
            Duration::from_secs(10),
        );
        // Its default depends on the store: replicas sit behind a balancer.
        let drain = s
            .drain
            .as_ref()
            .and_then(|t| self.duration_of(t, "server.drain", true))
            .unwrap_or(if shared {
                DEFAULT_SHARED_DRAIN
            } else {
                Duration::ZERO
            });
        let max_concurrent_requests = match &s.max_concurrent_requests {
            None => 1024,
            Some(n) if (1..=100_000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.problem(
                    Some(n.span()),
                    "server.max_concurrent_requests must be between 1 and 100000",
                );
                1024
            }
        };
        let trusted_proxies = self.networks(&s.trusted_proxies, "server.trusted_proxies");
        if trusted_proxies.1 {
            self.problem(
                None,
                "server.trusted_proxies: list the proxies' own addresses, not \"buildkite\"",
            );
        }
        let reload_token = self
            .optional(s.reload_token.as_ref(), "server.reload_token")
            .map(Secret::new);
        let tls = s.tls.as_ref().and_then(|t| self.tls(t.get_ref(), base));
        Some(ServerConfig {
            listen,
            path,
            max_body_bytes,
            read_timeout,
            max_concurrent_requests,
            drain,
            trusted_proxies: trusted_proxies.0,
            reload_token,
            tls,
        })
    }

    /// CIDRs or addresses; the second value is true when `"buildkite"` is among them.
    fn networks(&mut self, list: &[Text], what: &str) -> (Vec<IpNet>, bool) {
        let (mut nets, mut buildkite) = (Vec::new(), false);
        for t in list {
            let Some(v) = self.text(t, what) else {
                continue;
            };
            if v == "buildkite" {
                buildkite = true;
                continue;
            }
            match v
                .parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => nets.push(net),
                Err(_) => {
                    let shown = Self::shown(t, &v);
                    self.problem(
                        Some(t.span()),
                        format!(
                            "{what}: {shown} is not a CIDR such as \"192.0.2.0/24\" or an address"
                        ),
                    );
                }
            }
        }
        (nets, buildkite)
    }

    /// `[server.tls]`: both files must hold PEM of the right kind.
    fn tls(&mut self, t: &raw::RawTls, base: &Path) -> Option<super::TlsConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert = base.join(self.text(&t.cert, "server.tls.cert")?);
        let key = base.join(self.text(&t.key, "server.tls.key")?);
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(&cert)
            .map(|it| it.filter_map(Result::ok).collect())
            .unwrap_or_default();
        if certs.is_empty() {
            self.problem(
                Some(t.cert.span()),
                format!(
                    "server.tls.cert: {} holds no PEM certificate",
                    cert.display()
                ),
            );
            return None;
        }
        // The key's contents never show in a message, only whether it works with the cert.
        crate::crypto::install_provider();
        let usable = PrivateKeyDer::from_pem_file(&key).ok().and_then(|k| {
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(certs, k)
                .ok()
        });
        if usable.is_none() {
            self.problem(
                Some(t.key.span()),
                format!(
                    "server.tls.key: {} holds no PEM private key that matches the certificate",
                    key.display()
                ),
            );
            return None;
        }
        Some(super::TlsConfig { cert, key })
    }

    fn buildkite(&mut self, raw: &RawConfig) -> (Option<Credentials>, (Vec<IpNet>, bool)) {
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
        let allowed = self.networks(&bk.allowed_ips, "buildkite.allowed_ips");
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
}
