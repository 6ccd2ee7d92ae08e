//! Many messages of one session in one call: key derivation stays sequential (it is a chain),
//! while encryption, decryption and signatures run on every core, and signed messages are checked
//! with Ed25519 batch verification. A batch with any rejected envelope is replayed one message at
//! a time, so per-message results and the "state changes only after authentication" rule are
//! exactly those of [`Session::unseal`].

use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use rayon::prelude::*;

use crate::envelope::{Envelope, MessageType};
use crate::error::{Error, Result};
use crate::handshake::Mode;
use crate::kdf::chain_step;
use crate::keys::IdentityKeyPair;
use crate::payload::Payload;
use crate::ratchet::Role;
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
        if let Some(opened) = self.try_unseal_batch(ours, envelopes) {
            return opened.into_iter().map(Ok).collect();
        }
        envelopes
            .iter()
            .map(|env| self.unseal(ours, env.as_ref()))
            .collect()
    }

    /// The fast path: every envelope is a valid message of the active ratchet. `None` means
    /// "not this case", and nothing was changed.
    fn try_unseal_batch<E: AsRef<Envelope> + Sync>(
        &mut self,
        ours: &IdentityKeyPair,
        envelopes: &[E],
    ) -> Option<Vec<Opened>> {
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
        let offset = match self.mode {
            Mode::Signed => {
                verify_all(&self.peer.identity_key, envelopes, &plaintexts).ok()?;
                SIGNATURE_LEN
            }
            Mode::Deniable => 0,
        };
        if let Some(active) = self.active.as_deref_mut() {
            *active = staged;
        }
        self.trim_skipped_keys();
        Some(
            plaintexts
                .into_iter()
                .map(|p| Opened::new(p, offset))
                .collect(),
        )
    }
}

/// Ed25519 batch verification of every message signature, one batch per core.
fn verify_all<E: AsRef<Envelope> + Sync>(
    key: &VerifyingKey,
    envelopes: &[E],
    plaintexts: &[Vec<u8>],
) -> Result<()> {
    let chunk = envelopes
        .len()
        .div_ceil(rayon::current_num_threads().max(1))
        .max(MIN_ITEMS_PER_TASK);
    envelopes
        .par_chunks(chunk)
        .zip(plaintexts.par_chunks(chunk))
        .try_for_each(|(envs, plains)| {
            let mut inputs = Vec::with_capacity(envs.len());
            let mut sigs = Vec::with_capacity(envs.len());
            for (env, plain) in envs.iter().zip(plains) {
                let (sig, payload) = split_signature(plain)?;
                inputs.push(message_signing_input(
                    env.as_ref().associated_data(),
                    payload,
                ));
                sigs.push(Signature::from_bytes(&sig));
            }
            let messages: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            let keys = vec![*key; envs.len()];
            ed25519_dalek::verify_batch(&messages, &sigs, &keys)
                .map_err(|_| Error::Signature("batch verification failed"))
        })
}
