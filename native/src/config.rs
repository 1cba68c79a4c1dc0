//! The filter configuration Envoy hands the module: the same JSON as the wasm's
//! `configuration`, parsed and validated by the core — then held to what this shell
//! can do. Anything it cannot do yet is refused at load with the field and why,
//! never accepted and silently ignored.

use std::fmt;
use std::sync::Arc;

use nhi_guard_core::config::{Config, ConfigError};
use nhi_guard_core::host::capabilities::{HostSetting, KeyFetch, Plan, Probed, StateScope};

use crate::metrics::Families;
use crate::store::SharedStore;

/// One `dynamic_modules` filter configuration: the validated configuration and the
/// table its workers share (its filter name's: [`crate::store::for_filter`]).
/// Created on Envoy's main thread, read from every worker.
#[derive(Debug)]
pub struct FilterConfig {
    pub config: Config,
    pub store: Arc<SharedStore>,
    /// The metric families, defined on Envoy's configuration when it was created.
    pub families: Arc<Families>,
    /// Distinguishes this configuration's per-worker VMs from those of another
    /// (a reload, a second listener).
    pub id: u64,
}

/// Why a configuration is refused.
#[derive(Debug)]
pub enum LoadError {
    /// Not a valid nhi-guard configuration (the core's error names the JSON path).
    Config(ConfigError),
    /// Valid, but uses something this shell cannot do.
    Unsupported { field: String, reason: &'static str },
    /// A partner secret is not in Envoy's environment (checked here, when Envoy loads
    /// the configuration, so that Envoy refuses it as it refuses the wasm's).
    Secret(nhi_guard_core::partners::SecretError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Config(err) => write!(f, "{err}"),
            LoadError::Unsupported { field, reason } => {
                write!(f, "{field}: not supported by the native (dynamic module) shell: {reason}")
            }
            LoadError::Secret(err) => write!(f, "partner secret unavailable: {err}"),
        }
    }
}

impl FilterConfig {
    /// Validates `json`; `families` are the metric families defined on Envoy's
    /// configuration (by `config_new`: [`Families::define`]).
    pub fn load(
        json: &[u8],
        id: u64,
        store: Arc<SharedStore>,
        families: impl FnOnce(&Config) -> Families,
    ) -> Result<FilterConfig, LoadError> {
        let config = Config::from_json(json).map_err(LoadError::Config)?;
        refuse_unsupported(&config)?;
        if let Some(partners) = &config.partners {
            use std::os::unix::ffi::OsStringExt as _;
            partners
                .resolve(&mut |name| std::env::var_os(name).map(|v| v.into_vec()))
                .map_err(LoadError::Secret)?;
        }
        let families = Arc::new(families(&config));
        Ok(FilterConfig { config, store, families, id })
    }

    /// How the core runs here: one table for every worker (so quotas, the token cache
    /// and replay tables are exact across workers, as with Envoy's shared data), and
    /// documents (keys, the revocation list) fetched by the requests that need them,
    /// through Envoy's HTTP callout: this shell has no tick to fetch from.
    pub fn plan(&self) -> Plan {
        Plan {
            setting: self.config.host,
            probed: Probed { shared_data: true, timers: false, clock: true },
            state: StateScope::Shared,
            key_fetch: KeyFetch::OnRequest,
        }
    }
}

fn unsupported(field: impl Into<String>, reason: &'static str) -> Result<(), LoadError> {
    Err(LoadError::Unsupported { field: field.into(), reason })
}

fn refuse_unsupported(config: &Config) -> Result<(), LoadError> {
    if config.host == HostSetting::Apisix {
        return unsupported("host", "\"apisix\" is a proxy-wasm host; this module only runs in Envoy");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INLINE: &str = r#"{"issuers": [{"name": "a", "issuer": "https://a", "audiences": ["x"],
        "jwks": {"inline": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}, "algorithms": ["EdDSA"]}]}"#;

    #[test]
    fn inline_keys_load() {
        let loaded =
            FilterConfig::load(INLINE.as_bytes(), 1, Arc::default(), |_| Families::default()).unwrap();
        assert_eq!(loaded.plan().state, StateScope::Shared);
    }

    #[test]
    fn remote_and_discovered_keys_load_fetched_on_request() {
        let remote = INLINE.replace(
            r#""jwks": {"inline": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}"#,
            r#""jwks": {"cluster": "jwks", "authority": "jwks", "path": "/jwks.json"}"#,
        );
        assert_ne!(remote, INLINE);
        let loaded =
            FilterConfig::load(remote.as_bytes(), 1, Arc::default(), |_| Families::default()).unwrap();
        assert_eq!(loaded.plan().key_fetch, KeyFetch::OnRequest);

        let discovering = INLINE.replace(
            r#""jwks": {"inline": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}"#,
            r#""discovery": {"cluster": "idp", "authority": "idp.example"}, "jwks": {}"#,
        );
        assert_ne!(discovering, INLINE);
        let loaded =
            FilterConfig::load(discovering.as_bytes(), 1, Arc::default(), |_| Families::default()).unwrap();
        assert_eq!(loaded.plan().key_fetch, KeyFetch::OnRequest);
    }

    #[test]
    fn filter_state_and_mtls_load_and_apisix_is_refused() {
        let json = INLINE.replacen('{', r#"{"filter_state": true, "mtls": {"trust_domains": ["td"]}, "#, 1);
        FilterConfig::load(json.as_bytes(), 1, Arc::default(), |_| Families::default()).unwrap();
        let json = INLINE.replacen('{', r#"{"host": "apisix", "#, 1);
        let err = FilterConfig::load(json.as_bytes(), 1, Arc::default(), |_| Families::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("host: "), "{err}");
    }

    #[test]
    fn invalid_configuration_names_its_path() {
        let err = FilterConfig::load(br#"{"issuers": []}"#, 1, Arc::default(), |_| Families::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("issuers"), "{err}");
    }
}
