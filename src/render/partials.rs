//! Which partials a template includes, and the circles they make. Handlebars refuses a
//! template that includes itself directly, but not one that comes back to itself through
//! others: that recursion only ends when the stack overflows, so it is refused up front.

use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

/// `{{> name}}`, `{{#> name}}` and `{{~> name}}`, with the name bare or quoted.
static INCLUDE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\{\{~?\s*#?>\s*"?([A-Za-z0-9_./-]+)"?"#).expect("the pattern compiles")
});

/// The partials `source` includes by name (dynamic `{{> (expr)}}` ones cannot be known).
pub fn included(source: &str) -> BTreeSet<String> {
    INCLUDE
        .captures_iter(source)
        .map(|c| c[1].to_string())
        .collect()
}

/// Every circle among `templates` (name, source) that is longer than one template, each as
/// the names along it, starting and ending with the same one; each circle once.
pub fn cycles(templates: &[(&str, &str)]) -> Vec<Vec<String>> {
    let edges: BTreeMap<String, BTreeSet<String>> = templates
        .iter()
        .map(|(name, source)| {
            let mut to = included(source);
            to.remove(*name); // Handlebars itself refuses the direct case, clearly
            (name.to_string(), to)
        })
        .collect();
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut seen: BTreeSet<BTreeSet<String>> = BTreeSet::new();
    for start in edges.keys() {
        let mut path = vec![start.clone()];
        walk(&edges, &mut path, &mut found, &mut seen);
    }
    found
}

fn walk(
    edges: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    found: &mut Vec<Vec<String>>,
    seen: &mut BTreeSet<BTreeSet<String>>,
) {
    let last = path.last().expect("never empty").clone();
    for next in edges.get(&last).into_iter().flatten() {
        if next == &path[0] {
            let members: BTreeSet<String> = path.iter().cloned().collect();
            if seen.insert(members) {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                found.push(cycle);
            }
        } else if !path.contains(next) && edges.contains_key(next) {
            path.push(next.clone());
            walk(edges, path, found, seen);
            path.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_includes_of_every_form() {
        let got = included("{{> _a}} {{#> _b}}x{{/_b}} {{~> \"_c\" x=1}} {{> (lookup . \"d\")}}");
        assert_eq!(
            got,
            ["_a", "_b", "_c"].map(String::from).into_iter().collect()
        );
    }

    #[test]
    fn finds_circles_through_other_partials_once() {
        let templates = [
            ("build", "{{> _a}}"),
            ("_a", "{{> _b}}"),
            ("_b", "{{#> _a}}{{/_a}}"),
            ("_self", "{{> _self}}"),
            ("_fine", "{{> _leaf}}"),
            ("_leaf", "leaf"),
        ];
        let cycles = cycles(&templates);
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert_eq!(cycles[0], ["_a", "_b", "_a"]);
    }
}
