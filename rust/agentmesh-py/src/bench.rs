//! Benchmark helpers for `python -m benches` (not part of the public API; underscore names).
//!
//! `_bench_floor` times the raw primitives a seal+unseal cannot avoid, called directly on the
//! crates the core is built on, so the Python harness can show "Python-side cost / raw floor".
//! `_bench_core` times the core's own seal+unseal (no Python, no JSON), which splits the
//! distance to the floor into "protocol" and "Python glue". Both run with the GIL released.

use std::hint::black_box;
use std::time::Instant;

use agentmesh_core::labels;
use agentmesh_core::{IdentityKeyPair, Mode, Session, SIGNATURE_LEN};
use ed25519_dalek::{Signer, SigningKey};
use hkdf::Hkdf;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rand_core::OsRng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::Sha256;

use crate::errors::to_py;

const T0: u64 = 1_700_000_000_000;
const TAG_LEN: usize = 16;

fn runtime(what: &'static str) -> PyErr {
    PyRuntimeError::new_err(what)
}

fn nonce() -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&7u32.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// One chain step: HKDF-Expand(PRK = chain key, info = label, 64 bytes) -> message key.
fn chain_step(chain: &[u8; 32]) -> [u8; 32] {
    let mut okm = [0u8; 64];
    if let Ok(hk) = Hkdf::<Sha256>::from_prk(chain) {
        let _ = hk.expand(labels::KDF_CHAIN_STEP, &mut okm);
    }
    let mut mk = [0u8; 32];
    mk.copy_from_slice(okm.get(..32).unwrap_or(&[0u8; 32]));
    black_box(&okm);
    mk
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

/// The primitives of one message, with inputs of the protocol's exact sizes.
struct Floor {
    signing: SigningKey,
    chain: [u8; 32],
    /// SIG_MESSAGE label ‖ the header of a real envelope; the signed input appends BLAKE3(payload).
    label_and_header: Vec<u8>,
    /// What the AEAD encrypts: signature (signed mode) ‖ payload.
    body: Vec<u8>,
    signed: bool,
}

impl Floor {
    fn new(payload_len: usize, signed: bool) -> PyResult<Self> {
        let mode = if signed { Mode::Signed } else { Mode::Deniable };
        let mut pair = Pair::new(mode).map_err(to_py)?;
        let payload = vec![0x61u8; payload_len];
        let env = pair
            .a
            .seal(&pair.alice, &payload, T0, &mut OsRng)
            .map_err(to_py)?;
        let sig_len = if signed { SIGNATURE_LEN } else { 0 };
        let bytes = env.as_bytes();
        let header_len = bytes
            .len()
            .checked_sub(sig_len + payload_len + TAG_LEN)
            .ok_or_else(|| runtime("unexpected envelope layout"))?;
        let mut label_and_header = labels::SIG_MESSAGE.to_vec();
        label_and_header.extend_from_slice(bytes.get(..header_len).unwrap_or_default());
        Ok(Self {
            signing: SigningKey::generate(&mut OsRng),
            chain: [7u8; 32],
            label_and_header,
            body: vec![0x61u8; sig_len + payload_len],
            signed,
        })
    }

    fn header(&self) -> &[u8] {
        self.label_and_header
            .get(labels::SIG_MESSAGE.len()..)
            .unwrap_or_default()
    }

    fn signing_input(&self, payload: &[u8]) -> Vec<u8> {
        let mut input = Vec::with_capacity(self.label_and_header.len() + 32);
        input.extend_from_slice(&self.label_and_header);
        input.extend_from_slice(blake3::hash(payload).as_bytes());
        input
    }

    fn key(mk: &[u8; 32]) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, mk).ok().map(LessSafeKey::new)
    }

    /// Chain step, BLAKE3 + sign (signed), AES-GCM seal into a fresh buffer.
    fn seal(&self) -> Option<Vec<u8>> {
        let mk = chain_step(&self.chain);
        let mut buf = Vec::with_capacity(self.body.len() + TAG_LEN);
        buf.extend_from_slice(&self.body);
        if self.signed {
            let sig = self
                .signing
                .sign(&self.signing_input(buf.get(SIGNATURE_LEN..)?));
            buf.get_mut(..SIGNATURE_LEN)?
                .copy_from_slice(&sig.to_bytes());
        }
        let tag = Self::key(&mk)?
            .seal_in_place_separate_tag(nonce(), Aad::from(self.header()), &mut buf)
            .ok()?;
        buf.extend_from_slice(tag.as_ref());
        Some(buf)
    }

    /// Chain step, AES-GCM open of a fresh copy, BLAKE3 + verify_strict (signed).
    fn open(&self, sealed: &[u8]) -> Option<usize> {
        let mk = chain_step(&self.chain);
        let mut buf = sealed.to_vec();
        let plain = Self::key(&mk)?
            .open_in_place(nonce(), Aad::from(self.header()), &mut buf)
            .ok()?;
        if self.signed {
            let (sig, payload) = plain.split_at(SIGNATURE_LEN);
            let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
            self.signing
                .verifying_key()
                .verify_strict(&self.signing_input(payload), &sig)
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
    if payload_len > 64 * 1024 * 1024 - 128 {
        return Err(PyValueError::new_err(
            "payload_len exceeds the 64 MiB envelope limit",
        ));
    }
    if iterations == 0 {
        return Err(PyValueError::new_err("iterations must be positive"));
    }
    Ok(())
}

/// `_bench_floor(payload_len, iterations, signed) -> float`: nanoseconds per seal+unseal worth
/// of raw primitives (chain-step HKDF x2, AES-256-GCM seal + open, and when signed the BLAKE3
/// content digest of the payload x2, Ed25519 sign + verify_strict over label‖header‖digest), GIL released.
#[pyfunction]
pub fn _bench_floor(
    py: Python<'_>,
    payload_len: usize,
    iterations: u64,
    signed: bool,
) -> PyResult<f64> {
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

/// `_bench_floor_parts(payload_len, iterations) -> dict[str, float]`: nanoseconds per call of
/// each primitive of the signed floor, to show where a seal+unseal's time goes.
#[pyfunction]
pub fn _bench_floor_parts<'py>(
    py: Python<'py>,
    payload_len: usize,
    iterations: u64,
) -> PyResult<Bound<'py, PyDict>> {
    check_args(payload_len, iterations)?;
    let floor = Floor::new(payload_len, true)?;
    let payload = vec![0x61u8; payload_len];
    let input = floor.signing_input(&payload);
    let sig = floor.signing.sign(&input);
    let vk = floor.signing.verifying_key();
    let key = Floor::key(&[1u8; 32]).ok_or_else(|| runtime("key"))?;
    let mut sealed = payload.clone();
    let tag = key
        .seal_in_place_separate_tag(nonce(), Aad::from(floor.header()), &mut sealed)
        .map_err(|_| runtime("seal"))?;
    sealed.extend_from_slice(tag.as_ref());
    let parts = py.allow_threads(|| {
        let n = iterations;
        let mut out: Vec<(&'static str, Option<f64>)> = Vec::new();
        out.push((
            "hkdf_chain_step",
            per_op(n, || black_box(chain_step(&floor.chain)).len() == 32),
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
                key.seal_in_place_separate_tag(nonce(), Aad::from(floor.header()), &mut buf)
                    .is_ok()
            }),
        ));
        out.push((
            "aes256gcm_open",
            per_op(n, || {
                let mut buf = sealed.clone();
                key.open_in_place(nonce(), Aad::from(floor.header()), &mut buf)
                    .is_ok()
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
        d.set_item(
            name,
            ns.ok_or_else(|| runtime("primitive self-check failed"))?,
        )?;
    }
    Ok(d)
}

/// `_bench_core(payload_len, iterations, signed) -> float`: nanoseconds per seal+unseal of the
/// Rust core itself (established session, payload of that many bytes, no Python, no JSON).
#[pyfunction]
pub fn _bench_core(
    py: Python<'_>,
    payload_len: usize,
    iterations: u64,
    signed: bool,
) -> PyResult<f64> {
    check_args(payload_len, iterations)?;
    let mode = if signed { Mode::Signed } else { Mode::Deniable };
    let mut pair = Pair::new(mode).map_err(to_py)?;
    let payload = vec![0x61u8; payload_len];
    py.allow_threads(|| per_op(iterations, || pair.seal_unseal(&payload).is_ok()))
        .ok_or_else(|| runtime("core seal+unseal failed"))
}

/// `_bench_rust_heap() -> int`: bytes the extension's Rust code holds allocated, counted from
/// the first call on (the memory benchmark takes differences: what dropping sessions frees).
#[pyfunction]
pub fn _bench_rust_heap() -> isize {
    crate::allocator::live_bytes()
}

/// Adds the benchmark helpers to `agentmesh._native` (one line in lib.rs calls this).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_bench_floor, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_floor_parts, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_core, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_rust_heap, m)?)?;
    Ok(())
}
