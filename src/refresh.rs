//! When to fetch an issuer's JWKS: a small state machine with pure transitions.
//!
//! The glue asks [`Refresh::due`] on every tick, calls [`Refresh::started`] when it
//! dispatches, and reports the outcome. Failures back off exponentially with
//! jitter (so many gateways do not hammer a recovering key server in lockstep);
//! success schedules the next regular refresh.

/// Shortest wait after a failed fetch.
pub const MIN_BACKOFF_MS: u64 = 500;
/// Longest wait after repeated failures (capped by the refresh interval too).
pub const MAX_BACKOFF_MS: u64 = 60_000;

/// Refresh timing of one issuer's key set. All times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refresh {
    interval_ms: u64,
    timeout_ms: u64,
    next_at: u64,
    in_flight_since: Option<u64>,
    consecutive_failures: u32,
    last_success_at: Option<u64>,
}

impl Refresh {
    /// A refresh that is due immediately.
    pub fn new(interval_ms: u64, timeout_ms: u64) -> Self {
        Refresh {
            interval_ms: interval_ms.max(1),
            timeout_ms,
            next_at: 0,
            in_flight_since: None,
            consecutive_failures: 0,
            last_success_at: None,
        }
    }

    /// Whether a fetch should start now. A fetch that outlived its timeout (its
    /// callback never came) no longer blocks the next one.
    pub fn due(&self, now: u64) -> bool {
        match self.in_flight_since {
            Some(since) => now >= since.saturating_add(self.timeout_ms.saturating_mul(2)),
            None => now >= self.next_at,
        }
    }

    pub fn started(&mut self, now: u64) {
        self.in_flight_since = Some(now);
    }

    pub fn succeeded(&mut self, now: u64) {
        self.in_flight_since = None;
        self.consecutive_failures = 0;
        self.last_success_at = Some(now);
        self.next_at = now.saturating_add(self.interval_ms);
    }

    /// Records a failure; `jitter` in `0..=1` spreads the retry over up to +50 %.
    pub fn failed(&mut self, now: u64, jitter: f64) {
        self.in_flight_since = None;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let exponent = self.consecutive_failures.saturating_sub(1).min(20);
        let base = MIN_BACKOFF_MS
            .saturating_mul(1u64 << exponent)
            .min(MAX_BACKOFF_MS)
            .min(self.interval_ms);
        let spread = (base as f64 * 0.5 * jitter.clamp(0.0, 1.0)) as u64;
        self.next_at = now.saturating_add(base).saturating_add(spread);
    }

    pub fn next_at(&self) -> u64 {
        self.next_at
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn last_success_at(&self) -> Option<u64> {
        self.last_success_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_start_then_after_interval() {
        let mut r = Refresh::new(300_000, 2_000);
        assert!(r.due(0));
        r.started(10);
        assert!(!r.due(11));
        r.succeeded(20);
        assert!(!r.due(300_019));
        assert!(r.due(300_020));
        assert_eq!(r.last_success_at(), Some(20));
    }

    #[test]
    fn failures_back_off_exponentially_to_a_cap() {
        let mut r = Refresh::new(300_000, 2_000);
        let mut waits = Vec::new();
        for _ in 0..10 {
            r.started(0);
            r.failed(0, 0.0);
            waits.push(r.next_at());
        }
        assert_eq!(&waits[..4], &[500, 1_000, 2_000, 4_000]);
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF_MS);
        assert_eq!(r.consecutive_failures(), 10);
    }

    #[test]
    fn backoff_never_exceeds_refresh_interval() {
        let mut r = Refresh::new(1_000, 500);
        for _ in 0..5 {
            r.failed(0, 0.0);
        }
        assert_eq!(r.next_at(), 1_000);
    }

    #[test]
    fn jitter_spreads_up_to_half() {
        let mut a = Refresh::new(300_000, 2_000);
        let mut b = a.clone();
        a.failed(0, 0.0);
        b.failed(0, 1.0);
        assert_eq!(a.next_at(), 500);
        assert_eq!(b.next_at(), 750);
    }

    #[test]
    fn success_resets_failures() {
        let mut r = Refresh::new(300_000, 2_000);
        r.failed(0, 0.0);
        r.failed(0, 0.0);
        r.succeeded(5);
        assert_eq!(r.consecutive_failures(), 0);
        r.failed(5, 0.0);
        assert_eq!(r.next_at(), 505);
    }

    #[test]
    fn a_lost_callback_does_not_block_forever() {
        let mut r = Refresh::new(300_000, 2_000);
        r.started(0);
        assert!(!r.due(3_999));
        assert!(r.due(4_000));
    }
}
