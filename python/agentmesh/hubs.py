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

import logging
from typing import TYPE_CHECKING, Any

from . import crypto as _crypto
from .agent_core import _AgentCore, _core_of
from .backend import Backend
from .errors import HubError, PeerNotFoundError
from .fanout import GroupUpload
from .hub_address import DEFAULT_PORT, HubAddress, parse_hub_address  # noqa: F401 (old path)
from .hub_interface import Hub
from .local_backend import LocalBackend, LocalDirectory
from .network_hub import NetworkHub

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


# --------------------------------------------------------------------------------------------
# LocalHub


def refused_members(refused: list[tuple[str, str]]) -> ValueError:
    """The error for a fan-out some members did not get (``(member, why)`` each)."""
    names = ", ".join(repr(member) for member, _ in refused)
    reasons = "; ".join(why for _, why in refused)
    return ValueError(f"group message not delivered to {names} ({reasons})")


class _LocalTransport:
    local = True

    def __init__(self, hub: LocalHub) -> None:
        self.send = hub.deliver
        self.send_group = hub.deliver_group
        self.send_expiring = hub.deliver_expiring

    def flush(self, timeout: float | None = None) -> None:
        return None


class LocalHub(Hub):
    """An in-process hub for scripts, tests and notebooks: a synchronous face over a
    :class:`~agentmesh.local_backend.LocalDirectory`. ``deliver`` returns after the recipient's
    handlers ran; it keeps no copy of any envelope for its agents. (Backends on the same
    directory, :class:`~agentmesh.local_backend.LocalBackend`, get queued deliveries.)"""

    rotates_identities = True

    def __init__(self) -> None:
        self.directory = LocalDirectory()
        self._local_agents = self.directory.local_agents  # (one dict for the directory's life)

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
        pairwise = type(envelope) is Envelope
        if not pairwise:
            envelope = _crypto.as_envelope(envelope)
        recipient = envelope.recipient
        holder = self._local_agents.get(recipient)
        directory = self.directory
        if holder is None:
            try:  # (queued for a backend, or refused: enqueue counts the upload)
                directory.enqueue(recipient, bytes(envelope.to_bytes()))
            except PeerNotFoundError:
                raise ValueError(f"Peer {recipient!r} not found on hub") from None
            return
        directory.handed += 1  # (a delivery and an upload)
        if pairwise:
            holder.receive_pairwise(envelope)  # (the common case, without the kind check)
        else:
            holder.receive(envelope)

    def deliver_group(self, upload: GroupUpload) -> None:
        """Fan one group message out to its recipients (one upload; each LocalHub agent's
        handlers run in this thread, a backend's copy is queued). A member not found is
        reported after the others got their copy: ValueError naming it."""
        refusals = self.directory.enqueue_group(upload.recipients, upload.data)
        if refusals:
            raise refused_members([(str(exc.recipient), str(exc)) for exc in refusals])

    def deliver_expiring(self, envelope: Any, expires_ms: int) -> None:
        """:meth:`deliver` for an envelope not to be delivered after ``expires_ms`` (ms since
        the epoch): a LocalHub agent gets it now; one queued for a backend that is offline
        is dropped once that time has passed."""
        if type(envelope) is not Envelope:
            envelope = _crypto.as_envelope(envelope)
        if isinstance(self.directory.holder(envelope.recipient), _AgentCore):
            self.deliver(envelope)
            return
        try:
            self.directory.enqueue(envelope.recipient, bytes(envelope.to_bytes()), expires_ms)
        except PeerNotFoundError:
            raise ValueError(f"Peer {envelope.recipient!r} not found on hub") from None

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


def __getattr__(name: str) -> Any:
    # NatsHub lives in its own module, which imports this one: looked up on first use
    if name == "NatsHub":
        from .nats_hub import NatsHub

        return NatsHub
    raise AttributeError(f"module 'agentmesh.hubs' has no attribute {name!r}")
