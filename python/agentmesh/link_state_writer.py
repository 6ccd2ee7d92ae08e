"""A persistent agent's state writer: one thread per agent that writes the state (and, when a
set-up changed it, the identity file) so that received batches can be acknowledged, and soon
after a send started a new sending chain. The rule it keeps for every backend: nothing is
acknowledged before the state its acceptance changed is on disk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .agent_core import _AgentCore

log = logging.getLogger("agentmesh.link")

#: The writer writes at most once per this many seconds (a write covers everything before it;
#: acknowledgements wait for it).
STATE_WRITE_INTERVAL = 0.005
#: A state write that failed before an acknowledgement is retried after this many seconds,
#: doubling up to SAVE_RETRY_MAX.
SAVE_RETRY_FIRST = 0.05
SAVE_RETRY_MAX = 5.0


def resolve(fut: asyncio.Future[None], error: BaseException | None = None) -> None:
    """Complete ``fut`` (on its loop), with ``error`` if one is given."""
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


class StateWriter:
    """Writes ``core``'s state on its own thread. ``closing()`` tells whether the agent is
    closing (then a failed write is given up rather than retried), ``report(exc)`` hands a
    failed write to whoever reports it (``flush()``)."""

    def __init__(
        self,
        core: _AgentCore,
        loop: asyncio.AbstractEventLoop,
        *,
        closing: Callable[[], bool],
        report: Callable[[BaseException], None],
    ) -> None:
        self.core = core
        self.loop = loop
        self._closing = closing
        self._report = report
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._waiting: list[asyncio.Future[None]] = []
        self._stop = False
        self._thread = threading.Thread(
            target=self._run, name=f"agentmesh-state-{core.agent_id[:40]}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def after_batch(self, durable: list[asyncio.Future[None]]) -> None:
        """Handled batches: each future completes once a write after them succeeded."""
        with self._lock:
            self._waiting.extend(durable)
        self._wake.set()

    def after_send(self) -> None:
        """A send started a new chain: its keys reach the disk with the next write."""
        self._wake.set()

    def stop(self, timeout: float | None) -> None:
        """One last write for the batches handled so far (so their acknowledgements go out
        before the connection closes), then the thread ends."""
        if not self._thread.is_alive():
            return
        with self._lock:
            self._stop = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout if timeout is not None else 30.0)

    def _run(self) -> None:
        last = 0.0
        while True:
            self._wake.wait()
            # at most one write per STATE_WRITE_INTERVAL: in a conversation every message
            # wakes this thread, and the writes' CPU is taken from the round trip's
            pause = last + STATE_WRITE_INTERVAL - time.monotonic()
            if pause > 0 and not self._stop:
                time.sleep(pause)
            self._wake.clear()
            with self._lock:
                waiting, self._waiting = self._waiting, []
                stop = self._stop
            last = time.monotonic()
            error = self._write()
            for fut in waiting:
                with contextlib.suppress(RuntimeError):  # the loop is gone (interpreter exit)
                    self.loop.call_soon_threadsafe(resolve, fut, error)
            if stop:
                return

    def _write(self) -> BaseException | None:
        """Write the state (then, if a set-up changed it, the identity file) until it succeeds:
        an envelope is acknowledged only once what accepting it changed is on disk, or a
        restarted agent would open it again, or refuse the messages after it. A failing disk
        is retried with backoff while the agent runs (deliveries wait; flush() reports the
        error); an agent that closes first returns the error, and the batch stays
        unacknowledged at the backend, which delivers it again."""
        core = self.core
        delay = SAVE_RETRY_FIRST
        while True:
            try:
                core.save_state()
            except Exception as exc:
                self._report(exc)
                log.error(
                    "agent %r: received envelopes stay unacknowledged until this write "
                    "succeeds: %s",
                    core.agent_id,
                    exc,
                )
                if self._closing():
                    return exc
                time.sleep(delay)
                delay = min(delay * 2, SAVE_RETRY_MAX)
                continue
            if not core.identity_unsaved or core.saves_held_back:
                # (held back: the handle stage's write after those handlers brings it)
                return None
            # (another thread accepted a set-up during the write: the next round holds it)
