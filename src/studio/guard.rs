//! Who may use the studio: only pages it served itself. A request must name the studio's own
//! address in `Host` (so a DNS name rebound to 127.0.0.1 cannot reach it), an `Origin` that is
//! present must be the studio's, and a write must carry the token the page was served with,
//! so a web page the user happens to visit can neither read templates nor write them.

use crate::auth::secret_eq;
use axum::http::HeaderMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// The header a write carries its token in.
pub const TOKEN_HEADER: &str = "x-kitebridge-token";

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` is not the studio's address.
    Host,
    /// `Origin` (or `Sec-Fetch-Site`) says another site sent it.
    Origin,
    /// A write without the right token.
    Token,
}

impl Refusal {
    /// What the answer says.
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::Host => "the Host header does not name the studio's address",
            Refusal::Origin => "requests from other origins are refused",
            Refusal::Token => {
                "a write needs the token of the page the studio served (X-Kitebridge-Token)"
            }
        }
    }
}

/// Requests refused since the studio started, by reason (in `/api/info`, so a user can see
/// that a page tried).
#[derive(Debug, Default)]
pub struct Refused {
    host: AtomicU64,
    origin: AtomicU64,
    token: AtomicU64,
}

impl Refused {
    pub fn count(&self, refusal: &Refusal) {
        let counter = match refusal {
            Refusal::Host => &self.host,
            Refusal::Origin => &self.origin,
            Refusal::Token => &self.token,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> serde_json::Value {
        serde_json::json!({
            "host": self.host.load(Ordering::Relaxed),
            "origin": self.origin.load(Ordering::Relaxed),
            "token": self.token.load(Ordering::Relaxed),
        })
    }
}

/// The `Host` values that name `addr`: the address itself, and `localhost` when it is a
/// loopback address.
pub fn hosts(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![addr.to_string()];
    if addr.ip().is_loopback() {
        hosts.push(format!("localhost:{port}"));
        hosts.push(format!("127.0.0.1:{port}"));
        hosts.push(format!("[::1]:{port}"));
    }
    hosts
}

/// Checks one request; `writes` says whether it changes something or sends.
pub fn check(
    headers: &HeaderMap,
    writes: bool,
    hosts: &[String],
    token: &str,
) -> Result<(), Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("host").ok_or(Refusal::Host)?;
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(Refusal::Host);
    }
    if let Some(origin) = header("origin")
        && !origin.eq_ignore_ascii_case(&format!("http://{host}"))
    {
        return Err(Refusal::Origin);
    }
    if header("sec-fetch-site").is_some_and(|s| s == "cross-site" || s == "same-site") {
        return Err(Refusal::Origin);
    }
    if writes && !header(TOKEN_HEADER).is_some_and(|t| secret_eq(token, t)) {
        return Err(Refusal::Token);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_studios_own_pages_get_in() {
        let hosts = hosts("127.0.0.1:8687".parse().unwrap());
        let get = |pairs: &[(&'static str, &str)]| check(&headers(pairs), false, &hosts, "tok");
        assert_eq!(get(&[("host", "127.0.0.1:8687")]), Ok(()));
        assert_eq!(
            get(&[
                ("host", "localhost:8687"),
                ("origin", "http://localhost:8687")
            ]),
            Ok(())
        );
        assert_eq!(get(&[("host", "evil.example:8687")]), Err(Refusal::Host));
        assert_eq!(get(&[]), Err(Refusal::Host));
        assert_eq!(
            get(&[
                ("host", "127.0.0.1:8687"),
                ("origin", "https://evil.example")
            ]),
            Err(Refusal::Origin)
        );
        assert_eq!(
            get(&[("host", "127.0.0.1:8687"), ("sec-fetch-site", "cross-site")]),
            Err(Refusal::Origin)
        );
        let put = |pairs: &[(&'static str, &str)]| check(&headers(pairs), true, &hosts, "tok");
        assert_eq!(put(&[("host", "127.0.0.1:8687")]), Err(Refusal::Token));
        assert_eq!(
            put(&[("host", "127.0.0.1:8687"), (TOKEN_HEADER, "nope")]),
            Err(Refusal::Token)
        );
        assert_eq!(
            put(&[("host", "127.0.0.1:8687"), (TOKEN_HEADER, "tok")]),
            Ok(())
        );
    }
}
