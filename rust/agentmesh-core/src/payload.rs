//! How a payload with binary values is laid out inside the sealed plaintext (docs/protocol.md,
//! section 5.1). A payload without binary values is its compact JSON, exactly as before, so
//! older peers read it and nothing costs more; one with binary values is framed:
//!
//! ```text
//! "AMP" || 0x01 || u32 n (>= 1) || u32 json_len || json || (u32 len_i || blob_i) * n
//! ```
//!
//! where `json` holds, in place of blob `i`, the reference object `{"_agentmesh_bytes":i}`,
//! the references numbered 0, 1, ... in the order they appear in the text. `'A'` never starts
//! a JSON text, so the two forms cannot be confused. The core never parses JSON: the caller
//! writes references with [`write_reference`] and resolves them in document order with
//! [`Blobs::take`], which holds the numbering rule.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::wire::Reader;

/// The first four bytes of a framed payload: "AMP" and the framing version.
pub const BINARY_PAYLOAD_MAGIC: [u8; 4] = *b"AMP\x01";
/// The key of a reference object, reserved in every payload: a dict that uses it is refused
/// when sealing, so a user value can never read as a reference.
pub const BYTES_REFERENCE_KEY: &str = "_agentmesh_bytes";

const WHAT: &str = "binary payload framing is truncated or has trailing bytes";

/// Appends the reference object of blob `index` (compact JSON) to `json`.
pub fn write_reference(json: &mut Vec<u8>, index: usize) {
    json.extend_from_slice(b"{\"");
    json.extend_from_slice(BYTES_REFERENCE_KEY.as_bytes());
    json.extend_from_slice(b"\":");
    json.extend_from_slice(index.to_string().as_bytes());
    json.push(b'}');
}

fn len_u32(len: usize, what: &'static str) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::InvalidInput(what))
}

/// A payload to seal, not laid out yet: [`Payload::write_into`] writes its plaintext form
/// straight into the buffer being encrypted (a large binary value is copied once, into the
/// envelope). `json` holds one reference per blob, numbered in order.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    json: JsonText<'a>,
    json_len: usize,
    blobs: &'a [&'a [u8]],
    len: usize,
}

/// A payload's JSON text: one buffer, or pieces laid end to end (so a caller can leave a long
/// string where it is instead of copying it next to the text around it: it is copied once,
/// into the envelope).
#[derive(Debug, Clone, Copy)]
enum JsonText<'a> {
    Whole(&'a [u8]),
    Pieces(&'a [&'a [u8]]),
}

impl JsonText<'_> {
    fn len(&self) -> Result<usize> {
        match self {
            JsonText::Whole(json) => Ok(json.len()),
            JsonText::Pieces(pieces) => pieces.iter().try_fold(0usize, |n, p| {
                n.checked_add(p.len())
                    .ok_or(Error::InvalidInput("payload JSON is too large"))
            }),
        }
    }

    fn write_into(&self, out: &mut Vec<u8>) {
        match self {
            JsonText::Whole(json) => out.extend_from_slice(json),
            JsonText::Pieces(pieces) => {
                for piece in *pieces {
                    out.extend_from_slice(piece);
                }
            }
        }
    }
}

impl<'a> Payload<'a> {
    /// Plaintext bytes as they are (the pure-JSON form, or a framing made already).
    pub fn plain(bytes: &'a [u8]) -> Self {
        Self {
            json: JsonText::Whole(bytes),
            json_len: bytes.len(),
            blobs: &[],
            len: bytes.len(),
        }
    }

    /// JSON with references and the blobs they name; without blobs, the JSON as it is.
    pub fn new(json: &'a [u8], blobs: &'a [&'a [u8]]) -> Result<Self> {
        Self::with_text(JsonText::Whole(json), blobs)
    }

    /// [`Payload::new`] of a JSON text given in pieces, laid end to end in order (the same
    /// plaintext as their concatenation, byte for byte).
    pub fn from_pieces(json: &'a [&'a [u8]], blobs: &'a [&'a [u8]]) -> Result<Self> {
        Self::with_text(JsonText::Pieces(json), blobs)
    }

    fn with_text(json: JsonText<'a>, blobs: &'a [&'a [u8]]) -> Result<Self> {
        let json_len = json.len()?;
        if blobs.is_empty() {
            return Ok(Self {
                json,
                json_len,
                blobs,
                len: json_len,
            });
        }
        len_u32(blobs.len(), "too many binary values in one payload")?;
        len_u32(json_len, "payload JSON is too large")?;
        let mut len = BINARY_PAYLOAD_MAGIC.len() + 8 + json_len;
        for blob in blobs {
            len_u32(blob.len(), "binary value is too large")?;
            len = len
                .checked_add(4 + blob.len())
                .ok_or(Error::InvalidInput("binary payload is too large"))?;
        }
        Ok(Self {
            json,
            json_len,
            blobs,
            len,
        })
    }

    /// The length of the plaintext form.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the plaintext form to `out`.
    pub fn write_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.len);
        if self.blobs.is_empty() {
            self.json.write_into(out);
            return;
        }
        // (sizes checked in `new`)
        let be32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
        out.extend_from_slice(&BINARY_PAYLOAD_MAGIC);
        out.extend_from_slice(&be32(self.blobs.len()));
        out.extend_from_slice(&be32(self.json_len));
        self.json.write_into(out);
        for blob in self.blobs {
            out.extend_from_slice(&be32(blob.len()));
            out.extend_from_slice(blob);
        }
    }
}

/// The plaintext payload of `json` (with one reference per blob, numbered in order) and
/// `blobs`: `json` itself when there is no blob (byte for byte the pure-JSON form).
pub fn encode<'a>(json: &'a [u8], blobs: &[&[u8]]) -> Result<Cow<'a, [u8]>> {
    if blobs.is_empty() {
        return Ok(Cow::Borrowed(json));
    }
    let payload = Payload::new(json, blobs)?;
    let mut out = Vec::with_capacity(payload.len());
    payload.write_into(&mut out);
    Ok(Cow::Owned(out))
}

/// A plaintext payload split into its JSON text and its blobs (none for the pure-JSON form).
#[derive(Debug)]
pub struct PayloadParts<'a> {
    pub json: &'a [u8],
    pub blobs: Blobs<'a>,
}

/// Splits a plaintext payload. A framed one must be exactly its framing (no trailing bytes)
/// and hold at least one blob (a payload without any is always pure JSON, one encoding each).
/// Either way its JSON must be an object: it must open with `{` (after JSON whitespace), so a
/// JSON text that parses is one (the caller's parser checks the rest).
pub fn decode(payload: &[u8]) -> Result<PayloadParts<'_>> {
    let Some(rest) = payload.strip_prefix(&BINARY_PAYLOAD_MAGIC[..3]) else {
        return Ok(PayloadParts {
            json: object_text(payload)?,
            blobs: Blobs::default(),
        });
    };
    let mut r = Reader::new(rest, WHAT);
    if r.u8()? != BINARY_PAYLOAD_MAGIC[3] {
        return Err(Error::Version(
            "binary payload framing of an unknown version",
        ));
    }
    let n = r.count(4, usize::MAX)?;
    if n == 0 {
        return Err(Error::Format(
            "binary payload framing without any binary value",
        ));
    }
    let json_len = r.u32()? as usize;
    let json = object_text(r.bytes(json_len)?)?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.u32()? as usize;
        items.push(r.bytes(len)?);
    }
    r.finish()?;
    Ok(PayloadParts {
        json,
        blobs: Blobs { items, next: 0 },
    })
}

/// `json` if it opens an object; a payload is always one (a list, string, number or `null` at
/// the top would reach the application as something other than the dict it expects).
fn object_text(json: &[u8]) -> Result<&[u8]> {
    let first = json
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'{') {
        Ok(json)
    } else {
        Err(Error::Format("payload is not a JSON object"))
    }
}

/// The error for an object that uses [`BYTES_REFERENCE_KEY`] in a framed payload without
/// being exactly one reference (`{"_agentmesh_bytes":i}`, `i` a non-negative integer).
pub fn malformed_reference() -> Error {
    Error::Format("binary payload reference is not exactly {\"_agentmesh_bytes\": index}")
}

/// The blobs of a framed payload, handed out in reference order.
#[derive(Debug, Default)]
pub struct Blobs<'a> {
    items: Vec<&'a [u8]>,
    next: usize,
}

impl<'a> Blobs<'a> {
    /// True when the payload is framed (references resolve); false for pure JSON, where a
    /// reference-looking object is an ordinary object (an older peer's payload).
    pub fn framed(&self) -> bool {
        !self.items.is_empty()
    }

    /// The blob of the next reference in document order, which must carry `index`.
    pub fn take(&mut self, index: u64) -> Result<&'a [u8]> {
        if usize::try_from(index).ok() != Some(self.next) {
            return Err(Error::Format(
                "binary payload reference out of order or out of range",
            ));
        }
        let blob = self.items.get(self.next).copied().ok_or(Error::Format(
            "binary payload has more references than binary values",
        ))?;
        self.next += 1;
        Ok(blob)
    }

    /// Checks that every blob was referenced.
    pub fn finish(&self) -> Result<()> {
        if self.next == self.items.len() {
            Ok(())
        } else {
            Err(Error::Format(
                "binary payload has binary values that no reference names",
            ))
        }
    }
}
