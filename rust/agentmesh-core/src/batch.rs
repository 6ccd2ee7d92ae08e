//! Many messages of one session in one call: key derivation stays sequential (it is a chain),
//! while encryption, decryption and signatures run on every core, and signed messages are checked
//! with Ed25519 batch verification. A batch with any rejected envelope is replayed one message at
//! a time, so per-message results and the "state changes only after authentication" rule are
//! exactly those of [`Session::unseal`]. [`unseal_across`] does the same for several sessions'
//! batches at once, with one batch verification over all their signatures.

use std::ops::Range;

use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use rayon::prelude::*;

use crate::envelope::{Envelope, MessageType};
use crate::error::{Error, Result};
use crate::handshake::Mode;
use crate::kdf::chain_step;
use crate::keys::IdentityKeyPair;
use crate::payload::Payload;
use crate::ratchet::{Ratchet, Role};
use crate::session::{
    check_message_type, decrypt, encrypt_message, message_signing_input, split_signature, Opened,
    Session, SIGNATURE_LEN,
};

/// Below this many messages per task, splitting work across threads costs more than it saves.
/// Decrypting a small message takes about a microsecond and checking its signature (batched)
/// about twelve, while handing half a batch to the other core and waking it costs more CPU
/// than that for small batches: on two cores, 17 to 32 small signed messages cost about 20 µs
/// of CPU each when split and about 12.5 µs on one core, which was also faster on the clock.
/// A process hosting many agents unseals many such batches (a few dozen messages per agent).
const MIN_ITEMS_PER_TASK: usize = 64;

impl Session {
    /// Seals every payload in order, as consecutive messages of this session.
    pub fn seal_many<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        payloads: &[&[u8]],
        timestamp_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Envelope>> {
        let payloads: Vec<Payload<'_>> = payloads.iter().map(|p| Payload::plain(p)).collect();
        self.seal_payloads_many(ours, &payloads, timestamp_ms, rng)
    }

    /// [`Session::seal_many`] of payloads laid out straight into their envelopes (as
    /// [`Session::seal_payload`]: a framed payload's binary values are copied once).
    pub fn seal_payloads_many<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        payloads: &[Payload<'_>],
        timestamp_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Envelope>> {
        self.check_local(ours)?;
        self.sending_ratchet(ours, rng)?;
        let ratchet = self
            .active
            .as_deref()
            .ok_or(Error::InvalidInput("no active session"))?;
        let mut chain = ratchet.sending.clone().ok_or(Error::InvalidInput(
            "this session cannot send before it has received",
        ))?;
        let mut counter = ratchet.send_counter;
        let mut jobs = Vec::with_capacity(payloads.len());
        for payload in payloads {
            if counter == u32::MAX {
                return Err(Error::InvalidInput("sending chain exhausted"));
            }
            let (mk, next) = chain_step(&chain);
            jobs.push((
                self.next_header(ratchet, counter, timestamp_ms),
                mk,
                payload,
            ));
            chain = next;
            counter += 1;
        }
        let envelopes = jobs
            .into_par_iter()
            .with_min_len(MIN_ITEMS_PER_TASK)
            .map(|(header, mk, payload)| encrypt_message(ours, header, &mk, payload))
            .collect::<Result<Vec<_>>>()?;
        if let Some(r) = self.active.as_deref_mut() {
            r.sending = Some(chain);
            r.send_counter = counter;
        }
        Ok(envelopes)
    }

    /// Unseals every envelope; each result is what [`Session::unseal`] would have returned.
    pub fn unseal_many<E: AsRef<Envelope> + Sync>(
        &mut self,
        ours: &IdentityKeyPair,
        envelopes: &[E],
    ) -> Vec<Result<Opened>> {
        if let Some(staged) = self.stage_batch(ours, envelopes) {
            let mut signatures = BatchSignatures::default();
            let authentic = self
                .collect_signatures(envelopes, &staged, &mut signatures)
                .and_then(|()| signatures.verify(0..signatures.len()))
                .is_ok();
            if authentic {
                return self.commit_batch(staged).into_iter().map(Ok).collect();
            }
        }
        self.unseal_each(ours, envelopes)
    }

    /// The slow path: one message at a time, so each result and state change is exactly
    /// [`Session::unseal`]'s.
    fn unseal_each<E: AsRef<Envelope>>(
        &mut self,
        ours: &IdentityKeyPair,
        envelopes: &[E],
    ) -> Vec<Result<Opened>> {
        envelopes
            .iter()
            .map(|env| self.unseal(ours, env.as_ref()))
            .collect()
    }

    /// The fast path, first step: every envelope is a valid message of the active ratchet,
    /// decrypted on a copy of it. `None` means "not this case". The session itself is not
    /// changed: signatures are still unchecked.
    fn stage_batch<E: AsRef<Envelope> + Sync>(
        &self,
        ours: &IdentityKeyPair,
        envelopes: &[E],
    ) -> Option<StagedBatch> {
        self.check_local(ours).ok()?;
        let active = self.active.as_deref()?;
        let mut staged = active.clone();
        let mut keys = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            let h = env.as_ref().header();
            self.check_header(h).ok()?;
            if h.session_id != staged.session_id {
                return None;
            }
            check_message_type(&staged, h).ok()?;
            let plan = staged.plan_receive(h).ok()?;
            keys.push(plan.message_key.clone());
            staged.commit_receive(h, plan);
            if h.message_type == MessageType::Ratchet
                && staged.role
                    == (Role::Initiator {
                        acknowledged: false,
                    })
            {
                staged.role = Role::Initiator { acknowledged: true };
            }
        }
        let plaintexts = envelopes
            .par_iter()
            .zip(keys.par_iter())
            .with_min_len(MIN_ITEMS_PER_TASK)
            .map(|(env, mk)| decrypt(mk, AsRef::<Envelope>::as_ref(env)).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(StagedBatch {
            ratchet: staged,
            plaintexts,
        })
    }

    /// The fast path, second step: appends the message signatures of a staged batch to
    /// `signatures` (none in deniable mode). An error means a plaintext too short to hold one,
    /// and then nothing was appended.
    fn collect_signatures<E: AsRef<Envelope> + Sync>(
        &self,
        envelopes: &[E],
        staged: &StagedBatch,
        signatures: &mut BatchSignatures,
    ) -> Result<()> {
        if self.mode == Mode::Deniable {
            return Ok(());
        }
        let key = self.peer.identity_key;
        let signed = envelopes
            .par_iter()
            .zip(staged.plaintexts.par_iter())
            .with_min_len(MIN_ITEMS_PER_TASK)
            .map(|(env, plain)| {
                let (sig, payload) = split_signature(plain)?;
                Ok((
                    message_signing_input(env.as_ref().associated_data(), payload),
                    Signature::from_bytes(&sig),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        for (input, signature) in signed {
            signatures.inputs.push(input);
            signatures.signatures.push(signature);
            signatures.keys.push(key);
        }
        Ok(())
    }

    /// The fast path, last step, once the batch's signatures are checked: the staged ratchet
    /// replaces the active one.
    fn commit_batch(&mut self, staged: StagedBatch) -> Vec<Opened> {
        let offset = match self.mode {
            Mode::Signed => SIGNATURE_LEN,
            Mode::Deniable => 0,
        };
        if let Some(active) = self.active.as_deref_mut() {
            *active = staged.ratchet;
        }
        self.trim_skipped_keys();
        staged
            .plaintexts
            .into_iter()
            .map(|p| Opened::new(p, offset))
            .collect()
    }
}

/// A batch decrypted on a copy of the session's active ratchet; the copy replaces the active
/// ratchet only once the batch's signatures are checked.
struct StagedBatch {
    ratchet: Ratchet,
    plaintexts: Vec<Vec<u8>>,
}

/// Message signatures to check together, of one session or several (different keys).
#[derive(Default)]
struct BatchSignatures {
    inputs: Vec<Vec<u8>>,
    signatures: Vec<Signature>,
    keys: Vec<VerifyingKey>,
}

impl BatchSignatures {
    fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Ed25519 batch verification of the signatures in `range`, split over the cores when
    /// there are enough of them. An empty range passes.
    fn verify(&self, range: Range<usize>) -> Result<()> {
        self.verify_split(range, rayon::current_num_threads().max(1))
    }

    /// [`BatchSignatures::verify`] on the calling thread only: the check of a pass over many
    /// agents' batches (see [`unseal_across`]).
    fn verify_here(&self, range: Range<usize>) -> Result<()> {
        self.verify_split(range, 1)
    }

    fn verify_split(&self, range: Range<usize>, parts: usize) -> Result<()> {
        let failed = || Error::Signature("batch verification failed");
        let inputs = self.inputs.get(range.clone()).ok_or_else(failed)?;
        let signatures = self.signatures.get(range.clone()).ok_or_else(failed)?;
        let keys = self.keys.get(range).ok_or_else(failed)?;
        if parts <= 1 || inputs.len() < 2 * MIN_ITEMS_PER_TASK {
            let messages: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            return ed25519_dalek::verify_batch(&messages, signatures, keys).map_err(|_| failed());
        }
        let chunk = inputs.len().div_ceil(parts).max(MIN_ITEMS_PER_TASK);
        inputs
            .par_chunks(chunk)
            .zip(signatures.par_chunks(chunk))
            .zip(keys.par_chunks(chunk))
            .try_for_each(|((inputs, signatures), keys)| {
                let messages: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
                ed25519_dalek::verify_batch(&messages, signatures, keys).map_err(|_| failed())
            })
    }
}

/// One session's envelopes in an [`unseal_across`] call.
#[derive(Debug)]
pub struct SessionBatch<'a, E> {
    pub session: &'a mut Session,
    pub ours: &'a IdentityKeyPair,
    pub envelopes: &'a [E],
}

/// Unseals the batches of several sessions in one call, with one Ed25519 batch verification
/// over all their signatures: a few messages per session would otherwise each pay a large
/// share of a batch's fixed cost. Result `i` is exactly what
/// `batches[i].session.unseal_many(ours, envelopes)` would have returned, and each session is
/// left as that call would have left it: when the joint check fails, each session's signatures
/// are checked alone, and a batch that does not authenticate takes the per-message path,
/// whatever the other batches hold. The check runs on the calling thread: a process hosting
/// many agents has other work for its cores (its network thread, other workers), and handing
/// half a pass's signatures to another core cost more CPU per message than it saved there
/// (measured with 200 agents per process on two cores: about 2.5 µs more per message).
pub fn unseal_across<E: AsRef<Envelope> + Sync>(
    batches: &mut [SessionBatch<'_, E>],
) -> Vec<Vec<Result<Opened>>> {
    let (staged, signatures) = stage_across(batches);
    finish_across(batches, staged, &signatures)
}

/// A batch of [`unseal_across`] staged, with the range of its signatures in the joint check.
type StagedAcross = Option<(StagedBatch, Range<usize>)>;

/// Stages every batch that can take the fast path and gathers their signatures.
fn stage_across<E: AsRef<Envelope> + Sync>(
    batches: &[SessionBatch<'_, E>],
) -> (Vec<StagedAcross>, BatchSignatures) {
    let mut signatures = BatchSignatures::default();
    let staged = batches
        .iter()
        .map(|b| {
            let staged = b.session.stage_batch(b.ours, b.envelopes)?;
            let start = signatures.len();
            b.session
                .collect_signatures(b.envelopes, &staged, &mut signatures)
                .ok()?;
            Some((staged, start..signatures.len()))
        })
        .collect();
    (staged, signatures)
}

/// Checks the gathered signatures together (each batch's alone if that fails), commits every
/// staged batch that authenticated and unseals every other batch one message at a time.
fn finish_across<E: AsRef<Envelope> + Sync>(
    batches: &mut [SessionBatch<'_, E>],
    staged: Vec<StagedAcross>,
    signatures: &BatchSignatures,
) -> Vec<Vec<Result<Opened>>> {
    let all_authentic = signatures.verify_here(0..signatures.len()).is_ok();
    let signed_batches = staged
        .iter()
        .flatten()
        .filter(|(_, range)| !range.is_empty())
        .count();
    batches
        .iter_mut()
        .zip(staged)
        .map(|(b, staged)| {
            if let Some((staged, range)) = staged {
                // With one signed batch, the joint check was already its own.
                let authentic = all_authentic
                    || range.is_empty()
                    || (signed_batches > 1 && signatures.verify_here(range).is_ok());
                if authentic {
                    return b.session.commit_batch(staged).into_iter().map(Ok).collect();
                }
            }
            b.session.unseal_each(b.ours, b.envelopes)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    /// A signed session pair, established both ways.
    fn established(peer_id: &str) -> (IdentityKeyPair, Session, IdentityKeyPair, Session) {
        let sender = IdentityKeyPair::generate(peer_id, &mut OsRng).unwrap();
        let receiver = IdentityKeyPair::generate("host", &mut OsRng).unwrap();
        let mut s = Session::new(&sender, receiver.public_bundle(), Mode::Signed).unwrap();
        let mut r = Session::new(&receiver, sender.public_bundle(), Mode::Signed).unwrap();
        let hello = s.seal(&sender, b"{}", 1, &mut OsRng).unwrap();
        r.unseal(&receiver, &hello).unwrap();
        let back = r.seal(&receiver, b"{}", 2, &mut OsRng).unwrap();
        s.unseal(&sender, &back).unwrap();
        (sender, s, receiver, r)
    }

    /// A signature that fails only the joint check (no public way makes a message with a valid
    /// AEAD and a wrong signature): the other signed batches are checked alone and commit, and
    /// the failing one takes the per-message path, which here opens its genuine envelopes.
    #[test]
    fn a_failed_joint_check_commits_the_batches_that_pass_alone() {
        let payloads: Vec<&[u8]> = vec![b"{\"a\":1}", b"{\"a\":2}", b"{\"a\":3}"];
        let mut pairs: Vec<_> = ["p0", "p1", "p2"]
            .iter()
            .map(|id| established(id))
            .collect();
        let envelopes: Vec<Vec<Envelope>> = pairs
            .iter_mut()
            .map(|(sender, s, _, _)| s.seal_many(sender, &payloads, 3, &mut OsRng).unwrap())
            .collect();
        let mut batches: Vec<SessionBatch<'_, Envelope>> = pairs
            .iter_mut()
            .zip(&envelopes)
            .map(|((_, _, receiver, r), envs)| SessionBatch {
                session: r,
                ours: receiver,
                envelopes: envs,
            })
            .collect();
        let (staged, mut signatures) = stage_across(&batches);
        let tampered = staged[1].as_ref().unwrap().1.start;
        signatures.signatures[tampered] = signatures.signatures[tampered + 1];
        assert!(signatures.verify(0..signatures.len()).is_err());
        let ranges: Vec<_> = staged
            .iter()
            .map(|s| s.as_ref().unwrap().1.clone())
            .collect();
        assert!(signatures.verify(ranges[0].clone()).is_ok());
        assert!(signatures.verify(ranges[1].clone()).is_err());
        assert!(signatures.verify(ranges[2].clone()).is_ok());
        let results = finish_across(&mut batches, staged, &signatures);
        for batch in &results {
            let opened: Vec<&[u8]> = batch
                .iter()
                .map(|r| r.as_ref().unwrap().payload())
                .collect();
            assert_eq!(opened, payloads);
        }
        // Every session moved on: the same envelopes again are replays.
        for (b, envs) in batches.iter_mut().zip(&envelopes) {
            assert!(b
                .session
                .unseal_many(b.ours, envs)
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| *e == Error::Replay)));
        }
    }
}
