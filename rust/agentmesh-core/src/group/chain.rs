//! Sender-key chains: a symmetric ratchet per member per group. Each step yields one message key
//! and the next chain key; the old chain key is dropped (and zeroized) at once, so a copy of the
//! state taken later cannot open earlier messages (forward secrecy within a chain).

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::group::envelope::CHAIN_ID_LEN;
use crate::kdf::{ChainKey, MessageKey};
use crate::labels;

/// Group chain step: HKDF-Expand(PRK = chain key, info = "agentmesh/v1/kdf/group-chain-step",
/// 64) -> message key || next chain key.
pub fn group_chain_step(chain: &ChainKey) -> (MessageKey, ChainKey) {
    let mut okm = [0u8; 64];
    if let Ok(hk) = Hkdf::<Sha256>::from_prk(chain.as_bytes()) {
        // 64 <= 255 * 32: expand cannot fail
        let _ = hk.expand(labels::KDF_GROUP_CHAIN_STEP, &mut okm);
    }
    let mut mk = [0u8; 32];
    let mut ck = [0u8; 32];
    mk.copy_from_slice(&okm[..32]);
    ck.copy_from_slice(&okm[32..]);
    okm.zeroize();
    let out = (MessageKey::from_bytes(mk), ChainKey::from_bytes(ck));
    mk.zeroize();
    ck.zeroize();
    out
}

/// This member's own sending chain in one group.
pub(crate) struct SendingChain {
    pub(crate) chain_id: [u8; CHAIN_ID_LEN],
    /// The counter of the next message.
    pub(crate) counter: u32,
    pub(crate) key: ChainKey,
}

/// Another member's chain as this member holds it.
pub(crate) struct ReceivingChain {
    pub(crate) sender: String,
    /// The sender's Ed25519 identity key: every message on the chain must carry its signature.
    pub(crate) signing_key: [u8; 32],
    /// `signing_key` parsed once (decompressing the point costs as much as a tenth of a
    /// verification, so it is not repeated per message).
    pub(crate) verifier: VerifyingKey,
    pub(crate) chain_id: [u8; CHAIN_ID_LEN],
    /// The counter of the next message not yet derived.
    pub(crate) next_counter: u32,
    pub(crate) key: ChainKey,
    /// Keys of messages skipped on the way to a later one (out-of-order arrival), by counter.
    pub(crate) skipped: BTreeMap<u32, MessageKey>,
}

impl std::fmt::Debug for SendingChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendingChain")
            .field("counter", &self.counter)
            .field("key", &"<secret>")
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ReceivingChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivingChain")
            .field("sender", &self.sender)
            .field("next_counter", &self.next_counter)
            .field("skipped", &self.skipped.len())
            .field("key", &"<secret>")
            .finish_non_exhaustive()
    }
}
