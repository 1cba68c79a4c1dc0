//! The partner policy applied to one request: which signature counts, whether it
//! is fresh, covers enough and verifies; whether an API key is one of ours. Every
//! refusal is a [`Rejection`] with its reason code; a signature's `keyid` travels
//! in it (as [`SeenToken::kid`]) for the decision log, never in its text.
//!
//! The cheap checks come first and the crypto last, behind the flood guard, so an
//! unauthenticated request costs at most one signature check and creates no state.

use crate::host::header_map::HeaderMap;
use crate::reason::{Reason, Rejection, SeenToken};

use super::digest::Expected;
use super::replay::Fingerprint;
use super::signature::{self, Candidate, SignedRequest};
use super::{api_key, KeyMaterial, Keyring, Method, PartnerKey, Partners, SignaturePolicy};

/// Longest accepted `nonce`.
pub const MAX_NONCE_BYTES: usize = 256;

/// A signature that verified; its body (if it covers one) and its nonce are still
/// to be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub key: PartnerKey,
    /// The body must match this `Content-Digest` once it has arrived.
    pub digest: Option<Expected>,
    /// The nonce, and until when (Unix seconds) it must be remembered.
    pub nonce: Option<(Fingerprint, u64)>,
    /// The largest body the partner may send.
    pub max_body_bytes: u64,
}

/// The signature headers of a request, each field's lines joined (RFC 8941 §4.2).
pub fn joined(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let mut values = headers.values(name).peekable();
    values.peek()?;
    Some(values.collect::<Vec<_>>().join(&b", "[..]))
}

/// Checks the request's RFC 9421 signature. `has_body`: the request has content
/// (its headers did not end the stream). `crypto_allowed` is asked right before
/// the signature check (the flood guard).
pub fn signature(
    partners: &Partners,
    keyring: &Keyring,
    headers: &HeaderMap,
    has_body: bool,
    now: i64,
    crypto_allowed: &mut dyn FnMut() -> bool,
) -> Result<Signed, Rejection> {
    let refuse = |reason: Reason, detail: &str| Rejection::new(reason, detail);
    let (Some(input), Some(value)) = (joined(headers, "signature-input"), joined(headers, "signature"))
    else {
        return Err(refuse(Reason::MalformedSignature, "Signature and Signature-Input come together"));
    };
    let candidates =
        signature::parse(&input, &value).map_err(|why| refuse(Reason::MalformedSignature, &why.0))?;
    let (candidate, partner_index, key_index) = select(partners, &candidates)?;
    let partner =
        partners.clients.get(partner_index).ok_or_else(|| refuse(Reason::UnknownKey, "no such key"))?;
    let key = partner.keys.get(key_index).ok_or_else(|| refuse(Reason::UnknownKey, "no such key"))?;
    let seen = SeenToken { kid: Some(key.id.clone()), ours: Some(true) };
    let refuse = |reason: Reason, detail: &str| Rejection::new(reason, detail).seen(seen.clone());
    if let Err(why) = key.window.check(now) {
        return Err(refuse(Reason::KeyInactive, &format!("the signature's key {why}")));
    }
    let params = &candidate.params;
    if params.alg.as_deref().is_some_and(|alg| alg != key.material.alg()) {
        return Err(refuse(Reason::DisallowedAlg, "the signature's alg is not its key's algorithm"));
    }
    let request = signed_request(headers);
    let has_query = request.path.contains(&b'?');
    if let Some(missing) = missing_component(&partner.policy, candidate, has_query, has_body) {
        return Err(refuse(Reason::MissingComponent, &format!("the signature must cover {missing}")));
    }
    let policy = &partner.policy;
    let skew = i64::try_from(policy.clock_skew_seconds).unwrap_or(i64::MAX);
    let max_age = i64::try_from(policy.max_age_seconds).unwrap_or(i64::MAX);
    let Some(created) = params.created else {
        return Err(refuse(Reason::MalformedSignature, "the signature has no `created` parameter"));
    };
    if created > now.saturating_add(skew) {
        return Err(refuse(Reason::SignatureNotYetValid, "the signature was created in the future"));
    }
    if created.saturating_add(max_age).saturating_add(skew) < now {
        return Err(refuse(
            Reason::SignatureExpired,
            "the signature is older than the partner's max_age_seconds",
        ));
    }
    if params.expires.is_some_and(|expires| expires.saturating_add(skew) < now) {
        return Err(refuse(Reason::SignatureExpired, "the signature has expired"));
    }
    match &params.nonce {
        None if policy.require_nonce => {
            return Err(refuse(Reason::MissingNonce, "the signature has no `nonce` parameter"));
        }
        Some(nonce) if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES => {
            return Err(refuse(Reason::MalformedSignature, "the nonce is empty or too long"));
        }
        _ => {}
    }
    let base = signature::signature_base(&request, candidate)
        .map_err(|why| refuse(Reason::MalformedSignature, &why.0))?;
    if !crypto_allowed() {
        return Err(refuse(Reason::TooManyFailures, "too many failed signature checks from this source"));
    }
    let verified = match &key.material {
        KeyMaterial::HmacSha256 { .. } => keyring.hmac(partner_index, key_index).is_some_and(|secret| {
            signature::verify_hmac_sha256(secret, base.as_bytes(), &candidate.signature)
        }),
        KeyMaterial::Ed25519(public) => {
            signature::verify_ed25519(public, base.as_bytes(), &candidate.signature)
        }
    };
    if !verified {
        return Err(refuse(Reason::BadSignature, "the signature does not verify"));
    }
    // Authentic from here on.
    let digest = if candidate.covers("content-digest") {
        let value = joined(headers, "content-digest").unwrap_or_default();
        let expected = Expected::parse(&value).map_err(|e| refuse(Reason::DigestMismatch, &e.to_string()))?;
        if !has_body {
            expected.check(b"").map_err(|e| refuse(Reason::DigestMismatch, &e.to_string()))?;
            None
        } else {
            Some(expected)
        }
    } else {
        None
    };
    let nonce = params.nonce.as_ref().map(|nonce| {
        let lifetime = created.saturating_add(max_age);
        let until =
            params.expires.map_or(lifetime, |e| e.min(lifetime)).saturating_add(skew).saturating_add(1);
        (Fingerprint::of(&partner.name, nonce), u64::try_from(until).unwrap_or_default())
    });
    Ok(Signed {
        key: PartnerKey { partner: partner_index, key: key_index, method: Method::Signature },
        digest,
        nonce,
        max_body_bytes: policy.max_body_bytes,
    })
}

/// The one signature whose `keyid` names a configured key (and whose label and
/// tag its partner's policy accepts).
fn select<'c>(
    partners: &Partners,
    candidates: &'c [Candidate],
) -> Result<(&'c Candidate, usize, usize), Rejection> {
    let mut chosen = None;
    let mut keyid_seen = None;
    for candidate in candidates {
        let Some(keyid) = candidate.params.keyid.as_deref() else { continue };
        keyid_seen.get_or_insert(keyid);
        let Some((p, k)) = partners.signing_key(keyid) else { continue };
        let policy = partners.clients.get(p).map(|partner| &partner.policy);
        let label_ok = policy.and_then(|p| p.label.as_deref()).is_none_or(|label| label == candidate.label);
        let tag_ok = policy
            .and_then(|p| p.tag.as_deref())
            .is_none_or(|tag| candidate.params.tag.as_deref() == Some(tag));
        if !(label_ok && tag_ok) {
            continue;
        }
        if chosen.is_some() {
            return Err(Rejection::new(
                Reason::MalformedSignature,
                "more than one signature by a configured key",
            ));
        }
        chosen = Some((candidate, p, k));
    }
    chosen.ok_or_else(|| {
        let rejection = match keyid_seen {
            Some(_) => Rejection::new(
                Reason::UnknownKey,
                "the signature's keyid names no configured key (or its label or tag is not the expected one)",
            ),
            None => Rejection::new(Reason::MalformedSignature, "the signature has no `keyid` parameter"),
        };
        rejection.seen(SeenToken { kid: keyid_seen.map(str::to_owned), ours: Some(false) })
    })
}

/// The first required component the signature does not cover: the policy's list,
/// `@query` when there is a query, `content-digest` when there is a body.
fn missing_component(
    policy: &SignaturePolicy,
    candidate: &Candidate,
    has_query: bool,
    has_body: bool,
) -> Option<String> {
    let covered = |name: &str| match name {
        "@authority" => candidate.covers("@authority") || candidate.covers("@target-uri"),
        "@path" | "@query" => {
            candidate.covers(name) || candidate.covers("@target-uri") || candidate.covers("@request-target")
        }
        "@scheme" => candidate.covers("@scheme") || candidate.covers("@target-uri"),
        other => candidate.covers(other),
    };
    let dynamic = has_query.then_some("@query").into_iter().chain(has_body.then_some("content-digest"));
    policy.components.iter().map(String::as_str).chain(dynamic).find(|c| !covered(c)).map(str::to_owned)
}

/// The components a signature must cover, for the `Accept-Signature` hint.
pub fn required_components(policy: &SignaturePolicy, has_query: bool, has_body: bool) -> Vec<&str> {
    let mut out: Vec<&str> = policy.components.iter().map(String::as_str).collect();
    if has_query && !out.contains(&"@query") {
        out.push("@query");
    }
    if has_body && !out.contains(&"content-digest") {
        out.push("content-digest");
    }
    out
}

/// `Accept-Signature` (RFC 9421 §5.1): the label and components a signature must
/// have. Parameters the signer generates (`created`, `nonce`) are not requested.
pub fn accept_signature(policy: &SignaturePolicy, has_query: bool, has_body: bool) -> String {
    let components: Vec<String> =
        required_components(policy, has_query, has_body).iter().map(|c| format!("\"{c}\"")).collect();
    let mut value = format!("{}=({})", policy.label.as_deref().unwrap_or("sig1"), components.join(" "));
    if let Some(tag) = &policy.tag {
        value.push_str(&format!(";tag=\"{tag}\""));
    }
    value
}

/// The request as RFC 9421 derives components from it.
pub fn signed_request(headers: &HeaderMap) -> SignedRequest<'_> {
    SignedRequest {
        method: headers.get(":method").unwrap_or_default(),
        // Not `:scheme` alone: an HTTP/2 client chooses it (see `connection_scheme`).
        scheme: headers.connection_scheme(),
        authority: headers.get(":authority").or_else(|| headers.get("host")),
        path: headers.get(":path").unwrap_or_default(),
        headers,
    }
}

/// Checks an API key.
pub fn api_key(
    partners: &Partners,
    keyring: &Keyring,
    presented: &[u8],
    now: i64,
) -> Result<PartnerKey, Rejection> {
    let Some((partner, key)) = api_key::find(keyring, presented) else {
        return Err(Rejection::new(Reason::InvalidApiKey, "the API key is not valid"));
    };
    let id = partners.clients.get(partner).and_then(|p| p.api_keys.get(key));
    let seen = SeenToken { kid: id.map(|k| k.id.clone()), ours: Some(true) };
    if let Some(Err(why)) = id.map(|k| k.window.check(now)) {
        return Err(Rejection::new(Reason::KeyInactive, format!("the API key {why}")).seen(seen));
    }
    Ok(PartnerKey { partner, key, method: Method::ApiKey })
}
