//! The proof an agent gives when it connects to a NATS cluster guarded by the agentmesh
//! authorization service: a signature by its identity key over the server's nonce for this
//! connection, its id and the bundle it registers (docs/protocol.md, "NATS connect proof").

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::keys::{parse_identity_key, verify_labelled, IdentityKeyPair, PublicBundle};
use crate::labels;

/// Longest nonce accepted (nats-server sends 22 characters); bounds the signing input.
pub const MAX_NATS_NONCE_LEN: usize = 256;

fn signature_input(bundle: &PublicBundle, nonce: &[u8]) -> Result<Vec<u8>> {
    if nonce.is_empty() || nonce.len() > MAX_NATS_NONCE_LEN {
        return Err(Error::InvalidInput(
            "a NATS nonce must be 1 to 256 bytes (is the server configured for auth callout?)",
        ));
    }
    let agent_id = bundle.require_agent_id()?;
    // The one-time prekey is not the agent's statement (a directory attaches it).
    let signed_part = bundle.clone().with_one_time_prekey(None).to_bytes();
    let mut w = crate::wire::Writer::with_capacity(1 + agent_id.len() + 4 + nonce.len() + 32);
    w.agent_id(agent_id);
    w.u32(u32::try_from(nonce.len()).unwrap_or(u32::MAX));
    w.bytes(nonce);
    w.bytes(&Sha256::digest(&signed_part));
    Ok(w.buf)
}

/// Signs the connect proof for `nonce` with the identity's own bundle.
pub fn sign_nats_connect(identity: &IdentityKeyPair, nonce: &[u8]) -> Result<[u8; 64]> {
    let bundle = identity.public_bundle();
    let input = signature_input(&bundle, nonce)?;
    Ok(identity.sign_labelled(labels::SIG_NATS_CONNECT, &input))
}

/// Checks a connect proof against the bundle it names (its identity key and id).
pub fn verify_nats_connect(
    bundle: &PublicBundle,
    nonce: &[u8],
    signature: &[u8; 64],
) -> Result<()> {
    let input = signature_input(bundle, nonce)?;
    let key = parse_identity_key(&bundle.identity_key())?;
    verify_labelled(
        &key,
        labels::SIG_NATS_CONNECT,
        &input,
        signature,
        "NATS connect proof does not match the identity key, id, nonce or bundle",
    )
}
