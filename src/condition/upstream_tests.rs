//! More of buildkite/conditional's cases (commit af63d27), as they apply to a webhook: each
//! expression compiles against the webhook schema and evaluates against a payload. Each table
//! names its source file. Where kitebridge differs on purpose (shell substitution, variables a
//! webhook does not carry, enumerated variables in more positions) the case asserts our
//! behaviour; every such difference is in README's differences list.

use super::{Condition, ConditionError, EventVariables, event_schema};
use crate::event::Event;
use crate::transition::{Transition, TransitionKind};
use serde_json::{Value as Json, json};

/// A `build.finished` webhook with these `build` and `pipeline` objects.
fn event(build: Json, pipeline: Json) -> Event {
    let payload = json!({
        "event": "build.finished",
        "build": build,
        "pipeline": pipeline,
        "organization": {"id": "organization-uuid", "slug": "organization-slug"},
    });
    Event::from_value("build.finished", payload, chrono::Utc::now())
}

fn with_transition(mut e: Event, kind: TransitionKind) -> Event {
    e.set_transition(Some(Transition {
        kind,
        previous_state: None,
        previous_number: None,
        consecutive_failures: 0,
    }));
    e
}

fn holds(e: &Event, src: &str) -> bool {
    Condition::compile(src, event_schema())
        .unwrap_or_else(|err| panic!("{src}: {err}"))
        .eval(&EventVariables::new(e))
}

fn refused(src: &str) -> ConditionError {
    match Condition::compile(src, event_schema()) {
        Ok(_) => panic!("{src}: expected a refusal"),
        Err(e) => e,
    }
}

/// The build of context_test.go's assignment matrix, as a payload.
fn full_build() -> Event {
    event(
        json!({
            "id": "build-uuid", "state": "scheduled", "blocked_state": "passed",
            "source": "webhook", "branch": "the-branch", "tag": "the-tag",
            "message": "the-message", "commit": "the-commit", "number": 1234,
            "creator": {"id": "created-by-uuid", "name": "Created By Name",
                        "email": "created_by@email.com"},
            "author": {"name": "Authored By Name", "email": "authored_by@email.com"},
            "pull_request": {"id": "1234", "base": "base-branch-party",
                             "repository": "git@github.com:acme/repo.git"},
            "env": {"BUILDKITE_GITHUB_EVENT": "pull_request", "BUILDKITE_GITHUB_ACTION": "labeled",
                    "CUSTOM_ENVIRONMENT_VARIABLE": "value"},
        }),
        json!({"id": "pipeline-uuid", "slug": "pipeline-slug", "name": "Deploy",
               "default_branch": "main", "repository": "git@github.com:acme/repo.git"}),
    )
}

#[test]
fn conformance_cases() {
    // From conformance_test.go.
    let main = event(json!({"branch": "main"}), json!({}));
    assert!(holds(
        &main,
        r#"build.branch == "main" || build.branch == "production""#
    ));
    assert!(holds(
        &full_build(),
        r#"build.env("CUSTOM_ENVIRONMENT_VARIABLE") == "value""#
    ));
    assert!(!holds(&main, "null =~ /main|development/"));
    assert!(holds(&main, "1 == 2 ? 3 == 4 : 5 == 5"));
    // Differences: webhook payloads carry no teams, merge queue or step, and `${…}` needs an
    // environment a webhook does not have.
    for (src, why) in [
        (
            r#"build.creator.teams includes "deploy""#,
            "unknown variable",
        ),
        (
            r#"build.merge_queue.base_branch == "main""#,
            "unknown variable",
        ),
        (r#"step.outcome == "hard_failed""#, "unknown variable"),
        (r#"${notset:-fallback} == "fallback""#, "$"),
    ] {
        let err = refused(src).to_string();
        assert!(err.contains(why), "{src}: {err}");
    }
    // A notification's parse error is false in Buildkite; a route's is refused at load.
    refused("nope != == one");
}

#[test]
fn context_assignment_cases() {
    // From context_test.go, the variables a webhook carries.
    let b = full_build();
    for src in [
        r#"build.id == "build-uuid" && build.state == "scheduled" && build.blocked_state == "passed" && build.source == "webhook" && build.branch == "the-branch" && build.tag == "the-tag" && build.message == "the-message" && build.commit == "the-commit" && build.number == 1234"#,
        r#"build.source_event == "pull_request" && build.source_action == "labeled""#,
        r#"build.creator.id == "created-by-uuid" && build.creator.name == "Created By Name" && build.creator.email == "created_by@email.com""#,
        r#"build.author.name == "Authored By Name" && build.author.email == "authored_by@email.com""#,
        r#"build.pull_request.id == "1234" && build.pull_request.base_branch == "base-branch-party" && build.pull_request.repository == "git@github.com:acme/repo.git""#,
        r#"pipeline.id == "pipeline-uuid" && pipeline.slug == "pipeline-slug" && pipeline.default_branch == "main" && pipeline.repository == "git@github.com:acme/repo.git""#,
        r#"organization.id == "organization-uuid" && organization.slug == "organization-slug""#,
        r#"build.branch != "production""#,
    ] {
        assert!(holds(&b, src), "{src}");
    }
    let passing = with_transition(full_build(), TransitionKind::Passing);
    assert!(holds(&passing, "!build.fixed"));
    let fixed = with_transition(full_build(), TransitionKind::Fixed);
    assert!(holds(
        &fixed,
        "pipeline.started_passing && !pipeline.started_failing && build.fixed"
    ));
    let scheduled = event(json!({"source": "schedule"}), json!({}));
    assert!(holds(&scheduled, r#"build.source == "schedule""#));
    assert!(holds(&scheduled, "build.source_event == null"));

    // Null without values: an empty build and pipeline.
    let empty = event(json!({}), json!({}));
    for src in [
        "build.id == null && build.state == null && build.fixed == null && build.blocked_state == null && build.source == null && build.source_event == null && build.source_action == null && build.branch == null && build.tag == null && build.message == null && build.commit == null && build.number == null",
        "build.creator.id == null && build.creator.name == null && build.creator.email == null && build.author.name == null && build.author.email == null",
        "build.pull_request.id == null && build.pull_request.base_branch == null && build.pull_request.repository == null",
        "pipeline.id == null && pipeline.slug == null && pipeline.default_branch == null && pipeline.repository == null && pipeline.started_passing == null && pipeline.started_failing == null",
    ] {
        assert!(holds(&empty, src), "{src}");
    }

    // The presence matrix: blank is null for Buildkite's presence set only.
    let blank = event(
        json!({"tag": " ", "message": "", "branch": " ", "commit": "",
               "author": {"name": "", "email": " "}}),
        json!({"default_branch": "", "repository": " ", "slug": " "}),
    );
    for src in [
        r#"build.tag == null && build.message == null && build.branch == " " && build.commit == """#,
        "build.author.name == null && build.author.email == null",
        r#"pipeline.default_branch == null && pipeline.repository == null && pipeline.slug == " ""#,
    ] {
        assert!(holds(&blank, src), "{src}");
    }

    // Not server conditional variables, or not in a webhook (differences, all refused).
    for src in [
        r#"pipeline.name == "Deploy""#,
        "lol",
        r#"build.pull_request.label == "docs""#,
        r#"build.scm.author.name == "Samantha Carter""#,
        "build.creator.verified",
        "pipeline.next_finished_build_exists",
        r#"step.key == "deploy""#,
    ] {
        assert!(
            matches!(refused(src), ConditionError::UnknownVariable { .. }),
            "{src}"
        );
    }
}

#[test]
fn context_env_cases() {
    // From context_test.go: built-in names come from the build, not its env.
    let mut b = full_build();
    let payload = {
        let mut p = b.payload().clone();
        p["build"]["branch"] = json!("main");
        p["build"]["tag"] = json!("v1.2.3");
        p["build"]["message"] = json!("ship it");
        p["build"]["commit"] = json!("abc123");
        p["build"]["pull_request"] =
            json!({"id": "123", "base": "main", "repository": "git@github.com:acme/repo.git"});
        p["build"]["env"]["BUILDKITE_BRANCH"] = json!("not-the-one");
        p["build"]["env"]["BUILDKITE_GITHUB_REVIEW_STATE"] = json!("approved");
        p["pipeline"] = json!({"name": "Deploy", "slug": "deploy", "id": "018f",
                               "repository": "git@github.com:acme/repo.git"});
        p["organization"] = json!({"slug": "acme"});
        p
    };
    b = Event::from_value("build.finished", payload, chrono::Utc::now());
    assert!(holds(
        &b,
        r#"build.env("BUILDKITE_BRANCH") == "main" && build.env("BUILDKITE_TAG") == "v1.2.3" && build.env("BUILDKITE_MESSAGE") == "ship it" && build.env("BUILDKITE_COMMIT") == "abc123" && build.env("BUILDKITE_PIPELINE_NAME") == "Deploy" && build.env("BUILDKITE_PIPELINE_SLUG") == "deploy" && build.env("BUILDKITE_PIPELINE_ID") == "018f" && build.env("BUILDKITE_REPO") == "git@github.com:acme/repo.git" && build.env("BUILDKITE_ORGANIZATION_SLUG") == "acme" && build.env("BUILDKITE_PULL_REQUEST") == "123" && build.env("BUILDKITE_PULL_REQUEST_BASE_BRANCH") == "main" && build.env("BUILDKITE_PULL_REQUEST_REPO") == "git@github.com:acme/repo.git""#
    ));
    assert!(holds(
        &b,
        r#"build.env("BUILDKITE_GITHUB_REVIEW_STATE") == "approved""#
    ));
    // Blank defaults where the payload says "none": a `rebuilt_from` of null. A payload
    // without `triggered_from` cannot say, so those are null (a difference).
    let plain = event(json!({"rebuilt_from": null, "tag": null}), json!({}));
    assert!(holds(
        &plain,
        r#"build.env("BUILDKITE_REBUILT_FROM_BUILD_ID") == "" && build.env("BUILDKITE_REBUILT_FROM_BUILD_NUMBER") == "" && build.env("BUILDKITE_TAG") == "" && build.env("BUILDKITE_TRIGGERED_FROM_BUILD_ID") == null"#
    ));
    // Refused names, with Buildkite's suggestions.
    for (src, hint) in [
        (
            r#"build.env("BUILDKITE_MESSGE") == null"#,
            r#"did you mean "BUILDKITE_MESSAGE""#,
        ),
        (
            r#"build.env("BUILDKITE_PULL_REQUEST_LABELS") == null"#,
            r#""BUILDKITE_PULL_REQUEST""#,
        ),
        (
            r#"build.env("BUILDKITE_AGENT_ACCESS_TOKEN") == null"#,
            "is not one",
        ),
        // env() reads the uploading agent's environment, which a webhook has not.
        (
            r#"env("DEPLOY_ENV") == "build""#,
            "env() reads the environment",
        ),
        (
            r#"env("$$BUILDKITE_MESSAGE") == "blah""#,
            "shell substitution",
        ),
    ] {
        let err = refused(src).to_string();
        assert!(err.contains(hint), "{src}: {err}");
    }
}

#[test]
fn enum_cases() {
    // From eval_test.go and syntax_test.go.
    let passed = event(json!({"state": "passed"}), json!({}));
    let started = event(json!({"state": "started"}), json!({}));
    assert!(holds(&started, r#"build.state == "started""#));
    for src in [
        r#"build.state == "started_failing""#,
        r#"build.state == "faillled""#,
        r#""faillled" == build.state"#,
        r#"build.state == "\\\$STATE""#,
    ] {
        assert!(
            refused(src)
                .to_string()
                .contains("is not a valid build.state"),
            "{src}"
        );
    }
    // Differences: Buildkite refuses an enumerated variable in these positions; they are
    // well-defined, so kitebridge accepts them.
    for src in [
        r#"["passed", "failed"] includes build.state"#,
        r#"[build.state] includes "passed""#,
        "build.state == build.state",
        r#""passed" == build.state"#,
        "build.state =~ /pass/",
    ] {
        assert!(holds(&passed, src), "{src}");
    }
    // `${STATE}` is shell substitution: refused (a difference).
    refused(r#"build.state == "${STATE}""#);
}

#[test]
fn eval_null_and_shell_cases() {
    // From eval_test.go.
    let untagged = event(json!({"tag": null}), json!({}));
    let c = Condition::compile(r#"[build.tag] includes "v1.0""#, event_schema()).unwrap();
    assert!(matches!(
        c.eval_value(&EventVariables::new(&untagged)),
        Err(ConditionError::Eval { .. })
    ));
    assert!(!c.eval(&EventVariables::new(&untagged)));
    // Shell substitution and `$` in double quotes are refused (a difference); single quotes
    // and `\$` keep a literal `$`.
    for src in [
        "false && ${notset:?} == \"x\"",
        "true || ${notset:?} == \"x\"",
        "[${notset}] includes \"x\"",
        "$branch == \"main\"",
        "${branch} == \"main\"",
        "${notset-xx} == \"xx\"",
        "${branch:1:2} == \"ai\"",
        "\"${branch}\" == \"main\"",
        "\"cost $$5\" == \"cost $5\"",
        r#""fee$" =~ /fee\$/"#,
    ] {
        assert!(
            matches!(refused(src), ConditionError::Syntax { .. }),
            "{src}"
        );
    }
    assert!(holds(&untagged, r#"'$branch' == "\$branch""#));
}

#[test]
fn regex_cases() {
    // From regex_test.go.
    let b = event(json!({"message": "run all tests"}), json!({}));
    assert!(holds(&b, r"build.message !~ /\[skip tests\]/i"));
    assert!(holds(&b, r"'fee$' =~ /fee\$/"));
}

#[test]
fn env_name_cases() {
    // From syntax_test.go: Buildkite refuses a `$` in env()'s name. Webhook routes refuse
    // env() itself; build.env() with a written `$` name is refused too.
    for src in [r#"env("$$FOO") == """#, r#"env("\$FOO") == """#] {
        refused(src);
    }
    let err = refused(r#"build.env("\$FOO") == null"#).to_string();
    assert!(err.contains("$"), "{err}");
}

#[test]
fn env_allowlist_cases() {
    // From env_test.go: the server's BUILDKITE_* allowlist, in its order.
    let allowlist = [
        "BUILDKITE_BRANCH",
        "BUILDKITE_TAG",
        "BUILDKITE_MESSAGE",
        "BUILDKITE_COMMIT",
        "BUILDKITE_PIPELINE_SLUG",
        "BUILDKITE_PIPELINE_NAME",
        "BUILDKITE_PIPELINE_ID",
        "BUILDKITE_ORGANIZATION_SLUG",
        "BUILDKITE_TRIGGERED_FROM_BUILD_ID",
        "BUILDKITE_TRIGGERED_FROM_BUILD_NUMBER",
        "BUILDKITE_TRIGGERED_FROM_BUILD_PIPELINE_SLUG",
        "BUILDKITE_TRIGGERED_FROM_BUILD_JOB_ID",
        "BUILDKITE_REBUILT_FROM_BUILD_ID",
        "BUILDKITE_REBUILT_FROM_BUILD_NUMBER",
        "BUILDKITE_REPO",
        "BUILDKITE_PULL_REQUEST",
        "BUILDKITE_PULL_REQUEST_BASE_BRANCH",
        "BUILDKITE_PULL_REQUEST_REPO",
        "BUILDKITE_PULL_REQUEST_USING_MERGE_REFSPEC",
        "BUILDKITE_MERGE_QUEUE_BASE_BRANCH",
        "BUILDKITE_MERGE_QUEUE_BASE_COMMIT",
        "BUILDKITE_GIT_DIFF_BASE",
        "BUILDKITE_GITHUB_ACTION",
        "BUILDKITE_GITHUB_COMMENT_ID",
        "BUILDKITE_GITHUB_DEPLOYMENT_ID",
        "BUILDKITE_GITHUB_DEPLOYMENT_TASK",
        "BUILDKITE_GITHUB_DEPLOYMENT_ENVIRONMENT",
        "BUILDKITE_GITHUB_DEPLOYMENT_PAYLOAD",
        "BUILDKITE_GITHUB_EVENT",
        "BUILDKITE_GITHUB_REVIEW_ID",
        "BUILDKITE_GITHUB_CHECK_RUN_CONCLUSION",
        "BUILDKITE_GITHUB_CHECK_RUN_NAME",
        "BUILDKITE_GITHUB_DEPLOYMENT_STATUS_ENVIRONMENT",
        "BUILDKITE_GITHUB_DEPLOYMENT_STATUS_STATE",
        "BUILDKITE_GITHUB_RELEASE_DRAFT",
        "BUILDKITE_GITHUB_RELEASE_PRERELEASE",
        "BUILDKITE_GITHUB_RELEASE_TAG",
        "BUILDKITE_GITHUB_REVIEW_STATE",
    ];
    assert_eq!(super::schema::BUILD_ENV_BUILDKITE_NAMES, allowlist);
    // Every allowed name validates with build.env(); env() is refused for a webhook (a
    // difference: it reads the uploading agent's environment).
    for name in allowlist {
        let src = format!("build.env({name:?}) != null");
        Condition::compile(&src, event_schema()).unwrap_or_else(|e| panic!("{src}: {e}"));
        let err = refused(&format!("env({name:?}) != null")).to_string();
        assert!(err.contains("env() reads the environment"), "{name}: {err}");
    }
    // The documented GitHub names come from the build's env.
    for name in allowlist
        .iter()
        .filter(|n| n.starts_with("BUILDKITE_GITHUB_"))
    {
        let mut payload = full_build().payload().clone();
        payload["build"]["env"] = json!({ *name: "from-build-env" });
        let e = Event::from_value("build.finished", payload, chrono::Utc::now());
        assert!(
            holds(&e, &format!("build.env({name:?}) == \"from-build-env\"")),
            "{name}"
        );
    }
}

#[test]
fn eval_shell_forms_and_quoting_cases() {
    // From eval_test.go: every shell substitution form is refused here (a difference: a
    // webhook has no environment to substitute from), in double quotes too.
    for src in [
        r#"$branch.deploy == "main.deploy""#,
        "${notset} == null",
        r#"${notset:?} == "error""#,
        r#"${branch-xx} == "main""#,
        r#"${branch+xx} == "xx""#,
        r#"${notset+xx} == """#,
        r#"${empty:-xx} == "xx""#,
        r#"${empty:+xx} == """#,
        r#"${branch:2} == "in""#,
        r#"${branch: -1} == "n""#,
        r#"${branch:2:$two} == "in""#,
        r#"${branch:${empty:-1}:${two+2}} == "ai""#,
        r#"${branch:25:2} == """#,
        r#"${branch:3:$tag} == "error""#,
        r#""C:\\${branch}" == "C:\\main""#,
        r#"${notset-\x41\svalue} == "A value""#,
        r#"${notset-"${branch}"} == "main""#,
        r#"${notset-"}"} == "}""#,
        r#"${notset-\400} == """#,
        r#"${notset-'quoted fallback'} == "quoted fallback""#,
    ] {
        assert!(
            matches!(refused(src), ConditionError::Syntax { .. }),
            "{src}"
        );
    }
    // Quoting that keeps `$` literal means the same as in Buildkite.
    let b = event(json!({"branch": "main"}), json!({}));
    assert!(!holds(&b, r#"'${branch}' == "main""#));
    assert!(holds(&b, r#""\\\$branch" == '\$branch'"#));
}

#[test]
fn context_indirect_env_name_cases() {
    // From context_test.go: a name chosen at run time is looked up as written (any
    // characters), and an empty or disallowed BUILDKITE_* one fails closed: an evaluation
    // error, so the route does not match.
    let with_env = |env: Json| {
        let mut payload = full_build().payload().clone();
        payload["build"]["env"] = env;
        Event::from_value("build.finished", payload, chrono::Utc::now())
    };
    let custom = with_env(json!({"SECRET_NAME": "FOO-BAR", "FOO-BAR": "value"}));
    assert!(holds(
        &custom,
        r#"build.env(build.env("SECRET_NAME")) == "value""#
    ));
    let missing = with_env(json!({"SECRET_NAME": "MISSING_SECRET"}));
    assert!(holds(
        &missing,
        r#"build.env(build.env("SECRET_NAME")) == null"#
    ));
    for env in [
        json!({"SECRET_NAME": "BUILDKITE_AGENT_ACCESS_TOKEN", "BUILDKITE_AGENT_ACCESS_TOKEN": "secret"}),
        json!({"SECRET_NAME": ""}),
    ] {
        let e = with_env(env);
        let c = Condition::compile(
            r#"build.env(build.env("SECRET_NAME")) == null || build.env(build.env("SECRET_NAME")) == """#,
            event_schema(),
        )
        .unwrap();
        let vars = EventVariables::new(&e);
        assert!(matches!(
            c.eval_value(&vars),
            Err(ConditionError::Eval { .. })
        ));
        assert!(!c.eval(&vars));
    }
}
