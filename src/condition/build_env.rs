//! `build.env("BUILDKITE_…")`: Buildkite's built-in names, answered from the webhook payload.
//!
//! In Buildkite, `build.env("BUILDKITE_BRANCH")` is the build's own branch whatever the
//! pipeline's environment says, and a webhook's `build.env` object rarely carries these names.
//! So each name the payload can answer is derived from its fields, as buildkite/conditional's
//! `builtinEnv` derives it from a build (an unset tag or message is `""`, a build without a
//! pull request has `BUILDKITE_PULL_REQUEST` `"false"`). A field the payload does not have at
//! all (an event without a build, a payload without `triggered_from`) falls back to the
//! `build.env` entry of that name.

use crate::event::lookup;
use serde_json::Value as Json;

/// How a built-in name is read from the payload.
enum From {
    /// A string field; `blank` is the value when the field is present but null.
    Field(&'static str, Option<&'static str>),
    /// The pull request's id, `"false"` when the build has none.
    PullRequest,
    /// The organization's slug, as the `organization.slug` variable finds it.
    OrgSlug,
}

/// The built-in names the payload answers, and from where.
const BUILTINS: &[(&str, From)] = &[
    ("BUILDKITE_BRANCH", From::Field("build.branch", None)),
    ("BUILDKITE_TAG", From::Field("build.tag", Some(""))),
    ("BUILDKITE_MESSAGE", From::Field("build.message", Some(""))),
    ("BUILDKITE_COMMIT", From::Field("build.commit", None)),
    ("BUILDKITE_REPO", From::Field("pipeline.repository", None)),
    (
        "BUILDKITE_PIPELINE_SLUG",
        From::Field("pipeline.slug", None),
    ),
    (
        "BUILDKITE_PIPELINE_NAME",
        From::Field("pipeline.name", None),
    ),
    ("BUILDKITE_PIPELINE_ID", From::Field("pipeline.id", None)),
    ("BUILDKITE_ORGANIZATION_SLUG", From::OrgSlug),
    ("BUILDKITE_PULL_REQUEST", From::PullRequest),
    (
        "BUILDKITE_PULL_REQUEST_BASE_BRANCH",
        From::Field("build.pull_request.base", Some("")),
    ),
    (
        "BUILDKITE_PULL_REQUEST_REPO",
        From::Field("build.pull_request.repository", Some("")),
    ),
    (
        "BUILDKITE_TRIGGERED_FROM_BUILD_ID",
        From::Field("build.triggered_from.build_id", Some("")),
    ),
    (
        "BUILDKITE_TRIGGERED_FROM_BUILD_NUMBER",
        From::Field("build.triggered_from.build_number", Some("")),
    ),
    (
        "BUILDKITE_TRIGGERED_FROM_BUILD_PIPELINE_SLUG",
        From::Field("build.triggered_from.build_pipeline_slug", Some("")),
    ),
    (
        "BUILDKITE_REBUILT_FROM_BUILD_ID",
        From::Field("build.rebuilt_from.id", Some("")),
    ),
    (
        "BUILDKITE_REBUILT_FROM_BUILD_NUMBER",
        From::Field("build.rebuilt_from.number", Some("")),
    ),
];

/// `name`'s value derived from `payload`, or `None` when the payload cannot say (then the
/// `build.env` entry answers).
pub(crate) fn builtin(
    payload: &Json,
    name: &str,
    org_slug: impl Fn() -> Option<String>,
) -> Option<String> {
    let (_, from) = BUILTINS.iter().find(|(n, _)| *n == name)?;
    match from {
        From::Field(path, blank) => field(payload, path, *blank),
        From::PullRequest => match lookup(payload, "build.pull_request")? {
            Json::Null => Some("false".into()),
            _ => field(payload, "build.pull_request.id", Some("false"))
                .filter(|id| !id.is_empty())
                .or(Some("false".into())),
        },
        From::OrgSlug => org_slug(),
    }
}

/// The value at `path` when the payload has the key: a string as it is, a number as its
/// digits, null as `blank` (when the name has a blank value). A missing parent object (a
/// `rebuilt_from` of `null`) counts as null.
fn field(payload: &Json, path: &str, blank: Option<&str>) -> Option<String> {
    match lookup(payload, path) {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Number(n)) => Some(n.to_string()),
        Some(Json::Null) => blank.map(str::to_owned),
        Some(_) => None,
        None => {
            // `"rebuilt_from": null` says the build was not rebuilt.
            let parent = path.rsplit_once('.')?.0;
            matches!(lookup(payload, parent), Some(Json::Null))
                .then(|| blank.map(str::to_owned))
                .flatten()
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::condition::{Condition, EventVariables, Variables, event_schema};
    use crate::event::Event;
    use serde_json::{Value as Json, json};

    fn fixture(file: &str) -> Json {
        let path = format!(
            "{}/tests/fixtures/buildkite/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn env(payload: Json, name: &str) -> Option<String> {
        let event = Event::from_value("build.finished", payload, chrono::Utc::now());
        EventVariables::new(&event).env(name)
    }

    #[test]
    fn builtins_come_from_the_payload() {
        let build = fixture("build.finished.json");
        for (name, want) in [
            ("BUILDKITE_BRANCH", "main"),
            ("BUILDKITE_TAG", ""),
            (
                "BUILDKITE_COMMIT",
                "9f3c1e7a5b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e",
            ),
            ("BUILDKITE_REPO", "git@github.com:acme/web-app.git"),
            ("BUILDKITE_PIPELINE_SLUG", "web-app"),
            ("BUILDKITE_PIPELINE_NAME", "Web App"),
            (
                "BUILDKITE_PIPELINE_ID",
                "5c543cdf-7231-460d-9048-f6d5e1bbabf5",
            ),
            ("BUILDKITE_ORGANIZATION_SLUG", "acme"),
            ("BUILDKITE_PULL_REQUEST", "false"),
            ("BUILDKITE_PULL_REQUEST_BASE_BRANCH", ""),
            ("BUILDKITE_PULL_REQUEST_REPO", ""),
            ("BUILDKITE_REBUILT_FROM_BUILD_ID", ""),
            ("BUILDKITE_REBUILT_FROM_BUILD_NUMBER", ""),
        ] {
            assert_eq!(env(build.clone(), name).as_deref(), Some(want), "{name}");
        }
        assert!(
            env(build.clone(), "BUILDKITE_MESSAGE")
                .unwrap()
                .starts_with("Retry payment mock")
        );
        // The payload has no `triggered_from`: the build's env answers, else nothing.
        assert_eq!(
            env(build.clone(), "BUILDKITE_TRIGGERED_FROM_BUILD_ID"),
            None
        );

        let pr = fixture("build.finished.pull-request.json");
        assert_eq!(
            env(pr.clone(), "BUILDKITE_PULL_REQUEST").as_deref(),
            Some("4211")
        );
        assert_eq!(
            env(pr.clone(), "BUILDKITE_PULL_REQUEST_BASE_BRANCH").as_deref(),
            Some("main")
        );
        assert_eq!(
            env(pr, "BUILDKITE_BRANCH").as_deref(),
            Some("feature/checkout-totals")
        );

        let mut more = fixture("build.finished.json");
        more["build"]["tag"] = json!("v1.2");
        more["build"]["rebuilt_from"] = json!({"id": "b-1", "number": 1841, "url": "u"});
        more["build"]["triggered_from"] =
            json!({"build_id": "t-1", "build_number": 7, "build_pipeline_slug": "up"});
        for (name, want) in [
            ("BUILDKITE_TAG", "v1.2"),
            ("BUILDKITE_REBUILT_FROM_BUILD_ID", "b-1"),
            ("BUILDKITE_REBUILT_FROM_BUILD_NUMBER", "1841"),
            ("BUILDKITE_TRIGGERED_FROM_BUILD_ID", "t-1"),
            ("BUILDKITE_TRIGGERED_FROM_BUILD_NUMBER", "7"),
            ("BUILDKITE_TRIGGERED_FROM_BUILD_PIPELINE_SLUG", "up"),
        ] {
            assert_eq!(env(more.clone(), name).as_deref(), Some(want), "{name}");
        }
    }

    #[test]
    fn the_payload_wins_over_build_env_which_fills_in() {
        let mut payload = fixture("build.finished.json");
        payload["build"]["env"] = json!({
            "BUILDKITE_BRANCH": "stale",
            "BUILDKITE_GITHUB_EVENT": "push",
            "BUILDKITE_TRIGGERED_FROM_BUILD_ID": "from-env",
        });
        assert_eq!(
            env(payload.clone(), "BUILDKITE_BRANCH").as_deref(),
            Some("main")
        );
        assert_eq!(
            env(payload.clone(), "BUILDKITE_GITHUB_EVENT").as_deref(),
            Some("push")
        );
        assert_eq!(
            env(payload, "BUILDKITE_TRIGGERED_FROM_BUILD_ID").as_deref(),
            Some("from-env")
        );
        // An event without a build has none of them.
        assert_eq!(env(fixture("agent.lost.json"), "BUILDKITE_BRANCH"), None);
    }

    #[test]
    fn conditions_read_builtins() {
        // From buildkite/conditional regex_test.go: build.env("BUILDKITE_TAG") is the tag.
        let mut payload = fixture("build.finished.json");
        payload["build"]["tag"] = json!("v2.0");
        let event = Event::from_value("build.finished", payload, chrono::Utc::now());
        let vars = EventVariables::new(&event);
        for src in [
            r#"build.env("BUILDKITE_TAG") =~ /^v[0-9]+\.0$/"#,
            r#"build.env("BUILDKITE_BRANCH") == pipeline.default_branch"#,
            r#"build.env("BUILDKITE_PULL_REQUEST") == "false""#,
            r#"build.env("BUILDKITE_GITHUB_EVENT") == null"#,
        ] {
            let c = Condition::compile(src, event_schema()).unwrap();
            assert!(c.eval(&vars), "{src}");
        }
        let err = Condition::compile(r#"build.env("BUILDKITE_BRANC") == "x""#, event_schema())
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"did you mean "BUILDKITE_BRANCH""#), "{err}");
    }
}
