"""The backend seam: what an agent needs from whatever carries its envelopes.

A *backend* is one registered agent's connection to the others: the network hub's client
(:class:`agentmesh.hub_client.HubClient`) is one, and every new way of reaching agents (a
NATS JetStream cluster, say) is another. The agent-side rules that must hold on every backend
live once, in :class:`agentmesh.link.AgentLink`, which drives a backend through this protocol
only:

* nothing is acknowledged before the state its acceptance changed is on disk (the link's state
  writer resolves the future ``on_batch`` returns);
* a session loaded from disk never seals under an old key (the core starts a new set-up);
* a redelivery is skipped by its position (``handled`` at registration, then the backend's own
  count), or by its envelope id;
* the prekey policy (top-ups, claims, signed prekey rotation).

So a backend only moves bytes and keeps the directory, with these guarantees, which the
conformance suite (``tests/python/test_backend_contract.py``) checks for every backend:

* **register** proves possession of the identity key and binds the id to the first identity
  key that registers it (a later, different key is refused), publishes the bundle, and does so
  again after every reconnect, calling ``on_registered`` each time;
* **claim_bundle** removes at most one one-time prekey, durably, before it returns it: no two
  claims get the same one;
* **send_nowait** / **flush**: an envelope is *accepted* once it is durable in the backend;
  ``flush`` returns when everything sent so far is accepted, and raises an error naming the
  recipient for an envelope refused (unknown recipient, full inbox);
* **send_group_nowait**: one group message (its unaddressed form, :mod:`agentmesh.fanout`)
  for many recipients, handed over once; the backend writes each member's copy
  (``fanout.address``) into that member's inbox. It is accepted once every copy is durable;
  a member refused (unknown, full inbox) is reported by ``flush`` like a refused envelope,
  naming that member, and the other members' copies are delivered all the same. Each copy
  keeps the sender's order with its pairwise envelopes (a copy is one of the sender's
  envelopes to that member, in the order handed over);
* **deliveries**: ``on_batch(batch)`` gets ``[(position, envelope bytes), ...]``, in the order
  each sender sent them, positions increasing per ``delivery_hub_id`` (the store they count
  in); at least once: until a batch is acknowledged, it comes again after a reconnect;
* **acknowledgement**: when ``on_batch`` returns ``None`` the batch is acknowledged at once;
  when it returns a future, once that future completes (never if it fails);
* **pacing**: given ``pace`` at registration, a backend calls ``pace(len(batch))`` after each
  batch is handed over and its acknowledgement arranged, and hands over nothing newer until
  what it returns (``None``: go on now, or an awaitable) is done; what arrives meanwhile comes
  in the next batch (:mod:`agentmesh.link_pacing`: under load, an agent takes its batches a
  little later so that more is in each).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = ["Backend", "Delivery", "NewBackend", "OnBatch", "Pace", "paced"]

#: (position, envelope bytes): the position counts per delivery store (``delivery_hub_id``).
Delivery = tuple[int, bytes]
#: Handles a batch of deliveries; returns ``None`` (acknowledge now) or a future that completes
#: once the batch's effects are durable (acknowledge then).
OnBatch = Callable[[list[Delivery]], Awaitable["asyncio.Future[None] | None"]]
#: Called with a batch's size once it is handed over; the backend hands over nothing newer
#: until what it returns is done (None: at once).
Pace = Callable[[int], "Awaitable[None] | None"]


async def paced(pace: Pace | None, size: int) -> None:
    """A backend's wait between batches (``pace`` as given at registration, or None)."""
    if pace is not None:
        waiting = pace(size)
        if waiting is not None:
            await waiting


class Backend(Protocol):
    """One registered agent's connection to the other agents (asyncio; one event loop).

    Every method may raise :class:`agentmesh.errors.HubError` (or a subclass naming the
    problem); lookups return ``None`` for an unknown agent."""

    #: Called after every (re)registration, on the backend's event loop.
    on_registered: Callable[[], None] | None

    @property
    def prekey_limit(self) -> int | None:
        """Most one-time prekeys the backend keeps per agent (None: not told)."""

    @property
    def delivery_hub_id(self) -> bytes | None:
        """While ``on_batch`` runs: the id of the store the batch's positions count in."""

    async def register(
        self,
        keypair: Any,
        *,
        on_batch: OnBatch,
        handled: dict[bytes, int] | None = None,
        pace: Pace | None = None,
    ) -> None:
        """Prove possession of ``keypair``'s identity, bind its id, publish its bundle, start
        delivering. ``handled``: per store, the last position already handled (skipped).
        ``pace``: awaited between batches (see the module docstring)."""

    async def update_bundle(self, bundle: dict[str, Any]) -> None:
        """Publish a newer bundle (a rotated signed prekey); an older one is refused."""

    async def add_prekeys(self, prekeys: list[dict[str, Any]]) -> int:
        """Hand one-time prekeys to the backend; returns how many it now holds."""

    async def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        """The agent's published bundle (no one-time prekey)."""

    async def claim_bundle(self, agent_id: str) -> dict[str, Any] | None:
        """The bundle plus, if any is left, one of the agent's one-time prekeys, removed
        durably before it is returned."""

    async def list_agents(self) -> list[str]:
        """The registered agent ids."""

    def send_nowait(self, recipient: str, envelope: bytes, expires_ms: int = 0) -> bool:
        """Queue an envelope; False when there is no room yet (see ``wait_for_room``).
        ``expires_ms`` (ms since the epoch, 0: none): the sender's expiry (``ttl``), which the
        recipient checks inside the message anyway; a backend that can should not deliver
        the envelope after it (the network hub and LocalHub drop it)."""

    def send_group_nowait(self, recipients: list[str], envelope: bytes) -> bool:
        """Queue one group message (unaddressed form) for every recipient (distinct ids, at
        most ``fanout.MAX_FANOUT_RECIPIENTS``); False when there is no room yet. One upload,
        however many recipients: the backend fans it out."""

    async def wait_for_room(self) -> None:
        """Return once ``send_nowait`` or ``send_group_nowait`` may accept again."""

    def push(self) -> None:
        """Write out what ``send_nowait`` queued (sends may be batched until then)."""

    async def flush(self, timeout: float | None = None) -> None:
        """Return once every envelope sent so far is accepted (durable); raise for a refused
        one, naming its recipient."""

    async def close(self, timeout: float | None = 30.0) -> None:
        """Flush (within ``timeout``) and disconnect."""


#: Makes a new, unregistered backend (one per agent).
NewBackend = Callable[[], Backend]
