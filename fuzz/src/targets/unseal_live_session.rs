//! Session::unseal on a live, established session (fixed identities, fixed deterministic RNG).
//!
//! Input: a selector byte, then the body.
//!   bit 0      mode: 0 signed, 1 deniable fixture
//!   bit 1      receiver: 0 Bob (responder), 1 Alice (initiator)
//!   bits 2-3   0: body is the envelope, raw bytes
//!              1, 2: structure-aware - body is an edit program applied to a genuine envelope
//!              3: batch - several edited genuine envelopes through unseal_many, compared with
//!                 one-at-a-time unseal on a second copy of the session
//!   bits 4-7   which genuine envelope (modulo the fixture's list)
//!
//! Checked: never panics; an error leaves the export byte-identical; success only for an
//! envelope the fixture sealed and the state has not consumed, with its payload (no forgery, no
//! replay); a success cannot be replayed; unseal_many returns exactly what unseal would.

use crate::{apply_edits, check_unseal, fixture, Genuine, Side};
use agentmesh_core::{Envelope, Mode, Session};

const MAX_BATCH: usize = 6;

/// One input (what the fuzz target runs; the corpus replay test too).
pub fn run(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let mode = if sel & 1 == 0 {
        Mode::Signed
    } else {
        Mode::Deniable
    };
    let side = if sel & 2 == 0 { Side::Bob } else { Side::Alice };
    let m = fx.mode(mode);
    let (state, genuine) = match side {
        Side::Bob => (&m.bob_state, &m.to_bob),
        Side::Alice => (&m.alice_state, &m.to_alice),
    };
    let ours = fx.identity(side);
    // For the forgery check: every genuine envelope this receiver could legitimately open.
    let known: Vec<&Genuine> = genuine.iter().collect();
    let pick = |i: u8| &genuine[usize::from(i) % genuine.len()];

    match (sel >> 2) & 3 {
        0 => {
            if let Ok(env) = Envelope::from_bytes(body) {
                check_unseal(ours, state, &env, Some(&known));
            }
        }
        1 | 2 => {
            let bytes = apply_edits(&pick(sel >> 4).bytes, body);
            if let Ok(env) = Envelope::from_bytes(&bytes) {
                check_unseal(ours, state, &env, Some(&known));
            }
        }
        _ => {
            // Batch: [count] then per envelope [index, n_edits, n_edits * 4 edit bytes].
            let Some((&count, mut rest)) = body.split_first() else {
                return;
            };
            let mut envs = Vec::new();
            for _ in 0..1 + usize::from(count) % MAX_BATCH {
                let [idx, n, ..] = rest else { break };
                let len = (usize::from(*n) % 4 * 4).min(rest.len() - 2);
                let bytes = apply_edits(&pick(*idx).bytes, &rest[2..2 + len]);
                rest = &rest[2 + len..];
                if let Ok(env) = Envelope::from_bytes(&bytes) {
                    envs.push(env);
                }
            }
            let mut batch = Session::import_state(ours, state).expect("state imports");
            let mut single = Session::import_state(ours, state).expect("state imports");
            let many = batch.unseal_many(ours, &envs);
            assert_eq!(many.len(), envs.len(), "unseal_many result count");
            for (env, got) in envs.iter().zip(&many) {
                let want = single.unseal(ours, env);
                match (got, &want) {
                    (Ok(a), Ok(b)) => assert_eq!(a.payload(), b.payload(), "batch payload differs"),
                    (Err(a), Err(b)) => assert_eq!(a, b, "batch error differs"),
                    _ => panic!(
                        "unseal_many and unseal disagree: batch ok={} single ok={}",
                        got.is_ok(),
                        want.is_ok()
                    ),
                }
                if let Ok(o) = got {
                    let g = known.iter().find(|g| g.bytes == env.as_bytes());
                    let g = g.unwrap_or_else(|| panic!("FORGERY in unseal_many"));
                    assert_eq!(o.payload(), g.payload.as_slice());
                }
            }
            assert!(
                batch.export_state() == single.export_state(),
                "unseal_many and unseal leave different states"
            );
        }
    }
}
