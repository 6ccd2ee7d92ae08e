"""Test your agents against a hub that attacks them.

:class:`HostileHub` is a :class:`~agentmesh.hubs.LocalHub` that treats every envelope the way a
compromised or broken hub could: it drops, duplicates, delays and reorders, replays, corrupts,
and swaps bundles (re-keying an id to keys of its own). It does this by explicit rules or at
random from a seed, and records everything it saw. :class:`Inbox` collects what agents'
handlers and error handlers received, with assertions for the properties agentmesh promises::

    from agentmesh import Agent
    from agentmesh.testing import HostileHub, Inbox

    hub = HostileHub(seed=7, drop=0.1, duplicate=0.2, reorder=0.3, replay=0.1, corrupt=0.1)
    alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
    inbox = Inbox(bob)
    sent = [{"text": f"m{i}", "seq": i} for i in range(100)]
    for payload in sent:
        alice.send("bob", **payload)
    hub.release_all()
    inbox.assert_subset_of(sent, sender="alice")   # nothing twice, nothing altered
    # every envelope that reached bob unaltered ran his handler exactly once
    assert len(inbox.messages) == len(hub.intact_deliveries("bob"))

Everything above is in-process and deterministic for a given seed. :class:`HubProcess` runs the
real network hub in its own process on 127.0.0.1, for tests against a hub that can be stopped,
SIGKILLed and restarted (this project's own tests, benchmarks and crash campaign use it)::

    import queue
    from agentmesh import Agent, NetworkHub
    from agentmesh.testing import HubProcess

    with HubProcess("hub.sqlite3") as hub:              # port 0: the hub picks a free one
        net = NetworkHub("127.0.0.1", hub.port)
        alice, bob = Agent("alice", hub=net), Agent("bob", hub=net)
        got = queue.Queue()
        bob.on_message(got.put)
        hub.kill()                                      # a crash: SIGKILL
        hub.restart()                                   # same port, same store
        alice.send("bob", text="after the crash")      # the clients reconnect by themselves
        assert got.get(timeout=30).text == "after the crash"
        alice.close(), bob.close(), net.close()
    assert hub.returncode == 0                          # stopped cleanly (SIGTERM) on exit
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .crypto import AgentKeyPair, Envelope, as_envelope
from .errors import CryptoError
from .hubs import LocalHub

__all__ = ["ACTIONS", "HostileHub", "HubProcess", "Inbox", "Rule", "Seen", "subprocess_env"]

#: What the hostile hub can do to one envelope.
ACTIONS = ("pass", "drop", "duplicate", "delay", "replay", "corrupt")


@dataclass(frozen=True)
class Seen:
    """One envelope as the hub saw it, and what it did with it."""

    index: int
    sender: str
    recipient: str
    data: bytes
    action: str

    @property
    def message_id(self) -> str:
        return Envelope.from_bytes(self.data).id


@dataclass
class Rule:
    """Apply ``action`` to envelopes for which ``match`` is true (all, if ``None``), at most
    ``times`` times (unlimited if ``None``). Rules are tried in order before random faults."""

    action: str
    match: Callable[[Envelope], bool] | None = None
    times: int | None = None
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; choose from {ACTIONS}")

    def applies(self, env: Envelope) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        return self.match is None or bool(self.match(env))


def flip_bit(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one random bit flipped."""
    out = bytearray(data)
    i = rng.randrange(len(out))
    out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


class HostileHub(LocalHub):
    """A LocalHub that misbehaves by rule or at random (reproducibly, from ``seed``).

    Probabilities are per envelope: ``drop``, ``duplicate`` (delivered twice), ``reorder``
    (held back and released after later envelopes), ``replay`` (an envelope seen earlier is
    delivered again, after this one), ``corrupt`` (one bit flipped; the genuine envelope is then
    also delivered if ``corrupt_keeps_original``). Held envelopes are released when more than
    ``max_held`` are waiting, or by :meth:`release_all`.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        replay: float = 0.0,
        corrupt: float = 0.0,
        corrupt_keeps_original: bool = True,
        max_held: int = 8,
        rules: Iterable[Rule] = (),
    ) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self.probabilities = {
            "drop": drop,
            "duplicate": duplicate,
            "delay": reorder,
            "replay": replay,
            "corrupt": corrupt,
        }
        for name, p in self.probabilities.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probability of {name} must be within [0, 1], got {p}")
        self.corrupt_keeps_original = corrupt_keeps_original
        self.max_held = max_held
        self.rules = list(rules)
        self.seen: list[Seen] = []
        self.held: list[bytes] = []
        self.forwarded: list[bytes] = []
        self.forged_bundles: dict[str, dict[str, Any]] = {}
        self._hostile_lock = threading.RLock()

    # --- what the hub does with each envelope -------------------------------------------------

    def _choose(self, env: Any) -> str:
        for rule in self.rules:
            if rule.applies(env):
                rule.fired += 1
                return rule.action
        for action, p in self.probabilities.items():
            if p and self.rng.random() < p:
                return action
        return "pass"

    def deliver(self, envelope: Any) -> None:
        env = as_envelope(envelope)  # (an Envelope, or a GroupEnvelope: same routing fields)
        recipient = env.recipient
        if recipient is None or self.local_agent(recipient) is None:
            raise ValueError(f"Peer {recipient!r} not found on hub")
        with self._hostile_lock:
            data = env.to_bytes()
            action = self._choose(env)
            self.seen.append(Seen(len(self.seen), env.sender, recipient, data, action))
            history = [s.data for s in self.seen[:-1]]
            if action == "drop":
                return
            if action == "delay":
                self.held.append(data)
                if len(self.held) > self.max_held:
                    self._forward(self.held.pop(0))
                return
            if action == "corrupt":
                self._forward(flip_bit(data, self.rng))
                if not self.corrupt_keeps_original:
                    return
            self._forward(data)
            if action == "duplicate":
                self._forward(data)
            elif action == "replay" and history:
                self._forward(self.rng.choice(history))
            if self.held and self.rng.random() < 0.5:
                self._forward(self.held.pop(self.rng.randrange(len(self.held))))

    def _forward(self, data: bytes) -> None:
        # Bad bytes still reach the agent (it must reject them), exactly like a network hub.
        recipient = _recipient_of(data)
        core = self.local_agent(recipient) if recipient is not None else None
        if core is None:
            return
        self.directory.routed += 1
        self.forwarded.append(data)
        core.receive(data)

    def release_all(self) -> int:
        """Deliver every held envelope (in a shuffled order); returns how many."""
        with self._hostile_lock:
            held, self.held = self.held, []
            self.rng.shuffle(held)
            for data in held:
                self._forward(data)
            return len(held)

    def replay_all(self) -> int:
        """Deliver every envelope seen so far once more; returns how many."""
        with self._hostile_lock:
            datas = [s.data for s in self.seen]
            for data in datas:
                self._forward(data)
            return len(datas)

    # --- re-keying ----------------------------------------------------------------------------

    def swap_bundle(self, agent_id: str, bundle: dict[str, Any] | None = None) -> AgentKeyPair:
        """Serve a bundle of the hub's own keys for ``agent_id`` from now on (a re-keying
        attack); returns the impostor's keypair. ``bundle`` overrides with a given bundle."""
        impostor = AgentKeyPair.generate(agent_id)
        self.forged_bundles[agent_id] = bundle if bundle is not None else impostor.public_bundle()
        return impostor

    def restore_bundle(self, agent_id: str) -> None:
        self.forged_bundles.pop(agent_id, None)

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        forged = self.forged_bundles.get(agent_id)
        if forged is not None:
            return dict(forged)
        return super().get_bundle(agent_id)

    def intact_deliveries(self, recipient: str | None = None) -> set[bytes]:
        """Genuine envelopes (as sent) that reached their recipient unaltered at least once."""
        genuine = {s.data for s in self.seen if recipient is None or s.recipient == recipient}
        return genuine.intersection(self.forwarded)

    # --- what it saw --------------------------------------------------------------------------

    def actions(self) -> dict[str, int]:
        """How many envelopes got each action."""
        counts = dict.fromkeys(ACTIONS, 0)
        for s in self.seen:
            counts[s.action] += 1
        return counts

    def __repr__(self) -> str:
        return f"<HostileHub seen={len(self.seen)} held={len(self.held)} actions={self.actions()}>"


def _recipient_of(data: bytes) -> str | None:
    try:
        return Envelope.from_bytes(data).recipient
    except CryptoError:
        # A corrupted header: route on the original bytes' recipient field if it still parses
        # as far as that (magic, version, type, flags, sender, recipient).
        try:
            sender_len = data[5]
            start = 6 + sender_len
            recipient_len = data[start]
            return data[start + 1 : start + 1 + recipient_len].decode("utf-8")
        except (IndexError, UnicodeDecodeError):
            return None


class Inbox:
    """Records what an agent's handlers and error handlers got."""

    def __init__(self, agent: Any) -> None:
        self.agent_id = agent.status()["agent_id"]
        self.messages: list[Any] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        agent.on_message(self._on_message)
        agent.on_error(self._on_error)

    def _on_message(self, msg: Any) -> None:
        with self._lock:
            self.messages.append(msg)

    def _on_error(self, exc: BaseException, *_: Any) -> None:
        with self._lock:
            self.errors.append(exc)

    def payloads(self, sender: str | None = None) -> list[dict[str, Any]]:
        return [m.payload for m in self.messages if sender is None or m.sender == sender]

    def assert_no_duplicates(self) -> None:
        ids = [m.id for m in self.messages]
        dupes = {i for i in ids if ids.count(i) > 1}
        assert not dupes, f"{self.agent_id}: handler ran more than once for {sorted(dupes)}"

    def assert_received_exactly(self, expected: list[dict[str, Any]], sender: str) -> None:
        """The handler ran once per expected payload, with exactly that payload (any order)."""
        self.assert_no_duplicates()
        got = self.payloads(sender)
        key = _canonical
        assert sorted(map(key, got)) == sorted(map(key, expected)), (
            f"{self.agent_id}: expected {len(expected)} payloads from {sender}, got {len(got)}"
        )

    def assert_subset_of(self, sent: list[dict[str, Any]], sender: str) -> None:
        """Nothing ran that was not sent (no forgery, no alteration) and nothing ran twice."""
        self.assert_no_duplicates()
        allowed = {_canonical(p) for p in sent}
        for p in self.payloads(sender):
            assert _canonical(p) in allowed, f"{self.agent_id}: handler saw altered data {p!r}"


def _canonical(payload: dict[str, Any]) -> str:
    import json

    from .message import json_safe

    return json.dumps(json_safe(payload), sort_keys=True)


# --------------------------------------------------------------------------------------------
# A real hub in its own process

#: The line the hub prints to stderr once it listens (docs/hub.md, "Running a hub").
_LISTENING = re.compile(r"agentmesh-hub listening on (\S+):(\d+)")


def subprocess_env() -> dict[str, str]:
    """The environment for a child Python process that should import this same agentmesh
    (``PYTHONPATH`` starts with the directory it was imported from), unbuffered."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    here = str(Path(__file__).resolve().parent.parent)
    parts = [here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


class HubProcess:
    """``python -m agentmesh.hub_server --host 127.0.0.1 --port PORT --store STORE`` in its own
    process, started, stopped (SIGTERM), killed (SIGKILL) and restarted by its pid.

    ``port=0`` lets the hub pick a free port; :attr:`port` is read from the hub's listening
    line and kept, so :meth:`restart` comes back on the same port and store. ``extra_args``
    go to the hub's command line (``["--idle-timeout", "60"]``). Every stderr line is kept in
    :attr:`lines` (the last ``keep_lines`` of them if given) and appended to ``log_file`` if
    given, with a marker line at each start and kill. ``new_session=True`` puts the hub in
    its own session, so that a Ctrl-C of the controlling terminal does not reach it (it is
    stopped by pid instead). The host is always 127.0.0.1.
    """

    HOST = "127.0.0.1"

    def __init__(
        self,
        store: str | os.PathLike[str],
        port: int = 0,
        *,
        extra_args: Sequence[str] = (),
        log_level: str = "info",
        env: dict[str, str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        keep_lines: int | None = None,
        new_session: bool = False,
    ) -> None:
        self.store = Path(store)
        self.port = port
        self.extra_args = list(extra_args)
        self.log_level = log_level
        self.env = env
        self.log_file = Path(log_file) if log_file is not None else None
        self.new_session = new_session
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        #: Successful starts so far.
        self.starts = 0
        self._log: IO[str] | None = None
        self._reader: threading.Thread | None = None
        self._listening = threading.Event()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the hub was never started")
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"{self.HOST}:{self.port}"

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "agentmesh.hub_server",
            "--host", self.HOST, "--port", str(self.port), "--store", str(self.store),
            "--log-level", self.log_level, *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> HubProcess:
        """Start the hub and return once it listens; RuntimeError (with its stderr) if it does
        not within ``timeout`` seconds or exits first."""
        if self.alive():
            raise RuntimeError(f"the hub is already running (pid {self.pid})")
        if self.log_file is not None and self._log is None:
            self._log = open(self.log_file, "a", encoding="utf-8")  # noqa: SIM115 (close())
        deadline = time.monotonic() + timeout
        while True:
            self._listening.clear()
            self.returncode = None
            self._mark(f"start {self.starts + 1}")
            proc = self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=self.env if self.env is not None else subprocess_env(),
                start_new_session=self.new_session,
            )
            self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
            self._reader.start()
            while not self._listening.wait(0.02):
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"hub did not start within {timeout}s:\n{self.stderr}")
            if self._listening.is_set():
                self.starts += 1
                return self
            self._join_reader()
            self.returncode = proc.returncode
            # A restart on the same port can race the old socket for a moment: try again.
            if time.monotonic() > deadline or "in use" not in self.stderr:
                raise RuntimeError(
                    f"hub exited with {proc.returncode} before listening:\n{self.stderr}"
                )
            time.sleep(0.1)

    def restart(self, timeout: float = 60.0) -> HubProcess:
        """Start again on the same port and store (after :meth:`stop` or :meth:`kill`)."""
        return self.start(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (a clean stop), SIGKILL if the hub is still there after ``grace`` seconds;
        returns the exit code (0 after a clean stop, -9 if it had to be killed; ``None`` if it
        was never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # (by pid; nothing if it exited meanwhile)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._mark(f"SIGKILL after {grace:g}s of SIGTERM")
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        self._join_reader()
        self.returncode = proc.returncode
        return self.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is flushed or closed."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self._mark("SIGKILL")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self._join_reader()
        if proc is not None:
            self.returncode = proc.returncode

    def close(self) -> None:
        """Stop the hub if it runs (SIGTERM, SIGKILL after 10 s) and close the log file."""
        if self.alive():
            self.stop(10.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> HubProcess:
        return self if self.alive() else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        log = self._log
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if log is not None:
                log.write(line + "\n")
            if not self._listening.is_set():
                m = _LISTENING.search(line)
                if m:
                    self.port = int(m.group(2))
                    if log is not None:
                        log.flush()
                    self._listening.set()
        if log is not None:
            log.flush()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(10)

    def _mark(self, what: str) -> None:
        if self._log is not None:
            self._log.write(f"===== {what} at {time.time():.6f}\n")
            self._log.flush()

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exit {self.returncode}"
        return f"<HubProcess {self.address} store={str(self.store)!r} {state}>"
