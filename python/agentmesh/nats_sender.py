"""Sending envelopes to JetStream in order, durably, through failovers.

An envelope is *accepted* only when the stream's publish acknowledgement for it arrives (it
is then replicated and, with ``sync_interval: always``, on disk on a majority). Publishes are
pipelined (up to :data:`WINDOW` in flight) and every one carries the envelope's id as
``Nats-Msg-Id``, so a resend of one that was stored after all is dropped by the stream.

Per-sender order is what makes this more than a loop of publishes. A later envelope must
never be stored before an earlier one that was lost and is resent. So:

* on any doubt (a publish timed out, the cluster had no stream leader, the connection
  dropped) nothing new is sent; once every publish in flight has an answer, the unanswered
  ones are resent, in order, one at a time, until one is acknowledged; then the window opens
  again;
* while the oldest publish in flight has waited :data:`STALL` seconds without an answer,
  nothing new is sent either. A lost publish can only be overtaken by one stored by a *new*
  stream leader, and an election takes longer than that (nats-server waits 4 to 9 seconds
  for a dead leader), so the gate closes before a new leader can store anything;
* publishes are made only while connected, and the client's buffer of unsent commands is
  dropped when the connection drops (nats-py would write it after reconnecting, ahead of the
  resends): those envelopes are in flight here and are resent in order.

A refusal (inbox full, an unknown recipient, an envelope too large) is final: it is reported
to ``flush`` naming the recipient, as the network hub does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import nats_wire
from .errors import FlushTimeoutError, HubError, HubRequestError, PeerNotFoundError
from .fanout import address
from .flush_waiters import FlushWaiters
from .hub_protocol import ErrorCode

__all__ = ["OrderedSender", "Outgoing"]

log = logging.getLogger("agentmesh.nats")

#: Publishes in flight at once while all is well.
WINDOW = 1024
#: Seconds the oldest publish in flight may wait before new ones are held back.
STALL = 1.0
#: Seconds to wait for one publish acknowledgement before it counts as lost.
PUBLISH_TIMEOUT = 5.0
#: JetStream's error code for a subject at its message limit with discard-new-per-subject.
_SUBJECT_FULL_CODES = frozenset({10077})


@dataclass
class Outgoing:
    """One envelope on its way: ``seq`` counts this sender's envelopes."""

    seq: int
    recipient: str
    subject: str
    data: bytes
    msg_id: str
    sent_at: float = 0.0
    attempts: int = 0


class OrderedSender:
    """The send side of one NatsBackend (one event loop). ``known(recipient)`` answers
    whether the recipient is registered (True/False), looking it up if needed."""

    def __init__(
        self,
        nc: Any,
        stream: str,
        known: Callable[[str], Awaitable[bool]],
        *,
        max_unacked: int = 100_000,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.known = known
        self.max_unacked = max_unacked
        self.loop = asyncio.get_running_loop()
        self._reply_prefix = nc.new_inbox() + "."
        self._reply_sub: Any = None
        self._seq = 0
        self._queue: deque[Outgoing] = deque()  # not sent yet (or to be resent), in order
        self._inflight: OrderedDict[int, Outgoing] = OrderedDict()
        self._failed: list[Outgoing] = []  # lost while in doubt, resent once it is settled
        self._in_doubt = False
        self._careful = False
        self._losses = 0  # in a row: the pause before resending grows with them
        self._checking: set[str] = set()
        self._recipients: dict[str, bool] = {}
        self._missing_at: dict[str, float] = {}
        self.errors: deque[HubRequestError] = deque()
        self._flushes = FlushWaiters()
        self.room = asyncio.Event()
        self.room.set()
        self._closed = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._to_write: deque[Outgoing] = deque()
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._reply_sub = await self.nc.subscribe(self._reply_prefix + "*", cb=self._on_reply)

    # -- queueing -------------------------------------------------------------------------------

    @property
    def unacked(self) -> int:
        return len(self._queue) + len(self._inflight) + len(self._failed)

    def recently_missing(self, recipient: str) -> bool:
        at = self._missing_at.get(recipient)
        return at is not None and self.loop.time() - at < 2.0

    def enqueue(self, recipient: str, subject: str, data: bytes, msg_id: str) -> bool:
        if not self.room.is_set():
            return False
        self._seq += 1
        self._queue.append(Outgoing(self._seq, recipient, subject, data, msg_id))
        if self.unacked >= self.max_unacked:
            self.room.clear()
        self.pump()
        return True

    def enqueue_group(
        self,
        recipients: list[str],
        subject_of: Callable[[str], str],
        data: bytes,
        message_id: str,
    ) -> bool:
        """One group message (unaddressed form, :mod:`agentmesh.fanout`) for every recipient.
        A stream stores a message under one subject, so the fan-out is one copy per member's
        inbox subject, published here in order; the message id is the same for every member,
        so each copy's dedupe id adds the member (a hash of its id)."""
        if not self.room.is_set():
            return False
        for recipient in recipients:
            rb = recipient.encode("utf-8")
            self._seq += 1
            copy_id = f"{message_id}-{hashlib.sha256(rb).hexdigest()[:16]}"
            copy = Outgoing(
                self._seq, recipient, subject_of(recipient), address(data, recipient), copy_id
            )
            self._queue.append(copy)
        if self.unacked >= self.max_unacked:
            self.room.clear()
        self.pump()
        return True

    # -- publishing -----------------------------------------------------------------------------

    def pump(self) -> None:
        """Sends what the rules allow now (see the module docstring)."""
        if self._closed or self._in_doubt or not self.nc.is_connected:
            return
        window = 1 if self._careful else WINDOW
        queue, inflight = self._queue, self._inflight
        while queue and len(inflight) < window:
            if inflight:
                oldest = next(iter(inflight.values()))
                waited = self.loop.time() - oldest.sent_at
                if waited >= STALL:
                    self._arm_stall_timer(PUBLISH_TIMEOUT - waited)
                    return
            item = queue[0]
            verdict = self._recipients.get(item.recipient)
            if verdict is None:
                self._check_recipient(item.recipient)
                return  # (order: nothing after it leaves before it)
            queue.popleft()
            if not verdict:
                self._refuse_unknown(item)
                continue
            self._publish(item)

    def _arm_stall_timer(self, delay: float) -> None:
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(max(delay, 0.01), self._after_stall)

    def _after_stall(self) -> None:
        self._stall_timer = None
        self.pump()

    def _check_recipient(self, recipient: str) -> None:
        if recipient in self._checking:
            return
        self._checking.add(recipient)

        async def check() -> None:
            try:
                verdict = await self.known(recipient)
            except Exception as exc:
                log.info("could not look up %r (%s): trying again", recipient, exc)
                await asyncio.sleep(0.5)
            else:
                if verdict:
                    self._recipients[recipient] = True  # (ids are never unbound)
                else:
                    self._recipients[recipient] = False
                    self._missing_at[recipient] = self.loop.time()
            finally:
                self._checking.discard(recipient)
            self.pump()
            if self._recipients.get(recipient) is False:
                del self._recipients[recipient]  # (it may register later)

        self.loop.create_task(check())

    def _publish(self, item: Outgoing) -> None:
        item.sent_at = self.loop.time()
        item.attempts += 1
        self._inflight[item.seq] = item
        if self._watchdog is None:
            self._arm_watchdog()
        self._to_write.append(item)
        if self._writer is None or self._writer.done():
            self._writer = self.loop.create_task(self._write_all())

    async def _write_all(self) -> None:
        """The one writer: publishes leave in the order they were taken, even when the
        client's write buffer makes a publish wait."""
        to_write, nc = self._to_write, self.nc
        direct = nats_wire.can_write(nc)
        while to_write:
            item = to_write.popleft()
            if self._inflight.get(item.seq) is not item or not nc.is_connected:
                continue  # given up already, or lost with the connection (resent later)
            headers = {"Nats-Msg-Id": item.msg_id, "Nats-Expected-Stream": self.stream}
            reply = f"{self._reply_prefix}{item.seq}"
            try:
                if direct and nats_wire.header_value_ok(item.msg_id):
                    command = nats_wire.publish_command(item.subject, reply, headers, item.data)
                    await nats_wire.write(nc, command)
                else:
                    await nc.publish(item.subject, item.data, reply=reply, headers=headers)
            except Exception as exc:  # (closed, or the buffer full: its timer resends it)
                log.debug("publish of envelope %d failed: %s", item.seq, exc)

    def _arm_watchdog(self) -> None:
        """One timer for every publish in flight, due when the oldest one's time is up (they
        are in flight in the order they were sent; a timer each cost one per envelope)."""
        oldest = next(iter(self._inflight.values()), None)
        if oldest is not None:
            due = oldest.sent_at + PUBLISH_TIMEOUT
            self._watchdog = self.loop.call_at(due, self._timed_out)

    def _timed_out(self) -> None:
        self._watchdog = None
        now = self.loop.time()
        for item in list(self._inflight.values()):
            if now - item.sent_at < PUBLISH_TIMEOUT:
                break
            if self._inflight.get(item.seq) is item:
                self._lost(item, "no acknowledgement in time")
        if self._watchdog is None and not self._closed:
            self._arm_watchdog()

    async def _on_reply(self, msg: Any) -> None:
        try:
            seq = int(msg.subject[len(self._reply_prefix) :])
        except ValueError:
            return
        item = self._inflight.get(seq)
        if item is None:
            return  # an answer to an attempt already given up on
        status = (msg.headers or {}).get("Status")
        if status == "503":
            self._lost(item, "the stream has no leader")
            return
        data = msg.data
        if data.startswith(b'{"stream":') and b'"error"' not in data and b',"seq":' in data:
            self._accepted(item)  # (the common answer, read without building a dict)
            return
        try:
            answer = json.loads(msg.data)
        except ValueError:
            self._lost(item, "unreadable acknowledgement")
            return
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is None and isinstance(answer, dict) and "seq" in answer:
            self._accepted(item)
        elif (
            isinstance(error, dict)
            and error.get("code") in (500, 503)
            and error.get("err_code") not in _SUBJECT_FULL_CODES
        ):
            self._lost(item, str(error.get("description")))
        else:
            self._refused(item, error if isinstance(error, dict) else {})

    def _done(self, item: Outgoing) -> None:
        self._inflight.pop(item.seq, None)

    def _accepted(self, item: Outgoing) -> None:
        self._done(item)
        self._losses = 0
        if self._careful and not self._in_doubt:
            self._careful = False  # the cluster stores again: open the window
        self._settle()

    def _refused(self, item: Outgoing, error: dict[str, Any]) -> None:
        self._done(item)
        description = str(error.get("description") or "refused")
        if error.get("err_code") in _SUBJECT_FULL_CODES or "per subject" in description:
            err = HubRequestError(
                ErrorCode.INBOX_FULL,
                f"inbox full: {item.recipient!r} has too many envelopes queued",
                recipient=item.recipient,
                client_seq=item.seq,
            )
        else:
            err = HubRequestError(
                ErrorCode.INTERNAL,
                f"the NATS cluster refused an envelope for {item.recipient!r}: {description}",
                recipient=item.recipient,
                client_seq=item.seq,
            )
        log.info("envelope for %r refused: %s", item.recipient, description)
        self.errors.append(err)
        self._settle()

    def _refuse_unknown(self, item: Outgoing) -> None:
        self.errors.append(
            PeerNotFoundError(
                ErrorCode.PEER_NOT_FOUND,
                f"Peer {item.recipient!r} not found on hub",
                recipient=item.recipient,
                client_seq=item.seq,
            )
        )
        self._wake_flushers()  # (called from pump: no _settle here, which would pump again)
        if self.unacked < self.max_unacked:
            self.room.set()

    def _lost(self, item: Outgoing, why: str) -> None:
        """In doubt: hold everything new until each publish in flight is answered, then
        resend the lost ones in order (see the module docstring)."""
        self._done(item)
        if not self._in_doubt:
            log.info("a publish is in doubt (%s): resending in order", why)
        self._in_doubt = True
        self._losses += 1
        self._failed.append(item)
        self._settle()

    def connection_lost(self) -> None:
        """Everything in flight is lost with the connection (see the module docstring)."""
        with contextlib.suppress(AttributeError):
            self.nc._pending.clear()  # nats-py would write these after reconnecting
            self.nc._pending_data_size = 0
        for item in list(self._inflight.values()):
            self._lost(item, "the connection dropped")

    def connection_back(self) -> None:
        self._settle()

    def _settle(self) -> None:
        if self._in_doubt and not self._inflight:
            self._failed.sort(key=lambda item: item.seq)
            self._queue.extendleft(reversed(self._failed))
            self._failed.clear()
            self._in_doubt = False
            self._careful = True
            # (a moment for a leader to be elected; longer while the cluster stays down)
            self.loop.call_later(min(0.05 * 2 ** min(self._losses, 5), 1.0), self.pump)
        else:
            self.pump()
        self._wake_flushers()
        if self.unacked < self.max_unacked:
            self.room.set()

    # -- flushing -------------------------------------------------------------------------------

    def _first_unsettled(self) -> int | None:
        firsts = [
            next(iter(self._inflight), None),
            self._queue[0].seq if self._queue else None,
            min((item.seq for item in self._failed), default=None),
        ]
        present = [f for f in firsts if f is not None]
        return min(present) if present else None

    def _wake_flushers(self) -> None:
        if self._flushes.waiting:  # (every acknowledgement comes here: mostly nobody waits)
            self._flushes.settled(self._first_unsettled())

    async def flush(self, timeout: float | None, where: str) -> None:
        if self.errors:
            raise self.errors.popleft()
        target = self._seq
        first = self._first_unsettled()
        if first is not None and first <= target:
            if self._closed:
                raise HubError("the NATS backend is closed")
            try:
                await self._flushes.wait(self.loop, target, timeout)
            except TimeoutError:
                pending = sum(
                    1
                    for item in (*self._queue, *self._inflight.values(), *self._failed)
                    if item.seq <= target
                )
                raise FlushTimeoutError(
                    f"{pending} envelope(s) not acknowledged by {where} within {timeout}s "
                    "(a stream without a leader: are most of its nodes down?)"
                ) from None
        if self.errors:
            raise self.errors.popleft()

    async def close(self) -> None:
        self._closed = True
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._flushes.fail(HubError("the NATS backend is closed"))
        self.room.set()
        if self._reply_sub is not None:
            with contextlib.suppress(Exception):
                await self._reply_sub.unsubscribe()
