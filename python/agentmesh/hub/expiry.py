"""Expired envelopes of recipients who do not come to fetch them: purged from the store.

The delivery pump drops an envelope whose sender-set expiry has passed when its turn to be
delivered comes; for an offline recipient that turn never comes. :class:`ExpiryPurger` knows,
per recipient, a lower bound of the earliest expiry among its queued envelopes
(``AgentState.next_expiry``; 0 when none carries one), so it knows whether a purge can free
anything at all. A purge goes through the store's writer like every other delete (after every
insert submitted before it), and the recipient's counts move, when its commit is done, by
exactly what it deleted. Two callers:

- a send refused for a full inbox waits for a purge of that inbox (its connection reads
  nothing more meanwhile, so per-sender order holds), then is checked again;
- a background sweep, every ``HubLimits.expired_sweep_interval`` seconds, purges the offline
  recipients whose earliest expiry has passed, one purge (at most ``PURGE_ROWS`` envelopes) in
  flight at a time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentmesh.hub.core import AgentState, HubCore

__all__ = ["PURGE_ROWS", "ExpiryPurger"]

log = logging.getLogger("agentmesh.hub")

#: Envelopes one purge deletes at most: the commit that carries it stays short (measured once
#: on the development machine: about 10 ms for 1024; 4096 took about 45 ms, which every send
#: in that commit would wait for).
PURGE_ROWS = 1024


def _now_ms() -> int:
    return int(time.time() * 1000)


class ExpiryPurger:
    """Purges of recipients' expired envelopes, on the hub's event loop."""

    def __init__(self, hub: HubCore) -> None:
        self.hub = hub
        #: recipients with a known expiry (``next_expiry`` set, or a purge running)
        self.watched: dict[str, AgentState] = {}
        #: recipient -> the purge of it running now (at most one per recipient)
        self.running: dict[str, asyncio.Future[None]] = {}

    def note(self, recipient: str, ast: AgentState, expires_ms: int) -> None:
        """An envelope expiring at ``expires_ms`` was queued for ``recipient``."""
        if not ast.next_expiry or expires_ms < ast.next_expiry:
            ast.next_expiry = expires_ms
            self.watched[recipient] = ast

    def can_help(self, recipient: str, ast: AgentState) -> bool:
        """Whether a purge of ``recipient`` may free anything now."""
        return recipient in self.running or 0 < ast.next_expiry <= _now_ms()

    def purge(self, recipient: str, ast: AgentState) -> asyncio.Future[None]:
        """Purges ``recipient``'s expired envelopes (or joins the purge running); the future
        is done once the counts moved."""
        fut = self.running.get(recipient)
        if fut is not None:
            return fut
        fut = self.running[recipient] = self.hub.loop.create_future()
        # Forgotten until the purge reports the earliest expiry left; envelopes queued
        # meanwhile lower it again (note).
        ast.next_expiry = 0
        done = functools.partial(self._done, recipient, ast, fut)
        self.hub.store.purge_expired(recipient, _now_ms(), PURGE_ROWS, done)
        return fut

    async def make_room(self, recipient: str, ast: AgentState, full: Callable[[], bool]) -> None:
        """Purges ``recipient`` while its inbox is ``full`` and a purge can free something.
        Each round deletes something or learns that nothing more has expired, so it ends."""
        while full() and self.can_help(recipient, ast):
            await self.purge(recipient, ast)

    def _done(
        self,
        recipient: str,
        ast: AgentState,
        fut: asyncio.Future[None],
        removed: list[tuple[int, int]],
        left: int,
    ) -> None:
        """The purge's commit is done: the recipient's counts drop by what it deleted. The
        purge ends (the sends waiting for it go on) whatever happens here."""
        try:
            self._count_out(recipient, ast, removed, left)
        finally:
            del self.running[recipient]
            if not fut.done():
                fut.set_result(None)

    def _count_out(
        self, recipient: str, ast: AgentState, removed: list[tuple[int, int]], left: int
    ) -> None:
        hub = self.hub
        if removed:
            conn = ast.conn
            pump = conn.pump if conn is not None else None
            nbytes = 0
            for seq, size in removed:
                nbytes += size
                if pump is not None:
                    # (delivered while its expiry passed: its acknowledgement, if it comes,
                    # finds nothing to count)
                    pump.inflight.pop(seq, None)
            ast.count -= len(removed)
            ast.bytes -= nbytes
            hub.stats.expired += len(removed)
            if pump is not None:
                if pump.mem:
                    # (some of them may be waiting there: what is left is read back from the
                    # store, which holds it)
                    pump.enter_db_mode()
                pump.refill()
            log.debug("purged %d expired envelopes of %r", len(removed), recipient)
        if left and (not ast.next_expiry or left < ast.next_expiry):
            ast.next_expiry = left
        if not ast.next_expiry:
            self.watched.pop(recipient, None)

    async def sweep_forever(self, interval: float) -> None:
        """Every ``interval`` seconds: purge each offline recipient whose earliest expiry has
        passed, until nothing more of it has; one purge in flight at a time (each waits for its
        commit), so every commit carries at most ``PURGE_ROWS`` of the sweep's deletes."""
        while True:
            await asyncio.sleep(interval)
            try:
                for recipient, ast in list(self.watched.items()):
                    while ast.conn is None and self.can_help(recipient, ast):
                        await self.purge(recipient, ast)
            except Exception:  # a server bug must not end the sweeps for the rest of the run
                log.exception("sweeping expired envelopes failed")
