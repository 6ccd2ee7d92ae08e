"""A message may carry an expiry (``send_payload(..., ttl=seconds)``), under the sender's
signature: the recipient drops it when it comes too late (an agent that was offline, a hub
that held it back) and reports it to its error handlers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agentmesh import Agent, AsyncAgent, LocalHub, MessageExpiredError
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


def test_an_offline_recipient_drops_what_expired_meanwhile(tmp_path: Path) -> None:
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as proc:
        address = f"127.0.0.1:{proc.port}"
        Agent("bob", hub=address, keypair_path=tmp_path / "bob.key").close()
        with Agent("alice", hub=address) as alice:
            alice.send_payload("bob", {"text": "stale"}, ttl=0.2)
            alice.send_payload("bob", {"text": "fresh"}, ttl=60)
            alice.flush(10)
        time.sleep(0.4)
        bob = Agent("bob", hub=address, keypair_path=tmp_path / "bob.key")
        got: list[str] = []
        errors: list[BaseException] = []
        bob.on_error(errors.append)
        bob.on_message(lambda msg: got.append(msg.text))
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        bob.close()
        assert got == ["fresh"] and [type(e) for e in errors] == [MessageExpiredError]


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
