"""A hub connection's output and reading: frames collected and written once per batch of work,
reading paused while any reason to pause holds, closing.

:meth:`ConnectionOutput.write` only collects frames; the hub's :class:`OutputQueue` writes each
connection's frames in one ``transport.write`` at the end of the batch of work that produced
them (at the latest in the next loop iteration).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agentmesh.hub.states import CLOSED, CLOSING
from agentmesh.hub_protocol import encode_deliver, encode_error, encode_send_ack

__all__ = ["ConnectionOutput", "OutputQueue"]

log = logging.getLogger("agentmesh.hub")


class OutputQueue:
    """The connections with frames waiting in their ``out``: written out together, one write
    per connection per batch of work (at the latest in the next loop iteration)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.unflushed: list[ConnectionOutput] = []

    def add(self, conn: ConnectionOutput) -> None:
        self.unflushed.append(conn)
        if len(self.unflushed) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        conns, self.unflushed = self.unflushed, []
        for c in conns:
            c.flush_out()


class ConnectionOutput:
    """The output side of :class:`~agentmesh.hub.connection.Connection` (which sets these
    attributes up)."""

    loop: asyncio.AbstractEventLoop
    output: OutputQueue
    transport: asyncio.Transport | None
    state: int
    out: list[bytes]
    out_scheduled: bool
    out_bytes: int
    paused_by: set[str]

    def write_deliver(self, delivery_id: int, envelope: bytes) -> None:
        """A DELIVER frame (a channel writes it wrapped, in one piece)."""
        self.write(encode_deliver(delivery_id, envelope))

    def write_send_ack(self, client_seq: int) -> None:
        """A SEND_ACK frame (a channel writes it wrapped)."""
        self.write(encode_send_ack(client_seq))

    def write(self, data: bytes) -> None:
        if self.state >= CLOSED:
            return
        self.out.append(data)
        self.out_bytes += len(data)
        if not self.out_scheduled:
            self.out_scheduled = True
            self.output.add(self)

    def flush_out(self) -> None:
        self.out_scheduled = False
        self.out_bytes = 0
        out = self.out
        if not out:
            return
        t = self.transport
        if t is None or self.state >= CLOSED or t.is_closing():
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        t.write(data)

    def pause(self, reason: str) -> None:
        if not self.paused_by and self.transport is not None and self.state < CLOSING:
            with contextlib.suppress(Exception):
                self.transport.pause_reading()
        self.paused_by.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self.paused_by:
            return
        self.paused_by.discard(reason)
        if not self.paused_by and self.transport is not None and self.state < CLOSING:
            with contextlib.suppress(Exception):
                self.transport.resume_reading()

    def fail(self, code: int, message: str, level: int = logging.INFO) -> None:
        """Send an ERROR frame and close."""
        if self.state >= CLOSING:
            return
        log.log(level, "closing %r: %s", self, message)
        self.write(encode_error(code, message))
        self.flush_out()
        self.close()

    def close(self) -> None:
        if self.state >= CLOSING:
            return
        self.state = CLOSING
        t = self.transport
        if t is None:
            return
        t.close()
        # A peer that never reads would keep the transport (and its buffer) forever.
        self.loop.call_later(2.0, self.abort)

    def abort(self) -> None:
        if self.state != CLOSED and self.transport is not None:
            self.transport.abort()
