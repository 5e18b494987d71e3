//! The `notify` recipes of README's "Routes in Buildkite's language", taken verbatim, and
//! run with `render --explain` against every Buildkite fixture.

use crate::helpers::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Where the section lives.
const DOC: &str = "README.md";
const SECTION: &str = "Routes in Buildkite's language";

/// Each recipe's name and its `[[routes]]` text, as the docs show them.
fn recipes() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC)).unwrap();
    let section = doc
        .split_once(&format!(" {SECTION}\n"))
        .unwrap_or_else(|| panic!("{DOC} has a section {SECTION:?}"))
        .1;
    let block = section
        .split_once("`notify` examples")
        .expect("the recipes follow the words \"`notify` examples\"")
        .1
        .split_once("```toml\n")
        .unwrap()
        .1
        .split_once("```")
        .unwrap()
        .0;
    block
        .split("[[routes]]")
        .skip(1)
        .map(|text| {
            let text = format!("[[routes]]{text}");
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .and_then(|l| l.strip_suffix('"'))
                .expect("each recipe has a name")
                .to_owned();
            (name, text)
        })
        .collect()
}

/// Whether the single route of `config` matches `payload`, per `render --explain`.
fn matches(config: &Path, payload: &Path) -> bool {
    let out = kitebridge(&[
        "render",
        "--explain",
        "--format",
        "json",
        "--config",
        config.to_str().unwrap(),
        "--payload",
        payload.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", payload.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let routes = v["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{}", payload.display());
    routes[0]["matched"] == true
}

#[test]
fn notify_recipes_match_the_fixtures_they_describe() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/buildkite");
    let mut payloads: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    payloads.sort();
    // One more: the failed build on main, its commit saying [skip notify].
    let failed = std::fs::read_to_string(fixtures.join("build.finished.json")).unwrap();
    let mut skip: serde_json::Value = serde_json::from_str(&failed).unwrap();
    skip["build"]["message"] = "Bump the lockfile [Skip Notify]".into();
    let skip_path = dir.path().join("skip-notify.json");
    std::fs::write(&skip_path, skip.to_string()).unwrap();
    payloads.push(skip_path);

    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, text) in recipes() {
        let config = dir.path().join("recipe.toml");
        std::fs::write(
            &config,
            format!(
                "[buildkite]\ntoken = \"t\"\n\n[destinations.slack]\nkind = \"console\"\n\n\
                 [destinations.teams]\nkind = \"console\"\n\n{text}"
            ),
        )
        .unwrap();
        let matched = payloads
            .iter()
            .filter(|p| matches(&config, p))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        got.insert(name, matched);
    }

    // A dry run has no store, so a failed build is the first failure of its branch and a
    // passed one is not a fix: "passing", not "fixed".
    let want: BTreeMap<String, Vec<String>> = [
        (
            "first failure",
            &[
                "build.finished.json",
                "build.finished.pull-request.json",
                "skip-notify.json",
            ][..],
        ),
        (
            "failures and the fix",
            &[
                "build.finished.json",
                "build.finished.pull-request.json",
                "skip-notify.json",
            ],
        ),
        (
            "main",
            &[
                "build.finished.blocked.json",
                "build.finished.canceled.json",
                "build.finished.json",
                "build.finished.passed.json",
                "skip-notify.json",
            ],
        ),
        (
            "unless skipped",
            &["build.finished.json", "build.finished.pull-request.json"],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.iter().map(|s| s.to_string()).collect()))
    .collect();
    assert_eq!(got, want);
}
