//! The variables of a webhook [`Event`], for conditions on routes.
//!
//! [`schema`] lists what a condition may name and [`EventVariables`] supplies the values. The
//! names follow Buildkite's conditionals (`build.*`, `pipeline.*`, `organization.*`), limited to
//! what webhook payloads carry, plus kitebridge's own `event`, `job.*`, `agent.*` and the
//! transition flags `pipeline.started_failing` / `pipeline.started_passing`.
//!
//! | variable                         | type        | payload source                                    | blank is null |
//! |----------------------------------|-------------|---------------------------------------------------|---------------|
//! | `event`                          | String      | the event name                                    | no            |
//! | `build.id`                       | String      | `build.id`                                        | no            |
//! | `build.number`                   | Integer     | `build.number`                                    | –             |
//! | `build.branch`                   | String      | `build.branch`                                    | no            |
//! | `build.tag`                      | String      | `build.tag`                                       | yes           |
//! | `build.commit`                   | String      | `build.commit`                                    | no            |
//! | `build.message`                  | String      | `build.message`                                   | yes           |
//! | `build.state`                    | String      | `build.state`                                     | no            |
//! | `build.blocked_state`            | String      | `build.blocked_state` (`""` when not blocked)     | yes           |
//! | `build.fixed`                    | Boolean     | the event's transition is `fixed`                 | –             |
//! | `build.source`                   | String      | `build.source`                                    | no            |
//! | `build.source_event`             | String      | for a `webhook` build, `build.env`'s `BUILDKITE_GITHUB_EVENT` | no |
//! | `build.source_action`            | String      | for a `webhook` build, `build.env`'s `BUILDKITE_GITHUB_ACTION` | no |
//! | `build.author.email` / `.name`   | String      | `build.author.email` / `.name`                    | yes           |
//! | `build.creator.id` / `.email` / `.name` | String | `build.creator.id` / `.email` / `.name`         | no            |
//! | `build.pull_request.id`          | String      | `build.pull_request.id`                           | no            |
//! | `build.pull_request.base_branch` | String      | `build.pull_request.base`                         | no            |
//! | `build.pull_request.repository`  | String      | `build.pull_request.repository`                   | no            |
//! | `pipeline.id`                    | String      | `pipeline.id`                                     | no            |
//! | `pipeline.slug`                  | String      | `pipeline.slug`                                   | no            |
//! | `pipeline.default_branch`        | String      | `pipeline.default_branch`                         | yes           |
//! | `pipeline.repository`            | String      | `pipeline.repository`                             | yes           |
//! | `pipeline.started_failing`       | Boolean     | the event's transition is `broken`                | –             |
//! | `pipeline.started_passing`       | Boolean     | the event's transition is `fixed`                 | –             |
//! | `organization.id`                | String      | `organization.id` (only `ping` carries it)        | no            |
//! | `organization.slug`              | String      | `organization.slug`, else the `<slug>` of `…/organizations/<slug>/…` in `pipeline.url`, `build.url` or `agent.url` | no  |
//! | `job.state`                      | String      | `job.state`                                       | no            |
//! | `job.exit_status`                | Integer     | `job.exit_status`                                 | –             |
//! | `job.soft_failed`                | Boolean     | `job.soft_failed`                                 | –             |
//! | `job.label`                      | String      | `job.label`, else `job.name` (older payloads)     | no            |
//! | `job.step_key`                   | String      | `job.step_key`                                    | no            |
//! | `agent.name`                     | String      | `agent.name`, else `job.agent.name`               | no            |
//! | `agent.connection_state`         | String      | `agent.connection_state`, else `job.agent.…`      | no            |
//! | `agent.meta_data`                | StringArray | `agent.meta_data`, else `job.agent.meta_data` (`key=value` strings) | – |
//!
//! Blank is null: buildkite/conditional reads `build.tag`, `build.message`,
//! `build.author.name`, `build.author.email`, `pipeline.default_branch` and
//! `pipeline.repository` through its `presenceStringValue`, so an empty or whitespace-only value
//! of those is `null`, never `""`; here too, and `build.tag != null` means "a tag build" even
//! when a payload sends `"tag": ""`. Every other string keeps `""` as it is (upstream's
//! `stringValue`), `job.label` and `job.step_key` as upstream's `step.label` and `step.key`;
//! the one exception is `build.blocked_state`, which the payload writes as `""` for a build
//! that is not blocked (Buildkite's own value is then unset).
//!
//! `build.fixed`, like `pipeline.started_passing`, is kitebridge's `fixed` transition (a
//! passed build after a failed one on its branch): buildkite/conditional takes the flag from
//! the server without defining it, and that transition is the only record of the previous
//! build kitebridge has. `build.source_event` / `build.source_action` follow upstream:
//! only for a build from a webhook, from `BUILDKITE_GITHUB_EVENT` / `_ACTION`.
//!
//! A variable the event does not have (a job variable on a build event, a `null` in the
//! payload, a value of the wrong JSON type) is [`Value::Null`], as in Buildkite.
//!
//! `build.creator.*` is the payload's `creator`, the Buildkite user Buildkite matched to the
//! build (upstream's `Creator`): its id is that user's, as upstream reads it.
//!
//! Left out because webhook payloads do not carry them: `build.author.id`, `build.author.teams`,
//! `build.creator.teams`, `build.creator.verified`, `build.scm.*`,
//! `build.pull_request.draft`, `build.pull_request.label`, `build.pull_request.labels`,
//! `build.pull_request.repository.fork`, `build.merge_queue.*`,
//! `pipeline.next_finished_build_exists`; and `step.*`, for which job events have `job.*`.
//!
//! `env(name)` and `build.env(name)` read the payload's `build.env` object, then its
//! `pipeline.env` (the pipeline's own, which the build's overrides, as in Buildkite): strings
//! as they are, other JSON values as their JSON text, a missing name or a JSON `null` as unset. The
//! `BUILDKITE_*` names a payload can answer (`BUILDKITE_BRANCH`, `BUILDKITE_PULL_REQUEST`, …)
//! come from its fields first, as in Buildkite (see `build_env.rs`).

use super::{Schema, Type, Value, Variables};
use crate::event::{Event, lookup};
use crate::transition::TransitionKind;
use serde_json::Value as Json;

/// Where a variable's value comes from.
#[derive(Clone, Copy)]
enum Source {
    /// The first of these payload paths that has a (non-null, non-blank if blank is null) value.
    Paths(&'static [&'static str]),
    /// The event name.
    EventName,
    /// Whether the transition is this kind; null without a transition.
    Transition(TransitionKind),
    /// `organization.slug`, or the slug in an API or web URL.
    OrgSlug,
    /// For a build from a webhook (`build.source` is `webhook`), this `build.env` entry.
    WebhookEnv(&'static str),
}

struct Var {
    name: &'static str,
    ty: Type,
    from: Source,
    blank_is_null: bool,
}

const fn var(name: &'static str, ty: Type, paths: &'static [&'static str], blank: bool) -> Var {
    Var {
        name,
        ty,
        from: Source::Paths(paths),
        blank_is_null: blank,
    }
}

const S: Type = Type::String;

static VARS: &[Var] = &[
    Var {
        name: "event",
        ty: S,
        from: Source::EventName,
        blank_is_null: false,
    },
    var("build.id", S, &["build.id"], false),
    var("build.number", Type::Integer, &["build.number"], false),
    var("build.branch", S, &["build.branch"], false),
    var("build.tag", S, &["build.tag"], true),
    var("build.commit", S, &["build.commit"], false),
    var("build.message", S, &["build.message"], true),
    var("build.state", S, &["build.state"], false),
    // The payload writes an unblocked build's `blocked_state` as "".
    var("build.blocked_state", S, &["build.blocked_state"], true),
    Var {
        name: "build.fixed",
        ty: Type::Boolean,
        from: Source::Transition(TransitionKind::Fixed),
        blank_is_null: false,
    },
    var("build.source", S, &["build.source"], false),
    Var {
        name: "build.source_event",
        ty: S,
        from: Source::WebhookEnv("BUILDKITE_GITHUB_EVENT"),
        blank_is_null: false,
    },
    Var {
        name: "build.source_action",
        ty: S,
        from: Source::WebhookEnv("BUILDKITE_GITHUB_ACTION"),
        blank_is_null: false,
    },
    var("build.author.email", S, &["build.author.email"], true),
    var("build.author.name", S, &["build.author.name"], true),
    var("build.creator.id", S, &["build.creator.id"], false),
    var("build.creator.email", S, &["build.creator.email"], false),
    var("build.creator.name", S, &["build.creator.name"], false),
    var(
        "build.pull_request.id",
        S,
        &["build.pull_request.id"],
        false,
    ),
    var(
        "build.pull_request.base_branch",
        S,
        &["build.pull_request.base"],
        false,
    ),
    var(
        "build.pull_request.repository",
        S,
        &["build.pull_request.repository"],
        false,
    ),
    var("pipeline.id", S, &["pipeline.id"], false),
    var("pipeline.slug", S, &["pipeline.slug"], false),
    var(
        "pipeline.default_branch",
        S,
        &["pipeline.default_branch"],
        true,
    ),
    var("pipeline.repository", S, &["pipeline.repository"], true),
    Var {
        name: "pipeline.started_failing",
        ty: Type::Boolean,
        from: Source::Transition(TransitionKind::Broken),
        blank_is_null: false,
    },
    Var {
        name: "pipeline.started_passing",
        ty: Type::Boolean,
        from: Source::Transition(TransitionKind::Fixed),
        blank_is_null: false,
    },
    var("organization.id", S, &["organization.id"], false),
    Var {
        name: "organization.slug",
        ty: S,
        from: Source::OrgSlug,
        blank_is_null: false,
    },
    var("job.state", S, &["job.state"], false),
    var(
        "job.exit_status",
        Type::Integer,
        &["job.exit_status"],
        false,
    ),
    var(
        "job.soft_failed",
        Type::Boolean,
        &["job.soft_failed"],
        false,
    ),
    var("job.label", S, &["job.label", "job.name"], false),
    var("job.step_key", S, &["job.step_key"], false),
    var("agent.name", S, &["agent.name", "job.agent.name"], false),
    var(
        "agent.connection_state",
        S,
        &["agent.connection_state", "job.agent.connection_state"],
        false,
    ),
    var(
        "agent.meta_data",
        Type::StringArray,
        &["agent.meta_data", "job.agent.meta_data"],
        false,
    ),
];

/// The values Buildkite's type checker allows for its enumerated variables
/// (buildkite/conditional assignments.go).
static VALUES: &[(&str, &[&str])] = &[
    (
        "build.state",
        &[
            "creating",
            "started",
            "running",
            "scheduled",
            "blocked",
            "passed",
            "failing",
            "failed",
            "canceling",
            "canceled",
            "skipped",
            "not_run",
        ],
    ),
    ("build.blocked_state", &["failed", "passed", "running"]),
    (
        "build.source",
        &[
            "api",
            "ui",
            "webhook",
            "trigger_job",
            "schedule",
            "pipeline_trigger",
        ],
    ),
];

/// The variables a route's condition may name, with their types (built once).
pub fn schema() -> &'static Schema {
    static SCHEMA: std::sync::LazyLock<Schema> = std::sync::LazyLock::new(|| {
        let schema = VARS
            .iter()
            .fold(Schema::new(), |schema, v| schema.with(v.name, v.ty));
        VALUES
            .iter()
            .fold(schema, |schema, (path, values)| {
                schema.with_values(path, values)
            })
            .without_plain_env()
    });
    &SCHEMA
}

/// A webhook event's variables, for [`super::Condition::eval`].
#[derive(Debug, Clone, Copy)]
pub struct EventVariables<'a> {
    event: &'a Event,
}

impl<'a> EventVariables<'a> {
    pub fn new(event: &'a Event) -> Self {
        Self { event }
    }
}

impl<'a> From<&'a Event> for EventVariables<'a> {
    fn from(event: &'a Event) -> Self {
        Self::new(event)
    }
}

impl Variables for EventVariables<'_> {
    fn get(&self, path: &str) -> Value {
        let Some(var) = VARS.iter().find(|v| v.name == path) else {
            return Value::Null;
        };
        let payload = self.event.payload();
        match var.from {
            Source::EventName => Value::Str(self.event.name().to_owned()),
            Source::Transition(kind) => self
                .event
                .transition()
                .map_or(Value::Null, |t| Value::Bool(t.kind == kind)),
            Source::WebhookEnv(name) => {
                if lookup(payload, "build.source").and_then(Json::as_str) != Some("webhook") {
                    return Value::Null;
                }
                self.env(name).map_or(Value::Null, Value::Str)
            }
            Source::Paths(paths) => paths
                .iter()
                .filter_map(|p| lookup(payload, p))
                .map(|j| convert(j, var.ty, var.blank_is_null))
                .find(|v| *v != Value::Null)
                .unwrap_or(Value::Null),
            Source::OrgSlug => {
                let direct = lookup(payload, "organization.slug")
                    .map_or(Value::Null, |j| convert(j, Type::String, false));
                if matches!(&direct, Value::Str(s) if !s.is_empty()) {
                    return direct;
                }
                // A slug from a URL rather than an empty one; `""` stays `""` (not blank-null).
                ["pipeline.url", "build.url", "agent.url"]
                    .iter()
                    .filter_map(|p| lookup(payload, p).and_then(Json::as_str))
                    .find_map(slug_from_url)
                    .map_or(direct, |s| Value::Str(s.to_owned()))
            }
        }
    }

    fn env(&self, name: &str) -> Option<String> {
        // Never a name Buildkite keeps from conditions (an agent token), whoever asks; the
        // evaluator also refuses one chosen at run time, so such a route fails closed.
        if !super::schema::build_env_allows(name) {
            return None;
        }
        let payload = self.event.payload();
        let org_slug = || match self.get("organization.slug") {
            Value::Str(s) => Some(s),
            _ => None,
        };
        if let Some(value) = super::build_env::builtin(payload, name, org_slug) {
            return Some(value);
        }
        // Buildkite layers the build's env over the pipeline's (upstream's `BuildEnv` over
        // `ProjectEnv`); the payload carries both.
        ["build.env", "pipeline.env"].iter().find_map(|object| {
            match lookup(payload, object)?.get(name)? {
                Json::Null => None,
                Json::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        })
    }
}

/// A payload value as a value of type `ty`, or null when it has another shape.
fn convert(j: &Json, ty: Type, blank_is_null: bool) -> Value {
    match (ty, j) {
        (Type::String, Json::String(s)) if blank_is_null && s.trim().is_empty() => Value::Null,
        (Type::String, Json::String(s)) => Value::Str(s.clone()),
        // Ids and numbers sometimes arrive as JSON numbers (a pull request id of 42).
        (Type::String, Json::Number(n)) => Value::Str(n.to_string()),
        (Type::Integer, Json::Number(n)) => n.as_i64().map_or(Value::Null, Value::Int),
        (Type::Integer, Json::String(s)) => s.trim().parse().map_or(Value::Null, Value::Int),
        (Type::Boolean, Json::Bool(b)) => Value::Bool(*b),
        (Type::StringArray, Json::Array(items)) => Value::Array(
            items
                .iter()
                .filter(|i| !i.is_null())
                .map(|i| match i {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// `acme` from `https://api.buildkite.com/v2/organizations/acme/pipelines/web-app`.
fn slug_from_url(url: &str) -> Option<&str> {
    let rest = url.split_once("/organizations/")?.1;
    let slug = rest.split(['/', '?', '#']).next()?;
    (!slug.is_empty()).then_some(slug)
}

#[cfg(test)]
#[path = "variables_tests.rs"]
mod tests;
