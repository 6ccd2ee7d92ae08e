//! `unseal_preparing_reply`: the next sending ratchet step is prepared while a message is
//! opened. It must be used by the reply (and only once), never outlive a rejected message,
//! never reach an exported state, and never be used for a key it was not made for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use agentmesh_core::{Envelope, Error, Mode, Session};
use common::{Pair, TestRng};
use rand_core::{CryptoRng, RngCore};

/// Counts the bytes drawn, to see whether a seal made a new ratchet key (32 bytes) or used a
/// prepared one (none).
struct CountingRng {
    inner: TestRng,
    drawn: usize,
}

impl CountingRng {
    fn new(label: &str) -> Self {
        Self {
            inner: TestRng::new(label),
            drawn: 0,
        }
    }

    fn take(&mut self) -> usize {
        std::mem::take(&mut self.drawn)
    }
}

impl RngCore for CountingRng {
    fn next_u32(&mut self) -> u32 {
        self.drawn += 4;
        self.inner.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.drawn += 8;
        self.inner.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.drawn += dest.len();
        self.inner.fill_bytes(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for CountingRng {}

const NEW_RATCHET_KEY: usize = 32;

fn b_seal(p: &mut Pair, rng: &mut CountingRng, payload: &[u8]) -> Envelope {
    p.clock += 1;
    p.b.seal(&p.bob, payload, p.clock, rng).unwrap()
}

fn b_open_preparing(p: &mut Pair, rng: &mut CountingRng, env: &Envelope) -> Vec<u8> {
    p.b.unseal_preparing_reply(&p.bob, env, rng)
        .unwrap()
        .payload()
        .to_vec()
}

#[test]
fn the_reply_uses_the_prepared_step_once_and_both_sides_keep_working() {
    for mode in [Mode::Signed, Mode::Deniable] {
        let mut p = Pair::new("prepared-ping-pong", mode);
        let mut rng = CountingRng::new("bob");
        p.establish();
        for round in 0..20 {
            let ping = p.a_seal(format!("ping {round}").as_bytes());
            assert_eq!(b_open_preparing(&mut p, &mut rng, &ping), ping_text(round));
            rng.take();
            let pong = b_seal(&mut p, &mut rng, b"pong");
            assert_eq!(rng.take(), 0, "the reply made a new ratchet key instead");
            // the rest of the chain needs no new ratchet step either
            let more = b_seal(&mut p, &mut rng, b"more");
            assert_eq!(rng.take(), 0);
            assert_eq!(p.a_open(&pong).unwrap(), b"pong");
            assert_eq!(p.a_open(&more).unwrap(), b"more");
            assert_ne!(
                pong.header().ratchet_key,
                ping.header().ratchet_key,
                "a reply turns the ratchet"
            );
        }
    }
}

fn ping_text(round: usize) -> Vec<u8> {
    format!("ping {round}").into_bytes()
}

#[test]
fn without_preparing_the_reply_makes_its_own_ratchet_key() {
    let mut p = Pair::signed("lazy-reply");
    let mut rng = CountingRng::new("bob");
    p.establish();
    let ping = p.a_seal(b"ping");
    p.b_open(&ping).unwrap();
    b_seal(&mut p, &mut rng, b"pong");
    assert_eq!(rng.take(), NEW_RATCHET_KEY);
}

#[test]
fn an_exported_state_does_not_hold_the_prepared_step() {
    let mut p = Pair::signed("prepared-export");
    let mut rng = CountingRng::new("bob");
    p.establish();
    let ping = p.a_seal(b"ping");
    b_open_preparing(&mut p, &mut rng, &ping);
    let exported = p.b.export_state();
    let mut copy = Session::import_state(&p.bob, &exported).unwrap();
    rng.take();
    // The live session answers with the prepared key; the copy has to make a key of its own.
    let live = b_seal(&mut p, &mut rng, b"live");
    assert_eq!(rng.take(), 0);
    let copied = copy.seal(&p.bob, b"copy", p.clock + 1, &mut rng).unwrap();
    assert_eq!(rng.take(), NEW_RATCHET_KEY);
    assert_ne!(live.header().ratchet_key, copied.header().ratchet_key);
    assert_eq!(p.a_open(&live).unwrap(), b"live");
}

#[test]
fn a_rejected_message_leaves_no_prepared_step_and_no_change() {
    let mut p = Pair::signed("prepared-rejected");
    let mut rng = CountingRng::new("bob");
    p.establish();
    let ping = p.a_seal(b"ping");
    let mut bytes = ping.as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = Envelope::from_bytes(&bytes).unwrap();
    let before = p.b.export_state();
    assert_eq!(
        p.b.unseal_preparing_reply(&p.bob, &forged, &mut rng).err(),
        Some(Error::Authentication)
    );
    assert_eq!(p.b.export_state(), before);
    // The genuine message, opened without preparing: the reply makes a fresh key, so nothing
    // prepared during the forged attempt was kept.
    p.b_open(&ping).unwrap();
    rng.take();
    let pong = b_seal(&mut p, &mut rng, b"pong");
    assert_eq!(rng.take(), NEW_RATCHET_KEY);
    assert_eq!(p.a_open(&pong).unwrap(), b"pong");
}

#[test]
fn a_step_prepared_for_an_abandoned_session_is_not_used_by_its_successor() {
    let mut p = Pair::signed("prepared-restart");
    let mut rng = CountingRng::new("bob");
    p.establish();
    let ping = p.a_seal(b"ping");
    b_open_preparing(&mut p, &mut rng, &ping);
    // Alice loses her state and starts over before bob answered.
    p.a = Session::new(&p.alice, p.bob.public_bundle(), Mode::Signed).unwrap();
    let hello = p.a_seal(b"I'm back");
    assert_eq!(p.b_open(&hello).unwrap(), b"I'm back");
    rng.take();
    let pong = b_seal(&mut p, &mut rng, b"welcome back");
    assert_eq!(rng.take(), NEW_RATCHET_KEY);
    assert_eq!(p.a_open(&pong).unwrap(), b"welcome back");
}

#[test]
fn a_new_session_prepares_its_first_reply_too() {
    let mut p = Pair::signed("prepared-setup");
    let mut rng = CountingRng::new("bob");
    let hello = p.a_seal(b"hello");
    assert_eq!(b_open_preparing(&mut p, &mut rng, &hello), b"hello");
    rng.take();
    let answer = b_seal(&mut p, &mut rng, b"hi");
    assert_eq!(rng.take(), 0);
    assert_eq!(p.a_open(&answer).unwrap(), b"hi");
}

#[test]
fn a_batch_prepares_the_reply_to_its_last_chain() {
    let mut p = Pair::signed("prepared-batch");
    let mut rng = CountingRng::new("bob");
    p.establish();
    let payloads: Vec<Vec<u8>> = (0..5).map(|i| format!("{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let envs =
        p.a.seal_many(&p.alice, &refs, p.clock + 1, &mut p.rng)
            .unwrap();
    let opened = p.b.unseal_many_preparing_reply(&p.bob, &envs, &mut rng);
    for (o, want) in opened.iter().zip(&payloads) {
        assert_eq!(o.as_ref().unwrap().payload(), want.as_slice());
    }
    rng.take();
    let pong = b_seal(&mut p, &mut rng, b"got five");
    assert_eq!(rng.take(), 0);
    assert_eq!(p.a_open(&pong).unwrap(), b"got five");
    // Alice's next batch starts her next chain (she got bob's answer); the one after it stays
    // on that chain, which bob has seen already: nothing to prepare, no randomness drawn.
    let envs =
        p.a.seal_many(&p.alice, &refs, p.clock + 1, &mut p.rng)
            .unwrap();
    assert!(p
        .b
        .unseal_many_preparing_reply(&p.bob, &envs, &mut rng)
        .iter()
        .all(Result::is_ok));
    assert_eq!(rng.take(), NEW_RATCHET_KEY);
    let envs =
        p.a.seal_many(&p.alice, &refs, p.clock + 2, &mut p.rng)
            .unwrap();
    assert!(p
        .b
        .unseal_many_preparing_reply(&p.bob, &envs, &mut rng)
        .iter()
        .all(Result::is_ok));
    assert_eq!(rng.take(), 0);
}
