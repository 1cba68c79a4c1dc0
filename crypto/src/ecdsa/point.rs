//! The verifier's point arithmetic, on our own fields ([`Elem`]): Jacobian coordinates
//! (x = X/Z², y = Y/Z³) with the a = −3 doubling "dbl-2001-b" and the mixed addition
//! "madd-2007-bl" of the Explicit-Formulas Database (hyperelliptic.org/EFD, `g1p`
//! shortw-jacobian-3). Both curves have a = −3 and cofactor 1, so every point of the
//! curve other than the identity generates the whole group.
//!
//! Why not the complete formulas of Renes, Costello and Batina (eprint 2015/1060) that
//! RustCrypto's p256 and p384 use: they cost 13 field products a doubling and 13 a mixed
//! addition, these 8 and 11, and a verification is about a hundred of each. The cases
//! the incomplete addition leaves out (the identity, a point added to itself or to its
//! negation) are tested for before it, which is sound here because only public values
//! pass through (see the module above) and branching on them leaks nothing.
//!
//! A verification's last step only needs a point's X and Z: `x(R) mod n == r` holds
//! exactly when `r·Z² == X` or, for the few `r` below `p − n`, `(r + n)·Z² == X` (x(R) is
//! below p, and p < 2n). That saves the field inversion converting R to affine.

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

/// A point in Jacobian coordinates (x = X/Z², y = Y/Z³); the identity is any point with
/// Z = 0, (1 : 1 : 0) as written here.
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
    pub const IDENTITY: Self = Projective { x: Elem::ONE, y: Elem::ONE, z: Elem::ZERO };

    pub fn is_identity(&self) -> bool {
        self.z.is_zero()
    }

    /// `2·self` ("dbl-2001-b", 3 products and 5 squares, for a = −3). The identity
    /// doubles to a point with Z = 0, the identity again; a curve of prime order has no
    /// point with y = 0 that would need a case of its own.
    pub fn double(&self) -> Self {
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x * gamma;
        let alpha = (self.x - delta) * (self.x + delta);
        let alpha = alpha.double() + alpha;
        let beta4 = beta.double().double();
        let x = alpha.square() - beta4.double();
        let z = (self.y + self.z).square() - gamma - delta;
        let gamma_sq8 = gamma.square().double().double().double();
        let y = alpha * (beta4 - x) - gamma_sq8;
        Projective { x, y, z }
    }

    /// `self + rhs` ("madd-2007-bl", 7 products and 4 squares, `rhs` with Z = 1), with
    /// the cases that formula leaves out handled first: `self` the identity, `self ==
    /// rhs` (doubled instead) and `self == −rhs` (the identity). `rhs` is never the
    /// identity, which has no affine coordinates.
    pub fn add_affine(&self, rhs: &Affine<C, N>) -> Self {
        if self.is_identity() {
            return Projective::from(rhs);
        }
        let z1z1 = self.z.square();
        let u2 = rhs.x * z1z1;
        let s2 = rhs.y * self.z * z1z1;
        let h = u2 - self.x;
        let r = (s2 - self.y).double();
        if h.is_zero() {
            // Same x: the same point (r = 0) or its negation.
            return if r.is_zero() { self.double() } else { Projective::IDENTITY };
        }
        let hh = h.square();
        let i = hh.double().double();
        let j = h * i;
        let v = self.x * i;
        let x = r.square() - j - v.double();
        let y = r * (v - x) - (self.y * j).double();
        let z = (self.z + h).square() - z1z1 - hh;
        Projective { x, y, z }
    }

    /// The affine point, by one inversion; `None` for the identity.
    pub fn to_affine(self) -> Option<Affine<C, N>> {
        let z_inv = self.z.invert()?;
        Some(self.with_z_inverse(z_inv))
    }

    /// The affine point given `Z⁻¹`: x = X·Z⁻², y = Y·Z⁻³.
    fn with_z_inverse(&self, z_inv: Fe<C, N>) -> Affine<C, N> {
        let z_inv2 = z_inv.square();
        Affine { x: self.x * z_inv2, y: self.y * z_inv2 * z_inv }
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
            *slot = point.with_z_inverse(z_inv);
        }
        Some(out)
    }

    /// Whether `x(self) mod n == r`, for r's plain words (`0 < r < n`), without leaving
    /// Jacobian coordinates (x = X/Z²). `false` for the identity.
    pub fn x_mod_n_is(&self, r: &[u32; N]) -> bool {
        if self.is_identity() {
            return false;
        }
        let (p, n) = (<C::Field as Modulus<N>>::P, <C::Order as Modulus<N>>::P);
        let zz = self.z.square();
        let times_zz =
            |candidate: [u32; N]| Fe::<C, N>::from_words(candidate).is_some_and(|c| c * zz == self.x);
        // r < n < p is a field element; r + n is one only when it stays below p.
        let p_minus_n = field::sub_words(&p, &n).0;
        times_zz(*r) || (field::less_than(r, &p_minus_n) && times_zz(field::add_words(r, &n).0))
    }

    /// A point with these raw coordinates (tests of [`Projective::x_mod_n_is`], which
    /// reads only X and Z: x = X/Z²).
    #[cfg(test)]
    pub fn from_xz(x: Fe<C, N>, z: Fe<C, N>) -> Self {
        Projective { x, y: Elem::ONE, z }
    }
}
