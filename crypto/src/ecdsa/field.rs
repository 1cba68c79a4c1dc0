//! Prime fields for the ECDSA verifier — the coordinates and the scalars of P-256 and
//! P-384 — written for WebAssembly.
//!
//! Why not RustCrypto's p256/p384 fields: on 32-bit targets they still compute with
//! 64-bit words and 128-bit products, and wasm has no 64×64→128 multiply, so every
//! product is a call to compiler-rt's `__multi3`. `make wasm-profile`
//! (`WASM_PROFILE_CASE=rotating-es256`) measured a first-seen ES256 token at 221 µs of
//! crypto inside the wasm, 155 µs of it in p256's `fe_mul` and 98 µs of that in
//! `__multi3`. Here words are 32 bits and every product is a native 32×32→64 one
//! (`i64.mul`).
//!
//! An [`Elem`] is an integer modulo a [`Modulus`] of `N` words, kept in Montgomery form,
//! little-endian words, always fully reduced. R is 2^(32·N) (the form p256 and p384 use)
//! for the word-wise product, and 2^261 for P-256's coordinate field, whose products are
//! computed on 29-bit limbs ([`Elem::mul_limbs`]): the one field where that measured
//! faster (ES256 92–105 → 75–84 µs a check in V8; P-384's 14 limbs were not unrolled by
//! the compiler and ran slower). The tests hold every operation, in and out of
//! Montgomery form, to RustCrypto's. What Montgomery arithmetic needs beyond the
//! modulus's words (−p⁻¹, R mod p, R² mod p, R³ mod p) is computed from them at compile
//! time. Variable time is fine: the verifier only handles public values.

use std::fmt;
use std::marker::PhantomData;

/// A prime modulus of `N` 32-bit words.
pub trait Modulus<const N: usize>: Copy + Eq + fmt::Debug + 'static {
    /// The modulus, little-endian words: an odd prime above 2^(32N−1), so that any
    /// `N`-word integer is below 2p and one subtraction reduces it.
    const P: [u32; N];
    /// Whether products are computed on 29-bit limbs ([`Elem::mul_limbs`]) rather than
    /// on 32-bit words ([`Elem::mul_words`]): the choice that measured faster in V8 for
    /// this modulus (see `mul_limbs`).
    const LIMBS_29: bool = false;
}

/// An integer modulo `M::P` in Montgomery form (`x·R mod p`), fully reduced.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Elem<M, const N: usize> {
    words: [u32; N],
    modulus: PhantomData<M>,
}

impl<M: Modulus<N>, const N: usize> fmt::Debug for Elem<M, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Big-endian hex of the plain value, as the curves' documents write numbers.
        for word in self.to_words().iter().rev() {
            write!(f, "{word:08x}")?;
        }
        Ok(())
    }
}

impl<M: Modulus<N>, const N: usize> Elem<M, N> {
    /// Limbs of [`LIMB_BITS`] bits [`Elem::mul_limbs`] works on: 9 for P-256.
    const LIMBS: usize = (32 * N).div_ceil(LIMB_BITS);
    /// The Montgomery radix R is 2^R_BITS, above p: 2^(29·LIMBS) (2^261 for P-256's
    /// field) on limbs, 2^(32·N) on words.
    const R_BITS: usize = if M::LIMBS_29 { LIMB_BITS * Self::LIMBS } else { 32 * N };
    /// −p⁻¹ mod 2^32: the factor of each word-wise Montgomery round's digit.
    const M0_WORD: u32 = neg_inverse(match M::P.first() {
        Some(&word) => word,
        None => 1,
    });
    /// −p⁻¹ mod 2^29, the same for a limb-wise round (1 for P-256's field, whose p ends
    /// in 96 one bits).
    const M0_LIMB: u64 = (Self::M0_WORD & LIMB_MASK as u32) as u64;
    /// R² mod p: [`Elem::from_words`] multiplies by it.
    const R2: [u32; N] = shift_mod(one(), &M::P, 2 * Self::R_BITS);
    /// R³ mod p: [`Elem::invert`] multiplies by it.
    const R3: [u32; N] = shift_mod(one(), &M::P, 3 * Self::R_BITS);
    /// p in limbs.
    const P_LIMBS: [u64; MAX_LIMBS] = to_limbs(&M::P);

    pub const ZERO: Self = Elem::raw([0; N]);
    /// R mod p: the Montgomery form of 1.
    pub const ONE: Self = Elem::raw(shift_mod(one(), &M::P, Self::R_BITS));

    const fn raw(words: [u32; N]) -> Self {
        Elem { words, modulus: PhantomData }
    }

    /// The element of a plain integer known at compile time (curve constants); the
    /// integer must be below p.
    pub const fn constant(words: [u32; N]) -> Self {
        Elem::raw(shift_mod(words, &M::P, Self::R_BITS))
    }

    /// The element of a plain integer; `None` unless it is below p.
    pub fn from_words(words: [u32; N]) -> Option<Self> {
        less_than(&words, &M::P).then(|| Elem::raw(words).mul(&Elem::raw(Self::R2)))
    }

    /// The element of a big-endian integer of exactly `4·N` bytes; `None` for another
    /// length or a value not below p.
    pub fn from_be_bytes(bytes: &[u8]) -> Option<Self> {
        Self::from_words(words_of_be_bytes(bytes)?)
    }

    /// A big-endian integer of exactly `4·N` bytes reduced mod p (one subtraction
    /// suffices: it is below 2^(32N) < 2p); `None` for another length. ECDSA's
    /// `bits2int` of a hash as long as the order.
    pub fn reduce_be_bytes(bytes: &[u8]) -> Option<Self> {
        let words = words_of_be_bytes(bytes)?;
        let reduced = if less_than(&words, &M::P) { words } else { sub_words(&words, &M::P).0 };
        Self::from_words(reduced)
    }

    /// The plain integer, little-endian words.
    pub fn to_words(self) -> [u32; N] {
        self.mul(&Elem::raw(one())).words
    }

    /// The plain integer, big-endian, `4·N` bytes.
    pub fn to_be_bytes(self) -> Vec<u8> {
        self.to_words().iter().rev().flat_map(|word| word.to_be_bytes()).collect()
    }

    pub fn is_zero(&self) -> bool {
        self.words.iter().all(|&word| word == 0)
    }

    /// Montgomery product `self·rhs·R⁻¹ mod p`, on the modulus's choice of
    /// [`Modulus::LIMBS_29`].
    pub fn mul(&self, rhs: &Self) -> Self {
        if M::LIMBS_29 {
            self.mul_limbs(rhs)
        } else {
            self.mul_words(rhs)
        }
    }

    /// The Montgomery product on 32-bit words (CIOS, one word of `rhs` at a time), R =
    /// 2^(32·N). For P-384's field −p⁻¹ mod 2^32 is 1 (p ends in 32 one bits), and the
    /// multiplication by it folds away.
    fn mul_words(&self, rhs: &Self) -> Self {
        // t < 2p between rounds: N words, a top word (at most 1) and a carry word.
        let mut t = [0u32; N];
        let mut t_top = 0u32;
        let p_low = u64::from(M::P.first().copied().unwrap_or(1));
        for &b in &rhs.words {
            let b = u64::from(b);
            let mut carry = 0u64;
            for (tj, &aj) in t.iter_mut().zip(&self.words) {
                // (2^32−1)² + 2·(2^32−1) = 2^64 − 1: no overflow.
                let sum = u64::from(*tj) + u64::from(aj) * b + carry;
                *tj = sum as u32;
                carry = sum >> 32;
            }
            let top = u64::from(t_top) + carry;
            t_top = top as u32;
            let t_carry = (top >> 32) as u32;
            // Add m·p, with m the digit that zeroes the low word, and drop that word.
            let low = u64::from(t.first().copied().unwrap_or(0));
            let m = u64::from((low as u32).wrapping_mul(Self::M0_WORD));
            let mut carry = (low + m * p_low) >> 32;
            let mut next = [0u32; N];
            for ((out, &tj), &pj) in next.iter_mut().zip(t.iter().skip(1)).zip(M::P.iter().skip(1)) {
                let sum = u64::from(tj) + m * u64::from(pj) + carry;
                *out = sum as u32;
                carry = sum >> 32;
            }
            let top = u64::from(t_top) + carry;
            if let Some(last) = next.last_mut() {
                *last = top as u32;
            }
            t_top = t_carry + (top >> 32) as u32;
            t = next;
        }
        if t_top != 0 || !less_than(&t, &M::P) {
            t = sub_words(&t, &M::P).0;
        }
        Elem::raw(t)
    }

    /// The Montgomery product on 29-bit limbs (CIOS, one limb of `rhs` a round), R =
    /// 2^(29·LIMBS). Why 29 bits: a product of two limbs is below 2^58, so every limb
    /// of the running sum takes the round's two products (`a_j·b_i` and `m·p_j`) without
    /// a carry, and carries are propagated once, at the end; with 32-bit words each of
    /// the 2·N² products needed its own carry (a mask, a shift and two more additions
    /// in wasm). A limb of the sum collects at most 2·LIMBS products of < 2^58 and a
    /// carry below 2^35: for P-384, 28·2^58 < 2^63.
    fn mul_limbs(&self, rhs: &Self) -> Self {
        let (a, b) = (to_limbs(&self.words), to_limbs(&rhs.words));
        let mut t = [0u64; MAX_LIMBS];
        for &bi in b.iter().take(Self::LIMBS) {
            for (tj, &aj) in t.iter_mut().zip(a.iter()).take(Self::LIMBS) {
                *tj += aj * bi;
            }
            let low = t.first().copied().unwrap_or(0);
            let m = ((low & LIMB_MASK) * Self::M0_LIMB) & LIMB_MASK;
            for (tj, &pj) in t.iter_mut().zip(Self::P_LIMBS.iter()).take(Self::LIMBS) {
                *tj += m * pj;
            }
            // The low limb is now a multiple of 2^29: drop it, keeping its carry.
            // (A new array rather than `copy_within`, which becomes a memory copy: this
            // way the limbs stay in registers.)
            let carry = t.first().copied().unwrap_or(0) >> LIMB_BITS;
            let mut next = [0u64; MAX_LIMBS];
            for (slot, &tj) in next.iter_mut().zip(t.iter().skip(1)).take(Self::LIMBS - 1) {
                *slot = tj;
            }
            if let Some(first) = next.first_mut() {
                *first += carry;
            }
            t = next;
        }
        // t < 2p: normalise the limbs, pack them into words, subtract p once if needed.
        let mut carry = 0u64;
        for tj in t.iter_mut().take(Self::LIMBS) {
            let sum = *tj + carry;
            *tj = sum & LIMB_MASK;
            carry = sum >> LIMB_BITS;
        }
        let (words, above) = from_limbs::<N>(&t, Self::LIMBS);
        let over = carry != 0 || above;
        Elem::raw(if over || !less_than(&words, &M::P) { sub_words(&words, &M::P).0 } else { words })
    }

    pub fn square(&self) -> Self {
        self.mul(self)
    }

    /// `self + rhs mod p`.
    pub fn add(&self, rhs: &Self) -> Self {
        let (mut out, carry) = add_words(&self.words, &rhs.words);
        if carry || !less_than(&out, &M::P) {
            out = sub_words(&out, &M::P).0;
        }
        Elem::raw(out)
    }

    /// `self − rhs mod p`.
    pub fn sub(&self, rhs: &Self) -> Self {
        let (out, borrow) = sub_words(&self.words, &rhs.words);
        // Below zero by less than p: adding p (mod 2^(32N)) lands in [0, p).
        Elem::raw(if borrow { add_words(&out, &M::P).0 } else { out })
    }

    pub fn double(&self) -> Self {
        self.add(self)
    }

    pub fn neg(&self) -> Self {
        Self::ZERO.sub(self)
    }

    /// `self⁻¹`, or `None` for zero. Binary extended Euclid on the plain words
    /// (variable time, a few word shifts and subtractions per bit: far cheaper in wasm
    /// than Fermat's ~1.25·bits Montgomery products), then back to Montgomery form:
    /// the inverse of `x·R` is `x⁻¹·R⁻¹`, and one product with R³ makes it `x⁻¹·R`.
    pub fn invert(&self) -> Option<Self> {
        if self.is_zero() {
            return None;
        }
        // Invariants (Guide to Elliptic Curve Cryptography, algorithm 2.22):
        // x1·a ≡ u and x2·a ≡ v (mod p), with a = self's words; gcd(u, v) = 1.
        let (mut u, mut v) = (self.words, M::P);
        let (mut x1, mut x2) = (one(), [0u32; N]);
        while u != one() && v != one() {
            while is_even(&u) {
                shift_right(&mut u, false);
                halve_mod::<M, N>(&mut x1);
            }
            while is_even(&v) {
                shift_right(&mut v, false);
                halve_mod::<M, N>(&mut x2);
            }
            if less_than(&u, &v) {
                v = sub_words(&v, &u).0;
                x2 = Elem::<M, N>::raw(x2).sub(&Elem::raw(x1)).words;
            } else {
                u = sub_words(&u, &v).0;
                x1 = Elem::<M, N>::raw(x1).sub(&Elem::raw(x2)).words;
            }
        }
        let inverse = if u == one() { x1 } else { x2 };
        Some(Elem::raw(inverse).mul(&Elem::raw(Self::R3)))
    }
}

/// Bits in a limb of [`Elem::mul_limbs`].
const LIMB_BITS: usize = 29;
const LIMB_MASK: u64 = (1 << LIMB_BITS) - 1;
/// Limbs of the largest modulus, P-384's 384 bits: 14.
const MAX_LIMBS: usize = 14;

/// An integer of `N` words as 29-bit limbs (little-endian), zero above its last.
#[allow(clippy::indexing_slicing)]
const fn to_limbs<const N: usize>(words: &[u32; N]) -> [u64; MAX_LIMBS] {
    let mut limbs = [0u64; MAX_LIMBS];
    let mut k = 0;
    while k < MAX_LIMBS && k * LIMB_BITS < 32 * N {
        let bit = k * LIMB_BITS;
        let (word, shift) = (bit / 32, bit % 32);
        let mut limb = (words[word] as u64) >> shift;
        if shift + LIMB_BITS > 32 && word + 1 < N {
            limb |= (words[word + 1] as u64) << (32 - shift);
        }
        limbs[k] = limb & LIMB_MASK;
        k += 1;
    }
    limbs
}

/// The first `count` 29-bit limbs as `N` words, and whether any bit was set above them.
fn from_limbs<const N: usize>(limbs: &[u64; MAX_LIMBS], count: usize) -> ([u32; N], bool) {
    let mut words = [0u32; N];
    let mut above = false;
    for (k, &limb) in limbs.iter().enumerate().take(count) {
        let bit = k * LIMB_BITS;
        let (word, shift) = (bit / 32, bit % 32);
        // Below 2^60: the limb spans its word and at most the next.
        let spread = limb << shift;
        for (index, part) in [(word, spread as u32), (word + 1, (spread >> 32) as u32)] {
            match words.get_mut(index) {
                Some(slot) => *slot |= part,
                None => above |= part != 0,
            }
        }
    }
    (words, above)
}

/// The little-endian words of a big-endian integer of exactly `4·N` bytes.
fn words_of_be_bytes<const N: usize>(bytes: &[u8]) -> Option<[u32; N]> {
    if bytes.len() != 4 * N {
        return None;
    }
    let mut words = [0u32; N];
    for (word, chunk) in words.iter_mut().zip(bytes.rchunks_exact(4)) {
        *word = chunk.iter().fold(0u32, |acc, &byte| (acc << 8) | u32::from(byte));
    }
    Some(words)
}

fn is_even<const N: usize>(words: &[u32; N]) -> bool {
    words.first().is_none_or(|low| low & 1 == 0)
}

/// `words >> 1`, with `top` shifted in as the new highest bit.
fn shift_right<const N: usize>(words: &mut [u32; N], top: bool) {
    let mut incoming = u32::from(top);
    for word in words.iter_mut().rev() {
        let outgoing = *word & 1;
        *word = (*word >> 1) | (incoming << 31);
        incoming = outgoing;
    }
}

/// `x / 2 mod p` for x below p: x itself halved if even, else `(x + p) / 2` (the sum's
/// carry becomes the top bit).
fn halve_mod<M: Modulus<N>, const N: usize>(x: &mut [u32; N]) {
    if is_even(x) {
        shift_right(x, false);
    } else {
        let (sum, carry) = add_words(x, &M::P);
        *x = sum;
        shift_right(x, carry);
    }
}

/// `a < b` (little-endian).
pub(super) fn less_than<const N: usize>(a: &[u32; N], b: &[u32; N]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a + b` mod 2^(32N), and whether it carried out of the top word.
pub(super) fn add_words<const N: usize>(a: &[u32; N], b: &[u32; N]) -> ([u32; N], bool) {
    let mut out = [0u32; N];
    let mut carry = 0u64;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let sum = u64::from(x) + u64::from(y) + carry;
        *o = sum as u32;
        carry = sum >> 32;
    }
    (out, carry != 0)
}

/// `a − b` mod 2^(32N), and whether it borrowed (`a < b`). With `b = p` and
/// `p ≤ a < 2p` (a carry out of the top word included), the difference itself.
pub(super) fn sub_words<const N: usize>(a: &[u32; N], b: &[u32; N]) -> ([u32; N], bool) {
    let mut out = [0u32; N];
    let mut borrow = 0u64;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let diff = u64::from(x).wrapping_sub(u64::from(y)).wrapping_sub(borrow);
        *o = diff as u32;
        borrow = diff >> 63;
    }
    (out, borrow != 0)
}

/// The integer 1 in `N` words.
const fn one<const N: usize>() -> [u32; N] {
    let mut words = [0u32; N];
    if let Some(low) = words.first_mut() {
        *low = 1;
    }
    words
}

// Compile-time arithmetic: what a modulus's constants are derived from. Only ever
// evaluated in constants, so an index out of range would fail the build, not a request.

/// `x · 2^doublings mod p`, for `x` below p, by doubling: R mod p is 1 shifted 32·N
/// times, and a constant's Montgomery form is the constant shifted as often.
#[allow(clippy::indexing_slicing)]
const fn shift_mod<const N: usize>(mut x: [u32; N], p: &[u32; N], doublings: usize) -> [u32; N] {
    let mut round = 0;
    while round < doublings {
        let mut doubled = [0u32; N];
        let mut carry = 0u32;
        let mut i = 0;
        while i < N {
            doubled[i] = (x[i] << 1) | carry;
            carry = x[i] >> 31;
            i += 1;
        }
        // Below 2p: subtract p when the doubling carried out or reached p.
        let mut at_least_p = carry != 0;
        if !at_least_p {
            at_least_p = true;
            let mut i = N;
            while i > 0 {
                i -= 1;
                if doubled[i] != p[i] {
                    at_least_p = doubled[i] > p[i];
                    break;
                }
            }
        }
        if at_least_p {
            let mut borrow = 0u64;
            let mut i = 0;
            while i < N {
                let diff = (doubled[i] as u64).wrapping_sub(p[i] as u64).wrapping_sub(borrow);
                doubled[i] = diff as u32;
                borrow = diff >> 63;
                i += 1;
            }
        }
        x = doubled;
        round += 1;
    }
    x
}

/// −p⁻¹ mod 2^32 for an odd p's low word: Newton's iteration doubles the correct bits
/// of an inverse each round (1 → 2 → 4 → … → 32; p·p ≡ 1 mod 8 gives 3 to start).
pub(super) const fn neg_inverse(p_low: u32) -> u32 {
    let mut inverse = p_low;
    let mut round = 0;
    while round < 4 {
        inverse = inverse.wrapping_mul(2u32.wrapping_sub(p_low.wrapping_mul(inverse)));
        round += 1;
    }
    inverse.wrapping_neg()
}

/// The little-endian words of a big-endian hex number of exactly `8·N` digits, at
/// compile time (the curves' constants, written as SEC 2 and FIPS 186 print them).
#[allow(clippy::indexing_slicing)]
pub const fn hex<const N: usize>(digits: &str) -> [u32; N] {
    let digits = digits.as_bytes();
    assert!(digits.len() == 8 * N, "a constant of the wrong length");
    let mut words = [0u32; N];
    let mut i = 0;
    while i < digits.len() {
        let nibble = match digits[i] {
            b'0'..=b'9' => digits[i] - b'0',
            b'a'..=b'f' => digits[i] - b'a' + 10,
            _ => 16,
        };
        assert!(nibble < 16, "not a lower-case hex digit");
        // Digit i from the left is nibble (8N − 1 − i) from the right.
        let from_right = 8 * N - 1 - i;
        words[from_right / 8] |= (nibble as u32) << (4 * (from_right % 8));
        i += 1;
    }
    words
}

// Operators, so that the point formulas read like the paper's.
impl<M: Modulus<N>, const N: usize> std::ops::Add for Elem<M, N> {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Elem::add(&self, &rhs)
    }
}

impl<M: Modulus<N>, const N: usize> std::ops::Sub for Elem<M, N> {
    type Output = Self;
    fn sub(self, rhs: Self) -> Self {
        Elem::sub(&self, &rhs)
    }
}

impl<M: Modulus<N>, const N: usize> std::ops::Mul for Elem<M, N> {
    type Output = Self;
    fn mul(self, rhs: Self) -> Self {
        Elem::mul(&self, &rhs)
    }
}

impl<M: Modulus<N>, const N: usize> std::ops::Neg for Elem<M, N> {
    type Output = Self;
    fn neg(self) -> Self {
        Elem::neg(&self)
    }
}
