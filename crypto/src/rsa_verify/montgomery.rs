//! Montgomery arithmetic modulo one public RSA modulus, tuned for WebAssembly.
//!
//! Why not a bignum crate: `make bench-verify` measured crypto-bigint's Montgomery
//! form (0.5 `DynResidue`, 0.7 `FixedMontyForm`/`BoxedMontyForm`) at 5–8 µs per
//! 2048-bit product inside V8, against 3.6–4.7 µs for this kernel, and an RS256 check
//! is 19 such products. The difference is the limb size: wasm has a 64-bit multiply
//! but no 64×64→128 one, so saturated 32-bit limbs pay a carry chain on every step,
//! while 28-bit limbs let a whole column of products (≤ 147 of them below 2^56) add
//! up in one `u64` with no carry at all — one multiply and one add per step.
//!
//! Every column is a dot product of one operand with the other read backwards; both
//! are kept forwards (a reversed copy of one operand, of `n` once per key), so in wasm
//! [`dot`] runs four products at a time in SIMD (`simd` below). The limbs are `u32`
//! for that, and the column sums `u64`.
//!
//! Variable time on purpose: everything here works on public values (the modulus,
//! the public exponent, the signature), so branching on them leaks nothing. Never
//! use this for private-key operations.
//!
//! Numbers are little-endian vectors of `len()` limbs of [`LIMB_BITS`] bits, every
//! limb below 2^28, and — the invariant every public function keeps — fully reduced
//! (below the modulus). `R` is 2^(28·len).

/// Bits per limb.
pub const LIMB_BITS: u32 = 28;
const MASK: u32 = (1 << LIMB_BITS) - 1;
/// [`MASK`] for column sums.
const MASK64: u64 = MASK as u64;

/// The largest modulus supported, in bits: column sums of `len()` products of two
/// 28-bit limbs must stay below 2^64 (147 × 2^56 < 2^63.2).
pub const MAX_BITS: usize = 4096;

/// An odd modulus with its Montgomery constants, computed once per key.
#[derive(Clone, PartialEq, Eq)]
pub struct Modulus {
    n: Vec<u32>,
    /// `n`'s limbs in reverse order: every column sum below is a forward dot product
    /// of one operand with another read backwards, and [`dot`] wants both forwards.
    n_rev: Vec<u32>,
    /// −n⁻¹ mod 2^28.
    n0_inv: u64,
    /// R² mod n: turns a number into Montgomery form with one product.
    r2: Vec<u32>,
    bits: usize,
}

/// A number in Montgomery form (`x·R mod n`), fully reduced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mont(Vec<u32>);

impl Modulus {
    /// `n` big-endian, leading zeros allowed. `None` unless n is odd, above 1 and at
    /// most [`MAX_BITS`] bits.
    pub fn new(n_be: &[u8]) -> Option<Modulus> {
        let bits = bit_length(n_be);
        if !(2..=MAX_BITS).contains(&bits) || n_be.last().is_none_or(|low| low & 1 == 0) {
            return None;
        }
        let len = bits.div_ceil(LIMB_BITS as usize);
        let n = limbs_from_be(n_be, len)?;
        let n0 = u64::from(*n.first()?);
        // Newton's iteration doubles the correct low bits each round: 1 → 2 → … → 32.
        let mut inv: u64 = 1;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(n0.wrapping_mul(inv)));
        }
        let n0_inv = inv.wrapping_neg() & MASK64;
        let n_rev = reversed(&n);
        let mut modulus = Modulus { n, n_rev, n0_inv, r2: Vec::new(), bits };
        modulus.r2 = modulus.compute_r2()?;
        Some(modulus)
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Length of the modulus in bytes (RFC 8017's `k`).
    pub fn byte_len(&self) -> usize {
        self.bits.div_ceil(8)
    }

    fn len(&self) -> usize {
        self.n.len()
    }

    /// `x` (big-endian, any length) in Montgomery form; `None` unless `x < n`.
    pub fn to_mont(&self, x_be: &[u8]) -> Option<Mont> {
        let x = limbs_from_be(x_be, self.len())?;
        if !less_than(&x, &self.n) {
            return None;
        }
        Some(self.mul(&Mont(x), &Mont(self.r2.clone())))
    }

    /// `x` out of Montgomery form (`x·R⁻¹`), as `byte_len()` big-endian bytes.
    pub fn retrieve(&self, x: &Mont) -> Vec<u8> {
        let mut wide: Vec<u64> = x.0.iter().map(|&limb| u64::from(limb)).collect();
        wide.resize(2 * self.len(), 0);
        limbs_to_be(&self.reduce(&wide), self.byte_len())
    }

    /// `x^e mod n`, left to right over the bits of `e` (`e = 65537`: 16 squarings and
    /// one product). A windowed method would only pay off for long exponents.
    pub fn pow(&self, x: &Mont, e: u64) -> Mont {
        let mut acc = x.clone();
        for bit in (0..e.checked_ilog2().unwrap_or(0)).rev() {
            acc = self.square(&acc);
            if (e >> bit) & 1 == 1 {
                acc = self.mul(&acc, x);
            }
        }
        acc
    }

    /// Montgomery product `a·b·R⁻¹ mod n`.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    pub fn mul(&self, a: &Mont, b: &Mont) -> Mont {
        let len = self.len();
        let b_rev = reversed(&b.0);
        let mut t = vec![0u64; 2 * len];
        // Product scanning: column k is Σ a[i]·b[k−i] over lo ≤ i ≤ hi, with
        // b[k−i] = b_rev[len−1−k+i]; at most `len` products < 2^56.
        for (k, column) in t.iter_mut().enumerate() {
            let lo = k.saturating_sub(len - 1);
            let hi = k.min(len - 1);
            let aa = a.0.get(lo..=hi).unwrap_or_default();
            let from = (len - 1).saturating_sub(k);
            *column = dot(aa, b_rev.get(from..from + aa.len()).unwrap_or_default());
        }
        normalize(&mut t);
        Mont(self.reduce(&t))
    }

    /// Montgomery square `a²·R⁻¹ mod n`: each cross product once, doubled.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    pub fn square(&self, a: &Mont) -> Mont {
        let len = self.len();
        let a_rev = reversed(&a.0);
        let mut t = vec![0u64; 2 * len];
        for (k, column) in t.iter_mut().enumerate() {
            let lo = k.saturating_sub(len - 1);
            let hi = k.min(len - 1);
            if lo > hi {
                continue;
            }
            // i + j = k with lo ≤ i < j ≤ hi: i = lo + t pairs with j = hi − t, and
            // a[hi − t] = a_rev[len−1−hi+t].
            let pairs = (hi - lo).div_ceil(2);
            let from = len - 1 - hi;
            let (Some(aa), Some(bb)) = (a.0.get(lo..lo + pairs), a_rev.get(from..from + pairs)) else {
                continue;
            };
            // ≤ 74 pairs < 2^62.2, doubled < 2^63.2, plus one square < 2^56.
            let mut sum = dot(aa, bb) << 1;
            if k % 2 == 0 {
                let middle = a.0.get(k / 2).copied().map_or(0, u64::from);
                sum += middle * middle;
            }
            *column = sum;
        }
        normalize(&mut t);
        Mont(self.reduce(&t))
    }

    /// Montgomery reduction of `t < n·R` (2·len normalized limbs): `t·R⁻¹ mod n`,
    /// fully reduced.
    ///
    /// Column k of `t + m·n`, where the digits `m[k]` are chosen low to high so that
    /// the low `len` columns vanish. Every column sum is one limb of `t` (< 2^28), the
    /// carry (< 2^36) and at most `len` products (< 147 × 2^56): below 2^64. With
    /// n[k−i] = n_rev[len−1−k+i], each sum is a forward dot product.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    fn reduce(&self, t: &[u64]) -> Vec<u32> {
        let len = self.len();
        let n0 = self.n.first().copied().map_or(1, u64::from);
        let mut m = vec![0u32; len];
        let mut carry = 0u64;
        for k in 0..len {
            // Σ m[i]·n[k−i] for i < k.
            let from = len - 1 - k;
            let mut sum = t.get(k).copied().unwrap_or(0)
                + carry
                + dot(m.get(..k).unwrap_or_default(), self.n_rev.get(from..from + k).unwrap_or_default());
            let digit = ((sum & MASK64) * self.n0_inv) & MASK64;
            sum += digit * n0;
            if let Some(slot) = m.get_mut(k) {
                *slot = digit as u32;
            }
            debug_assert_eq!(sum & MASK64, 0);
            carry = sum >> LIMB_BITS;
        }
        let mut out = vec![0u32; len];
        for (k, limb) in (len..2 * len).zip(out.iter_mut()) {
            // Σ m[i]·n[k−i] for k+1−len ≤ i < len: n_rev from 0.
            let mm = m.get(k + 1 - len..).unwrap_or_default();
            let sum = t.get(k).copied().unwrap_or(0)
                + carry
                + dot(mm, self.n_rev.get(..mm.len()).unwrap_or_default());
            *limb = (sum & MASK64) as u32;
            carry = sum >> LIMB_BITS;
        }
        // The result is below 2n (t < n·R): one subtraction at most. `carry` is a bit
        // above the top limb, possible only when n fills all 28·len bits.
        if carry != 0 || !less_than(&out, &self.n) {
            sub_in_place(&mut out, &self.n);
        }
        out
    }

    /// `2x mod n` for a reduced `x`.
    fn double(&self, x: &mut [u32]) {
        let mut carry = 0u32;
        for limb in x.iter_mut() {
            let v = (*limb << 1) | carry;
            *limb = v & MASK;
            carry = v >> LIMB_BITS;
        }
        if carry != 0 || !less_than(x, &self.n) {
            sub_in_place(x, &self.n);
        }
    }

    /// R² mod n, with `len()` squarings and a few doublings rather than a division:
    /// 2^(bits−1) < n is doubled up to 2R mod n (the Montgomery form of 2), which is
    /// then raised to the power 28·len in Montgomery form — giving the Montgomery
    /// form of 2^(28·len) = R, that is R·R mod n. Multiplying by 2 in Montgomery form
    /// is a plain modular doubling.
    fn compute_r2(&self) -> Option<Vec<u32>> {
        let len = self.len();
        let r_bits = len * LIMB_BITS as usize;
        let mut x = vec![0u32; len];
        let top = self.bits - 1;
        *x.get_mut(top / LIMB_BITS as usize)? = 1 << (top % LIMB_BITS as usize);
        for _ in top..=r_bits {
            self.double(&mut x);
        }
        let two = Mont(x);
        let mut acc = two.clone();
        for bit in (0..r_bits.ilog2()).rev() {
            acc = self.square(&acc);
            if (r_bits >> bit) & 1 == 1 {
                self.double(&mut acc.0);
            }
        }
        Some(acc.0)
    }
}

impl std::fmt::Debug for Modulus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Modulus({} bits)", self.bits)
    }
}

/// `limbs` in reverse order.
fn reversed(limbs: &[u32]) -> Vec<u32> {
    limbs.iter().rev().copied().collect()
}

/// Σ a[i]·b[i] over the shorter of the two, one product at a time. Limbs below 2^28
/// and at most 147 of them: no overflow.
fn scalar_dot(a: &[u32], b: &[u32]) -> u64 {
    a.iter().zip(b).map(|(&x, &y)| u64::from(x) * u64::from(y)).sum()
}

#[cfg(not(target_arch = "wasm32"))]
use self::scalar_dot as dot;

#[cfg(target_arch = "wasm32")]
use self::simd::dot;

/// The dot product with wasm SIMD, four products at a time: nearly all of an RSA
/// check's time is in [`dot`], and V8 turns `i64x2.extmul_{low,high}_i32x4_u` into
/// `pmuludq`, two 32×32→64 products an instruction where scalar wasm has one. In
/// `make bench-verify` RS256 went from 101–107 to 71–76 µs a check in V8.
///
/// `mul`, `square` and `reduce` are compiled with `simd128` so that [`dot`] inlines
/// into their column loops (a call per column cost a third of the gain); the rest of
/// the filter is not, and nothing else changes. The module then needs a host with
/// fixed-width SIMD, which every proxy-wasm runtime it runs on has (`docs/hosts.md`).
/// Widening every column to whole vectors (zeros in front of the operands) instead of
/// the scalar tail was measured slower: 86–92 µs.
#[cfg(target_arch = "wasm32")]
mod simd {
    use core::arch::wasm32::{
        i64x2_add, u32x4, u32x4_min, u32x4_splat, u64x2_extmul_high_u32x4, u64x2_extmul_low_u32x4,
        u64x2_extract_lane, u64x2_splat, v128,
    };

    /// Four limbs into one vector: `u32x4` of a chunk is one `v128.load`.
    #[inline(always)]
    fn lanes(chunk: &[u32]) -> Option<v128> {
        let &[a, b, c, d] = chunk else { return None };
        Some(u32x4(a, b, c, d))
    }

    #[inline(always)]
    pub(super) fn dot(a: &[u32], b: &[u32]) -> u64 {
        let len = a.len().min(b.len());
        let (a, b) = (a.get(..len).unwrap_or_default(), b.get(..len).unwrap_or_default());
        // A no-op on limbs below 2^28 that LLVM cannot see through: without it, LLVM
        // narrows each load into `v128.load32x2_u` and multiplies with `i64x2.mul`,
        // which V8 emulates with three `pmuludq` and shifts (measured: no faster than
        // scalar code).
        let limb = u32x4_splat(super::MASK);
        let mut acc = u64x2_splat(0);
        let (mut chunks_a, mut chunks_b) = (a.chunks_exact(4), b.chunks_exact(4));
        for (x, y) in (&mut chunks_a).zip(&mut chunks_b) {
            let (Some(x), Some(y)) = (lanes(x), lanes(y)) else { continue };
            let (x, y) = (u32x4_min(x, limb), u32x4_min(y, limb));
            acc = i64x2_add(acc, u64x2_extmul_low_u32x4(x, y));
            acc = i64x2_add(acc, u64x2_extmul_high_u32x4(x, y));
        }
        let tail = super::scalar_dot(chunks_a.remainder(), chunks_b.remainder());
        u64x2_extract_lane::<0>(acc) + u64x2_extract_lane::<1>(acc) + tail
    }
}

/// Carries column sums into 28-bit limbs (the value is unchanged and fits).
fn normalize(t: &mut [u64]) {
    let mut carry = 0u64;
    for limb in t.iter_mut() {
        let v = *limb + carry;
        *limb = v & MASK64;
        carry = v >> LIMB_BITS;
    }
    debug_assert_eq!(carry, 0);
}

/// `a < b`, both `len` limbs.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a -= b` modulo 2^(28·len) (the caller knows the true result is non-negative,
/// counting any carry bit it holds above `a`).
fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0u32;
    for (x, y) in a.iter_mut().zip(b) {
        let v = x.wrapping_sub(*y).wrapping_sub(borrow);
        *x = v & MASK;
        borrow = v >> 31;
    }
}

/// Number of significant bits of a big-endian number.
pub fn bit_length(be: &[u8]) -> usize {
    match be.iter().position(|&b| b != 0) {
        None => 0,
        Some(first) => {
            let lead = be.get(first).copied().unwrap_or(0);
            (be.len() - first - 1) * 8 + (8 - lead.leading_zeros() as usize)
        }
    }
}

/// Big-endian bytes to `len` 28-bit limbs; `None` if the number does not fit.
fn limbs_from_be(be: &[u8], len: usize) -> Option<Vec<u32>> {
    if bit_length(be) > len * LIMB_BITS as usize {
        return None;
    }
    let mut out = vec![0u32; len];
    for (index, &byte) in be.iter().rev().enumerate() {
        if byte == 0 {
            continue;
        }
        let bit = index * 8;
        let (limb, shift) = (bit / LIMB_BITS as usize, bit % LIMB_BITS as usize);
        let value = u64::from(byte) << shift;
        *out.get_mut(limb)? |= (value & MASK64) as u32;
        if value > MASK64 {
            *out.get_mut(limb + 1)? |= (value >> LIMB_BITS) as u32;
        }
    }
    Some(out)
}

/// Limbs to exactly `byte_len` big-endian bytes (the value must fit).
fn limbs_to_be(limbs: &[u32], byte_len: usize) -> Vec<u8> {
    let mut out = vec![0u8; byte_len];
    let mut acc = 0u64;
    let mut acc_bits = 0u32;
    let mut bytes = out.iter_mut().rev();
    for &limb in limbs {
        acc |= u64::from(limb) << acc_bits;
        acc_bits += LIMB_BITS;
        while acc_bits >= 8 {
            if let Some(byte) = bytes.next() {
                *byte = acc as u8;
            }
            acc >>= 8;
            acc_bits -= 8;
        }
    }
    if let Some(byte) = bytes.next() {
        *byte = acc as u8;
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::{Rng, RngCore, SeedableRng};
    use rsa::BigUint;

    use super::*;

    fn random_odd_modulus(rng: &mut impl RngCore, bits: usize) -> Vec<u8> {
        let mut n = vec![0u8; bits.div_ceil(8)];
        rng.fill_bytes(&mut n);
        let top_bits = bits - (n.len() - 1) * 8;
        n[0] &= ((1u16 << top_bits) - 1) as u8;
        n[0] |= 1 << (top_bits - 1);
        *n.last_mut().unwrap() |= 1;
        n
    }

    fn below(rng: &mut impl RngCore, n: &BigUint) -> BigUint {
        let mut bytes = vec![0u8; n.to_bytes_be().len()];
        rng.fill_bytes(&mut bytes);
        BigUint::from_bytes_be(&bytes) % n
    }

    #[test]
    fn agrees_with_num_bigint_on_random_moduli() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Every limb-boundary case around the supported sizes, and some odd ones.
        let mut sizes =
            vec![2, 3, 27, 28, 29, 55, 56, 57, 255, 256, 1000, 2047, 2048, 2049, 2072, 3072, 4095];
        sizes.push(4096);
        for bits in sizes {
            for _ in 0..4 {
                let n_be = random_odd_modulus(&mut rng, bits);
                let m = Modulus::new(&n_be).unwrap();
                assert_eq!(m.bits(), bits);
                let n = BigUint::from_bytes_be(&n_be);
                let r = BigUint::from(1u8) << (m.len() * 28);
                assert_eq!(BigUint::from_bytes_be(&limbs_to_be(&m.r2, m.byte_len())), (&r * &r) % &n);
                let a = below(&mut rng, &n);
                let b = below(&mut rng, &n);
                let (ma, mb) = (m.to_mont(&a.to_bytes_be()).unwrap(), m.to_mont(&b.to_bytes_be()).unwrap());
                let back = |x: &Mont| BigUint::from_bytes_be(&m.retrieve(x));
                assert_eq!(back(&ma), a);
                assert_eq!(back(&m.mul(&ma, &mb)), (&a * &b) % &n, "{bits} bits");
                assert_eq!(back(&m.square(&ma)), (&a * &a) % &n, "{bits} bits");
                let e = rng.gen_range(1u64..1 << 33) | 1;
                for e in [1, 3, 65537, e] {
                    assert_eq!(back(&m.pow(&ma, e)), a.modpow(&BigUint::from(e), &n), "{bits} bits, e={e}");
                }
                assert_eq!(m.retrieve(&ma).len(), bits.div_ceil(8));
            }
        }
    }

    #[test]
    fn extreme_operands() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for bits in [2048, 2072, 4096] {
            let n_be = random_odd_modulus(&mut rng, bits);
            let m = Modulus::new(&n_be).unwrap();
            let n = BigUint::from_bytes_be(&n_be);
            let n_minus_1 = &n - 1u8;
            for x in [BigUint::from(0u8), BigUint::from(1u8), n_minus_1.clone()] {
                let mx = m.to_mont(&x.to_bytes_be()).unwrap();
                let got = BigUint::from_bytes_be(&m.retrieve(&m.pow(&mx, 65537)));
                assert_eq!(got, x.modpow(&BigUint::from(65537u32), &n));
            }
            // x ≥ n is not a residue.
            assert!(m.to_mont(&n_be).is_none());
            assert!(m.to_mont(&(&n + 1u8).to_bytes_be()).is_none());
            let mut long = vec![0u8; 700];
            long[699] = 5;
            assert!(m.to_mont(&long).is_some(), "leading zeros are only zeros");
        }
        // The all-ones modulus fills every limb bit: the carry path of `reduce`.
        let ones = vec![0xffu8; 259]; // 2072 = 74 × 28 bits
        let m = Modulus::new(&ones).unwrap();
        let n = BigUint::from_bytes_be(&ones);
        let x = &n - 2u8;
        let mx = m.to_mont(&x.to_bytes_be()).unwrap();
        assert_eq!(BigUint::from_bytes_be(&m.retrieve(&m.pow(&mx, 65537))), x.modpow(&65537u32.into(), &n));
    }

    #[test]
    fn refuses_even_tiny_and_oversized_moduli() {
        assert!(Modulus::new(&[]).is_none());
        assert!(Modulus::new(&[0, 0, 1]).is_none());
        assert!(Modulus::new(&[0x10, 0x00]).is_none());
        let mut big = vec![0xffu8; MAX_BITS / 8 + 1];
        assert!(Modulus::new(&big).is_none());
        big[0] = 0;
        assert!(Modulus::new(&big).is_some(), "leading zero bytes do not count");
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0, 1]), 1);
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(bit_length(&[0, 0x7f, 0]), 15);
    }
}
