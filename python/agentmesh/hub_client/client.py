"""HubClient, the public face of the network hub's client: registering or connecting for
lookups, sending and flushing, lookups, claims and prekey uploads, closing.

What it stands on: :mod:`.lifecycle` (the connection's life, its base class),
:mod:`.connection` (frames in and out), :mod:`.connecting` (the handshake and the reconnect
backoff), :mod:`.send_window` (sends until the hub acknowledges them), :mod:`.delivery`
(batches to ``on_batch`` and their acknowledgements) and :mod:`.requests` (lookups waiting
for an answer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from agentmesh.backend import OnBatch, Pace
from agentmesh.errors import HubError
from agentmesh.hub_client.lifecycle import ClientLifecycle
from agentmesh.hub_protocol import DEFAULT_MAX_FRAME_SIZE, Op

__all__ = ["HubClient"]


class HubClient(ClientLifecycle):
    """Client of one agentmesh network hub (asyncio; use it from one event loop).

    ``ssl``: ``None``/``False`` for plain TCP, ``True`` for TLS with the system's trust store
    and host name check, or an :class:`ssl.SSLContext` (e.g. one that trusts a private CA or a
    self-signed hub certificate).
    """

    def __repr__(self) -> str:
        who = self._agent_id or self._mode or "unconnected"
        return f"<HubClient {self.host}:{self.port} {who}>"

    # ---- properties ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection is established and registered (or in lookup mode)."""
        p = self._conn
        return p is not None and not p.is_closed

    @property
    def agent_id(self) -> str | None:
        return self._agent_id

    @property
    def delivery_hub_id(self) -> bytes | None:
        """The ``hub_id`` of the store the deliveries being handled came from: set while
        ``on_batch`` runs (``None`` otherwise). Delivery ids count per hub
        store, so an owner that persists what it handled keys the ids by it."""
        return self._deliveries.delivery_hub_id

    @property
    def hub_id(self) -> bytes | None:
        """Random id of the hub's store (changes only when the store is recreated)."""
        return self._welcome.hub_id if self._welcome is not None else None

    @property
    def unacked(self) -> int:
        """Envelopes sent and not yet acknowledged by the hub."""
        return len(self._sends)

    @property
    def max_unacked(self) -> int:
        """Most envelopes sent and not yet acknowledged before :meth:`send` waits."""
        return self._sends.max_unacked

    @property
    def sent(self) -> int:
        """Envelopes handed to :meth:`send` so far."""
        return self._sends.sent

    @property
    def received(self) -> int:
        """Deliveries handed to ``on_batch`` so far (without an error)."""
        return self._deliveries.received

    async def connect_lookup(self) -> None:
        """Open an unauthenticated connection for get_bundle/list_agents/message_count.

        Raises :class:`HubError` if the hub cannot be reached within ``connect_timeout``. A
        registered client answers lookups too; then this does nothing.
        """
        self._bind_loop()
        self._check_usable()
        if self._mode is not None:
            return
        self._mode = "lookup"
        try:
            await self._establish()
        except BaseException as exc:
            self._mode = None
            # Lookups that were waiting for this connection fail with it.
            self._requests.fail(
                exc if isinstance(exc, HubError) else HubError("cannot reach the hub")
            )
            raise

    async def register(
        self,
        keypair: Any,
        on_batch: OnBatch,
        *,
        handled: Mapping[bytes, int] | None = None,
        pace: Pace | None = None,
    ) -> None:
        """Register as ``keypair.agent_id``, proving possession of its identity key.

        ``on_batch(deliveries)`` is awaited with every delivery already received (a list of
        ``(delivery_id, envelope_bytes)`` in inbox order, at most 256, all from one hub store),
        one batch at a time. They are acknowledged to the hub (and deleted there) after it
        returns; if it returns an ``asyncio.Future``, once that completes (not at all if it
        fails), and the next batch is handed over meanwhile. If it raises, the batch is not
        acknowledged: the hub delivers it again on the next connection. ``pace(size)``, if
        given, is awaited after each batch is handed over (see :mod:`agentmesh.backend`).
        ``handled`` maps a hub store's ``hub_id`` to the last delivery id an earlier client of
        this agent handled from it (a persistent owner saves :attr:`delivery_hub_id` and the
        delivery ids it handled): redeliveries at or below it, which a hub that crashed before
        committing the acknowledgements sends again, are acknowledged without being handed over.
        Raises :class:`HubRequestError` if the hub refuses (``code`` ``ID_TAKEN`` when the id
        belongs to another identity key) and :class:`HubError` if it cannot be reached.
        """
        if on_batch is None:
            raise TypeError("register() needs an on_batch handler")
        self._bind_loop()
        self._check_usable()
        if self._mode == "agent":
            raise HubError(f"this client is already registered as {self._agent_id!r}")
        if self._mode == "lookup":
            await self._drop_connection()
        self._keypair = keypair
        self._deliveries.set_handler(on_batch, handled, pace)
        self._agent_id = str(keypair.agent_id)
        self._mode = "agent"
        try:
            await self._establish()
        except BaseException:
            self._mode = None
            self._agent_id = None
            raise
        self._consumer = asyncio.get_running_loop().create_task(self._deliveries.consume())

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the client is connected (e.g. after a hub restart)."""
        self._check_usable()
        if self._ready_event is None or self._mode is None:
            raise HubError("not connected: call register() or connect_lookup() first")
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise HubError(f"not reconnected to hub within {timeout}s") from None
        self._check_usable()

    # ---- sending -----------------------------------------------------------------------------

    async def send(self, recipient: str, envelope: bytes) -> None:
        """Queue ``envelope`` for ``recipient`` and write it; returns without waiting for the
        hub (see :meth:`flush`). Raises at once a pending refusal of an earlier send (the
        error's ``recipient`` names its peer; *this* envelope is then not queued) and
        :class:`PeerNotFoundError` (a ValueError) for a recipient the hub reported unknown in
        the last two seconds. Waits while the client has too much unacknowledged."""
        while not self.send_nowait(recipient, envelope):
            await self.wait_for_room()

    async def wait_for_room(self) -> None:
        """Returns once :meth:`send_nowait` can queue another envelope (or the client failed:
        then the next send raises)."""
        await self._sends.wait_for_room()

    def send_nowait(self, recipient: str, envelope: bytes, expires_ms: int = 0) -> bool:
        """:meth:`send` without waiting: False (nothing queued) when the client has no room
        for another unacknowledged envelope; from the client's event loop thread only.
        ``expires_ms`` (ms since the epoch): the hub drops the envelope undelivered once it
        has passed (a hub whose READY does not say ``expiry`` gets a plain SEND, and the
        recipient alone enforces the expiry inside the message)."""
        max_frame = self._ready_to_send()
        if not self.hub_expiry:
            expires_ms = 0
        return self._sends.send_nowait(recipient, envelope, max_frame, expires_ms)

    def send_group_nowait(self, recipients: list[str], envelope: bytes) -> bool:
        """One group message (unaddressed form, :mod:`agentmesh.fanout`) for every recipient:
        one SEND_GROUP upload; the hub stores a copy for each member (a hub that does not
        say ``fanout`` in READY gets one SEND per member). Refusals as for
        :meth:`send_nowait`, one per member refused, naming it."""
        max_frame = self._ready_to_send()
        return self._sends.send_group_nowait(
            recipients, envelope, max_frame, self.hub_fanout, self.hub_fanout_bytes
        )

    def _ready_to_send(self) -> int:
        """Raise what keeps this client from sending (closed, not registered, an earlier
        refusal not yet raised); else the hub's frame limit."""
        self._check_usable()
        self._sends.raise_refusal()
        if self._mode != "agent":
            raise HubError("only a registered client can send: call register() first")
        w = self._welcome
        return w.max_frame_size if w is not None else DEFAULT_MAX_FRAME_SIZE

    def push(self) -> None:
        """Writes what :meth:`send_nowait` queued now instead of in the next loop iteration
        (for a caller that has handed over a whole batch)."""
        p = self._conn
        if p is not None and p.scheduled:
            p.flush()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every envelope sent so far is durably stored by the hub (or refused).

        Raises :class:`FlushTimeoutError` on timeout, the first pending refusal
        (:class:`HubRequestError`, :class:`PeerNotFoundError`) if any send was refused, and
        :class:`HubError` if the connection failed for good.
        """
        await self._sends.flush(timeout, self._stopped, self._hub)

    # ---- lookups -----------------------------------------------------------------------------

    async def _request(self, op: Op, arg: str = "") -> Any:
        self._bind_loop()
        self._check_usable()
        if self._mode is None:
            await self.connect_lookup()
        assert self._loop is not None
        return await self._requests.ask(
            op, arg, self._loop, self._conn, self.request_timeout, self._hub
        )

    async def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        """The public bundle the hub holds for ``agent_id``, or None if it never registered.

        The hub is not trusted with it: check it with ``agentmesh.crypto.verify_bundle`` (and
        pin its identity key) before use."""
        return await self._bundle_request(Op.GET_BUNDLE, agent_id)

    async def claim_bundle(self, agent_id: str) -> dict[str, Any] | None:
        """:meth:`get_bundle` for setting up a session (registered agents only): the hub adds
        one of ``agent_id``'s one-time prekeys (``"one_time_prekey"``), if it holds any, and
        never hands that one out again. Verify the bundle as for :meth:`get_bundle`."""
        return await self._bundle_request(Op.CLAIM_BUNDLE, agent_id)

    async def _bundle_request(self, op: Op, agent_id: str) -> dict[str, Any] | None:
        result = await self._request(op, agent_id)
        if result is not None and not isinstance(result, dict):
            raise HubError("bad answer from the hub: bundle is not an object")
        if result is not None:
            self._sends.forget_missing(agent_id)
        return result

    async def add_prekeys(self, prekeys: list[dict[str, Any]]) -> int:
        """Give the hub this agent's one-time prekeys (``AgentKeyPair.generate_one_time_prekeys``
        output) to hand out; an empty list only asks. Returns how many the hub holds now; it
        keeps at most :attr:`prekey_limit` (the rest of an upload is ignored)."""
        arg = json.dumps(list(prekeys), separators=(",", ":"))
        answer = await self._request(Op.ADD_PREKEYS, arg)
        held = answer.get("held") if isinstance(answer, dict) else None
        limit = answer.get("limit") if isinstance(answer, dict) else None
        if type(held) is not int or type(limit) is not int:
            raise HubError("bad answer from the hub: expected {'held': int, 'limit': int}")
        self.prekeys_held, self.prekey_limit = held, limit
        return held

    async def update_bundle(self, bundle: dict[str, Any]) -> None:
        """Publish this agent's new bundle (same id and identity key; for example after
        ``AgentKeyPair.rotate_signed_prekey``). A reconnect registers with the keypair's
        current bundle anyway."""
        await self._request(Op.UPDATE_BUNDLE, json.dumps(bundle, separators=(",", ":")))

    async def list_agents(self, limit: int = 1_000_000) -> list[str]:
        """Ids of every agent that ever registered on the hub, sorted, page by page (the hub
        answers at most ``max_list_agents`` per request). Raises :class:`HubError` past
        ``limit`` ids or for an answer that does not move on (a hostile or broken hub)."""
        agents: list[str] = []
        after = ""
        while True:
            page = await self._request(Op.LIST_AGENTS, after)
            ids = page.get("agents") if isinstance(page, dict) else None
            nxt = page.get("next") if isinstance(page, dict) else None
            if not isinstance(ids, list) or not (nxt is None or isinstance(nxt, str)):
                raise HubError("bad answer from the hub: expected {'agents': [...], 'next': ...}")
            agents.extend(str(a) for a in ids)
            if len(agents) > limit:
                raise HubError(f"the hub lists more than {limit} agents")
            if nxt is None:
                return agents
            if nxt <= after:
                raise HubError("bad answer from the hub: the agent list does not advance")
            after = nxt

    async def is_online(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is registered and connected to the hub now. A hub of an
        earlier version cannot tell: then whether it is registered at all."""
        try:
            return bool(await self._request(Op.IS_ONLINE, agent_id))
        except HubError as exc:
            if not getattr(exc, "unknown_request", False):
                raise
            return await self.get_bundle(agent_id) is not None

    async def message_count(self) -> int:
        """Envelopes the hub has accepted for delivery since its store was created."""
        return int(await self._request(Op.MESSAGE_COUNT))

    # ---- closing -----------------------------------------------------------------------------

    async def close(self, timeout: float | None = 30.0) -> None:
        """Flush (up to ``timeout`` seconds), then close the connection. Raises what flush
        raised (after closing), so a refused or unacknowledged envelope is not silent."""
        if self._closed:
            return
        error: BaseException | None = None
        if self._mode == "agent" and self._loop is not None:
            if self._fatal is None:
                try:
                    await self.flush(timeout)
                except HubError as exc:
                    error = exc
            elif self.unacked:
                error = HubError(
                    f"{self.unacked} envelope(s) were never acknowledged by the hub: {self._fatal}"
                )
        await self._shut_down()
        if error is not None:
            raise error

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
