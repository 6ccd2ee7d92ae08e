//! Replays every committed corpus input and known reproducer through its fuzz target's body, in
//! an ordinary test (no libFuzzer, stable toolchain): the parsers' regression suite in CI.
//! `cargo test --manifest-path fuzz/Cargo.toml --no-default-features`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use agentmesh_core_fuzz::targets;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = fs::read_dir(root.join("corpus").join(target))
        .unwrap_or_else(|e| panic!("corpus/{target}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    let known_prefix = format!("{target}-");
    if let Ok(dir) = fs::read_dir(root.join("artifacts-known")) {
        files.extend(dir.map(|e| e.unwrap().path()).filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&known_prefix))
        }));
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    for path in &files {
        let data = fs::read(path).unwrap();
        // A panic names the input: rerun it with `cargo fuzz run <target> <path>`.
        eprintln!("{target}: {}", path.display());
        run(&data);
    }
}

#[test]
fn envelope_decode() {
    replay("envelope_decode", targets::envelope_decode::run);
}

#[test]
fn group_open() {
    replay("group_open", targets::group_open::run);
}

#[test]
fn bundle_decode() {
    replay("bundle_decode", targets::bundle_decode::run);
}

#[test]
fn payload_decode() {
    replay("payload_decode", targets::payload_decode::run);
}

#[test]
fn keyfile_load() {
    replay("keyfile_load", targets::keyfile_load::run);
}

#[test]
fn session_import() {
    replay("session_import", targets::session_import::run);
}

#[test]
fn unseal_live_session() {
    replay("unseal_live_session", targets::unseal_live_session::run);
}

#[test]
fn succession_decode() {
    replay("succession_decode", targets::succession_decode::run);
}
