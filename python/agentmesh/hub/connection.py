"""One client connection on the hub's side: the frame state machine and the output.

:class:`Connection` is the ``asyncio.Protocol``. It decodes frames, walks the handshake
(HELLO -> WELCOME -> REGISTER or LOOKUP -> READY), answers PINGs, and hands everything else to
its collaborators: the hub's :class:`~agentmesh.hub.registration.Registrar` (HELLO, REGISTER), its
:class:`~agentmesh.hub.intake.SendIntake` (SEND), :class:`~agentmesh.hub.delivery.DeliveryPump`
(DELIVER out, DELIVERY_ACK in) and :class:`~agentmesh.hub.requests.RequestHandler` (REQUEST).
Frames that must wait (a registration in progress, unread output) are held in a backlog, and
reading pauses while any reason to pause holds.

Its output and the pausing of its reads are :class:`~agentmesh.hub.output.ConnectionOutput`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from agentmesh.hub.delivery import DeliveryPump
from agentmesh.hub.intake import SendIntake
from agentmesh.hub.output import ConnectionOutput, OutputQueue
from agentmesh.hub.requests import RequestHandler
from agentmesh.hub.states import AGENT, AWAIT_AUTH, AWAIT_HELLO, CLOSED, CLOSING, LOOKUP
from agentmesh.hub_channels import CHANNEL_OVERHEAD
from agentmesh.hub_protocol import (
    ErrorCode,
    FrameDecoder,
    FrameType,
    ProtocolError,
    encode_frame,
)

if TYPE_CHECKING:
    from agentmesh.hub.channels import ChannelTable
    from agentmesh.hub.core import AgentState, HubCore

__all__ = ["Connection", "OutputQueue"]  # (OutputQueue: agentmesh.hub.output)

log = logging.getLogger("agentmesh.hub")

# The frame types of every message, as plain ints: looking an enum member up on its class costs
# about 0.1 µs on Python 3.11, paid per frame.
_SEND = int(FrameType.SEND)
_DELIVERY_ACK = int(FrameType.DELIVERY_ACK)
_SEND_GROUP = int(FrameType.SEND_GROUP)
_SEND_EXPIRING = int(FrameType.SEND_EXPIRING)
_CHANNEL = int(FrameType.CHANNEL)


class Connection(ConnectionOutput, asyncio.Protocol):
    """One client connection (server side)."""

    def __init__(self, hub: HubCore) -> None:
        self.hub = hub
        self.loop = hub.loop
        self.limits = hub.limits
        self.output = hub.output
        self.transport: asyncio.Transport | None = None
        self.state = AWAIT_HELLO
        self.decoder = FrameDecoder(hub.limits.max_frame_size)
        self.out: list[bytes] = []
        self.out_scheduled = False
        now = self.loop.time()
        self.opened = now
        self.last_rx = now
        self.last_ping = now
        self.peer = "?"
        self.challenge: bytes | None = None
        self.agent_id: str | None = None
        self.agent: AgentState | None = None
        self.session = b""
        self.blocked = False
        self.backlog: deque[tuple[int, bytes]] = deque()
        self.paused_by: set[str] = set()
        self.write_paused = False
        self.out_bytes = 0  # in `out`, not yet handed to the transport
        self.high_water = hub.limits.max_lookup_write_buffer
        #: The connection whose output buffer and write pause this one's are: itself, or for
        #: a channel the connection carrying it (read directly on the per-frame paths).
        self.sink: Connection = self
        self.addr = "?"
        self.unauth: str | None = None  # "handshake" or "lookup" while counted as such
        self.intake = SendIntake(self)
        self.pump = DeliveryPump(self)
        self.requests = RequestHandler(self)
        #: the agents this (lookup) connection carries as channels (agentmesh.hub.channels)
        self.channels: ChannelTable | None = None

    def __repr__(self) -> str:
        who = self.agent_id if self.agent_id is not None else "-"
        return f"<conn {self.peer} agent={who}>"

    # ---- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
            self.addr = str(peer[0])
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        table = self.hub.connections
        if table.closing:
            self.fail(ErrorCode.SHUTTING_DOWN, "hub is shutting down", level=logging.DEBUG)
            return
        refusal = table.refusal(self.addr)
        if refusal is not None:
            log.debug("refusing %s: %s", self.peer, refusal)
            self.fail(ErrorCode.TOO_MANY_CONNECTIONS, refusal, level=logging.DEBUG)
            return
        table.add(self)
        transport.set_write_buffer_limits(high=self.high_water, low=self.high_water // 4)
        log.debug("connection from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.hub.connections.discard(self)
        ast = self.agent
        if ast is not None and ast.conn is self:
            ast.conn = None
        self.pump.clear()
        self.backlog.clear()
        self.out.clear()
        if self.channels is not None:
            self.channels.lost()
        if self.agent_id is not None:
            log.info("agent %r disconnected (%s)", self.agent_id, self.peer)
        else:
            log.debug("connection %s closed", self.peer)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.pause("write")

    def resume_writing(self) -> None:
        self.write_paused = False
        self.resume("write")
        if self.state == AGENT:
            self.pump.refill()
        self._drain_backlog()
        if self.channels is not None:
            self.channels.writable()

    def eof_received(self) -> bool:
        # A half-closed client gets nothing more: close our side too.
        return False

    def data_received(self, data: bytes) -> None:
        if self.state >= CLOSING:
            return
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as exc:
            self.fail(exc.code, exc.message)
            return
        if not frames:
            return
        self.last_rx = self.loop.time()
        if self.blocked or self.backlog or self.write_paused:
            self.backlog.extend(frames)
            return
        if self.channels is not None:
            self.channels.on_frames(frames)
        else:
            self._process(frames)
        # What these frames produced (deliveries to their recipients, acknowledgements) leaves
        # now rather than one loop iteration later: a round trip crosses the hub twice.
        self.output.flush()

    # ---- frame processing ------------------------------------------------------------------

    def _process(self, frames: list[tuple[int, bytes]] | deque[tuple[int, bytes]]) -> None:
        n = len(frames)
        sink = self.sink
        for i in range(n):
            if self.state >= CLOSING:
                return
            if sink.write_paused or sink.out_bytes >= sink.high_water:
                # Answers pile up unread: take no more requests until they drain.
                self.backlog.extend(itertools.islice(frames, i, n))
                self.pause("output")
                if not sink.write_paused:
                    self.loop.call_soon(self._drain_backlog)  # after this batch's flush
                return
            ftype, body = frames[i]
            try:
                # (a coroutine: later frames wait for it, e.g. a registration, or a send to a
                # full inbox that waits for the purge of its expired envelopes)
                if ftype == _SEND:
                    coro = self.intake.on_send(body)
                elif ftype == _DELIVERY_ACK:
                    self.pump.on_acks(body)
                    continue
                elif ftype == _SEND_GROUP:
                    coro = self.intake.on_send_group(body)
                elif ftype == _SEND_EXPIRING:
                    coro = self.intake.on_send_expiring(body)
                elif ftype == _CHANNEL and self.channels is not None:
                    self.channels.on_frame(body)
                    continue
                else:
                    coro = self._on_other(ftype, body)
                if coro is not None:
                    self.hold_for(coro)
                    for j in range(i + 1, n):
                        self.backlog.append(frames[j])
                    return
            except Exception as exc:
                self.frame_failed(exc)
                return

    def frame_failed(self, exc: Exception) -> None:
        """Taking a frame raised ``exc``: a ProtocolError closes this connection (a channel:
        this channel alone) with its code; anything else is a bug, logged, which must not take
        the hub down."""
        if isinstance(exc, ProtocolError):
            self.fail(exc.code, exc.message)
            return
        log.exception("internal error on %r", self, exc_info=exc)
        self.fail(ErrorCode.INTERNAL, f"internal hub error: {type(exc).__name__}")

    def hold_for(self, coro: Coroutine[Any, Any, None]) -> None:
        """The frame just taken returned ``coro``: later frames wait in the backlog until it
        is done."""
        self.blocked = True
        self.pause("block")
        self.loop.create_task(self._run_blocking(coro))

    async def _run_blocking(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception as exc:
            self.frame_failed(exc)
        self.blocked = False
        if self.state >= CLOSING:
            return
        self.resume("block")
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        """Processes frames held back (while a request blocked or writes were paused)."""
        if self.state >= CLOSING or self.blocked or self.write_paused:
            return
        if self.backlog:
            frames = list(self.backlog)
            self.backlog.clear()
            self._process(frames)
        if not self.backlog:
            self.resume("output")
        self.output.flush()

    def _on_other(self, ftype: int, body: bytes) -> Coroutine[Any, Any, None] | None:
        """Every frame but SEND and DELIVERY_ACK; returns a coroutine when later frames must
        wait for it (a registration)."""
        state = self.state
        if state == AWAIT_HELLO and ftype != FrameType.HELLO:
            raise ProtocolError(ErrorCode.PROTOCOL, "expected HELLO")
        if ftype == FrameType.PING:
            if len(body) > 64:
                raise ProtocolError(ErrorCode.PROTOCOL, "PING body longer than 64 bytes")
            self.write(encode_frame(FrameType.PONG, body))
            return None
        if ftype == FrameType.PONG:
            return None
        if state == AWAIT_HELLO:
            self.hub.registrar.welcome(self, body)
            return None
        if ftype == FrameType.REGISTER:
            if state not in (AWAIT_AUTH, LOOKUP) or (self.channels and self.channels.highest):
                raise ProtocolError(ErrorCode.PROTOCOL, "REGISTER not allowed now")
            return self.hub.registrar.register(self, body)
        if ftype == FrameType.LOOKUP:
            if state != AWAIT_AUTH:
                raise ProtocolError(ErrorCode.PROTOCOL, "LOOKUP not allowed now")
            if self.hub.connections.lookup_full():
                raise ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, "too many lookup connections")
            self.state = LOOKUP
            self.hub.connections.count_as(self, "lookup")
            self.ready(self._offer_channels())
            log.debug("lookup connection from %s", self.peer)
            return None
        if ftype == FrameType.REQUEST:
            if state not in (LOOKUP, AGENT):
                raise ProtocolError(ErrorCode.PROTOCOL, "REQUEST before REGISTER/LOOKUP")
            self.requests.on_request(body)
            return None
        if ftype == FrameType.ERROR:
            self.close()
            return None
        if ftype == FrameType.HELLO:
            raise ProtocolError(ErrorCode.PROTOCOL, "duplicate HELLO")
        raise ProtocolError(
            ErrorCode.PROTOCOL, f"frame type 0x{ftype:02x} is not accepted by the hub"
        )

    def _offer_channels(self) -> dict[str, Any]:
        """A lookup connection may carry agents as channels (agentmesh.hub.channels)."""
        limit = self.limits.max_channels_per_connection
        if not limit:
            return {"mode": "lookup"}
        from agentmesh.hub.channels import ChannelTable

        self.channels = ChannelTable(self)
        self.decoder.max_frame_size += CHANNEL_OVERHEAD
        return {"mode": "lookup", "channels": limit}

    def became_agent(self) -> None:
        """A registration on this connection (or on a channel it carries) succeeded: it counts
        as an agent's connection, with an agent's output buffer."""
        self.hub.connections.count_as(self, None)
        self.high_water = self.limits.max_write_buffer
        if self.transport is not None:
            self.transport.set_write_buffer_limits(high=self.high_water, low=self.high_water // 4)

    def ready(self, info: dict[str, Any]) -> None:
        self.write(encode_frame(FrameType.READY, json.dumps(info).encode()))
