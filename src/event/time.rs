//! Buildkite timestamps, in both forms it sends.
//!
//! Current payloads use ISO-8601 with milliseconds (`2026-11-30T03:58:09.000Z`); older ones
//! (still seen from some endpoints) use `2018-07-01 20:14:38 UTC`.

use chrono::{DateTime, NaiveDateTime, Utc};
use std::time::Duration;

/// Parses either Buildkite timestamp form; `None` for anything else.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = text.strip_suffix(" UTC").unwrap_or(text);
    NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// A compact human duration: `42s`, `8m 42s`, `1h 3m`, `2d 4h`; at most two units.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, mins, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{mins}m"),
        (0, 0, _) => format!("{mins}m {s}s"),
        (0, _, 0) => format!("{hours}h"),
        (0, _, _) => format!("{hours}h {mins}m"),
        (_, 0, _) => format!("{days}d"),
        _ => format!("{days}d {hours}h"),
    }
}

/// The time from `from` to `to`, or `None` if `to` is before `from`.
pub fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Duration> {
    (to - from).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_buildkite_forms_to_the_same_instant() {
        let iso = parse_timestamp("2018-07-01T20:14:38.000Z").unwrap();
        let old = parse_timestamp("2018-07-01 20:14:38 UTC").unwrap();
        assert_eq!(iso, old);
        assert_eq!(iso.timestamp(), 1_530_476_078);
        assert!(parse_timestamp("2026-11-30T03:58:09+01:00").is_some());
        assert!(parse_timestamp("yesterday").is_none());
        assert!(parse_timestamp("").is_none());
    }

    #[test]
    fn formats_durations_with_two_units_at_most() {
        let cases = [
            (0, "0s"),
            (42, "42s"),
            (60, "1m"),
            (522, "8m 42s"),
            (3600, "1h"),
            (3780, "1h 3m"),
            (3_783, "1h 3m"),
            (86_400, "1d"),
            (93_600, "1d 2h"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_duration(Duration::from_secs(secs)), want, "{secs}");
        }
    }
}
