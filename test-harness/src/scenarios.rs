//! One scenario table for every run: the emulator under each profile
//! (`tests/emulator.rs`) and a real Envoy (`tests/scenarios_envoy.rs`), which also
//! checks that the Envoy-like emulator agrees with Envoy step by step.
//!
//! The table is one plugin configuration — the shipped one, plus an issuer with an
//! inline JWKS, a quota rule and a human route — and a list of scenarios of requests
//! with what must come of each, so one Envoy start serves all of it. Every scenario
//! uses identities and paths of its own; scenarios run in order.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::emulator::{CalloutReply, Exchange, Flow, Host, Request};
use crate::envoy_config::EnvoyConfig;
use crate::http::Response;
use crate::jwks_server::JWKS_PATH;
use crate::keys::{self, KeyType, TestKey, TestKeys};
use crate::mint::{self, Alg, Token};

/// Request headers whose upstream values the table looks at.
pub const UPSTREAM_HEADERS: [&str; 4] = ["x-nhi-client", "x-nhi-identity", "x-nhi-issuer", "authorization"];
/// Response headers the table looks at.
pub const RESPONSE_HEADERS: [&str; 4] = ["www-authenticate", "retry-after", "ratelimit-policy", "ratelimit"];

/// The issuer with an inline JWKS.
pub const INLINE_ISSUER: &str = "https://inline.nhi-guard.test";
pub const INLINE_NAME: &str = "inline";
/// Identities matching this prefix get the tight quota rule.
pub const QUOTA_PREFIX: &str = "quota-";
/// Requests a tight-quota identity may make (per window of an hour).
pub const QUOTA_LIMIT: usize = 3;

/// A check on one response header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Present,
    Absent,
    Equals(String),
    StartsWith(String),
}

/// What must come of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub status: u16,
    pub reason: Option<&'static str>,
    /// Request headers the upstream must get (`None`: must not get). Only for 2xx.
    pub upstream: Vec<(&'static str, Option<String>)>,
    pub response: Vec<(&'static str, Check)>,
}

impl Expect {
    /// Reaches the upstream as a verified machine: `x-nhi-client: machine`, the
    /// identity and issuer set, the token not forwarded.
    pub fn machine(identity: &str, issuer: &str) -> Self {
        Self {
            status: 200,
            reason: None,
            upstream: vec![
                ("x-nhi-client", Some("machine".into())),
                ("x-nhi-identity", Some(identity.into())),
                ("x-nhi-issuer", Some(issuer.into())),
                ("authorization", None),
            ],
            response: Vec::new(),
        }
    }

    /// Reaches the upstream as a person: `x-nhi-client: human`, no identity.
    pub fn human() -> Self {
        Self {
            status: 200,
            reason: None,
            upstream: vec![
                ("x-nhi-client", Some("human".into())),
                ("x-nhi-identity", None),
                ("x-nhi-issuer", None),
            ],
            response: Vec::new(),
        }
    }

    /// Refused locally with `status` and `reason`.
    pub fn refused(status: u16, reason: &'static str) -> Self {
        let mut expect = Self { status, reason: Some(reason), upstream: Vec::new(), response: Vec::new() };
        if status == 401 {
            expect
                .response
                .push(("www-authenticate", Check::StartsWith(r#"Bearer realm="nhi-guard""#.into())));
        }
        expect
    }

    pub fn header(mut self, name: &'static str, check: Check) -> Self {
        self.response.push((name, check));
        self
    }

    /// Every way `outcome` differs from this expectation.
    pub fn mismatches(&self, outcome: &Outcome) -> Vec<String> {
        let mut out = Vec::new();
        if outcome.status != self.status {
            out.push(format!("status {} (expected {})", outcome.status, self.status));
        }
        if outcome.reason.as_deref() != self.reason {
            out.push(format!("reason {:?} (expected {:?})", outcome.reason, self.reason));
        }
        for (name, expected) in &self.upstream {
            let got = outcome.upstream.as_ref().and_then(|u| u.get(*name));
            if outcome.upstream.is_none() {
                out.push(format!("never reached the upstream (expected {name}: {expected:?})"));
                break;
            }
            if got != expected.as_ref() {
                out.push(format!("upstream {name}: {got:?} (expected {expected:?})"));
            }
        }
        for (name, check) in &self.response {
            let got = outcome.response.get(*name);
            let ok = match check {
                Check::Present => got.is_some(),
                Check::Absent => got.is_none(),
                Check::Equals(value) => got == Some(value),
                Check::StartsWith(prefix) => got.is_some_and(|g| g.starts_with(prefix.as_str())),
            };
            if !ok {
                out.push(format!("response {name}: {got:?} (expected {check:?})"));
            }
        }
        out
    }
}

/// What came of one request, reduced to what the table compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    /// `reason` of a refusal body.
    pub reason: Option<String>,
    /// [`UPSTREAM_HEADERS`] as the upstream got them; `None` if it got nothing.
    pub upstream: Option<BTreeMap<String, String>>,
    /// [`RESPONSE_HEADERS`] as the client got them.
    pub response: BTreeMap<String, String>,
}

impl Outcome {
    /// From an emulated exchange.
    pub fn from_exchange(exchange: &Exchange) -> Self {
        let upstream = exchange.upstream_request.as_ref().map(|_| {
            UPSTREAM_HEADERS
                .iter()
                .filter_map(|name| exchange.upstream_header(name).map(|v| ((*name).to_owned(), v.to_owned())))
                .collect()
        });
        let response = RESPONSE_HEADERS
            .iter()
            .filter_map(|name| exchange.header(name).map(|v| ((*name).to_owned(), v.to_owned())))
            .collect();
        let reason = if exchange.upstream_request.is_none() { exchange.reason() } else { None };
        Self { status: exchange.status, reason, upstream, response }
    }

    /// From Envoy's answer, the upstream being an echo server (its body lists the
    /// request headers it got).
    pub fn from_envoy(response: &Response) -> Self {
        let body = response.body_json().ok();
        let echoed = body.as_ref().and_then(|b| b.get("headers")).and_then(Value::as_object);
        let upstream = echoed.map(|headers| {
            UPSTREAM_HEADERS
                .iter()
                .filter_map(|name| {
                    headers.get(*name).and_then(Value::as_str).map(|v| ((*name).to_owned(), v.to_owned()))
                })
                .collect()
        });
        let reason = match echoed {
            Some(_) => None,
            None => body.as_ref().and_then(|b| b.get("reason")).and_then(Value::as_str).map(str::to_owned),
        };
        let headers = RESPONSE_HEADERS
            .iter()
            .filter_map(|name| response.header(name).map(|v| ((*name).to_owned(), v.to_owned())))
            .collect();
        Self { status: response.status, reason, upstream, response: headers }
    }

    /// Every way `other` differs from this outcome. Values that depend on the time
    /// between requests (`retry-after`, `t=` in `ratelimit`) may differ by a second.
    pub fn differences(&self, other: &Outcome) -> Vec<String> {
        let mut out = Vec::new();
        if self.status != other.status {
            out.push(format!("status {} vs {}", self.status, other.status));
        }
        if self.reason != other.reason {
            out.push(format!("reason {:?} vs {:?}", self.reason, other.reason));
        }
        if self.upstream != other.upstream {
            out.push(format!("upstream headers {:?} vs {:?}", self.upstream, other.upstream));
        }
        let names: std::collections::BTreeSet<&String> =
            self.response.keys().chain(other.response.keys()).collect();
        for name in names {
            let (a, b) = (self.response.get(name), other.response.get(name));
            let close = match (a, b) {
                (Some(a), Some(b)) => a == b || nearly_equal(a, b),
                _ => false,
            };
            if !close {
                out.push(format!("response {name}: {a:?} vs {b:?}"));
            }
        }
        out
    }
}

/// Equal once every run of digits is allowed to differ by one (seconds that ticked
/// between two runs).
fn nearly_equal(a: &str, b: &str) -> bool {
    fn split(s: &str) -> Vec<Result<i64, String>> {
        let mut parts = Vec::new();
        let mut current = String::new();
        let mut digits = false;
        for ch in s.chars() {
            if ch.is_ascii_digit() != digits && !current.is_empty() {
                parts.push(if digits {
                    current.parse().map_err(|_| current.clone())
                } else {
                    Err(current.clone())
                });
                current.clear();
            }
            digits = ch.is_ascii_digit();
            current.push(ch);
        }
        if !current.is_empty() {
            parts.push(if digits { current.parse().map_err(|_| current.clone()) } else { Err(current) });
        }
        parts
    }
    let (a, b) = (split(a), split(b));
    a.len() == b.len()
        && a.iter().zip(&b).all(|pair| match pair {
            (Ok(x), Ok(y)) => (x - y).abs() <= 1,
            (x, y) => x == y,
        })
}

/// One request of a scenario.
#[derive(Clone, Debug)]
pub struct Step {
    pub label: String,
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The worker (VM) that gets it in the emulator; Envoy picks its own.
    pub worker: usize,
    pub expect: Expect,
    /// Where hosts without shared data expect otherwise (state is per VM there).
    pub per_vm: Option<Expect>,
}

impl Step {
    /// What this step expects on a host whose state is (or is not) shared.
    pub fn expected(&self, shared_state: bool) -> &Expect {
        match (&self.per_vm, shared_state) {
            (Some(per_vm), false) => per_vm,
            _ => &self.expect,
        }
    }

    /// The headers as `(name, value)` pairs.
    pub fn header_pairs(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    /// The step as an emulator request.
    pub fn request(&self) -> Request {
        let mut request = Request::new(self.method, &self.path);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        request
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub steps: Vec<Step>,
}

/// How many workers the table uses (the quota scenario spreads over two).
pub const WORKERS: usize = 2;

/// The scenario table and the configuration it runs under.
#[derive(Clone, Debug)]
pub struct Table {
    /// The plugin configuration.
    pub plugin: Value,
    /// `issuers[0].jwks.cluster`: an Envoy cluster, or `host:port` on APISIX.
    pub jwks_upstream: String,
    /// The document the key server serves for `issuers[0]`.
    pub jwks: Value,
    /// A token `issuers[0]` accepts, to wait for its keys.
    pub warmup_token: String,
    pub scenarios: Vec<Scenario>,
}

/// A step while the table is written: path prefix, request headers, expectation.
type StepSpec = (&'static str, Vec<(String, String)>, Expect);

/// The key `issuers[0]` (remote JWKS) publishes, and the inline issuer's key.
fn table_keys() -> Result<(&'static TestKey, TestKey)> {
    let keys = TestKeys::shared()?;
    Ok((keys.by_type(KeyType::P256), keys.ed25519.with_kid("inline-ed")))
}

impl Table {
    /// The table, with `issuers[0]` fetching its keys from `jwks_upstream`.
    pub fn new(jwks_upstream: &str) -> Result<Self> {
        let (remote_key, inline_key) = table_keys()?;
        let mut plugin = EnvoyConfig::shipped()?.plugin_configuration()?;
        let text = |pointer: &str| -> Result<String> {
            plugin
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("the shipped plugin configuration has no {pointer}"))
        };
        let remote_name = text("/issuers/0/name")?;
        let remote_iss = text("/issuers/0/issuer")?;
        let audience = text("/issuers/0/audiences/0")?;
        if text("/issuers/0/jwks/path")? != JWKS_PATH {
            bail!("issuers[0].jwks.path is not {JWKS_PATH}");
        }
        let skew = plugin.pointer("/issuers/0/clock_skew_seconds").and_then(Value::as_u64).unwrap_or(30);
        let remote_jwks = plugin
            .pointer_mut("/issuers/0/jwks")
            .and_then(Value::as_object_mut)
            .context("the shipped plugin configuration has no issuers[0].jwks")?;
        remote_jwks.insert("cluster".into(), json!(jwks_upstream));
        let top = plugin.as_object_mut().context("the plugin configuration is not an object")?;
        top.get_mut("issuers").and_then(Value::as_array_mut).context("issuers")?.push(json!({
            "name": INLINE_NAME,
            "issuer": INLINE_ISSUER,
            "audiences": [audience],
            "jwks": { "inline": keys::jwks([&inline_key]) },
            "algorithms": ["EdDSA"],
        }));
        top.insert(
            "quotas".into(),
            json!({
                "default": { "requests": 1000, "per_seconds": 60 },
                "rules": [{ "name": "tight", "identities": [format!("{QUOTA_PREFIX}*")],
                            "requests": QUOTA_LIMIT, "per_seconds": 3600 }],
                "response_headers": true
            }),
        );

        let now = mint::now();
        let token = |key: &TestKey, iss: &str, sub: &str, edit: &dyn Fn(Token) -> Token| -> Result<String> {
            let base = Token::new(Alg::default_for(key.key_type()))
                .claim("iss", iss)
                .claim("aud", audience.as_str())
                .claim("sub", sub)
                .claim("iat", now)
                .claim("exp", now + 3600);
            edit(base).sign(key)
        };
        let same = |t: Token| t;
        let remote_token = |sub: &str| token(remote_key, &remote_iss, sub, &same);
        let inline_token = |sub: &str| token(&inline_key, INLINE_ISSUER, sub, &same);
        let bearer = |t: &str| ("authorization".to_owned(), format!("Bearer {t}"));
        let mut scenarios = Vec::new();
        let mut scenario = |name: &'static str, steps: Vec<StepSpec>| {
            let steps = steps
                .into_iter()
                .enumerate()
                .map(|(i, (path, headers, expect))| Step {
                    label: format!("{name}#{i}"),
                    method: "GET",
                    path: format!("{path}{name}/{i}"),
                    headers,
                    worker: 0,
                    expect,
                    per_vm: None,
                })
                .collect();
            scenarios.push(Scenario { name, steps });
        };

        scenario(
            "valid-token",
            vec![
                (
                    "/api/",
                    vec![bearer(&remote_token("robot-remote")?)],
                    Expect::machine("robot-remote", &remote_name),
                ),
                (
                    "/api/",
                    vec![bearer(&inline_token("robot-inline")?)],
                    Expect::machine("robot-inline", INLINE_NAME),
                ),
            ],
        );
        scenario("missing-token", vec![("/api/", vec![], Expect::refused(401, "missing_token"))]);
        let invalid = |reason| Expect::refused(401, reason).header("www-authenticate", Check::Present);
        scenario(
            "bad-signature",
            vec![
                (
                    "/api/",
                    vec![bearer(&mint::tamper_signature(&remote_token("forger")?)?)],
                    invalid("bad_signature"),
                ),
                (
                    "/api/",
                    vec![bearer(&mint::tamper_signature(&inline_token("forger")?)?)],
                    invalid("bad_signature"),
                ),
            ],
        );
        let expired = |t: Token| t.claim("iat", now - 7200).claim("exp", now - 3600 - skew);
        scenario(
            "expired",
            vec![
                (
                    "/api/",
                    vec![bearer(&token(remote_key, &remote_iss, "late", &expired)?)],
                    invalid("expired"),
                ),
                (
                    "/api/",
                    vec![bearer(&token(&inline_key, INLINE_ISSUER, "late", &expired)?)],
                    invalid("expired"),
                ),
            ],
        );
        let unknown_kid = |t: Token| t.kid("evil-1");
        scenario(
            "wrong-issuer",
            vec![
                (
                    "/api/",
                    vec![bearer(&token(&inline_key, "https://evil.example", "evil", &same)?)],
                    invalid("wrong_issuer"),
                ),
                (
                    "/api/",
                    vec![bearer(&token(remote_key, "https://evil.example", "evil", &unknown_kid)?)],
                    invalid("unknown_issuer"),
                ),
            ],
        );
        let other_audience = |t: Token| t.claim("aud", "some-other-gateway");
        scenario(
            "wrong-audience",
            vec![
                (
                    "/api/",
                    vec![bearer(&token(remote_key, &remote_iss, "aud", &other_audience)?)],
                    invalid("wrong_audience"),
                ),
                (
                    "/api/",
                    vec![bearer(&token(&inline_key, INLINE_ISSUER, "aud", &other_audience)?)],
                    invalid("wrong_audience"),
                ),
            ],
        );
        let forged = |headers: &mut Vec<(String, String)>| {
            for (name, value) in
                [("x-nhi-identity", "admin"), ("x-nhi-issuer", "root"), ("x-nhi-client", "machine")]
            {
                headers.push((name.to_owned(), value.to_owned()));
            }
        };
        let mut with_token = vec![bearer(&remote_token("honest")?)];
        forged(&mut with_token);
        let mut without_token = Vec::new();
        forged(&mut without_token);
        let forged_on_api = without_token.clone();
        scenario(
            "forged-headers",
            vec![
                ("/api/", with_token, Expect::machine("honest", &remote_name)),
                ("/web/", without_token, Expect::human()),
                ("/api/", forged_on_api, Expect::refused(401, "missing_token")),
            ],
        );
        scenario(
            "route-separation",
            vec![
                ("/api/", vec![bearer(&remote_token("router")?)], Expect::machine("router", &remote_name)),
                (
                    "/web/",
                    vec![bearer(&remote_token("router")?)],
                    Expect::refused(403, "machine_on_human_route"),
                ),
                (
                    "/web/",
                    vec![bearer(&inline_token("router")?)],
                    Expect::refused(403, "machine_on_human_route"),
                ),
                ("/web/", vec![], Expect::human()),
            ],
        );

        // Quota: QUOTA_LIMIT requests pass on worker 0, the next is refused; one more
        // on worker 1 is refused where state is shared and passes where it is per VM.
        let identity = format!("{QUOTA_PREFIX}robot");
        let quota_token = remote_token(&identity)?;
        let policy = format!(r#""tight";q={QUOTA_LIMIT};w=3600"#);
        let mut steps = Vec::new();
        for i in 0..QUOTA_LIMIT {
            let remaining = QUOTA_LIMIT - 1 - i;
            let expect = Expect::machine(&identity, &remote_name)
                .header("ratelimit-policy", Check::Equals(policy.clone()))
                .header("ratelimit", Check::StartsWith(format!(r#""tight";r={remaining};"#)));
            steps.push(("/api/", vec![bearer(&quota_token)], expect));
        }
        let exceeded = Expect::refused(429, "quota_exceeded")
            .header("retry-after", Check::Present)
            .header("ratelimit-policy", Check::Equals(policy.clone()))
            .header("ratelimit", Check::StartsWith(r#""tight";r=0;"#.into()));
        steps.push(("/api/", vec![bearer(&quota_token)], exceeded.clone()));
        steps.push(("/api/", vec![bearer(&quota_token)], exceeded));
        scenario("quota", steps);
        if let Some(last) = scenarios.last_mut().and_then(|s| s.steps.last_mut()) {
            last.worker = 1;
            last.per_vm = Some(
                Expect::machine(&identity, &remote_name)
                    .header("ratelimit", Check::StartsWith(format!(r#""tight";r={};"#, QUOTA_LIMIT - 1))),
            );
        }

        Ok(Self {
            plugin,
            jwks_upstream: jwks_upstream.to_owned(),
            jwks: keys::jwks([remote_key]),
            warmup_token: remote_token("warmup")?,
            scenarios,
        })
    }

    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.scenarios.iter().flat_map(|s| s.steps.iter())
    }

    /// The key server's answer to a callout: the JWKS for `issuers[0]`'s
    /// upstream and path, 404 for anything else.
    pub fn answer(&self, upstream: &str, path: Option<&str>) -> CalloutReply {
        if upstream == self.jwks_upstream && path == Some(JWKS_PATH) {
            CalloutReply::new(200, self.jwks.to_string()).header("content-type", "application/json")
        } else {
            CalloutReply::new(404, "not found")
        }
    }

    /// Starts [`WORKERS`] workers on `host` with the table's configuration and, on
    /// hosts with a background fetcher, lets them load `issuers[0]`'s keys.
    pub fn start(&self, host: &mut Host) -> Result<()> {
        for _ in 0..WORKERS {
            let index = host.start_worker_json(&self.plugin)?;
            let worker = host.worker(index)?;
            if !worker.configured() {
                bail!("worker {index} refused the configuration:\n{}", worker.log_text());
            }
        }
        // Ticks (where the host has them) start the fetch; answer it, let the other
        // worker pick the published keys up.
        for _ in 0..4 {
            host.advance(std::time::Duration::from_millis(600))?;
            self.answer_all(host)?;
        }
        Ok(())
    }

    /// Answers every pending callout of every worker from the key server.
    pub fn answer_all(&self, host: &mut Host) -> Result<usize> {
        let mut answered = 0;
        for index in 0..host.workers().len() {
            let worker = host.worker(index)?;
            for callout in worker.callouts() {
                let reply = self.answer(&callout.upstream, callout.header(":path"));
                worker.answer_callout(callout.token, Some(reply))?;
                answered += 1;
            }
        }
        Ok(answered)
    }

    /// Runs `step` on `host` (started with [`Table::start`]); see [`Table::run_request`].
    pub fn run_step(&self, host: &mut Host, step: &Step) -> Result<Exchange> {
        self.run_request(host, step.worker, &step.request())
    }

    /// Sends `request` to `worker`, answers the key fetches it waits for (advancing
    /// time a little where a tick must pass), and completes it with a 200 upstream.
    pub fn run_request(&self, host: &mut Host, worker: usize, request: &Request) -> Result<Exchange> {
        let id = host.worker(worker)?.start_request(request)?;
        for _ in 0..100 {
            let flow = host.worker(worker)?.stream(id).map(|s| s.flow.clone());
            if flow != Some(Flow::Paused) {
                break;
            }
            if self.answer_all(host)? == 0 {
                host.advance(std::time::Duration::from_millis(50))?;
            }
        }
        host.worker(worker)?.finish(id, &crate::emulator::UpstreamResponse::ok())
    }
}
