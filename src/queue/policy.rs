//! When to try again: a pure function from an attempt's outcome to what happens next.

use crate::destination::Outcome;
use std::time::Duration;

/// Longest pause of a whole destination after ordinary (non-429) failures, so a destination
/// that recovers is noticed quickly even when single messages back off for longer.
pub const DESTINATION_PAUSE_MAX: Duration = Duration::from_secs(30);

/// The retry rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub backoff_initial: Duration,
    /// Longest delay between attempts of one message.
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// A message still failing this long after it could first be sent (`age_from`: its
    /// arrival, the end of the mute window or digest holding it, or a manual retry) becomes a
    /// dead letter.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// What happens after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done.
    Sent,
    /// Try this message again at `at` (ms); send nothing to the destination before `pause_until`.
    Retry {
        /// When to try this message again.
        at: i64,
        /// When the destination may be used again.
        pause_until: i64,
    },
    /// Give up: a dead letter, with why.
    Dead {
        /// The reason kept with the dead letter.
        reason: String,
    },
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RetryPolicy {
    /// The delay before retry number `n` (1 for the first retry): doubling from
    /// `backoff_initial` up to `cap`, then scaled by `jitter` in `[0.5, 1.0]` so that many
    /// messages failing together do not retry together.
    pub fn backoff(&self, n: u32, cap: Duration, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(30));
        let base = self.backoff_initial.saturating_mul(factor).min(cap);
        base.mul_f64(jitter.clamp(0.5, 1.0))
    }

    /// Decides what follows `outcome`, the `attempts`-th attempt (counting this one) of a
    /// message whose age counts from `age_from`, at `now` (ms). `destination_failures` is how
    /// many attempts in a row have failed at this destination, this one included.
    pub fn decide(
        &self,
        outcome: &Outcome,
        attempts: u32,
        age_from: i64,
        now: i64,
        destination_failures: u32,
        jitter: f64,
    ) -> Verdict {
        let (after, reason, throttled) = match outcome {
            Outcome::Sent { .. } => return Verdict::Sent,
            Outcome::Permanent { reason, .. } => {
                return Verdict::Dead {
                    reason: reason.clone(),
                };
            }
            Outcome::Retry {
                after,
                reason,
                status,
            } => (*after, reason, *status == Some(429)),
        };
        let deadline = age_from.saturating_add(ms(self.max_age));
        if now >= deadline {
            return Verdict::Dead {
                reason: format!(
                    "still failing after {}: {reason}",
                    humantime::format_duration(self.max_age)
                ),
            };
        }
        let honoured = after
            .filter(|ra| !ra.is_zero())
            .map(|ra| ra.min(self.max_retry_after));
        let message_delay =
            honoured.unwrap_or_else(|| self.backoff(attempts, self.backoff_max, jitter));
        let wanted = now.saturating_add(ms(message_delay));
        if honoured.is_some() && wanted > deadline {
            // Never earlier than the destination asked: if that is past max_age, give up now.
            return Verdict::Dead {
                reason: format!(
                    "still failing after {}: {reason}",
                    humantime::format_duration(self.max_age)
                ),
            };
        }
        let at = wanted.min(deadline);
        let pause = if throttled || after.is_some() {
            message_delay
        } else {
            self.backoff(
                destination_failures,
                DESTINATION_PAUSE_MAX.min(self.backoff_max),
                jitter,
            )
        };
        Verdict::Retry {
            at,
            pause_until: now.saturating_add(ms(pause)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(status: Option<u16>, after: Option<u64>) -> Outcome {
        Outcome::Retry {
            status,
            after: after.map(Duration::from_secs),
            reason: "HTTP 503".into(),
        }
    }

    const NOW: i64 = 1_000_000_000;

    #[test]
    fn sent_and_permanent_end_the_message() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(&Outcome::Sent { status: Some(200) }, 1, NOW, NOW, 0, 1.0),
            Verdict::Sent
        );
        let dead = p.decide(
            &Outcome::Permanent {
                status: Some(404),
                reason: "HTTP 404: channel_not_found".into(),
            },
            1,
            NOW,
            NOW,
            1,
            1.0,
        );
        assert_eq!(
            dead,
            Verdict::Dead {
                reason: "HTTP 404: channel_not_found".into()
            }
        );
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap_and_pauses_the_destination() {
        let p = RetryPolicy::default();
        let v = p.decide(&retry(Some(429), Some(2)), 1, NOW, NOW, 1, 0.5);
        assert_eq!(
            v,
            Verdict::Retry {
                at: NOW + 2_000,
                pause_until: NOW + 2_000
            }
        );
        let v = p.decide(&retry(Some(429), Some(86_400)), 1, NOW, NOW, 1, 0.5);
        assert_eq!(
            v,
            Verdict::Retry {
                at: NOW + 600_000,
                pause_until: NOW + 600_000
            }
        );
    }

    #[test]
    fn other_failures_back_off_exponentially_with_jitter() {
        let p = RetryPolicy::default();
        let delays: Vec<i64> = (1..=12)
            .map(
                |n| match p.decide(&retry(Some(503), None), n, NOW, NOW, 1, 1.0) {
                    Verdict::Retry { at, .. } => at - NOW,
                    v => panic!("{v:?}"),
                },
            )
            .collect();
        assert_eq!(&delays[..5], &[1_000, 2_000, 4_000, 8_000, 16_000]);
        assert_eq!(delays[11], 300_000, "capped at backoff_max");
        let jittered = p.backoff(3, p.backoff_max, 0.5);
        assert_eq!(jittered, Duration::from_secs(2));
        assert_eq!(
            p.backoff(3, p.backoff_max, 0.0),
            Duration::from_secs(2),
            "jitter floor is 50%"
        );
    }

    #[test]
    fn the_destination_pause_is_short_even_when_a_message_backs_off_long() {
        let p = RetryPolicy::default();
        match p.decide(&retry(None, None), 12, NOW, NOW, 1, 1.0) {
            Verdict::Retry { at, pause_until } => {
                assert_eq!(at - NOW, 300_000);
                assert_eq!(pause_until - NOW, 1_000);
            }
            v => panic!("{v:?}"),
        }
        match p.decide(&retry(None, None), 1, NOW, NOW, 20, 1.0) {
            Verdict::Retry { pause_until, .. } => assert_eq!(pause_until - NOW, 30_000),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_retry_after_past_the_deadline_is_never_shortened() {
        let p = RetryPolicy::default();
        let day = 24 * 3600 * 1000;
        let v = p.decide(
            &retry(Some(429), Some(60)),
            3,
            NOW,
            NOW + day - 30_000,
            1,
            1.0,
        );
        assert!(matches!(v, Verdict::Dead { .. }), "{v:?}");
    }

    #[test]
    fn messages_past_max_age_become_dead_letters() {
        let p = RetryPolicy::default();
        let day = 24 * 3600 * 1000;
        match p.decide(&retry(Some(500), None), 40, NOW, NOW + day, 1, 1.0) {
            Verdict::Dead { reason } => assert_eq!(reason, "still failing after 1day: HTTP 503"),
            v => panic!("{v:?}"),
        }
        match p.decide(&retry(Some(500), None), 40, NOW, NOW + day - 1_000, 1, 1.0) {
            Verdict::Retry { at, .. } => {
                assert_eq!(at, NOW + day, "the last try is at the deadline")
            }
            v => panic!("{v:?}"),
        }
    }
}
