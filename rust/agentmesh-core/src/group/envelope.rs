//! The group message envelope (type 0x03): the pairwise envelope's routing prefix (magic,
//! version, type, flags, sender, recipient) followed by the group header and one ciphertext.
//! The recipient is routing only: it is outside the associated data and the signature, so the
//! same sealed message can be addressed to every member (layout in docs/protocol.md, section 8).
//! Without it, the message is in its *unaddressed form*, what a sender uploads once for all the
//! members; a hub writes each member's copy with [`GroupEnvelope::address`] (section 9.1).

use crate::aead::TAG_LEN;
use crate::envelope::{FLAG_SIGNED, MAGIC, MAX_CIPHERTEXT_LEN, VERSION};
use crate::error::{Error, Result};
use crate::session::SIGNATURE_LEN;
use crate::wire::{Reader, Writer};

/// The envelope type byte of a group message (0x01 and 0x02 are pairwise).
pub const GROUP_MESSAGE_TYPE: u8 = 0x03;
/// Length of a sending chain's public id.
pub const CHAIN_ID_LEN: usize = 16;
/// The smallest ciphertext: an empty payload still carries the signature and the tag.
const MIN_CIPHERTEXT_LEN: usize = SIGNATURE_LEN + TAG_LEN;

/// The authenticated fields of a group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHeader {
    pub sender: String,
    pub group: String,
    pub chain_id: [u8; CHAIN_ID_LEN],
    pub counter: u32,
    pub timestamp_ms: u64,
}

/// A parsed or freshly sealed group message. It holds the recipient-free form once; the wire
/// form for one member is made by [`GroupEnvelope::to_bytes_for`].
#[derive(Clone, PartialEq, Eq)]
pub struct GroupEnvelope {
    header: GroupHeader,
    /// The routing recipient of the wire form this was parsed from (None: freshly sealed).
    recipient: Option<String>,
    /// magic .. flags || id(sender): the routing prefix before the recipient.
    prefix: Vec<u8>,
    /// id(group) || chain id || counter || timestamp || u32 n || ciphertext.
    body: Vec<u8>,
    /// Where the ciphertext starts inside `body`.
    ciphertext_offset: usize,
}

impl std::fmt::Debug for GroupEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupEnvelope")
            .field("header", &self.header)
            .field("recipient", &self.recipient)
            .field("ciphertext_len", &self.ciphertext().len())
            .finish()
    }
}

/// Reads what every group message starts with (magic, version, type 0x03, the signed flag)
/// and returns the sender's id that follows, both in the addressed and the unaddressed form.
fn read_head(r: &mut Reader<'_>) -> Result<String> {
    if r.bytes(2)? != MAGIC {
        return Err(Error::Format("not an agentmesh envelope (bad magic)"));
    }
    if r.u8()? != VERSION {
        return Err(Error::Version("envelope version is not 1"));
    }
    if r.u8()? != GROUP_MESSAGE_TYPE {
        return Err(Error::Format(
            "not a group message (envelope type is not 0x03)",
        ));
    }
    if r.u8()? != FLAG_SIGNED {
        return Err(Error::Format(
            "group message flags must be exactly 0x01 (group messages are always signed)",
        ));
    }
    r.agent_id()
}

/// Where `id(sender)` ends in an unaddressed group message (its recipient field goes there).
fn unaddressed_sender_end(data: &[u8]) -> Result<usize> {
    let mut r = Reader::new(data, "unaddressed group message is truncated");
    read_head(&mut r)?;
    if r.remaining() == 0 {
        return Err(Error::Format(
            "unaddressed group message ends after its sender id",
        ));
    }
    Ok(data.len() - r.remaining())
}

fn check_group_id(id: &str) -> Result<()> {
    crate::keys::check_agent_id(id).map_err(|_| {
        Error::InvalidInput("group id must be 1..=255 UTF-8 bytes without control characters")
    })
}

impl GroupEnvelope {
    /// Lays out a header whose ciphertext (`ciphertext_len` bytes) the caller writes after it.
    /// Returns (prefix, body without ciphertext).
    pub(crate) fn encode_header(
        header: &GroupHeader,
        ciphertext_len: usize,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        check_group_id(&header.group)?;
        crate::keys::check_agent_id(&header.sender)?;
        let n = u32::try_from(ciphertext_len)
            .ok()
            .filter(|n| (*n as usize) <= MAX_CIPHERTEXT_LEN)
            .ok_or(Error::InvalidInput(
                "payload is larger than the 64 MiB envelope limit",
            ))?;
        let mut prefix = Writer::with_capacity(6 + header.sender.len());
        prefix.bytes(&MAGIC);
        prefix.u8(VERSION);
        prefix.u8(GROUP_MESSAGE_TYPE);
        prefix.u8(FLAG_SIGNED);
        prefix.agent_id(&header.sender);
        let mut body = Writer::with_capacity(33 + header.group.len() + ciphertext_len);
        body.agent_id(&header.group);
        body.bytes(&header.chain_id);
        body.u32(header.counter);
        body.u64(header.timestamp_ms);
        body.u32(n);
        Ok((prefix.buf, body.buf))
    }

    pub(crate) fn from_parts(
        header: GroupHeader,
        prefix: Vec<u8>,
        body: Vec<u8>,
        ciphertext_offset: usize,
    ) -> Self {
        Self {
            header,
            recipient: None,
            prefix,
            body,
            ciphertext_offset,
        }
    }

    /// Parses the wire form. Never panics; never allocates more than a copy of its input.
    pub fn from_bytes(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data, "group envelope is truncated");
        let sender = read_head(&mut r)?;
        let prefix_len = data.len() - r.remaining();
        let recipient = r.agent_id()?;
        let body_start = data.len() - r.remaining();
        let group = r.agent_id()?;
        let chain_id: [u8; CHAIN_ID_LEN] = r.array()?;
        let counter = r.u32()?;
        let timestamp_ms = r.u64()?;
        let n = r.u32()? as usize;
        if !(MIN_CIPHERTEXT_LEN..=MAX_CIPHERTEXT_LEN).contains(&n) {
            return Err(Error::Format(
                "group message ciphertext length out of range",
            ));
        }
        if r.remaining() != n {
            return Err(Error::Format(
                "group message ciphertext length does not match the bytes that follow",
            ));
        }
        let ciphertext_offset = data.len() - n - body_start;
        let prefix = data
            .get(..prefix_len)
            .ok_or(Error::Format("group envelope is truncated"))?
            .to_vec();
        let body = data
            .get(body_start..)
            .ok_or(Error::Format("group envelope is truncated"))?
            .to_vec();
        Ok(Self {
            header: GroupHeader {
                sender,
                group,
                chain_id,
                counter,
                timestamp_ms,
            },
            recipient: Some(recipient),
            prefix,
            body,
            ciphertext_offset,
        })
    }

    /// The wire form addressed to `recipient` (only the routing field differs per member).
    pub fn to_bytes_for(&self, recipient: &str) -> Result<Vec<u8>> {
        crate::keys::check_agent_id(recipient)?;
        let mut w =
            Writer::with_capacity(self.prefix.len() + 1 + recipient.len() + self.body.len());
        w.bytes(&self.prefix);
        w.agent_id(recipient);
        w.bytes(&self.body);
        Ok(w.buf)
    }

    /// The unaddressed form: the wire form without the recipient field (docs/protocol.md
    /// section 9.1), the same for every member.
    pub fn to_unaddressed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + self.body.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(&self.body);
        out
    }

    /// The copy of the unaddressed group message `unaddressed` for `recipient`: `id(recipient)`
    /// inserted after `id(sender)`, every other byte as it is. Checks the head (magic, version,
    /// type 0x03, flags), that the sender id is there, and the recipient id rule; the rest is
    /// the member's to check when it opens the copy. Never panics.
    pub fn address(unaddressed: &[u8], recipient: &str) -> Result<Vec<u8>> {
        crate::keys::check_agent_id(recipient)?;
        let end = unaddressed_sender_end(unaddressed)?;
        let (head, rest) = unaddressed.split_at(end);
        let mut w = Writer::with_capacity(unaddressed.len() + 1 + recipient.len());
        w.bytes(head);
        w.agent_id(recipient);
        w.bytes(rest);
        Ok(w.buf)
    }

    /// The wire form this envelope was parsed from (an error for a freshly sealed one, which is
    /// addressed to nobody yet).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        match &self.recipient {
            Some(r) => self.to_bytes_for(r),
            None => Err(Error::InvalidInput(
                "a sealed group message has no recipient yet: address it with to_bytes_for",
            )),
        }
    }

    /// The associated data: every byte of the wire form except the recipient field and the
    /// ciphertext (so it is the same for every member).
    pub fn associated_data(&self) -> Vec<u8> {
        let head = self.body.get(..self.ciphertext_offset).unwrap_or_default();
        let mut aad = Vec::with_capacity(self.prefix.len() + head.len());
        aad.extend_from_slice(&self.prefix);
        aad.extend_from_slice(head);
        aad
    }

    pub fn ciphertext(&self) -> &[u8] {
        self.body.get(self.ciphertext_offset..).unwrap_or_default()
    }

    pub fn header(&self) -> &GroupHeader {
        &self.header
    }

    pub fn sender(&self) -> &str {
        &self.header.sender
    }

    pub fn group(&self) -> &str {
        &self.header.group
    }

    /// The routing recipient of the wire form this was parsed from.
    pub fn recipient(&self) -> Option<&str> {
        self.recipient.as_deref()
    }

    /// hex(SHA-256(associated data)[0..16]): the same for every member it was addressed to.
    pub fn message_id(&self) -> String {
        crate::envelope::message_id_of(&self.associated_data())
    }

    /// Whether `data` claims to be a group message (magic, version and type), without parsing it.
    pub fn is_group_message(data: &[u8]) -> bool {
        data.len() > 4
            && data.get(..2) == Some(&MAGIC[..])
            && data.get(3) == Some(&GROUP_MESSAGE_TYPE)
    }
}
