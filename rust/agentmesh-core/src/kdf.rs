//! HKDF-SHA256 steps of the protocol, each under its named label (see `labels`).

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::labels;

macro_rules! secret_key_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
        pub struct $name(Box<[u8; 32]>);

        impl $name {
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(Box::new(bytes))
            }
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "(<secret>)"))
            }
        }
    };
}

secret_key_type!(
    /// The root key of a Double Ratchet.
    RootKey
);
secret_key_type!(
    /// A symmetric chain key; each step yields one message key and the next chain key.
    ChainKey
);
secret_key_type!(
    /// A single-use AES-256-GCM key.
    MessageKey
);

fn split64(okm: &mut [u8; 64]) -> ([u8; 32], [u8; 32]) {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    a.copy_from_slice(&okm[..32]);
    b.copy_from_slice(&okm[32..]);
    okm.zeroize();
    (a, b)
}

/// Output of the session set-up KDF: the first root key and the public session id.
#[derive(Debug)]
pub struct SetupKeys {
    pub root: RootKey,
    pub session_id: [u8; 16],
}

/// HKDF(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4], info = label || transcript).
pub fn session_setup(dh_outputs: &[&[u8; 32]], transcript: &[u8]) -> SetupKeys {
    let mut ikm = Vec::with_capacity(32 * (1 + dh_outputs.len()));
    ikm.extend_from_slice(&labels::SETUP_IKM_PREFIX);
    for dh in dh_outputs {
        ikm.extend_from_slice(*dh);
    }
    let mut info = Vec::with_capacity(labels::KDF_SESSION_SETUP.len() + transcript.len());
    info.extend_from_slice(labels::KDF_SESSION_SETUP);
    info.extend_from_slice(transcript);
    let hk = Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm);
    let mut okm = [0u8; 48];
    // 48 <= 255 * 32, so expand cannot fail; fall back to zeros is unreachable but panic-free.
    let _ = hk.expand(&info, &mut okm);
    ikm.zeroize();
    let mut root = [0u8; 32];
    root.copy_from_slice(&okm[..32]);
    let mut session_id = [0u8; 16];
    session_id.copy_from_slice(&okm[32..]);
    okm.zeroize();
    SetupKeys {
        root: RootKey::from_bytes(root),
        session_id,
    }
}

/// DH ratchet step: HKDF(salt = root key, ikm = DH output, info = label) -> (root', chain).
pub fn root_step(root: &RootKey, dh_output: &[u8; 32]) -> (RootKey, ChainKey) {
    let hk = Hkdf::<Sha256>::new(Some(root.as_bytes()), dh_output);
    let mut okm = [0u8; 64];
    let _ = hk.expand(labels::KDF_ROOT_STEP, &mut okm);
    let (r, c) = split64(&mut okm);
    (RootKey::from_bytes(r), ChainKey::from_bytes(c))
}

/// Symmetric chain step: HKDF-Expand(PRK = chain key, info = label, 64) -> (message key, chain').
pub fn chain_step(chain: &ChainKey) -> (MessageKey, ChainKey) {
    let mut okm = [0u8; 64];
    if let Ok(hk) = Hkdf::<Sha256>::from_prk(chain.as_bytes()) {
        let _ = hk.expand(labels::KDF_CHAIN_STEP, &mut okm);
    }
    let (m, c) = split64(&mut okm);
    (MessageKey::from_bytes(m), ChainKey::from_bytes(c))
}

/// The key that protects exported state at rest, derived from the identity secret.
pub fn at_rest_key(identity_secret: &[u8; 32], salt: &[u8]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(salt), identity_secret);
    let mut okm = [0u8; 32];
    let _ = hk.expand(labels::KDF_AT_REST, &mut okm);
    okm
}
