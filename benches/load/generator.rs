//! The load generator: unique, individually signed `build.finished` and `job.finished` bodies
//! (about 3 KB, from the fixtures), sent closed loop (as fast as answers come) or open loop (on
//! a fixed schedule, latency measured from the scheduled time, so a slow answer cannot hide
//! the requests queued behind it).

use kitebridge::auth::sign;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Makes request bodies.
pub struct Bodies {
    templates: [Vec<u8>; 2],
}

/// The placeholder build number written into the templates, replaced by each request's id.
const PLACEHOLDER: &str = "9999999999";

impl Bodies {
    pub fn new() -> Self {
        let load = |text: &str| {
            let mut v: Value = serde_json::from_str(text).unwrap();
            v["build"]["number"] = json!(PLACEHOLDER.parse::<u64>().unwrap());
            serde_json::to_vec(&v).unwrap()
        };
        Self {
            templates: [
                load(include_str!(
                    "../../tests/fixtures/buildkite/build.finished.json"
                )),
                load(include_str!(
                    "../../tests/fixtures/buildkite/job.finished.json"
                )),
            ],
        }
    }

    /// The body for request `id` (alternating build and job events) and its signature header.
    pub fn body(&self, id: u64, token: &str) -> (Vec<u8>, String) {
        let template = &self.templates[(id % 2) as usize];
        let text = std::str::from_utf8(template).unwrap();
        // Ten digits, no leading zero: the JSON stays valid and every body the same size.
        let body = text
            .replacen(PLACEHOLDER, &(1_000_000_000 + id).to_string(), 1)
            .into_bytes();
        let header = sign(token, chrono::Utc::now().timestamp(), &body);
        (body, header)
    }

    /// A body's size.
    pub fn size(&self) -> usize {
        self.templates[0].len()
    }
}

/// What a run measured.
#[derive(Default)]
pub struct Run {
    pub accepted: u64,
    pub refused: u64,
    pub elapsed: Duration,
    /// (id, scheduled time, answer latency) of accepted requests.
    pub answers: Vec<(u64, Instant, Duration)>,
}

fn client() -> reqwest::Client {
    kitebridge::destination::client()
}

/// Sends `total` requests over `connections` connections, each as soon as the last answered;
/// request `id` goes to `urls[id % urls.len()]` (replicas behind a balancer).
pub async fn closed_loop(
    urls: &[String],
    bodies: Arc<Bodies>,
    token: &str,
    first_id: u64,
    total: u64,
    connections: usize,
) -> Run {
    let next = Arc::new(AtomicU64::new(first_id));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let client = client();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (next, accepted, refused, client, bodies) = (
            next.clone(),
            accepted.clone(),
            refused.clone(),
            client.clone(),
            bodies.clone(),
        );
        let (urls, token) = (urls.to_vec(), token.to_string());
        tasks.spawn(async move {
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= first_id + total {
                    return;
                }
                let (body, header) = bodies.body(id, &token);
                let url = &urls[(id % urls.len() as u64) as usize];
                let ok = send(&client, url, body, header).await;
                if ok { &accepted } else { &refused }.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Run {
        accepted: accepted.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        answers: Vec::new(),
    }
}

/// Sends `rate` requests a second for `duration`, each at its scheduled time whatever the
/// answers to the earlier ones; spread over `urls` as [`closed_loop`] does.
pub async fn open_loop(
    urls: &[String],
    bodies: Arc<Bodies>,
    token: &str,
    first_id: u64,
    rate: u64,
    duration: Duration,
) -> Run {
    let total = rate * duration.as_secs();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let client = client();
    // Bodies are made before the clock starts, so making them is not measured.
    let prepared: Vec<(u64, Vec<u8>, String)> = (0..total)
        .map(|i| {
            let id = first_id + i;
            let (b, h) = bodies.body(id, token);
            (id, b, h)
        })
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (id, body, header)) in prepared.into_iter().enumerate() {
        let at = started + interval * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let (client, url) = (
            client.clone(),
            urls[(id % urls.len() as u64) as usize].clone(),
        );
        tasks.spawn(async move {
            let ok = send(&client, &url, body, header).await;
            (id, at, at.elapsed(), ok)
        });
    }
    let mut run = Run::default();
    while let Some(done) = tasks.join_next().await {
        let (id, at, latency, ok) = done.unwrap();
        if ok {
            run.accepted += 1;
            run.answers.push((id, at, latency));
        } else {
            run.refused += 1;
        }
    }
    run.elapsed = started.elapsed();
    run
}

/// The `q` quantile of `values` (sorted in place).
pub fn quantile(values: &mut [Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[i]
}

/// Posts one signed body; true when it was accepted (2xx).
async fn send(client: &reqwest::Client, url: &str, body: Vec<u8>, signature: String) -> bool {
    client
        .post(url)
        .header("X-Buildkite-Signature", signature)
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}
