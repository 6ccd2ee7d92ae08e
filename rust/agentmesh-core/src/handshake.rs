//! X3DH-style session set-up. The initiator combines its exchange key and a fresh base key with the
//! responder's exchange key, signed prekey and (optionally) a one-time prekey; both agent ids, both
//! identity keys and the signature mode are bound into the key derivation transcript.

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;

use crate::envelope::Initiation;
use crate::error::{Error, Result};
use crate::kdf::{session_setup, SetupKeys};
use crate::keys::{IdentityKeyPair, PublicBundle};
use crate::wire::Writer;
use crate::x25519::diffie_hellman;

/// Per-session choice: every message signed by the sender (default), or deniable (AEAD only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Signed = 1,
    Deniable = 2,
}

impl Mode {
    pub(crate) fn from_byte(b: u8) -> Result<Self> {
        match b {
            1 => Ok(Mode::Signed),
            2 => Ok(Mode::Deniable),
            _ => Err(Error::Format("unknown session mode")),
        }
    }
}

/// The public facts of one party that the transcript binds.
pub(crate) struct Party<'a> {
    pub(crate) agent_id: &'a str,
    pub(crate) identity_key: [u8; 32],
    pub(crate) exchange_key: [u8; 32],
}

/// The KDF transcript: mode, initiator (id, identity key, exchange key), responder (id, identity
/// key, exchange key), the signed prekey (id, key), the base key and the one-time prekey (id, key).
fn transcript(
    mode: Mode,
    initiator: &Party<'_>,
    responder: &Party<'_>,
    signed_prekey: &[u8; 32],
    initiation: &Initiation,
    one_time_prekey: &[u8; 32],
) -> Vec<u8> {
    let mut w = Writer::with_capacity(700);
    w.u8(mode as u8);
    for p in [initiator, responder] {
        w.agent_id(p.agent_id);
        w.bytes(&p.identity_key);
        w.bytes(&p.exchange_key);
    }
    w.u32(initiation.signed_prekey_id);
    w.bytes(signed_prekey);
    w.bytes(&initiation.base_key);
    w.u32(initiation.one_time_prekey_id);
    w.bytes(one_time_prekey);
    w.buf
}

/// Both parties of a set-up under the ids the session fixed (`local_id` may differ from an
/// unbound identity's empty id). No set-up is derived before both ids are known: the transcript
/// binds them for the life of the session.
fn parties<'a>(
    ours: &IdentityKeyPair,
    local_id: &'a str,
    theirs: &'a PublicBundle,
) -> Result<(Party<'a>, Party<'a>)> {
    if local_id.is_empty() || theirs.agent_id().is_empty() {
        return Err(Error::Identity(
            "the session's agent ids are not fixed yet: seal once with \
             seal(session, keypair, sender_id, recipient_id, payload)",
        ));
    }
    let me = Party {
        agent_id: local_id,
        identity_key: ours.identity_key(),
        exchange_key: ours.exchange_public,
    };
    let peer = Party {
        agent_id: theirs.agent_id(),
        identity_key: theirs.identity_key(),
        exchange_key: theirs.exchange_key,
    };
    Ok((me, peer))
}

/// The initiator's side: a fresh base key, four (or three) DH outputs, the set-up keys.
pub(crate) fn initiate<R: RngCore + CryptoRng>(
    mode: Mode,
    ours: &IdentityKeyPair,
    local_id: &str,
    theirs: &PublicBundle,
    rng: &mut R,
) -> Result<(SetupKeys, Initiation)> {
    let (me, peer) = parties(ours, local_id, theirs)?;
    let base = StaticSecret::random_from_rng(&mut *rng);
    let (opk_id, opk) = theirs.one_time_prekey.unwrap_or((0, [0u8; 32]));
    if theirs.one_time_prekey.is_some() && opk_id == 0 {
        return Err(Error::Format("one-time prekey id 0 is reserved"));
    }
    let initiation = Initiation {
        base_key: crate::x25519::public_key(&base),
        signed_prekey_id: theirs.signed_prekey_id,
        one_time_prekey_id: opk_id,
    };
    let dh1 = diffie_hellman(&ours.exchange, &theirs.signed_prekey)?;
    let dh2 = diffie_hellman(&base, &theirs.exchange_key)?;
    let dh3 = diffie_hellman(&base, &theirs.signed_prekey)?;
    let dh4 = if opk_id != 0 {
        Some(diffie_hellman(&base, &opk)?)
    } else {
        None
    };
    let t = transcript(mode, &me, &peer, &theirs.signed_prekey, &initiation, &opk);
    let keys = match &dh4 {
        Some(d4) => session_setup(&[&dh1, &dh2, &dh3, d4], &t),
        None => session_setup(&[&dh1, &dh2, &dh3], &t),
    };
    Ok((keys, initiation))
}

/// The responder's side of the same computation, from the fields of a prekey message.
pub(crate) fn respond(
    mode: Mode,
    ours: &IdentityKeyPair,
    local_id: &str,
    theirs: &PublicBundle,
    initiation: &Initiation,
) -> Result<(SetupKeys, StaticSecret)> {
    let (me, peer) = parties(ours, local_id, theirs)?;
    let spk = ours
        .signed_prekey_secret(initiation.signed_prekey_id)
        .ok_or(Error::Identity(
            "the message names a signed prekey this agent does not have",
        ))?;
    let spk_public = crate::x25519::public_key(spk);
    let dh1 = diffie_hellman(spk, &theirs.exchange_key)?;
    let dh2 = diffie_hellman(&ours.exchange, &initiation.base_key)?;
    let dh3 = diffie_hellman(spk, &initiation.base_key)?;
    let (dh4, opk_public) = if initiation.one_time_prekey_id != 0 {
        let opk = ours
            .one_time_prekey_secret(initiation.one_time_prekey_id)
            .ok_or(Error::Identity(
                "the message names a one-time prekey that is unknown or already used",
            ))?;
        (
            Some(diffie_hellman(opk, &initiation.base_key)?),
            crate::x25519::public_key(opk),
        )
    } else {
        (None, [0u8; 32])
    };
    let t = transcript(mode, &peer, &me, &spk_public, initiation, &opk_public);
    let keys = match &dh4 {
        Some(d4) => session_setup(&[&dh1, &dh2, &dh3, d4], &t),
        None => session_setup(&[&dh1, &dh2, &dh3], &t),
    };
    Ok((keys, spk.clone()))
}
