//! The `notify` recipes of README's "Routes in Buildkite's language", taken verbatim: run
//! with `render --explain` against every Buildkite fixture, and in the service with signed
//! webhooks and a recording Slack and Teams.

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

/// A `build.finished` of the fixture's pipeline on main, numbered, with this state and message.
fn finished_on_main(number: u64, state: &str, message: &str) -> Vec<u8> {
    let mut v = fixture_json("build.finished");
    v["build"]["number"] = number.into();
    v["build"]["state"] = state.into();
    v["build"]["message"] = message.into();
    serde_json::to_vec(&v).unwrap()
}

/// The build numbers in the titles of what the recorder received, in order of number.
fn numbers_received(rec: &Recorder) -> Vec<u64> {
    let mut numbers: Vec<u64> = rec
        .received()
        .iter()
        .map(|m| {
            let texts = strings(&m.json());
            texts
                .iter()
                .find_map(|t| {
                    t.contains("Web App #")
                        .then(|| build_number_in(t))
                        .flatten()
                })
                .unwrap_or_else(|| panic!("a message without a build title: {texts:?}"))
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

/// The same recipes, verbatim, in the running service: signed webhooks in, and the recording
/// Slack and Teams show exactly the builds each recipe means. The store gives the transitions,
/// so a fix after failures is `pipeline.started_passing`, and the scheduled, running and
/// failing events of a build on main never match: the recipes keep to `build.finished`.
#[tokio::test]
async fn notify_recipes_in_the_service_send_exactly_their_builds() {
    let mut sequence: Vec<Vec<u8>> = ["build.scheduled", "build.running", "build.failing"]
        .into_iter()
        .map(fixture)
        .collect();
    sequence.extend([
        finished_on_main(20, "passed", "Tidy the checkout form"), // passing
        finished_on_main(21, "failed", "Retry payment mock"),     // broken
        finished_on_main(22, "failed", "Retry it again"),         // still failing
        finished_on_main(23, "failed", "Bump the lockfile [Skip Notify]"),
        finished_on_main(24, "passed", "Fix the payment mock"), // fixed
    ]);
    sequence.push(fixture("build.finished.pull-request")); // #1843, the first failure of its branch
    let want: BTreeMap<&str, Vec<u64>> = [
        ("first failure", vec![21, 1843]),
        ("failures and the fix", vec![21, 22, 23, 24, 1843]),
        ("main", vec![20, 21, 22, 23, 24]),
        ("unless skipped", vec![21, 22, 1843]),
    ]
    .into_iter()
    .collect();

    let recipes = recipes();
    let names: Vec<&str> = recipes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "first failure",
            "failures and the fix",
            "main",
            "unless skipped"
        ]
    );
    for (name, text) in &recipes {
        let rec = Recorder::start().await;
        let toml = config_for(&rec, "").replace(
            "[[routes]]\nname = \"everything\"\nevents = [\"*\"]\nto = [\"slack\", \"teams\"]\n",
            text,
        );
        let app = TestApp::spawn(&toml).await;
        for body in &sequence {
            let (status, answer) = app.post_signed(body).await;
            assert!(status == 200 || status == 202, "{name}: {status} {answer}");
        }
        let expected = &want[name.as_str()];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while rec.received().len() < expected.len() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(&numbers_received(&rec), expected, "{name}");
        app.stop().await;
    }
}
