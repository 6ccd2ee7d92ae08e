//! The one writer for files that hold secrets (the identity file, the agent's state file).
//!
//! A reader of the target path sees the old content or the new content, never a mix, and never
//! with permissions wider than owner-only. Someone who can write into the directory cannot make
//! the secret land elsewhere: the temp file is created exclusively under an unpredictable name,
//! and `O_CREAT | O_EXCL` (what `create_new` asks for) fails on any existing name, a symbolic
//! link included, even a dangling one (POSIX `open`, "If O_CREAT and O_EXCL are set, and path
//! names a symbolic link, open() shall fail"). That is the guarantee `O_NOFOLLOW` would add for
//! the last path component, so the core does not take a `libc` dependency for it.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

/// Owner read and write, nothing for anyone else.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Fresh names tried when a temp name is already taken (by a file an attacker planted, say).
const TEMP_NAME_ATTEMPTS: usize = 16;

/// Why a private file could not be written: the path, the step that failed, and the OS error.
#[derive(Debug)]
pub struct WriteError {
    path: PathBuf,
    step: &'static str,
    os_error: Option<io::Error>,
}

impl WriteError {
    fn new(path: &Path, step: &'static str, os_error: Option<io::Error>) -> Self {
        Self {
            path: path.to_owned(),
            step,
            os_error,
        }
    }

    /// The file that was to be written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The operating system's error, when the refusal came from it.
    pub fn os_error(&self) -> Option<&io::Error> {
        self.os_error.as_ref()
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write {}: {}", self.path.display(), self.step)?;
        if let Some(e) = &self.os_error {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.os_error
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Replaces `path` with `data`, owner-only, atomically and durably.
pub fn write_private_file(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    write_private_file_with_rng(path, data, &mut OsRng)
}

/// [`write_private_file`] with the source of the temp names given (tests predict them, through
/// `internals::write_private_file_with_rng`).
pub(crate) fn write_private_file_with_rng<R: RngCore>(
    path: &Path,
    data: &[u8],
    rng: &mut R,
) -> Result<(), WriteError> {
    let fail = |step, e| WriteError::new(path, step, Some(e));
    if path.file_name().is_none() {
        return Err(WriteError::new(path, "the path does not name a file", None));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match fs::symlink_metadata(path) {
        // rename() would replace the link itself, not write through it; refusing still matters:
        // a link there is a sign that someone meant the secret to go elsewhere.
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(WriteError::new(
                path,
                "it is a symbolic link (refusing to replace it)",
                None,
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("cannot inspect the path", e)),
    }
    let (tmp, file) = create_temp(dir, rng).map_err(|e| fail("cannot create a temp file", e))?;
    let written = fill(file, data)
        .map_err(|e| fail("cannot write the temp file", e))
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|e| fail("cannot rename the temp file over it", e))
        });
    if let Err(e) = written {
        // Best effort: the error that matters is the one that stopped the write.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir).map_err(|e| fail("the file was replaced but its directory not synced", e))
}

/// Creates `.agentmesh-<32 hex>.tmp` in `dir` exclusively, with the private mode from the start.
fn create_temp<R: RngCore>(dir: &Path, rng: &mut R) -> io::Result<(PathBuf, File)> {
    let mut last = io::Error::new(io::ErrorKind::AlreadyExists, "no free temp name");
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let mut random = [0u8; 16];
        rng.fill_bytes(&mut random);
        let mut name = OsString::from(".agentmesh-");
        for b in random {
            name.push(format!("{b:02x}"));
        }
        name.push(".tmp");
        let tmp = dir.join(name);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_FILE_MODE);
        match options.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Sets the mode exactly (the umask may have narrowed it below 0600), writes, syncs, closes.
fn fill(mut file: File, data: &[u8]) -> io::Result<()> {
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
        PRIVATE_FILE_MODE,
    ))?;
    file.write_all(data)?;
    file.sync_all()
}

/// Makes the rename itself durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
