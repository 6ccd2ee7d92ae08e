//! Encrypted groups with sender keys (docs/protocol.md, section 8).
//!
//! Each member has one sending chain per group (a symmetric ratchet, [`chain`]); its state
//! reaches the other members only as a [`distribution`] inside their pairwise sessions. A group
//! message is sealed once (AES-256-GCM, the header as associated data) and signed once by the
//! sender's identity key ([`session`]); its envelope ([`envelope`]) leaves the recipient out of
//! everything authenticated, so the same message can be addressed to every member. Membership
//! is a record signed by the group's administrator ([`membership`]).

pub mod chain;
pub mod distribution;
pub mod envelope;
pub mod export;
pub mod membership;
pub mod session;

pub use chain::group_chain_step;
pub use distribution::DISTRIBUTION_MAGIC;
pub use envelope::{GroupEnvelope, GroupHeader, CHAIN_ID_LEN, GROUP_MESSAGE_TYPE};
pub use export::GROUP_STATE_MAGIC;
pub use membership::{Membership, MAX_GROUP_MEMBERS, MEMBERSHIP_MAGIC};
pub use session::{
    group_signing_input, GroupSession, OpenedGroupMessage, MAX_CHAINS_PER_SENDER,
    MAX_GROUP_MESSAGE_GAP, MAX_GROUP_SKIPPED_KEYS, MAX_RETIRED_CHAINS,
};
