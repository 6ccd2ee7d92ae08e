//! The core's X25519 (src/x25519.rs): the Edwards path for curve points and the ladder for twist
//! points together give exactly RFC 7748's function, and every all-zero result is refused.
//!
//! Held to the Wycheproof X25519 set and the RFC 7748 vectors, and to `x25519-dalek`'s ladder
//! on inputs of every kind: random curve and twist points, points with each 8-torsion component,
//! the low-order points themselves, the top bit set, and non-canonical encodings (u + p).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use agentmesh_core::internals::{
    x25519_diffie_hellman, x25519_diffie_hellman_and_public_key, x25519_ladder, x25519_public_key,
    X25519PeerPublic,
};
use agentmesh_core::Error;
use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::montgomery::MontgomeryPoint;
use rand_core::RngCore;
use serde_json::Value;
use x25519_dalek::StaticSecret;

use common::TestRng;

const RFC7748_JSON: &str = include_str!("../../../tests/vectors/rfc/rfc7748.json");

/// p = 2^255 - 19, little-endian.
const P: [u8; 32] = {
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

fn hex32(v: &Value, name: &str) -> [u8; 32] {
    hex::decode(v[name].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn is_curve_point(u: &[u8; 32]) -> bool {
    MontgomeryPoint(*u).to_edwards(0).is_some()
}

/// The core's answer as the ladder would give it: the shared secret, or all zeros where the
/// core refused a non-contributory result (and only there).
fn core_or_zero(k: [u8; 32], u: [u8; 32]) -> [u8; 32] {
    match x25519_diffie_hellman(&StaticSecret::from(k), &u) {
        Ok(shared) => {
            assert_ne!(*shared, [0u8; 32], "an all-zero result was accepted");
            *shared
        }
        Err(Error::NonContributory) => [0u8; 32],
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// Checks the core against the ladder on one input; returns whether it was a curve point.
fn agrees_with_ladder(k: [u8; 32], u: [u8; 32]) -> bool {
    let ladder = *x25519_ladder(&StaticSecret::from(k), &u);
    assert_eq!(
        hex::encode(core_or_zero(k, u)),
        hex::encode(ladder),
        "k={} u={}",
        hex::encode(k),
        hex::encode(u)
    );
    is_curve_point(&u)
}

fn random32(rng: &mut TestRng) -> [u8; 32] {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    b
}

#[test]
fn wycheproof_x25519_through_the_core_gives_every_answer_and_refuses_the_zero_ones() {
    use wycheproof::xdh::{TestName, TestSet};

    let set = TestSet::load(TestName::X25519).unwrap();
    let (mut curve, mut twist, mut refused) = (0usize, 0usize, 0usize);
    for group in &set.test_groups {
        for t in &group.tests {
            let (Ok(k), Ok(u)) = (
                <[u8; 32]>::try_from(&t.private_key[..]),
                <[u8; 32]>::try_from(&t.public_key[..]),
            ) else {
                continue; // not representable in the core's types (known_answers.rs checks)
            };
            let expected: [u8; 32] = t.shared_secret[..].try_into().unwrap();
            let got = core_or_zero(k, u);
            assert_eq!(
                hex::encode(got),
                hex::encode(expected),
                "tcId {} ({})",
                t.tc_id,
                t.comment
            );
            if expected == [0u8; 32] {
                refused += 1;
            }
            if is_curve_point(&u) {
                curve += 1;
            } else {
                twist += 1;
            }
        }
    }
    println!("wycheproof x25519 via the core: {curve} on the curve, {twist} on the twist, {refused} refused");
    assert!(curve > 100 && twist > 100 && refused > 0);
}

#[test]
fn rfc7748_vectors_through_the_core() {
    let doc: Value = serde_json::from_str(RFC7748_JSON).unwrap();
    for v in doc["single_shot"].as_array().unwrap() {
        assert_eq!(
            hex::encode(core_or_zero(hex32(v, "scalar"), hex32(v, "u"))),
            hex::encode(hex32(v, "output"))
        );
    }
    let it = &doc["iterated"];
    let (mut k, mut u) = (hex32(it, "start"), hex32(it, "start"));
    for i in 1..=1000u32 {
        let next = core_or_zero(k, u);
        (u, k) = (k, next);
        if i == 1 {
            assert_eq!(hex::encode(k), hex::encode(hex32(it, "after_1")));
        }
    }
    assert_eq!(hex::encode(k), hex::encode(hex32(it, "after_1000")));

    let dh = &doc["diffie_hellman"];
    let alice = StaticSecret::from(hex32(dh, "alice_private"));
    let bob = StaticSecret::from(hex32(dh, "bob_private"));
    assert_eq!(x25519_public_key(&alice), hex32(dh, "alice_public"));
    assert_eq!(x25519_public_key(&bob), hex32(dh, "bob_public"));
    let shared = hex32(dh, "shared");
    assert_eq!(
        *x25519_diffie_hellman(&alice, &hex32(dh, "bob_public")).unwrap(),
        shared
    );
    assert_eq!(
        *x25519_diffie_hellman(&bob, &hex32(dh, "alice_public")).unwrap(),
        shared
    );
}

#[test]
fn the_edwards_path_equals_the_ladder_on_curve_twist_torsion_top_bit_and_non_canonical_inputs() {
    let mut rng = TestRng::new("x25519 edwards path vs ladder");
    let (mut curve, mut twist) = (0usize, 0usize);
    let mut tally = |on_curve: bool| {
        if on_curve {
            curve += 1
        } else {
            twist += 1
        }
    };
    for round in 0..200 {
        let k = random32(&mut rng);
        // Any 32 bytes: about half are curve points, half twist points.
        let mut u = random32(&mut rng);
        tally(agrees_with_ladder(k, u));
        // The same u with the top bit flipped (X25519 ignores it).
        u[31] ^= 0x80;
        tally(agrees_with_ladder(k, u));
        // A public key with each 8-torsion component: clamping must still cancel it.
        let honest = curve25519_dalek::EdwardsPoint::mul_base_clamped(random32(&mut rng));
        let torsion = EIGHT_TORSION[round % 8];
        let with_torsion = (honest + torsion).to_montgomery().to_bytes();
        assert!(agrees_with_ladder(k, with_torsion));
        // The low-order points alone: every result is all-zero and refused.
        let low_order = torsion.to_montgomery().to_bytes();
        assert!(agrees_with_ladder(k, low_order));
        assert!(matches!(
            x25519_diffie_hellman(&StaticSecret::from(k), &low_order),
            Err(Error::NonContributory)
        ));
    }
    // Non-canonical encodings: u + p for every u < 19 (u + p < 2^255).
    for small in 0u8..19 {
        let mut u = P;
        u[0] = u[0].wrapping_add(small);
        let k = random32(&mut rng);
        tally(agrees_with_ladder(k, u));
    }
    println!("edwards path vs ladder: {curve} curve points, {twist} twist points");
    assert!(curve > 100 && twist > 50);
}

#[test]
fn every_low_order_curve_point_is_refused_on_the_edwards_path() {
    // Without the refusal on the Edwards path, these would come back Ok([0; 32]).
    let k = [0x42u8; 32];
    for torsion in EIGHT_TORSION {
        let u = torsion.to_montgomery().to_bytes();
        assert!(is_curve_point(&u), "{}", hex::encode(u));
        assert!(matches!(
            x25519_diffie_hellman(&StaticSecret::from(k), &u),
            Err(Error::NonContributory)
        ));
    }
}

#[test]
fn a_new_ratchet_key_and_its_dh_in_one_batch_equal_the_two_computed_apart() {
    let mut rng = TestRng::new("x25519 batch of a new ratchet key");
    for round in 0..64 {
        let k = random32(&mut rng);
        let secret = StaticSecret::from(k);
        let honest = curve25519_dalek::EdwardsPoint::mul_base_clamped(random32(&mut rng));
        let publics = [
            random32(&mut rng),
            (honest + EIGHT_TORSION[round % 8])
                .to_montgomery()
                .to_bytes(),
            EIGHT_TORSION[round % 8].to_montgomery().to_bytes(),
        ];
        for u in publics {
            let batch = x25519_diffie_hellman_and_public_key(&secret, &X25519PeerPublic::new(u));
            match (batch, x25519_diffie_hellman(&secret, &u)) {
                (Ok((shared, public)), Ok(apart)) => {
                    assert_eq!(*shared, *apart);
                    assert_eq!(public, x25519_public_key(&secret));
                    assert_eq!(*shared, *x25519_ladder(&secret, &u));
                }
                (Err(Error::NonContributory), Err(Error::NonContributory)) => {}
                (batch, apart) => panic!("u={}: {batch:?} vs {apart:?}", hex::encode(u)),
            }
        }
    }
}
