//! PublicBundle::from_bytes. Input: selector byte, then either raw bundle bytes (selector bit 0
//! clear) or an edit program applied to a genuine bundle (bit 0 set; bits 1-2 pick the bundle).
//! When it parses: the encoding is canonical (to_bytes gives the input back), the bundle
//! re-parses to itself, and a session opened with it can seal (or refuse) without panicking -
//! the one-time prekey is unsigned, so the edits reach X25519 with arbitrary points.

use crate::{apply_edits, fixture, TestRng, T0};
use agentmesh_core::{Mode, PublicBundle, Session};

/// One input (what the fuzz target runs; the corpus replay test too).
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let input = if sel & 1 == 0 {
        rest.to_vec()
    } else {
        let fx = fixture();
        let base = match (sel >> 1) % 3 {
            0 => fx.alice.public_bundle(),
            1 => fx.bob.public_bundle(),
            _ => fx
                .bob
                .public_bundle()
                .with_one_time_prekey(Some((7, [9u8; 32]))),
        };
        apply_edits(&base.to_bytes(), rest)
    };
    let Ok(bundle) = PublicBundle::from_bytes(&input) else {
        return;
    };
    assert_eq!(bundle.to_bytes(), input, "bundle encoding is not canonical");
    assert!(PublicBundle::from_bytes(&bundle.to_bytes()).as_ref() == Ok(&bundle));
    assert_eq!(bundle.fingerprint().len(), 39);

    // Use it: open a session from the identity that is not the bundle's owner and seal once.
    let fx = fixture();
    let ours = if bundle.agent_id() == "alice" {
        &fx.bob
    } else {
        &fx.alice
    };
    let mode = if sel & 0x80 == 0 {
        Mode::Signed
    } else {
        Mode::Deniable
    };
    if let Ok(mut s) = Session::new(ours, bundle, mode) {
        let mut rng = TestRng::new("bundle_decode");
        // Ok or Err are both fine (an arbitrary one-time prekey may be refused); no panic.
        if let Ok(env) = s.seal(ours, b"{\"fuzz\":true}", T0, &mut rng) {
            assert!(env.as_bytes().len() > 16);
        }
    }
}
