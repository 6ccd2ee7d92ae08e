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
from .errors import HubError, PeerNotFoundError
from .hub_address import DEFAULT_PORT, HubAddress, parse_hub_address  # noqa: F401 (old path)
from .link import AgentLink, NetLoop, hub_error
from .local_backend import LocalBackend, LocalDirectory

if TYPE_CHECKING:  # (imported on first use: see __getattr__ at the end)
    from .nats_hub import NatsHub

__all__ = [
    "Hub",
    "HubAddress",
    "LocalHub",
    "NatsHub",
    "NetworkHub",
    "hub_of",
    "parse_hub_address",
]

Envelope = _crypto.Envelope
log = logging.getLogger("agentmesh.hubs")


def hub_of(hub: Any) -> Hub | None:
    """What ``Agent(hub=...)`` takes: a hub, ``None``, or a hub address (a ``NetworkHub`` is
    made for it). Anything else is a TypeError saying what was given."""
    if hub is None or isinstance(hub, Hub):
        return hub
    if isinstance(hub, str):
        return NetworkHub(hub)
    if callable(getattr(hub, "register", None)):
        return hub  # type: ignore[no-any-return]  # (a hub of the user's own, duck-typed)
    raise TypeError(
        f"hub must be a hub (LocalHub(), NetworkHub(...)) or an address such as "
        f"'127.0.0.1:7700', not {type(hub).__name__}"
    )


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

    def is_online(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is registered and connected now (a hub that cannot tell:
        whether it is registered)."""
        return agent_id in self.list_agents()

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
    """An in-process hub for scripts, tests and notebooks: a synchronous face over a
    :class:`~agentmesh.local_backend.LocalDirectory`. ``deliver`` returns after the recipient's
    handlers ran; it keeps no copy of any envelope for its agents. (Backends on the same
    directory, :class:`~agentmesh.local_backend.LocalBackend`, get queued deliveries.)"""

    def __init__(self) -> None:
        self.directory = LocalDirectory()

    def register(self, agent: Any) -> None:
        core = _core_of(agent)
        try:
            self.directory.bind(core.public_bundle, core)
        except HubError as exc:
            raise ValueError(
                f"Agent id {core.agent_id!r} is already registered on this hub with another "
                f"identity key; close() that agent first ({exc})"
            ) from None
        core.attach(self, _LocalTransport(self))

    def unregister(self, agent: Any) -> None:
        core = _core_of(agent)
        self.directory.leave(core.agent_id, core, forget=True)

    def deliver(self, envelope: Any) -> None:
        if type(envelope) is not Envelope:
            envelope = _crypto.as_envelope(envelope)
        recipient = envelope.recipient
        directory = self.directory
        holder = directory.holder(recipient)
        if not isinstance(holder, _AgentCore):
            try:
                directory.enqueue(recipient, bytes(envelope.to_bytes()))
            except PeerNotFoundError:
                raise ValueError(f"Peer {recipient!r} not found on hub") from None
            return
        directory.routed += 1
        holder.receive(envelope)

    def local_agent(self, agent_id: str) -> _AgentCore | None:
        """The agent of this process registered as ``agent_id`` (None: none, or a backend)."""
        holder = self.directory.holder(agent_id)
        return holder if isinstance(holder, _AgentCore) else None

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        return self.directory.get_bundle(agent_id)

    def list_agents(self) -> list[str]:
        return self.directory.agents()

    def is_online(self, agent_id: str) -> bool:
        return self.directory.holder(agent_id) is not None

    def message_count(self) -> int:
        return self.directory.routed

    def new_backend(self) -> Backend:
        """A backend on this hub's directory (what code built on the backend seam uses)."""
        return LocalBackend(self.directory)

    def __repr__(self) -> str:
        return f"<LocalHub agents={len(self.directory.agents())} routed={self.directory.routed}>"


# --------------------------------------------------------------------------------------------
# NetworkHub


class NetworkHub(Hub):
    """The client side of a network hub; same interface as :class:`LocalHub`.

    ``NetworkHub(host, port=7700, *, ssl=None, connect_timeout=10.0, timeout=30.0)``, or
    ``NetworkHub(address)`` with any address of :mod:`agentmesh.hub_address` (``"host:port"``,
    ``"agentmesh+tls://host:port"``, ...). ``ssl`` is an ``ssl.SSLContext`` (or ``True`` for the
    default client context) for TLS to the hub. ``timeout`` bounds lookups (``get_bundle``,
    ``list_agents``, ``message_count``).
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        ssl: Any = None,
        connect_timeout: float = 10.0,
        timeout: float = 30.0,
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
        self.host = host
        self.port = port
        self.ssl = ssl
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self._net = NetLoop.get()
        self._closed = False
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

    def is_online(self, agent_id: str) -> bool:
        return bool(self._call(f"asking whether {agent_id!r} is online", "is_online", agent_id))

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

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every agent registered through this hub and the lookup connection."""
        self._closed = True
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
