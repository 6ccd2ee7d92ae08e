"""One TCP (or TLS) connection of a HubClient: frame input and output, and liveness.

A :class:`Connection` decodes the hub's frames and hands each to the client's rooms through
:class:`FrameHandlers`; it batches what the client writes (and the delivery acknowledgements)
into one write per event loop iteration, and pings a quiet hub, aborting one that stays silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from agentmesh.errors import HubError
from agentmesh.hub_protocol import (
    ErrorCode,
    FrameDecoder,
    FrameType,
    HubRequestError,
    ProtocolError,
    Welcome,
    decode_deliver,
    decode_error,
    decode_response,
    decode_send_ack,
    decode_send_error,
    decode_send_group_error,
    decode_welcome,
    encode_acks,
    encode_frame,
    error_for_code,
)

__all__ = ["Connection", "FrameHandlers"]

log = logging.getLogger(__name__)

_PING = encode_frame(FrameType.PING)
_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class FrameHandlers:
    """Where a connection hands what the hub sends (the client's rooms)."""

    #: DELIVER: (the connection they came on, every ``(delivery id, envelope)`` of one read,
    #: in order): one call per read, however many envelopes it brought
    deliver: Callable[[Connection, list[tuple[int, bytes]]], None]
    #: SEND_ACK: every send up to this sequence number is durable
    send_ack: Callable[[int], None]
    #: SEND_ERROR: (sequence number, error code, message)
    send_error: Callable[[int, int, str], None]
    #: SEND_GROUP_ERROR: (sequence number, error code, the member refused, message)
    send_group_error: Callable[[int, int, str, str], None]
    #: RESPONSE: (request id, status, payload)
    response: Callable[[int, int, bytes], None]
    #: the connection can take more output (or is gone)
    writable: Callable[[], None]


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection of a HubClient."""

    def __init__(self, handlers: FrameHandlers, hub: str, loop: asyncio.AbstractEventLoop) -> None:
        self.handlers = handlers
        self.hub = hub  # "host:port", for messages
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(64 * 1024)
        self.welcome: asyncio.Future[Welcome] = loop.create_future()
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.error: HubRequestError | None = None
        self.hub_id = b""
        self.out: list[bytes] = []
        self.acks: list[int] = []
        self.scheduled = False
        self.write_paused = False
        self.last_rx = loop.time()
        self.is_closed = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.ping_interval = 20.0

    # ---- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)

    def tls_certificate_sha256(self) -> bytes | None:
        """SHA-256 of the hub's certificate (DER) on a TLS connection, None on plain TCP.

        Python's ssl module has no keying-material exporter (RFC 5705) before 3.13, so the
        registration proof binds the certificate the client verified instead: a hub without
        that certificate's private key cannot present this proof elsewhere."""
        # (a TLS hub refuses a proof without the binding, so a missing ssl_object fails closed)
        obj = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        return hashlib.sha256(der).digest() if der else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        err: BaseException = self.error or HubError(
            f"connection to hub {self.hub} lost" + (f": {exc}" if exc else "")
        )
        for fut in (self.welcome, self.ready):
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved
        if not self.closed.done():
            self.closed.set_result(None)
        self.handlers.writable()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.handlers.writable()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as exc:
            log.error("bad data from the hub: %s", exc)
            self.abort()
            return
        if not frames:
            return
        self.last_rx = self.loop.time()
        self.handle_frames(frames)

    def handle_frames(self, frames: list[tuple[int, bytes]]) -> None:
        handlers = self.handlers
        u64 = _U64.unpack_from
        delivered: list[tuple[int, bytes]] = []  # handed over together, before any other frame
        try:
            for ftype, body in frames:
                if ftype == FrameType.DELIVER and len(body) > 8:  # (decode_deliver, inlined)
                    delivered.append((u64(body)[0], body[8:]))
                    continue
                if delivered:
                    handlers.deliver(self, delivered)
                    delivered = []
                if ftype == FrameType.CHANNEL:
                    self.on_channel(body)
                elif ftype == FrameType.DELIVER:
                    decode_deliver(body)  # (too short: raises the error that names it)
                elif ftype == FrameType.SEND_ACK:
                    handlers.send_ack(decode_send_ack(body))
                elif ftype == FrameType.SEND_ERROR:
                    seq, code, msg = decode_send_error(body)
                    handlers.send_error(seq, code, msg)
                elif ftype == FrameType.SEND_GROUP_ERROR:
                    seq, code, member, msg = decode_send_group_error(body)
                    handlers.send_group_error(seq, code, member, msg)
                elif ftype == FrameType.PING:
                    self.write(encode_frame(FrameType.PONG, body[:64]))
                elif ftype == FrameType.PONG:
                    pass
                elif ftype == FrameType.RESPONSE:
                    rid, status, payload = decode_response(body)
                    handlers.response(rid, status, payload)
                elif ftype == FrameType.WELCOME:
                    w = decode_welcome(body)
                    self.hub_id = w.hub_id
                    self.ping_interval = w.ping_interval
                    self.decoder.max_frame_size = max(w.max_frame_size, 64 * 1024) + 1024
                    if not self.welcome.done():
                        self.welcome.set_result(w)
                    self._arm_watchdog()
                elif ftype == FrameType.READY:
                    info = json.loads(body.decode("utf-8"))
                    if not self.ready.done():
                        self.ready.set_result(info if isinstance(info, dict) else {})
                elif ftype == FrameType.ERROR:
                    code, msg = decode_error(body)
                    self.error = error_for_code(code, msg)
                    level = logging.DEBUG if code == ErrorCode.SHUTTING_DOWN else logging.WARNING
                    log.log(level, "hub closed the connection: %s", msg)
                    self.close()
                    return
                else:
                    raise ProtocolError(ErrorCode.PROTOCOL, f"unexpected frame 0x{ftype:02x}")
            if delivered:
                handlers.deliver(self, delivered)
        except (ProtocolError, ValueError) as exc:
            log.error("bad frame from the hub: %s", exc)
            self.abort()

    def on_channel(self, body: bytes) -> None:
        """A CHANNEL frame: only a connection carrying channels takes them
        (agentmesh.hub_client.channels)."""
        raise ProtocolError(ErrorCode.PROTOCOL, "CHANNEL frame on a connection without channels")

    # ---- liveness ----------------------------------------------------------------------------

    def _arm_watchdog(self) -> None:
        self._watchdog = self.loop.call_later(max(0.05, self.ping_interval / 2), self._watch)

    def _watch(self) -> None:
        if self.is_closed:
            return
        idle = self.loop.time() - self.last_rx
        if idle > max(3 * self.ping_interval, 1.0):
            log.warning("hub silent for %.1fs: reconnecting", idle)
            self.abort()
            return
        if idle >= self.ping_interval:
            self.write(_PING)
        self._arm_watchdog()

    # ---- output ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.is_closed:
            return
        self.out.append(data)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def ack(self, delivery_id: int) -> None:
        if self.is_closed:
            return
        self.acks.append(delivery_id)
        if not self.scheduled:
            self.scheduled = True
            self._acks_due()

    def ack_many(self, delivery_ids: list[int]) -> None:
        if self.is_closed or not delivery_ids:
            return
        self.acks.extend(delivery_ids)
        if not self.scheduled:
            self.scheduled = True
            self._acks_due()

    def _acks_due(self) -> None:
        """Acknowledgements wait: have them written (with the rest) in this loop iteration."""
        self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        t = self.transport
        if t is None or self.is_closed or t.is_closing():
            self.out.clear()
            self.acks.clear()
            return
        if self.acks:
            self.out.append(encode_acks(self.acks))
            self.acks = []
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            t.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
