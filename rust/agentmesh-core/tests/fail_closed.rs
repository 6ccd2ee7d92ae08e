//! Properties that must hold when the world around a session fails: a state rolled back to an
//! older copy, a set-up replayed after its session was forgotten, a peer that starts set-up
//! after set-up. Each test fails on a core without the rule it names.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::HashSet;

use agentmesh_core::{
    Envelope, Error, IdentityKeyPair, Mode, Session, MAX_MESSAGE_GAP, MAX_SKIPPED_KEYS,
};
use common::{Pair, TestRng};

/// What must never repeat among the envelopes one side sent: its (ratchet key, counter) pair
/// names the message key (and the nonce) that sealed it.
fn key_use(env: &Envelope) -> ([u8; 32], u32) {
    (env.header().ratchet_key, env.header().counter)
}

#[test]
fn a_restored_state_never_seals_under_a_key_it_used_before() {
    for mode in [Mode::Signed, Mode::Deniable] {
        let mut p = Pair::new("rollback", mode);
        p.establish();
        let mut used = HashSet::new();
        let e = p.a_seal(b"{\"n\":0}");
        used.insert(key_use(&e));
        p.b_open(&e).unwrap();
        let snapshot = p.a.export_state();
        for n in 1..4 {
            let e = p.a_seal(format!("{{\"n\":{n}}}").as_bytes());
            assert!(used.insert(key_use(&e)));
            p.b_open(&e).unwrap();
        }
        // the snapshot comes back (a VM restore, a backup, a lost write)
        p.a = Session::import_state(&p.alice, &snapshot).unwrap();
        assert!(p.a.renews_on_send());
        for n in 4..8 {
            let e = p.a_seal(format!("{{\"n\":{n}}}").as_bytes());
            assert!(
                used.insert(key_use(&e)),
                "{mode:?}: a message key was used twice after the rollback"
            );
            // the peer follows: the first one is a new set-up it adopts
            assert_eq!(p.b_open(&e).unwrap(), format!("{{\"n\":{n}}}").as_bytes());
        }
        // and the conversation goes on both ways
        let e = p.b_seal(b"{\"back\":1}");
        p.a_open(&e).unwrap();
        let e = p.a_seal(b"{\"again\":1}");
        p.b_open(&e).unwrap();
    }
}

#[test]
fn a_rollback_across_dh_steps_heals_with_the_next_send() {
    let mut p = Pair::signed("rollback across steps");
    p.establish();
    let snapshot = p.a.export_state();
    // two more round trips: both sides turn the DH ratchet twice after the snapshot
    for _ in 0..2 {
        let e = p.a_seal(b"{}");
        p.b_open(&e).unwrap();
        let e = p.b_seal(b"{}");
        p.a_open(&e).unwrap();
    }
    p.a = Session::import_state(&p.alice, &snapshot).unwrap();
    let e = p.a_seal(b"{\"after\":\"restore\"}");
    assert_eq!(p.b_open(&e).unwrap(), b"{\"after\":\"restore\"}");
    let e = p.b_seal(b"{\"reply\":1}");
    assert_eq!(p.a_open(&e).unwrap(), b"{\"reply\":1}");
}

#[test]
fn messages_in_flight_on_the_old_setup_still_open_after_a_restore() {
    let mut p = Pair::signed("in flight");
    p.establish();
    let in_flight = p.b_seal(b"{\"late\":1}");
    let snapshot = p.a.export_state();
    p.a = Session::import_state(&p.alice, &snapshot).unwrap();
    let e = p.a_seal(b"{\"new\":1}");
    p.b_open(&e).unwrap();
    assert_eq!(p.a_open(&in_flight).unwrap(), b"{\"late\":1}");
}

#[test]
fn a_replayed_setup_is_refused_after_its_session_is_forgotten() {
    let mut p = Pair::signed("replayed set-up");
    let setup = p.a_seal(b"{\"first\":1}");
    let opened = p.b.unseal(&p.bob, &setup).unwrap();
    p.bob.settle(&opened);
    // Bob loses the session (state file lost, or the session was evicted) but keeps his keys
    p.b = Session::new(&p.bob, p.alice.public_bundle(), Mode::Signed).unwrap();
    assert_eq!(p.b.unseal(&p.bob, &setup).unwrap_err(), Error::Replay);
    // ... also after the identity file went through a save and a load
    let bob = IdentityKeyPair::from_secret_bytes(
        &p.bob
            .to_secret_bytes(None, &mut TestRng::new("save"))
            .unwrap(),
        None,
    )
    .unwrap();
    let mut fresh = Session::new(&bob, p.alice.public_bundle(), Mode::Signed).unwrap();
    assert_eq!(fresh.unseal(&bob, &setup).unwrap_err(), Error::Replay);
}

#[test]
fn settle_counts_as_a_change_to_save() {
    let mut p = Pair::signed("revision");
    let before = p.bob.revision();
    let setup = p.a_seal(b"{}");
    let opened = p.b.unseal(&p.bob, &setup).unwrap();
    assert_eq!(p.bob.revision(), before, "unseal alone changes no identity");
    p.bob.settle(&opened);
    assert!(p.bob.revision() > before);
    assert_eq!(p.bob.setups_remembered(), 1);
}

#[test]
fn a_setup_older_than_the_established_session_never_replaces_it() {
    let mut p = Pair::signed("old set-up");
    // Alice's first set-up, delayed by the hub
    let old = p.a_seal(b"{\"old\":1}");
    // Alice starts over (lost state): a newer set-up, answered
    p.a = Session::new(&p.alice, p.bob.public_bundle(), Mode::Signed).unwrap();
    p.establish();
    // the late message still opens (it is a real one), archived: the session goes on as it was
    let opened = p.b.unseal(&p.bob, &old).unwrap();
    assert_eq!(opened.payload(), b"{\"old\":1}");
    p.bob.settle(&opened);
    let e = p.a_seal(b"{\"current\":1}");
    p.b_open(&e).unwrap();
    // and once settled, a replay of it is refused even by a session that forgot it
    let mut fresh = Session::new(&p.bob, p.alice.public_bundle(), Mode::Signed).unwrap();
    assert_eq!(fresh.unseal(&p.bob, &old).unwrap_err(), Error::Replay);
}

#[test]
fn skipped_keys_are_bounded_per_session_across_setups() {
    let mut p = Pair::signed("skipped budget");
    let gap = MAX_MESSAGE_GAP;
    for round in 0..6 {
        // Alice starts a new set-up and skips as far as she may in it
        p.a = Session::new(&p.alice, p.bob.public_bundle(), Mode::Signed).unwrap();
        let mut last = None;
        for _ in 0..=gap {
            last = Some(p.a_seal(b"{}"));
        }
        p.b_open(&last.unwrap())
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let e = p.b_seal(b"{}");
        p.a_open(&e).unwrap();
    }
    let state = p.b.export_state();
    // every skipped key costs 68 bytes in the export
    assert!(
        state.len() < (MAX_SKIPPED_KEYS + 200) * 68,
        "{} bytes of state: more than {MAX_SKIPPED_KEYS} skipped keys kept",
        state.len()
    );
}

#[test]
fn a_restored_side_that_adopts_the_peers_new_setup_answers_on_it() {
    // both sides restart from their files: the first to send starts a new set-up, and the
    // other answers on it instead of starting one more
    let mut p = Pair::signed("both restored");
    p.establish();
    p.a = Session::import_state(&p.alice, &p.a.export_state()).unwrap();
    p.b = Session::import_state(&p.bob, &p.b.export_state()).unwrap();
    let e = p.a_seal(b"{}");
    assert!(e.header().initiation.is_some());
    p.b_open(&e).unwrap();
    assert!(!p.b.renews_on_send());
    let e = p.b_seal(b"{}");
    assert!(
        e.header().initiation.is_none(),
        "an answer, not another set-up"
    );
    p.a_open(&e).unwrap();
}

#[test]
fn two_restored_sides_that_were_both_awaiting_an_answer_converge() {
    // both sides had started a set-up nobody answered, and both restart from their files:
    // the first new set-up to arrive wins over a loaded one, whatever the session ids
    for label in ["converge 1", "converge 2", "converge 3", "converge 4"] {
        let mut p = Pair::signed(label);
        let _ = p.a_seal(b"{}");
        let _ = p.b_seal(b"{}");
        p.a = Session::import_state(&p.alice, &p.a.export_state()).unwrap();
        p.b = Session::import_state(&p.bob, &p.b.export_state()).unwrap();
        let e = p.a_seal(b"{}");
        p.b_open(&e).unwrap();
        let e = p.b_seal(b"{}");
        assert!(
            e.header().initiation.is_none(),
            "{label}: bob answers alice's set-up"
        );
        p.a_open(&e).unwrap();
        let e = p.a_seal(b"{}");
        assert!(
            e.header().initiation.is_none(),
            "{label}: the DH ratchet turns"
        );
        p.b_open(&e).unwrap();
    }
}
