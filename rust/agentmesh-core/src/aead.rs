//! AES-256-GCM through `ring`. Every message key is used for exactly one message, and the nonce
//! additionally carries the message counter, so a (key, nonce) pair can never repeat.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::error::{Error, Result};
use crate::kdf::MessageKey;

pub const TAG_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;

fn key(mk: &MessageKey) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, mk.as_bytes())
        .map(LessSafeKey::new)
        .map_err(|_| Error::Authentication)
}

/// The nonce of message `counter` under its (single-use) message key.
pub fn message_nonce(counter: u32) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[8..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// Encrypts `in_out` in place and returns the tag (so a caller can encrypt inside one buffer that
/// also holds the associated data).
pub fn seal_separate_tag(
    mk: &MessageKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<[u8; TAG_LEN]> {
    let tag = key(mk)?
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
        .map_err(|_| Error::InvalidInput("payload too large for AES-GCM"))?;
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Encrypts `in_out` in place and appends the tag.
pub fn seal_in_place(
    mk: &MessageKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut Vec<u8>,
) -> Result<()> {
    key(mk)?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
        .map_err(|_| Error::InvalidInput("payload too large for AES-GCM"))
}

/// Decrypts `in_out` (ciphertext || tag) in place; returns the plaintext length.
pub fn open_in_place(
    mk: &MessageKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<usize> {
    key(mk)?
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
        .map(|plain| plain.len())
        .map_err(|_| Error::Authentication)
}

/// One-shot AES-256-GCM with an explicit raw key, for data at rest.
pub fn seal_with_key(
    key_bytes: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut Vec<u8>,
) -> Result<()> {
    seal_in_place(&MessageKey::from_bytes(*key_bytes), nonce, aad, in_out)
}

pub fn open_with_key(
    key_bytes: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<usize> {
    open_in_place(&MessageKey::from_bytes(*key_bytes), nonce, aad, in_out)
}
