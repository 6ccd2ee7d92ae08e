//! Groups: `GroupSession` (one member's sender-key state in one group), `GroupEnvelope` (the
//! group message on the wire) and the membership record functions. Conversions and locking
//! only; the protocol is `agentmesh_core::group`.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use agentmesh_core::group::{GroupEnvelope, GroupSession, Membership};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rand_core::OsRng;

use crate::errors::to_py;
use crate::json::{payload_to_parts, plaintext_to_py};
use crate::keypair::PyAgentKeyPair;
use crate::locks;
use crate::session::RELEASE_GIL_AT;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn key32(bytes: &[u8], what: &str) -> PyResult<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("{what} must be 32 bytes, got {}", bytes.len())))
}

#[pyclass(name = "GroupEnvelope", module = "agentmesh.crypto", frozen)]
#[derive(Debug)]
pub struct PyGroupEnvelope {
    inner: GroupEnvelope,
}

#[pymethods]
impl PyGroupEnvelope {
    /// Parses the wire form of a group message (FormatError / VersionError when malformed).
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        GroupEnvelope::from_bytes(data)
            .map(|inner| Self { inner })
            .map_err(to_py)
    }

    /// True when `data` claims to be a group message (magic, version, type 0x03).
    #[staticmethod]
    fn is_group_message(data: &[u8]) -> bool {
        GroupEnvelope::is_group_message(data)
    }

    /// The wire form it was parsed from (ValueError for a freshly sealed one: see to_bytes_for).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.inner.to_bytes().map_err(to_py)?;
        Ok(PyBytes::new(py, &data))
    }

    /// The wire form addressed to `recipient`; only this routing field differs per member.
    fn to_bytes_for<'py>(&self, py: Python<'py>, recipient: &str) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.inner.to_bytes_for(recipient).map_err(to_py)?;
        Ok(PyBytes::new(py, &data))
    }

    #[getter]
    fn sender(&self) -> &str {
        self.inner.sender()
    }

    /// The routing recipient (None for a freshly sealed message, addressed to nobody yet).
    #[getter]
    fn recipient(&self) -> Option<&str> {
        self.inner.recipient()
    }

    #[getter]
    fn group(&self) -> &str {
        self.inner.group()
    }

    /// Milliseconds since the epoch, set by the sender and authenticated.
    #[getter]
    fn timestamp(&self) -> u64 {
        self.inner.header().timestamp_ms
    }

    /// A hex id, the same for every member the message was addressed to.
    #[getter]
    fn id(&self) -> String {
        self.inner.message_id()
    }

    #[getter]
    fn counter(&self) -> u32 {
        self.inner.header().counter
    }

    #[getter]
    fn chain_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.header().chain_id)
    }

    fn __repr__(&self) -> String {
        format!(
            "GroupEnvelope(sender={:?}, group={:?}, recipient={}, id='{}', counter={})",
            self.inner.sender(),
            self.inner.group(),
            self.inner
                .recipient()
                .map_or_else(|| "None".to_owned(), |r| format!("{r:?}")),
            self.inner.message_id(),
            self.inner.header().counter
        )
    }
}

#[pyclass(name = "GroupSession", module = "agentmesh.crypto", frozen)]
#[derive(Debug)]
pub struct PyGroupSession {
    state: Mutex<GroupSession>,
    keypair: Py<PyAgentKeyPair>,
    group: String,
}

#[pymethods]
impl PyGroupSession {
    /// `GroupSession(keypair, group_id)`: an empty state (no chain until the first seal or
    /// distribution).
    #[new]
    fn new(py: Python<'_>, keypair: Py<PyAgentKeyPair>, group_id: &str) -> PyResult<Self> {
        let state =
            GroupSession::new(&locks::read(py, &keypair.get().inner), group_id).map_err(to_py)?;
        Ok(Self {
            group: group_id.to_owned(),
            state: Mutex::new(state),
            keypair,
        })
    }

    #[getter]
    fn group(&self) -> &str {
        &self.group
    }

    /// The current sending chain's id (None before the first and after a reset).
    #[getter]
    fn sending_chain_id<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        let id = locks::lock(py, &self.state).sending_chain_id();
        id.map(|id| PyBytes::new(py, &id))
    }

    /// The members whose chains this state holds.
    #[getter]
    fn senders(&self, py: Python<'_>) -> Vec<String> {
        locks::lock(py, &self.state).senders()
    }

    /// The current sending chain at its position (a chain is started if there is none).
    /// SECRET: hand it to a member only inside a pairwise session.
    fn distribution<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let kp = locks::read(py, &self.keypair.get().inner);
        let data = locks::lock(py, &self.state)
            .distribution(&kp, &mut OsRng)
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &data))
    }

    /// Seals a payload dict once for every member (signed by this identity).
    fn seal(&self, py: Python<'_>, payload: &Bound<'_, PyAny>) -> PyResult<PyGroupEnvelope> {
        let parts = payload_to_parts(payload)?;
        let kp = locks::read(py, &self.keypair.get().inner);
        let mut state = locks::lock(py, &self.state);
        let (s, k): (&mut GroupSession, &agentmesh_core::IdentityKeyPair) = (&mut state, &kp);
        let ts = now_ms();
        let env = parts.with_payload(|p| {
            if p.len() >= RELEASE_GIL_AT {
                py.allow_threads(|| s.seal_payload(k, p, ts, &mut OsRng))
            } else {
                s.seal_payload(k, p, ts, &mut OsRng)
            }
        })?;
        Ok(PyGroupEnvelope {
            inner: env.map_err(to_py)?,
        })
    }

    /// Installs `sender`'s chain from a distribution it sent over the pairwise session;
    /// `signing_key` is that peer's Ed25519 identity key (32 bytes).
    fn install(
        &self,
        py: Python<'_>,
        distribution: &[u8],
        sender: &str,
        signing_key: &[u8],
    ) -> PyResult<()> {
        let key = key32(signing_key, "signing_key")?;
        locks::lock(py, &self.state)
            .install(distribution, sender, &key)
            .map_err(to_py)
    }

    /// Opens a group message (GroupEnvelope or bytes); returns its payload dict.
    fn open<'py>(
        &self,
        py: Python<'py>,
        envelope: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opened = if let Ok(e) = envelope.downcast::<PyGroupEnvelope>() {
            locks::lock(py, &self.state).open(&e.get().inner)
        } else {
            let data: &[u8] = envelope.extract().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err("expected a GroupEnvelope or bytes")
            })?;
            let env = GroupEnvelope::from_bytes(data).map_err(to_py)?;
            locks::lock(py, &self.state).open(&env)
        }
        .map_err(to_py)?;
        plaintext_to_py(py, opened.payload())
    }

    /// Whether the state holds `sender`'s chain `chain_id` (see `GroupEnvelope.chain_id`).
    fn knows_chain(&self, py: Python<'_>, sender: &str, chain_id: &[u8]) -> bool {
        let Ok(id) = <[u8; 16]>::try_from(chain_id) else {
            return false;
        };
        locks::lock(py, &self.state).knows_chain(sender, &id)
    }

    /// Drops the sending chain: the next message starts a new one.
    fn reset_sending_chain(&self, py: Python<'_>) {
        locks::lock(py, &self.state).reset_sending_chain();
    }

    /// Forgets every chain of `sender` (removed from the group).
    fn forget_sender(&self, py: Python<'_>, sender: &str) {
        locks::lock(py, &self.state).forget_sender(sender);
    }

    /// Every secret of the state (SECRET; the sending chain is not part of it).
    fn export_state<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let data = locks::lock(py, &self.state).export_state();
        PyBytes::new(py, &data)
    }

    /// The export sealed at rest under the member's identity: safe to hold in Python.
    fn export_sealed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let kp = locks::read(py, &self.keypair.get().inner);
        let data = locks::lock(py, &self.state)
            .export_sealed(&kp, &mut OsRng)
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &data))
    }

    /// Restores an export, sealed or not. It starts a new sending chain before its next message.
    #[staticmethod]
    fn import_state(py: Python<'_>, keypair: Py<PyAgentKeyPair>, data: &[u8]) -> PyResult<Self> {
        let state = GroupSession::import_any(&locks::read(py, &keypair.get().inner), data)
            .map_err(to_py)?;
        Ok(Self {
            group: state.group().to_owned(),
            state: Mutex::new(state),
            keypair,
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let state = locks::lock(py, &self.state);
        format!(
            "GroupSession(group={:?}, senders={:?})",
            self.group,
            state.senders()
        )
    }
}

/// `sign_membership(admin_keypair, group_id, epoch, members) -> bytes`: the membership record
/// signed by the group's administrator (it is always a member).
#[pyfunction]
pub fn sign_membership<'py>(
    py: Python<'py>,
    admin_keypair: Py<PyAgentKeyPair>,
    group_id: &str,
    epoch: u64,
    members: Vec<String>,
) -> PyResult<Bound<'py, PyBytes>> {
    let record = Membership::sign(
        &locks::read(py, &admin_keypair.get().inner),
        group_id,
        epoch,
        &members,
    )
    .map_err(to_py)?;
    Ok(PyBytes::new(py, &record))
}

/// `verify_membership(record, admin_identity_key) -> dict`: `{"group", "admin", "epoch",
/// "members"}` once the administrator's signature verified (SignatureError otherwise).
#[pyfunction]
pub fn verify_membership<'py>(
    py: Python<'py>,
    record: &[u8],
    admin_identity_key: &[u8],
) -> PyResult<Bound<'py, PyDict>> {
    let key = key32(admin_identity_key, "admin_identity_key")?;
    let m = Membership::verify(record, &key).map_err(to_py)?;
    let out = PyDict::new(py);
    out.set_item("group", m.group)?;
    out.set_item("admin", m.admin)?;
    out.set_item("epoch", m.epoch)?;
    out.set_item("members", m.members)?;
    Ok(out)
}
