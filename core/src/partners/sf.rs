//! Structured Field Values for HTTP (RFC 8941): the parser `Signature-Input`,
//! `Signature` and `Content-Digest` need (Dictionaries of Items and Inner Lists with
//! Parameters), and the serializer of an Inner List, which is what RFC 9421 signs as
//! `@signature-params`.
//!
//! Follows the parsing algorithms of RFC 8941 §4.2 step by step, with two stricter
//! choices, both refusals: a Dictionary key or a Parameter key that occurs twice
//! (RFC 8941 keeps the last one) is an error, because two readers of one header
//! must never disagree about which value counts; and the value is read as bytes,
//! so anything that is not ASCII fails (as RFC 8941 §4.2 step 1 says).
//!
//! Inputs come from clients: the parser never panics, never recurses (Inner Lists
//! cannot nest), and allocates at most in proportion to its input.

use std::fmt;

/// A bare item (RFC 8941 §3.3). Decimals keep their value in thousandths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BareItem {
    Integer(i64),
    Decimal(i64),
    String(String),
    Token(String),
    ByteSequence(Vec<u8>),
    Boolean(bool),
}

/// Parameters in order; keys are unique (see the module docs).
pub type Parameters = Vec<(String, BareItem)>;

/// An Item: a bare item with parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub bare: BareItem,
    pub params: Parameters,
}

/// An Inner List: items with parameters of their own, and the list's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerList {
    pub items: Vec<Item>,
    pub params: Parameters,
}

/// A Dictionary member's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Item(Item),
    InnerList(InnerList),
}

/// A Dictionary in order; keys are unique.
pub type Dictionary = Vec<(String, Member)>;

/// Why a field value is not a structured field of the expected type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SfError {
    /// Byte offset where parsing failed.
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Display for SfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for SfError {}

/// Parses a Dictionary field value (RFC 8941 §4.2 with `field_type` dictionary).
/// Several field lines must have been joined with `", "` first (§4.2: they are one
/// value).
pub fn parse_dictionary(input: &[u8]) -> Result<Dictionary, SfError> {
    let mut parser = Parser { input, at: 0 };
    parser.skip_sp();
    let dictionary = parser.dictionary()?;
    parser.skip_sp();
    if parser.at != input.len() {
        return Err(parser.fail("trailing characters"));
    }
    Ok(dictionary)
}

/// Looks up `key` in a dictionary.
pub fn member<'d>(dictionary: &'d Dictionary, key: &str) -> Option<&'d Member> {
    dictionary.iter().find(|(k, _)| k == key).map(|(_, m)| m)
}

/// Looks up parameter `key`.
pub fn param<'p>(params: &'p Parameters, key: &str) -> Option<&'p BareItem> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn fail(&self, what: &'static str) -> SfError {
        SfError { at: self.at, what }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    /// OWS: SP and HTAB.
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// §4.2.2.
    fn dictionary(&mut self) -> Result<Dictionary, SfError> {
        let mut dictionary: Dictionary = Vec::new();
        while self.at < self.input.len() {
            let key = self.key()?;
            let member = if self.peek() == Some(b'=') {
                self.at += 1;
                self.item_or_inner_list()?
            } else {
                Member::Item(Item { bare: BareItem::Boolean(true), params: self.parameters()? })
            };
            if dictionary.iter().any(|(k, _)| *k == key) {
                return Err(self.fail("duplicate dictionary key"));
            }
            dictionary.push((key, member));
            self.skip_ows();
            if self.at >= self.input.len() {
                return Ok(dictionary);
            }
            if self.next() != Some(b',') {
                return Err(self.fail("expected ',' between dictionary members"));
            }
            self.skip_ows();
            if self.at >= self.input.len() {
                return Err(self.fail("trailing comma"));
            }
        }
        Ok(dictionary)
    }

    /// §4.2.1.1.
    fn item_or_inner_list(&mut self) -> Result<Member, SfError> {
        if self.peek() == Some(b'(') {
            self.inner_list().map(Member::InnerList)
        } else {
            self.item().map(Member::Item)
        }
    }

    /// §4.2.1.2.
    fn inner_list(&mut self) -> Result<InnerList, SfError> {
        if self.next() != Some(b'(') {
            return Err(self.fail("expected '('"));
        }
        let mut items = Vec::new();
        while self.at < self.input.len() {
            self.skip_sp();
            if self.peek() == Some(b')') {
                self.at += 1;
                let params = self.parameters()?;
                return Ok(InnerList { items, params });
            }
            items.push(self.item()?);
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return Err(self.fail("expected ' ' or ')' in inner list"));
            }
        }
        Err(self.fail("unterminated inner list"))
    }

    /// §4.2.3.
    fn item(&mut self) -> Result<Item, SfError> {
        let bare = self.bare_item()?;
        let params = self.parameters()?;
        Ok(Item { bare, params })
    }

    /// §4.2.3.1 (RFC 8941: no Dates, no Display Strings).
    fn bare_item(&mut self) -> Result<BareItem, SfError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string().map(BareItem::String),
            Some(b':') => self.byte_sequence().map(BareItem::ByteSequence),
            Some(b'?') => self.boolean().map(BareItem::Boolean),
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => self.token().map(BareItem::Token),
            _ => Err(self.fail("expected an item")),
        }
    }

    /// §4.2.3.2.
    fn parameters(&mut self) -> Result<Parameters, SfError> {
        let mut params: Parameters = Vec::new();
        while self.peek() == Some(b';') {
            self.at += 1;
            self.skip_sp();
            let key = self.key()?;
            let value = if self.peek() == Some(b'=') {
                self.at += 1;
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            if params.iter().any(|(k, _)| *k == key) {
                return Err(self.fail("duplicate parameter"));
            }
            params.push((key, value));
        }
        Ok(params)
    }

    /// §4.2.3.3.
    fn key(&mut self) -> Result<String, SfError> {
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => {}
            _ => return Err(self.fail("expected a key")),
        }
        let start = self.at;
        while matches!(self.peek(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c))
        {
            self.at += 1;
        }
        Ok(ascii(self.input.get(start..self.at).unwrap_or_default()))
    }

    /// §4.2.4.
    fn number(&mut self) -> Result<BareItem, SfError> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.fail("expected a digit"));
        }
        let mut integer: i64 = 0;
        let mut digits = 0usize;
        let mut fraction: Option<(i64, usize)> = None;
        while let Some(c) = self.peek() {
            match (c, &mut fraction) {
                (b'0'..=b'9', None) => {
                    digits += 1;
                    if digits > 15 {
                        return Err(self.fail("integer has more than 15 digits"));
                    }
                    integer = integer * 10 + i64::from(c - b'0');
                }
                (b'0'..=b'9', Some((value, count))) => {
                    *count += 1;
                    if *count > 3 {
                        return Err(self.fail("decimal has more than 3 fractional digits"));
                    }
                    *value = *value * 10 + i64::from(c - b'0');
                }
                (b'.', None) => {
                    if digits > 12 {
                        return Err(self.fail("decimal has more than 12 integer digits"));
                    }
                    fraction = Some((0, 0));
                }
                _ => break,
            }
            self.at += 1;
        }
        let sign = if negative { -1 } else { 1 };
        match fraction {
            None => Ok(BareItem::Integer(sign * integer)),
            Some((_, 0)) => Err(self.fail("decimal ends with '.'")),
            Some((value, count)) => {
                let scale = 10_i64.pow(3 - count as u32);
                Ok(BareItem::Decimal(sign * (integer * 1000 + value * scale)))
            }
        }
    }

    /// §4.2.5.
    fn string(&mut self) -> Result<String, SfError> {
        if self.next() != Some(b'"') {
            return Err(self.fail("expected '\"'"));
        }
        let mut out = String::new();
        while let Some(c) = self.next() {
            match c {
                b'\\' => match self.next() {
                    Some(escaped @ (b'"' | b'\\')) => out.push(char::from(escaped)),
                    _ => return Err(self.fail("bad escape in string")),
                },
                b'"' => return Ok(out),
                0x20..=0x7e => out.push(char::from(c)),
                _ => return Err(self.fail("control or non-ASCII character in string")),
            }
        }
        Err(self.fail("unterminated string"))
    }

    /// §4.2.6.
    fn token(&mut self) -> Result<String, SfError> {
        let start = self.at;
        self.at += 1;
        while matches!(self.peek(), Some(c) if is_tchar(c) || c == b':' || c == b'/') {
            self.at += 1;
        }
        Ok(ascii(self.input.get(start..self.at).unwrap_or_default()))
    }

    /// §4.2.7: missing padding and non-zero pad bits are accepted, as the RFC asks
    /// of parsers; characters outside the alphabet are not.
    fn byte_sequence(&mut self) -> Result<Vec<u8>, SfError> {
        if self.next() != Some(b':') {
            return Err(self.fail("expected ':'"));
        }
        let start = self.at;
        let Some(length) = self.input.get(start..).and_then(|rest| rest.iter().position(|c| *c == b':'))
        else {
            return Err(self.fail("unterminated byte sequence"));
        };
        let content = self.input.get(start..start + length).unwrap_or_default();
        if !content.iter().all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(c)) {
            return Err(self.fail("character outside base64 in byte sequence"));
        }
        self.at = start + length + 1;
        use base64::Engine as _;
        BASE64_LENIENT
            .decode(content)
            .map_err(|_| SfError { at: start, what: "invalid base64 in byte sequence" })
    }

    /// §4.2.8.
    fn boolean(&mut self) -> Result<bool, SfError> {
        if self.next() != Some(b'?') {
            return Err(self.fail("expected '?'"));
        }
        match self.next() {
            Some(b'1') => Ok(true),
            Some(b'0') => Ok(false),
            _ => Err(self.fail("expected ?0 or ?1")),
        }
    }
}

/// Standard base64 for Byte Sequences: padding optional, stray bits tolerated.
const BASE64_LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Standard base64 with padding, as Byte Sequences are serialized.
pub const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn ascii(bytes: &[u8]) -> String {
    bytes.iter().map(|b| char::from(*b)).collect()
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

// ---------------------------------------------------------------------------------
// Serialization (RFC 8941 §4.1), for the items this crate re-serializes.

/// §4.1.1.1: `("a" "b";p=1);created=1`.
pub fn serialize_inner_list(list: &InnerList) -> String {
    let mut out = String::from("(");
    for (i, item) in list.items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        serialize_item(item, &mut out);
    }
    out.push(')');
    serialize_params(&list.params, &mut out);
    out
}

/// §4.1.3.
pub fn serialize_item(item: &Item, out: &mut String) {
    serialize_bare(&item.bare, out);
    serialize_params(&item.params, out);
}

/// §4.1.1.2.
pub fn serialize_params(params: &Parameters, out: &mut String) {
    for (key, value) in params {
        out.push(';');
        out.push_str(key);
        if *value != BareItem::Boolean(true) {
            out.push('=');
            serialize_bare(value, out);
        }
    }
}

/// §4.1.3.1. The values here all came out of the parser, so each serializes.
pub fn serialize_bare(bare: &BareItem, out: &mut String) {
    use base64::Engine as _;
    match bare {
        BareItem::Integer(n) => out.push_str(&n.to_string()),
        BareItem::Decimal(thousandths) => {
            if *thousandths < 0 {
                out.push('-');
            }
            let abs = thousandths.unsigned_abs();
            out.push_str(&(abs / 1000).to_string());
            out.push('.');
            let fraction = format!("{:03}", abs % 1000);
            let trimmed = fraction.trim_end_matches('0');
            out.push_str(if trimmed.is_empty() { "0" } else { trimmed });
        }
        BareItem::String(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        BareItem::Token(t) => out.push_str(t),
        BareItem::ByteSequence(bytes) => {
            out.push(':');
            out.push_str(&BASE64.encode(bytes));
            out.push(':');
        }
        BareItem::Boolean(b) => out.push_str(if *b { "?1" } else { "?0" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(s: &str) -> Dictionary {
        parse_dictionary(s.as_bytes()).unwrap()
    }

    fn item(bare: BareItem) -> Member {
        Member::Item(Item { bare, params: vec![] })
    }

    #[test]
    fn parses_the_member_types_and_parameters() {
        let d =
            dict("a=1, b=?0, c=\"x \\\"y\\\"\", d=tok/en:1, e=:AQID:, f=-1.5;q, g, h=(1 \"s\";p=?1);lvl=5");
        assert_eq!(d[0], ("a".into(), item(BareItem::Integer(1))));
        assert_eq!(d[1].1, item(BareItem::Boolean(false)));
        assert_eq!(d[2].1, item(BareItem::String("x \"y\"".into())));
        assert_eq!(d[3].1, item(BareItem::Token("tok/en:1".into())));
        assert_eq!(d[4].1, item(BareItem::ByteSequence(vec![1, 2, 3])));
        assert_eq!(
            d[5].1,
            Member::Item(Item {
                bare: BareItem::Decimal(-1500),
                params: vec![("q".into(), BareItem::Boolean(true))]
            })
        );
        assert_eq!(d[6].1, item(BareItem::Boolean(true)));
        let Member::InnerList(list) = &d[7].1 else { panic!() };
        assert_eq!(list.items.len(), 2);
        assert_eq!(list.params, vec![("lvl".to_owned(), BareItem::Integer(5))]);
        assert_eq!(serialize_inner_list(list), "(1 \"s\";p);lvl=5");
    }

    #[test]
    fn whitespace_follows_the_rfc() {
        // OWS around commas, SP inside inner lists and after ';', none before '='.
        assert_eq!(dict("  a=1 ,\tb=(1  2 )  ").len(), 2);
        assert_eq!(
            dict("a=b; q=1"),
            vec![(
                "a".into(),
                Member::Item(Item {
                    bare: BareItem::Token("b".into()),
                    params: vec![("q".into(), BareItem::Integer(1))]
                })
            )]
        );
        for bad in ["a=b;q =1", "a =1", "a=1,", "a=1,,b=2", "a=(1,2)", "a=1 b=2", "\ta=1"] {
            assert!(parse_dictionary(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_what_the_rfc_refuses_and_duplicates() {
        for bad in [
            "A=1",
            "a=1234567890123456",
            "a=1234567890123.1",
            "a=1.1234",
            "a=1.",
            "a=\"\u{e9}\"",
            "a=\"tab\there\"",
            "a=\"unterminated",
            "a=\"bad\\escape\"",
            "a=:no end",
            "a=:a*b:",
            "a=?2",
            "a=@1659578233",
            "a=%\"display\"",
            "a=(1 (2))",
            "a=(1",
            "a=1, a=2",
            "a=1;p;p=2",
        ] {
            assert!(parse_dictionary(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse_dictionary(&[b'a', b'=', 0xff]).is_err());
        assert_eq!(dict(""), vec![]);
    }

    #[test]
    fn byte_sequences_tolerate_missing_padding_but_not_other_alphabets() {
        assert_eq!(dict("a=:AQI:")[0].1, item(BareItem::ByteSequence(vec![1, 2])));
        assert_eq!(dict("a=:AQI=:")[0].1, item(BareItem::ByteSequence(vec![1, 2])));
        assert!(parse_dictionary(b"a=:AQ-_:").is_err());
    }

    #[test]
    fn serializes_canonically() {
        let list = InnerList {
            items: vec![
                Item { bare: BareItem::String("@method".into()), params: vec![] },
                Item {
                    bare: BareItem::String("@query-param".into()),
                    params: vec![("name".into(), BareItem::String("Pet".into()))],
                },
            ],
            params: vec![
                ("created".into(), BareItem::Integer(1618884473)),
                ("keyid".into(), BareItem::String("k\"1".into())),
                ("d".into(), BareItem::Decimal(2500)),
                ("e".into(), BareItem::Decimal(-3)),
                ("b".into(), BareItem::Boolean(false)),
                ("s".into(), BareItem::ByteSequence(vec![0xff])),
            ],
        };
        assert_eq!(
            serialize_inner_list(&list),
            "(\"@method\" \"@query-param\";name=\"Pet\");created=1618884473;keyid=\"k\\\"1\";d=2.5;e=-0.003;b=?0;s=:/w==:"
        );
    }
}
