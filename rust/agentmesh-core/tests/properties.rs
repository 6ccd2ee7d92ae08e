//! One test per protocol property (see docs/security.md for the mapping to claims).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use agentmesh_core::{
    Envelope, Error, IdentityKeyPair, Mode, PublicBundle, Session, MAX_MESSAGE_GAP,
};
use common::{Pair, TestRng, T0};
use sha2::Digest;

fn flip(bytes: &[u8], index: usize, bit: u8) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[index] ^= 1 << bit;
    v
}

/// Every bit of an envelope matters: any single flipped bit is rejected (by the parser, the
/// header checks, the AEAD or the signature) and leaves the session byte-for-byte unchanged;
/// the genuine envelope still opens afterwards.
fn assert_every_bit_flip_rejected(p: &mut Pair, env: &Envelope, to_bob: bool) {
    let bytes = env.as_bytes().to_vec();
    let before = if to_bob {
        p.b.export_state()
    } else {
        p.a.export_state()
    };
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let forged = flip(&bytes, i, bit);
            let result = Envelope::from_bytes(&forged).and_then(|e| {
                if to_bob {
                    p.b.unseal(&p.bob, &e).map(|_| ())
                } else {
                    p.a.unseal(&p.alice, &e).map(|_| ())
                }
            });
            assert!(
                result.is_err(),
                "flipped bit {bit} of byte {i} was accepted"
            );
        }
    }
    let after = if to_bob {
        p.b.export_state()
    } else {
        p.a.export_state()
    };
    assert_eq!(
        before, after,
        "a rejected envelope changed the session state"
    );
    let opened = if to_bob { p.b_open(env) } else { p.a_open(env) };
    assert!(
        opened.is_ok(),
        "the genuine envelope no longer opens: {opened:?}"
    );
}

#[test]
fn spec_sequence_works_when_either_side_seals_first() {
    let mut p = Pair::signed("spec-seq");
    let e = p.a_seal(b"{\"text\":\"hi\"}");
    assert_eq!(p.b_open(&e).unwrap(), b"{\"text\":\"hi\"}");

    for a_first in [true, false] {
        let mut p = Pair::signed(&format!("simultaneous-{a_first}"));
        let ea = p.a_seal(b"a1");
        let eb = p.b_seal(b"b1");
        if a_first {
            assert_eq!(p.b_open(&ea).unwrap(), b"a1");
            assert_eq!(p.a_open(&eb).unwrap(), b"b1");
        } else {
            assert_eq!(p.a_open(&eb).unwrap(), b"b1");
            assert_eq!(p.b_open(&ea).unwrap(), b"a1");
        }
        // Both converge on one set-up and keep talking in both directions.
        for i in 0..4u8 {
            let e = p.a_seal(&[i]);
            assert_eq!(p.b_open(&e).unwrap(), [i]);
            let e = p.b_seal(&[i, i]);
            assert_eq!(p.a_open(&e).unwrap(), [i, i]);
        }
        assert!(p.a.is_established() && p.b.is_established());
    }
}

#[test]
fn simultaneous_setups_with_several_messages_each_all_decrypt() {
    let mut p = Pair::signed("simultaneous-many");
    let from_a: Vec<_> = (0..3u8).map(|i| p.a_seal(&[b'a', i])).collect();
    let from_b: Vec<_> = (0..3u8).map(|i| p.b_seal(&[b'b', i])).collect();
    // Interleave deliveries; every message opens exactly once.
    for i in 0..3 {
        assert_eq!(p.b_open(&from_a[i]).unwrap(), [b'a', i as u8]);
        assert_eq!(p.a_open(&from_b[i]).unwrap(), [b'b', i as u8]);
    }
    for e in &from_a {
        assert_eq!(p.b_open(e), Err(Error::Replay));
    }
    let e = p.a_seal(b"after");
    assert_eq!(p.b_open(&e).unwrap(), b"after");
    let e = p.b_seal(b"reply");
    assert_eq!(p.a_open(&e).unwrap(), b"reply");
}

#[test]
fn any_flipped_bit_of_a_prekey_message_is_rejected_and_state_unchanged() {
    let mut p = Pair::signed("flip-prekey");
    let env = p.a_seal(b"{\"text\":\"first\"}");
    assert!(env.header().initiation.is_some());
    assert_every_bit_flip_rejected(&mut p, &env, true);
}

#[test]
fn any_flipped_bit_of_a_ratchet_message_is_rejected_and_state_unchanged() {
    for mode in [Mode::Signed, Mode::Deniable] {
        let mut p = Pair::new("flip-ratchet", mode);
        p.establish();
        let env = p.a_seal(b"{\"text\":\"established\"}");
        assert!(env.header().initiation.is_none());
        assert_every_bit_flip_rejected(&mut p, &env, true);
        let env = p.b_seal(b"{\"text\":\"new chain\"}");
        assert_every_bit_flip_rejected(&mut p, &env, false);
    }
}

#[test]
fn truncated_or_extended_envelopes_are_rejected() {
    let mut p = Pair::signed("truncate");
    let env = p.a_seal(b"payload");
    let bytes = env.as_bytes();
    for len in 0..bytes.len() {
        assert!(
            Envelope::from_bytes(&bytes[..len]).is_err(),
            "truncated to {len} parsed"
        );
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(Envelope::from_bytes(&longer).is_err());
}

#[test]
fn replay_is_a_replay_error_in_every_position() {
    let mut p = Pair::signed("replay");
    let first = p.a_seal(b"1");
    p.b_open(&first).unwrap();
    assert_eq!(
        p.b_open(&first),
        Err(Error::Replay),
        "prekey message replayed"
    );
    let second = p.a_seal(b"2");
    p.b_open(&second).unwrap();
    assert_eq!(p.b_open(&second), Err(Error::Replay), "same-chain replay");
    // After a DH ratchet step in both directions, the old chain's messages are still replays.
    let reply = p.b_seal(b"r");
    p.a_open(&reply).unwrap();
    let third = p.a_seal(b"3");
    p.b_open(&third).unwrap();
    assert_eq!(p.b_open(&second), Err(Error::Replay), "old-chain replay");
    assert_eq!(p.a_open(&reply), Err(Error::Replay));
    // A skipped key is used once.
    let skipped = p.a_seal(b"4");
    let later = p.a_seal(b"5");
    p.b_open(&later).unwrap();
    p.b_open(&skipped).unwrap();
    assert_eq!(p.b_open(&skipped), Err(Error::Replay), "skipped-key replay");
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn every_permutation_of_a_reordered_window_decrypts_exactly_once() {
    let perms = permutations(5);
    assert_eq!(perms.len(), 120);
    for (k, order) in perms.iter().enumerate() {
        let mut p = Pair::signed(&format!("perm-{k}"));
        p.establish();
        // The window spans a DH ratchet step: two messages on the old chain, three on a new one.
        let mut window = vec![p.a_seal(b"w0"), p.a_seal(b"w1")];
        let pong = p.b_seal(b"pong");
        p.a_open(&pong).unwrap();
        window.extend([p.a_seal(b"w2"), p.a_seal(b"w3"), p.a_seal(b"w4")]);
        for &i in order {
            let got = p.b_open(&window[i]).unwrap();
            assert_eq!(got, format!("w{i}").into_bytes(), "order {order:?}");
        }
        for env in &window {
            assert_eq!(p.b_open(env), Err(Error::Replay), "order {order:?}");
        }
    }
}

#[test]
fn counter_jump_past_the_skip_cap_is_refused_before_deriving_and_state_is_unchanged() {
    let mut p = Pair::signed("skip-cap");
    p.establish();
    let mut sent = Vec::new();
    for i in 0..=(MAX_MESSAGE_GAP + 1) {
        sent.push(p.a_seal(format!("{i}").as_bytes()));
    }
    let before = p.b.export_state();
    let too_far = sent.last().unwrap();
    assert!(matches!(p.b_open(too_far), Err(Error::MessageGap { .. })));
    assert_eq!(before, p.b.export_state());
    // Exactly at the cap is still accepted, and the skipped ones stay deliverable.
    assert!(p.b_open(&sent[MAX_MESSAGE_GAP as usize]).is_ok());
    assert_eq!(p.b_open(&sent[0]).unwrap(), b"0");
}

#[test]
fn forward_secrecy_todays_state_and_long_term_keys_cannot_open_earlier_messages() {
    let mut p = Pair::signed("forward-secrecy");
    p.establish();
    let recorded: Vec<_> = (0..3)
        .map(|i| p.a_seal(format!("secret {i}").as_bytes()))
        .collect();
    for e in &recorded {
        p.b_open(e).unwrap();
    }
    // A round trip moves both sides to new DH ratchet keys.
    let e = p.b_seal(b"x");
    p.a_open(&e).unwrap();
    let e = p.a_seal(b"y");
    p.b_open(&e).unwrap();
    // The attacker steals bob's complete state and long-term identity now.
    let stolen_state = p.b.export_state();
    let stolen_identity = IdentityKeyPair::from_secret_bytes(
        &p.bob.to_secret_bytes(None, &mut TestRng::new("x")).unwrap(),
        None,
    )
    .unwrap();
    let mut stolen = Session::import_state(&stolen_identity, &stolen_state).unwrap();
    for e in &recorded {
        assert!(stolen.unseal(&stolen_identity, e).is_err());
    }
    // Nor can a fresh session built from the stolen long-term keys.
    let mut fresh = Session::new(&stolen_identity, p.alice.public_bundle(), Mode::Signed).unwrap();
    for e in &recorded {
        assert!(fresh.unseal(&stolen_identity, e).is_err());
    }
}

#[test]
fn post_compromise_security_a_copied_state_stops_working_after_one_round_trip() {
    let mut p = Pair::signed("pcs");
    p.establish();
    let mut copy = Session::import_state(&p.alice, &p.a.export_state()).unwrap();
    // Right after the theft, the copy reads what bob sends on the current chain.
    let e = p.b_seal(b"before healing");
    assert!(copy.unseal(&p.alice, &e).is_ok());
    p.a_open(&e).unwrap();
    // One round trip: alice answers with a fresh ratchet key, bob answers with another.
    let e = p.a_seal(b"alice heals");
    p.b_open(&e).unwrap();
    let e = p.b_seal(b"after healing");
    assert!(
        copy.unseal(&p.alice, &e).is_err(),
        "copied state still decrypts"
    );
    assert_eq!(p.a_open(&e).unwrap(), b"after healing");
}

#[test]
fn misbinding_a_message_for_bob_delivered_to_carol_fails() {
    let mut rng = TestRng::new("misbinding");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let carol = IdentityKeyPair::generate("carol", &mut rng).unwrap();
    let mut a_to_b = Session::new(&alice, bob.public_bundle(), Mode::Signed).unwrap();
    let mut c_from_a = Session::new(&carol, alice.public_bundle(), Mode::Signed).unwrap();
    let env = a_to_b.seal(&alice, b"for bob", T0, &mut rng).unwrap();
    assert!(matches!(
        c_from_a.unseal(&carol, &env),
        Err(Error::Identity(_))
    ));
    // Relabelled for carol (header rewritten): the AEAD and the set-up keys do not match.
    let relabelled = rewrite_ids(&env, "alice", "carol");
    assert!(c_from_a.unseal(&carol, &relabelled).is_err());
}

#[test]
fn misbinding_a_message_relabelled_with_another_sender_fails() {
    let mut rng = TestRng::new("relabel");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let mallory = IdentityKeyPair::generate("mallory", &mut rng).unwrap();
    let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let mut m_to_b = Session::new(&mallory, bob.public_bundle(), Mode::Signed).unwrap();
    let mut b_from_a = Session::new(&bob, alice.public_bundle(), Mode::Signed).unwrap();
    let env = m_to_b.seal(&mallory, b"I am alice", T0, &mut rng).unwrap();
    assert!(matches!(
        b_from_a.unseal(&bob, &env),
        Err(Error::Identity(_))
    ));
    let relabelled = rewrite_ids(&env, "alice", "bob");
    let before = b_from_a.export_state();
    assert!(b_from_a.unseal(&bob, &relabelled).is_err());
    assert_eq!(before, b_from_a.export_state());
}

/// Re-encodes an envelope's header with other ids (what a hostile hub could do).
fn rewrite_ids(env: &Envelope, sender: &str, recipient: &str) -> Envelope {
    let bytes = env.as_bytes();
    let h = env.header();
    let old_prefix = 5 + 1 + h.sender.len() + 1 + h.recipient.len();
    let mut out = bytes[..5].to_vec();
    out.push(sender.len() as u8);
    out.extend_from_slice(sender.as_bytes());
    out.push(recipient.len() as u8);
    out.extend_from_slice(recipient.as_bytes());
    out.extend_from_slice(&bytes[old_prefix..]);
    Envelope::from_bytes(&out).unwrap()
}

#[test]
fn reflection_your_own_message_fed_back_fails() {
    let mut p = Pair::signed("reflection");
    p.establish();
    let env = p.a_seal(b"to bob");
    let before = p.a.export_state();
    assert!(matches!(p.a_open(&env), Err(Error::Identity(_))));
    let reflected = rewrite_ids(&env, "bob", "alice");
    assert!(p.a_open(&reflected).is_err());
    assert_eq!(before, p.a.export_state());
    assert_eq!(p.b_open(&env).unwrap(), b"to bob");
}

#[test]
fn downgrade_to_deniable_and_upgrade_confusion_are_refused() {
    let mut rng = TestRng::new("downgrade");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let mut deniable = Session::new(&alice, bob.public_bundle(), Mode::Deniable).unwrap();
    let mut signed_bob = Session::new(&bob, alice.public_bundle(), Mode::Signed).unwrap();
    let env = deniable.seal(&alice, b"unsigned", T0, &mut rng).unwrap();
    assert!(matches!(
        signed_bob.unseal(&bob, &env),
        Err(Error::Signature(_))
    ));
    // The flag bit flipped on the wire: the header is authenticated and the mode is in the KDF.
    let mut forged = env.as_bytes().to_vec();
    forged[4] ^= 1;
    let forged = Envelope::from_bytes(&forged).unwrap();
    assert!(signed_bob.unseal(&bob, &forged).is_err());
    let mut signed = Session::new(&alice, bob.public_bundle(), Mode::Signed).unwrap();
    let mut deniable_bob = Session::new(&bob, alice.public_bundle(), Mode::Deniable).unwrap();
    let env = signed.seal(&alice, b"signed", T0, &mut rng).unwrap();
    assert!(deniable_bob.unseal(&bob, &env).is_err());
}

#[test]
fn message_type_confusion_is_refused() {
    let mut p = Pair::signed("type-confusion");
    p.establish();
    // A ratchet message re-labelled as a prekey message (with made-up set-up fields).
    let env = p.a_seal(b"plain ratchet message");
    let bytes = env.as_bytes();
    let h = env.header();
    let header_end = 5 + 2 + h.sender.len() + h.recipient.len() + 16 + 8 + 32 + 8;
    let mut as_prekey = bytes[..header_end].to_vec();
    as_prekey[3] = 1;
    as_prekey.extend_from_slice(&[7u8; 40]);
    as_prekey.extend_from_slice(&bytes[header_end..]);
    let as_prekey = Envelope::from_bytes(&as_prekey).unwrap();
    assert!(p.b_open(&as_prekey).is_err());
    // Bob's ratchet message labelled as a prekey message is refused by alice, the initiator.
    let reply = p.b_seal(b"reply");
    let mut bytes = reply.as_bytes().to_vec();
    let h = reply.header();
    let header_end = 5 + 2 + h.sender.len() + h.recipient.len() + 16 + 8 + 32 + 8;
    bytes[3] = 1;
    bytes.splice(header_end..header_end, [0u8; 40]);
    let confused = Envelope::from_bytes(&bytes).unwrap();
    assert!(p.a_open(&confused).is_err());
    assert_eq!(p.b_open(&env).unwrap(), b"plain ratchet message");
    assert_eq!(p.a_open(&reply).unwrap(), b"reply");
}

#[test]
fn the_wrong_senders_bundle_fails() {
    let mut rng = TestRng::new("wrong-bundle");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let impostor = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let mut a = Session::new(&alice, bob.public_bundle(), Mode::Signed).unwrap();
    // Bob was handed the impostor's bundle under alice's name.
    let mut b = Session::new(&bob, impostor.public_bundle(), Mode::Signed).unwrap();
    let env = a.seal(&alice, b"hello", T0, &mut rng).unwrap();
    assert!(b.unseal(&bob, &env).is_err());
    // And the impostor cannot talk to bob's session with the real alice.
    let mut b_real = Session::new(&bob, alice.public_bundle(), Mode::Signed).unwrap();
    let mut i = Session::new(&impostor, bob.public_bundle(), Mode::Signed).unwrap();
    let env = i.seal(&impostor, b"it's me", T0, &mut rng).unwrap();
    assert!(b_real.unseal(&bob, &env).is_err());
}

#[test]
fn sealing_with_another_identity_is_refused() {
    let mut p = Pair::signed("other-identity");
    let mut rng = TestRng::new("o");
    let r = p.a.seal(&p.bob, b"x", T0, &mut rng);
    assert!(matches!(r, Err(Error::Identity(_))));
    let self_bundle = p.alice.public_bundle();
    assert!(Session::new(&p.alice, self_bundle, Mode::Signed).is_err());
}

#[test]
fn a_tampered_bundle_is_rejected() {
    let mut rng = TestRng::new("bundle");
    let kp = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let bytes = kp.public_bundle().to_bytes();
    assert_eq!(
        PublicBundle::from_bytes(&bytes).unwrap(),
        kp.public_bundle()
    );
    // Every byte of the signed part matters (the trailing one-time-prekey flag is not signed
    // and only says "none" here, so flipping it makes the bundle malformed).
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let forged = flip(&bytes, i, bit);
            assert!(
                PublicBundle::from_bytes(&forged).is_err(),
                "byte {i} bit {bit}"
            );
        }
    }
}

#[test]
fn one_time_prekeys_are_used_once() {
    let mut rng = TestRng::new("opk");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let mut bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let opks = bob.generate_one_time_prekeys(2, &mut rng).unwrap();
    let bundle = bob.public_bundle().with_one_time_prekey(Some(opks[0]));
    let mut a = Session::new(&alice, bundle, Mode::Signed).unwrap();
    let mut b = Session::new(&bob, alice.public_bundle(), Mode::Signed).unwrap();
    let env = a.seal(&alice, b"with opk", T0, &mut rng).unwrap();
    assert_eq!(
        env.header().initiation.unwrap().one_time_prekey_id,
        opks[0].0
    );
    let opened = b.unseal(&bob, &env).unwrap();
    assert_eq!(opened.consumed_one_time_prekey(), Some(opks[0].0));
    assert_eq!(bob.one_time_prekey_ids(), vec![opks[0].0, opks[1].0]);
    bob.consume_one_time_prekey(opks[0].0);
    assert_eq!(bob.one_time_prekey_ids(), vec![opks[1].0]);
    // A fresh session (state lost) cannot be fooled into accepting the set-up again.
    let mut b2 = Session::new(&bob, alice.public_bundle(), Mode::Signed).unwrap();
    assert!(matches!(b2.unseal(&bob, &env), Err(Error::Identity(_))));
}

#[test]
fn a_peer_that_lost_its_state_can_start_over() {
    let mut p = Pair::signed("restart");
    p.establish();
    // Alice loses everything but her identity and starts a new set-up.
    p.a = Session::new(&p.alice, p.bob.public_bundle(), Mode::Signed).unwrap();
    let e = p.a_seal(b"I'm back");
    assert_eq!(p.b_open(&e).unwrap(), b"I'm back");
    let e = p.b_seal(b"welcome back");
    assert_eq!(p.a_open(&e).unwrap(), b"welcome back");
}

#[test]
fn rotated_signed_prekey_still_accepts_setups_in_flight() {
    let mut rng = TestRng::new("rotate");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let mut bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let mut a = Session::new(&alice, bob.public_bundle(), Mode::Signed).unwrap();
    let env = a.seal(&alice, b"old prekey", T0, &mut rng).unwrap();
    bob.rotate_signed_prekey(&mut rng);
    let mut b = Session::new(&bob, alice.public_bundle(), Mode::Signed).unwrap();
    assert_eq!(b.unseal(&bob, &env).unwrap().payload(), b"old prekey");
}

#[test]
fn session_export_round_trips_and_rejects_corruption() {
    let mut p = Pair::signed("export");
    p.establish();
    let skipped = p.a_seal(b"skipped");
    let e = p.a_seal(b"later");
    p.b_open(&e).unwrap();
    let state = p.b.export_state();
    let mut restored = Session::import_state(&p.bob, &state).unwrap();
    assert_eq!(restored.export_state(), state);
    assert_eq!(
        restored.unseal(&p.bob, &skipped).unwrap().payload(),
        b"skipped"
    );
    for i in (0..state.len()).step_by(7) {
        let bad = flip(&state, i, (i % 8) as u8);
        assert!(Session::import_state(&p.bob, &bad).is_err(), "flip at {i}");
    }
    for len in [0, 3, 20, state.len() / 2, state.len() - 1] {
        assert!(Session::import_state(&p.bob, &state[..len]).is_err());
    }
    assert!(matches!(
        Session::import_state(&p.alice, &state),
        Err(Error::Identity(_))
    ));
}

#[test]
fn key_files_round_trip_and_reject_truncation_flips_and_wrong_passphrases() {
    let mut rng = TestRng::new("keyfile");
    let kp = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let plain = kp.to_secret_bytes(None, &mut rng).unwrap();
    let loaded = IdentityKeyPair::from_secret_bytes(&plain, None).unwrap();
    assert_eq!(loaded.public_bundle(), kp.public_bundle());
    for i in 0..plain.len() {
        assert!(IdentityKeyPair::from_secret_bytes(&flip(&plain, i, 3), None).is_err());
    }
    for len in 0..plain.len() {
        assert!(IdentityKeyPair::from_secret_bytes(&plain[..len], None).is_err());
    }
    let locked = kp
        .to_secret_bytes(Some(b"correct horse"), &mut rng)
        .unwrap();
    let loaded = IdentityKeyPair::from_secret_bytes(&locked, Some(b"correct horse")).unwrap();
    assert_eq!(loaded.fingerprint(), kp.fingerprint());
    assert!(matches!(
        IdentityKeyPair::from_secret_bytes(&locked, Some(b"wrong")),
        Err(Error::KeyFile(_))
    ));
    assert!(matches!(
        IdentityKeyPair::from_secret_bytes(&locked, None),
        Err(Error::KeyFile(_))
    ));
    assert!(IdentityKeyPair::from_secret_bytes(
        &flip(&locked, locked.len() - 5, 0),
        Some(b"correct horse")
    )
    .is_err());
    assert!(IdentityKeyPair::from_secret_bytes(
        &locked[..locked.len() - 1],
        Some(b"correct horse")
    )
    .is_err());
}

#[test]
fn debug_output_never_contains_secrets() {
    let mut p = Pair::signed("debug");
    p.establish();
    let secret = p
        .alice
        .to_secret_bytes(None, &mut TestRng::new("d"))
        .unwrap();
    // Body: magic(4) flag(1) id-len(1) id(5) ed25519 secret(32) x25519 secret(32).
    let ed_secret = &secret[11..43];
    let x_secret = &secret[43..75];
    let rendered = format!(
        "{:?} {:?} {:?} {:#?}",
        p.alice,
        p.a,
        p.alice.public_bundle(),
        p.b
    );
    for s in [ed_secret, x_secret] {
        assert!(!rendered.contains(&hex::encode(s)));
        assert!(!rendered.contains(&format!("{:?}", s)));
        assert!(
            !rendered.contains(&format!("{}", s[0]))
                || !rendered.contains(&format!("{:?}", &s[..4]))
        );
    }
    assert!(rendered.contains("alice"));
}

#[test]
fn seal_many_and_unseal_many_match_single_calls_and_isolate_bad_items() {
    let mut p = Pair::signed("batch");
    p.establish();
    let payloads: Vec<Vec<u8>> = (0..64)
        .map(|i| format!("{{\"i\":{i}}}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let envs = p.a.seal_many(&p.alice, &refs, T0 + 99, &mut p.rng).unwrap();
    let opened = p.b.unseal_many(&p.bob, &envs);
    for (o, want) in opened.iter().zip(&payloads) {
        assert_eq!(o.as_ref().unwrap().payload(), want.as_slice());
    }
    // A batch with one forged and one replayed envelope: only those two fail.
    let mut envs =
        p.a.seal_many(&p.alice, &refs[..10], T0 + 100, &mut p.rng)
            .unwrap();
    let forged = flip(envs[3].as_bytes(), envs[3].as_bytes().len() - 1, 0);
    envs[3] = Envelope::from_bytes(&forged).unwrap();
    envs.push(envs[5].clone());
    let results = p.b.unseal_many(&p.bob, &envs);
    for (i, r) in results.iter().enumerate() {
        match i {
            3 => assert_eq!(r.as_ref().err(), Some(&Error::Authentication)),
            10 => assert_eq!(r.as_ref().err(), Some(&Error::Replay)),
            _ => assert_eq!(r.as_ref().unwrap().payload(), payloads[i].as_slice()),
        }
    }
    // Deniable batches too.
    let mut d = Pair::new("batch-deniable", Mode::Deniable);
    let envs = d.a.seal_many(&d.alice, &refs, T0, &mut d.rng).unwrap();
    let results = d.b.unseal_many(&d.bob, &envs);
    assert!(results.iter().all(Result::is_ok));
}

#[test]
fn agent_ids_are_validated() {
    let mut rng = TestRng::new("ids");
    assert!(IdentityKeyPair::generate("", &mut rng).is_err());
    assert!(IdentityKeyPair::generate(&"x".repeat(256), &mut rng).is_err());
    assert!(IdentityKeyPair::generate("bad\nid", &mut rng).is_err());
    assert!(IdentityKeyPair::generate(&"é".repeat(127), &mut rng).is_ok());
}

#[test]
fn agent_id_problems_name_the_first_problem() {
    use agentmesh_core::{agent_id_problem, check_agent_id, AgentIdProblem};
    assert_eq!(agent_id_problem(""), Some(AgentIdProblem::Empty));
    assert_eq!(
        agent_id_problem(&"é".repeat(128)),
        Some(AgentIdProblem::TooLong { bytes: 256 })
    );
    // The index counts characters, not bytes; U+0085 (NEL) and DEL are control characters.
    assert_eq!(
        agent_id_problem("éa\u{85}b\n"),
        Some(AgentIdProblem::ControlCharacter {
            index: 2,
            character: '\u{85}'
        })
    );
    assert_eq!(
        agent_id_problem("del\u{7f}"),
        Some(AgentIdProblem::ControlCharacter {
            index: 3,
            character: '\u{7f}'
        })
    );
    for good in ["a", "agent with spaces", "ü-42.x/y", "\u{200b}zero-width"] {
        assert_eq!(agent_id_problem(good), None, "{good:?}");
        assert!(check_agent_id(good).is_ok());
    }
    assert_eq!(agent_id_problem(&"x".repeat(255)), None);
    assert!(matches!(
        check_agent_id("a\tb"),
        Err(Error::InvalidInput("agent id contains a control character"))
    ));
}

#[test]
fn invalid_ids_inside_an_envelope_are_format_errors() {
    let mut p = Pair::signed("bad-id");
    let env = p.a_seal(b"x");
    let mut bytes = env.as_bytes().to_vec();
    bytes[6] = b'\n'; // first byte of the sender id
    assert!(matches!(
        Envelope::from_bytes(&bytes),
        Err(Error::Format(_))
    ));
    bytes[5] = 0; // empty sender id
    assert!(matches!(
        Envelope::from_bytes(&bytes),
        Err(Error::Format(_))
    ));
}

#[test]
fn identity_files_are_canonical_one_time_prekeys_in_order() {
    let mut rng = TestRng::new("opk-order");
    let mut kp = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    kp.generate_one_time_prekeys(3, &mut rng).unwrap();
    let file = kp.to_secret_bytes(None, &mut rng).unwrap();
    let reloaded = IdentityKeyPair::from_secret_bytes(&file, None).unwrap();
    assert_eq!(reloaded.to_secret_bytes(None, &mut rng).unwrap(), file);
    // Swap the ids of the first two one-time prekeys and fix the checksum: refused.
    // Body: magic(4) flag(1) id(1+3) ed(32) x(32) spk(4+32+64) has_prev(1) count(4), then items.
    let first = 4 + 1 + 4 + 32 + 32 + 100 + 1 + 4;
    let mut swapped = file[..file.len() - 16].to_vec();
    let (a, b) = (first, first + 36);
    let id_a: Vec<u8> = swapped[a..a + 4].to_vec();
    let id_b: Vec<u8> = swapped[b..b + 4].to_vec();
    swapped[a..a + 4].copy_from_slice(&id_b);
    swapped[b..b + 4].copy_from_slice(&id_a);
    let sum = sha2::Sha256::digest(&swapped);
    swapped.extend_from_slice(&sum[..16]);
    assert_eq!(
        IdentityKeyPair::from_secret_bytes(&swapped, None).unwrap_err(),
        Error::KeyFile("identity file lists one-time prekeys out of order")
    );
}

/// A registration proof holds for exactly one hub, challenge, client nonce, bundle and TLS
/// channel: a hub that relays another hub's challenge, or presents another bundle (even one of
/// the same identity), gets nothing the other hub accepts.
#[test]
fn registration_proof_is_bound_to_hub_challenge_nonce_bundle_and_channel() {
    use agentmesh_core::Registration;
    let mut rng = TestRng::new("registration");
    let mut alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let bundle = alice.public_bundle();
    let reg = Registration {
        hub_id: [1; 16],
        challenge: [2; 32],
        client_nonce: [3; 32],
        tls_certificate_sha256: Some([4; 32]),
    };
    let sig = alice.sign_registration(&bundle, &reg).unwrap();
    bundle.verify_registration(&reg, &sig).unwrap();
    // a hub attaching a one-time prekey does not change what was registered
    let with_opk = bundle.clone().with_one_time_prekey(Some((9, [5; 32])));
    with_opk.verify_registration(&reg, &sig).unwrap();

    let variants = [
        Registration {
            hub_id: [9; 16],
            ..reg.clone()
        },
        Registration {
            challenge: [9; 32],
            ..reg.clone()
        },
        Registration {
            client_nonce: [9; 32],
            ..reg.clone()
        },
        Registration {
            tls_certificate_sha256: Some([9; 32]),
            ..reg.clone()
        },
        Registration {
            tls_certificate_sha256: None,
            ..reg.clone()
        },
    ];
    for other in &variants {
        assert!(
            matches!(
                bundle.verify_registration(other, &sig),
                Err(Error::Signature(_))
            ),
            "{other:?} accepted"
        );
    }
    alice.rotate_signed_prekey(&mut rng);
    let rotated = alice.public_bundle();
    assert!(
        rotated.verify_registration(&reg, &sig).is_err(),
        "another bundle accepted"
    );
    let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    assert!(bob.public_bundle().verify_registration(&reg, &sig).is_err());
    // nobody signs a proof for a bundle of another identity
    assert!(matches!(
        alice.sign_registration(&bob.public_bundle(), &reg),
        Err(Error::InvalidInput(_))
    ));
    // a signature made for another purpose never verifies as a registration
    assert!(bundle
        .verify_registration(&reg, &bundle.signed_prekey_signature())
        .is_err());
}

/// The registration signing input, byte for byte as docs/protocol.md gives it.
#[test]
fn registration_signature_input_layout() {
    use agentmesh_core::Registration;
    use ed25519_dalek::{Signature as EdSignature, Verifier, VerifyingKey};
    let mut rng = TestRng::new("registration-layout");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let bundle = alice.public_bundle();
    for cert in [None, Some([4u8; 32])] {
        let reg = Registration {
            hub_id: [1; 16],
            challenge: [2; 32],
            client_nonce: [3; 32],
            tls_certificate_sha256: cert,
        };
        let sig = alice.sign_registration(&bundle, &reg).unwrap();
        let mut expected = b"agentmesh/v1/sig/hub-registration\0".to_vec();
        expected.push(5);
        expected.extend_from_slice(b"alice");
        expected.extend_from_slice(&[1; 16]);
        expected.extend_from_slice(&[2; 32]);
        expected.extend_from_slice(&[3; 32]);
        expected.extend_from_slice(&sha2::Sha256::digest(bundle.to_bytes()));
        match cert {
            None => expected.push(0),
            Some(c) => {
                expected.push(1);
                expected.extend_from_slice(&c);
            }
        }
        let key = VerifyingKey::from_bytes(&bundle.identity_key()).unwrap();
        key.verify(&expected, &EdSignature::from_bytes(&sig))
            .unwrap();
    }
}
