"""Agents on a three-node NATS cluster while nodes die (real nats-servers, SIGKILL by pid).

* The stream leader is killed while several agents send: every envelope their ``flush``
  saw acknowledged reaches the recipient's handler exactly once, in each sender's order.
* Two of three nodes down: ``flush`` raises a clear timeout; once they are back, the
  envelopes go through.

Longer campaigns (more kills, more envelopes, the consumer leader, rolling restarts):
``python scripts/nats_campaign.py``.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest
from natsutil import stream_leader, wait_until

from agentmesh import Agent, FlushTimeoutError, NatsHub
from agentmesh.nats_cluster import NatsCluster
from agentmesh.nats_layout import NatsLayout

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
pytest.importorskip("nats", reason="the NATS tests need nats-py (pip install -e '.[dev]')")


@pytest.fixture
def cluster(tmp_path):
    with NatsCluster(tmp_path / "nats", nodes=3) as running:
        yield running


def received_by_sender(messages: list) -> dict[str, list[int]]:
    by_sender: dict[str, list[int]] = {}
    for msg in messages:
        by_sender.setdefault(msg.sender, []).append(msg.payload["n"])
    return by_sender


def test_killing_the_stream_leader_loses_nothing_and_keeps_each_senders_order(cluster):
    hub = NatsHub(cluster.urls, timeout=30.0)
    count, senders = 400, 3
    bob = Agent("bob", hub=hub)
    got: list = []
    lock = threading.Lock()

    def collect(msg) -> None:
        with lock:
            got.append(msg)

    bob.on_message(collect)
    alices = [Agent(f"alice{i}", hub=hub) for i in range(senders)]
    leader = cluster.node(stream_leader(cluster.urls, NatsLayout().stream))
    sent = [0] * senders

    def send(index: int) -> None:
        for n in range(count):
            alices[index].send("bob", text="x", n=n)
            sent[index] = n + 1
            if n % 50 == 0:
                time.sleep(0.01)  # (so that the kill lands while they send)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    wait_until(lambda: min(sent) >= count // 3, what="a third sent")
    leader.kill()
    for thread in threads:
        thread.join(60)
    cluster.restart(leader)
    for alice in alices:
        alice.flush(60)  # every envelope acknowledged by the cluster
    wait_until(lambda: len(got) >= count * senders, timeout=60, what="every envelope")
    time.sleep(0.5)  # (a duplicate would come now)
    by_sender = received_by_sender(got)
    for i in range(senders):
        assert by_sender[f"alice{i}"] == list(range(count))
    assert bob.status()["rejected"] == 0
    for agent in (*alices, bob):
        agent.close()
    hub.close()


def test_with_two_of_three_nodes_down_flush_times_out_and_recovers(cluster):
    hub = NatsHub(cluster.urls, timeout=30.0)
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    got: list = []
    bob.on_message(got.append)
    alice.send("bob", text="before", n=0)
    alice.flush(30)
    down = cluster.nodes[1:]
    for node in down:
        node.kill()
    for n in range(1, 4):
        alice.send("bob", text="while down", n=n)
    with pytest.raises(FlushTimeoutError, match="alice"):
        alice.flush(3)
    for node in down:
        node.start()
    cluster.wait_healthy(down)
    alice.flush(60)
    wait_until(lambda: len(got) >= 4, timeout=60, what="the resent envelopes")
    assert [m.payload["n"] for m in got] == [0, 1, 2, 3]
    alice.close(), bob.close()
    hub.close()


def test_a_delivery_held_by_a_dead_process_is_not_overtaken(tmp_path):
    """An earlier process of bob fetched an envelope and died before acknowledging it: the
    consumer hands it out again only after the ack wait, and newer ones before that. Bob's
    next backend must still hand them over in order (the agent skips by position: the old
    one handed over last would be taken for a redelivery and dropped)."""
    import asyncio

    from test_backend_contract import Receiver, registered, sealed, send_all

    from agentmesh.crypto import AgentKeyPair
    from agentmesh.nats_backend import NatsBackend

    layout = NatsLayout()
    alice, bob = AgentKeyPair.generate("alice"), AgentKeyPair.generate("bob")
    envelopes = sealed(alice, bob, 3)

    class Deployment:
        def new_backend(self) -> NatsBackend:
            return NatsBackend(cluster.urls, request_timeout=30.0)

    async def main() -> list:
        import nats

        deployment = Deployment()
        async with registered(deployment, bob):
            pass
        async with registered(deployment, alice) as a:
            await send_all(a, "bob", envelopes[:1])
            nc = await nats.connect(servers=cluster.urls)  # bob's earlier process
            pull = await nc.jetstream().pull_subscribe_bind(
                durable=layout.consumer("bob"), stream=layout.stream
            )
            assert [m.data for m in await pull.fetch(1, timeout=10)] == envelopes[:1]
            await nc.close()  # dies holding it
            await send_all(a, "bob", envelopes[1:])
        got = Receiver()
        async with registered(deployment, bob, got):
            await got.wait_for(3)
        return [envelope for _, envelope in got.deliveries]

    with NatsCluster(tmp_path / "nats", nodes=1) as cluster:
        assert asyncio.run(asyncio.wait_for(main(), 90)) == envelopes


def test_publishes_left_unanswered_time_out_and_are_resent_in_order(tmp_path):
    """A server that stops answering (SIGSTOP: the connection stays up, silent) leaves every
    publish in flight without an acknowledgement: each times out, is resent in order once
    the server answers again, and the stream drops the resends of what it stored after all."""
    import logging
    import os
    import signal

    with NatsCluster(tmp_path / "nats", nodes=1) as single:
        hub = NatsHub(single.urls, timeout=30.0)
        got: list = []
        bob = Agent("bob", hub=hub)
        bob.on_message(got.append)
        alice = Agent("alice", hub=hub)
        alice.send("bob", text="x", n=0)
        alice.flush(20)
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("agentmesh.nats").addHandler(handler)
        logging.getLogger("agentmesh.nats").setLevel(logging.INFO)
        node = single.nodes[0]
        os.kill(node.pid, signal.SIGSTOP)
        try:
            for n in range(1, 51):
                alice.send("bob", text="x", n=n)
            with pytest.raises(FlushTimeoutError):
                alice.flush(6.5)  # (a publish counts as lost after 5 s)
        finally:
            os.kill(node.pid, signal.SIGCONT)
            logging.getLogger("agentmesh.nats").removeHandler(handler)
        alice.flush(30)
        wait_until(lambda: len(got) >= 51, 30, "bob's messages")
        time.sleep(0.5)
        assert [msg.payload["n"] for msg in got] == list(range(51))
        assert any("no acknowledgement in time" in line for line in records), records
        alice.close(), bob.close(), hub.close()
