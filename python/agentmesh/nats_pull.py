"""Pulling deliveries from one durable pull consumer: requests of our own, one long-lived
subscription.

nats-py's ``fetch`` makes a request per batch and waits for each delivery with a task, a
``wait_for`` and a ``uuid4``; and the next batch is only asked for once this one is handled,
so every batch first waits a round trip to the consumer leader. Here one subscription takes
every delivery, and a request for the next batch (``$JS.API.CONSUMER.MSG.NEXT`` with
``batch`` and ``expires``) is made as soon as the previous one is answered in full or has
ended: it waits at the consumer while the current batch is handled, and deliveries flow
again as soon as its acknowledgements arrive. How many are delivered and not yet acknowledged
stays bounded by the consumer's ``max_ack_pending`` (equal to the batch).

Request ``n`` is made with the reply subject ``<inbox>.<n>``: statuses (408 expired,
409 leadership change, 503 no leader) name their request, and one about a request given up
on is ignored. The puller only collects what arrives, in the order it arrives; what may be
handed over and when is the receiver's (:mod:`agentmesh.nats_receiver`), which reads each
delivery's positions from its acknowledgement subject (:func:`positions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

from . import nats_wire

__all__ = ["InboxPuller", "positions"]

log = logging.getLogger("agentmesh.nats")

#: Seconds past a request's ``expires`` without a word about it before it counts as lost.
REQUEST_GRACE = 2.0
#: Statuses that end a request normally (it expired; nothing available); any other (503 no
#: consumer leader, 409 leadership change or consumer deleted) counts as a failure.
_ENDED = frozenset({"408", "404"})


def positions(reply: str, stream: str, consumer: str) -> tuple[int, int]:
    """(the consumer's delivery sequence, the stream sequence) of a delivery of ``consumer``
    on ``stream``, read from its acknowledgement subject ``$JS.ACK.[<domain>.<account>.]
    <stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>[.<token>]``;
    ValueError if it is not one."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        first = 4
    elif len(tokens) >= 11:
        first = 6
    else:
        raise ValueError(f"not a JetStream acknowledgement subject: {reply!r}")
    if tokens[:2] != ["$JS", "ACK"] or tokens[first - 2 : first] != [stream, consumer]:
        raise ValueError(f"not a delivery of {stream}/{consumer}: {reply!r}")
    return int(tokens[first + 2]), int(tokens[first + 1])


class InboxPuller:
    """Keeps one request for ``batch`` deliveries waiting at ``consumer`` of ``stream``;
    ``take`` returns what has arrived."""

    def __init__(self, nc: Any, stream: str, consumer: str, batch: int, expires: float) -> None:
        self.nc = nc
        self.stream = stream
        self.consumer = consumer
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch = batch
        self.expires = expires
        self.inbox = nc.new_inbox()
        self._sub: Any = None
        self._arrived: deque[Any] = deque()
        self._wakeup = asyncio.Event()
        self._number = 0  # of the live request
        self._suffix = ""  # of its subject
        self._left = 0  # deliveries the live request may still bring
        self._asked_at = 0.0
        self._live = False
        #: Set when a request ended in an error (no consumer leader, the consumer deleted);
        #: the receiver verifies after it and counts how long they keep failing.
        self.failed = False

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(
            self.inbox + ".*",
            cb=self._on_message,
            pending_msgs_limit=1 << 20,
            pending_bytes_limit=1 << 30,
        )

    def connection_changed(self) -> None:
        """A request (or its answer) may have been lost with the connection: ask again."""
        self._live = False
        self._wakeup.set()

    @property
    def arrived(self) -> list[Any]:
        """Deliveries that arrived and were not taken yet."""
        return list(self._arrived)

    async def take(self, wait: float) -> list[Any]:
        """Every delivery that arrived, waiting up to ``wait`` seconds for the first."""
        if not self._arrived:
            self._wakeup.clear()
            await self._ask()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)
        taken = list(self._arrived)
        self._arrived.clear()
        await self._ask()  # (the next batch waits at the consumer while this one is handled)
        return taken

    async def _ask(self) -> None:
        loop = asyncio.get_running_loop()
        if self._live and loop.time() - self._asked_at > self.expires + REQUEST_GRACE:
            log.debug("pull request %d unanswered: asking again", self._number)
            self._live = False
            self.failed = True
        if self._live or not self.nc.is_connected:
            return
        self._number += 1
        self._suffix = f".{self._number}"
        self._left = self.batch
        self._asked_at = loop.time()
        self._live = True
        request = {"batch": self.batch, "expires": int(self.expires * 1e9)}
        try:
            await self.nc.publish(
                self.next_subject, json.dumps(request).encode(), self.inbox + self._suffix
            )
        except Exception as exc:
            log.debug("pull request failed (%s): asking again", exc)
            self._live = False
            self.failed = True

    async def _on_message(self, msg: Any) -> None:
        if msg.reply:
            # (a delivery carries the subject it was stored under, so it is counted against
            # the live request: the one before it was answered in full or ended first)
            self._arrived.append(msg)
            self._wakeup.set()
            self._left -= 1
            if self._left <= 0:
                self._live = False
            return
        if not msg.subject.endswith(self._suffix):
            return  # about a request given up on
        status = (msg.headers or {}).get("Status", "")
        if status == "100":
            return  # (an idle heartbeat)
        self._live = False
        if status not in _ENDED:
            # (a leadership change too: a delivery may have been lost with the old leader)
            log.debug("pull request ended: %s %s", status, (msg.headers or {}).get("Description"))
            self.failed = True
        self._wakeup.set()

    async def acknowledge(self, deliveries: list[Any]) -> None:
        """Acknowledges every one of ``deliveries``, in one write (one publish each)."""
        try:
            if nats_wire.can_write(self.nc):
                commands = nats_wire.ack_commands([msg.reply for msg in deliveries])
                await nats_wire.write(self.nc, commands)
            else:
                for msg in deliveries:
                    await msg.ack()
        except Exception as exc:  # (lost: each comes again, and is skipped by position)
            log.debug("acknowledgements lost: %s", exc)

    async def close(self) -> list[Any]:
        """Stops taking deliveries; returns those not taken."""
        queue = getattr(self._sub, "_pending_queue", None)  # (arrived, not yet seen here)
        while queue is not None and not queue.empty():
            msg = queue.get_nowait()
            if msg.reply:
                self._arrived.append(msg)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        leftovers = list(self._arrived)
        self._arrived.clear()
        return leftovers
