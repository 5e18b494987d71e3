//! Who is calling and what they sent: the client's address (behind trusted proxies), the
//! address allow-list, single-valued headers, and the body read with a size and time limit.

use super::IngressError;
use crate::config::{Config, ServerConfig};
use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use bytes::Bytes;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The value of a header that may appear at most once; `Err` names the header.
pub(super) fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, &'static str> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(name);
    }
    first.to_str().map(Some).map_err(|_| name)
}

/// The client's address: the TCP peer, or, when the peer is one of `trusted_proxies`, the
/// nearest `X-Forwarded-For` entry that is not a trusted proxy itself. A header from anyone
/// else is ignored, so it cannot be used to pass the allow-list.
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !trusted(ip))
            .unwrap_or(peer),
    )
}

/// The TCP peer of a request.
pub(super) fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip().to_canonical())
}

/// Whether `ip` may call: anyone when no allow-list is set, else an address in
/// `allowed_ips` or, with `"buildkite"` among them, in Buildkite's published list.
pub(super) fn check_address(
    config: &Config,
    buildkite: &[IpNet],
    ip: Option<IpAddr>,
) -> Result<(), IngressError> {
    if config.allowed_ips.is_empty() && !config.allow_buildkite_ips {
        return Ok(());
    }
    let ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let listed = |nets: &[IpNet]| nets.iter().any(|net| net.contains(&ip));
    if listed(&config.allowed_ips) || (config.allow_buildkite_ips && listed(buildkite)) {
        Ok(())
    } else {
        Err(IngressError::Forbidden(ip))
    }
}

/// Reads the body, refusing more than `max_body_bytes` or a body slower than `read_timeout`.
pub(super) async fn read_body(req: Request, server: &ServerConfig) -> Result<Bytes, IngressError> {
    let (limit, timeout) = (server.max_body_bytes, server.read_timeout);
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngressError::TooLarge(limit));
    }
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), limit));
    match read.await {
        Err(_) => Err(IngressError::SlowBody(timeout)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(IngressError::TooLarge(limit))
            } else {
                Err(IngressError::BadRequest(
                    "could not read the request body".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let cases = [
            // An untrusted peer's header is ignored.
            (ip("203.0.113.9"), vec!["192.0.2.1"], ip("203.0.113.9")),
            // Through one trusted proxy.
            (ip("10.0.0.2"), vec!["192.0.2.1"], ip("192.0.2.1")),
            // A forged entry on the left is skipped: the nearest untrusted hop counts.
            (
                ip("10.0.0.2"),
                vec!["1.1.1.1, 192.0.2.1, 10.0.0.7"],
                ip("192.0.2.1"),
            ),
            (
                ip("10.0.0.2"),
                vec!["1.1.1.1", "192.0.2.1"],
                ip("192.0.2.1"),
            ),
            // A proxy without the header, or with garbage: the proxy itself.
            (ip("10.0.0.2"), vec![], ip("10.0.0.2")),
            (ip("10.0.0.2"), vec!["not-an-ip"], ip("10.0.0.2")),
            (ip("::ffff:10.0.0.2"), vec!["192.0.2.1"], ip("192.0.2.1")),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(
                client_ip(peer, &headers(&xff), &proxies),
                want,
                "{peer:?} {xff:?}"
            );
        }
    }
}
