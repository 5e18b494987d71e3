//! Forty-odd bad requests, each answered with the right 4xx, none breaking the service: after
//! every one, a good event is still accepted and delivered.

use crate::helpers::*;
use serde_json::json;

/// A request: method, path, headers, body; and the status it must get.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    want: u16,
}

fn signed(body: &[u8]) -> Vec<(&'static str, String)> {
    vec![("X-Buildkite-Signature", signature(TOKEN, now(), body))]
}

fn case(name: &'static str, body: impl Into<Vec<u8>>, want: u16) -> Case {
    let body = body.into();
    Case {
        name,
        method: "POST",
        path: "/webhooks/buildkite",
        headers: signed(&body),
        body,
        want,
    }
}

fn with(mut c: Case, headers: Vec<(&'static str, String)>) -> Case {
    c.headers = headers;
    c
}

fn event_with(field: &str, value: serde_json::Value) -> Vec<u8> {
    let mut v = fixture_json("build.finished");
    v[field] = value;
    serde_json::to_vec(&v).unwrap()
}

fn cases() -> Vec<Case> {
    let ping = fixture("ping");
    let sig_of = |ts: &str, hex: &str| format!("timestamp={ts},signature={hex}");
    let hex64 = "ab".repeat(32);
    let nested_arrays = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let nested_objects = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    let mut cases = vec![
        Case {
            name: "GET",
            method: "GET",
            want: 405,
            ..case("", ping.clone(), 0)
        },
        Case {
            name: "PUT",
            method: "PUT",
            want: 405,
            ..case("", ping.clone(), 0)
        },
        Case {
            name: "DELETE",
            method: "DELETE",
            want: 405,
            ..case("", ping.clone(), 0)
        },
        Case {
            name: "PATCH",
            method: "PATCH",
            want: 405,
            ..case("", ping.clone(), 0)
        },
        Case {
            name: "unknown path",
            path: "/webhooks/github",
            want: 404,
            ..case("", ping.clone(), 0)
        },
        case("empty body", "", 400),
        case("not JSON", "hello", 400),
        case("JSON array", "[{\"event\":\"ping\"}]", 400),
        case("JSON string", "\"ping\"", 400),
        case("JSON number", "42", 400),
        case("JSON null", "null", 400),
        case("JSON true", "true", 400),
        case("deeply nested arrays", nested_arrays, 400),
        case("deeply nested objects", nested_objects, 400),
        case(
            "invalid UTF-8 in a string",
            b"{\"event\":\"ping\",\"x\":\"\xff\xfe\"}".to_vec(),
            400,
        ),
        case(
            "invalid UTF-8 outside strings",
            b"{\"event\":\"ping\"}\xff".to_vec(),
            400,
        ),
        case("truncated JSON", "{\"event\":\"ping\",", 400),
        case("trailing garbage", "{\"event\":\"ping\"} {}", 400),
        case("NaN", "{\"event\":\"ping\",\"n\":NaN}", 400),
        case(
            "number out of range",
            "{\"event\":\"ping\",\"n\":1e999}",
            400,
        ),
        case("event is a number", "{\"event\":7}", 400),
        case("event is empty", "{\"event\":\"\"}", 400),
        case("event with spaces", "{\"event\":\"build finished\"}", 400),
        case(
            "event of 10 KB",
            format!("{{\"event\":\"{}\"}}", "a".repeat(10_000)),
            400,
        ),
        case("event is an object", "{\"event\":{\"name\":\"ping\"}}", 400),
        case("no event anywhere", "{\"build\":{}}", 400),
    ];
    let mismatch = fixture("ping");
    let mut h = signed(&mismatch);
    h.push(("X-Buildkite-Event", "build.finished".into()));
    cases.push(with(
        case("header and body events differ", mismatch, 400),
        h,
    ));
    type Headers = Vec<(&'static str, String)>;
    let auth: Vec<(&'static str, Headers, u16)> = vec![
        ("no auth header", vec![], 401),
        (
            "two signatures",
            vec![
                ("X-Buildkite-Signature", sig_of(&now().to_string(), &hex64)),
                ("X-Buildkite-Signature", sig_of(&now().to_string(), &hex64)),
            ],
            401,
        ),
        (
            "two tokens",
            vec![
                ("X-Buildkite-Token", TOKEN.into()),
                ("X-Buildkite-Token", TOKEN.into()),
            ],
            401,
        ),
        (
            "signature without a comma",
            vec![("X-Buildkite-Signature", "timestamp=1".into())],
            401,
        ),
        (
            "timestamp= overflow",
            vec![(
                "X-Buildkite-Signature",
                sig_of("99999999999999999999999999", &hex64),
            )],
            401,
        ),
        (
            "negative timestamp",
            vec![("X-Buildkite-Signature", sig_of("-5", &hex64))],
            401,
        ),
        (
            "timestamp with letters",
            vec![("X-Buildkite-Signature", sig_of("12ab", &hex64))],
            401,
        ),
        (
            "empty timestamp",
            vec![("X-Buildkite-Signature", sig_of("", &hex64))],
            401,
        ),
        (
            "hex one short",
            vec![(
                "X-Buildkite-Signature",
                sig_of(&now().to_string(), &hex64[1..]),
            )],
            401,
        ),
        (
            "hex too long",
            vec![(
                "X-Buildkite-Signature",
                sig_of(&now().to_string(), &format!("{hex64}ab")),
            )],
            401,
        ),
        (
            "not hex",
            vec![(
                "X-Buildkite-Signature",
                sig_of(&now().to_string(), &"zz".repeat(32)),
            )],
            401,
        ),
        (
            "empty signature header",
            vec![("X-Buildkite-Signature", String::new())],
            401,
        ),
        (
            "unicode in the signature",
            vec![("X-Buildkite-Signature", "timestamp=1,signature=ä".into())],
            401,
        ),
        (
            "token in Authorization",
            vec![("Authorization", format!("Bearer {TOKEN}"))],
            401,
        ),
        (
            "token in the signature header",
            vec![("X-Buildkite-Signature", TOKEN.into())],
            401,
        ),
        (
            "signature in the token header",
            vec![("X-Buildkite-Token", signature(TOKEN, now(), &ping))],
            401,
        ),
        (
            "wrong token",
            vec![("X-Buildkite-Token", "not-it".into())],
            401,
        ),
        (
            "stale timestamp",
            vec![(
                "X-Buildkite-Signature",
                signature(TOKEN, now() - 3600, &ping),
            )],
            401,
        ),
        (
            "future timestamp",
            vec![(
                "X-Buildkite-Signature",
                signature(TOKEN, now() + 3600, &ping),
            )],
            401,
        ),
        (
            "signature of another body",
            vec![("X-Buildkite-Signature", signature(TOKEN, now(), b"{}"))],
            401,
        ),
        (
            "signature with another key",
            vec![("X-Buildkite-Signature", signature("other", now(), &ping))],
            401,
        ),
    ];
    for (name, headers, want) in auth {
        cases.push(with(case(name, ping.clone(), want), headers));
    }
    let mut huge = signed(&ping);
    huge.push(("X-Padding", "x".repeat(200 * 1024)));
    cases.push(with(case("200 KB header", ping.clone(), 431), huge));
    cases.push(case(
        "body over max_body_bytes",
        format!(
            "{{\"event\":\"ping\",\"pad\":\"{}\"}}",
            "x".repeat(1_100_000)
        ),
        413,
    ));
    cases.push(Case {
        name: "Test Engine, wrong key",
        path: "/webhooks/test-engine/nope",
        headers: vec![],
        want: 401,
        ..case("", fixture("workflow.alarm"), 0)
    });
    cases.push(Case {
        name: "Test Engine, build event",
        path: "/webhooks/test-engine/te-key-123",
        headers: vec![],
        want: 400,
        ..case("", fixture("build.finished"), 0)
    });
    // Hostile but authentic: accepted, and rendered within limits.
    let giant = "<!channel> \"\\\n".repeat(5_000);
    let mut everything = fixture_json("job.finished");
    for path in [
        ["build", "message"],
        ["build", "branch"],
        ["pipeline", "name"],
        ["job", "label"],
        ["build", "commit"],
    ] {
        everything[path[0]][path[1]] = json!(giant);
    }
    everything["build"]["author"] = json!({"name": giant, "email": giant});
    cases.push(case(
        "gigantic strings in every templated field",
        serde_json::to_vec(&everything).unwrap(),
        202,
    ));
    cases.push(case(
        "null where objects are expected",
        event_with("build", json!(null)),
        202,
    ));
    cases.push(case(
        "numbers where strings are expected",
        event_with("pipeline", json!({"name": 5, "slug": 6.5})),
        202,
    ));
    cases
}

#[tokio::test]
async fn every_bad_request_gets_its_4xx_and_the_next_good_event_still_goes_through() {
    let rec = Recorder::start().await;
    let toml = config_for(&rec, "");
    let app = TestApp::spawn(&toml).await;
    let cases = cases();
    let distinct_bad = cases.iter().filter(|c| c.want >= 400).count();
    assert!(distinct_bad >= 40, "{distinct_bad} bad requests");
    let client = kitebridge::destination::client();
    let mut good = 0;
    for c in &cases {
        let mut req = client
            .request(c.method.parse().unwrap(), app.url(c.path))
            .body(c.body.clone());
        for (k, v) in &c.headers {
            req = req.header(*k, v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let status = resp.status().as_u16();
        assert_eq!(status, c.want, "{}", c.name);
        // A refused webhook says why, in one line (wrong methods and paths are the router's,
        // and headers too large to read are refused by the HTTP layer before any handler).
        if c.want >= 400 && c.want != 431 && c.path == "/webhooks/buildkite" && c.method == "POST" {
            let text = resp.text().await.unwrap();
            let answer: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{}: not JSON: {text}", c.name));
            let reason = answer["error"].as_str().unwrap_or_default();
            assert!(
                !reason.is_empty() && !reason.contains('\n') && reason.len() < 300,
                "{}: {answer}",
                c.name
            );
        }
        // The service still serves the next good event.
        good += 1;
        let mut ok = fixture_json("build.finished");
        ok["build"]["number"] = json!(10_000 + good);
        let (status, answer) = app.post_signed(&serde_json::to_vec(&ok).unwrap()).await;
        assert_eq!(status, 202, "after {}: {answer}", c.name);
    }
    let hostile = cases.iter().filter(|c| c.want == 202).count();
    let slack = rec.wait_for("slack", good + hostile).await;
    assert_eq!(
        slack.len(),
        good + hostile,
        "every good event was delivered"
    );
    for m in &slack {
        for s in strings(&m.json()) {
            assert!(!s.contains("<!channel>"));
            assert!(s.chars().count() <= 40_000);
        }
    }
    let teams = rec.wait_for("teams", good + hostile).await;
    assert!(teams.iter().all(|m| m.body.len() <= 28_000));
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
