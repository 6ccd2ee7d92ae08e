"""Channels: several agents on one hub connection (the CHANNEL frame's codec).

A process hosting hundreds of agents would otherwise hold a connection per agent, and every
message would cost a read and a write of its own on both ends. On a shared connection each
agent's frames travel wrapped in a CHANNEL frame::

    u32 length | u8 CHANNEL (0x40) | u32 channel | u8 frame type | body

that is, the agent's own frame with the channel number put in front of its type. Inside a
channel everything is exactly as on a connection of its own (HELLO, WELCOME with a fresh
challenge, REGISTER, READY, SEND, DELIVER, ...); the connection itself is a lookup connection
whose READY offers ``channels`` (how many it may carry). ``docs/protocol.md#shared-connections``
describes the exchange and which errors close the whole connection.
"""

from __future__ import annotations

import struct

from agentmesh.hub_protocol import ErrorCode, FrameType, ProtocolError

__all__ = ["CHANNEL_OVERHEAD", "by_channel", "decode_channel", "wrap", "wrap_deliver"]

_CHANNEL_HEAD = struct.Struct(">IBI")  # frame header + channel number
_CHANNEL_NO = struct.Struct(">I")
# frame header, channel number, then the DELIVER inside: type and delivery id
_CHANNEL_DELIVER_HEAD = struct.Struct(">IBIBQ")
#: Bytes a CHANNEL frame adds to the frame it carries.
CHANNEL_OVERHEAD = 5


def wrap(channel: int, frame: bytes) -> bytes:
    """The encoded ``frame`` (header included) as a CHANNEL frame of ``channel``."""
    return _CHANNEL_HEAD.pack(len(frame) + 1, FrameType.CHANNEL, channel) + frame[4:]


def wrap_deliver(channel: int, delivery_id: int, envelope: bytes) -> bytes:
    """``wrap(channel, encode_deliver(delivery_id, envelope))`` in one piece (one copy of the
    envelope instead of two: the hub writes one per message it delivers on a channel)."""
    return (
        _CHANNEL_DELIVER_HEAD.pack(
            14 + len(envelope), FrameType.CHANNEL, channel, FrameType.DELIVER, delivery_id
        )
        + envelope
    )


def decode_channel(body: bytes) -> tuple[int, int, bytes]:
    """(channel, frame type, body) of a CHANNEL frame's body; ProtocolError if malformed."""
    if len(body) < 5:
        raise ProtocolError(ErrorCode.PROTOCOL, "CHANNEL frame shorter than 5 bytes")
    channel = _CHANNEL_NO.unpack_from(body)[0]
    ftype = body[4]
    if channel == 0:
        raise ProtocolError(ErrorCode.PROTOCOL, "CHANNEL frame for channel 0")
    if ftype == FrameType.CHANNEL or ftype not in _INNER_TYPES:
        raise ProtocolError(
            ErrorCode.UNKNOWN_FRAME, f"frame type 0x{ftype:02x} cannot travel in a channel"
        )
    return channel, ftype, body[5:]


def by_channel(frames: list[tuple[int, bytes]]) -> list[tuple[int, list[tuple[int, bytes]]]]:
    """A batch of a shared connection's frames, grouped: ``(channel, its frames, unwrapped)``
    for the CHANNEL frames, and ``(0, [frame])`` for each frame of the connection itself.

    The frames of one channel stay in their order, and so do the connection's own frames
    relative to everything else; only frames of *different* channels between two of the
    connection's own frames are regrouped (channel by channel, in order of first appearance).
    The peer interleaves its agents' frames (each agent sending in turn gives runs of one
    frame), and each channel's frames are then handled in one piece, as a batch read on its own
    connection would be. ProtocolError at a malformed CHANNEL frame, before anything is handed
    over."""
    out: list[tuple[int, list[tuple[int, bytes]]]] = []
    groups: dict[int, list[tuple[int, bytes]]] = {}
    number = _CHANNEL_NO.unpack_from
    inner_types = _INNER_TYPES
    channel_type = _CHANNEL_TYPE  # (an int: comparing with the enum member costs ten times more)
    for ftype, body in frames:
        if ftype != channel_type:
            groups = {}  # (what comes after it is grouped anew, behind it)
            out.append((0, [(ftype, body)]))
            continue
        # (decode_channel inlined: this runs for every frame of every agent)
        if len(body) < 5 or body[4] not in inner_types:
            decode_channel(body)  # raises the error that names the problem
        channel = number(body)[0]
        if not channel:
            decode_channel(body)  # (channel 0)
        inner_type, inner = body[4], body[5:]
        group = groups.get(channel)
        if group is None:
            group = groups[channel] = []
            out.append((channel, group))
        group.append((inner_type, inner))
    return out


_CHANNEL_TYPE = int(FrameType.CHANNEL)
_INNER_TYPES = frozenset(int(t) for t in FrameType) - {_CHANNEL_TYPE}
