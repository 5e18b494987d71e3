//! Validation of `[[people]]` or `[people]` (who can be mentioned) and `[[mute]]` (quiet times).

use super::check::Check;
use super::raw::{RawConfig, Text};
use crate::mute::{MuteAction, MuteWindow};
use crate::render::{People, Person};
use chrono::NaiveTime;
use std::collections::HashMap;
use std::sync::Arc;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

impl Check<'_> {
    pub(super) fn people(&mut self, raw: &RawConfig) -> People {
        let mut people = People::default();
        for (i, spanned) in raw.people.0.iter().enumerate() {
            let p = spanned.get_ref();
            let what = match &p.key {
                Some(key) => format!("people.{key:?}"),
                None => format!("people #{}", i + 1),
            };
            let mut keys = self.texts(&p.emails, &format!("{what} emails"));
            keys.extend(self.texts(&p.buildkite, &format!("{what} buildkite")));
            keys.retain(|k| !k.trim().is_empty());
            if keys.is_empty() {
                self.problem(
                    Some(spanned.span()),
                    format!("{what}: give emails or buildkite user names to recognise them by"),
                );
                continue;
            }
            let slack = self.optional(p.slack.as_ref(), &format!("{what} slack"));
            if let (Some(id), Some(t)) = (&slack, &p.slack)
                && !crate::destination::is_slack_id(id, &['U', 'W'])
            {
                self.problem(
                    Some(t.span()),
                    format!("{what}: slack must be a member id such as \"U024BE7LH\" (the profile's \"Copy member ID\")"),
                );
            }
            let teams = self.optional(p.teams.as_ref(), &format!("{what} teams"));
            if let (Some(upn), Some(t)) = (&teams, &p.teams)
                && !upn.contains('@')
            {
                self.problem(
                    Some(t.span()),
                    format!(
                        "{what}: teams must be a user principal name such as \"maria@acme.example\""
                    ),
                );
            }
            let buildkite_id =
                self.optional(p.buildkite_id.as_ref(), &format!("{what} buildkite_id"));
            if slack.is_none() && teams.is_none() && buildkite_id.is_none() {
                self.problem(
                    Some(spanned.span()),
                    format!("{what}: give slack, teams, buildkite_id or several"),
                );
                continue;
            }
            let person = Person {
                name: self.optional(p.name.as_ref(), &format!("{what} name")),
                slack,
                teams,
                buildkite_id,
            };
            if let Err(taken) = people.add(&keys, person) {
                self.problem(
                    Some(spanned.span()),
                    format!("{what}: {taken:?} already belongs to another person"),
                );
            }
        }
        people
    }

    pub(super) fn mutes(&mut self, raw: &RawConfig) -> HashMap<String, Arc<MuteWindow>> {
        let mut out = HashMap::new();
        for (i, spanned) in raw.mute.iter().enumerate() {
            let m = spanned.get_ref();
            let Some(name) = self.optional(m.name.as_ref(), "mute name") else {
                self.problem(
                    Some(spanned.span()),
                    format!("mute #{}: name is required", i + 1),
                );
                continue;
            };
            let what = format!("mute {name:?}");
            let mut days = [m.days.is_empty(); 7];
            for t in &m.days {
                let Some(v) = self.text(t, &format!("{what} days")) else {
                    continue;
                };
                let v = v.to_ascii_lowercase();
                match (0..7).find(|&i| v == DAYS[i] || v == DAY_NAMES[i]) {
                    Some(d) => days[d] = true,
                    None => self.problem(
                        Some(t.span()),
                        format!(
                            "{what}: day {} is not one of mon, tue, wed, thu, fri, sat, sun",
                            Self::shown(t, &v)
                        ),
                    ),
                }
            }
            let from = self.clock(m.from.as_ref(), &what, "from", spanned.span());
            let to = self.clock(m.to.as_ref(), &what, "to", spanned.span());
            let timezone = match &m.timezone {
                None => Some(chrono_tz::Tz::UTC),
                Some(t) => {
                    // A failed interpolation is already reported.
                    let v = self.text(t, &format!("{what} timezone"));
                    let tz = v.as_ref().and_then(|v| v.parse::<chrono_tz::Tz>().ok());
                    if let (Some(v), None) = (&v, tz) {
                        self.problem(
                            Some(t.span()),
                            format!(
                                "{what}: timezone {} is not an IANA zone such as \"Europe/Berlin\"",
                                Self::shown(t, v)
                            ),
                        );
                    }
                    tz
                }
            };
            let action = match m
                .action
                .as_ref()
                .map(|t| (t, self.text(t, &format!("{what} action"))))
            {
                None => Some(MuteAction::Hold),
                Some((_, Some(v))) if v == "hold" => Some(MuteAction::Hold),
                Some((_, Some(v))) if v == "drop" => Some(MuteAction::Drop),
                // A failed interpolation is already reported.
                Some((_, None)) => None,
                Some((t, Some(v))) => {
                    self.problem(
                        Some(t.span()),
                        format!(
                            "{what}: action {} is not \"hold\" or \"drop\"",
                            Self::shown(t, &v)
                        ),
                    );
                    None
                }
            };
            if out.contains_key(&name) {
                self.problem(
                    Some(spanned.span()),
                    format!("{what}: another mute has the same name"),
                );
                continue;
            }
            if let (Some(from), Some(to), Some(timezone), Some(action)) =
                (from, to, timezone, action)
            {
                let window = MuteWindow {
                    name: name.clone(),
                    days,
                    from,
                    to,
                    timezone,
                    action,
                };
                if window.always() && action == MuteAction::Hold {
                    self.problem(
                        Some(spanned.span()),
                        format!("{what}: covers every moment of every day, so it would hold messages for ever (use action = \"drop\", or leave the route out)"),
                    );
                    continue;
                }
                out.insert(name, Arc::new(window));
            }
        }
        out
    }

    fn clock(
        &mut self,
        t: Option<&Text>,
        what: &str,
        key: &str,
        table: std::ops::Range<usize>,
    ) -> Option<NaiveTime> {
        let Some(t) = t else {
            self.problem(
                Some(table),
                format!("{what}: {key} is required, as \"HH:MM\""),
            );
            return None;
        };
        let v = self.text(t, &format!("{what} {key}"))?;
        let parsed = NaiveTime::parse_from_str(&v, "%H:%M:%S")
            .or_else(|_| NaiveTime::parse_from_str(&v, "%H:%M"))
            .ok();
        if parsed.is_none() {
            self.problem(
                Some(t.span()),
                format!(
                    "{what}: {key} {} is not a time such as \"22:00\"",
                    Self::shown(t, &v)
                ),
            );
        }
        parsed
    }
}
