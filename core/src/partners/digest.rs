//! Body integrity: `Content-Digest` (RFC 9530 §2), a Dictionary whose keys name a
//! hash algorithm and whose values are Byte Sequences of the digest of the message
//! content.
//!
//! Of the registered algorithms only `sha-256` and `sha-512` are standard; the
//! others (`md5`, `sha`, `unixsum`…) are registered as insecure and MUST NOT be
//! used where an adversary is involved (RFC 9530 §5), so they are ignored here.
//! The recipient may ignore members it does not support (RFC 9530 §2): a field is
//! accepted when it has at least one member we support and **every** supported
//! member matches the body. Anything else is a `digest_mismatch`.

use sha2::{Digest as _, Sha256, Sha512};

use super::sf::{self, BareItem, Member};

/// The algorithms nhi-guard checks, in the order of preference it asks for.
pub const SUPPORTED: [&str; 2] = ["sha-256", "sha-512"];

/// `Want-Content-Digest` for a refusal (RFC 9530 §4: a Dictionary of preferences
/// 0–10): the algorithms accepted, SHA-256 preferred.
pub const WANT_CONTENT_DIGEST: &str = "sha-256=10, sha-512=5";

/// The digests a `Content-Digest` field value announces, parsed before the body
/// arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// `(algorithm, digest)` for each supported member.
    digests: Vec<(Algorithm, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    fn digest(self, body: &[u8]) -> Vec<u8> {
        match self {
            Algorithm::Sha256 => Sha256::digest(body).to_vec(),
            Algorithm::Sha512 => Sha512::digest(body).to_vec(),
        }
    }

    fn len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// Why a `Content-Digest` cannot vouch for a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// Not a Dictionary of Byte Sequences.
    Malformed(String),
    /// No `sha-256` or `sha-512` member.
    Unsupported,
    /// A supported member does not match the body.
    Mismatch(&'static str),
}

impl std::fmt::Display for DigestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DigestError::Malformed(why) => write!(f, "Content-Digest is malformed: {why}"),
            DigestError::Unsupported => f.write_str("Content-Digest has no sha-256 or sha-512 member"),
            DigestError::Mismatch(alg) => write!(f, "the body does not match its {alg} Content-Digest"),
        }
    }
}

impl Expected {
    /// Reads a `Content-Digest` field value (several field lines joined with `", "`).
    pub fn parse(value: &[u8]) -> Result<Expected, DigestError> {
        let dictionary = sf::parse_dictionary(value).map_err(|e| DigestError::Malformed(e.to_string()))?;
        let mut digests = Vec::new();
        for (key, member) in &dictionary {
            let algorithm = match key.as_str() {
                "sha-256" => Algorithm::Sha256,
                "sha-512" => Algorithm::Sha512,
                _ => continue,
            };
            let bytes = match member {
                Member::Item(sf::Item { bare: BareItem::ByteSequence(bytes), .. }) => bytes,
                _ => return Err(DigestError::Malformed(format!("{key} is not a byte sequence"))),
            };
            if bytes.len() != algorithm.len() {
                return Err(DigestError::Malformed(format!("{key} has {} bytes", bytes.len())));
            }
            digests.push((algorithm, bytes.clone()));
        }
        if digests.is_empty() {
            return Err(DigestError::Unsupported);
        }
        Ok(Expected { digests })
    }

    /// Checks `body` against every supported member (digests are public: no need
    /// for a constant-time comparison).
    pub fn check(&self, body: &[u8]) -> Result<(), DigestError> {
        for (algorithm, expected) in &self.digests {
            if algorithm.digest(body) != *expected {
                let name = match algorithm {
                    Algorithm::Sha256 => "sha-256",
                    Algorithm::Sha512 => "sha-512",
                };
                return Err(DigestError::Mismatch(name));
            }
        }
        Ok(())
    }
}

/// `Content-Digest: sha-256=:…:` for `body` (for clients and tests).
pub fn content_digest_sha256(body: &[u8]) -> String {
    use base64::Engine as _;
    format!("sha-256=:{}:", sf::BASE64.encode(Sha256::digest(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 9530 appendix B and RFC 9421 appendix B.1: the digests of `{"hello": "world"}`.
    const BODY: &[u8] = b"{\"hello\": \"world\"}";
    const SHA256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
    const SHA512: &str =
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    #[test]
    fn the_rfc_digests_of_the_example_body_match() {
        Expected::parse(SHA256.as_bytes()).unwrap().check(BODY).unwrap();
        Expected::parse(SHA512.as_bytes()).unwrap().check(BODY).unwrap();
        let both = format!("{SHA256}, {SHA512}");
        Expected::parse(both.as_bytes()).unwrap().check(BODY).unwrap();
        assert_eq!(content_digest_sha256(BODY), SHA256);
    }

    #[test]
    fn a_tampered_body_or_member_is_a_mismatch() {
        let expected = Expected::parse(SHA256.as_bytes()).unwrap();
        assert_eq!(expected.check(b"{\"hello\": \"world!\"}"), Err(DigestError::Mismatch("sha-256")));
        // Every supported member must match, not just one.
        let wrong512 = format!("{SHA256}, sha-512=:{}:", "A".repeat(86) + "==");
        let expected = Expected::parse(wrong512.as_bytes()).unwrap();
        assert_eq!(expected.check(BODY), Err(DigestError::Mismatch("sha-512")));
    }

    #[test]
    fn insecure_or_malformed_digests_are_refused() {
        assert_eq!(Expected::parse(b"md5=:AAAAAAAAAAAAAAAAAAAAAA==:"), Err(DigestError::Unsupported));
        assert_eq!(Expected::parse(b"unixsum=1234"), Err(DigestError::Unsupported));
        assert!(matches!(Expected::parse(b"sha-256=abc"), Err(DigestError::Malformed(_))));
        assert!(matches!(Expected::parse(b"sha-256=:AAAA:"), Err(DigestError::Malformed(_))));
        assert!(matches!(Expected::parse(b"sha-256"), Err(DigestError::Malformed(_))));
        assert!(matches!(Expected::parse(b"SHA-256=:AAAA:"), Err(DigestError::Malformed(_))));
        // Unknown members are skipped, not refused.
        let mixed = format!("md5=:AAAAAAAAAAAAAAAAAAAAAA==:, {SHA256}");
        Expected::parse(mixed.as_bytes()).unwrap().check(BODY).unwrap();
    }
}
