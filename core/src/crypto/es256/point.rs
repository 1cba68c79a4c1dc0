//! The verifier's point arithmetic, on our own field ([`Fe`]): homogeneous projective
//! coordinates (x = X/Z, y = Y/Z) and the complete formulas of Renes, Costello and
//! Batina for a = −3 (eprint 2015/1060, algorithms 5 and 6), the ones p256's own
//! points use.
//!
//! Ours because p256 keeps a point's X, Y and Z private, and the last step of a
//! verification only needs them: `x(R) mod n == r` holds exactly when `r·Z == X` or,
//! for the few `r` below `p − n`, `(r + n)·Z == X` (x(R) is below p, and p < 2n). That
//! saves the field inversion converting R to affine costs: about 260 of the 1,300 or so
//! field multiplications a check makes.

use std::sync::OnceLock;

use p256::elliptic_curve::bigint::Encoding as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::elliptic_curve::PrimeField as _;
use p256::{AffinePoint, FieldBytes, Scalar, U256};

use super::field::Fe;

/// p, the field's modulus.
const P: U256 = U256::from_be_hex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff");
/// n, the group's order.
const N: U256 = U256::from_be_hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
/// Below this, `r + n` is a field element too: the second candidate for x(R).
const P_MINUS_N: U256 = P.wrapping_sub(&N);
/// b, the curve's constant term.
const B: U256 = U256::from_be_hex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b");

/// b as a field element (Montgomery form: one multiplication to make, so made once).
fn b() -> Fe {
    static B_FE: OnceLock<Fe> = OnceLock::new();
    *B_FE.get_or_init(|| Fe::from_bytes(&B.to_be_bytes()).unwrap_or(Fe::ZERO))
}

/// A point other than the identity, in affine coordinates (table entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affine {
    x: Fe,
    y: Fe,
}

impl Affine {
    /// `None` for the identity (it has no affine coordinates).
    pub fn from_point(point: &AffinePoint) -> Option<Affine> {
        let encoded = point.to_encoded_point(false);
        let coordinate = |bytes: Option<&FieldBytes>| Fe::from_bytes(&(*bytes?).into());
        Some(Affine { x: coordinate(encoded.x())?, y: coordinate(encoded.y())? })
    }

    pub fn neg(&self) -> Affine {
        Affine { x: self.x, y: -self.y }
    }
}

/// A point in homogeneous projective coordinates; the identity is (0 : 1 : 0).
#[derive(Clone, Copy, Debug)]
pub struct Projective {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl Projective {
    pub const IDENTITY: Projective = Projective { x: Fe::ZERO, y: Fe::ONE, z: Fe::ZERO };

    pub fn is_identity(&self) -> bool {
        self.z.is_zero()
    }

    /// `2·self` (algorithm 6; exception-free).
    pub fn double(&self) -> Projective {
        let b = b();
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
    /// `rhs == self`; `rhs` is never the identity by construction).
    pub fn add_affine(&self, rhs: &Affine) -> Projective {
        let b = b();
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

    /// Whether `x(self) mod n == r`, without leaving projective coordinates. `false`
    /// for the identity.
    pub fn x_mod_n_is(&self, r: &Scalar) -> bool {
        if self.is_identity() {
            return false;
        }
        let r = U256::from_be_slice(&r.to_repr());
        let times_z =
            |candidate: U256| Fe::from_bytes(&candidate.to_be_bytes()).is_some_and(|c| c * self.z == self.x);
        // r < n < p is a field element; r + n is one only when it stays below p.
        times_z(r) || (r < P_MINUS_N && times_z(r.wrapping_add(&N)))
    }

    /// The affine point, by one inversion (tests compare with p256's points).
    #[cfg(test)]
    pub fn to_affine(self) -> AffinePoint {
        use p256::elliptic_curve::sec1::FromEncodedPoint as _;
        use p256::FieldElement;
        let p256 = |fe: Fe| FieldElement::from_bytes(&fe.to_bytes().into()).unwrap();
        let Some(z_inv) = Option::<FieldElement>::from(p256(self.z).invert()) else {
            return AffinePoint::IDENTITY;
        };
        let (x, y) = ((p256(self.x) * z_inv).to_bytes(), (p256(self.y) * z_inv).to_bytes());
        let encoded = p256::EncodedPoint::from_affine_coordinates(&x, &y, false);
        Option::from(AffinePoint::from_encoded_point(&encoded)).expect("a point of the curve")
    }

    /// A point with these raw coordinates (tests of [`Projective::x_mod_n_is`], which
    /// reads only X and Z).
    #[cfg(test)]
    pub fn from_xz(x: Fe, z: Fe) -> Projective {
        Projective { x, y: Fe::ONE, z }
    }
}
