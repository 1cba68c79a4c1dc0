//! Requests parked on another request's TokenReview, on any worker, woken when that
//! review ends.
//!
//! The wasm shell polls for a review's answer on its tick; this shell has no tick,
//! but Envoy gives every filter a scheduler that any thread may post to (the event
//! then runs on the filter's own worker: `envoy_dynamic_module_on_http_filter_scheduled`).
//! A request that waits for another's review registers its scheduler here under the
//! review's key; the request that made the review — on whichever worker — posts to
//! every scheduler registered under that key once its answer is recorded, or once it
//! goes away without one.

use std::ffi::c_void;
use std::sync::{Mutex, PoisonError};

use nhi_guard_core::verify::liveness::ReviewKey;

use crate::abi;

/// The only event this module schedules: "the review you wait for ended".
pub const REVIEW_ENDED: u64 = 1;

/// A filter's scheduler (Envoy's `DynamicModuleHttpFilterScheduler`, which holds a
/// weak reference to its filter: an event posted after the request ended is dropped).
struct Scheduler(*mut c_void);

// SAFETY: Envoy's scheduler may be committed to from any thread; it is deleted only
// by its filter, under the registry's lock (see `Parking::drop`).
unsafe impl Send for Scheduler {}

struct Sleeper {
    config: u64,
    key: ReviewKey,
    scheduler: Scheduler,
}

/// Every worker's parked requests. Committing and deleting a scheduler both happen
/// under this lock, so a scheduler is never committed to after its deletion.
static SLEEPERS: Mutex<Vec<Sleeper>> = Mutex::new(Vec::new());

/// A request's registration: its scheduler, deleted (and unregistered) when dropped.
pub struct Parking {
    scheduler: *mut c_void,
}

/// At most this many requests wait for reviews at once, in the whole Envoy; more are
/// decided without waiting (by `on_unavailable`).
pub const MAX_SLEEPERS: usize = 4 * nhi_guard_core::pipeline::MAX_WAITERS;

/// Parks the request of `filter` (Envoy's) on review `key` of configuration `config`.
/// `None` if Envoy gives it no scheduler, or [`MAX_SLEEPERS`] wait already (it is
/// then decided without waiting).
pub fn park(config: u64, key: ReviewKey, filter: *mut c_void) -> Option<Parking> {
    if filter.is_null() || SLEEPERS.lock().unwrap_or_else(PoisonError::into_inner).len() >= MAX_SLEEPERS {
        return None;
    }
    // SAFETY: the live filter of the current hook.
    let scheduler = unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(filter) };
    if scheduler.is_null() {
        return None;
    }
    let mut sleepers = SLEEPERS.lock().unwrap_or_else(PoisonError::into_inner);
    sleepers.push(Sleeper { config, key, scheduler: Scheduler(scheduler) });
    Some(Parking { scheduler })
}

/// Review `key` of `config` ended (answered, or its request went away): every request
/// parked on it runs again on its own worker.
pub fn review_ended(config: u64, key: &ReviewKey) {
    let mut sleepers = SLEEPERS.lock().unwrap_or_else(PoisonError::into_inner);
    sleepers.retain(|sleeper| {
        if sleeper.config != config || sleeper.key != *key {
            return true;
        }
        // SAFETY: registered, hence not deleted (deletion unregisters under this lock).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(sleeper.scheduler.0, REVIEW_ENDED)
        };
        false
    });
}

impl Drop for Parking {
    fn drop(&mut self) {
        let mut sleepers = SLEEPERS.lock().unwrap_or_else(PoisonError::into_inner);
        sleepers.retain(|sleeper| sleeper.scheduler.0 != self.scheduler);
        // SAFETY: made by `scheduler_new`, deleted once, never committed to again
        // (no longer registered, and the lock is held).
        unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(self.scheduler) };
    }
}
