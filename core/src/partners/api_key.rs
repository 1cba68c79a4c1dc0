//! API keys, known only by their SHA-256.
//!
//! The presented key is hashed once and compared with **every** configured hash in
//! constant time (`subtle`), without stopping at a match: how long the comparison
//! takes depends on how many keys are configured, never on the key presented or on
//! which configured key (if any) it matched. Comparing hashes rather than keys also
//! means the plaintext key is never in the filter's memory for longer than one
//! hash, and never in its configuration.

use sha2::{Digest as _, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::Keyring;

/// The configured key whose hash is SHA-256(`presented`): (partner, key index).
pub fn find(keyring: &Keyring, presented: &[u8]) -> Option<(usize, usize)> {
    let digest: [u8; 32] = Sha256::digest(presented).into();
    let mut found = subtle::Choice::from(0);
    let (mut partner, mut key) = (0u32, 0u32);
    for (p, k, hash) in keyring.api_key_hashes() {
        let equal = digest.ct_eq(hash);
        partner.conditional_assign(&(p as u32), equal);
        key.conditional_assign(&(k as u32), equal);
        found |= equal;
    }
    bool::from(found).then_some((partner as usize, key as usize))
}

/// 64 hex digits (either case) as 32 bytes.
pub fn parse_sha256_hex(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        let (hi, lo) = (digit(*pair.first()?)?, digit(*pair.get(1)?)?);
        *byte = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The SHA-256 of an API key in hex, as it is configured.
pub fn sha256_hex(key: &[u8]) -> String {
    Sha256::digest(key).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_the_rest() {
        let hash = sha256_hex(b"k");
        assert_eq!(hash.len(), 64);
        assert_eq!(
            parse_sha256_hex(hash.as_bytes()).map(|h| h.to_vec()),
            Some(Sha256::digest(b"k").to_vec())
        );
        assert_eq!(parse_sha256_hex(hash.to_uppercase().as_bytes()), parse_sha256_hex(hash.as_bytes()));
        assert_eq!(parse_sha256_hex(&hash.as_bytes()[..62]), None);
        assert_eq!(parse_sha256_hex(&[b'g'; 64]), None);
    }
}
