//! Buildkite's published webhook addresses (`allowed_ips = ["buildkite"]`): read from its meta
//! API at start and once a day, keeping the last good list when a refresh fails.

use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the list is refreshed.
const REFRESH: Duration = Duration::from_secs(24 * 3600);
/// How soon to try again while no list has been read yet.
const FIRST_RETRY: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct Meta {
    webhook_ips: Vec<String>,
}

/// Parses the meta API's answer: CIDRs or bare addresses.
pub fn parse(body: &[u8]) -> Result<Vec<IpNet>, String> {
    let meta: Meta =
        serde_json::from_slice(body).map_err(|e| format!("not the expected JSON: {e}"))?;
    let nets: Vec<IpNet> = meta
        .webhook_ips
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an address or CIDR"))
        })
        .collect::<Result<_, _>>()?;
    if nets.is_empty() {
        return Err("webhook_ips is empty".into());
    }
    Ok(nets)
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<IpNet>, String> {
    let answer = client
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !answer.status().is_success() {
        return Err(format!("HTTP {}", answer.status().as_u16()));
    }
    parse(
        &answer
            .bytes()
            .await
            .map_err(|e| e.without_url().to_string())?,
    )
}

/// Keeps `list` filled from `url` until `stop`.
pub async fn keep_fresh(
    client: reqwest::Client,
    url: String,
    list: Arc<ArcSwap<Vec<IpNet>>>,
    stop: CancellationToken,
) {
    loop {
        let wait = match fetch(&client, &url).await {
            Ok(nets) => {
                tracing::info!(addresses = nets.len(), "read Buildkite's webhook addresses");
                list.store(Arc::new(nets));
                REFRESH
            }
            Err(e) if list.load().is_empty() => {
                tracing::error!(error = %e, "cannot read Buildkite's webhook addresses; requests that need them are refused until they are read");
                FIRST_RETRY
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh Buildkite's webhook addresses; keeping the last list");
                REFRESH
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        let nets =
            parse(br#"{"webhook_ips": ["100.24.182.113", "35.172.45.249/32", "2001:db8::/32"]}"#)
                .unwrap();
        assert_eq!(nets.len(), 3);
        assert!(nets[0].contains(&"100.24.182.113".parse::<IpAddr>().unwrap()));
        assert!(parse(br#"{"webhook_ips": ["nope"]}"#).is_err());
        assert!(parse(br#"{"webhook_ips": []}"#).is_err());
        assert!(parse(b"<html>").is_err());
    }
}
