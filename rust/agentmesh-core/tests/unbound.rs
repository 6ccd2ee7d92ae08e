//! Identities without an agent id (`AgentKeyPair()` of the original AgentMesh) and the sessions
//! whose ids the first seal or accepted unseal fixes (docs/protocol.md sections 2 and 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use agentmesh_core::internals::labels;
use agentmesh_core::{Envelope, Error, IdentityKeyPair, Mode, PublicBundle, Session};
use common::{TestRng, T0};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

struct Unbound {
    rng: TestRng,
    alice: IdentityKeyPair,
    bob: IdentityKeyPair,
    a: Session,
    b: Session,
}

fn unbound(label: &str, mode: Mode) -> Unbound {
    let mut rng = TestRng::new(label);
    let alice = IdentityKeyPair::generate_unbound(&mut rng);
    let bob = IdentityKeyPair::generate_unbound(&mut rng);
    let a = Session::new(&alice, bob.public_bundle(), mode).unwrap();
    let b = Session::new(&bob, alice.public_bundle(), mode).unwrap();
    Unbound {
        rng,
        alice,
        bob,
        a,
        b,
    }
}

impl Unbound {
    fn a_to_b(&mut self, body: &[u8]) -> Envelope {
        self.a
            .seal_as(&self.alice, "alice", "bob", body, T0, &mut self.rng)
            .unwrap()
    }
    fn b_to_a(&mut self, body: &[u8]) -> Envelope {
        self.b
            .seal_as(&self.bob, "bob", "alice", body, T0, &mut self.rng)
            .unwrap()
    }
}

#[test]
fn unbound_identities_run_the_spec_sequence_when_either_side_seals_first() {
    for mode in [Mode::Signed, Mode::Deniable] {
        for alice_first in [true, false] {
            let mut p = unbound("unbound-order", mode);
            let (ea, eb) = if alice_first {
                let ea = p.a_to_b(b"{\"from\":\"alice\"}");
                (ea, p.b_to_a(b"{\"from\":\"bob\"}"))
            } else {
                let eb = p.b_to_a(b"{\"from\":\"bob\"}");
                (p.a_to_b(b"{\"from\":\"alice\"}"), eb)
            };
            assert_eq!(
                p.b.unseal(&p.bob, &ea).unwrap().payload(),
                b"{\"from\":\"alice\"}"
            );
            assert_eq!(
                p.a.unseal(&p.alice, &eb).unwrap().payload(),
                b"{\"from\":\"bob\"}"
            );
            for i in 0..3u8 {
                let e = p.a_to_b(&[b'0' + i]);
                assert_eq!(p.b.unseal(&p.bob, &e).unwrap().payload(), [b'0' + i]);
                let e = p.b_to_a(&[b'a' + i]);
                assert_eq!(p.a.unseal(&p.alice, &e).unwrap().payload(), [b'a' + i]);
            }
            assert!(p.a.is_established() && p.b.is_established());
            assert_eq!((p.a.local_id(), p.a.peer().agent_id()), ("alice", "bob"));
            assert_eq!((p.b.local_id(), p.b.peer().agent_id()), ("bob", "alice"));
        }
    }
}

#[test]
fn an_unbound_session_derives_nothing_before_its_ids_are_fixed() {
    let mut p = unbound("unbound-open", Mode::Signed);
    assert!(p.a.has_open_ids());
    let err = p.a.seal(&p.alice, b"{}", T0, &mut p.rng).unwrap_err();
    assert!(matches!(err, Error::Identity(m) if m.contains("not fixed yet")));
    assert!(p.a.seal_many(&p.alice, &[b"{}"], T0, &mut p.rng).is_err());
    assert_eq!(
        p.a.export_state(),
        Session::new(&p.alice, p.bob.public_bundle(), Mode::Signed)
            .unwrap()
            .export_state()
    );
}

#[test]
fn ids_fixed_by_the_first_seal_or_unseal_never_change() {
    let mut p = unbound("unbound-fixed", Mode::Signed);
    let first = p.a_to_b(b"{}");
    p.b.unseal(&p.bob, &first).unwrap();
    let identity = |r: Result<Envelope, Error>| matches!(r, Err(Error::Identity(_)));
    let rng = &mut p.rng;
    assert!(identity(
        p.a.seal_as(&p.alice, "mallory", "bob", b"{}", T0, rng)
    ));
    assert!(identity(
        p.a.seal_as(&p.alice, "alice", "carol", b"{}", T0, rng)
    ));
    assert!(identity(
        p.b.seal_as(&p.bob, "robert", "alice", b"{}", T0, rng)
    ));
    assert!(identity(
        p.b.seal_as(&p.bob, "bob", "alicia", b"{}", T0, rng)
    ));
    assert!(identity(
        p.a.seal_as(&p.bob, "alice", "bob", b"{}", T0, rng)
    ));
    // A message that another session of the same key labels with other ids is refused by
    // the bound session before any key is derived.
    let mut other = Session::new(&p.alice, p.bob.public_bundle(), Mode::Signed).unwrap();
    let relabelled = other
        .seal_as(&p.alice, "alicia", "bob", b"{}", T0, &mut p.rng)
        .unwrap();
    let before = p.b.export_state();
    assert!(matches!(
        p.b.unseal(&p.bob, &relabelled),
        Err(Error::Identity(_))
    ));
    assert_eq!(p.b.export_state(), before);
}

#[test]
fn a_failed_first_seal_leaves_the_ids_open() {
    let mut p = unbound("unbound-failed-seal", Mode::Signed);
    let fresh = p.a.export_state();
    let rng = &mut p.rng;
    assert!(p.a.seal_as(&p.bob, "alice", "bob", b"{}", T0, rng).is_err());
    assert!(p
        .a
        .seal_as(&p.alice, "alice", "alice", b"{}", T0, rng)
        .is_err());
    assert!(matches!(
        p.a.seal_as(&p.alice, "", "bob", b"{}", T0, rng),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(p.a.export_state(), fresh);
    // A failure after the ids were filled in (here a peer whose signed prekey is a low-order
    // point, so the set-up's key agreement is refused) opens them again.
    let signer = SigningKey::from_bytes(&[9u8; 32]);
    let ik = signer.verifying_key().to_bytes();
    let (ek, spk) = (p.bob.exchange_public(), [0u8; 32]);
    let mut msg = labels::SIG_PREKEY.to_vec();
    msg.push(0);
    msg.extend_from_slice(&ik);
    msg.extend_from_slice(&ek);
    msg.extend_from_slice(&1u32.to_be_bytes());
    msg.extend_from_slice(&spk);
    let sig = signer.sign(&msg).to_bytes();
    let weak = PublicBundle::new("", &ik, &ek, 1, &spk, &sig, None).unwrap();
    let mut s = Session::new(&p.alice, weak, Mode::Signed).unwrap();
    let fresh = s.export_state();
    assert_eq!(
        s.seal_as(&p.alice, "alice", "bob", b"{}", T0, &mut p.rng)
            .unwrap_err(),
        Error::NonContributory
    );
    assert!(s.has_open_ids());
    assert_eq!(s.export_state(), fresh);
}

/// Every flipped bit of the first (prekey) message, and relabelled ids, are rejected by an
/// unbound receiver, whose state (its open ids included) stays byte for byte as it was.
#[test]
fn a_tampered_first_envelope_leaves_an_unbound_session_unchanged() {
    let mut p = unbound("unbound-tamper", Mode::Signed);
    let env = p.a_to_b(b"{\"text\":\"hi\"}");
    let bytes = env.as_bytes().to_vec();
    let before = p.b.export_state();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut forged = bytes.clone();
            forged[i] ^= 1 << bit;
            if let Ok(e) = Envelope::from_bytes(&forged) {
                assert!(p.b.unseal(&p.bob, &e).is_err(), "byte {i} bit {bit}");
            }
            assert_eq!(p.b.export_state(), before, "byte {i} bit {bit}");
        }
    }
    for (old, new) in [
        (&b"\x05alice"[..], &b"\x05alicf"[..]),
        (b"\x03bob", b"\x03bib"),
    ] {
        let at = bytes.windows(old.len()).position(|w| w == old).unwrap();
        let mut forged = bytes.clone();
        forged[at..at + new.len()].copy_from_slice(new);
        let e = Envelope::from_bytes(&forged).unwrap();
        assert_eq!(p.b.unseal(&p.bob, &e).unwrap_err(), Error::Authentication);
        assert_eq!(p.b.export_state(), before);
    }
    assert!(p.b.has_open_ids());
    assert_eq!(
        p.b.unseal(&p.bob, &env).unwrap().payload(),
        b"{\"text\":\"hi\"}"
    );
    assert!(!p.b.has_open_ids());
}

/// The signed-prekey signature of an unbound identity covers exactly
/// `label || 0x00 || IK || EK || u32 spk_id || SPK`: the empty id is its length byte alone.
#[test]
fn an_unbound_bundle_is_signed_over_the_empty_id() {
    let kp = IdentityKeyPair::generate_unbound(&mut TestRng::new("unbound-bundle"));
    let b = kp.public_bundle();
    assert!(b.is_unbound() && b.published_id().is_none() && b.agent_id().is_empty());
    assert!(matches!(b.require_agent_id(), Err(Error::Identity(_))));
    let mut msg = labels::SIG_PREKEY.to_vec();
    msg.push(0);
    msg.extend_from_slice(&b.identity_key());
    msg.extend_from_slice(&b.exchange_key());
    msg.extend_from_slice(&b.signed_prekey_id().to_be_bytes());
    msg.extend_from_slice(&b.signed_prekey());
    VerifyingKey::from_bytes(&b.identity_key())
        .unwrap()
        .verify_strict(&msg, &Signature::from_bytes(&b.signed_prekey_signature()))
        .unwrap();
    // The published binary form: an empty id, then an empty session-fixed id.
    let bytes = b.to_bytes();
    assert_eq!(&bytes[..6], b"AMB\x01\x00\x00");
    assert_eq!(PublicBundle::from_bytes(&bytes).unwrap(), b);
    let mut named = bytes[..5].to_vec();
    named.extend_from_slice(b"\x05alice");
    named.extend_from_slice(&bytes[6..]);
    assert!(PublicBundle::from_bytes(&named).is_err());
    // Claiming an id it was not signed for, or dropping the id of a bound bundle, fails.
    let args = (
        b.identity_key(),
        b.exchange_key(),
        b.signed_prekey_id(),
        b.signed_prekey(),
        b.signed_prekey_signature(),
    );
    assert!(matches!(
        PublicBundle::new("alice", &args.0, &args.1, args.2, &args.3, &args.4, None),
        Err(Error::Signature(_))
    ));
    let bound = IdentityKeyPair::generate("alice", &mut TestRng::new("bound"))
        .unwrap()
        .public_bundle();
    assert!(matches!(
        PublicBundle::new(
            "",
            &bound.identity_key(),
            &bound.exchange_key(),
            bound.signed_prekey_id(),
            &bound.signed_prekey(),
            &bound.signed_prekey_signature(),
            None
        ),
        Err(Error::Signature(_))
    ));
}

#[test]
fn unbound_identities_and_their_sessions_survive_files_and_exports() {
    let mut p = unbound("unbound-files", Mode::Signed);
    let mut rng = TestRng::new("files");
    for pass in [None, Some(&b"pw"[..])] {
        let data = p.alice.to_secret_bytes(pass, &mut rng).unwrap();
        let back = IdentityKeyPair::from_secret_bytes(&data, pass).unwrap();
        assert!(back.is_unbound());
        assert_eq!(back.public_bundle(), p.alice.public_bundle());
    }
    let fresh = Session::import_state(&p.alice, &p.a.export_state()).unwrap();
    assert!(fresh.has_open_ids());
    let first = p.a_to_b(b"{\"n\":1}");
    p.b.unseal(&p.bob, &first).unwrap();
    let queued = p.a_to_b(b"{\"n\":2}");
    let mut restored = Session::import_state(&p.bob, &p.b.export_state()).unwrap();
    assert_eq!(
        (restored.local_id(), restored.peer().agent_id()),
        ("bob", "alice")
    );
    assert_eq!(
        restored.unseal(&p.bob, &queued).unwrap().payload(),
        b"{\"n\":2}"
    );
    let bound = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    assert!(Session::import_state(&bound, &p.b.export_state()).is_err());
}
