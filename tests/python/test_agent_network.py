"""Agents in separate processes through a real network hub on 127.0.0.1.

The hub runs as ``python -m agentmesh.hub_server --port 0`` (``agentmesh.testing.HubProcess``:
it reads the port from the listening line) and is stopped by its PID. Agents run as
subprocesses (the ``agentmesh`` CLI or a small script) or in the test process.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agentmesh import Agent
from agentmesh.errors import IdentityChangedError
from agentmesh.hubs import NetworkHub
from agentmesh.testing import HubProcess

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def start_hub(tmp: Path, port: int = 0, store: Path | None = None) -> HubProcess:
    return HubProcess(store or tmp / "hub.sqlite3", port, log_level="warning").start()


@pytest.fixture
def hub(tmp_path):
    with start_hub(tmp_path) as proc:
        yield proc


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


ECHO_AGENT = textwrap.dedent(
    """
    import json, sys, threading
    from agentmesh.agent import Agent
    from agentmesh.hubs import NetworkHub

    host, port, key, agent_id, count = sys.argv[1:6]
    port, count = int(port), int(count)
    done = threading.Event()
    seen = []
    hub = NetworkHub(host, port)
    agent = Agent(agent_id, hub=hub, keypair_path=key)

    @agent.on_error
    def rejected(exc):
        print(json.dumps({"error": type(exc).__name__, "detail": str(exc)}), flush=True)

    @agent.on_message
    def echo(msg):
        agent.send(msg.sender, text="ack:" + msg.text)
        seen.append(msg.text)
        print(json.dumps({"text": msg.text, "sender": msg.sender,
                          "prekey": bool(msg.envelope.is_prekey)}), flush=True)
        if len(seen) >= count:
            done.set()

    print(json.dumps({"ready": agent.fingerprint}), flush=True)
    ok = done.wait(60)
    agent.flush(30)
    print(json.dumps({"status": agent.status()}), flush=True)
    agent.close()
    hub.close()
    sys.exit(0 if ok else 1)
    """
)


def run_echo(tmp_path: Path, hub: HubProcess, key: Path, agent_id: str, count: int):
    script = tmp_path / "echo_agent.py"
    script.write_text(ECHO_AGENT)
    return subprocess.Popen(
        [sys.executable, str(script), "127.0.0.1", str(hub.port), str(key), agent_id, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_registered(hub_addr: int, agent_id: str, timeout: float = 30) -> None:
    with NetworkHub("127.0.0.1", hub_addr) as lookup:
        deadline = time.monotonic() + timeout
        while agent_id not in lookup.list_agents():
            assert time.monotonic() < deadline, f"{agent_id} never registered"
            time.sleep(0.05)


def collect(agent: Agent, n: int, timeout: float = 30) -> list:
    got: list = []
    agent.on_message(got.append)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return got


def lines_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for_items(items: list, n: int, timeout: float = 30) -> None:
    """Poll until ``items`` (filled by a handler in another thread) holds ``n`` entries."""
    deadline = time.monotonic() + timeout
    while len(items) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def test_messages_cross_processes_in_order(tmp_path, hub):
    assert cli("keygen", "--path", str(tmp_path / "bob.key"), "--id", "bob").returncode == 0
    listener = subprocess.Popen(
        [
            sys.executable, "-m", "agentmesh.cli", "listen", "--hub", hub.address,
            "--key", str(tmp_path / "bob.key"), "--count", "60", "--timeout", "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_registered(hub.port, "bob")
        net = NetworkHub("127.0.0.1", hub.port)
        with Agent("alice", hub=net) as alice:
            assert "bob" in alice.list_peers() and "alice" not in alice.list_peers()
            for i in range(60):
                alice.send("bob", text=f"m{i:02d}", n=i)
            alice.flush(timeout=30)
            assert net.message_count() >= 60
        net.close()
        out, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert listener.returncode == 0, err
    msgs = lines_of(out)
    assert [m["text"] for m in msgs] == [f"m{i:02d}" for i in range(60)]
    assert all(m["sender"] == "alice" and m["recipient"] == "bob" for m in msgs)
    assert [m["payload"]["n"] for m in msgs] == list(range(60))


def test_offline_agent_gets_queued_messages_and_restart_continues_sessions(tmp_path, hub):
    bob_key = tmp_path / "bob.key"
    net = NetworkHub("127.0.0.1", hub.port)
    alice = Agent("alice", hub=net, keypair_path=tmp_path / "alice.key")
    acks: list = []
    alice.on_message(acks.append)

    # 1. bob online: a round trip establishes the sessions both ways
    bob = run_echo(tmp_path, hub, bob_key, "bob", 2)
    bob_fp = json.loads(bob.stdout.readline())["ready"]
    alice.send("bob", text="r1")
    alice.send("bob", text="r2")
    out, err = bob.communicate(timeout=60)
    assert bob.returncode == 0, err
    first = lines_of(out)
    assert [m["text"] for m in first if "text" in m] == ["r1", "r2"]
    deadline = time.monotonic() + 30
    while len(acks) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [m.text for m in acks] == ["ack:r1", "ack:r2"]

    # 2. bob is down: messages are queued on the hub
    for i in range(5):
        alice.send("bob", text=f"q{i}")
    alice.flush(timeout=30)

    # 3. bob restarts from its key file: it continues the session and decrypts the queue
    bob = run_echo(tmp_path, hub, bob_key, "bob", 5)
    out, err = bob.communicate(timeout=60)
    assert bob.returncode == 0, err
    second = lines_of(out)
    assert second[0]["ready"] == bob_fp  # same fingerprint
    texts = [m for m in second if "text" in m]
    assert [m["text"] for m in texts] == [f"q{i}" for i in range(5)]
    assert not any(m["prekey"] for m in texts)  # the old session continued
    assert not [m for m in second if "error" in m]
    status = second[-1]["status"]
    assert status["received"] == 5 and status["rejected"] == 0
    deadline = time.monotonic() + 30
    while len(acks) < 7 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [m.text for m in acks[2:]] == [f"ack:q{i}" for i in range(5)]
    alice.close()
    net.close()


def test_restarted_sender_continues_and_peer_sees_no_errors(tmp_path, hub):
    bob_key = tmp_path / "bob.key"
    bob = run_echo(tmp_path, hub, bob_key, "bob", 4)
    assert json.loads(bob.stdout.readline())["ready"]
    for round_ in range(2):  # alice restarts between the rounds
        net = NetworkHub("127.0.0.1", hub.port)
        alice = Agent("alice", hub=net, keypair_path=tmp_path / "alice.key")
        got = []
        alice.on_message(got.append)
        alice.send("bob", text=f"round{round_}-a")
        alice.send("bob", text=f"round{round_}-b")
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [m.text for m in got] == [f"ack:round{round_}-a", f"ack:round{round_}-b"]
        alice.close()
        net.close()
    out, err = bob.communicate(timeout=60)
    assert bob.returncode == 0, err
    assert not [m for m in lines_of(out) if "error" in m]


def test_identity_change_is_detected_over_the_network(tmp_path):
    hub = start_hub(tmp_path)
    port = hub.port
    try:
        assert cli("keygen", "--path", str(tmp_path / "bob.key"), "--id", "bob").returncode == 0
        bob_proc = run_echo(tmp_path, hub, tmp_path / "bob.key", "bob", 1)
        assert json.loads(bob_proc.stdout.readline())["ready"]
        net = NetworkHub("127.0.0.1", port)
        alice = Agent("alice", hub=net, keypair_path=tmp_path / "alice.key")
        alice.send("bob", text="pin bob")
        alice.flush(30)
        assert bob_proc.wait(60) == 0
        alice.close()
        net.close()
    finally:
        hub.stop()

    # the hub's operator wipes its store and an impostor registers as "bob"
    hub.store.unlink()
    for extra in hub.store.parent.glob(hub.store.name + "-*"):
        extra.unlink()
    hub = start_hub(tmp_path, port=port)
    try:
        assert cli("keygen", "--path", str(tmp_path / "evil.key"), "--id", "bob").returncode == 0
        net = NetworkHub("127.0.0.1", port)
        alice = Agent("alice", hub=net, keypair_path=tmp_path / "alice.key")
        errors: list = []
        alice.on_error(errors.append)
        alice.on_message(lambda m: pytest.fail(f"impostor message reached a handler: {m}"))
        result = cli("send", "--hub", hub.address, "--key", str(tmp_path / "evil.key"),
                     "--to", "alice", "--text", "I am bob, trust me")  # fmt: skip
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 30
        while not errors and time.monotonic() < deadline:
            time.sleep(0.02)
        assert errors and isinstance(errors[0], IdentityChangedError)
        with pytest.raises(IdentityChangedError):
            alice.send("bob", text="secret for the real bob")
        alice.close()
        net.close()
    finally:
        hub.stop()


def test_network_hub_interface(tmp_path, hub):
    net = NetworkHub("127.0.0.1", hub.port)
    assert net.get_bundle("nobody") is None
    a = Agent("a", hub=net)
    b = Agent("b", hub=net)
    assert net.get_bundle("a")["identity_key"] == a.public_bundle["identity_key"]
    assert {"a", "b"} <= set(net.list_agents())
    assert a.list_peers() == ["b"]
    got = []
    b.on_message(got.append)
    with pytest.raises(ValueError, match="Peer 'ghost' not found on hub"):
        a.send("ghost", text="x")
    before = net.message_count()
    a.send("b", text="via deliver")
    a.flush(10)
    assert net.message_count() == before + 1
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [m.text for m in got] == ["via deliver"]
    a.close()
    b.close()
    net.close()


def test_slow_handler_does_not_stall_other_agents(tmp_path, hub):
    net = NetworkHub("127.0.0.1", hub.port)
    slow = Agent("slow", hub=net)
    fast = Agent("fast", hub=net)
    sender = Agent("sender", hub=net)
    fast_got: list = []
    slow_got: list = []
    released = threading.Event()

    @slow.on_message
    def crawl(msg):
        released.wait(30)
        slow_got.append(msg.text)

    fast.on_message(fast_got.append)
    for i in range(3):
        sender.send("slow", text=f"s{i}")
    for i in range(20):
        sender.send("fast", text=f"f{i}")
    sender.flush(10)
    deadline = time.monotonic() + 20
    while len(fast_got) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    # all of them while the slow handler is still held: not stuck behind it
    assert len(fast_got) == 20 and not released.is_set()
    released.set()
    deadline = time.monotonic() + 10
    while len(slow_got) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slow_got == ["s0", "s1", "s2"]
    for agent in (slow, fast, sender):
        agent.close()
    net.close()


def test_flush_timeout_when_the_hub_is_gone(tmp_path):
    from agentmesh.errors import FlushTimeoutError

    proc = start_hub(tmp_path)
    net = NetworkHub("127.0.0.1", proc.port)
    a = Agent("a", hub=net)
    b = Agent("b", hub=net)
    a.send("b", text="x")
    a.flush(10)
    proc.kill()
    a.send("b", text="into the void")  # streams: returns at once
    with pytest.raises(FlushTimeoutError):
        a.flush(timeout=0.5)
    with pytest.raises(FlushTimeoutError):
        a.close(timeout=0.5)
    assert a.closed
    b.close(timeout=0.5)
    net.close()


def test_async_agent_on_a_network_hub(tmp_path, hub):
    import asyncio

    from agentmesh.agent import AsyncAgent

    async def main():
        net = NetworkHub("127.0.0.1", hub.port)
        bob = AsyncAgent("bob", hub=net, keypair_path=tmp_path / "bob.key")
        alice = Agent("alice", hub=net)
        replies: list = []
        alice.on_message(replies.append)
        for i in range(10):
            alice.send("bob", text=f"n{i}")
        seen = []
        async for msg in bob:
            seen.append(msg.text)
            await bob.send(msg.sender, text="re:" + msg.text)
            if len(seen) == 10:
                break
        await bob.flush(timeout=10)
        assert seen == [f"n{i}" for i in range(10)]
        deadline = time.monotonic() + 10
        while len(replies) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert [m.text for m in replies] == [f"re:n{i}" for i in range(10)]
        assert await bob.list_peers() == ["alice"]
        await bob.close()
        alice.close()
        net.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_restarted_agent_skips_what_a_crashed_hub_redelivers(tmp_path):
    """A hub that crashed before committing a receiver's acknowledgements delivers those
    envelopes again. A persistent receiver that was restarted meanwhile skips them silently
    (it saved the delivery ids it handled with its state): no handler runs twice and nothing
    lands in ``on_error``. The crash is reproduced exactly by rolling the hub's store back to a
    copy taken before the acknowledgements."""
    import shutil
    import sqlite3

    store = tmp_path / "hub.sqlite3"
    backup = tmp_path / "before-acks.sqlite3"

    def queued_for_bob() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT COUNT(*) FROM inbox WHERE recipient = 'bob'").fetchone()
            return int(row[0])

    def open_bob(port: int) -> tuple[Agent, list, list]:
        agent = Agent("bob", hub=NetworkHub("127.0.0.1", port), keypair_path=tmp_path / "b.key")
        got: list = []
        errors: list = []
        agent.on_message(got.append)
        agent.on_error(errors.append)
        return agent, got, errors

    hub = start_hub(tmp_path, store=store)
    try:
        bob, _, _ = open_bob(hub.port)
        bob.close()
        with (
            NetworkHub("127.0.0.1", hub.port) as net,
            Agent("alice", hub=net, keypair_path=tmp_path / "a.key") as alice,
        ):
            for i in range(5):
                alice.send("bob", text=f"m{i}")
            alice.flush(30)
    finally:
        hub.stop()
    shutil.copy(store, backup)  # a clean stop leaves no WAL: the file is the whole store

    hub = start_hub(tmp_path, store=store)
    try:
        bob, got, errors = open_bob(hub.port)
        wait_for_items(got, 5)
        assert [m.text for m in got] == [f"m{i}" for i in range(5)]
        bob.close()  # acknowledged: the hub deletes the five
    finally:
        hub.stop()

    shutil.copy(backup, store)  # the acknowledgements never reached the disk
    hub = start_hub(tmp_path, store=store)
    try:
        assert queued_for_bob() == 5
        bob, got, errors = open_bob(hub.port)
        # the hub redelivers the five at once; bob acknowledges them without handling them
        deadline = time.monotonic() + 30
        while queued_for_bob() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert queued_for_bob() == 0
        bob.close()
        assert got == [] and errors == []
        with (
            NetworkHub("127.0.0.1", hub.port) as net,
            Agent("alice", hub=net, keypair_path=tmp_path / "a.key") as alice,
        ):
            alice.send("bob", text="after")  # later deliveries still arrive
            alice.flush(30)
        bob, got, errors = open_bob(hub.port)
        wait_for_items(got, 1)
        bob.close()
        assert [m.text for m in got] == ["after"] and errors == []
    finally:
        hub.stop()


def test_first_messages_are_forward_secret_with_one_time_prekeys(tmp_path, hub):
    """A persistent agent keeps the hub stocked with one-time prekeys; a peer's set-up claims
    one, and once the agent has handled the first message the key's secret is gone from its
    identity file. Someone who recorded that message and later steals the identity file and the
    session state cannot read it; the identity file from before the set-up could."""
    from agentmesh.crypto import AgentKeyPair, CryptoError, CryptoSession, perform_key_exchange
    from agentmesh.link_prekeys import PREKEY_LOW

    key = tmp_path / "bob.key"
    net = NetworkHub("127.0.0.1", hub.port)
    bob = Agent("bob", hub=net, keypair_path=key)
    got: list = []
    bob.on_message(got.append)
    link = net._links["bob"]
    deadline = time.monotonic() + 30
    while (link.backend.prekeys_held or 0) < PREKEY_LOW and time.monotonic() < deadline:
        time.sleep(0.02)
    held = link.backend.prekeys_held
    assert held >= PREKEY_LOW
    key_file_before = key.read_bytes()

    alice = Agent("alice", hub=net)
    alice.send("bob", text="the first message")
    wait_for_items(got, 1)
    deadline = time.monotonic() + 30
    assert [m.text for m in got] == ["the first message"]
    recorded = got[0].envelope.to_bytes()  # what an eavesdropper on the wire kept
    assert got[0].envelope.is_prekey
    while key.read_bytes() == key_file_before and time.monotonic() < deadline:
        time.sleep(0.02)  # the used key leaves the disk right after the first batch

    alice_bundle = alice.public_bundle
    then = AgentKeyPair.from_bytes(key_file_before)
    held_before = set(then.one_time_prekey_ids())
    assert perform_key_exchange(then, alice_bundle).unseal(recorded) == {
        "text": "the first message"
    }  # (so the check below can fail)
    stolen = AgentKeyPair.from_bytes(key.read_bytes())
    used = held_before - set(stolen.one_time_prekey_ids())
    assert used, "the set-up's one-time prekey is still in the identity file"
    # (the file also remembers the set-up and refuses it as a replay; a thief holding the
    # secrets could skip that check, but not bring the deleted key back)
    with pytest.raises(CryptoError):
        perform_key_exchange(stolen, alice_bundle).unseal(recorded)
    state = bob._core._sessions["alice"].export_state()
    with pytest.raises(CryptoError):
        CryptoSession.import_state(stolen, state).unseal(recorded)
    # the hub was topped up again meanwhile, and a restart keeps the unused keys usable
    bob.close()
    bob = Agent("bob", hub=net, keypair_path=key)
    carol = Agent("carol", hub=net)
    got = []
    bob.on_message(got.append)
    unused = len(bob._core.keypair.one_time_prekey_ids())
    carol.send("bob", text="after the restart")
    wait_for_items(got, 1)
    assert [m.text for m in got] == ["after the restart"]
    assert len(bob._core.keypair.one_time_prekey_ids()) == unused - 1
    assert bob.status()["rejected"] == 0
    for a in (alice, bob, carol):
        a.close()
    net.close()


def test_sends_work_through_a_hub_without_one_time_prekeys(tmp_path, monkeypatch):
    """A hub of an earlier version answers the claim with "unknown op": the agent falls back
    to looking bundles up (once), and messages flow as before."""
    from agentmesh.hub_client import HubClient
    from agentmesh.hub_protocol import Op
    from agentmesh.hub_server import NetworkHubServer

    async def claim_unknown_op(self, agent_id):
        return await self._request(99, agent_id)  # what an older hub sees: an op it lacks

    monkeypatch.setattr(HubClient, "claim_bundle", claim_unknown_op)
    assert 99 not in {int(op) for op in Op}
    server = NetworkHubServer("127.0.0.1", 0, store_path=tmp_path / "hub.db")
    server.start(block=False)
    try:
        with NetworkHub("127.0.0.1", server.port) as net:
            bob = Agent("bob", hub=net)
            got: list = []
            bob.on_message(got.append)
            alice = Agent("alice", hub=net)
            alice.send("bob", text="hello")
            wait_for_items(got, 1)
            assert [m.text for m in got] == ["hello"]
            assert net._claims_unsupported
            alice.close()
            bob.close()
    finally:
        server.stop()


def test_signed_prekey_rotation_ends_what_a_stolen_key_file_can_read(tmp_path, hub, monkeypatch):
    """A set-up without a one-time prekey (here from a bundle handed over directly) rests on
    the signed prekey. After two rotations the identity file no longer holds it, so the stolen
    identity file alone cannot read a recorded first message; the hub serves the new bundle,
    the session in use goes on, and new set-ups work. (Bob never answered alice, so his
    session state still holds that key as its ratchet key: see docs/security.md.)"""
    from agentmesh import link_prekeys as link_module
    from agentmesh.crypto import AgentKeyPair, IdentityError, perform_key_exchange

    monkeypatch.setattr(link_module, "PREKEY_CHECK_INTERVAL", 0.05)
    monkeypatch.setattr(link_module, "SIGNED_PREKEY_ROTATION", 1e9)
    key = tmp_path / "bob.key"
    net = NetworkHub("127.0.0.1", hub.port)
    bob = Agent("bob", hub=net, keypair_path=key)
    got: list = []
    bob.on_message(got.append)
    alice = Agent("alice", hub=net)
    alice.connect_with_bundle(bob.public_bundle)  # no one-time prekey in this bundle
    # (stolen before the set-up arrives: afterwards the file also remembers the set-up and
    # refuses it as a replay, which a thief holding the secrets could simply skip)
    then = AgentKeyPair.from_bytes(key.read_bytes())
    alice.send("bob", text="first")
    wait_for_items(got, 1)
    recorded = got[0].envelope.to_bytes()
    alice_bundle = alice.public_bundle
    assert perform_key_exchange(then, alice_bundle).unseal(recorded) == {"text": "first"}

    spk_ids = {bob.public_bundle["signed_prekey_id"]}
    monkeypatch.setattr(link_module, "SIGNED_PREKEY_ROTATION", 0.0)  # due at every check
    deadline = time.monotonic() + 30
    while len(spk_ids) < 3 and time.monotonic() < deadline:
        published = net.get_bundle("bob")
        assert published is not None
        spk_ids.add(published["signed_prekey_id"])
        time.sleep(0.02)
    monkeypatch.setattr(link_module, "SIGNED_PREKEY_ROTATION", 1e9)
    assert len(spk_ids) >= 3  # two rotations, each published after its identity file write

    stolen = AgentKeyPair.from_bytes(key.read_bytes())
    with pytest.raises(IdentityError, match="signed prekey this agent does not have"):
        perform_key_exchange(stolen, alice_bundle).unseal(recorded)
    alice.send("bob", text="same session")
    carol = Agent("carol", hub=net)
    carol.send("bob", text="new set-up")
    wait_for_items(got, 3)
    assert sorted(m.text for m in got[1:]) == ["new set-up", "same session"]
    assert bob.status()["rejected"] == 0
    for a in (alice, bob, carol):
        a.close()
    net.close()


def test_prekeys_are_restocked_right_after_reconnecting_to_a_new_store(tmp_path):
    """The hub comes back on the same port with a new, empty store (no prekeys): the agent's
    reconnect re-registers it and tops the stock up at once, not a minute later."""
    from agentmesh.link_prekeys import PREKEY_CHECK_INTERVAL, PREKEY_LOW

    def held_by_hub(link, at_least: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (link.backend.prekeys_held or 0) < at_least and time.monotonic() < deadline:
            time.sleep(0.02)
        return link.backend.prekeys_held or 0

    first = start_hub(tmp_path, store=tmp_path / "one.db")
    port = first.port
    net = NetworkHub("127.0.0.1", port)
    bob = Agent("bob", hub=net)
    link = net._links["bob"]
    try:
        assert held_by_hub(link, PREKEY_LOW, 30) >= PREKEY_LOW
        first_store = link.backend.hub_id
    finally:
        first.stop()
    second = start_hub(tmp_path, port=port, store=tmp_path / "two.db")
    try:
        deadline = time.monotonic() + 30
        while link.backend.hub_id == first_store and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.backend.hub_id != first_store
        # (20 s is well inside the minute the periodic check would have taken)
        assert held_by_hub(link, PREKEY_LOW, min(20.0, PREKEY_CHECK_INTERVAL / 3)) >= PREKEY_LOW
        with NetworkHub("127.0.0.1", port) as lookup:
            assert lookup.list_agents() == ["bob"]
        bob.close()
        net.close()
    finally:
        second.stop()


def test_rotation_stops_while_the_hub_cannot_take_the_bundle(tmp_path, monkeypatch):
    """Publishing the new bundle keeps failing: the agent rotates once, then no more (a second
    rotation would delete the signed prekey the hub still serves), retries the publication,
    and keeps topping up its one-time prekeys."""
    from agentmesh import link_prekeys as link_module
    from agentmesh.errors import HubError
    from agentmesh.hub_client import HubClient
    from agentmesh.link_prekeys import PREKEY_LOW

    attempts: list = []

    async def update_fails(self, bundle):
        attempts.append(bundle["signed_prekey_id"])
        raise HubError("the hub did not answer")

    monkeypatch.setattr(HubClient, "update_bundle", update_fails)
    monkeypatch.setattr(link_module, "PREKEY_CHECK_INTERVAL", 0.05)
    monkeypatch.setattr(link_module, "SIGNED_PREKEY_ROTATION", 0.0)
    hub = start_hub(tmp_path)
    try:
        net = NetworkHub("127.0.0.1", hub.port)
        bob = Agent("bob", hub=net)
        link = net._links["bob"]
        first = bob.public_bundle["signed_prekey_id"]
        time.sleep(1.0)  # twenty checks
        rotated = bob.public_bundle["signed_prekey_id"]
        assert rotated != first  # rotated once ...
        time.sleep(0.5)
        assert bob.public_bundle["signed_prekey_id"] == rotated  # ... and not again
        assert len(attempts) >= 5 and set(attempts) == {rotated}  # the same bundle, retried
        assert link.prekeys._task is not None and not link.prekeys._task.done()
        with NetworkHub("127.0.0.1", hub.port) as lookup:
            served = lookup.get_bundle("bob")
        assert served is not None and served["signed_prekey_id"] == first
        assert (link.backend.prekeys_held or 0) >= PREKEY_LOW
        bob.close()
        net.close()
    finally:
        hub.stop()
