//! SPIFFE IDs (`spiffe://trust-domain/path`), parsed the way the SPIFFE-ID
//! standard and go-spiffe do: nothing is normalized, anything unusual is refused.
//!
//! - scheme `spiffe://`, lower-case, exactly;
//! - trust domain: 1–255 bytes of `a-z 0-9 . - _` (so no upper case, port,
//!   userinfo, percent-escape or IP-literal brackets);
//! - path: `/`-separated segments of `a-z A-Z 0-9 . - _`, none empty, `.` or
//!   `..`, no trailing `/` (so no query, fragment or percent-escape);
//! - at most 2048 bytes in all.
//!
//! A workload identity also needs a path: `spiffe://prod.example` names the trust
//! domain itself (its signing authority), never a caller.

use std::fmt;

/// Longest SPIFFE ID accepted, in bytes (SPIFFE-ID §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name, in bytes (the URI host limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// A valid SPIFFE ID of a workload, borrowed from the string it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    id: &'a str,
    trust_domain: &'a str,
}

impl<'a> SpiffeId<'a> {
    /// Parses a workload SPIFFE ID (see the module docs for the rules).
    pub fn parse(id: &'a str) -> Result<Self, SpiffeError> {
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeError::TooLong);
        }
        let rest = id.strip_prefix(SCHEME).ok_or(SpiffeError::NotSpiffe)?;
        let (trust_domain, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        check_trust_domain(trust_domain)?;
        if path.is_empty() {
            return Err(SpiffeError::NoPath);
        }
        // `path` starts with '/': the first piece of the split is empty.
        for segment in path.split('/').skip(1) {
            match segment {
                "" => return Err(SpiffeError::EmptySegment),
                "." | ".." => return Err(SpiffeError::DotSegment),
                s if !s.bytes().all(is_path_byte) => return Err(SpiffeError::PathCharacter),
                _ => {}
            }
        }
        Ok(SpiffeId { id, trust_domain })
    }

    pub fn trust_domain(&self) -> &'a str {
        self.trust_domain
    }

    pub fn as_str(&self) -> &'a str {
        self.id
    }
}

impl fmt::Display for SpiffeId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id)
    }
}

/// Checks a trust domain name (without `spiffe://`).
pub fn check_trust_domain(name: &str) -> Result<(), SpiffeError> {
    if name.is_empty() {
        return Err(SpiffeError::NoTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeError::TooLong);
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(SpiffeError::TrustDomainCharacter);
    }
    Ok(())
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

/// Why a string is not a workload SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpiffeError {
    /// Does not start with `spiffe://` (a URI of another scheme, or upper case).
    NotSpiffe,
    NoTrustDomain,
    /// A trust domain byte outside `a-z 0-9 . - _` (port, userinfo, escapes…).
    TrustDomainCharacter,
    /// The ID names a trust domain, not a workload.
    NoPath,
    EmptySegment,
    DotSegment,
    /// A path byte outside `a-z A-Z 0-9 . - _` (query, fragment, escapes…).
    PathCharacter,
    TooLong,
}

impl fmt::Display for SpiffeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpiffeError::NotSpiffe => "is not a spiffe:// URI",
            SpiffeError::NoTrustDomain => "has no trust domain",
            SpiffeError::TrustDomainCharacter => {
                "has a trust domain with characters other than a-z, 0-9, '.', '-', '_'"
            }
            SpiffeError::NoPath => "names a trust domain, not a workload (no path)",
            SpiffeError::EmptySegment => "has an empty path segment or a trailing '/'",
            SpiffeError::DotSegment => "has a '.' or '..' path segment",
            SpiffeError::PathCharacter => {
                "has a path with characters other than a-z, A-Z, 0-9, '.', '-', '_'"
            }
            SpiffeError::TooLong => "is too long",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for (id, td) in [
            ("spiffe://prod.example/ns/payments/sa/api", "prod.example"),
            ("spiffe://cluster.local/ns/default/sa/default", "cluster.local"),
            ("spiffe://td/a", "td"),
            ("spiffe://a-b_c.9/Mixed.Case-path_1/x", "a-b_c.9"),
            ("spiffe://td/.../x", "td"),
        ] {
            let parsed = SpiffeId::parse(id).unwrap();
            assert_eq!(parsed.trust_domain(), td, "{id}");
            assert_eq!(parsed.as_str(), id);
            assert_eq!(parsed.to_string(), id);
        }
    }

    #[test]
    fn invalid_ids_say_why() {
        use SpiffeError::*;
        for (id, why) in [
            ("", NotSpiffe),
            ("https://prod.example/x", NotSpiffe),
            ("SPIFFE://prod.example/x", NotSpiffe),
            ("spiffe:prod.example/x", NotSpiffe),
            ("spiffe://", NoTrustDomain),
            ("spiffe:///x", NoTrustDomain),
            ("spiffe://Prod.example/x", TrustDomainCharacter),
            ("spiffe://prod.example:443/x", TrustDomainCharacter),
            ("spiffe://user@prod.example/x", TrustDomainCharacter),
            ("spiffe://prod%2eexample/x", TrustDomainCharacter),
            ("spiffe://[::1]/x", TrustDomainCharacter),
            ("spiffe://prod.example?x=1", TrustDomainCharacter),
            ("spiffe://prod.example", NoPath),
            ("spiffe://prod.example/", EmptySegment),
            ("spiffe://prod.example/a//b", EmptySegment),
            ("spiffe://prod.example/a/", EmptySegment),
            ("spiffe://prod.example/a/./b", DotSegment),
            ("spiffe://prod.example/..", DotSegment),
            ("spiffe://prod.example/a?b", PathCharacter),
            ("spiffe://prod.example/a#b", PathCharacter),
            ("spiffe://prod.example/a%20b", PathCharacter),
            ("spiffe://prod.example/a b", PathCharacter),
            ("spiffe://prod.example/é", PathCharacter),
        ] {
            assert_eq!(SpiffeId::parse(id), Err(why), "{id:?}");
        }
    }

    #[test]
    fn length_limits() {
        let long_td = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
        assert_eq!(SpiffeId::parse(&format!("spiffe://{long_td}/x")), Err(SpiffeError::TooLong));
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(SpiffeId::parse(&format!("spiffe://{td}/x")).is_ok());
        let path = "p".repeat(MAX_SPIFFE_ID_LEN - "spiffe://td/".len());
        assert!(SpiffeId::parse(&format!("spiffe://td/{path}")).is_ok());
        assert_eq!(SpiffeId::parse(&format!("spiffe://td/{path}p")), Err(SpiffeError::TooLong));
    }

    #[test]
    fn trust_domain_names() {
        assert_eq!(check_trust_domain("prod.example"), Ok(()));
        assert_eq!(check_trust_domain(""), Err(SpiffeError::NoTrustDomain));
        assert_eq!(check_trust_domain("spiffe://prod.example"), Err(SpiffeError::TrustDomainCharacter));
        assert_eq!(check_trust_domain("Prod"), Err(SpiffeError::TrustDomainCharacter));
    }
}
