//! What a finished build did to its branch: the data routes and templates read. How it is
//! worked out from the build before lives in the `transition` module.

use serde::{Deserialize, Serialize};

/// The four transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// It was passing (or unknown) and now failed.
    Broken,
    /// It was failing and now passed.
    Fixed,
    /// It was failing and failed again.
    StillFailing,
    /// It was passing (or unknown) and passed again.
    Passing,
}

impl TransitionKind {
    /// `broken`, `fixed`, `still_failing` or `passing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Broken => "broken",
            Self::Fixed => "fixed",
            Self::StillFailing => "still_failing",
            Self::Passing => "passing",
        }
    }
}

/// What a finished build did to its branch, for routes and templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Which transition.
    pub kind: TransitionKind,
    /// The previous finished build's state (`passed` or `failed`), if one is known.
    pub previous_state: Option<String>,
    /// The previous finished build's number, if one is known.
    pub previous_number: Option<u64>,
    /// Failed builds in a row, this one included (0 when this one passed).
    pub consecutive_failures: u32,
}
