//! `Event::parse` of arbitrary bytes, then a fixed router of representative routes.
//!
//! Never panics; the routes come back in file order, each one matching, every one but the
//! last marked `continue`, and none missing; the final catch-all means something always
//! matches.

#![no_main]

use kitebridge::routing::{Condition, Grouping, PatternList, Route, Router, Test};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use std::sync::LazyLock;
use std::time::Duration;

struct Spec {
    name: &'static str,
    events: &'static [&'static str],
    pipelines: &'static [&'static str],
    branches: &'static [&'static str],
    states: &'static [&'static str],
    transitions: &'static [&'static str],
    when: Vec<Condition>,
    cont: bool,
}

impl Spec {
    fn new(name: &'static str, events: &'static [&'static str]) -> Self {
        Self {
            name,
            events,
            pipelines: &[],
            branches: &[],
            states: &[],
            transitions: &[],
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
            transitions: PatternList::new(self.transitions).unwrap(),
            when: self.when,
            continue_matching: self.cont,
            ..Route::new(self.name, ["slack"])
        }
    }
}

fn when(path: &str, test: Test) -> Condition {
    Condition::new(path, test).unwrap()
}

static ROUTER: LazyLock<Router> = LazyLock::new(|| {
    Router::new(vec![
        Spec {
            pipelines: &["web-*", "!web-sandbox"],
            branches: &["main", "release/*"],
            states: &["failed", "failing"],
            cont: true,
            ..Spec::new("main failures", &["build.finished", "build.failing"])
        }
        .build(),
        Spec {
            branches: &["!dependabot/*", "!renovate/*"],
            transitions: &["broken", "fixed", "still_failing"],
            cont: true,
            ..Spec::new("transitions", &["build.finished"])
        }
        .build(),
        Spec {
            states: &["blocked"],
            ..Spec::new("blocked builds", &["build.finished"])
        }
        .build(),
        Spec {
            when: vec![when(
                "build.source",
                Test::In(vec![json!("ui"), json!("api")]),
            )],
            ..Spec::new("manual builds", &["build.*"])
        }
        .build(),
        Spec {
            when: vec![
                when("build.tag", Condition::regex(r"^v\d+\.\d+").unwrap()),
                when("build.pull_request", Test::Exists(false)),
            ],
            cont: true,
            ..Spec::new("release tags", &["build.{scheduled,finished}"])
        }
        .build(),
        Spec {
            states: &["failed", "timed_out", "broken"],
            when: vec![when("job.soft_failed", Test::Equals(json!(false)))],
            ..Spec::new("job failures", &["job.finished"])
        }
        .build(),
        Spec {
            states: &["lost", "disconnected", "stopped"],
            ..Spec::new("agents", &["agent.*", "!agent.connected"])
        }
        .build(),
        Spec {
            when: vec![
                when("pipeline.steps.0.type", Test::Equals(json!("script"))),
                when("build.number", Test::Equals(json!(1842.0))),
            ],
            cont: true,
            ..Spec::new("deep paths", &["*"])
        }
        .build(),
        Route {
            group: Some(Grouping {
                window: Duration::from_secs(300),
                by: vec!["pipeline.slug".into(), "build.branch".into()],
            }),
            ..Spec::new("everything else", &["*"]).build()
        },
    ])
});

fuzz_target!(|data: &[u8]| {
    let Some(event) = kitebridge_fuzz::event(data) else {
        return;
    };
    let routes = ROUTER.routes();
    let matched: Vec<usize> = ROUTER
        .route(&event)
        .into_iter()
        .map(|r| routes.iter().position(|x| std::ptr::eq(x, r)).unwrap())
        .collect();
    assert!(!matched.is_empty(), "nothing matched {}", event.name());
    assert!(matched.windows(2).all(|w| w[0] < w[1]), "{matched:?}");
    let stop = routes
        .iter()
        .position(|r| !r.continue_matching && r.matches(&event))
        .unwrap_or(routes.len());
    for (i, route) in routes.iter().enumerate() {
        let want = i <= stop && route.matches(&event);
        assert_eq!(matched.contains(&i), want, "route {:?}", route.name);
    }
});
