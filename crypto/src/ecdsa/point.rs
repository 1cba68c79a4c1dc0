//! The verifier's point arithmetic, on our own fields ([`Elem`]): homogeneous
//! projective coordinates (x = X/Z, y = Y/Z) and the complete formulas of Renes,
//! Costello and Batina for a = −3 (eprint 2015/1060, algorithms 5 and 6), the ones
//! RustCrypto's p256 and p384 use. Both curves have a = −3 and cofactor 1, so every
//! point of the curve other than the identity generates the whole group.
//!
//! Ours because a verification's last step only needs a point's X and Z: `x(R) mod n
//! == r` holds exactly when `r·Z == X` or, for the few `r` below `p − n`,
//! `(r + n)·Z == X` (x(R) is below p, and p < 2n). That saves the field inversion
//! converting R to affine.

use std::fmt;

use super::field::{self, Elem, Modulus};

/// A short-Weierstrass curve `y² = x³ − 3x + b` of prime order, over a field of `N`
/// 32-bit words whose order also has `N` words.
pub trait Curve<const N: usize>: Copy + Eq + fmt::Debug + 'static {
    /// The coordinates' field.
    type Field: Modulus<N>;
    /// The group's order n, the scalars' field.
    type Order: Modulus<N>;
    /// The curve's name in JWK (`crv`) and in messages.
    const NAME: &'static str;
    /// b, the curve's constant term.
    const B: Fe<Self, N>;
    /// The generator's coordinates.
    const G: (Fe<Self, N>, Fe<Self, N>);
}

/// A coordinate of a point of `C`.
pub type Fe<C, const N: usize> = Elem<<C as Curve<N>>::Field, N>;
/// A scalar of `C`: an integer mod its order.
pub type Scalar<C, const N: usize> = Elem<<C as Curve<N>>::Order, N>;

/// A point other than the identity, in affine coordinates (keys, table entries).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Affine<C: Curve<N>, const N: usize> {
    x: Fe<C, N>,
    y: Fe<C, N>,
}

impl<C: Curve<N>, const N: usize> fmt::Debug for Affine<C, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(C::NAME).field("x", &self.x).field("y", &self.y).finish()
    }
}

impl<C: Curve<N>, const N: usize> Affine<C, N> {
    pub fn generator() -> Self {
        Affine { x: C::G.0, y: C::G.1 }
    }

    /// The point `(x, y)` if it is on the curve: `y² = x³ − 3x + b`.
    pub fn new(x: Fe<C, N>, y: Fe<C, N>) -> Option<Self> {
        let right = x.square() * x - (x.double() + x) + C::B;
        (y.square() == right).then_some(Affine { x, y })
    }

    /// SEC 1's uncompressed encoding (`04 || x || y`), the only one a JWK makes;
    /// `None` for any other encoding, coordinates not below p, or a point off the
    /// curve. (The identity has no such encoding.)
    pub fn from_sec1_uncompressed(bytes: &[u8]) -> Option<Self> {
        let (&tag, coordinates) = bytes.split_first()?;
        if tag != 4 || coordinates.len() != 8 * N {
            return None;
        }
        let (x, y) = coordinates.split_at(4 * N);
        Affine::new(Fe::<C, N>::from_be_bytes(x)?, Fe::<C, N>::from_be_bytes(y)?)
    }

    pub fn to_sec1_uncompressed(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 * N);
        out.push(4);
        out.extend(self.x.to_be_bytes());
        out.extend(self.y.to_be_bytes());
        out
    }

    pub fn neg(&self) -> Self {
        Affine { x: self.x, y: -self.y }
    }
}

/// A point in homogeneous projective coordinates; the identity is (0 : 1 : 0).
#[derive(Clone, Copy, Debug)]
pub struct Projective<C: Curve<N>, const N: usize> {
    x: Fe<C, N>,
    y: Fe<C, N>,
    z: Fe<C, N>,
}

impl<C: Curve<N>, const N: usize> From<&Affine<C, N>> for Projective<C, N> {
    fn from(point: &Affine<C, N>) -> Self {
        Projective { x: point.x, y: point.y, z: Fe::<C, N>::ONE }
    }
}

impl<C: Curve<N>, const N: usize> Projective<C, N> {
    pub const IDENTITY: Self = Projective { x: Elem::ZERO, y: Elem::ONE, z: Elem::ZERO };

    pub fn is_identity(&self) -> bool {
        self.z.is_zero()
    }

    /// `2·self` (algorithm 6; exception-free).
    pub fn double(&self) -> Self {
        let b = C::B;
        let xx = self.x.square();
        let yy = self.y.square();
        let zz = self.z.square();
        let xy2 = (self.x * self.y).double();
        let xz2 = (self.x * self.z).double();

        let bzz_part = (b * zz) - xz2;
        let bzz3_part = bzz_part.double() + bzz_part;
        let yy_m_bzz3 = yy - bzz3_part;
        let yy_p_bzz3 = yy + bzz3_part;
        let y_frag = yy_p_bzz3 * yy_m_bzz3;
        let x_frag = yy_m_bzz3 * xy2;

        let zz3 = zz.double() + zz;
        let bxz2_part = (b * xz2) - (zz3 + xx);
        let bxz6_part = bxz2_part.double() + bxz2_part;
        let xx3_m_zz3 = xx.double() + xx - zz3;

        let y = y_frag + (xx3_m_zz3 * bxz6_part);
        let yz2 = (self.y * self.z).double();
        let x = x_frag - (bxz6_part * yz2);
        let z = (yz2 * yy).double().double();
        Projective { x, y, z }
    }

    /// `self + rhs` (algorithm 5; complete for any `self`, the identity included, and
    /// `rhs == self`; `rhs` is never the identity, which has no affine coordinates).
    pub fn add_affine(&self, rhs: &Affine<C, N>) -> Self {
        let b = C::B;
        let xx = self.x * rhs.x;
        let yy = self.y * rhs.y;
        let xy_pairs = ((self.x + self.y) * (rhs.x + rhs.y)) - (xx + yy);
        let yz_pairs = (rhs.y * self.z) + self.y;
        let xz_pairs = (rhs.x * self.z) + self.x;

        let bz_part = xz_pairs - (b * self.z);
        let bz3_part = bz_part.double() + bz_part;
        let yy_m_bzz3 = yy - bz3_part;
        let yy_p_bzz3 = yy + bz3_part;

        let z3 = self.z.double() + self.z;
        let bxz_part = (b * xz_pairs) - (z3 + xx);
        let bxz3_part = bxz_part.double() + bxz_part;
        let xx3_m_zz3 = xx.double() + xx - z3;

        Projective {
            x: (yy_p_bzz3 * xy_pairs) - (yz_pairs * bxz3_part),
            y: (yy_p_bzz3 * yy_m_bzz3) + (xx3_m_zz3 * bxz3_part),
            z: (yy_m_bzz3 * yz_pairs) + (xy_pairs * xx3_m_zz3),
        }
    }

    /// The affine point, by one inversion; `None` for the identity.
    pub fn to_affine(self) -> Option<Affine<C, N>> {
        let z_inv = self.z.invert()?;
        Some(Affine { x: self.x * z_inv, y: self.y * z_inv })
    }

    /// Every point in affine coordinates with one inversion in all (Montgomery's
    /// trick: invert the product of the Zs, then peel each Z off it); `None` if one is
    /// the identity.
    pub fn batch_to_affine(points: &[Self]) -> Option<Vec<Affine<C, N>>> {
        // prefix[i] = Z_0 · … · Z_(i−1).
        let mut prefix = Vec::with_capacity(points.len());
        let mut product = Fe::<C, N>::ONE;
        for point in points {
            prefix.push(product);
            product = product * point.z;
        }
        // Zero if any Z is: the inversion refuses it.
        let mut inverse = product.invert()?;
        let mut out = vec![Affine { x: Elem::ZERO, y: Elem::ZERO }; points.len()];
        for ((slot, point), before) in out.iter_mut().zip(points).zip(&prefix).rev() {
            // inverse = (Z_0 · … · Z_i)⁻¹ here.
            let z_inv = inverse * *before;
            inverse = inverse * point.z;
            *slot = Affine { x: point.x * z_inv, y: point.y * z_inv };
        }
        Some(out)
    }

    /// Whether `x(self) mod n == r`, for r's plain words (`0 < r < n`), without leaving
    /// projective coordinates. `false` for the identity.
    pub fn x_mod_n_is(&self, r: &[u32; N]) -> bool {
        if self.is_identity() {
            return false;
        }
        let (p, n) = (<C::Field as Modulus<N>>::P, <C::Order as Modulus<N>>::P);
        let times_z =
            |candidate: [u32; N]| Fe::<C, N>::from_words(candidate).is_some_and(|c| c * self.z == self.x);
        // r < n < p is a field element; r + n is one only when it stays below p.
        let p_minus_n = field::sub_words(&p, &n).0;
        times_z(*r) || (field::less_than(r, &p_minus_n) && times_z(field::add_words(r, &n).0))
    }

    /// A point with these raw coordinates (tests of [`Projective::x_mod_n_is`], which
    /// reads only X and Z).
    #[cfg(test)]
    pub fn from_xz(x: Fe<C, N>, z: Fe<C, N>) -> Self {
        Projective { x, y: Elem::ONE, z }
    }
}
