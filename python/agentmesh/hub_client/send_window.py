"""The send path of a HubClient: sequence numbers, resends, refusals, flow control, flush.

Every envelope sent gets the next sequence number and stays in the window until the hub
acknowledges that it is durably stored (``SEND_ACK`` covers every number up to its own) or
refuses it (``SEND_ERROR``, kept as a pending error the next send or flush raises). After a
reconnect, what the hub has not acknowledged is written again. The window has room while fewer
than ``max_unacked`` envelopes wait and the connection's write buffer is not full.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable

from agentmesh.crypto import check_agent_id
from agentmesh.errors import FlushTimeoutError, HubError
from agentmesh.fanout import address_all, check_recipients
from agentmesh.flush_waiters import FlushWaiters
from agentmesh.hub_client.connection import Connection
from agentmesh.hub_protocol import (
    ErrorCode,
    FrameType,
    HubRequestError,
    PeerNotFoundError,
    decode_send_expiring,
    encode_recipient_block,
    encode_send,
    encode_send_expiring,
    encode_send_group,
    encode_send_group_block,
    error_for_code,
)

__all__ = ["FANOUT_BYTES_PER_FRAME", "SendWindow"]

log = logging.getLogger(__name__)

#: Bytes of copies one SEND_GROUP asks the hub to store, at most (less when the hub's own
#: bound, ``HubLimits.max_fanout_bytes`` in READY, is lower): a larger fan-out is split.
FANOUT_BYTES_PER_FRAME = 16 * 1024 * 1024

#: Where a frame's type byte is, and where its body starts (after the u32 length).
_FRAME_TYPE_AT = 4
_BODY_AT = 5

#: Recipient ids kept checked and encoded (the id rule is checked once per recipient).
_ENCODED_KEPT = 4096
#: A recipient the hub reported unknown is refused at once for this long (seconds).
_PEER_MISSING_TTL = 2.0


class SendWindow:
    """The envelopes sent and not yet acknowledged by the hub, and who waits for them."""

    def __init__(self, max_unacked: int, connection: Callable[[], Connection | None]) -> None:
        self.max_unacked = max_unacked
        self._connection = connection  # the client's current connection, if any
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0
        self._unacked: OrderedDict[int, tuple[str, bytes]] = OrderedDict()
        self._errors: deque[HubRequestError] = deque()
        self._missing: dict[str, float] = {}
        self._encoded: dict[str, bytes] = {}  # recipient ids checked, as UTF-8
        self._flushes = FlushWaiters()
        self._room: asyncio.Event | None = None
        self._last_recipients: tuple[list[str], list[bytes], bytes, str] | None = None
        self.sent = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called once, from the event loop the client is used from."""
        self._loop = loop
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        """Envelopes sent and not yet acknowledged by the hub."""
        return len(self._unacked)

    # ---- sending -----------------------------------------------------------------------------

    def raise_refusal(self) -> None:
        """Raises the oldest refusal of an earlier send not yet raised, if any."""
        if self._errors:
            raise self._errors.popleft()

    def send_nowait(
        self, recipient: str, envelope: bytes, max_frame: int, expires_ms: int = 0
    ) -> bool:
        """Queues and writes one envelope; False (nothing queued) when there is no room.
        ``expires_ms``: a SEND_EXPIRING (the hub drops it undelivered after that time)."""
        rb = self._checked(recipient, envelope, max_frame, 8 if expires_ms else 0)
        room = self._room
        assert room is not None
        if not room.is_set():
            return False
        self._seq += 1
        if expires_ms:
            frame = encode_send_expiring(self._seq, expires_ms, rb, bytes(envelope))
        else:
            frame = encode_send(self._seq, rb, bytes(envelope))
        # (one frame: _write without its list, once per message)
        self._unacked[self._seq] = (recipient, frame)
        self.sent += 1
        p = self._connection()
        if p is not None and not p.is_closed:
            p.write(frame)
        self._fill(room, p)
        return True

    def _fill(self, room: asyncio.Event, p: Connection | None) -> None:
        """No more room once the window or the connection's write buffer is full."""
        if len(self._unacked) >= self.max_unacked or (p is not None and p.write_paused):
            room.clear()

    def _checked(self, recipient: str, envelope: bytes, max_frame: int, extra: int = 0) -> bytes:
        """The recipient's id as UTF-8, once the send is known to be one the hub could take."""
        missing = self._missing.get(recipient)
        if missing is not None:
            assert self._loop is not None
            if self._loop.time() - missing < _PEER_MISSING_TTL:
                raise PeerNotFoundError(
                    ErrorCode.PEER_NOT_FOUND,
                    f"Peer {recipient!r} not found on hub",
                    recipient=recipient,
                )
            del self._missing[recipient]
        rb = self._encoded.get(recipient)
        if rb is None:
            check_agent_id(recipient, "recipient id")
            rb = recipient.encode("utf-8")
            if len(self._encoded) >= _ENCODED_KEPT:
                self._encoded.clear()
            self._encoded[recipient] = rb
        if not isinstance(envelope, (bytes, bytearray, memoryview)):
            raise TypeError("envelope must be bytes")
        if 1 + 8 + extra + 1 + len(rb) + len(envelope) > max_frame:
            raise HubError(
                f"envelope of {len(envelope)} bytes exceeds the hub's frame limit of "
                f"{max_frame} bytes"
            )
        return rb

    def _write(self, frames: list[tuple[str, bytes]]) -> None:
        """Keeps (label, frame) pairs (numbered ``self._seq - len + 1 .. self._seq``) until
        acknowledged, and writes them."""
        first = self._seq - len(frames) + 1
        for i, item in enumerate(frames):
            self._unacked[first + i] = item
        self.sent += 1
        p = self._connection()
        if p is not None and not p.is_closed:
            for _, frame in frames:
                p.write(frame)
        assert self._room is not None
        self._fill(self._room, p)

    def send_group_nowait(
        self,
        recipients: list[str],
        envelope: bytes,
        max_frame: int,
        fanout: bool,
        fanout_bytes: int = FANOUT_BYTES_PER_FRAME,
    ) -> bool:
        """Queues and writes one group message for every recipient; False (nothing queued)
        when there is no room. With ``fanout`` (the hub said so in READY) one SEND_GROUP
        frame (more when the copies' bytes exceed ``fanout_bytes``, the hub's bound, or the
        frame limit); from a hub without it, or one whose bound is below a single copy, one
        SEND of each member's copy."""
        if not isinstance(envelope, (bytes, bytearray, memoryview)):
            raise TypeError("envelope must be bytes")
        data = bytes(envelope)
        recipients, encoded, block, label = self._recipients(recipients)
        missing: list[PeerNotFoundError] = []
        fanout = fanout and len(data) + 256 <= fanout_bytes
        whole = (
            len(encoded) * (len(data) + 256) <= fanout_bytes
            and 1 + 8 + len(block) + len(data) <= max_frame
        )
        if fanout and not whole:
            parts = _fanout_parts(encoded, len(data), max_frame, fanout_bytes)
        elif not fanout:
            copies = address_all(data, recipients)
            kept = []
            for recipient, rb, copy in zip(recipients, encoded, copies, strict=True):
                try:
                    self._checked(recipient, copy, max_frame)
                except PeerNotFoundError as exc:  # (reported; the others still get theirs)
                    missing.append(exc)
                    continue
                kept.append((recipient, rb, copy))
        room = self._room
        assert room is not None
        if not room.is_set():
            return False
        frames = []
        if fanout and whole:  # (the usual case: one frame, the recipient block kept)
            self._seq += 1
            frames.append((label, encode_send_group_block(self._seq, block, data)))
        elif fanout:
            for part in parts:
                self._seq += 1
                label = ", ".join(r.decode("utf-8") for r in part)
                frames.append((label, encode_send_group(self._seq, part, data)))
        else:
            for recipient, rb, copy in kept:
                self._seq += 1
                frames.append((recipient, encode_send(self._seq, rb, copy)))
        if frames:
            self._write(frames)
        for refused in missing:  # (numbered: a later send raising it is not what it refuses)
            self._errors.append(
                error_for_code(
                    refused.code, str(refused), recipient=refused.recipient, client_seq=self._seq
                )
            )
        return True

    def _recipients(self, recipients: list[str]) -> tuple[list[str], list[bytes], bytes, str]:
        """(recipients checked, their UTF-8 ids, their SEND_GROUP block, their names for an
        error); a group sends to the same members again and again, so the last list's are
        kept (compared in full)."""
        kept = self._last_recipients
        if kept is not None and kept[0] == recipients:
            return kept
        checked = check_recipients(recipients)
        encoded = [r.encode("utf-8") for r in checked]
        kept = (checked, encoded, encode_recipient_block(encoded), ", ".join(checked))
        self._last_recipients = kept
        return kept

    async def wait_for_room(self) -> None:
        room = self._room
        assert room is not None
        await room.wait()

    def update_room(self) -> None:
        room = self._room
        if room is None:
            return
        p = self._connection()
        if len(self._unacked) < self.max_unacked and not (p is not None and p.write_paused):
            room.set()

    def forget_missing(self, agent_id: str) -> None:
        """``agent_id`` exists after all (the hub has its bundle): stop refusing sends to it."""
        self._missing.pop(agent_id, None)

    def resend(
        self, acked: int, connection: Connection, *, fanout: bool = True, expiry: bool = True
    ) -> int:
        """After a (re)registration: drops what the hub acknowledged (``acked``) and writes the
        rest on the new connection; returns how many were written again. ``fanout`` and
        ``expiry``: what this hub's READY offers (a hub replaced by an older version may not)."""
        self._drop_acknowledged(acked)
        if not (fanout and expiry):
            self._fit_to_older_hub(fanout, expiry)
        for _recipient, frame in self._unacked.values():
            connection.write(frame)
        self._wake_flushers()
        return len(self._unacked)

    def _fit_to_older_hub(self, fanout: bool, expiry: bool) -> None:
        """Frames the hub no longer takes would be refused at every reconnect: a SEND_EXPIRING
        becomes the same SEND, under the same number (its recipient still drops it late: the
        expiry is under the signature); a SEND_GROUP, which cannot become per-member SENDs
        without moving after later sends, is refused here, naming its members."""
        u = self._unacked
        for seq, (label, frame) in list(u.items()):
            kind = frame[_FRAME_TYPE_AT]
            if kind == FrameType.SEND_EXPIRING and not expiry:
                _seq, _expires, recipient, envelope = decode_send_expiring(frame[_BODY_AT:])
                u[seq] = (label, encode_send(seq, recipient.encode("utf-8"), envelope))
            elif kind == FrameType.SEND_GROUP and not fanout:
                del u[seq]
                self._errors.append(
                    HubRequestError(
                        ErrorCode.BAD_REQUEST,
                        f"group message to {label} not sent: the hub no longer takes group "
                        "uploads (an older hub took its place before it was stored); send it "
                        "again",
                        recipient=label,
                        client_seq=seq,
                    )
                )

    # ---- the hub's answers -------------------------------------------------------------------

    def _drop_acknowledged(self, acked: int) -> None:
        """Forgets every envelope up to sequence number ``acked``: the hub has stored it."""
        u = self._unacked
        while u:
            seq = next(iter(u))
            if seq > acked:
                break
            del u[seq]

    def on_ack(self, acked: int) -> None:
        self._drop_acknowledged(acked)
        self._wake_flushers()
        room = self._room
        if room is not None and not room.is_set():
            self.update_room()

    def on_refusal(self, seq: int, code: int, message: str) -> None:
        item = self._unacked.pop(seq, None)
        recipient = item[0] if item is not None else None
        err = error_for_code(code, message, recipient=recipient, client_seq=seq)
        if code == ErrorCode.PEER_NOT_FOUND and recipient is not None and self._loop is not None:
            self._missing[recipient] = self._loop.time()
        log.info("hub refused an envelope for %r: %s", recipient, message)
        self._errors.append(err)
        self._wake_flushers()
        self.update_room()

    def on_member_refusal(self, seq: int, code: int, member: str, message: str) -> None:
        """One member of a SEND_GROUP refused: reported like a refused envelope (naming the
        member); the send stays in the window until the SEND_ACK that covers the others'
        copies (written again after a reconnect until then)."""
        err = error_for_code(code, message, recipient=member, client_seq=seq)
        if code == ErrorCode.PEER_NOT_FOUND and self._loop is not None:
            self._missing[member] = self._loop.time()
        log.info("hub refused a group message for %r: %s", member, message)
        self._errors.append(err)

    # ---- flushing ----------------------------------------------------------------------------

    async def flush(
        self, timeout: float | None, stopped: Callable[[], HubError | None], hub: str
    ) -> None:
        """Waits until every envelope sent so far is acknowledged or refused; raises the first
        refusal, or what ``stopped`` returns (the client failed or closed) if it must wait.
        ``hub`` ("host:port") names the hub in a timeout's message."""
        if self._errors:
            raise self._errors.popleft()
        target = self._seq
        u = self._unacked
        if u and next(iter(u)) <= target:
            failure = stopped()
            if failure is not None:
                raise failure
            assert self._loop is not None
            try:
                await self._flushes.wait(self._loop, target, timeout)
            except TimeoutError:
                n = sum(1 for s in u if s <= target)
                raise FlushTimeoutError(
                    f"{n} envelope(s) not acknowledged by the hub {hub} within {timeout}s"
                ) from None
        if self._errors:
            raise self._errors.popleft()

    def _wake_flushers(self) -> None:
        u = self._unacked
        self._flushes.settled(next(iter(u)) if u else None)

    def fail(self, err: HubError) -> None:
        """The client stopped (failed for good or closed): every flush waiting raises ``err``,
        and senders waiting for room wake up (to raise it too)."""
        self._flushes.fail(err)
        if self._room is not None:
            self._room.set()




def _fanout_parts(
    recipients: list[bytes], size: int, max_frame: int, fanout_bytes: int
) -> list[list[bytes]]:
    """``recipients`` in runs whose copies (``size`` + 1 + id bytes each) stay within
    ``fanout_bytes`` and whose SEND_GROUP frame stays within ``max_frame``."""
    if 1 + 8 + 2 + 256 + size > max_frame:
        raise HubError(
            f"group message of {size} bytes exceeds the hub's frame limit of {max_frame} bytes"
        )
    parts: list[list[bytes]] = [[]]
    copies = frame = 0
    for rb in recipients:
        copy, listed = size + 1 + len(rb), 1 + len(rb)
        part = parts[-1]
        if part and (
            copies + copy > fanout_bytes or 11 + frame + listed + size > max_frame
        ):
            part = []
            parts.append(part)
            copies = frame = 0
        part.append(rb)
        copies += copy
        frame += listed
    return parts
