"""The pull requests of our own (agentmesh.nats_pull): a request for the next batch waits at
the consumer while the current one is handled, so an agent may hold more deliveries than it
handles. Positions come from the acknowledgement subject. Real nats-servers on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("nats", reason="the NATS tests need nats-py (pip install -e '.[dev]')")

from agentmesh.nats_cluster import NatsCluster
from agentmesh.nats_pull import positions


def test_positions_are_read_from_the_acknowledgement_subject_of_this_consumer_only():
    assert positions("$JS.ACK.S.c.1.57.12.1712345678901234567.3", "S", "c") == (12, 57)
    domain = "$JS.ACK.hub.ACCOUNTHASH.S.c.2.58.13.1712345678901234567.0.tok"
    assert positions(domain, "S", "c") == (13, 58)
    for bad in (
        "$JS.ACK.S.c.1",
        "_INBOX.abc.1",
        "$JS.ACK.S.c.1.x.12.1.3",
        "$JS.ACK.S.other.1.57.12.1712345678901234567.3",  # another consumer's
        "$JS.ACK.T.c.1.57.12.1712345678901234567.3",
        "_INBOX.ACK.S.c.1.57.12.1712345678901234567.3",
    ):
        with pytest.raises(ValueError):
            positions(bad, "S", "c")


def test_deliveries_held_by_a_dead_pipelined_receiver_are_not_overtaken(tmp_path):
    """Bob's earlier backend handles envelope 0 (and never finishes) while its next request
    already brought envelopes 1 and 2; then its connection dies without acknowledging any.
    The consumer hands those three out again only after the ack wait, and 3 and 4 (sent
    meanwhile) at once: bob's next backend must still hand over 0..4 in order."""
    from test_backend_contract import Receiver, registered, sealed, send_all

    from agentmesh.crypto import AgentKeyPair
    from agentmesh.nats_backend import NatsBackend

    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")
    envelopes = sealed(alice, bob, 5)

    class Deployment:
        def new_backend(self) -> NatsBackend:
            return NatsBackend(cluster.urls, request_timeout=30.0)

    async def main() -> list[bytes]:
        deployment = Deployment()
        handling = asyncio.Event()

        async def never_done(batch: list) -> asyncio.Future[None]:
            handling.set()
            return asyncio.get_running_loop().create_future()  # (handled forever)

        async with registered(deployment, bob):
            pass
        async with registered(deployment, alice) as a:
            earlier = deployment.new_backend()
            await earlier.register(bob, on_batch=never_done)
            await send_all(a, "bob", envelopes[:1])
            await asyncio.wait_for(handling.wait(), 20)
            await send_all(a, "bob", envelopes[1:3])
            receiver = earlier._receiver
            assert receiver is not None
            for _ in range(200):  # (the waiting request brings them while 0 is handled)
                if len(receiver.puller.arrived) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(receiver.puller.arrived) == 2
            for task in earlier._tasks:  # dies: nothing acknowledged, nothing given back
                task.cancel()
            await earlier._nc.close()
            await send_all(a, "bob", envelopes[3:])
        got = Receiver()
        async with registered(deployment, bob, got):
            await got.wait_for(5)
            await asyncio.sleep(0.5)  # (nothing more comes)
        return [envelope for _, envelope in got.deliveries]

    with NatsCluster(tmp_path / "nats", nodes=1) as cluster:
        assert asyncio.run(asyncio.wait_for(main(), 90)) == envelopes
