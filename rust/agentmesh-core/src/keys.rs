//! Long-term identity: the Ed25519 identity key, the X25519 exchange key, signed and one-time
//! prekeys, the self-certifying public bundle, and fingerprints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::envelope::Initiation;
use crate::error::{Error, Result};
use crate::labels;
use crate::session::Opened;

/// The `"v"` field of a bundle's JSON form (the dict hubs store and serve, docs/protocol.md):
/// the only version a bundle dict may carry. The glue converts the dict; the version is the
/// protocol's.
pub const BUNDLE_JSON_VERSION: u32 = 1;

/// Longest agent id in bytes (ids travel with a one-byte length prefix).
pub const MAX_AGENT_ID_LEN: usize = 255;
/// How many one-time prekeys an identity keeps at most.
pub const MAX_ONE_TIME_PREKEYS: usize = 10_000;
/// How many accepted set-ups a signed prekey remembers (their base keys, 32 bytes each), so that
/// a replayed set-up is refused even after its session was forgotten. At the limit the prekey
/// takes no new set-ups until it is rotated (agents rotate well before: `setups_remembered`).
pub const MAX_SETUPS_PER_SIGNED_PREKEY: usize = 20_000;

/// Why an agent id is refused (see [`agent_id_problem`]). The details let a binding say exactly
/// what is wrong without checking the id again itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentIdProblem {
    Empty,
    /// `bytes`: the id's length in UTF-8.
    TooLong {
        bytes: usize,
    },
    /// The first control character (Unicode category Cc) and its index in characters.
    ControlCharacter {
        index: usize,
        character: char,
    },
}

impl AgentIdProblem {
    /// The problem in a few words, without the id (ids may be chosen by an attacker).
    pub fn summary(self) -> &'static str {
        match self {
            AgentIdProblem::Empty => "agent id must not be empty",
            AgentIdProblem::TooLong { .. } => "agent id is longer than 255 UTF-8 bytes",
            AgentIdProblem::ControlCharacter { .. } => "agent id contains a control character",
        }
    }
}

/// The agent id rule, the one every layer applies: 1..=255 UTF-8 bytes (ids travel with a
/// one-byte length prefix), no control characters. `None` when `id` is valid.
pub fn agent_id_problem(id: &str) -> Option<AgentIdProblem> {
    if id.is_empty() {
        return Some(AgentIdProblem::Empty);
    }
    if id.len() > MAX_AGENT_ID_LEN {
        return Some(AgentIdProblem::TooLong { bytes: id.len() });
    }
    id.chars()
        .enumerate()
        .find(|(_, c)| c.is_control())
        .map(|(index, character)| AgentIdProblem::ControlCharacter { index, character })
}

/// Checks an agent id against [`agent_id_problem`].
pub fn check_agent_id(id: &str) -> Result<()> {
    match agent_id_problem(id) {
        None => Ok(()),
        Some(problem) => Err(Error::InvalidInput(problem.summary())),
    }
}

/// `xxxx:xxxx:...` (8 groups): the first 16 bytes of SHA-256 over the raw identity key.
pub fn fingerprint(identity_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(identity_key);
    let mut out = String::with_capacity(39);
    for (i, pair) in digest.chunks_exact(2).take(8).enumerate() {
        if i > 0 {
            out.push(':');
        }
        for b in pair {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// Parses an Ed25519 public key, refusing small-order ("weak") keys.
pub fn parse_identity_key(bytes: &[u8; 32]) -> Result<VerifyingKey> {
    let key = VerifyingKey::from_bytes(bytes)
        .map_err(|_| Error::Format("identity key is not a valid Ed25519 point"))?;
    if key.is_weak() {
        return Err(Error::Identity("identity key has small order"));
    }
    Ok(key)
}

/// Strict Ed25519 verification (canonical S, no small-order R or A) of a labelled message.
pub fn verify_labelled(
    key: &VerifyingKey,
    label: &[u8],
    message: &[u8],
    signature: &[u8; 64],
    what: &'static str,
) -> Result<()> {
    let sig = Signature::from_bytes(signature);
    let mut buf = Vec::with_capacity(label.len() + message.len());
    buf.extend_from_slice(label);
    buf.extend_from_slice(message);
    key.verify_strict(&buf, &sig)
        .map_err(|_| Error::Signature(what))
}

fn prekey_signature_input(
    agent_id: &str,
    identity_key: &[u8; 32],
    exchange_key: &[u8; 32],
    prekey_id: u32,
    prekey: &[u8; 32],
) -> Vec<u8> {
    let mut w = crate::wire::Writer::with_capacity(1 + agent_id.len() + 100);
    w.agent_id(agent_id);
    w.bytes(identity_key);
    w.bytes(exchange_key);
    w.u32(prekey_id);
    w.bytes(prekey);
    w.buf
}

/// Size of a hub id (the random id of a hub's store, sent in WELCOME).
pub const HUB_ID_LEN: usize = 16;
/// Size of a hub's registration challenge and of the client's nonce.
pub const REGISTRATION_NONCE_LEN: usize = 32;

/// Everything a registration proof is bound to besides the bundle.
///
/// Signed input (after the label `agentmesh/v1/sig/hub-registration\0`):
/// `id(agent_id) || hub_id(16) || challenge(32) || client_nonce(32) ||
/// SHA-256(bundle bytes without a one-time prekey)(32) || u8 channel kind || channel binding`,
/// channel kind 0 with no binding bytes (plain TCP) or 1 followed by the 32-byte SHA-256 of
/// the hub's TLS certificate (DER). A hub that relays another hub's challenge cannot use the
/// answer there: the other hub's id or certificate differs. The bundle digest stops a hub (or
/// anyone in the middle) from registering another bundle, even one of the same identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub hub_id: [u8; HUB_ID_LEN],
    pub challenge: [u8; REGISTRATION_NONCE_LEN],
    pub client_nonce: [u8; REGISTRATION_NONCE_LEN],
    /// SHA-256 of the hub's TLS certificate as the client saw it (`None` without TLS).
    pub tls_certificate_sha256: Option<[u8; 32]>,
}

impl Registration {
    fn signature_input(&self, bundle: &PublicBundle) -> Vec<u8> {
        // The one-time prekey is not the registrant's statement (a hub attaches it), so the
        // digest covers the signed part only.
        let signed_part = bundle.clone().with_one_time_prekey(None).to_bytes();
        let mut w = crate::wire::Writer::with_capacity(1 + bundle.agent_id.len() + 150);
        w.agent_id(&bundle.agent_id);
        w.bytes(&self.hub_id);
        w.bytes(&self.challenge);
        w.bytes(&self.client_nonce);
        w.bytes(&Sha256::digest(&signed_part));
        match &self.tls_certificate_sha256 {
            None => w.u8(0),
            Some(cert) => {
                w.u8(1);
                w.bytes(cert);
            }
        }
        w.buf
    }
}

/// A medium-term X25519 prekey signed by the identity key.
pub struct SignedPrekey {
    pub(crate) id: u32,
    pub(crate) secret: StaticSecret,
    pub(crate) public: [u8; 32],
    pub(crate) signature: [u8; 64],
    /// Base keys of the set-ups accepted with this prekey: forgotten only with the prekey itself,
    /// since a set-up can be recomputed (and so replayed) exactly as long as the prekey exists.
    pub(crate) accepted_setups: BTreeSet<[u8; 32]>,
}

impl fmt::Debug for SignedPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPrekey")
            .field("id", &self.id)
            .field("accepted_setups", &self.accepted_setups.len())
            .finish_non_exhaustive()
    }
}

/// An agent's private identity. Secrets zeroize on drop; `Debug` prints only public facts.
pub struct IdentityKeyPair {
    pub(crate) agent_id: String,
    pub(crate) signing: Box<SigningKey>,
    pub(crate) exchange: StaticSecret,
    pub(crate) exchange_public: [u8; 32],
    pub(crate) signed_prekey: SignedPrekey,
    pub(crate) previous_signed_prekey: Option<SignedPrekey>,
    pub(crate) one_time_prekeys: BTreeMap<u32, StaticSecret>,
    pub(crate) next_prekey_id: u32,
    /// Counts changes that the identity file must receive (not stored).
    pub(crate) revision: u64,
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("agent_id", &self.agent_id)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl IdentityKeyPair {
    /// A new identity bound to `agent_id`: its bundle's signature covers the id.
    pub fn generate<R: RngCore + CryptoRng>(agent_id: &str, rng: &mut R) -> Result<Self> {
        check_agent_id(agent_id)?;
        Ok(Self::generate_with_id(agent_id, rng))
    }

    /// A new identity with no agent id (`AgentKeyPair()` of the original AgentMesh): its bundle's
    /// signature covers the empty id, and each session fixes the ids it is used under
    /// (docs/protocol.md, section 2).
    pub fn generate_unbound<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::generate_with_id("", rng)
    }

    fn generate_with_id<R: RngCore + CryptoRng>(agent_id: &str, rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *seed);
        let signing = Box::new(SigningKey::from_bytes(&seed));
        let exchange = StaticSecret::random_from_rng(&mut *rng);
        let exchange_public = crate::x25519::public_key(&exchange);
        let mut kp = Self {
            agent_id: agent_id.to_owned(),
            signing,
            exchange,
            exchange_public,
            signed_prekey: SignedPrekey {
                id: 0,
                secret: StaticSecret::from([0u8; 32]),
                public: [0u8; 32],
                signature: [0u8; 64],
                accepted_setups: BTreeSet::new(),
            },
            previous_signed_prekey: None,
            one_time_prekeys: BTreeMap::new(),
            next_prekey_id: 1,
            revision: 0,
        };
        kp.signed_prekey = kp.new_signed_prekey(rng);
        kp
    }

    fn take_prekey_id(&mut self) -> u32 {
        let id = self.next_prekey_id;
        self.next_prekey_id = self.next_prekey_id.wrapping_add(1).max(1);
        id
    }

    fn new_signed_prekey<R: RngCore + CryptoRng>(&mut self, rng: &mut R) -> SignedPrekey {
        let id = self.take_prekey_id();
        let secret = StaticSecret::random_from_rng(&mut *rng);
        let public = crate::x25519::public_key(&secret);
        let signature = self.sign_prekey(id, &public);
        SignedPrekey {
            id,
            secret,
            public,
            signature,
            accepted_setups: BTreeSet::new(),
        }
    }

    pub(crate) fn sign_prekey(&self, id: u32, public: &[u8; 32]) -> [u8; 64] {
        let msg = prekey_signature_input(
            &self.agent_id,
            &self.identity_key(),
            &self.exchange_public,
            id,
            public,
        );
        self.sign_labelled(labels::SIG_PREKEY, &msg)
    }

    /// Replaces the signed prekey; the previous one stays usable for initiations already in flight.
    pub fn rotate_signed_prekey<R: RngCore + CryptoRng>(&mut self, rng: &mut R) {
        let fresh = self.new_signed_prekey(rng);
        let old = std::mem::replace(&mut self.signed_prekey, fresh);
        self.previous_signed_prekey = Some(old);
        self.revision += 1;
    }

    /// Creates `n` one-time prekeys and returns their (id, public key) for a hub to hand out.
    pub fn generate_one_time_prekeys<R: RngCore + CryptoRng>(
        &mut self,
        n: usize,
        rng: &mut R,
    ) -> Result<Vec<(u32, [u8; 32])>> {
        if self.one_time_prekeys.len().saturating_add(n) > MAX_ONE_TIME_PREKEYS {
            return Err(Error::InvalidInput("too many one-time prekeys"));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.take_prekey_id();
            let secret = StaticSecret::random_from_rng(&mut *rng);
            out.push((id, crate::x25519::public_key(&secret)));
            self.one_time_prekeys.insert(id, secret);
        }
        self.revision += 1;
        Ok(out)
    }

    /// Forgets a one-time prekey once a session used it (so it can never be used twice).
    pub fn consume_one_time_prekey(&mut self, id: u32) {
        if self.one_time_prekeys.remove(&id).is_some() {
            self.revision += 1;
        }
    }

    /// Records what an accepted message changed in this identity: a set-up's one-time prekey is
    /// deleted and its base key remembered with its signed prekey (so the set-up can never be
    /// accepted again). Call it for every [`Opened`] before the identity is saved.
    pub fn settle(&mut self, opened: &Opened) {
        let Some(init) = opened.accepted_setup() else {
            return;
        };
        if init.one_time_prekey_id != 0 {
            self.one_time_prekeys.remove(&init.one_time_prekey_id);
        }
        if let Some(spk) = self.signed_prekey_mut(init.signed_prekey_id) {
            spk.accepted_setups.insert(init.base_key);
        }
        self.revision += 1;
    }

    /// Refuses a set-up this identity accepted before (a replay, even if its session is gone),
    /// and any set-up on a signed prekey whose memory is full.
    pub(crate) fn check_new_setup(&self, init: &Initiation) -> Result<()> {
        let Some(spk) = self.signed_prekey(init.signed_prekey_id) else {
            return Ok(()); // the set-up itself fails with a clear error
        };
        if spk.accepted_setups.contains(&init.base_key) {
            return Err(Error::Replay);
        }
        if spk.accepted_setups.len() >= MAX_SETUPS_PER_SIGNED_PREKEY {
            return Err(Error::Identity(
                "this signed prekey has taken all the set-ups it can remember; it must be rotated",
            ));
        }
        Ok(())
    }

    /// How many set-ups the current signed prekey remembers (rotate well before
    /// [`MAX_SETUPS_PER_SIGNED_PREKEY`]).
    pub fn setups_remembered(&self) -> usize {
        self.signed_prekey.accepted_setups.len()
    }

    /// Increases whenever something the identity file holds changed (prekeys made, used or
    /// rotated, a set-up remembered): the caller's cue to save the file.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The ids of the one-time prekeys still held, in increasing order.
    pub fn one_time_prekey_ids(&self) -> Vec<u32> {
        self.one_time_prekeys.keys().copied().collect()
    }

    /// The agent id; empty for an identity made without one.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// True for an identity made without an agent id ([`IdentityKeyPair::generate_unbound`]).
    pub fn is_unbound(&self) -> bool {
        self.agent_id.is_empty()
    }

    /// Whether this identity may act as `id` in a session: a bound identity only as its own id,
    /// an unbound one as whatever id the session fixed (or none yet).
    pub fn may_act_as(&self, id: &str) -> bool {
        self.is_unbound() || self.agent_id == id
    }

    /// Whether `peer` is this very agent: the same identity key, or the same (non-empty) id.
    pub fn is_self(&self, peer: &PublicBundle) -> bool {
        peer.identity_key() == self.identity_key()
            || (!self.is_unbound() && peer.published_id() == Some(self.agent_id.as_str()))
    }

    pub fn identity_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub(crate) fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn exchange_public(&self) -> [u8; 32] {
        self.exchange_public
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.identity_key())
    }

    pub(crate) fn sign_labelled(&self, label: &[u8], message: &[u8]) -> [u8; 64] {
        let mut buf = Vec::with_capacity(label.len() + message.len());
        buf.extend_from_slice(label);
        buf.extend_from_slice(message);
        self.signing.sign(&buf).to_bytes()
    }

    /// Proves possession of the identity key to one hub, for one connection, for one bundle
    /// (see [`Registration`]). Refuses a bundle of another identity: the proof says "register
    /// *this* bundle", so it must be one this key certified.
    pub fn sign_registration(
        &self,
        bundle: &PublicBundle,
        registration: &Registration,
    ) -> Result<[u8; 64]> {
        if bundle.identity_key() != self.identity_key() || bundle.agent_id() != self.agent_id {
            return Err(Error::InvalidInput(
                "registration bundle is not this identity's bundle",
            ));
        }
        Ok(self.sign_labelled(
            labels::SIG_HUB_REGISTRATION,
            &registration.signature_input(bundle),
        ))
    }

    fn signed_prekey(&self, id: u32) -> Option<&SignedPrekey> {
        std::iter::once(&self.signed_prekey)
            .chain(self.previous_signed_prekey.as_ref())
            .find(|p| p.id == id)
    }

    fn signed_prekey_mut(&mut self, id: u32) -> Option<&mut SignedPrekey> {
        std::iter::once(&mut self.signed_prekey)
            .chain(self.previous_signed_prekey.as_mut())
            .find(|p| p.id == id)
    }

    pub(crate) fn signed_prekey_secret(&self, id: u32) -> Option<&StaticSecret> {
        self.signed_prekey(id).map(|p| &p.secret)
    }

    pub(crate) fn one_time_prekey_secret(&self, id: u32) -> Option<&StaticSecret> {
        self.one_time_prekeys.get(&id)
    }

    /// The public, self-certifying bundle peers need to start a session with this agent.
    pub fn public_bundle(&self) -> PublicBundle {
        PublicBundle {
            agent_id: self.agent_id.clone(),
            unbound: self.is_unbound(),
            identity_key: self.verifying_key(),
            exchange_key: self.exchange_public,
            signed_prekey_id: self.signed_prekey.id,
            signed_prekey: self.signed_prekey.public,
            signed_prekey_signature: self.signed_prekey.signature,
            one_time_prekey: None,
        }
    }
}

/// What a peer needs to open a session with an agent. Constructing one verifies its signature,
/// so a `PublicBundle` value is always self-consistent.
///
/// The bundle of an unbound identity is signed over the empty id. `agent_id` is then the id a
/// session has fixed for that peer (from the first seal or accepted unseal), empty until then;
/// the signature is checked against the empty id all the same.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicBundle {
    pub(crate) agent_id: String,
    pub(crate) unbound: bool,
    pub(crate) identity_key: VerifyingKey,
    pub(crate) exchange_key: [u8; 32],
    pub(crate) signed_prekey_id: u32,
    pub(crate) signed_prekey: [u8; 32],
    pub(crate) signed_prekey_signature: [u8; 64],
    pub(crate) one_time_prekey: Option<(u32, [u8; 32])>,
}

impl fmt::Debug for PublicBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicBundle")
            .field("agent_id", &self.agent_id)
            .field("fingerprint", &self.fingerprint())
            .field("signed_prekey_id", &self.signed_prekey_id)
            .finish_non_exhaustive()
    }
}

const BUNDLE_MAGIC: &[u8; 4] = b"AMB\x01";

impl PublicBundle {
    /// Builds and verifies a bundle: the signed-prekey signature must check against the bundle's
    /// own identity key over (agent id, identity key, exchange key, prekey id, prekey). An empty
    /// `agent_id` is the bundle of an unbound identity, signed over the empty id.
    pub fn new(
        agent_id: &str,
        identity_key: &[u8; 32],
        exchange_key: &[u8; 32],
        signed_prekey_id: u32,
        signed_prekey: &[u8; 32],
        signed_prekey_signature: &[u8; 64],
        one_time_prekey: Option<(u32, [u8; 32])>,
    ) -> Result<Self> {
        let unbound = agent_id.is_empty();
        if !unbound {
            check_agent_id(agent_id).map_err(|_| Error::Format("bundle agent id is invalid"))?;
        }
        let key = parse_identity_key(identity_key)?;
        let msg = prekey_signature_input(
            agent_id,
            identity_key,
            exchange_key,
            signed_prekey_id,
            signed_prekey,
        );
        verify_labelled(
            &key,
            labels::SIG_PREKEY,
            &msg,
            signed_prekey_signature,
            "bundle's signed prekey signature does not match its identity key",
        )?;
        Ok(Self {
            agent_id: agent_id.to_owned(),
            unbound,
            identity_key: key,
            exchange_key: *exchange_key,
            signed_prekey_id,
            signed_prekey: *signed_prekey,
            signed_prekey_signature: *signed_prekey_signature,
            one_time_prekey,
        })
    }

    /// The id this bundle is used under: its signed id, or for an unbound bundle the id a
    /// session fixed for it (empty until then).
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }
    /// The id the signature covers: `None` for the bundle of an unbound identity.
    pub fn published_id(&self) -> Option<&str> {
        (!self.unbound).then_some(self.agent_id.as_str())
    }
    /// The id this bundle's owner is, for whoever needs one (an agent, a hub): an unbound
    /// bundle names nobody, and standing for any id would let anyone claim it.
    pub fn require_agent_id(&self) -> Result<&str> {
        self.published_id().ok_or(Error::Identity(
            "the bundle belongs to an identity with no agent id (AgentKeyPair()); \
             use AgentKeyPair.generate(agent_id) for an agent",
        ))
    }
    pub fn is_unbound(&self) -> bool {
        self.unbound
    }
    /// Whether `other` is a bundle of the same agent: same identity key and same signed id
    /// (prekeys may differ: the agent rotates them).
    pub fn same_agent(&self, other: &PublicBundle) -> bool {
        self.identity_key == other.identity_key && self.published_id() == other.published_id()
    }
    pub fn identity_key(&self) -> [u8; 32] {
        self.identity_key.to_bytes()
    }
    pub fn exchange_key(&self) -> [u8; 32] {
        self.exchange_key
    }
    pub fn signed_prekey_id(&self) -> u32 {
        self.signed_prekey_id
    }
    pub fn signed_prekey(&self) -> [u8; 32] {
        self.signed_prekey
    }
    pub fn signed_prekey_signature(&self) -> [u8; 64] {
        self.signed_prekey_signature
    }
    pub fn one_time_prekey(&self) -> Option<(u32, [u8; 32])> {
        self.one_time_prekey
    }
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.identity_key())
    }

    /// Same bundle with a one-time prekey attached (by a hub) or removed.
    pub fn with_one_time_prekey(mut self, opk: Option<(u32, [u8; 32])>) -> Self {
        self.one_time_prekey = opk;
        self
    }

    /// Checks a registration proof for this bundle, in the context the hub knows (its own id,
    /// the challenge it sent, the client's nonce, its TLS certificate).
    pub fn verify_registration(
        &self,
        registration: &Registration,
        signature: &[u8; 64],
    ) -> Result<()> {
        verify_labelled(
            &self.identity_key,
            labels::SIG_HUB_REGISTRATION,
            &registration.signature_input(self),
            signature,
            "registration signature does not match the identity key, hub, challenge, nonce, \
             bundle or TLS channel",
        )
    }

    /// The published binary form; an unbound bundle carries no session-fixed id here.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = crate::wire::Writer::with_capacity(220 + self.agent_id.len());
        let mut published = self.clone();
        if published.unbound {
            published.agent_id.clear();
        }
        published.write(&mut w);
        w.buf
    }

    /// The binary form, also inside session exports: `id(agent_id)` for a bound bundle;
    /// `0x00 || u8 len || the id a session fixed (len 0 while none)` for an unbound one.
    pub(crate) fn write(&self, w: &mut crate::wire::Writer) {
        w.bytes(BUNDLE_MAGIC);
        if self.unbound {
            w.u8(0);
        }
        w.agent_id(&self.agent_id);
        w.bytes(&self.identity_key());
        w.bytes(&self.exchange_key);
        w.u32(self.signed_prekey_id);
        w.bytes(&self.signed_prekey);
        w.bytes(&self.signed_prekey_signature);
        match self.one_time_prekey {
            Some((id, key)) => {
                w.u8(1);
                w.u32(id);
                w.bytes(&key);
            }
            None => w.u8(0),
        }
    }

    /// Parses the published binary form (an unbound bundle with a session-fixed id is refused:
    /// one encoding per bundle).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = crate::wire::Reader::new(bytes, "truncated or malformed bundle");
        let bundle = Self::read(&mut r)?;
        r.finish()?;
        if bundle.unbound && !bundle.agent_id.is_empty() {
            return Err(Error::Format("a published unbound bundle carries an id"));
        }
        Ok(bundle)
    }

    pub(crate) fn read(r: &mut crate::wire::Reader<'_>) -> Result<Self> {
        let magic: [u8; 4] = r.array()?;
        if &magic[..3] != b"AMB" {
            return Err(Error::Format("not a bundle (bad magic)"));
        }
        if magic[3] != BUNDLE_MAGIC[3] {
            return Err(Error::Version("bundle version"));
        }
        let signed_id = r.optional_agent_id()?;
        let fixed_id = if signed_id.is_empty() {
            Some(r.optional_agent_id()?)
        } else {
            None
        };
        let ik: [u8; 32] = r.array()?;
        let ek: [u8; 32] = r.array()?;
        let spk_id = r.u32()?;
        let spk: [u8; 32] = r.array()?;
        let sig: [u8; 64] = r.array()?;
        let opk = match r.u8()? {
            0 => None,
            1 => Some((r.u32()?, r.array()?)),
            _ => return Err(Error::Format("bundle one-time prekey flag")),
        };
        let mut bundle = Self::new(&signed_id, &ik, &ek, spk_id, &spk, &sig, opk)?;
        if let Some(id) = fixed_id {
            bundle.agent_id = id;
        }
        Ok(bundle)
    }
}
