//! `nhi-guard explain`: what the filter would do with one request, stage by stage —
//! the route class and why, each token check and its result, the rule that admits
//! or refuses, the quota charged, the headers forwarded and the exact response.
//!
//! It runs the filter's own pipeline ([`nhi_guard_core::native`]: the same stages,
//! the same key-fetch machine, an in-memory host) and asks it for a trace
//! ([`nhi_guard_core::pipeline::trace`]); this module only sets the run up and
//! renders what the pipeline recorded. No decision is made here.
//!
//! Keys: an issuer with inline keys verifies with them. For an issuer whose keys are
//! fetched, `--jwks` gives the JWKS document; without it, the token is re-signed with
//! a throwaway key ([`resign`]) so that every other check runs, and the signature is
//! reported as not checked.
//!
//! What cannot be judged offline is said so, not guessed: a partner secret not in
//! explain's environment (a placeholder stands in, and the partner check is
//! reported as not checked), a DPoP proof's or signature's freshness against the
//! gateway's replay caches and nonces (explain's are empty), a behaviour baseline
//! the gateway has learned (explain's identities are all new), the API server's
//! TokenReview answer and the revocation feed ([`offline`]: the pipeline asks for
//! them as in the gateway and gets the answer given, or one that lets every later
//! stage run, and the explanation says which).

pub mod offline;
pub mod resign;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use nhi_guard_core::config::{Config, JwksSource};
use nhi_guard_core::keys::fetch::{Callout, Document, Stage};
use nhi_guard_core::keys::jwks;
use nhi_guard_core::native::{Exchange, NativeProxy, NativeRequest};
use nhi_guard_core::pipeline::trace::{Trace, TracedVerdict};
use nhi_guard_core::pipeline::verify::Authenticated;
use nhi_guard_core::policy::{Audience, Decision, Rule};
use nhi_guard_core::reason::{Check, Reason, Rejection};
use nhi_guard_core::token::source::Extracted;
use nhi_guard_core::verify::Verified;
use offline::{Liveness, Offline};

/// Why `explain` could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExplainError {
    /// The plugin configuration is not one the filter would start with.
    Config(String),
    /// `--jwks` names no configured issuer, or an issuer whose keys are inline.
    Jwks(String),
    /// `--liveness` or `--revocations` for a configuration that has no use for it.
    NothingToAnswer(String),
    /// The native proxy failed (the filter would not start).
    Run(String),
}

impl std::fmt::Display for ExplainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExplainError::Config(why) => write!(f, "invalid plugin configuration: {why}"),
            ExplainError::Jwks(why) => write!(f, "--jwks: {why}"),
            ExplainError::NothingToAnswer(why) => f.write_str(why),
            ExplainError::Run(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ExplainError {}

/// One request as a client would send it.
#[derive(Debug, Clone)]
pub struct ExplainRequest {
    pub method: String,
    pub path: String,
    pub host: String,
    /// The client's address (`ip` or `ip:port`); `None`: unknown to the filter.
    pub source: Option<String>,
    /// Headers besides the pseudo-headers, in order.
    pub headers: Vec<(String, String)>,
    /// The request's content (a partner signature may cover it); `None`: none.
    pub body: Option<Vec<u8>>,
}

impl ExplainRequest {
    pub fn new(method: &str, path: &str) -> Self {
        ExplainRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            host: "gateway.test".to_owned(),
            source: Some("127.0.0.1:40000".to_owned()),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// The filter, ready to explain requests: a native proxy with the configuration and
/// the keys `explain` was given. Requests explained one after the other share its
/// state (quotas, caches), as requests to one Envoy do.
pub struct Explainer {
    plugin: Value,
    config: Config,
    proxy: NativeProxy,
    /// Issuers (index) whose keys are a throwaway key: their signatures are not checked.
    throwaway: Vec<usize>,
    /// Partner secrets (variable names) explain was not given: placeholders stand in.
    missing_secrets: Vec<String>,
    /// The TokenReview answer and revocation feed given in the gateway's place.
    offline: Offline,
}

/// What stands in for an HMAC secret explain was not given: 32 zero bytes, base64.
const PLACEHOLDER_HMAC: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

impl Explainer {
    /// Starts the filter with the configuration `bytes` (as its host hands them
    /// over). `jwks` is the JWKS document served for each issuer whose keys are
    /// fetched (by issuer name); an issuer without one has no keys (`503
    /// keys_unavailable`), unless it is in `throwaway`: then its keys are that
    /// JWKS, and its signatures are reported as not checked.
    pub fn start(
        bytes: &[u8],
        jwks: &BTreeMap<String, String>,
        throwaway: &[String],
        now_ms: u64,
    ) -> Result<Explainer, ExplainError> {
        Explainer::start_with_environment(bytes, jwks, throwaway, now_ms, &BTreeMap::new())
    }

    /// [`Explainer::start`] with the partner secrets in `environment` (by variable
    /// name, as the gateway's VM gets them). A secret the configuration names and
    /// `environment` lacks is replaced by a placeholder, so that the filter starts
    /// and everything else can be explained; partner checks are then reported as
    /// not checked.
    pub fn start_with_environment(
        bytes: &[u8],
        jwks: &BTreeMap<String, String>,
        throwaway: &[String],
        now_ms: u64,
        environment: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Explainer, ExplainError> {
        Explainer::start_offline(bytes, jwks, throwaway, now_ms, environment, Offline::default())
    }

    /// [`Explainer::start_with_environment`] with the answers only the gateway gets
    /// given in its place: the API server's TokenReview answer and the revocation
    /// feed. Either not given, the pipeline gets the answer that lets every later
    /// stage run (alive; an empty list, fetched now) and the explanation says it was
    /// not checked. Given for a configuration without liveness or a feed, it is
    /// refused: it would explain nothing.
    pub fn start_offline(
        bytes: &[u8],
        jwks: &BTreeMap<String, String>,
        throwaway: &[String],
        now_ms: u64,
        environment: &BTreeMap<String, Vec<u8>>,
        offline: Offline,
    ) -> Result<Explainer, ExplainError> {
        let config = Config::from_json(bytes).map_err(|e| ExplainError::Config(e.to_string()))?;
        if offline.liveness.is_some() && !config.issuers.iter().any(|i| i.profile.liveness().is_some()) {
            return Err(ExplainError::NothingToAnswer(
                "--liveness: no issuer of the configuration has profile.liveness".into(),
            ));
        }
        if offline.revocations.is_some() && config.revocation.is_none() {
            return Err(ExplainError::NothingToAnswer(
                "--revocations: the configuration has no revocation feed".into(),
            ));
        }
        let feed = offline
            .revocations
            .as_ref()
            .map_or_else(|| offline::EMPTY_FEED.to_owned(), |f| f.document.clone());
        let plugin: Value = serde_json::from_slice(bytes).map_err(|e| ExplainError::Config(e.to_string()))?;
        let mut documents = Vec::with_capacity(config.issuers.len());
        for (name, document) in jwks {
            let issuer = config
                .issuers
                .iter()
                .find(|i| &i.name == name)
                .ok_or_else(|| ExplainError::Jwks(format!("no issuer is named {name:?}")))?;
            if let JwksSource::Inline(_) = issuer.jwks {
                return Err(ExplainError::Jwks(format!("issuer {name} has inline keys; they are used")));
            }
            jwks::parse_for(document.as_bytes(), issuer.key_use())
                .map_err(|e| ExplainError::Jwks(format!("the JWKS for issuer {name} is refused: {e}")))?;
        }
        for issuer in &config.issuers {
            let discovery_authority = match &issuer.jwks {
                JwksSource::Remote(remote) if remote.discovery.is_some() => Some(remote.authority.clone()),
                _ => None,
            };
            documents.push((issuer.issuer.clone(), discovery_authority, jwks.get(&issuer.name).cloned()));
        }
        // The key server: each issuer's discovery document (pointing at a JWKS on
        // the discovery authority, which needs no allowed_jwks_hosts) and JWKS.
        let key_server = Box::new(move |callout: &Callout| {
            // The feed given, or an empty one: a request is never decided with a list
            // explain cannot see (or refused as if the gateway had none).
            let Document::Jwks(issuer) = callout.ticket.document else { return (200, feed.clone()) };
            let Some((iss, authority, document)) = documents.get(issuer) else {
                return (404, String::new());
            };
            match (callout.ticket.stage, authority, document) {
                (Stage::Discovery, Some(authority), Some(_)) => (
                    200,
                    serde_json::json!({"issuer": iss, "jwks_uri": format!("https://{authority}/jwks")})
                        .to_string(),
                ),
                (Stage::Document { .. }, _, Some(document)) => (200, document.clone()),
                _ => (404, String::new()),
            }
        });
        let mut vm_environment = BTreeMap::new();
        let mut missing_secrets = Vec::new();
        if let Some(partners) = &config.partners {
            for (field, name) in partners.environment_variables() {
                let value = match environment.get(name) {
                    Some(value) => value.clone(),
                    None => {
                        if !missing_secrets.iter().any(|m| m == name) {
                            missing_secrets.push(name.to_owned());
                        }
                        if field.ends_with("sha256_env") {
                            "0".repeat(64).into_bytes()
                        } else {
                            PLACEHOLDER_HMAC.as_bytes().to_vec()
                        }
                    }
                };
                vm_environment.insert(name.to_owned(), value);
            }
        }
        let mut proxy = NativeProxy::start_with_environment(&config, 2, now_ms, key_server, &vm_environment)
            .map_err(|e| ExplainError::Run(e.to_string()))?;
        let answer = offline.liveness.unwrap_or(Liveness::Alive);
        proxy.answer_callouts(Box::new(move |call| offline::token_review_answer(call, answer)));
        let throwaway = config
            .issuers
            .iter()
            .enumerate()
            .filter(|(_, i)| throwaway.contains(&i.name))
            .map(|(index, _)| index)
            .collect();
        Ok(Explainer { plugin, config, proxy, throwaway, missing_secrets, offline })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs `request` through the pipeline on `worker` (0 or 1).
    pub fn explain(&mut self, worker: usize, request: &ExplainRequest) -> Result<Explanation, ExplainError> {
        let mut sent = NativeRequest::new(&request.method, &request.path);
        sent.authority = request.host.clone();
        sent.source = request.source.as_ref().map(|s| with_port(s));
        sent.trace = true;
        sent.body.clone_from(&request.body);
        for (name, value) in &request.headers {
            sent.headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        }
        let exchange = self.proxy.send(worker, &sent).map_err(|e| ExplainError::Run(e.to_string()))?;
        let credential = sent.headers.iter().any(|(n, _)| n == &self.config.token.header);
        Ok(Explanation { request: request.clone(), exchange, credential })
    }

    /// The explanation as text, one stage per block.
    pub fn render(&self, explanation: &Explanation) -> String {
        Render { explainer: self, e: explanation }.text()
    }
}

/// Envoy's `source.address` is `ip:port`; an address given without a port gets 0.
fn with_port(source: &str) -> String {
    let has_port = match source.strip_prefix('[') {
        Some(rest) => rest.contains("]:"),
        None => source.matches(':').count() == 1,
    };
    if has_port {
        source.to_owned()
    } else if source.contains(':') {
        format!("[{source}]:0")
    } else {
        format!("{source}:0")
    }
}

/// The bearer token in `request`'s credential header, as the filter reads it.
pub fn token_in(config: &Config, request: &ExplainRequest) -> Option<String> {
    let value = request.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(&config.token.header))?;
    match config.token.extract(Some(value.1.as_bytes())) {
        Extracted::Token(token) => Some(token.to_owned()),
        _ => None,
    }
}

/// A request and the keys to explain it with.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub request: ExplainRequest,
    /// JWKS documents to serve, by issuer name.
    pub jwks: BTreeMap<String, String>,
    /// Issuers whose keys are a throwaway key (their signatures are not checked).
    pub throwaway: Vec<String>,
}

/// Keys for `request`: the JWKS documents given (by issuer name) and, when the
/// request's token is from an issuer whose keys are fetched and were not given, a
/// throwaway key that signs the token again ([`resign`]): every check then runs but
/// the signature's, which the explanation says.
pub fn prepare(
    config: &Config,
    mut request: ExplainRequest,
    mut jwks: BTreeMap<String, String>,
) -> Result<Prepared, ExplainError> {
    let mut throwaway = Vec::new();
    let token = token_in(config, &request);
    let issuer = token
        .as_deref()
        .and_then(|t| resign::peek(t).iss)
        .and_then(|iss| config.issuer_by_iss(&iss).map(|(_, issuer)| issuer));
    if let (Some(raw), Some(issuer)) = (token, issuer) {
        if matches!(issuer.jwks, JwksSource::Remote(_)) && !jwks.contains_key(&issuer.name) {
            if let Some(resigned) = resign::resign(&raw, issuer.key_use()).map_err(ExplainError::Run)? {
                for (name, value) in request.headers.iter_mut() {
                    if name.eq_ignore_ascii_case(&config.token.header) {
                        *value = format!("{}{}", config.token.prefix, resigned.token);
                    }
                }
                jwks.insert(issuer.name.clone(), resigned.jwks);
                throwaway.push(issuer.name.clone());
            }
        }
    }
    Ok(Prepared { request, jwks, throwaway })
}

/// What came of one explained request.
#[derive(Debug)]
pub struct Explanation {
    pub request: ExplainRequest,
    /// The pipeline's result: the host as it left it, the record and the trace.
    pub exchange: Exchange,
    /// Whether the request carried the credential header at all.
    credential: bool,
}

impl Explanation {
    /// The status the client gets (200: forwarded to the upstream, which answers).
    pub fn status(&self) -> u16 {
        self.exchange.status()
    }

    pub fn forwarded(&self) -> bool {
        self.exchange.forwarded()
    }

    /// The reason code of a refusal.
    pub fn reason(&self) -> Option<String> {
        let body: Value = serde_json::from_str(&self.exchange.host.reply.as_ref()?.body).ok()?;
        body.get("reason")?.as_str().map(str::to_owned)
    }

    /// A request header as the upstream gets it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.exchange.host.request_header(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// A header of the response the client gets from the filter (the refusal's, or
    /// the ones added to the upstream's response).
    pub fn response_header(&self, name: &str) -> Option<String> {
        let headers = match &self.exchange.host.reply {
            Some(reply) => &reply.headers,
            None => &self.exchange.host.response_headers,
        };
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }

    fn verdict(&self) -> Option<&TracedVerdict> {
        self.exchange.trace().and_then(|t| t.verdict.as_ref())
    }

    fn verification(&self) -> Option<&Result<Authenticated, Rejection>> {
        self.exchange.trace().and_then(|t| t.verification.as_ref())
    }

    fn trace(&self) -> Option<&Trace> {
        self.exchange.trace()
    }
}

/// Width of the stage column.
const STAGE: usize = 10;
/// Width of the check column.
const CHECK: usize = 12;

struct Render<'a> {
    explainer: &'a Explainer,
    e: &'a Explanation,
}

impl Render<'_> {
    fn text(&self) -> String {
        let mut out = String::new();
        let r = &self.e.request;
        let source = r.source.as_deref().unwrap_or("unknown");
        line(&mut out, "request", &format!("{} {} (host {}, from {source})", r.method, r.path, r.host));
        self.route(&mut out);
        self.verify(&mut out);
        self.liveness(&mut out);
        self.feed(&mut out);
        self.dpop(&mut out);
        self.policy(&mut out);
        self.behaviour(&mut out);
        self.quota(&mut out);
        self.forward(&mut out);
        self.response(&mut out);
        out
    }

    fn config(&self) -> &Config {
        &self.explainer.config
    }

    fn raw_route(&self, name: &str) -> Option<(usize, &Value)> {
        let routes = self.explainer.plugin.get("routes")?.as_array()?;
        routes.iter().enumerate().find(|(_, r)| r.get("name").and_then(Value::as_str) == Some(name))
    }

    fn route(&self, out: &mut String) {
        let routes = &self.config().routes;
        let text = match self.e.verdict() {
            Some(v) if v.rule == Rule::AmbiguousPath => {
                "ambiguous: the path selects another route once normalized".to_owned()
            }
            Some(TracedVerdict { route: Some(name), .. }) => {
                let route = routes.routes().iter().find(|r| &r.name == name);
                let audience = route.map_or("?", |r| r.audience.as_str());
                match self.raw_route(name) {
                    Some((i, raw)) => format!(
                        "{name} (routes[{i}], match {}): audience {audience}",
                        raw.get("match").map(Value::to_string).unwrap_or_default()
                    ),
                    None => format!("{name}: audience {audience}"),
                }
            }
            _ => format!("no route matches: default_audience {}", routes.default_audience.as_str()),
        };
        line(out, "route", &text);
    }

    fn issuer_name(&self, index: usize) -> &str {
        self.config().issuers.get(index).map_or("?", |i| i.name.as_str())
    }

    fn verify(&self, out: &mut String) {
        if let Some(kind) = self.e.trace().and_then(|t| t.partner) {
            return self.partner(out, kind);
        }
        let header = &self.config().token.header;
        let Some(result) = self.e.verification() else {
            let text = if self.e.credential {
                format!("{header} holds no bearer token of a configured issuer: not a machine credential")
            } else {
                format!("no credential ({header} absent)")
            };
            line(out, "token", &text);
            return;
        };
        let scheme = if self.e.exchange.request.dpop.scheme { "DPoP-scheme" } else { "bearer" };
        line(out, "token", &format!("{scheme} token in {header}"));
        let (failed, rejection, issuer) = match result {
            Ok(authenticated) => (None, None, authenticated.token().map(|v| v.issuer)),
            Err(rejection) => (rejection.check, Some(rejection), rejection.issuer),
        };
        let throwaway = issuer.is_some_and(|i| self.explainer.throwaway.contains(&i));
        if failed == Some(Check::FloodGuard) {
            check_line(out, "verify", Check::FloodGuard.name(), "FAILED", &describe_rejection(rejection));
            return;
        }
        let failed_at = failed.and_then(|c| Check::ORDER.iter().position(|o| *o == c));
        let mut stage = "verify";
        for (position, check) in Check::ORDER.iter().enumerate() {
            let (result, detail) = match failed_at {
                Some(at) if position == at => ("FAILED", describe_rejection(rejection)),
                Some(at) if position > at => ("-", "not reached".to_owned()),
                _ => self.passed(
                    *check,
                    result.as_ref().ok().and_then(Authenticated::token),
                    issuer,
                    throwaway,
                ),
            };
            check_line(out, stage, check.name(), result, &detail);
            stage = "";
        }
        if failed.is_none() {
            if let Some(rejection) = rejection {
                // A refusal outside the token checks (the host failed).
                check_line(out, "", "", "FAILED", &describe_rejection(Some(rejection)));
            }
        }
    }

    /// A check the token passed, and what it established.
    fn passed(
        &self,
        check: Check,
        verified: Option<&Verified>,
        issuer: Option<usize>,
        throwaway: bool,
    ) -> (&'static str, String) {
        let issuer_name = issuer.map(|i| self.issuer_name(i)).unwrap_or("?");
        let detail = match (check, verified) {
            (Check::Algorithm, Some(v)) => format!("{} accepted", v.alg.name()),
            (Check::Issuer, _) => format!("issuer {issuer_name}"),
            (Check::Key, Some(v)) if throwaway => {
                format!(
                    "kid {:?}: a throwaway key (no --jwks for issuer {issuer_name})",
                    v.kid.as_deref().unwrap_or("")
                )
            }
            (Check::Key, Some(v)) => format!("kid {:?}", v.kid.as_deref().unwrap_or("")),
            (Check::Claims, Some(v)) => format!("exp {}, aud accepted, sub {:?}", v.expires_at, v.subject),
            (Check::Profile, Some(v)) => format!("identity {}", v.identity),
            (Check::Signature, _) if throwaway => {
                return (
                    "SKIPPED",
                    format!(
                        "not checked: no --jwks for issuer {issuer_name} (the token was re-signed with a \
                         throwaway key so that every other check runs)"
                    ),
                )
            }
            _ => String::new(),
        };
        ("ok", detail)
    }

    /// A partner's signature or API key, judged by the partner stage.
    fn partner(&self, out: &mut String, kind: &str) {
        line(out, "partner", &format!("partner {kind}"));
        let partners = self.config().partners.as_ref();
        match self.e.verification() {
            Some(Ok(Authenticated::Partner(key))) => {
                let identity = partners.and_then(|p| p.partner(*key)).map_or("?", |p| p.identity.as_str());
                let key_id = partners.and_then(|p| p.key_id(*key)).unwrap_or("?");
                check_line(out, "", kind, "ok", &format!("key {key_id:?}: identity {identity}"));
            }
            Some(Err(rejection)) => check_line(out, "", kind, "FAILED", &describe_rejection(Some(rejection))),
            _ => check_line(out, "", kind, "-", "not judged"),
        }
        if !self.explainer.missing_secrets.is_empty() {
            line(
                out,
                "",
                &format!(
                    "NOT CHECKED offline: {} not in explain's environment (the gateway reads its own); \
                     a placeholder stood in, so the {kind}'s result above is not the gateway's. \
                     Export the variable(s) to check it",
                    self.explainer.missing_secrets.join(", ")
                ),
            );
        }
        if kind == "signature" {
            line(
                out,
                "",
                "offline: created/expires are judged against explain's clock (--now) and the nonce \
                 against an empty replay cache; the gateway refuses a nonce it has already seen",
            );
            if self.e.request.body.is_none()
                && self.e.request.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-digest"))
            {
                line(out, "", "the signature covers a body and explain was given none (--body FILE)");
            }
        }
    }

    /// The liveness stage (TokenReview), where it judged the token.
    fn liveness(&self, out: &mut String) {
        let Some(judged) = self.e.trace().and_then(|t| t.liveness.as_ref()) else { return };
        let text = match (judged, self.explainer.offline.liveness) {
            (Ok(()), None) => "NOT CHECKED offline: the TokenReview happens in the gateway (it asks the \
                               Kubernetes API server whether the token still authenticates); explained as if \
                               the answer were alive (--liveness gone explains the other answer)"
                .to_owned(),
            (Ok(()), Some(given)) => format!(
                "{} (--liveness {}): the answer given; the gateway asks the API server (TokenReview)",
                given.as_str(),
                given.as_str()
            ),
            (Err(rejection), given) => {
                let given = given.map(|g| format!(" (--liveness {})", g.as_str())).unwrap_or_default();
                format!("FAILED {}{given}", describe_rejection(Some(rejection)))
            }
        };
        line(out, "liveness", &text);
    }

    /// The revocation feed, where one is configured and a credential verified.
    fn feed(&self, out: &mut String) {
        if self.config().revocation.is_none() || !matches!(self.e.verification(), Some(Ok(_))) {
            return;
        }
        let text = match &self.explainer.offline.revocations {
            Some(feed) => format!("{} applied: {}", feed.name, feed.summary()),
            None => "NOT CHECKED offline: revocation feed not checked (the gateway fetches its own); \
                     explained as if the list were empty and fresh (--revocations FILE applies a feed \
                     document)"
                .to_owned(),
        };
        line(out, "feed", &text);
    }

    /// The DPoP stage, where DPoP is in play.
    fn dpop(&self, out: &mut String) {
        let scheme = self.e.exchange.request.dpop.scheme;
        let judged = self.e.trace().and_then(|t| t.dpop.as_ref());
        let in_use = self.config().dpop_in_use();
        match judged {
            None if scheme || in_use => line(out, "dpop", "not reached (no verified token)"),
            None => {}
            Some(Ok(None)) if in_use => check_line(
                out,
                "dpop",
                "proof",
                "-",
                "none: a bearer token no DPoP rule requires a proof for",
            ),
            Some(Ok(None)) => {}
            Some(Ok(Some(jkt))) => {
                check_line(out, "dpop", "proof", "ok", &format!("bound to key thumbprint {jkt}"))
            }
            Some(Err(rejection)) => {
                check_line(out, "dpop", "proof", "FAILED", &describe_rejection(Some(rejection)))
            }
        }
        if !scheme {
            return;
        }
        if let Some(Err(rejection)) = judged {
            if rejection.reason == Reason::UseDpopNonce {
                line(
                    out,
                    "",
                    "NOT EXPLAINABLE offline: the gateway requires a nonce it issued (dpop.nonce); \
                     explain cannot know the gateway's nonces, only its own",
                );
                return;
            }
        }
        line(
            out,
            "",
            "offline: the proof's iat is judged against explain's clock (--now), its jti against an \
             empty replay cache; the gateway refuses a proof it has already seen",
        );
    }

    /// The behaviour stage, where anomalies are detected.
    fn behaviour(&self, out: &mut String) {
        let detecting = self.config().behaviour.as_ref().is_some_and(|b| b.detect);
        let Some(traced) = self.e.trace().and_then(|t| t.behaviour.as_ref()) else {
            if detecting {
                line(out, "behaviour", "not reached (only an allowed machine request is counted)");
            }
            return;
        };
        let flagged = self.e.exchange.request.observed.anomalies;
        let seen = if flagged.is_empty() {
            "no anomaly".to_owned()
        } else {
            format!("flagged {}", flagged.joined())
        };
        let text = match &traced.refused {
            Some(denial) => format!("{seen}: refused {} {}", denial.status, denial.reason),
            None => format!("{seen}: passes"),
        };
        line(out, "behaviour", &text);
        line(
            out,
            "",
            "offline: explain has none of the gateway's learned baselines; every identity is new to it",
        );
    }

    fn policy(&self, out: &mut String) {
        let Some(verdict) = self.e.verdict() else {
            line(out, "policy", "not reached (the host failed)");
            return;
        };
        let route = verdict.route.as_deref().and_then(|name| self.raw_route(name));
        let at = route.map_or_else(|| "(no route)".to_owned(), |(i, _)| format!("routes[{i}]"));
        let identity = self.e.exchange.request.observed.identity.as_deref().unwrap_or("-");
        let audience = verdict
            .route
            .as_deref()
            .and_then(|n| self.config().routes.routes().iter().find(|r| r.name == n))
            .map_or(self.config().routes.default_audience, |r| r.audience);
        let by_behaviour =
            self.e.trace().and_then(|t| t.behaviour.as_ref()).is_some_and(|b| b.refused.is_some());
        let verdict_text = match &verdict.decision {
            Decision::Deny(_) if by_behaviour => "allow (then refused by the behaviour stage)".to_owned(),
            Decision::Allow => "allow".to_owned(),
            Decision::Deny(denial) => format!("deny {} {}", denial.status, denial.reason),
        };
        let why = match verdict.rule {
            Rule::Allow(index) => {
                let rule = route
                    .and_then(|(_, r)| r.get("allow")?.get(index).map(Value::to_string))
                    .unwrap_or_default();
                format!("{at}.allow[{index}] {rule} admits {identity}")
            }
            Rule::NoAllowList => format!("{at} has no allow list: every verified identity is admitted"),
            Rule::NoAllowRule => {
                let rules = route.and_then(|(_, r)| r.get("allow").map(Value::to_string)).unwrap_or_default();
                format!("no rule of {at}.allow {rules} admits {identity}")
            }
            Rule::DenyList { global: true } => {
                "the global deny list (deny) names the token or its subject".into()
            }
            Rule::DenyList { global: false } => format!("{at}.deny names the token or its subject"),
            Rule::RevocationFeed => "the revocation feed (revocation) names the token or its identity".into(),
            Rule::RouteSources => format!(
                "{at}.source_cidrs does not contain {}",
                self.e.request.source.as_deref().unwrap_or("an unknown source")
            ),
            Rule::ClientCertificate => {
                "the client-certificate rules (mtls, require_client_certificate)".into()
            }
            Rule::Quota => "the identity's quota is used up".into(),
            Rule::RequireSignature => {
                format!("{at}.require_signature: only a partner's verified signature passes")
            }
            Rule::HostFailure => "a host call the decision depends on failed".into(),
            Rule::AmbiguousPath => "the path is ambiguous once normalized".into(),
            Rule::Audience if self.e.trace().is_some_and(|t| matches!(t.liveness, Some(Err(_)))) => {
                format!("audience {}: a token the liveness check refuses is refused", audience.as_str())
            }
            Rule::Audience if self.e.trace().is_some_and(|t| matches!(t.dpop, Some(Err(_)))) => {
                format!("audience {}: a token that fails its DPoP check is refused", audience.as_str())
            }
            Rule::Audience => match (audience, self.e.verification(), &verdict.decision) {
                (Audience::Machine, None, _) => {
                    "audience machine: a verified machine identity is required".into()
                }
                (Audience::Human, Some(_), Decision::Deny(_)) => {
                    "audience human: machine credentials are refused".into()
                }
                (_, Some(Err(_)), Decision::Deny(_)) => {
                    format!("audience {}: a machine token that does not verify is refused", audience.as_str())
                }
                (a, _, _) => {
                    format!("audience {}: a request without a machine credential passes", a.as_str())
                }
            },
        };
        let shadow = if verdict.shadow { " (shadow mode: not enforced)" } else { "" };
        line(out, "policy", &format!("{verdict_text}{shadow}: {why}"));
    }

    fn quota(&self, out: &mut String) {
        let text = match (&self.e.exchange.request.observed.quota, &self.config().quotas) {
            (_, None) => "no quotas configured".to_owned(),
            (None, Some(_)) => "not charged".to_owned(),
            (Some(note), Some(quotas)) => {
                let limits = quotas
                    .policies()
                    .find(|p| p.name() == note.policy)
                    .map(|p| format!(" ({} requests per {} s)", p.requests(), p.per_seconds()))
                    .unwrap_or_default();
                let state =
                    if note.allowed { format!("{} left", note.remaining) } else { "used up".to_owned() };
                format!("policy {}{limits}: {state}", note.policy)
            }
        };
        line(out, "quota", &text);
    }

    fn forward(&self, out: &mut String) {
        if !self.e.forwarded() {
            line(out, "forward", "nothing: the request is answered by the filter");
            return;
        }
        let sent: Vec<(String, String)> =
            self.e.request.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect();
        let now: Vec<(String, String)> = self
            .e
            .exchange
            .host
            .headers
            .iter()
            .filter(|(n, _)| !n.starts_with(b":"))
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let mut changes = Vec::new();
        for (name, value) in &now {
            if !sent.iter().any(|(n, v)| n == name && v == value) {
                changes.push(format!("{name}: {value}"));
            }
        }
        for (name, _) in &sent {
            if !now.iter().any(|(n, _)| n == name)
                && !changes.iter().any(|c| c.starts_with(&format!("{name}:")))
            {
                changes.push(format!("{name} removed"));
            }
        }
        let mut stage = "forward";
        if changes.is_empty() {
            line(out, stage, "unchanged");
        }
        for change in changes {
            line(out, stage, &change);
            stage = "";
        }
    }

    fn response(&self, out: &mut String) {
        let host = &self.e.exchange.host;
        match &host.reply {
            Some(reply) => {
                line(out, "response", &format!("{} {}", reply.status, self.e.reason().unwrap_or_default()));
                for (name, value) in &reply.headers {
                    line(out, "", &format!("{name}: {value}"));
                }
                line(out, "", &reply.body);
            }
            None if self.e.forwarded() => {
                line(out, "response", "forwarded: the upstream answers");
                for (name, value) in &host.response_headers {
                    line(out, "", &format!("{name}: {value}"));
                }
            }
            None => line(out, "response", "none: the request stays paused (the reply could not be sent)"),
        }
    }
}

fn describe_rejection(rejection: Option<&Rejection>) -> String {
    rejection.map_or_else(String::new, |r| format!("{}: {}", r.reason, r.detail))
}

fn line(out: &mut String, stage: &str, text: &str) {
    let _ = writeln!(out, "{stage:<STAGE$}{text}");
}

fn check_line(out: &mut String, stage: &str, check: &str, result: &str, detail: &str) {
    let text = format!("{check:<CHECK$}{result:<8}{detail}");
    line(out, stage, text.trim_end());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_a_port_when_it_has_none() {
        assert_eq!(with_port("10.0.0.7"), "10.0.0.7:0");
        assert_eq!(with_port("10.0.0.7:4242"), "10.0.0.7:4242");
        assert_eq!(with_port("2001:db8::1"), "[2001:db8::1]:0");
        assert_eq!(with_port("[2001:db8::1]:443"), "[2001:db8::1]:443");
    }
}
