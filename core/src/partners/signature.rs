//! HTTP Message Signatures (RFC 9421) on requests: the `Signature-Input` and
//! `Signature` fields (§4.1, §4.2), the signature base (§2.5) with the request's
//! derived components (§2.2) and header fields (§2.1), and the two algorithms
//! partners may use, `hmac-sha256` (§3.3.3) and `ed25519` (§3.3.6).
//!
//! What is *not* supported is refused, never guessed: component parameters other
//! than `name` on `@query-param` (`sf`, `key`, `bs`, `tr`, `req`), `@status`,
//! signature parameters outside the registry (`alg`, `created`, `expires`,
//! `keyid`, `nonce`, `tag`), and values that are not what the registry says
//! (`created` not an Integer…). Which signature, key, components and freshness a
//! request needs is the partner policy's to decide ([`super`]); this module only
//! says what a signature claims and whether the bytes check out.

use ed25519_dalek::{Signature as Ed25519Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::host::header_map::HeaderMap;

use super::sf::{self, BareItem, Item, Member, Parameters};

/// At most this many signatures are looked at in one request, and at most this many
/// components may one cover: bounds on work an unauthenticated request can cause.
pub const MAX_SIGNATURES: usize = 8;
pub const MAX_COMPONENTS: usize = 32;

/// The request a signature is checked against.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a [u8],
    /// `:scheme` (`http` when the proxy does not say).
    pub scheme: Option<&'a [u8]>,
    /// `:authority`, or `host`.
    pub authority: Option<&'a [u8]>,
    /// `:path` as received: path and query, not decoded.
    pub path: &'a [u8],
    pub headers: &'a HeaderMap,
}

/// One labelled signature of a request, as its fields describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub label: String,
    /// The covered component identifiers, in order.
    pub components: Vec<Item>,
    pub params: Params,
    /// `@signature-params`: the Inner List re-serialized (RFC 9421 §3.2 step 7).
    pub signature_params: String,
    /// The signature bytes (the `Signature` member).
    pub signature: Vec<u8>,
}

/// The registered signature parameters (RFC 9421 §2.3), typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pub created: Option<i64>,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub alg: Option<String>,
    pub keyid: Option<String>,
    pub tag: Option<String>,
}

/// Why a request's signature fields or signature base are unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn malformed(why: impl Into<String>) -> Malformed {
    Malformed(why.into())
}

/// Parses `Signature-Input` and `Signature` (each field's lines joined with `", "`)
/// into the signatures they describe, in `Signature-Input` order. Every label must
/// be in both fields (RFC 9421 §4: "The presence of a label in one field but not in
/// the other is an error").
pub fn parse(signature_input: &[u8], signature: &[u8]) -> Result<Vec<Candidate>, Malformed> {
    let inputs =
        sf::parse_dictionary(signature_input).map_err(|e| malformed(format!("Signature-Input: {e}")))?;
    let signatures = sf::parse_dictionary(signature).map_err(|e| malformed(format!("Signature: {e}")))?;
    if inputs.is_empty() {
        return Err(malformed("Signature-Input has no signature"));
    }
    if inputs.len() > MAX_SIGNATURES || signatures.len() > MAX_SIGNATURES {
        return Err(malformed(format!("more than {MAX_SIGNATURES} signatures")));
    }
    if inputs.len() != signatures.len()
        || inputs.iter().any(|(label, _)| sf::member(&signatures, label).is_none())
    {
        return Err(malformed("Signature-Input and Signature have different labels"));
    }
    let mut candidates = Vec::with_capacity(inputs.len());
    for (label, member) in &inputs {
        let Member::InnerList(list) = member else {
            return Err(malformed(format!("Signature-Input {label} is not an inner list")));
        };
        let bytes = match sf::member(&signatures, label) {
            Some(Member::Item(Item { bare: BareItem::ByteSequence(bytes), .. })) => bytes.clone(),
            _ => return Err(malformed(format!("Signature {label} is not a byte sequence"))),
        };
        if list.items.len() > MAX_COMPONENTS {
            return Err(malformed(format!("{label} covers more than {MAX_COMPONENTS} components")));
        }
        for (i, component) in list.items.iter().enumerate() {
            check_component(component)?;
            if list.items.get(..i).is_some_and(|before| before.iter().any(|c| same_component(c, component))) {
                return Err(malformed(format!("{label} covers {} twice", identifier(component))));
            }
        }
        candidates.push(Candidate {
            label: label.clone(),
            components: list.items.clone(),
            params: params(&list.params).map_err(|why| malformed(format!("{label}: {why}")))?,
            signature_params: sf::serialize_inner_list(list),
            signature: bytes,
        });
    }
    Ok(candidates)
}

fn params(list: &Parameters) -> Result<Params, String> {
    let mut out = Params::default();
    for (key, value) in list {
        match (key.as_str(), value) {
            ("created", BareItem::Integer(n)) => out.created = Some(*n),
            ("expires", BareItem::Integer(n)) => out.expires = Some(*n),
            ("nonce", BareItem::String(s)) => out.nonce = Some(s.clone()),
            ("alg", BareItem::String(s)) => out.alg = Some(s.clone()),
            ("keyid", BareItem::String(s)) => out.keyid = Some(s.clone()),
            ("tag", BareItem::String(s)) => out.tag = Some(s.clone()),
            ("created" | "expires", _) => return Err(format!("`{key}` is not an integer")),
            ("nonce" | "alg" | "keyid" | "tag", _) => return Err(format!("`{key}` is not a string")),
            _ => return Err(format!("unknown signature parameter `{key}`")),
        }
    }
    Ok(out)
}

/// A covered component must be a lower-case String naming a field or a supported
/// derived component, with only the parameters this module understands.
fn check_component(component: &Item) -> Result<(), Malformed> {
    let BareItem::String(name) = &component.bare else {
        return Err(malformed("a covered component is not a string"));
    };
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(malformed(format!("component {name:?} is not a lower-case name")));
    }
    match name.as_str() {
        "@query-param" => match component.params.as_slice() {
            [(key, BareItem::String(_))] if key == "name" => Ok(()),
            _ => Err(malformed("@query-param needs exactly one `name` string parameter")),
        },
        "@method" | "@target-uri" | "@authority" | "@scheme" | "@request-target" | "@path" | "@query"
            if component.params.is_empty() =>
        {
            Ok(())
        }
        derived if derived.starts_with('@') => {
            if component.params.is_empty() {
                Err(malformed(format!("unsupported derived component {derived}")))
            } else {
                Err(malformed(format!("unsupported parameters on {derived}")))
            }
        }
        field => {
            if !field.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(malformed("a covered field name is not a token"));
            }
            match component.params.first() {
                None => Ok(()),
                Some((param, _)) => {
                    Err(malformed(format!("unsupported component parameter `{param}` on {field:?}")))
                }
            }
        }
    }
}

/// RFC 9421 §2: identifiers are the same when name and parameters are, whatever the
/// parameters' order.
fn same_component(a: &Item, b: &Item) -> bool {
    a.bare == b.bare
        && a.params.len() == b.params.len()
        && a.params.iter().all(|(k, v)| sf::param(&b.params, k) == Some(v))
}

/// The component identifier as serialized in the signature base (`"@query-param";name="Pet"`).
pub fn identifier(component: &Item) -> String {
    let mut out = String::new();
    sf::serialize_item(component, &mut out);
    out
}

/// The component name, for coverage checks (`@path`, `content-digest`).
pub fn name(component: &Item) -> &str {
    match &component.bare {
        BareItem::String(name) => name,
        _ => "",
    }
}

impl Candidate {
    /// Whether the signature covers the component called `name` (any parameters).
    pub fn covers(&self, component_name: &str) -> bool {
        self.components.iter().any(|c| name(c) == component_name)
    }
}

/// The signature base (RFC 9421 §2.5): one line per covered component, then the
/// `@signature-params` line; US-ASCII, lines joined by LF, no final newline.
pub fn signature_base(request: &SignedRequest<'_>, candidate: &Candidate) -> Result<String, Malformed> {
    let mut base = String::with_capacity(256);
    for component in &candidate.components {
        let value = component_value(request, component)?;
        if value.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err(malformed(format!("{} has a line break", identifier(component))));
        }
        base.push_str(&identifier(component));
        base.push_str(": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&candidate.signature_params);
    Ok(base)
}

fn component_value(request: &SignedRequest<'_>, component: &Item) -> Result<String, Malformed> {
    let component_name = name(component);
    let text = |bytes: &[u8], what: &str| -> Result<String, Malformed> {
        // The base is US-ASCII: printable characters, spaces and (in field values) tabs.
        if bytes.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)) {
            Ok(bytes.iter().map(|b| char::from(*b)).collect())
        } else {
            Err(malformed(format!("{what} is not printable US-ASCII")))
        }
    };
    let (path, query) = split_target(request.path);
    let scheme = || -> Result<String, Malformed> {
        Ok(text(request.scheme.unwrap_or(b"http"), "the scheme")?.to_ascii_lowercase())
    };
    let authority = || -> Result<String, Malformed> {
        let raw = request.authority.ok_or_else(|| malformed("the request has no authority"))?;
        normalize_authority(&text(raw, "the authority")?, &scheme()?)
    };
    let path_value = || -> Result<String, Malformed> {
        let path = text(path, "the path")?;
        Ok(if path.is_empty() { "/".to_owned() } else { path })
    };
    let query_suffix = || -> Result<String, Malformed> {
        Ok(match query {
            Some(q) => format!("?{}", text(q, "the query")?),
            None => String::new(),
        })
    };
    match component_name {
        "@method" => text(request.method, "the method"),
        "@scheme" => scheme(),
        "@authority" => authority(),
        "@path" => path_value(),
        "@query" => Ok(format!("?{}", text(query.unwrap_or_default(), "the query")?)),
        "@request-target" => Ok(format!("{}{}", path_value()?, query_suffix()?)),
        "@target-uri" => Ok(format!("{}://{}{}{}", scheme()?, authority()?, path_value()?, query_suffix()?)),
        "@query-param" => {
            let wanted = match sf::param(&component.params, "name") {
                Some(BareItem::String(name)) => form_decode(name.as_bytes()),
                _ => return Err(malformed("@query-param without a name")),
            };
            let mut found =
                query.unwrap_or_default().split(|b| *b == b'&').filter(|pair| !pair.is_empty()).filter_map(
                    |pair| {
                        let (name, value) = match pair.iter().position(|b| *b == b'=') {
                            Some(at) => (pair.get(..at)?, pair.get(at + 1..)?),
                            None => (pair, &b""[..]),
                        };
                        (form_decode(name) == wanted).then(|| form_encode(&form_decode(value)))
                    },
                );
            match (found.next(), found.next()) {
                (Some(value), None) => Ok(value),
                (None, _) => Err(malformed("a covered query parameter is not in the query")),
                (Some(_), Some(_)) => Err(malformed("a covered query parameter occurs more than once")),
            }
        }
        field => {
            let mut values = request.headers.values(field).peekable();
            if values.peek().is_none() {
                return Err(malformed(format!("the covered field {field:?} is not in the request")));
            }
            let mut out = String::new();
            for (i, value) in values.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(text(value, "a covered field")?.trim_matches(|c| c == ' ' || c == '\t'));
            }
            Ok(out)
        }
    }
}

/// `:path` split at the first `?`.
fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    match target.iter().position(|b| *b == b'?') {
        Some(at) => (target.get(..at).unwrap_or_default(), target.get(at + 1..)),
        None => (target, None),
    }
}

/// RFC 9421 §2.2.3 with RFC 9110 §4.2.3: host lower-cased, the scheme's default
/// port removed.
fn normalize_authority(authority: &str, scheme: &str) -> Result<String, Malformed> {
    if authority.is_empty() || authority.contains(['@', '/', ' ']) {
        return Err(malformed("the authority is not host[:port]"));
    }
    let lower = authority.to_ascii_lowercase();
    // The port follows the last ':' unless that ':' is inside an IPv6 literal.
    let (host, port) = match lower.rfind(':') {
        Some(at) if !lower.get(at..).unwrap_or_default().contains(']') => {
            (lower.get(..at).unwrap_or_default(), lower.get(at + 1..))
        }
        _ => (lower.as_str(), None),
    };
    let default = match scheme {
        "http" => "80",
        "https" => "443",
        _ => "",
    };
    Ok(match port {
        Some(port) if !port.is_empty() && port.trim_start_matches('0') != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    })
}

/// The `application/x-www-form-urlencoded` parser's decoding (WHATWG URL §5.1):
/// `+` is a space, `%XX` a byte; a `%` not followed by two hex digits is itself.
fn form_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let hex = |at: usize| input.get(at).and_then(|c| char::from(*c).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// RFC 9421 §2.2.8: a decoded query parameter value re-encoded with the
/// `application/x-www-form-urlencoded` percent-encode set, spaces as `%20`.
fn form_encode(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        if b.is_ascii_alphanumeric() || b"*-._".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Algorithms (RFC 9421 §3.3).

/// `hmac-sha256` (§3.3.3): HMAC-SHA256 of the base with the shared secret, compared
/// in constant time (`hmac`'s `verify_slice` uses `subtle`).
pub fn verify_hmac_sha256(secret: &[u8], base: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(base);
    mac.verify_slice(signature).is_ok()
}

/// `ed25519` (§3.3.6): the base as the message, no pre-hash; strict verification
/// (canonical `S`, no small-order keys), as for EdDSA tokens.
pub fn verify_ed25519(key: &VerifyingKey, base: &[u8], signature: &[u8]) -> bool {
    let Ok(bytes) = <[u8; 64]>::try_from(signature) else { return false };
    key.verify_strict(base, &Ed25519Signature::from_bytes(&bytes)).is_ok()
}

#[cfg(test)]
mod tests;
