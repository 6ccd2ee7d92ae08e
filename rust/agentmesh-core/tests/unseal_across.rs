//! `unseal_across` (several sessions' batches in one call) against `Session::unseal_many`, batch
//! by batch: the same results and the same session state, whatever the batches hold.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use agentmesh_core::{unseal_across, Envelope, Error, Mode, Opened, SessionBatch};
use common::Pair;

/// What one receiving session is handed in a scenario.
#[derive(Clone, Copy, Debug)]
enum Batch {
    /// Messages of the established active ratchet.
    Fresh(usize),
    /// The same, with one envelope's last byte flipped (the AEAD refuses it).
    Tampered(usize),
    /// The set-up message and the messages after it, to a session that has no active ratchet
    /// yet (it does not stage: the fast path needs an active ratchet).
    Setup(usize),
    /// Fresh messages followed by one of them again (it does not stage).
    WithReplay(usize),
    /// Messages that skip some (a gap in the chain still stages).
    WithGap(usize),
    /// Nothing.
    Empty,
}

fn payload(label: &str, i: usize) -> Vec<u8> {
    format!("{{\"from\":\"{label}\",\"i\":{i}}}").into_bytes()
}

/// One pair per batch (each with its own identities: a different peer per session), built
/// deterministically so that two calls give byte-identical worlds.
fn world(batches: &[(Mode, Batch)]) -> Vec<(Pair, Vec<Envelope>)> {
    batches
        .iter()
        .enumerate()
        .map(|(n, &(mode, batch))| {
            let label = format!("across-{n}");
            let mut p = Pair::new(&label, mode);
            if !matches!(batch, Batch::Setup(_)) {
                p.establish();
            }
            let seal = |p: &mut Pair, count: usize| -> Vec<Envelope> {
                (0..count).map(|i| p.a_seal(&payload(&label, i))).collect()
            };
            let envs = match batch {
                Batch::Fresh(k) | Batch::Setup(k) => seal(&mut p, k),
                Batch::Tampered(k) => {
                    let mut envs = seal(&mut p, k);
                    let mut bytes = envs[1].as_bytes().to_vec();
                    let last = bytes.len() - 1;
                    bytes[last] ^= 1;
                    envs[1] = Envelope::from_bytes(&bytes).unwrap();
                    envs
                }
                Batch::WithReplay(k) => {
                    let mut envs = seal(&mut p, k);
                    envs.push(envs[0].clone());
                    envs
                }
                Batch::WithGap(k) => seal(&mut p, k).into_iter().step_by(2).collect(),
                Batch::Empty => Vec::new(),
            };
            (p, envs)
        })
        .collect()
}

/// A result as it can be compared: the payload and whether a set-up was accepted, or the error.
type Outcome = Result<(Vec<u8>, bool), Error>;

fn outcome(result: &agentmesh_core::Result<Opened>) -> Outcome {
    result
        .as_ref()
        .map(|o| (o.payload().to_vec(), o.accepted_setup().is_some()))
        .map_err(Clone::clone)
}

/// One `unseal_across` call over every session of a world, each with its batch.
fn unseal_world(world: &mut [(Pair, Vec<Envelope>)]) -> Vec<Vec<agentmesh_core::Result<Opened>>> {
    let mut calls: Vec<SessionBatch<'_, Envelope>> = world
        .iter_mut()
        .map(|(p, envs)| SessionBatch {
            session: &mut p.b,
            ours: &p.bob,
            envelopes: envs.as_slice(),
        })
        .collect();
    unseal_across(&mut calls)
}

/// `unseal_across` over one world and `unseal_many` session by session over an identical one
/// give the same results and leave every session byte-for-byte the same; afterwards each
/// session still opens a new message and refuses a replay of its batch.
fn assert_across_matches_many(batches: &[(Mode, Batch)]) -> Vec<Vec<Outcome>> {
    let mut across = world(batches);
    let mut many = world(batches);
    let results = unseal_world(&mut across);
    assert_eq!(results.len(), batches.len());
    let mut outcomes = Vec::new();
    for (n, ((a, envs), (m, envs_many))) in across.iter_mut().zip(many.iter_mut()).enumerate() {
        assert_eq!(envs, envs_many, "the two worlds differ (batch {n})");
        let expected: Vec<_> =
            m.b.unseal_many(&m.bob, envs_many)
                .iter()
                .map(outcome)
                .collect();
        let got: Vec<_> = results[n].iter().map(outcome).collect();
        assert_eq!(got, expected, "batch {n} ({:?})", batches[n]);
        assert_eq!(
            a.b.export_state(),
            m.b.export_state(),
            "session state after batch {n} ({:?})",
            batches[n]
        );
        let next = a.a_seal(b"{\"next\":1}");
        assert_eq!(a.b_open(&next).unwrap(), b"{\"next\":1}");
        for env in envs.iter() {
            assert!(
                a.b_open(env).is_err(),
                "batch {n}: an envelope opened twice"
            );
        }
        outcomes.push(got);
    }
    outcomes
}

#[test]
fn signed_and_deniable_sessions_of_different_peers_match_unseal_many() {
    let outcomes = assert_across_matches_many(&[
        (Mode::Signed, Batch::Fresh(5)),
        (Mode::Deniable, Batch::Fresh(4)),
        (Mode::Signed, Batch::Fresh(7)),
        (Mode::Deniable, Batch::Fresh(1)),
    ]);
    assert!(outcomes.iter().flatten().all(Result::is_ok));
    assert_eq!(outcomes[2][6], Ok((payload("across-2", 6), false)));
}

#[test]
fn a_tampered_envelope_fails_alone_and_other_sessions_are_accepted() {
    let outcomes = assert_across_matches_many(&[
        (Mode::Signed, Batch::Fresh(5)),
        (Mode::Signed, Batch::Tampered(5)),
        (Mode::Deniable, Batch::Tampered(3)),
        (Mode::Signed, Batch::Fresh(6)),
    ]);
    for (n, batch) in outcomes.iter().enumerate() {
        for (i, result) in batch.iter().enumerate() {
            if (n == 1 || n == 2) && i == 1 {
                assert_eq!(result, &Err(Error::Authentication), "batch {n} item {i}");
            } else {
                assert!(result.is_ok(), "batch {n} item {i}: {result:?}");
            }
        }
    }
}

#[test]
fn batches_that_do_not_stage_take_the_per_message_path_beside_ones_that_do() {
    let outcomes = assert_across_matches_many(&[
        (Mode::Signed, Batch::Setup(3)),
        (Mode::Signed, Batch::Fresh(5)),
        (Mode::Signed, Batch::WithReplay(4)),
        (Mode::Deniable, Batch::Setup(2)),
        (Mode::Signed, Batch::WithGap(9)),
        (Mode::Deniable, Batch::WithReplay(2)),
    ]);
    assert_eq!(outcomes[0][0], Ok((payload("across-0", 0), true)));
    assert_eq!(outcomes[2][4], Err(Error::Replay));
    assert_eq!(outcomes[5][2], Err(Error::Replay));
    assert_eq!(outcomes[4].len(), 5);
    assert!(outcomes[4].iter().all(Result::is_ok));
}

#[test]
fn empty_batches_and_an_empty_call() {
    let none: &mut [SessionBatch<'_, Envelope>] = &mut [];
    assert!(unseal_across(none).is_empty());
    let outcomes = assert_across_matches_many(&[
        (Mode::Signed, Batch::Empty),
        (Mode::Signed, Batch::Fresh(3)),
        (Mode::Deniable, Batch::Empty),
        (Mode::Signed, Batch::Setup(0)),
    ]);
    assert!(outcomes[0].is_empty() && outcomes[2].is_empty() && outcomes[3].is_empty());
}

#[test]
fn a_replayed_batch_is_refused_message_by_message_and_changes_nothing() {
    let mut worlds = world(&[
        (Mode::Signed, Batch::Fresh(4)),
        (Mode::Deniable, Batch::Fresh(3)),
    ]);
    assert!(unseal_world(&mut worlds)
        .iter()
        .flatten()
        .all(Result::is_ok));
    let before: Vec<_> = worlds.iter().map(|(p, _)| p.b.export_state()).collect();
    let again = unseal_world(&mut worlds);
    assert!(again
        .iter()
        .flatten()
        .all(|r| r.as_ref().is_err_and(|e| *e == Error::Replay)));
    let after: Vec<_> = worlds.iter().map(|(p, _)| p.b.export_state()).collect();
    assert_eq!(before, after);
}
