//! What kind of proxy-wasm host the emulator plays.

use std::fmt;

/// The host behaviour the emulator reproduces. Each difference is one a filter must
/// survive; where the profiles disagree with each other, each follows its model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Envoy (1.40, V8): shared data with CAS across workers, tick timers, the proxy
    /// clock, callouts from any context to a named cluster, `xds`/`source` properties,
    /// metrics, `proxy_on_log`.
    Full,
    /// APISIX (api7/wasm-nginx-module, current source): shared data, tick period and
    /// the proxy clock answer `Unimplemented`; callouts only while a request callback
    /// runs, to `host:port`, one at a time per request, answered to the root context
    /// id; properties are nginx variables; metrics answer `Ok` with id 0 and are
    /// dropped; `proxy_set_effective_context` and `proxy_continue_stream` do nothing;
    /// the request always goes on after a callback unless a local response was sent or
    /// a callout registered; no `proxy_on_vm_start`, no `proxy_on_log`.
    ApisixLike,
    /// Like [`Profile::ApisixLike`], but as earlier api7 releases: shared data, tick
    /// period and clock answer `Ok` and do nothing (the clock leaves its out-value
    /// untouched, a shared-data get writes no value, a set keeps nothing), and the
    /// metric calls answer `Unimplemented` as the current api7 source does.
    ApisixNoop,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Full, Profile::ApisixLike, Profile::ApisixNoop];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Full => "full",
            Profile::ApisixLike => "apisix-like",
            Profile::ApisixNoop => "apisix-noop",
        }
    }

    /// APISIX's host: nginx requests, nginx variables, lua-driven callouts.
    pub fn is_apisix(self) -> bool {
        matches!(self, Profile::ApisixLike | Profile::ApisixNoop)
    }

    /// Whether state (quotas, caches) is shared by the workers of one proxy.
    pub fn shares_state(self) -> bool {
        self == Profile::Full
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
