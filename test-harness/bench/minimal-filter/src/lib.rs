//! The reference beside nhi-guard in `make bench`: a proxy-wasm filter that does the
//! least a JWT filter can on a reused token — one header read, a per-worker cache hit,
//! one clock read for `exp`, one header set — so that a reader sees what the V8
//! boundary itself costs next to what nhi-guard adds (issue 21's "host's floor").
//!
//! A token seen for the first time is verified (RS256 only, RustCrypto's `rsa`: the
//! first request of each token pays for it, then it is a cache hit); iss, aud, exp
//! and a `sub` prefix are checked as the native stack's RBAC does. Anything else is
//! refused with 401 or 403. It has no quota, no metrics, no route classes and no
//! header stripping: it is a floor, not a product.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier as _;
use rsa::{BigUint, RsaPublicKey};
use serde_json::Value;
use sha2::Sha256;

/// Tokens a worker remembers; the cache is emptied when full (the bench reuses one).
const CACHE_ENTRIES: usize = 10_000;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

/// `{"issuer": .., "audience": .., "subject_prefix": .., "jwks": {"keys": [..]}}`.
struct Config {
    issuer: String,
    audience: String,
    subject_prefix: String,
    /// The RSA keys of the JWKS, by `kid`.
    keys: HashMap<String, RsaPublicKey>,
}

impl Config {
    fn parse(bytes: &[u8]) -> Option<Config> {
        let json: Value = serde_json::from_slice(bytes).ok()?;
        let text = |name: &str| json.get(name).and_then(Value::as_str).map(str::to_owned);
        let mut keys = HashMap::new();
        for key in json.pointer("/jwks/keys")?.as_array()? {
            if key.get("kty").and_then(Value::as_str) != Some("RSA") {
                continue;
            }
            let part = |name: &str| {
                key.get(name).and_then(Value::as_str).and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            };
            let (Some(kid), Some(n), Some(e)) =
                (key.get("kid").and_then(Value::as_str), part("n"), part("e"))
            else {
                continue;
            };
            let public = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e)).ok()?;
            keys.insert(kid.to_owned(), public);
        }
        Some(Config {
            issuer: text("issuer")?,
            audience: text("audience")?,
            subject_prefix: text("subject_prefix")?,
            keys,
        })
    }

    /// The token's `sub` and `exp` if it is an RS256 JWT signed by one of the keys,
    /// for this issuer and audience.
    fn verify(&self, token: &str) -> Option<(String, u64)> {
        let (signed, signature) = token.rsplit_once('.')?;
        let (header, payload) = signed.split_once('.')?;
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return None;
        }
        let key = self.keys.get(header.get("kid").and_then(Value::as_str)?)?;
        let signature = Signature::try_from(URL_SAFE_NO_PAD.decode(signature).ok()?.as_slice()).ok()?;
        VerifyingKey::<Sha256>::new(key.clone()).verify(signed.as_bytes(), &signature).ok()?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return None;
        }
        let audience_ok = match claims.get("aud")? {
            Value::String(aud) => *aud == self.audience,
            Value::Array(auds) => auds.iter().any(|aud| aud.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !audience_ok {
            return None;
        }
        Some((claims.get("sub")?.as_str()?.to_owned(), claims.get("exp")?.as_u64()?))
    }
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.config = self.get_plugin_configuration().and_then(|bytes| Config::parse(&bytes)).map(Rc::new);
        self.config.is_some()
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Filter { config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

thread_local! {
    /// Verified tokens of this worker: token → (`sub`, `exp`).
    static CACHE: RefCell<HashMap<String, (Rc<str>, u64)>> = RefCell::new(HashMap::new());
}

struct Filter {
    config: Rc<Config>,
}

impl Context for Filter {}

impl Filter {
    fn refuse(&self, status: u32) -> Action {
        self.send_http_response(status, vec![], None);
        Action::Pause
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(token) = self
            .get_http_request_header_bytes("authorization")
            .and_then(|value| String::from_utf8(value).ok())
            .and_then(|value| value.strip_prefix("Bearer ").map(str::to_owned))
        else {
            return self.refuse(401);
        };
        let cached = CACHE.with(|cache| cache.borrow().get(&token).cloned());
        let (sub, exp) = match cached {
            Some(hit) => hit,
            None => {
                let Some((sub, exp)) = self.config.verify(&token) else { return self.refuse(401) };
                let entry = (Rc::<str>::from(sub), exp);
                CACHE.with(|cache| {
                    let mut cache = cache.borrow_mut();
                    if cache.len() >= CACHE_ENTRIES {
                        cache.clear();
                    }
                    cache.insert(token, entry.clone());
                });
                entry
            }
        };
        let now = self.get_current_time().duration_since(UNIX_EPOCH).map_or(u64::MAX, |d| d.as_secs());
        if now >= exp {
            return self.refuse(401);
        }
        if !sub.starts_with(self.config.subject_prefix.as_str()) {
            return self.refuse(403);
        }
        self.set_http_request_header("x-nhi-identity", Some(&sub));
        Action::Continue
    }
}
