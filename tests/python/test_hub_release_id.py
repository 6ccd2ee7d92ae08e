"""The operator gives an id back (``agentmesh-hub --store S --release-id ID`` on a stopped
hub): an agent that lost its identity file registers the id again with a new key, and its
peers see the identity-changed error, as designed."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agentmesh import Agent, IdentityChangedError
from agentmesh.errors import HubError
from agentmesh.testing import HubProcess


def release(store: Path, *ids: str) -> subprocess.CompletedProcess[str]:
    args = [arg for agent_id in ids for arg in ("--release-id", agent_id)]
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.hub_server", "--store", str(store), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_lost_identity_gets_its_id_back_through_the_operator(tmp_path: Path) -> None:
    store = tmp_path / "hub.sqlite3"
    hub = HubProcess(store, log_level="warning").start()
    address = f"127.0.0.1:{hub.port}"
    try:
        with Agent("bob", hub=address, keypair_path=tmp_path / "bob.key") as bob:
            heard = threading.Event()
            bob.on_message(lambda msg: heard.set())
            with Agent("alice", hub=address, keypair_path=tmp_path / "alice.key") as alice:
                alice.send("bob", text="hello")
            assert heard.wait(10)
        with Agent("alice", hub=address, keypair_path=tmp_path / "alice.key") as alice:
            alice.send("bob", text="queued for the old key")
        (tmp_path / "bob.key").unlink()  # bob's identity file is lost
        with pytest.raises(HubError, match="registered with another identity key"):
            Agent("bob", hub=address, keypair_path=tmp_path / "bob-new.key")
        running = release(store, "bob")
        assert running.returncode == 1 and "in use by another hub process" in running.stderr
        hub.stop()
        unknown = release(store, "bob", "nobody")
        assert unknown.returncode == 1 and "knows no agent 'nobody'" in unknown.stderr
        done = release(store, "bob")
        assert done.returncode == 0, done.stderr
        assert "released 'bob'" in done.stdout and "1 queued envelope(s)" in done.stdout
        hub.restart()
        with (
            Agent("bob", hub=address, keypair_path=tmp_path / "bob-new.key"),
            Agent("alice", hub=address, keypair_path=tmp_path / "alice.key") as alice,
            pytest.raises(IdentityChangedError),
        ):
            alice.connect("bob")
    finally:
        hub.stop()


def test_release_needs_a_store() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "agentmesh.hub_server", "--release-id", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "needs the hub's --store" in r.stderr
