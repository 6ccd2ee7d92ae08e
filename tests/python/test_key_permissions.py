"""Key files open to other users are refused, like ssh refuses such a private key, with the
``chmod`` that fixes it; nothing is read, changed or replaced."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agentmesh import Agent, KeyFileError, LocalHub

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.mark.parametrize("suffix", ["", ".state"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_loose_key_or_state_file_is_refused_with_the_fix(
    tmp_path: Path, suffix: str, mode: int
) -> None:
    key = tmp_path / "alice.key"
    hub = LocalHub()
    Agent("bob", hub=hub)
    with Agent("alice", hub=hub, keypair_path=key) as alice:
        alice.send("bob", text="a session to save")
    target = Path(str(key) + suffix)
    before = target.read_bytes()
    os.chmod(target, mode)
    with pytest.raises(KeyFileError, match=f"chmod 600 '{target}'") as caught:
        Agent("alice", keypair_path=key)
    assert f"mode {mode:04o}" in str(caught.value)
    assert target.read_bytes() == before and target.stat().st_mode & 0o777 == mode
    os.chmod(target, 0o600)  # the fix it names
    Agent("alice", keypair_path=key).close()


def test_the_cli_reports_a_loose_key_file(tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "a.key"
    run = [sys.executable, "-m", "agentmesh.cli"]
    assert subprocess.run([*run, "keygen", "--path", str(key)], capture_output=True).returncode == 0
    os.chmod(key, 0o644)
    r = subprocess.run(
        [*run, "send", "--hub", "127.0.0.1:9", "--key", str(key), "--to", "b"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "chmod 600" in r.stderr
