"""Pacing (``link_pacing``): under load, an agent takes its next batch a little later, so that
more is in it; never when the pool is quiet, never for a large batch, never while the agent
waits for a reply (one that starts waiting ends its pace at once), and the backend hands over
nothing newer during a pace."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from hubutil import eventually

from agentmesh import Agent
from agentmesh.hubs import NetworkHub
from agentmesh.link import NetLoop
from agentmesh.link_pacing import BUSY_QUEUE, PACE_BELOW, PACE_SECONDS, PACE_TICK, Pacing
from agentmesh.link_receive_pool import ReceivePool


class _Blocking:
    """A task that holds its worker until released (so that later ones queue)."""

    together = None

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.started = threading.Event()

    def drain(self) -> None:
        self.started.set()
        self.release.wait(10)


@pytest.fixture
def busy_pool() -> Iterator[ReceivePool]:
    """A real pool whose only worker is held, with BUSY_QUEUE tasks waiting behind it."""
    pool = ReceivePool("test-pacing")
    release = threading.Event()
    first = _Blocking(release)
    pool.schedule(first)
    assert first.started.wait(5)
    pool.schedule_many([_Blocking(release) for _ in range(BUSY_QUEUE)])
    assert pool.queued() >= BUSY_QUEUE
    yield pool
    release.set()


def _on_loop(net: NetLoop, make):
    """Run ``make()`` on the network thread; returns what it returned."""

    async def call():
        return make()

    return net.submit(call()).result(5)


def _waited(net: NetLoop, waiter) -> float:
    """Seconds until ``waiter`` completes (awaited on the network thread)."""

    async def wait() -> float:
        start = time.monotonic()
        await waiter
        return time.monotonic() - start

    return net.submit(wait()).result(5)


def test_a_small_batch_is_paced_only_while_the_pool_is_busy(busy_pool):
    net = NetLoop.get()
    quiet = Pacing(net, ReceivePool("test-quiet"), lambda: False)
    assert _on_loop(net, lambda: quiet.pace(1)) is None  # (nothing waits for its workers)
    busy = Pacing(net, busy_pool, lambda: False)
    assert _on_loop(net, lambda: busy.pace(PACE_BELOW)) is None  # (a batch large enough)
    waiter = _on_loop(net, lambda: busy.pace(1))
    assert waiter is not None
    took = _waited(net, waiter)
    assert PACE_SECONDS * 0.9 <= took <= PACE_SECONDS + PACE_TICK + 0.5


def test_an_agent_waiting_for_a_reply_is_never_paced_and_a_wait_cuts_a_pace(busy_pool):
    net = NetLoop.get()
    waits = {"on": True}
    pacing = Pacing(net, busy_pool, lambda: waits["on"])
    assert _on_loop(net, lambda: pacing.pace(1)) is None
    waits["on"] = False
    waiter = _on_loop(net, lambda: pacing.pace(1))
    assert waiter is not None and not waiter.done()
    pacing.cut()  # (from this thread, as a request() or close() does)
    assert _waited(net, waiter) < PACE_SECONDS


def test_network_agents_paced_under_load_get_every_message_once_in_order_and_replies_at_once(
    make_server, monkeypatch
):
    """Agents of one process, their pool held busy: batches are paced, and still every message
    reaches its handler once, in order, and a request made meanwhile gets its reply (that an
    agent waiting for a reply is never paced is the test above)."""
    paced: list[int] = []
    real = Pacing.pace

    def counting(self, size):
        waiter = real(self, size)
        if waiter is not None:
            paced.append(size)
        return waiter

    monkeypatch.setattr(Pacing, "pace", counting)
    server = make_server()
    net_r, net_s = NetworkHub("127.0.0.1", server.port), NetworkHub("127.0.0.1", server.port)
    n, per = BUSY_QUEUE * 3, 30
    receivers = [Agent(f"r{i}", hub=net_r) for i in range(n)]
    senders = [Agent(f"s{i}", hub=net_s) for i in range(n)]
    got: list[list[int]] = [[] for _ in range(n)]

    def handler_for(i: int):
        def handle(msg) -> None:
            if msg.payload.get("ask"):
                msg.reply(ok=True)
                return
            got[i].append(msg.payload["n"])
            time.sleep(0.002)  # (slow handlers: agents queue up for the workers)

        return handle

    for i, r in enumerate(receivers):
        r.on_message(handler_for(i))
    for i, s in enumerate(senders):
        s.send_payload(f"r{i}", {"n": -1})
        s.flush(30)
    assert eventually(lambda: all(len(g) == 1 for g in got))
    for j in range(per):
        for i, s in enumerate(senders):
            s.send_payload(f"r{i}", {"n": j})
    for s in senders:
        s.flush(30)
    # meanwhile, r0 asks r1 (both of the busy process): never paced while it waits
    start = time.monotonic()
    answer = receivers[0].request("r1", ask=True, timeout=30)
    asked = time.monotonic() - start
    assert answer.payload["ok"] is True
    assert eventually(lambda: all(len(g) == per + 1 for g in got), timeout=60)
    assert all(g == list(range(-1, per)) for g in got)
    assert paced, "no batch was paced: the pool was never busy"
    assert asked < 10
    for agent in receivers + senders:
        agent.close()
    net_r.close()
    net_s.close()
