//! Reason codes and the local replies that carry them.
//!
//! Every refusal has exactly one machine-readable reason code. The code decides the
//! HTTP status and the `WWW-Authenticate` challenge, so the two can never disagree.

use std::fmt;

use serde::Serialize;

/// Why a request was refused. The `code()` strings are a public API: they appear in
/// response bodies, logs and metrics, and are documented in `docs/responses.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingToken,
    MalformedToken,
    UnknownIssuer,
    WrongIssuer,
    UnknownKid,
    DisallowedAlg,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    MissingClaim,
    KeysUnavailable,
    /// The JOSE `typ` header is not one the issuer accepts (RFC 8725 §3.11).
    WrongTokenType,
    /// The token does not have the shape its issuer's profile requires (e.g. a
    /// Kubernetes `sub` that is not `system:serviceaccount:NS:NAME`).
    ProfileMismatch,
    /// A profile allowlist or claim rule does not admit the (authentic) token.
    ClaimNotAllowed,
    /// `exp - iat` is over the profile's maximum token lifetime.
    LifetimeTooLong,
    /// No client certificate where a route or the token's issuer requires one.
    ClientCertificateRequired,
    /// A certificate-bound token (`cnf.x5t#S256`, RFC 8705) without its certificate.
    CertificateMismatch,
    /// An unbound token from an issuer with `require_bound_tokens`.
    UnboundToken,
    /// `bind_subject_to_certificate`: the token's `sub` is not the certificate identity.
    SubjectMismatch,
    /// A client certificate whose identity is not trusted (e.g. a SPIFFE ID outside
    /// the trust domains): authentic, but not one of ours.
    UntrustedCertificate,
    /// The verified identity used up its quota.
    QuotaExceeded,
    /// The source address used up its budget of failed signature checks (flood guard).
    TooManyFailures,
    /// The host failed a call the decision depends on: refuse rather than guess.
    InternalError,
    /// The DPoP proof fails a check of RFC 9449 §4.3 (or there is none, or more than one).
    InvalidDpopProof,
    /// The DPoP proof's `jti` was already used with this key (RFC 9449 §11.1).
    DpopReplay,
    /// The token's `cnf.jkt` is not the thumbprint of the proof's key (or the token
    /// presented with the DPoP scheme is not bound to a key at all).
    DpopKeyMismatch,
    /// A DPoP-bound token presented as a bearer token (the downgrade, refused in every
    /// mode), or an unbound token where DPoP is required.
    DpopRequired,
    /// The proof carries no nonce, or not a current one (RFC 9449 §9).
    UseDpopNonce,
    /// The replay table cannot record the proof (its bucket is full of live
    /// entries): refused, because admitting an unrecorded proof would admit its replay.
    DpopReplayCacheFull,
    /// A route that requires a partner signature (RFC 9421) got a request without one.
    MissingSignature,
    /// `Signature-Input` / `Signature` are not structured fields describing one
    /// usable signature, or the signature base cannot be rebuilt from the request.
    MalformedSignature,
    /// The signature's `keyid` names no configured partner key.
    UnknownKey,
    /// The partner key (or API key) is outside its `not_before` / `not_after`.
    KeyInactive,
    /// The signature does not cover a component the partner's policy requires.
    MissingComponent,
    /// The signature's `created` is too old, or its `expires` has passed.
    SignatureExpired,
    /// The signature's `created` is ahead of the clock by more than the skew.
    SignatureNotYetValid,
    /// The partner's policy requires a `nonce` and the signature has none.
    MissingNonce,
    /// The signature's nonce was already used: a replayed request.
    SignatureReplay,
    /// The body does not match its signed `Content-Digest` (RFC 9530).
    DigestMismatch,
    /// The body is larger than the partner's `max_body_bytes`.
    BodyTooLarge,
    /// The API key matches no configured key.
    InvalidApiKey,
    /// The nonce cache has no room for a live nonce: refused rather than forgotten.
    ReplayCacheFull,
    /// The Kubernetes API server no longer authenticates the token (TokenReview):
    /// its pod, service account or node is gone, or the token was invalidated.
    WorkloadGone,
    /// The token's liveness could not be asked of the API server (down, slow,
    /// refusing), and `on_unavailable` does not let it through.
    LivenessUnavailable,
    /// The token names a pinned service account with another UID: the account was
    /// deleted and recreated under the same name.
    ServiceAccountReplaced,
    /// The revocation feed is older than `max_stale_seconds` (or never loaded) and
    /// `revocation.on_stale` is `deny`.
    RevocationsUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 47] = [
        Reason::MissingToken,
        Reason::MalformedToken,
        Reason::UnknownIssuer,
        Reason::WrongIssuer,
        Reason::UnknownKid,
        Reason::DisallowedAlg,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongAudience,
        Reason::MissingClaim,
        Reason::KeysUnavailable,
        Reason::WrongTokenType,
        Reason::ProfileMismatch,
        Reason::ClaimNotAllowed,
        Reason::LifetimeTooLong,
        Reason::ClientCertificateRequired,
        Reason::CertificateMismatch,
        Reason::UnboundToken,
        Reason::SubjectMismatch,
        Reason::UntrustedCertificate,
        Reason::QuotaExceeded,
        Reason::TooManyFailures,
        Reason::InternalError,
        Reason::InvalidDpopProof,
        Reason::DpopReplay,
        Reason::DpopKeyMismatch,
        Reason::DpopRequired,
        Reason::UseDpopNonce,
        Reason::DpopReplayCacheFull,
        Reason::MissingSignature,
        Reason::MalformedSignature,
        Reason::UnknownKey,
        Reason::KeyInactive,
        Reason::MissingComponent,
        Reason::SignatureExpired,
        Reason::SignatureNotYetValid,
        Reason::MissingNonce,
        Reason::SignatureReplay,
        Reason::DigestMismatch,
        Reason::BodyTooLarge,
        Reason::InvalidApiKey,
        Reason::ReplayCacheFull,
        Reason::WorkloadGone,
        Reason::LivenessUnavailable,
        Reason::ServiceAccountReplaced,
        Reason::RevocationsUnavailable,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::MalformedToken => "malformed_token",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::UnknownKid => "unknown_kid",
            Reason::DisallowedAlg => "disallowed_alg",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongAudience => "wrong_audience",
            Reason::MissingClaim => "missing_claim",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::WrongTokenType => "wrong_token_type",
            Reason::ProfileMismatch => "profile_mismatch",
            Reason::ClaimNotAllowed => "claim_not_allowed",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::ClientCertificateRequired => "client_certificate_required",
            Reason::CertificateMismatch => "certificate_mismatch",
            Reason::UnboundToken => "unbound_token",
            Reason::SubjectMismatch => "subject_mismatch",
            Reason::UntrustedCertificate => "untrusted_certificate",
            Reason::QuotaExceeded => "quota_exceeded",
            Reason::TooManyFailures => "too_many_failures",
            Reason::InternalError => "internal_error",
            Reason::InvalidDpopProof => "invalid_dpop_proof",
            Reason::DpopReplay => "dpop_replay",
            Reason::DpopKeyMismatch => "dpop_key_mismatch",
            Reason::DpopRequired => "dpop_required",
            Reason::UseDpopNonce => "use_dpop_nonce",
            Reason::DpopReplayCacheFull => "dpop_replay_cache_full",
            Reason::MissingSignature => "missing_signature",
            Reason::MalformedSignature => "malformed_signature",
            Reason::UnknownKey => "unknown_key",
            Reason::KeyInactive => "key_inactive",
            Reason::MissingComponent => "missing_component",
            Reason::SignatureExpired => "signature_expired",
            Reason::SignatureNotYetValid => "signature_not_yet_valid",
            Reason::MissingNonce => "missing_nonce",
            Reason::SignatureReplay => "signature_replay",
            Reason::DigestMismatch => "digest_mismatch",
            Reason::BodyTooLarge => "body_too_large",
            Reason::InvalidApiKey => "invalid_api_key",
            Reason::ReplayCacheFull => "replay_cache_full",
            Reason::WorkloadGone => "workload_gone",
            Reason::LivenessUnavailable => "liveness_unavailable",
            Reason::ServiceAccountReplaced => "service_account_replaced",
            Reason::RevocationsUnavailable => "revocations_unavailable",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            // The caller did nothing wrong: our key server (API server, feed) is
            // unreachable, or a replay table has no room.
            Reason::KeysUnavailable
            | Reason::LivenessUnavailable
            | Reason::RevocationsUnavailable
            | Reason::DpopReplayCacheFull
            | Reason::ReplayCacheFull => 503,
            Reason::BodyTooLarge => 413,
            Reason::QuotaExceeded | Reason::TooManyFailures => 429,
            Reason::InternalError => 500,
            Reason::UntrustedCertificate => 403,
            _ => 401,
        }
    }

    /// The `error` parameter of the `WWW-Authenticate` challenge of a 401 (RFC 6750
    /// §3.1, RFC 9449 §7.1): what the client should fix.
    pub fn challenge_error(self) -> &'static str {
        match self {
            Reason::InvalidDpopProof | Reason::DpopReplay => "invalid_dpop_proof",
            Reason::UseDpopNonce => "use_dpop_nonce",
            _ => "invalid_token",
        }
    }

    /// Whether the refusal is about the DPoP proof rather than the token: its
    /// challenge is always a `DPoP` one.
    pub fn is_dpop_proof(self) -> bool {
        matches!(self, Reason::InvalidDpopProof | Reason::DpopReplay | Reason::UseDpopNonce)
    }

    /// The `error` member of the JSON body: the class of failure.
    pub fn error(self) -> &'static str {
        match self.status() {
            401 => "unauthenticated",
            403 => "forbidden",
            413 => "too_large",
            429 => "rate_limited",
            503 => "unavailable",
            _ => "internal",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal: the reason code plus a short human explanation. The detail is
/// written by nhi-guard, never copied from the token, so it is safe to echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
    /// The issuer (index into `Config::issuers`) the token was matched to, once known.
    pub issuer: Option<usize>,
    /// What the verifier read of a token that parsed but failed a later check, so
    /// that nothing downstream parses it again.
    pub token: Option<SeenToken>,
    /// The check that refused the token, when a token was checked.
    pub check: Option<Check>,
}

/// The checks a bearer token goes through, in the order they run: the verifier's
/// (parse to allowlists: cheap ones first, the signature only for a token that
/// would pass otherwise, the allowlists only for an authentic one), then the
/// token's binding to the client certificate. A refusal names the check that
/// refused; every check before it passed, none after it ran. The flood guard,
/// which can refuse before any of them, is [`Check::FloodGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// Compact JWS syntax, size, JSON header and payload.
    Parse,
    /// `alg` is a known asymmetric algorithm the issuer accepts.
    Algorithm,
    /// `iss` names a configured issuer.
    Issuer,
    /// The JOSE `typ` header, where the issuer configures one.
    TokenType,
    /// The issuer's keys are loaded and one fits the token's `kid` and `alg`.
    Key,
    /// `exp`, `nbf`, `iat`, `aud` and `sub`.
    Claims,
    /// The shape the issuer's profile requires, and the identity it makes of it.
    Profile,
    Signature,
    /// The profile's allowlists and claim rules (only for an authentic token).
    Allowlists,
    /// The token's binding to the client certificate (RFC 8705 `cnf`, `mtls`).
    Binding,
    /// The source used up its budget of failed signature checks.
    FloodGuard,
}

impl Check {
    /// The token checks in the order they run ([`Check::FloodGuard`] aside).
    pub const ORDER: [Check; 10] = [
        Check::Parse,
        Check::Algorithm,
        Check::Issuer,
        Check::TokenType,
        Check::Key,
        Check::Claims,
        Check::Profile,
        Check::Signature,
        Check::Allowlists,
        Check::Binding,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::Parse => "parse",
            Check::Algorithm => "algorithm",
            Check::Issuer => "issuer",
            Check::TokenType => "token type",
            Check::Key => "key",
            Check::Claims => "claims",
            Check::Profile => "profile",
            Check::Signature => "signature",
            Check::Allowlists => "allowlists",
            Check::Binding => "binding",
            Check::FloodGuard => "flood guard",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a strictly parsed (but refused) token said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenToken {
    /// Its `kid`, for the decision log.
    pub kid: Option<String>,
    /// Whether it names one of our issuers (its `iss`, or a `kid` one of them
    /// publishes); `None` when its `iss` is not a string, which only a lenient
    /// reading can judge.
    pub ours: Option<bool>,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into(), issuer: None, token: None, check: None }
    }

    pub fn for_issuer(mut self, issuer: usize) -> Self {
        self.issuer = Some(issuer);
        self
    }

    pub fn seen(mut self, token: SeenToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Names the check that refused, unless a more precise one already did.
    pub fn at(mut self, check: Check) -> Self {
        self.check.get_or_insert(check);
        self
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// A response the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// Seconds a client should wait before retrying while keys (or the API server, or
/// the revocation feed) are unavailable.
pub const KEYS_UNAVAILABLE_RETRY_AFTER: u32 = 1;

impl LocalReply {
    /// The reply for `rejection`, with an RFC 6750 challenge on every 401.
    pub fn for_rejection(rejection: &Rejection, realm: &str, request_id: Option<&str>) -> LocalReply {
        let reason = rejection.reason;
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        match reason {
            // A bare challenge: a token may be fine; something is missing.
            Reason::MissingToken | Reason::ClientCertificateRequired | Reason::MissingSignature => {
                headers.push(("www-authenticate".into(), format!("Bearer realm=\"{}\"", quoted(realm))));
            }
            Reason::KeysUnavailable
            | Reason::LivenessUnavailable
            | Reason::RevocationsUnavailable
            | Reason::DpopReplayCacheFull
            | Reason::ReplayCacheFull => {
                headers.push(("retry-after".into(), KEYS_UNAVAILABLE_RETRY_AFTER.to_string()));
            }
            Reason::InternalError
            | Reason::QuotaExceeded
            | Reason::TooManyFailures
            | Reason::UntrustedCertificate
            | Reason::BodyTooLarge => {}
            _ => headers.push((
                "www-authenticate".into(),
                format!(
                    "Bearer realm=\"{}\", error=\"{}\", error_description=\"{}\"",
                    quoted(realm),
                    reason.challenge_error(),
                    quoted(&rejection.detail)
                ),
            )),
        }
        let body = Body { error: reason.error(), reason: reason.code(), request_id };
        LocalReply {
            status: reason.status(),
            headers,
            // Serializing three strings cannot fail; fall back to a fixed body anyway.
            body: serde_json::to_string(&body)
                .unwrap_or_else(|_| format!("{{\"reason\":\"{}\"}}", reason.code())),
        }
    }
}

/// Makes `s` safe inside an RFC 7230 quoted-string: drops `"`, `\` and controls.
pub(crate) fn quoted(s: &str) -> String {
    s.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(reply: &'a LocalReply, name: &str) -> Option<&'a str> {
        reply.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut codes: Vec<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert!(codes.iter().all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')));
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
    }

    #[test]
    fn missing_token_gets_a_bare_challenge() {
        let reply = LocalReply::for_rejection(
            &Rejection::new(Reason::MissingToken, "no token"),
            "nhi-guard",
            Some("r1"),
        );
        assert_eq!(reply.status, 401);
        assert_eq!(header(&reply, "www-authenticate"), Some("Bearer realm=\"nhi-guard\""));
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "unauthenticated", "reason": "missing_token", "request_id": "r1"})
        );
    }

    #[test]
    fn invalid_token_challenge_names_the_error() {
        let reply =
            LocalReply::for_rejection(&Rejection::new(Reason::Expired, "token \"expired\""), "r", None);
        assert_eq!(reply.status, 401);
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some("Bearer realm=\"r\", error=\"invalid_token\", error_description=\"token expired\"")
        );
        assert!(!reply.body.contains("request_id"));
    }

    #[test]
    fn keys_unavailable_is_503_with_retry_after() {
        for reason in [Reason::KeysUnavailable, Reason::LivenessUnavailable, Reason::RevocationsUnavailable] {
            let reply = LocalReply::for_rejection(&Rejection::new(reason, "x"), "r", None);
            assert_eq!(reply.status, 503, "{reason}");
            assert_eq!(header(&reply, "retry-after"), Some("1"), "{reason}");
            assert_eq!(header(&reply, "www-authenticate"), None, "{reason}");
            assert!(reply.body.contains("\"error\":\"unavailable\""), "{reason}");
        }
    }

    #[test]
    fn a_workload_gone_or_replaced_is_an_invalid_token() {
        for reason in [Reason::WorkloadGone, Reason::ServiceAccountReplaced] {
            let reply = LocalReply::for_rejection(&Rejection::new(reason, "gone"), "r", None);
            assert_eq!(reply.status, 401, "{reason}");
            assert!(
                header(&reply, "www-authenticate").is_some_and(|c| c.contains("error=\"invalid_token\"")),
                "{reason}"
            );
        }
    }
}
