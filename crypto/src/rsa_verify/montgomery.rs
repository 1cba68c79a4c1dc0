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
//!
//! A check converts nothing into or out of Montgomery form: the signature is read as
//! the form of s·R⁻¹ ([`Modulus::power`], [`Modulus::power_matches`]), and per-key
//! powers of R undo that at the end, where a product (PSS) or a few limbs' worth of
//! one (PKCS#1 v1.5) costs less than the conversions would. An RS256 check in Envoy's
//! V8 went from 75–76 µs to 72–73 (no conversion in, no allocation per product), then
//! to 68–69 (no conversion out); sixteen-bit limbs with `i32x4.dot_i16x8_s` (eight
//! products an instruction, four times as many products) took 133 µs, and one level
//! of Karatsuba for the squares 77 (see `square_into`).

/// Bits per limb.
pub const LIMB_BITS: u32 = 28;
const MASK: u32 = (1 << LIMB_BITS) - 1;
/// [`MASK`] for column sums.
const MASK64: u64 = MASK as u64;

/// The largest modulus supported, in bits: column sums of `len()` products of two
/// 28-bit limbs must stay below 2^64 (147 × 2^56 < 2^63.2).
pub const MAX_BITS: usize = 4096;
/// Limbs of the largest modulus: the size of the stack buffers below, so that a check
/// allocates nothing per product (an RS256 check is 19 of them).
const MAX_LEN: usize = MAX_BITS.div_ceil(LIMB_BITS as usize);

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

    /// `x` (big-endian, any length) as `len()` limbs; `None` unless `x < n`, the one
    /// check every number from outside (a signature, an encoding) passes.
    fn residue(&self, x_be: &[u8]) -> Option<Vec<u32>> {
        let x = limbs_from_be(x_be, self.len())?;
        less_than(&x, &self.n).then_some(x)
    }

    /// `x·R⁻¹ mod n`: a number out of Montgomery form (one reduction of `x` widened).
    fn out_of_mont(&self, x: &[u32]) -> Vec<u32> {
        let mut wide: Vec<u64> = x.iter().map(|&limb| u64::from(limb)).collect();
        wide.resize(2 * self.len(), 0);
        let mut out = vec![0u32; self.len()];
        self.reduce_into(&wide, &mut out);
        out
    }

    /// `x` (big-endian, any length) in Montgomery form; `None` unless `x < n`.
    #[cfg(test)]
    pub fn to_mont(&self, x_be: &[u8]) -> Option<Mont> {
        let x = self.residue(x_be)?;
        Some(self.mul(&Mont(x), &Mont(self.r2.clone())))
    }

    /// `x` out of Montgomery form (`x·R⁻¹`), as `byte_len()` big-endian bytes.
    #[cfg(test)]
    pub fn retrieve(&self, x: &Mont) -> Vec<u8> {
        limbs_to_be(&self.out_of_mont(&x.0), self.byte_len())
    }

    /// `x^e mod n`, left to right over the bits of `e` (`e = 65537`: 16 squarings and
    /// one product). A windowed method would only pay off for long exponents.
    pub fn pow(&self, x: &Mont, e: u64) -> Mont {
        let mut acc = vec![0u32; self.len()];
        self.pow_into(&x.0, e, &mut acc);
        Mont(acc)
    }

    /// [`Modulus::pow`] into `acc` (`len()` limbs), with one scratch number on the stack.
    fn pow_into(&self, x: &[u32], e: u64, acc: &mut [u32]) {
        let mut scratch = [0u32; MAX_LEN];
        let Some(tmp) = scratch.get_mut(..self.len()) else { return };
        acc.copy_from_slice(x);
        for bit in (0..e.checked_ilog2().unwrap_or(0)).rev() {
            self.square_into(acc, tmp);
            if (e >> bit) & 1 == 1 {
                self.mul_into(tmp, x, acc);
            } else {
                acc.copy_from_slice(tmp);
            }
        }
    }

    /// R^e mod n, what [`Modulus::power`] multiplies by to leave `x^e` out of
    /// Montgomery form: computed once per key.
    pub fn power_of_r(&self, e: u64) -> PowerOfR {
        // r2 is R in Montgomery form, so its e-th power is R^e in Montgomery form
        // (R^(e+1) mod n): one reduction takes it out.
        let r_to_e = self.pow(&Mont(self.r2.clone()), e);
        PowerOfR { e, limbs: self.out_of_mont(&r_to_e.0) }
    }

    /// `x^e mod n` for `x` big-endian (any length; `None` unless `x < n`), as
    /// `byte_len()` bytes big-endian, with `e` and R^e mod n from
    /// [`Modulus::power_of_r`].
    ///
    /// No conversion into Montgomery form: `x` itself is read as the form of x·R⁻¹, whose
    /// e-th power in Montgomery arithmetic is the form of x^e·R^(−e), the number
    /// x^e·R^(1−e); one Montgomery product with R^e leaves x^e. That is one product for
    /// both conversions where `to_mont` and `retrieve` cost a product and a reduction:
    /// one reduction (a third of a squaring) fewer per check.
    pub fn power(&self, x_be: &[u8], power_of_r: &PowerOfR) -> Option<Vec<u8>> {
        let len = self.len();
        let x = self.residue(x_be)?;
        if power_of_r.limbs.len() != len {
            return None;
        }
        let mut acc = [0u32; MAX_LEN];
        let mut out = [0u32; MAX_LEN];
        let (acc, out) = (acc.get_mut(..len)?, out.get_mut(..len)?);
        self.pow_into(&x, power_of_r.e, acc);
        self.mul_into(acc, &power_of_r.limbs, out);
        Some(limbs_to_be(out, self.byte_len()))
    }

    /// Montgomery product `a·b·R⁻¹ mod n`.
    #[cfg(test)]
    pub fn mul(&self, a: &Mont, b: &Mont) -> Mont {
        let mut out = vec![0u32; self.len()];
        self.mul_into(&a.0, &b.0, &mut out);
        Mont(out)
    }

    /// [`Modulus::mul`] into `out`.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    fn mul_into(&self, a: &[u32], b: &[u32], out: &mut [u32]) {
        let len = self.len();
        let mut b_rev = [0u32; MAX_LEN];
        let mut t = [0u64; 2 * MAX_LEN];
        let (Some(b_rev), Some(t)) = (b_rev.get_mut(..len), t.get_mut(..2 * len)) else { return };
        reverse_into(b, b_rev);
        // Product scanning: column k is Σ a[i]·b[k−i] over lo ≤ i ≤ hi, with
        // b[k−i] = b_rev[len−1−k+i]; at most `len` products < 2^56.
        for (k, column) in t.iter_mut().enumerate() {
            let lo = k.saturating_sub(len - 1);
            let hi = k.min(len - 1);
            let aa = a.get(lo..=hi).unwrap_or_default();
            let from = (len - 1).saturating_sub(k);
            *column = dot(aa, b_rev.get(from..from + aa.len()).unwrap_or_default());
        }
        normalize(t);
        self.reduce_into(t, out);
    }

    /// Montgomery square `a²·R⁻¹ mod n`.
    pub fn square(&self, a: &Mont) -> Mont {
        let mut out = vec![0u32; self.len()];
        self.square_into(&a.0, &mut out);
        Mont(out)
    }

    /// [`Modulus::square`] into `out`.
    ///
    /// One level of Karatsuba (three squares of half the size, 3/4 of the products) was
    /// measured slower in Envoy's V8: 76.6–77.2 µs an RS256 check against 72.3–72.7, the
    /// shorter columns' scalar tails and the extra passes costing more than it saved.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    fn square_into(&self, a: &[u32], out: &mut [u32]) {
        let len = self.len();
        let mut t = [0u64; 2 * MAX_LEN];
        let Some(t) = t.get_mut(..2 * len) else { return };
        square_columns(a, t);
        normalize(t);
        self.reduce_into(t, out);
    }

    /// Montgomery reduction of `t < n·R` (2·len normalized limbs) into `out`:
    /// `t·R⁻¹ mod n`, fully reduced.
    ///
    /// Column k of `t + m·n`, where the digits `m[k]` are chosen low to high so that
    /// the low `len` columns vanish. Every column sum is one limb of `t` (< 2^28), the
    /// carry (< 2^36) and at most `len` products (< 147 × 2^56): below 2^64. With
    /// n[k−i] = n_rev[len−1−k+i], each sum is a forward dot product.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    fn reduce_into(&self, t: &[u64], out: &mut [u32]) {
        let len = self.len();
        let n0 = self.n.first().copied().map_or(1, u64::from);
        let mut m = [0u32; MAX_LEN];
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
        for (k, limb) in (len..2 * len).zip(out.iter_mut()) {
            // Σ m[i]·n[k−i] for k+1−len ≤ i < len: n_rev from 0.
            let mm = m.get(k + 1 - len..len).unwrap_or_default();
            let sum = t.get(k).copied().unwrap_or(0)
                + carry
                + dot(mm, self.n_rev.get(..mm.len()).unwrap_or_default());
            *limb = (sum & MASK64) as u32;
            carry = sum >> LIMB_BITS;
        }
        // The result is below 2n (t < n·R): one subtraction at most. `carry` is a bit
        // above the top limb, possible only when n fills all 28·len bits.
        if carry != 0 || !less_than(out, &self.n) {
            sub_in_place(out, &self.n);
        }
    }

    /// K = R^(1−e) mod n in Montgomery form, what [`Modulus::padded_target`] builds on;
    /// `None` for `e < 2`.
    pub fn inverse_power_of_r(&self, e: u64) -> Option<InversePowerOfR> {
        if e < 2 {
            return None;
        }
        // 1 is the Montgomery form of R⁻¹, so its (e−1)-th power is the form of
        // R^(1−e) = K: the number K·R.
        let mut one = vec![0u32; self.len()];
        *one.first_mut()? = 1;
        let mut k_r = vec![0u32; self.len()];
        self.pow_into(&one, e - 1, &mut k_r);
        Some(InversePowerOfR { e, k_r })
    }

    /// The constants of PKCS#1 v1.5 checks by this modulus with one hash, for the
    /// exponent `inverse` belongs to: `padded_be` is the encoding with zeros where the
    /// digest goes (`k` bytes), `hash_len` the digest's length. `None` if `padded_be` is
    /// not below n or the digest is longer than [`HASH_MAX_BYTES`]. See
    /// [`Modulus::power_matches`].
    pub fn padded_target(
        &self,
        inverse: &InversePowerOfR,
        padded_be: &[u8],
        hash_len: usize,
    ) -> Option<PaddedTarget> {
        let len = self.len();
        if hash_len > HASH_MAX_BYTES || inverse.k_r.len() != len {
            return None;
        }
        let padded = self.residue(padded_be)?;
        let mut fixed = vec![0u32; len];
        self.mul_into(&padded, &inverse.k_r, &mut fixed);
        let hash_limbs = (8 * hash_len).div_ceil(LIMB_BITS as usize);
        // 2^(28·h) mod n: limb h set when that is below n (every key of 2048 bits or
        // more), doublings of 1 otherwise.
        let shift_bits = hash_limbs * LIMB_BITS as usize;
        let mut shift = vec![0u32; len];
        if shift_bits < self.bits {
            *shift.get_mut(hash_limbs)? = 1;
        } else {
            *shift.first_mut()? = 1;
            for _ in 0..shift_bits {
                self.double(&mut shift);
            }
        }
        let mut scale = vec![0u32; len];
        self.mul_into(&shift, &inverse.k_r, &mut scale);
        Some(PaddedTarget { e: inverse.e, fixed, scale, hash_len, hash_limbs })
    }

    /// Whether `x^e mod n` (`x` big-endian, below n) is the encoding `padded + hash`
    /// whose constants `target` holds ([`Modulus::padded_target`]).
    ///
    /// Neither side leaves Montgomery arithmetic: the power of `x` read as the form of
    /// x·R⁻¹ is x^e·K with K = R^(1−e) (see [`Modulus::power`]), and the encoding times
    /// K is `padded`·K (per key) plus `hash`·K, the digest being only a few limbs: its
    /// product with K·2^(28·h) (per key) reduced by those h limbs. That costs
    /// 2·h·len products (h = 10 for SHA-256) where leaving Montgomery form would cost
    /// 2·len²: about 6 % of an RS256 check. K is invertible modulo n, so the two sides
    /// agree exactly when x^e ≡ padded + hash (mod n); for an encoding below n (every
    /// PKCS#1 v1.5 encoding is: it starts `00 01`) that is x^e mod n = padded + hash.
    pub fn power_matches(&self, x_be: &[u8], target: &PaddedTarget, hash: &[u8]) -> bool {
        let len = self.len();
        let Some(x) = self.residue(x_be) else { return false };
        if hash.len() != target.hash_len || target.fixed.len() != len || target.scale.len() != len {
            return false;
        }
        let (mut power, mut want) = ([0u32; MAX_LEN], [0u32; MAX_LEN]);
        let (Some(power), Some(want)) = (power.get_mut(..len), want.get_mut(..len)) else { return false };
        self.pow_into(&x, target.e, power);
        if self.scaled_hash(hash, target, want).is_none() {
            return false;
        }
        self.add_in_place(want, &target.fixed);
        power == want
    }

    /// `hash`·K mod n into `out`: the digest's h limbs times K·2^(28·h), then h
    /// Montgomery reduction steps (operand scanning: there are only h of them).
    fn scaled_hash(&self, hash: &[u8], target: &PaddedTarget, out: &mut [u32]) -> Option<()> {
        let len = self.len();
        let h = target.hash_limbs;
        let digest = limbs_from_be(hash, h)?;
        let mut t = [0u64; MAX_LEN + HASH_MAX_LIMBS + 1];
        let t = t.get_mut(..len + h + 1)?;
        // Column sums of h products (< 2^56 each), then at most h more from the
        // reduction: below 2^62.
        for (i, &d) in digest.iter().enumerate() {
            for (slot, &s) in t.iter_mut().skip(i).zip(&target.scale) {
                *slot += u64::from(d) * u64::from(s);
            }
        }
        let n0 = u64::from(*self.n.first()?);
        let mut carry = 0u64;
        for k in 0..h {
            let column = t.get(k).copied()? + carry;
            let digit = ((column & MASK64) * self.n0_inv) & MASK64;
            carry = (column + digit * n0) >> LIMB_BITS;
            for (slot, &limb) in t.iter_mut().skip(k + 1).zip(self.n.iter().skip(1)) {
                *slot += digit * u64::from(limb);
            }
        }
        // What is left, (hash·K·2^(28·h) + m·n) / 2^(28·h), is below 2n.
        for (slot, limb) in t.iter().skip(h).zip(out.iter_mut()) {
            let v = slot + carry;
            *limb = (v & MASK64) as u32;
            carry = v >> LIMB_BITS;
        }
        let top = t.get(h + len).copied()? + carry;
        if top != 0 || !less_than(out, &self.n) {
            sub_in_place(out, &self.n);
        }
        Some(())
    }

    /// `a = a + b mod n` for reduced `a` and `b`.
    fn add_in_place(&self, a: &mut [u32], b: &[u32]) {
        let mut carry = 0u32;
        for (x, &y) in a.iter_mut().zip(b) {
            let v = *x + y + carry;
            *x = v & MASK;
            carry = v >> LIMB_BITS;
        }
        if carry != 0 || !less_than(a, &self.n) {
            sub_in_place(a, &self.n);
        }
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

/// The longest digest [`Modulus::padded_target`] takes: SHA-512's.
pub const HASH_MAX_BYTES: usize = 64;
const HASH_MAX_LIMBS: usize = (8 * HASH_MAX_BYTES).div_ceil(LIMB_BITS as usize);

/// K = R^(1−e) mod n in Montgomery form (the number K·R = R^(2−e) mod n), with the
/// exponent `e` it belongs to ([`Modulus::inverse_power_of_r`]).
pub struct InversePowerOfR {
    e: u64,
    k_r: Vec<u32>,
}

/// What a PKCS#1 v1.5 check by one key with one hash compares with, computed once per
/// key: with K = R^(1−e) mod n, the encoding's fixed part (everything but the digest)
/// times K, and K·2^(28·h) for a digest of h limbs ([`Modulus::power_matches`]).
#[derive(Clone, PartialEq, Eq)]
pub struct PaddedTarget {
    e: u64,
    fixed: Vec<u32>,
    scale: Vec<u32>,
    hash_len: usize,
    hash_limbs: usize,
}

/// R^e mod n for one modulus and the exponent `e` it belongs to
/// ([`Modulus::power_of_r`]).
#[derive(Clone, PartialEq, Eq)]
pub struct PowerOfR {
    e: u64,
    limbs: Vec<u32>,
}

/// `limbs` in reverse order.
fn reversed(limbs: &[u32]) -> Vec<u32> {
    limbs.iter().rev().copied().collect()
}

/// `from` in reverse order into `to` (the shorter of the two).
fn reverse_into(from: &[u32], to: &mut [u32]) {
    for (slot, &limb) in to.iter_mut().zip(from.iter().rev()) {
        *slot = limb;
    }
}

/// The column sums of a² (2·len of them, the last one 0), not normalized: each cross
/// product once, doubled.
#[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
fn square_columns(a: &[u32], t: &mut [u64]) {
    let len = a.len();
    let mut a_rev = [0u32; MAX_LEN];
    let Some(a_rev) = a_rev.get_mut(..len) else { return };
    reverse_into(a, a_rev);
    for (k, column) in t.iter_mut().enumerate() {
        let lo = k.saturating_sub(len - 1);
        let hi = k.min(len - 1);
        if lo > hi {
            *column = 0;
            continue;
        }
        // i + j = k with lo ≤ i < j ≤ hi: i = lo + t pairs with j = hi − t, and
        // a[hi − t] = a_rev[len−1−hi+t].
        let pairs = (hi - lo).div_ceil(2);
        let from = len - 1 - hi;
        let (Some(aa), Some(bb)) = (a.get(lo..lo + pairs), a_rev.get(from..from + pairs)) else {
            continue;
        };
        // ≤ 74 pairs < 2^62.2, doubled < 2^63.2, plus one square < 2^56.
        let mut sum = dot(aa, bb) << 1;
        if k % 2 == 0 {
            let middle = a.get(k / 2).copied().map_or(0, u64::from);
            sum += middle * middle;
        }
        *column = sum;
    }
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
                    let expected = a.modpow(&BigUint::from(e), &n);
                    assert_eq!(back(&m.pow(&ma, e)), expected, "{bits} bits, e={e}");
                    let power = m.power(&a.to_bytes_be(), &m.power_of_r(e)).unwrap();
                    assert_eq!(power.len(), m.byte_len());
                    assert_eq!(BigUint::from_bytes_be(&power), expected, "power, {bits} bits, e={e}");
                }
                assert_eq!(m.retrieve(&ma).len(), bits.div_ceil(8));
            }
        }
    }

    /// `power_matches` on random moduli: x^e mod n split into a "padded" part and a
    /// digest-sized tail, for every digest length, is matched; a bit off anywhere is not.
    #[test]
    fn power_matches_agrees_with_num_bigint() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for bits in [520, 600, 1000, 2047, 2048, 2072, 3072, 4096] {
            let n_be = random_odd_modulus(&mut rng, bits);
            let m = Modulus::new(&n_be).unwrap();
            let n = BigUint::from_bytes_be(&n_be);
            let k = m.byte_len();
            for hash_len in [32, 48, 64] {
                for e in [3u64, 65537, rng.gen_range(3u64..1 << 33) | 1] {
                    let x = below(&mut rng, &n);
                    let em = left_pad(&x.modpow(&BigUint::from(e), &n).to_bytes_be(), k);
                    let (head, digest) = em.split_at(k - hash_len);
                    let mut padded = head.to_vec();
                    padded.resize(k, 0);
                    let inverse = m.inverse_power_of_r(e).unwrap();
                    let target = m.padded_target(&inverse, &padded, hash_len).unwrap();
                    let x_be = x.to_bytes_be();
                    assert!(m.power_matches(&x_be, &target, digest), "{bits} bits, e={e}, {hash_len}");
                    let mut other = digest.to_vec();
                    other[rng.gen_range(0..hash_len)] ^= 1 << rng.gen_range(0..8);
                    assert!(!m.power_matches(&x_be, &target, &other));
                    let mut wrong_pad = padded.clone();
                    wrong_pad[rng.gen_range(0..k - hash_len)] ^= 1;
                    if let Some(wrong) = m.padded_target(&inverse, &wrong_pad, hash_len) {
                        assert!(!m.power_matches(&x_be, &wrong, digest));
                    }
                    let y = (&x + 1u8) % &n;
                    assert!(!m.power_matches(&y.to_bytes_be(), &target, digest));
                    assert!(!m.power_matches(&x_be, &target, &digest[1..]), "digest of another length");
                    assert!(!m.power_matches(&n_be, &target, digest), "x = n is no residue");
                }
            }
            // A digest longer than SHA-512's, or a padded part not below n, is refused.
            let inverse = m.inverse_power_of_r(65537).unwrap();
            assert!(m.padded_target(&inverse, &[0], HASH_MAX_BYTES + 1).is_none());
            assert!(m.padded_target(&inverse, &n_be, 32).is_none());
            assert!(m.inverse_power_of_r(1).is_none());
        }
    }

    /// `scaled_hash` against num-bigint, with the final subtraction's case counted: its
    /// result (hash·scale + m·n) / 2^(28·h) is at least n only rarely (about once in
    /// 2^8 for SHA-384's 14 limbs, 2^24 for SHA-256's 10), so the test draws enough.
    #[test]
    fn scaled_hash_agrees_with_num_bigint_including_the_final_subtraction() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let mut subtracted = 0;
        for trial in 0..3000 {
            let bits = [300, 521, 1000][trial % 3];
            let n_be = random_odd_modulus(&mut rng, bits);
            let m = Modulus::new(&n_be).unwrap();
            let n = BigUint::from_bytes_be(&n_be);
            let (hash_len, hash_limbs) = [(48, 14), (48, 14), (32, 10), (64, 19)][trial % 4];
            let scale = below(&mut rng, &n);
            let target = PaddedTarget {
                e: 3,
                fixed: vec![0; m.len()],
                scale: limbs_from_be(&scale.to_bytes_be(), m.len()).unwrap(),
                hash_len,
                hash_limbs,
            };
            let mut hash = vec![0u8; hash_len];
            rng.fill_bytes(&mut hash);
            let mut out = vec![0u32; m.len()];
            m.scaled_hash(&hash, &target, &mut out).unwrap();
            let t = BigUint::from_bytes_be(&hash) * &scale;
            let r = BigUint::from(1u8) << (28 * hash_limbs);
            // −n⁻¹ mod 2^(28·h) by Newton's iteration, then the reduction's m.
            let mut inv = BigUint::from(1u8);
            for _ in 0..10 {
                inv = (&inv * ((BigUint::from(2u8) + &r - (&n * &inv) % &r) % &r)) % &r;
            }
            let digits = ((&t % &r) * ((&r - inv) % &r)) % &r;
            let unreduced = (&t + digits * &n) >> (28 * hash_limbs);
            if unreduced >= n {
                subtracted += 1;
            }
            let expected = &unreduced % &n;
            assert_eq!(BigUint::from_bytes_be(&limbs_to_be(&out, m.byte_len())), expected, "trial {trial}");
        }
        assert!(subtracted > 0, "the final subtraction was never exercised");
    }

    fn left_pad(bytes: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len - bytes.len()];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn extreme_operands() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for bits in [2048, 2072, 4096] {
            let n_be = random_odd_modulus(&mut rng, bits);
            let m = Modulus::new(&n_be).unwrap();
            let n = BigUint::from_bytes_be(&n_be);
            let n_minus_1 = &n - 1u8;
            let power_of_r = m.power_of_r(65537);
            for x in [BigUint::from(0u8), BigUint::from(1u8), n_minus_1.clone()] {
                let mx = m.to_mont(&x.to_bytes_be()).unwrap();
                let got = BigUint::from_bytes_be(&m.retrieve(&m.pow(&mx, 65537)));
                assert_eq!(got, x.modpow(&BigUint::from(65537u32), &n));
                let power = m.power(&x.to_bytes_be(), &power_of_r).unwrap();
                assert_eq!(BigUint::from_bytes_be(&power), got);
            }
            // x ≥ n is not a residue.
            assert!(m.to_mont(&n_be).is_none());
            assert!(m.to_mont(&(&n + 1u8).to_bytes_be()).is_none());
            assert!(m.power(&n_be, &power_of_r).is_none());
            assert!(m.power(&(&n + 1u8).to_bytes_be(), &power_of_r).is_none());
            // R^e of another modulus' size is refused, not misread.
            let other = Modulus::new(&random_odd_modulus(&mut rng, 1024)).unwrap();
            assert!(m.power(&[2], &other.power_of_r(65537)).is_none());
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
        let power = m.power(&x.to_bytes_be(), &m.power_of_r(65537)).unwrap();
        assert_eq!(BigUint::from_bytes_be(&power), x.modpow(&65537u32.into(), &n));
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
