"""One writer for files that hold secrets (identity file, state file): exclusive creation of a
randomly named temp file, no symlink followed, mode 0600 whatever was there before, fsync, rename,
fsync of the directory, and no temp file left behind when anything fails."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from agentmesh._native import write_private_file
from agentmesh.crypto import AgentKeyPair
from agentmesh.errors import KeyFileError
from agentmesh.keystore import KeyStore, PersistedState

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes and symlinks")


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _write_identity(path, kp) -> None:
    kp.save(path)


def _write_state(path, kp) -> None:
    store = KeyStore(path.with_name("owner.key"))
    store.state_path = path
    store.save_state(kp, PersistedState(pins={"bob": "x"}))


WRITERS = {"identity": _write_identity, "state": _write_state}


@pytest.fixture
def kp():
    return AgentKeyPair.generate("alice")


def test_a_symlink_at_the_old_predictable_temp_name_is_not_followed(tmp_path, kp):
    # The former writer used ".<name>.tmp-<pid>" and opened it with O_TRUNC: whoever could write
    # the directory got the secret written through a symlink of their choosing.
    path = tmp_path / "alice.key"
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    (tmp_path / f".{path.name}.tmp-{os.getpid()}").symlink_to(victim)
    kp.save(path)
    assert victim.read_bytes() == b"untouched"
    assert AgentKeyPair.load(path).fingerprint == kp.fingerprint
    assert not path.is_symlink() and _mode(path) == 0o600


@pytest.mark.parametrize("which", sorted(WRITERS))
def test_a_symlink_at_the_target_is_refused_and_not_replaced(tmp_path, kp, which):
    path = tmp_path / "target"
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    path.symlink_to(victim)
    with pytest.raises(KeyFileError, match="symbolic link") as err:
        WRITERS[which](path, kp)
    assert str(path) in str(err.value)
    assert path.is_symlink() and victim.read_bytes() == b"untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target", "victim"]


@pytest.mark.parametrize("which", sorted(WRITERS))
def test_an_existing_world_readable_file_ends_up_0600(tmp_path, kp, which):
    path = tmp_path / "target"
    path.write_bytes(b"old")
    path.chmod(0o644)
    WRITERS[which](path, kp)
    assert _mode(path) == 0o600 and path.read_bytes() != b"old"


@pytest.mark.parametrize("which", sorted(WRITERS))
def test_the_mode_is_0600_whatever_the_umask(tmp_path, kp, which):
    path = tmp_path / "target"
    old = os.umask(0o277)
    try:
        WRITERS[which](path, kp)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600


@pytest.mark.parametrize("which", sorted(WRITERS))
def test_a_failed_write_names_the_file_and_the_os_error_and_leaves_no_temp_file(
    tmp_path, kp, which
):
    path = tmp_path / "target"
    path.mkdir()  # the rename at the end fails: everything before it has happened
    with pytest.raises(KeyFileError) as err:
        WRITERS[which](path, kp)
    assert str(path) in str(err.value) and "directory" in str(err.value).lower()
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno is not None
    assert [p.name for p in tmp_path.iterdir()] == ["target"]
    assert list(path.iterdir()) == []


def test_the_written_content_is_complete(tmp_path):
    path = tmp_path / "big"
    data = os.urandom(8 * 1024 * 1024 + 3)
    write_private_file(path, data)
    assert path.read_bytes() == data
    write_private_file(path, b"")
    assert path.read_bytes() == b""
    assert [p.name for p in tmp_path.iterdir()] == ["big"] and _mode(path) == 0o600


def test_a_missing_directory_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "f"
    with pytest.raises(KeyFileError, match="No such file") as err:
        write_private_file(path, b"x")
    assert str(path) in str(err.value)
