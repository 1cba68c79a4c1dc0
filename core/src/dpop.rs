//! DPoP (RFC 9449): sender-constrained tokens. A DPoP-bound token names a key
//! (`cnf.jkt`, the key's RFC 7638 thumbprint), and every request that presents it
//! carries a fresh proof signed with that key: a copied token is useless without the
//! key, and a copied proof is refused the second time.
//!
//! Pure: the pipeline stage (`crate::pipeline::dpop`) reads the request, hands
//! [`check`] the proof, the request, the verified token's binding and the shared
//! store, and acts on the answer.
//!
//! - [`config`]: the issuer's `dpop` block and a route's override.
//! - [`proof`]: one proof, parsed and checked (the table of §4.3 checks is there).
//! - [`thumbprint`]: RFC 7638 JWK thumbprints.
//! - [`replay`]: the table of accepted proofs, exact across workers.
//! - [`nonce`]: server nonces rotated through shared data.
//!
//! The order of [`check`] is cheapest first, and nothing is written before the
//! signature verified: header count, parse (size, JWS, `typ`, `alg`, `jwk` public,
//! claims), the token bound to a key, `htm`, `htu`, `iat`, `ath`, the thumbprint
//! against `cnf.jkt`, the nonce, the key import (cached per VM by thumbprint, once
//! the thumbprint matched an authentic token), the signature, and last the replay
//! table.

pub mod config;
pub mod nonce;
pub mod proof;
pub mod replay;
pub mod thumbprint;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::hash::seeded::Seeded;
use crate::host::store::Store;
use crate::keys::jwks::Jwk;
use crate::reason::{Reason, Rejection};

pub use config::{DpopSettings, Mode, RawDpop};
use nonce::{NonceState, Nonces};
use replay::{Recorded, ReplayTable};

/// The request header a proof comes in (RFC 9449 §4.1).
pub const PROOF_HEADER: &str = "dpop";
/// The response header a server nonce goes out in (RFC 9449 §8).
pub const NONCE_HEADER: &str = "dpop-nonce";
/// The authentication scheme of a DPoP-bound token (RFC 9449 §7.1).
pub const SCHEME: &str = "DPoP ";
/// Where the verified key's thumbprint is forwarded upstream (and stripped from
/// every client request).
pub const JKT_HEADER: &str = "x-nhi-dpop-jkt";
/// Imported proof keys a VM keeps, by thumbprint; emptied when full.
pub const MAX_CACHED_KEYS: usize = 256;

/// The `DPoP` request header as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofHeader<'a> {
    Absent,
    One(&'a [u8]),
    /// More than one `DPoP` header (§4.3 item 1).
    Many,
}

/// The token's `cnf.jkt`: `None` when it is not DPoP-bound.
pub fn bound_jkt(claims: &Map<String, Value>) -> Result<Option<&str>, Rejection> {
    let Some(cnf) = claims.get("cnf") else { return Ok(None) };
    let Value::Object(cnf) = cnf else {
        return Err(Rejection::new(Reason::MalformedToken, "cnf is not a JSON object"));
    };
    match cnf.get("jkt") {
        None => Ok(None),
        Some(Value::String(jkt)) => Ok(Some(jkt)),
        Some(_) => Err(Rejection::new(Reason::MalformedToken, "cnf.jkt is not a string")),
    }
}

/// The shared state of one issuer's DPoP: its replay table and nonce.
#[derive(Debug, Clone)]
pub struct IssuerState {
    pub replay: ReplayTable,
    pub nonces: Option<Nonces>,
}

impl IssuerState {
    pub fn new(issuer: &str, settings: &DpopSettings) -> IssuerState {
        IssuerState {
            replay: ReplayTable::new(issuer, settings.max_tracked_proofs),
            nonces: settings.nonce.then(|| Nonces::new(issuer, settings.nonce_rotation_seconds)),
        }
    }

    /// Creates the shared keys (see [`replay`] and [`nonce`]): when the VM starts.
    pub fn prepare(&self, store: &dyn Store) -> Result<(), crate::host::store::StoreError> {
        self.replay.prepare(store)?;
        if let Some(nonces) = &self.nonces {
            nonces.prepare(store)?;
        }
        Ok(())
    }
}

/// What one VM keeps for DPoP between requests.
#[derive(Debug, Default)]
pub struct VmState {
    /// Proof keys already imported, by thumbprint (only keys an authentic token is
    /// bound to: see [`check`]).
    keys: RefCell<HashMap<String, Rc<Jwk>, Seeded>>,
    /// This VM's copy of each issuer's nonce (same index as the issuers).
    pub nonces: RefCell<Vec<Option<NonceState>>>,
}

impl VmState {
    pub fn new(issuers: usize) -> VmState {
        VmState { keys: RefCell::default(), nonces: RefCell::new(vec![None; issuers]) }
    }

    fn key(&self, proof: &proof::Proof<'_>) -> Result<Rc<Jwk>, Rejection> {
        if let Some(key) = self.keys.try_borrow().ok().and_then(|keys| keys.get(&proof.jkt).cloned()) {
            return Ok(key);
        }
        let key = Rc::new(proof.import_key()?);
        if let Ok(mut keys) = self.keys.try_borrow_mut() {
            if keys.len() >= MAX_CACHED_KEYS {
                keys.clear();
            }
            keys.insert(proof.jkt.clone(), Rc::clone(&key));
        }
        Ok(key)
    }
}

/// One proof to judge, for a token that verified.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub settings: &'a DpopSettings,
    pub header: ProofHeader<'a>,
    pub presented: proof::Presented<'a>,
    /// The token's `cnf.jkt`.
    pub bound_jkt: Option<&'a str>,
    /// The current nonces, when the issuer requires one.
    pub nonce: Option<&'a NonceState>,
}

/// The flood guard around a proof's signature check, as around a token's: a source
/// over its budget of failures gets no signature check (`429 too_many_failures`),
/// and a proof whose signature fails, or that is replayed, counts against its
/// source. Without it, whoever holds a stolen bound token (and any public key)
/// could buy a signature check per request, without limit.
pub trait SignatureBudget {
    /// Whether the request's source may cause a signature check now.
    fn allows(&mut self) -> bool;
    /// The proof's signature failed, or the proof was a replay.
    fn failed(&mut self);
}

/// No flood guard.
impl SignatureBudget for () {
    fn allows(&mut self) -> bool {
        true
    }

    fn failed(&mut self) {}
}

/// Judges one proof (every check of RFC 9449 §4.3 and §7.1) and records it in the
/// replay table. `Ok`: the key's thumbprint.
pub fn check<S: Store + ?Sized>(
    c: &Check<'_>,
    vm: &VmState,
    shared: &IssuerState,
    store: &S,
    budget: &mut dyn SignatureBudget,
) -> Result<String, Rejection> {
    let invalid = |detail: &str| Rejection::new(Reason::InvalidDpopProof, detail);
    let value = match c.header {
        ProofHeader::Absent => return Err(invalid("no DPoP proof came with the DPoP-bound token")),
        ProofHeader::Many => return Err(invalid("more than one DPoP header")),
        ProofHeader::One(bytes) => {
            std::str::from_utf8(bytes).map_err(|_| invalid("the DPoP header is not text"))?
        }
    };
    let proof = proof::parse(value.trim(), c.settings)?;
    let bound = c.bound_jkt.ok_or_else(|| {
        Rejection::new(Reason::DpopKeyMismatch, "the token is not bound to a DPoP key (no cnf.jkt)")
    })?;
    proof.check_request(&c.presented, c.settings)?;
    proof.check_binding(bound)?;
    if let Some(nonces) = c.nonce {
        match proof.nonce.as_deref() {
            None => return Err(Rejection::new(Reason::UseDpopNonce, "the proof carries no nonce")),
            Some(nonce) if !nonces.accepts(nonce) => {
                return Err(Rejection::new(Reason::UseDpopNonce, "the proof's nonce is not current"))
            }
            Some(_) => {}
        }
    }
    let key = vm.key(&proof)?;
    if !budget.allows() {
        return Err(Rejection::new(
            Reason::TooManyFailures,
            "too many failed signature checks from this source",
        ));
    }
    if !proof.verify(&key.key) {
        budget.failed();
        return Err(invalid("the proof's signature does not verify with its jwk"));
    }
    let until = proof.accepted_until(c.settings, c.presented.skew, c.presented.now);
    match shared.replay.record(store, &proof.jkt, &proof.jti, until, c.presented.now) {
        Ok(Recorded::Fresh) => Ok(proof.jkt),
        Ok(Recorded::Replay) => {
            budget.failed();
            Err(Rejection::new(Reason::DpopReplay, "the proof was already used"))
        }
        Ok(Recorded::Full) => Err(Rejection::new(
            Reason::DpopReplayCacheFull,
            "the replay cache cannot record the proof now; retry with a fresh proof",
        )),
        Err(err) => Err(Rejection::new(Reason::InternalError, format!("replay cache unavailable: {err}"))),
    }
}

#[cfg(test)]
mod tests;
