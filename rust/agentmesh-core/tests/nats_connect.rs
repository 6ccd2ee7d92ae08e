//! The NATS connect proof (docs/protocol.md): it verifies for its nonce, id and bundle only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_core::{sign_nats_connect, verify_nats_connect, IdentityKeyPair, MAX_NATS_NONCE_LEN};
use rand_core::OsRng;

#[test]
fn a_proof_verifies_for_its_nonce_id_and_bundle_only() {
    let alice = IdentityKeyPair::generate("alice", &mut OsRng).unwrap();
    let mallory = IdentityKeyPair::generate("mallory", &mut OsRng).unwrap();
    let sig = sign_nats_connect(&alice, b"nonce-1").unwrap();
    assert!(verify_nats_connect(&alice.public_bundle(), b"nonce-1", &sig).is_ok());
    assert!(verify_nats_connect(&alice.public_bundle(), b"nonce-2", &sig).is_err());
    assert!(verify_nats_connect(&mallory.public_bundle(), b"nonce-1", &sig).is_err());
    let rotated = {
        let mut a = alice;
        a.rotate_signed_prekey(&mut OsRng);
        a.public_bundle()
    };
    assert!(verify_nats_connect(&rotated, b"nonce-1", &sig).is_err());
}

#[test]
fn a_nonce_must_be_there_and_bounded() {
    let alice = IdentityKeyPair::generate("alice", &mut OsRng).unwrap();
    assert!(sign_nats_connect(&alice, b"").is_err());
    assert!(sign_nats_connect(&alice, &[b'x'; MAX_NATS_NONCE_LEN + 1]).is_err());
    assert!(sign_nats_connect(&alice, &[b'x'; MAX_NATS_NONCE_LEN]).is_ok());
}
