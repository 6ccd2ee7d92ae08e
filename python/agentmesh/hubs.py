"""Hubs: where agents find each other's bundles and exchange envelopes.

Every hub has the same interface (:class:`Hub`): ``register(agent)``, ``deliver(envelope)``,
``get_bundle(agent_id)``, ``list_agents()``, ``message_count()``. A hub only ever sees public
bundles and sealed envelopes.

* :class:`LocalHub` -- in-process and synchronous: ``deliver`` runs the recipient's unseal and
  handlers in the caller's thread.
* :class:`NetworkHub` -- the client side of a network hub (``agentmesh.hub_server``): a thin
  face over its backend, :class:`~agentmesh.hub_client.HubClient` (one per registered agent,
  driven by an :class:`~agentmesh.link.AgentLink`, which holds every agent-side rule), plus one
  lookup connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from . import crypto as _crypto
from .agent import _AgentCore, _core_of
from .backend import Backend
from .errors import HubError
from .link import AgentLink, NetLoop, hub_error

if TYPE_CHECKING:  # (imported on first use: see __getattr__ at the end)
    from .nats_hub import NatsHub

__all__ = ["Hub", "LocalHub", "NatsHub", "NetworkHub", "parse_hub_address"]

Envelope = _crypto.Envelope
log = logging.getLogger("agentmesh.hubs")

DEFAULT_PORT = 7700
def parse_hub_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``"host:port"``, ``"host"`` or ``"[v6]:port"`` -> ``(host, port)``; ValueError if bad."""
    address = address.strip()
    if not address:
        raise ValueError("empty hub address")
    host, port_text = address, ""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValueError(f"bad hub address {address!r}: missing ']'")
        host, rest = address[1:end], address[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad hub address {address!r}")
            port_text = rest[1:]
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    if not host:
        raise ValueError(f"bad hub address {address!r}: no host")
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(
            f"bad hub address {address!r}: port {port_text!r} is not a number"
        ) from None
    if not 0 < port < 65536:
        raise ValueError(f"bad hub address {address!r}: port {port} out of range")
    return host, port


class Hub:
    """The interface every hub implements."""

    def register(self, agent: Any) -> None:
        """Make ``agent`` reachable (agents call this themselves when given ``hub=``)."""
        raise NotImplementedError

    def unregister(self, agent: Any) -> None:
        """Forget ``agent`` (``close()`` calls this)."""
        raise NotImplementedError

    def deliver(self, envelope: Any) -> None:
        """Route one sealed envelope (an Envelope or its bytes) to its recipient."""
        raise NotImplementedError

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        """The public bundle of ``agent_id``, or ``None``."""
        raise NotImplementedError

    def claim_bundle(self, requester_id: str, agent_id: str) -> dict[str, Any] | None:
        """The bundle ``requester_id`` sets up a new session with: ``get_bundle`` plus, where
        the hub keeps them, one of ``agent_id``'s one-time prekeys, handed out only this once.
        (LocalHub has none: its envelopes never leave the process.)"""
        return self.get_bundle(agent_id)

    def list_agents(self) -> list[str]:
        """Ids of the registered agents."""
        raise NotImplementedError

    def message_count(self) -> int:
        """Envelopes routed so far."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# LocalHub


class _LocalTransport:
    local = True

    def __init__(self, hub: LocalHub) -> None:
        self.send = hub.deliver

    def flush(self, timeout: float | None = None) -> None:
        return None


class LocalHub(Hub):
    """An in-process hub for scripts, tests and notebooks. Synchronous: ``deliver`` returns after
    the recipient's handlers ran. It keeps no copy of any envelope."""

    def __init__(self) -> None:
        self._agents: dict[str, _AgentCore] = {}
        self._bundles: dict[str, dict[str, Any]] = {}
        self._count = 0
        self._lock = threading.Lock()

    def register(self, agent: Any) -> None:
        core = _core_of(agent)
        with self._lock:
            existing = self._agents.get(core.agent_id)
            if (
                existing is not None
                and existing is not core
                and not existing.closed
                and existing.identity_key != core.identity_key
            ):
                raise ValueError(
                    f"Agent id {core.agent_id!r} is already registered on this hub with another "
                    "identity key; close() that agent first"
                )
            core.attach(self, _LocalTransport(self))
            self._agents[core.agent_id] = core
            self._bundles[core.agent_id] = core.public_bundle

    def unregister(self, agent: Any) -> None:
        core = _core_of(agent)
        with self._lock:
            if self._agents.get(core.agent_id) is core:
                del self._agents[core.agent_id]
                self._bundles.pop(core.agent_id, None)

    def deliver(self, envelope: Any) -> None:
        if type(envelope) is not Envelope:
            envelope = _crypto.as_envelope(envelope)
        recipient = envelope.recipient
        core = self._agents.get(recipient)
        if core is None:
            raise ValueError(f"Peer {recipient!r} not found on hub")
        self._count += 1
        core.receive(envelope)

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        bundle = self._bundles.get(agent_id)
        return dict(bundle) if bundle is not None else None

    def list_agents(self) -> list[str]:
        return list(self._agents)

    def message_count(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<LocalHub agents={len(self._agents)} routed={self._count}>"


# --------------------------------------------------------------------------------------------
# NetworkHub


class NetworkHub(Hub):
    """The client side of a network hub; same interface as :class:`LocalHub`.

    ``NetworkHub(host, port=7700, *, ssl=None, connect_timeout=10.0, timeout=30.0)``. ``ssl`` is an
    ``ssl.SSLContext`` (or ``True`` for the default client context) for TLS to the hub.
    ``timeout`` bounds lookups (``get_bundle``, ``list_agents``, ``message_count``).
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        ssl: Any = None,
        connect_timeout: float = 10.0,
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError("host must be a non-empty str")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an int in 1..65535, not {port!r}")
        if ssl is True:
            import ssl as _ssl

            ssl = _ssl.create_default_context()
        self.host = host
        self.port = port
        self.ssl = ssl
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self._net = NetLoop.get()
        self._links: dict[str, AgentLink] = {}
        self._lookup: Any = None
        self._lookup_lock: asyncio.Lock | None = None
        self._guard = threading.Lock()
        self._claims_unsupported = False

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

    def _run_request(self, what: str, request: Any) -> Any:
        try:
            return self._net.run(request, timeout=self.timeout)
        except (concurrent.futures.TimeoutError, TimeoutError) as exc:
            raise HubError(f"{what}: the hub at {self.host}:{self.port} did not answer") from exc
        except HubError:
            raise
        except Exception as exc:
            raise hub_error(exc, f"{what} at {self.host}:{self.port}") from exc

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        result = self._call(f"looking up {agent_id!r}", "get_bundle", agent_id)
        return dict(result) if result is not None else None

    def claim_bundle(self, requester_id: str, agent_id: str) -> dict[str, Any] | None:
        from .hub_protocol import HubRequestError

        link = self._links.get(requester_id)
        if link is None or self._claims_unsupported:
            return self.get_bundle(agent_id)
        # on the requester's own registered connection: only those may claim a one-time prekey
        try:
            result = self._run_request(
                f"looking up {agent_id!r}", link.backend.claim_bundle(agent_id)
            )
        except HubRequestError as exc:
            if not exc.unknown_request:
                raise
            log.info("the hub at %s:%d hands out no one-time prekeys", self.host, self.port)
            self._claims_unsupported = True  # an older hub: look bundles up instead
            return self.get_bundle(agent_id)
        return dict(result) if result is not None else None

    def list_agents(self) -> list[str]:
        return list(self._call("listing agents", "list_agents"))

    def message_count(self) -> int:
        return int(self._call("counting messages", "message_count"))

    # -- agents ---------------------------------------------------------------------------------

    def _new_backend(self) -> Backend:
        from .hub_client import HubClient

        return HubClient(self.host, self.port, ssl=self.ssl, connect_timeout=self.connect_timeout)

    def register(self, agent: Any) -> None:
        core = _core_of(agent)
        with self._guard:
            existing = self._links.get(core.agent_id)
            if existing is not None and not existing.core.closed:
                raise ValueError(
                    f"Agent id {core.agent_id!r} is already registered through this NetworkHub; "
                    "close() that agent first"
                )
        link = AgentLink(
            core,
            self._net,
            self._new_backend,
            where=f"the hub at {self.host}:{self.port}",
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
                f"agent {env.sender!r} is not registered through this NetworkHub, so it "
                "cannot send here"
            )
        link.send(env)

    def close(self) -> None:
        """Close every agent registered through this hub and the lookup connection."""
        for link in list(self._links.values()):
            with contextlib.suppress(Exception):
                link.core.close()
        lookup, self._lookup = self._lookup, None
        if lookup is not None:
            with contextlib.suppress(Exception):
                self._net.run(lookup.close(), timeout=5.0)

    def __enter__(self) -> NetworkHub:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def __getattr__(name: str) -> Any:
    # NatsHub lives in its own module, which imports this one: looked up on first use
    if name == "NatsHub":
        from .nats_hub import NatsHub

        return NatsHub
    raise AttributeError(f"module 'agentmesh.hubs' has no attribute {name!r}")
