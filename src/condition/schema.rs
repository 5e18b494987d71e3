//! The variables a condition may name, and their types.

use std::collections::BTreeMap;

/// The type of a schema variable. Any variable may also be null at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    String,
    Integer,
    Boolean,
    StringArray,
}

/// Variable paths (`build.branch`) and their types, supplied by the caller.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    vars: BTreeMap<String, Type>,
    /// The only values some string variables take (`build.state`), as upstream's enum types.
    values: BTreeMap<String, &'static [&'static str]>,
    /// `env("X")` is refused: it reads the environment of the agent that uploads a pipeline.
    no_plain_env: bool,
}

/// The `BUILDKITE_*` names `build.env()` may read, as buildkite/conditional's env.go lists
/// them (Buildkite's server allowlist); any other `BUILDKITE_*` name is refused (names the
/// pipeline defines are all allowed).
pub const BUILD_ENV_BUILDKITE_NAMES: &[&str] = &[
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

/// Whether `build.env(name)` may read `name` under Buildkite's rules. Upstream's env.go also
/// lets a name chosen at run time be `BUILDKITE_PULL_REQUEST_LABELS` (the pull request's
/// labels); webhook payloads carry no labels, so here that name is refused at run time too.
pub fn build_env_allows(name: &str) -> bool {
    !name.starts_with("BUILDKITE_") || BUILD_ENV_BUILDKITE_NAMES.contains(&name)
}

impl Schema {
    pub fn new() -> Schema {
        Schema::default()
    }

    /// Adds (or replaces) a variable.
    pub fn with(mut self, path: &str, ty: Type) -> Schema {
        self.insert(path, ty);
        self
    }

    pub fn insert(&mut self, path: &str, ty: Type) {
        self.vars.insert(path.to_owned(), ty);
    }

    /// Declares the only values the string variable `path` takes, so comparing it with any
    /// other string literal is refused when the condition compiles.
    pub fn with_values(mut self, path: &str, values: &'static [&'static str]) -> Schema {
        self.values.insert(path.to_owned(), values);
        self
    }

    /// The values `path` is limited to, if it has such a list.
    pub fn values(&self, path: &str) -> Option<&'static [&'static str]> {
        self.values.get(path).copied()
    }

    /// Refuses `env("X")`, for callers without an uploading agent's environment.
    pub fn without_plain_env(mut self) -> Schema {
        self.no_plain_env = true;
        self
    }

    /// Whether `env("X")` is allowed.
    pub fn plain_env(&self) -> bool {
        !self.no_plain_env
    }

    pub fn get(&self, path: &str) -> Option<Type> {
        self.vars.get(path).copied()
    }

    /// Up to three known names closest to `name` by edit distance, for "did you mean".
    pub fn nearest(&self, name: &str) -> Vec<String> {
        nearest(name, self.vars.keys().map(String::as_str))
    }
}

/// Up to three of `known` closest to `name` (a typo's likely meaning), nearest first.
pub fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let limit = (name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(3)
        .map(|(_, k)| k.to_string())
        .collect()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
