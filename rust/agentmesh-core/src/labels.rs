//! Every domain-separation label of the protocol, in one place. Changing any of them changes the
//! wire protocol: they are part of the version-1 specification in docs/protocol.md.

/// HKDF info prefix of the X3DH-style session set-up.
pub const KDF_SESSION_SETUP: &[u8] = b"agentmesh/v1/kdf/session-setup";
/// HKDF info of a root-key ratchet step (DH ratchet).
pub const KDF_ROOT_STEP: &[u8] = b"agentmesh/v1/kdf/root-step";
/// HKDF info of a symmetric chain step (one message key and the next chain key).
pub const KDF_CHAIN_STEP: &[u8] = b"agentmesh/v1/kdf/chain-step";
/// HKDF info of the key that encrypts exported state at rest.
pub const KDF_AT_REST: &[u8] = b"agentmesh/v1/kdf/at-rest";

/// Signature purpose: a signed prekey inside a public bundle.
pub const SIG_PREKEY: &[u8] = b"agentmesh/v1/sig/signed-prekey\0";
/// Signature purpose: a message (header and content digest).
pub const SIG_MESSAGE: &[u8] = b"agentmesh/v1/sig/message\0";
/// Signature purpose: registering with a hub (its challenge, bound to the hub, the client's
/// nonce, the bundle and the TLS channel; layout in docs/protocol.md). It replaced
/// `agentmesh/v1/sig/hub-challenge`, which covered the challenge alone: nothing produces or
/// accepts that form any more.
pub const SIG_HUB_REGISTRATION: &[u8] = b"agentmesh/v1/sig/hub-registration\0";

/// The 32 0xFF bytes prepended to the X3DH key material (as in X3DH for curve25519), so that the
/// input can never be mistaken for a bare DH output.
pub const SETUP_IKM_PREFIX: [u8; 32] = [0xFF; 32];

/// HKDF info of a group sending-chain step (sender keys, docs/protocol.md section 8): distinct
/// from the pairwise chain step, so a key of one kind can never be derived as the other.
pub const KDF_GROUP_CHAIN_STEP: &[u8] = b"agentmesh/v1/kdf/group-chain-step";
/// Signature purpose: a group message (its header without the routing recipient, and the
/// content digest).
pub const SIG_GROUP_MESSAGE: &[u8] = b"agentmesh/v1/sig/group-message\0";
/// Signature purpose: a group membership record signed by the group's administrator.
pub const SIG_GROUP_MEMBERSHIP: &[u8] = b"agentmesh/v1/sig/group-membership\0";
/// Signature purpose: connecting to a NATS cluster as an agent (the server's nonce, the id and
/// the bundle; docs/protocol.md). Its own label: NATS nkey authentication signs the raw nonce,
/// so an identity key must never be used as an nkey.
pub const SIG_NATS_CONNECT: &[u8] = b"agentmesh/v1/sig/nats-connect\0";
/// Signature purpose: an identity key hands its agent id over to its successor key (the old key
/// signs the succession statement; docs/protocol.md, "Succession statement").
pub const SIG_SUCCESSION: &[u8] = b"agentmesh/v1/sig/succession\0";
/// Signature purpose: the successor key accepts the same succession statement, proving that
/// whoever rotated holds its secret (a statement cannot name a key its signer does not own).
pub const SIG_SUCCESSION_ACCEPT: &[u8] = b"agentmesh/v1/sig/succession-accept\0";
