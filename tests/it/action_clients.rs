//! The clients behind action buttons (Buildkite REST, Slack Web API, OpenID Connect) against
//! the in-process fakes.

use crate::fake_buildkite::{BkReply, FakeBuildkite};
use crate::fake_oidc::FakeOidc;
use crate::fake_slack::{FakeSlack, SlackReply};
use kitebridge::actions::buildkite::{Buildkite, BuildkiteError};
use kitebridge::actions::oidc::{Oidc, OidcError};
use kitebridge::actions::slack_api::{SlackApi, SlackError};
use kitebridge::secret::Secret;
use serde_json::json;
use std::time::{Duration, Instant};

fn buildkite(bk: &FakeBuildkite) -> Buildkite {
    Buildkite::new(
        kitebridge::destination::client(),
        &bk.url(),
        FakeBuildkite::ORG,
        Secret::new(FakeBuildkite::TOKEN),
    )
}

const BUILD: &str = "/v2/organizations/acme/pipelines/web-app/builds/1842";

#[tokio::test]
async fn buildkite_actions_put_to_the_right_paths_with_the_token() {
    let bk = FakeBuildkite::start().await;
    let client = buildkite(&bk);

    let done = client
        .retry_job("web-app", 1842, "job-failed-1")
        .await
        .unwrap();
    assert_eq!(done.summary, "retried \u{201c}Tests\u{201d}");
    assert!(done.web_url.unwrap().contains("job-failed-1-retry"));

    let done = client.rebuild("web-app", 1842).await.unwrap();
    assert_eq!(
        (done.status, done.summary.as_str()),
        (201, "rebuilt as #1843")
    );
    assert_eq!(
        done.web_url.as_deref(),
        Some("https://buildkite.com/acme/web-app/builds/1843")
    );

    let done = client.cancel("web-app", 1842).await.unwrap();
    assert_eq!(done.summary, "canceled build #1842");

    let puts: Vec<String> = bk
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        puts,
        [
            format!("{BUILD}/jobs/job-failed-1/retry"),
            format!("{BUILD}/rebuild"),
            format!("{BUILD}/cancel"),
        ]
    );
    for r in bk.requests() {
        assert_eq!(
            r.header("authorization").as_deref(),
            Some("Bearer bkua_fake_buildkite_token")
        );
    }
}

#[tokio::test]
async fn retry_failed_retries_each_failed_job_once() {
    let bk = FakeBuildkite::start().await;
    bk.set_build(
        "web-app",
        1842,
        json!({"number": 1842, "web_url": "https://buildkite.com/acme/web-app/builds/1842", "jobs": [
            {"id": "a", "type": "script", "name": "Unit", "state": "failed", "retried": false},
            {"id": "b", "type": "script", "name": "E2E", "state": "timed_out", "retried": false},
            {"id": "c", "type": "script", "name": "Lint", "state": "passed", "retried": false},
            {"id": "d", "type": "script", "name": "Old", "state": "failed", "retried": true},
        ]}),
    );
    let client = buildkite(&bk);
    let done = client.retry_failed("web-app", 1842).await.unwrap();
    assert_eq!(done.summary, "retried 2 failed jobs");
    assert_eq!(
        done.web_url.as_deref(),
        Some("https://buildkite.com/acme/web-app/builds/1842")
    );
    assert_eq!((bk.puts("/jobs/a/retry"), bk.puts("/jobs/b/retry")), (1, 1));
    assert_eq!(bk.puts("/retry"), 2);

    // The retried jobs are now marked retried (and their new copies scheduled): nothing left.
    match client.retry_failed("web-app", 1842).await {
        Err(BuildkiteError::Refused { status: 0, message }) => {
            assert!(message.contains("no failed jobs"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bk.puts("/retry"), 2);
}

#[tokio::test]
async fn unblock_finds_the_blocked_job_and_sends_the_fields() {
    let bk = FakeBuildkite::start().await;
    bk.set_build(
        "web-app",
        1842,
        json!({"number": 1842, "jobs": [
            {"id": "t", "type": "script", "state": "passed"},
            {"id": "gate", "type": "manual", "label": "Deploy?", "state": "blocked"},
        ]}),
    );
    let client = buildkite(&bk);
    let mut fields = serde_json::Map::new();
    fields.insert("release-name".into(), json!("Spring"));
    let done = client
        .unblock("web-app", 1842, None, Some("user-uuid-1"), &fields)
        .await
        .unwrap();
    assert_eq!(done.summary, "unblocked \u{201c}Deploy?\u{201d}");
    let put = &bk.put_requests("/jobs/gate/unblock")[0];
    assert_eq!(
        put.json(),
        json!({"unblocker": "user-uuid-1", "fields": {"release-name": "Spring"}})
    );
    assert_eq!(
        bk.build("web-app", 1842).unwrap()["jobs"][1]["state"],
        "unblocked"
    );

    // Nothing blocked any more.
    let again = client.unblock("web-app", 1842, None, None, &fields).await;
    assert!(
        matches!(&again, Err(BuildkiteError::Refused { status: 0, message }) if message.contains("block step")),
        "{again:?}"
    );
    // A named job is unblocked without reading the build; no unblocker means none is sent.
    bk.set_build(
        "web-app",
        7,
        json!({"number": 7, "jobs": [{"id": "g2", "type": "manual", "state": "blocked"}]}),
    );
    client
        .unblock("web-app", 7, Some("g2"), None, &serde_json::Map::new())
        .await
        .unwrap();
    let put = bk.put_requests("/builds/7/jobs/g2/unblock");
    assert_eq!(put[0].json(), json!({"fields": {}}));
}

#[tokio::test]
async fn a_422_is_refused_with_buildkite_s_message() {
    let bk = FakeBuildkite::start().await;
    bk.script(
        "/retry",
        BkReply::Status(422, json!({"message": "Job not retriable"})),
    );
    let got = buildkite(&bk)
        .retry_job("web-app", 1842, "job-failed-1")
        .await;
    assert_eq!(
        got,
        Err(BuildkiteError::Refused {
            status: 422,
            message: "Job not retriable".into()
        })
    );
    assert_eq!(bk.puts("/retry"), 1);

    // A wrong token is a refusal too, and bad identifiers never leave the process.
    let wrong = Buildkite::new(
        kitebridge::destination::client(),
        &bk.url(),
        "acme",
        Secret::new("bkua_wrong"),
    );
    assert!(matches!(
        wrong.cancel("web-app", 1).await,
        Err(BuildkiteError::Refused { status: 401, .. })
    ));
    let before = bk.requests().len();
    assert!(matches!(
        buildkite(&bk).retry_job("../../admin", 1, "x").await,
        Err(BuildkiteError::Refused { status: 0, .. })
    ));
    assert_eq!(bk.requests().len(), before);
}

#[tokio::test]
async fn a_429_is_waited_out_and_the_put_sent_again() {
    let bk = FakeBuildkite::start().await;
    bk.script(
        "/rebuild",
        BkReply::TooMany {
            retry_after_secs: 1,
        },
    );
    let started = Instant::now();
    let done = buildkite(&bk).rebuild("web-app", 1842).await.unwrap();
    assert_eq!(done.summary, "rebuilt as #1843");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        bk.puts("/rebuild"),
        2,
        "the 429 did nothing, so it is sent again"
    );
}

#[tokio::test]
async fn a_put_that_fails_or_times_out_is_never_sent_twice() {
    let bk = FakeBuildkite::start().await;
    bk.script("/rebuild", BkReply::Status(500, json!({"message": "oops"})));
    let got = buildkite(&bk).rebuild("web-app", 1842).await;
    assert!(
        matches!(got, Err(BuildkiteError::Unavailable(_))),
        "{got:?}"
    );
    assert_eq!(bk.puts("/rebuild"), 1);

    bk.script("/cancel", BkReply::Slow(Duration::from_secs(2)));
    let impatient = buildkite(&bk).with_timeout(Duration::from_millis(300));
    let got = impatient.cancel("web-app", 1842).await;
    assert!(
        matches!(&got, Err(BuildkiteError::Unavailable(why)) if why.contains("no answer")),
        "{got:?}"
    );
    assert_eq!(bk.puts("/cancel"), 1);
}

#[tokio::test]
async fn a_get_that_fails_is_tried_again() {
    let bk = FakeBuildkite::start().await;
    bk.script("builds/1842", BkReply::Status(502, json!({})));
    bk.script("builds/1842", BkReply::Status(503, json!({})));
    let done = buildkite(&bk).retry_failed("web-app", 1842).await.unwrap();
    assert_eq!(done.summary, "retried 1 failed job");
    let gets = bk.requests().iter().filter(|r| r.method == "GET").count();
    assert_eq!(gets, 3);
}

fn slack(fake: &FakeSlack) -> SlackApi {
    SlackApi::new(
        kitebridge::destination::client(),
        &fake.api_url(),
        Secret::new(FakeSlack::TOKEN),
    )
}

#[tokio::test]
async fn slack_users_are_looked_up_once_and_cached() {
    let fake = FakeSlack::start().await;
    fake.set_user(
        json!({"id": "U1", "team_id": "T1", "name": "ana", "real_name": "Ana Example",
        "tz": "Europe/Madrid", "profile": {"email": "ana@example.com"}}),
    );
    let api = slack(&fake);
    let user = api.user("U1").await.unwrap();
    assert_eq!(
        (
            user.name.as_str(),
            user.email.as_deref(),
            user.tz.as_deref()
        ),
        (
            "Ana Example",
            Some("ana@example.com"),
            Some("Europe/Madrid")
        )
    );
    assert_eq!(api.user("U1").await.unwrap(), user);
    let calls = fake.calls("users.info");
    assert_eq!(calls.len(), 1, "the second lookup came from the cache");
    assert_eq!(calls[0].method, "GET");
    assert_eq!(calls[0].params()["user"], "U1");
    assert_eq!(
        calls[0].header("authorization").as_deref(),
        Some("Bearer xoxb-fake-slack-token")
    );

    assert_eq!(
        api.user("U404").await,
        Err(SlackError::Api("user_not_found".into()))
    );

    fake.set_usergroup("S1", &["U1", "U2"]);
    assert_eq!(api.usergroup_members("S1").await.unwrap(), ["U1", "U2"]);
    assert_eq!(api.usergroup_members("S1").await.unwrap(), ["U1", "U2"]);
    assert_eq!(fake.calls("usergroups.users.list").len(), 1);
    assert_eq!(
        api.usergroup_members("S9").await,
        Err(SlackError::Api("no_such_subteam".into()))
    );
}

#[tokio::test]
async fn slack_updates_and_responses_are_posted_as_json() {
    let fake = FakeSlack::start().await;
    let api = slack(&fake);
    let app_token = Secret::new("xoxb-destination-own-token");
    api.chat_update(
        &fake.api_url(),
        &app_token,
        "C1",
        "1700000000.000100",
        &json!({"text": "retried", "blocks": [], "channel": "C-elsewhere"}),
    )
    .await
    .unwrap();
    assert_eq!(
        fake.updates(),
        [json!({"channel": "C1", "ts": "1700000000.000100", "text": "retried", "blocks": []})]
    );
    assert_eq!(
        fake.calls("chat.update")[0]
            .header("authorization")
            .as_deref(),
        Some("Bearer xoxb-destination-own-token")
    );

    fake.script(
        "chat.update",
        SlackReply::Json(json!({"ok": false, "error": "message_not_found"})),
    );
    let got = api
        .chat_update(
            &fake.api_url(),
            &app_token,
            "C1",
            "1",
            &json!({"text": "x"}),
        )
        .await;
    assert_eq!(got, Err(SlackError::Api("message_not_found".into())));

    let url = fake.response_url();
    api.respond(
        &url,
        &json!({"text": "Only you can see this", "replace_original": false}),
    )
    .await
    .unwrap();
    assert_eq!(fake.responses()[0]["text"], "Only you can see this");
    let sent = fake
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/respond/"))
        .unwrap();
    assert_eq!(
        sent.header("authorization"),
        None,
        "no token to a response_url"
    );

    fake.script("/respond/1", SlackReply::Status(404));
    assert_eq!(
        api.respond(&url, &json!({})).await,
        Err(SlackError::Http(404))
    );
}

#[tokio::test]
async fn slack_rate_limits_are_waited_out_once() {
    let fake = FakeSlack::start().await;
    fake.set_user(json!({"id": "U1", "name": "ana"}));
    fake.script(
        "users.info",
        SlackReply::TooMany {
            retry_after_secs: 1,
        },
    );
    let api = slack(&fake);
    assert_eq!(api.user("U1").await.unwrap().name, "ana");
    assert_eq!(fake.calls("users.info").len(), 2);

    fake.script(
        "users.info",
        SlackReply::TooMany {
            retry_after_secs: 0,
        },
    );
    fake.script(
        "users.info",
        SlackReply::TooMany {
            retry_after_secs: 0,
        },
    );
    assert_eq!(api.user("U2").await, Err(SlackError::Http(429)));
}

const REDIRECT: &str = "https://kitebridge.example.com/actions/teams/callback";

fn oidc(idp: &FakeOidc) -> Oidc {
    Oidc::new(
        kitebridge::destination::client(),
        &idp.issuer(),
        "client-1",
        Secret::new(idp.secret()),
        REDIRECT,
    )
}

#[tokio::test]
async fn oidc_sign_in_runs_the_whole_code_flow() {
    let idp = FakeOidc::start("client-1").await;
    idp.sign_in_as("maria@example.com", "Maria López");
    let rp = oidc(&idp);
    let login = rp.begin().await.unwrap();
    assert!(
        login
            .url
            .starts_with(&format!("{}/authorize?", idp.issuer()))
    );
    assert_ne!(login.state, login.nonce);

    // The browser: the redirect back carries the code and our state.
    let client = kitebridge::destination::client();
    let answer = client.get(&login.url).send().await.unwrap();
    assert_eq!(answer.status(), 302);
    let location = reqwest::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    assert!(location.as_str().starts_with(REDIRECT));
    let params: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(params["state"], login.state);

    let who = rp
        .finish(&params["code"], &login.verifier, &login.nonce)
        .await
        .unwrap();
    assert_eq!(who.email.as_deref(), Some("maria@example.com"));
    assert_eq!(who.name.as_deref(), Some("Maria López"));
    assert_eq!(who.subject, "sub-maria-at-example.com");
    assert_eq!(who.issuer, idp.issuer());

    let token = &idp.requests_to("/token")[0];
    let form = token.form();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code_verifier"], login.verifier);
    assert_eq!(form["redirect_uri"], REDIRECT);
    assert_eq!(
        idp.requests_to("openid-configuration").len(),
        1,
        "discovery is cached"
    );

    // The code works once.
    let again = rp
        .finish(&params["code"], &login.verifier, &login.nonce)
        .await;
    assert!(
        matches!(&again, Err(OidcError::Refused { status: 400, error }) if error.starts_with("invalid_grant")),
        "{again:?}"
    );
}

#[tokio::test]
async fn oidc_refuses_a_tampered_code_a_wrong_verifier_or_a_wrong_nonce() {
    let idp = FakeOidc::start("client-1").await;
    let rp = oidc(&idp);

    let login = rp.begin().await.unwrap();
    let code = idp.authorize(&login.url).await;
    let got = rp
        .finish(&format!("{code}x"), &login.verifier, &login.nonce)
        .await;
    assert!(
        matches!(got, Err(OidcError::Refused { status: 400, .. })),
        "{got:?}"
    );

    let login = rp.begin().await.unwrap();
    let code = idp.authorize(&login.url).await;
    let other = rp.begin().await.unwrap();
    let got = rp.finish(&code, &other.verifier, &login.nonce).await;
    assert!(
        matches!(&got, Err(OidcError::Refused { error, .. }) if error.contains("PKCE")),
        "{got:?}"
    );

    let login = rp.begin().await.unwrap();
    let code = idp.authorize(&login.url).await;
    let got = rp.finish(&code, &login.verifier, &other.nonce).await;
    assert_eq!(got, Err(OidcError::Nonce));

    idp.override_claims(json!({"aud": "someone-else"}));
    let login = rp.begin().await.unwrap();
    let code = idp.authorize(&login.url).await;
    assert_eq!(
        rp.finish(&code, &login.verifier, &login.nonce).await,
        Err(OidcError::Audience)
    );

    let wrong_secret = Oidc::new(
        kitebridge::destination::client(),
        &idp.issuer(),
        "client-1",
        Secret::new("not-the-secret"),
        REDIRECT,
    );
    let login = wrong_secret.begin().await.unwrap();
    let code = idp.authorize(&login.url).await;
    let got = wrong_secret
        .finish(&code, &login.verifier, &login.nonce)
        .await;
    assert!(
        matches!(got, Err(OidcError::Refused { status: 401, .. })),
        "{got:?}"
    );
}

#[tokio::test]
async fn oidc_fetches_the_key_set_again_for_an_unknown_kid() {
    let idp = FakeOidc::start("client-1").await;
    let rp = oidc(&idp);
    let login = rp.begin().await.unwrap();
    let code = idp.authorize(&login.url).await;
    rp.finish(&code, &login.verifier, &login.nonce)
        .await
        .unwrap();
    assert_eq!(idp.requests_to("/jwks").len(), 1);

    idp.use_es256();
    let login = rp.begin().await.unwrap();
    let code = idp.authorize(&login.url).await;
    let who = rp
        .finish(&code, &login.verifier, &login.nonce)
        .await
        .unwrap();
    assert_eq!(who.email.as_deref(), Some("ana@example.com"));
    assert_eq!(
        idp.requests_to("/jwks").len(),
        2,
        "refetched once for kid test-ec"
    );
}

#[tokio::test]
async fn oidc_refuses_a_provider_naming_another_issuer() {
    let idp = FakeOidc::start("client-1").await;
    // The same server, configured under a different issuer string: its discovery document
    // names the real one, which must not be accepted.
    let rp = Oidc::new(
        kitebridge::destination::client(),
        &format!("{}/", idp.issuer()),
        "client-1",
        Secret::new(idp.secret()),
        REDIRECT,
    );
    assert!(rp.begin().await.is_ok(), "a trailing slash is tolerated");
    let rp = Oidc::new(
        kitebridge::destination::client(),
        &idp.issuer().replace("/v2.0", "/x/../v2.0"),
        "client-1",
        Secret::new(idp.secret()),
        REDIRECT,
    );
    assert!(matches!(rp.begin().await, Err(OidcError::Provider(_))));
}
