//! The group state export (secret) and its sealed form, as for pairwise sessions.
//!
//! `AGS\x01 || id(group) || id(local) || IK_local(32) || u32 n_chains || chain* || u32 n_retired
//! || chain_id(16)* || SHA-256(...)[0..16]`, where `chain = id(sender) || signing_key(32) ||
//! chain_id(16) || u32 next_counter || chain_key(32) || u32 n_skipped || (u32 counter ||
//! message_key(32))*`. The sending chain is NOT exported: a loaded state starts a new sending
//! chain before its next message, so a state older than what it sent since (a crash that lost
//! the last write, a restored backup) can never reuse a message key.

use std::collections::{BTreeMap, VecDeque};

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::group::chain::ReceivingChain;
use crate::group::membership::MAX_GROUP_MEMBERS;
use crate::group::session::MAX_CHAINS_PER_SENDER;
use crate::group::session::{GroupSession, MAX_GROUP_SKIPPED_KEYS, MAX_RETIRED_CHAINS};
use crate::kdf::{ChainKey, MessageKey};
use crate::keys::IdentityKeyPair;
use crate::wire::{checksum, split_checksummed, Reader, Writer, CHECKSUM_LEN};

/// Magic and version of a group state export.
pub const GROUP_STATE_MAGIC: &[u8; 4] = b"AGS\x01";

impl GroupSession {
    /// Serialises the state, secrets included (the sending chain excepted: see the module).
    pub fn export_state(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(256 + self.receiving.len() * 200);
        w.bytes(GROUP_STATE_MAGIC);
        w.agent_id(&self.group);
        w.agent_id(&self.local_id);
        w.bytes(&self.local_identity_key);
        w.u32(u32::try_from(self.receiving.len()).unwrap_or(u32::MAX));
        for c in &self.receiving {
            w.agent_id(&c.sender);
            w.bytes(&c.signing_key);
            w.bytes(&c.chain_id);
            w.u32(c.next_counter);
            w.bytes(c.key.as_bytes());
            w.u32(u32::try_from(c.skipped.len()).unwrap_or(u32::MAX));
            for (n, mk) in &c.skipped {
                w.u32(*n);
                w.bytes(mk.as_bytes());
            }
        }
        w.u32(u32::try_from(self.retired.len()).unwrap_or(u32::MAX));
        for id in &self.retired {
            w.bytes(id);
        }
        let sum = checksum(&w.buf);
        w.bytes(&sum);
        Zeroizing::new(w.buf)
    }

    /// [`GroupSession::export_state`] sealed at rest under `ours`.
    pub fn export_sealed<R: RngCore + CryptoRng>(
        &self,
        ours: &IdentityKeyPair,
        rng: &mut R,
    ) -> Result<Vec<u8>> {
        self.check_local(ours)?;
        ours.seal_at_rest(&self.export_state(), rng)
    }

    /// Restores an export, sealed or not, made for the identity `ours`.
    pub fn import_any(ours: &IdentityKeyPair, data: &[u8]) -> Result<Self> {
        if data.starts_with(GROUP_STATE_MAGIC) {
            return Self::import_state(ours, data);
        }
        let plain = Zeroizing::new(ours.open_at_rest(data)?);
        Self::import_state(ours, &plain)
    }

    /// Restores an export made by [`GroupSession::export_state`].
    pub fn import_state(ours: &IdentityKeyPair, data: &[u8]) -> Result<Self> {
        if data.len() < GROUP_STATE_MAGIC.len() + CHECKSUM_LEN {
            return Err(Error::KeyFile("group state is truncated"));
        }
        let body = split_checksummed(data)
            .ok_or(Error::KeyFile("group state is corrupt (checksum mismatch)"))?;
        let mut r = Reader::new(body, "group state is malformed");
        if r.bytes(4)? != GROUP_STATE_MAGIC {
            return Err(Error::KeyFile("not a group state export (bad magic)"));
        }
        let group = r.agent_id()?;
        let local_id = r.agent_id()?;
        let local_identity_key: [u8; 32] = r.array()?;
        let n_chains = r.count(
            1 + 32 + 16 + 4 + 32 + 4,
            MAX_GROUP_MEMBERS * MAX_CHAINS_PER_SENDER,
        )?;
        let mut receiving = Vec::with_capacity(n_chains);
        let mut skipped_total = 0usize;
        for _ in 0..n_chains {
            let sender = r.agent_id()?;
            let signing_key: [u8; 32] = r.array()?;
            let verifier = crate::keys::parse_identity_key(&signing_key)
                .map_err(|_| Error::KeyFile("group state holds an invalid signing key"))?;
            let chain_id: [u8; 16] = r.array()?;
            let next_counter = r.u32()?;
            let key = ChainKey::from_bytes(r.array()?);
            let n_skipped = r.count(36, MAX_GROUP_SKIPPED_KEYS - skipped_total)?;
            skipped_total += n_skipped;
            let mut skipped = BTreeMap::new();
            for _ in 0..n_skipped {
                let n = r.u32()?;
                skipped.insert(n, MessageKey::from_bytes(r.array()?));
            }
            receiving.push(ReceivingChain {
                sender,
                signing_key,
                verifier,
                chain_id,
                next_counter,
                key,
                skipped,
            });
        }
        let mut retired = VecDeque::new();
        for _ in 0..r.count(16, MAX_RETIRED_CHAINS)? {
            retired.push_back(r.array()?);
        }
        r.finish()?;
        let state = Self {
            group,
            local_id,
            local_identity_key,
            sending: None,
            receiving,
            retired,
        };
        state.check_local(ours)?;
        Ok(state)
    }
}
