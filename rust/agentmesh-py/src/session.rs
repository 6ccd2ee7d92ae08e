//! `CryptoSession`: a core `Session` bound to the local `AgentKeyPair`; payload dicts in,
//! envelopes out, and back. Large payloads and batches run with the GIL released.

use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use agentmesh_core::{Mode, Session, SessionBatch};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use rand_core::OsRng;

use crate::bundle;
use crate::envelope::{envelope_arg, EnvelopeArg, PyEnvelope};
use crate::errors::{to_py, IdentityError};
use crate::json::{payload_to_parts, plaintext_to_py};
use crate::keypair::PyAgentKeyPair;
use crate::locks;

/// Work on payloads at least this large runs with the GIL released (as pyca/cryptography does).
pub(crate) const RELEASE_GIL_AT: usize = 16 * 1024;
/// `unseal_many` of at least this many envelopes (or of this many bytes: [`RELEASE_GIL_AT`])
/// runs with the GIL released. A smaller batch of small messages is under a millisecond of
/// work: letting go of the GIL for it invites a switch to another thread and back, which in a
/// process unsealing many small batches (many agents, each a few messages at a time) cost more
/// CPU than the unsealing.
const RELEASE_GIL_AT_COUNT: usize = 64;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[pyclass(name = "CryptoSession", module = "agentmesh.crypto", frozen)]
#[derive(Debug)]
pub struct PyCryptoSession {
    session: Mutex<Session>,
    keypair: Py<PyAgentKeyPair>,
    peer_fingerprint: String,
    peer_identity_b64: String,
    deniable: bool,
}

impl PyCryptoSession {
    fn wrap(session: Session, keypair: Py<PyAgentKeyPair>) -> Self {
        let peer = session.peer();
        Self {
            peer_fingerprint: peer.fingerprint(),
            peer_identity_b64: bundle::b64(&peer.identity_key()),
            deniable: session.mode() == Mode::Deniable,
            session: Mutex::new(session),
            keypair,
        }
    }

    fn opened_to_py<'py>(
        &self,
        py: Python<'py>,
        opened: agentmesh_core::Opened,
    ) -> PyResult<Bound<'py, PyAny>> {
        if opened.accepted_setup().is_some() {
            locks::write(py, &self.keypair.get().inner).settle(&opened);
        }
        plaintext_to_py(py, opened.payload())
    }

    /// The (local, peer) ids; None while one is not fixed yet.
    fn ids(&self, py: Python<'_>) -> (Option<String>, Option<String>) {
        let session = locks::lock(py, &self.session);
        let known = |id: &str| (!id.is_empty()).then(|| id.to_owned());
        (known(session.local_id()), known(session.peer().agent_id()))
    }

    fn unseal_inner<'py>(
        &self,
        py: Python<'py>,
        env: &agentmesh_core::Envelope,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.unseal_with(py, env.as_bytes().len(), |s, k| s.unseal(k, env))
    }

    /// Unseals an envelope just parsed from bytes, which nothing else holds: it is decrypted
    /// in its own buffer (no copy of a large message).
    fn unseal_parsed<'py>(
        &self,
        py: Python<'py>,
        env: agentmesh_core::Envelope,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.unseal_with(py, env.as_bytes().len(), |s, k| s.unseal_owned(k, env))
    }

    fn unseal_with<'py>(
        &self,
        py: Python<'py>,
        envelope_len: usize,
        unseal: impl Send
            + FnOnce(
                &mut Session,
                &agentmesh_core::IdentityKeyPair,
            ) -> agentmesh_core::Result<agentmesh_core::Opened>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kp_obj = self.keypair.get();
        let opened = {
            let mut session = locks::lock(py, &self.session);
            let kp = locks::read(py, &kp_obj.inner);
            let (s, k): (&mut Session, &agentmesh_core::IdentityKeyPair) = (&mut session, &kp);
            if envelope_len >= RELEASE_GIL_AT {
                py.allow_threads(|| unseal(s, k))
            } else {
                unseal(s, k)
            }
        }
        .map_err(to_py)?;
        self.opened_to_py(py, opened)
    }

    /// The items of an `unseal_many` result: each slot's payload dict, or the error instance
    /// that rejected it (its bytes, or the core's result).
    fn results_to_list<'py>(
        &self,
        py: Python<'py>,
        slots: Vec<PyResult<usize>>,
        results: Vec<agentmesh_core::Result<agentmesh_core::Opened>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut results = results.into_iter().map(Some).collect::<Vec<_>>();
        let list = PyList::empty(py);
        for slot in slots {
            let item = match slot {
                Err(e) => e.into_value(py).into_bound(py).into_any(),
                Ok(i) => match results.get_mut(i).and_then(Option::take) {
                    Some(Ok(opened)) => match self.opened_to_py(py, opened) {
                        Ok(v) => v,
                        Err(e) => e.into_value(py).into_bound(py).into_any(),
                    },
                    Some(Err(e)) => to_py(e).into_value(py).into_bound(py).into_any(),
                    None => py.None().into_bound(py),
                },
            };
            list.append(item)?;
        }
        Ok(list)
    }
}

/// The envelopes of an `unseal_many` batch, parsed, and per item either its index among them
/// or the error its bytes gave.
fn parse_envelopes(
    envelopes: &Bound<'_, PyAny>,
) -> PyResult<(Vec<EnvelopeArg>, Vec<PyResult<usize>>)> {
    let mut parsed = Vec::new();
    let mut slots = Vec::new();
    for item in envelopes.try_iter()? {
        match envelope_arg(&item?) {
            Ok(arg) => {
                slots.push(Ok(parsed.len()));
                parsed.push(arg);
            }
            Err(e) => slots.push(Err(e)),
        }
    }
    Ok((parsed, slots))
}

/// Whether unsealing these envelopes is worth releasing the GIL for ([`RELEASE_GIL_AT_COUNT`]).
fn is_large(envelopes: &[&agentmesh_core::Envelope]) -> bool {
    envelopes.len() >= RELEASE_GIL_AT_COUNT
        || envelopes.iter().map(|e| e.as_bytes().len()).sum::<usize>() >= RELEASE_GIL_AT
}

/// The keypair lock of a batch's session.
fn keypair_of<'a>(b: &'a AcrossBatch<'_>) -> &'a RwLock<agentmesh_core::IdentityKeyPair> {
    &b.session.get().keypair.get().inner
}

/// One batch of an `unseal_across` call, parsed.
struct AcrossBatch<'py> {
    session: Bound<'py, PyCryptoSession>,
    parsed: Vec<EnvelopeArg>,
    slots: Vec<PyResult<usize>>,
}

/// `unseal_across(batches)`: for each `(session, envelopes)` pair, exactly what
/// `session.unseal_many(envelopes)` returns, with one Ed25519 batch verification over the
/// signatures of all the batches (the network receive path gathers many agents' batches of a
/// few messages each). A session may appear once (ValueError otherwise).
#[pyfunction]
pub fn unseal_across<'py>(
    py: Python<'py>,
    batches: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let mut parsed = Vec::new();
    for item in batches.try_iter()? {
        let (session, envelopes): (Bound<'py, PyCryptoSession>, Bound<'py, PyAny>) =
            item?.extract()?;
        let (envs, slots) = parse_envelopes(&envelopes)?;
        parsed.push(AcrossBatch {
            session,
            parsed: envs,
            slots,
        });
    }
    // Every session's lock is taken in one order (by address), so that two calls never wait
    // for each other; a session twice would wait for itself (std's Mutex is not reentrant).
    let address =
        |b: &AcrossBatch<'_>| std::ptr::from_ref::<PyCryptoSession>(b.session.get()) as usize;
    let mut lock_order: Vec<usize> = (0..parsed.len()).collect();
    lock_order.sort_by_key(|&i| parsed.get(i).map(address));
    for pair in lock_order.windows(2) {
        if let [a, b] = *pair {
            if parsed.get(a).map(address) == parsed.get(b).map(address) {
                let (first, second) = (a.min(b), a.max(b));
                return Err(PyValueError::new_err(format!(
                    "unseal_across: batches {first} and {second} are of the same CryptoSession; \
                     give each session one batch"
                )));
            }
        }
    }
    let envs: Vec<Vec<&agentmesh_core::Envelope>> = parsed
        .iter()
        .map(|b| b.parsed.iter().map(EnvelopeArg::get).collect())
        .collect();
    let all_envs: Vec<&agentmesh_core::Envelope> = envs.iter().flatten().copied().collect();
    let large = is_large(&all_envs);
    let results = {
        let mut guards: Vec<(usize, MutexGuard<'_, Session>)> = Vec::with_capacity(parsed.len());
        for &i in &lock_order {
            if let Some(b) = parsed.get(i) {
                guards.push((i, locks::lock(py, &b.session.get().session)));
            }
        }
        // Each distinct keypair is read-locked once, also in address order: a second read lock
        // of one RwLock in this thread could wait behind a writer that waits for the first.
        let mut keypairs: Vec<&RwLock<agentmesh_core::IdentityKeyPair>> =
            parsed.iter().map(keypair_of).collect();
        keypairs.sort_by_key(|k| std::ptr::from_ref(*k) as usize);
        keypairs.dedup_by_key(|k| std::ptr::from_ref(*k) as usize);
        let readers: Vec<_> = keypairs.iter().map(|k| locks::read(py, k)).collect();
        let mut sessions: Vec<Option<&mut Session>> = (0..parsed.len()).map(|_| None).collect();
        for (i, guard) in &mut guards {
            if let Some(slot) = sessions.get_mut(*i) {
                *slot = Some(&mut **guard);
            }
        }
        let mut calls = Vec::with_capacity(parsed.len());
        for ((b, session), envelopes) in parsed.iter().zip(sessions).zip(&envs) {
            let key = std::ptr::from_ref(keypair_of(b)) as usize;
            let reader = keypairs
                .iter()
                .position(|k| std::ptr::from_ref(*k) as usize == key)
                .and_then(|at| readers.get(at));
            let (Some(session), Some(reader)) = (session, reader) else {
                return Err(PyRuntimeError::new_err(
                    "unseal_across: internal error (a batch without its locks)",
                ));
            };
            calls.push(SessionBatch {
                session,
                ours: reader,
                envelopes: envelopes.as_slice(),
            });
        }
        if large {
            py.allow_threads(|| agentmesh_core::unseal_across(&mut calls))
        } else {
            agentmesh_core::unseal_across(&mut calls)
        }
    };
    let list = PyList::empty(py);
    for (b, results) in parsed.into_iter().zip(results) {
        list.append(b.session.get().results_to_list(py, b.slots, results)?)?;
    }
    Ok(list)
}

/// `perform_key_exchange(my_keypair, their_bundle, deniable=False)`: a session with the bundle's
/// agent. Nothing is derived until the first seal (as initiator) or unseal (as responder).
#[pyfunction]
#[pyo3(signature = (my_keypair, their_bundle, deniable=false))]
pub fn perform_key_exchange(
    py: Python<'_>,
    my_keypair: Py<PyAgentKeyPair>,
    their_bundle: &Bound<'_, PyAny>,
    deniable: bool,
) -> PyResult<PyCryptoSession> {
    let peer = bundle::from_dict(their_bundle)?;
    let mode = if deniable {
        Mode::Deniable
    } else {
        Mode::Signed
    };
    let session = {
        let kp = locks::read(py, &my_keypair.get().inner);
        Session::new(&kp, peer, mode).map_err(to_py)?
    };
    Ok(PyCryptoSession::wrap(session, my_keypair))
}

#[pymethods]
impl PyCryptoSession {
    /// Encrypts (and in signed mode signs) a payload dict for the peer.
    fn seal(&self, py: Python<'_>, payload: &Bound<'_, PyAny>) -> PyResult<PyEnvelope> {
        let parts = payload_to_parts(payload)?;
        let kp_obj = self.keypair.get();
        let ts = now_ms();
        let mut session = locks::lock(py, &self.session);
        let kp = locks::read(py, &kp_obj.inner);
        let (s, k): (&mut Session, &agentmesh_core::IdentityKeyPair) = (&mut session, &kp);
        let env = parts.with_payload(|p| {
            if p.len() >= RELEASE_GIL_AT {
                py.allow_threads(|| s.seal_payload(k, p, ts, &mut OsRng))
            } else {
                s.seal_payload(k, p, ts, &mut OsRng)
            }
        })?;
        Ok(PyEnvelope {
            inner: env.map_err(to_py)?,
        })
    }

    /// `seal(session, sender_keypair, sender_id, recipient_id, payload)`: the keypair and ids
    /// must be the session's; an id still open is fixed here for good (docs/crypto-api.md).
    fn seal_as(
        &self,
        py: Python<'_>,
        sender_keypair: &Bound<'_, PyAgentKeyPair>,
        sender_id: &str,
        recipient_id: &str,
        payload: &Bound<'_, PyAny>,
    ) -> PyResult<PyEnvelope> {
        let parts = payload_to_parts(payload)?;
        let ts = now_ms();
        let sealed = {
            let mut session = locks::lock(py, &self.session);
            let kp = locks::read(py, &sender_keypair.get().inner);
            let (s, k): (&mut Session, &agentmesh_core::IdentityKeyPair) = (&mut session, &kp);
            parts.with_payload(|p| {
                let mut seal =
                    move || s.seal_payload_as(k, sender_id, recipient_id, p, ts, &mut OsRng);
                if p.len() >= RELEASE_GIL_AT {
                    py.allow_threads(seal)
                } else {
                    seal()
                }
            })?
        };
        match sealed {
            Ok(inner) => Ok(PyEnvelope { inner }),
            Err(e @ agentmesh_core::Error::Identity(_)) => {
                let (local, peer) = self.ids(py);
                Err(IdentityError::new_err(format!(
                    "{e} (sender_id {sender_id:?}, recipient_id {recipient_id:?}; this session: \
                     {} -> {})",
                    py_repr(local.as_deref()),
                    py_repr(peer.as_deref())
                )))
            }
            Err(e) => Err(to_py(e)),
        }
    }

    /// `unseal(session, envelope, sender_bundle)`: the bundle must be the session's peer's.
    fn unseal_from<'py>(
        &self,
        py: Python<'py>,
        envelope: &Bound<'py, PyAny>,
        sender_bundle: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let bundle = bundle::from_dict(sender_bundle)?;
        locks::lock(py, &self.session)
            .check_sender_bundle(&bundle)
            .map_err(to_py)?;
        self.unseal(py, envelope)
    }

    /// Decrypts and authenticates an envelope (or its bytes); returns the payload dict.
    fn unseal<'py>(
        &self,
        py: Python<'py>,
        envelope: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(e) = envelope.downcast::<PyEnvelope>() {
            return self.unseal_inner(py, &e.get().inner);
        }
        match envelope_arg(envelope)? {
            EnvelopeArg::Parsed(env) => self.unseal_parsed(py, env),
            EnvelopeArg::Object(e) => self.unseal_inner(py, &e.get().inner),
        }
    }

    /// Like `unseal`, also returning the parsed `Envelope` (for its sender, timestamp and id).
    fn unseal_envelope<'py>(
        &self,
        py: Python<'py>,
        envelope: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let arg = envelope_arg(envelope)?;
        let payload = self.unseal_inner(py, arg.get())?;
        let env = arg.into_object(py)?;
        PyTuple::new(py, [payload, env.into_bound(py).into_any()])
    }

    /// Seals every payload in order (both cores; the GIL is released).
    fn seal_many<'py>(
        &self,
        py: Python<'py>,
        payloads: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let parts = payloads
            .try_iter()?
            .map(|p| payload_to_parts(&p?))
            .collect::<PyResult<Vec<_>>>()?;
        let pieces = parts
            .iter()
            .map(|p| p.pieces())
            .collect::<PyResult<Vec<_>>>()?;
        let blobs: Vec<Vec<&[u8]>> = parts.iter().map(|p| p.blobs()).collect();
        let laid_out = parts
            .iter()
            .zip(pieces.iter().zip(&blobs))
            .map(|(p, (j, b))| p.payload(j, b))
            .collect::<PyResult<Vec<_>>>()?;
        let kp_obj = self.keypair.get();
        let ts = now_ms();
        let envs = {
            let mut session = locks::lock(py, &self.session);
            let kp = locks::read(py, &kp_obj.inner);
            let (s, k): (&mut Session, &agentmesh_core::IdentityKeyPair) = (&mut session, &kp);
            py.allow_threads(|| s.seal_payloads_many(k, &laid_out, ts, &mut OsRng))
        }
        .map_err(to_py)?;
        let list = PyList::empty(py);
        for inner in envs {
            list.append(Py::new(py, PyEnvelope { inner })?)?;
        }
        Ok(list)
    }

    /// Unseals every envelope; each item is the payload dict or the CryptoError instance that
    /// rejected it (batch Ed25519 verification on both cores; the GIL is released).
    fn unseal_many<'py>(
        &self,
        py: Python<'py>,
        envelopes: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let (parsed, slots) = parse_envelopes(envelopes)?;
        let envs: Vec<&agentmesh_core::Envelope> = parsed.iter().map(|a| a.get()).collect();
        let large = is_large(&envs);
        let kp_obj = self.keypair.get();
        let results = {
            let mut session = locks::lock(py, &self.session);
            let kp = locks::read(py, &kp_obj.inner);
            let (s, k): (&mut Session, &agentmesh_core::IdentityKeyPair) = (&mut session, &kp);
            if large {
                py.allow_threads(|| s.unseal_many(k, envs.as_slice()))
            } else {
                s.unseal_many(k, envs.as_slice())
            }
        };
        self.results_to_list(py, slots, results)
    }

    /// Replaces the peer bundle kept for the next set-up (a newer signed prekey, a one-time
    /// prekey); it must be the same agent with the same identity key (`IdentityError`).
    fn refresh_peer(&self, py: Python<'_>, bundle: &Bound<'_, PyAny>) -> PyResult<()> {
        let peer = bundle::from_dict(bundle)?;
        locks::lock(py, &self.session)
            .refresh_peer(peer)
            .map_err(to_py)
    }

    /// True when the next seal starts a new set-up: the session was loaded from an export,
    /// which may be older than what it sent since, so its old sending chain is never used.
    #[getter]
    fn renews_on_send(&self, py: Python<'_>) -> bool {
        locks::lock(py, &self.session).renews_on_send()
    }

    /// Every secret of the session (SECRET: restore with `CryptoSession.import_state`).
    fn export_state<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let data = locks::lock(py, &self.session).export_state();
        PyBytes::new(py, &data)
    }

    /// The export sealed at rest under the session's identity: safe to hold in Python.
    fn export_sealed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let kp = locks::read(py, &self.keypair.get().inner);
        let data = locks::lock(py, &self.session)
            .export_sealed(&kp, &mut OsRng)
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &data))
    }

    /// Restores an export, sealed (`export_sealed`) or not (`export_state`). Its first seal
    /// starts a new set-up: the export may be older than what the session sent since.
    #[staticmethod]
    fn import_state(py: Python<'_>, my_keypair: Py<PyAgentKeyPair>, data: &[u8]) -> PyResult<Self> {
        let session = {
            let kp = locks::read(py, &my_keypair.get().inner);
            Session::import_any(&kp, data).map_err(to_py)?
        };
        Ok(Self::wrap(session, my_keypair))
    }

    /// The local agent id; None until the first seal or unseal fixes it.
    #[getter]
    fn local_id(&self, py: Python<'_>) -> Option<String> {
        self.ids(py).0
    }
    /// The peer's agent id; None until the first seal or unseal fixes it.
    #[getter]
    fn peer_id(&self, py: Python<'_>) -> Option<String> {
        self.ids(py).1
    }
    #[getter]
    fn peer_fingerprint(&self) -> &str {
        &self.peer_fingerprint
    }
    /// The peer's identity key, base64 (as in its bundle).
    #[getter]
    fn peer_identity_key(&self) -> &str {
        &self.peer_identity_b64
    }
    #[getter]
    fn local_identity_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.keypair.get().identity_key_bytes())
    }
    #[getter]
    fn keypair(&self, py: Python<'_>) -> Py<PyAgentKeyPair> {
        self.keypair.clone_ref(py)
    }
    #[getter]
    fn deniable(&self) -> bool {
        self.deniable
    }
    /// True once a message from the peer on the active set-up has been accepted.
    #[getter]
    fn established(&self, py: Python<'_>) -> bool {
        locks::lock(py, &self.session).is_established()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let (local, peer) = self.ids(py);
        format!(
            "CryptoSession(local_id={}, peer_id={}, peer_fingerprint='{}', mode='{}')",
            py_repr(local.as_deref()),
            py_repr(peer.as_deref()),
            self.peer_fingerprint,
            if self.deniable { "deniable" } else { "signed" }
        )
    }
}

/// An optional id as Python would show it: `'alice'` or `None`.
fn py_repr(id: Option<&str>) -> String {
    id.map_or_else(|| "None".to_owned(), |id| format!("{id:?}"))
}
