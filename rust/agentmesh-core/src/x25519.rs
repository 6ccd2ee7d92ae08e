//! X25519 (RFC 7748) as the handshake and the ratchet compute it: the same function of
//! (secret, public) as the Montgomery ladder for every 32-byte input, computed the fastest way
//! vetted code allows.
//!
//! A public key that is a point of the curve (every honest key, and the low-order points) takes
//! `curve25519-dalek`'s Edwards form and its variable-base multiplication, which is constant
//! time in the scalar and runs on the vectorised backend the CPU offers (AVX-512 IFMA, then
//! AVX2, chosen at run time). A public key on the twist has no Edwards point: it takes
//! `x25519-dalek`'s ladder, which defines X25519 there. The branch depends only on the public
//! key. An all-zero result (a low-order public key) is refused whichever way it was computed.
//! docs/security.md ("X25519") states the policy; `tests/known_answers.rs` holds both paths to
//! the Wycheproof and RFC 7748 answers and to each other.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// A peer's public key decoded once: its Edwards point, or `None` on the twist. A ratchet key
/// takes part in two DH (the receive that brings it and our next send), so the receive keeps
/// it decoded for the send. Public data only.
#[derive(Clone, Copy, Debug)]
pub struct PeerPublic {
    bytes: [u8; 32],
    point: Option<EdwardsPoint>,
}

impl PeerPublic {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self {
            bytes,
            point: MontgomeryPoint(bytes).to_edwards(0),
        }
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

/// X25519 of `secret` and `public`, the all-zero (non-contributory) output refused.
pub fn diffie_hellman(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    diffie_hellman_with(secret, &PeerPublic::new(*public))
}

/// [`diffie_hellman`] with a public key already decoded.
pub fn diffie_hellman_with(
    secret: &StaticSecret,
    public: &PeerPublic,
) -> Result<Zeroizing<[u8; 32]>> {
    let shared = match public.point {
        Some(point) => {
            let scalar = Zeroizing::new(secret.to_bytes());
            // [clamp(k)]P has the same Montgomery u whichever of ±P the sign chose.
            let mut product = point.mul_clamped(*scalar);
            let mut u = product.to_montgomery();
            let shared = Zeroizing::new(u.to_bytes());
            product.zeroize();
            u.zeroize();
            shared
        }
        None => ladder(secret, &public.bytes),
    };
    if bool::from(shared.ct_eq(&[0u8; 32])) {
        return Err(Error::NonContributory);
    }
    Ok(shared)
}

/// [`diffie_hellman_with`] and [`public_key`] of one secret (a new ratchet key), the two
/// results mapped to Montgomery form with a single field inversion (curve25519-dalek's batch
/// conversion) instead of one each.
pub fn diffie_hellman_and_public_key(
    secret: &StaticSecret,
    public: &PeerPublic,
) -> Result<(Zeroizing<[u8; 32]>, [u8; 32])> {
    let Some(point) = public.point else {
        return Ok((diffie_hellman_with(secret, public)?, public_key(secret)));
    };
    let scalar = Zeroizing::new(secret.to_bytes());
    let mut points = [
        EdwardsPoint::mul_base_clamped(*scalar),
        point.mul_clamped(*scalar),
    ];
    let mut montgomery = EdwardsPoint::to_montgomery_batch(&points);
    points.zeroize();
    let results = match montgomery.as_slice() {
        [ours, shared] => Some((Zeroizing::new(shared.to_bytes()), ours.to_bytes())),
        _ => None,
    };
    montgomery.zeroize();
    let (shared, ours) = results.ok_or(Error::InvalidInput("batch conversion lost a point"))?;
    if bool::from(shared.ct_eq(&[0u8; 32])) {
        return Err(Error::NonContributory);
    }
    Ok((shared, ours))
}

/// `x25519-dalek`'s Montgomery ladder, the definition of X25519 on every input.
pub fn ladder(secret: &StaticSecret, public: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(secret.diffie_hellman(&PublicKey::from(*public)).to_bytes())
}

/// The public key of `secret`: `x25519-dalek`'s fixed-base multiplication, which already uses
/// `curve25519-dalek`'s precomputed Edwards basepoint table (larger tables measured no faster).
pub fn public_key(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}
