//! The membership record: who is in a group, as of which epoch, signed by the group's
//! administrator (its creator). Every member checks it against the administrator's identity
//! key before it changes anything, whoever relayed it.

use std::collections::BTreeSet;

use ed25519_dalek::Signature;

use crate::error::{Error, Result};
use crate::keys::{parse_identity_key, IdentityKeyPair};
use crate::labels;
use crate::wire::{Reader, Writer};

/// Magic and version of a membership record.
pub const MEMBERSHIP_MAGIC: &[u8; 4] = b"AGM\x01";
/// Most members a group may have (the administrator included).
pub const MAX_GROUP_MEMBERS: usize = 1000;

/// A verified membership record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub group: String,
    pub admin: String,
    /// Increases with every change; a member refuses a record not newer than the one it holds.
    pub epoch: u64,
    /// Sorted, unique; always contains the administrator.
    pub members: Vec<String>,
}

fn body(group: &str, admin: &str, epoch: u64, members: &BTreeSet<String>) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + members.iter().map(|m| m.len() + 1).sum::<usize>());
    w.bytes(MEMBERSHIP_MAGIC);
    w.agent_id(group);
    w.agent_id(admin);
    w.u64(epoch);
    w.u32(u32::try_from(members.len()).unwrap_or(u32::MAX));
    for m in members {
        w.agent_id(m);
    }
    w.buf
}

impl Membership {
    /// `AGM\x01 || id(group) || id(admin) || u64 epoch || u32 n || id(member)* (sorted, unique)
    /// || Ed25519(IK_admin, "agentmesh/v1/sig/group-membership\0" || everything before)`.
    pub fn sign(
        admin: &IdentityKeyPair,
        group: &str,
        epoch: u64,
        members: &[String],
    ) -> Result<Vec<u8>> {
        crate::keys::check_agent_id(group)?;
        let admin_id = admin.agent_id();
        crate::keys::check_agent_id(admin_id)?;
        let mut set = BTreeSet::new();
        for m in members {
            crate::keys::check_agent_id(m)?;
            set.insert(m.clone());
        }
        set.insert(admin_id.to_owned());
        if set.len() > MAX_GROUP_MEMBERS {
            return Err(Error::InvalidInput("a group has at most 1000 members"));
        }
        let mut out = body(group, admin_id, epoch, &set);
        let signature = admin.sign_labelled(labels::SIG_GROUP_MEMBERSHIP, &out);
        out.extend_from_slice(&signature);
        Ok(out)
    }

    /// Parses a record and verifies its signature under `admin_identity_key` (strict Ed25519).
    pub fn verify(data: &[u8], admin_identity_key: &[u8; 32]) -> Result<Self> {
        let signed_len = data
            .len()
            .checked_sub(64)
            .ok_or(Error::Format("membership record is truncated"))?;
        let (signed, signature) = data.split_at(signed_len);
        let mut r = Reader::new(signed, "membership record is malformed");
        if r.bytes(4)? != MEMBERSHIP_MAGIC {
            return Err(Error::Format("not a group membership record (bad magic)"));
        }
        let group = r.agent_id()?;
        let admin = r.agent_id()?;
        let epoch = r.u64()?;
        let n = r.count(2, MAX_GROUP_MEMBERS)?;
        let mut members: Vec<String> = Vec::with_capacity(n);
        for _ in 0..n {
            let m = r.agent_id()?;
            if members.last().is_some_and(|last| *last >= m) {
                return Err(Error::Format(
                    "membership record members are not sorted and unique",
                ));
            }
            members.push(m);
        }
        r.finish()?;
        if members.binary_search(&admin).is_err() {
            return Err(Error::Format(
                "membership record does not list its administrator",
            ));
        }
        let key = parse_identity_key(admin_identity_key)?;
        let mut sig = [0u8; 64];
        sig.copy_from_slice(signature);
        let mut input = Vec::with_capacity(labels::SIG_GROUP_MEMBERSHIP.len() + signed.len());
        input.extend_from_slice(labels::SIG_GROUP_MEMBERSHIP);
        input.extend_from_slice(signed);
        key.verify_strict(&input, &Signature::from_bytes(&sig))
            .map_err(|_| {
                Error::Signature("membership record is not signed by the group's administrator")
            })?;
        Ok(Self {
            group,
            admin,
            epoch,
            members,
        })
    }
}
