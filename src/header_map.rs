//! The proxy-wasm ABI's encoding of a header map: the pair count, then each pair's
//! name and value lengths, then the names and values, each followed by a NUL byte
//! (all integers `u32`, little-endian).

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

/// Decodes a map the host sent. A malformed map yields the pairs read before the
/// fault; a pair that is not UTF-8 is left out.
pub fn decode(bytes: &[u8]) -> Vec<(String, String)> {
    let read_u32 = |at: usize| -> Option<usize> {
        let chunk = bytes.get(at..at.checked_add(4)?)?;
        let array: [u8; 4] = chunk.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(array)).ok()
    };
    let Some(count) = read_u32(0) else { return Vec::new() };
    // Each pair takes at least 10 bytes: never trust the count for the allocation.
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10));
    let mut data = count.saturating_mul(8).saturating_add(4);
    for i in 0..count {
        let at = i.saturating_mul(8).saturating_add(4);
        let (Some(name_len), Some(value_len)) = (read_u32(at), read_u32(at.saturating_add(4))) else { break };
        let name_end = data.saturating_add(name_len);
        let value_start = name_end.saturating_add(1);
        let value_end = value_start.saturating_add(value_len);
        let (Some(name), Some(value)) = (bytes.get(data..name_end), bytes.get(value_start..value_end)) else {
            break;
        };
        if let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) {
            pairs.push((name.to_owned(), value.to_owned()));
        }
        data = value_end.saturating_add(1);
    }
    pairs
}

/// The first value of header `name` (lower-case) among `pairs`.
pub fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn round_trips() {
        let headers =
            pairs(&[(":path", "/api/x"), ("authorization", "Bearer a.b.c"), ("empty", ""), ("x", "1")]);
        assert_eq!(decode(&encode(&headers)), headers);
        assert!(decode(&encode(&[])).is_empty());
        assert_eq!(
            encode(&pairs(&[("a", "bc")])),
            [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'b', b'c', 0]
        );
    }

    #[test]
    fn malformed_maps_yield_what_was_readable() {
        let good = encode(&pairs(&[("a", "1"), ("b", "2")]));
        // Truncated inside the second value: only the first pair.
        assert_eq!(decode(&good[..good.len() - 2]), pairs(&[("a", "1")]));
        assert!(decode(&[]).is_empty());
        assert!(decode(&[1, 0]).is_empty());
        // A huge count with no data: nothing, and no huge allocation.
        assert!(decode(&u32::MAX.to_le_bytes()).is_empty());
        // A length pointing past the end.
        let mut lying = good.clone();
        lying[4] = 200;
        assert!(decode(&lying).is_empty());
        // Not UTF-8: that pair is skipped.
        let mut latin = encode(&pairs(&[("a", "é"), ("b", "2")]));
        let at = latin.iter().position(|&b| b == 0xc3).unwrap();
        latin[at] = 0xff;
        assert_eq!(decode(&latin), pairs(&[("b", "2")]));
    }

    #[test]
    fn first_is_case_insensitive_and_takes_the_first() {
        let headers = pairs(&[("Authorization", "one"), ("authorization", "two")]);
        assert_eq!(first(&headers, "authorization"), Some("one"));
        assert_eq!(first(&headers, "x"), None);
    }
}
