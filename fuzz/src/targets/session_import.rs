//! Session::import_state with a fixed identity.
//!
//! Input: a selector byte, then the body.
//!   bits 0-1   0: body is the export, raw bytes (identity: bit 6)
//!              1: edit program applied to a genuine export, checksum left as is
//!              2, 3: edit program applied to a genuine export, checksum recomputed so the edits
//!                 reach the parser behind the integrity check
//!   bits 2-5   which genuine export (modulo the list: established, fresh and unanswered
//!              sessions of both sides and both modes)
//!   bit 6      use the other side's identity (must be refused)
//!   bit 7      which genuine envelope to unseal afterwards (with the next body byte)
//!
//! Checked: never panics; an accepted export is canonical (exporting it again gives the input
//! back); the imported session can be used - unseal of a genuine envelope (an error leaves the
//! state byte-identical, a success cannot be replayed) and seal - without panicking.

use crate::{apply_edits, check_unseal, fix_checksum, fixture, Side, TestRng, T0};
use agentmesh_core::{Envelope, Session};

/// One input (what the fuzz target runs; the corpus replay test too).
pub fn run(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let states = fx.all_states();
    let (input, mut side) = match sel & 3 {
        0 => (body.to_vec(), Side::Bob),
        kind => {
            let (_, side, base) = states[usize::from((sel >> 2) & 0xf) % states.len()];
            let mut edited = apply_edits(base, body);
            if kind >= 2 {
                fix_checksum(&mut edited);
            }
            (edited, side)
        }
    };
    if sel & 0x40 != 0 {
        side = match side {
            Side::Alice => Side::Bob,
            Side::Bob => Side::Alice,
        };
    }
    let ours = fx.identity(side);
    let Ok(session) = Session::import_state(ours, &input) else {
        return;
    };
    assert_eq!(
        session.local_id(),
        ours.agent_id(),
        "imported for the wrong identity"
    );
    let export = session.export_state();
    assert!(
        export == input,
        "session export is not canonical: import(x).export() != x"
    );

    // Use it. Unseal one genuine envelope addressed to this identity (no forgery check: the
    // state itself is fuzzed), then seal.
    let envs = fx.envelopes_to(side);
    let pick = usize::from(body.first().copied().unwrap_or(0)) + usize::from(sel >> 7);
    let env = Envelope::from_bytes(&envs[pick % envs.len()].bytes).expect("genuine envelope");
    check_unseal(ours, &export, &env, None);

    let mut s = session;
    let mut rng = TestRng::new("session_import");
    let _ = s.seal(ours, b"{\"fuzz\":1}", T0 + 1_000_000, &mut rng);
    let _ = s.export_state();
}
