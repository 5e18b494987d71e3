//! A token bucket: at most `rate` messages per second on average, `burst` at once. The bucket
//! is handed on with a destination's lease, so the pace holds for the whole cluster.

use std::time::{Duration, Instant};

/// Paces one destination.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: Option<f64>,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// `rate` messages per second (`None`: no limit), up to `burst` back to back.
    pub fn new(rate: Option<f64>, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: rate.filter(|r| *r > 0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// A bucket that held `tokens` `elapsed` ago, refilled since: how another holder left it.
    /// A holder that vanished is taken to have emptied it just before its lease ran out.
    pub fn resume(
        rate: Option<f64>,
        burst: u32,
        now: Instant,
        tokens: f64,
        elapsed: Duration,
    ) -> Self {
        let mut p = Self::new(rate, burst, now);
        if let Some(rate) = p.rate {
            p.tokens = (tokens.max(0.0) + elapsed.as_secs_f64() * rate).min(p.burst);
        }
        p
    }

    /// The tokens in the bucket at `now`; `None` when unpaced.
    pub fn tokens(&self, now: Instant) -> Option<f64> {
        let rate = self.rate?;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        Some((self.tokens + elapsed * rate).min(self.burst))
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // Config keeps rate ≥ 0.001; still, a wait is never absurdly long.
            let wait =
                Duration::try_from_secs_f64((1.0 - self.tokens) / rate).unwrap_or(Duration::MAX);
            Err(wait.min(Duration::from_secs(86_400)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(1.0), 3, t0);
        for _ in 0..3 {
            assert_eq!(p.take(t0), Ok(()));
        }
        let wait = p.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        assert_eq!(p.take(t0 + Duration::from_millis(1000)), Ok(()));
        assert!(p.take(t0 + Duration::from_millis(1500)).is_err());
        assert_eq!(p.take(t0 + Duration::from_millis(2000)), Ok(()));
    }

    #[test]
    fn a_resumed_bucket_refills_from_where_it_was_left() {
        let t0 = Instant::now();
        let mut empty = Pacer::resume(Some(2.0), 2, t0, 0.0, Duration::from_millis(250));
        assert_eq!(empty.tokens(t0), Some(0.5));
        assert!(empty.take(t0).is_err(), "half a token is not a message");
        let mut full = Pacer::resume(Some(2.0), 2, t0, 1.0, Duration::from_secs(60));
        assert_eq!(full.tokens(t0), Some(2.0), "never more than the burst");
        assert_eq!(full.take(t0), Ok(()));
        assert_eq!(full.tokens(t0), Some(1.0));
        assert_eq!(Pacer::new(None, 1, t0).tokens(t0), None);
    }

    #[test]
    fn four_per_second_and_unlimited() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(4.0), 1, t0);
        assert_eq!(p.take(t0), Ok(()));
        assert_eq!(p.take(t0).unwrap_err(), Duration::from_millis(250));
        let mut free = Pacer::new(None, 1, t0);
        for _ in 0..10_000 {
            assert_eq!(free.take(t0), Ok(()));
        }
    }
}
