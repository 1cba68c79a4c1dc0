//! Cross-checks against the p256 crate (it signs and multiplies the plain way; we
//! verify with tables) and hostile signatures.

use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::bigint::Encoding as _;
use p256::elliptic_curve::point::AffineCoordinates as _;
use p256::elliptic_curve::Field as _;
use rand::{RngCore, SeedableRng};

use super::*;

/// n − 1, the largest scalar.
fn n_minus_one() -> Scalar {
    -Scalar::ONE
}

/// The group order n, big-endian.
const N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc,
    0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

fn key_of(signing: &p256::ecdsa::SigningKey) -> Es256Key {
    Es256Key::from_affine(signing.verifying_key().as_affine()).unwrap()
}

fn sign(signing: &p256::ecdsa::SigningKey, msg: &[u8]) -> [u8; 64] {
    let sig: p256::ecdsa::Signature = signing.sign(msg);
    sig.to_bytes().into()
}

fn scalar_from_u64s(limbs: [u64; 4]) -> Scalar {
    let mut bytes = [0u8; 32];
    for (chunk, limb) in bytes.chunks_exact_mut(8).zip(limbs.iter().rev()) {
        chunk.copy_from_slice(&limb.to_be_bytes());
    }
    <Scalar as Reduce<U256>>::reduce_bytes(&bytes.into())
}

#[test]
fn lincomb_matches_plain_scalar_multiplication() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(256);
    let q_secret = Scalar::random(&mut rng);
    let q = (ProjectivePoint::GENERATOR * q_secret).to_affine();
    let key = Es256Key::from_affine(&q).unwrap();
    let mut scalars = vec![
        Scalar::ZERO,
        Scalar::ONE,
        n_minus_one(),
        Scalar::from(u64::from(u32::MAX)),
        scalar_from_u64s([u64::MAX; 4]),
        scalar_from_u64s([0, 0, 0, 1 << 63]),
        scalar_from_u64s([0x8000_0000_8000_0000; 4]),
        scalar_from_u64s([0xaaaa_aaaa_aaaa_aaaa; 4]),
        scalar_from_u64s([0x5555_5555_5555_5555; 4]),
        scalar_from_u64s([0xffff_ffff_0000_0001; 4]),
    ];
    scalars.extend((0..20).map(|_| Scalar::random(&mut rng)));
    for u1 in &scalars {
        for u2 in scalars.iter().step_by(3) {
            let want = ProjectivePoint::GENERATOR * u1 + ProjectivePoint::from(q) * u2;
            let got = lincomb(u1, u2, &key).unwrap();
            assert_eq!(got.to_affine(), want.to_affine());
            // The verifier's last step, in R's own coordinates, against p256's.
            let r = <Scalar as Reduce<U256>>::reduce_bytes(&want.to_affine().x());
            assert_eq!(got.x_mod_n_is(&r), !bool::from(want.is_identity()));
            assert!(!got.x_mod_n_is(&(r + Scalar::ONE)));
        }
    }
    // u1·G + u2·Q at infinity: Q = G·q, u1 = −u2·q.
    let u2 = Scalar::random(&mut rng);
    let u1 = -(u2 * q_secret);
    let infinity = lincomb(&u1, &u2, &key).unwrap();
    assert!(infinity.is_identity());
    assert!(!infinity.x_mod_n_is(&Scalar::ZERO), "the identity has no x");
}

/// The complete formulas agree with p256's points everywhere they could break: the
/// identity on either side of a doubling or an addition, a point added to itself or
/// to its negation, and long random chains.
#[test]
fn point_formulas_agree_with_p256() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9421);
    let as_ours = |p: &ProjectivePoint| point::Affine::from_point(&p.to_affine());
    assert_eq!(as_ours(&ProjectivePoint::IDENTITY), None, "the identity has no affine coordinates");
    assert!(point::Projective::IDENTITY.double().is_identity());
    let g = ProjectivePoint::GENERATOR;
    let g_ours = as_ours(&g).unwrap();
    assert_eq!(point::Projective::IDENTITY.add_affine(&g_ours).to_affine(), g.to_affine());
    let mut ours = point::Projective::IDENTITY.add_affine(&g_ours);
    let mut theirs = g;
    for round in 0..200 {
        let k = Scalar::random(&mut rng);
        let p = g * k;
        let p_ours = as_ours(&p).unwrap();
        // P + P through the addition formula, and P − P.
        let single = point::Projective::IDENTITY.add_affine(&p_ours);
        assert_eq!(single.add_affine(&p_ours).to_affine(), p.double().to_affine(), "{round}");
        assert!(single.add_affine(&p_ours.neg()).is_identity(), "{round}");
        // A running chain of doublings and additions.
        if round % 3 == 0 {
            ours = ours.double();
            theirs = theirs.double();
        }
        ours = ours.add_affine(&p_ours);
        theirs += p;
        assert_eq!(ours.to_affine(), theirs.to_affine(), "{round}");
    }
}

/// `x mod n == r` read off X and Z, including the `r + n` case no random point reaches
/// (x in [n, p) has probability about 2^-128).
#[test]
fn x_mod_n_is_checked_without_an_inversion() {
    use field::Fe;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let fe = |hex: &str| Fe::from_bytes(&U256::from_be_hex(hex).to_be_bytes()).unwrap();
    let random = |rng: &mut rand::rngs::StdRng| loop {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        if let Some(fe) = Fe::from_bytes(&bytes) {
            break fe;
        }
    };
    let n = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
    // r = 5: x = r + n = n + 5 (below p), at two different Z.
    let r = Scalar::from(5u64);
    let n_plus_5 = fe("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632556");
    for _ in 0..4 {
        let z = random(&mut rng);
        assert!(point::Projective::from_xz(n_plus_5 * z, z).x_mod_n_is(&r));
        assert!(point::Projective::from_xz(fe(&format!("{:0>64}", "5")) * z, z).x_mod_n_is(&r));
        assert!(!point::Projective::from_xz(n_plus_5 * z, z).x_mod_n_is(&Scalar::from(6u64)));
    }
    // An r at or above p − n has no second candidate: x = r + n would pass p.
    let big_r = -Scalar::ONE;
    let x = fe(n) - Fe::ONE; // n − 1 = r itself
    assert!(point::Projective::from_xz(x, Fe::ONE).x_mod_n_is(&big_r));
    assert!(!point::Projective::from_xz(x + Fe::ONE, Fe::ONE).x_mod_n_is(&big_r));
}

/// Our field against p256's on random elements and on the edges (0, 1, p − 1, values
/// near 2^256): every operation, in and out of Montgomery form.
#[test]
fn the_field_agrees_with_p256s() {
    use field::Fe;
    use p256::FieldElement;
    let p_minus = |k: u64| {
        let p = U256::from_be_hex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff");
        p.wrapping_sub(&U256::from_u64(k)).to_be_bytes()
    };
    let mut edges: Vec<[u8; 32]> = vec![[0; 32], U256::ONE.to_be_bytes(), p_minus(1), p_minus(2)];
    edges.push(
        U256::from_be_hex("00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff").to_be_bytes(),
    );
    edges.push(
        U256::from_be_hex("fffffffeffffffffffffffffffffffffffffffffffffffffffffffffffffffff").to_be_bytes(),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut values = edges.clone();
    while values.len() < 2_000 {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        values.push(bytes);
    }
    let theirs = |bytes: &[u8; 32]| Option::<FieldElement>::from(FieldElement::from_bytes(&(*bytes).into()));
    // At and above p: refused by both.
    for k in [0u64, 1] {
        let mut at = p_minus(0);
        if k == 1 {
            at = [0xff; 32];
        }
        assert!(Fe::from_bytes(&at).is_none());
        assert!(theirs(&at).is_none());
    }
    let pairs = values.iter().zip(values.iter().rev().chain(edges.iter().cycle()));
    for (a_bytes, b_bytes) in pairs.take(values.len()) {
        let (Some(a), Some(ta)) = (Fe::from_bytes(a_bytes), theirs(a_bytes)) else {
            assert_eq!(Fe::from_bytes(a_bytes), None, "{a_bytes:02x?}");
            assert!(theirs(a_bytes).is_none());
            continue;
        };
        let (Some(b), Some(tb)) = (Fe::from_bytes(b_bytes), theirs(b_bytes)) else { continue };
        let bytes = |fe: FieldElement| -> [u8; 32] { fe.to_bytes().into() };
        assert_eq!(a.to_bytes(), *a_bytes);
        assert_eq!((a * b).to_bytes(), bytes(ta * tb), "{a_bytes:02x?} × {b_bytes:02x?}");
        assert_eq!(a.square().to_bytes(), bytes(ta.square()));
        assert_eq!((a + b).to_bytes(), bytes(ta + tb));
        assert_eq!((a - b).to_bytes(), bytes(ta - tb));
        assert_eq!((-a).to_bytes(), bytes(-ta));
        assert_eq!(a.double().to_bytes(), bytes(ta.double()));
        assert_eq!(a.is_zero(), bool::from(ta.is_zero()));
    }
    assert_eq!(Fe::ONE.to_bytes(), U256::ONE.to_be_bytes());
}

#[test]
fn wnaf_digits_rebuild_the_piece() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for window in [W_BASE, W_KEY, 2] {
        let mut pieces = vec![0, 1, u64::from(u32::MAX), 1 << 31, 0xaaaa_aaaa, 0x5555_5555];
        pieces.extend((0..1000).map(|_| u64::from(rng.next_u32())));
        for piece in pieces {
            let digits = wnaf(piece, window);
            let value: i128 = digits.iter().rev().fold(0, |acc, &d| acc * 2 + i128::from(d));
            assert_eq!(value, i128::from(piece));
            for (i, &d) in digits.iter().enumerate() {
                if d != 0 {
                    assert!(d % 2 != 0 && i32::from(d).abs() < 1 << (window - 1));
                    assert!(digits[i + 1..].iter().take(window as usize - 1).all(|&z| z == 0));
                }
            }
        }
    }
}

#[test]
fn agrees_with_p256_on_random_keys_and_messages() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for _ in 0..20 {
        let signing = p256::ecdsa::SigningKey::random(&mut rng);
        let key = key_of(&signing);
        let reference = signing.verifying_key();
        for len in [0, 1, 32, 100] {
            let mut msg = vec![0u8; len];
            rng.fill_bytes(&mut msg);
            let sig = sign(&signing, &msg);
            assert!(Es256.verify(&key, &msg, &sig));
            // A flipped bit: both refuse (or, for a signature still in range, agree).
            let mut bad = sig;
            let bit = rng.next_u32() as usize % 512;
            bad[bit / 8] ^= 1 << (bit % 8);
            let theirs = p256::ecdsa::Signature::from_slice(&bad)
                .is_ok_and(|s| p256::ecdsa::signature::Verifier::verify(reference, &msg, &s).is_ok());
            assert_eq!(Es256.verify(&key, &msg, &bad), theirs);
            assert!(!theirs);
            msg.push(1);
            assert!(!Es256.verify(&key, &msg, &sig));
        }
        // Another key does not verify it.
        let other = key_of(&p256::ecdsa::SigningKey::random(&mut rng));
        assert!(!Es256.verify(&other, b"m", &sign(&signing, b"m")));
    }
}

#[test]
fn r_and_s_must_be_in_range() {
    let signing = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
    let key = key_of(&signing);
    let sig = sign(&signing, b"msg");
    assert!(Es256.verify(&key, b"msg", &sig));
    let (r, s) = (&sig[..32], &sig[32..]);
    let with = |r: &[u8], s: &[u8]| {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(r);
        out[32..].copy_from_slice(s);
        out
    };
    // s and n − s are both valid ECDSA signatures (no low-s rule in JWS).
    let neg_s = (-nonzero_scalar(s).unwrap()).to_repr();
    assert!(Es256.verify(&key, b"msg", &with(r, &neg_s)));
    // r + n and s + n would be "the same" scalars mod n when they fit in 32 bytes.
    let plus_n = |x: &[u8]| {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let v = u16::from(x[i]) + u16::from(N[i]) + carry;
            out[i] = v as u8;
            carry = v >> 8;
        }
        (carry == 0).then_some(out)
    };
    if let Some(r_plus_n) = plus_n(r) {
        assert!(!Es256.verify(&key, b"msg", &with(&r_plus_n, s)));
    }
    if let Some(s_plus_n) = plus_n(s) {
        assert!(!Es256.verify(&key, b"msg", &with(r, &s_plus_n)));
    }
    for bad in [[0u8; 32], N, [0xff; 32]] {
        assert!(!Es256.verify(&key, b"msg", &with(&bad, s)));
        assert!(!Es256.verify(&key, b"msg", &with(r, &bad)));
    }
    assert!(!Es256.verify(&key, b"msg", &[0; 64]));
}

#[test]
fn key_import() {
    let signing = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
    let encoded = signing.verifying_key().to_encoded_point(false);
    let key = Es256Key::from_sec1_bytes(encoded.as_bytes()).unwrap();
    assert_eq!(key.as_affine(), signing.verifying_key().as_affine());
    let mut off_curve = encoded.as_bytes().to_vec();
    off_curve[64] ^= 1;
    assert!(Es256Key::from_sec1_bytes(&off_curve).is_none());
    assert!(Es256Key::from_sec1_bytes(&[0]).is_none(), "the identity");
    assert!(Es256Key::from_affine(&AffinePoint::IDENTITY).is_none());
    assert!(Es256Key::from_sec1_bytes(&[]).is_none());
}

#[test]
fn algorithm_trait() {
    let signing = p256::ecdsa::SigningKey::from_slice(&[3; 32]).unwrap();
    let sig = Es256Signature::try_from_slice(&sign(&signing, b"m")).unwrap();
    assert!(Es256.verify_signature(&sig, &key_of(&signing), b"m"));
    assert!(Es256Signature::try_from_slice(&[0; 63]).is_err());
    assert!(Es256Signature::try_from_slice(&[0; 65]).is_err());
    assert_eq!(Es256.name(), "ES256");
}
