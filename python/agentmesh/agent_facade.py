"""What the sync :class:`~agentmesh.agent.Agent` and the asyncio
:class:`~agentmesh.async_agent.AsyncAgent` faces share: the identity facts and the calls that
never wait (both delegate to the same core), and the SIGTERM handling of ``run_forever``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from .agent_core import _AgentCore
    from .hubs import Hub

__all__ = ["_AgentFacade", "_hub_of", "_stop_on_sigterm"]

H = TypeVar("H", bound=Callable[..., Any])


def _stop_on_sigterm(stop: threading.Event) -> Callable[[], None]:
    """In the main thread, SIGTERM sets ``stop`` (instead of killing the process before the
    agent could close) until the returned function restores the previous handler."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return lambda: None  # the program handles SIGTERM itself
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


class _AgentFacade:
    """What Agent and AsyncAgent expose identically: identity facts and the calls that never
    wait (both delegate to the same :class:`_AgentCore`)."""

    _core: _AgentCore

    @property
    def agent_id(self) -> str:
        return self._core.agent_id

    @property
    def fingerprint(self) -> str:
        """``xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx``: SHA-256 of the identity key, 16 bytes."""
        return self._core.fingerprint

    @property
    def public_bundle(self) -> dict[str, Any]:
        """The JSON-safe, self-certifying public bundle a peer needs to reach this agent."""
        return self._core.public_bundle

    @property
    def keypair(self) -> Any:
        """The agent's :class:`~agentmesh.crypto.AgentKeyPair` (secret: handle with care)."""
        return self._core.keypair

    @property
    def hub(self) -> Hub | None:
        return self._core.hub

    @property
    def log(self) -> logging.Logger:
        return self._core.log

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def deniable(self) -> bool:
        """True if this agent sets up deniable sessions (no per-message signature)."""
        return self._core.deniable

    def counters(self) -> dict[str, int]:
        """``sent``, ``received``, ``rejected``, ``handler_errors``, ``active_sessions`` and
        ``known_peers`` as numbers: cheap and safe from any thread (what
        :class:`agentmesh.agent_metrics.AgentMetrics` reports)."""
        return self._core.counters()

    def on_error(self, handler: H) -> H:
        """Register a handler called with the exception of every rejected envelope."""
        return self._core.add_error_handler(handler)

    def connect_with_bundle(self, bundle: dict[str, Any]) -> str:
        """Set up a session from a bundle handed over out of band; returns its fingerprint."""
        return self._core.connect_with_bundle(bundle)


def _hub_of(hub: Any) -> Hub | None:
    from .hubs import hub_of  # (hubs imports this module)

    return hub_of(hub)
