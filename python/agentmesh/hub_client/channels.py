"""Agents of one process sharing a hub connection, on the client's side.

A :class:`CarrierPool` (one per :class:`~agentmesh.network_hub.NetworkHub`) holds the
process's shared connection to the hub: a lookup connection (a :class:`Carrier`) whose READY
offers ``channels``. The first agent connects alone, as before (one agent per process pays
nothing for channels); every further agent's :class:`~agentmesh.hub_client.HubClient` opens a
channel on the shared connection
(:class:`ChannelLink`, which the client uses exactly like a connection of its own: the same
handshake with its own challenge and proof, sends, deliveries, acknowledgements, requests),
and the frames of all of them leave in one write per event loop iteration and arrive in one
read. The frame is in :mod:`agentmesh.hub_channels`.

A hub that offers no channels (an older one, or one configured without) gets a connection per
agent, as before. When the shared connection is lost, every agent on it reconnects as it would
alone: each opens a channel on the next shared connection, registers again and is sent again
what it had not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import struct
from typing import Any

from agentmesh.errors import HubError
from agentmesh.hub_channels import by_channel, wrap
from agentmesh.hub_client.connecting import open_connection
from agentmesh.hub_client.connection import Connection, FrameHandlers
from agentmesh.hub_protocol import (
    ErrorCode,
    FrameType,
    ProtocolError,
    encode_error,
    encode_frame,
)

__all__ = ["Carrier", "CarrierPool", "ChannelLink", "channel_acks"]

log = logging.getLogger(__name__)

#: A CHANNEL frame up to the first u64 of the frame it carries: length, CHANNEL, channel number,
#: inner type, that u64 (a DELIVER's id, its envelope after it; a SEND_ACK's sequence number, the
#: whole frame); and the same without the frame's header (a decoded CHANNEL frame's body).
_CHANNEL_U64 = struct.Struct(">IBIBQ")
_DELIVER_AT = _CHANNEL_U64.size
_CHANNEL_DELIVER_BODY = struct.Struct(">IxQ")
_U32 = struct.Struct(">I")
_CHANNEL = int(FrameType.CHANNEL)
_DELIVER = int(FrameType.DELIVER)
_SEND_ACK = int(FrameType.SEND_ACK)
_DELIVERY_ACK = int(FrameType.DELIVERY_ACK)
#: The start of a frame up to this size waits for its rest in the carrier itself (a larger one
#: in the frame decoder's buffer: copying what came so far at every read would grow with the
#: square of its size).
PARTIAL_KEPT = 64 * 1024


def _small_start(data: bytes, at: int) -> bool:
    """Whether ``data`` from ``at`` is the start of a frame of at most PARTIAL_KEPT bytes
    and no more."""
    if len(data) - at < 4:
        return True
    length = _U32.unpack_from(data, at)[0]
    return 0 < length <= PARTIAL_KEPT and at + 4 + length > len(data)


def channel_acks(channel: int, delivery_ids: list[int]) -> bytes:
    """``wrap(channel, encode_acks(delivery_ids))`` in one piece: a process hosting hundreds
    of agents writes one for nearly every message it receives."""
    n = len(delivery_ids)
    if n == 1:
        return _CHANNEL_U64.pack(14, _CHANNEL, channel, _DELIVERY_ACK, delivery_ids[0])
    return struct.pack(f">IBIB{n}Q", 6 + 8 * n, _CHANNEL, channel, _DELIVERY_ACK, *delivery_ids)


def _nothing(*args: Any) -> None:
    pass


def _no_frames_here(*args: Any) -> None:
    raise ValueError("an agent's frame outside any channel")


#: A carrying connection registers no agent of its own: agents' frames outside a channel are
#: a protocol error.
_CARRIER_HANDLERS = FrameHandlers(
    deliver=_no_frames_here,
    send_ack=_no_frames_here,
    send_error=_no_frames_here,
    send_group_error=_no_frames_here,
    response=_no_frames_here,
    writable=_nothing,
)


class Carrier(Connection):
    """The shared connection: carries the channels, pings the hub, writes for all of them."""

    def __init__(self, handlers: FrameHandlers, hub: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(handlers, hub, loop)
        self.links: dict[int, ChannelLink] = {}
        self.next_channel = 1
        self.room = 0  # channels the hub lets this connection carry (its READY)
        self.acking: list[ChannelLink] = []  # links with acknowledgements to write
        self._partial = b""  # the start of a frame whose rest the next read brings

    def full(self) -> bool:
        return len(self.links) >= self.room

    def open_link(self, handlers: FrameHandlers) -> ChannelLink:
        channel = self.next_channel
        self.next_channel += 1
        link = self.links[channel] = ChannelLink(self, channel, handlers)
        return link

    def forget(self, link: ChannelLink) -> None:
        self.links.pop(link.channel, None)
        if not self.links:
            self.close()  # the last agent left: the connection is not kept open for nothing

    def data_received(self, data: bytes) -> None:
        """A process hosting hundreds of agents reads deliveries (one to three for each
        agent) and, for its senders, SEND_ACKs: those are decoded here straight from the bytes
        read (no frame list, each envelope copied once); each channel's deliveries reach its
        client in one call, and of its SEND_ACKs the highest (each covers every send up to
        its own). From the first frame of another kind on, the read goes the general way (the
        frame decoder, :meth:`handle_frames`), after what came before it: a channel's frames
        keep their order."""
        if self.decoder.buffered:  # the general way holds the start of a frame
            super().data_received(data)
            return
        if self._partial:
            data = self._partial + data
            self._partial = b""
        head = _CHANNEL_U64.unpack_from
        limit = self.decoder.max_frame_size
        runs: dict[int, list[tuple[int, bytes]]] = {}
        acked: dict[int, int] = {}
        end = len(data)
        at = 0
        while end - at >= _DELIVER_AT:
            # (a SEND_ACK has the same shape: its sequence number where a delivery has its id)
            length, ftype, channel, inner, number = head(data, at)
            after = at + 4 + length
            if ftype != _CHANNEL or not channel or length > limit or after > end:
                break  # (the decoder names a problem; the end of a frame comes later)
            if inner == _DELIVER and length > _DELIVER_AT - 4:
                run = runs.get(channel)
                if run is None:
                    run = runs[channel] = []
                run.append((number, data[at + _DELIVER_AT : after]))
            elif inner == _SEND_ACK and length == _DELIVER_AT - 4:
                if number > acked.get(channel, 0):
                    acked[channel] = number
            else:
                break
            at = after
        if at < end and _small_start(data, at):
            self._partial, at = data[at:], end  # (its rest comes with the next read)
        if runs or acked:
            self.last_rx = self.loop.time()
            self._hand_over(runs, acked)
        if at < end:
            super().data_received(data[at:] if at else data)

    def handle_frames(self, frames: list[tuple[int, bytes]]) -> None:
        """Each channel's frames of the batch go to its link in one piece: the deliveries at
        the start of the batch as in :meth:`data_received`, the rest grouped by
        ``by_channel`` and decoded by each link (after them: a channel's frames keep their
        order)."""
        head = _CHANNEL_DELIVER_BODY.unpack_from
        runs: dict[int, list[tuple[int, bytes]]] = {}
        taken = 0
        for ftype, body in frames:
            if ftype != _CHANNEL or len(body) <= 13 or body[4] != _DELIVER:
                break
            channel, delivery_id = head(body)
            if not channel:
                break  # (by_channel names the problem)
            run = runs.get(channel)
            if run is None:
                run = runs[channel] = []
            run.append((delivery_id, body[13:]))
            taken += 1
        if runs:
            self._hand_over(runs, {})
        if taken < len(frames):
            self._handle_by_channel(frames[taken:] if taken else frames)

    def _hand_over(self, runs: dict[int, list[tuple[int, bytes]]], acked: dict[int, int]) -> None:
        links = self.links
        try:
            for channel, run in runs.items():
                if self.is_closed:
                    return
                link = links.get(channel)
                if link is not None:  # (None: closed already; what was in flight is dropped)
                    link.handlers.deliver(link, run)
            for channel, seq in acked.items():
                if self.is_closed:
                    return
                link = links.get(channel)
                if link is not None:
                    link.handlers.send_ack(seq)
        except (ProtocolError, ValueError) as exc:  # (as for the frames a decoder hands over)
            log.error("bad frame from the hub: %s", exc)
            self.abort()

    def _handle_by_channel(self, frames: list[tuple[int, bytes]]) -> None:
        try:
            for channel, run in by_channel(frames):
                if self.is_closed:
                    return
                if not channel:
                    super().handle_frames(run)
                    continue
                link = self.links.get(channel)
                if link is not None:  # (None: closed already; what was in flight is dropped)
                    link.handle_frames(run)
        except (ProtocolError, ValueError) as exc:
            log.error("bad frame from the hub: %s", exc)
            self.abort()

    def flush(self) -> None:
        acking = self.acking
        if acking:
            self.acking = []
            for link in acking:
                link.scheduled = False
                if link.acks and not link.is_closed:
                    self.out.append(channel_acks(link.channel, link.acks))
                link.acks = []
        super().flush()

    def resume_writing(self) -> None:
        super().resume_writing()
        for link in list(self.links.values()):
            link.handlers.writable()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        links = list(self.links.values())
        self.links.clear()
        for link in links:
            if link.error is None:
                link.error = self.error
            link.connection_lost(exc)


class ChannelLink(Connection):
    """One agent's channel on a :class:`Carrier`: what its HubClient uses as its connection."""

    def __init__(self, carrier: Carrier, channel: int, handlers: FrameHandlers) -> None:
        self.carrier = carrier
        self.channel = channel
        super().__init__(handlers, carrier.hub, carrier.loop)
        self.hub_id = carrier.hub_id

    @property  # type: ignore[override]
    def write_paused(self) -> bool:
        return self.carrier.write_paused

    @write_paused.setter
    def write_paused(self, value: bool) -> None:
        pass  # the carrying connection's

    def tls_certificate_sha256(self) -> bytes | None:
        return self.carrier.tls_certificate_sha256()

    def _arm_watchdog(self) -> None:
        pass  # the carrying connection pings for every channel

    def write(self, data: bytes) -> None:
        if not self.is_closed:
            self.carrier.write(wrap(self.channel, data))

    def _acks_due(self) -> None:
        # the carrying connection writes every channel's acknowledgements in its flush
        carrier = self.carrier
        carrier.acking.append(self)
        if not carrier.scheduled:
            carrier.scheduled = True
            self.loop.call_soon(carrier.flush)

    def flush(self) -> None:
        self.carrier.flush()

    def close(self) -> None:
        """Closes this channel (the hub takes the agent offline); the connection carries on."""
        if self.is_closed:
            return
        if not self.carrier.is_closed:
            self.carrier.flush()  # its acknowledgements first
            self.carrier.write(
                wrap(self.channel, encode_error(ErrorCode.SHUTTING_DOWN, "channel closed"))
            )
        self.carrier.forget(self)
        self.connection_lost(None)

    def abort(self) -> None:
        self.close()


class CarrierPool:
    """The shared connections of one NetworkHub's agents (one event loop's)."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl: _ssl.SSLContext | None,
        connect_timeout: float,
        *,
        first_alone: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl
        self.connect_timeout = connect_timeout
        self.carrier: Carrier | None = None
        self.offered: bool | None = None  # None: not known yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Task[None] | None = None  # a new shared connection on its way
        # The first agent connects alone (as if there were no channels), so that a process with
        # one agent pays nothing for them (a frame in a channel costs a wrapping on each side);
        # its handlers name it across its reconnects.
        self._alone: FrameHandlers | None = None
        self._first_alone = first_alone

    async def link(self, handlers: FrameHandlers) -> ChannelLink | None:
        """A new channel for an agent, on the shared connection (made if there is none or it
        is full); None when the agent connects alone: the first agent (unless ``first_alone``
        is false), every agent when the hub offers no channels, or from another event loop.
        Raises :class:`HubError` if the hub cannot be reached: every agent waiting for the same
        new connection gets that error at once, rather than each trying again in turn."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        if self._loop is not loop:
            return None
        if self._first_alone and self._alone in (None, handlers):
            self._alone = handlers
            return None
        for _ in range(3):
            if self.offered is False:
                return None
            carrier = self.carrier
            if carrier is not None and not carrier.is_closed and not carrier.full():
                return carrier.open_link(handlers)
            opening = self._opening
            if opening is None or opening.done():
                opening = self._opening = loop.create_task(self._open())
                opening.add_done_callback(self._opened)
            await asyncio.shield(opening)
        raise HubError(f"the shared connection to the hub at {self.host}:{self.port} kept closing")

    def _opened(self, task: asyncio.Task[None]) -> None:
        if self._opening is task:
            self._opening = None
        if not task.cancelled():
            task.exception()  # (retrieved: every waiter got it)

    async def _open(self) -> None:
        conn, _welcome, info = await open_connection(
            self.host,
            self.port,
            self.ssl,
            self.connect_timeout,
            _CARRIER_HANDLERS,
            lambda _conn, _welcome: encode_frame(FrameType.LOOKUP),
            Carrier,
        )
        assert isinstance(conn, Carrier)
        room = info.get("channels")
        if type(room) is not int or room <= 0:
            log.info("the hub at %s:%d offers no channels: a connection per agent", *self._at)
            self.offered = False
            conn.close()
            return
        self.offered = True
        conn.room = room
        self.carrier = conn

    @property
    def _at(self) -> tuple[str, int]:
        return self.host, self.port

    def close(self) -> None:
        carrier, self.carrier = self.carrier, None
        if carrier is not None:
            for link in list(carrier.links.values()):
                link.close()
            carrier.close()
