//! Turning an event into the exact body a destination receives.
//!
//! One Handlebars registry per template kind (`slack`, `teams`, `webhook`, `console`), each
//! with its own escaping. Defaults are compiled in; files in the configured folder override
//! them by name. Every JSON body is parsed back, so a broken template is reported, never sent;
//! each destination kind then brings it within its own limits.

mod context;
mod escape;
mod helpers;
mod look;
mod mention;
mod partials;
pub mod samples;
mod shorten;
mod templates;

pub use context::without_secrets;
pub use escape::{console_text, slack_text, teams_text};
pub use mention::{People, Person};
pub use shorten::{truncate, truncate_markup};

use crate::event::Event;
use chrono::{DateTime, Utc};
use handlebars::Handlebars;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// The template dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TemplateKind {
    /// Slack Block Kit JSON.
    Slack,
    /// Teams Workflows envelope with an Adaptive Card.
    Teams,
    /// Plain text for the console.
    Console,
    /// Any JSON, for programs (signed webhooks): values are JSON-escaped, nothing else.
    Webhook,
}

impl TemplateKind {
    /// All kinds.
    pub const ALL: [TemplateKind; 4] = [Self::Slack, Self::Teams, Self::Console, Self::Webhook];

    /// `slack`, `teams`, `console` or `webhook`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Teams => "teams",
            Self::Console => "console",
            Self::Webhook => "webhook",
        }
    }

    /// Whether its templates produce JSON (parsed back, and posted as JSON).
    pub fn is_json(self) -> bool {
        self != Self::Console
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for TemplateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rendered message body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A JSON body (Slack, Teams).
    Json(Value),
    /// Text (console).
    Text(String),
}

impl Body {
    /// The bytes to post.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Body::Json(v) => serde_json::to_vec(v).expect("JSON values serialise"),
            Body::Text(t) => t.clone().into_bytes(),
        }
    }

    /// The body as a JSON value (text becomes a JSON string), for `render --format json`.
    pub fn to_value(&self) -> Value {
        match self {
            Body::Json(v) => v.clone(),
            Body::Text(t) => Value::String(t.clone()),
        }
    }
}

/// Why a message could not be rendered. Permanent: the same event and template fail again.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// No template of that name for that kind.
    #[error("no {kind} template named {name:?}")]
    Missing {
        /// Kind.
        kind: TemplateKind,
        /// Name.
        name: String,
    },
    /// Handlebars failed (a helper error, for instance).
    #[error("{origin}: {message}")]
    Template {
        /// Where the template came from (with the line, when known).
        origin: String,
        /// What went wrong.
        message: String,
        /// The template the error is in (the one rendered, or a partial it includes).
        template: Option<String>,
        /// Where in that template, 1-based, when known.
        line: Option<usize>,
        /// The column, 1-based, when known.
        column: Option<usize>,
    },
    /// The output is not JSON.
    #[error("{origin} rendered invalid JSON: {message}")]
    InvalidJson {
        /// Where the template came from.
        origin: String,
        /// The parser's complaint, with line and column of the output.
        message: String,
        /// The output's line the parser stopped at (its first 300 characters), to find the
        /// template line that wrote it.
        near: String,
    },
    /// The output cannot be brought within the destination kind's limits.
    #[error("{origin}: {message}")]
    TooLarge {
        /// Where the template came from.
        origin: String,
        /// Sizes.
        message: String,
    },
}

/// The data templates render, computed for each message rendered.
pub struct TemplateData(handlebars::Context);

impl TemplateData {
    /// The payload (secrets removed) plus the derived `kb` fields.
    pub fn new(event: &Event, now: DateTime<Utc>) -> Self {
        // `from` takes the value as it is; `wraps` would serialise it all over again.
        Self(handlebars::Context::from(context::template_data(
            event, now,
        )))
    }

    /// [`new`](Self::new) for an event no longer needed: its payload is moved, not copied.
    pub fn from_event(event: Event, now: DateTime<Utc>) -> Self {
        Self(handlebars::Context::from(context::template_data_from(
            event, now,
        )))
    }

    /// Adds `kb.actions`: the buttons the message shows (see `crate::actions::Buttons`); none
    /// leaves it absent.
    pub fn set_actions<T: serde::Serialize>(&mut self, buttons: &[T]) {
        if buttons.is_empty() {
            return;
        }
        let buttons = serde_json::to_value(buttons).unwrap_or_default();
        if let Some(kb) = self
            .0
            .data_mut()
            .get_mut("kb")
            .and_then(Value::as_object_mut)
        {
            kb.insert("actions".into(), buttons);
        }
    }

    /// The data for a digest of `events` (at least one): the first event's data, plus
    /// `kb.group` with the count, a title and every event's own data.
    pub fn group(events: &[Event], now: DateTime<Utc>) -> Self {
        let items: Vec<Value> = events
            .iter()
            .map(|e| context::template_data(e, now))
            .collect();
        let mut data = items
            .first()
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()));
        let emoji = data["kb"]["emoji"].as_str().unwrap_or_default();
        let group = serde_json::json!({
            "count": items.len(),
            "title": context::group_title(events, emoji),
            "events": items,
        });
        if let Some(kb) = data.get_mut("kb").and_then(Value::as_object_mut) {
            kb.insert("group".into(), group);
        }
        Self(handlebars::Context::from(data))
    }
}

/// The largest output a template may write: far above any destination's limit (a webhook's
/// `max_body_bytes` is at most 64 MiB), so only a template that multiplies itself meets it.
pub const MAX_OUTPUT: usize = 64 << 20;

/// One template as compiled, for listing (the template studio).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInfo {
    /// Its kind.
    pub kind: TemplateKind,
    /// Its name (`_…` for partials).
    pub name: String,
    /// Its source text.
    pub source: String,
    /// Where it came from: `built-in slack/build`, or the file.
    pub origin: String,
    /// Compiled into the binary, not read from the templates folder.
    pub builtin: bool,
    /// A file in the templates folder replaces a built-in template of this name.
    pub overridden: bool,
}

/// A template that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct CompileError {
    /// Where it came from.
    pub origin: String,
    /// Where the problem is, 1-based (0 when unknown).
    pub line: usize,
    /// The column, 1-based (0 when unknown).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

const CAPPED: &str = "kitebridge: template output over the limit";

/// Collects a template's output, refusing more than [`MAX_OUTPUT`] bytes.
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(std::io::Error::other(CAPPED));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// All compiled templates.
#[derive(Clone)]
pub struct Renderer {
    registries: [Handlebars<'static>; 4],
    templates: HashMap<(TemplateKind, String), TemplateInfo>,
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer")
            .field("templates", &self.templates.len())
            .finish()
    }
}

fn registry(kind: TemplateKind, people: &Arc<People>) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.register_escape_fn(move |s| escape::template_value(kind, s));
    // Partials must not re-indent multi-line values, which would alter JSON strings.
    hb.set_prevent_indent(true);
    helpers::register(&mut hb, kind);
    hb.register_helper(
        "mention",
        Box::new(mention::MentionHelper {
            kind,
            people: people.clone(),
        }),
    );
    hb
}

impl Renderer {
    /// Compiles the built-in templates and the overrides in `dir`, with `people` for the
    /// `mention` helper. Returns every problem found (one line each, naming the file, line and
    /// column) rather than stopping at the first.
    pub fn new(dir: Option<&Path>, people: Arc<People>) -> Result<Self, Vec<String>> {
        let registries = TemplateKind::ALL.map(|kind| registry(kind, &people));
        let mut renderer = Self {
            registries,
            templates: HashMap::new(),
        };
        let mut problems = Vec::new();
        let overrides = match dir {
            Some(dir) => {
                let (sources, read_problems) = templates::load_dir(dir);
                problems.extend(read_problems);
                sources
            }
            None => Vec::new(),
        };
        let builtin = templates::builtin().map(|s| (s, true));
        for (source, is_builtin) in builtin.chain(overrides.into_iter().map(|s| (s, false))) {
            if let Err(e) = renderer.add(source, is_builtin) {
                problems.push(e.to_string());
            }
        }
        problems.extend(renderer.partial_cycles());
        if problems.is_empty() {
            Ok(renderer)
        } else {
            Err(problems)
        }
    }

    fn add(&mut self, source: templates::Source, builtin: bool) -> Result<(), CompileError> {
        let hb = &mut self.registries[source.kind.index()];
        hb.register_template_string(&source.name, &source.text)
            .map_err(|e| {
                let (line, column) = e.pos().unwrap_or((0, 0));
                CompileError {
                    origin: source.origin.clone(),
                    line,
                    column,
                    message: e.reason().to_string(),
                }
            })?;
        let key = (source.kind, source.name.clone());
        let before = self.templates.get(&key);
        // A file that only repeats the built-in text (the repository's own templates folder)
        // overrides nothing.
        let same = before.is_some_and(|t| t.builtin && !t.overridden && t.source == source.text);
        let overridden = !builtin && !same && before.is_some_and(|t| t.builtin || t.overridden);
        self.templates.insert(
            key,
            TemplateInfo {
                kind: source.kind,
                name: source.name,
                source: source.text,
                origin: source.origin,
                builtin: builtin || same,
                overridden,
            },
        );
        Ok(())
    }

    /// Every partial that includes itself through others (Handlebars refuses only the direct
    /// case; a longer circle would recurse until the stack overflows).
    fn partial_cycles(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for kind in TemplateKind::ALL {
            let sources: Vec<(&str, &str)> = self
                .templates
                .values()
                .filter(|t| t.kind == kind)
                .map(|t| (t.name.as_str(), t.source.as_str()))
                .collect();
            for cycle in partials::cycles(&sources) {
                problems.push(format!(
                    "{}: includes itself through partials: {}",
                    self.origin(kind, &cycle[0]),
                    cycle.join(" → ")
                ));
            }
        }
        problems
    }

    /// A copy with template `name` of `kind` replaced by (or added as) `source`, compiled; the
    /// template studio renders what is being typed this way.
    pub fn with_template(
        &self,
        kind: TemplateKind,
        name: &str,
        source: &str,
        origin: &str,
    ) -> Result<Self, CompileError> {
        let mut copy = self.clone();
        copy.add(
            templates::Source {
                kind,
                name: name.to_string(),
                text: source.to_string(),
                origin: origin.to_string(),
            },
            false,
        )?;
        if let Some(problem) = copy.partial_cycles().into_iter().next() {
            return Err(CompileError {
                origin: origin.to_string(),
                line: 0,
                column: 0,
                message: problem,
            });
        }
        Ok(copy)
    }

    /// Every template, partials included, in kind and name order.
    pub fn templates(&self) -> Vec<TemplateInfo> {
        let mut all: Vec<TemplateInfo> = self.templates.values().cloned().collect();
        all.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        all
    }

    /// Whether a template exists.
    pub fn has(&self, kind: TemplateKind, name: &str) -> bool {
        self.registries[kind.index()].has_template(name)
    }

    /// The selectable templates of a kind (partials, named `_…`, excluded), sorted.
    pub fn names(&self, kind: TemplateKind) -> Vec<String> {
        let mut names: Vec<String> = self.registries[kind.index()]
            .get_templates()
            .keys()
            .filter(|n| !n.starts_with('_'))
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Where a template came from.
    pub fn origin(&self, kind: TemplateKind, name: &str) -> String {
        self.templates
            .get(&(kind, name.to_string()))
            .map(|t| t.origin.clone())
            .unwrap_or_else(|| format!("{kind}/{name}"))
    }

    /// The template for `event`: `explicit` when the route names one, else the first of the
    /// event name, its family and `default` that exists.
    pub fn select(
        &self,
        kind: TemplateKind,
        explicit: Option<&str>,
        event: &Event,
    ) -> Result<String, RenderError> {
        let candidates: Vec<&str> = match explicit {
            Some(name) => vec![name],
            None => vec![event.name(), event.family(), "default"],
        };
        candidates
            .iter()
            .find(|n| !n.starts_with('_') && self.has(kind, n))
            .map(|n| n.to_string())
            .ok_or_else(|| RenderError::Missing {
                kind,
                name: candidates[0].to_string(),
            })
    }

    /// Renders template `name` of `kind` with `data`, and parses a JSON kind's result. The
    /// destination kind brings it within its limits (see `DestinationKind::render`).
    pub fn render(
        &self,
        kind: TemplateKind,
        name: &str,
        data: &TemplateData,
    ) -> Result<Body, RenderError> {
        let hb = &self.registries[kind.index()];
        if !hb.has_template(name) {
            return Err(RenderError::Missing {
                kind,
                name: name.to_string(),
            });
        }
        let origin = || self.origin(kind, name);
        let (written, entities) = mention::collecting(|| {
            let mut out = Capped(Vec::new());
            hb.render_with_context_to_write(name, &data.0, &mut out)
                .map(|()| out.0)
        });
        let text = written
            .map_err(|e| {
                let template = e.template_name.clone();
                let at = template.as_deref().unwrap_or(name);
                let message = if e.reason().to_string().contains(CAPPED) {
                    format!(
                        "the output is over {} MiB: does the template repeat itself?",
                        MAX_OUTPUT >> 20
                    )
                } else {
                    e.reason().to_string()
                };
                RenderError::Template {
                    origin: match e.line_no {
                        Some(line) => format!("{}:{line}", self.origin(kind, at)),
                        None => self.origin(kind, at),
                    },
                    message,
                    template,
                    line: e.line_no,
                    column: e.column_no,
                }
            })
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| RenderError::Template {
                    origin: origin(),
                    message: "the output is not UTF-8".into(),
                    template: Some(name.to_string()),
                    line: None,
                    column: None,
                })
            })?;
        if !kind.is_json() {
            return Ok(Body::Text(text.trim_end().to_string()));
        }
        let mut value: Value =
            serde_json::from_str(&text).map_err(|e| RenderError::InvalidJson {
                origin: origin(),
                message: e.to_string(),
                near: text
                    .lines()
                    .nth(e.line().saturating_sub(1))
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect(),
            })?;
        if kind == TemplateKind::Teams {
            mention::add_entities(&mut value, entities);
        }
        Ok(Body::Json(value))
    }

    /// The template for a digest of `events`: the route's if it names one, else `digest` when
    /// there are several events, else the single event's usual template.
    pub fn select_group(
        &self,
        kind: TemplateKind,
        explicit: Option<&str>,
        events: &[Event],
    ) -> Result<String, RenderError> {
        match (explicit, events) {
            (_, []) => Err(RenderError::Missing {
                kind,
                name: "digest".into(),
            }),
            (None, [_, _, ..]) => Ok("digest".to_string()),
            (_, [first, ..]) => self.select(kind, explicit, first),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A digest's title shows the emoji its first event's own message shows (a promised
    /// failure is 🟠, though the job is still running).
    #[test]
    fn a_digest_title_takes_its_first_events_emoji() {
        let first = samples::event("job.promised_exit_status").unwrap();
        let data = TemplateData::group(&[first.clone(), first], Utc::now());
        let kb = &data.0.data()["kb"];
        let emoji = kb["emoji"].as_str().unwrap();
        assert!(!emoji.is_empty() && emoji != "🔄", "{kb}");
        let title = kb["group"]["title"].as_str().unwrap();
        assert!(
            title.starts_with(&format!("{emoji} 2 × job.promised_exit_status")),
            "{title}"
        );
    }
    use serde_json::json;

    /// Every payload field, at the top level and one below, replaced by values of the wrong
    /// type: each default template still renders a valid body.
    #[test]
    fn default_templates_survive_fields_of_the_wrong_type() {
        let renderer = Renderer::new(None, Default::default()).unwrap();
        let now = Utc::now();
        let wrong = [
            json!([]),
            json!("x"),
            json!(null),
            json!(7),
            json!({"a": [1]}),
        ];
        for (name, event) in samples::events() {
            let payload = event.payload().clone();
            let mut variants = Vec::new();
            for (key, value) in payload.as_object().unwrap() {
                for w in &wrong {
                    let mut p = payload.clone();
                    p[key] = w.clone();
                    variants.push(p);
                }
                for child in value
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
                {
                    for w in &wrong[..3] {
                        let mut p = payload.clone();
                        p[key][&child] = w.clone();
                        variants.push(p);
                    }
                }
            }
            for p in variants {
                let e = Event::from_value(event.name(), p.clone(), now);
                let data = TemplateData::new(&e, now);
                for kind in TemplateKind::ALL {
                    let rendered = renderer
                        .select(kind, None, &e)
                        .and_then(|name| renderer.render(kind, &name, &data));
                    if let Err(err) = rendered {
                        panic!("{name} {kind}: {err}\n{p}");
                    }
                }
            }
        }
    }
}
