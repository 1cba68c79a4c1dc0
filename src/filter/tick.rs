//! The VM's tick period, shared by its root context (which ticks) and its requests
//! (which ask for the fast tick when they park).

use std::cell::Cell;
use std::time::Duration;

use super::host;

/// How often each worker looks at the shared keys and whether a fetch is due (and
/// merges its inventory).
pub const TICK: Duration = Duration::from_millis(500);
/// While requests wait, tick this often to answer them promptly.
const FAST_TICK: Duration = Duration::from_millis(50);

/// The VM's tick period, shared by its root context and its requests: ordinary, or
/// fast while requests wait. A request that parks asks for the fast tick at once —
/// Envoy re-arms the timer when the period changes — so it waits at most one fast tick
/// after what it waits for is ready, rather than up to an ordinary one (in Envoy,
/// requests waiting for another request's TokenReview stalled up to 440 ms on the
/// ordinary tick).
#[derive(Debug, Default)]
pub struct TickPeriod {
    fast: Cell<bool>,
}

impl TickPeriod {
    /// Fast or ordinary from now on; a host call only when that changes.
    pub fn set_fast(&self, fast: bool) {
        if fast != self.fast.get() && host::set_tick_period(if fast { FAST_TICK } else { TICK }).is_ok() {
            self.fast.set(fast);
        }
    }
}
