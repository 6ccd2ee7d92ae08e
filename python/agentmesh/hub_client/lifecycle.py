"""The connection's life of a HubClient: one event loop, connecting (as a registered agent
or for lookups), taking each new connection into use, reconnecting, failing for good, and
shutting down.

:class:`ClientLifecycle` is the base of :class:`~agentmesh.hub_client.HubClient`, which adds the
public face. The client's rooms (the send window, the delivery stream, the request table) are
made here because every new connection and a failure for good reach all of them; the public
attributes the life changes (``reconnects``, ``prekeys_held``, ``on_registered``...) live on
the one object users hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl as _ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentmesh.errors import HubError
from agentmesh.hub_client.connecting import (
    FATAL_CODES,
    Connected,
    handshake,
    open_connection,
    reconnect,
    register_frame,
)
from agentmesh.hub_client.connection import Connection, FrameHandlers
from agentmesh.hub_client.delivery import DeliveryStream
from agentmesh.hub_client.requests import RequestTable
from agentmesh.hub_client.send_window import FANOUT_BYTES_PER_FRAME, SendWindow
from agentmesh.hub_protocol import (
    DEFAULT_PORT,
    SESSION_ID_SIZE,
    FrameType,
    HubRequestError,
    Welcome,
    encode_frame,
)

if TYPE_CHECKING:
    from agentmesh.hub_client.channels import CarrierPool

__all__ = ["ClientLifecycle"]

log = logging.getLogger(__name__)


async def _cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task (if any) and wait until it has really stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class ClientLifecycle:
    """The connection's life of one HubClient (see the module's docstring)."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        ssl: _ssl.SSLContext | bool | None = None,
        connect_timeout: float = 10.0,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        request_timeout: float = 30.0,
        max_unacked: int = 100_000,
        carriers: CarrierPool | None = None,
    ) -> None:
        self.host = host
        self.port = port
        if ssl is True:
            self._ssl: _ssl.SSLContext | None = _ssl.create_default_context()
        elif isinstance(ssl, _ssl.SSLContext):
            self._ssl = ssl
        elif ssl is None or ssl is False:
            self._ssl = None
        else:
            raise TypeError("ssl must be an ssl.SSLContext, True, False or None")
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        #: the shared connections this client's agent registers on (as a channel), if any
        self._carriers = carriers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mode: str | None = None  # None, "lookup" or "agent"
        self._conn: Connection | None = None
        self._welcome: Welcome | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._keypair: Any = None
        self._agent_id: str | None = None
        self._session = os.urandom(SESSION_ID_SIZE)
        self._sends = SendWindow(max_unacked, lambda: self._conn)
        self._deliveries = DeliveryStream()
        self._requests = RequestTable()
        self._handlers = FrameHandlers(
            deliver=self._deliveries.on_deliver,
            send_ack=self._sends.on_ack,
            send_error=self._sends.on_refusal,
            send_group_error=self._sends.on_member_refusal,
            response=self._requests.on_response,
            writable=self._sends.update_room,
        )
        self._ready_event: asyncio.Event | None = None
        self._fatal: HubError | None = None
        self._closing = False
        self._closed = False
        self.reconnects = 0
        #: One-time prekeys the hub held for this agent at the last registration or upload, and
        #: how many it keeps (None before one, or from a hub that keeps none).
        self.prekeys_held: int | None = None
        self.prekey_limit: int | None = None
        #: Whether the hub takes SEND_GROUP (its READY says ``fanout``), and the bytes of
        #: copies one upload may make there (``fanout_bytes``; a hub that does not say: 16 MiB).
        self.hub_fanout = False
        self.hub_fanout_bytes = FANOUT_BYTES_PER_FRAME
        #: Whether the hub takes SEND_EXPIRING (its READY says ``expiry``).
        self.hub_expiry = False
        #: Called (in the event loop) after every registration, also after a reconnect: the
        #: hub may be a different one now (a recreated store keeps no prekeys, for example).
        self.on_registered: Callable[[], None] | None = None

    @property
    def _hub(self) -> str:
        return f"{self.host}:{self.port}"

    # ---- connecting --------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._sends.bind(loop)
            self._deliveries.bind()
            self._ready_event = asyncio.Event()
        elif self._loop is not loop:
            raise RuntimeError("a HubClient must be used from a single event loop")
        return loop

    def _check_usable(self) -> None:
        if self._closed or self._closing:
            raise HubError("hub client is closed")
        if self._fatal is not None:
            raise self._fatal

    def _stopped(self) -> HubError | None:
        """Why a flush cannot wait for acknowledgements (the client failed for good or is closed),
        if so."""
        if self._fatal is not None:
            return self._fatal
        return HubError("hub client is closed") if self._closed else None

    async def _establish(self) -> None:
        conn, welcome, info = await self._connect_once()
        self._activate(conn, welcome, info)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _drop_connection(self) -> None:
        sup, self._supervisor = self._supervisor, None
        await _cancel_and_wait(sup)
        p, self._conn = self._conn, None
        if p is not None:
            p.close()
        self._mode = None
        if self._ready_event is not None:
            self._ready_event.clear()

    async def _connect_once(self) -> Connected:
        pool = self._carriers
        if pool is not None and self._mode == "agent":
            link = await pool.link(self._handlers)
            if link is not None:
                return await handshake(link, self._hub, self.connect_timeout, self._introduce)
        return await open_connection(
            self.host, self.port, self._ssl, self.connect_timeout, self._handlers, self._introduce
        )

    def _introduce(self, conn: Connection, welcome: Welcome) -> bytes:
        """What this client says after the hub's WELCOME: REGISTER as its agent, or LOOKUP."""
        if self._mode == "agent":
            return register_frame(self._keypair, self._session, conn, welcome)
        return encode_frame(FrameType.LOOKUP)

    def _activate(self, conn: Connection, welcome: Welcome, info: dict[str, Any]) -> None:
        self._conn = conn
        self._welcome = welcome
        if self._mode == "agent":
            prekeys, limit = info.get("prekeys"), info.get("prekey_limit")
            self.prekeys_held = prekeys if type(prekeys) is int else None
            self.prekey_limit = limit if type(limit) is int else None
            fanout = info.get("fanout")
            self.hub_fanout = type(fanout) is int and fanout > 0
            fanout_bytes = info.get("fanout_bytes")
            self.hub_fanout_bytes = (
                min(fanout_bytes, FANOUT_BYTES_PER_FRAME)
                if type(fanout_bytes) is int and fanout_bytes > 0
                else FANOUT_BYTES_PER_FRAME
            )
            self.hub_expiry = info.get("expiry") is True
            self._deliveries.clamp_positions(welcome.hub_id, info.get("next_seq"))
            resent = self._sends.resend(
                int(info.get("acked_seq") or 0),
                conn,
                fanout=self.hub_fanout,
                expiry=self.hub_expiry,
            )
            log.debug(
                "registered %r on %s:%d (%d resent, %s queued)",
                self._agent_id,
                self.host,
                self.port,
                resent,
                info.get("queued"),
            )
        self._requests.resend(conn)
        self._sends.update_room()
        if self._ready_event is not None:
            self._ready_event.set()
        if self._mode == "agent" and self.on_registered is not None:
            try:
                self.on_registered()
            except Exception:
                log.exception("on_registered failed")

    async def _supervise(self) -> None:
        while True:
            conn = self._conn
            if conn is None:
                return
            await asyncio.shield(conn.closed)
            if self._closing:
                return
            if self._ready_event is not None:
                self._ready_event.clear()
            err = conn.error
            if err is not None and err.code in FATAL_CODES:
                self._set_fatal(err)
                return
            if not self.reconnect:
                self._set_fatal(err or HubError(f"connection to hub {self._hub} lost"))
                return
            # said once per outage (a warning: a listener that hears nothing should know why)
            log.warning(
                "lost the connection to hub %s:%d%s; reconnecting",
                self.host,
                self.port,
                f" ({err})" if err is not None else "",
            )
            try:
                new = await reconnect(
                    self._connect_once, lambda: self._closing, self.max_backoff, self._hub
                )
            except HubRequestError as exc:
                self._set_fatal(exc)
                return
            if new is not None:
                self.reconnects += 1
                self._activate(*new)
                log.warning("reconnected to hub %s:%d", self.host, self.port)

    def _set_fatal(self, err: HubError) -> None:
        log.error("hub connection failed for good: %s", err)
        self._fatal = err
        self._requests.fail(err)
        self._sends.fail(err)
        if self._ready_event is not None:
            self._ready_event.set()

    async def _shut_down(self) -> None:
        """Stops the background tasks and the connection; whatever still waits fails."""
        self._closing = True
        self._closed = True
        sup, self._supervisor = self._supervisor, None
        await _cancel_and_wait(sup)
        con, self._consumer = self._consumer, None
        await _cancel_and_wait(con)
        p, self._conn = self._conn, None
        if p is not None:
            p.close()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(p.closed), 2.0)
            p.abort()
        closed = HubError("hub client is closed")
        self._requests.fail(closed)
        self._sends.fail(closed)
