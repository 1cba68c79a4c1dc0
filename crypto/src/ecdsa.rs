//! ECDSA verification for ES256 (P-256, SHA-256) and ES384 (P-384, SHA-384), RFC 7518
//! §3.4, written for WebAssembly: our own fields ([`field`]: 32-bit words, which wasm
//! multiplies natively), point formulas ([`point`]) and precomputed tables — one for
//! each curve's base point G (built once per VM, at the first key of that curve) and
//! one per public key Q (built when the JWKS key is imported). One generic
//! implementation serves both curves; [`curves`] holds their constants.
//!
//! A check computes `R = u1·G + u2·Q`. Each scalar of `N` 32-bit words is cut into its
//! words, so that `u·P = Σ u_j·(2^(32j)·P)`; the tables hold odd multiples of every
//! `2^(32j)·P` (affine, for mixed additions), and all the pieces of both scalars share
//! one run of 32 doublings, each adding its signed-window (wNAF) digits. For P-256 that
//! is 32 doublings and about 60 additions (28 of G's multiples, 32 of Q's), against 2 ×
//! (256 doublings + 64 additions and constant-time table scans) for RustCrypto's generic
//! `lincomb`.
//!
//! Verification handles only public values (key, message, signature), so variable-time
//! arithmetic — branches and table indices that depend on the scalars, a variable-time
//! inversion of `s` — is sound here; this module must never sign.
//!
//! Every rule of ECDSA verification (SEC 1 §4.1.4) holds: `r` and `s` in `[1, n−1]`,
//! `z` the hash reduced mod n, R not the point at infinity, `x(R) mod n == r`.

use std::fmt;
use std::sync::Arc;

mod curves;
mod field;
mod point;

use crate::backend::Prepared;
pub use curves::{P256, P384};
use point::{Affine, Curve, Projective, Scalar};

/// A scalar's pieces are its 32-bit words.
const PIECE_BITS: usize = 32;
/// wNAF window for the base point: 2^(w−2) = 64 odd multiples per piece; for P-256
/// 512 points (about 32 KB), for P-384 768 (about 72 KB), one table per VM.
const W_BASE: u32 = 8;
/// wNAF window for public keys: 32 odd multiples per piece; 256 points (16 KB) per P-256
/// key, 384 (36 KB) per P-384 key, built when the key is imported. Verification spends
/// most of its time adding Q's multiples, so a wider window pays: from 5 (8 multiples a
/// piece, 43 additions for Q) to 7 (32 multiples, 32 additions), an ES256 check in V8
/// went from 101–107 to 91–100 µs and a P-256 key's import from 373 to 664 µs, once per
/// key and VM (`make bench-verify`, 2026-12-06).
const W_KEY: u32 = 7;

/// A curve the verifier runs on: its hash and its base point's table.
pub trait Ecdsa<const N: usize>: Curve<N> {
    /// The hash JWS pairs with the curve, as long as its order.
    fn digest(message: &[u8]) -> Vec<u8>;
    /// The base point's table, built at the first call; `None` only if it could not be
    /// built (it always can).
    fn base_table() -> Option<&'static Table<Self, N>>;
}

/// Odd multiples `1, 3, …, 2^(w−1)−1` of `2^(32j)·P` for every piece j, affine, piece
/// after piece.
#[derive(Clone)]
pub struct Table<C: Curve<N>, const N: usize> {
    points: Arc<[Affine<C, N>]>,
    per_piece: usize,
}

impl<C: Curve<N>, const N: usize> Table<C, N> {
    /// `None` if an entry is the identity (never, for a point of prime order: every
    /// entry is a multiple below n).
    fn new(point: &Affine<C, N>, window: u32) -> Option<Self> {
        let per_piece = 1usize << (window - 2);
        let mut all = Vec::with_capacity(N * per_piece);
        let mut base = Projective::from(point);
        for _ in 0..N {
            let twice = base.double().to_affine()?;
            let mut multiple = base;
            for _ in 0..per_piece {
                all.push(multiple);
                multiple = multiple.add_affine(&twice);
            }
            for _ in 0..PIECE_BITS {
                base = base.double();
            }
        }
        Some(Table { points: Projective::batch_to_affine(&all)?.into(), per_piece })
    }

    /// `digit · 2^(32·piece) · P` for an odd digit in `±[1, 2^(w−1))`.
    fn get(&self, piece: usize, digit: i8) -> Option<Affine<C, N>> {
        let index = piece * self.per_piece + usize::from(digit.unsigned_abs() / 2);
        let point = *self.points.get(index)?;
        Some(if digit < 0 { point.neg() } else { point })
    }
}

/// A public key, validated at import (on the curve; never the identity), with its
/// table. Cheap to clone.
#[derive(Clone)]
pub struct EcKey<C: Curve<N>, const N: usize> {
    point: Affine<C, N>,
    table: Table<C, N>,
    /// What an installed backend made of the key ([`crate::backend`]).
    prepared: Prepared,
}

/// An ES256 key.
pub type P256Key = EcKey<P256, 8>;
/// An ES384 key.
pub type P384Key = EcKey<P384, 12>;

impl<C: Ecdsa<N>, const N: usize> EcKey<C, N> {
    /// Imports SEC 1's uncompressed point (`04 || x || y`, what a JWK's `x` and `y`
    /// make); `None` if it is not a point of the curve.
    pub fn from_sec1_bytes(point: &[u8]) -> Option<Self> {
        let point = Affine::from_sec1_uncompressed(point)?;
        // Build the curve's base-point table now rather than on the first request.
        C::base_table()?;
        Some(EcKey { point, table: Table::new(&point, W_KEY)?, prepared: Prepared::default() })
    }

    /// What an installed backend made of the key ([`crate::backend`]).
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// The key as SEC 1's uncompressed point.
    pub fn to_sec1_bytes(&self) -> Vec<u8> {
        self.point.to_sec1_uncompressed()
    }

    /// Whether `signature` (P1363 `r || s`, `8·N` bytes) is valid for `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != 8 * N {
            return false;
        }
        let (r_bytes, s_bytes) = signature.split_at(4 * N);
        let (Some(r), Some(s)) = (nonzero_scalar::<C, N>(r_bytes), nonzero_scalar::<C, N>(s_bytes)) else {
            return false;
        };
        // z: the hash (as long as n) as an integer mod n; bits2int needs no truncation.
        let Some(z) = Scalar::<C, N>::reduce_be_bytes(&C::digest(message)) else {
            return false;
        };
        let Some(s_inv) = s.invert() else {
            return false;
        };
        let Some(point) = self.lincomb(&(z * s_inv).to_words(), &(r * s_inv).to_words()) else {
            return false;
        };
        // R must not be the identity; x(R) mod n must be r (in R's own coordinates).
        point.x_mod_n_is(&r.to_words())
    }

    /// `u1·G + u2·Q` for plain scalars, all pieces of both sharing one run of doublings.
    fn lincomb(&self, u1: &[u32; N], u2: &[u32; N]) -> Option<Projective<C, N>> {
        let (g, q) = (C::base_table()?, &self.table);
        let (d1, d2) = (recode(u1, W_BASE), recode(u2, W_KEY));
        let mut acc = Projective::IDENTITY;
        let mut started = false;
        for bit in (0..=PIECE_BITS).rev() {
            if started {
                acc = acc.double();
            }
            for (table, digits) in [(g, &d1), (q, &d2)] {
                for (piece, piece_digits) in digits.iter().enumerate() {
                    let digit = piece_digits.get(bit).copied().unwrap_or(0);
                    if digit != 0 {
                        acc = acc.add_affine(&table.get(piece, digit)?);
                        started = true;
                    }
                }
            }
        }
        Some(acc)
    }
}

impl<C: Curve<N>, const N: usize> PartialEq for EcKey<C, N> {
    fn eq(&self, other: &Self) -> bool {
        self.point == other.point
    }
}

impl<C: Curve<N>, const N: usize> fmt::Debug for EcKey<C, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EcKey").field(&self.point).finish()
    }
}

/// A scalar in `[1, n−1]` from `4·N` big-endian bytes, or `None`.
fn nonzero_scalar<C: Curve<N>, const N: usize>(bytes: &[u8]) -> Option<Scalar<C, N>> {
    Scalar::<C, N>::from_be_bytes(bytes).filter(|scalar| !scalar.is_zero())
}

/// Signed-window (wNAF) digits of a piece, least significant first: every nonzero
/// digit is odd, below 2^(w−1) in absolute value, and followed by at least w−1 zeros.
fn wnaf(piece: u32, window: u32) -> [i8; PIECE_BITS + 1] {
    let mut digits = [0i8; PIECE_BITS + 1];
    let (full, half) = (1i64 << window, 1i64 << (window - 1));
    // Pieces are below 2^32, so `k` never leaves i64.
    let mut k = i64::from(piece);
    for digit in digits.iter_mut() {
        if k == 0 {
            break;
        }
        if k & 1 == 1 {
            let mut d = k & (full - 1);
            if d >= half {
                d -= full;
            }
            k -= d;
            *digit = d as i8;
        }
        k >>= 1;
    }
    digits
}

/// The wNAF digits of each piece (word) of a plain scalar.
fn recode<const N: usize>(scalar: &[u32; N], window: u32) -> [[i8; PIECE_BITS + 1]; N] {
    let mut out = [[0i8; PIECE_BITS + 1]; N];
    for (digits, &word) in out.iter_mut().zip(scalar) {
        *digits = wnaf(word, window);
    }
    out
}

#[cfg(test)]
mod tests;
