//! Succession statements: an agent moves its id to a new identity key. The old key signs "id X
//! passes from key A to key B, generation n", and B signs the same statement, so a peer or a hub
//! that trusts A can move to B without anyone else's word (docs/protocol.md, "Succession
//! statement"). A chain of statements carries a peer that pinned an older key forward.

use crate::error::{Error, Result};
use crate::keys::{check_agent_id, parse_identity_key, verify_labelled, IdentityKeyPair};
use crate::labels;
use crate::wire::{Reader, Writer};

/// The version byte a statement starts with.
pub const SUCCESSION_VERSION: u8 = 1;
/// Most statements a chain may hold (a bundle carries at most this many: an agent keeps the
/// latest ones; a peer that pinned a key older than that sees the identity-changed error).
pub const MAX_SUCCESSION_CHAIN: usize = 8;
/// Length of a statement without its agent id: version, id length, two keys, generation,
/// timestamp, two signatures.
const FIXED_LEN: usize = 1 + 1 + 32 + 32 + 4 + 8 + 64 + 64;

/// A verified succession statement (both signatures checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Succession {
    /// The agent id handed over.
    pub agent_id: String,
    /// The key that signed the hand-over (the one peers pinned).
    pub old_identity_key: [u8; 32],
    /// The key the id moves to.
    pub new_identity_key: [u8; 32],
    /// How many successions lead from the agent's first key to `new_identity_key` (>= 1).
    pub generation: u32,
    /// When the statement was made (milliseconds since the Unix epoch, the signer's clock;
    /// informational: the order comes from `generation`).
    pub timestamp_ms: u64,
}

fn body(s: &Succession) -> Vec<u8> {
    let mut w = Writer::with_capacity(FIXED_LEN + s.agent_id.len());
    w.u8(SUCCESSION_VERSION);
    w.agent_id(&s.agent_id);
    w.bytes(&s.old_identity_key);
    w.bytes(&s.new_identity_key);
    w.u32(s.generation);
    w.u64(s.timestamp_ms);
    w.buf
}

/// `old` hands its agent id over to `new` (same id, another key): the statement's bytes, signed
/// by both. `generation` is the new key's (the old key's plus one; 1 for an agent's first
/// rotation).
pub fn sign_succession(
    old: &IdentityKeyPair,
    new: &IdentityKeyPair,
    generation: u32,
    timestamp_ms: u64,
) -> Result<Vec<u8>> {
    if old.is_unbound() || new.agent_id() != old.agent_id() {
        return Err(Error::Identity(
            "a succession needs two identities bound to the same agent id",
        ));
    }
    if old.identity_key() == new.identity_key() {
        return Err(Error::Identity("a succession needs a new identity key"));
    }
    if generation == 0 {
        return Err(Error::InvalidInput("a succession's generation starts at 1"));
    }
    let statement = Succession {
        agent_id: old.agent_id().to_owned(),
        old_identity_key: old.identity_key(),
        new_identity_key: new.identity_key(),
        generation,
        timestamp_ms,
    };
    let mut out = body(&statement);
    let by_old = old.sign_labelled(labels::SIG_SUCCESSION, &out);
    let by_new = new.sign_labelled(labels::SIG_SUCCESSION_ACCEPT, &out);
    out.extend_from_slice(&by_old);
    out.extend_from_slice(&by_new);
    Ok(out)
}

impl Succession {
    /// Parses a statement and checks both signatures (the old key's hand-over and the new
    /// key's acceptance); trailing bytes, a bad id, a weak key or a zero generation are refused.
    pub fn verify(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "malformed succession statement");
        if r.u8()? != SUCCESSION_VERSION {
            return Err(Error::Version("succession statement version"));
        }
        let agent_id = r.agent_id()?;
        let statement = Succession {
            agent_id,
            old_identity_key: r.array()?,
            new_identity_key: r.array()?,
            generation: r.u32()?,
            timestamp_ms: r.u64()?,
        };
        let by_old: [u8; 64] = r.array()?;
        let by_new: [u8; 64] = r.array()?;
        r.finish()?;
        if statement.generation == 0 {
            return Err(Error::Format("a succession's generation starts at 1"));
        }
        if statement.old_identity_key == statement.new_identity_key {
            return Err(Error::Identity(
                "a succession statement names the same key twice",
            ));
        }
        let signed = body(&statement);
        verify_labelled(
            &parse_identity_key(&statement.old_identity_key)?,
            labels::SIG_SUCCESSION,
            &signed,
            &by_old,
            "succession statement is not signed by the old identity key",
        )?;
        verify_labelled(
            &parse_identity_key(&statement.new_identity_key)?,
            labels::SIG_SUCCESSION_ACCEPT,
            &signed,
            &by_new,
            "succession statement is not signed by the new identity key",
        )?;
        Ok(statement)
    }
}

/// Checks that `chain` (statements, oldest first) carries `agent_id` from `from_key` (the key a
/// peer pinned, or the key a hub bound) to `to_key` (the key presented now). Every statement
/// must verify, be for `agent_id`, and follow the one before it (its old key is the previous
/// new key, its generation the previous one plus one); the last must name `to_key`, and one of
/// them must be signed by `from_key`. Returns the generation of `to_key`.
pub fn follow_succession(
    agent_id: &str,
    from_key: &[u8; 32],
    to_key: &[u8; 32],
    chain: &[&[u8]],
) -> Result<u32> {
    check_agent_id(agent_id)?;
    if chain.is_empty() {
        return Err(Error::Identity("no succession statement was presented"));
    }
    if chain.len() > MAX_SUCCESSION_CHAIN {
        return Err(Error::InvalidInput(
            "a succession chain holds at most 8 statements",
        ));
    }
    let mut signed_by_from = false;
    let mut previous: Option<Succession> = None;
    for raw in chain {
        let s = Succession::verify(raw)?;
        if s.agent_id != agent_id {
            return Err(Error::Identity(
                "a succession statement is for another agent id",
            ));
        }
        if let Some(p) = &previous {
            if s.old_identity_key != p.new_identity_key
                || Some(s.generation) != p.generation.checked_add(1)
            {
                return Err(Error::Identity(
                    "the succession statements do not follow one another",
                ));
            }
        }
        signed_by_from |= s.old_identity_key == *from_key;
        previous = Some(s);
    }
    let last = previous.ok_or(Error::Identity("no succession statement was presented"))?;
    if last.new_identity_key != *to_key {
        return Err(Error::Identity(
            "the succession chain does not end at the presented identity key",
        ));
    }
    if !signed_by_from {
        return Err(Error::Identity(
            "no succession statement is signed by the trusted identity key",
        ));
    }
    Ok(last.generation)
}
