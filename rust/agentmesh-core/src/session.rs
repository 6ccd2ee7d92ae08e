//! A session with one peer: the active Double Ratchet, a few archived ones (for messages still in
//! flight when the session was re-keyed), and the rules that decide which set-up wins when both
//! sides start a session at the same moment.

use std::collections::VecDeque;
use std::fmt;

use ed25519_dalek::VerifyingKey;
use rand_core::{CryptoRng, RngCore};

use crate::aead::{message_nonce, open_in_place, seal_separate_tag, TAG_LEN};
use crate::envelope::{Envelope, Header, Initiation, MessageType};
use crate::error::{Error, Result};
use crate::handshake::{initiate, respond, Mode};
use crate::kdf::MessageKey;
use crate::keys::{verify_labelled, IdentityKeyPair, PublicBundle};
use crate::labels;
use crate::payload::Payload;
use crate::ratchet::{Ratchet, Role, MAX_SKIPPED_KEYS};

/// Ratchets of superseded set-ups kept to decrypt their late messages.
pub const MAX_ARCHIVED_SESSIONS: usize = 4;
/// Session ids remembered after their ratchet is gone, so a replayed prekey message is a replay.
pub const MAX_REMEMBERED_SESSIONS: usize = 64;
/// Length of the Ed25519 signature that opens a signed message's plaintext.
pub const SIGNATURE_LEN: usize = 64;

/// The input of a message signature: label, the full header (associated data), content digest.
/// The content is hashed once with BLAKE3 (collision resistant, and several times faster than
/// SHA-256 on long payloads), so Ed25519 never hashes the payload itself.
pub fn message_signing_input(associated_data: &[u8], payload: &[u8]) -> Vec<u8> {
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
    accepted_setup: Option<Initiation>,
}

impl Opened {
    pub(crate) fn new(plaintext: Vec<u8>, payload_offset: usize) -> Self {
        Self {
            plaintext,
            payload_offset,
            accepted_setup: None,
        }
    }

    pub fn payload(&self) -> &[u8] {
        self.plaintext
            .get(self.payload_offset..)
            .unwrap_or_default()
    }

    /// The set-up this message started, if it started one: the caller must pass the message to
    /// [`IdentityKeyPair::settle`] (which forgets its one-time prekey and remembers its base key).
    pub fn accepted_setup(&self) -> Option<&Initiation> {
        self.accepted_setup.as_ref()
    }

    /// The one-time prekey this message's set-up used, if any.
    pub fn consumed_one_time_prekey(&self) -> Option<u32> {
        self.accepted_setup
            .as_ref()
            .map(|i| i.one_time_prekey_id)
            .filter(|id| *id != 0)
    }
}

/// Decrypts an envelope with its message key, into a copy of its ciphertext.
pub(crate) fn decrypt(mk: &MessageKey, env: &Envelope) -> Result<Vec<u8>> {
    let parts = MessageParts {
        header: env.header(),
        associated_data: env.associated_data(),
    };
    match parts.decrypt(mk, Ciphertext::Borrowed(env.ciphertext()))? {
        Plaintext::Copied(plain) => Ok(plain),
        Plaintext::InPlace(plain) => Ok(plain.to_vec()),
    }
}

/// Where an incoming message is decrypted: into a copy of the ciphertext of an envelope the
/// caller keeps, or in place in the buffer of one it gave up ([`Session::unseal_owned`]: a
/// large message then costs no copy of itself).
pub(crate) enum Ciphertext<'a> {
    Borrowed(&'a [u8]),
    InPlace(&'a mut [u8]),
}

pub(crate) enum Plaintext<'a> {
    Copied(Vec<u8>),
    InPlace(&'a [u8]),
}

impl Plaintext<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Plaintext::Copied(v) => v,
            Plaintext::InPlace(s) => s,
        }
    }
}

/// What unsealing reads of an envelope besides its ciphertext.
#[derive(Clone, Copy)]
pub(crate) struct MessageParts<'a> {
    pub(crate) header: &'a Header,
    pub(crate) associated_data: &'a [u8],
}

impl MessageParts<'_> {
    fn decrypt<'c>(&self, mk: &MessageKey, ciphertext: Ciphertext<'c>) -> Result<Plaintext<'c>> {
        let nonce = message_nonce(self.header.counter);
        match ciphertext {
            Ciphertext::Borrowed(ct) => {
                let mut plain = ct.to_vec();
                let len = open_in_place(mk, nonce, self.associated_data, &mut plain)?;
                plain.truncate(len);
                Ok(Plaintext::Copied(plain))
            }
            Ciphertext::InPlace(buf) => {
                let len = open_in_place(mk, nonce, self.associated_data, buf)?;
                let plain: &'c [u8] = buf;
                // (AEAD returns a length within the buffer; if not, nothing is accepted)
                Ok(Plaintext::InPlace(
                    plain.get(..len).ok_or(Error::Authentication)?,
                ))
            }
        }
    }

    /// In signed mode, checks the signature; returns where the payload starts in `plain`.
    fn check_signature(&self, signer: Option<&VerifyingKey>, plain: &[u8]) -> Result<usize> {
        let Some(key) = signer else { return Ok(0) };
        let (sig, payload) = split_signature(plain)?;
        verify_labelled(
            key,
            &[],
            &message_signing_input(self.associated_data, payload),
            &sig,
            "message signature does not match the sender's identity key",
        )?;
        Ok(SIGNATURE_LEN)
    }
}

/// An accepted message before it becomes an [`Opened`].
pub(crate) struct Accepted<'a> {
    plaintext: Plaintext<'a>,
    payload_offset: usize,
    accepted_setup: Option<Initiation>,
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
    /// Set when the session was loaded from an export: the state may be older than what was
    /// already sent (a snapshot or backup restored, a lost write), so its sending chain may
    /// hold message keys used before. The next send starts a new set-up instead (not stored).
    pub(crate) new_setup_before_send: bool,
    /// Whether the peer's bundle came from [`Session::refresh_peer`] since the session was
    /// made or loaded (not stored).
    pub(crate) peer_refreshed: bool,
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
            new_setup_before_send: false,
            peer_refreshed: false,
        })
    }

    /// Replaces the peer's bundle kept for the next set-up (a newer signed prekey, a one-time
    /// prekey a hub handed out). It must be the same agent with the same identity key.
    pub fn refresh_peer(&mut self, bundle: PublicBundle) -> Result<()> {
        if bundle.agent_id() != self.peer.agent_id()
            || bundle.identity_key() != self.peer.identity_key()
        {
            return Err(Error::Identity(
                "the new bundle is not this session's peer (other id or identity key)",
            ));
        }
        self.peer = bundle;
        self.peer_refreshed = true;
        Ok(())
    }

    /// True when the next seal starts a new set-up because the state was loaded from an export.
    pub fn renews_on_send(&self) -> bool {
        self.new_setup_before_send
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
        if self.new_setup_before_send {
            // A rolled-back state must never seal under a key it used before: a new set-up has
            // fresh keys whatever happened since the export, and the peer adopts it (its
            // messages on the old set-up still open, from the archive).
            if let Some(previous) = self.active.take() {
                self.archive(previous);
            }
            if !self.peer_refreshed {
                // (an export made before used one-time prekeys were dropped from the kept
                // bundle may still name one; it served its set-up)
                self.peer.one_time_prekey = None;
            }
            self.new_setup_before_send = false;
        }
        if self.active.is_none() {
            let (setup, initiation) = initiate(self.mode, ours, &self.local_id, &self.peer, rng)?;
            // a one-time prekey serves one set-up only
            self.peer.one_time_prekey = None;
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
        self.seal_payload(ours, &Payload::plain(payload), timestamp_ms, rng)
    }

    /// [`Session::seal`] of a payload laid out straight into the envelope (a framed payload's
    /// binary values are copied once).
    pub fn seal_payload<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        payload: &Payload<'_>,
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
        let parts = MessageParts {
            header: env.header(),
            associated_data: env.associated_data(),
        };
        let accepted = self.unseal_parts(ours, parts, Ciphertext::Borrowed(env.ciphertext()))?;
        let plaintext = match accepted.plaintext {
            Plaintext::Copied(plain) => plain,
            Plaintext::InPlace(plain) => plain.to_vec(),
        };
        Ok(Opened {
            plaintext,
            payload_offset: accepted.payload_offset,
            accepted_setup: accepted.accepted_setup,
        })
    }

    /// [`Session::unseal`] of an envelope the caller no longer needs (one just parsed from wire
    /// bytes): the message is decrypted in the envelope's own buffer, not in a copy of it.
    pub fn unseal_owned(&mut self, ours: &IdentityKeyPair, env: Envelope) -> Result<Opened> {
        let body_offset = env.associated_data().len();
        let (header, mut bytes) = env.into_header_and_bytes();
        let (associated_data, body) = bytes.split_at_mut(body_offset);
        let parts = MessageParts {
            header: &header,
            associated_data,
        };
        let accepted = self.unseal_parts(ours, parts, Ciphertext::InPlace(body))?;
        let plain_len = accepted.plaintext.as_slice().len();
        let (payload_offset, accepted_setup) = (accepted.payload_offset, accepted.accepted_setup);
        bytes.truncate(body_offset + plain_len);
        Ok(Opened {
            plaintext: bytes,
            payload_offset: body_offset + payload_offset,
            accepted_setup,
        })
    }

    pub(crate) fn unseal_parts<'c>(
        &mut self,
        ours: &IdentityKeyPair,
        parts: MessageParts<'_>,
        ciphertext: Ciphertext<'c>,
    ) -> Result<Accepted<'c>> {
        if self.has_open_ids() {
            return self.unseal_fixing_ids(ours, parts, ciphertext);
        }
        self.check_local(ours)?;
        let h = parts.header;
        self.check_header(h)?;
        if let Some(slot) = self.locate(&h.session_id) {
            let ratchet = self.ratchet_at(slot).ok_or(Error::Authentication)?;
            check_message_type(ratchet, h)?;
            let plan = ratchet.plan_receive(h)?;
            let plain = parts.decrypt(&plan.message_key, ciphertext)?;
            let offset = parts.check_signature(self.signer(), plain.as_slice())?;
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
            self.trim_skipped_keys();
            return Ok(Accepted {
                plaintext: plain,
                payload_offset: offset,
                accepted_setup: None,
            });
        }
        if self.remembered.contains(&h.session_id) {
            return Err(Error::Replay);
        }
        // Not a session we know: only a prekey message can start one.
        let initiation = h.initiation.ok_or(Error::Authentication)?;
        ours.check_new_setup(&initiation)?;
        let (setup, signed_prekey) =
            respond(self.mode, ours, &self.local_id, &self.peer, &initiation)?;
        if setup.session_id != h.session_id {
            return Err(Error::Authentication);
        }
        let mut ratchet =
            Ratchet::new_responder(setup.session_id, initiation, setup.root, signed_prekey);
        let plan = ratchet.plan_receive(h)?;
        let plain = parts.decrypt(&plan.message_key, ciphertext)?;
        let offset = parts.check_signature(self.signer(), plain.as_slice())?;
        ratchet.commit_receive(h, plan);
        self.adopt(Box::new(ratchet), h.timestamp_ms);
        self.trim_skipped_keys();
        Ok(Accepted {
            plaintext: plain,
            payload_offset: offset,
            accepted_setup: Some(initiation),
        })
    }

    /// Keeps the skipped keys of all the session's ratchets together within
    /// [`MAX_SKIPPED_KEYS`]: the archived set-ups (oldest first) give theirs up before the
    /// active one, so a peer that starts set-up after set-up cannot multiply the bound.
    pub(crate) fn trim_skipped_keys(&mut self) {
        let mut total: usize = self
            .archived
            .iter()
            .map(|r| r.skipped.len())
            .chain(self.active.as_ref().map(|r| r.skipped.len()))
            .sum();
        let ratchets = self
            .archived
            .iter_mut()
            .chain(self.active.as_mut())
            .map(|r| &mut r.skipped);
        for skipped in ratchets {
            if total <= MAX_SKIPPED_KEYS {
                break;
            }
            total -= skipped.drop_oldest(total - MAX_SKIPPED_KEYS);
        }
    }

    /// Decides whether an authenticated set-up from the peer becomes the active session.
    /// - no active session: it does;
    /// - our own set-up is still unanswered (both sides started at once): the set-up with the
    ///   smaller session id wins, on both sides, so they converge;
    /// - an established session: the peer re-keyed (for example after losing its state, or
    ///   after a restart: see `new_setup_before_send`), unless the set-up is older than the
    ///   newest message it sent us on the current one: then it never replaces the current
    ///   one, and is archived (a late message of a set-up the peer abandoned, for example the
    ///   loser of a simultaneous start that a hub delayed, still opens). A *replay* of a set-up
    ///   never gets here: the identity's set-up memory refuses it first.
    fn adopt(&mut self, incoming: Box<Ratchet>, timestamp_ms: u64) {
        let wins = match &self.active {
            None => true,
            // (a loaded set-up is given up at our next send anyway: the peer's fresh one wins,
            // or two restarted sides could each keep waiting for an answer to their own)
            Some(current) if current.awaiting_answer() && !self.new_setup_before_send => {
                incoming.session_id < current.session_id
            }
            Some(current) => timestamp_ms >= current.last_peer_timestamp,
        };
        self.remember(incoming.session_id);
        if wins {
            if let Some(previous) = self.active.replace(incoming) {
                self.archive(previous);
            }
            // the active set-up is new, not loaded: sending on it reuses nothing
            self.new_setup_before_send = false;
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

/// Builds the envelope: header, then signature and payload encrypted in the same buffer. The
/// payload is written into it first (its one copy) and signed where it lies.
pub(crate) fn encrypt_message(
    ours: &IdentityKeyPair,
    header: Header,
    mk: &MessageKey,
    payload: &Payload<'_>,
) -> Result<Envelope> {
    let sig_len = if header.signed { SIGNATURE_LEN } else { 0 };
    let ct_len = sig_len + payload.len() + TAG_LEN;
    let mut buf = header.encode(ct_len, ct_len)?;
    let ad_len = buf.len();
    buf.resize(ad_len + sig_len, 0);
    payload.write_into(&mut buf);
    if header.signed {
        let (ad, rest) = buf.split_at_mut(ad_len);
        let (sig_slot, written) = rest
            .split_at_mut_checked(SIGNATURE_LEN)
            .ok_or(Error::InvalidInput("message layout"))?;
        let sig = ours.sign_labelled(&[], &message_signing_input(ad, written));
        sig_slot.copy_from_slice(&sig);
    }
    let (ad, body) = buf.split_at_mut(ad_len);
    let tag = seal_separate_tag(mk, message_nonce(header.counter), ad, body)?;
    buf.extend_from_slice(&tag);
    Ok(Envelope::from_parts(buf, header, ad_len))
}
