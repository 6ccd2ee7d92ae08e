//! Which agent ids a session stands for. A session made from an identity without an id, or with
//! the bundle of one, starts with that id open (empty). The first seal (the ids it is given) or
//! the first accepted unseal (the ids in the header) fixes both for good: they go into the
//! set-up transcript, so every later message is bound to them like any other session's.

use rand_core::{CryptoRng, RngCore};

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::keys::{check_agent_id, IdentityKeyPair, PublicBundle};
use crate::payload::Payload;
use crate::session::{Accepted, Ciphertext, MessageParts, Session};

/// Which ids one call filled in, so that a failed call can open them again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filled {
    local: bool,
    peer: bool,
}

impl Session {
    /// True while the local id or the peer's id is not fixed yet.
    pub fn has_open_ids(&self) -> bool {
        self.local_id.is_empty() || self.peer.agent_id().is_empty()
    }

    /// Fills the open ids with `local` and `peer`; the ids already fixed stay as they are.
    fn fill_open_ids(&mut self, local: &str, peer: &str) -> Result<Filled> {
        // A set-up is derived only once both ids are fixed, so a state with one and open ids is
        // not one this code wrote: refuse it rather than bind it to whatever comes next.
        if self.active.is_some() || !self.archived.is_empty() {
            return Err(Error::Identity(
                "the session state has a set-up but no agent ids",
            ));
        }
        let filled = Filled {
            local: self.local_id.is_empty(),
            peer: self.peer.agent_id().is_empty(),
        };
        if filled.local {
            check_agent_id(local)?;
        }
        if filled.peer {
            check_agent_id(peer)?;
        }
        let local = if filled.local { local } else { &self.local_id };
        let peer = if filled.peer {
            peer
        } else {
            self.peer.agent_id()
        };
        if local == peer {
            return Err(Error::Identity(
                "sender_id and recipient_id are the same agent",
            ));
        }
        let (local, peer) = (local.to_owned(), peer.to_owned());
        if filled.local {
            self.local_id = local;
        }
        if filled.peer {
            self.peer.agent_id = peer;
        }
        Ok(filled)
    }

    fn reopen_ids(&mut self, filled: Filled) {
        if filled.local {
            self.local_id.clear();
        }
        if filled.peer {
            self.peer.agent_id.clear();
        }
    }

    /// [`Session::seal`] from `sender_id` to `recipient_id`, which must be the session's ids;
    /// an id still open is fixed to the one given here, for good, once a set-up is derived.
    pub fn seal_as<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        sender_id: &str,
        recipient_id: &str,
        payload: &[u8],
        timestamp_ms: u64,
        rng: &mut R,
    ) -> Result<Envelope> {
        let payload = Payload::plain(payload);
        self.seal_payload_as(ours, sender_id, recipient_id, &payload, timestamp_ms, rng)
    }

    /// [`Session::seal_as`] of a payload laid out straight into the envelope (as
    /// [`Session::seal_payload`]: a framed payload's binary values are copied once).
    pub fn seal_payload_as<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        sender_id: &str,
        recipient_id: &str,
        payload: &Payload<'_>,
        timestamp_ms: u64,
        rng: &mut R,
    ) -> Result<Envelope> {
        if ours.identity_key() != self.local_identity_key {
            return Err(Error::Identity(
                "sender_keypair is not the identity this session was created with",
            ));
        }
        if !self.local_id.is_empty() && sender_id != self.local_id {
            return Err(Error::Identity(
                "sender_id is not this session's local agent",
            ));
        }
        if !self.peer.agent_id().is_empty() && recipient_id != self.peer.agent_id() {
            return Err(Error::Identity("recipient_id is not this session's peer"));
        }
        if !self.has_open_ids() {
            return self.seal_payload(ours, payload, timestamp_ms, rng);
        }
        let filled = self.fill_open_ids(sender_id, recipient_id)?;
        let sealed = self.seal_payload(ours, payload, timestamp_ms, rng);
        // Once a set-up exists its transcript holds the ids: they can no longer be reopened.
        if sealed.is_err() && self.active.is_none() {
            self.reopen_ids(filled);
        }
        sealed
    }

    /// [`Session::unseal`] on a session with open ids: they are filled from the header (its
    /// recipient is us, its sender the peer) and stay fixed only if the envelope is accepted,
    /// so a relabelled or forged envelope leaves the session exactly as it was.
    pub(crate) fn unseal_fixing_ids<'c>(
        &mut self,
        ours: &IdentityKeyPair,
        parts: MessageParts<'_>,
        ciphertext: Ciphertext<'c>,
    ) -> Result<Accepted<'c>> {
        let h = parts.header;
        let filled = self.fill_open_ids(&h.recipient, &h.sender)?;
        let accepted = self.unseal_parts(ours, parts, ciphertext);
        if accepted.is_err() {
            self.reopen_ids(filled);
        }
        accepted
    }

    /// Checks that `bundle` is this session's peer (the `sender_bundle` of `unseal`): the same
    /// identity key and the same signed id (none, for an unbound identity).
    pub fn check_sender_bundle(&self, bundle: &PublicBundle) -> Result<()> {
        if self.peer.same_agent(bundle) {
            return Ok(());
        }
        Err(Error::Identity(
            "sender_bundle is not the bundle of this session's peer (another id or identity key)",
        ))
    }
}
