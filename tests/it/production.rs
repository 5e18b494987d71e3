//! Running it in production: metrics, hot reload, TLS, read timeouts, the request cap, trusted
//! proxies and Buildkite's published addresses.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn metrics_count_events_routes_deliveries_latency_and_the_queue() {
    let rec = Recorder::start().await;
    rec.script("teams", [Reply::RateLimited(1)]);
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    app.post_signed(&build_finished(1)).await;
    app.post_signed(&build_finished(1)).await; // a duplicate
    app.post(build_finished(2), &[("X-Buildkite-Token", "wrong".into())])
        .await;
    app.post_signed(b"[]").await;
    rec.wait_for("slack", 1).await;
    rec.wait_for("teams", 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text().await.unwrap();
    for line in [
        "kitebridge_events_received_total{event=\"build.finished\",verdict=\"accepted\"} 1",
        "kitebridge_events_received_total{event=\"build.finished\",verdict=\"duplicate\"} 1",
        "kitebridge_events_received_total{event=\"unknown\",verdict=\"unauthorised\"} 1",
        "kitebridge_events_received_total{event=\"unknown\",verdict=\"malformed\"} 1",
        "kitebridge_routes_matched_total{route=\"everything\"} 1",
        "kitebridge_deliveries_total{destination=\"slack\",outcome=\"sent\"} 1",
        "kitebridge_deliveries_total{destination=\"teams\",outcome=\"rate_limited\"} 1",
        "kitebridge_deliveries_total{destination=\"teams\",outcome=\"sent\"} 1",
        "kitebridge_delivery_duration_seconds_count{destination=\"slack\"} 1",
        "kitebridge_end_to_end_seconds_count{destination=\"teams\"} 1",
        "kitebridge_queue_depth{destination=\"slack\"} 0",
        "kitebridge_build_info{version=",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn the_queue_gauges_show_a_backlog_and_its_age() {
    let down = dead_address();
    let rec = Recorder::start().await;
    let toml = config_for(&rec, "").replace(&rec.url("slack"), &format!("http://{down}/slack"));
    let app = TestApp::spawn(&toml).await;
    for n in 1..=3 {
        app.post_signed(&build_finished(n)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = app.metrics().await;
    assert!(
        text.contains("kitebridge_queue_depth{destination=\"slack\"} 3"),
        "{text}"
    );
    let age = text
        .lines()
        .find(|l| {
            l.starts_with("kitebridge_queue_oldest_pending_age_seconds{destination=\"slack\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    assert!(age >= 1.0, "{age}");
    assert!(
        text.contains("kitebridge_deliveries_total{destination=\"slack\",outcome=\"retried\"}")
    );
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn reloadable(rec: &Recorder, dir: &std::path::Path, route_to: &str) -> String {
    format!(
        "[server]\nreload_token = \"reload-me\"\n[storage]\npath = \"{db}\"\n{base}",
        db = dir.join("k.db").display(),
        base = config_for(rec, "").replace(
            "to = [\"slack\", \"teams\"]",
            &format!("to = [\"{route_to}\"]")
        ),
    )
}

/// A reload whose `if` expression does not compile is refused with the column, and the
/// running routes, expression and all, keep working.
#[tokio::test]
async fn reload_refuses_a_broken_if_expression_and_keeps_the_old_one() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    let with_if = |expr: &str| {
        reloadable(&rec, dir.path(), "slack").replace(
            "to = [\"slack\"]",
            &format!("to = [\"slack\"]\nif = '{expr}'"),
        )
    };
    write(&cfg, &with_if("build.number != 2"));
    let app = TestApp::spawn_file(&cfg).await;
    for n in 1..=3 {
        app.post_signed(&build_finished(n)).await;
    }
    rec.wait_for("slack", 2).await;
    write(&cfg, &with_if("build.number != "));
    let (status, answer) = app.reload(Some("reload-me")).await;
    assert_eq!(status, 422, "{answer}");
    let problem = answer["problems"][0].as_str().unwrap();
    assert!(problem.contains("if: column 17"), "{answer}");
    app.post_signed(&build_finished(4)).await;
    rec.wait_for("slack", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let numbers: Vec<u64> = rec
        .received_on("slack")
        .iter()
        .filter_map(|r| build_number_in(r.json()["text"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        numbers,
        [1, 3, 4],
        "build 2 left out by the expression still running"
    );
}

#[tokio::test]
async fn reload_swaps_routes_rejects_a_bad_config_and_needs_its_token() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    write(&cfg, &reloadable(&rec, dir.path(), "slack"));
    let app = TestApp::spawn_file(&cfg).await;
    app.post_signed(&build_finished(1)).await;
    assert_eq!(rec.wait_for("slack", 1).await.len(), 1);

    write(&cfg, &reloadable(&rec, dir.path(), "teams"));
    assert_eq!(app.reload(None).await.0, 401);
    assert_eq!(app.reload(Some("nope")).await.0, 401);
    let (status, answer) = app.reload(Some("reload-me")).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("reloaded")),
        "{answer}"
    );
    app.post_signed(&build_finished(2)).await;
    assert_eq!(rec.wait_for("teams", 1).await.len(), 1, "the new route");
    assert_eq!(rec.received_on("slack").len(), 1, "not the old one");

    // A broken config is refused, with its problems; the running one stays.
    write(&cfg, &reloadable(&rec, dir.path(), "nowhere"));
    let (status, answer) = app.reload(Some("reload-me")).await;
    assert_eq!(status, 422);
    let problem = answer["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("unknown destination \"nowhere\""),
        "{answer}"
    );
    app.post_signed(&build_finished(3)).await;
    assert_eq!(
        rec.wait_for("teams", 2).await.len(),
        2,
        "still routed by the last good config"
    );

    let metrics = app.metrics().await;
    assert!(metrics.contains("kitebridge_config_reloads_total{result=\"applied\"} 1"));
    assert!(metrics.contains("kitebridge_config_reloads_total{result=\"rejected\"} 1"));
}

#[tokio::test]
async fn reload_is_off_without_a_token() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    assert_eq!(app.reload(Some("anything")).await.0, 404);
}

#[tokio::test]
async fn a_reload_loses_and_repeats_nothing_in_flight_or_queued() {
    let rec = Recorder::start().await;
    rec.script("slack", (0..5).map(|_| Reply::Slow(300)));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    let slack_only = reloadable(&rec, dir.path(), "slack");
    write(&cfg, &slack_only);
    let app = TestApp::spawn_file(&cfg).await;
    for n in 1..=5 {
        app.post_signed(&build_finished(n)).await;
    }
    rec.wait_for("slack", 1).await;
    // The Slack destination itself changes, so its worker is replaced mid-queue.
    write(
        &cfg,
        &slack_only.replace("kind = \"slack\"\n", "kind = \"slack\"\ntimeout = \"7s\"\n"),
    );
    assert_eq!(app.reload(Some("reload-me")).await.0, 200);
    let got = rec.wait_for("slack", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let numbers: Vec<u64> = rec
        .received_on("slack")
        .iter()
        .filter_map(|r| build_number_in(r.json()["text"].as_str()?))
        .collect();
    assert_eq!(got.len(), 5);
    assert_eq!(numbers, [1, 2, 3, 4, 5], "each once, in order");
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.toml");
    let text = |to: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}",
            reloadable(&rec, dir.path(), to).replace("[server]\n", "")
        )
    };
    write(&cfg, &text("slack"));
    let mut running = start_binary(&cfg).await;
    write(&cfg, &text("teams"));
    running.signal("HUP");
    assert!(
        running.wait_for_line("config reloaded").await.is_some(),
        "a 'config reloaded' log line"
    );
    let status = post_signed_to(running.addr, &build_finished(9))
        .await
        .unwrap();
    assert_eq!(status, 202);
    assert_eq!(rec.wait_for("teams", 1).await.len(), 1);
    assert!(rec.received_on("slack").is_empty());
}

#[tokio::test]
async fn tls_serves_https_with_the_configured_certificate() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let cfg = dir.path().join("k.toml");
    write(
        &cfg,
        &format!(
            "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[storage]\npath = \"k.db\"\n{}",
            config_for(&rec, "")
        ),
    );
    let app = TestApp::spawn_file(&cfg).await;
    kitebridge::crypto::install_provider();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", app.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/webhooks/buildkite", app.addr.port());
    let body = build_finished(1);
    let resp = client
        .post(&url)
        .header("X-Buildkite-Signature", signature(TOKEN, now(), &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(rec.wait_for("slack", 1).await.len(), 1);
    let plain = kitebridge::destination::client()
        .get(app.url("/healthz"))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "no plain HTTP on a TLS port"
    );

    // A broken key is refused by check, naming the file, never showing the key.
    std::fs::write(
        dir.path().join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = kitebridge::config::Config::load(&cfg)
        .unwrap_err()
        .problems
        .join("\n");
    assert!(err.contains("key.pem holds no PEM private key"), "{err}");
    assert!(!err.contains("c2VjcmV0"));
}

#[tokio::test]
async fn a_slow_client_cannot_hold_the_service() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rec = Recorder::start().await;
    let toml = format!("[server]\nread_timeout = \"1s\"\n{}", config_for(&rec, ""));
    let app = TestApp::spawn(&toml).await;
    // Headers that never finish.
    let mut slow_headers = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow_headers
        .write_all(b"POST /webhooks/buildkite HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // A body that never finishes.
    let body = build_finished(1);
    let mut slow_body = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /webhooks/buildkite HTTP/1.1\r\nHost: x\r\nX-Buildkite-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        signature(TOKEN, now(), &body),
        body.len()
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    slow_body.write_all(&body[..10]).await.unwrap();
    // Meanwhile others are served.
    assert_eq!(app.post_signed(&build_finished(2)).await.0, 202);
    let mut out = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), slow_headers.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the header-less connection is closed within the read timeout"
    );
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), slow_body.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn requests_beyond_the_cap_are_refused_at_once() {
    use tokio::io::AsyncWriteExt;
    let rec = Recorder::start().await;
    let toml = format!(
        "[server]\nmax_concurrent_requests = 2\nread_timeout = \"5s\"\n{}",
        config_for(&rec, "")
    );
    let app = TestApp::spawn(&toml).await;
    let body = build_finished(1);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /webhooks/buildkite HTTP/1.1\r\nHost: x\r\nX-Buildkite-Signature: {}\r\nContent-Length: {}\r\n\r\n",
            signature(TOKEN, now(), &body),
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, answer) = app.post_signed(&build_finished(2)).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("too many requests")
    );
    let (status, _) = app
        .post_to("/webhooks/test-engine/te-key-123", b"{}".to_vec(), &[])
        .await;
    assert_eq!(status, 503, "both webhook endpoints share the one cap");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "probes are outside the cap");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.post_signed(&build_finished(3)).await.0,
        202,
        "served again once they are gone"
    );
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let rec = Recorder::start().await;
    let from = |xff: &str| vec![("X-Forwarded-For", xff.to_string())];
    let body = fixture("ping");
    let signed = |extra: Vec<(&'static str, String)>| {
        let mut h = vec![("X-Buildkite-Signature", signature(TOKEN, now(), &body))];
        h.extend(extra);
        h
    };
    let trusted = TestApp::spawn(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n{}",
        config_for(&rec, "allowed_ips = [\"192.0.2.0/24\"]")
    ))
    .await;
    assert_eq!(
        trusted
            .post(body.clone(), &signed(from("192.0.2.7")))
            .await
            .0,
        200
    );
    assert_eq!(
        trusted
            .post(body.clone(), &signed(from("192.0.2.7, 203.0.113.1")))
            .await
            .0,
        403
    );
    assert_eq!(trusted.post(body.clone(), &signed(vec![])).await.0, 403);
    let untrusted = TestApp::spawn(&config_for(&rec, "allowed_ips = [\"192.0.2.0/24\"]")).await;
    assert_eq!(
        untrusted
            .post(body.clone(), &signed(from("192.0.2.7")))
            .await
            .0,
        403,
        "the header is not believed"
    );
}

#[tokio::test]
async fn buildkite_addresses_are_read_from_the_meta_api() {
    // A stand-in for api.buildkite.com/v2/meta.
    let meta = |ips: serde_json::Value| async move {
        let app = axum::Router::new().route(
            "/v2/meta",
            axum::routing::get(move || {
                let ips = ips.clone();
                async move { axum::Json(json!({ "webhook_ips": ips })) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/v2/meta")
    };
    let rec = Recorder::start().await;
    let body = fixture("ping");
    for (ips, want) in [
        (json!(["127.0.0.1", "192.0.2.0/24"]), 200),
        (json!(["192.0.2.1"]), 403),
    ] {
        let url = meta(ips).await;
        let app = TestApp::spawn(&config_for(
            &rec,
            &format!("allowed_ips = [\"buildkite\"]\nmeta_url = \"{url}\""),
        ))
        .await;
        let mut status = 0;
        for _ in 0..50 {
            status = app.post_signed(&body).await.0;
            if status == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, want);
    }
}
