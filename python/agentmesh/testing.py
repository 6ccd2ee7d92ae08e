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

Everything here is in-process and deterministic for a given seed.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .crypto import AgentKeyPair, Envelope, as_envelope
from .errors import CryptoError
from .hubs import LocalHub

__all__ = ["ACTIONS", "HostileHub", "Inbox", "Rule", "Seen"]

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

    def _choose(self, env: Envelope) -> str:
        for rule in self.rules:
            if rule.applies(env):
                rule.fired += 1
                return rule.action
        for action, p in self.probabilities.items():
            if p and self.rng.random() < p:
                return action
        return "pass"

    def deliver(self, envelope: Any) -> None:
        env = as_envelope(envelope)
        if self._agents.get(env.recipient) is None:
            raise ValueError(f"Peer {env.recipient!r} not found on hub")
        with self._hostile_lock:
            data = env.to_bytes()
            action = self._choose(env)
            self.seen.append(Seen(len(self.seen), env.sender, env.recipient, data, action))
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
        core = self._agents.get(recipient) if recipient is not None else None
        if core is None:
            return
        self._count += 1
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

    return json.dumps(payload, sort_keys=True)
