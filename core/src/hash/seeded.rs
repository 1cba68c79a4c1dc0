//! A fast, seeded, non-cryptographic hasher for VM-local maps with long keys.
//!
//! std's SipHash is the right default, but inside a wasm VM hashing a bearer token
//! (hundreds of bytes) with it costs more than the rest of a request answered from
//! the VM's token cache. This hasher mixes eight bytes per step (FxHash-style) and
//! finishes with a MurmurHash3 avalanche. It is seeded per VM, and the maps using it
//! only ever *store* keys the filter vouches for (verified tokens, metric series it
//! defines), so a client cannot fill one with chosen collisions.

use std::hash::{BuildHasher, Hasher};

const K: u64 = 0x517c_c1b7_2722_0a95;

/// Builds [`FastHasher`]s with this VM's seed.
#[derive(Debug, Clone, Copy)]
pub struct Seeded(u64);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Seeded(seed)
    }
}

impl Default for Seeded {
    /// A random seed (WASI `random_get` in a VM).
    fn default() -> Self {
        Seeded(std::collections::hash_map::RandomState::new().build_hasher().finish())
    }
}

impl BuildHasher for Seeded {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

#[derive(Debug, Clone)]
pub struct FastHasher(u64);

impl FastHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

/// Lanes of the long-input loop: four independent multiply chains, so the CPU (or
/// V8) runs them side by side instead of waiting on one multiply per word.
const LANES: [u64; 4] =
    [0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f, 0x1656_67b1_9e37_79f9, 0x27d4_eb2f_1656_67c5];

/// Up to eight bytes, little-endian, zero-padded.
fn word(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    for (to, from) in buf.iter_mut().zip(bytes) {
        *to = *from;
    }
    u64::from_le_bytes(buf)
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        // A bearer token is hundreds of bytes: 32 at a time, in four lanes, folded
        // into the state at the end (the length is mixed in below, as for short input).
        let mut blocks = bytes.chunks_exact(32);
        if bytes.len() >= 32 {
            let mut lanes = LANES.map(|lane| self.0 ^ lane);
            for block in &mut blocks {
                for (lane, word_bytes) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                    *lane = (lane.rotate_left(5) ^ word(word_bytes)).wrapping_mul(K);
                }
            }
            for lane in lanes {
                self.mix(lane);
            }
        }
        let bytes = blocks.remainder();
        let mut words = bytes.chunks_exact(8);
        for word_bytes in &mut words {
            self.mix(word(word_bytes));
        }
        let rest = words.remainder();
        // The length tells "ab" + "" from "a" + "b" across writes.
        self.mix(word(rest) ^ ((rest.len() as u64) << 59));
    }

    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::Hash;

    fn hash<T: Hash + ?Sized>(seed: u64, value: &T) -> u64 {
        Seeded::new(seed).hash_one(value)
    }

    #[test]
    fn equal_keys_hash_equal_and_different_keys_spread() {
        assert_eq!(hash(1, "token"), hash(1, "token"));
        assert_ne!(hash(1, "token"), hash(2, "token"), "the seed matters");
        // Keys that differ in one byte anywhere, and by length, all differ.
        let base = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJyb2JvdCJ9.c2lnbmF0dXJl".repeat(8);
        let mut seen = HashSet::new();
        for i in 0..base.len() {
            let mut bytes = base.clone().into_bytes();
            bytes[i] ^= 1;
            assert!(seen.insert(hash(7, &bytes[..])), "collision at byte {i}");
        }
        for len in 0..base.len() {
            assert!(seen.insert(hash(7, &base.as_bytes()[..len])), "collision at length {len}");
        }
        // Tuples of strings: the boundary between fields counts.
        assert_ne!(hash(3, &("ab", "c")), hash(3, &("a", "bc")));
    }

    #[test]
    fn buckets_fill_evenly() {
        let mut buckets = [0u32; 64];
        for i in 0..64_000 {
            buckets[(hash(9, &format!("system:serviceaccount:ns:robot-{i}")) % 64) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| (800..1200).contains(&n)), "{buckets:?}");
        // Token-sized keys that differ only inside one lane's block spread as well.
        let mut buckets = [0u32; 64];
        let (head, tail) = ("h".repeat(300), "t".repeat(300));
        for i in 0..64_000 {
            buckets[(hash(9, &format!("{head}{i:06}{tail}")) % 64) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| (800..1200).contains(&n)), "{buckets:?}");
    }
}
