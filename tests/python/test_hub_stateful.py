"""Stateful property test (hypothesis): agents on a real hub process that is restarted and
crashed at random points, while agents send, flush, disconnect and reconnect.

The hub runs as its own process (``python -m agentmesh.hub_server``, via ``hubutil.HubProcess``)
on 127.0.0.1 with a store in a temporary directory, so a restart can be a clean stop (SIGTERM)
or a crash (SIGKILL), always on the same port and store. Three persistent agents
(``keypair_path``) talk through one ``NetworkHub`` in this process. The model:

* a message is *acknowledged* once a ``flush()`` (or a ``close()``, which flushes) of its sender
  returned after it was sent;
* every acknowledged message is eventually delivered to its recipient's handler once the
  recipient is connected and the hub is up (checked by the ``settle`` rule and at the end of
  every run, after every agent reconnected);
* no message reaches a handler twice, also across hub crashes and agent restarts (checked after
  every step), and the messages from one sender reach a recipient in the order they were sent;
* the only rejection an agent may report is a replay of a message that an *earlier* agent object
  of the same name handled: a hub that crashed between delivering an envelope live and
  committing it gets it again from the sender, under a new delivery id, and a receiver
  restarted in between refuses it (``docs/agents.md``). Every other redelivery, also to a
  restarted agent, is skipped silently.

Synchronisation is by conditions and polling with deadlines, never by sleeping.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hubutil import HOST, HubProcess
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from agentmesh import Agent, NetworkHub, ReplayError

NAMES = ("alice", "bob", "carol")
DEADLINE = 30.0  # generous (all local; a restart takes well under a second): CI may be busy
# Shrinking re-runs failing examples, each of which waits DEADLINE: off unless asked for.
SHRINK = os.environ.get("AGENTMESH_STATEFUL_SHRINK", "") not in ("", "0")


class HubMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="agentmesh-stateful-"))
        self.hub_proc: HubProcess | None = None
        self.net: NetworkHub | None = None
        self.agents: dict[str, Agent | None] = dict.fromkeys(NAMES)
        self.next_n = 0
        # per sender: (recipient, n) sent by its current agent object, not yet acknowledged
        self.pending: dict[str, list[tuple[str, int]]] = {a: [] for a in NAMES}
        self.acked: set[tuple[str, str, int]] = set()  # (sender, recipient, n)
        self.cond = threading.Condition()
        self.delivered: dict[str, list[tuple[str, int]]] = {a: [] for a in NAMES}
        self.handled_ids: set[str] = set()  # ids of the messages the handlers got
        self.rejections: list[str] = []  # every rejection but the one documented case
        self.log: list[str] = []  # what happened, for the failure message

    # ---- helpers -----------------------------------------------------------------------------

    def _open(self, name: str) -> Agent:
        assert self.net is not None
        agent = Agent(name, hub=self.net, keypair_path=self.tmp / f"{name}.key")
        handled_here: set[str] = set()  # by this agent object (an earlier one of `name` excluded)

        def on_error(exc: BaseException) -> None:
            env = getattr(exc, "envelope", None)
            env_id = getattr(env, "id", None)
            with self.cond:
                if (
                    isinstance(exc, ReplayError)
                    and env_id in self.handled_ids
                    and env_id not in handled_here
                ):
                    return  # the one documented case: a resend after a crash, new delivery id
                self.rejections.append(f"{name}: {type(exc).__name__}: {exc} ({env_id})")

        def on_message(msg: Any) -> None:
            with self.cond:
                self.delivered[name].append((msg.sender, int(msg.payload["n"])))
                self.handled_ids.add(msg.id)
                handled_here.add(msg.id)
                self.cond.notify_all()

        agent.on_error(on_error)
        agent.on_message(on_message)
        self.agents[name] = agent
        return agent

    def _open_agents(self) -> list[str]:
        return [a for a in NAMES if self.agents[a] is not None]

    def _closed_agents(self) -> list[str]:
        return [a for a in NAMES if self.agents[a] is None]

    def _send(self, sender: str, recipient: str, count: int) -> None:
        agent = self.agents[sender]
        assert agent is not None
        for _ in range(count):
            self.next_n += 1
            agent.send(recipient, n=self.next_n)
            self.pending[sender].append((recipient, self.next_n))

    def _acknowledge(self, sender: str) -> None:
        """The sender's flush (or close) returned: everything it sent is acknowledged."""
        self.acked.update((sender, r, n) for r, n in self.pending[sender])
        self.pending[sender].clear()

    def _flush(self, name: str) -> None:
        agent = self.agents[name]
        assert agent is not None
        agent.flush(timeout=DEADLINE)
        self._acknowledge(name)

    def _wait_delivered(self, recipients: list[str], timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                missing = self._missing_locked(recipients)
                if not missing:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(missing)} acknowledged message(s) not delivered within "
                        f"{timeout}s: {missing[:10]}\nsteps: {self.log}"
                    )
                self.cond.wait(min(left, 0.5))

    def _missing_locked(self, recipients: list[str]) -> list[tuple[str, str, int]]:
        got = {r: set(self.delivered[r]) for r in recipients}
        return [(s, r, n) for s, r, n in self.acked if r in got and (s, n) not in got[r]]

    # ---- set-up ------------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.hub_proc = HubProcess(self.tmp / "hub.db").start()
        self.net = NetworkHub(HOST, self.hub_proc.port, timeout=DEADLINE)
        for name in NAMES:
            self._open(name)
        # One message each way between every pair: every agent then has a session with every
        # other one (so later sends and receives need no lookup, even while the hub is down).
        for s in NAMES:
            for r in NAMES:
                if s != r:
                    self._send(s, r, 1)
            self._flush(s)
        self._wait_delivered(list(NAMES))
        self.log.append("start")

    # ---- rules -------------------------------------------------------------------------------

    @precondition(lambda self: bool(self._open_agents()))
    @rule(data=st.data(), count=st.integers(1, 4), flush=st.booleans())
    def send(self, data: st.DataObject, count: int, flush: bool) -> None:
        sender = data.draw(st.sampled_from(self._open_agents()), label="sender")
        recipient = data.draw(st.sampled_from([a for a in NAMES if a != sender]), label="to")
        self._send(sender, recipient, count)
        if flush:
            self._flush(sender)
        self.log.append(f"send {sender}->{recipient} x{count}{' flush' if flush else ''}")

    @precondition(lambda self: bool(self._open_agents()))
    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self._open_agents()), label="agent")
        self._flush(name)
        self.log.append(f"flush {name}")

    @rule(name=st.sampled_from(NAMES))
    def disconnect_or_reconnect(self, name: str) -> None:
        agent = self.agents[name]
        if agent is not None:
            agent.close(timeout=DEADLINE)  # flushes first: what it sent is acknowledged
            self._acknowledge(name)
            self.agents[name] = None
            self.log.append(f"disconnect {name}")
            return
        agent = self._open(name)  # same keypair_path: sessions and pins come back from disk
        for peer in NAMES:  # re-check the restored sessions against the hub's bundles
            if peer != name:
                agent.connect(peer)
        self.log.append(f"reconnect {name}")

    @rule(
        data=st.data(),
        crash=st.booleans(),
        after_flush=st.booleans(),
        sends_while_down=st.integers(0, 3),
    )
    def restart_hub(
        self, data: st.DataObject, crash: bool, after_flush: bool, sends_while_down: int
    ) -> None:
        assert self.hub_proc is not None
        if after_flush:
            # the hub goes down right after acknowledging: what it acked must be on disk
            for name in self._open_agents():
                self._flush(name)
        if crash:
            self.hub_proc.kill()  # SIGKILL: a crash, nothing flushed
            assert self.hub_proc.returncode == -9
        else:
            assert self.hub_proc.stop() == 0  # SIGTERM: commits what it accepted, exits 0
        what = []
        open_now = self._open_agents()
        for _ in range(sends_while_down if open_now else 0):
            # queued in the sender's hub client, resent once it has reconnected
            sender = data.draw(st.sampled_from(open_now), label="sender while down")
            recipient = data.draw(st.sampled_from([a for a in NAMES if a != sender]))
            self._send(sender, recipient, 1)
            what.append(f"{sender}->{recipient}")
        self.hub_proc.restart()
        self.log.append(
            f"{'crash' if crash else 'restart'} hub{' after flush' if after_flush else ''} "
            f"(sent while down: {what})"
        )

    @precondition(lambda self: bool(self._open_agents()))
    @rule()
    def settle(self) -> None:
        """Every acknowledged message for a connected agent arrives."""
        for name in self._open_agents():
            self._flush(name)
        self._wait_delivered(self._open_agents())
        self.log.append("settle")

    # ---- invariants --------------------------------------------------------------------------

    @invariant()
    def delivered_at_most_once_and_in_order(self) -> None:
        with self.cond:
            delivered = {r: list(v) for r, v in self.delivered.items()}
            rejections = list(self.rejections)
        for recipient, got in delivered.items():
            counts = collections.Counter(got)
            dups = [m for m, c in counts.items() if c > 1]
            assert not dups, f"{recipient} handled {dups[:5]} twice\nsteps: {self.log}"
            last: dict[str, int] = {}
            for sender, n in got:
                assert n > last.get(sender, 0), (
                    f"{recipient} got {sender}#{n} after {sender}#{last[sender]}\nsteps: {self.log}"
                )
                last[sender] = n
        assert not rejections, f"unexpected rejections: {rejections[:5]}\nsteps: {self.log}"

    # ---- the end of every run ----------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.hub_proc is not None and self.hub_proc.alive():
                for name in self._closed_agents():
                    self._open(name)
                for name in NAMES:
                    self._flush(name)
                self._wait_delivered(list(NAMES))
                self.delivered_at_most_once_and_in_order()
                for name in NAMES:
                    agent = self.agents[name]
                    assert agent is not None
                    agent.close(timeout=DEADLINE)
                    self.agents[name] = None
        finally:
            for agent in self.agents.values():
                if agent is not None:
                    with contextlib.suppress(Exception):
                        agent.close(timeout=1.0)
            if self.net is not None:
                with contextlib.suppress(Exception):
                    self.net.close()
            if self.hub_proc is not None:
                with contextlib.suppress(Exception):
                    self.hub_proc.__exit__(None, None, None)
            shutil.rmtree(self.tmp, ignore_errors=True)


HubMachine.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[p for p in Phase if SHRINK or p not in (Phase.shrink, Phase.explain)],
)
TestHubStateful = HubMachine.TestCase
