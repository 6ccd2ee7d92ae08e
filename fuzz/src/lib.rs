//! Shared pieces of the agentmesh-core fuzz targets: a deterministic RNG, the fixed identities
//! and live sessions the stateful targets start from, the genuine inputs the structure-aware
//! modes mutate, and the byte-edit interpreter that turns a fuzz input into edits.
//!
//! Everything here is deterministic: the same fuzz input always runs the same code with the same
//! state, so every crash reproduces from its artifact alone.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod targets;

use std::sync::OnceLock;

use agentmesh_core::{Envelope, IdentityKeyPair, Mode, Session};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

// ------------------------------------------------------------------------------------------------
// Deterministic RNG (same idea as rust/agentmesh-core/tests/common/mod.rs, copied on purpose: the
// fuzz crate must not depend on the core's test modules).

/// SHA-256 in counter mode over a seed. Fuzz/test only: deterministic by design.
#[derive(Debug, Clone)]
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

/// Base clock of the fixtures (ms since the epoch).
pub const T0: u64 = 1_700_000_000_000;

/// Passphrase of the low-cost encrypted identity file in the keyfile_load corpus.
pub const FUZZ_PASSPHRASE: &[u8] = b"fuzz-passphrase";

// ------------------------------------------------------------------------------------------------
// Checksums of the stored formats (identity file, session export): SHA-256(body)[0..16] appended.

pub const CHECKSUM_LEN: usize = 16;

/// Recomputes the trailing 16-byte checksum so edits get past the integrity check and reach the
/// parser behind it. No-op on inputs shorter than the checksum.
pub fn fix_checksum(buf: &mut [u8]) {
    if buf.len() < CHECKSUM_LEN {
        return;
    }
    let split = buf.len() - CHECKSUM_LEN;
    let digest = Sha256::digest(&buf[..split]);
    buf[split..].copy_from_slice(&digest[..CHECKSUM_LEN]);
}

// ------------------------------------------------------------------------------------------------
// Structure-aware mutation: the fuzz input is a program of 4-byte edits applied to a genuine input.

/// Interesting 32-bit values for the "overwrite a u32" edit (lengths, counters, bounds).
const INTERESTING_U32: [u32; 24] = [
    0,
    1,
    2,
    15,
    16,
    17,
    0x7f,
    0x80,
    0xff,
    0x100,
    999,
    1000,
    1001,
    2000,
    2001,
    10_000,
    0xffff,
    0x10000,
    64 * 1024 * 1024,
    64 * 1024 * 1024 + 1,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

/// Largest buffer the edit interpreter grows to.
pub const MAX_EDITED_LEN: usize = 1 << 20;

/// Applies `program` to a copy of `base`. The program is read 4 bytes at a time:
/// `[op, pos_hi, pos_lo, value]` with `pos` taken modulo the current length. Ops (op % 7):
/// 0 xor a byte, 1 insert a byte, 2 delete 1..=16 bytes, 3 set a byte, 4 overwrite a big-endian
/// u32 with an interesting value, 5 duplicate 1..=68 bytes in place (makes repeated list entries),
/// 6 truncate. A trailing partial chunk is ignored.
pub fn apply_edits(base: &[u8], program: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for chunk in program.chunks_exact(4) {
        let op = chunk[0] % 7;
        let pos = usize::from(u16::from_be_bytes([chunk[1], chunk[2]]));
        let v = chunk[3];
        match op {
            0 if !out.is_empty() => {
                let i = pos % out.len();
                out[i] ^= if v == 0 { 1 } else { v };
            }
            1 if out.len() < MAX_EDITED_LEN => {
                let i = pos % (out.len() + 1);
                out.insert(i, v);
            }
            2 if !out.is_empty() => {
                let i = pos % out.len();
                let end = (i + usize::from(v % 16) + 1).min(out.len());
                out.drain(i..end);
            }
            3 if !out.is_empty() => {
                let i = pos % out.len();
                out[i] = v;
            }
            4 if out.len() >= 4 => {
                let i = pos % (out.len() - 3);
                let val = INTERESTING_U32[usize::from(v) % INTERESTING_U32.len()];
                out[i..i + 4].copy_from_slice(&val.to_be_bytes());
            }
            5 if !out.is_empty() && out.len() < MAX_EDITED_LEN => {
                let i = pos % out.len();
                let end = (i + usize::from(v % 68) + 1).min(out.len());
                let copy = out[i..end].to_vec();
                out.splice(end..end, copy);
            }
            6 => {
                let i = pos % (out.len() + 1);
                out.truncate(i);
            }
            _ => {}
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Fixtures.

/// An envelope the fixture sealed for real, as seen by one receiver.
#[derive(Debug, Clone)]
pub struct Genuine {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub payload: Vec<u8>,
    /// True when the receiver's fixture state has not consumed it yet (unsealing must succeed);
    /// false for replays and misrouted envelopes (unsealing must fail).
    pub fresh: bool,
}

/// One mode's pair of established sessions and the envelopes around them.
#[derive(Debug)]
pub struct ModeFixture {
    pub mode: Mode,
    /// Bob's (responder's) session export after the scripted conversation.
    pub bob_state: Vec<u8>,
    /// Alice's (initiator's) session export after the scripted conversation.
    pub alice_state: Vec<u8>,
    /// Envelopes for Bob's state: undelivered ones, replays, a new set-up, a misrouted one.
    pub to_bob: Vec<Genuine>,
    /// Envelopes for Alice's state.
    pub to_alice: Vec<Genuine>,
    /// Extra exports: sessions that never sent or received, and an unanswered initiator.
    pub fresh_states: Vec<(&'static str, Side, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Alice,
    Bob,
}

#[derive(Debug)]
pub struct Fixture {
    pub alice: IdentityKeyPair,
    pub bob: IdentityKeyPair,
    pub signed: ModeFixture,
    pub deniable: ModeFixture,
}

impl Fixture {
    pub fn identity(&self, side: Side) -> &IdentityKeyPair {
        match side {
            Side::Alice => &self.alice,
            Side::Bob => &self.bob,
        }
    }

    pub fn mode(&self, mode: Mode) -> &ModeFixture {
        match mode {
            Mode::Signed => &self.signed,
            Mode::Deniable => &self.deniable,
        }
    }

    /// Every session export of the fixture with the side whose identity it belongs to.
    pub fn all_states(&self) -> Vec<(&'static str, Side, &[u8])> {
        let mut out = Vec::new();
        for m in [&self.signed, &self.deniable] {
            out.push(("bob_established", Side::Bob, m.bob_state.as_slice()));
            out.push(("alice_established", Side::Alice, m.alice_state.as_slice()));
            for (name, side, s) in &m.fresh_states {
                out.push((*name, *side, s.as_slice()));
            }
        }
        out
    }

    /// Every genuine envelope addressed to `side`, both modes.
    pub fn envelopes_to(&self, side: Side) -> Vec<&Genuine> {
        let mut out = Vec::new();
        for m in [&self.signed, &self.deniable] {
            out.extend(match side {
                Side::Alice => m.to_alice.iter(),
                Side::Bob => m.to_bob.iter(),
            });
        }
        out
    }
}

/// The fixture, built once per process (a few milliseconds).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn identities() -> (IdentityKeyPair, IdentityKeyPair, (u32, [u8; 32])) {
    let mut rng = TestRng::new("agentmesh-fuzz/identities");
    let alice = IdentityKeyPair::generate("alice", &mut rng).unwrap();
    let mut bob = IdentityKeyPair::generate("bob", &mut rng).unwrap();
    // Bob has rotated once (so a previous signed prekey exists) and holds one-time prekeys.
    bob.rotate_signed_prekey(&mut rng);
    let opks = bob.generate_one_time_prekeys(3, &mut rng).unwrap();
    (alice, bob, opks[0])
}

fn build_fixture() -> Fixture {
    let (alice, bob, opk) = identities();
    let signed = build_mode(&alice, &bob, opk, Mode::Signed);
    let deniable = build_mode(&alice, &bob, opk, Mode::Deniable);
    let fx = Fixture {
        alice,
        bob,
        signed,
        deniable,
    };
    self_check(&fx);
    fx
}

fn payload(n: u32) -> Vec<u8> {
    format!("{{\"n\":{n},\"text\":\"fuzz fixture message\"}}").into_bytes()
}

struct Script<'a> {
    alice: &'a IdentityKeyPair,
    bob: &'a IdentityKeyPair,
    a: Session,
    b: Session,
    rng: TestRng,
    clock: u64,
    n: u32,
}

impl Script<'_> {
    fn a_seal(&mut self) -> (Vec<u8>, Vec<u8>) {
        self.clock += 1000;
        self.n += 1;
        let p = payload(self.n);
        let env = self
            .a
            .seal(self.alice, &p, self.clock, &mut self.rng)
            .unwrap();
        (env.into_bytes(), p)
    }
    fn b_seal(&mut self) -> (Vec<u8>, Vec<u8>) {
        self.clock += 1000;
        self.n += 1;
        let p = payload(self.n);
        let env = self
            .b
            .seal(self.bob, &p, self.clock, &mut self.rng)
            .unwrap();
        (env.into_bytes(), p)
    }
    fn b_open(&mut self, e: &[u8]) {
        let env = Envelope::from_bytes(e).unwrap();
        self.b.unseal(self.bob, &env).unwrap();
    }
    fn a_open(&mut self, e: &[u8]) {
        let env = Envelope::from_bytes(e).unwrap();
        self.a.unseal(self.alice, &env).unwrap();
    }
}

fn g(name: &'static str, (bytes, payload): &(Vec<u8>, Vec<u8>), fresh: bool) -> Genuine {
    Genuine {
        name,
        bytes: bytes.clone(),
        payload: payload.clone(),
        fresh,
    }
}

fn build_mode(
    alice: &IdentityKeyPair,
    bob: &IdentityKeyPair,
    opk: (u32, [u8; 32]),
    mode: Mode,
) -> ModeFixture {
    let label = match mode {
        Mode::Signed => "agentmesh-fuzz/signed",
        Mode::Deniable => "agentmesh-fuzz/deniable",
    };
    let mut fresh_states = Vec::new();
    let a = Session::new(
        alice,
        bob.public_bundle().with_one_time_prekey(Some(opk)),
        mode,
    )
    .unwrap();
    let b = Session::new(bob, alice.public_bundle(), mode).unwrap();
    fresh_states.push(("alice_new", Side::Alice, a.export_state()));
    fresh_states.push(("bob_new", Side::Bob, b.export_state()));
    let mut s = Script {
        alice,
        bob,
        a,
        b,
        rng: TestRng::new(label),
        clock: T0,
        n: 0,
    };

    // Set-up: prekey messages a1 (delivered), a2 (withheld), a3 (delivered: a2 becomes skipped).
    let a1 = s.a_seal();
    fresh_states.push(("alice_unanswered", Side::Alice, s.a.export_state()));
    s.b_open(&a1.0);
    let a2 = s.a_seal();
    let a3 = s.a_seal();
    s.b_open(&a3.0);
    // Bob answers: Alice's set-up is acknowledged.
    let b1 = s.b_seal();
    s.a_open(&b1.0);
    // Alice's next chain: a4 withheld, a5 delivered (a4 skipped), a6 withheld (next in chain).
    let a4 = s.a_seal();
    let a5 = s.a_seal();
    s.b_open(&a5.0);
    let a6 = s.a_seal();
    // 20 more dropped, then a_gap: a jump Bob must bridge with skipped keys.
    for _ in 0..20 {
        let _ = s.a_seal();
    }
    let a_gap = s.a_seal();
    // Bob's next chain: b2 delivered, b3 and b4 withheld.
    let b2 = s.b_seal();
    s.a_open(&b2.0);
    let b3 = s.b_seal();
    let b4 = s.b_seal();

    // Restarts: a new set-up from each side (the peer lost its state).
    let restart = |me: &IdentityKeyPair, peer: &IdentityKeyPair, s: &mut Script<'_>| {
        let mut fresh = Session::new(me, peer.public_bundle(), mode).unwrap();
        s.clock += 1000;
        s.n += 1;
        let p = payload(s.n);
        let env = fresh.seal(me, &p, s.clock, &mut s.rng).unwrap();
        (env.into_bytes(), p)
    };
    let a_restart = restart(alice, bob, &mut s);
    let b_restart = restart(bob, alice, &mut s);

    let to_bob = vec![
        g("a1_prekey_replay", &a1, false),
        g("a2_prekey_skipped", &a2, true),
        g("a3_prekey_replay", &a3, false),
        g("a4_ratchet_skipped", &a4, true),
        g("a5_ratchet_replay", &a5, false),
        g("a6_ratchet_next", &a6, true),
        g("a_gap_ratchet_jump", &a_gap, true),
        g("a_restart_prekey", &a_restart, true),
        g("b1_misrouted", &b1, false),
    ];
    let to_alice = vec![
        g("b1_ratchet_replay", &b1, false),
        g("b2_ratchet_replay", &b2, false),
        g("b3_ratchet_next", &b3, true),
        g("b4_ratchet_skip_one", &b4, true),
        g("b_restart_prekey", &b_restart, true),
        g("a1_misrouted", &a1, false),
    ];
    ModeFixture {
        mode,
        bob_state: s.b.export_state(),
        alice_state: s.a.export_state(),
        to_bob,
        to_alice,
        fresh_states,
    }
}

/// Runs once when the fixture is built: the fixture must behave as described, otherwise the
/// invariants checked by the targets would be meaningless.
fn self_check(fx: &Fixture) {
    for m in [&fx.signed, &fx.deniable] {
        for (side, state, envs) in [
            (Side::Bob, &m.bob_state, &m.to_bob),
            (Side::Alice, &m.alice_state, &m.to_alice),
        ] {
            let ours = fx.identity(side);
            let s = Session::import_state(ours, state).unwrap();
            assert_eq!(&s.export_state(), state, "fixture export is not canonical");
            for e in envs {
                let mut s = Session::import_state(ours, state).unwrap();
                let env = Envelope::from_bytes(&e.bytes).unwrap();
                match s.unseal(ours, &env) {
                    Ok(o) => {
                        assert!(e.fresh, "fixture: {} unexpectedly opened", e.name);
                        assert_eq!(o.payload(), e.payload.as_slice());
                    }
                    Err(err) => {
                        assert!(!e.fresh, "fixture: {} failed: {err}", e.name);
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The unseal oracle shared by unseal_live_session and session_import.

/// Unseals `env` on a session restored from `state` and checks the protocol's promises:
/// no panic; an error leaves the export byte-identical; success only for an envelope the fixture
/// really sealed and that the state has not consumed (`genuine`, when known), with its payload;
/// and a success cannot be replayed.
pub fn check_unseal(
    ours: &IdentityKeyPair,
    state: &[u8],
    env: &Envelope,
    genuine: Option<&[&Genuine]>,
) {
    let mut s = Session::import_state(ours, state).expect("state imports");
    match s.unseal(ours, env) {
        Err(_) => {
            assert!(
                s.export_state() == state,
                "a failed unseal changed the session state"
            );
        }
        Ok(opened) => {
            if let Some(genuine) = genuine {
                let g = genuine
                    .iter()
                    .find(|g| g.bytes == env.as_bytes())
                    .unwrap_or_else(|| {
                        panic!("FORGERY: unseal accepted an envelope the fixture never sealed")
                    });
                assert!(g.fresh, "REPLAY: unseal accepted {} again", g.name);
                assert_eq!(opened.payload(), g.payload.as_slice(), "wrong payload");
            }
            let after = s.export_state();
            assert!(
                s.unseal(ours, env).is_err(),
                "REPLAY: the same envelope opened twice"
            );
            assert!(
                s.export_state() == after,
                "a rejected replay changed the session state"
            );
        }
    }
}

/// Lowercase hex, for messages.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
