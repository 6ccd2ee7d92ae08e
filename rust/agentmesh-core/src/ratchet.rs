//! The Double Ratchet of one session. Receiving is split into a *plan* (every key derived, nothing
//! changed) and a *commit*, so that the state changes only after a message authenticated.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;

use crate::envelope::{Header, Initiation};
use crate::error::{Error, Result};
use crate::kdf::{chain_step, root_step, ChainKey, MessageKey, RootKey};
use crate::x25519::{
    diffie_hellman, diffie_hellman_and_public_key, diffie_hellman_with, PeerPublic,
};

/// Most messages one incoming message may skip over (in its own chain plus the end of the
/// previous one). A larger jump is refused before any key is derived.
pub const MAX_MESSAGE_GAP: u32 = 1000;
/// Most skipped message keys a session stores, over all its ratchets (the active one and the
/// archived set-ups); the oldest are forgotten first.
pub const MAX_SKIPPED_KEYS: usize = 2000;
/// How many of the peer's past ratchet keys are remembered to recognise replays of old chains.
pub const MAX_RETIRED_RATCHET_KEYS: usize = 64;

/// The keys of messages that were skipped over, kept (bounded) until they arrive.
#[derive(Clone, Default)]
pub(crate) struct SkippedKeys {
    keys: HashMap<([u8; 32], u32), MessageKey>,
    order: VecDeque<([u8; 32], u32)>,
}

impl SkippedKeys {
    pub(crate) fn get(&self, ratchet_key: &[u8; 32], counter: u32) -> Option<&MessageKey> {
        self.keys.get(&(*ratchet_key, counter))
    }

    fn remove(&mut self, id: &([u8; 32], u32)) {
        if self.keys.remove(id).is_some() {
            self.order.retain(|k| k != id);
        }
    }

    fn insert(&mut self, ratchet_key: [u8; 32], counter: u32, key: MessageKey) {
        while self.keys.len() >= MAX_SKIPPED_KEYS {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.keys.remove(&oldest);
                }
                None => break,
            }
        }
        if self.keys.insert((ratchet_key, counter), key).is_none() {
            self.order.push_back((ratchet_key, counter));
        }
    }

    /// Forgets up to `n` of the oldest keys; returns how many were forgotten.
    pub(crate) fn drop_oldest(&mut self, n: usize) -> usize {
        let mut dropped = 0;
        while dropped < n {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if self.keys.remove(&oldest).is_some() {
                dropped += 1;
            }
        }
        dropped
    }

    pub(crate) fn insert_restored(&mut self, ratchet_key: [u8; 32], counter: u32, key: MessageKey) {
        self.insert(ratchet_key, counter, key);
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&([u8; 32], u32), &MessageKey)> {
        self.order
            .iter()
            .filter_map(|id| self.keys.get(id).map(|k| (id, k)))
    }
}

/// Where a session came from, which decides what its prekey messages may look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// We started it; the initiation is repeated in every message until the peer answers.
    Initiator { acknowledged: bool },
    /// The peer started it with these set-up fields.
    Responder,
}

#[derive(Clone)]
pub(crate) struct Ratchet {
    pub(crate) session_id: [u8; 16],
    pub(crate) role: Role,
    pub(crate) initiation: Initiation,
    pub(crate) root: RootKey,
    pub(crate) our_ratchet: StaticSecret,
    pub(crate) our_ratchet_public: [u8; 32],
    pub(crate) their_ratchet: Option<[u8; 32]>,
    /// `their_ratchet` decoded by the receive that brought it, for our next send's DH. A cache,
    /// not state: never exported, and checked against `their_ratchet` before use.
    pub(crate) their_ratchet_decoded: Option<PeerPublic>,
    pub(crate) sending: Option<ChainKey>,
    pub(crate) send_counter: u32,
    pub(crate) receiving: Option<ChainKey>,
    pub(crate) recv_counter: u32,
    pub(crate) previous_send_counter: u32,
    pub(crate) skipped: SkippedKeys,
    pub(crate) retired_peer_keys: VecDeque<[u8; 32]>,
    pub(crate) last_peer_timestamp: u64,
}

impl fmt::Debug for Ratchet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ratchet")
            .field("role", &self.role)
            .field("send_counter", &self.send_counter)
            .field("recv_counter", &self.recv_counter)
            .field("skipped_keys", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// Everything a receive would change, computed without changing anything.
pub(crate) struct ReceivePlan {
    pub(crate) message_key: MessageKey,
    step: Step,
}

enum Step {
    FromSkipped,
    SameChain {
        skipped: Vec<(u32, MessageKey)>,
        next_chain: ChainKey,
    },
    NewChain {
        old_chain_skipped: Vec<(u32, MessageKey)>,
        skipped: Vec<(u32, MessageKey)>,
        next_receiving: ChainKey,
        root: RootKey,
        their_ratchet: Box<PeerPublic>,
    },
}

/// Derives the keys of messages `from..to` (skipped), of message `to`, and the chain after it.
fn advance(chain: &ChainKey, from: u32, to: u32) -> (Vec<(u32, MessageKey)>, MessageKey, ChainKey) {
    let mut skipped = Vec::with_capacity(to.saturating_sub(from) as usize);
    let mut ck = chain.clone();
    let mut n = from;
    loop {
        let (mk, next) = chain_step(&ck);
        ck = next;
        if n >= to {
            return (skipped, mk, ck);
        }
        skipped.push((n, mk));
        n += 1;
    }
}

impl Ratchet {
    /// The initiator's first state: its ratchet key against the responder's signed prekey.
    pub(crate) fn new_initiator<R: RngCore + CryptoRng>(
        session_id: [u8; 16],
        initiation: Initiation,
        root: RootKey,
        their_signed_prekey: [u8; 32],
        rng: &mut R,
    ) -> Result<Self> {
        let our_ratchet = StaticSecret::random_from_rng(&mut *rng);
        let our_ratchet_public = crate::x25519::public_key(&our_ratchet);
        let dh = diffie_hellman(&our_ratchet, &their_signed_prekey)?;
        let (root, sending) = root_step(&root, &dh);
        Ok(Self {
            session_id,
            role: Role::Initiator {
                acknowledged: false,
            },
            initiation,
            root,
            our_ratchet,
            our_ratchet_public,
            their_ratchet: Some(their_signed_prekey),
            their_ratchet_decoded: None,
            sending: Some(sending),
            send_counter: 0,
            receiving: None,
            recv_counter: 0,
            previous_send_counter: 0,
            skipped: SkippedKeys::default(),
            retired_peer_keys: VecDeque::new(),
            last_peer_timestamp: 0,
        })
    }

    /// The responder's first state: its signed prekey is its first ratchet key.
    pub(crate) fn new_responder(
        session_id: [u8; 16],
        initiation: Initiation,
        root: RootKey,
        signed_prekey: StaticSecret,
    ) -> Self {
        let our_ratchet_public = crate::x25519::public_key(&signed_prekey);
        Self {
            session_id,
            role: Role::Responder,
            initiation,
            root,
            our_ratchet: signed_prekey,
            our_ratchet_public,
            their_ratchet: None,
            their_ratchet_decoded: None,
            sending: None,
            send_counter: 0,
            receiving: None,
            recv_counter: 0,
            previous_send_counter: 0,
            skipped: SkippedKeys::default(),
            retired_peer_keys: VecDeque::new(),
            last_peer_timestamp: 0,
        }
    }

    pub(crate) fn awaiting_answer(&self) -> bool {
        self.role
            == Role::Initiator {
                acknowledged: false,
            }
    }

    /// Starts a new sending chain if the peer's ratchet key changed since we last sent. The new
    /// ratchet key is made only now, at the first send, not when the peer's key arrived: a copy
    /// of the state stolen in between therefore learns nothing about our next chain, and the
    /// session heals after a single round trip.
    pub(crate) fn ensure_sending_chain<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
    ) -> Result<()> {
        if self.sending.is_some() {
            return Ok(());
        }
        let their = self.their_ratchet.ok_or(Error::InvalidInput(
            "this session cannot send before it has received",
        ))?;
        let their = match self.their_ratchet_decoded {
            Some(decoded) if *decoded.bytes() == their => decoded,
            _ => PeerPublic::new(their),
        };
        let our_ratchet = StaticSecret::random_from_rng(&mut *rng);
        let (dh, our_ratchet_public) = diffie_hellman_and_public_key(&our_ratchet, &their)?;
        let (root, sending) = root_step(&self.root, &dh);
        self.our_ratchet_public = our_ratchet_public;
        self.our_ratchet = our_ratchet;
        self.root = root;
        self.sending = Some(sending);
        self.previous_send_counter = self.send_counter;
        self.send_counter = 0;
        Ok(())
    }

    /// The key, counter and chain state of the next message to send (not yet committed).
    pub(crate) fn next_send(&self) -> Result<(MessageKey, ChainKey, u32)> {
        let chain = self.sending.as_ref().ok_or(Error::InvalidInput(
            "this session cannot send before it has received",
        ))?;
        if self.send_counter == u32::MAX {
            return Err(Error::InvalidInput("sending chain exhausted"));
        }
        let (mk, next) = chain_step(chain);
        Ok((mk, next, self.send_counter))
    }

    pub(crate) fn commit_send(&mut self, next: ChainKey) {
        self.sending = Some(next);
        self.send_counter = self.send_counter.saturating_add(1);
    }

    /// Derives the message key for `header` and everything the receive would change.
    pub(crate) fn plan_receive(&self, header: &Header) -> Result<ReceivePlan> {
        let n = header.counter;
        if let Some(mk) = self.skipped.get(&header.ratchet_key, n) {
            return Ok(ReceivePlan {
                message_key: mk.clone(),
                step: Step::FromSkipped,
            });
        }
        if self.their_ratchet == Some(header.ratchet_key) {
            let chain = self.receiving.as_ref().ok_or(Error::Authentication)?;
            if n < self.recv_counter {
                return Err(Error::Replay);
            }
            let gap = n - self.recv_counter;
            if gap > MAX_MESSAGE_GAP {
                return Err(Error::MessageGap {
                    gap: u64::from(gap),
                    limit: MAX_MESSAGE_GAP,
                });
            }
            let (skipped, mk, next_chain) = advance(chain, self.recv_counter, n);
            return Ok(ReceivePlan {
                message_key: mk,
                step: Step::SameChain {
                    skipped,
                    next_chain,
                },
            });
        }
        if self.retired_peer_keys.contains(&header.ratchet_key) {
            return Err(Error::Replay);
        }
        // A new chain: first the rest of the current one (up to the sender's previous length).
        let old_gap = match (&self.receiving, self.their_ratchet) {
            (Some(_), Some(_)) => header
                .previous_chain_length
                .saturating_sub(self.recv_counter),
            _ => 0,
        };
        let gap = u64::from(old_gap) + u64::from(n);
        if gap > u64::from(MAX_MESSAGE_GAP) {
            return Err(Error::MessageGap {
                gap,
                limit: MAX_MESSAGE_GAP,
            });
        }
        let old_chain_skipped = match &self.receiving {
            Some(chain) if old_gap > 0 => {
                let (mut keys, last, _) =
                    advance(chain, self.recv_counter, header.previous_chain_length - 1);
                keys.push((header.previous_chain_length - 1, last));
                keys
            }
            _ => Vec::new(),
        };
        let their_ratchet = Box::new(PeerPublic::new(header.ratchet_key));
        let dh_in = diffie_hellman_with(&self.our_ratchet, &their_ratchet)?;
        let (root, receiving) = root_step(&self.root, &dh_in);
        let (skipped, mk, next_receiving) = advance(&receiving, 0, n);
        Ok(ReceivePlan {
            message_key: mk,
            step: Step::NewChain {
                old_chain_skipped,
                skipped,
                next_receiving,
                root,
                their_ratchet,
            },
        })
    }

    /// Applies a plan whose message authenticated.
    pub(crate) fn commit_receive(&mut self, header: &Header, plan: ReceivePlan) {
        self.last_peer_timestamp = self.last_peer_timestamp.max(header.timestamp_ms);
        match plan.step {
            Step::FromSkipped => self.skipped.remove(&(header.ratchet_key, header.counter)),
            Step::SameChain {
                skipped,
                next_chain,
            } => {
                for (i, mk) in skipped {
                    self.skipped.insert(header.ratchet_key, i, mk);
                }
                self.receiving = Some(next_chain);
                self.recv_counter = header.counter.saturating_add(1);
            }
            Step::NewChain {
                old_chain_skipped,
                skipped,
                next_receiving,
                root,
                their_ratchet,
            } => {
                if let Some(old) = self.their_ratchet {
                    for (i, mk) in old_chain_skipped {
                        self.skipped.insert(old, i, mk);
                    }
                    if self.retired_peer_keys.len() >= MAX_RETIRED_RATCHET_KEYS {
                        self.retired_peer_keys.pop_front();
                    }
                    self.retired_peer_keys.push_back(old);
                }
                for (i, mk) in skipped {
                    self.skipped.insert(header.ratchet_key, i, mk);
                }
                self.their_ratchet = Some(header.ratchet_key);
                self.their_ratchet_decoded = Some(*their_ratchet);
                self.receiving = Some(next_receiving);
                self.recv_counter = header.counter.saturating_add(1);
                self.root = root;
                // Our next send starts a new chain with a fresh ratchet key.
                self.sending = None;
            }
        }
    }
}
