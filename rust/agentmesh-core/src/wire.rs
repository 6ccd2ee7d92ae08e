//! Bounded big-endian reader and writer shared by every codec (envelope, bundle, key files,
//! session export). The reader never panics and never allocates more than the input holds.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Length of the integrity checksum that closes stored (not transmitted) formats.
pub(crate) const CHECKSUM_LEN: usize = 16;

/// The first 16 bytes of SHA-256: detects truncation and bit rot in files and exports.
pub(crate) fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::digest(data);
    let mut out = [0u8; CHECKSUM_LEN];
    for (o, d) in out.iter_mut().zip(digest.iter()) {
        *o = *d;
    }
    out
}

/// Splits `data` into (body, trailing checksum) and verifies it.
pub(crate) fn split_checksummed(data: &[u8]) -> Option<&[u8]> {
    let (body, sum) = data.split_at_checked(data.len().checked_sub(CHECKSUM_LEN)?)?;
    (checksum(body) == sum).then_some(body)
}

#[derive(Debug)]
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8], what: &'static str) -> Self {
        Self { input, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.input.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.input.len() < n {
            return Err(Error::Format(self.what));
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A u8-length-prefixed UTF-8 agent id (1..=255 bytes, no control characters).
    pub(crate) fn agent_id(&mut self) -> Result<String> {
        let len = usize::from(self.u8()?);
        let raw = self.bytes(len)?;
        let id = std::str::from_utf8(raw).map_err(|_| Error::Format("agent id is not UTF-8"))?;
        // An id that breaks the rules is malformed input here, not a caller's mistake.
        crate::keys::check_agent_id(id).map_err(|_| Error::Format("invalid agent id"))?;
        Ok(id.to_owned())
    }

    /// Like [`Reader::agent_id`], but a zero length is the empty id (an identity without one).
    pub(crate) fn optional_agent_id(&mut self) -> Result<String> {
        match self.input.first() {
            Some(0) => {
                self.u8()?;
                Ok(String::new())
            }
            _ => self.agent_id(),
        }
    }

    /// A u32 count of items of at least `min_item_len` bytes each, checked against the input.
    pub(crate) fn count(&mut self, min_item_len: usize, max: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_item_len) > self.input.len() {
            return Err(Error::Format(self.what));
        }
        Ok(n)
    }

    pub(crate) fn finish(self) -> Result<()> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(Error::Format(self.what))
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Caller guarantees the id was validated (<= 255 bytes); "" is written as length 0.
    pub(crate) fn agent_id(&mut self, id: &str) {
        self.buf.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        self.buf.extend_from_slice(id.as_bytes());
    }
}
