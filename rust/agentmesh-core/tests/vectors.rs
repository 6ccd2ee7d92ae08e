//! Frozen protocol vectors (tests/vectors/protocol-v1.json), shared with the Python tests.
//! The scenario is generated from a deterministic RNG; this test regenerates it and requires a
//! byte-exact match, so any change to the wire format, the KDFs or the state export shows up.
//! Set AGENTMESH_WRITE_VECTORS=1 to rewrite the file after an intended protocol change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use agentmesh_core::internals::{chain_step, root_step, ChainKey, RootKey};
use agentmesh_core::{Envelope, IdentityKeyPair, MessageType, Mode, Session};
use common::{TestRng, T0};
use serde_json::{json, Value};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/vectors/protocol-v1.json"
);

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

struct Side {
    kp: IdentityKeyPair,
    session: Session,
}

fn message_vector(env: &Envelope, payload: &str, receiver: &mut Side) -> Value {
    let before = receiver.session.export_state();
    let opened = receiver.session.unseal(&receiver.kp, env).unwrap();
    assert_eq!(opened.payload(), payload.as_bytes());
    let after = receiver.session.export_state();
    let hd = env.header();
    json!({
        "sender": hd.sender,
        "recipient": hd.recipient,
        "type": if hd.message_type == MessageType::Prekey { "prekey" } else { "ratchet" },
        "signed": hd.signed,
        "session_id": h(&hd.session_id),
        "timestamp": hd.timestamp_ms,
        "ratchet_key": h(&hd.ratchet_key),
        "previous_chain_length": hd.previous_chain_length,
        "counter": hd.counter,
        "message_id": env.message_id(),
        "payload": payload,
        "envelope": h(env.as_bytes()),
        "receiver_state_before": h(&before),
        "receiver_state_after": h(&after),
    })
}

fn conversation(
    rng: &mut TestRng,
    alice: &IdentityKeyPair,
    bob: &IdentityKeyPair,
    mode: Mode,
) -> Value {
    let copy = |kp: &IdentityKeyPair| {
        IdentityKeyPair::from_secret_bytes(
            &kp.to_secret_bytes(None, &mut TestRng::new("c")).unwrap(),
            None,
        )
        .unwrap()
    };
    let mut a = Side {
        kp: copy(alice),
        session: Session::new(alice, bob.public_bundle(), mode).unwrap(),
    };
    let mut b = Side {
        kp: copy(bob),
        session: Session::new(bob, alice.public_bundle(), mode).unwrap(),
    };
    let script: [(bool, &str); 6] = [
        (true, r#"{"text":"hello bob"}"#),
        (true, r#"{"text":"are you there?","n":2}"#),
        (false, r#"{"text":"hi alice","type":"reply"}"#),
        (true, r#"{"text":"new chain","list":[1,2.5,null,true]}"#),
        (true, r#"{"text":"","unicode":"é😀"}"#),
        (false, r#"{"text":"bye"}"#),
    ];
    let mut clock = T0;
    let mut messages = Vec::new();
    for (from_alice, payload) in script {
        clock += 1000;
        let (sender, receiver) = if from_alice {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let env = sender
            .session
            .seal(&sender.kp, payload.as_bytes(), clock, rng)
            .unwrap();
        messages.push(message_vector(&env, payload, receiver));
    }
    json!({ "mode": if mode == Mode::Signed { "signed" } else { "deniable" }, "messages": messages })
}

fn build() -> Value {
    let mut rng = TestRng::new("agentmesh protocol v1 vectors");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    let identity = |kp: &IdentityKeyPair| {
        json!({
            "agent_id": kp.agent_id(),
            "secret_file": h(&kp.to_secret_bytes(None, &mut TestRng::new("unused")).unwrap()),
            "bundle_bytes": h(&kp.public_bundle().to_bytes()),
            "identity_key": h(&kp.identity_key()),
            "fingerprint": kp.fingerprint(),
        })
    };
    let ck = ChainKey::from_bytes([7u8; 32]);
    let (mk, next) = chain_step(&ck);
    let rk = RootKey::from_bytes([9u8; 32]);
    let (rk2, ck2) = root_step(&rk, &[5u8; 32]);
    json!({
        "description": "agentmesh protocol v1: identities, KDF steps and two conversations (signed, deniable). Each message gives the envelope, its decoded header, and the receiver's exported session state before and after unsealing it. See docs/protocol.md.",
        "kdf": {
            "chain_step": {"chain_key": h(ck.as_bytes()), "message_key": h(mk.as_bytes()), "next_chain_key": h(next.as_bytes())},
            "root_step": {"root_key": h(rk.as_bytes()), "dh_output": h(&[5u8; 32]), "next_root_key": h(rk2.as_bytes()), "chain_key": h(ck2.as_bytes())},
        },
        "identities": {"alice": identity(&alice), "bob": identity(&bob)},
        "conversations": [
            conversation(&mut rng, &alice, &bob, Mode::Signed),
            conversation(&mut rng, &alice, &bob, Mode::Deniable),
        ],
    })
}

#[test]
fn protocol_vectors_are_reproduced_byte_for_byte() {
    common::check_frozen_vectors(PATH, &build(), "protocol");
}

#[test]
fn frozen_envelopes_open_from_frozen_state() {
    let frozen = common::frozen_vectors(PATH);
    let load = |name: &str| {
        let secret =
            hex::decode(frozen["identities"][name]["secret_file"].as_str().unwrap()).unwrap();
        IdentityKeyPair::from_secret_bytes(&secret, None).unwrap()
    };
    let (alice, bob) = (load("alice"), load("bob"));
    let mut count = 0;
    for conv in frozen["conversations"].as_array().unwrap() {
        for m in conv["messages"].as_array().unwrap() {
            let receiver = if m["recipient"] == "bob" {
                &bob
            } else {
                &alice
            };
            let before = hex::decode(m["receiver_state_before"].as_str().unwrap()).unwrap();
            let mut session = Session::import_state(receiver, &before).unwrap();
            let env = Envelope::from_bytes(&hex::decode(m["envelope"].as_str().unwrap()).unwrap())
                .unwrap();
            assert_eq!(env.header().counter as u64, m["counter"].as_u64().unwrap());
            let opened = session.unseal(receiver, &env).unwrap();
            assert_eq!(opened.payload(), m["payload"].as_str().unwrap().as_bytes());
            assert_eq!(
                h(&session.export_state()),
                m["receiver_state_after"].as_str().unwrap()
            );
            count += 1;
        }
    }
    assert_eq!(count, 12);
}
