"""agentmesh itself: CryptoSession pairs, and Agents on a LocalHub (imported defensively: the
agent layer may not be importable in every checkout)."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

from agentmesh.crypto import AgentKeyPair, perform_key_exchange

#: How to build the raw floor and the core-alone timer (a module of their own, never shipped
#: in the agentmesh wheel: rust/agentmesh-bench).
FLOOR_BUILD_HINT = (
    "the raw floor module agentmesh_bench is not installed: build it with "
    "`pip install ./rust/agentmesh-bench` (docs/benchmarks.md)"
)


def _floor_module() -> Any:
    """The ``agentmesh_bench`` extension, or None when it is not built."""
    try:
        return importlib.import_module("agentmesh_bench")
    except ImportError:
        return None


_FLOOR = _floor_module()


class AmPair:
    """An established alice -> bob CryptoSession pair (one message each way already)."""

    def __init__(self, deniable: bool) -> None:
        self.alice_kp = AgentKeyPair.generate("alice")
        self.bob_kp = AgentKeyPair.generate("bob")
        self.alice_bundle = self.alice_kp.public_bundle()
        self.bob_bundle = self.bob_kp.public_bundle()
        self.a = perform_key_exchange(self.alice_kp, self.bob_bundle, deniable=deniable)
        self.b = perform_key_exchange(self.bob_kp, self.alice_bundle, deniable=deniable)
        self.b.unseal(self.a.seal({"text": "hello"}))
        self.a.unseal(self.b.seal({"text": "hello"}))

    def seal_unseal(self, payload: dict[str, Any]) -> Any:
        """Payload dict -> wire bytes -> payload dict."""
        return self.b.unseal(self.a.seal(payload).to_bytes())

    def seal_unseal_objects(self, payload: dict[str, Any]) -> Any:
        """Payload dict -> Envelope object -> payload dict (what LocalHub hands over)."""
        return self.b.unseal(self.a.seal(payload))

    def state_size(self) -> int:
        return len(self.a.export_state()) + len(self.b.export_state())


def handshake(
    alice_kp: Any, bob_kp: Any, alice_bundle: dict, bob_bundle: dict, deniable: bool
) -> Any:
    """One session set-up: both sides create a session from the other's bundle, alice seals a
    first (prekey) message, bob unseals it."""
    a = perform_key_exchange(alice_kp, bob_bundle, deniable=deniable)
    b = perform_key_exchange(bob_kp, alice_bundle, deniable=deniable)
    return b.unseal(a.seal({"text": "hello"}).to_bytes())


def has_floor() -> bool:
    return _FLOOR is not None


def floor_ns(payload_len: int, iterations: int, signed: bool) -> float:
    return float(_FLOOR.floor(payload_len, iterations, signed))


def core_ns(payload_len: int, iterations: int, signed: bool) -> float:
    return float(_FLOOR.core(payload_len, iterations, signed))


def floor_parts(payload_len: int, iterations: int) -> dict[str, float]:
    return dict(_FLOOR.floor_parts(payload_len, iterations))


def agent_layer() -> tuple[Any, Any] | str:
    """(Agent, LocalHub), or the reason they cannot be imported."""
    try:
        from agentmesh.agent import Agent
        from agentmesh.hubs import LocalHub
    except Exception as e:  # the agent layer is optional for this harness
        try:
            from agentmesh import Agent, LocalHub  # type: ignore[attr-defined]
        except Exception:
            return f"{type(e).__name__}: {e}"
    return Agent, LocalHub


class LocalHubPair:
    """alice and bob Agents on one LocalHub; ``send`` returns after bob's handler ran."""

    def __init__(self) -> None:
        layer = agent_layer()
        if isinstance(layer, str):
            raise RuntimeError(layer)
        Agent, LocalHub = layer
        self.hub = LocalHub()
        self.alice = Agent("alice", hub=self.hub)
        self.bob = Agent("bob", hub=self.hub)
        self.received = 0
        self.last: Any = None

        @self.bob.on_message
        def _count(msg: Any) -> None:
            self.received += 1
            self.last = msg

        self.alice.send("bob", text="hello")
        self.bob.send("alice", text="hello")
        assert self.received == 1

    def send(self, text: str) -> None:
        self.alice.send("bob", text=text)

    def close(self) -> None:
        for a in (self.alice, self.bob):
            with contextlib.suppress(Exception):
                a.close()
