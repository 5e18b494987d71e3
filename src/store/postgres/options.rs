//! `[storage] url`: a PostgreSQL connection URL, read into connection settings and a TLS mode,
//! with a form that can be shown (no password) for logs and messages.
//!
//! `sslmode` and `sslrootcert` are read here rather than by the driver, which knows neither
//! `verify-full` nor root certificate files: TLS is rustls, set up in [`super::tls`].

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
        self.config == other.config
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
        let Some((scheme, rest)) = url.split_once("://").filter(|_| is_postgres_url(url)) else {
            return Err("is not a postgres:// or postgresql:// URL".into());
        };
        // The user and password end at the first '@', as the driver reads them; so a password
        // may hold '/', '?' or ':' as they are, and only an '@' must be written %40.
        let (credentials, after) = match rest.split_once('@') {
            Some((credentials, after)) => (Some(credentials), after),
            None => (None, rest),
        };
        let secrets: Vec<String> = credentials
            .and_then(|c| c.split_once(':'))
            .map(|(_, password)| vec![password.to_string(), percent_decode(password)])
            .unwrap_or_default();
        let hide = |text: &str| scrub_all(text, &secrets);
        if after.contains('@') {
            return Err(
                "has more than one '@': write an '@' inside the user or password as %40".into(),
            );
        }
        let (host_and_path, query) = after.split_once('?').unwrap_or((after, ""));
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
                            "sslmode={:?} is not one of disable, prefer, require, verify-full",
                            hide(value)
                        )
                    })?;
                    shown_query.push(pair.to_string());
                }
                "sslrootcert" => {
                    let path = PathBuf::from(percent_decode(value));
                    root_cert = Some(base.join(path));
                    shown_query.push(pair.to_string());
                }
                "password" => kept.push(pair),
                _ => {
                    kept.push(pair);
                    shown_query.push(pair.to_string());
                }
            }
        }
        let mut driver_url = match credentials {
            Some(c) => format!("{scheme}://{c}@{host_and_path}"),
            None => format!("{scheme}://{host_and_path}"),
        };
        if !kept.is_empty() {
            driver_url = format!("{driver_url}?{}", kept.join("&"));
        }
        let mut config = tokio_postgres::Config::from_str(&driver_url)
            .map_err(|e| format!("cannot be read: {}", hide(&e.to_string())))?;
        if config.get_hosts().is_empty() {
            return Err("names no host".into());
        }
        if config.get_user().is_none() {
            return Err("names no user (postgres://USER@host/db)".into());
        }
        if config.get_dbname().is_none() {
            return Err("names no database (postgres://user@host/DATABASE)".into());
        }
        config.ssl_mode(match ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        if config.get_application_name().is_none() {
            config.application_name("kitebridge");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A dead peer (a cut network) is noticed in seconds, not at the kernel's two hours:
        // keepalives for an idle connection, a limit on unacknowledged data for a busy one.
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(10));
        // And the server ends what a replica left behind: a statement stuck on a lock is
        // cancelled before the replica's own 10 s limit (so the connection stays in step), and
        // a transaction left open by a frozen replica, holding a branch's lock, is rolled back.
        let given = config.get_options().unwrap_or_default().to_string();
        config.options(
            format!("{given} -c statement_timeout=8s -c idle_in_transaction_session_timeout=15s")
                .trim(),
        );
        // The shown form is built from what was read, never cut out of the URL, so no way of
        // writing the password can leave a piece of it in view.
        let shown = shown_url(scheme, &config, &shown_query);
        Ok(Self {
            config,
            ssl,
            root_cert,
            shown,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            lease: DEFAULT_LEASE,
        })
    }

    /// The password, to keep out of any text shown.
    pub fn password(&self) -> Option<String> {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }
}

/// `scheme://user@host:port,…/database?query`, from the settings read.
fn shown_url(scheme: &str, config: &tokio_postgres::Config, query: &[String]) -> String {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
                Host::Tcp(h) => h.clone(),
                Host::Unix(path) => path.display().to_string().replace('/', "%2F"),
            };
            // One port for all hosts, or one each.
            match ports.get(i).or(ports.first().filter(|_| ports.len() == 1)) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let mut shown = format!(
        "{scheme}://{}@{}/{}",
        config.get_user().unwrap_or_default(),
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    );
    if !query.is_empty() {
        shown = format!("{shown}?{}", query.join("&"));
    }
    shown
}

/// `text` with each of `secrets` (however short) replaced.
fn scrub_all(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "[redacted]");
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
        assert_eq!(o.config.get_password(), Some(&b"hunter22"[..]));
        assert_eq!(o.shown, "postgresql://kb@127.0.0.1:5432/kitebridge");
    }

    /// Passwords as people write them, percent-encoded or not: none leaves a piece in view.
    #[test]
    fn no_password_shows_however_it_is_written() {
        for (url, password) in [
            (
                "postgres://kb:pa/ss?w0rd@db/x?sslmode=disable",
                "pa/ss?w0rd",
            ),
            ("postgres://kb:p:q/r@db:6543/x", "p:q/r"),
            ("postgres://kb:p%40ss%2Fw@db/x", "p@ss/w"),
            ("postgres://kb:ab@db/x", "ab"),
            ("postgres://kb:x@[::1]:5433/alerts", "x"),
        ] {
            let o = PgOptions::parse(url, Path::new("")).unwrap();
            assert_eq!(o.password().as_deref(), Some(password), "{url}");
            let host = o.shown.split('@').nth(1).unwrap();
            assert!(!host.contains(password), "{url} shows {}", o.shown);
            assert!(o.shown.starts_with("postgres://kb@"), "{}", o.shown);
            if password.len() > 2 {
                assert!(!format!("{o:?}").contains(password), "{url}");
            }
        }
        let o = PgOptions::parse("postgres://kb:p:q/r@db:6543/x", Path::new("")).unwrap();
        assert_eq!(o.shown, "postgres://kb@db:6543/x");
        let o = PgOptions::parse("postgres://kb@[::1]:5433,b/x", Path::new("")).unwrap();
        assert_eq!(o.shown, "postgres://kb@[::1]:5433,b:5432/x");
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
            ("postgres://kb:s3cr3tpw@x@db/x", "more than one '@'"),
            ("postgres://kb:s3cr3tpw@db:port/x", "cannot be read"),
            (
                "postgres://kb:s3cr3tpw@db/x?sslmode=s3cr3tpw",
                "is not one of",
            ),
        ] {
            let e = PgOptions::parse(url, Path::new("")).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("s3cr3tpw"), "{url}: {e}");
        }
    }
}
