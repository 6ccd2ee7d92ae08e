//! Group messages: GroupEnvelope::from_bytes on arbitrary bytes, then GroupSession::open on a
//! live group state (fixed identities, fixed deterministic RNG: Bob holds Alice's chain).
//!
//! Input: a selector byte, then the body.
//!   bit 0   0: body is the envelope, raw bytes; 1: body is an edit program applied to a
//!           genuine group message
//!   bits 1-7   which genuine message (modulo the fixture's list)
//!
//! Checked: never panics; the input taken as an unaddressed form (what a hub fans out) either is
//! refused or, addressed, gives a copy that is refused or parses back to that form; a parsed
//! envelope re-addresses to the same bytes, also through its unaddressed form, and its id is
//! SHA-256(associated data)[0..16]; an error leaves the state's export byte-identical; success
//! only for a genuine message (its payload, or another member's copy of it: the recipient is
//! routing only), and never twice.

use std::sync::OnceLock;

use agentmesh_core::group::{GroupEnvelope, GroupSession};
use agentmesh_core::IdentityKeyPair;
use sha2::{Digest, Sha256};

use crate::{apply_edits, TestRng};

struct GroupFixture {
    bob: IdentityKeyPair,
    bob_state: Vec<u8>,
    /// (wire bytes addressed to bob, payload)
    genuine: Vec<(Vec<u8>, Vec<u8>)>,
}

fn group_fixture() -> &'static GroupFixture {
    static FIXTURE: OnceLock<GroupFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = TestRng::new("fuzz/group_open");
        let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
        let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
        let mut sender = GroupSession::new(&alice, "research").unwrap();
        let mut receiver = GroupSession::new(&bob, "research").unwrap();
        let d = sender.distribution(&alice, &mut rng).unwrap();
        receiver
            .install(&d, "alice", &alice.identity_key())
            .unwrap();
        let genuine = (0..4u64)
            .map(|i| {
                let payload = format!("{{\"n\":{i}}}").into_bytes();
                let env = sender
                    .seal(&alice, &payload, 1_700_000_000_000 + i, &mut rng)
                    .unwrap();
                (env.to_bytes_for("bob").unwrap(), payload)
            })
            .collect();
        GroupFixture {
            bob_state: receiver.export_state().to_vec(),
            bob,
            genuine,
        }
    })
}

/// One input (what the fuzz target runs; the corpus replay test too).
pub fn run(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let fx = group_fixture();
    let input = if sel & 1 == 0 {
        body.to_vec()
    } else {
        let (base, _) = &fx.genuine[usize::from(sel >> 1) % fx.genuine.len()];
        apply_edits(base, body)
    };
    if let Ok(copy) = GroupEnvelope::address(&input, "bob") {
        if let Ok(parsed) = GroupEnvelope::from_bytes(&copy) {
            assert_eq!(
                parsed.to_unaddressed_bytes(),
                input,
                "an addressed copy does not keep the unaddressed bytes"
            );
        }
    }
    let Ok(env) = GroupEnvelope::from_bytes(&input) else {
        return;
    };
    let recipient = env
        .recipient()
        .expect("a parsed envelope has a recipient")
        .to_owned();
    assert_eq!(
        env.to_bytes().unwrap(),
        input,
        "envelope does not keep its wire bytes"
    );
    assert_eq!(env.to_bytes_for(&recipient).unwrap(), input);
    assert_eq!(
        GroupEnvelope::address(&env.to_unaddressed_bytes(), &recipient).unwrap(),
        input,
        "the unaddressed form does not address back to the wire bytes"
    );
    let digest = Sha256::digest(env.associated_data());
    let want: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        env.message_id(),
        want,
        "message id is not SHA-256(associated data)[0..16]"
    );

    let mut state = GroupSession::import_state(&fx.bob, &fx.bob_state).unwrap();
    let before = state.export_state().to_vec();
    match state.open(&env) {
        Err(_) => assert_eq!(
            state.export_state().to_vec(),
            before,
            "a refused message changed the state"
        ),
        Ok(opened) => {
            let genuine = fx
                .genuine
                .iter()
                .find(|(wire, _)| {
                    GroupEnvelope::from_bytes(wire).unwrap().associated_data()
                        == env.associated_data()
                })
                .expect("a message the sender never sealed was accepted");
            assert_eq!(opened.payload(), genuine.1.as_slice(), "payload altered");
            assert!(state.open(&env).is_err(), "a message opened twice");
        }
    }
}
