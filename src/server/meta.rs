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
/// How soon to try again while no list has been read yet (sooner if refreshes are sooner).
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

/// Keeps `list` filled from `url` until `stop`, refreshing it daily.
pub async fn keep_fresh(
    client: reqwest::Client,
    url: String,
    list: Arc<ArcSwap<Vec<IpNet>>>,
    stop: CancellationToken,
) {
    keep_fresh_every(client, url, list, REFRESH, stop).await;
}

/// Keeps `list` filled from `url` until `stop`, refreshing it every `refresh`.
async fn keep_fresh_every(
    client: reqwest::Client,
    url: String,
    list: Arc<ArcSwap<Vec<IpNet>>>,
    refresh: Duration,
    stop: CancellationToken,
) {
    loop {
        let wait = match fetch(&client, &url).await {
            Ok(nets) => {
                tracing::info!(addresses = nets.len(), "read Buildkite's webhook addresses");
                list.store(Arc::new(nets));
                refresh
            }
            Err(e) if list.load().is_empty() => {
                tracing::error!(error = %e, "cannot read Buildkite's webhook addresses; requests that need them are refused until they are read");
                FIRST_RETRY.min(refresh)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh Buildkite's webhook addresses; keeping the last list");
                refresh
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
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use std::sync::Mutex;

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

    /// What the fake meta API saw: the list in force when each request arrived.
    #[derive(Clone)]
    struct Fake {
        list: Arc<ArcSwap<Vec<IpNet>>>,
        seen: Arc<Mutex<Vec<Arc<Vec<IpNet>>>>>,
    }

    /// Answers a list, then HTTP 500, then a body that is not JSON, then another list.
    async fn answer(State(fake): State<Fake>) -> (StatusCode, &'static str) {
        let n = {
            let mut seen = fake.seen.lock().unwrap();
            seen.push(fake.list.load_full());
            seen.len() - 1
        };
        match n {
            0 => (
                StatusCode::OK,
                r#"{"webhook_ips": ["100.24.182.113", "35.172.45.249/32"]}"#,
            ),
            1 => (StatusCode::INTERNAL_SERVER_ERROR, "oops"),
            2 => (StatusCode::OK, "<html>maintenance</html>"),
            _ => (StatusCode::OK, r#"{"webhook_ips": ["54.81.0.0/16"]}"#),
        }
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_list_until_a_good_one_replaces_it() {
        let list = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let fake = Fake {
            list: list.clone(),
            seen: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/meta", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/meta", get(answer))
            .with_state(fake.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let stop = CancellationToken::new();
        let refresher = tokio::spawn(keep_fresh_every(
            crate::destination::client(),
            url,
            list.clone(),
            Duration::from_millis(50),
            stop.clone(),
        ));

        // The loop fetches one request at a time, so the list in force when request n arrives
        // is what the answer to request n - 1 left.
        tokio::time::timeout(Duration::from_secs(10), async {
            while fake.seen.lock().unwrap().len() < 5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("five requests within 10 s");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), refresher)
            .await
            .expect("the loop ends when stopped")
            .unwrap();
        server.abort();

        let first = nets(&["100.24.182.113/32", "35.172.45.249/32"]);
        let second = nets(&["54.81.0.0/16"]);
        let seen: Vec<Vec<IpNet>> = fake.seen.lock().unwrap()[..5]
            .iter()
            .map(|l| l.to_vec())
            .collect();
        assert_eq!(seen[0], [], "nothing before the first answer");
        assert_eq!(seen[1], first, "the first list is loaded");
        assert_eq!(seen[2], first, "kept after HTTP 500");
        assert_eq!(seen[3], first, "kept after an answer that is not JSON");
        assert_eq!(seen[4], second, "replaced by the next good list");
        assert_eq!(*list.load_full(), second);
        assert!(
            list.load()
                .iter()
                .any(|n| n.contains(&"54.81.2.3".parse::<IpAddr>().unwrap()))
        );
    }
}
