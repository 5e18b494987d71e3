//! The four things a button can do.

use std::fmt;

/// One action a button carries out on Buildkite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Retry the failed job (on a job event) or every failed job of the build.
    RetryFailed,
    /// Start a new build of the same commit.
    Rebuild,
    /// Unblock the build's block step.
    Unblock,
    /// Cancel the running build.
    Cancel,
}

impl Action {
    /// Every action, in the order buttons are shown.
    pub const ALL: [Action; 4] = [
        Action::RetryFailed,
        Action::Rebuild,
        Action::Unblock,
        Action::Cancel,
    ];

    /// The name used in config, tokens, `action_id`s and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RetryFailed => "retry_failed",
            Self::Rebuild => "rebuild",
            Self::Unblock => "unblock",
            Self::Cancel => "cancel",
        }
    }

    /// The action named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The button's label.
    pub fn label(self) -> &'static str {
        match self {
            Self::RetryFailed => "Retry failed",
            Self::Rebuild => "Rebuild",
            Self::Unblock => "Unblock",
            Self::Cancel => "Cancel build",
        }
    }

    /// The emoji of the line that says it was done.
    pub fn emoji(self) -> &'static str {
        match self {
            Self::RetryFailed => "🔁",
            Self::Rebuild => "🔄",
            Self::Unblock => "▶️",
            Self::Cancel => "🛑",
        }
    }

    /// The verb: "Buildkite refused to retry".
    pub fn verb(self) -> &'static str {
        match self {
            Self::RetryFailed => "retry",
            Self::Rebuild => "rebuild",
            Self::Unblock => "unblock",
            Self::Cancel => "cancel",
        }
    }

    /// The past tense: "Retried by Maria López".
    pub fn done(self) -> &'static str {
        match self {
            Self::RetryFailed => "Retried",
            Self::Rebuild => "Rebuilt",
            Self::Unblock => "Unblocked",
            Self::Cancel => "Canceled",
        }
    }

    /// Slack's button style: cancel is the dangerous one.
    pub fn style(self) -> Option<&'static str> {
        match self {
            Self::Cancel => Some("danger"),
            Self::Unblock => Some("primary"),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("deploy"), None);
    }
}
