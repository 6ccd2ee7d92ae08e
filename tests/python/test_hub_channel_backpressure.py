"""Backpressure on a shared connection: a channel that must stop taking frames (its uncommitted
bytes over the limit, the connection's output over its buffer) pauses reading the connection,
and reading resumes by itself once the store or the peer catches up; nothing is lost or
reordered on the way."""

from __future__ import annotations

import pytest
from conftest import ServerFactory
from hubutil import HOST, Collector, new_keypair, seal_bytes, session
from test_hub_channels import shared
from test_hub_server import run

from agentmesh.hub_client import HubClient

AGENTS = 6
MESSAGES = 20


def ring_traffic(srv: object, pad: int, *, channels: bool = True) -> None:
    """Six agents on one shared connection (or each on its own), each sending MESSAGES to the
    next, a round at a time: every round's flushes return, and every message arrives, in
    order."""
    keys = [new_keypair(f"bp{i}") for i in range(AGENTS)]

    async def go() -> None:
        if channels:
            _pool, make = shared(srv)  # type: ignore[arg-type]
            clients = [make() for _ in keys]
        else:
            port = srv.port  # type: ignore[attr-defined]
            clients = [HubClient(HOST, port, max_backoff=0.2) for _ in keys]
        inboxes = [Collector(session(keys[i], keys[(i - 1) % AGENTS])) for i in range(AGENTS)]
        for c, kp, inbox in zip(clients, keys, inboxes, strict=True):
            await c.register(kp, inbox)
        for n in range(MESSAGES):
            # (a round at a time: what the hub reads after a pause must wait for its resume)
            for i, c in enumerate(clients):
                sess = session(keys[i], keys[(i + 1) % AGENTS])
                payload = {"n": n, "from": i, "pad": "x" * pad}
                await c.send(f"bp{(i + 1) % AGENTS}", seal_bytes(sess, payload))
            for c in clients:
                await c.flush(10)
        for i, inbox in enumerate(inboxes):
            await inbox.wait_for(MESSAGES)
            assert [p["n"] for p in inbox.payloads] == list(range(MESSAGES))
            assert {p["from"] for p in inbox.payloads} == {(i - 1) % AGENTS}
        for c in clients:
            await c.close()

    run(go())


def test_channels_over_their_uncommitted_bytes_read_again_after_each_commit(
    make_server: ServerFactory,
):
    """With room for one uncommitted byte, every SEND pauses its channel (and so the shared
    connection) until its commit: the commit's acknowledgement lets the channel read again."""
    ring_traffic(make_server(max_uncommitted_bytes=1), pad=200)


@pytest.mark.parametrize("channels", [True, False], ids=["shared", "own connections"])
def test_frames_wait_while_the_connections_output_is_full(
    make_server: ServerFactory, channels: bool
):
    """With a one-byte output buffer, a channel's frames wait in its backlog whenever the shared
    connection has output not yet written (an agent's own connection's likewise), and are taken
    once it is written."""
    ring_traffic(make_server(max_write_buffer=1), pad=2000, channels=channels)
