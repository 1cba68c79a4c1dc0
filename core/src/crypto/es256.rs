//! ES256: ECDSA over P-256 with SHA-256 (RFC 7518 §3.4), verification only, with
//! precomputed tables: one for the base point G (built once per VM, at the first
//! P-256 key import) and one per public key Q (built when the JWKS key is imported).
//!
//! A check computes `R = u1·G + u2·Q` with our own point arithmetic ([`point`]:
//! p256's formulas, but coordinates we can read, so R is never converted to affine)
//! on our own field ([`field`]: 32-bit words, which wasm multiplies natively). Each 256-bit
//! scalar is cut into [`PIECES`] pieces of [`PIECE_BITS`] bits, so that
//! `u·P = Σ u_j·(2^(32j)·P)`; the tables hold odd multiples of every `2^(32j)·P`
//! (affine, for mixed additions), and all the pieces of both scalars share one run of
//! 32 doublings, each adding its signed-window (wNAF) digits. That is 32 doublings and
//! about 70 additions, against 2 × (256 doublings + 64 additions and constant-time
//! table scans) for p256's generic `lincomb`.
//!
//! Verification handles only public values (key, message, signature), so variable-time
//! arithmetic — branches and table indices that depend on the scalars, a variable-time
//! inversion of `s` — is sound here; this module must never sign.
//!
//! Every rule of ECDSA verification (SEC 1 §4.1.4) holds: `r` and `s` in `[1, n−1]`,
//! `z` the hash reduced mod n, R not the point at infinity, `x(R) mod n == r`.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};

use jwt_compact::{Algorithm, AlgorithmSignature};
use p256::elliptic_curve::group::Group as _;
use p256::elliptic_curve::ops::{Invert as _, Reduce};
use p256::elliptic_curve::sec1::FromEncodedPoint as _;
use p256::elliptic_curve::{Field as _, PrimeField as _};
use p256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar, U256};
use sha2::{Digest, Sha256};

/// Scalars are split into this many pieces...
const PIECES: usize = 8;
/// ...of this many bits.
const PIECE_BITS: usize = 256 / PIECES;
/// wNAF window for the base point: 2^(w−2) = 64 odd multiples per piece, 512 points
/// (about 35 KB) in one table shared by every key.
const W_BASE: u32 = 8;
const BASE_POINTS: usize = PIECES << (W_BASE - 2);
/// wNAF window for public keys: 8 odd multiples per piece, 64 points (about 4 KB)
/// per key.
const W_KEY: u32 = 5;
const KEY_POINTS: usize = PIECES << (W_KEY - 2);

mod field;
mod point;

use point::{Affine, Projective};

/// Odd multiples `1, 3, …, 2^(w−1)−1` of `2^(PIECE_BITS·j)·P` for every piece j, affine,
/// piece after piece.
#[derive(Clone)]
struct Table {
    points: Arc<[Affine]>,
    per_piece: usize,
}

impl Table {
    /// `N` = [`PIECES`] × 2^(window−2) points; `None` if one is the identity (never,
    /// for a point of prime order: every entry is a multiple below n).
    fn new<const N: usize>(point: ProjectivePoint) -> Option<Table> {
        let per_piece = N / PIECES;
        let mut all = [ProjectivePoint::IDENTITY; N];
        let mut base = point;
        for piece in all.chunks_exact_mut(per_piece) {
            let twice = base.double();
            let mut multiple = base;
            for slot in piece {
                *slot = multiple;
                multiple += twice;
            }
            for _ in 0..PIECE_BITS {
                base = base.double();
            }
        }
        // p256 0.13's field type lacks the `Invert` impl its `BatchNormalize` needs, so
        // one inversion per point: the import cost `make bench-verify` reports.
        let points =
            all.iter().map(|p| Affine::from_point(&p.to_affine())).collect::<Option<Arc<[Affine]>>>()?;
        Some(Table { points, per_piece })
    }

    /// `digit · 2^(PIECE_BITS·piece) · P` for an odd digit in `±[1, 2^(w−1))`.
    fn get(&self, piece: usize, digit: i8) -> Option<Affine> {
        let index = piece * self.per_piece + usize::from(digit.unsigned_abs() / 2);
        let point = *self.points.get(index)?;
        Some(if digit < 0 { point.neg() } else { point })
    }
}

/// `None` only if the generator's table could not be built (it always can).
fn base_table() -> Option<&'static Table> {
    static TABLE: OnceLock<Option<Table>> = OnceLock::new();
    TABLE.get_or_init(|| Table::new::<BASE_POINTS>(ProjectivePoint::GENERATOR)).as_ref()
}

/// A P-256 public key, validated at import (on the curve, not the identity), with its
/// table. Cheap to clone.
#[derive(Clone)]
pub struct Es256Key {
    point: AffinePoint,
    table: Table,
}

impl Es256Key {
    /// Imports a SEC1 point; `None` if it is not a point of the curve or is the identity.
    pub fn from_sec1_bytes(point: &[u8]) -> Option<Es256Key> {
        let encoded = EncodedPoint::from_bytes(point).ok()?;
        Es256Key::from_affine(&Option::from(AffinePoint::from_encoded_point(&encoded))?)
    }

    /// `None` for the identity.
    pub fn from_affine(point: &AffinePoint) -> Option<Es256Key> {
        if bool::from(point.is_identity()) {
            return None;
        }
        // Build the shared base-point table now rather than on the first request.
        base_table()?;
        Some(Es256Key { point: *point, table: Table::new::<KEY_POINTS>(ProjectivePoint::from(*point))? })
    }

    pub fn as_affine(&self) -> &AffinePoint {
        &self.point
    }
}

impl PartialEq for Es256Key {
    fn eq(&self, other: &Self) -> bool {
        self.point == other.point
    }
}

impl fmt::Debug for Es256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Es256Key").field(&self.point).finish()
    }
}

/// Signed-window (wNAF) digits of a piece, least significant first: every nonzero
/// digit is odd, below 2^(w−1) in absolute value, and followed by at least w−1 zeros.
fn wnaf(piece: u64, window: u32) -> [i8; PIECE_BITS + 1] {
    let mut digits = [0i8; PIECE_BITS + 1];
    let (full, half) = (1i64 << window, 1i64 << (window - 1));
    // Pieces are below 2^32, so `k` never leaves i64.
    let mut k = piece as i64;
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

/// The wNAF digits of each piece of a scalar.
fn recode(scalar: &Scalar, window: u32) -> [[i8; PIECE_BITS + 1]; PIECES] {
    let bytes = scalar.to_repr();
    let mut out = [[0i8; PIECE_BITS + 1]; PIECES];
    // Big-endian bytes: piece j is bytes [32 − 4(j+1), 32 − 4j).
    for (piece, chunk) in out.iter_mut().zip(bytes.rchunks_exact(PIECE_BITS / 8)) {
        let value = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        *piece = wnaf(value, window);
    }
    out
}

/// `u1·G + u2·Q`, all pieces of both scalars sharing one run of doublings.
fn lincomb(u1: &Scalar, u2: &Scalar, key: &Es256Key) -> Option<Projective> {
    let (g, q) = (base_table()?, &key.table);
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

/// A P1363 (`r || s`) signature, 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Es256Signature([u8; 64]);

impl AlgorithmSignature for Es256Signature {
    const LENGTH: Option<std::num::NonZeroUsize> = std::num::NonZeroUsize::new(64);

    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        let bytes: [u8; 64] =
            slice.try_into().map_err(|_| anyhow::anyhow!("ES256 signatures are 64 bytes"))?;
        Ok(Es256Signature(bytes))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

/// A scalar in `[1, n−1]` from 32 big-endian bytes, or `None`.
fn nonzero_scalar(bytes: &[u8]) -> Option<Scalar> {
    let repr: [u8; 32] = bytes.try_into().ok()?;
    let scalar: Scalar = Option::from(Scalar::from_repr(FieldBytes::from(repr)))?;
    (!bool::from(scalar.is_zero())).then_some(scalar)
}

/// ES256 as a jwt-compact [`Algorithm`], verification only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Es256;

impl Es256 {
    /// Whether `signature` (P1363 `r || s`) is valid for `message` under `key`.
    pub fn verify(&self, key: &Es256Key, message: &[u8], signature: &[u8; 64]) -> bool {
        let (r_bytes, s_bytes) = signature.split_at(32);
        let (Some(r), Some(s)) = (nonzero_scalar(r_bytes), nonzero_scalar(s_bytes)) else {
            return false;
        };
        // z: the 256-bit hash as an integer mod n (bits2int needs no truncation here).
        let z = <Scalar as Reduce<U256>>::reduce_bytes(&Sha256::digest(message));
        let Some(s_inv) = Option::<Scalar>::from(s.invert_vartime()) else {
            return false;
        };
        let Some(point) = lincomb(&(z * s_inv), &(r * s_inv), key) else {
            return false;
        };
        // R must not be the identity; x(R) mod n must be r (in R's own coordinates).
        point.x_mod_n_is(&r)
    }
}

impl Algorithm for Es256 {
    /// A gateway filter never signs; the type is uninhabited.
    type SigningKey = std::convert::Infallible;
    type VerifyingKey = Es256Key;
    type Signature = Es256Signature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("ES256")
    }

    fn sign(&self, signing_key: &Self::SigningKey, _message: &[u8]) -> Self::Signature {
        match *signing_key {}
    }

    fn verify_signature(&self, signature: &Es256Signature, key: &Es256Key, message: &[u8]) -> bool {
        self.verify(key, message, &signature.0)
    }
}

#[cfg(test)]
mod tests;
