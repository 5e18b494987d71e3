//! A route's `[[routes.when]]` conditions on any payload field.

use crate::event::lookup;
use regex::Regex;
use serde_json::Value;
use thiserror::Error;

/// What a condition tests at its path.
#[derive(Debug, Clone)]
pub enum Test {
    /// The value equals this one (numbers compare by value, so `1` equals `1.0`).
    Equals(Value),
    /// The value equals one of these.
    In(Vec<Value>),
    /// The value, as text (strings, numbers, booleans), matches this regex anywhere.
    Matches(Regex),
    /// The path is present and not `null` (`true`), or absent or `null` (`false`).
    Exists(bool),
}

/// A condition that could not be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConditionError {
    /// The path is empty or has an empty segment.
    #[error("path {0:?} is not a dot path such as \"build.source\"")]
    BadPath(String),
    /// The regex does not compile.
    #[error("invalid regex {pattern:?}: {reason}")]
    BadRegex {
        /// The pattern as written.
        pattern: String,
        /// The compiler's complaint, first line.
        reason: String,
    },
}

/// One compiled `when` entry.
#[derive(Debug, Clone)]
pub struct Condition {
    path: String,
    test: Test,
}

impl Condition {
    /// A condition testing `path` with `test`.
    pub fn new(path: &str, test: Test) -> Result<Self, ConditionError> {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(ConditionError::BadPath(path.to_string()));
        }
        Ok(Self {
            path: path.to_string(),
            test,
        })
    }

    /// Compiles a `matches` regex.
    pub fn regex(pattern: &str) -> Result<Test, ConditionError> {
        Regex::new(pattern)
            .map(Test::Matches)
            .map_err(|e| ConditionError::BadRegex {
                pattern: pattern.to_string(),
                reason: e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            })
    }

    /// What it tests and what it saw in `payload`, to explain a route that did not match.
    pub fn explain(&self, payload: &Value) -> String {
        let seen = match lookup(payload, &self.path).filter(|v| !v.is_null()) {
            Some(v) => format!("is {v}"),
            None => "is absent".to_string(),
        };
        let wanted = match &self.test {
            Test::Exists(true) => "present".to_string(),
            Test::Exists(false) => "absent".to_string(),
            Test::Equals(v) => format!("{v}"),
            Test::In(options) => format!("one of {}", Value::Array(options.clone())),
            Test::Matches(re) => format!("matching /{}/", re.as_str()),
        };
        format!("{} {seen}, not {wanted}", self.path)
    }

    /// Whether the condition holds for `payload`.
    pub fn holds(&self, payload: &Value) -> bool {
        let value = lookup(payload, &self.path).filter(|v| !v.is_null());
        match &self.test {
            Test::Exists(want) => value.is_some() == *want,
            Test::Equals(expected) => value.is_some_and(|v| same(v, expected)),
            Test::In(options) => value.is_some_and(|v| options.iter().any(|o| same(v, o))),
            Test::Matches(re) => match value {
                Some(Value::String(s)) => re.is_match(s),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => re.is_match(&v.to_string()),
                _ => false,
            },
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload() -> Value {
        json!({"build": {"source": "webhook", "number": 1842, "blocked": false, "author": null,
                         "pull_request": {"id": "4211"}, "meta_data": {"team": "payments"}}})
    }

    #[test]
    fn each_test_kind_holds_or_not() {
        let cases = [
            ("build.source", Test::Equals(json!("webhook")), true),
            ("build.source", Test::Equals(json!("ui")), false),
            ("build.number", Test::Equals(json!(1842.0)), true),
            ("build.blocked", Test::Equals(json!(false)), true),
            (
                "build.source",
                Test::In(vec![json!("ui"), json!("webhook")]),
                true,
            ),
            ("build.source", Test::In(vec![json!("ui")]), false),
            ("build.number", Test::In(vec![json!(1), json!(1842)]), true),
            ("build.source", Condition::regex("^web").unwrap(), true),
            ("build.number", Condition::regex("^18").unwrap(), true),
            ("build.pull_request", Condition::regex(".").unwrap(), false),
            ("build.missing", Condition::regex(".*").unwrap(), false),
            ("build.pull_request.id", Test::Exists(true), true),
            ("build.author", Test::Exists(true), false),
            ("build.author", Test::Exists(false), true),
            ("build.nope.deeper", Test::Exists(false), true),
            (
                "build.meta_data.team",
                Test::Equals(json!("payments")),
                true,
            ),
        ];
        for (path, test, want) in cases {
            let c = Condition::new(path, test).unwrap();
            assert_eq!(c.holds(&payload()), want, "{path} {c:?}");
        }
    }

    #[test]
    fn rejects_bad_paths_and_regexes() {
        assert!(Condition::new("", Test::Exists(true)).is_err());
        assert!(Condition::new("build..x", Test::Exists(true)).is_err());
        let err = Condition::regex("(").unwrap_err();
        assert!(matches!(err, ConditionError::BadRegex { .. }), "{err}");
    }
}
