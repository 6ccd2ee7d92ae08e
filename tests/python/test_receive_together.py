"""Several agents' batches unsealed in one pass (``link_unseal_together``,
``agent_receiving_together``): every agent gets exactly what unsealing its batch alone gives it
(messages in order, rejections in place, its session's state and counters), one agent's bad
envelope or busy lock changes nothing for the others, and the receive pool runs waiting unseal
stages together.
"""

from __future__ import annotations

import threading
import time

import pytest
from hubutil import eventually

import agentmesh.crypto as crypto_module
from agentmesh import Agent, LocalHub
from agentmesh.agent_receiving import Rejected
from agentmesh.agent_receiving_together import receive_batches_together
from agentmesh.crypto import Envelope
from agentmesh.errors import AuthenticationError, ReplayError, SignatureError
from agentmesh.hubs import NetworkHub
from agentmesh.link_receive_pool import MAX_TOGETHER, ReceivePool
from agentmesh.message import Message


def _seal(sender: Agent, to: str, text: str) -> Envelope:
    """Seal without delivering (the envelope a hub would carry)."""
    return sender._core.seal_for(to, {"text": text})


def _pairs(n: int):
    hub = LocalHub()
    receivers = [Agent(f"r{i}", hub=hub) for i in range(n)]
    senders = [Agent(f"s{i}", hub=hub) for i in range(n)]
    for receiver in receivers:
        receiver.on_message(lambda msg: None)
    for i, sender in enumerate(senders):
        sender.send(f"r{i}", text="hello")  # (sessions exist: LocalHub delivered these)
    return hub, receivers, senders


@pytest.fixture
def native_calls(monkeypatch):
    """The batches each ``unseal_across`` call was given (sessions, sizes)."""
    calls: list[list[int]] = []
    real = crypto_module.unseal_across

    def counting(batches):
        calls.append([len(envs) for _session, envs in batches])
        return real(batches)

    monkeypatch.setattr(crypto_module, "unseal_across", counting)
    return calls


def _texts(outcomes) -> list:
    return [o.text if isinstance(o, Message) else type(o.error).__name__ for o in outcomes]


def test_batches_of_many_agents_open_in_one_call_each_as_alone(native_calls):
    _hub, receivers, senders = _pairs(5)
    batches = [[_seal(s, f"r{i}", f"{i}-{j}") for j in range(i + 1)] for i, s in enumerate(senders)]
    results = receive_batches_together(
        [(r._core, envs) for r, envs in zip(receivers, batches, strict=True)]
    )
    assert [_texts(out) for out in results] == [
        [f"{i}-{j}" for j in range(i + 1)] for i in range(5)
    ]
    assert native_calls == [[1, 2, 3, 4, 5]]  # one call, every agent's run in it
    for i, (r, out) in enumerate(zip(receivers, results, strict=True)):
        assert r.status()["received"] == 1 + i + 1
        # held from saves until the handlers ran (receive_batch(dispatch=False)'s rule)
        assert r._core._unhandled[f"s{i}"] == i + 1
        r._core.handled_from(f"s{i}", len(out))
        assert f"s{i}" not in r._core._unhandled
        # each session moved on exactly as far as its own messages
        assert r._core.receive_batch([_seal(senders[i], f"r{i}", "next")])[0].text == "next"


def test_a_bad_envelope_of_one_agent_is_rejected_in_place_and_the_others_open(native_calls):
    _hub, receivers, senders = _pairs(4)
    old = _seal(senders[2], "r2", "old")
    receivers[2]._core.receive_batch([old])
    batches = [[_seal(s, f"r{i}", f"{i}-{j}") for j in range(3)] for i, s in enumerate(senders)]
    tampered = bytearray(_seal(senders[1], "r1", "evil").to_bytes())
    tampered[-3] ^= 0x40
    batches[1].insert(1, Envelope.from_bytes(bytes(tampered)))
    batches[2].insert(2, old)  # a replay
    results = receive_batches_together(
        [(r._core, envs) for r, envs in zip(receivers, batches, strict=True)]
    )
    texts = [_texts(out) for out in results]
    assert texts[0] == ["0-0", "0-1", "0-2"] and texts[3] == ["3-0", "3-1", "3-2"]
    assert texts[1][0] == "1-0" and texts[1][2:] == ["1-1", "1-2"]
    assert isinstance(results[1][1], Rejected)
    assert isinstance(results[1][1].error, (AuthenticationError, SignatureError))
    assert texts[2][:2] == ["2-0", "2-1"] and texts[2][3] == "2-2"
    assert isinstance(results[2][2], Rejected) and isinstance(results[2][2].error, ReplayError)
    assert len(native_calls) == 1
    # nothing the rejections did stays: every session opens its next message
    for i, r in enumerate(receivers):
        assert r._core.receive_batch([_seal(senders[i], f"r{i}", "after")])[0].text == "after"


@pytest.mark.parametrize("step", ["count_opened", "results_of"])
def test_a_failure_in_one_agents_part_fails_only_that_agents_batch(native_calls, step):
    _hub, receivers, senders = _pairs(3)
    batches = [[_seal(s, f"r{i}", f"{i}-{j}") for j in range(2)] for i, s in enumerate(senders)]
    broken = receivers[1]._core

    def fail(*args, **kwargs):
        raise RuntimeError(f"{step} broke")

    setattr(broken, step, fail)
    results = receive_batches_together(
        [(r._core, envs) for r, envs in zip(receivers, batches, strict=True)]
    )
    assert isinstance(results[1], RuntimeError)  # (its batch comes again: Retry upstream)
    assert [_texts(results[0]), _texts(results[2])] == [["0-0", "0-1"], ["2-0", "2-1"]]
    assert native_calls == [[2, 2, 2]]


def test_an_agent_whose_lock_is_busy_goes_alone_after_the_others(native_calls):
    _hub, receivers, senders = _pairs(3)
    batches = [[_seal(s, f"r{i}", f"{i}-{j}") for j in range(2)] for i, s in enumerate(senders)]
    busy = receivers[1]._core._lock
    busy.acquire()  # (another thread sealing for this agent, say)
    released = threading.Timer(0.3, busy.release)
    released.start()
    try:
        results = receive_batches_together(
            [(r._core, envs) for r, envs in zip(receivers, batches, strict=True)]
        )
    finally:
        released.join()
    assert [_texts(out) for out in results] == [[f"{i}-{j}" for j in range(2)] for i in range(3)]
    assert native_calls == [[2, 2]]  # the busy agent's run was not in the shared call


def test_first_contact_and_group_or_unparsed_batches_take_their_agents_own_path(native_calls):
    hub, receivers, senders = _pairs(3)
    newcomer = Agent("newcomer", hub=hub)
    batches = [[_seal(s, f"r{i}", f"{i}-0")] for i, s in enumerate(senders)]
    batches[0].insert(0, _seal(newcomer, "r0", "hi"))  # a first contact, then a known sender
    batches[2] = [b.to_bytes() for b in batches[2]]  # not parsed: the agent's own path
    results = receive_batches_together(
        [(r._core, envs) for r, envs in zip(receivers, batches, strict=True)]
    )
    assert [_texts(out) for out in results] == [["hi", "0-0"], ["1-0"], ["2-0"]]
    assert native_calls == [[1, 1]]  # r0's known run and r1's; r2 alone
    assert "newcomer" in receivers[0].status()["active_sessions"]


# -- the pool ----------------------------------------------------------------------------------


class _Task:
    def __init__(self, name: str, together=None, log=None) -> None:
        self.name = name
        self.together = together
        self.log = log

    def drain(self) -> None:
        self.log.append(("alone", self.name))


def test_the_pool_runs_waiting_tasks_together_up_to_the_bound_and_every_task_once():
    log: list = []
    gate = threading.Event()
    groups: list[list[str]] = []

    def together(tasks) -> None:
        groups.append([t.name for t in tasks])

    class Blocker:
        together = None

        def drain(self) -> None:
            gate.wait(10)

    pool = ReceivePool("test-together")
    pool.schedule(Blocker())  # the one worker is busy: what follows waits in the queue
    time.sleep(0.05)
    n = MAX_TOGETHER + 10
    tasks = []
    for i in range(n):
        tasks.append(_Task(f"u{i}", together, log))
        if i % 10 == 0:
            tasks.append(_Task(f"h{i}", None, log))
    pool.schedule_many(tasks)
    gate.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        sum(map(len, groups)) + sum(1 for kind, _ in log if kind == "alone") < len(tasks)
    ):
        time.sleep(0.01)
    together_names = [name for group in groups for name in group]
    assert sorted(together_names + [name for _kind, name in log if name.startswith("u")]) == sorted(
        t.name for t in tasks if t.name.startswith("u")
    )
    assert len(together_names) == len(set(together_names))  # each task once
    assert max(map(len, groups)) == MAX_TOGETHER  # the bound holds
    assert [name for _kind, name in log if name.startswith("h")] == [
        t.name for t in tasks if t.name.startswith("h")
    ]  # the others keep their order


def test_tasks_queued_behind_a_blocking_one_go_to_an_idle_worker():
    """``schedule_next_many`` queues a pass's handle stages on its own worker; if the first
    blocks (a handler waiting), the watcher hands the others to an idle worker."""
    pool = ReceivePool("test-behind")
    slow_done = threading.Event()

    class Run:
        together = None

        def __init__(self, fn) -> None:
            self.fn = fn

        def drain(self) -> None:
            self.fn()

    pool.schedule(Run(lambda: time.sleep(0.4)))  # two workers: one blocks, another starts
    time.sleep(0.02)
    pool.schedule(Run(lambda: None))
    deadline = time.monotonic() + 10
    while pool.workers < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # (both idle now)
    ran: list[bool] = []

    def slow() -> None:
        time.sleep(3.0)
        slow_done.set()

    def quick() -> None:
        ran.append(slow_done.is_set())

    pool.schedule(Run(lambda: pool.schedule_next_many([Run(slow), Run(quick)])))
    assert slow_done.wait(10)
    assert ran == [False]  # the quick task did not wait for the blocking one


# -- end to end, over a network hub -------------------------------------------------------------


def test_network_agents_of_one_process_receive_in_passes_in_order_exactly_once(
    make_server, monkeypatch
):
    """While one agent's handler holds its worker, the others' batches wait on the pool and
    the next worker opens them in one pass; every message arrives once, in order, and one
    agent's tampered envelope is rejected in its place."""
    from agentmesh import link_unseal_together

    passes: list[int] = []
    real = link_unseal_together.open_together

    def counting(openings):
        passes.append(len(openings))
        return real(openings)

    monkeypatch.setattr(link_unseal_together, "open_together", counting)
    server = make_server()
    n, per = 12, 30
    net_r, net_s = NetworkHub("127.0.0.1", server.port), NetworkHub("127.0.0.1", server.port)
    receivers = [Agent(f"r{i}", hub=net_r) for i in range(n)]
    senders = [Agent(f"s{i}", hub=net_s) for i in range(n)]
    got: list[list[str]] = [[] for _ in range(n)]
    errors: list[list[BaseException]] = [[] for _ in range(n)]
    hold = threading.Event()

    def handler_for(i: int):
        def handle(msg) -> None:
            if i == 0 and msg.text == "block":
                hold.wait(0.5)  # (its worker busy: the others queue up)
            got[i].append(msg.text)

        return handle

    for i, r in enumerate(receivers):
        r.on_message(handler_for(i))
        r.on_error(errors[i].append)
    for i, s in enumerate(senders):
        s.send(f"r{i}", text="hello")
        s.flush(30)
    assert eventually(lambda: all(len(g) == 1 for g in got))
    senders[0].send("r0", text="block")
    senders[0].flush(30)
    time.sleep(0.05)
    for j in range(per):
        for i, s in enumerate(senders):
            s.send(f"r{i}", text=f"m{j}")
            if i == 3 and j == per // 2:
                raw = bytearray(_seal(s, "r3", "evil").to_bytes())
                raw[-2] ^= 0x01
                s._core._transmit(Envelope.from_bytes(bytes(raw)))
    for s in senders:
        s.flush(30)
    hold.set()
    expected = [f"m{j}" for j in range(per)]
    assert eventually(lambda: all(len(g) >= per + 1 for g in got) and errors[3])
    assert got[0] == ["hello", "block", *expected]
    assert all(g == ["hello", *expected] for g in got[1:])
    assert [len(e) for e in errors] == [0, 0, 0, 1] + [0] * (n - 4)
    assert max(passes) > 1  # agents were opened together
    for agent in receivers + senders:
        agent.close()
    net_r.close()
    net_s.close()


def _receiver_of(agent: Agent):
    return agent._core._transport.receiver


def test_network_a_pass_gives_back_a_first_contact_and_a_busy_agent_and_goes_on(make_server):
    """A batch whose sender must be looked up at the hub (slowly, here) and an agent whose
    prekey maintenance holds its lock are given back to run alone: the other agents' messages
    reach their handlers meanwhile, and nothing is lost."""
    server = make_server()
    n = 8
    net_r, net_s = NetworkHub("127.0.0.1", server.port), NetworkHub("127.0.0.1", server.port)
    receivers = [Agent(f"r{i}", hub=net_r) for i in range(n)]
    senders = [Agent(f"s{i}", hub=net_s) for i in range(n)]
    newcomer = Agent("newcomer", hub=net_s)
    got: list[list[tuple[str, float]]] = [[] for _ in range(n)]
    hold = threading.Event()

    def handler_for(i: int):
        def handle(msg) -> None:
            if i == 0 and msg.text == "block":
                hold.wait(0.5)  # (its worker busy: the others' batches queue up for a pass)
            got[i].append((msg.text, time.monotonic()))

        return handle

    for i, r in enumerate(receivers):
        r.on_message(handler_for(i))
    for i, s in enumerate(senders):
        s.send(f"r{i}", text="hello")
        s.flush(30)
    assert eventually(lambda: all(len(g) == 1 for g in got))
    looked_up: list[float] = []
    slow_core = receivers[1]._core
    real_lookup = slow_core._lookup_bundle

    def slow_lookup(agent_id):
        time.sleep(2.0)
        looked_up.append(time.monotonic())
        return real_lookup(agent_id)

    slow_core._lookup_bundle = slow_lookup
    busy = _receiver_of(receivers[2]).between_batches
    senders[0].send("r0", text="block")
    senders[0].flush(30)
    time.sleep(0.05)
    busy.acquire()
    try:
        newcomer.send("r1", text="first contact")
        for i, s in enumerate(senders):
            s.send(f"r{i}", text="m")
        newcomer.flush(30)
        for s in senders:
            s.flush(30)
        hold.set()
        others = [g for i, g in enumerate(got) if i not in (1, 2)]
        assert eventually(lambda: all(len(g) >= 2 for g in others) and len(got[1]) >= 2)
        assert len(got[2]) == 1  # (its lock is held: given back, waiting)
    finally:
        busy.release()
    assert eventually(lambda: len(got[2]) == 2 and len(got[1]) == 3)
    assert [t for t, _ in got[1]] == ["hello", "first contact", "m"]
    assert [t for t, _ in got[2]] == ["hello", "m"]
    # the agents after the slow lookup did not wait for it
    assert looked_up and all(g[-1][1] < looked_up[0] for g in others)
    for agent in [*receivers, *senders, newcomer]:
        agent.close()
    net_r.close()
    net_s.close()
