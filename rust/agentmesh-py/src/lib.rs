//! `agentmesh._native`: PyO3 glue over agentmesh-core. No protocol logic lives here: only
//! conversions (dicts, JSON payloads, bytes), locking, GIL handling and error mapping.

mod allocator;
mod bundle;
mod envelope;
mod errors;
mod group;
mod json;
mod keypair;
mod locks;
mod session;
mod succession;

use agentmesh_core::AgentIdProblem;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::errors::to_py;

/// Checks a bundle's self-signature; returns its agent id (IdentityError for the bundle of an
/// identity without one).
#[pyfunction]
fn verify_bundle(bundle: &Bound<'_, PyAny>) -> PyResult<String> {
    let b = bundle::from_dict(bundle)?;
    Ok(b.require_agent_id().map_err(to_py)?.to_owned())
}

/// True when `signature` is the bundle owner's registration proof for this hub, challenge,
/// client nonce and TLS certificate.
#[pyfunction]
#[pyo3(signature = (bundle, signature, hub_id, challenge, client_nonce, tls_certificate_sha256=None))]
fn verify_registration(
    bundle: &Bound<'_, PyAny>,
    signature: &[u8],
    hub_id: &[u8],
    challenge: &[u8],
    client_nonce: &[u8],
    tls_certificate_sha256: Option<&[u8]>,
) -> PyResult<bool> {
    let b = bundle::from_dict(bundle)?;
    let reg = bundle::registration(hub_id, challenge, client_nonce, tls_certificate_sha256)?;
    let Ok(sig) = <[u8; 64]>::try_from(signature) else {
        return Ok(false);
    };
    Ok(b.verify_registration(&reg, &sig).is_ok())
}

/// True when `signature` is the bundle owner's NATS connect proof for `nonce`.
#[pyfunction]
fn verify_nats_connect(
    bundle: &Bound<'_, PyAny>,
    nonce: &[u8],
    signature: &[u8],
) -> PyResult<bool> {
    let b = bundle::from_dict(bundle)?;
    let Ok(sig) = <[u8; 64]>::try_from(signature) else {
        return Ok(false);
    };
    Ok(agentmesh_core::verify_nats_connect(&b, nonce, &sig).is_ok())
}

/// The fingerprint of a bundle's identity key (the bundle is verified first).
#[pyfunction]
fn fingerprint_of(bundle: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(bundle::from_dict(bundle)?.fingerprint())
}

/// The fingerprint of a raw 32-byte Ed25519 identity key.
#[pyfunction]
fn fingerprint_of_key(identity_key: &[u8]) -> PyResult<String> {
    let key: [u8; 32] = identity_key
        .try_into()
        .map_err(|_| PyValueError::new_err("identity key must be 32 bytes"))?;
    Ok(agentmesh_core::fingerprint(&key))
}

/// The canonical binary form of a bundle dict (used by the fuzz corpus and test vectors).
#[pyfunction]
fn bundle_to_bytes<'py>(
    py: Python<'py>,
    bundle: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &bundle::from_dict(bundle)?.to_bytes()))
}

#[pyfunction]
fn bundle_from_bytes<'py>(
    py: Python<'py>,
    data: &[u8],
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    let b = agentmesh_core::PublicBundle::from_bytes(data).map_err(to_py)?;
    bundle::to_dict(py, &b)
}

/// The plaintext form of a payload dict, as `seal` encrypts it: its compact JSON, framed with
/// its binary values when it holds any (docs/protocol.md, section 5.1; test vectors, tools).
#[pyfunction]
fn payload_to_bytes<'py>(
    py: Python<'py>,
    payload: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &json::payload_to_plaintext(payload)?))
}

/// The payload dict of a plaintext payload (`payload_to_bytes` reversed).
#[pyfunction]
fn payload_from_bytes<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    json::plaintext_to_py(py, data)
}

/// Checks an agent id against the core's rule (agentmesh_core::agent_id_problem); a ValueError
/// naming the problem, with `what` naming the value ("recipient id", "--id", ...). Anything but
/// a str is a ValueError too, as for any other invalid id.
#[pyfunction]
#[pyo3(signature = (agent_id, what="agent_id"))]
fn check_agent_id(agent_id: &Bound<'_, PyAny>, what: &str) -> PyResult<()> {
    let Ok(text) = agent_id.downcast::<PyString>() else {
        let type_name = agent_id.get_type().name()?;
        return Err(PyValueError::new_err(format!(
            "{what} must be a str, not {type_name}"
        )));
    };
    let Ok(id) = text.to_str() else {
        // Lone surrogates: a Python str that is not Unicode text, so it has no UTF-8 form.
        return Err(PyValueError::new_err(format!(
            "{what} {} is not valid Unicode text (it contains a lone surrogate)",
            text.repr()?
        )));
    };
    match agentmesh_core::agent_id_problem(id) {
        None => Ok(()),
        Some(AgentIdProblem::Empty) => {
            Err(PyValueError::new_err(format!("{what} must not be empty")))
        }
        Some(AgentIdProblem::TooLong { bytes }) => Err(PyValueError::new_err(format!(
            "{what} is too long: {bytes} UTF-8 bytes, at most {} allowed",
            agentmesh_core::MAX_AGENT_ID_LEN
        ))),
        Some(AgentIdProblem::ControlCharacter { index, character }) => {
            let character = PyString::new(agent_id.py(), character.encode_utf8(&mut [0; 4]));
            Err(PyValueError::new_err(format!(
                "{what} {} contains a control character ({} at index {index})",
                text.repr()?,
                character.repr()?
            )))
        }
    }
}

/// Replaces `path` with `data`: owner-only (0600), atomic and durable; refuses a symlink there.
/// The one writer for files that hold secrets (docs/security.md); KeyFileError on failure.
#[pyfunction]
fn write_private_file(py: Python<'_>, path: std::path::PathBuf, data: &[u8]) -> PyResult<()> {
    py.allow_threads(|| agentmesh_core::private_file::write_private_file(&path, data))
        .map_err(|e| errors::write_error_to_py(py, &e))
}

/// `_bench_rust_heap() -> int`: bytes the extension's Rust code holds allocated, counted from
/// the first call on (the memory benchmark takes differences: what dropping sessions frees).
#[pyfunction]
fn _bench_rust_heap() -> isize {
    allocator::live_bytes()
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<keypair::PyAgentKeyPair>()?;
    m.add_class::<session::PyCryptoSession>()?;
    m.add_class::<envelope::PyEnvelope>()?;
    m.add_function(wrap_pyfunction!(session::perform_key_exchange, m)?)?;
    m.add_function(wrap_pyfunction!(session::unseal_across, m)?)?;
    m.add_function(wrap_pyfunction!(verify_bundle, m)?)?;
    m.add_function(wrap_pyfunction!(verify_registration, m)?)?;
    m.add_function(wrap_pyfunction!(verify_nats_connect, m)?)?;
    m.add_function(wrap_pyfunction!(fingerprint_of, m)?)?;
    m.add_function(wrap_pyfunction!(fingerprint_of_key, m)?)?;
    m.add_function(wrap_pyfunction!(bundle_to_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(bundle_from_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(payload_to_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(payload_from_bytes, m)?)?;
    m.add(
        "BYTES_REFERENCE_KEY",
        agentmesh_core::payload::BYTES_REFERENCE_KEY,
    )?;
    m.add_function(wrap_pyfunction!(write_private_file, m)?)?;
    m.add_function(wrap_pyfunction!(check_agent_id, m)?)?;
    m.add_function(wrap_pyfunction!(succession::sign_succession, m)?)?;
    m.add_function(wrap_pyfunction!(succession::verify_succession, m)?)?;
    m.add_function(wrap_pyfunction!(succession::follow_succession, m)?)?;
    m.add("MAX_SUCCESSION_CHAIN", agentmesh_core::MAX_SUCCESSION_CHAIN)?;
    m.add_class::<group::PyGroupSession>()?;
    m.add_class::<group::PyGroupEnvelope>()?;
    m.add_function(wrap_pyfunction!(group::sign_membership, m)?)?;
    m.add_function(wrap_pyfunction!(group::verify_membership, m)?)?;
    m.add(
        "MAX_GROUP_MESSAGE_GAP",
        agentmesh_core::group::MAX_GROUP_MESSAGE_GAP,
    )?;
    m.add(
        "MAX_GROUP_SKIPPED_KEYS",
        agentmesh_core::group::MAX_GROUP_SKIPPED_KEYS,
    )?;
    m.add(
        "MAX_GROUP_MEMBERS",
        agentmesh_core::group::MAX_GROUP_MEMBERS,
    )?;
    // The memory benchmark's live-bytes count of this module's own heap (allocator.rs): it
    // can only be read from inside the module. The floor lives in rust/agentmesh-bench.
    m.add_function(wrap_pyfunction!(_bench_rust_heap, m)?)?;
    m.add("PROTOCOL_VERSION", agentmesh_core::VERSION)?;
    m.add("MAX_MESSAGE_GAP", agentmesh_core::MAX_MESSAGE_GAP)?;
    m.add("MAX_SKIPPED_KEYS", agentmesh_core::MAX_SKIPPED_KEYS)?;
    m.add(
        "MAX_SETUPS_PER_SIGNED_PREKEY",
        agentmesh_core::MAX_SETUPS_PER_SIGNED_PREKEY,
    )?;
    Ok(())
}
