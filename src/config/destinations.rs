//! `[destinations.NAME]`: each table's strings interpolated here, then checked by its kind
//! (see [`crate::destination`]), whose problems come back with spans to turn into lines.

use super::check::Check;
use super::interpolate;
use super::raw::{RawConfig, RawDestination};
use crate::destination::{DestinationConfig, Entry, Table, Value};
use std::collections::BTreeMap;
use std::ops::Range;

impl Check<'_> {
    pub(super) fn destinations(
        &mut self,
        raw: &RawConfig,
        allowed_hosts: &[String],
    ) -> Vec<DestinationConfig> {
        let mut out = Vec::new();
        for (name, dest) in &raw.destinations {
            let what = format!("destination {:?}", name.get_ref());
            let Some(entries) = self.entries(&what, dest.get_ref()) else {
                continue;
            };
            let mut table = Table::new(name.get_ref().clone(), name.span(), entries);
            let config = table.configure(allowed_hosts);
            for problem in table.problems() {
                self.problem(problem.span, problem.message);
            }
            out.extend(config);
        }
        out
    }

    /// The table's values with every string interpolated; `None` after a problem.
    fn entries(&mut self, what: &str, raw: &RawDestination) -> Option<BTreeMap<String, Entry>> {
        let mut entries = BTreeMap::new();
        let mut ok = true;
        for (key, value) in raw {
            let span = value.span();
            let mut from_env = false;
            match self.value(what, key.get_ref(), value.get_ref(), &span, &mut from_env) {
                Some(value) => {
                    entries.insert(
                        key.get_ref().clone(),
                        Entry {
                            span,
                            value,
                            from_env,
                        },
                    );
                }
                None => ok = false,
            }
        }
        ok.then_some(entries)
    }

    fn value(
        &mut self,
        what: &str,
        key: &str,
        value: &toml::Value,
        span: &Range<usize>,
        from_env: &mut bool,
    ) -> Option<Value> {
        Some(match value {
            toml::Value::String(s) => {
                *from_env |= s.contains("${");
                match interpolate::expand(s, |n| (self.env)(n)) {
                    Ok(v) => Value::Text(v),
                    Err(e) => {
                        self.problem(Some(span.clone()), format!("{what} {key}: {e}"));
                        return None;
                    }
                }
            }
            toml::Value::Integer(n) => Value::Integer(*n),
            toml::Value::Float(f) => Value::Float(*f),
            toml::Value::Boolean(b) => Value::Bool(*b),
            toml::Value::Datetime(d) => Value::Text(d.to_string()),
            toml::Value::Array(items) => Value::List(
                items
                    .iter()
                    .map(|i| self.value(what, key, i, span, from_env))
                    .collect::<Option<_>>()?,
            ),
            toml::Value::Table(map) => Value::Map(
                map.iter()
                    .map(|(k, v)| Some((k.clone(), self.value(what, key, v, span, from_env)?)))
                    .collect::<Option<_>>()?,
            ),
        })
    }
}
