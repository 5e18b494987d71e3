use super::*;
use crate::condition::Condition;
use crate::transition::Transition;
use chrono::Utc;
use serde_json::json;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/buildkite")
}

/// A fixture as an event, named by its `event` field (else its file name).
fn fixture(file: &str) -> Event {
    let path = fixture_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let payload: Json = serde_json::from_str(&text).unwrap();
    let name = payload["event"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| file.trim_end_matches(".json").to_owned());
    Event::from_value(&name, payload, Utc::now())
}

fn all_fixtures() -> Vec<(String, Event)> {
    let mut files: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "fixtures missing: {files:?}");
    files
        .into_iter()
        .map(|f| {
            let e = fixture(&f);
            (f, e)
        })
        .collect()
}

fn get(event: &Event, path: &str) -> Value {
    assert!(schema().get(path).is_some(), "{path} not in the schema");
    EventVariables::new(event).get(path)
}

fn s(v: &str) -> Value {
    Value::Str(v.to_owned())
}

fn holds(event: &Event, src: &str) -> bool {
    let cond = Condition::compile(src, schema()).unwrap_or_else(|e| panic!("{src}: {e}"));
    cond.eval(&EventVariables::new(event))
}

fn with_transition(mut event: Event, kind: TransitionKind) -> Event {
    event.set_transition(Some(Transition {
        kind,
        previous_state: None,
        previous_number: None,
        consecutive_failures: 0,
    }));
    event
}

fn value_has_type(v: &Value, ty: Type) -> bool {
    matches!(
        (v, ty),
        (Value::Null, _)
            | (Value::Str(_), Type::String)
            | (Value::Int(_), Type::Integer)
            | (Value::Bool(_), Type::Boolean)
            | (Value::Array(_), Type::StringArray)
    )
}

#[test]
fn every_variable_on_every_fixture_has_its_type() {
    let schema = schema();
    for (file, event) in all_fixtures() {
        let vars = EventVariables::new(&event);
        for v in VARS {
            let value = vars.get(v.name);
            assert!(
                value_has_type(&value, v.ty),
                "{file}: {} = {value:?} is not {:?}",
                v.name,
                v.ty
            );
            // And each compiles and evaluates as a condition of its own.
            let cond = Condition::compile(&format!("{} == null", v.name), schema).unwrap();
            assert!(cond.eval_value(&vars).is_ok(), "{file}: {}", v.name);
        }
        assert_eq!(vars.get("no.such.variable"), Value::Null);
    }
}

#[test]
fn build_variables() {
    let e = fixture("build.finished.json");
    assert_eq!(get(&e, "event"), s("build.finished"));
    assert_eq!(
        get(&e, "build.id"),
        s("0190e2f4-0000-7000-8000-000000001842")
    );
    assert_eq!(get(&e, "build.number"), Value::Int(1842));
    assert_eq!(get(&e, "build.branch"), s("main"));
    assert_eq!(
        get(&e, "build.commit"),
        s("9f3c1e7a5b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e")
    );
    assert!(matches!(get(&e, "build.message"), Value::Str(m) if m.starts_with("Retry payment")));
    assert_eq!(get(&e, "build.state"), s("failed"));
    assert_eq!(get(&e, "build.source"), s("webhook"));
    assert_eq!(get(&e, "build.author.email"), s("maria.lopez@acme.example"));
    assert_eq!(get(&e, "build.author.name"), s("Maria López"));
    assert_eq!(
        get(&e, "build.creator.email"),
        s("maria.lopez@acme.example")
    );
    assert_eq!(get(&e, "build.creator.name"), s("Maria López"));
    assert_eq!(
        get(&e, "build.creator.id"),
        s("0190e2f4-1111-7000-8000-000000000001")
    );
    assert_eq!(
        get(&e, "pipeline.id"),
        s("5c543cdf-7231-460d-9048-f6d5e1bbabf5")
    );
    assert_eq!(get(&e, "pipeline.slug"), s("web-app"));
    assert_eq!(get(&e, "pipeline.default_branch"), s("main"));
    assert_eq!(
        get(&e, "pipeline.repository"),
        s("git@github.com:acme/web-app.git")
    );
    assert_eq!(get(&e, "organization.slug"), s("acme"));
    assert_eq!(get(&e, "organization.id"), Value::Null);
    // Not a pull request, no tag: null.
    assert_eq!(get(&e, "build.tag"), Value::Null);
    assert_eq!(get(&e, "build.pull_request.id"), Value::Null);
    assert_eq!(get(&e, "build.pull_request.base_branch"), Value::Null);
    assert_eq!(get(&e, "build.pull_request.repository"), Value::Null);
    // Job and agent variables are null on a build event.
    assert_eq!(get(&e, "job.state"), Value::Null);
    assert_eq!(get(&e, "job.exit_status"), Value::Null);
    assert_eq!(get(&e, "agent.meta_data"), Value::Null);
    // No transition attached: null.
    assert_eq!(get(&e, "pipeline.started_failing"), Value::Null);
    assert_eq!(get(&e, "pipeline.started_passing"), Value::Null);

    // A build without an author.
    let blocked = fixture("build.finished.blocked.json");
    assert_eq!(get(&blocked, "build.author.email"), Value::Null);
    assert_eq!(get(&blocked, "build.creator.name"), s("[redacted]"));
    assert_eq!(get(&blocked, "organization.slug"), s("fluid-project"));
    assert_eq!(get(&blocked, "build.source"), s("ui"));
}

#[test]
fn pull_request_variables() {
    let e = fixture("build.finished.pull-request.json");
    assert_eq!(get(&e, "build.pull_request.id"), s("4211"));
    assert_eq!(get(&e, "build.pull_request.base_branch"), s("main"));
    assert_eq!(
        get(&e, "build.pull_request.repository"),
        s("git@github.com:acme/web-app.git")
    );
    assert_eq!(get(&e, "build.branch"), s("feature/checkout-totals"));
    assert!(holds(
        &e,
        r#"build.pull_request.base_branch == pipeline.default_branch && build.pull_request.id != null"#
    ));
    assert!(!holds(&e, "build.branch == pipeline.default_branch"));
}

#[test]
fn blank_is_null_for_nullable_strings_only() {
    // buildkite/conditional's presenceStringValue set (assignments.go, context_test.go's
    // presence matrix): empty or whitespace-only is null; every other string keeps "".
    let mut payload: Json = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("build.finished.json")).unwrap(),
    )
    .unwrap();
    payload["build"]["tag"] = json!("");
    payload["build"]["message"] = json!("  \n");
    payload["build"]["commit"] = json!("");
    payload["build"]["author"] = json!({"name": " ", "email": ""});
    payload["build"]["creator"]["email"] = json!("");
    payload["build"]["pull_request"] = json!({"id": "", "base": "", "repository": ""});
    payload["pipeline"]["repository"] = json!("");
    payload["pipeline"]["default_branch"] = json!("\t");
    let e = Event::from_value("build.finished", payload, Utc::now());
    for path in [
        "build.tag",
        "build.message",
        "build.author.name",
        "build.author.email",
        "pipeline.repository",
        "pipeline.default_branch",
    ] {
        assert_eq!(get(&e, path), Value::Null, "{path}");
    }
    for path in [
        "build.commit",
        "build.creator.email",
        "build.pull_request.id",
        "build.pull_request.base_branch",
        "build.pull_request.repository",
    ] {
        assert_eq!(get(&e, path), s(""), "{path}");
    }
    assert!(holds(&e, "build.tag == null"));
    assert!(!holds(&e, "build.tag != null"));

    // A real tag, and a pull request id sent as a number, are kept.
    let mut payload = e.payload().clone();
    payload["build"]["tag"] = json!("v1.2.0");
    payload["build"]["pull_request"] = json!({"id": 42, "base": "main"});
    let e = Event::from_value("build.finished", payload, Utc::now());
    assert_eq!(get(&e, "build.tag"), s("v1.2.0"));
    assert_eq!(get(&e, "build.pull_request.id"), s("42"));
    assert!(holds(&e, r"build.tag =~ /^v[0-9]+\.[0-9]+\.0/"));
}

#[test]
fn job_variables() {
    let e = fixture("job.finished.json");
    assert_eq!(get(&e, "event"), s("job.finished"));
    assert_eq!(get(&e, "job.state"), s("failed"));
    assert_eq!(get(&e, "job.exit_status"), Value::Int(1));
    assert_eq!(get(&e, "job.soft_failed"), Value::Bool(false));
    assert_eq!(get(&e, "job.label"), s(":rspec: Checkout specs"));
    assert_eq!(get(&e, "job.step_key"), s("rspec-checkout"));
    // The job's agent, and the job's build.
    assert_eq!(get(&e, "agent.name"), s("76d17dc8d368-1"));
    assert_eq!(get(&e, "agent.connection_state"), s("connected"));
    assert_eq!(get(&e, "agent.meta_data"), Value::Array(vec![]));
    assert_eq!(get(&e, "build.state"), s("failing"));
    assert_eq!(get(&e, "build.number"), Value::Int(1842));
    assert_eq!(get(&e, "pipeline.slug"), s("web-app"));
    assert!(holds(
        &e,
        r#"job.exit_status != 0 && !job.soft_failed && job.step_key == "rspec-checkout""#
    ));

    // A real payload: no `label`, so the job's `name`; no step key.
    let real = fixture("job.finished.real.json");
    assert_eq!(get(&real, "job.label"), s(":llama:"));
    assert_eq!(get(&real, "job.step_key"), Value::Null);
    assert_eq!(get(&real, "job.exit_status"), Value::Int(0));
    assert_eq!(get(&real, "job.state"), s("passed"));
    assert_eq!(get(&real, "organization.slug"), s("doe-company"));

    // A block step being unblocked: no exit status, no agent.
    let activated = fixture("job.activated.json");
    assert_eq!(get(&activated, "job.state"), s("unblocked"));
    assert_eq!(get(&activated, "job.exit_status"), Value::Null);
    assert_eq!(get(&activated, "job.soft_failed"), Value::Null);
    assert_eq!(get(&activated, "agent.name"), Value::Null);
    assert_eq!(
        get(&activated, "job.label"),
        s(":rocket: Deploy to production")
    );

    let scheduled = fixture("job.scheduled.json");
    assert_eq!(get(&scheduled, "job.state"), s("scheduled"));
    assert_eq!(get(&scheduled, "agent.name"), Value::Null);
}

#[test]
fn agent_variables() {
    let e = fixture("agent.lost.json");
    assert_eq!(get(&e, "event"), s("agent.lost"));
    assert_eq!(get(&e, "agent.name"), s("ci-agent-7f3a-1"));
    assert_eq!(get(&e, "agent.connection_state"), s("lost"));
    assert_eq!(
        get(&e, "agent.meta_data"),
        Value::Array(vec!["queue=default".into(), "os=linux".into()])
    );
    assert_eq!(get(&e, "organization.slug"), s("doe-company"));
    assert_eq!(get(&e, "build.branch"), Value::Null);
    assert_eq!(get(&e, "job.state"), Value::Null);
    assert!(holds(
        &e,
        r#"event == "agent.lost" && agent.meta_data includes "queue=default""#
    ));
    assert!(!holds(&e, r#"agent.meta_data includes "queue=deploy""#));
    assert_eq!(
        get(&fixture("agent.connected.json"), "agent.connection_state"),
        s("connected")
    );
}

#[test]
fn organization_from_ping() {
    let e = fixture("ping.json");
    assert_eq!(get(&e, "organization.slug"), s("acme-inc"));
    assert_eq!(
        get(&e, "organization.id"),
        s("49801950-1df0-474f-bb56-ad6a930c5cb9")
    );
    assert_eq!(get(&e, "pipeline.slug"), Value::Null);
}

#[test]
fn slugs_from_urls() {
    assert_eq!(
        slug_from_url("https://api.buildkite.com/v2/organizations/acme/pipelines/x"),
        Some("acme")
    );
    assert_eq!(
        slug_from_url("https://buildkite.com/organizations/acme"),
        Some("acme")
    );
    assert_eq!(slug_from_url("https://buildkite.com/acme/web-app"), None);
    assert_eq!(slug_from_url("https://x/organizations/"), None);
}

#[test]
fn env_reads_build_env() {
    let mut payload = fixture("build.finished.json").payload().clone();
    payload["build"]["env"] = json!({
        "DEPLOY": "yes",
        "EMPTY": "",
        "COUNT": 3,
        "FLAG": true,
        "UNSET": null,
    });
    let e = Event::from_value("build.finished", payload, Utc::now());
    let vars = EventVariables::new(&e);
    assert_eq!(vars.env("DEPLOY").as_deref(), Some("yes"));
    assert_eq!(vars.env("EMPTY").as_deref(), Some(""));
    assert_eq!(vars.env("COUNT").as_deref(), Some("3"));
    assert_eq!(vars.env("FLAG").as_deref(), Some("true"));
    assert_eq!(vars.env("UNSET"), None);
    assert_eq!(vars.env("MISSING"), None);
    assert!(holds(&e, r#"build.env("DEPLOY") == "yes""#));
    assert!(holds(&e, r#"build.env("MISSING") == null"#));
    // Buildkite's rules: env() (the uploading agent's environment) does not exist for a
    // webhook, and build.env() reads only the listed BUILDKITE_* names.
    for (src, why) in [
        (
            r#"env("DEPLOY") == "yes""#,
            "env() reads the environment of the agent",
        ),
        (
            r#"build.env("BUILDKITE_AGENT_ACCESS_TOKEN") == null"#,
            "\"BUILDKITE_AGENT_ACCESS_TOKEN\" is not one",
        ),
    ] {
        let err = Condition::compile(src, schema()).unwrap_err();
        assert!(err.to_string().contains(why), "{src}: {err}");
    }
    // Built-in names come from the payload's fields (see build_env.rs).
    assert!(holds(&e, r#"build.env("BUILDKITE_BRANCH") == "main""#));
    let mut with_secret = e.payload().clone();
    with_secret["build"]["env"]["BUILDKITE_AGENT_ACCESS_TOKEN"] = json!("tok");
    let secret = Event::from_value("build.finished", with_secret, Utc::now());
    assert_eq!(
        EventVariables::new(&secret).env("BUILDKITE_AGENT_ACCESS_TOKEN"),
        None,
        "nor at run time"
    );

    // The pipeline's env fills in beneath the build's, as upstream's ProjectEnv beneath its
    // BuildEnv (context.go); the built-in names stay the build's own.
    let mut layered = fixture("build.finished.json").payload().clone();
    layered["pipeline"]["env"] =
        json!({"DEPLOY": "pipeline", "REGION": "eu", "BUILDKITE_BRANCH": "x"});
    layered["build"]["env"] = json!({"DEPLOY": "build", "UNSET": null});
    let layered = Event::from_value("build.finished", layered, Utc::now());
    let vars = EventVariables::new(&layered);
    assert_eq!(vars.env("DEPLOY").as_deref(), Some("build"));
    assert_eq!(vars.env("REGION").as_deref(), Some("eu"));
    assert_eq!(vars.env("UNSET"), None);
    assert_eq!(vars.env("BUILDKITE_BRANCH").as_deref(), Some("main"));
    assert!(holds(&layered, r#"build.env("REGION") == "eu""#));

    // `env: {}` and `env: null` have nothing; neither do events without a build.
    assert_eq!(
        EventVariables::new(&fixture("build.finished.json")).env("X"),
        None
    );
    assert_eq!(
        EventVariables::new(&fixture("build.finished.blocked.json")).env("X"),
        None
    );
    assert_eq!(
        EventVariables::new(&fixture("agent.lost.json")).env("X"),
        None
    );
}

#[test]
fn blocked_state_fixed_and_source_event() {
    let plain = fixture("build.finished.json");
    assert_eq!(
        get(&plain, "build.blocked_state"),
        Value::Null,
        "\"\" is not blocked"
    );
    let mut payload = plain.payload().clone();
    payload["build"]["blocked_state"] = json!("passed");
    let e = Event::from_value("build.finished", payload, Utc::now());
    assert_eq!(get(&e, "build.blocked_state"), s("passed"));
    assert!(holds(&e, r#"build.blocked_state == "passed""#));

    assert_eq!(get(&plain, "build.fixed"), Value::Null, "no transition");
    let fixed = with_transition(fixture("build.finished.passed.json"), TransitionKind::Fixed);
    assert_eq!(get(&fixed, "build.fixed"), Value::Bool(true));
    let broken = with_transition(fixture("build.finished.json"), TransitionKind::Broken);
    assert_eq!(get(&broken, "build.fixed"), Value::Bool(false));

    // Upstream's rule: only a webhook build has a source event, from BUILDKITE_GITHUB_EVENT.
    assert_eq!(get(&plain, "build.source_event"), Value::Null);
    let mut payload = plain.payload().clone();
    payload["build"]["env"] =
        json!({"BUILDKITE_GITHUB_EVENT": "push", "BUILDKITE_GITHUB_ACTION": "opened"});
    let e = Event::from_value("build.finished", payload.clone(), Utc::now());
    assert_eq!(get(&e, "build.source_event"), s("push"));
    assert_eq!(get(&e, "build.source_action"), s("opened"));
    payload["build"]["source"] = json!("ui");
    let e = Event::from_value("build.finished", payload, Utc::now());
    assert_eq!(get(&e, "build.source_event"), Value::Null);
}

#[test]
fn transitions() {
    let broken = with_transition(fixture("build.finished.json"), TransitionKind::Broken);
    assert_eq!(get(&broken, "pipeline.started_failing"), Value::Bool(true));
    assert_eq!(get(&broken, "pipeline.started_passing"), Value::Bool(false));

    let fixed = with_transition(fixture("build.finished.passed.json"), TransitionKind::Fixed);
    assert_eq!(get(&fixed, "pipeline.started_failing"), Value::Bool(false));
    assert_eq!(get(&fixed, "pipeline.started_passing"), Value::Bool(true));

    for kind in [TransitionKind::StillFailing, TransitionKind::Passing] {
        let e = with_transition(fixture("build.finished.json"), kind);
        assert_eq!(get(&e, "pipeline.started_failing"), Value::Bool(false));
        assert_eq!(get(&e, "pipeline.started_passing"), Value::Bool(false));
    }

    assert!(holds(
        &broken,
        r#"pipeline.started_failing && build.branch == pipeline.default_branch"#
    ));
    assert!(!holds(&fixed, "pipeline.started_failing"));
    // Without a transition the flags are null: falsy, and `!` of null is true.
    let none = fixture("build.finished.json");
    assert!(!holds(&none, "pipeline.started_failing"));
    assert!(holds(&none, "pipeline.started_failing == null"));
}

#[test]
fn end_to_end_conditions() {
    let failed = fixture("build.finished.json");
    let passed = fixture("build.finished.passed.json");
    let cond = r#"build.state == "failed" && build.branch == pipeline.default_branch"#;
    assert!(holds(&failed, cond));
    assert!(!holds(&passed, cond));
    assert!(!holds(&fixture("build.finished.pull-request.json"), cond));
    assert!(!holds(&fixture("agent.lost.json"), cond));

    let skip = r"build.message !~ /\[skip notify\]/i && organization.slug == 'acme'";
    assert!(holds(&failed, skip));
    assert!(!holds(&fixture("job.finished.real.json"), skip));

    let job = fixture("job.finished.json");
    assert!(holds(
        &job,
        r#"event =~ /^job\./ && job.state == "failed" && build.number == 1842"#
    ));
    assert!(!holds(
        &job,
        r#"job.state == "passed" || build.tag != null"#
    ));
}
