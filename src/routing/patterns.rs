//! Glob lists with `!` negation, as used by a route's `events`, `pipelines`, `branches` and
//! `states`.

use globset::{Glob, GlobSet, GlobSetBuilder};
use thiserror::Error;

/// A pattern that does not compile.
#[derive(Debug, Error)]
#[error("invalid pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A compiled list of globs: holds when any plain entry matches and no `!` entry does.
///
/// An empty list holds for everything, including a missing value. A list of only `!` entries
/// holds for every present value those entries do not exclude. `*` matches `/` too, so
/// `release/*` covers `release/2026/11`.
#[derive(Debug, Clone, Default)]
pub struct PatternList {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// The patterns as written, to explain a match.
    written: Vec<String>,
}

impl PatternList {
    /// Compiles `patterns`.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let mut include = GlobSetBuilder::new();
        let mut exclude = GlobSetBuilder::new();
        let (mut has_include, mut has_exclude) = (false, false);
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let (negated, glob) = match pattern.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, pattern),
            };
            if glob.is_empty() {
                return Err(PatternError {
                    pattern: pattern.to_string(),
                    reason: "empty pattern".into(),
                });
            }
            let compiled = Glob::new(glob).map_err(|e| PatternError {
                pattern: pattern.to_string(),
                reason: e.kind().to_string(),
            })?;
            if negated {
                exclude.add(compiled);
                has_exclude = true;
            } else {
                include.add(compiled);
                has_include = true;
            }
        }
        let build = |b: GlobSetBuilder, used: bool| -> Result<Option<GlobSet>, PatternError> {
            if !used {
                return Ok(None);
            }
            b.build().map(Some).map_err(|e| PatternError {
                pattern: patterns
                    .iter()
                    .map(|p| p.as_ref())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            include: build(include, has_include)?,
            exclude: build(exclude, has_exclude)?,
            written: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
        })
    }

    /// The patterns as written.
    pub fn written(&self) -> &[String] {
        &self.written
    }

    /// True when the list places no condition.
    pub fn is_empty(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    /// Whether `value` passes the list.
    pub fn matches(&self, value: Option<&str>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(value) = value else { return false };
        if self.exclude.as_ref().is_some_and(|ex| ex.is_match(value)) {
            return false;
        }
        self.include.as_ref().is_none_or(|inc| inc.is_match(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_globs_with_negation() {
        let cases: &[(&[&str], Option<&str>, bool)] = &[
            (&[], None, true),
            (&[], Some("anything"), true),
            (&["main"], Some("main"), true),
            (&["main"], Some("mainline"), false),
            (&["main"], None, false),
            (&["release/*"], Some("release/1.2"), true),
            (&["release/*"], Some("release/2026/11"), true),
            (&["web-*", "!web-sandbox"], Some("web-app"), true),
            (&["web-*", "!web-sandbox"], Some("web-sandbox"), false),
            (&["web-*", "!web-sandbox"], Some("api"), false),
            (&["!web-sandbox"], Some("api"), true),
            (&["!web-sandbox"], Some("web-sandbox"), false),
            (&["!web-sandbox"], None, false),
            (&["build.*"], Some("build.finished"), true),
            (&["build.*"], Some("job.finished"), false),
            (&["*"], Some("cluster_token.registration_blocked"), true),
            (&["job.{finished,activated}"], Some("job.activated"), true),
            (&["Main"], Some("main"), false),
        ];
        for (patterns, value, want) in cases {
            let list = PatternList::new(patterns).unwrap();
            assert_eq!(list.matches(*value), *want, "{patterns:?} on {value:?}");
        }
    }

    #[test]
    fn rejects_empty_and_broken_patterns() {
        for bad in [&["!"][..], &[""], &["feature/[a-"]] {
            let err = PatternList::new(bad).unwrap_err();
            assert_eq!(err.pattern, bad[0]);
        }
    }
}
