"""Receiving one agent's inbox from its durable pull consumer, in order, never skipping.

The agent skips a redelivery by its *position* (the stream sequence): so a delivery must never
be handed over after a newer one of the same inbox, or it would be taken for a redelivery of
something handled and acknowledged unhandled. JetStream can do exactly that: a delivery that
is lost on its way (the connection dropped while a fetch was answered, or an earlier process of
this agent died holding it) stays *pending* at the consumer and comes again only after the ack
wait, while newer messages are handed out meanwhile (``max_ack_pending`` counts it, but does
not stop them).

So the receiver knows when something may be outstanding, and then hands nothing over until
it holds every delivery the consumer counts as pending:

* at start (an earlier process may have died holding deliveries), after a reconnect or a failed
  fetch, and whenever the consumer's delivery sequence skips a number (a delivery was lost), it
  *verifies*: it asks the consumer how many deliveries are pending, and while that is more than
  it holds, it keeps what it fetched (telling the cluster it is still working on them) and
  fetches again; the lost ones come back after the ack wait;
* then it hands over what it holds, sorted by position, in batches; each batch is acknowledged
  once the future ``on_batch`` returns has completed, before anything newer is handed over;
* a batch that could not be made durable is given back (NAK) and the position stays before it;
  after a pause it is verified and handed over again, first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .backend import OnBatch, Pace, paced
from .nats_layout import ACK_WAIT, FETCH_BATCH
from .nats_pull import InboxPuller, positions

__all__ = ["InboxReceiver"]

log = logging.getLogger("agentmesh.nats")

#: Seconds one fetch waits for deliveries before asking again (an idle agent's poll).
FETCH_WAIT = 5.0
#: Seconds one fetch waits while verifying (the lost deliveries come after the ack wait).
VERIFY_WAIT = 1.0
#: Pause before a batch that could not be made durable is handed over again.
RETRY_PAUSE = 1.0


class InboxReceiver:
    """Takes deliveries from ``puller``, hands batches to ``on_batch``.
    ``pending()`` asks the consumer how many deliveries it counts as pending;
    ``resubscribe()`` makes sure the consumer exists after fetches failed for a while."""

    def __init__(
        self,
        agent_id: str,
        puller: InboxPuller,
        on_batch: OnBatch,
        *,
        hub_id: bytes,
        seen: int,
        pending: Callable[[], Any],
        resubscribe: Callable[[], Any],
        pace: Pace | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.puller = puller
        self.on_batch = on_batch
        self.hub_id = hub_id
        self.seen = seen  # the last position handled
        self.pending = pending
        self.resubscribe = resubscribe
        self.pace = pace
        #: While ``on_batch`` runs: the store its positions count in.
        self.delivery_hub_id: bytes | None = None
        self.held: dict[int, Any] = {}  # position -> message, fetched and not acknowledged
        self._last_delivery = 0  # the consumer's delivery sequence of the last message fetched
        self.verify = True  # (an earlier process of this agent may have died holding some)

    def connection_changed(self) -> None:
        """After a reconnect: a fetch answered meanwhile may have been lost."""
        self.verify = True
        self.puller.connection_changed()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        keepalive = loop.create_task(self._keep_alive())
        failing_since: float | None = None
        try:
            while True:
                wait = VERIFY_WAIT if self.verify and self.held else FETCH_WAIT
                messages = await self.puller.take(wait)
                if self.puller.failed:
                    self.puller.failed = False
                    self.verify = True
                    now = loop.time()
                    if failing_since is None:
                        failing_since = now
                    elif now - failing_since > 2 * FETCH_WAIT:
                        failing_since = now
                        await self.resubscribe()
                    if not messages:
                        await asyncio.sleep(0.25)
                        continue
                else:
                    failing_since = None
                await self._take(messages)
                if not self.held or (self.verify and not await self._verified()):
                    continue
                if not await self._hand_over_held():
                    self.verify = True
                    await asyncio.sleep(RETRY_PAUSE)
        finally:
            keepalive.cancel()

    async def _take(self, messages: list[Any]) -> None:
        for msg in messages:
            try:
                delivery, position = positions(msg.reply, self.puller.stream, self.puller.consumer)
            except ValueError as exc:
                log.warning("%r: ignored: %s", self.agent_id, exc)
                continue
            if delivery > self._last_delivery + 1:
                self.verify = True  # a delivery went missing on its way
            self._last_delivery = max(self._last_delivery, delivery)
            if position <= self.seen:
                log.debug("%r: position %d handled before: acknowledged", self.agent_id, position)
                await settle(msg, "ack")  # a redelivery of what was handled
                continue
            self.held[position] = msg  # (a redelivery of one held replaces it)

    async def _verified(self) -> bool:
        """True once every delivery the consumer counts as pending is held here."""
        try:
            pending = int(await self.pending())
        except Exception as exc:
            log.debug("%r: cannot ask the consumer (%s): holding on", self.agent_id, exc)
            return False
        if pending > len(self.held):
            log.info(
                "%r: %d deliveries pending and %d here: waiting for the rest before handing "
                "any over (they come again after the ack wait)",
                self.agent_id,
                pending,
                len(self.held),
            )
            return False
        self.verify = False
        return True

    async def _hand_over_held(self) -> bool:
        """Everything held, in order of position, batch by batch; False if a batch could not
        be made durable (it and the rest are given back)."""
        positions = sorted(self.held)
        for start in range(0, len(positions), FETCH_BATCH):
            chunk = positions[start : start + FETCH_BATCH]
            batch = [(p, bytes(self.held[p].data)) for p in chunk]
            log.debug("%r: handing over positions %d..%d", self.agent_id, chunk[0], chunk[-1])
            self.delivery_hub_id = self.hub_id
            try:
                durable = await self.on_batch(batch)
                if durable is not None:
                    await durable
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # not durable: given back, and the position stays before it so it comes again
                log.error("%r: %d deliveries given back: %s", self.agent_id, len(self.held), exc)
                for position in sorted(self.held):
                    await settle(self.held.pop(position), "nak")
                return False
            finally:
                self.delivery_hub_id = None
            self.seen = chunk[-1]
            await self.puller.acknowledge([self.held.pop(position) for position in chunk])
            await paced(self.pace, len(chunk))
        return True

    async def _keep_alive(self) -> None:
        """Tells the cluster, for what is held or being handled, not to hand it out again."""
        while True:
            await asyncio.sleep(ACK_WAIT / 3)
            for msg in [*self.held.values(), *self.puller.arrived]:
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def give_back(self) -> None:
        """On close: what is held goes back now, not after the ack wait."""
        leftovers = list(self.held.values())
        self.held.clear()
        leftovers += await self.puller.close()
        for msg in leftovers:
            if getattr(msg, "reply", None):
                await settle(msg, "nak")


async def settle(msg: Any, how: str) -> None:
    with contextlib.suppress(Exception):  # lost: it comes again, and is skipped by position
        await (msg.ack() if how == "ack" else msg.nak())
