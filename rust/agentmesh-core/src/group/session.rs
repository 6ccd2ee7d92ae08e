//! One member's state in one group: its own sending chain and the chains of the other members,
//! sealing once for everybody and opening with every check before any state changes.

use std::collections::{BTreeMap, VecDeque};

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::aead::{message_nonce, open_in_place, seal_separate_tag, TAG_LEN};
use crate::error::{Error, Result};
use crate::group::chain::{group_chain_step, ReceivingChain, SendingChain};
use crate::group::distribution::Distribution;
use crate::group::envelope::{GroupEnvelope, GroupHeader, CHAIN_ID_LEN};
use crate::group::membership::MAX_GROUP_MEMBERS;
use crate::kdf::{ChainKey, MessageKey};
use crate::keys::{parse_identity_key, verify_labelled, IdentityKeyPair};
use crate::labels;
use crate::payload::Payload;
use crate::session::SIGNATURE_LEN;

/// One message may skip at most this many messages of its chain; a larger jump is refused
/// before any key is derived (the same bound as pairwise sessions).
pub const MAX_GROUP_MESSAGE_GAP: u32 = 1000;
/// Skipped message keys stored per group, over every sender's chains together (the oldest
/// chains give theirs up first).
pub const MAX_GROUP_SKIPPED_KEYS: usize = 2000;
/// Chains kept per sender: the current one and older ones whose late messages may still arrive.
pub const MAX_CHAINS_PER_SENDER: usize = 4;
/// Chain ids remembered after their chain is gone, so a replayed distribution cannot rewind one.
pub const MAX_RETIRED_CHAINS: usize = 1024;

/// The input of a group message signature: label, associated data, BLAKE3-256 of the payload.
pub fn group_signing_input(associated_data: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut input =
        Vec::with_capacity(labels::SIG_GROUP_MESSAGE.len() + associated_data.len() + 32);
    input.extend_from_slice(labels::SIG_GROUP_MESSAGE);
    input.extend_from_slice(associated_data);
    input.extend_from_slice(blake3::hash(payload).as_bytes());
    input
}

/// A decrypted, authenticated group message.
#[derive(Debug)]
pub struct OpenedGroupMessage {
    plaintext: Zeroizing<Vec<u8>>,
}

impl OpenedGroupMessage {
    /// The payload (the plaintext after the sender's signature).
    pub fn payload(&self) -> &[u8] {
        self.plaintext.get(SIGNATURE_LEN..).unwrap_or_default()
    }
}

/// One member's state in one group (sender keys). `Debug` prints no secret.
pub struct GroupSession {
    pub(crate) group: String,
    pub(crate) local_id: String,
    pub(crate) local_identity_key: [u8; 32],
    pub(crate) sending: Option<SendingChain>,
    /// Other members' chains, oldest first.
    pub(crate) receiving: Vec<ReceivingChain>,
    pub(crate) retired: VecDeque<[u8; CHAIN_ID_LEN]>,
}

impl std::fmt::Debug for GroupSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSession")
            .field("group", &self.group)
            .field("local_id", &self.local_id)
            .field("sending", &self.sending)
            .field("receiving", &self.receiving)
            .finish_non_exhaustive()
    }
}

/// How a receiving chain moves forward once a message on it authenticated.
struct Advance {
    key: ChainKey,
    next_counter: u32,
    skipped: Vec<(u32, MessageKey)>,
}

/// What opening a message would change, computed before the message is authenticated.
struct Plan {
    chain: usize,
    message_key: MessageKey,
    /// None: the message used a stored skipped key.
    advance: Option<Advance>,
}

impl GroupSession {
    /// An empty state for `group` (no chain yet: the first seal or distribution starts one).
    pub fn new(ours: &IdentityKeyPair, group: &str) -> Result<Self> {
        crate::keys::check_agent_id(group).map_err(|_| {
            Error::InvalidInput("group id must be 1..=255 UTF-8 bytes without control characters")
        })?;
        if ours.is_unbound() {
            return Err(Error::InvalidInput(
                "groups need an identity with an agent id",
            ));
        }
        Ok(Self {
            group: group.to_owned(),
            local_id: ours.agent_id().to_owned(),
            local_identity_key: ours.identity_key(),
            sending: None,
            receiving: Vec::new(),
            retired: VecDeque::new(),
        })
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub(crate) fn check_local(&self, ours: &IdentityKeyPair) -> Result<()> {
        if ours.agent_id() != self.local_id || ours.identity_key() != self.local_identity_key {
            return Err(Error::Identity(
                "this group state belongs to another identity",
            ));
        }
        Ok(())
    }

    /// The id of the current sending chain (None until one is started, and after a reset).
    pub fn sending_chain_id(&self) -> Option<[u8; CHAIN_ID_LEN]> {
        self.sending.as_ref().map(|c| c.chain_id)
    }

    /// Drops the sending chain: the next message starts a new one, whose key reaches only the
    /// members it is then distributed to (after a removal).
    pub fn reset_sending_chain(&mut self) {
        self.sending = None;
    }

    fn sending_chain<R: RngCore + CryptoRng>(&mut self, rng: &mut R) -> &mut SendingChain {
        self.sending.get_or_insert_with(|| {
            let mut chain_id = [0u8; CHAIN_ID_LEN];
            rng.fill_bytes(&mut chain_id);
            let mut key = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(key.as_mut());
            SendingChain {
                chain_id,
                counter: 0,
                key: ChainKey::from_bytes(*key),
            }
        })
    }

    /// The distribution of the current sending chain at its current position (a new chain is
    /// started if there is none): a holder reads this member's messages from the next one on,
    /// never an earlier one. SECRET: send it only inside a pairwise session.
    pub fn distribution<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        rng: &mut R,
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.check_local(ours)?;
        let group = self.group.clone();
        let sender = self.local_id.clone();
        let chain = self.sending_chain(rng);
        Ok(Distribution {
            group,
            sender,
            chain_id: chain.chain_id,
            counter: chain.counter,
            key: chain.key.clone(),
        }
        .encode())
    }

    /// Seals `payload` once for every member: one AES-256-GCM encryption under the chain's next
    /// message key and one Ed25519 signature by the sender's identity key. The chain advances and
    /// its previous key is gone.
    pub fn seal<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        payload: &[u8],
        timestamp_ms: u64,
        rng: &mut R,
    ) -> Result<GroupEnvelope> {
        self.seal_payload(ours, &Payload::plain(payload), timestamp_ms, rng)
    }

    /// [`GroupSession::seal`] of a payload laid out straight into the envelope (a framed
    /// payload's binary values are copied once).
    pub fn seal_payload<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        payload: &Payload<'_>,
        timestamp_ms: u64,
        rng: &mut R,
    ) -> Result<GroupEnvelope> {
        self.check_local(ours)?;
        let group = self.group.clone();
        let sender = self.local_id.clone();
        let chain = self.sending_chain(rng);
        if chain.counter == u32::MAX {
            return Err(Error::InvalidInput(
                "sending chain exhausted: reset it to start a new one",
            ));
        }
        let header = GroupHeader {
            sender,
            group,
            chain_id: chain.chain_id,
            counter: chain.counter,
            timestamp_ms,
        };
        let ciphertext_len = SIGNATURE_LEN + payload.len() + TAG_LEN;
        let (prefix, mut body) = GroupEnvelope::encode_header(&header, ciphertext_len)?;
        let (message_key, next_key) = group_chain_step(&chain.key);
        let mut aad = Vec::with_capacity(prefix.len() + body.len());
        aad.extend_from_slice(&prefix);
        aad.extend_from_slice(&body);
        let ciphertext_offset = body.len();
        body.resize(ciphertext_offset + SIGNATURE_LEN, 0);
        payload.write_into(&mut body);
        let (sig_slot, written) = body
            .get_mut(ciphertext_offset..)
            .and_then(|plain| plain.split_at_mut_checked(SIGNATURE_LEN))
            .ok_or(Error::InvalidInput("group message layout"))?;
        let signature = ours.sign_labelled(labels::SIG_GROUP_MESSAGE, &signing_tail(&aad, written));
        sig_slot.copy_from_slice(&signature);
        let plain = body
            .get_mut(ciphertext_offset..)
            .ok_or(Error::InvalidInput("group message layout"))?;
        let tag = seal_separate_tag(&message_key, message_nonce(header.counter), &aad, plain)?;
        body.extend_from_slice(&tag);
        // Commit only once everything succeeded: the key of this message is never derived again.
        chain.key = next_key;
        chain.counter += 1;
        Ok(GroupEnvelope::from_parts(
            header,
            prefix,
            body,
            ciphertext_offset,
        ))
    }

    /// Installs another member's chain from its distribution. `sender` is the pairwise peer
    /// it came from and `signing_key` that peer's identity key: a member can only hand out its
    /// own chain, and every message on it must carry that key's signature. A chain already
    /// held, or held before, is refused (a replayed distribution must not rewind a chain).
    pub fn install(
        &mut self,
        distribution: &[u8],
        sender: &str,
        signing_key: &[u8; 32],
    ) -> Result<()> {
        let d = Distribution::decode(distribution)?;
        if d.group != self.group {
            return Err(Error::Identity(
                "sender-key distribution is for another group",
            ));
        }
        if d.sender != sender {
            return Err(Error::Identity(
                "sender-key distribution names another sender than the peer it came from",
            ));
        }
        if d.sender == self.local_id {
            return Err(Error::Identity(
                "sender-key distribution names this member itself",
            ));
        }
        let verifier = parse_identity_key(signing_key)?;
        if self.retired.contains(&d.chain_id)
            || self.receiving.iter().any(|c| c.chain_id == d.chain_id)
        {
            return Err(Error::Replay);
        }
        let held = self
            .receiving
            .iter()
            .filter(|c| c.sender == d.sender)
            .count();
        if held == 0 && self.senders().len() >= MAX_GROUP_MEMBERS {
            // (the export holds at most this many senders' chains: keep import its inverse)
            return Err(Error::InvalidInput(
                "this group state already holds the chains of 1000 members",
            ));
        }
        if held >= MAX_CHAINS_PER_SENDER {
            if let Some(oldest) = self.receiving.iter().position(|c| c.sender == d.sender) {
                let old = self.receiving.remove(oldest);
                self.retire(old.chain_id);
            }
        }
        self.receiving.push(ReceivingChain {
            sender: d.sender,
            signing_key: *signing_key,
            verifier,
            chain_id: d.chain_id,
            next_counter: d.counter,
            key: d.key,
            skipped: BTreeMap::new(),
        });
        Ok(())
    }

    /// Forgets every chain of `sender` (removed from the group): nothing it seals opens here.
    pub fn forget_sender(&mut self, sender: &str) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.receiving)
            .into_iter()
            .partition(|c| c.sender == sender);
        self.receiving = kept;
        for c in gone {
            self.retire(c.chain_id);
        }
    }

    /// Whether this state holds `sender`'s chain `chain_id` (a message on a chain whose
    /// distribution has not arrived yet can wait for it instead of being refused).
    pub fn knows_chain(&self, sender: &str, chain_id: &[u8; CHAIN_ID_LEN]) -> bool {
        self.receiving
            .iter()
            .any(|c| c.chain_id == *chain_id && c.sender == sender)
    }

    /// The members whose chains this state holds.
    pub fn senders(&self) -> Vec<String> {
        let mut out: Vec<String> = self.receiving.iter().map(|c| c.sender.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    fn retire(&mut self, chain_id: [u8; CHAIN_ID_LEN]) {
        self.retired.push_back(chain_id);
        while self.retired.len() > MAX_RETIRED_CHAINS {
            self.retired.pop_front();
        }
    }

    fn plan(&self, header: &GroupHeader) -> Result<Plan> {
        if header.group != self.group {
            return Err(Error::Identity("group message is for another group"));
        }
        let chain_index = self
            .receiving
            .iter()
            .position(|c| c.chain_id == header.chain_id && c.sender == header.sender)
            .ok_or(Error::Authentication)?;
        let chain = self
            .receiving
            .get(chain_index)
            .ok_or(Error::Authentication)?;
        let counter = header.counter;
        if counter == u32::MAX {
            return Err(Error::Format("group message counter out of range"));
        }
        if counter < chain.next_counter {
            let key = chain.skipped.get(&counter).ok_or(Error::Replay)?;
            return Ok(Plan {
                chain: chain_index,
                message_key: key.clone(),
                advance: None,
            });
        }
        let gap = counter - chain.next_counter;
        if gap > MAX_GROUP_MESSAGE_GAP {
            return Err(Error::MessageGap {
                gap: u64::from(gap),
                limit: MAX_GROUP_MESSAGE_GAP,
            });
        }
        let mut skipped = Vec::with_capacity(gap as usize);
        let mut key = chain.key.clone();
        for n in chain.next_counter..counter {
            let (mk, next) = group_chain_step(&key);
            skipped.push((n, mk));
            key = next;
        }
        let (message_key, next) = group_chain_step(&key);
        Ok(Plan {
            chain: chain_index,
            message_key,
            advance: Some(Advance {
                key: next,
                next_counter: counter.saturating_add(1),
                skipped,
            }),
        })
    }

    /// Opens a group message. Checks, in order: the group, a chain of the sender this member
    /// holds, replay and the gap bound (before any derivation), the AEAD, the sender's signature;
    /// only then does the state change.
    pub fn open(&mut self, env: &GroupEnvelope) -> Result<OpenedGroupMessage> {
        let header = env.header();
        let plan = self.plan(header)?;
        let aad = env.associated_data();
        let mut plaintext = Zeroizing::new(env.ciphertext().to_vec());
        let len = open_in_place(
            &plan.message_key,
            message_nonce(header.counter),
            &aad,
            &mut plaintext,
        )?;
        plaintext.truncate(len);
        let chain = self
            .receiving
            .get(plan.chain)
            .ok_or(Error::Authentication)?;
        let signature: [u8; SIGNATURE_LEN] = plaintext
            .get(..SIGNATURE_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(Error::Format("group message is shorter than its signature"))?;
        let payload = plaintext.get(SIGNATURE_LEN..).unwrap_or_default();
        verify_labelled(
            &chain.verifier,
            labels::SIG_GROUP_MESSAGE,
            &signing_tail(&aad, payload),
            &signature,
            "group message is not signed by its sender",
        )?;
        self.commit(plan, header.counter);
        Ok(OpenedGroupMessage { plaintext })
    }

    fn commit(&mut self, plan: Plan, counter: u32) {
        let Some(chain) = self.receiving.get_mut(plan.chain) else {
            return;
        };
        match plan.advance {
            None => {
                chain.skipped.remove(&counter);
            }
            Some(advance) => {
                chain.key = advance.key;
                chain.next_counter = advance.next_counter;
                chain.skipped.extend(advance.skipped);
            }
        }
        self.trim_skipped_keys();
    }

    pub(crate) fn skipped_key_count(&self) -> usize {
        self.receiving.iter().map(|c| c.skipped.len()).sum()
    }

    /// Keeps at most MAX_GROUP_SKIPPED_KEYS: the oldest chains, lowest counters first, give up theirs.
    fn trim_skipped_keys(&mut self) {
        let mut excess = self
            .skipped_key_count()
            .saturating_sub(MAX_GROUP_SKIPPED_KEYS);
        for chain in &mut self.receiving {
            while excess > 0 && chain.skipped.pop_first().is_some() {
                excess -= 1;
            }
        }
    }
}

/// The signed bytes after the label: associated data || BLAKE3-256(payload).
fn signing_tail(associated_data: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut tail = Vec::with_capacity(associated_data.len() + 32);
    tail.extend_from_slice(associated_data);
    tail.extend_from_slice(blake3::hash(payload).as_bytes());
    tail
}
