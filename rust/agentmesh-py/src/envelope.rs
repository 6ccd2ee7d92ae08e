//! `Envelope`: the wire object; its routing fields are readable without keys.

use agentmesh_core::{Envelope, MessageType};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::to_py;

#[pyclass(name = "Envelope", module = "agentmesh.crypto", frozen)]
#[derive(Debug)]
pub struct PyEnvelope {
    pub inner: Envelope,
}

/// An `Envelope` object or raw bytes, as accepted by every unseal call.
pub fn envelope_arg(obj: &Bound<'_, PyAny>) -> PyResult<EnvelopeArg> {
    if let Ok(e) = obj.downcast::<PyEnvelope>() {
        return Ok(EnvelopeArg::Object(e.clone().unbind()));
    }
    let data: &[u8] = obj
        .extract()
        .map_err(|_| pyo3::exceptions::PyTypeError::new_err("expected an Envelope or bytes"))?;
    Envelope::from_bytes(data)
        .map(EnvelopeArg::Parsed)
        .map_err(to_py)
}

pub enum EnvelopeArg {
    Object(Py<PyEnvelope>),
    Parsed(Envelope),
}

impl EnvelopeArg {
    pub fn get(&self) -> &Envelope {
        match self {
            EnvelopeArg::Object(o) => &o.get().inner,
            EnvelopeArg::Parsed(e) => e,
        }
    }

    pub fn into_object(self, py: Python<'_>) -> PyResult<Py<PyEnvelope>> {
        match self {
            EnvelopeArg::Object(o) => Ok(o),
            EnvelopeArg::Parsed(inner) => Py::new(py, PyEnvelope { inner }),
        }
    }
}

#[pymethods]
impl PyEnvelope {
    /// Parses wire bytes (FormatError / VersionError on anything malformed).
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Envelope::from_bytes(data)
            .map(|inner| Self { inner })
            .map_err(to_py)
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.as_bytes())
    }

    #[getter]
    fn sender(&self) -> &str {
        self.inner.sender()
    }

    #[getter]
    fn recipient(&self) -> &str {
        self.inner.recipient()
    }

    /// Milliseconds since the epoch, set by the sender and authenticated.
    #[getter]
    fn timestamp(&self) -> u64 {
        self.inner.timestamp_ms()
    }

    /// A hex id unique per message.
    #[getter]
    fn id(&self) -> String {
        self.inner.message_id()
    }

    #[getter]
    fn is_prekey(&self) -> bool {
        self.inner.header().message_type == MessageType::Prekey
    }

    #[getter]
    fn signed(&self) -> bool {
        self.inner.header().signed
    }

    /// The message's number in its sending chain (header field, public): 0 is the first
    /// message under a new ratchet key or set-up.
    #[getter]
    fn counter(&self) -> u32 {
        self.inner.header().counter
    }

    fn __len__(&self) -> usize {
        self.inner.as_bytes().len()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .downcast::<PyEnvelope>()
            .is_ok_and(|o| o.get().inner.as_bytes() == self.inner.as_bytes())
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner.as_bytes().hash(&mut h);
        h.finish()
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.to_bytes(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "Envelope(sender={:?}, recipient={:?}, id='{}', size={})",
            self.inner.sender(),
            self.inner.recipient(),
            self.inner.message_id(),
            self.inner.as_bytes().len()
        )
    }
}
