//! One `[destinations.NAME]` table as written, its strings already interpolated from the
//! environment, for the destination's kind to read and check.
//!
//! The config layer parses the file and interpolates; this layer knows what each kind takes.
//! Problems carry the span of the key they are about, and the config layer turns spans into
//! `file:line`. A value that came from the environment may be a secret, so messages quote a
//! value only when it was written literally.

use super::{Common, DEFAULT_TIMEOUT, DestinationConfig, DestinationKind, Limits, UrlRule};
use crate::secret::Secret;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

/// A value of the table, interpolated.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Text(String),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// An array.
    List(Vec<Value>),
    /// An inline table, in key order.
    Map(Vec<(String, Value)>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Text(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::List(_) => "an array",
            Value::Map(_) => "a table",
        }
    }
}

/// One key's value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Where the value is in the file.
    pub span: Range<usize>,
    /// The value, interpolated.
    pub value: Value,
    /// Whether any of it came from the environment (then it is never quoted back).
    pub from_env: bool,
}

/// A problem with the table, at a place in the file when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where.
    pub span: Option<Range<usize>>,
    /// What is wrong, starting with `destination "NAME"`.
    pub message: String,
}

/// A problem was recorded in the table; the caller stops checking that value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported;

/// The table of one destination.
#[derive(Debug)]
pub struct Table {
    name: String,
    span: Range<usize>,
    entries: BTreeMap<String, Entry>,
    problems: Vec<Problem>,
}

impl Table {
    /// The table of destination `name`, written at `span`.
    pub fn new(name: String, span: Range<usize>, entries: BTreeMap<String, Entry>) -> Self {
        Self {
            name,
            span,
            entries,
            problems: Vec::new(),
        }
    }

    /// `destination "NAME"`, to start messages with.
    pub fn what(&self) -> String {
        format!("destination {:?}", self.name)
    }

    /// Records a problem at `span` (the whole table when `None`).
    pub fn problem(&mut self, span: Option<Range<usize>>, message: impl fmt::Display) -> Reported {
        let span = span.or_else(|| Some(self.span.clone()));
        self.problems.push(Problem {
            span,
            message: format!("{}: {message}", self.what()),
        });
        Reported
    }

    /// The entry of `key`, if written.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// How to quote `entry`'s value `shown` in a message: as written only when it did not
    /// come from the environment.
    pub fn shown(entry: &Entry, shown: &str) -> String {
        if entry.from_env {
            "(a value from the environment)".to_string()
        } else {
            format!("{shown:?}")
        }
    }

    fn wrong_type(&mut self, key: &str, wanted: &str) -> Reported {
        let entry = &self.entries[key];
        let (span, got) = (entry.span.clone(), entry.value.type_name());
        self.problem(Some(span), format!("{key} must be {wanted}, not {got}"))
    }

    /// A string, with where it was written.
    pub fn text(&mut self, key: &str) -> Result<Option<(String, Range<usize>)>, Reported> {
        match self.entries.get(key) {
            None => Ok(None),
            Some(Entry {
                value: Value::Text(s),
                span,
                ..
            }) => Ok(Some((s.clone(), span.clone()))),
            Some(_) => Err(self.wrong_type(key, "a string")),
        }
    }

    /// A string that must be there.
    pub fn required_text(
        &mut self,
        key: &str,
        hint: &str,
    ) -> Result<(String, Range<usize>), Reported> {
        match self.text(key)? {
            Some(found) => Ok(found),
            None => Err(self.problem(None, format!("{key} is required ({hint})"))),
        }
    }

    /// A list of strings (absent: empty).
    pub fn texts(&mut self, key: &str) -> Result<Vec<String>, Reported> {
        match self.entries.get(key).map(|e| &e.value) {
            None => Ok(Vec::new()),
            Some(Value::List(items)) if items.iter().all(|i| matches!(i, Value::Text(_))) => {
                Ok(items
                    .iter()
                    .filter_map(|i| match i {
                        Value::Text(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect())
            }
            Some(_) => Err(self.wrong_type(key, "an array of strings")),
        }
    }

    /// An inline table of strings (absent: empty).
    pub fn text_map(&mut self, key: &str) -> Result<Vec<(String, String)>, Reported> {
        match self.entries.get(key).map(|e| &e.value) {
            None => Ok(Vec::new()),
            Some(Value::Map(items)) if items.iter().all(|(_, v)| matches!(v, Value::Text(_))) => {
                Ok(items
                    .iter()
                    .filter_map(|(k, v)| match v {
                        Value::Text(s) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect())
            }
            Some(_) => {
                Err(self.wrong_type(key, "a table of strings, such as { Name = \"value\" }"))
            }
        }
    }

    /// An integer in `range`, or `default` when absent.
    pub fn integer(
        &mut self,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64, Reported> {
        match self.entries.get(key) {
            None => Ok(default),
            Some(Entry {
                value: Value::Integer(n),
                span,
                ..
            }) => {
                if range.contains(n) {
                    Ok(*n)
                } else {
                    let span = span.clone();
                    Err(self.problem(
                        Some(span),
                        format!(
                            "{key} must be between {} and {}",
                            range.start(),
                            range.end()
                        ),
                    ))
                }
            }
            Some(_) => Err(self.wrong_type(key, "an integer")),
        }
    }

    /// A duration above zero, or `default` when absent.
    pub fn duration(&mut self, key: &str, default: Duration) -> Result<Duration, Reported> {
        let Some((text, span)) = self.text(key)? else {
            return Ok(default);
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => {
                let shown = Self::shown(&self.entries[key], &text);
                Err(self.problem(
                    Some(span),
                    format!("{key}: {shown} is not a duration such as \"30s\" or \"5m\""),
                ))
            }
        }
    }

    /// Messages per second (0: no limit), or `default` when absent.
    fn rate(&mut self, default: Option<f64>) -> Result<Option<f64>, Reported> {
        let (value, span) = match self.entries.get("rate") {
            None => return Ok(default),
            Some(Entry {
                value: Value::Float(f),
                span,
                ..
            }) => (*f, span.clone()),
            Some(Entry {
                value: Value::Integer(n),
                span,
                ..
            }) => (*n as f64, span.clone()),
            Some(_) => return Err(self.wrong_type("rate", "a number")),
        };
        if value == 0.0 {
            Ok(None)
        } else if value.is_finite() && value >= 0.001 {
            Ok(Some(value))
        } else {
            Err(self.problem(
                Some(span),
                "rate must be messages per second (at least 0.001), or 0 for no limit",
            ))
        }
    }

    /// Pace and parallelism, starting from the kind's defaults.
    fn limits(&mut self, defaults: Limits) -> Limits {
        let rate = self.rate(defaults.rate).unwrap_or(defaults.rate);
        let count = |t: &mut Self, key: &str, default: usize| {
            t.integer(key, 1..=1000, default as i64)
                .map_or(default, |n| n as usize)
        };
        let concurrency = count(self, "concurrency", defaults.concurrency);
        let burst = count(self, "burst", defaults.burst as usize) as u32;
        Limits {
            rate,
            burst,
            concurrency,
        }
    }

    /// The URL, checked against the kind's rule and the allowed hosts.
    fn url(
        &mut self,
        kind: DestinationKind,
        allowed_hosts: &[String],
    ) -> Result<Option<Secret>, Reported> {
        let written = self.text("url")?;
        match (kind.url(), written) {
            (UrlRule::Refused, Some((_, span))) => {
                Err(self.problem(Some(span), format!("a {kind} destination takes no url")))
            }
            (UrlRule::Refused, None) => Ok(None),
            (UrlRule::Default(default), None) => {
                let host = reqwest::Url::parse(default)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_default();
                if super::host_allowed(allowed_hosts, &host) {
                    Ok(Some(Secret::new(default)))
                } else {
                    Err(self.problem(
                        None,
                        format!("host {host:?} is not in delivery.allowed_hosts"),
                    ))
                }
            }
            (UrlRule::Required, None) => Err(self.problem(
                None,
                format!(
                    "url is required for kind {:?} (use \"${{VAR:-}}\" to make it optional)",
                    kind.as_str()
                ),
            )),
            (_, Some((url, span))) => {
                let parsed = reqwest::Url::parse(&url)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some());
                let host = parsed
                    .as_ref()
                    .and_then(|u| u.host_str().map(str::to_string));
                if let Some(host) = host.filter(|h| !super::host_allowed(allowed_hosts, h)) {
                    // The host alone is no secret; the path and query are.
                    return Err(self.problem(
                        Some(span),
                        format!("host {host:?} is not in delivery.allowed_hosts (add it there if it is meant)"),
                    ));
                }
                if !url.is_empty() && parsed.is_none() {
                    // The URL is a secret: say what is wrong without repeating it.
                    return Err(self.problem(Some(span), "url is not an https:// (or http://) URL"));
                }
                Ok((!url.is_empty()).then(|| Secret::new(url)))
            }
        }
    }

    /// Refuses keys neither every destination nor `kind` takes, naming the kinds that do.
    fn unknown_keys(&mut self, kind: DestinationKind) {
        const COMMON: &[&str] = &["kind", "url", "timeout", "rate", "burst", "concurrency"];
        let unknown: Vec<(String, Range<usize>)> = self
            .entries
            .iter()
            .filter(|(k, _)| !COMMON.contains(&k.as_str()) && !kind.keys().contains(&k.as_str()))
            .map(|(k, e)| (k.clone(), e.span.clone()))
            .collect();
        for (key, span) in unknown {
            let takers = DestinationKind::taking(&key);
            let message = if takers.is_empty() {
                format!("unknown key {key:?}")
            } else {
                let kinds: Vec<String> = takers.iter().map(|k| format!("{k:?}")).collect();
                format!("{key} is for kind {} only", kinds.join(" or "))
            };
            self.problem(Some(span), message);
        }
    }

    /// Checks the whole table: kind, the common keys, then the kind's own. `None` when there
    /// was a problem; the problems are then in [`Table::problems`].
    pub fn configure(&mut self, allowed_hosts: &[String]) -> Option<DestinationConfig> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.problem(None, "names may hold only letters, digits, - and _");
            return None;
        }
        let (kind_text, span) = match self.required_text("kind", "one of the kinds below") {
            Ok(found) => found,
            Err(Reported) => return None,
        };
        let Some(kind) = DestinationKind::parse(&kind_text) else {
            let kinds: Vec<String> = DestinationKind::all()
                .map(|k| format!("{:?}", k.as_str()))
                .collect();
            let shown = Self::shown(&self.entries["kind"], &kind_text);
            self.problem(
                Some(span),
                format!("kind {shown} is not one of {}", kinds.join(", ")),
            );
            return None;
        };
        let before = self.problems.len();
        self.unknown_keys(kind);
        let url = self.url(kind, allowed_hosts);
        let timeout = self.duration("timeout", DEFAULT_TIMEOUT);
        let limits = self.limits(kind.default_limits());
        let (Ok(url), Ok(timeout)) = (url, timeout) else {
            return None;
        };
        let common = Common { url, limits };
        let options = kind.configure(self, &common).ok()?;
        if self.problems.len() > before {
            return None;
        }
        Some(DestinationConfig {
            name: self.name.clone(),
            kind,
            url: common.url,
            timeout,
            limits: common.limits,
            options,
        })
    }

    /// The problems found.
    pub fn problems(self) -> Vec<Problem> {
        self.problems
    }
}
