//! Export and import of session state. The export holds live ratchet secrets: callers must store
//! it like a private key (the Python layer encrypts it at rest with a key derived from the
//! identity). A checksum catches truncation and bit flips before anything is parsed into use.

use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::envelope::Initiation;
use crate::error::{Error, Result};
use crate::handshake::Mode;
use crate::kdf::{ChainKey, MessageKey, RootKey};
use crate::keys::{IdentityKeyPair, PublicBundle};
use crate::ratchet::{Ratchet, Role, SkippedKeys, MAX_RETIRED_RATCHET_KEYS, MAX_SKIPPED_KEYS};
use crate::session::{Session, MAX_ARCHIVED_SESSIONS, MAX_REMEMBERED_SESSIONS};
use crate::wire::{checksum, split_checksummed, Reader, Writer, CHECKSUM_LEN};

const STATE_MAGIC: &[u8; 4] = b"AMS\x01";

fn write_opt(w: &mut Writer, v: Option<&[u8; 32]>) {
    match v {
        Some(b) => {
            w.u8(1);
            w.bytes(b);
        }
        None => w.u8(0),
    }
}

fn read_opt(r: &mut Reader<'_>) -> Result<Option<[u8; 32]>> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.array()?)),
        _ => Err(Error::Format("session state option flag")),
    }
}

fn write_ratchet(w: &mut Writer, r: &Ratchet) {
    w.bytes(&r.session_id);
    w.u8(match r.role {
        Role::Initiator {
            acknowledged: false,
        } => 1,
        Role::Initiator { acknowledged: true } => 2,
        Role::Responder => 3,
    });
    w.bytes(&r.initiation.base_key);
    w.u32(r.initiation.signed_prekey_id);
    w.u32(r.initiation.one_time_prekey_id);
    w.bytes(r.root.as_bytes());
    w.bytes(&r.our_ratchet.to_bytes());
    write_opt(w, r.their_ratchet.as_ref());
    write_opt(w, r.sending.as_ref().map(ChainKey::as_bytes));
    w.u32(r.send_counter);
    write_opt(w, r.receiving.as_ref().map(ChainKey::as_bytes));
    w.u32(r.recv_counter);
    w.u32(r.previous_send_counter);
    w.u64(r.last_peer_timestamp);
    w.u32(u32::try_from(r.skipped.len()).unwrap_or(u32::MAX));
    for ((key, n), mk) in r.skipped.iter() {
        w.bytes(key);
        w.u32(*n);
        w.bytes(mk.as_bytes());
    }
    w.u32(u32::try_from(r.retired_peer_keys.len()).unwrap_or(u32::MAX));
    for k in &r.retired_peer_keys {
        w.bytes(k);
    }
}

fn read_ratchet(r: &mut Reader<'_>) -> Result<Ratchet> {
    let session_id = r.array()?;
    let role = match r.u8()? {
        1 => Role::Initiator {
            acknowledged: false,
        },
        2 => Role::Initiator { acknowledged: true },
        3 => Role::Responder,
        _ => return Err(Error::Format("session state role")),
    };
    let initiation = Initiation {
        base_key: r.array()?,
        signed_prekey_id: r.u32()?,
        one_time_prekey_id: r.u32()?,
    };
    let root = RootKey::from_bytes(r.array()?);
    let our_ratchet = StaticSecret::from(r.array::<32>()?);
    let our_ratchet_public = crate::x25519::public_key(&our_ratchet);
    let their_ratchet = read_opt(r)?;
    let sending = read_opt(r)?.map(ChainKey::from_bytes);
    let send_counter = r.u32()?;
    let receiving = read_opt(r)?.map(ChainKey::from_bytes);
    let recv_counter = r.u32()?;
    let previous_send_counter = r.u32()?;
    let last_peer_timestamp = r.u64()?;
    let mut skipped = SkippedKeys::default();
    for _ in 0..r.count(68, MAX_SKIPPED_KEYS)? {
        let key: [u8; 32] = r.array()?;
        let n = r.u32()?;
        skipped.insert_restored(key, n, MessageKey::from_bytes(r.array()?));
    }
    let mut retired_peer_keys = VecDeque::new();
    for _ in 0..r.count(32, MAX_RETIRED_RATCHET_KEYS)? {
        retired_peer_keys.push_back(r.array()?);
    }
    Ok(Ratchet {
        session_id,
        role,
        initiation,
        root,
        our_ratchet,
        our_ratchet_public,
        their_ratchet,
        their_ratchet_decoded: None,
        sending,
        send_counter,
        receiving,
        recv_counter,
        previous_send_counter,
        skipped,
        retired_peer_keys,
        last_peer_timestamp,
    })
}

impl Session {
    /// Serialises the whole session, secrets included.
    pub fn export_state(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(1024);
        w.bytes(STATE_MAGIC);
        w.u8(self.mode as u8);
        w.agent_id(&self.local_id);
        w.bytes(&self.local_identity_key);
        self.peer.write(&mut w);
        match &self.active {
            Some(r) => {
                w.u8(1);
                write_ratchet(&mut w, r);
            }
            None => w.u8(0),
        }
        w.u32(u32::try_from(self.archived.len()).unwrap_or(u32::MAX));
        for r in &self.archived {
            write_ratchet(&mut w, r);
        }
        w.u32(u32::try_from(self.remembered.len()).unwrap_or(u32::MAX));
        for id in &self.remembered {
            w.bytes(id);
        }
        let sum = checksum(&w.buf);
        w.bytes(&sum);
        w.buf
    }

    /// [`Session::export_state`] sealed at rest under `ours` (see
    /// [`IdentityKeyPair::seal_at_rest`]): what a caller can hold and store without the session's
    /// secrets ever leaving this crate in the clear.
    pub fn export_sealed<R: RngCore + CryptoRng>(
        &self,
        ours: &IdentityKeyPair,
        rng: &mut R,
    ) -> Result<Vec<u8>> {
        self.check_local(ours)?;
        ours.seal_at_rest(&Zeroizing::new(self.export_state()), rng)
    }

    /// Restores an export, sealed ([`Session::export_sealed`]) or not.
    pub fn import_any(ours: &IdentityKeyPair, data: &[u8]) -> Result<Self> {
        if data.starts_with(STATE_MAGIC) {
            return Self::import_state(ours, data);
        }
        let plain = Zeroizing::new(ours.open_at_rest(data)?);
        Self::import_state(ours, &plain)
    }

    /// Restores an export made by [`Session::export_state`] for the identity `ours`.
    pub fn import_state(ours: &IdentityKeyPair, data: &[u8]) -> Result<Self> {
        if data.len() < STATE_MAGIC.len() + CHECKSUM_LEN {
            return Err(Error::KeyFile("session state is truncated"));
        }
        if !data.starts_with(b"AMS") {
            return Err(Error::KeyFile("not a session state export (bad magic)"));
        }
        let body = split_checksummed(data).ok_or(Error::KeyFile(
            "session state is corrupt (checksum mismatch)",
        ))?;
        let mut r = Reader::new(body, "session state is malformed");
        let magic: [u8; 4] = r.array()?;
        if &magic != STATE_MAGIC {
            return Err(Error::Version("session state version is not 1"));
        }
        let mode = Mode::from_byte(r.u8()?)?;
        let local_id = r.optional_agent_id()?;
        let local_identity_key: [u8; 32] = r.array()?;
        let peer = PublicBundle::read(&mut r)?;
        let active = match r.u8()? {
            0 => None,
            1 => Some(Box::new(read_ratchet(&mut r)?)),
            _ => return Err(Error::Format("session state active flag")),
        };
        let mut archived = VecDeque::new();
        for _ in 0..r.count(100, MAX_ARCHIVED_SESSIONS)? {
            archived.push_back(Box::new(read_ratchet(&mut r)?));
        }
        let mut remembered = VecDeque::new();
        for _ in 0..r.count(16, MAX_REMEMBERED_SESSIONS)? {
            remembered.push_back(r.array()?);
        }
        r.finish()?;
        let session = Session {
            mode,
            local_id,
            local_identity_key,
            peer,
            active,
            archived,
            remembered,
            // the export may be older than what was sent since (see the field)
            new_setup_before_send: true,
            peer_refreshed: false,
        };
        session.check_local(ours)?;
        // (an export made before the skipped-key bound was per session may hold more: the
        // next accepted message trims it, so that import stays the exact inverse of export)
        Ok(session)
    }
}
