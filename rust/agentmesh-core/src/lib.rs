//! agentmesh-core: the cryptographic protocol of agentmesh in pure Rust.
//!
//! Identities ([`IdentityKeyPair`], [`PublicBundle`]), the X3DH-style set-up and Double Ratchet
//! ([`Session`]), the envelope codec ([`Envelope`]), the payload framing ([`payload`]), and batch sealing/unsealing
//! ([`Session::seal_many`], [`Session::unseal_many`]). The protocol is specified byte by byte
//! in docs/protocol.md.
//!
//! The building blocks (AEAD, KDF steps, labels, the message signing input) are private. The
//! `internals` feature exposes them as [`internals`] for this crate's tests, the fuzz crate and
//! the benchmark floor (`rust/agentmesh-bench`); no shipped build enables it.
#![forbid(unsafe_code)]

mod aead;
mod batch;
mod binding;
mod envelope;
mod error;
/// Encrypted groups (sender keys): docs/protocol.md, section 8.
pub mod group;
mod handshake;
#[cfg(feature = "internals")]
pub mod internals;
mod kdf;
mod keyfile;
mod keys;
mod labels;
mod nats_connect;
/// The plaintext payload: pure JSON, or JSON with binary values framed (docs/protocol.md 5.1).
pub mod payload;
/// The one writer of secret files. Public because the Python glue writes the identity and
/// state files with it (`agentmesh._native.write_private_file`, `AgentKeyPair.save`): the
/// rule (owner-only, atomic, durable, no symlinks) lives here, not in the glue.
pub mod private_file;
mod ratchet;
mod session;
mod state;
mod succession;
mod wire;
mod x25519;

pub use batch::{unseal_across, SessionBatch};
pub use envelope::{
    Envelope, Header, Initiation, MessageType, FLAG_SIGNED, MAGIC, MAX_CIPHERTEXT_LEN, VERSION,
};
pub use error::{Error, Result};
pub use handshake::Mode;
pub use keyfile::{ARGON2_LANES, ARGON2_MEMORY_KIB, ARGON2_PASSES};
pub use keys::{
    agent_id_problem, check_agent_id, fingerprint, AgentIdProblem, IdentityKeyPair, PublicBundle,
    Registration, BUNDLE_JSON_VERSION, HUB_ID_LEN, MAX_AGENT_ID_LEN, MAX_ONE_TIME_PREKEYS,
    MAX_SETUPS_PER_SIGNED_PREKEY, REGISTRATION_NONCE_LEN,
};
pub use nats_connect::{sign_nats_connect, verify_nats_connect, MAX_NATS_NONCE_LEN};
pub use ratchet::{MAX_MESSAGE_GAP, MAX_RETIRED_RATCHET_KEYS, MAX_SKIPPED_KEYS};
pub use session::{Opened, Session, MAX_ARCHIVED_SESSIONS, MAX_REMEMBERED_SESSIONS, SIGNATURE_LEN};
pub use succession::{
    follow_succession, sign_succession, Succession, MAX_SUCCESSION_CHAIN, SUCCESSION_VERSION,
};
