"""The in-process backend: :class:`LocalDirectory` holds what a hub holds (id bindings,
bundles, one-time prekeys, one inbox per agent) in this process's memory, and
:class:`LocalBackend` is one registered agent's connection to it through the backend seam
(:mod:`agentmesh.backend`), so that the conformance suite, and anything built on the seam,
runs on the in-process hub too. :class:`agentmesh.hubs.LocalHub` is the synchronous face over
a directory: its agents skip the queue and run the recipient's handlers in the sender's thread.

What differs from the network hub, by design:

* **Durable means this process's memory.** An accepted envelope stays queued until it is
  acknowledged, but nothing survives the process.
* **An id is bound to its identity key while anyone holds it.** A different key is refused
  while the id's holder is registered (a ``LocalHub`` agent, or a backend) or while envelopes
  are queued for it; once it has closed and nothing waits for it, the id may move to a new key,
  so that a test or a notebook can play an agent that lost its key (its peers then see the
  identity-changed error). The network hub never releases an id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import crypto as _crypto
from .backend import Delivery, OnBatch, Pace, paced
from .errors import HubError, HubRequestError
from .fanout import address, address_all, check_recipients
from .hub.limits import HubLimits
from .hub.registration import older_bundle
from .hub_protocol import ErrorCode, error_for_code
from .succession import succession_problem

__all__ = ["BATCH_LIMIT", "LocalBackend", "LocalDirectory"]

#: Most envelopes handed to one ``on_batch`` call.
BATCH_LIMIT = 256


@dataclass
class _Inbox:
    queued: collections.OrderedDict[int, bytes] = field(default_factory=collections.OrderedDict)
    holder: Any = None  # the LocalBackend receiving for the id, or a LocalHub agent's core
    bytes: int = 0
    # position -> when (ms since the epoch) the sender's expiry passes: dropped undelivered then
    expiries: dict[int, int] = field(default_factory=dict)


class LocalDirectory:
    """Bindings, bundles, prekeys and inboxes of one in-process hub (thread-safe)."""

    def __init__(self, limits: HubLimits | None = None) -> None:
        self.limits = limits or HubLimits()
        self.store_id = os.urandom(16)
        self.lock = threading.RLock()
        self._keys: dict[str, str] = {}
        self._bundles: dict[str, dict[str, Any]] = {}
        self._prekeys: dict[str, collections.OrderedDict[int, str]] = {}
        self._inboxes: dict[str, _Inbox] = {}
        self._next_position = 1
        self._routed = 0  # (see routed)
        self._uploads = 0  # (see uploads)
        #: envelopes ``LocalHub.deliver`` handed straight to one of its agents: each is both
        #: a delivery and an upload (one count on that path, read into both)
        self.handed = 0
        self.expired = 0  # queued envelopes dropped undelivered: their expiry passed
        #: the ids held by a LocalHub agent -> its core (handed envelopes at once, never
        #: queued); a plain dict, read without the lock on LocalHub's delivery path
        self.local_agents: dict[str, Any] = {}

    @property
    def routed(self) -> int:
        """Deliveries (a copy in an inbox, or handed to a LocalHub agent)."""
        return self._routed + self.handed

    @routed.setter
    def routed(self, value: int) -> None:
        self._routed = value - self.handed

    @property
    def uploads(self) -> int:
        """Hand-overs by senders: one per envelope, and one per fan-out however many copies."""
        return self._uploads + self.handed

    @uploads.setter
    def uploads(self, value: int) -> None:
        self._uploads = value - self.handed

    # -- the directory ----------------------------------------------------------------------

    def bind(self, bundle: dict[str, Any], holder: Any) -> None:
        """Verify ``bundle`` (self-certifying), bind its id to its identity key and make
        ``holder`` the one receiving for it; HubError naming the problem otherwise."""
        try:
            agent_id = _crypto.verify_bundle(bundle)
        except Exception as exc:
            raise HubError(f"invalid bundle: {exc}") from None
        identity_key = bundle["identity_key"]
        bundle = dict(bundle)
        bundle.pop("one_time_prekey", None)
        with self.lock:
            bound = self._keys.get(agent_id)
            inbox = self._inboxes.get(agent_id)
            if bound is not None and bound != identity_key:
                # moved by succession statements its bound key signed, or released
                refusal = (
                    succession_problem(agent_id, bound, bundle) if "succession" in bundle else ""
                )
                held = inbox is not None and (inbox.holder is not None or inbox.queued)
                if refusal is not None and held:
                    raise HubError(
                        f"agent id {agent_id!r} is registered with another identity key"
                        + (f"; its succession statements are refused: {refusal}" if refusal else "")
                    )
                self._prekeys.pop(agent_id, None)  # the old key's prekeys go with it
            problem = older_bundle(self._bundles.get(agent_id), bundle)
            if problem is not None:
                raise HubError(problem)
            self._keys[agent_id] = identity_key
            self._bundles[agent_id] = bundle
            if inbox is None:
                inbox = self._inboxes[agent_id] = _Inbox()
            inbox.holder = holder
            if holder is None or isinstance(holder, LocalBackend):
                self.local_agents.pop(agent_id, None)
            else:
                self.local_agents[agent_id] = holder

    def leave(self, agent_id: str, holder: Any, *, forget: bool = False) -> None:
        """``holder`` stops receiving for ``agent_id``; ``forget``: its bundle goes too (a
        closed ``LocalHub`` agent is not found any more, as it never was queued for)."""
        with self.lock:
            inbox = self._inboxes.get(agent_id)
            if inbox is not None and inbox.holder is holder:
                inbox.holder = None
                self.local_agents.pop(agent_id, None)
                if forget and not inbox.queued:
                    self._bundles.pop(agent_id, None)
                    del self._inboxes[agent_id]

    def holder(self, agent_id: str) -> Any:
        inbox = self._inboxes.get(agent_id)
        return inbox.holder if inbox is not None else None

    def update_bundle(self, agent_id: str, bundle: dict[str, Any]) -> None:
        with self.lock:
            if self._keys.get(agent_id) != bundle.get("identity_key"):
                raise HubError(
                    "the bundle has another identity key than the one this id is bound to"
                )
            problem = older_bundle(self._bundles.get(agent_id), bundle)
            if problem is not None:
                raise HubError(problem)
            self._bundles[agent_id] = dict(bundle)

    def add_prekeys(self, agent_id: str, prekeys: list[dict[str, Any]]) -> int:
        with self.lock:
            held = self._prekeys.setdefault(agent_id, collections.OrderedDict())
            for prekey in prekeys:
                if len(held) >= self.limits.max_prekeys_per_agent:
                    break
                held[int(prekey["id"])] = str(prekey["key"])
            return len(held)

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        with self.lock:
            bundle = self._bundles.get(agent_id)
            return dict(bundle) if bundle is not None else None

    def claim_bundle(self, agent_id: str, requester: str | None) -> dict[str, Any] | None:
        with self.lock:
            bundle = self.get_bundle(agent_id)
            held = self._prekeys.get(agent_id)
            if bundle is not None and held and requester != agent_id:
                prekey_id, key = held.popitem(last=False)
                bundle["one_time_prekey"] = {"id": prekey_id, "key": key}
            return bundle

    def agents(self) -> list[str]:
        with self.lock:
            return list(self._bundles)

    # -- inboxes ------------------------------------------------------------------------------

    def enqueue(self, recipient: str, envelope: bytes, expires_ms: int = 0) -> int:
        """Queue ``envelope``; returns its position (0: handed straight to a ``LocalHub``
        agent, whose handlers ran in this thread, as ``LocalHub.deliver`` does). A refusal
        names the recipient. ``expires_ms`` (ms since the epoch): a queued envelope still
        undelivered then is dropped (counted in ``expired``)."""
        with self.lock:
            self._uploads += 1
            holder, position = self._queue(recipient, envelope)
            if position and expires_ms:
                self._inboxes[recipient].expiries[position] = expires_ms
        return self._hand_over(holder, position, envelope)

    def enqueue_group(self, recipients: list[str], envelope: bytes) -> list[HubRequestError]:
        """Queue each recipient's copy of the unaddressed group message ``envelope`` (one
        upload, see :mod:`agentmesh.fanout`), under one hold of the lock: every copy is
        queued before any is handed to a ``LocalHub`` agent. Returns the refusals, one per
        member refused (the others' copies are queued all the same)."""
        copies = address_all(envelope, recipients)
        local = self.local_agents
        with self.lock:
            self._uploads += 1
            if local.keys() >= set(recipients):
                # every member a LocalHub agent (the usual case): handed over, never queued
                holders = [local[r] for r in recipients]
                self._routed += len(holders)
                refusals: list[HubRequestError] = []
                queued: list[tuple[Any, int, bytes]] = []
            else:
                holders, copies, queued, refusals = self._route_group(recipients, copies)
        for holder, position, copy in queued:
            self._hand_over(holder, position, copy)
        for holder, copy in zip(holders, copies, strict=True):
            holder.receive(copy)
        return refusals

    def _route_group(
        self, recipients: list[str], copies: list[bytes]
    ) -> tuple[list[Any], list[bytes], list[tuple[Any, int, bytes]], list[HubRequestError]]:
        """(The caller holds the lock.) A fan-out to any mix of members: (the LocalHub agents
        among them and their copies, the copies queued as (holder, position, copy), the
        refusals)."""
        holders: list[Any] = []
        handed: list[bytes] = []
        queued: list[tuple[Any, int, bytes]] = []
        refusals: list[HubRequestError] = []
        for recipient, copy in zip(recipients, copies, strict=True):
            holder = self.local_agents.get(recipient)
            if holder is not None:
                self._routed += 1
                holders.append(holder)
                handed.append(copy)
                continue
            try:
                holder, position = self._queue(recipient, copy)
            except HubRequestError as exc:
                refusals.append(exc)
                continue
            queued.append((holder, position, copy))
        return holders, handed, queued, refusals

    def _queue(self, recipient: str, envelope: bytes) -> tuple[Any, int]:
        """(The caller holds the lock.) Queue for a backend, or count a hand-over to a
        ``LocalHub`` agent; returns (holder, position)."""
        inbox = self._inboxes.get(recipient)
        if inbox is None:
            raise error_for_code(
                ErrorCode.PEER_NOT_FOUND,
                f"Peer {recipient!r} not found on hub",
                recipient=recipient,
            )
        holder = inbox.holder
        if holder is not None and not isinstance(holder, LocalBackend):
            self._routed += 1
            return holder, 0
        lim = self.limits
        if inbox.expiries:  # (what expired makes room: it is never delivered anyway)
            self._drop_expired(inbox)
        if (
            len(inbox.queued) >= lim.max_queued_per_agent
            or inbox.bytes + len(envelope) > lim.max_queued_bytes_per_agent
        ):
            raise error_for_code(
                ErrorCode.INBOX_FULL,
                f"inbox full: {recipient!r} has {len(inbox.queued)} envelopes queued",
                recipient=recipient,
            )
        position = self._next_position
        self._next_position += 1
        inbox.queued[position] = envelope
        inbox.bytes += len(envelope)
        self._routed += 1
        return holder, position

    @staticmethod
    def _hand_over(holder: Any, position: int, envelope: bytes) -> int:
        if holder is None:
            return position
        if isinstance(holder, LocalBackend):
            holder.wake()
            return position
        holder.receive(envelope)
        return 0

    def pending(self, agent_id: str, after: int, limit: int) -> list[Delivery]:
        with self.lock:
            inbox = self._inboxes.get(agent_id)
            if inbox is None:
                return []
            if inbox.expiries:
                self._drop_expired(inbox)
            out: list[Delivery] = []
            for position, envelope in inbox.queued.items():
                if position > after:
                    out.append((position, envelope))
                    if len(out) >= limit:
                        break
            return out

    def _drop_expired(self, inbox: _Inbox) -> None:
        """(The caller holds the lock.) Drop the queued envelopes whose expiry has passed."""
        now_ms = time.time() * 1000
        for position, expires_ms in list(inbox.expiries.items()):
            if expires_ms <= now_ms:
                del inbox.expiries[position]
                envelope = inbox.queued.pop(position, None)
                if envelope is not None:
                    inbox.bytes -= len(envelope)
                    self.expired += 1

    def acknowledge(self, agent_id: str, positions: list[int]) -> None:
        with self.lock:
            inbox = self._inboxes.get(agent_id)
            if inbox is None:
                return
            for position in positions:
                envelope = inbox.queued.pop(position, None)
                if envelope is not None:
                    inbox.bytes -= len(envelope)
                    inbox.expiries.pop(position, None)


class LocalBackend:
    """One agent's connection to a :class:`LocalDirectory` (see :mod:`agentmesh.backend`)."""

    def __init__(self, directory: LocalDirectory) -> None:
        self.directory = directory
        self.on_registered: Any = None
        self._agent_id: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_batch: OnBatch | None = None
        self._pace: Pace | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: HubError | None = None
        self._in_batch = False
        self._closed = False

    @property
    def prekey_limit(self) -> int | None:
        return self.directory.limits.max_prekeys_per_agent

    @property
    def delivery_hub_id(self) -> bytes | None:
        return self.directory.store_id if self._in_batch else None

    async def register(
        self,
        keypair: Any,
        *,
        on_batch: OnBatch,
        handled: dict[bytes, int] | None = None,
        pace: Pace | None = None,
    ) -> None:
        # the same proof of possession as the network hub's, over a challenge of this process
        bundle = keypair.public_bundle()
        challenge, nonce = os.urandom(32), os.urandom(32)
        store = self.directory.store_id
        signature = keypair.sign_registration(bundle, store, challenge, nonce)
        if not _crypto.verify_registration(bundle, bytes(signature), store, challenge, nonce):
            raise HubError("registration signature does not verify for this bundle")
        self.directory.bind(bundle, self)
        self._agent_id = str(bundle["agent_id"])
        self._loop = asyncio.get_running_loop()
        self._on_batch = on_batch
        self._pace = pace
        self._wake = asyncio.Event()
        self._wake.set()
        after = (handled or {}).get(store, 0)
        self._task = self._loop.create_task(self._deliver(after))
        if self.on_registered is not None:
            self.on_registered()

    def wake(self) -> None:
        """Something was queued for this agent (any thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not self._closed:
            loop.call_soon_threadsafe(wake.set)

    async def _deliver(self, after: int) -> None:
        directory, agent_id = self.directory, self._agent_id
        assert agent_id is not None and self._wake is not None and self._on_batch is not None
        skipped = [p for p, _ in directory.pending(agent_id, 0, 2**31) if p <= after]
        directory.acknowledge(agent_id, skipped)  # handled before: acknowledged, not delivered
        position = after
        while not self._closed:
            self._wake.clear()
            batch = directory.pending(agent_id, position, BATCH_LIMIT)
            if not batch:
                await self._wake.wait()
                continue
            self._in_batch = True
            try:
                durable = await self._on_batch(batch)
            finally:
                self._in_batch = False
            if durable is not None:
                try:
                    await durable
                except Exception:
                    # never acknowledged: it comes again to the next registration
                    return
            directory.acknowledge(agent_id, [p for p, _ in batch])
            position = batch[-1][0]
            await paced(self._pace, len(batch))

    async def update_bundle(self, bundle: dict[str, Any]) -> None:
        self.directory.update_bundle(self._registered(), bundle)

    async def add_prekeys(self, prekeys: list[dict[str, Any]]) -> int:
        return self.directory.add_prekeys(self._registered(), prekeys)

    async def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        return self.directory.get_bundle(agent_id)

    async def claim_bundle(self, agent_id: str) -> dict[str, Any] | None:
        return self.directory.claim_bundle(agent_id, self._agent_id)

    async def list_agents(self) -> list[str]:
        return self.directory.agents()

    def send_nowait(self, recipient: str, envelope: bytes, expires_ms: int = 0) -> bool:
        self._registered()
        try:
            self.directory.enqueue(recipient, envelope, expires_ms)
        except HubError as exc:
            if self._error is None:
                self._error = exc  # raised by flush, as the network hub's refusals are
        return True

    def send_group_nowait(self, recipients: list[str], envelope: bytes) -> bool:
        self._registered()
        recipients = check_recipients(recipients)
        try:
            address(bytes(envelope), recipients[0])
        except ValueError as exc:
            raise error_for_code(ErrorCode.BAD_ENVELOPE, f"malformed envelope: {exc}") from None
        refusals = self.directory.enqueue_group(recipients, bytes(envelope))
        if refusals and self._error is None:
            self._error = refusals[0]  # (flush raises it, naming the member)
        return True

    async def wait_for_room(self) -> None:
        return None

    def push(self) -> None:
        return None

    async def flush(self, timeout: float | None = None) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def close(self, timeout: float | None = 30.0) -> None:
        if self._closed:
            return
        try:
            await self.flush(timeout)
        finally:
            self._closed = True
            if self._agent_id is not None:
                self.directory.leave(self._agent_id, self)
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    def _registered(self) -> str:
        if self._agent_id is None or self._closed:
            raise HubError("the local backend is not registered")
        return self._agent_id
