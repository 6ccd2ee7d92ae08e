"""A message may carry an expiry (``send_payload(..., ttl=seconds)``), under the sender's
signature: the recipient drops it when it comes too late (a hub that held it back) and reports
it to its error handlers; the hub drops it, undelivered, when the expiry passes while it is
queued (an offline recipient), also across a hub restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hubutil import Collector, seal_bytes, session

from agentmesh import Agent, AsyncAgent, HubError, LocalHub, MessageExpiredError
from agentmesh.crypto import AgentKeyPair
from agentmesh.hub_client import HubClient
from agentmesh.hub_server import HubLimits, NetworkHubServer
from agentmesh.local_backend import LocalDirectory
from agentmesh.testing import HostileHub, HubProcess, Rule


def test_a_message_in_time_is_handled_and_a_late_one_is_reported() -> None:
    hub = HostileHub(rules=[Rule("delay", match=lambda env: True, times=1)], max_held=8)
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    got: list[str] = []
    errors: list[BaseException] = []
    bob.on_message(lambda msg: got.append(msg.text))
    bob.on_error(errors.append)
    alice.send_payload("bob", {"text": "held back"}, ttl=0.2)  # the hub holds it
    alice.send_payload("bob", {"text": "in time"}, ttl=30)
    time.sleep(0.3)
    hub.release_all()
    assert got == ["in time"]
    assert len(errors) == 1 and isinstance(errors[0], MessageExpiredError)
    assert errors[0].sender == "alice" and errors[0].message.text == "held back"


def _collect(agent: Agent) -> tuple[list[str], list[BaseException]]:
    got: list[str] = []
    errors: list[BaseException] = []
    agent.on_error(errors.append)
    agent.on_message(lambda msg: got.append(msg.text))
    return got, errors


def _wait_for(got: list[str], n: int) -> None:
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def test_the_hub_drops_what_expired_while_the_recipient_was_offline(tmp_path: Path) -> None:
    # Without the hub's part the late envelope reaches bob, who reports it (MessageExpiredError):
    # the hub holding an expired message until its recipient comes back is what this forbids.
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as proc:
        address = f"127.0.0.1:{proc.port}"
        Agent("bob", hub=address, keypair_path=tmp_path / "bob.key").close()
        with Agent("alice", hub=address) as alice:
            alice.send_payload("bob", {"text": "stale"}, ttl=0.2)
            alice.send_payload("bob", {"text": "fresh"}, ttl=60)
            alice.send("bob", text="no expiry")
            alice.flush(10)
        time.sleep(0.4)
        bob = Agent("bob", hub=address, keypair_path=tmp_path / "bob.key")
        got, errors = _collect(bob)
        _wait_for(got, 2)
        bob.close()
        assert got == ["fresh", "no expiry"] and errors == []


def test_an_expiry_survives_a_hub_restart_and_is_counted(tmp_path: Path) -> None:
    store = tmp_path / "hub.sqlite3"
    server = NetworkHubServer("127.0.0.1", 0, store_path=store)
    server.start(block=False)
    try:
        address = f"127.0.0.1:{server.port}"
        Agent("bob", hub=address, keypair_path=tmp_path / "bob.key").close()
        with Agent("alice", hub=address) as alice:
            alice.send_payload("bob", {"text": "stale"}, ttl=0.3)
            alice.send_payload("bob", {"text": "fresh"}, ttl=60)
            alice.flush(10)
    finally:
        server.stop()
    time.sleep(0.4)
    server = NetworkHubServer("127.0.0.1", 0, store_path=store)
    server.start(block=False)
    try:
        bob = Agent("bob", hub=f"127.0.0.1:{server.port}", keypair_path=tmp_path / "bob.key")
        got, errors = _collect(bob)
        _wait_for(got, 1)
        bob.close()
        assert got == ["fresh"] and errors == []
        assert server._hub.stats.expired == 1  # type: ignore[union-attr]
    finally:
        server.stop()


def test_a_live_recipient_gets_an_expiring_message_at_once() -> None:
    server = NetworkHubServer("127.0.0.1", 0)
    server.start(block=False)
    try:
        address = f"127.0.0.1:{server.port}"
        with Agent("bob", hub=address) as bob, Agent("alice", hub=address) as alice:
            got, errors = _collect(bob)
            alice.send_payload("bob", {"text": "quick"}, ttl=5)
            _wait_for(got, 1)
            assert got == ["quick"] and errors == []
        assert server._hub.stats.expired == 0  # type: ignore[union-attr]
    finally:
        server.stop()


def test_an_in_process_hub_drops_what_expired_in_a_queue() -> None:
    directory = LocalDirectory()
    directory.bind(AgentKeyPair.generate("bob").public_bundle(), None)
    directory.enqueue("bob", b"stale", int(time.time() * 1000) + 100)
    directory.enqueue("bob", b"fresh", int(time.time() * 1000) + 60_000)
    directory.enqueue("bob", b"forever")
    time.sleep(0.2)
    assert [env for _, env in directory.pending("bob", 0, 10)] == [b"fresh", b"forever"]
    assert directory.expired == 1


def test_ttl_must_be_positive_and_works_on_async_agents() -> None:
    hub = LocalHub()
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    with pytest.raises(ValueError, match="ttl must be a positive number"):
        alice.send_payload("bob", {"text": "x"}, ttl=0)

    async def main() -> None:
        sender = AsyncAgent("carol", hub=hub)
        got: list[str] = []
        bob.on_message(lambda msg: got.append(msg.text))
        await sender.send_payload("bob", {"text": "async"}, ttl=5)
        assert got == ["async"]
        await sender.close()

    asyncio.run(main())


def test_an_expiry_out_of_range_is_refused_and_the_hub_goes_on(tmp_path: Path) -> None:
    # Before the range check, the store could not write the row (a signed 64-bit column) and
    # its failure stopped the hub for every agent.
    server = NetworkHubServer("127.0.0.1", 0, store_path=tmp_path / "hub.sqlite3")
    server.start(block=False)
    try:
        alice_kp, bob_kp, carol_kp = (AgentKeyPair.generate(n) for n in ("alice", "bob", "carol"))

        async def go() -> None:
            bob = HubClient("127.0.0.1", server.port)
            got = Collector(session(bob_kp, carol_kp))
            await bob.register(bob_kp, got)
            alice = HubClient("127.0.0.1", server.port, reconnect=False)
            await alice.register(alice_kp, Collector())
            envelope = seal_bytes(session(alice_kp, bob_kp), {"text": "forever"})
            alice._sends.send_nowait("bob", envelope, 1 << 22, 2**64 - 1)
            with pytest.raises(HubError, match="out of range"):
                await alice.flush(10)
            with pytest.raises(HubError, match="never acknowledged"):
                await alice.close()
            carol = HubClient("127.0.0.1", server.port)
            await carol.register(carol_kp, Collector())
            carol.send_nowait("bob", seal_bytes(session(carol_kp, bob_kp), {"text": "still here"}))
            await carol.flush(10)
            await got.wait_for(1)
            assert [p["text"] for p in got.payloads] == ["still here"]
            await carol.close()
            await bob.close()

        asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        server.stop()


def test_what_expired_makes_room_in_an_in_process_queue() -> None:
    directory = LocalDirectory(HubLimits(max_queued_per_agent=2))
    directory.bind(AgentKeyPair.generate("bob").public_bundle(), None)
    soon = int(time.time() * 1000) + 100
    directory.enqueue("bob", b"stale 1", soon)
    directory.enqueue("bob", b"stale 2", soon)
    with pytest.raises(HubError, match="inbox full"):
        directory.enqueue("bob", b"too early")
    time.sleep(0.2)
    directory.enqueue("bob", b"after")
    assert [env for _, env in directory.pending("bob", 0, 10)] == [b"after"]
    assert directory.expired == 2
