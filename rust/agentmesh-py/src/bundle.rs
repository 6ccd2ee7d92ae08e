//! The public bundle as a JSON-safe dict (base64 fields) <-> the core's verified `PublicBundle`.

use agentmesh_core::{PublicBundle, BUNDLE_JSON_VERSION};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{to_py, FormatError};

fn field<'py>(d: &Bound<'py, PyDict>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(name)?
        .ok_or_else(|| FormatError::new_err(format!("bundle is missing the field {name:?}")))
}

fn key_field<const N: usize>(d: &Bound<'_, PyDict>, name: &str) -> PyResult<[u8; N]> {
    let text: String = field(d, name)?.extract().map_err(|_| {
        FormatError::new_err(format!("bundle field {name:?} must be a base64 string"))
    })?;
    let raw = B64
        .decode(text.as_bytes())
        .map_err(|_| FormatError::new_err(format!("bundle field {name:?} is not valid base64")))?;
    raw.try_into().map_err(|_| {
        FormatError::new_err(format!("bundle field {name:?} must decode to {N} bytes"))
    })
}

fn u32_field(d: &Bound<'_, PyDict>, name: &str) -> PyResult<u32> {
    field(d, name)?.extract().map_err(|_| {
        FormatError::new_err(format!(
            "bundle field {name:?} must be an integer in 0..2**32"
        ))
    })
}

/// Parses and verifies a bundle dict (its signature must check against its own identity key).
pub fn from_dict(obj: &Bound<'_, PyAny>) -> PyResult<PublicBundle> {
    let d = obj
        .downcast::<PyDict>()
        .map_err(|_| FormatError::new_err("a bundle must be a dict"))?;
    if let Some(v) = d.get_item("v")? {
        let v: u32 = v
            .extract()
            .map_err(|_| FormatError::new_err("bundle field \"v\" must be an integer"))?;
        if v != BUNDLE_JSON_VERSION {
            return Err(crate::errors::VersionError::new_err(format!(
                "bundle version {v} is not supported"
            )));
        }
    }
    // null is the bundle of an identity without an id (its signature covers the empty id); an
    // empty string is not a second spelling of it.
    let agent_id: String = match field(d, "agent_id")? {
        v if v.is_none() => String::new(),
        v => match v.extract::<String>() {
            Ok(id) if !id.is_empty() => id,
            _ => {
                return Err(FormatError::new_err(
                    "bundle field \"agent_id\" must be a non-empty string, or null for an \
                     identity without an id",
                ))
            }
        },
    };
    let opk = match d.get_item("one_time_prekey")? {
        Some(o) if !o.is_none() => {
            let od = o.downcast::<PyDict>().map_err(|_| {
                FormatError::new_err("bundle field \"one_time_prekey\" must be a dict")
            })?;
            Some((u32_field(od, "id")?, key_field::<32>(od, "key")?))
        }
        _ => None,
    };
    PublicBundle::new(
        &agent_id,
        &key_field(d, "identity_key")?,
        &key_field(d, "exchange_key")?,
        u32_field(d, "signed_prekey_id")?,
        &key_field(d, "signed_prekey")?,
        &key_field(d, "signed_prekey_signature")?,
        opk,
    )
    .map_err(to_py)
}

pub fn to_dict<'py>(py: Python<'py>, b: &PublicBundle) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("v", BUNDLE_JSON_VERSION)?;
    d.set_item("agent_id", b.published_id())?;
    d.set_item("identity_key", B64.encode(b.identity_key()))?;
    d.set_item("exchange_key", B64.encode(b.exchange_key()))?;
    d.set_item("signed_prekey_id", b.signed_prekey_id())?;
    d.set_item("signed_prekey", B64.encode(b.signed_prekey()))?;
    d.set_item(
        "signed_prekey_signature",
        B64.encode(b.signed_prekey_signature()),
    )?;
    d.set_item("fingerprint", b.fingerprint())?;
    if let Some((id, key)) = b.one_time_prekey() {
        let o = PyDict::new(py);
        o.set_item("id", id)?;
        o.set_item("key", B64.encode(key))?;
        d.set_item("one_time_prekey", o)?;
    }
    Ok(d)
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn fixed<const N: usize>(value: &[u8], name: &str) -> PyResult<[u8; N]> {
    value.try_into().map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "{name} must be {N} bytes, got {}",
            value.len()
        ))
    })
}

/// The registration context from Python bytes (sizes checked, nothing else).
pub fn registration(
    hub_id: &[u8],
    challenge: &[u8],
    client_nonce: &[u8],
    tls_certificate_sha256: Option<&[u8]>,
) -> PyResult<agentmesh_core::Registration> {
    Ok(agentmesh_core::Registration {
        hub_id: fixed(hub_id, "hub_id")?,
        challenge: fixed(challenge, "challenge")?,
        client_nonce: fixed(client_nonce, "client_nonce")?,
        tls_certificate_sha256: tls_certificate_sha256
            .map(|c| fixed(c, "tls_certificate_sha256"))
            .transpose()?,
    })
}
