"""The delivery path of a HubClient: batches to ``on_batch``, skipping, acknowledgements.

Deliveries wait in an inbox (as each read brought them) until the consumer hands them to
``on_batch``: up to 256 at a time, all from one hub store, in inbox order. A redelivery of
what was handled already (at or below the last position handled in that store) is
acknowledged without being handed over, once what it repeats is durable. A batch is
acknowledged, on the connection each delivery came from, once ``on_batch`` returns, or once the
future it returns completes; never if either fails, so the hub delivers it again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from agentmesh.backend import OnBatch, Pace, paced
from agentmesh.hub_client.connection import Connection

__all__ = ["DeliveryStream"]

log = logging.getLogger(__name__)

#: Most deliveries handed to ``on_batch`` at once.
MAX_BATCH = 256

#: A batch's delivery ids that came on one connection (acknowledged on it).
_Acks = tuple[Connection, list[int]]


def _ack_if_durable(conn: Connection, did: int, durable: asyncio.Future[None]) -> None:
    if not durable.cancelled() and durable.exception() is None:
        conn.ack(did)
    # (else unacknowledged: the hub keeps it, and the position went back before it)


def _ack_all(acks: list[_Acks]) -> None:
    for conn, dids in acks:
        conn.ack_many(dids)  # on the connection they came from (a no-op if that one is gone)


class DeliveryStream:
    """What the hub delivered to one registered client, and how far it has been handled."""

    def __init__(self) -> None:
        self._on_batch: OnBatch | None = None
        self._pace: Pace | None = None
        # what each read brought: (the connection, its deliveries in order)
        self._inbox: deque[tuple[Connection, list[tuple[int, bytes]]]] = deque()
        # what the consumer waits on while the inbox is empty (a bare future: a read brings
        # deliveries for hundreds of clients of a process, and each wakes its own)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._seen_hub = b""
        self._seen_id = 0
        # hub_id -> last delivery id handled before this client existed (restored by the owner)
        self._handled: dict[bytes, int] = {}
        self._delivery_hub_id: bytes | None = None
        # batches handed over and not yet durable: (hub id, first id, last id, when durable)
        self._in_flight: deque[tuple[bytes, int, int, asyncio.Future[None]]] = deque()
        self.received = 0

    def bind(self) -> None:
        """Called once, from the event loop the client is used from."""
        self._loop = asyncio.get_running_loop()

    def set_handler(
        self, on_batch: OnBatch, handled: Mapping[bytes, int] | None, pace: Pace | None = None
    ) -> None:
        """Before registering: where batches go, the positions handled by earlier clients,
        and what to await between batches."""
        self._on_batch = on_batch
        self._pace = pace
        self._handled = {bytes(h): int(d) for h, d in (handled or {}).items()}

    @property
    def delivery_hub_id(self) -> bytes | None:
        return self._delivery_hub_id

    def on_deliver(self, conn: Connection, deliveries: list[tuple[int, bytes]]) -> None:
        inbox = self._inbox
        if inbox:
            last_conn, last = inbox[-1]
            if last_conn is conn and len(last) < MAX_BATCH:
                # A process hosting many agents reads one or two deliveries for each at a
                # time, and an agent's next batch gathers many reads (its handlers run, or it
                # is paced): one entry for them all, not an entry (a tuple and a list) per
                # read, which lived long enough to be promoted into the oldest garbage
                # collector generation and made its full collections come more often.
                last.extend(deliveries)
                return
        inbox.append((conn, deliveries))
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def clamp_positions(self, hub_id: bytes, next_seq: Any) -> None:
        """Every delivery id this store handed out is below its ``next_seq``. A remembered
        position at or above it came from a store since rolled back (restored from a backup),
        whose new deliveries reuse those ids, or from a forged frame: skipping by it would drop
        real messages, so it is lowered to what the store can have delivered."""
        if type(next_seq) is not int or next_seq < 1:
            return
        ceiling = next_seq - 1
        lowered = self._handled.get(hub_id, 0) > ceiling
        if lowered:
            self._handled[hub_id] = ceiling
        if self._seen_hub == hub_id and self._seen_id > ceiling:
            lowered, self._seen_id = True, ceiling
        if lowered:
            log.warning("hub store rolled back: handled position lowered to %d", ceiling)

    def _last_handled(self, hub_id: bytes) -> int:
        if hub_id == self._seen_hub:
            return self._seen_id
        return self._handled.get(hub_id, 0)

    async def consume(self) -> None:
        """The consumer task: hands over batches for as long as the client is registered:
        up to 256 deliveries of one hub store, less the redeliveries of what was handled
        already (acknowledged at once, skipped by position); acknowledges each on the
        connection it came from."""
        inbox = self._inbox
        loop = self._loop
        assert loop is not None
        handler = self._on_batch
        assert handler is not None
        while True:
            if not inbox:
                waiter = self._waiter = loop.create_future()
                await waiter
                continue
            hub_id, batch, acks = self._next_batch()
            if not batch:
                continue
            self._delivery_hub_id = hub_id
            try:
                durable = await handler(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # the handler could not make its work durable: no acknowledgement, so the hub
                # keeps the envelopes and delivers them again (on the next connection)
                log.error("%d deliveries left unacknowledged: %s", len(batch), exc)
                continue
            finally:
                self._delivery_hub_id = None
            self._handed_over(hub_id, batch, acks, durable)
            await paced(self._pace, len(batch))

    def _next_batch(self) -> tuple[bytes, list[tuple[int, bytes]], list[_Acks]]:
        """(hub id, the next batch, its ids by connection) from the inbox (not empty); the
        batch is empty when the inbox held only redeliveries."""
        inbox = self._inbox
        batch: list[tuple[int, bytes]] = []
        acks: list[_Acks] = []
        conn, deliveries = inbox.popleft()
        hub_id = conn.hub_id
        seen = self._last_handled(hub_id)
        while True:
            room = MAX_BATCH - len(batch)
            if len(deliveries) > room:  # the rest waits for the next batch, first in line
                inbox.appendleft((conn, deliveries[room:]))
                deliveries = deliveries[:room]
            ids: list[int] = []
            for delivery in deliveries:
                did = delivery[0]
                if did <= seen:
                    self._ack_redelivery(hub_id, conn, did)
                    continue
                batch.append(delivery)
                ids.append(did)
                seen = did
            if ids:
                acks.append((conn, ids))
            if not inbox or len(batch) >= MAX_BATCH or inbox[0][0].hub_id != hub_id:
                return hub_id, batch, acks
            conn, deliveries = inbox.popleft()

    def _handed_over(
        self,
        hub_id: bytes,
        batch: list[tuple[int, bytes]],
        acks: list[_Acks],
        durable: asyncio.Future[None] | None,
    ) -> None:
        """``on_batch`` took ``batch``: acknowledged now, or once ``durable`` completes."""
        self.received += len(batch)
        self._seen_hub = hub_id
        self._seen_id = batch[-1][0]
        if durable is None:
            _ack_all(acks)
        else:
            in_flight = (hub_id, batch[0][0], self._seen_id, durable)
            self._in_flight.append(in_flight)
            durable.add_done_callback(
                functools.partial(self._ack_when_durable, in_flight, acks)
            )

    def _ack_redelivery(self, hub_id: bytes, conn: Connection, did: int) -> None:
        """A redelivery (after a reconnect) of what was handed over already: acknowledged
        once the batch it was handed over in is durable, at once if it is. Never before: the
        hub would delete it, and a crash or a failed state write before that batch is durable
        would lose it (the batch's handlers may not even have run)."""
        for held_hub, first, last, durable in self._in_flight:
            if held_hub == hub_id and first <= did <= last:
                # (done but its callbacks not run yet: the position may not be lowered yet)
                if durable.done():
                    _ack_if_durable(conn, did, durable)
                else:
                    durable.add_done_callback(functools.partial(_ack_if_durable, conn, did))
                return
        conn.ack(did)

    def _ack_when_durable(
        self,
        in_flight: tuple[bytes, int, int, asyncio.Future[None]],
        acks: list[_Acks],
        durable: asyncio.Future[None],
    ) -> None:
        self._in_flight.remove(in_flight)
        hub_id, first = in_flight[0], in_flight[1]
        if not durable.cancelled() and durable.exception() is None:
            _ack_all(acks)
            return
        # Never made durable: no acknowledgement, so the hub delivers them again after a
        # reconnect; the position goes back before them, or that redelivery would be skipped
        # (and acknowledged) as already handled.
        count = sum(len(ids) for _conn, ids in acks)
        log.error("%d deliveries left unacknowledged: %s", count, durable.exception())
        if self._seen_hub == hub_id:
            self._seen_id = min(self._seen_id, first - 1)
        if self._handled.get(hub_id, 0) >= first:
            self._handled[hub_id] = first - 1
