//! What an operator relies on day to day: the command line over the queue, metrics for refused
//! and failed requests, timeouts, reloading templates, and stopping or killing the service.

use crate::helpers::*;
use kitebridge::store::{DeliveryState, Operations};
use serde_json::json;
use std::time::Duration;

/// A signed request with `X-Buildkite-Event` and `X-Forwarded-For` headers.
fn signed_from(body: &[u8], event: &str, from: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-Buildkite-Signature", signature(TOKEN, now(), body)),
        ("X-Buildkite-Event", event.into()),
        ("X-Forwarded-For", from.into()),
    ]
}

#[tokio::test]
async fn refused_requests_and_failed_deliveries_show_in_the_metrics() {
    let rec = Recorder::start().await;
    rec.script("slack", [Reply::Status(404, "channel_not_found")]);
    let toml = format!(
        "[server]\nmax_body_bytes = 8192\ntrusted_proxies = [\"127.0.0.1\"]\n{}",
        config_for(&rec, "allowed_ips = [\"192.0.2.0/24\"]")
    );
    let app = TestApp::spawn(&toml).await;
    let ok = build_finished(1);
    let (status, _) = app
        .post(ok.clone(), &signed_from(&ok, "build.finished", "192.0.2.5"))
        .await;
    assert_eq!(status, 202);
    let elsewhere = build_finished(2);
    let (status, _) = app
        .post(
            elsewhere.clone(),
            &signed_from(&elsewhere, "build.finished", "203.0.113.9"),
        )
        .await;
    assert_eq!(status, 403);
    let mut big = fixture_json("job.finished");
    big["build"]["message"] = json!("x".repeat(20_000));
    let big = serde_json::to_vec(&big).unwrap();
    let (status, _) = app
        .post(big.clone(), &signed_from(&big, "job.finished", "192.0.2.5"))
        .await;
    assert_eq!(status, 413);
    for event in ["agent.lost", "made.up"] {
        let headers = [
            ("X-Buildkite-Token", "wrong".to_string()),
            ("X-Buildkite-Event", event.to_string()),
            ("X-Forwarded-For", "192.0.2.5".to_string()),
        ];
        assert_eq!(app.post(build_finished(3), &headers).await.0, 401);
    }
    wait_for_deliveries(&app.db, |d| {
        d.iter().any(|d| d.state == DeliveryState::Dead)
            && d.iter().any(|d| d.state == DeliveryState::Sent)
    })
    .await;
    let text = app.metrics().await;
    for line in [
        "kitebridge_events_received_total{event=\"build.finished\",verdict=\"accepted\"} 1",
        "kitebridge_events_received_total{event=\"build.finished\",verdict=\"forbidden\"} 1",
        "kitebridge_events_received_total{event=\"job.finished\",verdict=\"too_large\"} 1",
        "kitebridge_events_received_total{event=\"agent.lost\",verdict=\"unauthorised\"} 1",
        "kitebridge_events_received_total{event=\"other\",verdict=\"unauthorised\"} 1",
        "kitebridge_deliveries_total{destination=\"slack\",outcome=\"permanent\"} 1",
        "kitebridge_deliveries_total{destination=\"slack\",outcome=\"dead\"} 1",
        "kitebridge_deliveries_total{destination=\"teams\",outcome=\"sent\"} 1",
        "kitebridge_dead_letters{destination=\"slack\"} 1",
        "kitebridge_queue_depth{destination=\"slack\"} 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn deliveries_list_filters_by_state_and_limit_and_retry_all_dead_resends_them() {
    let rec = Recorder::start().await;
    rec.script(
        "slack",
        (0..3).map(|_| Reply::Status(404, "channel_not_found")),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        with_store(&config_for(&rec, ""), &dir.path().join("k.db")),
    )
    .unwrap();
    let app = TestApp::spawn_file(&cfg).await;
    for n in 1..=3 {
        assert_eq!(app.post_signed(&build_finished(n)).await.0, 202);
    }
    wait_for_deliveries(&app.db, |d| {
        d.len() == 6 && d.iter().all(|d| d.state != DeliveryState::Pending)
    })
    .await;
    let cfg = cfg.to_str().unwrap();
    let rows = |out: &str, state: &str| {
        out.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(state))
            .count()
    };

    let dead = run_ok(&["deliveries", "list", "--state", "dead", "--config", cfg]).await;
    assert_eq!(rows(&dead, "dead"), 3, "{dead}");
    assert!(dead.contains("channel_not_found"), "{dead}");
    let two = run_ok(&[
        "deliveries",
        "list",
        "--state",
        "dead",
        "--limit",
        "2",
        "--config",
        cfg,
    ])
    .await;
    assert_eq!(rows(&two, "dead"), 2, "{two}");
    let sent = run_ok(&["deliveries", "list", "--state", "sent", "--config", cfg]).await;
    assert_eq!(rows(&sent, "sent"), 3, "{sent}");
    assert!(sent.lines().skip(1).all(|l| l.contains("teams")), "{sent}");
    let pending = run_ok(&["deliveries", "list", "--state", "pending", "--config", cfg]).await;
    assert_eq!(pending.trim(), "no deliveries in state pending");
    let all = run_ok(&["deliveries", "list", "--config", cfg]).await;
    assert_eq!(rows(&all, "dead") + rows(&all, "sent"), 6, "{all}");

    // The channel is fixed (the recorder answers 200 now): every dead letter goes again.
    let retried = run_ok(&["deliveries", "retry", "--all-dead", "--config", cfg]).await;
    assert!(retried.contains("re-queued 3 deliveries"), "{retried}");
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter().all(|d| d.state == DeliveryState::Sent)
    })
    .await;
    assert_eq!(all.len(), 6);
    assert_eq!(rec.received_on("slack").len(), 6, "3 refused, 3 resent");
    let again = run_ok(&["deliveries", "retry", "--all-dead", "--config", cfg]).await;
    assert_eq!(again.trim(), "no dead letters to retry");
}

#[tokio::test]
async fn a_destination_that_does_not_answer_in_time_is_tried_again() {
    let rec = Recorder::start().await;
    rec.script("slack", [Reply::Hang]);
    let toml = config_for(&rec, "").replace(
        "kind = \"slack\"\n",
        "kind = \"slack\"\ntimeout = \"300ms\"\n",
    );
    let app = TestApp::spawn(&toml).await;
    assert_eq!(app.post_signed(&build_finished(1)).await.0, 202);
    let got = rec.wait_for("slack", 2).await;
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(300),
        "the second try only after the first timed out"
    );
    assert_eq!(got[0].body, got[1].body);
    let all = wait_for_deliveries(&app.db, |d| {
        d.iter().all(|d| d.state == DeliveryState::Sent)
    })
    .await;
    let slack = all.iter().find(|d| d.destination == "slack").unwrap();
    let (_, attempts) = open_store(&app.db).show(slack.id).await.unwrap();
    let tries: Vec<(&str, Option<&str>)> = attempts
        .iter()
        .map(|a| (a.outcome.as_str(), a.reason.as_deref()))
        .collect();
    assert_eq!(
        tries,
        [("retry", Some("no answer within 300ms")), ("sent", None)]
    );
}

#[tokio::test]
async fn a_reload_reads_the_templates_again_and_keeps_them_when_one_breaks() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("templates/slack/build.hbs");
    std::fs::create_dir_all(template.parent().unwrap()).unwrap();
    std::fs::write(&template, "{\"text\": \"first #{{build.number}}\"}").unwrap();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nreload_token = \"reload-me\"\n[storage]\npath = \"k.db\"\n[templates]\ndir = \"templates\"\n{}",
            config_for(&rec, "")
        ),
    )
    .unwrap();
    let app = TestApp::spawn_file(&cfg).await;
    let reload = async || app.reload(Some("reload-me")).await.0;
    app.post_signed(&build_finished(1)).await;
    assert_eq!(rec.wait_for("slack", 1).await[0].json()["text"], "first #1");

    std::fs::write(&template, "{\"text\": \"second #{{build.number}}\"}").unwrap();
    assert_eq!(reload().await, 200);
    app.post_signed(&build_finished(2)).await;
    assert_eq!(
        rec.wait_for("slack", 2).await[1].json()["text"],
        "second #2"
    );

    std::fs::write(&template, "{\"text\": \"{{#if}}\"}").unwrap();
    assert_eq!(reload().await, 422, "a template that does not compile");
    app.post_signed(&build_finished(3)).await;
    assert_eq!(
        rec.wait_for("slack", 3).await[2].json()["text"],
        "second #3",
        "the last good templates stay"
    );
}

/// The config file of a binary test: listens on a random port, keeps its store beside it.
fn binary_config(rec: &Recorder, dir: &std::path::Path, routes: &str) -> std::path::PathBuf {
    let cfg = dir.join("k.toml");
    let base = config_for(rec, "");
    let base = &base[..base.find("[[routes]]").unwrap()];
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"k.db\"\n{base}{routes}"),
    )
    .unwrap();
    cfg
}

#[tokio::test]
async fn a_bad_config_sent_by_sighup_is_refused_and_the_old_one_keeps_running() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(
        &rec,
        dir.path(),
        "[[routes]]\nname = \"all\"\nto = [\"slack\"]\n",
    );
    let mut running = start_binary(&cfg).await;
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("to = [\"slack\"]", "to = [\"nowhere\"]")).unwrap();
    running.signal("HUP");
    let refused = running
        .wait_for_line("config reload refused")
        .await
        .expect("a log line saying the reload was refused");
    assert!(refused.contains("unknown destination"), "{refused}");
    assert_eq!(
        post_signed_to(running.addr, &build_finished(1))
            .await
            .unwrap(),
        202
    );
    assert_eq!(
        rec.wait_for("slack", 1).await.len(),
        1,
        "still routed by the running config"
    );
}

#[tokio::test]
async fn shutdown_stops_taking_requests_and_finishes_the_send_in_flight() {
    let rec = Recorder::start().await;
    rec.script("slack", [Reply::Slow(1500)]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(
        &rec,
        dir.path(),
        "[[routes]]\nname = \"all\"\nto = [\"slack\"]\n",
    );
    let mut running = start_binary(&cfg).await;
    assert_eq!(
        post_signed_to(running.addr, &build_finished(1))
            .await
            .unwrap(),
        202
    );
    rec.wait_for("slack", 1).await;
    running.signal("TERM");
    running
        .wait_for_line("shutting down")
        .await
        .expect("a log line saying it is shutting down");
    assert!(
        post_signed_to(running.addr, &build_finished(2))
            .await
            .is_err(),
        "no new request is taken once shutdown has begun"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), running.child.wait())
        .await
        .expect("it exits within the deadline")
        .unwrap();
    assert!(status.success(), "{status}");
    let all = deliveries(&dir.path().join("k.db")).await;
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].state,
        DeliveryState::Sent,
        "the send in flight ended"
    );
}

#[tokio::test]
async fn a_digest_survives_a_kill_9_inside_its_window() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(
        &rec,
        dir.path(),
        "[[routes]]\nname = \"failed jobs\"\nevents = [\"job.finished\"]\nto = [\"slack\"]\n\
         group_window = \"6s\"\ngroup_by = [\"build.id\"]\n",
    );
    let mut running = start_binary(&cfg).await;
    for n in 1..=3 {
        assert_eq!(
            post_signed_to(running.addr, &failed_job(n)).await.unwrap(),
            202
        );
    }
    running.child.start_kill().unwrap();
    running.child.wait().await.unwrap();
    let running = start_binary(&cfg).await;
    for n in 4..=5 {
        assert_eq!(
            post_signed_to(running.addr, &failed_job(n)).await.unwrap(),
            202
        );
    }
    assert_one_digest_of_five_shards(&rec).await;
}

#[tokio::test]
async fn requests_arriving_during_reloads_are_each_accepted_and_sent_once() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    let text = |timeout: &str| {
        format!(
            "[server]\nreload_token = \"reload-me\"\n[storage]\npath = \"k.db\"\n{}",
            config_for(&rec, "").replace(
                "kind = \"slack\"\n",
                &format!("kind = \"slack\"\ntimeout = \"{timeout}\"\n")
            )
        )
    };
    std::fs::write(&cfg, text("5s")).unwrap();
    let app = std::sync::Arc::new(TestApp::spawn_file(&cfg).await);
    let posts: Vec<_> = (1..=60)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move { app.post_signed(&build_finished(n)).await.0 })
        })
        .collect();
    // Reload (each time changing the Slack destination, so its worker is replaced) while the
    // requests above are arriving.
    for i in 0..5 {
        std::fs::write(&cfg, text(&format!("{}s", 6 + i))).unwrap();
        assert_eq!(app.reload(Some("reload-me")).await.0, 200);
    }
    for p in posts {
        assert_eq!(p.await.unwrap(), 202);
    }
    let got = rec.wait_for("slack", 60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut numbers: Vec<u64> = rec
        .received_on("slack")
        .iter()
        .filter_map(|r| build_number_in(r.json()["text"].as_str()?))
        .collect();
    numbers.sort_unstable();
    assert_eq!(got.len(), 60);
    assert_eq!(numbers, (1..=60).collect::<Vec<_>>(), "each once");
    assert_eq!(rec.wait_for("teams", 60).await.len(), 60);
}
