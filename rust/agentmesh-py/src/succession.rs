//! Succession statements (docs/protocol.md, "Succession statement"): the core's signer and
//! checks, with Python bytes in and out.

use agentmesh_core::{follow_succession as core_follow, sign_succession as core_sign, Succession};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::bundle::b64;
use crate::errors::to_py;
use crate::keypair::PyAgentKeyPair;
use crate::locks;

fn key32(value: &[u8], name: &str) -> PyResult<[u8; 32]> {
    value
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("{name} must be 32 bytes, got {}", value.len())))
}

/// `sign_succession(old_keypair, new_keypair, generation, timestamp_ms) -> bytes`: the old
/// identity hands its agent id over to the new one; both sign.
#[pyfunction]
pub fn sign_succession<'py>(
    py: Python<'py>,
    old_keypair: Py<PyAgentKeyPair>,
    new_keypair: Py<PyAgentKeyPair>,
    generation: u32,
    timestamp_ms: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let statement = {
        let old = locks::read(py, &old_keypair.get().inner);
        let new = locks::read(py, &new_keypair.get().inner);
        core_sign(&old, &new, generation, timestamp_ms).map_err(to_py)?
    };
    Ok(PyBytes::new(py, &statement))
}

/// `verify_succession(statement) -> dict`: `{"agent_id", "old_identity_key",
/// "new_identity_key" (base64), "generation", "timestamp"}` once both signatures verified.
#[pyfunction]
pub fn verify_succession<'py>(py: Python<'py>, statement: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let s = Succession::verify(statement).map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("agent_id", &s.agent_id)?;
    d.set_item("old_identity_key", b64(&s.old_identity_key))?;
    d.set_item("new_identity_key", b64(&s.new_identity_key))?;
    d.set_item("generation", s.generation)?;
    d.set_item("timestamp", s.timestamp_ms)?;
    Ok(d)
}

/// `follow_succession(agent_id, from_key, to_key, chain) -> int`: the generation of `to_key`
/// when `chain` (statements, oldest first) carries `agent_id` from `from_key` to `to_key` (raw
/// 32-byte identity keys); IdentityError, SignatureError or FormatError naming what is wrong.
#[pyfunction]
pub fn follow_succession(
    agent_id: &str,
    from_key: &[u8],
    to_key: &[u8],
    chain: Vec<Vec<u8>>,
) -> PyResult<u32> {
    let from = key32(from_key, "from_key")?;
    let to = key32(to_key, "to_key")?;
    let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
    core_follow(agent_id, &from, &to, &refs).map_err(to_py)
}
