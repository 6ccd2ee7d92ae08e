"""Agents sharing one connection, on the hub's side: the channels a connection carries.

A lookup connection whose READY offered ``channels`` may carry agents as channels
(:mod:`agentmesh.hub_channels` has the frame). Each channel is a :class:`ChannelConnection`:
a :class:`~agentmesh.hub.connection.Connection` in everything but its transport, so it walks
the same handshake (its own HELLO, a fresh challenge, REGISTER with the same proof and id
binding) and has its own :class:`~agentmesh.hub.intake.SendIntake`,
:class:`~agentmesh.hub.delivery.DeliveryPump` and requests: acknowledgements, quotas,
per-sender order and redelivery stay per agent. What it writes goes out wrapped in CHANNEL
frames on the carrying connection, joined with every other channel's output into one write.

A channel's errors close that channel alone (an ERROR frame inside it); only a malformed
CHANNEL frame, a frame on a channel never opened, or the connection's own failures close the
connection and with it every channel. The carrying connection's backpressure is shared: when
one channel must stop taking frames (a registration in progress, uncommitted bytes over the
limit, unread output), reading the connection pauses.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any

from agentmesh.hub.connection import Connection
from agentmesh.hub.states import AGENT, CLOSED, CLOSING
from agentmesh.hub_channels import by_channel, decode_channel, wrap, wrap_deliver
from agentmesh.hub_protocol import (
    ErrorCode,
    FrameType,
    ProtocolError,
    encode_error,
    encode_send_ack,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = ["ChannelConnection", "ChannelTable"]

log = logging.getLogger("agentmesh.hub")

_CHANNEL_NO = struct.Struct(">I")
# (plain ints: comparing with an enum member costs ten times more, per frame)
_CHANNEL = int(FrameType.CHANNEL)
_SEND = int(FrameType.SEND)
_DELIVERY_ACK = int(FrameType.DELIVERY_ACK)


class ChannelTable:
    """The channels one connection carries, by number (numbers only grow, never reused)."""

    def __init__(self, carrier: Connection) -> None:
        self.carrier = carrier
        self.open: dict[int, ChannelConnection] = {}
        self.highest = 0
        self.limit = carrier.limits.max_channels_per_connection

    def on_frames(self, frames: list[tuple[int, bytes]]) -> None:
        """A batch of the carrying connection's frames: each channel's frames go to that channel
        in one piece (``by_channel``), as a batch read on its own connection would."""
        carrier = self.carrier
        open_ = self.open
        try:
            taken = self._as_they_come(frames)
            if taken == len(frames):
                return
            for channel, run in by_channel(frames[taken:] if taken else frames):
                if carrier.state >= CLOSING:
                    return
                if not channel:
                    carrier._process(run)
                    continue
                chan = open_.get(channel)
                if chan is None:
                    chan = self._channel(channel, run[0][0])
                if chan is not None:
                    chan.receive(run)
        except ProtocolError as exc:
            carrier.fail(exc.code, exc.message)

    def _as_they_come(self, frames: list[tuple[int, bytes]]) -> int:
        """The SENDs and DELIVERY_ACKs at the start of ``frames``, each handed to its channel as
        it comes; returns how many were taken. A process hosting many agents sends for each in
        turn, so nearly every channel's run in a read is one frame long, and grouping the read
        by channel (``by_channel``) cost more than it saved. The rest, from the first frame of
        another kind or of a channel that must not take frames now (registering, blocked,
        holding a backlog, output unread), goes the general way, behind what was taken: a
        channel's frames keep their order."""
        carrier = self.carrier
        open_ = self.open
        number = _CHANNEL_NO.unpack_from
        for at, (ftype, body) in enumerate(frames):
            if ftype != _CHANNEL or len(body) < 6 or carrier.state >= CLOSING:
                return at
            inner = body[4]
            if inner != _SEND and inner != _DELIVERY_ACK:
                return at
            chan = open_.get(number(body)[0])
            if (
                chan is None
                or chan.state != AGENT
                or chan.blocked
                or chan.backlog
                or carrier.write_paused
                or carrier.out_bytes >= carrier.high_water
            ):
                return at
            try:
                if inner == _SEND:
                    coro = chan.intake.on_send(body, 5)
                    if coro is not None:
                        chan.hold_for(coro)  # (its later frames wait: the general way)
                else:
                    chan.pump.on_acks(body[5:])
            except Exception as exc:  # (this channel's error closes this channel alone)
                chan.frame_failed(exc)
        return len(frames)

    def on_frame(self, body: bytes) -> None:
        """One CHANNEL frame taken from the carrying connection's backlog."""
        channel, ftype, inner = decode_channel(body)
        chan = self._channel(channel, ftype)
        if chan is not None:
            chan.receive([(ftype, inner)])

    def _channel(self, channel: int, ftype: int) -> ChannelConnection | None:
        """The open channel of this number; a new one for its HELLO; None for one closed
        already (what was still in flight is dropped) or refused."""
        chan = self.open.get(channel)
        if chan is not None:
            return chan
        if channel <= self.highest:
            return None
        if ftype != FrameType.HELLO:
            raise ProtocolError(
                ErrorCode.PROTOCOL, f"frame 0x{ftype:02x} on channel {channel} before HELLO"
            )
        self.highest = channel
        if len(self.open) >= self.limit:
            why = f"this connection carries {len(self.open)} channels, the most it may"
            self.carrier.write(wrap(channel, encode_error(ErrorCode.TOO_MANY_CONNECTIONS, why)))
            return None
        chan = self.open[channel] = ChannelConnection(self.carrier, channel)
        return chan

    def forget(self, chan: ChannelConnection) -> None:
        self.open.pop(chan.channel, None)

    def writable(self) -> None:
        """The carrying connection can take output again: every channel carries on."""
        for chan in list(self.open.values()):
            chan.resume_writing()

    def lost(self) -> None:
        chans = list(self.open.values())
        self.open.clear()
        for chan in chans:
            chan.connection_lost(None)


class ChannelConnection(Connection):
    """One agent's channel on a shared connection (see the module's docstring)."""

    def __init__(self, carrier: Connection, channel: int) -> None:
        self.carrier = carrier
        self.channel = channel
        super().__init__(carrier.hub)
        self.sink = carrier
        self.peer = f"{carrier.peer}#{channel}"
        self.addr = carrier.addr

    # The carrying connection's output buffer and write pause are the channel's (``sink``;
    # these properties answer for code that asks the channel itself).
    @property  # type: ignore[override]
    def write_paused(self) -> bool:
        return self.carrier.write_paused

    @write_paused.setter
    def write_paused(self, value: bool) -> None:
        pass  # set on the carrying connection

    @property  # type: ignore[override]
    def out_bytes(self) -> int:
        return self.carrier.out_bytes

    @out_bytes.setter
    def out_bytes(self, value: int) -> None:
        pass

    @property  # type: ignore[override]
    def high_water(self) -> int:
        return self.carrier.high_water

    @high_water.setter
    def high_water(self, value: int) -> None:
        pass

    def __repr__(self) -> str:
        who = self.agent_id if self.agent_id is not None else "-"
        return f"<channel {self.peer} agent={who}>"

    def receive(self, frames: list[tuple[int, bytes]]) -> None:
        """Frames of this channel, from the carrying connection."""
        if self.state >= CLOSING:
            return
        if self.blocked or self.backlog or self.carrier.write_paused:
            self.backlog.extend(frames)
            return
        self._process(frames)

    def _on_other(self, ftype: int, body: bytes) -> Coroutine[Any, Any, None] | None:
        if ftype == FrameType.LOOKUP:
            raise ProtocolError(ErrorCode.PROTOCOL, "LOOKUP inside a channel")
        return super()._on_other(ftype, body)

    def became_agent(self) -> None:
        self.carrier.became_agent()

    def write(self, data: bytes) -> None:
        if self.state >= CLOSED:
            return
        self.carrier.write(wrap(self.channel, data))

    def write_deliver(self, delivery_id: int, envelope: bytes) -> None:
        if self.state >= CLOSED:
            return
        self.carrier.write(wrap_deliver(self.channel, delivery_id, envelope))

    def write_send_ack(self, client_seq: int) -> None:
        if self.state >= CLOSED:
            return
        self.carrier.write(wrap(self.channel, encode_send_ack(client_seq)))

    def flush_out(self) -> None:
        pass  # the carrying connection writes everything in its batch

    def pause(self, reason: str) -> None:
        if reason not in self.paused_by:
            self.paused_by.add(reason)
            self.carrier.pause(f"{self.channel}:{reason}")

    def resume(self, reason: str) -> None:
        if reason in self.paused_by:
            self.paused_by.discard(reason)
            self.carrier.resume(f"{self.channel}:{reason}")

    def close(self) -> None:
        """Closes this channel alone, at once: the agent is offline; what it had in flight is
        delivered again on its next registration."""
        if self.state >= CLOSING:
            return
        self.state = CLOSING
        for reason in list(self.paused_by):
            self.resume(reason)
        tables = self.carrier.channels
        if tables is not None:
            tables.forget(self)
        self.connection_lost(None)

    def abort(self) -> None:
        self.close()
