//! Frozen group vectors (tests/vectors/group-v1.json), shared with the Python tests
//! (tests/python/test_group_vectors.py). Regenerated from a deterministic RNG and compared byte
//! for byte, so any change to the group wire format, its KDF or its state export shows up.
//! Set AGENTMESH_WRITE_VECTORS=1 to rewrite the file after an intended protocol change.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::needless_range_loop
)]

mod common;

use agentmesh_core::group::{group_chain_step, GroupEnvelope, GroupSession, Membership};
use agentmesh_core::internals::ChainKey;
use agentmesh_core::IdentityKeyPair;
use common::{TestRng, T0};
use serde_json::{json, Value};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/vectors/group-v1.json"
);

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn build() -> Value {
    let mut rng = TestRng::new("agentmesh group v1 vectors");
    let names = ["alice", "bob", "carol"];
    let kps: Vec<IdentityKeyPair> = names
        .iter()
        .map(|n| IdentityKeyPair::generate(n, &mut rng).unwrap())
        .collect();
    let mut states: Vec<GroupSession> = kps
        .iter()
        .map(|kp| GroupSession::new(kp, "research").unwrap())
        .collect();
    let membership =
        Membership::sign(&kps[0], "research", 1, &["bob".into(), "carol".into()]).unwrap();
    let mut distributions = Vec::new();
    for sender in [0usize, 1] {
        let d = states[sender]
            .distribution(&kps[sender], &mut rng)
            .unwrap()
            .to_vec();
        for receiver in 0..3 {
            if receiver != sender {
                states[receiver]
                    .install(&d, names[sender], &kps[sender].identity_key())
                    .unwrap();
            }
        }
        distributions.push(json!({"sender": names[sender], "distribution": h(&d)}));
    }
    let script: [(usize, &str); 4] = [
        (0, r#"{"text":"new plan"}"#),
        (0, r#"{"text":"step 2","n":2}"#),
        (1, r#"{"text":"ack","type":"reply"}"#),
        (0, r#"{"text":"","unicode":"é😀"}"#),
    ];
    let mut clock = T0;
    let mut messages = Vec::new();
    for (sender, payload) in script {
        clock += 1000;
        let env = states[sender]
            .seal(&kps[sender], payload.as_bytes(), clock, &mut rng)
            .unwrap();
        let mut deliveries = Vec::new();
        for receiver in 0..3 {
            if receiver == sender {
                continue;
            }
            let wire = env.to_bytes_for(names[receiver]).unwrap();
            let before = states[receiver].export_state().to_vec();
            let opened = states[receiver]
                .open(&GroupEnvelope::from_bytes(&wire).unwrap())
                .unwrap();
            assert_eq!(opened.payload(), payload.as_bytes());
            deliveries.push(json!({
                "recipient": names[receiver],
                "envelope": h(&wire),
                "receiver_state_before": h(&before),
                "receiver_state_after": h(&states[receiver].export_state()),
            }));
        }
        let hd = env.header();
        messages.push(json!({
            "sender": names[sender],
            "group": hd.group,
            "chain_id": h(&hd.chain_id),
            "counter": hd.counter,
            "timestamp": hd.timestamp_ms,
            "message_id": env.message_id(),
            "associated_data": h(&env.associated_data()),
            "payload": payload,
            "deliveries": deliveries,
        }));
    }
    let ck = ChainKey::from_bytes([7u8; 32]);
    let (mk, next) = group_chain_step(&ck);
    json!({
        "description": "agentmesh group v1 (sender keys, docs/protocol.md section 8): identities, the group chain step, a membership record signed by the administrator, two sender-key distributions, and four group messages, each with the wire form addressed to every other member and that member's exported group state before and after opening it.",
        "group_chain_step": {"chain_key": h(ck.as_bytes()), "message_key": h(mk.as_bytes()), "next_chain_key": h(next.as_bytes())},
        "identities": names.iter().zip(&kps).map(|(n, kp)| (n.to_string(), json!({
            "secret_file": h(&kp.to_secret_bytes(None, &mut TestRng::new("unused")).unwrap()),
            "identity_key": h(&kp.identity_key()),
        }))).collect::<serde_json::Map<_, _>>(),
        "membership": {"admin": "alice", "group": "research", "epoch": 1, "members": ["alice", "bob", "carol"], "record": h(&membership)},
        "distributions": distributions,
        "messages": messages,
    })
}

#[test]
fn group_vectors_are_reproduced_byte_for_byte() {
    common::check_frozen_vectors(PATH, &build(), "group protocol");
}

#[test]
fn frozen_group_envelopes_open_from_frozen_state() {
    let frozen = common::frozen_vectors(PATH);
    let load = |name: &str| {
        let secret =
            hex::decode(frozen["identities"][name]["secret_file"].as_str().unwrap()).unwrap();
        IdentityKeyPair::from_secret_bytes(&secret, None).unwrap()
    };
    let record = hex::decode(frozen["membership"]["record"].as_str().unwrap()).unwrap();
    let m = Membership::verify(&record, &load("alice").identity_key()).unwrap();
    assert_eq!(m.members, ["alice", "bob", "carol"]);
    let mut count = 0;
    for msg in frozen["messages"].as_array().unwrap() {
        for d in msg["deliveries"].as_array().unwrap() {
            let kp = load(d["recipient"].as_str().unwrap());
            let before = hex::decode(d["receiver_state_before"].as_str().unwrap()).unwrap();
            let mut state = GroupSession::import_state(&kp, &before).unwrap();
            let env =
                GroupEnvelope::from_bytes(&hex::decode(d["envelope"].as_str().unwrap()).unwrap())
                    .unwrap();
            assert_eq!(env.message_id(), msg["message_id"].as_str().unwrap());
            let opened = state.open(&env).unwrap();
            assert_eq!(
                opened.payload(),
                msg["payload"].as_str().unwrap().as_bytes()
            );
            assert_eq!(
                h(&state.export_state()),
                d["receiver_state_after"].as_str().unwrap()
            );
            count += 1;
        }
    }
    assert_eq!(count, 8);
}
