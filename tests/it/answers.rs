//! Every answer of the HTTP contract.

use crate::helpers::*;

async fn app() -> (TestApp, Recorder) {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "")).await;
    (app, rec)
}

fn ping() -> Vec<u8> {
    fixture("ping")
}

#[tokio::test]
async fn health_and_readiness_answer_200() {
    let (app, _) = app().await;
    for path in ["/healthz", "/readyz"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn signed_ping_answers_200_and_other_events_202() {
    let (app, _) = app().await;
    let (status, body) = app.post_signed(&ping()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.post_signed(&fixture("build.finished")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["event"], "build.finished");
    assert_eq!(body["routes"][0], "everything");
    assert_eq!(body["deliveries"], 2);
}

#[tokio::test]
async fn plain_token_is_accepted_in_auto_mode() {
    let (app, _) = app().await;
    let (status, _) = app
        .post(ping(), &[("X-Buildkite-Token", TOKEN.into())])
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn auth_failures_answer_401_saying_which_check_failed() {
    let (app, _) = app().await;
    let body = fixture("build.finished");
    // Well past the 300 s tolerance: the clock may tick on before the server checks them.
    let stale = signature(TOKEN, now() - 330, &body);
    let future = signature(TOKEN, now() + 330, &body);
    let wrong_key = signature("not-the-token", now(), &body);
    let other_body = signature(TOKEN, now(), b"{\"event\":\"ping\"}");
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "missing X-Buildkite-Signature or X-Buildkite-Token"),
        (
            vec![("X-Buildkite-Token", "nope".into())],
            "token does not match",
        ),
        (
            vec![("X-Buildkite-Signature", stale)],
            "outside the replay window",
        ),
        (
            vec![("X-Buildkite-Signature", future)],
            "outside the replay window",
        ),
        (
            vec![("X-Buildkite-Signature", wrong_key)],
            "signature does not match",
        ),
        (
            vec![("X-Buildkite-Signature", other_body)],
            "signature does not match",
        ),
        (
            vec![("X-Buildkite-Signature", "timestamp=1".into())],
            "malformed X-Buildkite-Signature",
        ),
        (
            vec![(
                "X-Buildkite-Signature",
                format!("timestamp={},signature=abc", now()),
            )],
            "malformed",
        ),
        (
            vec![
                ("X-Buildkite-Token", TOKEN.into()),
                ("X-Buildkite-Token", TOKEN.into()),
            ],
            "must appear once",
        ),
    ];
    for (headers, want) in cases {
        let (status, answer) = app.post(body.clone(), &headers).await;
        assert_eq!(status, 401, "{headers:?}: {answer}");
        let text = answer["error"].as_str().unwrap();
        assert!(text.contains(want), "{headers:?}: {text}");
        assert!(!text.contains(TOKEN), "never shows the expected value");
    }
}

#[tokio::test]
async fn signature_mode_refuses_tokens_and_token_mode_refuses_signatures() {
    let rec = Recorder::start().await;
    let sig_app = TestApp::spawn(&config_for(&rec, "mode = \"signature\"")).await;
    let (status, answer) = sig_app
        .post(ping(), &[("X-Buildkite-Token", TOKEN.into())])
        .await;
    assert_eq!(status, 401);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("Signature header required")
    );
    assert_eq!(sig_app.post_signed(&ping()).await.0, 200);

    let tok_app = TestApp::spawn(&config_for(&rec, "mode = \"token\"")).await;
    let sig = signature(TOKEN, now(), &ping());
    let (status, answer) = tok_app
        .post(ping(), &[("X-Buildkite-Signature", sig)])
        .await;
    assert_eq!(status, 401);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("Token header required")
    );
}

#[tokio::test]
async fn published_signature_vector_verifies_when_the_window_covers_it() {
    // The vector was signed in January 2022; a wide window lets the real endpoint check it.
    let rec = Recorder::start().await;
    let toml = config_for(&rec, "replay_window = \"36500d\"")
        .replace(TOKEN, "29b1ff5779c76bd48ba6705eb99ff970");
    let app = TestApp::spawn(&toml).await;
    let header = "timestamp=1642080837,signature=582d496ac2d869dd97a3101c4cda346288c49a742592daf582ec64c86449f79c";
    let (status, body) = app
        .post(
            ping(),
            &[
                ("X-Buildkite-Signature", header.into()),
                ("X-Buildkite-Event", "ping".into()),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Under the default five-minute window the same request is a replay.
    let strict =
        TestApp::spawn(&config_for(&rec, "").replace(TOKEN, "29b1ff5779c76bd48ba6705eb99ff970"))
            .await;
    let (status, body) = strict
        .post(ping(), &[("X-Buildkite-Signature", header.into())])
        .await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("replay window"));
}

#[tokio::test]
async fn previous_tokens_keep_working_during_rotation() {
    let rec = Recorder::start().await;
    let app = TestApp::spawn(&config_for(&rec, "previous_tokens = [\"old-token\"]")).await;
    let body = ping();
    let old = signature("old-token", now(), &body);
    assert_eq!(
        app.post(body.clone(), &[("X-Buildkite-Signature", old)])
            .await
            .0,
        200
    );
    assert_eq!(
        app.post(body.clone(), &[("X-Buildkite-Token", "old-token".into())])
            .await
            .0,
        200
    );
    let older = signature("older-token", now(), &body);
    assert_eq!(
        app.post(body.clone(), &[("X-Buildkite-Signature", older)])
            .await
            .0,
        401
    );
    assert_eq!(
        app.post_signed(&body).await.0,
        200,
        "the current token still works"
    );
}

#[tokio::test]
async fn malformed_bodies_answer_400_with_a_reason() {
    let (app, rec) = app().await;
    let cases: Vec<(&[u8], Option<&str>, &str)> = vec![
        (b"not json", None, "not valid JSON"),
        (b"", None, "not valid JSON"),
        (b"[1,2,3]", None, "not an object"),
        (b"\"ping\"", None, "not an object"),
        (b"{}", None, "no event name"),
        (b"{\"event\": 42}", None, "short printable"),
        (
            b"{\"event\": \"ping\"}",
            Some("build.finished"),
            "disagrees",
        ),
        (b"{\"event\": \"p\xffng\"}", None, "not valid JSON"),
    ];
    for (body, header, want) in cases {
        let mut headers = vec![("X-Buildkite-Signature", signature(TOKEN, now(), body))];
        if let Some(h) = header {
            headers.push(("X-Buildkite-Event", h.to_string()));
        }
        let (status, answer) = app.post(body.to_vec(), &headers).await;
        assert_eq!(status, 400, "{}: {answer}", String::from_utf8_lossy(body));
        assert!(answer["error"].as_str().unwrap().contains(want), "{answer}");
    }
    assert!(rec.received().is_empty(), "nothing malformed was delivered");
}

#[tokio::test]
async fn bodies_over_the_limit_answer_413() {
    let rec = Recorder::start().await;
    let toml = format!("[server]\nmax_body_bytes = 2048\n{}", config_for(&rec, ""));
    let app = TestApp::spawn(&toml).await;
    let mut big = br#"{"event":"ping","pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 4096));
    big.extend(b"\"}");
    let (status, answer) = app.post_signed(&big).await;
    assert_eq!(status, 413, "{answer}");
    // Without a Content-Length (chunked), the limit still holds.
    let sig = signature(TOKEN, now(), &big);
    let mut request = format!(
        "POST /webhooks/buildkite HTTP/1.1\r\nHost: x\r\nX-Buildkite-Signature: {sig}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in big.chunks(1000) {
        request.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend(chunk);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    let answer = raw_request(app.addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(
        app.post_signed(&ping()).await.0,
        200,
        "a body under the limit is fine"
    );
}

#[tokio::test]
async fn addresses_outside_allowed_ips_answer_403() {
    let rec = Recorder::start().await;
    let denied = TestApp::spawn(&config_for(&rec, "allowed_ips = [\"192.0.2.0/24\"]")).await;
    let (status, answer) = denied.post_signed(&ping()).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("127.0.0.1"));
    let allowed = TestApp::spawn(&config_for(
        &rec,
        "allowed_ips = [\"192.0.2.0/24\", \"127.0.0.0/8\"]",
    ))
    .await;
    assert_eq!(allowed.post_signed(&ping()).await.0, 200);
}

#[tokio::test]
async fn wrong_method_and_unknown_paths_are_refused() {
    let (app, _) = app().await;
    let resp = app
        .client
        .get(app.url("/webhooks/buildkite"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = app
        .client
        .post(app.url("/webhooks/gitlab"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn test_engine_endpoint_checks_its_key() {
    let (app, rec) = app().await;
    let body = fixture("workflow.alarm");
    assert_eq!(
        app.post_to("/webhooks/test-engine/wrong", body.clone(), &[])
            .await
            .0,
        401
    );
    let (status, answer) = app
        .post_to("/webhooks/test-engine/te-key-123", body.clone(), &[])
        .await;
    assert_eq!(status, 202, "{answer}");
    let got = rec.wait_for("slack", 1).await;
    assert!(
        got[0].json()["text"]
            .as_str()
            .unwrap()
            .contains("Test Engine alarm")
    );

    let off_rec = Recorder::start().await;
    let off =
        TestApp::spawn(&config_for(&off_rec, "").replace("key = \"te-key-123\"", "key = \"\""))
            .await;
    assert_eq!(
        off.post_to("/webhooks/test-engine/te-key-123", body, &[])
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn unknown_event_types_are_accepted_and_routed() {
    let (app, rec) = app().await;
    let body = br#"{"event":"widget.exploded","widget":{"name":"w-1","web_url":"https://buildkite.com/w/1"},"extra":{"n":1}}"#;
    let (status, answer) = app.post_signed(body).await;
    assert_eq!(status, 202, "{answer}");
    let got = rec.wait_for("slack", 1).await;
    assert_eq!(got[0].json()["text"], "ℹ️ widget.exploded: w-1");
    assert_eq!(rec.wait_for("teams", 1).await.len(), 1);
}

#[tokio::test]
async fn an_unauthenticated_request_gets_401_before_any_400() {
    let (app, _) = app().await;
    let headers = [
        ("X-Buildkite-Token", "wrong".to_string()),
        ("X-Buildkite-Event", "ping".to_string()),
        ("X-Buildkite-Event", "ping".to_string()),
    ];
    assert_eq!(app.post(b"not json".to_vec(), &headers).await.0, 401);
}

#[tokio::test]
async fn the_test_engine_key_vouches_only_for_workflow_events() {
    let (app, rec) = app().await;
    let (status, answer) = app
        .post_to(
            "/webhooks/test-engine/te-key-123",
            fixture("build.finished"),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("only workflow.*")
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(rec.received().is_empty());
}
