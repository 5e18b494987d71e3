//! Which messages an event makes: one per (matching route, enabled destination), with its
//! digest group, its mute, and the build it belongs to. Pure.

use crate::event::Event;
use crate::mute::{self, Muted};
use crate::routing::{Grouping, Route};
use crate::store::{Group, NewDelivery};

/// The messages an event makes, and what muting did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// What to store.
    pub deliveries: Vec<NewDelivery>,
    /// The names of the routes that matched, in order.
    pub routes: Vec<String>,
    /// Each muted message; dropped ones are not in `deliveries`, held ones are, with
    /// `not_before` set.
    pub muted: Vec<MutedMessage>,
}

/// A message a mute window dropped or held.
#[derive(Debug, Clone, PartialEq)]
pub struct MutedMessage {
    /// Its route.
    pub route: String,
    /// Its destination.
    pub destination: String,
    /// What the mute did.
    pub muted: Muted,
}

/// The build a build or job event belongs to, `pipeline#number`.
pub fn thread_key(event: &Event) -> Option<String> {
    if !matches!(event.family(), "build" | "job") {
        return None;
    }
    Some(format!(
        "{}#{}",
        event.pipeline_slug()?,
        event.build_number()?
    ))
}

/// The values of a route's `group_by` paths, joined: events with equal keys share a digest.
pub fn group_key(grouping: &Grouping, event: &Event) -> String {
    grouping
        .by
        .iter()
        .map(|path| {
            event
                .lookup(path)
                .map_or_else(|| "null".to_string(), |v| v.to_string())
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Plans `event` through the `routes` it matched; `enabled` says which destinations send.
pub fn plan(routes: &[&Route], event: &Event, enabled: impl Fn(&str) -> bool) -> Plan {
    let mut out = Plan::default();
    let thread = thread_key(event);
    for route in routes {
        out.routes.push(route.name.clone());
        let muted = mute::decide(&route.mute, event.received_at());
        let group = route.group.as_ref().map(|g| Group {
            key: group_key(g, event),
            window_ms: g.window.as_millis() as i64,
        });
        for dest in route.to.iter().filter(|d| enabled(d)) {
            let not_before = match &muted {
                Some(m) => {
                    out.muted.push(MutedMessage {
                        route: route.name.clone(),
                        destination: dest.clone(),
                        muted: m.clone(),
                    });
                    match m {
                        Muted::Drop(_) => continue,
                        Muted::Hold(_, until) => Some(until.timestamp_millis()),
                    }
                }
                None => None,
            };
            out.deliveries.push(NewDelivery {
                route: route.name.clone(),
                destination: dest.clone(),
                template: route.template.clone(),
                // A digest is a message of its own, not an update of one build's message.
                thread_key: if group.is_some() {
                    None
                } else {
                    thread.clone()
                },
                group: group.clone(),
                not_before,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mute::{MuteAction, MuteWindow};
    use chrono::{NaiveTime, TimeZone, Utc};
    use serde_json::json;
    use std::sync::Arc;
    use std::time::Duration;

    fn route(name: &str, group: Option<Grouping>, mute: Vec<Arc<MuteWindow>>) -> Route {
        Route {
            continue_matching: true,
            group,
            mute,
            ..Route::new(name, ["a", "off"])
        }
    }

    fn window(action: MuteAction) -> Arc<MuteWindow> {
        Arc::new(MuteWindow {
            name: "night".into(),
            days: [true; 7],
            from: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            to: NaiveTime::from_hms_opt(6, 0, 0).unwrap(),
            timezone: chrono_tz::Tz::UTC,
            action,
        })
    }

    #[test]
    fn plans_groups_mutes_and_build_keys() {
        let night = Utc.with_ymd_and_hms(2026, 11, 30, 23, 0, 0).unwrap();
        let event = Event::from_value(
            "job.finished",
            json!({"pipeline": {"slug": "web"}, "build": {"number": 7, "id": "b-7"}}),
            night,
        );
        let grouped = route(
            "digest",
            Some(Grouping {
                window: Duration::from_secs(10),
                by: vec!["build.id".into(), "job.nope".into()],
            }),
            vec![],
        );
        let held = route("held", None, vec![window(MuteAction::Hold)]);
        let dropped = route("dropped", None, vec![window(MuteAction::Drop)]);
        let p = plan(&[&grouped, &held, &dropped], &event, |d| d == "a");
        assert_eq!(p.routes, ["digest", "held", "dropped"]);
        assert_eq!(
            p.deliveries.len(),
            2,
            "the disabled destination and the dropped route send nothing"
        );
        assert_eq!(
            p.deliveries[0].group,
            Some(Group {
                key: "\"b-7\"|null".into(),
                window_ms: 10_000
            })
        );
        assert_eq!(
            p.deliveries[0].thread_key, None,
            "a digest is not one build's message"
        );
        assert_eq!(p.deliveries[1].thread_key.as_deref(), Some("web#7"));
        let six = Utc
            .with_ymd_and_hms(2026, 12, 1, 6, 0, 0)
            .unwrap()
            .timestamp_millis();
        assert_eq!(p.deliveries[1].not_before, Some(six));
        assert_eq!(p.muted.len(), 2);
        assert!(matches!(p.muted[1].muted, Muted::Drop(_)));
    }
}
