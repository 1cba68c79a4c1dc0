//! Hashing, in one place.
//!
//! Stable hashes — the same value on every build, target and worker — name things
//! in shared data and pick buckets, so every VM of a proxy (and every proxy after an
//! upgrade) agrees on them: FNV-1a in 64 and 128 bits, and the finalizers that
//! spread their weak low bits. None of them is keyed: they are never a defence
//! against someone who chooses the input (see each user for why that is fine).
//! A VM's own tables use [`seeded`], a fast hasher with a per-VM seed.

pub mod seeded;

const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV128_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV128_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV64_OFFSET, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(FNV64_PRIME))
}

/// FNV-1a, 64-bit, over `fields` separated by a 0xFF byte (which never occurs in
/// UTF-8, so `("ab", "c")` and `("a", "bc")` differ).
pub fn fnv1a64_fields(fields: &[&[u8]]) -> u64 {
    let mut hash = FNV64_OFFSET;
    for (i, field) in fields.iter().enumerate() {
        let separator = (i > 0).then_some(&0xFF_u8);
        for byte in separator.into_iter().chain(field.iter()) {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(FNV64_PRIME);
        }
    }
    hash
}

/// FNV-1a, 128-bit, over the concatenation of `parts`: wide enough that a chance
/// collision never happens in practice.
pub fn fnv1a128(parts: &[&[u8]]) -> u128 {
    let mut hash = FNV128_OFFSET;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        hash ^= u128::from(*byte);
        hash = hash.wrapping_mul(FNV128_PRIME);
    }
    hash
}

/// SplitMix64's finalizer: every output bit depends on every input bit.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// MurmurHash3's `fmix64`.
pub fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a128(&[]), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(fnv1a128(&[b"a"]), 0xd228cb696f1a8caf78912b704e4a8964);
        assert_eq!(fnv1a128(&[b"foo", b"bar"]), 0x343e1662793c64bf6f0d3597ba446f18);
    }

    #[test]
    fn fields_are_separated() {
        assert_eq!(fnv1a64_fields(&[b"abc"]), fnv1a64(b"abc"));
        assert_eq!(fnv1a64_fields(&[b"ab", b"c"]), fnv1a64(b"ab\xffc"));
        assert_ne!(fnv1a64_fields(&[b"ab", b"c"]), fnv1a64_fields(&[b"a", b"bc"]));
    }
}
