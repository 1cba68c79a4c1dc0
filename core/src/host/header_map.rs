//! Header maps as the host holds them — bytes, not strings — and the proxy-wasm
//! ABI's encoding of one: the pair count, then each pair's name and value lengths,
//! then the names and values, each followed by a NUL byte (all integers `u32`,
//! little-endian).
//!
//! A client may send any bytes in a header value (HTTP allows `obs-text`, and
//! Envoy passes it on). Nothing here decodes a value as UTF-8 on the way in: a
//! value that is not UTF-8 is still a header that is *there*, and every decision
//! about presence (above all: which client copies of our headers to remove) is
//! taken on names alone. Values are decoded lazily, where they are needed, and a
//! value that cannot be decoded is never read as "absent".

use std::borrow::Cow;

/// A request's headers, in the host's order, names and values as bytes.
///
/// Held as one buffer and each pair's place in it, not a vector per name and value:
/// a request's map is built on every request, and a map decoded from the host keeps
/// the host's buffer as it came (no copy at all).
#[derive(Clone, Default)]
pub struct HeaderMap {
    bytes: Vec<u8>,
    pairs: Vec<Span>,
}

/// Where a pair's name and value are in [`HeaderMap::bytes`]: `name.0..name.1`,
/// `value.0..value.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

impl HeaderMap {
    pub fn from_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let mut map = HeaderMap::default();
        for (name, value) in pairs {
            map.push(name.as_ref(), value.as_ref());
        }
        map
    }

    /// An empty map with room for `pairs` pairs of `bytes` bytes in all (a shell that
    /// knows the sizes builds its map without growing it).
    pub fn with_capacity(pairs: usize, bytes: usize) -> Self {
        HeaderMap { bytes: Vec::with_capacity(bytes), pairs: Vec::with_capacity(pairs) }
    }

    /// Appends a pair.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        let middle = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.pairs.push(Span { name: (start, middle), value: (middle, self.bytes.len()) });
    }

    /// Decodes a map the host sent, keeping `bytes` as the map's buffer. A malformed
    /// map yields the pairs read before the fault.
    pub fn decode(bytes: Vec<u8>) -> HeaderMap {
        let read_u32 = |at: usize| -> Option<usize> {
            let chunk = bytes.get(at..at.checked_add(4)?)?;
            let array: [u8; 4] = chunk.try_into().ok()?;
            usize::try_from(u32::from_le_bytes(array)).ok()
        };
        let Some(count) = read_u32(0) else { return HeaderMap::default() };
        // Each pair takes at least 10 bytes: never trust the count for the allocation.
        let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10));
        let mut data = count.saturating_mul(8).saturating_add(4);
        for i in 0..count {
            let at = i.saturating_mul(8).saturating_add(4);
            let (Some(name_len), Some(value_len)) = (read_u32(at), read_u32(at.saturating_add(4))) else {
                break;
            };
            let name_end = data.saturating_add(name_len);
            let value_start = name_end.saturating_add(1);
            let value_end = value_start.saturating_add(value_len);
            if value_end > bytes.len() {
                break;
            }
            pairs.push(Span { name: (data, name_end), value: (value_start, value_end) });
            data = value_end.saturating_add(1);
        }
        HeaderMap { bytes, pairs }
    }

    /// Every pair, in the host's order.
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(|span| {
            let slice = |(start, end): (usize, usize)| self.bytes.get(start..end).unwrap_or_default();
            (slice(span.name), slice(span.value))
        })
    }

    /// The first value of header `name` (compared ASCII case-insensitively), whatever
    /// its bytes.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }

    /// The scheme the request came over, on a proxy's header map (one with a
    /// `:scheme`): the first element of `x-forwarded-proto`, which Envoy writes from
    /// the connection at the edge (or keeps from a trusted hop), else `:scheme` —
    /// which Envoy takes from an HTTP/2 client as written, even over cleartext.
    /// `None` on a map without `:scheme`.
    pub fn connection_scheme(&self) -> Option<&[u8]> {
        let scheme = self.get(":scheme")?;
        let forwarded = self.get("x-forwarded-proto").and_then(|v| {
            let first = v.split(|b| *b == b',').next()?;
            let start = first.iter().position(|b| !b.is_ascii_whitespace())?;
            let end = first.iter().rposition(|b| !b.is_ascii_whitespace())?;
            first.get(start..=end)
        });
        Some(forwarded.unwrap_or(scheme))
    }

    /// Every value of header `name` (compared ASCII case-insensitively), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pairs().filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }

    /// Whether header `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The first value of `name` as text, if it is UTF-8. For values whose absence
    /// helps no attacker (a request id for the log); see [`text_or_escaped`] otherwise.
    pub fn utf8(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header name, as the request spells it.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.pairs().map(|(n, _)| n)
    }

    /// The names present in this map that are one of `managed` — compared
    /// case-insensitively, and with `_` read as `-` (CGI/WSGI backends read
    /// `x_nhi_identity` as `x-nhi-identity`) — each once, as the request spells it.
    /// Values play no part: a client copy is removed whatever its bytes.
    pub fn managed_names<'a>(&'a self, managed: &[&str]) -> Vec<&'a [u8]> {
        let mut found: Vec<&[u8]> = Vec::new();
        for name in self.names() {
            let is_managed = managed.iter().any(|m| same_header_name(name, m.as_bytes()));
            if is_managed && !found.iter().any(|f| f.eq_ignore_ascii_case(name)) {
                found.push(name);
            }
        }
        found
    }
}

/// Maps are equal when their pairs are, however each was built.
impl PartialEq for HeaderMap {
    fn eq(&self, other: &HeaderMap) -> bool {
        self.pairs.len() == other.pairs.len() && self.pairs().eq(other.pairs())
    }
}

impl Eq for HeaderMap {}

impl std::fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        f.debug_list().entries(self.pairs().map(|(n, v)| (text(n), text(v)))).finish()
    }
}

/// Whether two header names are the same once case and `_`/`-` are disregarded.
pub fn same_header_name(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

/// A value as text for matching (path, host): itself when it is UTF-8; otherwise
/// every byte outside printable ASCII percent-encoded, so that the ASCII part still
/// matches exactly what Envoy routed on and nothing turns into "no value".
pub fn text_or_escaped(value: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => {
            let mut out = String::with_capacity(value.len() * 3);
            for &b in value {
                if (0x21..0x7f).contains(&b) {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            Cow::Owned(out)
        }
    }
}

/// Encodes `headers` (for local replies and callouts).
pub fn encode(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    fn map(list: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::from_pairs(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    #[test]
    fn round_trips() {
        let headers =
            pairs(&[(":path", "/api/x"), ("authorization", "Bearer a.b.c"), ("empty", ""), ("x", "1")]);
        let decoded = HeaderMap::decode(encode(&headers));
        assert_eq!(
            decoded,
            map(&[(":path", "/api/x"), ("authorization", "Bearer a.b.c"), ("empty", ""), ("x", "1")])
        );
        assert_eq!(HeaderMap::decode(encode(&[])), HeaderMap::default());
        assert_eq!(
            encode(&pairs(&[("a", "bc")])),
            [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'b', b'c', 0]
        );
    }

    /// However a map is built (pushed with room reserved, from pairs, or decoded in
    /// the host's own buffer), the same pairs make the same map.
    #[test]
    fn every_way_of_building_a_map_agrees() {
        let list = [(":path", "/api/x"), ("authorization", "Bearer a.b.c"), ("empty", ""), ("x", "1")];
        let mut pushed = HeaderMap::with_capacity(1, 3);
        for (n, v) in list {
            pushed.push(n.as_bytes(), v.as_bytes());
        }
        let encoded = encode(&pairs(&list));
        assert_eq!(pushed, map(&list));
        assert_eq!(HeaderMap::decode(encoded), pushed);
        assert_ne!(pushed, map(&list[..3]));
        assert_eq!(pushed.get("AUTHORIZATION"), Some(&b"Bearer a.b.c"[..]));
        assert_eq!(pushed.get("empty"), Some(&b""[..]));
        assert_eq!(format!("{pushed:?}").matches("\"x\"").count(), 1, "{pushed:?}");
    }

    #[test]
    fn malformed_maps_yield_what_was_readable() {
        let good = encode(&pairs(&[("a", "1"), ("b", "2")]));
        // Truncated inside the second value: only the first pair.
        assert_eq!(HeaderMap::decode(good[..good.len() - 2].to_vec()), map(&[("a", "1")]));
        assert_eq!(HeaderMap::decode(Vec::new()), HeaderMap::default());
        assert_eq!(HeaderMap::decode(vec![1, 0]), HeaderMap::default());
        // A huge count with no data: nothing, and no huge allocation.
        assert_eq!(HeaderMap::decode(u32::MAX.to_le_bytes().to_vec()), HeaderMap::default());
        // A length pointing past the end.
        let mut lying = good.clone();
        lying[4] = 200;
        assert_eq!(HeaderMap::decode(lying), HeaderMap::default());
    }

    #[test]
    fn values_that_are_not_utf8_are_kept() {
        let mut latin = encode(&pairs(&[("x-nhi-identity", "admin-bot!"), ("b", "2")]));
        let at = latin.iter().position(|&b| b == b'!').unwrap();
        latin[at] = 0xa0;
        let decoded = HeaderMap::decode(latin);
        assert_eq!(decoded.get("x-nhi-identity"), Some(&b"admin-bot\xa0"[..]));
        assert_eq!(decoded.utf8("x-nhi-identity"), None, "not text, but present");
        assert!(decoded.contains("x-nhi-identity"));
        assert_eq!(decoded.managed_names(&["x-nhi-identity"]), [&b"x-nhi-identity"[..]]);
        assert_eq!(decoded.get("b"), Some(&b"2"[..]));
    }

    #[test]
    fn get_is_case_insensitive_and_takes_the_first() {
        let headers = map(&[("Authorization", "one"), ("authorization", "two")]);
        assert_eq!(headers.get("authorization"), Some(&b"one"[..]));
        assert_eq!(headers.get("x"), None);
    }

    #[test]
    fn managed_names_match_case_and_underscore_variants_once_each() {
        let headers = map(&[
            ("X-NHI-Identity", "a"),
            ("x_nhi_identity", "b"),
            ("x-nhi_identity", "c"),
            ("x-nhi-identity", "d"),
            ("x-nhi-identityx", "e"),
            ("x-nhi-issuer", "f"),
            ("other", "g"),
        ]);
        let found = headers.managed_names(&["x-nhi-identity", "x-nhi-issuer"]);
        assert_eq!(
            found,
            [&b"X-NHI-Identity"[..], &b"x_nhi_identity"[..], &b"x-nhi_identity"[..], &b"x-nhi-issuer"[..]]
        );
        assert!(!same_header_name(b"x-nhi-identity", b"x-nhi-identit"));
    }

    #[test]
    fn text_or_escaped_keeps_utf8_and_escapes_the_rest() {
        assert_eq!(text_or_escaped(b"/api/x"), "/api/x");
        assert_eq!(text_or_escaped("/caf\u{e9}".as_bytes()), "/caf\u{e9}");
        assert_eq!(text_or_escaped(b"/api/deploy/\xff x"), "/api/deploy/%FF%20x");
        assert!(matches!(text_or_escaped(b"/ok"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_connection_scheme_is_the_forwarded_one_on_a_proxy() {
        let map = |pairs: &[(&str, &str)]| {
            HeaderMap::from_pairs(pairs.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())))
        };
        let h2 = map(&[(":scheme", "https"), ("x-forwarded-proto", "http")]);
        assert_eq!(h2.connection_scheme(), Some(&b"http"[..]), "Envoy's word over the client's :scheme");
        let listed = map(&[(":scheme", "http"), ("x-forwarded-proto", " https , http")]);
        assert_eq!(listed.connection_scheme(), Some(&b"https"[..]));
        assert_eq!(map(&[(":scheme", "https")]).connection_scheme(), Some(&b"https"[..]));
        assert_eq!(map(&[("x-forwarded-proto", "https")]).connection_scheme(), None, "no pseudo-headers");
    }
}
