//! The protocol's building blocks, for this crate's tests, the fuzz crate and the benchmark
//! floor (`rust/agentmesh-bench`) only: behind the `internals` feature, which no shipped build
//! enables. Not a stable API. Everything here is the core's own code, re-exported, so that a
//! test or a floor measurement never re-implements a layout, a label or a key derivation.

use rand_core::RngCore;
use std::path::Path;

use crate::envelope::Envelope;
use crate::private_file::WriteError;

pub use crate::aead::{
    message_nonce, open_in_place, open_with_key, seal_separate_tag, seal_with_key, NONCE_LEN,
    TAG_LEN,
};
pub use crate::kdf::{
    at_rest_key, chain_step, root_step, session_setup, ChainKey, MessageKey, RootKey, SetupKeys,
};
pub use crate::session::message_signing_input;
pub use crate::x25519::{
    diffie_hellman as x25519_diffie_hellman,
    diffie_hellman_and_public_key as x25519_diffie_hellman_and_public_key,
    diffie_hellman_with as x25519_diffie_hellman_with, ladder as x25519_ladder,
    public_key as x25519_public_key, PeerPublic as X25519PeerPublic,
};

/// Every domain-separation label of the protocol (docs/protocol.md).
pub mod labels {
    pub use crate::labels::*;
}

/// The bytes of an envelope that are its AEAD associated data (the header with the
/// ciphertext length), as the protocol signs and authenticates them.
pub fn associated_data(envelope: &Envelope) -> &[u8] {
    envelope.associated_data()
}

/// [`crate::private_file::write_private_file`] with the source of the temp names given
/// (tests predict them).
pub fn write_private_file_with_rng<R: RngCore>(
    path: &Path,
    data: &[u8],
    rng: &mut R,
) -> Result<(), WriteError> {
    crate::private_file::write_private_file_with_rng(path, data, rng)
}

/// Signs `message` under `label` with `keypair`'s identity key (tests forge group messages
/// with a member's own, valid signature over another member's header).
pub fn sign_labelled(keypair: &crate::IdentityKeyPair, label: &[u8], message: &[u8]) -> [u8; 64] {
    keypair.sign_labelled(label, message)
}
