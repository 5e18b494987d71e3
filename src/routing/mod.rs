//! The operator's `[[routes]]`, compiled, and the pure function that matches events to them.
//!
//! Routes are tried in file order; every condition of a route must hold; the first match stops
//! the search unless that route says `continue = true`. No I/O happens here.

mod condition;
mod patterns;

pub use condition::{Condition, ConditionError, Test};
pub use patterns::{PatternError, PatternList};

use crate::event::Event;
use crate::mute::MuteWindow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A route's digest setting: events within `window` with the same `by` values become one
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    /// How long a group stays open after its first event.
    pub window: Duration,
    /// Payload paths whose values make the group key.
    pub by: Vec<String>,
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's name, unique in the config; shown in logs and `render`.
    pub name: String,
    /// Globs on the event name.
    pub events: PatternList,
    /// Globs on `pipeline.slug`.
    pub pipelines: PatternList,
    /// Globs on `build.branch`.
    pub branches: PatternList,
    /// Globs on the subject's state (see [`Event::state`]).
    pub states: PatternList,
    /// Transitions of finished builds: `broken`, `fixed`, `still_failing`, `passing`.
    pub transitions: PatternList,
    /// Extra conditions on payload fields.
    pub when: Vec<Condition>,
    /// `if`: a condition in Buildkite's language, compiled once.
    pub condition: Option<Arc<crate::condition::Condition>>,
    /// Destination names, in order.
    pub to: Vec<String>,
    /// A template name that overrides the choice by event and family.
    pub template: Option<String>,
    /// Keep matching later routes after this one.
    pub continue_matching: bool,
    /// Collect events into digests.
    pub group: Option<Grouping>,
    /// Mute windows that apply to this route's messages.
    pub mute: Vec<Arc<MuteWindow>>,
    /// Action buttons its messages show, where they fit the event.
    pub buttons: Vec<crate::actions::Action>,
}

impl Route {
    /// A route named `name` to `to` that matches every event; set the conditions on it.
    pub fn new<S: Into<String>>(name: impl Into<String>, to: impl IntoIterator<Item = S>) -> Self {
        Self {
            name: name.into(),
            events: PatternList::default(),
            pipelines: PatternList::default(),
            branches: PatternList::default(),
            states: PatternList::default(),
            transitions: PatternList::default(),
            when: Vec::new(),
            condition: None,
            to: to.into_iter().map(Into::into).collect(),
            template: None,
            continue_matching: false,
            group: None,
            mute: Vec::new(),
            buttons: Vec::new(),
        }
    }

    /// Whether every condition of the route holds for `event`.
    pub fn matches(&self, event: &Event) -> bool {
        self.unmet(event, Conditions::All).is_none()
    }

    /// The conditions beyond event name and pipeline (which the router's index has checked).
    fn matches_rest(&self, event: &Event) -> bool {
        self.unmet(event, Conditions::BeyondIndex).is_none()
    }

    /// The first of the route's conditions that `event` does not meet, in the order they are
    /// written about: the one check behind both matching and explaining, so they cannot differ.
    fn unmet(&self, event: &Event, which: Conditions) -> Option<Unmet> {
        let skip = match which {
            Conditions::All => 0,
            Conditions::BeyondIndex => 2,
        };
        for field in Field::ALL.into_iter().skip(skip) {
            if !field.list(self).matches(field.value(event)) {
                return Some(Unmet::List(field));
            }
        }
        if let Some(i) = self.when.iter().position(|c| !c.holds(event.payload())) {
            return Some(Unmet::When(i));
        }
        match &self.condition {
            Some(c) if !c.eval(&crate::condition::EventVariables::new(event)) => Some(Unmet::If),
            _ => None,
        }
    }

    /// `Ok` when the route takes `event`, else the first condition that failed and what it saw.
    pub fn explain(&self, event: &Event) -> Result<(), String> {
        let Some(unmet) = self.unmet(event, Conditions::All) else {
            return Ok(());
        };
        Err(match unmet {
            Unmet::List(field) => {
                let (name, what) = field.names();
                match field.value(event) {
                    Some(v) => format!(
                        "{name}: {v:?} matches none of {:?}",
                        field.list(self).written()
                    ),
                    None => format!("{name}: the event has no {what}"),
                }
            }
            Unmet::When(i) => format!("when: {}", self.when[i].explain(event.payload())),
            Unmet::If => {
                use crate::condition::Variables;
                let c = self.condition.as_ref().expect("an if that failed");
                let vars = crate::condition::EventVariables::new(event);
                let seen: Vec<String> = c
                    .variables()
                    .iter()
                    .map(|name| format!("{name} is {}", vars.get(name)))
                    .collect();
                if seen.is_empty() {
                    format!("if: {} is false", c.source())
                } else {
                    format!("if: {} is false ({})", c.source(), seen.join(", "))
                }
            }
        })
    }
}

/// Which of a route's conditions to check.
#[derive(Clone, Copy)]
enum Conditions {
    All,
    /// All but `events` and `pipelines`, which the router's index has checked.
    BeyondIndex,
}

/// A route's glob lists, in the order they are checked.
#[derive(Clone, Copy)]
enum Field {
    Events,
    Pipelines,
    Branches,
    States,
    Transitions,
}

impl Field {
    const ALL: [Field; 5] = [
        Field::Events,
        Field::Pipelines,
        Field::Branches,
        Field::States,
        Field::Transitions,
    ];

    /// The route's list.
    fn list(self, route: &Route) -> &PatternList {
        match self {
            Field::Events => &route.events,
            Field::Pipelines => &route.pipelines,
            Field::Branches => &route.branches,
            Field::States => &route.states,
            Field::Transitions => &route.transitions,
        }
    }

    /// What the list is matched against in `event`.
    fn value(self, event: &Event) -> Option<&str> {
        match self {
            Field::Events => Some(event.name()),
            Field::Pipelines => event.pipeline_slug(),
            Field::Branches => event.branch(),
            Field::States => event.state(),
            Field::Transitions => event.transition().map(|t| t.kind.as_str()),
        }
    }

    /// The setting's name, and what the event lacks when it has no value for it.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Field::Events => ("events", "name"),
            Field::Pipelines => ("pipelines", "pipeline"),
            Field::Branches => ("branches", "branch"),
            Field::States => ("states", "state"),
            Field::Transitions => ("transitions", "transition"),
        }
    }
}

/// The first condition a route found unmet.
enum Unmet {
    List(Field),
    When(usize),
    If,
}

/// Why a route did or did not take an event (`render --explain`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    /// The route's name.
    pub route: String,
    /// Whether it took the event.
    pub matched: bool,
    /// `matched`, the first condition that failed with the value it saw, or why the route was
    /// not tried.
    pub reason: String,
}

/// How many (event name, pipeline) pairs the router remembers; past that it stops adding (a
/// bound against invented names, which would otherwise grow it without end).
const INDEX_MAX: usize = 10_000;

type Index = HashMap<String, HashMap<String, Arc<[usize]>>>;

/// All routes, in file order, with an index of which routes an (event name, pipeline) pair can
/// reach, so matching costs about the same with ten routes or a thousand.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    index: RwLock<(Index, usize)>,
}

impl Clone for Router {
    fn clone(&self) -> Self {
        Self::new(self.routes.clone())
    }
}

impl Router {
    /// A router over `routes`, tried in the given order.
    pub fn new(routes: Vec<Route>) -> Self {
        Self {
            routes,
            index: RwLock::default(),
        }
    }

    /// The routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The routes whose `events` and `pipelines` hold for this name and pipeline, in order.
    fn candidates(&self, name: &str, pipeline: Option<&str>) -> Arc<[usize]> {
        // A pipeline slug is never empty, so "" stands for "no pipeline".
        let slug = pipeline.unwrap_or("");
        if let Some(found) = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(name)
            .and_then(|m| m.get(slug))
        {
            return found.clone();
        }
        let found: Arc<[usize]> = self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.events.matches(Some(name)) && r.pipelines.matches(pipeline))
            .map(|(i, _)| i)
            .collect();
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if index.1 < INDEX_MAX {
            let fresh = index
                .0
                .entry(name.to_string())
                .or_default()
                .insert(slug.to_string(), found.clone())
                .is_none();
            // Two requests that missed the same pair at once store it once.
            index.1 += usize::from(fresh);
        }
        found
    }

    /// For every route in order, whether it takes `event` and why (the same decision as
    /// [`Router::route`], without the index, for people to read).
    pub fn explain(&self, event: &Event) -> Vec<Explanation> {
        let mut stopped_by: Option<&str> = None;
        self.routes
            .iter()
            .map(|route| {
                let (matched, reason) = match (stopped_by, route.explain(event)) {
                    (Some(by), _) => (
                        false,
                        format!("not tried: route {by:?} took the event and does not continue"),
                    ),
                    (None, Ok(())) => {
                        if !route.continue_matching {
                            stopped_by = Some(&route.name);
                        }
                        let reason = if route.continue_matching {
                            "matched; continue = true, so later routes are tried"
                        } else {
                            "matched"
                        };
                        (true, reason.to_string())
                    }
                    (None, Err(reason)) => (false, reason),
                };
                Explanation {
                    route: route.name.clone(),
                    matched,
                    reason,
                }
            })
            .collect()
    }

    /// The routes `event` takes, in order.
    pub fn route(&self, event: &Event) -> Vec<&Route> {
        let mut matched = Vec::new();
        for &i in self.candidates(event.name(), event.pipeline_slug()).iter() {
            let route = &self.routes[i];
            if route.matches_rest(event) {
                matched.push(route);
                if !route.continue_matching {
                    break;
                }
            }
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    struct Spec {
        name: &'static str,
        events: &'static [&'static str],
        pipelines: &'static [&'static str],
        branches: &'static [&'static str],
        states: &'static [&'static str],
        when: Vec<Condition>,
        cont: bool,
    }

    impl Spec {
        fn new(name: &'static str) -> Self {
            Self {
                name,
                events: &[],
                pipelines: &[],
                branches: &[],
                states: &[],
                when: vec![],
                cont: false,
            }
        }

        fn build(self) -> Route {
            Route {
                events: PatternList::new(self.events).unwrap(),
                pipelines: PatternList::new(self.pipelines).unwrap(),
                branches: PatternList::new(self.branches).unwrap(),
                states: PatternList::new(self.states).unwrap(),
                when: self.when,
                continue_matching: self.cont,
                ..Route::new(self.name, ["dest"])
            }
        }
    }

    fn router() -> Router {
        Router::new(vec![
            Spec {
                events: &["build.finished", "build.failing"],
                pipelines: &["web-*", "!web-sandbox"],
                branches: &["main", "release/*"],
                states: &["failed", "failing"],
                cont: true,
                ..Spec::new("main failures")
            }
            .build(),
            Spec {
                events: &["build.finished"],
                states: &["blocked"],
                ..Spec::new("blocked builds")
            }
            .build(),
            Spec {
                events: &["build.*"],
                when: vec![Condition::new("build.source", Test::In(vec![json!("ui")])).unwrap()],
                ..Spec::new("manual builds")
            }
            .build(),
            Spec {
                events: &["agent.*"],
                states: &["lost", "disconnected"],
                ..Spec::new("agents")
            }
            .build(),
            Spec {
                events: &["*"],
                ..Spec::new("everything else")
            }
            .build(),
        ])
    }

    fn event(name: &str, payload: serde_json::Value) -> Event {
        Event::from_value(name, payload, Utc::now())
    }

    fn build(slug: &str, branch: &str, state: &str, source: &str) -> serde_json::Value {
        json!({"pipeline": {"slug": slug},
               "build": {"branch": branch, "state": state, "source": source, "blocked": false}})
    }

    #[test]
    fn routes_events_in_file_order_with_continue() {
        let r = router();
        let cases: Vec<(Event, &[&str])> = vec![
            (
                event(
                    "build.finished",
                    build("web-app", "main", "failed", "webhook"),
                ),
                &["main failures", "everything else"],
            ),
            (
                event("build.finished", build("web-app", "main", "failed", "ui")),
                &["main failures", "manual builds"],
            ),
            (
                event(
                    "build.failing",
                    build("web-app", "release/1.2", "failing", "webhook"),
                ),
                &["main failures", "everything else"],
            ),
            (
                event(
                    "build.finished",
                    build("web-sandbox", "main", "failed", "webhook"),
                ),
                &["everything else"],
            ),
            (
                event(
                    "build.finished",
                    build("web-app", "feature/x", "failed", "webhook"),
                ),
                &["everything else"],
            ),
            (
                event(
                    "build.finished",
                    build("web-app", "main", "passed", "webhook"),
                ),
                &["everything else"],
            ),
            (
                event(
                    "build.finished",
                    json!({"pipeline": {"slug": "web-app"},
                           "build": {"branch": "main", "state": "passed", "blocked": true}}),
                ),
                &["blocked builds"],
            ),
            (
                event("agent.lost", json!({"agent": {"connection_state": "lost"}})),
                &["agents"],
            ),
            (
                event(
                    "agent.connected",
                    json!({"agent": {"connection_state": "connected"}}),
                ),
                &["everything else"],
            ),
            (event("brand.new_event", json!({})), &["everything else"]),
        ];
        for (ev, want) in cases {
            let got: Vec<&str> = r.route(&ev).iter().map(|r| r.name.as_str()).collect();
            assert_eq!(got, want, "{} {}", ev.name(), ev.payload());
        }
    }

    #[test]
    fn a_missing_field_fails_a_non_empty_list() {
        let r = Router::new(vec![
            Spec {
                pipelines: &["web-*"],
                ..Spec::new("pipeline only")
            }
            .build(),
        ]);
        assert!(r.route(&event("agent.lost", json!({}))).is_empty());
        assert!(
            r.route(&event("ping", json!({"pipeline": {"slug": 5}})))
                .is_empty()
        );
    }

    #[test]
    fn the_index_gives_the_same_answers_as_trying_every_route() {
        let r = router();
        let events = [
            event(
                "build.finished",
                build("web-app", "main", "failed", "webhook"),
            ),
            event("build.finished", build("web-app", "main", "failed", "ui")),
            event(
                "build.finished",
                build("web-sandbox", "main", "failed", "webhook"),
            ),
            event("agent.lost", json!({"agent": {"connection_state": "lost"}})),
        ];
        for _ in 0..3 {
            for ev in &events {
                let indexed: Vec<&str> = r.route(ev).iter().map(|r| r.name.as_str()).collect();
                let mut linear = Vec::new();
                for route in r.routes() {
                    if route.matches(ev) {
                        linear.push(route.name.as_str());
                        if !route.continue_matching {
                            break;
                        }
                    }
                }
                assert_eq!(indexed, linear);
            }
        }
    }

    #[test]
    fn no_routes_means_no_matches() {
        assert!(
            Router::default()
                .route(&event("ping", json!({})))
                .is_empty()
        );
    }

    /// The explanation and the router decide alike, on every fixture.
    #[test]
    fn explanations_agree_with_routing_on_every_fixture() {
        let list = |v: &[&str]| PatternList::new(v).unwrap();
        let expr = crate::condition::Condition::compile(
            r#"build.state == "failed" || job.exit_status != 0"#,
            crate::condition::event_schema(),
        )
        .unwrap();
        let router = Router::new(vec![
            Route {
                events: list(&["job.*"]),
                continue_matching: true,
                ..Route::new("jobs", ["a"])
            },
            Route {
                branches: list(&["main"]),
                states: list(&["failed", "!passed"]),
                ..Route::new("main", ["a"])
            },
            Route {
                condition: Some(Arc::new(expr)),
                ..Route::new("if", ["a"])
            },
            Route::new("rest", ["a"]),
        ]);
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/buildkite");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let body: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let name = body["event"].as_str().unwrap_or("ping").to_string();
            let ev = Event::from_value(&name, body, Utc::now());
            let routed: Vec<&str> = router.route(&ev).iter().map(|r| r.name.as_str()).collect();
            let explained = router.explain(&ev);
            let matched: Vec<&str> = explained
                .iter()
                .filter(|e| e.matched)
                .map(|e| e.route.as_str())
                .collect();
            assert_eq!(routed, matched, "{}: {explained:?}", path.display());
            assert_eq!(explained.len(), 4);
            seen += 1;
        }
        assert!(seen >= 20, "{seen} fixtures");
    }
}
