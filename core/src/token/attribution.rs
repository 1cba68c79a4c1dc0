//! Whose credential is this? A *lenient* reading of a credential header, to decide
//! whether a token that nhi-guard could not verify still belongs to one of its issuers.
//!
//! Verification is strict on purpose (unpadded base64url, exactly three segments, no
//! duplicate members, UTF-8). Backends are often not: PyJWT accepts padding and
//! trailing junk, many frameworks take any scheme in `Authorization`. A machine token
//! that nhi-guard refuses as malformed — `Bearer <token>==`, a trailing non-UTF-8 byte,
//! `Token <token>` — must therefore not be forwarded to a human backend as "someone
//! else's credential", where a lenient decoder would verify it with our issuer's key.
//!
//! The rule: a credential header is attributed to a configured issuer when any
//! JWT-shaped word in it (split on whitespace and commas), read with forgiving
//! base64 (either alphabet, padding and trailing junk ignored) and forgiving JSON,
//! either names a configured `iss` in its payload (as the `iss` member, or as a
//! JSON string anywhere in it) or names, in its header, a `kid` that one of the
//! issuers currently publishes; and when no such word does, any long run of base64
//! in it is read the same way (a token in the JWS JSON serialization has no dots). Attribution only ever makes a request *less*
//! welcome (refused on human routes); it never admits anything.

use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::Value;

/// Forgiving base64url: padding optional, trailing bits ignored.
const FORGIVING: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Most JWT-shaped words read in one header value: a header crafted with thousands
/// of dots must not cost thousands of decodes. A header with more is attributed to
/// us (fail closed): no real client sends one.
const MAX_CANDIDATES: usize = 16;
/// Shortest base64 run read as a JSON-serialized token's part: `{"kid":"x"}` is 16
/// characters of base64.
const MIN_RUN: usize = 16;
/// Longest header value read (Envoy's default limit for all request headers is
/// 60 KiB). A longer one is attributed to us, for the same reason.
pub const MAX_SCAN_BYTES: usize = 64 * 1024;

/// What a credential is compared against: the configured `iss` values, and whether a
/// `kid` is currently published by one of the issuers.
pub struct Ours<'a, K: Fn(&str) -> bool> {
    pub issuers: &'a [&'a str],
    pub kid_known: K,
}

impl<K: Fn(&str) -> bool> Ours<'_, K> {
    /// Whether a lenient reading of the credential header `value` (any bytes)
    /// attributes it to one of our issuers.
    pub fn claim(&self, value: &[u8]) -> bool {
        if value.len() > MAX_SCAN_BYTES {
            return true;
        }
        let text = String::from_utf8_lossy(value);
        let mut candidates =
            text.split(|c: char| c.is_ascii_whitespace() || c == ',').filter(|w| w.contains('.'));
        let mut read = 0;
        let compact = candidates.any(|word| {
            read += 1;
            read > MAX_CANDIDATES || self.claims_word(word)
        });
        compact || self.claims_a_run(&text)
    }

    /// A token in the JWS JSON serialization (RFC 7515 §7.2) has no dots: its
    /// protected header and payload are base64url strings among JSON. Any run of
    /// base64 characters long enough to hold `{"iss":…}` or `{"kid":…}` is read as
    /// either.
    fn claims_a_run(&self, text: &str) -> bool {
        let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/' | '=');
        let mut read = 0;
        text.split(|c: char| !base64(c)).filter(|run| run.len() >= MIN_RUN).any(|run| {
            read += 1;
            read > MAX_CANDIDATES
                || forgiving_decode(run)
                    .is_some_and(|bytes| self.names_issuer(&bytes) || self.names_kid(&bytes))
        })
    }

    fn claims_word(&self, word: &str) -> bool {
        let mut segments = word.split('.');
        let (Some(header), Some(payload)) = (segments.next(), segments.next()) else { return false };
        let names_issuer = forgiving_decode(payload).is_some_and(|payload| self.names_issuer(&payload));
        names_issuer || forgiving_decode(header).is_some_and(|header| self.names_kid(&header))
    }

    fn names_issuer(&self, payload: &[u8]) -> bool {
        let by_member = forgiving_json(payload).is_some_and(|claims| match claims.get("iss") {
            Some(Value::String(iss)) => self.issuers.contains(&iss.as_str()),
            Some(Value::Array(list)) => {
                list.iter().filter_map(Value::as_str).any(|i| self.issuers.contains(&i))
            }
            _ => false,
        });
        // Duplicate members (a lenient parser may keep either) and `iss` nested
        // anywhere: any JSON string equal to one of our issuers.
        by_member || contains_json_string(payload, self.issuers.iter().copied())
    }

    fn names_kid(&self, header: &[u8]) -> bool {
        let by_member = forgiving_json(header)
            .is_some_and(|h| h.get("kid").and_then(Value::as_str).is_some_and(|kid| (self.kid_known)(kid)));
        by_member || json_strings(header).any(|s| (self.kid_known)(&s))
    }
}

/// The base64 of one segment, however it was written: the standard or the URL
/// alphabet, padded or not, up to the first character of neither.
fn forgiving_decode(segment: &str) -> Option<Vec<u8>> {
    let mut cleaned: Vec<u8> = segment
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/'))
        .map(|b| match b {
            b'+' => b'-',
            b'/' => b'_',
            other => other,
        })
        .collect();
    if cleaned.len() % 4 == 1 {
        cleaned.pop(); // a lone trailing character carries no whole byte
    }
    if cleaned.is_empty() {
        return None;
    }
    FORGIVING.decode(&cleaned).ok()
}

/// A JSON object, or the object between the first `{` and the last `}` when there is
/// junk around it.
fn forgiving_json(bytes: &[u8]) -> Option<serde_json::Map<String, Value>> {
    if let Ok(Value::Object(map)) = serde_json::from_slice(bytes) {
        return Some(map);
    }
    let start = bytes.iter().position(|&b| b == b'{')?;
    let end = bytes.iter().rposition(|&b| b == b'}')?;
    match serde_json::from_slice(bytes.get(start..=end)?) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Every JSON string literal in `bytes`, unescaped (a malformed one is skipped).
fn json_strings(bytes: &[u8]) -> impl Iterator<Item = String> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || loop {
        let rest = bytes.get(at..)?;
        let open = rest.iter().position(|&b| b == b'"')?;
        let start = at + open;
        let mut end = start + 1;
        while let Some(&b) = bytes.get(end) {
            match b {
                b'\\' => end += 2,
                b'"' => break,
                _ => end += 1,
            }
        }
        at = end + 1;
        if let Some(Ok(Value::String(s))) = bytes.get(start..=end).map(serde_json::from_slice::<Value>) {
            return Some(s);
        }
    })
}

fn contains_json_string<'a>(bytes: &[u8], wanted: impl Iterator<Item = &'a str> + Clone) -> bool {
    json_strings(bytes).any(|s| wanted.clone().any(|w| w == s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://issuer.example";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn jwt(header: &str, payload: &str) -> String {
        format!("{}.{}.c2lnbmF0dXJl", b64(header.as_bytes()), b64(payload.as_bytes()))
    }

    fn claim(value: &[u8]) -> bool {
        let ours = Ours { issuers: &[ISS], kid_known: |kid: &str| kid == "rsa-1" };
        ours.claim(value)
    }

    fn ours_token() -> String {
        jwt(r#"{"alg":"RS256","kid":"other"}"#, &format!(r#"{{"iss":"{ISS}","sub":"robot"}}"#))
    }

    #[test]
    fn a_well_formed_token_of_ours_is_ours() {
        assert!(claim(format!("Bearer {}", ours_token()).as_bytes()));
    }

    #[test]
    fn padding_junk_and_other_schemes_do_not_hide_it() {
        let token = ours_token();
        assert!(claim(format!("Bearer {token}==").as_bytes()));
        assert!(claim(format!("Token {token}").as_bytes()));
        assert!(claim(token.as_bytes()));
        let mut raw = format!("Bearer {token}").into_bytes();
        raw.push(0xa0);
        assert!(claim(&raw));
        // Padded segments and the standard alphabet.
        let padded = base64::engine::general_purpose::STANDARD.encode(format!(r#"{{"iss":"{ISS}"}}"#));
        assert!(claim(format!("Bearer eyJhbGciOiJSUzI1NiJ9.{padded}.sig").as_bytes()));
    }

    #[test]
    fn duplicates_escapes_and_arrays_are_read_the_lenient_way() {
        let dup = jwt("{}", &format!(r#"{{"iss":"{ISS}","iss":"https://people.example"}}"#));
        assert!(claim(dup.as_bytes()));
        let escaped = jwt("{}", r#"{"iss":"https:\/\/issuer.example"}"#);
        assert!(claim(escaped.as_bytes()));
        let array = jwt("{}", &format!(r#"{{"iss":["{ISS}"]}}"#));
        assert!(claim(array.as_bytes()));
        let junk = format!("{}.{}x.sig", b64(b"{}"), b64(format!(r#"{{"iss":"{ISS}"}}"#).as_bytes()));
        assert!(claim(junk.as_bytes()));
    }

    #[test]
    fn a_published_kid_is_ours_whatever_the_iss() {
        let token = jwt(r#"{"alg":"RS256","kid":"rsa-1"}"#, r#"{"iss":"https://elsewhere.example"}"#);
        assert!(claim(format!("Bearer {token}").as_bytes()));
    }

    /// RFC 7515 §7.2's JSON serialization (flattened and general): no dots, but the
    /// same protected header and payload, which jwcrypto and others accept.
    #[test]
    fn a_json_serialized_token_of_ours_is_ours() {
        let payload = b64(format!(r#"{{"iss":"{ISS}","sub":"robot"}}"#).as_bytes());
        let protected = b64(br#"{"alg":"RS256","kid":"other"}"#);
        let flattened =
            format!(r#"Bearer {{"protected":"{protected}","payload":"{payload}","signature":"c2ln"}}"#);
        assert!(claim(flattened.as_bytes()), "by its iss");
        let general = format!(
            r#"{{"payload":"{}","signatures":[{{"protected":"{}","signature":"c2ln"}}]}}"#,
            b64(br#"{"iss":"https://elsewhere.example"}"#),
            b64(br#"{"alg":"RS256","kid":"rsa-1"}"#)
        );
        assert!(claim(general.as_bytes()), "by its kid");
        let theirs = format!(
            r#"{{"protected":"{}","payload":"{}","signature":"c2ln"}}"#,
            b64(br#"{"alg":"RS256","kid":"people-1"}"#),
            b64(br#"{"iss":"https://people.example","sub":"someone"}"#)
        );
        assert!(!claim(theirs.as_bytes()));
        assert!(!claim(b"Bearer 3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), "an opaque token");
    }

    #[test]
    fn someone_elses_credentials_are_not() {
        let theirs = jwt(r#"{"alg":"RS256","kid":"people-1"}"#, r#"{"iss":"https://people.example"}"#);
        assert!(!claim(format!("Bearer {theirs}").as_bytes()));
        assert!(!claim(b"Basic dXNlcjpwYXNzd29yZA=="));
        assert!(!claim(b""));
        assert!(!claim(b"Bearer"));
        assert!(!claim(b"Bearer ..."));
        assert!(!claim(&[0xff, 0xfe, b'.', 0x80]));
        // A prefix of our issuer is not our issuer.
        let prefix = jwt("{}", r#"{"iss":"https://issuer.exam"}"#);
        assert!(!claim(prefix.as_bytes()));
    }

    #[test]
    fn work_is_bounded_and_what_is_not_read_is_ours() {
        assert!(!claim(".".repeat(10_000).as_bytes()), "one word, however many dots");
        assert!(!claim("a.b ".repeat(MAX_CANDIDATES).as_bytes()));
        assert!(claim("a.b ".repeat(MAX_CANDIDATES + 1).as_bytes()), "too many words to read: fail closed");
        let padded = format!("Bearer {}{}", " ".repeat(60_000), ours_token());
        assert!(claim(padded.as_bytes()), "whitespace does not hide a token");
        assert!(claim(" ".repeat(MAX_SCAN_BYTES + 1).as_bytes()), "too long to read: fail closed");
    }
}
