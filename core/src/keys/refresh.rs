//! When an issuer's JWKS should be fetched, as pure functions of time.
//!
//! The schedule is shared by every worker of one Envoy: the time of the last
//! successful fetch lives in shared data with the keys themselves
//! ([`crate::keys::keyshare`]), and failures back off through the fetch lease. These
//! functions only answer "is a fetch wanted now?" and "how long to back off?".

/// Shortest wait after a failed fetch.
pub const MIN_BACKOFF_MS: u64 = 500;
/// Longest wait after repeated failures (also capped by the refresh interval).
pub const MAX_BACKOFF_MS: u64 = 60_000;

/// The refresh timing of one issuer, from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Regular refresh interval.
    pub interval_ms: u64,
    /// Earliest refetch after the last success when a token names an unknown `kid`.
    pub min_refetch_ms: u64,
    /// How long the last good keys keep serving when refreshes fail.
    pub max_stale_ms: u64,
}

impl Schedule {
    /// Whether a fetch is wanted at `now`, given the last successful fetch and
    /// whether a token with an unknown `kid` asked for one.
    pub fn fetch_wanted(&self, now: u64, last_success: Option<u64>, kid_miss: bool) -> bool {
        match last_success {
            None => true,
            Some(at) => {
                let age = now.saturating_sub(at);
                age >= self.interval_ms || (kid_miss && age >= self.min_refetch_ms)
            }
        }
    }

    /// Whether keys fetched at `fetched_at` may still be used at `now`.
    pub fn usable(&self, now: u64, fetched_at: u64) -> bool {
        now.saturating_sub(fetched_at) <= self.max_stale_ms
    }

    /// The wait after the `failures`-th consecutive failure (1-based): exponential
    /// from [`MIN_BACKOFF_MS`], capped, plus up to 50 % jitter (`jitter` in `0..=1`)
    /// so gateways do not hammer a recovering key server in lockstep.
    pub fn backoff_ms(&self, failures: u32, jitter: f64) -> u64 {
        let exponent = failures.saturating_sub(1).min(20);
        let base = MIN_BACKOFF_MS
            .saturating_mul(1u64 << exponent)
            .min(MAX_BACKOFF_MS)
            .min(self.interval_ms.max(MIN_BACKOFF_MS));
        let spread = (base as f64 * 0.5 * jitter.clamp(0.0, 1.0)) as u64;
        base.saturating_add(spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Schedule = Schedule { interval_ms: 300_000, min_refetch_ms: 5_000, max_stale_ms: 3_600_000 };

    #[test]
    fn wanted_at_start_then_after_the_interval() {
        assert!(S.fetch_wanted(0, None, false));
        assert!(!S.fetch_wanted(299_999, Some(0), false));
        assert!(S.fetch_wanted(300_000, Some(0), false));
    }

    #[test]
    fn unknown_kid_refetch_is_throttled() {
        assert!(!S.fetch_wanted(4_999, Some(0), true));
        assert!(S.fetch_wanted(5_000, Some(0), true));
    }

    #[test]
    fn clock_going_backwards_does_not_refetch() {
        assert!(!S.fetch_wanted(10, Some(1_000), true));
        assert!(S.usable(10, 1_000));
    }

    #[test]
    fn keys_expire_after_max_stale() {
        assert!(S.usable(3_600_000, 0));
        assert!(!S.usable(3_600_001, 0));
    }

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let waits: Vec<_> = (1..=10).map(|f| S.backoff_ms(f, 0.0)).collect();
        assert_eq!(&waits[..4], &[500, 1_000, 2_000, 4_000]);
        assert_eq!(waits[9], MAX_BACKOFF_MS);
        assert_eq!(S.backoff_ms(1, 1.0), 750);
        assert_eq!(S.backoff_ms(u32::MAX, 0.0), MAX_BACKOFF_MS);
        let fast = Schedule { interval_ms: 1_000, ..S };
        assert_eq!(fast.backoff_ms(9, 0.0), 1_000);
    }
}
