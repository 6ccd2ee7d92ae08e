//! Succession statements (docs/protocol.md, "Succession statement"): frozen vectors shared with
//! the Python tests (tests/vectors/succession-v1.json, tests/python/test_succession_vectors.py),
//! and every way a statement or a chain must be refused. Set AGENTMESH_WRITE_VECTORS=1 to
//! rewrite the vectors after an intended protocol change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use agentmesh_core::{follow_succession, sign_succession, IdentityKeyPair, Succession};
use common::{TestRng, T0};
use serde_json::{json, Value};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/vectors/succession-v1.json"
);

fn keys(label: &str, id: &str, n: usize) -> Vec<IdentityKeyPair> {
    let mut rng = TestRng::new(label);
    (0..n)
        .map(|_| IdentityKeyPair::generate(id, &mut rng).unwrap())
        .collect()
}

fn chain_of(kps: &[IdentityKeyPair]) -> Vec<Vec<u8>> {
    kps.windows(2)
        .enumerate()
        .map(|(i, w)| sign_succession(&w[0], &w[1], i as u32 + 1, T0 + i as u64).unwrap())
        .collect()
}

fn refs(chain: &[Vec<u8>]) -> Vec<&[u8]> {
    chain.iter().map(Vec::as_slice).collect()
}

fn build() -> Value {
    let kps = keys("agentmesh succession v1 vectors", "alice", 3);
    let chain = chain_of(&kps);
    json!({
        "description": "agentmesh succession statements v1 (docs/protocol.md, \"Succession statement\"): three identity keys of agent alice (each its identity file), and the chain key0 -> key1 -> key2, each statement signed by its old key (agentmesh/v1/sig/succession) and its new key (agentmesh/v1/sig/succession-accept).",
        "agent_id": "alice",
        "identities": kps.iter().map(|kp| json!({
            "secret_file": hex::encode(kp.to_secret_bytes(None, &mut TestRng::new("unused")).unwrap()),
            "identity_key": hex::encode(kp.identity_key()),
        })).collect::<Vec<_>>(),
        "statements": chain.iter().enumerate().map(|(i, s)| json!({
            "old": i, "new": i + 1, "generation": i + 1, "timestamp": T0 + i as u64,
            "bytes": hex::encode(s),
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn succession_vectors_are_reproduced_byte_for_byte() {
    common::check_frozen_vectors(PATH, &build(), "succession");
}

#[test]
fn frozen_statements_verify_and_carry_the_first_key_to_the_last() {
    let frozen = common::frozen_vectors(PATH);
    let key = |i: usize| -> [u8; 32] {
        hex::decode(frozen["identities"][i]["identity_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let chain: Vec<Vec<u8>> = (0..2)
        .map(|i| hex::decode(frozen["statements"][i]["bytes"].as_str().unwrap()).unwrap())
        .collect();
    let s = Succession::verify(&chain[1]).unwrap();
    assert_eq!(
        (s.agent_id.as_str(), s.old_identity_key, s.new_identity_key),
        ("alice", key(1), key(2))
    );
    assert_eq!(s.generation, 2);
    assert_eq!(
        follow_succession("alice", &key(0), &key(2), &refs(&chain)),
        Ok(2)
    );
    assert_eq!(
        follow_succession("alice", &key(1), &key(2), &refs(&chain)),
        Ok(2)
    );
}

#[test]
fn a_statement_must_be_signed_by_both_keys_and_stay_as_signed() {
    let kps = keys("succession signatures", "alice", 3);
    let good = sign_succession(&kps[0], &kps[1], 1, T0).unwrap();
    assert!(Succession::verify(&good).is_ok());
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 1;
        assert!(
            Succession::verify(&bad).is_err(),
            "flipped byte {i} accepted"
        );
    }
    assert!(Succession::verify(&good[..good.len() - 1]).is_err());
    let mut longer = good.clone();
    longer.push(0);
    assert!(Succession::verify(&longer).is_err());
    // the new key's acceptance is not interchangeable with the old key's hand-over
    let half = good.len() - 128;
    let mut swapped = good[..half].to_vec();
    swapped.extend_from_slice(&good[half + 64..]);
    swapped.extend_from_slice(&good[half..half + 64]);
    assert!(Succession::verify(&swapped).is_err());
}

#[test]
fn signing_needs_the_same_id_another_key_and_a_generation() {
    let a = keys("succession sign a", "alice", 2);
    let m = keys("succession sign m", "mallory", 1);
    assert!(sign_succession(&a[0], &m[0], 1, T0).is_err());
    assert!(sign_succession(&a[0], &a[0], 1, T0).is_err());
    assert!(sign_succession(&a[0], &a[1], 0, T0).is_err());
    let unbound = IdentityKeyPair::generate_unbound(&mut TestRng::new("unbound"));
    let unbound2 = IdentityKeyPair::generate_unbound(&mut TestRng::new("unbound2"));
    assert!(sign_succession(&unbound, &unbound2, 1, T0).is_err());
}

#[test]
fn a_chain_is_refused_unless_it_leads_from_the_trusted_key_to_the_presented_one() {
    let kps = keys("succession chains", "alice", 4);
    let k: Vec<[u8; 32]> = kps.iter().map(IdentityKeyPair::identity_key).collect();
    let chain = chain_of(&kps);
    let all = refs(&chain);
    assert_eq!(follow_succession("alice", &k[0], &k[3], &all), Ok(3));
    assert_eq!(follow_succession("alice", &k[2], &k[3], &all), Ok(3));
    // for another id
    assert!(follow_succession("bob", &k[0], &k[3], &all).is_err());
    // from a key the chain does not start from (a stranger's, or the presented key itself)
    let stranger = keys("succession stranger", "alice", 1);
    assert!(follow_succession("alice", &stranger[0].identity_key(), &k[3], &all).is_err());
    assert!(follow_succession("alice", &k[3], &k[3], &all).is_err());
    // to a key it does not end at: an older statement replayed for the key it named then
    assert!(follow_succession("alice", &k[2], &k[1], &all[..1]).is_err());
    assert_eq!(follow_succession("alice", &k[0], &k[1], &all[..1]), Ok(1));
    assert!(follow_succession("alice", &k[2], &k[3], &all[..2]).is_err());
    // a gap, a reordering, an empty chain
    assert!(follow_succession("alice", &k[0], &k[3], &[all[0], all[2]]).is_err());
    assert!(follow_succession("alice", &k[0], &k[3], &[all[1], all[0], all[2]]).is_err());
    assert!(follow_succession("alice", &k[0], &k[3], &[]).is_err());
    // generations must follow one another even when the keys do
    let renumbered = sign_succession(&kps[1], &kps[2], 5, T0).unwrap();
    assert!(follow_succession("alice", &k[0], &k[2], &[all[0], &renumbered]).is_err());
    // a statement signed by the stolen old key for an attacker's key cannot be grafted on
    let evil = keys("succession evil", "alice", 1);
    let forged = sign_succession(&kps[2], &evil[0], 3, T0).unwrap();
    assert!(follow_succession(
        "alice",
        &k[3],
        &evil[0].identity_key(),
        &[all[0], all[1], &forged]
    )
    .is_err());
}

#[test]
fn a_chain_is_bounded() {
    let kps = keys("succession long", "alice", 10);
    let chain = chain_of(&kps);
    let all = refs(&chain);
    let (first, last) = (kps[0].identity_key(), kps[9].identity_key());
    assert!(follow_succession("alice", &first, &last, &all).is_err());
    assert_eq!(
        follow_succession("alice", &kps[1].identity_key(), &last, &all[1..]),
        Ok(9)
    );
}
