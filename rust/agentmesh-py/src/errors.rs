//! The core's one error enum mapped once onto the Python classes of `agentmesh.errors`.

use agentmesh_core::Error;
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

pyo3::import_exception!(agentmesh.errors, CryptoError);
pyo3::import_exception!(agentmesh.errors, FormatError);
pyo3::import_exception!(agentmesh.errors, VersionError);
pyo3::import_exception!(agentmesh.errors, AuthenticationError);
pyo3::import_exception!(agentmesh.errors, SignatureError);
pyo3::import_exception!(agentmesh.errors, ReplayError);
pyo3::import_exception!(agentmesh.errors, MessageGapError);
pyo3::import_exception!(agentmesh.errors, IdentityError);
pyo3::import_exception!(agentmesh.errors, KeyFileError);

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
