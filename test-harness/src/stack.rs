//! The whole e2e setup in one value: a JWKS server and an echo upstream on ephemeral
//! ports, and an Envoy running the shipped config pointed at them.
//!
//! Issuer, audience and the JWKS cluster name are read from the shipped plugin
//! configuration, never restated here, so editing `envoy/envoy.yaml` moves the tests too.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::envoy::{Envoy, EnvoyOptions};
use crate::envoy_config::EnvoyConfig;
use crate::http::Response;
use crate::jwks_server::{JwksBehaviour, JwksServer};
use crate::keys::TestKey;
use crate::mint::{Alg, Token};
use crate::upstream::EchoUpstream;

/// Name of the cluster machine traffic is routed to in the shipped config.
pub const UPSTREAM_CLUSTER: &str = "upstream";
/// Name of the cluster everything else (people) is routed to.
pub const WEB_CLUSTER: &str = "web";

/// How long [`Stack::wait_for_keys`] waits for the first successful JWKS fetch.
pub const KEYS_TIMEOUT: Duration = Duration::from_secs(20);

/// A running e2e stack. Field order is drop order: Envoy stops before its backends.
pub struct Stack {
    pub envoy: Envoy,
    pub jwks: JwksServer,
    pub upstream: EchoUpstream,
    /// The human backend (route `human`).
    pub web: EchoUpstream,
    /// The plugin configuration Envoy runs with.
    pub plugin: Value,
}

impl Stack {
    /// The shipped config and plugin configuration, the JWKS server behaving as given.
    pub fn start(jwks: JwksBehaviour) -> Result<Self> {
        Self::start_with(jwks, EnvoyOptions::new())
    }

    /// Like [`Stack::start`], with extra options (e.g. another plugin configuration).
    /// The `upstream` cluster and the first issuer's JWKS cluster are pointed at the
    /// servers started here.
    pub fn start_with(jwks: JwksBehaviour, options: EnvoyOptions) -> Result<Self> {
        let plugin = match &options.plugin_configuration {
            Some(plugin) => plugin.clone(),
            None => match &options.config {
                Some(config) => config.plugin_configuration()?,
                None => EnvoyConfig::shipped()?.plugin_configuration()?,
            },
        };
        let jwks_cluster = plugin
            .pointer("/issuers/0/jwks/cluster")
            .and_then(Value::as_str)
            .context("plugin configuration has no issuers[0].jwks.cluster")?
            .to_owned();
        let jwks = JwksServer::start_with(jwks)?;
        let upstream = EchoUpstream::start_named("machine")?;
        let web = EchoUpstream::start_named("web")?;
        // Clusters the caller pointed elsewhere (e.g. at a faulty server) stay so.
        let mut options = options;
        for (name, addr) in
            [(UPSTREAM_CLUSTER, upstream.addr()), (WEB_CLUSTER, web.addr()), (&jwks_cluster, jwks.addr())]
        {
            options.clusters.entry(name.to_owned()).or_insert(addr);
        }
        let envoy = Envoy::start(&options)?;
        Ok(Self { envoy, jwks, upstream, web, plugin })
    }

    /// `issuers[0].name`: the value of the forwarded issuer header.
    pub fn issuer_name(&self) -> Result<&str> {
        self.issuer_member("name")
    }

    /// `issuers[0].issuer`: the `iss` tokens must carry.
    pub fn issuer(&self) -> Result<&str> {
        self.issuer_member("issuer")
    }

    /// `issuers[0].audiences[0]`.
    pub fn audience(&self) -> Result<&str> {
        self.plugin
            .pointer("/issuers/0/audiences/0")
            .and_then(Value::as_str)
            .context("plugin configuration has no issuers[0].audiences[0]")
    }

    fn issuer_member(&self, name: &str) -> Result<&str> {
        self.plugin
            .pointer(&format!("/issuers/0/{name}"))
            .and_then(Value::as_str)
            .with_context(|| format!("plugin configuration has no issuers[0].{name}"))
    }

    /// A token the first issuer accepts: its `iss` and first audience, `sub`, any
    /// `extra` claims, signed (with its `kid`) by `key`.
    pub fn token(&self, key: &TestKey, sub: &str, extra: &[(&str, Value)]) -> Result<String> {
        let mut token = Token::new(Alg::default_for(key.key_type()))
            .kid(key.kid())
            .claim("iss", self.issuer()?)
            .claim("aud", self.audience()?)
            .claim("sub", sub);
        for (name, value) in extra {
            token = token.claim(name, value.clone());
        }
        token.sign(key)
    }

    /// Waits until a request bearing `token` is no longer refused with 503, i.e. the
    /// filter has loaded keys.
    pub fn wait_for_keys(&mut self, token: &str) -> Result<()> {
        let authorization = format!("Bearer {token}");
        self.envoy.wait_until("the filter to load its keys", KEYS_TIMEOUT, |envoy| {
            let response = envoy.request("GET", "/_harness/ready", &[("authorization", &authorization)])?;
            Ok(response.status != 503)
        })
    }

    /// `GET path` through Envoy's listener.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        self.envoy.request("GET", path, headers)
    }
}
