//! The identity file: every secret of an `IdentityKeyPair`, either in the clear with a checksum
//! (the file is then protected by its 0600 mode only) or encrypted under a passphrase with
//! Argon2id and AES-256-GCM. Also the at-rest encryption of other state under the identity.

use std::collections::{BTreeMap, BTreeSet};

use argon2::{Algorithm, Argon2, Params, Version};
use ed25519_dalek::SigningKey;
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::aead::{open_with_key, seal_with_key, NONCE_LEN};
use crate::error::{Error, Result};
use crate::kdf::at_rest_key;
use crate::keys::{
    IdentityKeyPair, SignedPrekey, MAX_ONE_TIME_PREKEYS, MAX_SETUPS_PER_SIGNED_PREKEY,
};
use crate::wire::{checksum, split_checksummed, Reader, Writer};

const KEYFILE_MAGIC: &[u8; 4] = b"AMK\x01";
const AT_REST_MAGIC: &[u8; 4] = b"AMR\x01";
const FLAG_PLAIN: u8 = 0;
const FLAG_PASSPHRASE: u8 = 1;
const SALT_LEN: usize = 16;

/// Argon2id cost for new files (OWASP's recommended minimum: 19 MiB, 2 passes, 1 lane).
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
pub const ARGON2_PASSES: u32 = 2;
pub const ARGON2_LANES: u32 = 1;
/// Upper bounds accepted when reading a file, so a hostile file cannot demand absurd work.
const ARGON2_MAX_MEMORY_KIB: u32 = 1024 * 1024;
const ARGON2_MAX_PASSES: u32 = 16;
const ARGON2_MAX_LANES: u32 = 8;

fn passphrase_key(
    passphrase: &[u8],
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>> {
    let params =
        Params::new(m, t, p, Some(32)).map_err(|_| Error::KeyFile("bad Argon2 parameters"))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut *key)
        .map_err(|_| Error::KeyFile("Argon2 key derivation failed"))?;
    Ok(key)
}

/// Keeps a specific key-file complaint; anything else in a body is "malformed".
fn malformed(e: Error) -> Error {
    match e {
        Error::KeyFile(_) => e,
        _ => Error::KeyFile("identity file is malformed"),
    }
}

fn write_prekey(w: &mut Writer, p: &SignedPrekey) {
    w.u32(p.id);
    w.bytes(&p.secret.to_bytes());
    w.bytes(&p.signature);
}

fn read_prekey(r: &mut Reader<'_>) -> Result<SignedPrekey> {
    let id = r.u32()?;
    let secret = StaticSecret::from(r.array::<32>()?);
    let public = crate::x25519::public_key(&secret);
    Ok(SignedPrekey {
        id,
        secret,
        public,
        signature: r.array()?,
        accepted_setups: BTreeSet::new(),
    })
}

fn write_accepted_setups(w: &mut Writer, p: &SignedPrekey) {
    w.u32(u32::try_from(p.accepted_setups.len()).unwrap_or(u32::MAX));
    for base_key in &p.accepted_setups {
        w.bytes(base_key);
    }
}

fn read_accepted_setups(r: &mut Reader<'_>, p: &mut SignedPrekey) -> Result<()> {
    let mut previous: Option<[u8; 32]> = None;
    for _ in 0..r.count(32, MAX_SETUPS_PER_SIGNED_PREKEY)? {
        let base_key: [u8; 32] = r.array()?;
        // sorted and unique, as written: one encoding per identity
        if previous.is_some_and(|prev| base_key <= prev) {
            return Err(Error::KeyFile(
                "identity file lists accepted set-ups out of order",
            ));
        }
        previous = Some(base_key);
        p.accepted_setups.insert(base_key);
    }
    Ok(())
}

impl IdentityKeyPair {
    fn secret_body(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(512 + 36 * self.one_time_prekeys.len());
        w.agent_id(&self.agent_id);
        w.bytes(self.signing.as_bytes());
        w.bytes(&self.exchange.to_bytes());
        write_prekey(&mut w, &self.signed_prekey);
        match &self.previous_signed_prekey {
            Some(p) => {
                w.u8(1);
                write_prekey(&mut w, p);
            }
            None => w.u8(0),
        }
        w.u32(u32::try_from(self.one_time_prekeys.len()).unwrap_or(u32::MAX));
        for (id, secret) in &self.one_time_prekeys {
            w.u32(*id);
            w.bytes(&secret.to_bytes());
        }
        w.u32(self.next_prekey_id);
        // A trailer, present only when some set-up is remembered: files written before it
        // existed end here and still load, and every identity keeps exactly one encoding.
        let prekeys = std::iter::once(&self.signed_prekey).chain(&self.previous_signed_prekey);
        if prekeys.clone().any(|p| !p.accepted_setups.is_empty()) {
            for p in prekeys {
                write_accepted_setups(&mut w, p);
            }
        }
        Zeroizing::new(w.buf)
    }

    fn from_secret_body(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "identity file is malformed");
        let agent_id = r.optional_agent_id()?;
        let signing = Box::new(SigningKey::from_bytes(&r.array()?));
        let exchange = StaticSecret::from(r.array::<32>()?);
        let exchange_public = crate::x25519::public_key(&exchange);
        let mut signed_prekey = read_prekey(&mut r)?;
        let mut previous_signed_prekey = match r.u8()? {
            0 => None,
            1 => Some(read_prekey(&mut r)?),
            _ => return Err(Error::KeyFile("identity file previous-prekey flag")),
        };
        let mut one_time_prekeys = BTreeMap::new();
        let mut previous_id = None;
        for _ in 0..r.count(36, MAX_ONE_TIME_PREKEYS)? {
            let id = r.u32()?;
            // Strictly increasing ids keep the encoding canonical (one file per identity) and
            // rule out a repeated id silently shadowing another secret.
            if previous_id.is_some_and(|p| id <= p) {
                return Err(Error::KeyFile(
                    "identity file lists one-time prekeys out of order",
                ));
            }
            previous_id = Some(id);
            one_time_prekeys.insert(id, StaticSecret::from(r.array::<32>()?));
        }
        let next_prekey_id = r.u32()?;
        if r.remaining() > 0 {
            read_accepted_setups(&mut r, &mut signed_prekey)?;
            if let Some(p) = previous_signed_prekey.as_mut() {
                read_accepted_setups(&mut r, p)?;
            }
            let remembered = std::iter::once(&signed_prekey).chain(&previous_signed_prekey);
            if remembered.clone().all(|p| p.accepted_setups.is_empty()) {
                return Err(Error::KeyFile(
                    "identity file has an empty set-up memory (not its canonical form)",
                ));
            }
        }
        r.finish()?;
        let kp = Self {
            agent_id,
            signing,
            exchange,
            exchange_public,
            signed_prekey,
            previous_signed_prekey,
            one_time_prekeys,
            next_prekey_id,
            revision: 0,
        };
        // The stored prekey signatures must still verify: catches a file stitched from two keys.
        for p in std::iter::once(&kp.signed_prekey).chain(kp.previous_signed_prekey.as_ref()) {
            if kp.sign_prekey(p.id, &p.public) != p.signature {
                return Err(Error::KeyFile(
                    "identity file prekey signature does not match its key",
                ));
            }
        }
        Ok(kp)
    }

    /// Serialises every secret; encrypted with Argon2id + AES-256-GCM when a passphrase is given.
    pub fn to_secret_bytes<R: RngCore + CryptoRng>(
        &self,
        passphrase: Option<&[u8]>,
        rng: &mut R,
    ) -> Result<Vec<u8>> {
        let body = self.secret_body();
        let mut w = Writer::with_capacity(body.len() + 80);
        w.bytes(KEYFILE_MAGIC);
        match passphrase {
            None => {
                w.u8(FLAG_PLAIN);
                w.bytes(&body);
                let sum = checksum(&w.buf);
                w.bytes(&sum);
            }
            Some(pass) => {
                w.u8(FLAG_PASSPHRASE);
                let mut salt = [0u8; SALT_LEN];
                rng.fill_bytes(&mut salt);
                let mut nonce = [0u8; NONCE_LEN];
                rng.fill_bytes(&mut nonce);
                w.bytes(&salt);
                w.u32(ARGON2_MEMORY_KIB);
                w.u32(ARGON2_PASSES);
                w.u32(ARGON2_LANES);
                w.bytes(&nonce);
                let key =
                    passphrase_key(pass, &salt, ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES)?;
                let mut sealed = body.to_vec();
                seal_with_key(&key, nonce, &w.buf, &mut sealed)?;
                w.bytes(&sealed);
            }
        }
        Ok(w.buf)
    }

    /// Loads an identity file; a wrong passphrase, truncation or any flipped bit is an error.
    pub fn from_secret_bytes(data: &[u8], passphrase: Option<&[u8]>) -> Result<Self> {
        let mut r = Reader::new(data, "identity file is truncated");
        let magic: [u8; 4] = r
            .array()
            .map_err(|_| Error::KeyFile("identity file is truncated"))?;
        if &magic[..3] != b"AMK" {
            return Err(Error::KeyFile("not an agentmesh identity file (bad magic)"));
        }
        if &magic != KEYFILE_MAGIC {
            return Err(Error::KeyFile("identity file version is not 1"));
        }
        match r
            .u8()
            .map_err(|_| Error::KeyFile("identity file is truncated"))?
        {
            FLAG_PLAIN => {
                if passphrase.is_some() {
                    return Err(Error::KeyFile(
                        "a passphrase was given but the identity file is not encrypted",
                    ));
                }
                let body = split_checksummed(data)
                    .and_then(|signed| signed.get(5..))
                    .ok_or(Error::KeyFile(
                        "identity file is corrupt or truncated (checksum mismatch)",
                    ))?;
                Self::from_secret_body(body).map_err(malformed)
            }
            FLAG_PASSPHRASE => {
                let pass = passphrase.ok_or(Error::KeyFile(
                    "identity file is encrypted: a passphrase is required",
                ))?;
                let truncated = |_| Error::KeyFile("identity file is truncated");
                let salt = r.bytes(SALT_LEN).map_err(truncated)?;
                let (m, t, p) = (
                    r.u32().map_err(truncated)?,
                    r.u32().map_err(truncated)?,
                    r.u32().map_err(truncated)?,
                );
                if m > ARGON2_MAX_MEMORY_KIB || t > ARGON2_MAX_PASSES || p > ARGON2_MAX_LANES {
                    return Err(Error::KeyFile(
                        "identity file asks for excessive Argon2 cost",
                    ));
                }
                let nonce: [u8; NONCE_LEN] = r.array().map_err(truncated)?;
                let (header, body) = data
                    .split_at_checked(data.len() - r.remaining())
                    .ok_or(Error::KeyFile("identity file is truncated"))?;
                let key = passphrase_key(pass, salt, m, t, p)?;
                let mut sealed = Zeroizing::new(body.to_vec());
                let len = open_with_key(&key, nonce, header, &mut sealed).map_err(|_| {
                    Error::KeyFile("wrong passphrase, or the identity file is corrupt")
                })?;
                sealed.truncate(len);
                Self::from_secret_body(&sealed).map_err(malformed)
            }
            _ => Err(Error::KeyFile(
                "identity file has an unknown protection flag",
            )),
        }
    }

    /// Encrypts `data` at rest under a key derived from this identity's secret key.
    pub fn seal_at_rest<R: RngCore + CryptoRng>(
        &self,
        data: &[u8],
        rng: &mut R,
    ) -> Result<Vec<u8>> {
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let key = Zeroizing::new(at_rest_key(self.signing.as_bytes(), &salt));
        let mut out = Vec::with_capacity(4 + SALT_LEN + NONCE_LEN + data.len() + 16);
        out.extend_from_slice(AT_REST_MAGIC);
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        let mut sealed = data.to_vec();
        seal_with_key(&key, nonce, &out, &mut sealed)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens data sealed by [`IdentityKeyPair::seal_at_rest`] with the same identity.
    pub fn open_at_rest(&self, data: &[u8]) -> Result<Vec<u8>> {
        let truncated = |_| Error::KeyFile("encrypted state is truncated");
        let mut r = Reader::new(data, "encrypted state is truncated");
        if r.array::<4>().map_err(truncated)? != *AT_REST_MAGIC {
            return Err(Error::KeyFile("not agentmesh encrypted state (bad magic)"));
        }
        let salt = r.bytes(SALT_LEN).map_err(truncated)?;
        let nonce: [u8; NONCE_LEN] = r.array().map_err(truncated)?;
        let (header, body) = data
            .split_at_checked(data.len() - r.remaining())
            .ok_or(Error::KeyFile("encrypted state is truncated"))?;
        let key = Zeroizing::new(at_rest_key(self.signing.as_bytes(), salt));
        let mut plain = body.to_vec();
        let len = open_with_key(&key, nonce, header, &mut plain).map_err(|_| {
            Error::KeyFile("encrypted state is corrupt or belongs to another identity")
        })?;
        plain.truncate(len);
        Ok(plain)
    }
}
