//! The private-file writer (identity and state files): see docs/security.md.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use agentmesh_core::internals::write_private_file_with_rng;
use agentmesh_core::private_file::write_private_file;
use rand_core::RngCore;

/// A fresh, empty directory per test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentmesh-pf-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Hands out the given 16-byte blocks in order, so the temp names are known in advance.
struct Script(VecDeque<[u8; 16]>);

impl RngCore for Script {
    fn next_u32(&mut self) -> u32 {
        unimplemented!()
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented!()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.copy_from_slice(&self.0.pop_front().expect("script exhausted"));
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

fn temp_name(block: [u8; 16]) -> String {
    let hex: String = block.iter().map(|b| format!("{b:02x}")).collect();
    format!(".agentmesh-{hex}.tmp")
}

#[test]
fn symlinks_planted_at_the_temp_names_are_not_followed() {
    let dir = scratch("temp-symlink");
    let target = dir.join("alice.key");
    let victim = dir.join("victim");
    fs::write(&victim, b"untouched").unwrap();
    let (first, second, third) = ([1u8; 16], [2u8; 16], [3u8; 16]);
    symlink(&victim, dir.join(temp_name(first))).unwrap();
    // A dangling link would let a following open create the file where the link points.
    symlink(
        dir.join("created-through-link"),
        dir.join(temp_name(second)),
    )
    .unwrap();
    let mut rng = Script(VecDeque::from([first, second, third]));
    write_private_file_with_rng(&target, b"secret", &mut rng).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"untouched");
    assert!(!dir.join("created-through-link").exists());
    assert_eq!(fs::read(&target).unwrap(), b"secret");
    assert_eq!(mode(&target), 0o600);
    let mut expected = vec![
        "alice.key".to_owned(),
        temp_name(first),
        temp_name(second),
        "victim".to_owned(),
    ];
    expected.sort();
    assert_eq!(names(&dir), expected);
}

#[test]
fn a_taken_temp_name_every_time_is_an_error_not_a_write() {
    let dir = scratch("temp-taken");
    let block = [7u8; 16];
    fs::write(dir.join(temp_name(block)), b"planted").unwrap();
    let mut rng = Script(VecDeque::from([block; 16]));
    let err = write_private_file_with_rng(&dir.join("f"), b"secret", &mut rng).unwrap_err();
    assert!(
        err.to_string().contains("cannot create a temp file"),
        "{err}"
    );
    assert_eq!(fs::read(dir.join(temp_name(block))).unwrap(), b"planted");
    assert!(!dir.join("f").exists());
}

#[test]
fn a_symlink_at_the_target_is_refused_and_left_alone() {
    let dir = scratch("target-symlink");
    let target = dir.join("alice.key");
    let victim = dir.join("victim");
    fs::write(&victim, b"untouched").unwrap();
    symlink(&victim, &target).unwrap();
    let err = write_private_file(&target, b"secret").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("symbolic link"), "{msg}");
    assert!(msg.contains(&target.display().to_string()), "{msg}");
    assert!(fs::symlink_metadata(&target)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&victim).unwrap(), b"untouched");
    assert_eq!(names(&dir), ["alice.key", "victim"]);
}

#[test]
fn an_existing_0644_file_ends_up_0600_with_the_new_content() {
    let dir = scratch("mode");
    let target = dir.join("state");
    fs::write(&target, b"old content, longer than the new one").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    write_private_file(&target, b"new").unwrap();
    assert_eq!(mode(&target), 0o600);
    assert_eq!(fs::read(&target).unwrap(), b"new");
    assert_eq!(names(&dir), ["state"]);
}

#[test]
fn a_failure_after_the_temp_file_was_written_leaves_no_temp_file() {
    let dir = scratch("failure");
    let target = dir.join("taken");
    fs::create_dir(&target).unwrap(); // rename(file, directory) fails
    let err = write_private_file(&target, &[42u8; 10_000]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&target.display().to_string()), "{msg}");
    assert!(msg.contains("rename"), "{msg}");
    assert!(
        err.os_error().and_then(|e| e.raw_os_error()).is_some(),
        "{msg}"
    );
    assert_eq!(names(&dir), ["taken"]);
    assert!(names(&target).is_empty());
}

#[test]
fn a_missing_directory_names_the_file_and_the_os_error() {
    let dir = scratch("missing");
    let target = dir.join("no").join("f");
    let err = write_private_file(&target, b"x").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&target.display().to_string()), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");
    assert_eq!(err.path(), target);
}

#[test]
fn the_content_is_complete() {
    let dir = scratch("content");
    let target = dir.join("big");
    let data: Vec<u8> = (0..9_000_001u32).map(|i| (i * 31 % 251) as u8).collect();
    write_private_file(&target, &data).unwrap();
    assert_eq!(fs::read(&target).unwrap(), data);
    write_private_file(&target, b"").unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"");
    let relative = Path::new("agentmesh-pf-relative-test-file");
    // A bare file name writes into the current directory (its parent is "").
    write_private_file(relative, b"here").unwrap();
    assert_eq!(fs::read(relative).unwrap(), b"here");
    fs::remove_file(relative).unwrap();
    assert_eq!(names(&dir), ["big"]);
}
