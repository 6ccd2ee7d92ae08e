//! A session with one peer: the active Double Ratchet, a few archived ones (for messages still in
//! flight when the session was re-keyed), and the rules that decide which set-up wins when both
//! sides start a session at the same moment.

use std::collections::VecDeque;
use std::fmt;

use ed25519_dalek::VerifyingKey;
use rand_core::{CryptoRng, RngCore};

use crate::aead::{message_nonce, open_in_place, seal_separate_tag, TAG_LEN};
use crate::envelope::{Envelope, Header, MessageType};
use crate::error::{Error, Result};
use crate::handshake::{initiate, respond, Mode};
use crate::kdf::MessageKey;
use crate::keys::{verify_labelled, IdentityKeyPair, PublicBundle};
use crate::labels;
use crate::ratchet::{Ratchet, Role};

/// Ratchets of superseded set-ups kept to decrypt their late messages.
pub const MAX_ARCHIVED_SESSIONS: usize = 4;
/// Session ids remembered after their ratchet is gone, so a replayed prekey message is a replay.
pub const MAX_REMEMBERED_SESSIONS: usize = 64;
/// Length of the Ed25519 signature that opens a signed message's plaintext.
pub const SIGNATURE_LEN: usize = 64;

/// The input of a message signature: label, the full header (associated data), content digest.
/// The content is hashed once with BLAKE3 (collision resistant, and several times faster than
/// SHA-256 on long payloads), so Ed25519 never hashes the payload itself.
pub(crate) fn message_signing_input(associated_data: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(labels::SIG_MESSAGE.len() + associated_data.len() + 32);
    input.extend_from_slice(labels::SIG_MESSAGE);
    input.extend_from_slice(associated_data);
    input.extend_from_slice(blake3::hash(payload).as_bytes());
    input
}

/// A decrypted, authenticated message.
#[derive(Debug)]
pub struct Opened {
    plaintext: Vec<u8>,
    payload_offset: usize,
    /// The one-time prekey this message's set-up used; the caller must forget it.
    pub consumed_one_time_prekey: Option<u32>,
}

impl Opened {
    pub(crate) fn new(plaintext: Vec<u8>, payload_offset: usize) -> Self {
        Self {
            plaintext,
            payload_offset,
            consumed_one_time_prekey: None,
        }
    }

    pub fn payload(&self) -> &[u8] {
        self.plaintext
            .get(self.payload_offset..)
            .unwrap_or_default()
    }
}

/// Decrypts an envelope with its message key and, in signed mode, checks the signature.
pub(crate) fn decrypt(mk: &MessageKey, env: &Envelope) -> Result<Vec<u8>> {
    let mut plain = env.ciphertext().to_vec();
    let len = open_in_place(
        mk,
        message_nonce(env.header().counter),
        env.associated_data(),
        &mut plain,
    )?;
    plain.truncate(len);
    Ok(plain)
}

pub(crate) fn check_signature(
    signer: Option<&VerifyingKey>,
    env: &Envelope,
    plain: &[u8],
) -> Result<usize> {
    let Some(key) = signer else { return Ok(0) };
    let (sig, payload) = split_signature(plain)?;
    verify_labelled(
        key,
        &[],
        &message_signing_input(env.associated_data(), payload),
        &sig,
        "message signature does not match the sender's identity key",
    )?;
    Ok(SIGNATURE_LEN)
}

pub(crate) fn split_signature(plain: &[u8]) -> Result<([u8; 64], &[u8])> {
    if plain.len() < SIGNATURE_LEN {
        return Err(Error::Signature(
            "signed message is shorter than a signature",
        ));
    }
    let (sig, payload) = plain.split_at(SIGNATURE_LEN);
    let mut out = [0u8; 64];
    out.copy_from_slice(sig);
    Ok((out, payload))
}

/// An end-to-end session between the local agent and one peer.
pub struct Session {
    pub(crate) mode: Mode,
    pub(crate) local_id: String,
    pub(crate) local_identity_key: [u8; 32],
    pub(crate) peer: PublicBundle,
    pub(crate) active: Option<Box<Ratchet>>,
    pub(crate) archived: VecDeque<Box<Ratchet>>,
    pub(crate) remembered: VecDeque<[u8; 16]>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("local_id", &self.local_id)
            .field("peer_id", &self.peer.agent_id())
            .field("mode", &self.mode)
            .field("established", &self.is_established())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session with `peer`; nothing is sent or derived until the first seal or unseal.
    pub fn new(ours: &IdentityKeyPair, peer: PublicBundle, mode: Mode) -> Result<Self> {
        if ours.is_self(&peer) {
            return Err(Error::Identity(
                "an agent cannot open a session with itself",
            ));
        }
        Ok(Self {
            mode,
            local_id: ours.agent_id().to_owned(),
            local_identity_key: ours.identity_key(),
            peer,
            active: None,
            archived: VecDeque::new(),
            remembered: VecDeque::new(),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn local_id(&self) -> &str {
        &self.local_id
    }
    pub fn peer(&self) -> &PublicBundle {
        &self.peer
    }
    /// True once a message from the peer on the active set-up has been accepted.
    pub fn is_established(&self) -> bool {
        self.active.as_ref().is_some_and(|r| {
            r.role
                != Role::Initiator {
                    acknowledged: false,
                }
        })
    }

    fn signer(&self) -> Option<&VerifyingKey> {
        match self.mode {
            Mode::Signed => Some(&self.peer.identity_key),
            Mode::Deniable => None,
        }
    }

    pub(crate) fn check_local(&self, ours: &IdentityKeyPair) -> Result<()> {
        if !ours.may_act_as(&self.local_id) || ours.identity_key() != self.local_identity_key {
            return Err(Error::Identity(
                "the keypair is not this session's local identity",
            ));
        }
        Ok(())
    }

    /// Checks what the header claims against the session before any key is derived.
    pub(crate) fn check_header(&self, h: &Header) -> Result<()> {
        if h.sender != self.peer.agent_id() {
            return Err(Error::Identity(
                "envelope sender is not this session's peer",
            ));
        }
        if h.recipient != self.local_id {
            return Err(Error::Identity("envelope recipient is not this agent"));
        }
        match (self.mode, h.signed) {
            (Mode::Signed, false) => Err(Error::Signature(
                "unsigned message in a signed session (downgrade refused)",
            )),
            (Mode::Deniable, true) => Err(Error::Format("signed message in a deniable session")),
            _ => Ok(()),
        }
    }

    fn remember(&mut self, session_id: [u8; 16]) {
        if self.remembered.contains(&session_id) {
            return;
        }
        if self.remembered.len() >= MAX_REMEMBERED_SESSIONS {
            self.remembered.pop_front();
        }
        self.remembered.push_back(session_id);
    }

    fn archive(&mut self, ratchet: Box<Ratchet>) {
        if self.archived.len() >= MAX_ARCHIVED_SESSIONS {
            self.archived.pop_front();
        }
        self.archived.push_back(ratchet);
    }

    /// The active ratchet, starting a set-up as initiator if there is none yet.
    pub(crate) fn sending_ratchet<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        rng: &mut R,
    ) -> Result<&mut Ratchet> {
        if self.active.is_none() {
            let (setup, initiation) = initiate(self.mode, ours, &self.local_id, &self.peer, rng)?;
            let ratchet = Ratchet::new_initiator(
                setup.session_id,
                initiation,
                setup.root,
                self.peer.signed_prekey,
                rng,
            )?;
            self.remember(setup.session_id);
            self.active = Some(Box::new(ratchet));
        }
        let ratchet = self
            .active
            .as_deref_mut()
            .ok_or(Error::InvalidInput("no active session"))?;
        ratchet.ensure_sending_chain(rng)?;
        Ok(ratchet)
    }

    /// The header of the next message of `ratchet` (its counter is the chain's next one).
    pub(crate) fn next_header(&self, ratchet: &Ratchet, counter: u32, timestamp_ms: u64) -> Header {
        let awaiting = ratchet.awaiting_answer();
        Header {
            message_type: if awaiting {
                MessageType::Prekey
            } else {
                MessageType::Ratchet
            },
            signed: self.mode == Mode::Signed,
            sender: self.local_id.clone(),
            recipient: self.peer.agent_id().to_owned(),
            session_id: ratchet.session_id,
            timestamp_ms,
            ratchet_key: ratchet.our_ratchet_public,
            previous_chain_length: ratchet.previous_send_counter,
            counter,
            initiation: awaiting.then_some(ratchet.initiation),
        }
    }

    /// Encrypts (and in signed mode signs) `payload` for the peer.
    pub fn seal<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        payload: &[u8],
        timestamp_ms: u64,
        rng: &mut R,
    ) -> Result<Envelope> {
        self.check_local(ours)?;
        self.sending_ratchet(ours, rng)?;
        let ratchet = self
            .active
            .as_deref()
            .ok_or(Error::InvalidInput("no active session"))?;
        let (mk, next_chain, counter) = ratchet.next_send()?;
        let header = self.next_header(ratchet, counter, timestamp_ms);
        let envelope = encrypt_message(ours, header, &mk, payload)?;
        if let Some(r) = self.active.as_deref_mut() {
            r.commit_send(next_chain);
        }
        Ok(envelope)
    }

    /// Where the ratchet of `session_id` is: 0 is the active one, i + 1 the archived i.
    pub(crate) fn locate(&self, session_id: &[u8; 16]) -> Option<usize> {
        if self
            .active
            .as_ref()
            .is_some_and(|r| &r.session_id == session_id)
        {
            return Some(0);
        }
        self.archived
            .iter()
            .position(|r| &r.session_id == session_id)
            .map(|i| i + 1)
    }

    pub(crate) fn ratchet_at(&self, slot: usize) -> Option<&Ratchet> {
        match slot {
            0 => self.active.as_deref(),
            i => self.archived.get(i - 1).map(|b| &**b),
        }
    }

    fn ratchet_at_mut(&mut self, slot: usize) -> Option<&mut Ratchet> {
        match slot {
            0 => self.active.as_deref_mut(),
            i => self.archived.get_mut(i - 1).map(|b| &mut **b),
        }
    }

    /// Decrypts and authenticates an envelope from the peer. On any error the session is
    /// exactly as it was before the call.
    pub fn unseal(&mut self, ours: &IdentityKeyPair, env: &Envelope) -> Result<Opened> {
        if self.has_open_ids() {
            return self.unseal_fixing_ids(ours, env);
        }
        self.check_local(ours)?;
        let h = env.header();
        self.check_header(h)?;
        if let Some(slot) = self.locate(&h.session_id) {
            let ratchet = self.ratchet_at(slot).ok_or(Error::Authentication)?;
            check_message_type(ratchet, h)?;
            let plan = ratchet.plan_receive(h)?;
            let plain = decrypt(&plan.message_key, env)?;
            let offset = check_signature(self.signer(), env, &plain)?;
            if let Some(r) = self.ratchet_at_mut(slot) {
                r.commit_receive(h, plan);
                if h.message_type == MessageType::Ratchet
                    && r.role
                        == (Role::Initiator {
                            acknowledged: false,
                        })
                {
                    r.role = Role::Initiator { acknowledged: true };
                }
            }
            return Ok(Opened {
                plaintext: plain,
                payload_offset: offset,
                consumed_one_time_prekey: None,
            });
        }
        if self.remembered.contains(&h.session_id) {
            return Err(Error::Replay);
        }
        // Not a session we know: only a prekey message can start one.
        let initiation = h.initiation.ok_or(Error::Authentication)?;
        let (setup, signed_prekey) =
            respond(self.mode, ours, &self.local_id, &self.peer, &initiation)?;
        if setup.session_id != h.session_id {
            return Err(Error::Authentication);
        }
        let mut ratchet =
            Ratchet::new_responder(setup.session_id, initiation, setup.root, signed_prekey);
        let plan = ratchet.plan_receive(h)?;
        let plain = decrypt(&plan.message_key, env)?;
        let offset = check_signature(self.signer(), env, &plain)?;
        ratchet.commit_receive(h, plan);
        self.adopt(Box::new(ratchet), h.timestamp_ms);
        Ok(Opened {
            plaintext: plain,
            payload_offset: offset,
            consumed_one_time_prekey: (initiation.one_time_prekey_id != 0)
                .then_some(initiation.one_time_prekey_id),
        })
    }

    /// Decides whether an authenticated set-up from the peer becomes the active session.
    /// - no active session: it does;
    /// - our own set-up is still unanswered (both sides started at once): the set-up with the
    ///   smaller session id wins, on both sides, so they converge;
    /// - an established session: the peer re-keyed (for example after losing its state), unless
    ///   the set-up is older than the newest message it sent us on the current one (a late
    ///   message of a set-up it abandoned).
    fn adopt(&mut self, incoming: Box<Ratchet>, timestamp_ms: u64) {
        self.remember(incoming.session_id);
        let wins = match &self.active {
            None => true,
            Some(current) if current.awaiting_answer() => incoming.session_id < current.session_id,
            Some(current) => timestamp_ms >= current.last_peer_timestamp,
        };
        if wins {
            if let Some(previous) = self.active.replace(incoming) {
                self.archive(previous);
            }
        } else {
            self.archive(incoming);
        }
    }
}

/// A prekey message is only valid from a session's initiator, and must repeat its set-up exactly.
pub(crate) fn check_message_type(ratchet: &Ratchet, h: &Header) -> Result<()> {
    match (ratchet.role, h.message_type, h.initiation) {
        (Role::Initiator { .. }, MessageType::Prekey, _) => Err(Error::Format(
            "prekey message for a session this agent started",
        )),
        (Role::Responder, MessageType::Prekey, Some(init)) if init != ratchet.initiation => {
            Err(Error::Authentication)
        }
        _ => Ok(()),
    }
}

/// Builds the envelope: header, then signature and payload encrypted in the same buffer.
pub(crate) fn encrypt_message(
    ours: &IdentityKeyPair,
    header: Header,
    mk: &MessageKey,
    payload: &[u8],
) -> Result<Envelope> {
    let sig_len = if header.signed { SIGNATURE_LEN } else { 0 };
    let ct_len = sig_len + payload.len() + TAG_LEN;
    let mut buf = header.encode(ct_len, ct_len)?;
    let ad_len = buf.len();
    if header.signed {
        let sig = ours.sign_labelled(&[], &message_signing_input(&buf, payload));
        buf.extend_from_slice(&sig);
    }
    buf.extend_from_slice(payload);
    let (ad, body) = buf.split_at_mut(ad_len);
    let tag = seal_separate_tag(mk, message_nonce(header.counter), ad, body)?;
    buf.extend_from_slice(&tag);
    Ok(Envelope::from_parts(buf, header, ad_len))
}
