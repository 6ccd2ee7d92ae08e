//! Succession::verify and follow_succession. Input: selector byte, then either raw statement
//! bytes (selector bit 0 clear) or an edit program applied to a genuine statement (bit 0 set).
//! When a statement verifies: following it from its old key to its new key gives its
//! generation, and a statement made by editing the genuine one verifies only if it is the
//! genuine one, byte for byte (no forged or malleable statement gets through).

use std::sync::OnceLock;

use crate::{apply_edits, TestRng, T0};
use agentmesh_core::{follow_succession, sign_succession, IdentityKeyPair, Succession};

/// The genuine statement the edit mode starts from: alice's key 1 hands over to her key 2.
pub fn genuine() -> &'static [u8] {
    static GENUINE: OnceLock<Vec<u8>> = OnceLock::new();
    GENUINE.get_or_init(|| {
        let mut rng = TestRng::new("succession_decode");
        let old = IdentityKeyPair::generate("alice", &mut rng).unwrap();
        let new = IdentityKeyPair::generate("alice", &mut rng).unwrap();
        sign_succession(&old, &new, 1, T0).unwrap()
    })
}

/// One input (what the fuzz target runs; the corpus replay test too).
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let edited = sel & 1 == 1;
    let input = if edited {
        apply_edits(genuine(), rest)
    } else {
        rest.to_vec()
    };
    let Ok(statement) = Succession::verify(&input) else {
        return;
    };
    if edited {
        assert_eq!(input, genuine(), "an edited succession statement verified");
    }
    assert_eq!(
        follow_succession(
            &statement.agent_id,
            &statement.old_identity_key,
            &statement.new_identity_key,
            &[&input],
        ),
        Ok(statement.generation)
    );
}
