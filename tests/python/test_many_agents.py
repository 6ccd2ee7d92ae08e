"""Many agents in one process share the receive workers: threads do not grow with the number
of agents, each agent's messages still reach its handlers in order and one at a time, and a
handler that blocks (waiting for a neighbour in the same process) stops no other agent."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agentmesh import Agent
from agentmesh.hubs import NetworkHub
from agentmesh.link import NetLoop
from agentmesh.link_receive_pool import STUCK_AFTER, ReceivePool
from agentmesh.testing import HubProcess


@pytest.fixture
def hub(tmp_path: Path):
    with HubProcess(tmp_path / "hub.sqlite3", log_level="warning").start() as proc:
        yield NetworkHub("127.0.0.1", proc.port)


def test_threads_do_not_grow_with_agents(hub: NetworkHub) -> None:
    before = threading.active_count()
    senders = [Agent(f"s{i}", hub=hub) for i in range(40)]
    receivers = [Agent(f"r{i}", hub=hub) for i in range(40)]
    got: dict[str, list[int]] = {r.agent_id: [] for r in receivers}
    lock = threading.Lock()
    all_in = threading.Event()
    per = 5

    def record(msg) -> None:
        with lock:
            got[msg.recipient].append(msg.payload["i"])
            if sum(map(len, got.values())) == per * len(receivers):
                all_in.set()

    for r in receivers:
        r.on_message(record)
    try:
        for i in range(per):
            for s, r in zip(senders, receivers, strict=True):
                s.send(r.agent_id, i=i)
        for s in senders:
            s.flush(30)
        assert all_in.wait(60), f"only {sum(map(len, got.values()))} messages arrived"
        # 80 agents: a thread each would add 80; the shared workers add a handful
        assert threading.active_count() - before < 20
        assert all(seen == list(range(per)) for seen in got.values()), got
    finally:
        for a in senders + receivers:
            a.close()


def test_a_blocked_handler_stops_no_other_agent_of_the_process(hub: NetworkHub) -> None:
    """alice's handler waits until bob's handler has run, in the same process: with one
    worker per process this would deadlock; the pool starts another worker instead."""
    carol = Agent("carol", hub=hub)
    alice = Agent("alice", hub=hub)
    bob = Agent("bob", hub=hub)
    bob_ran = threading.Event()
    alice_saw: list[bool] = []

    @alice.on_message
    def wait_for_bob(msg) -> None:
        alice_saw.append(bob_ran.wait(20))

    @bob.on_message
    def note(msg) -> None:
        bob_ran.set()

    try:
        carol.send("alice", text="first")
        carol.flush(10)
        time.sleep(0.2)  # alice's handler is blocked now
        carol.send("bob", text="second")
        carol.flush(10)
        assert bob_ran.wait(20), "bob's message waited behind alice's blocked handler"
        deadline = time.monotonic() + 10
        while not alice_saw and time.monotonic() < deadline:
            time.sleep(0.01)
        assert alice_saw == [True]
    finally:
        for a in (alice, bob, carol):
            a.close()


def test_one_agent_is_never_handled_on_two_workers_at_once(hub: NetworkHub) -> None:
    """Many small batches for one agent while the pool has spare workers: its handler never
    runs twice at the same time, and the order holds."""
    sender = Agent("sender", hub=hub)
    receiver = Agent("receiver", hub=hub)
    blocker = Agent("blocker", hub=hub)
    inside = [0]
    overlaps: list[int] = []
    seen: list[int] = []
    done = threading.Event()
    count = 300
    release = threading.Event()

    @blocker.on_message
    def hold(msg) -> None:  # keeps one worker busy, so the pool grows
        release.wait(20)

    @receiver.on_message
    def handle(msg) -> None:
        inside[0] += 1
        if inside[0] > 1:
            overlaps.append(inside[0])
        time.sleep(0.0005)
        seen.append(msg.payload["i"])
        inside[0] -= 1
        if len(seen) == count:
            done.set()

    try:
        sender.send("blocker", text="hold a worker")
        sender.flush(10)
        time.sleep(STUCK_AFTER * 5)
        for i in range(count):
            sender.send("receiver", i=i)
        sender.flush(30)
        assert done.wait(60), f"{len(seen)} of {count} arrived"
        assert not overlaps
        assert seen == list(range(count))
    finally:
        release.set()
        for a in (sender, receiver, blocker):
            a.close()


class _Blocking:
    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def drain(self) -> None:
        self.gate.wait(20)


class _Quick:
    def __init__(self, ran: threading.Event) -> None:
        self.ran = ran

    def drain(self) -> None:
        self.ran.set()


def _pool_with_a_stuck_worker(name: str) -> tuple[ReceivePool, threading.Event, threading.Event]:
    """A pool whose first worker is stuck (until ``gate`` is set), and a quick task scheduled
    after it; (the pool, gate, set when the quick task ran)."""
    pool = ReceivePool(name=name)
    gate, ran = threading.Event(), threading.Event()
    pool.schedule(_Blocking(gate))
    time.sleep(STUCK_AFTER * 3)
    assert pool.workers == 1
    pool.schedule(_Quick(ran))
    assert ran.wait(5), "a task waited behind a stuck worker"
    return pool, gate, ran


def test_pool_grows_only_when_its_workers_are_stuck() -> None:
    pool, gate, _ran = _pool_with_a_stuck_worker("test-pool")
    assert pool.workers == 2
    gate.set()


def test_a_worker_started_for_a_stuck_one_leaves_once_that_one_goes_on() -> None:
    """The extra worker is there while the first is stuck; once it goes on, one of the two
    leaves at once (not after IDLE_EXIT): a pause of the whole process must not leave two
    workers fighting for the interpreter lock."""
    pool, gate, ran = _pool_with_a_stuck_worker("test-pool-shrinks")
    assert pool.workers == 2  # (the first one is still stuck: the second stays)
    time.sleep(STUCK_AFTER * 2)
    assert pool.workers == 2
    gate.set()
    deadline = time.monotonic() + 5
    while pool.workers > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.workers == 1
    ran.clear()
    pool.schedule(_Quick(ran))
    assert ran.wait(5), "the remaining worker takes new work"


def test_the_network_loop_owns_one_pool_per_process() -> None:
    assert NetLoop.get().receive_pool is NetLoop.get().receive_pool
