//! `AgentKeyPair`: an agent's private identity, behind a lock shared with its sessions.

use std::path::PathBuf;
use std::sync::RwLock;

use agentmesh_core::private_file::write_private_file;
use agentmesh_core::IdentityKeyPair;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use rand_core::OsRng;
use zeroize::Zeroizing;

use crate::bundle;
use crate::errors::{to_py, write_error_to_py, KeyFileError};
use crate::locks;

#[pyclass(name = "AgentKeyPair", module = "agentmesh.crypto", frozen)]
#[derive(Debug)]
pub struct PyAgentKeyPair {
    pub inner: RwLock<IdentityKeyPair>,
    agent_id: Option<String>,
    fingerprint: String,
    identity_key: [u8; 32],
    /// The succession statements leading to this identity key (oldest first), published in
    /// its bundle so that peers which pinned an older key can follow (empty: none).
    succession: RwLock<Vec<Vec<u8>>>,
}

impl PyAgentKeyPair {
    pub fn wrap(kp: IdentityKeyPair) -> Self {
        Self {
            agent_id: (!kp.is_unbound()).then(|| kp.agent_id().to_owned()),
            fingerprint: kp.fingerprint(),
            identity_key: kp.identity_key(),
            inner: RwLock::new(kp),
            succession: RwLock::new(Vec::new()),
        }
    }

    pub fn identity_key_bytes(&self) -> [u8; 32] {
        self.identity_key
    }
}

fn passphrase_bytes(p: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<u8>>> {
    match p {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => {
            if let Ok(s) = v.extract::<String>() {
                Ok(Some(s.into_bytes()))
            } else {
                Ok(Some(v.extract::<Vec<u8>>()?))
            }
        }
    }
}

#[pymethods]
impl PyAgentKeyPair {
    /// A new identity without an agent id, as `AgentKeyPair()` made in the original AgentMesh:
    /// each session fixes the ids it is used under (docs/crypto-api.md).
    #[new]
    fn new() -> Self {
        Self::wrap(IdentityKeyPair::generate_unbound(&mut OsRng))
    }

    /// A new identity: Ed25519 identity key, X25519 exchange key and a signed prekey.
    #[staticmethod]
    fn generate(agent_id: &str) -> PyResult<Self> {
        IdentityKeyPair::generate(agent_id, &mut OsRng)
            .map(Self::wrap)
            .map_err(to_py)
    }

    /// Restores an identity from `to_bytes()` output (KeyFileError if corrupt or wrong passphrase).
    #[staticmethod]
    #[pyo3(signature = (data, passphrase=None))]
    fn from_bytes(
        py: Python<'_>,
        data: &[u8],
        passphrase: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let pass = passphrase_bytes(passphrase)?;
        py.allow_threads(|| IdentityKeyPair::from_secret_bytes(data, pass.as_deref()))
            .map(Self::wrap)
            .map_err(to_py)
    }

    /// Every secret of this identity (SECRET: store owner-only, or pass a passphrase).
    #[pyo3(signature = (passphrase=None))]
    fn to_bytes<'py>(
        &self,
        py: Python<'py>,
        passphrase: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let pass = passphrase_bytes(passphrase)?;
        let kp = locks::read(py, &self.inner);
        let kp_ref: &IdentityKeyPair = &kp;
        let data = py
            .allow_threads(|| kp_ref.to_secret_bytes(pass.as_deref(), &mut OsRng))
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &data))
    }

    /// Writes the identity file with the private-file writer (0600, atomic, no symlinks); with
    /// `if_revision`, only if the identity is still at that revision (returns whether it wrote).
    /// The file's bytes never become a Python object.
    #[pyo3(signature = (path, passphrase=None, if_revision=None))]
    fn save(
        &self,
        py: Python<'_>,
        path: PathBuf,
        passphrase: Option<&Bound<'_, PyAny>>,
        if_revision: Option<u64>,
    ) -> PyResult<bool> {
        let pass = passphrase_bytes(passphrase)?;
        let data = {
            // serialised under the same lock as the revision check, so the file holds exactly
            // that revision (a set-up settled meanwhile waits for the next save)
            let kp = locks::read(py, &self.inner);
            if if_revision.is_some_and(|r| r != kp.revision()) {
                return Ok(false);
            }
            let kp_ref: &IdentityKeyPair = &kp;
            py.allow_threads(|| kp_ref.to_secret_bytes(pass.as_deref(), &mut OsRng))
                .map(Zeroizing::new)
                .map_err(to_py)?
        };
        py.allow_threads(|| write_private_file(&path, &data))
            .map_err(|e| write_error_to_py(py, &e))?;
        Ok(true)
    }

    /// Loads an identity file; a missing, unreadable or corrupt file is a KeyFileError.
    #[staticmethod]
    #[pyo3(signature = (path, passphrase=None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        passphrase: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let data = std::fs::read(&path).map_err(|e| {
            KeyFileError::new_err(format!("cannot read identity file {}: {e}", path.display()))
        })?;
        Self::from_bytes(py, &data, passphrase).map_err(|e| {
            KeyFileError::new_err(format!("identity file {}: {}", path.display(), e.value(py)))
        })
    }

    /// The agent id; None for an identity made with `AgentKeyPair()`.
    #[getter]
    fn agent_id(&self) -> Option<&str> {
        self.agent_id.as_deref()
    }

    #[getter]
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    #[getter]
    fn identity_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.identity_key)
    }

    /// The public, self-certifying bundle (a JSON-safe dict).
    fn public_bundle<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let b = locks::read(py, &self.inner).public_bundle();
        let d = bundle::to_dict(py, &b)?;
        let chain = locks::read(py, &self.succession);
        if !chain.is_empty() {
            let list = PyList::new(py, chain.iter().map(|s| bundle::b64(s)))?;
            d.set_item("succession", list)?;
        }
        Ok(d)
    }

    /// The succession statements published with this identity (oldest first).
    fn succession<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let chain = locks::read(py, &self.succession);
        PyList::new(py, chain.iter().map(|s| PyBytes::new(py, s)))
    }

    /// Sets the statements published with this identity: they must lead, one after the other,
    /// to this identity key (the core's chain check, from the first statement's old key).
    fn set_succession(&self, py: Python<'_>, chain: Vec<Vec<u8>>) -> PyResult<()> {
        if let Some(first) = chain.first() {
            let start = agentmesh_core::Succession::verify(first).map_err(to_py)?;
            let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
            agentmesh_core::follow_succession(
                &start.agent_id,
                &start.old_identity_key,
                &self.identity_key,
                &refs,
            )
            .map_err(to_py)?;
            if self.agent_id.as_deref() != Some(start.agent_id.as_str()) {
                return Err(to_py(agentmesh_core::Error::Identity(
                    "the succession statements are for another agent id",
                )));
            }
        }
        *locks::write(py, &self.succession) = chain;
        Ok(())
    }

    /// Proves possession of the identity key to one hub for one connection and one bundle
    /// (the signed layout is in docs/protocol.md).
    #[pyo3(signature = (bundle, hub_id, challenge, client_nonce, tls_certificate_sha256=None))]
    fn sign_registration<'py>(
        &self,
        py: Python<'py>,
        bundle: &Bound<'py, PyAny>,
        hub_id: &[u8],
        challenge: &[u8],
        client_nonce: &[u8],
        tls_certificate_sha256: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let b = bundle::from_dict(bundle)?;
        let reg = bundle::registration(hub_id, challenge, client_nonce, tls_certificate_sha256)?;
        let sig = locks::read(py, &self.inner)
            .sign_registration(&b, &reg)
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &sig))
    }

    /// Proves possession of the identity key to the agentmesh NATS authorization service for
    /// one connection (the server's `nonce`; the signed layout is in docs/protocol.md).
    fn sign_nats_connect<'py>(
        &self,
        py: Python<'py>,
        nonce: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let sig = agentmesh_core::sign_nats_connect(&locks::read(py, &self.inner), nonce)
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &sig))
    }

    /// A new signed prekey; the previous one keeps working for set-ups already in flight.
    fn rotate_signed_prekey(&self, py: Python<'_>) {
        locks::write(py, &self.inner).rotate_signed_prekey(&mut OsRng);
    }

    /// `n` one-time prekeys for a hub to hand out: `[{"id": int, "key": b64}, ...]`.
    fn generate_one_time_prekeys<'py>(
        &self,
        py: Python<'py>,
        n: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let keys = locks::write(py, &self.inner)
            .generate_one_time_prekeys(n, &mut OsRng)
            .map_err(to_py)?;
        let list = PyList::empty(py);
        for (id, key) in keys {
            let d = PyDict::new(py);
            d.set_item("id", id)?;
            d.set_item("key", bundle::b64(&key))?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// The ids of the one-time prekeys this identity still holds (unused), increasing.
    fn one_time_prekey_ids(&self, py: Python<'_>) -> Vec<u32> {
        locks::read(py, &self.inner).one_time_prekey_ids()
    }

    /// Deletes these one-time prekeys (ids it does not hold are ignored): for keys a hub
    /// handed out that no session used, so that the set stays bounded.
    fn forget_one_time_prekeys(&self, py: Python<'_>, ids: Vec<u32>) {
        let mut kp = locks::write(py, &self.inner);
        for id in ids {
            kp.consume_one_time_prekey(id);
        }
    }

    /// Increases whenever something the identity file holds changed (prekeys made, used or
    /// rotated, a set-up remembered): compare before and after to know whether to save.
    #[getter]
    fn revision(&self, py: Python<'_>) -> u64 {
        locks::read(py, &self.inner).revision()
    }

    /// How many set-ups the current signed prekey remembers (it takes at most
    /// `MAX_SETUPS_PER_SIGNED_PREKEY`; rotate it before).
    #[getter]
    fn setups_remembered(&self, py: Python<'_>) -> usize {
        locks::read(py, &self.inner).setups_remembered()
    }

    /// Encrypts `data` at rest under a key derived from this identity.
    fn seal_at_rest<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let out = locks::read(py, &self.inner)
            .seal_at_rest(data, &mut OsRng)
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &out))
    }

    /// Opens data sealed by `seal_at_rest` (KeyFileError if corrupt or another identity's).
    fn open_at_rest<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let out = locks::read(py, &self.inner)
            .open_at_rest(data)
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &out))
    }

    fn __repr__(&self) -> String {
        format!(
            "AgentKeyPair(agent_id={}, fingerprint='{}')",
            self.agent_id
                .as_deref()
                .map_or_else(|| "None".to_owned(), |id| format!("{id:?}")),
            self.fingerprint
        )
    }
}
