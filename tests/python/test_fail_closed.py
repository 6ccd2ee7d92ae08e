"""The agent fails closed: a disk that refuses writes, a state directory that goes back in time,
a replayed set-up and a crowd of unknown senders never break the encryption's promises."""

from __future__ import annotations

import contextlib
import errno
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hubutil import HubProcess, eventually

import agentmesh.keystore as keystore
from agentmesh import Agent, LocalHub, NetworkHub, StateWriteError
from agentmesh.agent_core import _core_of
from agentmesh.crypto import CryptoSession, ReplayError
from agentmesh.testing import HostileHub


@pytest.fixture
def disk_full(monkeypatch):
    """While ``full.set()``, the state file's writer fails as on a full disk (with the error
    the real writer raises then)."""
    full = threading.Event()
    real_write = keystore.write_private_file

    def write(path, data):
        if full.is_set():
            cause = OSError(errno.ENOSPC, "No space left on device", str(path))
            raise StateWriteError(f"cannot write {path}: write: {cause.strerror}") from cause
        return real_write(path, data)

    monkeypatch.setattr(keystore, "write_private_file", write)
    return full


def _queued_for(store: Path, recipient: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT COUNT(*) FROM inbox WHERE recipient = ?", (recipient,))
        return int(row.fetchone()[0])


# -- 1. the state write fails closed -------------------------------------------------------------


@contextlib.contextmanager
def _persistent_bob(tmp_path: Path):
    """A hub process, and a persistent agent "bob" on it: (hub store, hub, bob, bob's inbox)."""
    store = tmp_path / "hub.sqlite3"
    hub = HubProcess(store).start()
    try:
        with NetworkHub("127.0.0.1", hub.port) as net:
            bob = Agent("bob", hub=net, keypair_path=tmp_path / "bob.key")
            got: list = []
            bob.on_message(got.append)
            yield store, net, bob, got
    finally:
        code = hub.stop()
    assert code == 0, hub.stderr  # a clean stop on SIGTERM


def test_nothing_is_acknowledged_before_its_state_write_succeeded(tmp_path, disk_full):
    with _persistent_bob(tmp_path) as (store, net, bob, got):
        with Agent("alice", hub=net) as alice:
            alice.send("bob", text="before")
            alice.flush(30)
            assert eventually(lambda: _queued_for(store, "bob") == 0)
            disk_full.set()
            alice.send("bob", text="while the disk is full")
            alice.flush(30)
            assert eventually(lambda: len(got) == 2)
            # handled, but its state is not on disk: the hub must keep it
            time.sleep(0.5)
            assert _queued_for(store, "bob") == 1
            with pytest.raises(StateWriteError) as info:
                bob.flush(10)
            assert "bob.key.state" in str(info.value)
            assert "No space left on device" in str(info.value)
            assert _queued_for(store, "bob") == 1
            disk_full.clear()  # space again: the retried write goes through, then the ack
            assert eventually(lambda: _queued_for(store, "bob") == 0)
        bob.flush(10)
        bob.close()
        assert [m.text for m in got] == ["before", "while the disk is full"]


def test_an_agent_closed_on_a_full_disk_leaves_its_batch_at_the_hub(tmp_path, disk_full):
    with _persistent_bob(tmp_path) as (store, net, bob, got):
        with Agent("alice", hub=net) as alice:
            disk_full.set()
            alice.send("bob", text="one")
            alice.flush(30)
            assert eventually(lambda: len(got) == 1)
            with pytest.raises(StateWriteError):
                bob.close()
        assert _queued_for(store, "bob") == 1
        disk_full.clear()
        # the restarted agent gets it again (its saved state never saw it)
        again: list = []
        with Agent("bob", hub=net, keypair_path=tmp_path / "bob.key") as bob2:
            bob2.on_message(again.append)
            assert eventually(lambda: len(again) == 1)
        assert [m.text for m in again] == ["one"]


class _RacingMarks(set):
    """Dirty marks that let a save start between a seal and its mark, and hold the save between
    its export and its clear of the marks: the interleaving a busy agent can hit by chance."""

    def __init__(self, save) -> None:
        super().__init__()
        self.save = save
        self.clearing = threading.Event()
        self.saver: threading.Thread | None = None

    def add(self, peer) -> None:
        if self.saver is None:
            self.saver = threading.Thread(target=self.save)
            self.saver.start()
            self.clearing.wait(2)  # (never set if the save has to wait for this mark)
        super().add(peer)

    def clear(self) -> None:
        self.clearing.set()
        time.sleep(0.2)
        super().clear()


def _persistent_alice_talking_to_bob(tmp_path: Path) -> tuple[Agent, Any]:
    """On a LocalHub: a persistent alice that has sent bob one message, state saved."""
    hub = LocalHub()
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    Agent("bob", hub=hub)
    alice.send("bob", text="first")
    core = _core_of(alice)
    core.save_state()
    return alice, core


def test_a_seal_during_a_save_is_saved_or_stays_marked(tmp_path):
    alice, core = _persistent_alice_talking_to_bob(tmp_path)
    core._autosave = False  # (the only save is the racing one)
    core._meta_dirty = True
    marks = core._dirty = _RacingMarks(core.save_state)
    alice.send("bob", text="during the save")
    assert marks.saver is not None
    marks.saver.join(5)
    if "bob" in marks:
        return  # the next save writes it
    saved = keystore.KeyStore(tmp_path / "alice.key").load_state(core.keypair).sessions["bob"]
    on_disk = CryptoSession.import_state(core.keypair, saved).export_state()
    assert on_disk == core._sessions["bob"].export_state(), "a seal was neither saved nor marked"


# -- 2. a rolled-back state never reuses a key ---------------------------------------------------


def _key_use(data: bytes) -> tuple[bytes, int]:
    """(sender's ratchet key, counter) of an envelope (docs/protocol.md, section 5): they name
    the message key and nonce that sealed it."""
    at = 5
    for _ in range(2):  # sender and recipient ids
        at += 1 + data[at]
    at += 16 + 8  # session id, timestamp
    ratchet_key = data[at : at + 32]
    counter = int.from_bytes(data[at + 36 : at + 40], "big")
    return ratchet_key, counter


def test_a_restored_state_directory_never_seals_under_a_used_key(tmp_path):
    hub = HostileHub(seed=1)  # no faults: a hub that records every envelope it routes
    keys = tmp_path / "alice"
    keys.mkdir()
    bob = Agent("bob", hub=hub)
    got: list = []
    errors: list = []
    bob.on_message(lambda m: got.append(m.text))
    bob.on_error(errors.append)

    alice = Agent("alice", hub=hub, keypair_path=keys / "alice.key")
    alice.send("bob", text="0")
    bob.send("alice", text="answer")
    alice.send("bob", text="1")
    alice.close()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(keys, snapshot)  # a VM snapshot, a backup

    alice = Agent("alice", hub=hub, keypair_path=keys / "alice.key")
    for i in range(2, 6):
        alice.send("bob", text=str(i))
    alice.close()
    shutil.rmtree(keys)
    shutil.copytree(snapshot, keys)  # ... restored

    alice = Agent("alice", hub=hub, keypair_path=keys / "alice.key")
    for i in range(6, 10):
        alice.send("bob", text=str(i))
    bob.send("alice", text="still there")
    alice.send("bob", text="10")
    alice.close()

    from_alice = [seen.data for seen in hub.seen if seen.sender == "alice"]
    uses = [_key_use(data) for data in from_alice]
    assert len(from_alice) == 11
    assert len(set(uses)) == len(uses), "a message key was used twice"
    assert got == [str(i) for i in range(11)]
    assert errors == []


# -- 3. a replayed set-up never opens again ------------------------------------------------------


def test_a_replayed_setup_is_refused_after_the_state_file_is_lost(tmp_path):
    hub = HostileHub(seed=2)
    bob = Agent("bob", hub=hub, keypair_path=tmp_path / "bob.key")
    got: list = []
    bob.on_message(lambda m: got.append(m.text))
    alice = Agent("alice", hub=hub)
    setup = alice.send("bob", text="pay 100")
    assert setup.is_prekey and got == ["pay 100"]
    bob.close()
    (tmp_path / "bob.key.state").unlink()  # lost, or moved away on the error's advice

    bob = Agent("bob", hub=hub, keypair_path=tmp_path / "bob.key")
    errors: list = []
    bob.on_message(lambda m: got.append(m.text))
    bob.on_error(errors.append)
    bob.receive(setup.to_bytes())  # the hostile hub replays it
    assert got == ["pay 100"]
    assert len(errors) == 1 and isinstance(errors[0], ReplayError)


def test_sessions_opened_by_unknown_senders_are_bounded(tmp_path, monkeypatch):
    import agentmesh.agent_receiving as agent_module

    monkeypatch.setattr(agent_module, "MAX_INBOUND_ONLY_SESSIONS", 3)
    hub = HostileHub(seed=3)
    bob = Agent("bob", hub=hub, keypair_path=tmp_path / "bob.key")
    got: list = []
    errors: list = []
    bob.on_message(lambda m: got.append(m.sender))
    bob.on_error(errors.append)
    first_setups = {}
    for i in range(6):
        sender = Agent(f"s{i}", hub=hub)
        first_setups[sender.agent_id] = sender.send("bob", text="hi")
    assert got == [f"s{i}" for i in range(6)]
    assert sorted(bob.status()["active_sessions"]) == ["s3", "s4", "s5"]
    # a session this agent answered is not an unknown sender's any more, and is kept
    bob.send("s3", text="answer")
    for i in range(6, 9):
        Agent(f"s{i}", hub=hub).send("bob", text="hi")
    assert "s3" in bob.status()["active_sessions"]
    assert len(bob.status()["active_sessions"]) == 4
    # an evicted session's set-up cannot be replayed
    bob.receive(first_setups["s0"].to_bytes())
    assert len(errors) == 1 and isinstance(errors[0], ReplayError)
    bob.close()
    # the bound holds across a restart
    bob = Agent("bob", hub=hub, keypair_path=tmp_path / "bob.key")
    Agent("s9", hub=hub).send("bob", text="hi")
    assert len(bob.status()["active_sessions"]) == 4
    bob.close()


def test_the_unanswered_session_heard_from_least_recently_is_forgotten_first(monkeypatch):
    import agentmesh.agent_receiving as agent_module

    monkeypatch.setattr(agent_module, "MAX_INBOUND_ONLY_SESSIONS", 3)
    hub = LocalHub()
    bob = Agent("bob", hub=hub)
    bob.on_message(lambda m: None)
    senders = {f"s{i}": Agent(f"s{i}", hub=hub) for i in range(6)}

    def sessions() -> list[str]:
        return sorted(bob.status()["active_sessions"])

    for name in ("s0", "s1", "s2"):
        senders[name].send("bob", text="hi")
    senders["s0"].send("bob", text="again")  # s1 is now the one heard from least recently
    senders["s3"].send("bob", text="hi")
    assert sessions() == ["s0", "s2", "s3"]
    # s0 again, after a new session was added behind it: it moves back to the end
    senders["s0"].send("bob", text="again")
    senders["s4"].send("bob", text="hi")
    assert sessions() == ["s0", "s3", "s4"]
    senders["s5"].send("bob", text="hi")
    assert sessions() == ["s0", "s4", "s5"]
    for agent in (bob, *senders.values()):
        agent.close()


# -- 9. fewer secrets in Python memory ---------------------------------------------------------


def test_session_exports_held_in_python_are_sealed(tmp_path):
    alice, core = _persistent_alice_talking_to_bob(tmp_path)
    assert core._exports
    for peer, sealed in core._exports.items():
        assert not sealed.startswith(b"AMS"), f"the export for {peer!r} is held in the clear"
        plain = core._sessions[peer].export_state()
        assert plain[20:52] not in sealed
    alice.close()


def test_a_signed_prekey_near_its_setup_limit_is_due_for_rotation(tmp_path):
    from agentmesh.crypto import MAX_SETUPS_PER_SIGNED_PREKEY

    alice = Agent("alice", hub=LocalHub(), keypair_path=tmp_path / "alice.key")
    core = _core_of(alice)
    assert not core.signed_prekey_due(1e9)

    class NearlyFull:
        setups_remembered = MAX_SETUPS_PER_SIGNED_PREKEY * 4 // 5

        def __getattr__(self, name):
            return getattr(alice.keypair, name)

    real, core.keypair = core.keypair, NearlyFull()
    try:
        assert core.signed_prekey_due(1e9)
    finally:
        core.keypair = real
    alice.close()


def test_a_failed_registration_gives_the_identity_up_at_once(tmp_path):
    """A hub that cannot be reached: the Agent raises, and a retry on the same keypair_path
    (here at once, with another hub) opens the identity instead of finding it in use."""
    import socket

    from agentmesh import HubError

    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    net = NetworkHub("127.0.0.1", port, connect_timeout=0.5)
    with pytest.raises(HubError):
        Agent("bob", hub=net, keypair_path=tmp_path / "bob.key")
    Agent("bob", hub=LocalHub(), keypair_path=tmp_path / "bob.key").close()
    net.close()
