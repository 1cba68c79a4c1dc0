//! proxy-wasm ABI 0.2.1 numbers and the header-map encoding, as the host sees them.

/// `WasmResult` / `proxy_status_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    /// The value a host function returns to the guest.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// `proxy_map_type_t`.
pub mod map {
    pub const REQUEST_HEADERS: i32 = 0;
    pub const REQUEST_TRAILERS: i32 = 1;
    pub const RESPONSE_HEADERS: i32 = 2;
    pub const RESPONSE_TRAILERS: i32 = 3;
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// `proxy_buffer_type_t`.
pub mod buffer {
    pub const HTTP_REQUEST_BODY: i32 = 0;
    pub const HTTP_RESPONSE_BODY: i32 = 1;
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

/// `proxy_stream_type_t`.
pub mod stream {
    pub const HTTP_REQUEST: i32 = 0;
    pub const HTTP_RESPONSE: i32 = 1;
}

/// `proxy_action_t`, returned by the request/response callbacks.
pub mod action {
    pub const CONTINUE: i32 = 0;
    pub const PAUSE: i32 = 1;
}

/// `proxy_metric_type_t`.
pub mod metric {
    pub const COUNTER: i32 = 0;
    pub const GAUGE: i32 = 1;
    pub const HISTOGRAM: i32 = 2;
}

/// A header map: lower-case names, in order, duplicates allowed. Values are bytes, as
/// on the wire: a client may send any (obs-text included), and the filter must cope.
pub type Headers = Vec<(String, Vec<u8>)>;

/// The ABI's header-map encoding: a `u32` count, `(u32 name length, u32 value length)`
/// per pair, then each name and value followed by a NUL byte.
pub fn encode_map(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&len32(headers.len()).to_le_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&len32(name.len()).to_le_bytes());
        out.extend_from_slice(&len32(value.len()).to_le_bytes());
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// Reads [`encode_map`]'s format; `None` if the bytes do not hold a well-formed map.
pub fn decode_map(bytes: &[u8]) -> Option<Headers> {
    let word = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = word(0)?;
    let mut sizes = Vec::new();
    for i in 0..count {
        let at = 4usize.checked_add(i.checked_mul(8)?)?;
        sizes.push((word(at)?, word(at.checked_add(4)?)?));
    }
    let mut at = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut headers = Vec::with_capacity(count);
    for (name_len, value_len) in sizes {
        let name = bytes.get(at..at.checked_add(name_len)?)?;
        at = at.checked_add(name_len)?.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(value_len)?)?;
        at = at.checked_add(value_len)?.checked_add(1)?;
        headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    Some(headers)
}

fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip() {
        let headers: Headers = vec![
            (":status".into(), b"200".to_vec()),
            ("x-a".into(), Vec::new()),
            ("x-b".into(), b"\xa0".to_vec()),
        ];
        assert_eq!(decode_map(&encode_map(&headers)), Some(headers));
        assert_eq!(decode_map(&[]), Some(Vec::new()));
        assert_eq!(decode_map(&[1, 0, 0, 0, 9]), None);
    }
}
