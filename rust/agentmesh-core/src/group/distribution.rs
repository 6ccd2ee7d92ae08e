//! The sender-key distribution: the state of one member's sending chain (its id, its position
//! and its chain key), handed to each other member inside the pairwise session, so the hub
//! never sees it. SECRET: whoever holds it reads that chain from its position on.

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::group::envelope::CHAIN_ID_LEN;
use crate::kdf::ChainKey;
use crate::wire::{Reader, Writer};

/// Magic and version of a sender-key distribution.
pub const DISTRIBUTION_MAGIC: &[u8; 4] = b"AGK\x01";

/// A decoded distribution (the chain key stays a zeroizing secret).
pub(crate) struct Distribution {
    pub(crate) group: String,
    pub(crate) sender: String,
    pub(crate) chain_id: [u8; CHAIN_ID_LEN],
    pub(crate) counter: u32,
    pub(crate) key: ChainKey,
}

impl std::fmt::Debug for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distribution")
            .field("group", &self.group)
            .field("sender", &self.sender)
            .field("counter", &self.counter)
            .field("key", &"<secret>")
            .finish_non_exhaustive()
    }
}

impl Distribution {
    /// `AGK\x01 || id(group) || id(sender) || chain_id(16) || u32 counter || chain_key(32)`.
    pub(crate) fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(4 + 2 + self.group.len() + self.sender.len() + 52);
        w.bytes(DISTRIBUTION_MAGIC);
        w.agent_id(&self.group);
        w.agent_id(&self.sender);
        w.bytes(&self.chain_id);
        w.u32(self.counter);
        w.bytes(self.key.as_bytes());
        Zeroizing::new(w.buf)
    }

    pub(crate) fn decode(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data, "sender-key distribution is malformed");
        if r.bytes(4)? != DISTRIBUTION_MAGIC {
            return Err(Error::Format("not a sender-key distribution (bad magic)"));
        }
        let group = r.agent_id()?;
        let sender = r.agent_id()?;
        let chain_id = r.array()?;
        let counter = r.u32()?;
        let key = ChainKey::from_bytes(r.array()?);
        r.finish()?;
        Ok(Self {
            group,
            sender,
            chain_id,
            counter,
            key,
        })
    }
}
