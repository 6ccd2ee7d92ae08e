//! The version-1 envelope: a binary header (readable without keys, authenticated as AEAD
//! associated data) followed by the AES-256-GCM ciphertext. Layout in docs/protocol.md.

use sha2::{Digest, Sha256};

use crate::aead::TAG_LEN;
use crate::error::{Error, Result};
use crate::wire::{Reader, Writer};

pub const MAGIC: [u8; 2] = *b"AM";
pub const VERSION: u8 = 1;
/// Largest ciphertext an envelope may carry (payload + signature + tag).
pub const MAX_CIPHERTEXT_LEN: usize = 64 * 1024 * 1024;
/// Flag bit: the plaintext starts with the sender's Ed25519 message signature.
pub const FLAG_SIGNED: u8 = 0x01;

/// What kind of message an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// Starts (or repeats the start of) a session: carries the initiator's set-up keys.
    Prekey = 1,
    /// A Double Ratchet message of an established session.
    Ratchet = 2,
}

/// The set-up fields a prekey message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initiation {
    pub base_key: [u8; 32],
    pub signed_prekey_id: u32,
    /// 0 when no one-time prekey was used.
    pub one_time_prekey_id: u32,
}

/// The authenticated header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub message_type: MessageType,
    pub signed: bool,
    pub sender: String,
    pub recipient: String,
    pub session_id: [u8; 16],
    pub timestamp_ms: u64,
    pub ratchet_key: [u8; 32],
    pub previous_chain_length: u32,
    pub counter: u32,
    pub initiation: Option<Initiation>,
}

impl Header {
    /// Writes the header and the ciphertext length; returns the bytes used as associated data.
    pub(crate) fn encode(&self, ciphertext_len: usize, extra_capacity: usize) -> Result<Vec<u8>> {
        let ct_len = u32::try_from(ciphertext_len)
            .ok()
            .filter(|n| (*n as usize) <= MAX_CIPHERTEXT_LEN)
            .ok_or(Error::InvalidInput(
                "payload is larger than the 64 MiB envelope limit",
            ))?;
        let mut w =
            Writer::with_capacity(120 + self.sender.len() + self.recipient.len() + extra_capacity);
        w.bytes(&MAGIC);
        w.u8(VERSION);
        w.u8(self.message_type as u8);
        w.u8(if self.signed { FLAG_SIGNED } else { 0 });
        w.agent_id(&self.sender);
        w.agent_id(&self.recipient);
        w.bytes(&self.session_id);
        w.u64(self.timestamp_ms);
        w.bytes(&self.ratchet_key);
        w.u32(self.previous_chain_length);
        w.u32(self.counter);
        if let Some(init) = &self.initiation {
            w.bytes(&init.base_key);
            w.u32(init.signed_prekey_id);
            w.u32(init.one_time_prekey_id);
        }
        w.u32(ct_len);
        Ok(w.buf)
    }
}

/// A parsed envelope: the wire bytes plus the header decoded from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    bytes: Vec<u8>,
    header: Header,
    /// Where the ciphertext starts in `bytes` (the associated data is `bytes[..body_offset]`).
    body_offset: usize,
}

/// Lets batch calls take envelopes or references to them.
impl AsRef<Envelope> for Envelope {
    fn as_ref(&self) -> &Envelope {
        self
    }
}

impl Envelope {
    pub(crate) fn from_parts(bytes: Vec<u8>, header: Header, body_offset: usize) -> Self {
        Self {
            bytes,
            header,
            body_offset,
        }
    }

    /// Parses wire bytes. Never panics; allocates only a copy of the input.
    pub fn from_bytes(data: &[u8]) -> Result<Self> {
        let (header, body_offset) = Self::parse_header(data)?;
        Ok(Self {
            bytes: data.to_vec(),
            header,
            body_offset,
        })
    }

    /// Takes ownership of wire bytes without copying.
    pub fn from_vec(data: Vec<u8>) -> Result<Self> {
        let (header, body_offset) = Self::parse_header(&data)?;
        Ok(Self {
            bytes: data,
            header,
            body_offset,
        })
    }

    fn parse_header(data: &[u8]) -> Result<(Header, usize)> {
        let mut r = Reader::new(data, "truncated envelope");
        let magic: [u8; 2] = r.array()?;
        if magic != MAGIC {
            return Err(Error::Format("not an agentmesh envelope (bad magic)"));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::Version("envelope version is not 1"));
        }
        let message_type = match r.u8()? {
            1 => MessageType::Prekey,
            2 => MessageType::Ratchet,
            _ => return Err(Error::Format("unknown envelope message type")),
        };
        let flags = r.u8()?;
        if flags & !FLAG_SIGNED != 0 {
            return Err(Error::Format("unknown envelope flag bits"));
        }
        let sender = r.agent_id()?;
        let recipient = r.agent_id()?;
        let session_id = r.array()?;
        let timestamp_ms = r.u64()?;
        let ratchet_key = r.array()?;
        let previous_chain_length = r.u32()?;
        let counter = r.u32()?;
        let initiation = match message_type {
            MessageType::Prekey => Some(Initiation {
                base_key: r.array()?,
                signed_prekey_id: r.u32()?,
                one_time_prekey_id: r.u32()?,
            }),
            MessageType::Ratchet => None,
        };
        let ct_len = r.u32()? as usize;
        if ct_len < TAG_LEN {
            return Err(Error::Format(
                "envelope ciphertext is shorter than the AEAD tag",
            ));
        }
        if ct_len > MAX_CIPHERTEXT_LEN {
            return Err(Error::Format(
                "envelope ciphertext exceeds the 64 MiB limit",
            ));
        }
        if r.remaining() != ct_len {
            return Err(Error::Format(
                "envelope length does not match its ciphertext length field",
            ));
        }
        let body_offset = data.len() - ct_len;
        let header = Header {
            message_type,
            signed: flags & FLAG_SIGNED != 0,
            sender,
            recipient,
            session_id,
            timestamp_ms,
            ratchet_key,
            previous_chain_length,
            counter,
            initiation,
        };
        Ok((header, body_offset))
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn sender(&self) -> &str {
        &self.header.sender
    }
    pub fn recipient(&self) -> &str {
        &self.header.recipient
    }
    pub fn timestamp_ms(&self) -> u64 {
        self.header.timestamp_ms
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
    pub(crate) fn into_header_and_bytes(self) -> (Header, Vec<u8>) {
        (self.header, self.bytes)
    }
    pub(crate) fn associated_data(&self) -> &[u8] {
        self.bytes.get(..self.body_offset).unwrap_or_default()
    }
    pub(crate) fn ciphertext(&self) -> &[u8] {
        self.bytes.get(self.body_offset..).unwrap_or_default()
    }
    /// A message id unique per message: hex of the first 16 bytes of SHA-256 over the header.
    pub fn message_id(&self) -> String {
        message_id_of(self.associated_data())
    }
}

/// Hex of the first 16 bytes of SHA-256 over `header`: the id of the message it heads. (Read
/// for every delivered envelope, to recognise redeliveries: written without a `format!` per
/// byte, which cost more than the hash.)
pub(crate) fn message_id_of(header: &[u8]) -> String {
    let digest = Sha256::digest(header);
    let mut id = String::with_capacity(32);
    for b in digest.iter().take(16) {
        for nibble in [b >> 4, b & 0x0f] {
            // (a nibble is always a hex digit: the fallback is never taken)
            id.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    id
}
