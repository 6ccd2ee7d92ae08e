//! The one error type of the core. Every variant names a problem without carrying secret bytes;
//! decryption failures are deliberately opaque (no hint about which check failed inside the AEAD).

use std::fmt;

/// Everything the core can refuse. `#[non_exhaustive]` so new checks do not break callers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Bytes that do not parse as the object they claim to be.
    Format(&'static str),
    /// A well-formed object of a version or kind this build does not speak.
    Version(&'static str),
    /// The AEAD tag did not verify (altered envelope, wrong session or wrong key).
    Authentication,
    /// A signature is missing, malformed, non-canonical or invalid.
    Signature(&'static str),
    /// The message was already accepted once.
    Replay,
    /// The counter jumped further than the skipped-key window allows.
    MessageGap { gap: u64, limit: u32 },
    /// Ids or identity keys do not match the session or bundle (misbinding, reflection, wrong sender).
    Identity(&'static str),
    /// A Diffie-Hellman output was all zero (a low-order public key).
    NonContributory,
    /// A key or state file is corrupt, truncated, or the passphrase is wrong.
    KeyFile(&'static str),
    /// An argument the caller controls is out of range (payload too large, bad id).
    InvalidInput(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Format(what) => write!(f, "malformed input: {what}"),
            Error::Version(what) => write!(f, "unsupported version: {what}"),
            Error::Authentication => write!(
                f,
                "authentication failed: the envelope was altered or is not for this session"
            ),
            Error::Signature(what) => write!(f, "signature rejected: {what}"),
            Error::Replay => write!(f, "replayed message: this message was already accepted"),
            Error::MessageGap { gap, limit } => write!(
                f,
                "message counter jumped {gap} ahead, more than the {limit} skipped messages allowed"
            ),
            Error::Identity(what) => write!(f, "identity mismatch: {what}"),
            Error::NonContributory => {
                write!(
                    f,
                    "key agreement rejected: low-order public key (all-zero shared secret)"
                )
            }
            Error::KeyFile(what) => write!(f, "key file rejected: {what}"),
            Error::InvalidInput(what) => write!(f, "invalid input: {what}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
