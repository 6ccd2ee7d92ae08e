//! `Session::unseal_owned` (decryption in the envelope's own buffer) accepts and refuses exactly
//! what `Session::unseal` does, with the same payload, set-up and state changes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use agentmesh_core::{Envelope, Error, Mode};
use common::Pair;

fn owned(env: &Envelope) -> Envelope {
    Envelope::from_bytes(env.as_bytes()).unwrap()
}

fn tampered(env: &Envelope, index_from_end: usize) -> Envelope {
    let mut bytes = env.as_bytes().to_vec();
    let i = bytes.len() - index_from_end;
    bytes[i] ^= 1;
    Envelope::from_bytes(&bytes).unwrap()
}

#[test]
fn owned_and_borrowed_unseal_agree_in_both_modes_across_set_up_ratchet_steps_and_sizes() {
    for mode in [Mode::Signed, Mode::Deniable] {
        let mut twin = Pair::new("unseal owned", mode);
        let mut pair = Pair::new("unseal owned", mode);
        for (i, size) in [0usize, 1, 64, 5000, 1 << 20].into_iter().enumerate() {
            let payload = vec![b'a' + (i as u8); size];
            // Alice then Bob: every message turns the ratchet; the first starts the set-up.
            let env = pair.a_seal(&payload);
            assert_eq!(twin.a_seal(&payload).as_bytes(), env.as_bytes());
            let by_ref = twin.b.unseal(&twin.bob, &env).unwrap();
            let by_value = pair.b.unseal_owned(&pair.bob, owned(&env)).unwrap();
            assert_eq!(by_value.payload(), payload.as_slice());
            assert_eq!(by_value.payload(), by_ref.payload());
            assert_eq!(by_value.accepted_setup(), by_ref.accepted_setup());
            pair.bob.settle(&by_value);
            twin.bob.settle(&by_ref);
            let reply = pair.b_seal(&payload);
            assert_eq!(twin.b_seal(&payload).as_bytes(), reply.as_bytes());
            let opened = pair.a.unseal_owned(&pair.alice, owned(&reply)).unwrap();
            assert_eq!(opened.payload(), payload.as_slice());
            twin.a_open(&reply).unwrap();
        }
    }
}

#[test]
fn a_tampered_owned_envelope_is_refused_and_changes_nothing() {
    for mode in [Mode::Signed, Mode::Deniable] {
        let mut pair = Pair::new("unseal owned tampered", mode);
        pair.establish();
        let env = pair.a_seal(&[b'x'; 3000]);
        // The tag, the ciphertext, the signature's place (or the payload's start).
        for from_end in [1, 100, 2990] {
            let refused = pair.b.unseal_owned(&pair.bob, tampered(&env, from_end));
            assert!(matches!(refused, Err(Error::Authentication)), "{refused:?}");
        }
        assert_eq!(
            pair.b
                .unseal_owned(&pair.bob, owned(&env))
                .unwrap()
                .payload(),
            &[b'x'; 3000]
        );
        assert!(matches!(
            pair.b.unseal_owned(&pair.bob, owned(&env)),
            Err(Error::Replay)
        ));
    }
}
