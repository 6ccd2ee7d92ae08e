"""Publishes and acknowledgements written as protocol commands to nats-py's outgoing buffer.

nats-py's ``publish`` checks and encodes every header on every call (a regular expression,
``strip``, ``translate`` and ``encode`` per header): with the two headers of an envelope's
publish that is two thirds of its cost (about 10 of 15 microseconds here). The subjects
and header names here are our own, and a header value is checked once (printable ASCII,
so it cannot end the header line), so the command is built directly; acknowledgements of a
batch leave as one write. The buffer is nats-py's own, so its flusher, its reconnect
handling and its limit on buffered bytes apply as to any publish.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ack_commands", "can_write", "publish_command", "write"]


def can_write(nc: Any) -> bool:
    """Whether this nats-py client has the buffer these commands go to (else: ``publish``)."""
    return hasattr(nc, "_send_command") and hasattr(nc, "_flush_queue")


def header_value_ok(value: str) -> bool:
    return value.isascii() and value.isprintable()


def publish_command(subject: str, reply: str, headers: dict[str, str], data: bytes) -> bytes:
    """``HPUB``; every header value must pass :func:`header_value_ok` (ValueError if not)."""
    lines = [b"NATS/1.0\r\n"]
    for name, value in headers.items():
        if not header_value_ok(value):
            raise ValueError(f"header {name} has a value that cannot be sent: {value!r}")
        lines.append(f"{name}: {value}\r\n".encode("ascii"))
    lines.append(b"\r\n")
    head = b"".join(lines)
    size = len(head) + len(data)
    return b"".join(
        (f"HPUB {subject} {reply} {len(head)} {size}\r\n".encode(), head, data, b"\r\n")
    )


def ack_commands(replies: list[str]) -> bytes:
    """An empty publish (JetStream's acknowledgement) to each of ``replies``."""
    return "".join(f"PUB {reply} 0\r\n\r\n" for reply in replies).encode()


async def write(nc: Any, command: bytes) -> None:
    """Into nats-py's buffer, then its flusher is woken (as its own publish does)."""
    await nc._send_command(command)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()
