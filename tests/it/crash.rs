//! `kill -9` at any moment loses no accepted event.

use crate::helpers::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test]
async fn every_event_answered_2xx_arrives_after_a_kill_9_and_restart() {
    let down = dead_address();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[buildkite]
token = "{TOKEN}"
mode = "signature"

[storage]
path = "k.db"

[delivery]
backoff_initial = "50ms"
backoff_max = "300ms"
allowed_hosts = ["127.0.0.1"]

[destinations.slack]
kind = "slack"
url = "http://{down}/slack"
rate = 0

[[routes]]
name = "all"
to = ["slack"]
"#
        ),
    )
    .unwrap();

    // Send 300 unique, signed events, 8 at a time, while the destination is down, and kill
    // the service with SIGKILL part-way through.
    let first = start_binary(&cfg).await;
    let url = format!("http://{}/webhooks/buildkite", first.addr);
    let client = kitebridge::destination::client();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let sender = tokio::spawn({
        let client = client.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for n in 1..=300u64 {
                while tasks.len() >= 8 {
                    tasks.join_next().await;
                }
                let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
                tasks.spawn(async move {
                    let mut v = fixture_json("build.finished");
                    v["build"]["number"] = json!(n);
                    let body = serde_json::to_vec(&v).unwrap();
                    let sent = client
                        .post(&url)
                        .header("X-Buildkite-Signature", signature(TOKEN, now(), &body))
                        .body(body)
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        let _ = tx.send(n);
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    });
    let mut accepted = BTreeSet::new();
    while accepted.len() < 120 {
        accepted.insert(rx.recv().await.expect("events are accepted"));
    }
    let mut first = first;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    sender.await.unwrap();
    while let Ok(n) = rx.try_recv() {
        accepted.insert(n);
    }
    assert!(
        accepted.len() >= 120 && accepted.len() < 300,
        "killed part-way: {} accepted",
        accepted.len()
    );

    // The destination comes back, and so does the service, on the same store.
    let rec = Recorder::start_on(down).await;
    let _second = start_binary(&cfg).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let arrived = loop {
        let numbers: BTreeSet<u64> = rec
            .received_on("slack")
            .iter()
            .filter_map(|r| build_number_in(r.json()["text"].as_str()?))
            .collect();
        if accepted.is_subset(&numbers) || tokio::time::Instant::now() > deadline {
            break numbers;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "accepted before the kill: {}, arrived after restart: {} distinct",
        accepted.len(),
        arrived.len()
    );
    let lost: Vec<_> = accepted.difference(&arrived).collect();
    assert!(
        lost.is_empty(),
        "{} of {} accepted events lost: {lost:?}",
        lost.len(),
        accepted.len()
    );
}
