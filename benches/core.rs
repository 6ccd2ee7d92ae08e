//! Criterion benchmarks of agentmesh-core, each next to the raw floor of the same work.
//!
//! Run: `cargo bench -p agentmesh-core --bench core` (add `-- --quick` for a fast pass, or a
//! filter such as `-- seal/`). After criterion has run, a table prints every protocol operation
//! as a ratio to its floor: the cost of the primitives it cannot avoid. The protocol's own steps
//! (chain step, set-up and root-step KDFs, nonce, the message signing input, the header) are the
//! core's functions (`agentmesh_core::internals`, the `internals` feature these benches enable);
//! the primitives under them are called directly on the crates the core is built on (ring
//! AES-256-GCM, ed25519-dalek), except X25519, which is the core's own choice of vetted code
//! (src/x25519.rs: curve25519-dalek's Edwards arithmetic for curve points, `x25519_dh_ladder`
//! times the Montgomery ladder it replaced):
//!
//! | protocol operation        | floor                                                          |
//! |---------------------------|----------------------------------------------------------------|
//! | seal (signed)             | chain-step HKDF + BLAKE3(payload) + Ed25519 sign of label‖header‖digest + AES-GCM seal |
//! | unseal (signed)           | chain-step HKDF + AES-GCM open + BLAKE3(payload) + verify_strict |
//! | seal / unseal (deniable)  | chain-step HKDF + AES-GCM seal / open                          |
//! | handshake                 | 8 X25519 DH + 4 base-point mults + 2 set-up HKDF + 2 root-step HKDF + one message's seal+unseal floor |
//! | ratchet round (ping-pong) | 2 × (2 X25519 DH + 1 base-point mult + 2 root-step HKDF; the peer key decoded once, the send's two results converted with one inversion, as the core does) + two messages' seal+unseal floor |
//! | unseal_many (per message) | the single-message unseal floor (so a ratio < 1 is the gain of both cores and batch verification) |
//!
//! The signed input has exactly the protocol's length (label, the real header, a 32-byte digest)
//! and the AEAD runs over the same bytes (signature + payload) with the header as associated data.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentmesh_core::internals::{
    associated_data, chain_step, message_nonce, message_signing_input, root_step, session_setup,
    x25519_diffie_hellman, x25519_diffie_hellman_and_public_key, x25519_diffie_hellman_with,
    x25519_ladder, x25519_public_key, ChainKey, MessageKey, RootKey, X25519PeerPublic,
};
use agentmesh_core::{Envelope, IdentityKeyPair, Mode, Session, SIGNATURE_LEN};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::{Signer, SigningKey};
use rand_core::OsRng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::{Digest, Sha256};
use x25519_dalek::StaticSecret;

const T0: u64 = 1_700_000_000_000;
const SIZES: [(usize, &str); 2] = [(64, "64B"), (1 << 20, "1MiB")];
const MODES: [(Mode, &str); 2] = [(Mode::Signed, "signed"), (Mode::Deniable, "deniable")];
/// Envelopes per `unseal_many` call, by payload size.
fn batch_len(size: usize) -> usize {
    if size <= 1024 {
        256
    } else {
        16
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol fixtures

struct Pair {
    alice: IdentityKeyPair,
    bob: IdentityKeyPair,
    a: Session,
    b: Session,
}

impl Pair {
    fn new(mode: Mode) -> Self {
        let alice = IdentityKeyPair::generate("alice", &mut OsRng).unwrap();
        let bob = IdentityKeyPair::generate("bob", &mut OsRng).unwrap();
        let (a, b) = sessions(&alice, &bob, mode);
        Self { alice, bob, a, b }
    }

    /// A pair whose first exchange (prekey message and answer) is done.
    fn established(mode: Mode) -> Self {
        let mut p = Self::new(mode);
        let e = p.a.seal(&p.alice, b"hello", T0, &mut OsRng).unwrap();
        p.b.unseal(&p.bob, &e).unwrap();
        let e = p.b.seal(&p.bob, b"hello", T0, &mut OsRng).unwrap();
        p.a.unseal(&p.alice, &e).unwrap();
        p
    }

    fn a_to_b(&mut self, payload: &[u8]) -> Envelope {
        self.a.seal(&self.alice, payload, T0, &mut OsRng).unwrap()
    }
}

fn sessions(alice: &IdentityKeyPair, bob: &IdentityKeyPair, mode: Mode) -> (Session, Session) {
    let a = Session::new(alice, bob.public_bundle(), mode).unwrap();
    let b = Session::new(bob, alice.public_bundle(), mode).unwrap();
    (a, b)
}

// ---------------------------------------------------------------------------------------------
// The floor: the primitives, called directly

struct Floor {
    signing: SigningKey,
    chain: ChainKey,
    /// The header (associated data) of a real envelope; the signed input is the core's
    /// label ‖ header ‖ BLAKE3(payload).
    header: Vec<u8>,
    /// signature (signed mode) ‖ payload: what the AEAD encrypts.
    body: Vec<u8>,
    signed: bool,
}

impl Floor {
    fn new(mode: Mode, payload_len: usize) -> Self {
        let signed = mode == Mode::Signed;
        // Take the header from a real envelope of this size.
        let mut p = Pair::established(mode);
        let env = p.a_to_b(&vec![0x61; payload_len]);
        let sig_len = if signed { SIGNATURE_LEN } else { 0 };
        Self {
            signing: signing_key(&mut OsRng),
            chain: ChainKey::from_bytes([7u8; 32]),
            header: associated_data(&env).to_vec(),
            body: vec![0x61; sig_len + payload_len],
            signed,
        }
    }

    fn header(&self) -> &[u8] {
        &self.header
    }

    /// The core's chain step; the message key as ring takes it.
    fn chain_step(&self) -> [u8; 32] {
        let (mk, next): (MessageKey, ChainKey) = chain_step(&self.chain);
        black_box(&next);
        *mk.as_bytes()
    }

    fn signing_input(&self, payload: &[u8]) -> Vec<u8> {
        message_signing_input(&self.header, payload)
    }

    /// Floor of one seal: returns the ciphertext (with tag) for `open`.
    fn seal(&self) -> Vec<u8> {
        let mk = self.chain_step();
        let mut buf = self.body.clone();
        if self.signed {
            let sig = self
                .signing
                .sign(&self.signing_input(&buf[SIGNATURE_LEN..]));
            buf[..SIGNATURE_LEN].copy_from_slice(&sig.to_bytes());
        }
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &mk).unwrap());
        let tag = key
            .seal_in_place_separate_tag(nonce(), Aad::from(self.header()), &mut buf)
            .unwrap();
        buf.extend_from_slice(tag.as_ref());
        buf
    }

    /// Floor of one unseal of what `seal` produced.
    fn open(&self, ct: &[u8]) -> usize {
        let mk = self.chain_step();
        let mut buf = ct.to_vec();
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &mk).unwrap());
        let plain = key
            .open_in_place(nonce(), Aad::from(self.header()), &mut buf)
            .unwrap();
        if self.signed {
            let (sig, payload) = plain.split_at(SIGNATURE_LEN);
            let sig = ed25519_dalek::Signature::from_slice(sig).unwrap();
            self.signing
                .verifying_key()
                .verify_strict(&self.signing_input(payload), &sig)
                .unwrap();
        }
        plain.len()
    }
}

/// A JSON string writer that checks 32 bytes at a time (SWAR on u64 words) for bytes needing an
/// escape and copies clean runs in one piece: the prototype behind the json_string benchmark
/// (its output is checked against serde_json's).
fn json_string_fast(s: &str, out: &mut Vec<u8>) {
    const L: u64 = 0x0101_0101_0101_0101;
    const H: u64 = 0x8080_8080_8080_8080;
    /// High bit set in every byte of `w` that is < 0x20, '"' or '\\' (may also flag a byte
    /// above one of those: the caller then looks at the bytes one by one, so that is harmless).
    fn flagged(w: u64) -> u64 {
        let q = w ^ (L * u64::from(b'"'));
        let b = w ^ (L * u64::from(b'\\'));
        let control = w.wrapping_sub(L * 0x20) & !w;
        let quote = q.wrapping_sub(L) & !q;
        let backslash = b.wrapping_sub(L) & !b;
        (control | quote | backslash) & H
    }
    fn word(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    }
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if i + 32 <= bytes.len() {
            let c = &bytes[i..i + 32];
            let any = flagged(word(&c[..8]))
                | flagged(word(&c[8..16]))
                | flagged(word(&c[16..24]))
                | flagged(word(&c[24..]));
            if any == 0 {
                i += 32;
                continue;
            }
        }
        let end = (i + 32).min(bytes.len());
        for j in i..end {
            let c = bytes[j];
            if c >= 0x20 && c != b'"' && c != b'\\' {
                continue;
            }
            out.extend_from_slice(&bytes[start..j]);
            match c {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                _ => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            }
            start = j + 1;
        }
        i = end;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A fresh Ed25519 key from 32 random bytes (ed25519-dalek 3 takes no rand_core 0.6 RNG).
fn signing_key(rng: &mut impl rand_core::RngCore) -> SigningKey {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// The core's nonce of message 7 (any counter: every key of the floor is used once per call).
fn nonce() -> Nonce {
    Nonce::assume_unique_for_key(message_nonce(7))
}

/// The core's set-up KDF over three DH outputs and a transcript of two short ids' length.
fn setup_kdf(dhs: &[[u8; 32]; 3]) -> [u8; 16] {
    let [a, b, c] = dhs;
    session_setup(&[a, b, c], &[0x42; 220]).session_id
}

struct DhFloor {
    secret: StaticSecret,
    public: [u8; 32],
    root: RootKey,
}

impl DhFloor {
    fn new() -> Self {
        let public = x25519_public_key(&StaticSecret::random_from_rng(OsRng));
        Self {
            secret: StaticSecret::random_from_rng(OsRng),
            public,
            root: RootKey::from_bytes(public),
        }
    }
    /// The core's X25519 (the Edwards path: every honest public key is a curve point).
    fn dh(&self) -> [u8; 32] {
        *x25519_diffie_hellman(&self.secret, &self.public).unwrap()
    }
    /// The ladder alone, as X25519 was computed before the Edwards path.
    fn dh_ladder(&self) -> [u8; 32] {
        *x25519_ladder(&self.secret, &self.public)
    }
    fn keygen(&self) -> [u8; 32] {
        x25519_public_key(&StaticSecret::random_from_rng(OsRng))
    }
    /// The asymmetric work of a handshake, per side: a key generation (the initiator's base key;
    /// the responder's signed-prekey public key), 3 DH, the set-up KDF, another base-point
    /// multiplication (the initiator's first ratchet key; the responder's ratchet public key),
    /// 1 DH and a root step (the first sending / receiving chain).
    fn handshake(&self) {
        for _ in 0..2 {
            black_box(self.keygen());
            let d = [self.dh(), self.dh(), self.dh()];
            black_box(setup_kdf(&d));
            black_box(self.keygen());
            black_box(root_step(&self.root, &self.dh()));
        }
    }
    /// One DH ratchet turn: the receiver's DH + root step for the new receiving chain, then (on
    /// its next send) a new ratchet key, DH and root step for the new sending chain. As the core
    /// does it: the peer's key is decoded once for both DH, and the new key's public half and
    /// the send's DH leave Edwards form with one inversion.
    fn ratchet_step(&self) {
        let peer = X25519PeerPublic::new(self.public);
        let received = x25519_diffie_hellman_with(&self.secret, &peer).unwrap();
        black_box(root_step(&self.root, &received));
        black_box(self.new_key_and_dh(&peer));
    }
    /// A new ratchet key and its DH with a decoded peer key (the send side of a ratchet turn).
    fn new_key_and_dh(&self, peer: &X25519PeerPublic) -> [u8; 32] {
        let fresh = StaticSecret::random_from_rng(OsRng);
        let (dh, public) = x25519_diffie_hellman_and_public_key(&fresh, peer).unwrap();
        black_box(public);
        *root_step(&self.root, &dh).0.as_bytes()
    }
}

// ---------------------------------------------------------------------------------------------
// Benchmarks

fn protocol(c: &mut Criterion) {
    for (mode, mname) in MODES {
        let mut g = c.benchmark_group(format!("protocol/{mname}"));
        for (size, sname) in SIZES {
            let payload = vec![0x61u8; size];
            g.throughput(Throughput::Bytes(size as u64));

            let mut p = Pair::established(mode);
            g.bench_function(BenchmarkId::new("seal", sname), |b| {
                b.iter(|| {
                    black_box(
                        p.a.seal(&p.alice, black_box(&payload), T0, &mut OsRng)
                            .unwrap(),
                    )
                })
            });

            let mut p = Pair::established(mode);
            let unseal_input = if size > 1024 {
                BatchSize::LargeInput
            } else {
                BatchSize::SmallInput
            };
            let (alice, mut a) = (p.alice, p.a);
            g.bench_function(BenchmarkId::new("unseal", sname), |b| {
                b.iter_batched(
                    || a.seal(&alice, &payload, T0, &mut OsRng).unwrap(),
                    |env| black_box(p.b.unseal(&p.bob, &env).unwrap()),
                    unseal_input,
                )
            });

            let mut p = Pair::established(mode);
            g.bench_function(BenchmarkId::new("seal_unseal", sname), |b| {
                b.iter(|| {
                    let env =
                        p.a.seal(&p.alice, black_box(&payload), T0, &mut OsRng)
                            .unwrap();
                    black_box(p.b.unseal(&p.bob, &env).unwrap())
                })
            });

            // unseal_many of a batch, reported per message.
            let n = batch_len(size);
            let mut p = Pair::established(mode);
            let refs: Vec<&[u8]> = (0..n).map(|_| payload.as_slice()).collect();
            let (alice, mut a) = (p.alice, p.a);
            let check = a.seal_many(&alice, &refs, T0, &mut OsRng).unwrap();
            assert!(p.b.unseal_many(&p.bob, &check).iter().all(Result::is_ok));
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(BenchmarkId::new(format!("unseal_many_x{n}"), sname), |b| {
                b.iter_batched(
                    || a.seal_many(&alice, &refs, T0, &mut OsRng).unwrap(),
                    |envs| black_box(p.b.unseal_many(&p.bob, &envs)),
                    BatchSize::PerIteration,
                )
            });
            g.bench_function(BenchmarkId::new(format!("unseal_x{n}"), sname), |b| {
                b.iter_batched(
                    || a.seal_many(&alice, &refs, T0, &mut OsRng).unwrap(),
                    |envs| {
                        for env in &envs {
                            black_box(p.b.unseal(&p.bob, env).unwrap());
                        }
                    },
                    BatchSize::PerIteration,
                )
            });
            let mut p = Pair::established(mode);
            g.bench_function(BenchmarkId::new(format!("seal_many_x{n}"), sname), |b| {
                b.iter(|| black_box(p.a.seal_many(&p.alice, &refs, T0, &mut OsRng).unwrap()))
            });
        }

        // Whole handshake: fresh sessions, the first (prekey) message sealed and unsealed.
        g.throughput(Throughput::Elements(1));
        let alice = IdentityKeyPair::generate("alice", &mut OsRng).unwrap();
        let bob = IdentityKeyPair::generate("bob", &mut OsRng).unwrap();
        let payload = vec![0x61u8; 64];
        g.bench_function(BenchmarkId::new("handshake", "64B"), |b| {
            b.iter_batched(
                || sessions(&alice, &bob, mode),
                |(mut a, mut s)| {
                    let env = a.seal(&alice, &payload, T0, &mut OsRng).unwrap();
                    black_box(s.unseal(&bob, &env).unwrap())
                },
                BatchSize::SmallInput,
            )
        });

        // A ping-pong round: every unseal starts a new receiving chain (a DH ratchet step).
        let mut p = Pair::established(mode);
        g.bench_function(BenchmarkId::new("ratchet_round", "64B"), |b| {
            b.iter(|| {
                let e = p.a.seal(&p.alice, &payload, T0, &mut OsRng).unwrap();
                black_box(p.b.unseal(&p.bob, &e).unwrap());
                let e = p.b.seal(&p.bob, &payload, T0, &mut OsRng).unwrap();
                black_box(p.a.unseal(&p.alice, &e).unwrap())
            })
        });
        g.finish();
    }
}

fn floor(c: &mut Criterion) {
    for (mode, mname) in MODES {
        let mut g = c.benchmark_group(format!("floor/{mname}"));
        for (size, sname) in SIZES {
            let f = Floor::new(mode, size);
            let sealed = f.seal();
            assert_eq!(f.open(&sealed), f.body.len());
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(BenchmarkId::new("seal", sname), |b| {
                b.iter(|| black_box(f.seal()))
            });
            g.bench_function(BenchmarkId::new("unseal", sname), |b| {
                b.iter(|| black_box(f.open(black_box(&sealed))))
            });
            g.bench_function(BenchmarkId::new("seal_unseal", sname), |b| {
                b.iter(|| black_box(f.open(&f.seal())))
            });
        }
        g.throughput(Throughput::Elements(1));
        let f = Floor::new(mode, 64);
        let dh = DhFloor::new();
        g.bench_function(BenchmarkId::new("handshake", "64B"), |b| {
            b.iter(|| {
                dh.handshake();
                black_box(f.open(&f.seal()))
            })
        });
        g.bench_function(BenchmarkId::new("ratchet_round", "64B"), |b| {
            b.iter(|| {
                dh.ratchet_step();
                black_box(f.open(&f.seal()));
                dh.ratchet_step();
                black_box(f.open(&f.seal()))
            })
        });
        g.finish();
    }

    // The primitives one by one, to see where a floor's time goes.
    let mut g = c.benchmark_group("primitive");
    let f = Floor::new(Mode::Signed, 64);
    let input = f.signing_input(&[0u8; 64]);
    let sig = f.signing.sign(&input);
    let vk = f.signing.verifying_key();
    g.bench_function(
        BenchmarkId::new("ed25519_sign", format!("{}B", input.len())),
        |b| b.iter(|| black_box(f.signing.sign(black_box(&input)))),
    );
    g.bench_function(
        BenchmarkId::new("ed25519_verify_strict", format!("{}B", input.len())),
        |b| b.iter(|| black_box(vk.verify_strict(black_box(&input), &sig).is_ok())),
    );
    g.bench_function("hkdf_chain_step", |b| {
        b.iter(|| black_box(chain_step(black_box(&f.chain))))
    });
    let dh = DhFloor::new();
    g.bench_function("x25519_dh", |b| b.iter(|| black_box(dh.dh())));
    g.bench_function("x25519_dh_ladder", |b| b.iter(|| black_box(dh.dh_ladder())));
    let peer = X25519PeerPublic::new(dh.public);
    g.bench_function("x25519_new_key_and_dh", |b| {
        b.iter(|| black_box(dh.new_key_and_dh(&peer)))
    });
    g.bench_function("x25519_keygen", |b| b.iter(|| black_box(dh.keygen())));
    // JSON of a payload string (the Python glue serialises {"text": ...} this way): serde_json's
    // writer, against scanning for bytes that need escaping and copying clean runs whole.
    let text: String = "a".repeat(1 << 20);
    let tricky = "a\"b\\c\n\r\t\u{1}\u{8}\u{c}\u{1f} é ✓ \u{7f}".repeat(40);
    let mixed = format!("{}\"{}\\{}", "x".repeat(70), "y".repeat(33), "z".repeat(64));
    for sample in [tricky.as_str(), mixed.as_str(), text.as_str()] {
        let (mut fast, mut reference) = (Vec::new(), Vec::new());
        json_string_fast(sample, &mut fast);
        serde_json::to_writer(&mut reference, sample).unwrap();
        assert_eq!(fast, reference);
    }
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function(BenchmarkId::new("json_string", "serde_json_1MiB"), |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(text.len() + 2);
            serde_json::to_writer(&mut out, black_box(&text)).unwrap();
            out
        })
    });
    g.bench_function(BenchmarkId::new("json_string", "scan_and_copy_1MiB"), |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(text.len() + 2);
            json_string_fast(black_box(&text), &mut out);
            out
        })
    });
    for (size, sname) in SIZES {
        let data = vec![0x61u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("blake3", sname), |b| {
            b.iter(|| black_box(blake3::hash(black_box(&data))))
        });
        g.bench_function(BenchmarkId::new("sha256", sname), |b| {
            b.iter(|| black_box(Sha256::digest(black_box(&data))))
        });
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[1u8; 32]).unwrap());
        let hdr = vec![0u8; f.header.len()];
        g.bench_function(BenchmarkId::new("aes256gcm_seal_open", sname), |b| {
            b.iter(|| {
                let mut buf = data.clone();
                let tag = key
                    .seal_in_place_separate_tag(nonce(), Aad::from(&hdr), &mut buf)
                    .unwrap();
                buf.extend_from_slice(tag.as_ref());
                black_box(
                    key.open_in_place(nonce(), Aad::from(&hdr), &mut buf)
                        .unwrap()
                        .len(),
                )
            })
        });
        g.bench_function(BenchmarkId::new("memcpy", sname), |b| {
            b.iter(|| black_box(black_box(&data).clone()))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// The ratio table: protocol and floor measured interleaved, so that a busy machine slows both

/// Nanoseconds per operation of `k` operations (the closure does its own untimed set-up and
/// returns the timed nanoseconds).
type Timed<'a> = Box<dyn FnMut(u64) -> f64 + 'a>;

fn time_ops(k: u64, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..k {
        f();
    }
    t.elapsed().as_nanos() as f64
}

/// How many operations take about `target`.
fn calibrate(f: &mut Timed<'_>, target: Duration) -> u64 {
    f(1);
    let mut k = 1u64;
    loop {
        let ns = f(k);
        if ns >= target.as_nanos() as f64 / 4.0 || k >= 1 << 20 {
            return ((target.as_nanos() as f64 / (ns / k as f64)) as u64).clamp(1, 1 << 22);
        }
        k *= 4;
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct RatioRow {
    label: String,
    protocol_ns: f64,
    floor_ns: f64,
    ratio: f64,
    ratio_min: f64,
    ratio_max: f64,
}

/// Every round times a batch of the protocol operation, then a batch of its floor; the ratio of
/// each round is computed, and the table shows medians (and the min-max of the ratios).
fn interleaved(
    label: String,
    mut proto: Timed<'_>,
    mut floor: Timed<'_>,
    rounds: usize,
    per: f64,
) -> RatioRow {
    let target = Duration::from_millis(25);
    let (kp, kf) = (calibrate(&mut proto, target), calibrate(&mut floor, target));
    let (mut p, mut f, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let (a, b) = if i % 2 == 0 {
            let a = proto(kp) / kp as f64;
            (a, floor(kf) / kf as f64)
        } else {
            let b = floor(kf) / kf as f64;
            (proto(kp) / kp as f64, b)
        };
        p.push(a);
        f.push(b);
        r.push(a / b);
    }
    let (lo, hi) = r
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    let (pm, fm) = (median(&mut p), median(&mut f));
    RatioRow {
        label,
        protocol_ns: pm / per,
        floor_ns: fm / per,
        ratio: pm / fm,
        ratio_min: lo,
        ratio_max: hi,
    }
}

fn protocol_op<'a>(mode: Mode, size: usize, op: &'static str) -> Timed<'a> {
    let payload = vec![0x61u8; size];
    let mut p = Pair::established(mode);
    match op {
        "seal" => Box::new(move |k| {
            time_ops(k, || {
                black_box(p.a.seal(&p.alice, &payload, T0, &mut OsRng).unwrap());
            })
        }),
        "unseal" => Box::new(move |k| {
            let envs: Vec<Envelope> = (0..k).map(|_| p.a_to_b(&payload)).collect();
            let mut it = envs.iter();
            time_ops(k, || {
                let env = it.next().unwrap();
                black_box(p.b.unseal(&p.bob, env).unwrap());
            })
        }),
        "seal_unseal" => Box::new(move |k| {
            time_ops(k, || {
                let env = p.a.seal(&p.alice, &payload, T0, &mut OsRng).unwrap();
                black_box(p.b.unseal(&p.bob, &env).unwrap());
            })
        }),
        "ratchet_round" => Box::new(move |k| {
            time_ops(k, || {
                let e = p.a.seal(&p.alice, &payload, T0, &mut OsRng).unwrap();
                black_box(p.b.unseal(&p.bob, &e).unwrap());
                let e = p.b.seal(&p.bob, &payload, T0, &mut OsRng).unwrap();
                black_box(p.a.unseal(&p.alice, &e).unwrap());
            })
        }),
        "handshake" => Box::new(move |k| {
            let (alice, bob) = (&p.alice, &p.bob);
            time_ops(k, || {
                let (mut a, mut b) = sessions(alice, bob, mode);
                let env = a.seal(alice, &payload, T0, &mut OsRng).unwrap();
                black_box(b.unseal(bob, &env).unwrap());
            })
        }),
        _ => unreachable!(),
    }
}

fn floor_op<'a>(mode: Mode, size: usize, op: &'static str) -> Timed<'a> {
    let f = Floor::new(mode, size);
    let dh = DhFloor::new();
    let sealed = f.seal();
    Box::new(move |k| match op {
        "seal" => time_ops(k, || drop(black_box(f.seal()))),
        "unseal" => time_ops(k, || {
            black_box(f.open(&sealed));
        }),
        "seal_unseal" => time_ops(k, || {
            black_box(f.open(&f.seal()));
        }),
        "ratchet_round" => time_ops(k, || {
            dh.ratchet_step();
            black_box(f.open(&f.seal()));
            dh.ratchet_step();
            black_box(f.open(&f.seal()));
        }),
        "handshake" => time_ops(k, || {
            dh.handshake();
            black_box(f.open(&f.seal()));
        }),
        _ => unreachable!(),
    })
}

/// `unseal_many` of a batch against single `unseal` calls of the same batch, per message.
fn batch_ops<'a>(mode: Mode, size: usize) -> (Timed<'a>, Timed<'a>) {
    let n = batch_len(size);
    let payload = vec![0x61u8; size];
    let mk = move || {
        let p = Pair::established(mode);
        let payload = payload.clone();
        let mut p = p;
        move |k: u64, many: bool| {
            let refs: Vec<&[u8]> = (0..n).map(|_| payload.as_slice()).collect();
            let mut total = 0.0;
            for _ in 0..k {
                let envs = p.a.seal_many(&p.alice, &refs, T0, &mut OsRng).unwrap();
                let t = Instant::now();
                if many {
                    black_box(p.b.unseal_many(&p.bob, &envs));
                } else {
                    for e in &envs {
                        black_box(p.b.unseal(&p.bob, e).unwrap());
                    }
                }
                total += t.elapsed().as_nanos() as f64;
            }
            total
        }
    };
    let mut a = mk();
    let mut b = mk();
    (
        Box::new(move |k| a(k, true)),
        Box::new(move |k| b(k, false)),
    )
}

fn ratio_table(dir: &std::path::Path, quick: bool) {
    let rounds = if quick { 5 } else { 15 };
    let mut rows = Vec::new();
    for (mode, mname) in MODES {
        for (size, sname) in SIZES {
            for op in ["seal", "unseal", "seal_unseal"] {
                rows.push(interleaved(
                    format!("{mname} {op} {sname}"),
                    protocol_op(mode, size, op),
                    floor_op(mode, size, op),
                    rounds,
                    1.0,
                ));
            }
        }
        for op in ["handshake", "ratchet_round"] {
            rows.push(interleaved(
                format!("{mname} {op}"),
                protocol_op(mode, 64, op),
                floor_op(mode, 64, op),
                rounds,
                1.0,
            ));
        }
        for (size, sname) in SIZES {
            let (many, single) = batch_ops(mode, size);
            let n = batch_len(size);
            rows.push(interleaved(
                format!("{mname} unseal_many x{n} {sname} / unseal singly (per msg)"),
                many,
                single,
                rounds,
                n as f64,
            ));
        }
    }
    let w = rows.iter().map(|r| r.label.len()).max().unwrap_or(10);
    println!("\nagentmesh-core vs the raw floor, measured interleaved ({rounds} rounds)");
    println!(
        "ratio = median protocol / median floor; in parentheses the per-round ratios' range\n"
    );
    println!(
        "{:<w$}  {:>11}  {:>11}  ratio (range)",
        "operation", "protocol", "floor"
    );
    println!("{}", "-".repeat(w + 45));
    let mut json = Vec::new();
    for r in &rows {
        println!(
            "{:<w$}  {:>11}  {:>11}  {:.2}x ({:.2}-{:.2})",
            r.label,
            fmt_ns(r.protocol_ns),
            fmt_ns(r.floor_ns),
            r.ratio,
            r.ratio_min,
            r.ratio_max
        );
        json.push(serde_json::json!({
            "label": r.label, "protocol_ns": r.protocol_ns, "floor_ns": r.floor_ns,
            "ratio": r.ratio, "ratio_min": r.ratio_min, "ratio_max": r.ratio_max,
        }));
    }
    println!(
        "\n(unseal_many rows: the \"floor\" column is single unseal calls of the same batch.)"
    );
    let out = serde_json::json!({ "rounds": rounds, "quick": quick, "rows": json });
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join("agentmesh-ratios.json"), out.to_string());
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn criterion_dir() -> PathBuf {
    if let Ok(home) = std::env::var("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    // The bench binary lives in <target>/<profile>/deps/.
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent()?.parent().map(|t| t.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

// ---------------------------------------------------------------------------------------------
// Batch verification: what `unseal_many` can gain

/// Every signature of a batch comes from the same key (one peer), so the batch equation
/// `[8](Σ z_i R_i + (Σ z_i k_i) A - (Σ z_i s_i) B) = 0` needs one multiscalar multiplication over
/// n + 2 points instead of the 2n + 1 of `ed25519_dalek::verify_batch`. A prototype to size the
/// gain (checks: canonical s, R and A decompress, A not small order, R not small order).
fn verify_same_key(
    vk: &ed25519_dalek::VerifyingKey,
    msgs: &[&[u8]],
    sigs: &[ed25519_dalek::Signature],
) -> bool {
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
    use rand_core::RngCore;
    use sha2::Sha512;

    let a_bytes = vk.to_bytes();
    let Some(a) = CompressedEdwardsY(a_bytes).decompress() else {
        return false;
    };
    if a.is_small_order() {
        return false;
    }
    let mut points = Vec::with_capacity(sigs.len() + 2);
    let mut coeffs = Vec::with_capacity(sigs.len() + 2);
    let (mut a_coeff, mut b_coeff) = (Scalar::ZERO, Scalar::ZERO);
    for (m, sig) in msgs.iter().zip(sigs) {
        let Some(r) = CompressedEdwardsY(*sig.r_bytes()).decompress() else {
            return false;
        };
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes())) else {
            return false;
        };
        if r.is_small_order() {
            return false;
        }
        let mut h = Sha512::new();
        h.update(sig.r_bytes());
        h.update(a_bytes);
        h.update(m);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let mut zb = [0u8; 32];
        OsRng.fill_bytes(&mut zb[..16]);
        let z = Scalar::from_bytes_mod_order(zb);
        a_coeff += z * k;
        b_coeff -= z * s;
        points.push(r);
        coeffs.push(z);
    }
    points.push(a);
    coeffs.push(a_coeff);
    points.push(ED25519_BASEPOINT_POINT);
    coeffs.push(b_coeff);
    curve25519_dalek::edwards::EdwardsPoint::vartime_multiscalar_mul(&coeffs, &points)
        .mul_by_cofactor()
        .is_identity()
}

fn batch_verify(c: &mut Criterion) {
    const N: usize = 256;
    let mut g = c.benchmark_group("batch_verify");
    g.throughput(Throughput::Elements(N as u64));
    let key = signing_key(&mut OsRng);
    let vk = key.verifying_key();
    let f = Floor::new(Mode::Signed, 64);
    let inputs: Vec<Vec<u8>> = (0..N).map(|i| f.signing_input(&[i as u8; 64])).collect();
    let msgs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let sigs: Vec<ed25519_dalek::Signature> = msgs.iter().map(|m| key.sign(m)).collect();
    let keys = vec![vk; N];
    assert!(ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok());
    assert!(verify_same_key(&vk, &msgs, &sigs));
    let mut bad = sigs.clone();
    bad[7] = key.sign(b"something else");
    assert!(!verify_same_key(&vk, &msgs, &bad));
    g.bench_function(BenchmarkId::new("verify_strict_each", N), |b| {
        b.iter(|| {
            msgs.iter()
                .zip(&sigs)
                .all(|(m, s)| vk.verify_strict(m, s).is_ok())
        })
    });
    g.bench_function(BenchmarkId::new("dalek_verify_batch", N), |b| {
        b.iter(|| ed25519_dalek::verify_batch(black_box(&msgs), &sigs, &keys).is_ok())
    });
    g.bench_function(BenchmarkId::new("same_key_msm", N), |b| {
        b.iter(|| verify_same_key(&vk, black_box(&msgs), &sigs))
    });
    g.finish();
}

fn main() {
    let dir = criterion_dir();
    let mut c = Criterion::default()
        .output_directory(&dir)
        .warm_up_time(Duration::from_millis(800))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    protocol(&mut c);
    floor(&mut c);
    batch_verify(&mut c);
    c.final_summary();
    // The ratio table runs unless a filter selected some benchmarks (or the filter is "ratio").
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args.iter().find(|a| !a.starts_with('-'));
    if filter.is_none_or(|f| f == "ratio") {
        ratio_table(&dir, args.iter().any(|a| a == "--quick"));
    }
}
