//! The two curves JWS uses with ECDSA (RFC 7518 §3.4): P-256 with SHA-256 (ES256) and
//! P-384 with SHA-384 (ES384). Constants as SEC 2 (v2, §2.4.2 and §2.5.1) prints
//! them; the tests hold them to RustCrypto's p256 and p384.

use std::sync::OnceLock;

use sha2::{Digest, Sha256, Sha384};

use super::field::{hex, Elem, Modulus};
use super::point::{Affine, Curve, Fe};
use super::{Ecdsa, Table, W_BASE};

/// NIST P-256 (secp256r1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P256Field;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P256Order;

impl Modulus<8> for P256Field {
    const P: [u32; 8] = hex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff");
    const LIMBS_29: bool = true;
}

impl Modulus<8> for P256Order {
    const P: [u32; 8] = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
}

impl Curve<8> for P256 {
    type Field = P256Field;
    type Order = P256Order;
    const NAME: &'static str = "P-256";
    const B: Fe<P256, 8> =
        Elem::constant(hex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b"));
    const G: (Fe<P256, 8>, Fe<P256, 8>) = (
        Elem::constant(hex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296")),
        Elem::constant(hex("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5")),
    );
}

impl Ecdsa<8> for P256 {
    fn digest(message: &[u8]) -> Vec<u8> {
        Sha256::digest(message).to_vec()
    }

    fn base_table() -> Option<&'static Table<P256, 8>> {
        static TABLE: OnceLock<Option<Table<P256, 8>>> = OnceLock::new();
        TABLE.get_or_init(|| Table::new(&Affine::generator(), W_BASE)).as_ref()
    }
}

/// NIST P-384 (secp384r1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P384;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P384Field;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P384Order;

impl Modulus<12> for P384Field {
    const P: [u32; 12] = hex(concat!(
        "ffffffffffffffffffffffffffffffffffffffffffffffff",
        "fffffffffffffffeffffffff0000000000000000ffffffff"
    ));
}

impl Modulus<12> for P384Order {
    const P: [u32; 12] = hex(concat!(
        "ffffffffffffffffffffffffffffffffffffffffffffffff",
        "c7634d81f4372ddf581a0db248b0a77aecec196accc52973"
    ));
}

impl Curve<12> for P384 {
    type Field = P384Field;
    type Order = P384Order;
    const NAME: &'static str = "P-384";
    const B: Fe<P384, 12> = Elem::constant(hex(concat!(
        "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe814112",
        "0314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef"
    )));
    const G: (Fe<P384, 12>, Fe<P384, 12>) = (
        Elem::constant(hex(concat!(
            "aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b98",
            "59f741e082542a385502f25dbf55296c3a545e3872760ab7"
        ))),
        Elem::constant(hex(concat!(
            "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147c",
            "e9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f"
        ))),
    );
}

impl Ecdsa<12> for P384 {
    fn digest(message: &[u8]) -> Vec<u8> {
        Sha384::digest(message).to_vec()
    }

    fn base_table() -> Option<&'static Table<P384, 12>> {
        static TABLE: OnceLock<Option<Table<P384, 12>>> = OnceLock::new();
        TABLE.get_or_init(|| Table::new(&Affine::generator(), W_BASE)).as_ref()
    }
}
