"""The server object as a hub for its own process: the common hub interface of
:class:`~agentmesh.hub.server.NetworkHubServer` (``register``, ``unregister``, ``deliver``,
``get_bundle``, ``list_agents``, ``message_count``), so ``Agent("alice", hub=server)`` works in
the process that runs a background hub.

Reads (``get_bundle``, ``list_agents``, ``message_count``, ``connection_stats``) run on the
hub's event loop and are waited for from the calling thread. ``register`` and ``deliver`` go
through an ordinary :class:`agentmesh.hubs.NetworkHub` client connected to the server (made on
first use, closed by ``stop()``), so an agent here is served exactly as one in another process.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from agentmesh.hub.core import HubCore
    from agentmesh.hub.server import NetworkHubServer

__all__ = ["InProcessHub"]

log = logging.getLogger("agentmesh.hub")

_T = TypeVar("_T")


class InProcessHub:
    """The common hub interface of one server, for callers in other threads than the hub's."""

    def __init__(self, server: NetworkHubServer) -> None:
        self.server = server
        self._client_lock = threading.Lock()
        self._client_hub: Any = None

    # ---- read-only views (any thread but the hub's own) ------------------------------------

    def _call(self, fn: Callable[[HubCore], Coroutine[Any, Any, _T]]) -> _T:
        server = self.server
        loop, hub = server._loop, server._hub
        if loop is None or hub is None or not server.running:
            raise RuntimeError("the hub server is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("call this from another thread than the hub's event loop")
        return asyncio.run_coroutine_threadsafe(fn(hub), loop).result(30)

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        return self._call(lambda hub: hub.store.get_bundle(agent_id))

    def list_agents(self) -> list[str]:
        async def go(hub: HubCore) -> list[str]:
            return sorted(hub.agents)

        return self._call(go)

    def message_count(self) -> int:
        async def go(hub: HubCore) -> int:
            return hub.store.message_count

        return self._call(go)

    def connection_stats(self) -> dict[str, Any]:
        async def go(hub: HubCore) -> dict[str, Any]:
            return hub.connections.stats()

        return self._call(go)

    # ---- agents in this process: through a client of the server ----------------------------

    def client_hub(self) -> Any:
        server = self.server
        with self._client_lock:
            if self._client_hub is None:
                if not server.running:
                    raise RuntimeError("the hub server is not running: start() it first")
                from agentmesh.hubs import NetworkHub

                ctx = None
                if server.tls_cert is not None:
                    ctx = ssl.create_default_context(cafile=str(server.tls_cert))
                self._client_hub = NetworkHub(_connect_host(server.host), server.port, ssl=ctx)
            return self._client_hub

    def register(self, agent: Any) -> None:
        self.client_hub().register(agent)

    def unregister(self, agent: Any) -> None:
        if self._client_hub is not None:
            self._client_hub.unregister(agent)

    def deliver(self, envelope: Any) -> None:
        self.client_hub().deliver(envelope)

    def close(self) -> None:
        """Closes the client hub, if one was made (the server is stopping)."""
        with self._client_lock:
            client_hub, self._client_hub = self._client_hub, None
        if client_hub is not None:
            try:
                client_hub.close()
            except Exception as exc:  # pragma: no cover - best effort
                log.debug("closing the in-process client hub: %s", exc)


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host
