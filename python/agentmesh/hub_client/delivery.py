"""The delivery path of a HubClient: batches to ``on_batch``, skipping, acknowledgements.

Deliveries wait in an inbox until the consumer hands them to ``on_batch``: up to 256 at a time,
all from one hub store, in inbox order. A redelivery of what was handled already (at or below
the last position handled in that store) is acknowledged without being handed over. A batch is
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

from agentmesh.backend import OnBatch
from agentmesh.hub_client.connection import Connection

__all__ = ["DeliveryStream"]

log = logging.getLogger(__name__)


def _ack_all(acks: list[tuple[Connection, int]]) -> None:
    for conn, did in acks:
        conn.ack(did)  # on the connection it came from (a no-op if that one is gone)


class DeliveryStream:
    """What the hub delivered to one registered client, and how far it has been handled."""

    def __init__(self) -> None:
        self._on_batch: OnBatch | None = None
        self._inbox: deque[tuple[Connection, int, bytes]] = deque()
        self._inbox_event: asyncio.Event | None = None
        self._seen_hub = b""
        self._seen_id = 0
        # hub_id -> last delivery id handled before this client existed (restored by the owner)
        self._handled: dict[bytes, int] = {}
        self._delivery_hub_id: bytes | None = None
        self.received = 0

    def bind(self) -> None:
        """Called once, from the event loop the client is used from."""
        self._inbox_event = asyncio.Event()

    def set_handler(self, on_batch: OnBatch, handled: Mapping[bytes, int] | None) -> None:
        """Before registering: where batches go and the positions handled by earlier clients."""
        self._on_batch = on_batch
        self._handled = {bytes(h): int(d) for h, d in (handled or {}).items()}

    @property
    def delivery_hub_id(self) -> bytes | None:
        return self._delivery_hub_id

    def on_deliver(self, conn: Connection, delivery_id: int, envelope: bytes) -> None:
        self._inbox.append((conn, delivery_id, envelope))
        ev = self._inbox_event
        if ev is not None and not ev.is_set():
            ev.set()

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
        """The consumer task: hands over batches for as long as the client is registered."""
        inbox = self._inbox
        ev = self._inbox_event
        assert ev is not None
        while True:
            if not inbox:
                ev.clear()
                await ev.wait()
                continue
            await self._consume_batch()

    async def _consume_batch(self) -> None:
        """Hands the next batch to ``on_batch``: up to 256 deliveries of one hub store, less
        the redeliveries of what was handled already (acknowledged at once, skipped by
        position); acknowledges each on the connection it came from."""
        inbox = self._inbox
        batch: list[tuple[int, bytes]] = []
        conns: list[Connection] = []
        hub_id = inbox[0][0].hub_id
        seen = self._last_handled(hub_id)
        while inbox and len(batch) < 256 and inbox[0][0].hub_id == hub_id:
            conn, did, env = inbox.popleft()
            if did <= seen:
                conn.ack(did)
                continue
            batch.append((did, env))
            conns.append(conn)
            seen = did
        if not batch:
            return
        handler = self._on_batch
        assert handler is not None
        self._delivery_hub_id = hub_id
        try:
            durable = await handler(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # the handler could not make its work durable: no acknowledgement, so the hub keeps
            # the envelopes and delivers them again (on the next connection)
            log.error("%d deliveries left unacknowledged: %s", len(batch), exc)
            return
        finally:
            self._delivery_hub_id = None
        self.received += len(batch)
        self._seen_hub = hub_id
        self._seen_id = batch[-1][0]
        acks = [(conn, did) for conn, (did, _env) in zip(conns, batch, strict=True)]
        if durable is None:
            _ack_all(acks)
        else:
            durable.add_done_callback(functools.partial(self._ack_when_durable, hub_id, acks))

    def _ack_when_durable(
        self, hub_id: bytes, acks: list[tuple[Connection, int]], durable: asyncio.Future[None]
    ) -> None:
        if not durable.cancelled() and durable.exception() is None:
            _ack_all(acks)
            return
        # Never made durable: no acknowledgement, so the hub delivers them again after a
        # reconnect; the position goes back before them, or that redelivery would be skipped
        # (and acknowledged) as already handled.
        log.error("%d deliveries left unacknowledged: %s", len(acks), durable.exception())
        if self._seen_hub == hub_id:
            self._seen_id = min(self._seen_id, acks[0][1] - 1)
        if self._handled.get(hub_id, 0) >= acks[0][1]:
            self._handled[hub_id] = acks[0][1] - 1
