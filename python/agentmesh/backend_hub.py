"""What every hub over a backend shares (:class:`agentmesh.hubs.NetworkHub`,
:class:`agentmesh.nats_hub.NatsHub`, and the next one): one :class:`~agentmesh.link.AgentLink`
per registered agent, made on the process's network loop, and the hub's lookups run there
with a bound on their time. A subclass says how to make a backend (``_new_backend``), where it
is (``where``, for errors), and how to close its lookup connection (``_close_lookups``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from abc import abstractmethod
from typing import Any

from . import crypto as _crypto
from .agent_core import _core_of
from .backend import Backend
from .errors import HubError
from .hubs import Hub
from .link import AgentLink, NetLoop, hub_error

__all__ = ["BackendHub"]


class BackendHub(Hub):
    """A hub whose agents each drive a backend through an :class:`AgentLink`."""

    #: where the agents' backends connect, for errors ("the hub at 127.0.0.1:7700")
    where: str
    connect_timeout: float
    #: seconds a lookup may take
    timeout: float

    @property
    def request_bound(self) -> float:
        """Seconds one request on the network loop may take in all."""
        return self.timeout

    def __init__(self) -> None:
        self._net = NetLoop.get()
        self._closed = False
        self._links: dict[str, AgentLink] = {}
        self._guard = threading.Lock()

    @abstractmethod
    def _new_backend(self) -> Backend:
        """A new, unregistered backend for one agent."""

    @abstractmethod
    def _close_lookups(self) -> None:
        """Close what the hub's lookups use (on :meth:`close`)."""

    def _run_request(self, what: str, request: Any) -> Any:
        """Run ``request`` (a coroutine) on the network loop within ``timeout``; HubError
        naming ``what`` and the hub otherwise."""
        try:
            return self._net.run(request, timeout=self.request_bound)
        except (concurrent.futures.TimeoutError, TimeoutError) as exc:
            raise HubError(f"{what}: {self.where} did not answer") from exc
        except HubError:
            raise
        except Exception as exc:
            raise hub_error(exc, f"{what} at {self.where}") from exc

    # -- agents ---------------------------------------------------------------------------------

    def register(self, agent: Any) -> None:
        core = _core_of(agent)
        with self._guard:
            existing = self._links.get(core.agent_id)
            if existing is not None and not existing.core.closed:
                raise ValueError(
                    f"Agent id {core.agent_id!r} is already registered through this "
                    f"{type(self).__name__}; close() that agent first"
                )
        link = AgentLink(
            core,
            self._net,
            self._new_backend,
            where=self.where,
            connect_timeout=self.connect_timeout,
        )
        link.start()
        with self._guard:
            self._links[core.agent_id] = link
        core.attach(self, link)

    def unregister(self, agent: Any) -> None:
        core = _core_of(agent)
        with self._guard:
            link = self._links.get(core.agent_id)
            if link is None or link.core is not core:
                return
            del self._links[core.agent_id]
        link.close()

    def deliver(self, envelope: Any) -> None:
        env = _crypto.as_envelope(envelope)
        link = self._links.get(env.sender)
        if link is None:
            raise HubError(
                f"agent {env.sender!r} is not registered through this {type(self).__name__}, "
                "so it cannot send here"
            )
        link.send(env)

    def _claim_on_link(self, requester_id: str, agent_id: str) -> Any:
        """``claim_bundle`` on the requester's own backend (only registered agents may claim a
        one-time prekey); None when the requester is not an agent of this hub."""
        link = self._links.get(requester_id)
        if link is None:
            return None
        result = self._run_request(f"looking up {agent_id!r}", link.backend.claim_bundle(agent_id))
        return dict(result) if result is not None else None

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every agent registered through this hub, then its lookups."""
        self._closed = True
        for link in list(self._links.values()):
            with contextlib.suppress(Exception):
                link.core.close()
        with contextlib.suppress(Exception):
            self._close_lookups()

    def __enter__(self) -> BackendHub:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
