//! Identity files (IdentityKeyPair::from_secret_bytes) and at-rest encrypted state
//! (IdentityKeyPair::open_at_rest).
//!
//! Input: a selector byte, then the body.
//!   bits 0-1   0: body is the input, raw bytes
//!              1: edit program applied to a genuine input, checksum left as is
//!              2, 3: edit program applied to a genuine input, trailing checksum recomputed
//!                 (reaches the plain identity-file parser behind the checksum)
//!   bits 2-3   which genuine input: 0 Alice's plain file, 1 Bob's plain file (previous signed
//!              prekey and one-time prekeys), 2 a passphrase file with a tiny Argon2 cost,
//!              3 an at-rest blob sealed by Alice
//!   bit 4      raw mode only: 0 from_secret_bytes, 1 open_at_rest (Alice's identity)
//!
//! The passphrase path runs Argon2id at the cost the file names; it is only taken when that cost
//! is tiny (<= 64 KiB, <= 2 passes, <= 2 lanes), otherwise the file is loaded without a
//! passphrase (which must fail fast).
//!
//! Checked: never panics; an accepted plain file is canonical (saving it again gives the input
//! back); a loaded identity round-trips through a plain file and can sign; open_at_rest accepts
//! only the genuine blob (no forgery) and returns its plaintext.

use crate::{apply_edits, fix_checksum, fixture, TestRng, FUZZ_PASSPHRASE};
use agentmesh_core::IdentityKeyPair;

/// Genuine inputs, built once (the passphrase file is made by examples/gen_corpus.rs and
/// embedded so that the fuzzer does not depend on files at run time).
const PASSPHRASE_FILE: &[u8] = include_bytes!("../../fixtures/bob_passphrase_tiny_cost.bin");
pub const AT_REST_PLAINTEXT: &[u8] = b"{\"state\":\"fuzz at-rest fixture\"}";

struct Inputs {
    alice_plain: Vec<u8>,
    bob_plain: Vec<u8>,
    at_rest: Vec<u8>,
}

fn inputs() -> &'static Inputs {
    static INPUTS: std::sync::OnceLock<Inputs> = std::sync::OnceLock::new();
    INPUTS.get_or_init(|| {
        let fx = fixture();
        let mut rng = TestRng::new("keyfile_load");
        Inputs {
            alice_plain: fx.alice.to_secret_bytes(None, &mut rng).unwrap(),
            bob_plain: fx.bob.to_secret_bytes(None, &mut rng).unwrap(),
            at_rest: fx.alice.seal_at_rest(AT_REST_PLAINTEXT, &mut rng).unwrap(),
        }
    })
}

/// The Argon2 cost an encrypted identity file names, if it is one.
fn argon2_cost(data: &[u8]) -> Option<(u32, u32, u32)> {
    if data.get(..5)? != b"AMK\x01\x01" {
        return None;
    }
    let u = |o: usize| Some(u32::from_be_bytes(data.get(o..o + 4)?.try_into().ok()?));
    Some((u(21)?, u(25)?, u(29)?))
}

fn load(data: &[u8]) {
    let passphrase = match argon2_cost(data) {
        Some((m, t, p)) if m <= 64 && t <= 2 && p <= 2 => Some(FUZZ_PASSPHRASE),
        _ => None,
    };
    let Ok(kp) = IdentityKeyPair::from_secret_bytes(data, passphrase) else {
        return;
    };
    let mut rng = TestRng::new("keyfile_load/resave");
    let plain = kp.to_secret_bytes(None, &mut rng).expect("re-save");
    if passphrase.is_none() {
        // Canonical: one identity, one file (one-time prekey ids strictly increasing since
        // 0fc3f8a; fuzz/artifacts-known/keyfile_load-opk-order-noncanonical is that finding).
        assert!(plain == data, "identity file encoding is not canonical");
    }
    let again = IdentityKeyPair::from_secret_bytes(&plain, None).expect("re-saved file loads");
    assert!(again.to_secret_bytes(None, &mut rng).expect("re-save") == plain);
    assert_eq!(again.identity_key(), kp.identity_key());
    let bundle = kp.public_bundle();
    assert!(
        agentmesh_core::PublicBundle::from_bytes(&bundle.to_bytes()).is_ok(),
        "a loaded identity publishes a bundle that does not parse"
    );
    let registration = agentmesh_core::Registration {
        hub_id: [1; 16],
        challenge: [2; 32],
        client_nonce: [3; 32],
        tls_certificate_sha256: None,
    };
    let sig = kp
        .sign_registration(&bundle, &registration)
        .expect("an identity signs its own bundle");
    assert!(bundle.verify_registration(&registration, &sig).is_ok());
}

fn open_at_rest(data: &[u8]) {
    let inp = inputs();
    if let Ok(plain) = fixture().alice.open_at_rest(data) {
        assert!(
            data == inp.at_rest.as_slice(),
            "FORGERY: open_at_rest accepted edited data"
        );
        assert_eq!(plain, AT_REST_PLAINTEXT);
    }
}

/// One input (what the fuzz target runs; the corpus replay test too).
pub fn run(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let inp = inputs();
    let which = (sel >> 2) & 3;
    match sel & 3 {
        0 => {
            if sel & 0x10 == 0 {
                load(body)
            } else {
                open_at_rest(body)
            }
        }
        kind => {
            let base: &[u8] = match which {
                0 => &inp.alice_plain,
                1 => &inp.bob_plain,
                2 => PASSPHRASE_FILE,
                _ => &inp.at_rest,
            };
            let mut edited = apply_edits(base, body);
            if kind >= 2 {
                fix_checksum(&mut edited);
            }
            if which == 3 {
                open_at_rest(&edited)
            } else {
                load(&edited)
            }
        }
    }
}
