//! What the fuzz targets share: turning the fuzzer's bytes into an event the way the ingress
//! does, at a fixed time so every crash reproduces, with a build transition attached.

use chrono::{DateTime, TimeZone, Utc};
use kitebridge::event::{Event, EventError, VerifiedBody};
use kitebridge::transition::{self, LastBuild};

/// The fixed "now": shortly after the fixtures' builds finished.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 4, 10, 0).unwrap()
}

/// The event in `data`, as the ingress would parse it (naming it `build.finished` through the
/// header when the body names none), or `None` when the ingress would answer 400.
pub fn event(data: &[u8]) -> Option<Event> {
    let body = VerifiedBody::trusted(data.to_vec());
    let mut event = match Event::parse(&body, None, now()) {
        Ok(event) => event,
        Err(EventError::NoEventName) => Event::parse(&body, Some("build.finished"), now()).ok()?,
        Err(_) => return None,
    };
    // A finished build gets the transition the store would work out, against a previous build
    // picked from its number (none, failed or passed), so routes and templates on
    // transitions are reached too.
    if let Some(outcome) = transition::outcome(&event) {
        let previous = match outcome.number % 3 {
            0 => None,
            n => Some(LastBuild {
                number: outcome.number.saturating_sub(1),
                failed: n == 1,
                consecutive_failures: if n == 1 { 3 } else { 0 },
                finished_at: None,
            }),
        };
        event.set_transition(transition::next(previous.as_ref(), &outcome).map(|(t, _)| t));
    }
    Some(event)
}
