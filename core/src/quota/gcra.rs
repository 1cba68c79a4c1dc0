//! The generic cell rate algorithm (GCRA), as a pure function of the stored state
//! and the clock.
//!
//! GCRA keeps one number per identity: the theoretical arrival time (TAT), the
//! instant at which the identity has its whole burst back. With the emission
//! interval T = per_seconds / requests and the tolerance τ = (burst − 1)·T, a
//! request at `now` is admitted when the TAT is at most τ ahead of `now`, and an
//! admitted request moves the TAT one T further (from `now` if it lay in the past).
//! From rest that admits `burst` requests at once, then one every T: a token bucket
//! of size `burst` refilled at `requests / per_seconds`, in 8 bytes of state.
//! Refused requests do not move the TAT, so hammering while limited costs nothing
//! extra and needs no write.
//!
//! Time is integer nanoseconds, so the arithmetic is exact; T is rounded *up*, so the
//! enforced rate is never above the configured one (it is below it by under 1 ns per
//! request). Every operation saturates: no input, however absurd, can overflow.

/// Nanoseconds per second.
pub const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The GCRA parameters of one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// T, at least 1 ns.
    emission_ns: u64,
    /// τ = (burst − 1)·T.
    tolerance_ns: u64,
}

impl Rate {
    /// `requests` per `per_seconds`, at most `burst` at once. Zeros count as one;
    /// configuration validation rejects them before they get here.
    pub fn new(requests: u64, per_seconds: u64, burst: u64) -> Rate {
        let window = u128::from(per_seconds.max(1)) * u128::from(NANOS_PER_SECOND);
        let emission = window.div_ceil(u128::from(requests.max(1)));
        let emission_ns = u64::try_from(emission).unwrap_or(u64::MAX).max(1);
        Rate { emission_ns, tolerance_ns: emission_ns.saturating_mul(burst.max(1) - 1) }
    }

    /// T: the time one request's worth of budget takes to come back.
    pub fn emission_ns(&self) -> u64 {
        self.emission_ns
    }

    /// τ: how far the TAT may run ahead of now with a request still admitted.
    pub fn tolerance_ns(&self) -> u64 {
        self.tolerance_ns
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The TAT after this request.
    pub tat: u64,
    /// Whether `tat` must be stored: on every admission, and on a refusal that
    /// clamped a TAT left ahead by a clock step (else the next request would find
    /// the same far-ahead TAT and be refused again, until the clock caught up).
    pub persist: bool,
    /// Requests that would still be admitted at this instant, after this one.
    pub remaining: u64,
    /// Time until the whole burst is back (the TAT reaches now).
    pub reset_after_ns: u64,
    /// When refused: time until one request would be admitted. Zero when allowed.
    pub retry_after_ns: u64,
}

/// Decides a request at `now` given the stored TAT (`None`: no state, i.e. the
/// whole burst is available).
///
/// A TAT further ahead than τ + T cannot have been written by this algorithm at
/// any instant up to `now`: the clock stepped back since. It is clamped to τ + T,
/// "exhausted right now", and the clamped value is persisted. Nothing is granted by
/// the step (the identity is at zero either way), and an identity is locked out
/// for one T, not for as long as the step was.
pub fn decide(rate: Rate, stored: Option<u64>, now: u64) -> Decision {
    let emission = rate.emission_ns;
    let tolerance = rate.tolerance_ns;
    let ceiling = now.saturating_add(tolerance).saturating_add(emission);
    let tat = stored.map_or(now, |tat| tat.max(now).min(ceiling));
    let ahead = tat.saturating_sub(now);
    if ahead <= tolerance {
        let new_tat = tat.saturating_add(emission);
        let debt = new_tat.saturating_sub(now);
        Decision {
            allowed: true,
            tat: new_tat,
            persist: true,
            remaining: remaining(rate, debt),
            reset_after_ns: debt,
            retry_after_ns: 0,
        }
    } else {
        Decision {
            allowed: false,
            tat,
            persist: stored != Some(tat),
            remaining: 0,
            reset_after_ns: ahead,
            retry_after_ns: ahead.saturating_sub(tolerance),
        }
    }
}

/// Requests admissible at once when the TAT is `debt` ahead of now: each needs the
/// TAT at most τ ahead before it, and moves it T.
fn remaining(rate: Rate, debt: u64) -> u64 {
    match rate.tolerance_ns.checked_sub(debt) {
        None => 0,
        Some(slack) => (slack / rate.emission_ns.max(1)).saturating_add(1),
    }
}

/// Whether an entry with this TAT carries no information at `now`: its identity
/// has the whole burst back, exactly as if it had never been seen.
pub fn is_idle(tat: u64, now: u64) -> bool {
    tat <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * NANOS_PER_SECOND;

    /// Runs requests at the given instants from no state; returns the admitted ones.
    fn run(rate: Rate, instants: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut tat = None;
        let mut admitted = Vec::new();
        for now in instants {
            let d = decide(rate, tat, now);
            if d.persist {
                tat = Some(d.tat);
            }
            if d.allowed {
                admitted.push(now);
            }
        }
        admitted
    }

    #[test]
    fn rate_is_exact_in_nanoseconds_and_rounded_up() {
        let r = Rate::new(10, 1, 5);
        assert_eq!(r.emission_ns(), 100 * MS);
        assert_eq!(r.tolerance_ns(), 400 * MS);
        // 1/3 s is not a whole number of ns: round up, never admit faster.
        assert_eq!(Rate::new(3, 1, 1).emission_ns(), 333_333_334);
        assert_eq!(Rate::new(3, 1, 1).tolerance_ns(), 0);
        // Degenerate inputs cannot divide by zero or overflow.
        assert_eq!(Rate::new(0, 0, 0), Rate::new(1, 1, 1));
        let huge = Rate::new(u64::MAX, u64::MAX, u64::MAX);
        assert!(huge.emission_ns() >= 1);
    }

    #[test]
    fn burst_then_steady_rate() {
        let rate = Rate::new(10, 1, 5);
        // 20 requests at the same instant: exactly the burst gets through.
        let admitted = run(rate, std::iter::repeat_n(T0, 20));
        assert_eq!(admitted.len(), 5);

        let mut tat = None;
        for expected_remaining in [4, 3, 2, 1, 0] {
            let d = decide(rate, tat, T0);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            tat = Some(d.tat);
        }
        let refused = decide(rate, tat, T0);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after_ns, 100 * MS);
        assert_eq!(refused.reset_after_ns, 500 * MS);
        // Refusals do not move the TAT, so they need no write.
        assert_eq!(Some(refused.tat), tat);
        assert!(!refused.persist);
        // One T later exactly one more request fits, and then none.
        let d = decide(rate, tat, T0 + 100 * MS);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!decide(rate, Some(d.tat), T0 + 100 * MS).allowed);
        // One nanosecond early is too early.
        assert!(!decide(rate, tat, T0 + 100 * MS - 1).allowed);
    }

    #[test]
    fn waiting_refills_up_to_the_burst_and_no_further() {
        let rate = Rate::new(10, 1, 5);
        let mut tat = None;
        for _ in 0..5 {
            tat = Some(decide(rate, tat, T0).tat);
        }
        // 250 ms buys back two requests (T = 100 ms).
        assert_eq!(run_from(rate, tat, std::iter::repeat_n(T0 + 250 * MS, 10)), 2);
        // After the reset time the whole burst is back; idling longer adds nothing.
        let reset = T0 + 500 * MS;
        assert!(is_idle(tat.unwrap(), reset));
        assert_eq!(run_from(rate, tat, std::iter::repeat_n(reset, 10)), 5);
        assert_eq!(run_from(rate, tat, std::iter::repeat_n(reset + 3_600_000 * MS, 10)), 5);
    }

    fn run_from(rate: Rate, mut tat: Option<u64>, instants: impl IntoIterator<Item = u64>) -> usize {
        let mut n = 0;
        for now in instants {
            let d = decide(rate, tat, now);
            if d.persist {
                tat = Some(d.tat);
            }
            n += usize::from(d.allowed);
        }
        n
    }

    #[test]
    fn admitted_count_over_a_window_is_exactly_gcra() {
        // 10/s with a burst of 5, 1000 requests evenly over 3 s (one every 3 ms):
        // the burst of 5 at the start, then one per T = 100 ms whenever an arrival
        // finds the TAT within τ, i.e. at the first arrival at or after 100 ms, 200 ms,
        // …, 2900 ms: 29 more. 34 in all.
        let rate = Rate::new(10, 1, 5);
        let admitted = run(rate, (0..1000).map(|i| T0 + i * 3 * MS));
        assert_eq!(admitted.len(), 34);
        let firsts: Vec<u64> = admitted.iter().take(6).map(|t| (t - T0) / MS).collect();
        assert_eq!(firsts, [0, 3, 6, 9, 12, 102]);
        // In every window of one second, at most burst + requests − 1 = 14 and, once
        // past the first second, exactly 10 per second.
        for w in 0..3 {
            let start = T0 + w * 1000 * MS;
            let n = admitted.iter().filter(|t| (start..start + 1000 * MS).contains(t)).count();
            assert_eq!(n, if w == 0 { 14 } else { 10 }, "second {w}");
        }
    }

    #[test]
    fn long_run_never_exceeds_burst_plus_rate() {
        // Irregular arrivals (a fixed xorshift sequence): in any interval of length L,
        // GCRA admits at most burst + floor(L / T).
        let rate = Rate::new(7, 2, 3);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut now = T0;
        let mut instants = Vec::new();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += x % (150 * MS);
            instants.push(now);
        }
        let admitted = run(rate, instants);
        for (i, start) in admitted.iter().enumerate() {
            for (j, end) in admitted.iter().enumerate().skip(i) {
                let bound = 3 + (end - start) / rate.emission_ns();
                assert!((j - i + 1) as u64 <= bound);
            }
        }
    }

    #[test]
    fn clock_going_backwards_grants_nothing_and_does_not_lock_out() {
        let rate = Rate::new(10, 1, 5);
        let mut tat = None;
        for _ in 0..5 {
            tat = Some(decide(rate, tat, T0).tat);
        }
        // The clock steps back an hour: still exhausted…
        let back = T0 - 3_600_000 * MS;
        let d = decide(rate, tat, back);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // …with the TAT clamped to "exhausted now" and written back…
        assert!(d.persist);
        assert_eq!(d.tat, back + 500 * MS);
        // …so admitted again one T after the step, not an hour later.
        assert_eq!(d.retry_after_ns, 100 * MS);
        let tat = Some(d.tat);
        assert!(!decide(rate, tat, back + 100 * MS - 1).allowed);
        let d = decide(rate, tat, back + 100 * MS);
        assert!(d.allowed);
        assert!(!decide(rate, Some(d.tat), back + 100 * MS).allowed);
        // Without the write-back, every later request would be refused.
        assert!(!decide(rate, Some(T0 + 500 * MS), back + 100 * MS).allowed);
    }

    #[test]
    fn clock_going_backwards_never_increases_the_budget() {
        let rate = Rate::new(10, 1, 5);
        for debt_ms in (0..=600).step_by(7) {
            let tat = Some(T0 + debt_ms * MS);
            let before = decide(rate, tat, T0);
            for back_ms in [1, 50, 99, 100, 101, 399, 1000, 86_400_000] {
                let after = decide(rate, tat, T0 - back_ms * MS);
                assert!(
                    after.remaining <= before.remaining && (after.allowed <= before.allowed),
                    "debt {debt_ms} ms, back {back_ms} ms"
                );
            }
        }
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let rate = Rate::new(1, 86_400, 1);
        // A TAT at the end of time is clamped to "exhausted now".
        let d = decide(rate, Some(u64::MAX), 0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, 86_400 * NANOS_PER_SECOND);
        // At the end of time everything saturates instead of wrapping.
        for tat in [None, Some(0), Some(u64::MAX)] {
            let d = decide(rate, tat, u64::MAX);
            assert_eq!(d.tat, u64::MAX);
        }
        assert!(decide(rate, None, 0).allowed);
    }
}
