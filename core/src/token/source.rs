//! Finding the bearer token in a request: the credential header, its scheme, and
//! what it holds when it holds no readable token.

/// How the bearer token is carried in the request (`token` in the plugin config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    /// Lower-case request header name.
    pub header: String,
    /// Scheme prefix, matched case-insensitively (RFC 7235 schemes are), e.g. `Bearer `.
    pub prefix: String,
    /// Tokens longer than this are refused before any parsing.
    pub max_bytes: usize,
    /// Whether a verified token is passed upstream; by default it is removed, so
    /// backends see the verified identity headers and never a replayable credential.
    pub forward: bool,
}

/// What the credential header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extracted<'a> {
    /// No credential header.
    Absent,
    Token(&'a str),
    /// The header is there but holds no bearer token nhi-guard can read: another
    /// scheme (e.g. `Basic`), or — `undecodable` — the bearer scheme followed by bytes
    /// that are not UTF-8. Never "no credential": see `crate::token::attribution`.
    Unreadable {
        value: &'a [u8],
        undecodable: bool,
    },
}

impl TokenSource {
    pub fn extract<'a>(&self, header_value: Option<&'a [u8]>) -> Extracted<'a> {
        let Some(raw) = header_value else {
            return Extracted::Absent;
        };
        let Ok(value) = std::str::from_utf8(raw) else {
            return Extracted::Unreadable { value: raw, undecodable: self.has_scheme(raw) };
        };
        let value = value.trim();
        match value.get(..self.prefix.len()) {
            Some(scheme) if scheme.eq_ignore_ascii_case(&self.prefix) => {
                Extracted::Token(value.get(self.prefix.len()..).unwrap_or_default().trim_start())
            }
            // The prefix may end in a space that `trim` removed: "Bearer" alone.
            _ if self.prefix.trim_end().eq_ignore_ascii_case(value) && !self.prefix.is_empty() => {
                Extracted::Token("")
            }
            _ => Extracted::Unreadable { value: raw, undecodable: false },
        }
    }

    /// Whether `raw` starts with the scheme prefix (bytes, after leading whitespace).
    fn has_scheme(&self, raw: &[u8]) -> bool {
        let start = raw.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(raw.len());
        raw.get(start..)
            .and_then(|rest| rest.get(..self.prefix.len()))
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case(self.prefix.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> TokenSource {
        TokenSource {
            header: "authorization".into(),
            prefix: "Bearer ".into(),
            max_bytes: 8192,
            forward: false,
        }
    }

    fn extract(src: &TokenSource, value: &str) -> Extracted<'static> {
        src.extract(Some(Box::leak(value.as_bytes().to_vec().into_boxed_slice())))
    }

    #[test]
    fn extracts_bearer_token_case_insensitively() {
        assert_eq!(extract(&source(), "Bearer abc"), Extracted::Token("abc"));
        assert_eq!(extract(&source(), "bearer abc"), Extracted::Token("abc"));
        assert_eq!(extract(&source(), "  BEARER   abc "), Extracted::Token("abc"));
    }

    #[test]
    fn other_schemes_are_unreadable_and_absence_is_absent() {
        assert_eq!(source().extract(None), Extracted::Absent);
        let basic = b"Basic dXNlcjpwdw==";
        assert_eq!(source().extract(Some(basic)), Extracted::Unreadable { value: basic, undecodable: false });
        assert_eq!(source().extract(Some(b"")), Extracted::Unreadable { value: b"", undecodable: false });
    }

    #[test]
    fn a_bearer_value_that_is_not_utf8_is_undecodable_never_absent() {
        let raw = b"Bearer eyJh.eyJi.c2ln\xa0";
        assert_eq!(source().extract(Some(raw)), Extracted::Unreadable { value: raw, undecodable: true });
        let raw = b"  bearer \xff";
        assert_eq!(source().extract(Some(raw)), Extracted::Unreadable { value: raw, undecodable: true });
        let other = b"Basic \xff";
        assert_eq!(source().extract(Some(other)), Extracted::Unreadable { value: other, undecodable: false });
        let bare = TokenSource { prefix: String::new(), ..source() };
        assert_eq!(bare.extract(Some(b"\xff")), Extracted::Unreadable { value: b"\xff", undecodable: true });
    }

    #[test]
    fn bare_scheme_is_an_empty_token() {
        assert_eq!(extract(&source(), "Bearer"), Extracted::Token(""));
        assert_eq!(extract(&source(), "Bearer   "), Extracted::Token(""));
    }

    #[test]
    fn empty_prefix_takes_whole_value() {
        let src = TokenSource { prefix: String::new(), ..source() };
        assert_eq!(extract(&src, "abc"), Extracted::Token("abc"));
    }
}
