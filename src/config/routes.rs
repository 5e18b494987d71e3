//! Validation of `[[routes]]` and their `[[routes.when]]` conditions.

use super::check::Check;
use super::interpolate;
use super::raw::{self, RawRoute, Text};
use crate::mute::MuteWindow;
use crate::routing::{Condition, Grouping, PatternList, Route, Test};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

const TRANSITIONS: [&str; 4] = ["broken", "fixed", "still_failing", "passing"];

impl Check<'_> {
    pub(super) fn routes(
        &mut self,
        raw: &[toml::Spanned<RawRoute>],
        destinations: &HashSet<&str>,
        mutes: &HashMap<String, Arc<MuteWindow>>,
    ) -> Vec<Route> {
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for (i, spanned) in raw.iter().enumerate() {
            let span = spanned.span();
            let r = spanned.get_ref();
            let name = match &r.name {
                Some(n) => self.text(n, "route name").unwrap_or_default(),
                None => String::new(),
            };
            if name.is_empty() {
                self.problem(Some(span), format!("route #{}: name is required", i + 1));
                continue;
            }
            if !seen.insert(name.clone()) {
                self.problem(
                    Some(span),
                    format!("route {name:?}: another route has the same name"),
                );
                continue;
            }
            if let Some(route) = self.route(&name, r, destinations, mutes, span) {
                routes.push(route);
            }
        }
        routes
    }

    fn patterns(&mut self, route: &str, field: &str, list: &[Text]) -> Option<PatternList> {
        let values = self.texts(list, &format!("route {route:?} {field}"));
        match PatternList::new(&values) {
            Ok(p) => Some(p),
            Err(e) => {
                let span = list
                    .iter()
                    .find(|t| t.get_ref() == &e.pattern)
                    .map(|t| t.span())
                    .or_else(|| list.first().map(|t| t.span()));
                self.problem(span, format!("route {route:?} {field}: {e}"));
                None
            }
        }
    }

    /// Warns of entries of `list` that match none of `known` (a typo: the route never fires
    /// for them), with the nearest names. A glob is judged by the names it could match and an
    /// `!` exclusion by what it excludes; an entry with a `${…}` reference is not judged, as
    /// its value is the environment's.
    fn known(&mut self, route: &str, field: &str, list: &[Text], known: &[&str], what: &str) {
        for t in list {
            if t.get_ref().contains("${") {
                continue;
            }
            let entry = t.get_ref().strip_prefix('!').unwrap_or(t.get_ref());
            let Ok(pattern) = PatternList::new(&[entry.to_string()]) else {
                continue; // reported as a problem already
            };
            if known.iter().any(|k| pattern.matches(Some(k))) {
                continue;
            }
            let nearest = crate::condition::nearest(entry, known.iter().copied());
            let hint = match nearest.as_slice() {
                [] => String::new(),
                [one, ..] => format!("; did you mean {one:?}?"),
            };
            self.warning(
                t.span(),
                format!("route {route:?} {field}: {entry:?} matches no {what}{hint}"),
            );
        }
    }

    fn route(
        &mut self,
        name: &str,
        r: &RawRoute,
        destinations: &HashSet<&str>,
        mutes: &HashMap<String, Arc<MuteWindow>>,
        span: Range<usize>,
    ) -> Option<Route> {
        let events = self.patterns(name, "events", &r.events);
        self.known(
            name,
            "events",
            &r.events,
            crate::event::NAMES,
            "Buildkite event",
        );
        self.known(
            name,
            "states",
            &r.states,
            crate::event::STATES,
            "event family's state",
        );
        let pipelines = self.patterns(name, "pipelines", &r.pipelines);
        let branches = self.patterns(name, "branches", &r.branches);
        let states = self.patterns(name, "states", &r.states);
        let transitions = self.transitions(name, &r.transitions);
        if !r.transitions.is_empty()
            && events
                .as_ref()
                .is_some_and(|e| !e.matches(Some("build.finished")))
        {
            self.problem(
                r.transitions.first().map(|t| t.span()),
                format!("route {name:?}: transitions belong to build.finished events, which this route's events leave out"),
            );
        }
        let group = self.grouping(name, r, &span);
        let mut mute = Vec::new();
        for t in &r.mute {
            let Some(m) = self.text(t, &format!("route {name:?} mute")) else {
                continue;
            };
            match mutes.get(&m) {
                Some(window) => mute.push(window.clone()),
                None => self.problem(
                    Some(t.span()),
                    format!("route {name:?}: unknown mute {m:?}"),
                ),
            }
        }
        if r.to.is_empty() {
            self.problem(
                Some(span.clone()),
                format!("route {name:?}: `to` must name at least one destination"),
            );
        }
        let mut to = Vec::new();
        for t in &r.to {
            let Some(dest) = self.text(t, &format!("route {name:?} to")) else {
                continue;
            };
            if !destinations.contains(dest.as_str()) {
                self.problem(
                    Some(t.span()),
                    format!("route {name:?}: unknown destination {dest:?}"),
                );
            } else if to.contains(&dest) {
                self.problem(
                    Some(t.span()),
                    format!("route {name:?}: destination {dest:?} listed twice"),
                );
            } else {
                to.push(dest);
            }
        }
        let template = r
            .template
            .as_ref()
            .and_then(|t| self.text(t, &format!("route {name:?} template")));
        let mut when = Vec::new();
        for w in &r.when {
            if let Some(c) = self.condition(name, w) {
                when.push(c);
            }
        }
        let condition = r.condition.as_ref().map(|t| {
            crate::condition::Condition::compile(t.get_ref(), crate::condition::event_schema())
                .map(std::sync::Arc::new)
                .map_err(|e| {
                    self.problem(
                        Some(t.span()),
                        format!("route {name:?} if: {e} in {:?}", t.get_ref()),
                    )
                })
        });
        let mut buttons = Vec::new();
        for t in &r.buttons {
            match crate::actions::Action::parse(t.get_ref()) {
                Some(a) if !buttons.contains(&a) => buttons.push(a),
                Some(_) => self.problem(
                    Some(t.span()),
                    format!("route {name:?} buttons: {:?} listed twice", t.get_ref()),
                ),
                None => self.problem(
                    Some(t.span()),
                    format!(
                        "route {name:?} buttons: unknown action {:?} (known: retry_failed, rebuild, unblock, cancel)",
                        t.get_ref()
                    ),
                ),
            }
        }
        let route = Route {
            name: name.to_string(),
            events: events?,
            pipelines: pipelines?,
            branches: branches?,
            states: states?,
            transitions: transitions?,
            when,
            condition: condition.transpose().ok()?,
            to,
            template,
            continue_matching: r.continue_matching,
            group: group?,
            mute,
            buttons,
        };
        let complete = route.to.len() == r.to.len()
            && route.buttons.len() == r.buttons.len()
            && route.when.len() == r.when.len()
            && route.mute.len() == r.mute.len()
            && !r.to.is_empty();
        complete.then_some(route)
    }

    fn transitions(&mut self, route: &str, list: &[Text]) -> Option<PatternList> {
        for t in list {
            let v = self.text(t, &format!("route {route:?} transitions"))?;
            let v = v.trim_start_matches('!');
            if !TRANSITIONS.contains(&v) {
                self.problem(
                    Some(t.span()),
                    format!(
                        "route {route:?} transitions: {} is not one of broken, fixed, still_failing, passing",
                        Self::shown(t, v)
                    ),
                );
                return None;
            }
        }
        self.patterns(route, "transitions", list)
    }

    /// `group_window` and `group_by`; `Some(None)` when the route does not group.
    fn grouping(
        &mut self,
        route: &str,
        r: &RawRoute,
        span: &Range<usize>,
    ) -> Option<Option<Grouping>> {
        let Some(window) = &r.group_window else {
            if !r.group_by.is_empty() {
                self.problem(
                    Some(span.clone()),
                    format!("route {route:?}: group_by needs group_window"),
                );
                return None;
            }
            return Some(None);
        };
        let window = self.duration(
            Some(window),
            &format!("route {route:?} group_window"),
            Duration::ZERO,
        );
        let mut by = Vec::new();
        for t in &r.group_by {
            let path = self.text(t, &format!("route {route:?} group_by"))?;
            if path.is_empty() || path.split('.').any(str::is_empty) {
                self.problem(
                    Some(t.span()),
                    format!("route {route:?} group_by: {path:?} is not a dot path"),
                );
                return None;
            }
            by.push(path);
        }
        (!window.is_zero()).then_some(Some(Grouping { window, by }))
    }

    fn condition(&mut self, route: &str, w: &toml::Spanned<raw::RawWhen>) -> Option<Condition> {
        let span = w.span();
        let w = w.get_ref();
        let what = format!("route {route:?} when");
        let path = self.text(&w.path, &format!("{what} path"))?;
        let ops = [
            w.equals.is_some(),
            w.in_.is_some(),
            w.matches.is_some(),
            w.exists.is_some(),
        ];
        if ops.iter().filter(|o| **o).count() != 1 {
            self.problem(
                Some(span.clone()),
                format!("{what} {path:?}: give exactly one of equals, in, matches, exists"),
            );
            return None;
        }
        let test = if let Some(v) = &w.equals {
            Test::Equals(self.json(v, &what, &span)?)
        } else if let Some(list) = &w.in_ {
            Test::In(
                list.iter()
                    .map(|v| self.json(v, &what, &span))
                    .collect::<Option<_>>()?,
            )
        } else if let Some(re) = &w.matches {
            let pattern = self.text(re, &format!("{what} matches"))?;
            match Condition::regex(&pattern) {
                Ok(t) => t,
                Err(e) => {
                    self.problem(Some(re.span()), format!("{what} {path:?}: {e}"));
                    return None;
                }
            }
        } else {
            Test::Exists(w.exists.unwrap_or(true))
        };
        match Condition::new(&path, test) {
            Ok(c) => Some(c),
            Err(e) => {
                self.problem(Some(w.path.span()), format!("{what}: {e}"));
                None
            }
        }
    }

    /// A TOML value as JSON, interpolating strings.
    fn json(
        &mut self,
        v: &toml::Value,
        what: &str,
        span: &Range<usize>,
    ) -> Option<serde_json::Value> {
        Some(match v {
            toml::Value::String(s) => match interpolate::expand(s, |n| (self.env)(n)) {
                Ok(s) => serde_json::Value::String(s),
                Err(e) => {
                    self.problem(Some(span.clone()), format!("{what}: {e}"));
                    return None;
                }
            },
            toml::Value::Integer(i) => serde_json::Value::from(*i),
            toml::Value::Float(f) => serde_json::Value::from(*f),
            toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
            other => {
                self.problem(
                    Some(span.clone()),
                    format!(
                        "{what}: compare with a string, number or boolean, not {}",
                        other.type_str()
                    ),
                );
                return None;
            }
        })
    }
}
