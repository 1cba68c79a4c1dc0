//! Which proxy-wasm host the filter runs in, what it can do, and how the filter
//! adapts — decided once at start from a probe of the host and the `host` setting.
//!
//! Envoy (and Istio, Envoy Gateway) give a filter shared data across workers, tick
//! timers, a clock and callouts from the root context. APISIX's host
//! (api7/wasm-nginx-module) gives none of the first three — depending on the
//! version it answers `Unimplemented`, or answers `Ok` and does nothing (a clock
//! that never writes the time, shared data that never keeps a value, a tick
//! period that never ticks) — and a callout made outside a request crashes
//! nginx. So capabilities are probed by what a call *does*, not by its status,
//! and on a host that is not Envoy-grade the filter chooses the mode that is safe
//! everywhere: per-VM state, and keys fetched by the request that needs them.

use std::fmt;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::json::{self, FromJson};

/// `host` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum HostSetting {
    /// Probe the host and choose (the default).
    #[default]
    Auto,
    /// Require an Envoy-grade host: refuse to start if the probe finds one lacking.
    Envoy,
    /// Run as on APISIX even where more is available: per-VM state, keys fetched
    /// during requests, never a callout from the root context.
    Apisix,
}

impl FromJson for HostSetting {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::one_of(
            value,
            at,
            &[("auto", HostSetting::Auto), ("envoy", HostSetting::Envoy), ("apisix", HostSetting::Apisix)],
        )
    }
}

impl HostSetting {
    pub fn name(self) -> &'static str {
        match self {
            HostSetting::Auto => "auto",
            HostSetting::Envoy => "envoy",
            HostSetting::Apisix => "apisix",
        }
    }
}

/// What the probe at start found. Each is `true` only if the call did its job:
/// shared data kept a value written to it, the clock returned a non-zero time, a
/// tick period was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    pub shared_data: bool,
    pub timers: bool,
    pub clock: bool,
}

/// Where quota counters, the token cache, the flood guard and published keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateScope {
    /// Proxy-wasm shared data: one state for every worker of the proxy.
    Shared,
    /// Memory of this VM: each worker (nginx worker process) has its own.
    PerVm,
}

/// Who fetches remote JWKS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFetch {
    /// The root context on its tick, one fetcher per proxy (CAS lease).
    Background,
    /// The first request that needs the keys (or finds them due for refresh) makes
    /// the callout and waits for it; one fetch in flight per VM and issuer.
    OnRequest,
}

/// How the filter runs on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub setting: HostSetting,
    pub probed: Probed,
    pub state: StateScope,
    pub key_fetch: KeyFetch,
}

/// `host: envoy` on a host that lacks what Envoy gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub missing: Vec<&'static str>,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`host: envoy` but this host has no working {}; use `host: auto` (or `apisix`) to run degraded",
            self.missing.join(", ")
        )
    }
}

impl std::error::Error for PlanError {}

impl Plan {
    /// Chooses the mode for `setting` on a host with `probed` capabilities.
    pub fn choose(setting: HostSetting, probed: Probed) -> Result<Plan, PlanError> {
        let envoy_grade = probed.shared_data && probed.timers && probed.clock;
        let (state, key_fetch) = match setting {
            HostSetting::Envoy if !envoy_grade => {
                let missing = [
                    (!probed.shared_data).then_some("shared data"),
                    (!probed.timers).then_some("tick timers"),
                    (!probed.clock).then_some("proxy clock"),
                ];
                return Err(PlanError { missing: missing.into_iter().flatten().collect() });
            }
            HostSetting::Envoy => (StateScope::Shared, KeyFetch::Background),
            HostSetting::Apisix => (StateScope::PerVm, KeyFetch::OnRequest),
            // A host that fakes one capability may fake the timer too (api7's host
            // accepts a tick period and never ticks): only a host that passes every
            // probe gets the background fetcher.
            HostSetting::Auto if envoy_grade => (StateScope::Shared, KeyFetch::Background),
            HostSetting::Auto => {
                (if probed.shared_data { StateScope::Shared } else { StateScope::PerVm }, KeyFetch::OnRequest)
            }
        };
        Ok(Plan { setting, probed, state, key_fetch })
    }

    /// Whether this is the full (Envoy) mode.
    pub fn is_full(&self) -> bool {
        self.state == StateScope::Shared && self.key_fetch == KeyFetch::Background
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The one start-up line: what the host can do and what the filter does about it.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.probed;
        write!(
            f,
            "host capabilities: shared_data={} timers={} clock={}; host: {} -> mode {}: ",
            yes(p.shared_data),
            yes(p.timers),
            yes(p.clock),
            self.setting.name(),
            if self.is_full() { "full" } else { "degraded" },
        )?;
        f.write_str(match self.state {
            StateScope::Shared => "quotas, token cache and flood guard shared by all workers",
            StateScope::PerVm => "quotas, token cache and flood guard per VM (a limit applies per worker)",
        })?;
        f.write_str(match self.key_fetch {
            KeyFetch::Background => "; JWKS refreshed in the background, one fetcher per proxy",
            KeyFetch::OnRequest => {
                "; JWKS fetched by the request that needs them (one fetch in flight per VM)"
            }
        })?;
        if !p.clock {
            f.write_str("; time from the WASI clock")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVOY: Probed = Probed { shared_data: true, timers: true, clock: true };
    /// api7/wasm-nginx-module, either flavour: nothing works.
    const APISIX: Probed = Probed { shared_data: false, timers: false, clock: false };

    #[test]
    fn auto_on_envoy_is_full() {
        let plan = Plan::choose(HostSetting::Auto, ENVOY).unwrap();
        assert_eq!((plan.state, plan.key_fetch), (StateScope::Shared, KeyFetch::Background));
        assert!(plan.is_full());
        assert!(plan.to_string().contains("mode full"), "{plan}");
    }

    #[test]
    fn auto_on_apisix_is_degraded_and_says_so() {
        let plan = Plan::choose(HostSetting::Auto, APISIX).unwrap();
        assert_eq!((plan.state, plan.key_fetch), (StateScope::PerVm, KeyFetch::OnRequest));
        let line = plan.to_string();
        for needle in ["shared_data=no", "timers=no", "clock=no", "mode degraded", "per VM", "WASI clock"] {
            assert!(line.contains(needle), "{needle:?} missing from {line}");
        }
    }

    #[test]
    fn a_host_that_ticks_but_keeps_no_shared_data_does_not_get_the_background_fetcher() {
        // The tick may be as fake as the shared data: fetch on request.
        let probed = Probed { shared_data: false, ..ENVOY };
        let plan = Plan::choose(HostSetting::Auto, probed).unwrap();
        assert_eq!((plan.state, plan.key_fetch), (StateScope::PerVm, KeyFetch::OnRequest));
        // Shared data that works is still used for state, even without a clock.
        let probed = Probed { clock: false, ..ENVOY };
        let plan = Plan::choose(HostSetting::Auto, probed).unwrap();
        assert_eq!((plan.state, plan.key_fetch), (StateScope::Shared, KeyFetch::OnRequest));
    }

    #[test]
    fn forcing_envoy_on_a_lesser_host_names_what_is_missing() {
        let err = Plan::choose(HostSetting::Envoy, Probed { timers: true, ..APISIX }).unwrap_err();
        assert_eq!(err.missing, ["shared data", "proxy clock"]);
        assert!(err.to_string().contains("no working shared data, proxy clock"), "{err}");
        assert!(Plan::choose(HostSetting::Envoy, ENVOY).unwrap().is_full());
    }

    #[test]
    fn forcing_apisix_degrades_even_on_envoy() {
        let plan = Plan::choose(HostSetting::Apisix, ENVOY).unwrap();
        assert_eq!((plan.state, plan.key_fetch), (StateScope::PerVm, KeyFetch::OnRequest));
        assert!(!plan.is_full());
    }

    #[test]
    fn the_setting_reads_from_json() {
        for (json, want) in [
            ("\"auto\"", HostSetting::Auto),
            ("\"envoy\"", HostSetting::Envoy),
            ("\"apisix\"", HostSetting::Apisix),
        ] {
            assert_eq!(serde_json::from_str::<HostSetting>(json).unwrap(), want);
        }
        assert!(serde_json::from_str::<HostSetting>("\"nginx\"").is_err());
        assert!(serde_json::from_str::<HostSetting>("\"Envoy\"").is_err());
    }
}
