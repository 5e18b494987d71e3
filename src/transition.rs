//! Build transitions: how a finished build changes its (pipeline, branch) from the last one.
//!
//! | previous finished build | this build | transition     |
//! |-------------------------|------------|----------------|
//! | passed, or none known   | failed     | `broken`       |
//! | failed                  | failed     | `still_failing`|
//! | failed                  | passed     | `fixed`        |
//! | passed, or none known   | passed     | `passing`      |
//!
//! Only `build.finished` with state `passed` or `failed` counts: blocked and canceled builds
//! (and everything else) neither change the history nor get a transition. A build older than
//! the last one recorded (webhooks can arrive out of order) is ignored the same way. The same
//! build finishing again (its failed jobs retried) is compared with its own earlier result, so
//! a retried failure that passes is `fixed`.

pub use crate::event::{Transition, TransitionKind};

use crate::event::Event;

/// A finished build that counts for transitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutcome {
    /// Pipeline slug.
    pub pipeline: String,
    /// Branch.
    pub branch: String,
    /// Build number.
    pub number: u64,
    /// True for `failed`, false for `passed`.
    pub failed: bool,
    /// When it finished (ms), to order two results of one build.
    pub finished_at: Option<i64>,
}

/// The last finished build recorded for a (pipeline, branch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastBuild {
    /// Its number.
    pub number: u64,
    /// Whether it failed.
    pub failed: bool,
    /// Failed builds in a row up to it.
    pub consecutive_failures: u32,
    /// When it finished (ms).
    pub finished_at: Option<i64>,
}

/// The outcome of a `build.finished` that counts: passed or failed, not blocked.
pub fn outcome(event: &Event) -> Option<BuildOutcome> {
    if event.name() != "build.finished" || event.is_blocked_build() {
        return None;
    }
    let failed = match event.state()? {
        "passed" => false,
        "failed" => true,
        _ => return None,
    };
    let finished_at = event
        .lookup("build.finished_at")
        .and_then(serde_json::Value::as_str)
        .and_then(crate::event::time::parse_timestamp)
        .map(|t| t.timestamp_millis());
    Some(BuildOutcome {
        pipeline: event.pipeline_slug()?.to_string(),
        branch: event.branch()?.to_string(),
        number: event.build_number()?,
        failed,
        finished_at,
    })
}

/// The transition `build` makes after `last`, and what to record as the new last build;
/// `None` when the build is older than the last one recorded (a lower number, or the same
/// build's earlier result arriving late).
pub fn next(last: Option<&LastBuild>, build: &BuildOutcome) -> Option<(Transition, LastBuild)> {
    if let Some(l) = last {
        let earlier_result = l.number == build.number
            && matches!((build.finished_at, l.finished_at), (Some(b), Some(l)) if b < l);
        if build.number < l.number || earlier_result {
            return None;
        }
    }
    let (kind, consecutive) = match (last.filter(|l| l.failed), build.failed) {
        (None, true) => (TransitionKind::Broken, 1),
        // The same build failing again after a retry is not one more failure in a row.
        (Some(l), true) => (
            TransitionKind::StillFailing,
            l.consecutive_failures + u32::from(l.number != build.number),
        ),
        (Some(_), false) => (TransitionKind::Fixed, 0),
        (None, false) => (TransitionKind::Passing, 0),
    };
    let transition = Transition {
        kind,
        previous_state: last.map(|l| if l.failed { "failed" } else { "passed" }.to_string()),
        previous_number: last.map(|l| l.number),
        consecutive_failures: consecutive,
    };
    let recorded = LastBuild {
        number: build.number,
        failed: build.failed,
        consecutive_failures: consecutive,
        finished_at: build.finished_at,
    };
    Some((transition, recorded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn build(number: u64, failed: bool) -> BuildOutcome {
        BuildOutcome {
            pipeline: "web".into(),
            branch: "main".into(),
            number,
            failed,
            finished_at: None,
        }
    }

    /// Runs a sequence of finished builds through `next`, as the store does.
    fn run(seq: &[(u64, bool)]) -> Vec<Option<(&'static str, u32)>> {
        let mut last: Option<LastBuild> = None;
        seq.iter()
            .map(|(n, failed)| {
                let (t, rec) = next(last.as_ref(), &build(*n, *failed))?;
                last = Some(rec);
                Some((t.kind.as_str(), t.consecutive_failures))
            })
            .collect()
    }

    #[test]
    fn sequences_give_the_documented_transitions() {
        type Case = (&'static [(u64, bool)], Vec<Option<(&'static str, u32)>>);
        let cases: Vec<Case> = vec![
            (&[(1, false)], vec![Some(("passing", 0))]),
            (&[(1, true)], vec![Some(("broken", 1))]),
            (
                &[
                    (1, false),
                    (2, true),
                    (3, true),
                    (4, true),
                    (5, false),
                    (6, false),
                ],
                vec![
                    Some(("passing", 0)),
                    Some(("broken", 1)),
                    Some(("still_failing", 2)),
                    Some(("still_failing", 3)),
                    Some(("fixed", 0)),
                    Some(("passing", 0)),
                ],
            ),
            // Out of order: 3 arrives before 2, and 2 then changes nothing.
            (
                &[(1, false), (3, true), (2, false)],
                vec![Some(("passing", 0)), Some(("broken", 1)), None],
            ),
            // The same build retried: failed, then passed after its jobs were retried.
            (
                &[(7, false), (8, true), (8, false)],
                vec![
                    Some(("passing", 0)),
                    Some(("broken", 1)),
                    Some(("fixed", 0)),
                ],
            ),
            // The same build failing twice is not two failures in a row.
            (
                &[(8, true), (8, true), (9, true)],
                vec![
                    Some(("broken", 1)),
                    Some(("still_failing", 1)),
                    Some(("still_failing", 2)),
                ],
            ),
        ];
        for (seq, want) in cases {
            assert_eq!(run(seq), want, "{seq:?}");
        }
    }

    #[test]
    fn the_same_builds_earlier_result_arriving_late_changes_nothing() {
        let at = |n, failed, t| BuildOutcome {
            finished_at: Some(t),
            ..build(n, failed)
        };
        let (_, failed) = next(None, &at(8, true, 100)).unwrap();
        let (fixed, passed) = next(Some(&failed), &at(8, false, 200)).unwrap();
        assert_eq!(fixed.kind, TransitionKind::Fixed);
        assert_eq!(
            next(Some(&passed), &at(8, true, 100)),
            None,
            "the failure was before the pass"
        );
    }

    #[test]
    fn only_passed_or_failed_unblocked_finished_builds_count() {
        let now = Utc::now();
        let ev = |name: &str, state: &str, blocked: bool| {
            Event::from_value(
                name,
                json!({"pipeline": {"slug": "web"},
                       "build": {"number": 3, "branch": "main", "state": state, "blocked": blocked}}),
                now,
            )
        };
        assert_eq!(
            outcome(&ev("build.finished", "failed", false)),
            Some(build(3, true))
        );
        assert_eq!(
            outcome(&ev("build.finished", "passed", false)),
            Some(build(3, false))
        );
        assert_eq!(
            outcome(&ev("build.finished", "passed", true)),
            None,
            "blocked"
        );
        assert_eq!(outcome(&ev("build.finished", "canceled", false)), None);
        assert_eq!(outcome(&ev("build.failing", "failing", false)), None);
        assert_eq!(outcome(&ev("job.finished", "failed", false)), None);
    }
}
