//! Mute windows: times (days, from–to, in a time zone) when a route's messages are dropped or
//! held until the window ends.

use chrono::{DateTime, Datelike, Duration as Span, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::borrow::Borrow;

/// What a muted message becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuteAction {
    /// Not sent at all.
    Drop,
    /// Sent when the window ends.
    Hold,
}

/// One `[[mute]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct MuteWindow {
    /// Its name, referenced by routes.
    pub name: String,
    /// Monday first.
    pub days: [bool; 7],
    /// Local start time.
    pub from: NaiveTime,
    /// Local end time; at or before `from`, the window runs past midnight.
    pub to: NaiveTime,
    /// The zone the times are in.
    pub timezone: Tz,
    /// Drop or hold.
    pub action: MuteAction,
}

/// What muting does to one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Muted {
    /// Not sent, because of this window.
    Drop(String),
    /// Held until `until`, because of this window.
    Hold(String, DateTime<Utc>),
}

/// The instant a window ends: for a local time that happens twice (autumn), the later one, so
/// the window lasts its whole local length; for one that does not happen (spring), an hour on.
fn at_local(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let naive = date.and_time(time);
    tz.from_local_datetime(&naive)
        .latest()
        .or_else(|| tz.from_local_datetime(&(naive + Span::hours(1))).latest())
        .map_or_else(|| naive.and_utc(), |t| t.with_timezone(&Utc))
}

impl MuteWindow {
    /// True when the window covers every moment of every day (it would hold messages for ever).
    pub fn always(&self) -> bool {
        self.days.iter().all(|d| *d) && self.from == self.to
    }

    /// If `at` falls inside the window, when that window ends.
    pub fn active_until(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.timezone);
        let (date, time) = (local.date_naive(), local.time());
        let on = |d: NaiveDate| self.days[d.weekday().num_days_from_monday() as usize];
        let overnight = self.to <= self.from;
        if on(date) && time >= self.from && (overnight || time < self.to) {
            let end_date = if overnight { date.succ_opt()? } else { date };
            return Some(at_local(self.timezone, end_date, self.to));
        }
        let yesterday = date.pred_opt()?;
        if overnight && on(yesterday) && time < self.to {
            return Some(at_local(self.timezone, date, self.to));
        }
        None
    }
}

/// Whether `windows` mute a message at `at`: a dropping window wins; otherwise it is held
/// until no holding window covers it any more (back-to-back windows are followed through).
pub fn decide<W: Borrow<MuteWindow>>(windows: &[W], at: DateTime<Utc>) -> Option<Muted> {
    let windows = || windows.iter().map(Borrow::borrow);
    if let Some(w) =
        windows().find(|w| w.action == MuteAction::Drop && w.active_until(at).is_some())
    {
        return Some(Muted::Drop(w.name.clone()));
    }
    let mut until = at;
    let mut by = None;
    for _ in 0..16 {
        let Some((w, end)) = windows()
            .filter(|w| w.action == MuteAction::Hold)
            .filter_map(|w| Some((w, w.active_until(until)?)))
            .max_by_key(|(_, end)| *end)
        else {
            break;
        };
        if end <= until {
            break;
        }
        by.get_or_insert_with(|| w.name.clone());
        until = end;
    }
    by.map(|name| Muted::Hold(name, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[usize], from: &str, to: &str, tz: Tz, action: MuteAction) -> MuteWindow {
        let mut d = [false; 7];
        for i in days {
            d[*i] = true;
        }
        MuteWindow {
            name: "w".into(),
            days: d,
            from: NaiveTime::parse_from_str(from, "%H:%M").unwrap(),
            to: NaiveTime::parse_from_str(to, "%H:%M").unwrap(),
            timezone: tz,
            action,
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn overnight_weekday_window_in_a_time_zone() {
        // 22:00–07:00 Berlin (UTC+1 in winter), Monday to Friday evenings.
        let w = window(
            &[0, 1, 2, 3, 4],
            "22:00",
            "07:00",
            chrono_tz::Europe::Berlin,
            MuteAction::Hold,
        );
        let cases = [
            ("2026-11-30T20:59:00Z", None), // Mon 21:59 local
            ("2026-11-30T21:00:00Z", Some("2026-12-01T06:00:00Z")), // Mon 22:00 → Tue 07:00
            ("2026-12-01T05:59:00Z", Some("2026-12-01T06:00:00Z")), // Tue 06:59, Monday's window
            ("2026-12-01T06:00:00Z", None), // Tue 07:00
            ("2026-12-04T22:00:00Z", Some("2026-12-05T06:00:00Z")), // Fri 23:00 → Sat 07:00
            ("2026-12-05T22:00:00Z", None), // Sat 23:00
            ("2026-12-07T05:00:00Z", None), // Mon 06:00 (Sunday not muted)
        ];
        for (at, want) in cases {
            assert_eq!(w.active_until(utc(at)), want.map(utc), "{at}");
        }
    }

    #[test]
    fn daytime_window_and_whole_day_window() {
        let lunch = window(
            &[0, 1, 2, 3, 4, 5, 6],
            "12:00",
            "13:00",
            Tz::UTC,
            MuteAction::Drop,
        );
        assert_eq!(
            lunch.active_until(utc("2026-11-30T12:30:00Z")),
            Some(utc("2026-11-30T13:00:00Z"))
        );
        assert_eq!(lunch.active_until(utc("2026-11-30T13:00:00Z")), None);
        let sunday = window(&[6], "00:00", "00:00", Tz::UTC, MuteAction::Hold);
        assert_eq!(
            sunday.active_until(utc("2026-12-06T15:00:00Z")),
            Some(utc("2026-12-07T00:00:00Z"))
        );
        assert_eq!(sunday.active_until(utc("2026-12-07T15:00:00Z")), None);
    }

    #[test]
    fn a_window_ending_in_the_repeated_autumn_hour_lasts_its_local_length() {
        // New York falls back on 2026-11-01: 01:00–02:00 local happens twice.
        let w = window(
            &[0, 1, 2, 3, 4, 5, 6],
            "01:00",
            "01:30",
            chrono_tz::America::New_York,
            MuteAction::Hold,
        );
        // 01:15 in the second (EST) pass: still muted until 01:30 EST.
        let at = utc("2026-11-01T06:15:00Z");
        assert_eq!(w.active_until(at), Some(utc("2026-11-01T06:30:00Z")));
    }

    #[test]
    fn drop_wins_and_back_to_back_holds_chain() {
        let drop = window(&[0], "09:00", "10:00", Tz::UTC, MuteAction::Drop);
        let hold1 = window(&[0], "09:00", "11:00", Tz::UTC, MuteAction::Hold);
        let hold2 = window(&[0], "11:00", "12:00", Tz::UTC, MuteAction::Hold);
        let at = utc("2026-11-30T09:30:00Z");
        assert_eq!(decide(&[&hold1, &drop], at), Some(Muted::Drop("w".into())));
        assert_eq!(
            decide(&[&hold1, &hold2], at),
            Some(Muted::Hold("w".into(), utc("2026-11-30T12:00:00Z")))
        );
        assert_eq!(decide(&[&hold1], utc("2026-11-30T11:00:00Z")), None);
    }
}
