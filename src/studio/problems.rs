//! What the template studio says is wrong with a rendering, pointing into the template where
//! it can: compile and render errors with their line and column, invalid JSON with the
//! template line that wrote it, bodies the destination kind would shorten, and envelopes it
//! would refuse. Pure.

use crate::render::{CompileError, RenderError};
use serde::Serialize;
use serde_json::Value;

/// One problem, at a 1-based line and column of the template being edited when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Line of the template.
    pub line: Option<usize>,
    /// Column of the template.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// Which check found it: `handlebars`, `json`, `shape`, `limit` or `payload`.
    pub source: &'static str,
}

impl Problem {
    /// A problem with no place in the template.
    pub fn general(source: &'static str, message: impl Into<String>) -> Self {
        Self {
            line: None,
            column: None,
            message: message.into(),
            source,
        }
    }
}

/// A template that does not compile.
pub fn compile(e: &CompileError) -> Problem {
    Problem {
        line: (e.line > 0).then_some(e.line),
        column: (e.column > 0).then_some(e.column),
        message: e.message.clone(),
        source: "handlebars",
    }
}

/// A rendering that failed; `edited` is the name of the template being edited and `source`
/// its text (to find the line that wrote invalid JSON).
pub fn render(e: &RenderError, edited: &str, source: &str) -> Problem {
    match e {
        RenderError::Template {
            message,
            template,
            line,
            column,
            origin,
        } => {
            let here = template.as_deref().is_none_or(|t| t == edited);
            Problem {
                line: line.filter(|_| here),
                column: column.filter(|_| here),
                message: if here {
                    message.clone()
                } else {
                    format!("{origin}: {message}")
                },
                source: "handlebars",
            }
        }
        RenderError::InvalidJson { message, near, .. } => Problem {
            line: line_that_wrote(source, near),
            column: None,
            message: format!("the output is not JSON: {message} (near `{}`)", near.trim()),
            source: "json",
        },
        RenderError::Missing { .. } => Problem::general("handlebars", e.to_string()),
        RenderError::TooLarge { message, .. } => Problem::general("limit", message.clone()),
    }
}

/// The template line most likely to have written `output_line`: the one whose literal text
/// (what is outside `{{…}}`) makes up the longest part of it. `None` when no line shares
/// three characters or more with it.
pub fn line_that_wrote(template: &str, output_line: &str) -> Option<usize> {
    let output = output_line.trim();
    let mut best: Option<(usize, usize)> = None;
    for (i, line) in template.lines().enumerate() {
        let score: usize = literals(line)
            .iter()
            .map(|l| l.trim())
            .filter(|l| l.chars().count() >= 3 && output.contains(l))
            .map(str::len)
            .sum();
        if score > 0 && best.is_none_or(|(_, s)| score > s) {
            best = Some((i + 1, score));
        }
    }
    best.map(|(line, _)| line)
}

/// The parts of a template line outside `{{…}}`.
fn literals(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find("{{") {
        out.push(&rest[..open]);
        match rest[open..].find("}}") {
            Some(close) => rest = &rest[open + close + 2..],
            None => return out,
        }
    }
    out.push(rest);
    out
}

/// What bringing `before` within a kind's limits changed in it (`after`): each string
/// shortened and each list cut, by its path in the body.
pub fn shortened(before: &Value, after: &Value) -> Vec<Problem> {
    let mut out = Vec::new();
    walk(before, after, &mut String::new(), &mut out);
    out
}

fn walk(before: &Value, after: &Value, path: &mut String, out: &mut Vec<Problem>) {
    match (before, after) {
        (Value::String(a), Value::String(b)) if a != b => out.push(Problem::general(
            "limit",
            format!(
                "{}: {} characters, shortened to {} (the destination's limit)",
                shown(path),
                a.chars().count(),
                b.chars().count()
            ),
        )),
        (Value::Array(a), Value::Array(b)) => {
            if a.len() > b.len() {
                out.push(Problem::general(
                    "limit",
                    format!(
                        "{}: {} items, only {} are sent (the destination's limit)",
                        shown(path),
                        a.len(),
                        b.len()
                    ),
                ));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(x, y, path, out);
                path.truncate(len);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            for (key, x) in a {
                if let Some(y) = b.get(key) {
                    let len = path.len();
                    path.push('.');
                    path.push_str(key);
                    walk(x, y, path, out);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() {
        "the body"
    } else {
        path.trim_start_matches('.')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_template_line_that_wrote_an_output_line() {
        let template = "{\n  \"text\": \"{{kb.title}}\",\n  \"blocks\": [\n    {\"type\": \"header\" \"text\": {{{json kb.title}}}}\n  ]\n}";
        assert_eq!(
            line_that_wrote(template, r#"    {"type": "header" "text": "❌ Web App"}"#),
            Some(4)
        );
        assert_eq!(line_that_wrote(template, "zzz"), None);
    }

    #[test]
    fn says_what_the_limits_shortened() {
        let before = json!({"blocks": [{"text": {"text": "x".repeat(200)}}, {}, {}], "keep": "a"});
        let after = json!({"blocks": [{"text": {"text": "x".repeat(150)}}, {}], "keep": "a"});
        let found = shortened(&before, &after);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].message.starts_with("blocks: 3 items, only 2"),
            "{found:?}"
        );
        assert!(
            found[1]
                .message
                .starts_with("blocks[0].text.text: 200 characters, shortened to 150"),
            "{found:?}"
        );
        assert!(shortened(&before, &before).is_empty());
    }
}
