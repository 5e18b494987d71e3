//! How a state looks in chat: emoji, Slack colour, Teams colour and container style.

/// The presentation of one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// A single emoji.
    pub emoji: &'static str,
    /// Slack attachment colour.
    pub color: &'static str,
    /// Adaptive Card text colour (`Good`, `Attention`, `Warning`, `Accent`, `Default`).
    pub teams_color: &'static str,
    /// Adaptive Card container style (`good`, `attention`, `warning`, `accent`, `emphasis`).
    pub teams_style: &'static str,
}

const GOOD: (&str, &str, &str) = ("#2eb886", "Good", "good");
const BAD: (&str, &str, &str) = ("#a30200", "Attention", "attention");
const WARN: (&str, &str, &str) = ("#daa038", "Warning", "warning");
const INFO: (&str, &str, &str) = ("#3aa3e3", "Accent", "accent");
const GREY: (&str, &str, &str) = ("#808080", "Default", "emphasis");

const fn look(
    emoji: &'static str,
    (color, teams_color, teams_style): (&'static str, &'static str, &'static str),
) -> Look {
    Look {
        emoji,
        color,
        teams_color,
        teams_style,
    }
}

/// The look of a build, job or agent state, or of a kitebridge pseudo-state (`blocked`,
/// `soft_failed`, `alarm`, `ping`, `created`). Unknown states look neutral.
pub fn look_of(state: &str) -> Look {
    match state {
        "passed" => look("✅", GOOD),
        "fixed" => look("🔧", GOOD),
        "failed" | "timed_out" | "timing_out" => look("❌", BAD),
        "failing" | "soft_failed" => look("🟠", WARN),
        "canceled" | "canceling" | "expired" => look("⛔", GREY),
        "blocked" => look("⏸️", INFO),
        "scheduled" | "running" | "started" | "creating" | "waiting" | "assigned" | "accepted"
        | "limited" | "limiting" | "reserved" | "pending" => look("🔄", INFO),
        "skipped" | "not_run" | "broken" | "waiting_failed" => look("⏭️", GREY),
        "unblocked" | "activated" => look("▶️", INFO),
        "promised_failure" => look("🟠", WARN),
        // Agents.
        "connected" => look("🟢", GOOD),
        "disconnected" | "stopped" => look("⚪", GREY),
        "stopping" => look("🟡", WARN),
        "lost" => look("🔴", BAD),
        "never_connected" | "registration_blocked" => look("🚫", BAD),
        // Other families.
        "alarm" => look("🚨", WARN),
        "ping" => look("🔌", INFO),
        "created" => look("📦", GOOD),
        _ => look("ℹ️", GREY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_from_the_style_guide_look_as_specified() {
        let cases = [
            ("passed", "✅", "#2eb886", "Good"),
            ("failed", "❌", "#a30200", "Attention"),
            ("failing", "🟠", "#daa038", "Warning"),
            ("canceled", "⛔", "#808080", "Default"),
            ("canceling", "⛔", "#808080", "Default"),
            ("blocked", "⏸️", "#3aa3e3", "Accent"),
            ("scheduled", "🔄", "#3aa3e3", "Accent"),
            ("running", "🔄", "#3aa3e3", "Accent"),
            ("skipped", "⏭️", "#808080", "Default"),
            ("not_run", "⏭️", "#808080", "Default"),
        ];
        for (state, emoji, color, teams) in cases {
            let l = look_of(state);
            assert_eq!(
                (l.emoji, l.color, l.teams_color),
                (emoji, color, teams),
                "{state}"
            );
        }
        assert_eq!(look_of("brand-new").emoji, "ℹ️");
    }
}
