//! Loading and validating the TOML config into the runtime form the service uses.
//!
//! The raw file ([`raw`]) is parsed with spans, every string is interpolated from the
//! environment ([`interpolate`]), and everything is checked once: globs and regexes compiled,
//! durations, addresses and URLs parsed, names cross-checked. Problems are collected, not
//! stopped at, and each names the file and line. After this, nothing re-validates.

mod actions;
mod check;
mod destinations;
pub mod interpolate;
mod people;
mod raw;
mod routes;
mod storage;

use crate::auth::Credentials;
use crate::destination::DestinationConfig;
use crate::queue::Settings;
use crate::render::People;
use crate::routing::Route;
use crate::secret::Secret;
use crate::store::StoreConfig;
use check::Check;
use ipnet::IpNet;
use raw::RawConfig;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// How long a client may take to send a request's headers, and then its body.
    pub read_timeout: Duration,
    /// Requests handled at once; more are answered 503 at once.
    pub max_concurrent_requests: usize,
    /// After SIGTERM, how long `/readyz` answers 503 while requests are still served, so a
    /// load balancer moves traffic away before the listener closes.
    pub drain: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The bearer token that enables `POST /-/reload`.
    pub reload_token: Option<Secret>,
    /// Certificate and key, when kitebridge terminates TLS itself.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: PEM files, resolved against the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
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
    /// `allowed_ips` names `"buildkite"`: Buildkite's published webhook addresses are allowed.
    pub allow_buildkite_ips: bool,
    /// Where Buildkite's published addresses are read (`webhook_ips`).
    pub meta_url: String,
    /// `[test_engine] key`; `None` turns the Test Engine endpoint off.
    pub test_engine_key: Option<Secret>,
    /// `[storage]`: which store, and how to reach it.
    pub storage: StoreConfig,
    /// `[delivery]` and the queue parts of `[storage]`.
    pub queue: Settings,
    /// `[delivery] shutdown_deadline`: how long in-flight work may finish at shutdown.
    pub shutdown_deadline: Duration,
    /// `[delivery] allowed_hosts`: the only hosts messages may be sent to.
    pub allowed_hosts: Vec<String>,
    /// `[templates] dir`, resolved against the config file's folder.
    pub templates_dir: Option<PathBuf>,
    /// Destinations in name order.
    pub destinations: Vec<DestinationConfig>,
    /// Routes in file order.
    pub routes: Vec<Route>,
    /// `[actions]`: buttons that act; `None` when off.
    pub actions: Option<Arc<crate::actions::ActionsConfig>>,
    /// `[[people]]`: who `mention` can mention.
    pub people: Arc<People>,
    /// What is allowed but surely not meant (`file:line: warning: …`): shown by `check`,
    /// logged at start and reload.
    pub warnings: Vec<String>,
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
            warnings: Vec::new(),
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

/// Buildkite's meta API, which lists the addresses webhooks come from.
pub const BUILDKITE_META_URL: &str = "https://api.buildkite.com/v2/meta";

/// The hosts destinations may use unless `[delivery] allowed_hosts` says otherwise: Slack's,
/// and Teams' (Office 365 connectors, Power Automate and Logic Apps workflows).
pub const DEFAULT_ALLOWED_HOSTS: &[&str] = &[
    "hooks.slack.com",
    "slack.com",
    "*.webhook.office.com",
    "outlook.office.com",
    "outlook.office365.com",
    "*.logic.azure.com",
    "*.powerplatform.com",
    "*.powerautomate.com",
];

pub use crate::destination::host_allowed;

#[cfg(test)]
mod tests;
