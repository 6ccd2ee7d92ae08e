"""The client side of a network hub (``agentmesh.hub_server``): a thin face over its backend,
:class:`~agentmesh.hub_client.HubClient` (one per registered agent, driven by an
:class:`~agentmesh.link.AgentLink`, which holds every agent-side rule), plus one lookup
connection."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .backend import Backend
from .backend_hub import BackendHub
from .hub_address import HubAddress

if TYPE_CHECKING:
    from .hub_client.channels import CarrierPool

__all__ = ["NetworkHub"]

log = logging.getLogger("agentmesh.hubs")


class NetworkHub(BackendHub):
    """The client side of a network hub; same interface as :class:`~agentmesh.hubs.LocalHub`.

    ``NetworkHub(host, port=7700, *, ssl=None, connect_timeout=10.0, timeout=30.0,
    share_connection=True)``, or ``NetworkHub(address)`` with any address of
    :mod:`agentmesh.hub_address` (``"host:port"``, ``"agentmesh+tls://host:port"``, ...).
    ``ssl`` is an ``ssl.SSLContext`` (or ``True`` for the default client context) for TLS to
    the hub. ``timeout`` bounds lookups (``get_bundle``, ``list_agents``, ``message_count``).
    ``share_connection``: the agents registered through this object (all but the first, which
    keeps a connection of its own) share one connection to the hub, each on a channel of its
    own (:mod:`agentmesh.hub_client.channels`), when the hub offers channels; ``False`` gives
    every agent a connection of its own.
    """

    rotates_identities = True

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        ssl: Any = None,
        connect_timeout: float = 10.0,
        timeout: float = 30.0,
        share_connection: bool = True,
    ) -> None:
        if not isinstance(host, str) or not host.strip():
            raise ValueError("host must be a non-empty str (a host name or a hub address)")
        if port is None:  # the host argument is a whole address
            address = HubAddress.parse(host)
            host, port = address.host, address.port
            if address.tls and ssl is None:
                ssl = True
        elif "://" in host or (host.count(":") == 1 and not host.startswith("[")):
            raise ValueError(
                f"host {host!r} looks like a hub address with a port: pass it alone "
                f"(NetworkHub({host!r})), or the host and port={port} separately"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an int in 1..65535, not {port!r}")
        if ssl is True:
            import ssl as _ssl

            ssl = _ssl.create_default_context()
        super().__init__()
        self.host = host
        self.port = port
        self.ssl = ssl
        self.where = f"the hub at {host}:{port}"
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self._lookup: Any = None
        self._lookup_lock: asyncio.Lock | None = None
        self._claims_unsupported = False
        self._carriers: CarrierPool | None = None
        if share_connection:
            from .hub_client.channels import CarrierPool

            self._carriers = CarrierPool(host, port, ssl, self.connect_timeout)

    def __repr__(self) -> str:
        return f"<NetworkHub {self.host}:{self.port} agents={len(self._links)}>"

    # -- lookups --------------------------------------------------------------------------------

    async def _lookup_client(self) -> Any:
        if self._lookup_lock is None:
            self._lookup_lock = asyncio.Lock()
        async with self._lookup_lock:
            if self._lookup is None:
                from .hub_client import HubClient

                client = HubClient(
                    self.host, self.port, ssl=self.ssl, connect_timeout=self.connect_timeout
                )
                await client.connect_lookup()
                self._lookup = client
            return self._lookup

    def _call(self, what: str, method: str, *args: Any) -> Any:
        """A request on this hub's lookup connection."""

        async def run() -> Any:
            client = await self._lookup_client()
            return await getattr(client, method)(*args)

        return self._run_request(what, run())

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        result = self._call(f"looking up {agent_id!r}", "get_bundle", agent_id)
        return dict(result) if result is not None else None

    def claim_bundle(self, requester_id: str, agent_id: str) -> dict[str, Any] | None:
        from .hub_protocol import HubRequestError

        if requester_id not in self._links or self._claims_unsupported:
            return self.get_bundle(agent_id)
        try:
            return self._claim_on_link(requester_id, agent_id)  # type: ignore[no-any-return]
        except HubRequestError as exc:
            if not exc.unknown_request:
                raise
            log.info("the hub at %s:%d hands out no one-time prekeys", self.host, self.port)
            self._claims_unsupported = True  # an older hub: look bundles up instead
            return self.get_bundle(agent_id)

    def list_agents(self) -> list[str]:
        return list(self._call("listing agents", "list_agents"))

    def is_online(self, agent_id: str) -> bool:
        return bool(self._call(f"asking whether {agent_id!r} is online", "is_online", agent_id))

    def message_count(self) -> int:
        return int(self._call("counting messages", "message_count"))

    # -- the backend and the lookups ------------------------------------------------------------

    def _new_backend(self) -> Backend:
        from .hub_client import HubClient

        return HubClient(
            self.host,
            self.port,
            ssl=self.ssl,
            connect_timeout=self.connect_timeout,
            carriers=self._carriers,
        )

    def _close_lookups(self) -> None:
        lookup, self._lookup = self._lookup, None
        if lookup is not None:
            self._net.run(lookup.close(), timeout=5.0)
        carriers = self._carriers
        if carriers is not None:

            async def close_carriers() -> None:
                carriers.close()

            self._net.run(close_carriers(), timeout=5.0)

    def __enter__(self) -> NetworkHub:
        return self
