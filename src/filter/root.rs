//! The root context: owns the validated configuration and keeps each issuer's
//! JWKS fresh, on a tick, with `dispatch_http_call`.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::config::{Config, JwksSource};
use crate::jwks::{self, JwksError, KeySet, MAX_JWKS_BYTES};
use crate::refresh::Refresh;

use super::host;
use super::http::Http;

/// How often the root context checks whether a JWKS refresh is due.
const TICK: Duration = Duration::from_secs(1);

/// What the root context shares with the HTTP contexts of its VM.
pub struct Vm {
    pub config: Config,
    /// Current keys per issuer (same index as `config.issuers`); `None` until loaded.
    pub keys: RefCell<Vec<Option<KeySet>>>,
}

#[derive(Default)]
pub struct Root {
    vm: Option<Rc<Vm>>,
    /// Per issuer: `Some` for issuers whose keys are fetched.
    refresh: Vec<Option<Refresh>>,
    /// Callout token → issuer index.
    pending: HashMap<u32, usize>,
}

impl Root {
    fn configure(&mut self, config: Config) -> bool {
        let keys = config
            .issuers
            .iter()
            .map(|issuer| match &issuer.jwks {
                JwksSource::Inline(set) => Some(set.clone()),
                JwksSource::Remote(_) => None,
            })
            .collect();
        self.refresh = config
            .issuers
            .iter()
            .map(|issuer| match &issuer.jwks {
                JwksSource::Remote(remote) => Some(Refresh::new(
                    remote.refresh_seconds.saturating_mul(1000),
                    remote.timeout_ms,
                )),
                JwksSource::Inline(_) => None,
            })
            .collect();
        let needs_fetching = self.refresh.iter().any(Option::is_some);
        info!(
            "configured: {} issuer(s): {}",
            config.issuers.len(),
            config
                .issuers
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.vm = Some(Rc::new(Vm {
            config,
            keys: RefCell::new(keys),
        }));
        self.pending.clear();
        if needs_fetching {
            if let Err(status) = host::set_tick_period(TICK) {
                error!("the host has no timers ({status:?}); JWKS cannot be refreshed, refusing to start");
                return false;
            }
            self.fetch_due(host::now_ms());
        }
        true
    }

    fn fetch_due(&mut self, now: u64) {
        let Some(vm) = self.vm.clone() else { return };
        for (index, issuer) in vm.config.issuers.iter().enumerate() {
            let (Some(Some(refresh)), JwksSource::Remote(remote)) =
                (self.refresh.get_mut(index), &issuer.jwks)
            else {
                continue;
            };
            if !refresh.due(now) {
                continue;
            }
            match host::http_get(
                &remote.cluster,
                &remote.authority,
                &remote.path,
                Duration::from_millis(remote.timeout_ms),
            ) {
                Ok(token) => {
                    refresh.started(now);
                    self.pending.insert(token, index);
                }
                Err(status) => {
                    refresh.failed(now, jitter());
                    warn!(
                        "issuer {}: cannot fetch JWKS from cluster {:?} ({status:?}); retry in {} ms",
                        issuer.name,
                        remote.cluster,
                        refresh.next_at().saturating_sub(now)
                    );
                }
            }
        }
    }

    fn jwks_fetched(&mut self, index: usize, outcome: Result<jwks::ParsedJwks, String>) {
        let now = host::now_ms();
        let (Some(vm), Some(Some(refresh))) = (self.vm.as_ref(), self.refresh.get_mut(index))
        else {
            return;
        };
        let Some(issuer) = vm.config.issuers.get(index) else {
            return;
        };
        match outcome {
            Ok(parsed) => {
                for skipped in &parsed.skipped {
                    warn!("issuer {}: JWKS {skipped}: skipped", issuer.name);
                }
                info!(
                    "issuer {}: loaded {} key(s)",
                    issuer.name,
                    parsed.keys.len()
                );
                if let Some(slot) = vm.keys.borrow_mut().get_mut(index) {
                    *slot = Some(parsed.keys);
                }
                refresh.succeeded(now);
            }
            Err(why) => {
                refresh.failed(now, jitter());
                let kept = vm.keys.borrow().get(index).is_some_and(Option::is_some);
                warn!(
                    "issuer {}: JWKS refresh failed: {why}; {}; retry in {} ms",
                    issuer.name,
                    if kept {
                        "keeping the last good keys"
                    } else {
                        "no keys yet"
                    },
                    refresh.next_at().saturating_sub(now)
                );
            }
        }
    }
}

/// A value in `0..=1` to spread retries; not security-relevant.
fn jitter() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(host::now_ms());
    (hasher.finish() % 1_000) as f64 / 999.0
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(index) = self.pending.remove(&token_id) else {
            return;
        };
        let outcome = match host::http_call_response(body_size, MAX_JWKS_BYTES) {
            (None, _) => Err("no response (connection refused, reset or timed out)".to_owned()),
            (Some(200), Ok(body)) => jwks::parse(&body).map_err(|e| e.to_string()),
            (Some(200), Err(bytes)) => Err(JwksError::TooLarge {
                bytes,
                limit: MAX_JWKS_BYTES,
            }
            .to_string()),
            (Some(status), _) => Err(format!("key server answered HTTP {status}")),
        };
        self.jwks_fetched(index, outcome);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match host::plugin_configuration() {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                error!("no plugin configuration; refusing to start");
                return false;
            }
            Err(status) => {
                error!("cannot read the plugin configuration ({status:?}); refusing to start");
                return false;
            }
        };
        match Config::from_json(&bytes) {
            Ok(config) => self.configure(config),
            Err(err) => {
                error!("{err}; refusing to start");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.fetch_due(host::now_ms());
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(Http::new(vm)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
