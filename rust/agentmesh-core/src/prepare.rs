//! Preparing a reply while a message is opened: the next sending ratchet step (a new ratchet
//! key and its X25519 with the peer's new key) is computed on a second core while the first
//! one derives, decrypts and verifies. It is the costliest part of a reply that follows a
//! message, so a request/response exchange gets shorter by it on both sides.
//!
//! Security: the step is kept only if the message authenticated, only in memory (never in an
//! exported state), and only until our next send. A state exported in between heals at our
//! next send (as without preparing); a snapshot of the process memory taken in that window
//! holds our next ratchet key, so it heals one round trip later, as in Signal's Double
//! Ratchet, which makes the key at receive time.

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::envelope::{Envelope, Header};
use crate::error::Result;
use crate::keys::{diffie_hellman, IdentityKeyPair};
use crate::session::{Opened, Session};

/// Our next sending ratchet step, computed on another core while the message that turned the
/// peer's ratchet was being opened (see [`crate::Session::unseal_preparing_reply`]). It lives
/// only in memory, never in an exported state, and is used (once) by our next send if the
/// peer's ratchet key is still `their_key`.
#[derive(Clone)]
pub(crate) struct PreparedStep {
    pub(crate) their_key: [u8; 32],
    secret: StaticSecret,
    public: [u8; 32],
    dh: Zeroizing<[u8; 32]>,
}

impl PreparedStep {
    /// The expensive part of a sending ratchet step: our new public key and its DH with
    /// `their_key`.
    pub(crate) fn new(secret: StaticSecret, their_key: [u8; 32]) -> Result<Self> {
        let dh = diffie_hellman(&secret, &their_key)?;
        Ok(Self {
            their_key,
            public: PublicKey::from(&secret).to_bytes(),
            secret,
            dh,
        })
    }

    /// (secret, public key, DH output)
    pub(crate) fn into_parts(self) -> (StaticSecret, [u8; 32], Zeroizing<[u8; 32]>) {
        (self.secret, self.public, self.dh)
    }
}

impl Session {
    /// [`Session::unseal`], plus our next sending ratchet step (a new ratchet key and its DH
    /// with the peer's new key) computed on another core at the same time, when the message
    /// turns the peer's ratchet. A reply then costs a signature instead of a key generation,
    /// a DH and a signature: the request/response round trip gets shorter by both. The step is
    /// kept only if the message authenticated, only in memory, and only until our next send.
    /// With no spare core the step is computed after the message (the reply still gets it):
    /// the work moves from the send to the receive, and the result never depends on timing.
    pub fn unseal_preparing_reply<R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        env: &Envelope,
        rng: &mut R,
    ) -> Result<Opened> {
        let Some(their_key) = self.reply_key_to_prepare(env.header()) else {
            return self.unseal(ours, env);
        };
        let job = helper::submit(StaticSecret::random_from_rng(rng), their_key);
        let opened = match self.unseal(ours, env) {
            Ok(opened) => opened,
            Err(e) => {
                job.cancel();
                return Err(e);
            }
        };
        if let (Some(step), Some(active)) = (job.finish(), self.active.as_deref_mut()) {
            active.offer_prepared(step);
        }
        Ok(opened)
    }

    /// [`Session::unseal_many`] with the reply step prepared (for the ratchet key of the last
    /// envelope, which is the one our next send answers) as in
    /// [`Session::unseal_preparing_reply`].
    pub fn unseal_many_preparing_reply<E: AsRef<Envelope> + Sync, R: RngCore + CryptoRng>(
        &mut self,
        ours: &IdentityKeyPair,
        envelopes: &[E],
        rng: &mut R,
    ) -> Vec<Result<Opened>> {
        let their_key = envelopes
            .last()
            .and_then(|e| self.reply_key_to_prepare(e.as_ref().header()));
        let Some(their_key) = their_key else {
            return self.unseal_many(ours, envelopes);
        };
        let job = helper::submit(StaticSecret::random_from_rng(rng), their_key);
        let opened = self.unseal_many(ours, envelopes);
        if opened.last().is_some_and(Result::is_ok) {
            if let (Some(step), Some(active)) = (job.finish(), self.active.as_deref_mut()) {
                active.offer_prepared(step);
            }
        } else {
            job.cancel();
        }
        opened
    }

    /// The peer's new ratchet key in `h`, if opening `h` would leave the active session (or a
    /// session `h` sets up) needing a new sending ratchet step.
    pub(crate) fn reply_key_to_prepare(&self, h: &Header) -> Option<[u8; 32]> {
        match self.locate(&h.session_id) {
            Some(0) => self
                .active
                .as_deref()
                .filter(|r| r.would_turn(h))
                .map(|_| h.ratchet_key),
            Some(_) => None,
            None => h.initiation.map(|_| h.ratchet_key),
        }
    }
}

/// One background thread that computes prepared steps. Not rayon: a caller outside the pool
/// would block on the pool to start its own half, and idle rayon workers spin, which costs the
/// other processes of a small machine more than it saves. A step the helper has not started
/// when the caller needs it is computed by the caller (so a busy helper never makes anyone
/// wait, and the result does not depend on timing); one for a rejected message is dropped.
mod helper {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Arc, Condvar, Mutex, OnceLock};
    use std::thread;

    use x25519_dalek::StaticSecret;

    use super::PreparedStep;

    enum Phase {
        Queued(StaticSecret, [u8; 32]),
        Running,
        Taken,
        Done(Option<PreparedStep>),
    }

    struct Slot {
        phase: Mutex<Phase>,
        done: Condvar,
    }

    /// A submitted step; [`Job::finish`] collects it.
    pub(super) struct Job(Arc<Slot>);

    fn queue() -> Option<&'static Mutex<Sender<Arc<Slot>>>> {
        static QUEUE: OnceLock<Option<Mutex<Sender<Arc<Slot>>>>> = OnceLock::new();
        QUEUE
            .get_or_init(|| {
                let (tx, rx) = channel::<Arc<Slot>>();
                thread::Builder::new()
                    .name("agentmesh-prepare".into())
                    .spawn(move || {
                        for slot in rx {
                            run(&slot);
                        }
                    })
                    .ok()
                    .map(|_| Mutex::new(tx))
            })
            .as_ref()
    }

    /// Takes the inputs out of a queued slot (leaving `then` in their place).
    fn take_queued(phase: &mut Phase, then: Phase) -> Option<(StaticSecret, [u8; 32])> {
        match std::mem::replace(phase, then) {
            Phase::Queued(secret, their_key) => Some((secret, their_key)),
            other => {
                *phase = other;
                None
            }
        }
    }

    fn run(slot: &Slot) {
        let inputs = match slot.phase.lock() {
            Ok(mut phase) => take_queued(&mut phase, Phase::Running),
            Err(_) => None,
        };
        let Some((secret, their_key)) = inputs else {
            return; // taken by its caller, or cancelled
        };
        let step = PreparedStep::new(secret, their_key).ok();
        if let Ok(mut phase) = slot.phase.lock() {
            *phase = Phase::Done(step);
        }
        slot.done.notify_all();
    }

    /// Hands the step to the helper thread; with no helper (it could not start), the job is
    /// simply computed by [`Job::finish`].
    pub(super) fn submit(secret: StaticSecret, their_key: [u8; 32]) -> Job {
        let slot = Arc::new(Slot {
            phase: Mutex::new(Phase::Queued(secret, their_key)),
            done: Condvar::new(),
        });
        if let Some(Ok(tx)) = queue().map(Mutex::lock) {
            let _ = tx.send(Arc::clone(&slot));
        }
        Job(slot)
    }

    impl Job {
        /// The prepared step: computed here if the helper has not started it, awaited if the
        /// helper is computing it.
        pub(super) fn finish(self) -> Option<PreparedStep> {
            let mut phase = self.0.phase.lock().ok()?;
            if let Some((secret, their_key)) = take_queued(&mut phase, Phase::Taken) {
                drop(phase);
                return PreparedStep::new(secret, their_key).ok();
            }
            loop {
                match std::mem::replace(&mut *phase, Phase::Taken) {
                    Phase::Done(step) => return step,
                    Phase::Running => {
                        *phase = Phase::Running;
                        phase = self.0.done.wait(phase).ok()?;
                    }
                    Phase::Queued(..) | Phase::Taken => return None,
                }
            }
        }

        /// Drops the step (the message it was for was rejected); the helper skips it if it
        /// has not started.
        pub(super) fn cancel(self) {
            if let Ok(mut phase) = self.0.phase.lock() {
                drop(take_queued(&mut phase, Phase::Taken));
            }
        }
    }
}
