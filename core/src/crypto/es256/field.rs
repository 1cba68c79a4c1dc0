//! The P-256 base field for the verifier's point arithmetic, written for WebAssembly.
//!
//! Why not p256's `FieldElement`: on 32-bit targets p256 0.13 still computes with
//! 64-bit words and 128-bit products (its `field32` converts to 64-bit limbs), and
//! wasm has no 64×64→128 multiply, so every product is a call to compiler-rt's
//! `__multi3`. `make wasm-profile` (`WASM_PROFILE_CASE=rotating-es256`) measured a
//! first-seen ES256 token at 221 µs of crypto inside the wasm, 155 µs of it in p256's
//! `fe_mul` and 98 µs of that in `__multi3`. Here words are 32 bits and every product
//! is a native 32×32→64 one (`i64.mul`).
//!
//! Elements are kept in Montgomery form with R = 2^256 — the same form p256 uses, so
//! the tests hold every operation to p256's on random inputs — little-endian words,
//! always fully reduced (below p). Variable time is fine: the verifier only handles
//! public values.

use std::sync::OnceLock;

/// p = 2^256 − 2^224 + 2^192 + 2^96 − 1, little-endian 32-bit words.
const P: [u32; 8] = [0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0, 0, 0, 1, 0xffff_ffff];

/// A field element in Montgomery form (`x·R mod p`), fully reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fe([u32; 8]);

impl Fe {
    pub const ZERO: Fe = Fe([0; 8]);
    /// R mod p = 2^224 − 2^192 − 2^96 + 1: the Montgomery form of 1.
    pub const ONE: Fe = Fe([1, 0, 0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_fffe, 0]);

    /// The element of a 32-byte big-endian integer; `None` unless it is below p.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Fe> {
        let mut words = [0u32; 8];
        for (word, chunk) in words.iter_mut().zip(bytes.rchunks_exact(4)) {
            let mut be = [0u8; 4];
            be.copy_from_slice(chunk);
            *word = u32::from_be_bytes(be);
        }
        if !less_than_p(&words) {
            return None;
        }
        Some(Fe(words).mul(r2()))
    }

    /// The element as a 32-byte big-endian integer (out of Montgomery form): tests
    /// compare with p256's elements through it.
    #[cfg(test)]
    pub fn to_bytes(self) -> [u8; 32] {
        let plain = self.mul(&Fe([1, 0, 0, 0, 0, 0, 0, 0]));
        let mut out = [0u8; 32];
        for (chunk, word) in out.rchunks_exact_mut(4).zip(plain.0) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }

    /// Montgomery product `self·rhs·R⁻¹ mod p` (CIOS, one word of `rhs` at a time).
    /// −p⁻¹ mod 2^32 is 1 (p ends in 32 one bits), so each round's Montgomery digit
    /// is the low word itself.
    pub fn mul(&self, rhs: &Fe) -> Fe {
        // t < 2p between rounds: 8 words and a top bit (t[8]); t[9] catches a carry.
        let mut t = [0u32; 10];
        for &b in &rhs.0 {
            let b = u64::from(b);
            let mut carry = 0u64;
            for (tj, &aj) in t.iter_mut().zip(&self.0) {
                // (2^32−1)² + 2·(2^32−1) = 2^64 − 1: no overflow.
                let sum = u64::from(*tj) + u64::from(aj) * b + carry;
                *tj = sum as u32;
                carry = sum >> 32;
            }
            let top = u64::from(t[8]) + carry;
            t[8] = top as u32;
            t[9] = (top >> 32) as u32;
            // Add m·p, with m = t[0], and drop the low word (which becomes zero).
            let m = u64::from(t[0]);
            let mut carry = (u64::from(t[0]) + m * u64::from(P[0])) >> 32;
            let mut next = [0u32; 10];
            for ((out, &tj), &pj) in next.iter_mut().zip(t.iter().skip(1)).zip(P.iter().skip(1)) {
                let sum = u64::from(tj) + m * u64::from(pj) + carry;
                *out = sum as u32;
                carry = sum >> 32;
            }
            let top = u64::from(t[8]) + carry;
            next[7] = top as u32;
            next[8] = t[9] + (top >> 32) as u32;
            t = next;
        }
        let mut out = [0u32; 8];
        out.copy_from_slice(t.get(..8).unwrap_or(&[0; 8]));
        if t[8] != 0 || !less_than_p(&out) {
            out = sub_words(&out, &P).0;
        }
        Fe(out)
    }

    pub fn square(&self) -> Fe {
        self.mul(self)
    }

    /// `self + rhs mod p`.
    pub fn add(&self, rhs: &Fe) -> Fe {
        let (mut out, carry) = add_words(&self.0, &rhs.0);
        if carry || !less_than_p(&out) {
            out = sub_words(&out, &P).0;
        }
        Fe(out)
    }

    /// `self − rhs mod p`.
    pub fn sub(&self, rhs: &Fe) -> Fe {
        let (out, borrow) = sub_words(&self.0, &rhs.0);
        // Below zero by less than p: adding p (mod 2^256) lands in [0, p).
        Fe(if borrow { add_words(&out, &P).0 } else { out })
    }

    pub fn double(&self) -> Fe {
        self.add(self)
    }

    pub fn neg(&self) -> Fe {
        Fe::ZERO.sub(self)
    }
}

/// R² mod p (2^512 mod p), which [`Fe::from_bytes`] multiplies by: 1 doubled 512
/// times, once per VM.
fn r2() -> &'static Fe {
    static R2: OnceLock<Fe> = OnceLock::new();
    R2.get_or_init(|| {
        // Plain (not Montgomery) arithmetic: add and sub are the same in both forms.
        let mut x = Fe([1, 0, 0, 0, 0, 0, 0, 0]);
        for _ in 0..512 {
            x = x.double();
        }
        x
    })
}

/// `words < p` (little-endian).
fn less_than_p(words: &[u32; 8]) -> bool {
    for (w, p) in words.iter().rev().zip(P.iter().rev()) {
        if w != p {
            return w < p;
        }
    }
    false
}

/// `a + b` mod 2^256, and whether it carried out of the top word.
fn add_words(a: &[u32; 8], b: &[u32; 8]) -> ([u32; 8], bool) {
    let mut out = [0u32; 8];
    let mut carry = 0u64;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let sum = u64::from(x) + u64::from(y) + carry;
        *o = sum as u32;
        carry = sum >> 32;
    }
    (out, carry != 0)
}

/// `a − b` mod 2^256, and whether it borrowed (`a < b`). With `b = p` and
/// `p ≤ a < 2p` (a carry out of the top word included), the difference itself.
fn sub_words(a: &[u32; 8], b: &[u32; 8]) -> ([u32; 8], bool) {
    let mut out = [0u32; 8];
    let mut borrow = 0u64;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let diff = u64::from(x).wrapping_sub(u64::from(y)).wrapping_sub(borrow);
        *o = diff as u32;
        borrow = diff >> 63;
    }
    (out, borrow != 0)
}

// Operators, so that the point formulas read like the paper's.
impl std::ops::Add for Fe {
    type Output = Fe;
    fn add(self, rhs: Fe) -> Fe {
        Fe::add(&self, &rhs)
    }
}

impl std::ops::Sub for Fe {
    type Output = Fe;
    fn sub(self, rhs: Fe) -> Fe {
        Fe::sub(&self, &rhs)
    }
}

impl std::ops::Mul for Fe {
    type Output = Fe;
    fn mul(self, rhs: Fe) -> Fe {
        Fe::mul(&self, &rhs)
    }
}

impl std::ops::Neg for Fe {
    type Output = Fe;
    fn neg(self) -> Fe {
        Fe::neg(&self)
    }
}
