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
        }
    }

    /// Whether every condition of the route holds for `event`.
    pub fn matches(&self, event: &Event) -> bool {
        self.events.matches(Some(event.name()))
            && self.pipelines.matches(event.pipeline_slug())
            && self.matches_rest(event)
    }

    /// The conditions beyond event name and pipeline (which the router's index has checked).
    fn matches_rest(&self, event: &Event) -> bool {
        self.branches.matches(event.branch())
            && self.states.matches(event.state())
            && self
                .transitions
                .matches(event.transition().map(|t| t.kind.as_str()))
            && self.when.iter().all(|c| c.holds(event.payload()))
            && self
                .condition
                .as_ref()
                .is_none_or(|c| c.eval(&crate::condition::EventVariables::new(event)))
    }
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
}
