"""The in-process hub through the backend seam: ``LocalHub``'s directory serves both its
synchronous agents and ``LocalBackend``s (the conformance suite runs on the latter too), and
its id rule is documented: bound while held or queued for, free once neither."""

from __future__ import annotations

import asyncio

import pytest

from agentmesh import Agent, LocalHub
from agentmesh.backend import Delivery
from agentmesh.crypto import AgentKeyPair, Envelope, perform_key_exchange
from agentmesh.errors import HubError


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_an_id_with_queued_envelopes_keeps_its_key() -> None:
    hub = LocalHub()
    bob, impostor, alice = (AgentKeyPair.generate(n) for n in ("bob", "bob", "alice"))

    async def main() -> None:
        held = hub.new_backend()
        await held.register(bob, on_batch=_ignore)
        await held.close()
        sender = hub.new_backend()
        await sender.register(alice, on_batch=_ignore)
        session = perform_key_exchange(alice, bob.public_bundle())
        sender.send_nowait("bob", bytes(session.seal({"n": 1}).to_bytes()))
        await sender.flush()
        with pytest.raises(HubError, match="another identity key"):
            await hub.new_backend().register(impostor, on_batch=_ignore)
        take = Collector()
        owner = hub.new_backend()
        await owner.register(bob, on_batch=take)
        await asyncio.wait_for(take.arrived.wait(), 10)
        await owner.close()
        assert len(take.got) == 1
        # held by nobody, nothing queued: a test may now play bob with a new key
        again = hub.new_backend()
        await again.register(impostor, on_batch=_ignore)
        await again.close()
        await sender.close()

    run(main())


async def _ignore(batch: list[Delivery]) -> None:
    return None


class Collector:
    """An ``on_batch`` that keeps what arrives (acknowledged at once)."""

    def __init__(self) -> None:
        self.got: list[Delivery] = []
        self.arrived = asyncio.Event()

    async def __call__(self, batch: list[Delivery]) -> None:
        self.got.extend(batch)
        self.arrived.set()


def test_local_hub_agents_and_backends_reach_each_other() -> None:
    hub = LocalHub()
    alice = Agent("alice", hub=hub)
    bob_keys = AgentKeyPair.generate("bob")
    heard: list[str] = []
    alice.on_message(lambda msg: heard.append(msg.text))

    async def main() -> None:
        take = Collector()
        bob = hub.new_backend()
        await bob.register(bob_keys, on_batch=take)
        # an agent's send to a backend queues for it (sent from another thread: the agent
        # API blocks)
        await asyncio.to_thread(alice.send, "bob", text="to the backend")
        await asyncio.wait_for(take.arrived.wait(), 10)
        assert Envelope.from_bytes(take.got[0][1]).sender == "alice"
        # and a backend's send runs the agent's handlers, as LocalHub.deliver does
        session = perform_key_exchange(bob_keys, alice.public_bundle)
        bob.send_nowait("alice", bytes(session.seal({"text": "to the agent"}).to_bytes()))
        await bob.flush()
        await bob.close()

    run(main())
    assert heard == ["to the agent"]
    assert hub.message_count() == 2
    alice.close()


def test_a_closed_local_agent_is_not_found_and_its_id_may_take_a_new_key() -> None:
    hub = LocalHub()
    bob = Agent("bob", hub=hub)
    alice = Agent("alice", hub=hub)
    alice.send("bob", text="hi")
    bob.close()
    with pytest.raises(ValueError, match="Peer 'bob' not found on hub"):
        alice.send("bob", text="anyone?")
    assert "bob" not in hub.list_agents()
    new_bob = Agent("bob", hub=hub)  # a lost key, played (peers that pinned the old one see
    # the identity-changed error on their next look-up)
    assert hub.get_bundle("bob")["identity_key"] == new_bob.public_bundle["identity_key"]
    new_bob.close()
    alice.close()


def test_one_group_upload_reaches_local_agents_and_backends_alike() -> None:
    """A fan-out to a LocalHub agent (bob: his handlers run at once) and a backend (carol: her
    copy queues, addressed to her) and an id nobody holds (named in the refusal)."""
    hub = LocalHub()
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    carol_keys = AgentKeyPair.generate("carol")
    heard: list[str] = []
    bob.on_message(lambda msg: heard.append(msg.text))

    async def main() -> None:
        take = Collector()
        carol = hub.new_backend()
        await carol.register(carol_keys, on_batch=take)
        team = await asyncio.to_thread(alice.create_group, "team", ["bob", "carol"])
        await asyncio.to_thread(team.send, text="warm-up")  # (sender keys go pairwise first)
        uploads, queued = hub.directory.uploads, len(take.got)
        env = await asyncio.to_thread(team.send, text="to both")
        assert hub.directory.uploads - uploads == 1
        while len(take.got) < queued + 1:
            take.arrived.clear()
            await asyncio.wait_for(take.arrived.wait(), 10)
        copy = take.got[-1][1]
        assert copy == env.to_bytes_for("carol")
        refused = hub.directory.enqueue_group(["bob", "ghost"], env.to_unaddressed_bytes())
        assert [e.recipient for e in refused] == ["ghost"]
        await carol.close()

    run(main())
    assert heard[:2] == ["warm-up", "to both"]
    alice.close()
    bob.close()
