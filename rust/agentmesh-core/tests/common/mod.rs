//! Shared test fixtures: a deterministic RNG (so failures reproduce and vectors are frozen) and
//! helpers that build identities and sessions.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use agentmesh_core::{Envelope, IdentityKeyPair, Mode, Session};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

/// SHA-256 in counter mode over a seed. Test-only: deterministic by design.
pub struct TestRng {
    seed: [u8; 32],
    counter: u64,
    buf: Vec<u8>,
}

impl TestRng {
    pub fn new(label: &str) -> Self {
        Self {
            seed: Sha256::digest(label.as_bytes()).into(),
            counter: 0,
            buf: Vec::new(),
        }
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for d in dest.iter_mut() {
            if self.buf.is_empty() {
                let mut h = Sha256::new();
                h.update(self.seed);
                h.update(self.counter.to_be_bytes());
                self.counter += 1;
                self.buf = h.finalize().to_vec();
            }
            *d = self.buf.pop().unwrap();
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for TestRng {}

pub const T0: u64 = 1_700_000_000_000;

pub struct Pair {
    pub rng: TestRng,
    pub alice: IdentityKeyPair,
    pub bob: IdentityKeyPair,
    pub a: Session,
    pub b: Session,
    pub clock: u64,
}

impl Pair {
    pub fn new(label: &str, mode: Mode) -> Self {
        let mut rng = TestRng::new(label);
        let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
        let bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
        let a = Session::new(&alice, bob.public_bundle(), mode).unwrap();
        let b = Session::new(&bob, alice.public_bundle(), mode).unwrap();
        Self {
            rng,
            alice,
            bob,
            a,
            b,
            clock: T0,
        }
    }

    pub fn signed(label: &str) -> Self {
        Self::new(label, Mode::Signed)
    }

    pub fn a_seal(&mut self, payload: &[u8]) -> Envelope {
        self.clock += 1;
        self.a
            .seal(&self.alice, payload, self.clock, &mut self.rng)
            .unwrap()
    }

    pub fn b_seal(&mut self, payload: &[u8]) -> Envelope {
        self.clock += 1;
        self.b
            .seal(&self.bob, payload, self.clock, &mut self.rng)
            .unwrap()
    }

    pub fn b_open(&mut self, env: &Envelope) -> agentmesh_core::Result<Vec<u8>> {
        self.b.unseal(&self.bob, env).map(|o| o.payload().to_vec())
    }

    pub fn a_open(&mut self, env: &Envelope) -> agentmesh_core::Result<Vec<u8>> {
        self.a
            .unseal(&self.alice, env)
            .map(|o| o.payload().to_vec())
    }

    /// One full round trip, so both sides are established.
    pub fn establish(&mut self) {
        let e = self.a_seal(b"{\"hello\":1}");
        self.b_open(&e).unwrap();
        let e = self.b_seal(b"{\"hello\":2}");
        self.a_open(&e).unwrap();
    }
}

/// A frozen vector file (tests/vectors/*.json), parsed.
pub fn frozen_vectors(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Compares vectors built afresh with the frozen file at `path`, so that any change of the
/// format shows up; with AGENTMESH_WRITE_VECTORS set, rewrites the file first (after an
/// intended protocol change). `what` names the output in the failure.
pub fn check_frozen_vectors(path: &str, fresh: &serde_json::Value, what: &str) {
    if std::env::var_os("AGENTMESH_WRITE_VECTORS").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(fresh).unwrap() + "\n").unwrap();
    }
    let frozen = frozen_vectors(path);
    assert_eq!(fresh, &frozen, "{what} output differs from {path}");
}
