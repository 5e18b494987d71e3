//! `[storage] url`: a PostgreSQL connection URL, read into connection settings and a TLS mode,
//! with a form that can be shown (no password) for logs and messages.
//!
//! `sslmode` and `sslrootcert` are read here rather than by the driver, which knows neither
//! `verify-full` nor root certificate files: TLS is rustls, set up in [`super::tls`].

use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// How the connection is protected, as libpq's `sslmode` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, else plain (libpq's default).
    Prefer,
    /// TLS always, without checking the server's certificate.
    Require,
    /// TLS always, with the certificate checked against the roots and the host name.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

/// Everything needed to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// The driver's settings (host, port, user, password, database…).
    pub config: tokio_postgres::Config,
    /// The TLS mode.
    pub ssl: SslMode,
    /// `sslrootcert`: trusted roots (PEM) instead of the system's.
    pub root_cert: Option<PathBuf>,
    /// The URL without its password, to show.
    pub shown: String,
    /// The password, kept to scrub it from any error text the driver produces.
    pub password: Option<Secret>,
    /// Most connections this process opens to store events; its workers' bookkeeping opens
    /// half as many again, and one more listens for notifications.
    pub max_connections: usize,
    /// How long a replica's hold on a destination lasts without renewal.
    pub lease: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.shown)
            .field("ssl", &self.ssl)
            .field("root_cert", &self.root_cert)
            .field("max_connections", &self.max_connections)
            .field("lease", &self.lease)
            .finish()
    }
}

impl PartialEq for PgOptions {
    fn eq(&self, other: &Self) -> bool {
        self.shown == other.shown
            && self.password == other.password
            && self.ssl == other.ssl
            && self.root_cert == other.root_cert
            && self.max_connections == other.max_connections
            && self.lease == other.lease
    }
}

/// The default of `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10;

/// The default lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Whether `url` is a PostgreSQL URL at all (by its scheme).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgOptions {
    /// Reads `url`; relative `sslrootcert` paths are resolved against `base`. The error text
    /// never contains the password.
    pub fn parse(url: &str, base: &Path) -> Result<Self, String> {
        if !is_postgres_url(url) {
            return Err("is not a postgres:// or postgresql:// URL".into());
        }
        let (head, query) = url.split_once('?').unwrap_or((url, ""));
        let mut ssl = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept: Vec<&str> = Vec::new();
        let mut shown_query: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    ssl = SslMode::parse(value).ok_or_else(|| {
                        format!(
                            "sslmode={value:?} is not one of disable, prefer, require, verify-full"
                        )
                    })?;
                    shown_query.push(pair.to_string());
                }
                "sslrootcert" => {
                    let path = PathBuf::from(percent_decode(value));
                    root_cert = Some(base.join(path));
                    shown_query.push(pair.to_string());
                }
                "password" => {
                    kept.push(pair);
                    shown_query.push("password=[redacted]".into());
                }
                _ => {
                    kept.push(pair);
                    shown_query.push(pair.to_string());
                }
            }
        }
        let driver_url = if kept.is_empty() {
            head.to_string()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&driver_url).map_err(|e| {
            // The driver's message names the part it could not read, never the whole URL; the
            // password is scrubbed all the same.
            let text = e.to_string();
            format!("cannot be read: {}", scrub_password(&text, &driver_url))
        })?;
        if config.get_hosts().is_empty() {
            return Err("names no host".into());
        }
        if config.get_user().is_none() {
            return Err("names no user (postgres://USER@host/db)".into());
        }
        if config.get_dbname().is_none() {
            return Err("names no database (postgres://user@host/DATABASE)".into());
        }
        if ssl == SslMode::Disable {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        } else if ssl == SslMode::Prefer {
            config.ssl_mode(tokio_postgres::config::SslMode::Prefer);
        } else {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        if config.get_application_name().is_none() {
            config.application_name("kitebridge");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A dead peer (a cut network) is noticed in seconds, not at the kernel's two hours.
        config.keepalives_idle(Duration::from_secs(10));
        let password = config
            .get_password()
            .map(|p| Secret::new(String::from_utf8_lossy(p).into_owned()));
        let mut shown = without_password(head);
        if !shown_query.is_empty() {
            shown = format!("{shown}?{}", shown_query.join("&"));
        }
        Ok(Self {
            config,
            ssl,
            root_cert,
            shown,
            password,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            lease: DEFAULT_LEASE,
        })
    }

    /// `text` with the password (in any form the URL held it) replaced.
    pub fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(p) if !p.expose().is_empty() => text.replace(p.expose(), "[redacted]"),
            _ => text.to_string(),
        }
    }
}

/// The URL's part before the query, with `user:password@` made `user@`.
fn without_password(head: &str) -> String {
    let Some((scheme, rest)) = head.split_once("://") else {
        return head.to_string();
    };
    // The authority ends at the first '/' after the scheme; the user info at its last '@'.
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}@{host}{path}")
        }
        None => head.to_string(),
    }
}

fn scrub_password(text: &str, url: &str) -> String {
    let mut out = text.to_string();
    if let Some((_, rest)) = url.split_once("://")
        && let Some((userinfo, _)) = rest.split('/').next().unwrap_or("").rsplit_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
        && !password.is_empty()
    {
        out = out.replace(password, "[redacted]");
    }
    out
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_url_and_shows_it_without_the_password() {
        let o = PgOptions::parse(
            "postgres://kb:pa%3Ass@db.internal:6543/alerts?sslmode=verify-full&sslrootcert=ca.pem&application_name=kb-1",
            Path::new("/etc/kitebridge"),
        )
        .unwrap();
        assert_eq!(o.ssl, SslMode::VerifyFull);
        assert_eq!(
            o.root_cert.as_deref(),
            Some(Path::new("/etc/kitebridge/ca.pem"))
        );
        assert_eq!(o.config.get_user(), Some("kb"));
        assert_eq!(o.config.get_password(), Some(&b"pa:ss"[..]));
        assert_eq!(o.config.get_dbname(), Some("alerts"));
        assert_eq!(o.config.get_ports(), [6543]);
        assert_eq!(o.config.get_application_name(), Some("kb-1"));
        assert_eq!(
            o.shown,
            "postgres://kb@db.internal:6543/alerts?sslmode=verify-full&sslrootcert=ca.pem&application_name=kb-1"
        );
        assert!(!format!("{o:?}").contains("pa"), "{o:?}");
    }

    #[test]
    fn defaults_follow_libpq_and_a_password_in_the_query_is_hidden_too() {
        let o = PgOptions::parse(
            "postgresql://kb@127.0.0.1/kitebridge?password=hunter22",
            Path::new(""),
        )
        .unwrap();
        assert_eq!(o.ssl, SslMode::Prefer);
        assert_eq!(o.config.get_application_name(), Some("kitebridge"));
        assert_eq!(
            o.shown,
            "postgresql://kb@127.0.0.1/kitebridge?password=[redacted]"
        );
        assert_eq!(o.scrub("auth failed: hunter22"), "auth failed: [redacted]");
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_the_password() {
        for (url, want) in [
            ("mysql://a@b/c", "is not a postgres"),
            (
                "postgres://kb:s3cr3tpw@db/x?sslmode=allow",
                "sslmode=\"allow\" is not one of",
            ),
            ("postgres://kb:s3cr3tpw@db/x?nonsense=1", "cannot be read"),
            ("postgres://kb:s3cr3tpw@db", "names no database"),
            ("postgres://db/x", "names no user"),
        ] {
            let e = PgOptions::parse(url, Path::new("")).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("s3cr3tpw"), "{url}: {e}");
        }
    }
}
