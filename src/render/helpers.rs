//! Handlebars helpers for templates.
//!
//! Every helper returns a value, so `{{helper …}}` output goes through the template kind's
//! escaping like any other value. `plain` and `json` are meant for `{{{triple}}}` stashes: they
//! do their own (JSON) escaping.

use super::TemplateKind;
use super::context::first_line;
use super::escape::{json_content, markup};
use super::look::look_of;
use super::shorten::truncate;
use crate::event::time::{between, format_duration, parse_timestamp};
use chrono::Utc;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use serde_json::Value;

/// The names of all helpers (docs/templates.md's helper table lists each one; a test checks it).
const HELPERS: &[&str] = &[
    "plain",
    "json",
    "truncate",
    "first_line",
    "short_sha",
    "duration",
    "since",
    "datetime",
    "state_emoji",
    "state_color",
    "teams_color",
    "teams_style",
    "default",
    "join",
    "omit",
];

/// Registers every helper on `registry`, escaping for `kind` where a helper emits JSON.
pub fn register(registry: &mut Handlebars<'static>, kind: TemplateKind) {
    for name in HELPERS {
        registry.register_helper(name, Box::new(KbHelper { name, kind }));
    }
}

struct KbHelper {
    name: &'static str,
    kind: TemplateKind,
}

/// Text of a value as a template would show it: strings as they are, numbers and booleans
/// printed, null and missing as empty.
fn as_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Number(_)) | Some(Value::Bool(true)) => true,
    }
}

fn number(v: Option<&Value>, helper: &'static str) -> Result<usize, RenderError> {
    v.and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .map(|n| n as usize)
        .ok_or_else(|| {
            RenderErrorReason::ParamTypeMismatchForName(helper, "1".into(), "number".into()).into()
        })
}

/// Applies the kind's markup escaping to every string inside `v`.
fn escape_strings(v: &Value, kind: TemplateKind) -> Value {
    match v {
        Value::String(s) => Value::String(markup(kind, s)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| escape_strings(i, kind)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), escape_strings(v, kind)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl HelperDef for KbHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let arg = |i: usize| h.param(i).map(|p| p.value());
        let text = |i: usize| as_text(arg(i));
        let out = match self.name {
            "plain" => Value::String(json_content(&text(0))),
            "json" => {
                let v = escape_strings(arg(0).unwrap_or(&Value::Null), self.kind);
                Value::String(serde_json::to_string(&v).expect("JSON values serialise"))
            }
            "truncate" => Value::String(truncate(&text(0), number(arg(1), "truncate")?)),
            "first_line" => Value::String(first_line(&text(0)).to_string()),
            "short_sha" => {
                let n = arg(1).map_or(Ok(7), |_| number(arg(1), "short_sha"))?;
                Value::String(text(0).chars().take(n).collect())
            }
            "duration" => {
                let from = parse_timestamp(&text(0));
                let to = match arg(1) {
                    Some(_) => parse_timestamp(&text(1)),
                    None => Some(Utc::now()),
                };
                match (from, to) {
                    (Some(f), Some(t)) => between(f, t)
                        .map(format_duration)
                        .map_or(Value::Null, Value::String),
                    _ => Value::Null,
                }
            }
            "since" => parse_timestamp(&text(0))
                .and_then(|t| between(t, Utc::now()))
                .map_or(Value::Null, |d| {
                    Value::String(format!("{} ago", format_duration(d)))
                }),
            "datetime" => parse_timestamp(&text(0)).map_or(Value::Null, |t| {
                Value::String(t.format("%Y-%m-%d %H:%M UTC").to_string())
            }),
            "state_emoji" => Value::String(look_of(&text(0)).emoji.into()),
            "state_color" => Value::String(look_of(&text(0)).color.into()),
            "teams_color" => Value::String(look_of(&text(0)).teams_color.into()),
            "teams_style" => Value::String(look_of(&text(0)).teams_style.into()),
            "default" => {
                if truthy(arg(0)) {
                    arg(0).cloned().unwrap_or(Value::Null)
                } else {
                    arg(1).cloned().unwrap_or(Value::Null)
                }
            }
            "join" => {
                let sep = h.param(1).map_or_else(|| ", ".to_string(), |_| text(1));
                match arg(0) {
                    Some(Value::Array(items)) => Value::String(
                        items
                            .iter()
                            .map(|i| as_text(Some(i)))
                            .collect::<Vec<_>>()
                            .join(&sep),
                    ),
                    other => Value::String(as_text(other)),
                }
            }
            "omit" => match arg(0) {
                Some(Value::Object(map)) => {
                    let drop: Vec<String> = (1..h.params().len()).map(text).collect();
                    Value::Object(
                        map.iter()
                            .filter(|(k, _)| !drop.contains(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    )
                }
                other => other.cloned().unwrap_or(Value::Null),
            },
            _ => unreachable!("only names in HELPERS are registered"),
        };
        Ok(ScopedJson::Derived(out))
    }
}

#[cfg(test)]
mod tests {
    use super::HELPERS;

    #[test]
    fn the_docs_list_every_helper() {
        let doc = include_str!("../../docs/templates.md");
        let table = &doc[doc.find("| helper | example | result |").unwrap()..];
        let table = &table[..table.find("\n\n").unwrap()];
        for name in HELPERS.iter().chain(&["mention"]) {
            assert!(
                table.contains(&format!("`{name} ")),
                "the helper table in docs/templates.md has no row for {name}"
            );
        }
    }
}
