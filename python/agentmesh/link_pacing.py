"""Pacing: under load, an agent takes its next batch a little later, so that more is in it.

Every batch an agent receives costs a fixed amount on top of its messages: a turn on the
receive pool for each of its two stages, locks, a hand-over from the network thread and back,
an acknowledgement. One agent receiving a stream gets its messages hundreds at a time, and that
cost vanishes. A process hosting hundreds of agents gets each agent's messages a few at a
time, and as soon as an agent has handled its batch, the backend hands it the next one, however
small: measured with 200 agents, a batch held about five messages, and the per-batch cost was
about a quarter of the process's CPU per message.

So once an agent has been handed a batch of fewer than :data:`PACE_BELOW` deliveries while the
receive pool is busy (:data:`BUSY_QUEUE` agents' stages or more wait for its workers), its
backend waits :data:`PACE_SECONDS` before handing over the next (the seam's ``pace``:
:mod:`agentmesh.backend`). What arrives meanwhile waits in the backend and comes in one batch.
The trade is a bounded one, and only under load:

* a message waits at most :data:`PACE_SECONDS` (and a tick) longer, only while the pool is
  busy with other agents (when it is, messages already wait their turn for a worker); an agent
  alone in its process, or in a quiet one, is never paced;
* an agent waiting for a reply (a ``request()``, a handler inside ``waiting()``) or taking a
  kind of message off the path (an interceptor: MCP) is never paced, and one that starts waiting
  for a reply ends its pace at once; so does ``close``;
* acknowledgements are not delayed: the backend arranges the batch's acknowledgement before it
  waits.

Paces end on ticks :data:`PACE_TICK` apart (:class:`PaceClock`), so that a process pacing
hundreds of agents runs one timer per tick, not one per paced batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .link import NetLoop
    from .link_receive_pool import ReceivePool

__all__ = ["BUSY_QUEUE", "PACE_BELOW", "PACE_SECONDS", "PACE_TICK", "PaceClock", "Pacing"]

#: A batch of fewer deliveries than this, handed over while the pool is busy, is paced.
PACE_BELOW = 32
#: How long (at least) the backend waits before handing over the next batch of a paced agent.
PACE_SECONDS = 0.03
#: Paces end on ticks this many seconds apart: a pace lasts up to this much longer.
PACE_TICK = 0.005
#: The receive pool counts as busy with this many agents' stages waiting for its workers.
BUSY_QUEUE = 4


def _end(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PaceClock:
    """The paces of one event loop's agents (its thread only), ended together on ticks."""

    __slots__ = ("_loop", "_ticks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ticks: dict[int, list[asyncio.Future[None]]] = {}  # tick -> waiters ending then

    def waiter(self) -> asyncio.Future[None]:
        """A future completed on the first tick at least :data:`PACE_SECONDS` from now."""
        loop = self._loop
        waiter: asyncio.Future[None] = loop.create_future()
        tick = math.ceil((loop.time() + PACE_SECONDS) / PACE_TICK)
        waiters = self._ticks.get(tick)
        if waiters is None:
            waiters = self._ticks[tick] = []
            loop.call_at(tick * PACE_TICK, self._tick, tick)
        waiters.append(waiter)
        return waiter

    def _tick(self, tick: int) -> None:
        for waiter in self._ticks.pop(tick, ()):
            _end(waiter)


class Pacing:
    """One agent's pace (see the module docstring). ``pace`` runs on the network thread;
    ``cut`` on any thread."""

    __slots__ = ("_exempt", "_net", "_pool", "_waiter")

    def __init__(self, net: NetLoop, pool: ReceivePool, exempt: Callable[[], bool]) -> None:
        self._net = net
        self._pool = pool
        self._exempt = exempt  # never paced while it returns True (replies awaited, closing)
        self._waiter: asyncio.Future[None] | None = None

    def pace(self, size: int) -> asyncio.Future[None] | None:
        """What the backend awaits after handing over a batch of ``size`` deliveries: None
        (go on now), or a future that completes after :data:`PACE_SECONDS` (or sooner:
        :meth:`cut`)."""
        if size >= PACE_BELOW or self._pool.queued() < BUSY_QUEUE:
            return None
        waiter = self._net.pace_clock.waiter()
        # (set before the exemption is read: a reply awaited from now on finds it to cut)
        self._waiter = waiter
        if self._exempt():
            self._waiter = None
            _end(waiter)
            return None
        return waiter

    def cut(self) -> None:
        """End the pace now, if one runs (a reply is awaited, the agent closes)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone (interpreter exit)
            self._net.call_soon_batched(_end, waiter)
