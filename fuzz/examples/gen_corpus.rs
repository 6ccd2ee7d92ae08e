//! Writes the seed corpora in fuzz/corpus/<target>/ and fuzz/fixtures/ from the deterministic
//! fixture (and, for the two pure parsers, the hex envelopes and bundles of
//! tests/vectors/protocol-v1.json; for payload_decode, the plaintexts of
//! tests/vectors/payload-v1.json). Deterministic: running it again rewrites identical files.
//!
//!     cd fuzz && cargo run --example gen_corpus
//!
//! Input layouts (selector byte + body) are described at the top of each fuzz target.

use std::fs;
use std::path::{Path, PathBuf};

use agentmesh_core::internals::seal_with_key;
use agentmesh_core::Mode;
use agentmesh_core_fuzz::{fixture, Side, TestRng, CHECKSUM_LEN, FUZZ_PASSPHRASE};
use argon2::{Algorithm, Argon2, Params, Version};
use rand_core::RngCore;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn with_sel(sel: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![sel];
    v.extend_from_slice(body);
    v
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Every string value of `"key": "<hex>"` in the vectors file (no JSON parser needed).
fn vector_values(text: &str, key: &str) -> Vec<Vec<u8>> {
    let pat = format!("\"{key}\": \"");
    text.match_indices(&pat)
        .filter_map(|(i, _)| {
            let start = i + pat.len();
            let end = start + text[start..].find('"')?;
            unhex(&text[start..end])
        })
        .collect()
}

/// An identity file encrypted under FUZZ_PASSPHRASE with a tiny Argon2 cost (8 KiB, 1 pass,
/// 1 lane), so the fuzzer can afford the passphrase path. Same layout as docs/protocol.md 6.
fn tiny_cost_passphrase_file(plain: &[u8]) -> Vec<u8> {
    let body = &plain[5..plain.len() - CHECKSUM_LEN];
    let mut rng = TestRng::new("gen_corpus/passphrase");
    let (mut salt, mut nonce) = ([0u8; 16], [0u8; 12]);
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut nonce);
    let (m, t, p) = (8u32, 1u32, 1u32);
    let mut out = b"AMK\x01\x01".to_vec();
    out.extend_from_slice(&salt);
    for v in [m, t, p] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&nonce);
    let mut key = [0u8; 32];
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(m, t, p, Some(32)).unwrap(),
    )
    .hash_password_into(FUZZ_PASSPHRASE, &salt, &mut key)
    .unwrap();
    let mut sealed = body.to_vec();
    seal_with_key(&key, nonce, &out, &mut sealed).unwrap();
    out.extend_from_slice(&sealed);
    out
}

fn main() {
    let fx = fixture();
    let vectors =
        fs::read_to_string(root().join("../tests/vectors/protocol-v1.json")).unwrap_or_default();

    // envelope_decode: every genuine envelope, plus the vectors' envelopes.
    let mut seen = Vec::new();
    for (mi, m) in [&fx.signed, &fx.deniable].into_iter().enumerate() {
        for g in m.to_bob.iter().chain(&m.to_alice) {
            if !seen.contains(&g.bytes) {
                seen.push(g.bytes.clone());
                write("envelope_decode", &format!("m{mi}_{}", g.name), &g.bytes);
            }
        }
    }
    for (i, e) in vector_values(&vectors, "envelope")
        .iter()
        .enumerate()
        .step_by(3)
    {
        write("envelope_decode", &format!("vector_{i}"), e);
    }

    // unseal_live_session: raw genuine envelopes per receiver, empty edit programs per index,
    // one single-edit program, and two batches.
    for (mi, mode) in [Mode::Signed, Mode::Deniable].into_iter().enumerate() {
        let m = fx.mode(mode);
        for (si, list) in [(0u8, &m.to_bob), (1u8, &m.to_alice)] {
            let base = mi as u8 | (si << 1);
            for (i, g) in list.iter().enumerate() {
                let i = i as u8;
                write(
                    "unseal_live_session",
                    &format!("raw_m{mi}_s{si}_{}", g.name),
                    &with_sel(base, &g.bytes),
                );
                write(
                    "unseal_live_session",
                    &format!("edit_m{mi}_s{si}_{i}"),
                    &[base | 1 << 2 | i << 4],
                );
            }
            // Flip one byte near the end (in the ciphertext/tag).
            write(
                "unseal_live_session",
                &format!("edit1_m{mi}_s{si}"),
                &[base | 1 << 2 | 5 << 4, 0, 0, 0xff, 0x01],
            );
            // Batch: 3 envelopes (indices 2, 5, 5 again = in-batch replay), no edits.
            write(
                "unseal_live_session",
                &format!("batch_m{mi}_s{si}"),
                &[base | 3 << 2, 2, 1, 0, 5, 0, 5, 0],
            );
        }
    }

    // session_import: raw exports, and empty edit programs (checksum fixed) per export.
    for (i, (name, side, state)) in fx.all_states().into_iter().enumerate() {
        let raw_sel = if side == Side::Alice { 0x40 } else { 0 };
        write(
            "session_import",
            &format!("raw_{i:02}_{name}"),
            &with_sel(raw_sel, state),
        );
        write(
            "session_import",
            &format!("edit_{i:02}_{name}"),
            &[2 | ((i as u8) & 0xf) << 2],
        );
    }

    // bundle_decode: raw bundles (fixture and vectors), empty edit programs per base bundle.
    write(
        "bundle_decode",
        "raw_alice",
        &with_sel(0, &fx.alice.public_bundle().to_bytes()),
    );
    write(
        "bundle_decode",
        "raw_bob",
        &with_sel(0, &fx.bob.public_bundle().to_bytes()),
    );
    let opk = fx
        .bob
        .public_bundle()
        .with_one_time_prekey(Some((7, [9u8; 32])));
    write(
        "bundle_decode",
        "raw_bob_opk",
        &with_sel(0x80, &opk.to_bytes()),
    );
    for (i, b) in vector_values(&vectors, "bundle_bytes").iter().enumerate() {
        write("bundle_decode", &format!("raw_vector_{i}"), &with_sel(0, b));
    }
    for i in 0..3u8 {
        write("bundle_decode", &format!("edit_{i}"), &[1 | i << 1]);
    }

    // succession_decode: the genuine statement raw, the vectors' statements, an empty edit
    // program.
    write(
        "succession_decode",
        "raw_genuine",
        &with_sel(
            0,
            agentmesh_core_fuzz::targets::succession_decode::genuine(),
        ),
    );
    let succession_vectors =
        fs::read_to_string(root().join("../tests/vectors/succession-v1.json")).unwrap_or_default();
    for (i, b) in vector_values(&succession_vectors, "bytes")
        .iter()
        .enumerate()
    {
        write(
            "succession_decode",
            &format!("raw_vector_{i}"),
            &with_sel(0, b),
        );
    }
    write("succession_decode", "edit_0", &[1]);

    // keyfile_load: raw files, the at-rest blob, empty edit programs per base input.
    let mut rng = TestRng::new("keyfile_load");
    let alice_plain = fx.alice.to_secret_bytes(None, &mut rng).unwrap();
    let bob_plain = fx.bob.to_secret_bytes(None, &mut rng).unwrap();
    let at_rest = fx
        .alice
        .seal_at_rest(b"{\"state\":\"fuzz at-rest fixture\"}", &mut rng)
        .unwrap();
    let pass_file = tiny_cost_passphrase_file(&bob_plain);
    let fixtures = root().join("fixtures");
    fs::create_dir_all(&fixtures).unwrap();
    fs::write(fixtures.join("bob_passphrase_tiny_cost.bin"), &pass_file).unwrap();
    write(
        "keyfile_load",
        "raw_alice_plain",
        &with_sel(0, &alice_plain),
    );
    write("keyfile_load", "raw_bob_plain", &with_sel(0, &bob_plain));
    write(
        "keyfile_load",
        "raw_bob_passphrase",
        &with_sel(0, &pass_file),
    );
    write(
        "keyfile_load",
        "raw_alice_at_rest",
        &with_sel(0x10, &at_rest),
    );
    for (i, s) in vector_values(&vectors, "secret_file").iter().enumerate() {
        write("keyfile_load", &format!("raw_vector_{i}"), &with_sel(0, s));
    }
    for which in 0..4u8 {
        write("keyfile_load", &format!("edit_{which}"), &[1 | which << 2]);
        write(
            "keyfile_load",
            &format!("edit_fixsum_{which}"),
            &[2 | which << 2],
        );
    }

    // payload_decode: the framed and malformed plaintexts of tests/vectors/payload-v1.json.
    let payloads =
        fs::read_to_string(root().join("../tests/vectors/payload-v1.json")).unwrap_or_default();
    for (i, p) in vector_values(&payloads, "plaintext").iter().enumerate() {
        write("payload_decode", &format!("vector_{i:02}"), p);
    }

    let total: u64 = walk(&root().join("corpus"));
    println!("corpus written: {total} bytes");
}

fn walk(p: &Path) -> u64 {
    fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}
