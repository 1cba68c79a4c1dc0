//! Cross-checks against RustCrypto's p256 and p384 (they sign and multiply the plain
//! way; we verify with our own fields, formulas and tables), and hostile signatures and
//! keys. Every test runs on both curves.

use rand::{RngCore, SeedableRng};

use super::field::{self, Elem, Modulus};
use super::point::{Affine, Curve, Fe, Projective, Scalar};
use super::*;

#[test]
fn compile_time_constants() {
    assert_eq!(field::hex::<2>("0123456789abcdef"), [0x89ab_cdef, 0x0123_4567]);
    let one: [u32; 8] = field::hex(&format!("{:0>64}", "1"));
    assert_eq!(Elem::<curves::P256Field, 8>::ONE.to_words(), one);
    assert_eq!(Elem::<curves::P384Order, 12>::ONE.to_words()[1..], [0; 11]);
    // −p⁻¹ mod 2^32, against a bit-by-bit inverse: the fields' p end in 32 one bits
    // (digit factor 1), the orders' do not.
    for p_low in [1u32, 3, 0xffff_ffff, 0xfc63_2551, 0xccc5_2973, 0x8000_0001] {
        let mut inverse = 1u32;
        for bit in 1..32 {
            if p_low.wrapping_mul(inverse) & (1 << bit) != 0 {
                inverse |= 1 << bit;
            }
        }
        assert_eq!(field::neg_inverse(p_low), inverse.wrapping_neg(), "{p_low:08x}");
    }
}

#[test]
fn wnaf_digits_rebuild_the_piece() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for window in [W_BASE, W_KEY, 2] {
        let mut pieces = vec![0, 1, u32::MAX, 1 << 31, 0xaaaa_aaaa, 0x5555_5555];
        pieces.extend((0..1000).map(|_| rng.next_u32()));
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

/// The same tests for each curve, held to the RustCrypto crate of that curve.
macro_rules! curve_tests {
    ($module:ident, $rc:ident, $curve:ty, $n:literal, $uint:ty) => {
        mod $module {
            use $rc::ecdsa::signature::{Signer as _, Verifier as _};
            use $rc::elliptic_curve::group::Group as _;
            use $rc::elliptic_curve::ops::Reduce;
            use $rc::elliptic_curve::point::AffineCoordinates as _;
            use $rc::elliptic_curve::sec1::ToEncodedPoint as _;
            use $rc::elliptic_curve::{Field as _, PrimeField as _};
            use $rc::{FieldElement, ProjectivePoint};

            use super::*;

            type C = $curve;
            const N: usize = $n;
            const BYTES: usize = 4 * N;
            type RcScalar = $rc::Scalar;

            fn words(bytes: &[u8]) -> [u32; N] {
                let mut out = [0u32; N];
                for (word, chunk) in out.iter_mut().zip(bytes.rchunks_exact(4)) {
                    *word = u32::from_be_bytes(chunk.try_into().unwrap());
                }
                out
            }

            fn be(words: &[u32; N]) -> Vec<u8> {
                words.iter().rev().flat_map(|w| w.to_be_bytes()).collect()
            }

            fn p() -> [u32; N] {
                <<C as Curve<N>>::Field as Modulus<N>>::P
            }

            fn n() -> [u32; N] {
                <<C as Curve<N>>::Order as Modulus<N>>::P
            }

            fn ours(point: &$rc::AffinePoint) -> Option<Affine<C, N>> {
                Affine::from_sec1_uncompressed(point.to_encoded_point(false).as_bytes())
            }

            fn same(ours: &Projective<C, N>, theirs: &ProjectivePoint) -> bool {
                match ours.to_affine() {
                    None => bool::from(theirs.is_identity()),
                    Some(affine) => {
                        affine.to_sec1_uncompressed() == theirs.to_affine().to_encoded_point(false).as_bytes()
                    }
                }
            }

            fn key_of(signing: &$rc::ecdsa::SigningKey) -> EcKey<C, N> {
                EcKey::from_sec1_bytes(signing.verifying_key().to_encoded_point(false).as_bytes()).unwrap()
            }

            fn sign(signing: &$rc::ecdsa::SigningKey, msg: &[u8]) -> Vec<u8> {
                let sig: $rc::ecdsa::Signature = signing.sign(msg);
                sig.to_bytes().to_vec()
            }

            fn random_bytes(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
                let mut bytes = vec![0u8; BYTES];
                rng.fill_bytes(&mut bytes);
                bytes
            }

            /// Edges of an N-word modulus m: 0, 1, 2, m − 2, m − 1, m, m + 1 (when it
            /// fits), 2^(32N) − 1, and words of all ones or zeros.
            fn edges(m: [u32; N]) -> Vec<Vec<u8>> {
                let small = |k: u32| {
                    let mut w = [0u32; N];
                    w[0] = k;
                    w
                };
                let mut out = vec![be(&small(0)), be(&small(1)), be(&small(2))];
                for k in [1, 2] {
                    out.push(be(&field::sub_words(&m, &small(k)).0));
                }
                out.push(be(&m));
                let (plus_one, carry) = field::add_words(&m, &small(1));
                if !carry {
                    out.push(be(&plus_one));
                }
                out.push(vec![0xff; BYTES]);
                let mut alternating = [0u32; N];
                for (i, w) in alternating.iter_mut().enumerate() {
                    *w = if i % 2 == 0 { u32::MAX } else { 0 };
                }
                out.push(be(&alternating));
                out.push(be(&small(u32::MAX)));
                out
            }

            #[test]
            fn constants_are_the_curves() {
                let g = ProjectivePoint::GENERATOR.to_affine();
                assert_eq!(ours(&g), Some(Affine::generator()), "G, and b through G's curve equation");
                // n − 1 and p − 1, from RustCrypto's scalars and field elements.
                let n_minus_one = be(&field::sub_words(&n(), &[1].iter().chain(&[0; N]).copied().take(N).collect::<Vec<_>>().try_into().unwrap()).0);
                assert_eq!(n_minus_one, (-RcScalar::ONE).to_repr().to_vec());
                let p_minus_one = be(&field::sub_words(&p(), &words(&{
                    let mut one = vec![0u8; BYTES];
                    one[BYTES - 1] = 1;
                    one
                }))
                .0);
                assert_eq!(p_minus_one, (-FieldElement::ONE).to_bytes().to_vec());
                assert_eq!(<C as Curve<N>>::NAME, if N == 8 { "P-256" } else { "P-384" });
            }

            /// Both fields (coordinates and scalars) against RustCrypto's on random
            /// elements and on the edges: every operation, inversion included, in and
            /// out of Montgomery form.
            #[test]
            fn the_fields_agree_with_rustcrypto() {
                let mut rng = rand::rngs::StdRng::seed_from_u64(11 + N as u64);
                let theirs_fe = |b: &[u8]| Option::<FieldElement>::from(FieldElement::from_bytes(b.into()));
                let theirs_sc = |b: &[u8]| Option::<RcScalar>::from(RcScalar::from_repr({
                    let mut bytes = $rc::FieldBytes::default();
                    bytes.copy_from_slice(b);
                    bytes
                }));
                let mut values = edges(p());
                values.extend(edges(n()));
                while values.len() < 1_500 {
                    values.push(random_bytes(&mut rng));
                }
                let pairs: Vec<(&Vec<u8>, &Vec<u8>)> = values.iter().zip(values.iter().rev()).collect();
                for (a_bytes, b_bytes) in pairs {
                    // The coordinates' field.
                    match (Fe::<C, N>::from_be_bytes(a_bytes), theirs_fe(a_bytes)) {
                        (Some(a), Some(ta)) => {
                            assert_eq!(a.to_be_bytes(), *a_bytes);
                            let out = |fe: FieldElement| fe.to_bytes().to_vec();
                            assert_eq!(a.square().to_be_bytes(), out(ta.square()));
                            assert_eq!((-a).to_be_bytes(), out(-ta));
                            assert_eq!(a.double().to_be_bytes(), out(ta.double()));
                            assert_eq!(a.is_zero(), bool::from(ta.is_zero()));
                            assert_eq!(
                                a.invert().map(|i| i.to_be_bytes()),
                                Option::<FieldElement>::from(ta.invert()).map(out)
                            );
                            if let (Some(b), Some(tb)) = (Fe::<C, N>::from_be_bytes(b_bytes), theirs_fe(b_bytes)) {
                                assert_eq!((a * b).to_be_bytes(), out(ta * tb), "{a:?} × {b:?}");
                                assert_eq!((a + b).to_be_bytes(), out(ta + tb));
                                assert_eq!((a - b).to_be_bytes(), out(ta - tb));
                            }
                        }
                        (None, None) => {}
                        (ours, theirs) => panic!("{a_bytes:02x?}: {ours:?} against {theirs:?}"),
                    }
                    // The scalars' field, and the reduction of a hash into it.
                    match (Scalar::<C, N>::from_be_bytes(a_bytes), theirs_sc(a_bytes)) {
                        (Some(a), Some(ta)) => {
                            let out = |s: RcScalar| s.to_repr().to_vec();
                            assert_eq!(a.to_be_bytes(), *a_bytes);
                            assert_eq!(
                                a.invert().map(|i| i.to_be_bytes()),
                                Option::<RcScalar>::from(ta.invert()).map(out)
                            );
                            if let (Some(b), Some(tb)) = (Scalar::<C, N>::from_be_bytes(b_bytes), theirs_sc(b_bytes)) {
                                assert_eq!((a * b).to_be_bytes(), out(ta * tb));
                                assert_eq!((a - b).to_be_bytes(), out(ta - tb));
                            }
                        }
                        (None, None) => {}
                        (ours, theirs) => panic!("{a_bytes:02x?}: {ours:?} against {theirs:?}"),
                    }
                    let reduced = <RcScalar as Reduce<$uint>>::reduce_bytes(a_bytes.as_slice().into());
                    assert_eq!(Scalar::<C, N>::reduce_be_bytes(a_bytes).unwrap().to_be_bytes(), reduced.to_repr().to_vec());
                }
                assert_eq!(Fe::<C, N>::from_be_bytes(&[0; 3]), None, "a wrong length");
                assert_eq!(Scalar::<C, N>::reduce_be_bytes(&[0; BYTES + 1]), None);
            }

            /// The Jacobian formulas agree with RustCrypto's points everywhere they could
            /// break: the identity on either side of a doubling or an addition, a point
            /// added to itself or to its negation (the cases the mixed addition handles
            /// before its formula), and long random chains; and
            /// the batch conversion to affine agrees with one-by-one.
            #[test]
            fn point_formulas_agree_with_rustcrypto() {
                let mut rng = rand::rngs::StdRng::seed_from_u64(9421 + N as u64);
                assert_eq!(ours(&$rc::AffinePoint::IDENTITY), None, "the identity has no affine coordinates");
                assert!(Projective::<C, N>::IDENTITY.double().is_identity());
                let g = ProjectivePoint::GENERATOR;
                let g_ours = Affine::<C, N>::generator();
                assert!(same(&Projective::IDENTITY.add_affine(&g_ours), &g));
                let mut chain = Projective::IDENTITY.add_affine(&g_ours);
                let mut theirs = g;
                let mut points = Vec::new();
                for round in 0..150 {
                    let p = g * RcScalar::random(&mut rng);
                    let p_ours = ours(&p.to_affine()).unwrap();
                    let single = Projective::from(&p_ours);
                    assert!(same(&single.add_affine(&p_ours), &p.double()), "{round}");
                    assert!(same(&single.double(), &p.double()), "{round}");
                    assert!(single.add_affine(&p_ours.neg()).is_identity(), "{round}");
                    if round % 3 == 0 {
                        chain = chain.double();
                        theirs = theirs.double();
                    }
                    chain = chain.add_affine(&p_ours);
                    theirs += p;
                    assert!(same(&chain, &theirs), "{round}");
                    points.push(chain);
                }
                let batch = Projective::batch_to_affine(&points).unwrap();
                let one_by_one: Vec<_> = points.iter().map(|p| p.to_affine().unwrap()).collect();
                assert_eq!(batch, one_by_one);
                points.push(Projective::IDENTITY);
                assert_eq!(Projective::batch_to_affine(&points), None, "the identity has no affine form");
            }

            #[test]
            fn lincomb_matches_plain_scalar_multiplication() {
                let mut rng = rand::rngs::StdRng::seed_from_u64(256 + N as u64);
                let q_secret = RcScalar::random(&mut rng);
                let q = (ProjectivePoint::GENERATOR * q_secret).to_affine();
                let key = EcKey::<C, N>::from_sec1_bytes(q.to_encoded_point(false).as_bytes()).unwrap();
                let mut scalars = vec![RcScalar::ZERO, RcScalar::ONE, -RcScalar::ONE, RcScalar::from(u64::from(u32::MAX))];
                for fill in [0xff, 0xaa, 0x55, 0x80] {
                    scalars.push(<RcScalar as Reduce<$uint>>::reduce_bytes(vec![fill; BYTES].as_slice().into()));
                }
                scalars.extend((0..12).map(|_| RcScalar::random(&mut rng)));
                let plain = |s: &RcScalar| words(&s.to_repr());
                for u1 in &scalars {
                    for u2 in scalars.iter().step_by(3) {
                        let want = ProjectivePoint::GENERATOR * u1 + ProjectivePoint::from(q) * u2;
                        let got = key.lincomb(&plain(u1), &plain(u2)).unwrap();
                        assert!(same(&got, &want));
                        // The verifier's last step, in R's own coordinates.
                        let r = <RcScalar as Reduce<$uint>>::reduce_bytes(&want.to_affine().x());
                        assert_eq!(got.x_mod_n_is(&plain(&r)), !bool::from(want.is_identity()));
                        assert!(!got.x_mod_n_is(&plain(&(r + RcScalar::ONE))));
                    }
                }
                // u1·G + u2·Q at infinity: Q = G·q, u1 = −u2·q.
                let u2 = RcScalar::random(&mut rng);
                let u1 = -(u2 * q_secret);
                let infinity = key.lincomb(&plain(&u1), &plain(&u2)).unwrap();
                assert!(infinity.is_identity());
                assert!(!infinity.x_mod_n_is(&[0; N]), "the identity has no x");
            }

            /// `x mod n == r` read off X and Z, including the `r + n` case no random
            /// point reaches (x in [n, p) has probability about 2^-128 and 2^-190).
            #[test]
            fn x_mod_n_is_checked_without_an_inversion() {
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                let mut five = [0u32; N];
                five[0] = 5;
                let mut six = five;
                six[0] = 6;
                let n_plus_5 = Fe::<C, N>::from_words(field::add_words(&n(), &five).0).unwrap();
                for _ in 0..4 {
                    let z = loop {
                        if let Some(z) = Fe::<C, N>::from_be_bytes(&random_bytes(&mut rng)) {
                            break z;
                        }
                    };
                    // Jacobian: x = X/Z², so X = x·Z².
                    let zz = z * z;
                    assert!(Projective::<C, N>::from_xz(n_plus_5 * zz, z).x_mod_n_is(&five));
                    assert!(Projective::<C, N>::from_xz(Fe::<C, N>::from_words(five).unwrap() * zz, z).x_mod_n_is(&five));
                    assert!(!Projective::<C, N>::from_xz(n_plus_5 * zz, z).x_mod_n_is(&six));
                    assert!(!Projective::<C, N>::from_xz(n_plus_5 * z, z).x_mod_n_is(&five), "x is X/Z², not X/Z");
                }
                // An r at or above p − n has no second candidate: x = r + n would pass p.
                let mut one = [0u32; N];
                one[0] = 1;
                let big_r = field::sub_words(&n(), &one).0;
                let x = Fe::<C, N>::from_words(big_r).unwrap();
                assert!(Projective::<C, N>::from_xz(x, Fe::<C, N>::ONE).x_mod_n_is(&big_r));
                assert!(!Projective::<C, N>::from_xz(x + Fe::<C, N>::ONE, Fe::<C, N>::ONE).x_mod_n_is(&big_r));
            }

            #[test]
            fn agrees_with_rustcrypto_on_random_keys_and_messages() {
                let mut rng = rand::rngs::StdRng::seed_from_u64(2 + N as u64);
                for _ in 0..12 {
                    let signing = $rc::ecdsa::SigningKey::random(&mut rng);
                    let key = key_of(&signing);
                    let reference = signing.verifying_key();
                    for len in [0, 1, 32, 100] {
                        let mut msg = vec![0u8; len];
                        rng.fill_bytes(&mut msg);
                        let sig = sign(&signing, &msg);
                        assert!(key.verify(&msg, &sig));
                        // A flipped bit: both refuse.
                        let mut bad = sig.clone();
                        let bit = rng.next_u32() as usize % (8 * bad.len());
                        bad[bit / 8] ^= 1 << (bit % 8);
                        let theirs = $rc::ecdsa::Signature::from_slice(&bad).is_ok_and(|s| reference.verify(&msg, &s).is_ok());
                        assert!(!theirs);
                        assert!(!key.verify(&msg, &bad));
                        msg.push(1);
                        assert!(!key.verify(&msg, &sig));
                    }
                    // Another key does not verify it.
                    let other = key_of(&$rc::ecdsa::SigningKey::random(&mut rng));
                    assert!(!other.verify(b"m", &sign(&signing, b"m")));
                }
            }

            #[test]
            fn r_and_s_must_be_in_range() {
                let signing = $rc::ecdsa::SigningKey::from_slice(&[7; BYTES]).unwrap();
                let key = key_of(&signing);
                let sig = sign(&signing, b"msg");
                assert!(key.verify(b"msg", &sig));
                let (r, s) = sig.split_at(BYTES);
                let with = |r: &[u8], s: &[u8]| [r, s].concat();
                // s and n − s are both valid ECDSA signatures (no low-s rule in JWS).
                let neg_s = be(&field::sub_words(&n(), &words(s)).0);
                assert!(key.verify(b"msg", &with(r, &neg_s)));
                // r + n and s + n would be "the same" scalars mod n when they fit.
                if let (plus_n, false) = field::add_words(&words(s), &n()) {
                    assert!(!key.verify(b"msg", &with(r, &be(&plus_n))));
                }
                if let (plus_n, false) = field::add_words(&words(r), &n()) {
                    assert!(!key.verify(b"msg", &with(&be(&plus_n), s)));
                }
                for bad in [vec![0u8; BYTES], be(&n()), vec![0xff; BYTES]] {
                    assert!(!key.verify(b"msg", &with(&bad, s)));
                    assert!(!key.verify(b"msg", &with(r, &bad)));
                }
                assert!(!key.verify(b"msg", &[0; 2 * BYTES]));
                assert!(!key.verify(b"msg", &sig[..2 * BYTES - 1]));
                assert!(!key.verify(b"msg", &[sig.as_slice(), &[0]].concat()));
            }

            #[test]
            fn key_import() {
                let signing = $rc::ecdsa::SigningKey::from_slice(&[9; BYTES]).unwrap();
                let encoded = signing.verifying_key().to_encoded_point(false);
                let key = EcKey::<C, N>::from_sec1_bytes(encoded.as_bytes()).unwrap();
                assert_eq!(key.to_sec1_bytes(), encoded.as_bytes());
                let mut off_curve = encoded.as_bytes().to_vec();
                off_curve[2 * BYTES] ^= 1;
                assert!(EcKey::<C, N>::from_sec1_bytes(&off_curve).is_none());
                assert!(EcKey::<C, N>::from_sec1_bytes(&[0]).is_none(), "the identity");
                assert!(EcKey::<C, N>::from_sec1_bytes(&[]).is_none());
                let compressed = signing.verifying_key().to_encoded_point(true);
                assert!(EcKey::<C, N>::from_sec1_bytes(compressed.as_bytes()).is_none(), "compressed");
                // x or y at or above p: the same point's coordinate plus p, when it fits.
                let mut x_plus_p = encoded.as_bytes().to_vec();
                if let (sum, false) = field::add_words(&words(&x_plus_p[1..=BYTES]), &p()) {
                    x_plus_p[1..=BYTES].copy_from_slice(&be(&sum));
                    assert!(EcKey::<C, N>::from_sec1_bytes(&x_plus_p).is_none());
                }
                let mut y_is_p = encoded.as_bytes().to_vec();
                y_is_p[1 + BYTES..].copy_from_slice(&be(&p()));
                assert!(EcKey::<C, N>::from_sec1_bytes(&y_is_p).is_none());
                // The other curve's point is refused by its length.
                let mut other = vec![4u8];
                other.extend(vec![1u8; 2 * (if N == 8 { 48 } else { 32 })]);
                assert!(EcKey::<C, N>::from_sec1_bytes(&other).is_none());
            }
        }
    };
}

curve_tests!(p256_curve, p256, P256, 8, p256::U256);
curve_tests!(p384_curve, p384, P384, 12, p384::U384);
