//! The core's one error enum mapped once onto the Python classes of `agentmesh.errors`.

use agentmesh_core::private_file::WriteError;
use agentmesh_core::Error;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::{PyErr, Python};

pyo3::import_exception!(agentmesh.errors, CryptoError);
pyo3::import_exception!(agentmesh.errors, FormatError);
pyo3::import_exception!(agentmesh.errors, VersionError);
pyo3::import_exception!(agentmesh.errors, AuthenticationError);
pyo3::import_exception!(agentmesh.errors, SignatureError);
pyo3::import_exception!(agentmesh.errors, ReplayError);
pyo3::import_exception!(agentmesh.errors, MessageGapError);
pyo3::import_exception!(agentmesh.errors, IdentityError);
pyo3::import_exception!(agentmesh.errors, KeyFileError);
pyo3::import_exception!(agentmesh.errors, StateWriteError);

pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Format(_) | Error::NonContributory => FormatError::new_err(msg),
        Error::Version(_) => VersionError::new_err(msg),
        Error::Authentication => AuthenticationError::new_err(msg),
        Error::Signature(_) => SignatureError::new_err(msg),
        Error::Replay => ReplayError::new_err(msg),
        Error::MessageGap { .. } => MessageGapError::new_err(msg),
        Error::Identity(_) => IdentityError::new_err(msg),
        Error::KeyFile(_) => KeyFileError::new_err(msg),
        Error::InvalidInput(_) => PyValueError::new_err(msg),
        _ => CryptoError::new_err(msg),
    }
}

/// A private-file write that failed: `StateWriteError` (a `KeyFileError` and an `OSError`)
/// naming the file, the step and the OS error, caused by the `OSError` (errno, filename) when
/// the OS refused.
pub fn write_error_to_py(py: Python<'_>, e: &WriteError) -> PyErr {
    let err = StateWriteError::new_err(e.to_string());
    if let Some(os) = e.os_error() {
        let cause = match os.raw_os_error() {
            Some(code) => {
                PyOSError::new_err((code, os.to_string(), e.path().display().to_string()))
            }
            None => PyOSError::new_err(os.to_string()),
        };
        err.set_cause(py, Some(cause));
    }
    err
}
