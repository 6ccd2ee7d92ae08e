//! `agentmesh_bench`: the benchmark floor for `python -m benches`, in a module of its own so
//! that the wheel users install (`agentmesh._native`) holds no benchmark code and no copy of a
//! protocol rule. Build it with `pip install ./rust/agentmesh-bench` (docs/benchmarks.md).
//!
//! `floor` times the raw work a seal+unseal cannot avoid, so the harness can show "Python-side
//! cost / raw floor". Every protocol step in it is the core's own function (through
//! `agentmesh_core::internals`): the chain step, the nonce, the AEAD with the real header as
//! associated data, the message signing input; only Ed25519 itself is called on ed25519-dalek.
//! `core` times the core's own seal+unseal (no Python, no JSON), which splits the distance to
//! the floor into "protocol" and "Python glue". All run with the GIL released.

use std::hint::black_box;
use std::time::Instant;

use agentmesh_core::internals::{
    associated_data, chain_step, message_nonce, message_signing_input, open_in_place,
    seal_separate_tag, ChainKey, MessageKey, NONCE_LEN, TAG_LEN,
};
use agentmesh_core::{IdentityKeyPair, Mode, Session, MAX_CIPHERTEXT_LEN, SIGNATURE_LEN};
use ed25519_dalek::{Signature, Signer, SigningKey};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rand_core::OsRng;

/// The same allocator as `agentmesh._native`, so `core` runs as the shipped module does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: u64 = 1_700_000_000_000;

/// A fresh Ed25519 key from 32 random bytes (ed25519-dalek 3 takes no rand_core 0.6 RNG).
fn signing_key(rng: &mut impl rand_core::RngCore) -> SigningKey {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

fn runtime(what: impl Into<String>) -> PyErr {
    PyRuntimeError::new_err(what.into())
}

fn core_error(e: agentmesh_core::Error) -> PyErr {
    runtime(e.to_string())
}

/// A pair of established core sessions between "alice" and "bob" (the harness's ids, so that
/// headers have the protocol's real length).
struct Pair {
    alice: IdentityKeyPair,
    bob: IdentityKeyPair,
    a: Session,
    b: Session,
}

impl Pair {
    fn new(mode: Mode) -> agentmesh_core::Result<Self> {
        let alice = IdentityKeyPair::generate("alice", &mut OsRng)?;
        let bob = IdentityKeyPair::generate("bob", &mut OsRng)?;
        let mut a = Session::new(&alice, bob.public_bundle(), mode)?;
        let mut b = Session::new(&bob, alice.public_bundle(), mode)?;
        let e = a.seal(&alice, b"{}", T0, &mut OsRng)?;
        b.unseal(&bob, &e)?;
        let e = b.seal(&bob, b"{}", T0, &mut OsRng)?;
        a.unseal(&alice, &e)?;
        Ok(Self { alice, bob, a, b })
    }

    fn seal_unseal(&mut self, payload: &[u8]) -> agentmesh_core::Result<usize> {
        let env = self.a.seal(&self.alice, payload, T0, &mut OsRng)?;
        Ok(self.b.unseal(&self.bob, &env)?.payload().len())
    }
}

/// The work of one message, with inputs of the protocol's exact sizes.
struct Floor {
    signing: SigningKey,
    chain: ChainKey,
    /// The associated data of a real envelope of this size (its header).
    header: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    /// What the AEAD encrypts: signature (signed mode) ‖ payload.
    body: Vec<u8>,
    signed: bool,
}

impl Floor {
    fn new(payload_len: usize, signed: bool) -> PyResult<Self> {
        let mode = if signed { Mode::Signed } else { Mode::Deniable };
        let mut pair = Pair::new(mode).map_err(core_error)?;
        let payload = vec![0x61u8; payload_len];
        let env = pair
            .a
            .seal(&pair.alice, &payload, T0, &mut OsRng)
            .map_err(core_error)?;
        let sig_len = if signed { SIGNATURE_LEN } else { 0 };
        Ok(Self {
            signing: signing_key(&mut OsRng),
            chain: ChainKey::from_bytes([7u8; 32]),
            header: associated_data(&env).to_vec(),
            nonce: message_nonce(env.header().counter),
            body: vec![0x61u8; sig_len + payload_len],
            signed,
        })
    }

    /// Chain step, the signing input (BLAKE3 of the payload) + sign (signed), AES-GCM seal into
    /// a fresh buffer.
    fn seal(&self) -> Option<Vec<u8>> {
        let (mk, _) = chain_step(&self.chain);
        let mut buf = Vec::with_capacity(self.body.len() + TAG_LEN);
        buf.extend_from_slice(&self.body);
        if self.signed {
            let input = message_signing_input(&self.header, buf.get(SIGNATURE_LEN..)?);
            let sig = self.signing.sign(&input);
            buf.get_mut(..SIGNATURE_LEN)?
                .copy_from_slice(&sig.to_bytes());
        }
        let tag = seal_separate_tag(&mk, self.nonce, &self.header, &mut buf).ok()?;
        buf.extend_from_slice(&tag);
        Some(buf)
    }

    /// Chain step, AES-GCM open of a fresh copy, the signing input + verify_strict (signed).
    fn open(&self, sealed: &[u8]) -> Option<usize> {
        let (mk, _) = chain_step(&self.chain);
        let mut buf = sealed.to_vec();
        let len = open_in_place(&mk, self.nonce, &self.header, &mut buf).ok()?;
        let plain = buf.get(..len)?;
        if self.signed {
            let (sig, payload) = plain.split_at_checked(SIGNATURE_LEN)?;
            let sig = Signature::from_slice(sig).ok()?;
            self.signing
                .verifying_key()
                .verify_strict(&message_signing_input(&self.header, payload), &sig)
                .ok()?;
        }
        Some(plain.len())
    }
}

fn per_op(iterations: u64, mut f: impl FnMut() -> bool) -> Option<f64> {
    let start = Instant::now();
    for _ in 0..iterations {
        if !f() {
            return None;
        }
    }
    Some(start.elapsed().as_nanos() as f64 / iterations.max(1) as f64)
}

fn check_args(payload_len: usize, iterations: u64) -> PyResult<()> {
    if payload_len > MAX_CIPHERTEXT_LEN - SIGNATURE_LEN - TAG_LEN {
        return Err(PyValueError::new_err(
            "payload_len exceeds the 64 MiB envelope limit",
        ));
    }
    if iterations == 0 {
        return Err(PyValueError::new_err("iterations must be positive"));
    }
    Ok(())
}

/// `floor(payload_len, iterations, signed) -> float`: nanoseconds per seal+unseal worth of raw
/// work (the core's chain step x2, AES-256-GCM seal + open under the core's nonce with the real
/// header as associated data, and when signed the core's signing input, label ‖ header ‖
/// BLAKE3(payload), x2 with Ed25519 sign + verify_strict), GIL released.
#[pyfunction]
fn floor(py: Python<'_>, payload_len: usize, iterations: u64, signed: bool) -> PyResult<f64> {
    check_args(payload_len, iterations)?;
    let floor = Floor::new(payload_len, signed)?;
    py.allow_threads(|| {
        per_op(iterations, || {
            floor
                .seal()
                .and_then(|ct| floor.open(&ct))
                .map(black_box)
                .is_some()
        })
    })
    .ok_or_else(|| runtime("floor self-check failed"))
}

/// `floor_parts(payload_len, iterations) -> dict[str, float]`: nanoseconds per call of each
/// piece of the signed floor, to show where a seal+unseal's time goes.
#[pyfunction]
fn floor_parts<'py>(
    py: Python<'py>,
    payload_len: usize,
    iterations: u64,
) -> PyResult<Bound<'py, PyDict>> {
    check_args(payload_len, iterations)?;
    let floor = Floor::new(payload_len, true)?;
    let payload = vec![0x61u8; payload_len];
    let input = message_signing_input(&floor.header, &payload);
    let sig = floor.signing.sign(&input);
    let vk = floor.signing.verifying_key();
    let key = MessageKey::from_bytes([1u8; 32]);
    let mut sealed = payload.clone();
    let tag =
        seal_separate_tag(&key, floor.nonce, &floor.header, &mut sealed).map_err(core_error)?;
    sealed.extend_from_slice(&tag);
    let parts = py.allow_threads(|| {
        let n = iterations;
        let mut out: Vec<(&'static str, Option<f64>)> = Vec::new();
        out.push((
            "hkdf_chain_step",
            per_op(n, || {
                black_box(chain_step(&floor.chain)).0.as_bytes().len() == 32
            }),
        ));
        out.push((
            "blake3_payload",
            per_op(n, || {
                black_box(blake3::hash(&payload)).as_bytes().len() == 32
            }),
        ));
        out.push((
            "ed25519_sign",
            per_op(n, || {
                black_box(floor.signing.sign(&input)).to_bytes().len() == 64
            }),
        ));
        out.push((
            "ed25519_verify_strict",
            per_op(n, || vk.verify_strict(&input, &sig).is_ok()),
        ));
        out.push((
            "aes256gcm_seal",
            per_op(n, || {
                let mut buf = payload.clone();
                seal_separate_tag(&key, floor.nonce, &floor.header, &mut buf).is_ok()
            }),
        ));
        out.push((
            "aes256gcm_open",
            per_op(n, || {
                let mut buf = sealed.clone();
                open_in_place(&key, floor.nonce, &floor.header, &mut buf).is_ok()
            }),
        ));
        out.push((
            "copy_to_fresh_buffer",
            per_op(n, || black_box(payload.clone()).len() == payload_len),
        ));
        out
    });
    let d = PyDict::new(py);
    for (name, ns) in parts {
        d.set_item(name, ns.ok_or_else(|| runtime("self-check failed"))?)?;
    }
    Ok(d)
}

/// `core(payload_len, iterations, signed) -> float`: nanoseconds per seal+unseal of the Rust
/// core itself (established session, payload of that many bytes, no Python, no JSON).
#[pyfunction(name = "core")]
fn core_alone(py: Python<'_>, payload_len: usize, iterations: u64, signed: bool) -> PyResult<f64> {
    check_args(payload_len, iterations)?;
    let mode = if signed { Mode::Signed } else { Mode::Deniable };
    let mut pair = Pair::new(mode).map_err(core_error)?;
    let payload = vec![0x61u8; payload_len];
    py.allow_threads(|| per_op(iterations, || pair.seal_unseal(&payload).is_ok()))
        .ok_or_else(|| runtime("core seal+unseal failed"))
}

#[pymodule(gil_used = false)]
fn agentmesh_bench(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(floor, m)?)?;
    m.add_function(wrap_pyfunction!(floor_parts, m)?)?;
    m.add_function(wrap_pyfunction!(core_alone, m)?)?;
    Ok(())
}
