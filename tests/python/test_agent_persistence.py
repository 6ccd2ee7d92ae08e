"""keypair_path: identity and session state survive restarts; files are protected."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from agentmesh import Agent, LocalHub
from agentmesh.errors import IdentityChangedError, KeyFileError
from agentmesh.keystore import KeyStore

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@posix_only
def test_identity_file_created_0600_and_reloaded(tmp_path):
    path = tmp_path / "alice.key"
    alice = Agent("alice", keypair_path=path)
    assert path.exists() and _mode(path) == 0o600
    fp = alice.fingerprint
    alice.close()
    again = Agent("alice", keypair_path=path)
    assert again.fingerprint == fp
    assert again.status()["persistent"] is True


@posix_only
def test_state_file_is_0600_and_beside_the_identity(tmp_path):
    hub = LocalHub()
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    Agent("bob", hub=hub)
    alice.send("bob", text="x")
    alice.close()
    state = tmp_path / "alice.key.state"
    assert state.exists() and _mode(state) == 0o600
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_state_file_holds_no_readable_secrets(tmp_path):
    hub = LocalHub()
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    Agent("bob-the-peer", hub=hub)
    alice.send("bob-the-peer", text="x")
    alice.close()
    raw = (tmp_path / "alice.key.state").read_bytes()
    assert b"bob-the-peer" not in raw  # sealed at rest


def test_identity_file_of_another_agent_is_refused(tmp_path):
    path = tmp_path / "k.key"
    Agent("alice", keypair_path=path).close()
    with pytest.raises(ValueError, match="belongs to agent 'alice'"):
        Agent("bob", keypair_path=path)


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"\x00" * 64, b'{"json": "but not a key"}', b"\xff" * 300]
)
def test_corrupt_identity_file_is_an_error_and_never_replaced(tmp_path, content):
    path = tmp_path / "alice.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        Agent("alice", keypair_path=path)
    assert path.read_bytes() == content
    assert not (tmp_path / "alice.key.state").exists()


def test_truncated_identity_file_is_an_error_and_never_replaced(tmp_path):
    path = tmp_path / "alice.key"
    Agent("alice", keypair_path=path).close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KeyFileError):
        Agent("alice", keypair_path=path)
    assert path.read_bytes() == data[: len(data) // 2]


@posix_only
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_identity_file_is_an_error(tmp_path):
    path = tmp_path / "alice.key"
    Agent("alice", keypair_path=path).close()
    os.chmod(path, 0)
    try:
        with pytest.raises(KeyFileError):
            Agent("alice", keypair_path=path)
    finally:
        os.chmod(path, 0o600)


def test_identity_path_that_is_a_directory_is_an_error(tmp_path):
    with pytest.raises(KeyFileError):
        Agent("alice", keypair_path=tmp_path)


def test_corrupt_state_file_is_an_error_and_never_replaced(tmp_path):
    hub = LocalHub()
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    Agent("bob", hub=hub)
    alice.send("bob", text="x")
    alice.close()
    state = tmp_path / "alice.key.state"
    good = state.read_bytes()
    for bad in (b"", b"nonsense", good[:-10], good[:20] + bytes([good[20] ^ 1]) + good[21:]):
        state.write_bytes(bad)
        with pytest.raises(KeyFileError, match="state file"):
            Agent("alice", keypair_path=tmp_path / "alice.key")
        assert state.read_bytes() == bad
    state.write_bytes(good)
    assert Agent("alice", keypair_path=tmp_path / "alice.key").status()["active_sessions"] == [
        "bob"
    ]


def test_state_file_of_another_identity_is_refused(tmp_path):
    hub = LocalHub()
    a1 = Agent("alice", hub=hub, keypair_path=tmp_path / "one" / "alice.key")
    Agent("bob", hub=hub)
    a1.send("bob", text="x")
    a1.close()
    Agent("alice", keypair_path=tmp_path / "two" / "alice.key").close()
    (tmp_path / "two" / "alice.key.state").write_bytes(
        (tmp_path / "one" / "alice.key.state").read_bytes()
    )
    with pytest.raises(KeyFileError):
        Agent("alice", keypair_path=tmp_path / "two" / "alice.key")


def test_passphrase_protects_identity_and_state(tmp_path):
    path = tmp_path / "alice.key"
    hub = LocalHub()
    alice = Agent("alice", hub=hub, keypair_path=path, passphrase="correct horse")
    Agent("bob", hub=hub)
    alice.send("bob", text="x")
    fp = alice.fingerprint
    alice.close()
    key_bytes = path.read_bytes()
    with pytest.raises(KeyFileError):
        Agent("alice", keypair_path=path, passphrase="wrong")
    with pytest.raises(KeyFileError):
        Agent("alice", keypair_path=path)  # no passphrase
    assert path.read_bytes() == key_bytes
    again = Agent("alice", keypair_path=path, passphrase="correct horse")
    assert again.fingerprint == fp
    assert again.status()["active_sessions"] == ["bob"]
    with pytest.raises(ValueError):
        Agent("carol", passphrase="needs a path")
    with pytest.raises(ValueError):
        Agent("carol", keypair_path=tmp_path / "c.key", passphrase="")


def _persistent_pair(tmp_path, hub):
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    bob = Agent("bob", hub=hub, keypair_path=tmp_path / "bob.key")
    return alice, bob


def test_restart_continues_every_session(tmp_path):
    hub = LocalHub()
    alice, bob = _persistent_pair(tmp_path, hub)
    got: list[str] = []
    bob.on_message(lambda m: got.append(m.text))
    alice.on_message(lambda m: got.append(m.text))
    for i in range(3):
        alice.send("bob", text=f"a{i}")
        bob.send("alice", text=f"b{i}")
    fps = (alice.fingerprint, bob.fingerprint)
    alice.close()
    bob.close()

    hub2 = LocalHub()
    alice2, bob2 = _persistent_pair(tmp_path, hub2)
    assert (alice2.fingerprint, bob2.fingerprint) == fps
    assert alice2.status()["active_sessions"] == ["bob"]
    assert alice2.status()["known_peers"] == ["bob"]
    got2: list = []
    errors: list = []
    bob2.on_message(got2.append)
    bob2.on_error(errors.append)
    alice2.send("bob", text="after restart")
    assert [m.text for m in got2] == ["after restart"]
    assert errors == []
    # a loaded session never seals under its old sending chain (the file may be older than
    # what was sent): its first message starts a new set-up, which the peer adopts
    assert got2[0].envelope.is_prekey
    bob2.send("alice", text="answer")
    alice2.send("bob", text="on the new set-up")
    assert [m.text for m in got2] == ["after restart", "on the new set-up"]
    assert not got2[1].envelope.is_prekey
    assert errors == []


def test_restart_of_one_side_only(tmp_path):
    hub = LocalHub()
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    bob = Agent("bob", hub=hub)
    got: list[str] = []
    errors: list = []
    bob.on_message(lambda m: got.append(m.text))
    bob.on_error(errors.append)
    alice.on_message(lambda m: got.append(m.text))
    alice.send("bob", text="1")
    bob.send("alice", text="2")
    alice.close()  # bob stays up
    alice2 = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    alice2.on_message(lambda m: got.append(m.text))
    alice2.send("bob", text="3")
    bob.send("alice", text="4")
    assert got == ["1", "2", "3", "4"]
    assert errors == []


def test_pins_survive_a_restart(tmp_path):
    hub = LocalHub()
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    bob = Agent("bob", hub=hub)
    alice.send("bob", text="pin me")
    alice.close()
    bob.close()
    Agent("bob", hub=hub)  # an impostor takes the id while alice is down
    alice2 = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    with pytest.raises(IdentityChangedError):
        alice2.send("bob", text="hello?")  # restored session: re-checked against the hub


def test_flush_saves_the_state(tmp_path):
    hub = LocalHub()
    alice = Agent("alice", hub=hub, keypair_path=tmp_path / "alice.key")
    Agent("bob", hub=hub)
    alice.send("bob", text="x")
    alice.flush()
    store = KeyStore(tmp_path / "alice.key")
    state = store.load_state(store.load_identity())
    assert list(state.sessions) == ["bob"]
    assert list(state.pins) == ["bob"]


def test_keystore_refuses_to_overwrite(tmp_path):
    store = KeyStore(tmp_path / "k.key")
    store.create_identity("k")
    with pytest.raises(FileExistsError):
        store.create_identity("k")


def test_key_file_in_a_new_directory(tmp_path):
    path = tmp_path / "deep" / "er" / "alice.key"
    Agent("alice", keypair_path=path).close()
    assert path.exists()


def test_one_identity_is_never_driven_by_two_live_agents(tmp_path):
    path = tmp_path / "alice.key"
    first = Agent("alice", keypair_path=path)
    with pytest.raises(RuntimeError, match="in use by another agent in this process"):
        Agent("alice", keypair_path=path)
    first.close()
    second = Agent("alice", keypair_path=path)  # free again after close
    assert second.fingerprint == first.fingerprint
    del second  # an unreachable agent that was never closed does not block a restart
    Agent("alice", keypair_path=path).close()


@posix_only
def test_identity_in_use_by_another_process(tmp_path):
    import subprocess
    import textwrap

    path = tmp_path / "alice.key"
    Agent("alice", keypair_path=path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from agentmesh.agent import Agent
            a = Agent("alice", keypair_path={str(path)!r})
            print("ready", flush=True)
            sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RuntimeError, match=f"in use by process {holder.pid}"):
            Agent("alice", keypair_path=path)
    finally:
        holder.communicate("\n", timeout=30)
    Agent("alice", keypair_path=path).close()


def test_delivered_positions_round_trip_and_are_checked(tmp_path):
    """The state file keeps, per hub store, the last delivery id handled (what lets a restarted
    agent skip a crashed hub's redeliveries); a damaged entry is an error, never a default."""
    import json

    from agentmesh.keystore import _MAGIC, _PLAIN, PersistedState

    store = KeyStore(tmp_path / "alice.key")
    keypair, _created = store.load_or_create_identity("alice")
    positions = {bytes(range(16)): 41, b"\xff" * 16: 0}
    store.save_state(keypair, PersistedState(delivered=positions))
    assert store.load_state(keypair).delivered == positions

    def plain(delivered) -> bytes:
        doc = {"v": 1, "agent_id": "alice", "fingerprint": keypair.fingerprint}
        if delivered is not None:
            doc["delivered"] = delivered
        return _MAGIC + _PLAIN + json.dumps(doc).encode()

    store.state_path.write_bytes(plain(None))  # a file written before the fields existed
    assert store.load_state(keypair).delivered == {}
    assert store.load_state(keypair).signed_prekey_since is None
    store.save_state(keypair, PersistedState(signed_prekey_since=1_700_000_000_000))
    assert store.load_state(keypair).signed_prekey_since == 1_700_000_000_000
    for bad in ({"zz": 1}, {"00" * 16: -1}, {"00" * 16: "7"}, {"00" * 16: 1.5}, [1, 2]):
        store.state_path.write_bytes(plain(bad))
        with pytest.raises(KeyFileError, match="corrupt"):
            store.load_state(keypair)
    for since in (-1, "1", 1.5):
        doc = json.loads(plain({})[len(_MAGIC) + 1 :])
        store.state_path.write_bytes(
            _MAGIC + _PLAIN + json.dumps({**doc, "signed_prekey_since": since}).encode()
        )
        with pytest.raises(KeyFileError, match="corrupt"):
            store.load_state(keypair)


def test_agent_remembers_delivered_positions_across_restarts(tmp_path):
    alice = Agent("alice", keypair_path=tmp_path / "alice.key")
    core = alice._core
    for n in range(20):  # bounded: the 16 most recently used stores are kept
        core.note_delivered(bytes([n]) * 16, n)
    core.note_delivered(bytes([4]) * 16, 99)  # the oldest kept, used again: now the newest
    core.note_delivered(bytes([20]) * 16, 20)  # so this one drops 5 instead
    alice.close()
    again = Agent("alice", keypair_path=tmp_path / "alice.key")
    positions = again._core.delivered_positions()
    assert len(positions) == 16
    assert positions[bytes([4]) * 16] == 99 and positions[bytes([20]) * 16] == 20
    assert bytes([5]) * 16 not in positions and bytes([6]) * 16 in positions
    again.close()


def test_new_prekeys_are_written_first_and_handed_out_ones_are_bounded(tmp_path, monkeypatch):
    """``new_prekeys``: the fresh keys are in the identity file before anyone can upload them;
    of the keys the hub handed out already (all but the newest ``hub_holds``), only the newest
    ``KEEP_HANDED_OUT_PREKEYS`` are kept."""
    from agentmesh import agent_prekeys as agent_module
    from agentmesh.crypto import AgentKeyPair

    monkeypatch.setattr(agent_module, "KEEP_HANDED_OUT_PREKEYS", 5)
    path = tmp_path / "bob.key"
    bob = Agent("bob", keypair_path=path)
    core = bob._core
    first = core.new_prekeys(0, 50)
    ids = [k["id"] for k in first]
    assert AgentKeyPair.load(path).one_time_prekey_ids() == ids
    # the hub still holds the newest 10: 40 were handed out, the newest 5 of them are kept
    second = core.new_prekeys(10, 40)
    kept = ids[35:] + [k["id"] for k in second]
    assert core.keypair.one_time_prekey_ids() == kept
    assert AgentKeyPair.load(path).one_time_prekey_ids() == kept
    bob.close()


def test_signed_prekey_age_survives_restarts_and_a_crash_mid_rotation(tmp_path):
    """The signed prekey's age is kept with its id in the state file. After a rotation whose
    state write never happened (a crash between the identity and the state write), the age
    counts from the restart instead of making the agent rotate again at once."""
    path = tmp_path / "bob.key"
    bob = Agent("bob", keypair_path=path)
    core = bob._core
    core._signed_prekey_since -= 3_600_000  # an hour old
    core._meta_dirty = True
    since = core._signed_prekey_since
    bob.close()
    bob = Agent("bob", keypair_path=path)
    assert bob._core._signed_prekey_since == since
    assert not bob._core.signed_prekey_due(7200) and bob._core.signed_prekey_due(1800)
    # the crash: the identity file gets the new key, the state file does not
    bob._core.keypair.rotate_signed_prekey()
    bob._core.save_identity()
    bob._core._released = True  # (as if the process died here)
    bob.close()
    bob = Agent("bob", keypair_path=path)
    assert bob._core._signed_prekey_since > since + 3_000_000
    assert not bob._core.signed_prekey_due(1800)
    bob.close()
