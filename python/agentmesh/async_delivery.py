"""How received messages meet an asyncio program: the event loop an :class:`AsyncAgent` is
bound to, its handlers (plain or ``async def``) run in order on that loop, and the bounded
inbox that ``async for msg in agent`` reads.

The core calls :meth:`AsyncDelivery.dispatch` in whichever thread delivered the message (a
receive worker for a network hub, the sender's thread for a LocalHub). From a worker it waits
until the handlers ran on the loop, so that the hub's acknowledgement comes after them, and a
full inbox holds the worker back (the hub keeps the rest queued); on the loop's own thread
nothing may wait, so a full inbox drops its oldest message (counted in ``dropped``).

A message from a hub that acknowledges it once ``dispatch`` returns is never acknowledged
unless its handlers ran to the end: a worker with no loop to run them on waits for one, and a
loop cancelled or closed under them (``asyncio.run`` ending) raises
:class:`~agentmesh.errors.HandlersNotRunError`, which leaves it for the next connection.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import inspect
import threading
from typing import TYPE_CHECKING

from .errors import HandlersNotRunError
from .link_receive_pool import waiting
from .message import Message

if TYPE_CHECKING:
    from .agent_core import _AgentCore

__all__ = ["AsyncDelivery", "is_async_callable"]

#: Seconds between checks, while a receive worker waits on a loop, that the loop is alive.
_LOOP_CHECK_INTERVAL = 0.5


def is_async_callable(handler: object) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004
    )


class AsyncDelivery:
    """One AsyncAgent's loop binding, handler runs and inbox (see the module)."""

    def __init__(self, core: _AgentCore, inbox_size: int) -> None:
        self._core = core
        self._inbox: collections.deque[Message] = collections.deque()
        self._inbox_size = max(1, int(inbox_size))
        self._inbox_cond = threading.Condition()
        self._waiter: asyncio.Future[None] | None = None
        self._iterating = False
        #: An ``async def`` handler is registered: handlers run on the loop from then on.
        self.has_async = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._chains: collections.deque[Message] = collections.deque()
        self._chain_task: asyncio.Task[None] | None = None
        #: Messages dropped because the inbox was full on the loop's own thread.
        self.dropped = 0
        with contextlib.suppress(RuntimeError):
            self._bind(asyncio.get_running_loop())

    @property
    def queued(self) -> int:
        return len(self._inbox)

    # -- loop binding ---------------------------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
            self._loop_thread = threading.get_ident()
            if self._chains:
                loop.call_soon(self._ensure_chain_task)
            with self._inbox_cond:  # (a receive worker may wait for a loop)
                self._inbox_cond.notify_all()

    def bind_running(self) -> asyncio.AbstractEventLoop:
        """Bind to the running loop (the one the agent's coroutines are awaited on)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._bind(loop)
        return loop

    def _in_loop_thread(self) -> bool:
        return self._loop is not None and threading.get_ident() == self._loop_thread

    # -- dispatch (in whichever thread delivered the message) ----------------------------------

    def dispatch(self, msg: Message) -> None:
        core = self._core
        if not self.has_async:
            core.run_handlers(msg)
            self._offer(msg)
            return
        loop = self._live_loop()
        if loop is not None and self._in_loop_thread():
            self._chains.append(msg)  # (nothing may wait on the loop's own thread)
            self._ensure_chain_task()
            return
        if loop is None and not self._acknowledged_after():
            # an in-process hub acknowledges nothing: the chain runs once a loop binds
            self._chains.append(msg)
            return
        if loop is None:
            loop = self._wait_for_loop()
        # a receive worker: wait until the handlers ran, so the hub's ack comes after them
        fut = asyncio.run_coroutine_threadsafe(self._run_chain(msg), loop)
        try:
            with waiting():  # an async handler may await a reply: let it through
                while True:
                    try:
                        fut.result(_LOOP_CHECK_INTERVAL)
                        return
                    except concurrent.futures.TimeoutError:
                        if loop.is_closed():  # (closed before it ran our coroutine)
                            fut.cancel()
                            raise
        except Exception as exc:
            if not self._acknowledged_after():
                core.log.exception("agent %r: async dispatch failed", core.agent_id)
                return
            # cancelled or closed under its handlers: acknowledging it would lose it
            raise HandlersNotRunError(
                f"agent {core.agent_id!r}: the event loop of its async handlers stopped "
                f"before they ran the message from {msg.sender!r} to the end; it stays "
                "unacknowledged and comes again on the agent's next connection"
            ) from exc

    def _acknowledged_after(self) -> bool:
        """Whether a backend acknowledges a message once ``dispatch`` returns (a network hub,
        NATS), rather than an in-process hub that keeps nothing."""
        return not getattr(self._core._transport, "local", False)

    def _live_loop(self) -> asyncio.AbstractEventLoop | None:
        loop = self._loop
        if loop is None or loop.is_closed():
            with contextlib.suppress(RuntimeError):  # (this thread runs a loop of its own)
                self._bind(asyncio.get_running_loop())
            loop = self._loop
        return None if loop is None or loop.is_closed() else loop

    def _wait_for_loop(self) -> asyncio.AbstractEventLoop:
        """Hold a receive worker (the hub keeps the rest queued) until the agent is used in
        a running event loop, which binds it; the agent closing first is HandlersNotRunError."""
        with self._inbox_cond:
            while True:
                loop = self._loop
                if loop is not None and not loop.is_closed():
                    return loop
                if self._core.closed:
                    raise HandlersNotRunError(
                        f"agent {self._core.agent_id!r} closed before an event loop ran its "
                        "async handlers; the message comes again on its next connection"
                    )
                self._inbox_cond.wait(_LOOP_CHECK_INTERVAL)

    def _ensure_chain_task(self) -> None:
        if self._chain_task is None or self._chain_task.done():
            assert self._loop is not None
            self._chain_task = self._loop.create_task(self._drain_chains())

    async def _drain_chains(self) -> None:
        while self._chains:
            await self._run_chain(self._chains.popleft())

    async def _run_chain(self, msg: Message) -> None:
        core = self._core
        for handler in core._handlers:
            try:
                result = handler(msg)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                core.handler_failed(handler, msg)
        self._offer(msg)

    def _offer(self, msg: Message) -> None:
        if not (self._iterating or not self._core._handlers):
            return
        cond = self._inbox_cond
        with cond:
            if len(self._inbox) >= self._inbox_size:
                loop = self._loop
                if loop is not None and not loop.is_closed() and not self._in_loop_thread():
                    # backpressure: a producer in another thread (a network worker: the hub
                    # keeps the rest queued) waits until the consumer makes room
                    while (
                        len(self._inbox) >= self._inbox_size
                        and not self._core.closed
                        and not loop.is_closed()
                    ):
                        cond.wait(0.5)
                if len(self._inbox) >= self._inbox_size:  # the loop's own thread cannot wait
                    self._inbox.popleft()
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        self._core.log.warning(
                            "agent %r: inbox full (%d), dropped %d oldest message(s)",
                            self._core.agent_id,
                            self._inbox_size,
                            self.dropped,
                        )
            self._inbox.append(msg)
            self._wake_locked()

    def _wake_locked(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self._waiter = None
        if self._in_loop_thread():
            waiter.set_result(None)
        else:
            loop = waiter.get_loop()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_if_pending, waiter)

    def wake_all(self) -> None:
        """The agent closed: wake every producer and the waiting reader."""
        with self._inbox_cond:
            self._inbox_cond.notify_all()
            self._wake_locked()

    # -- iteration ------------------------------------------------------------------------------

    def start_iterating(self) -> None:
        self._iterating = True
        self._core.consumer_ready.set()

    async def next(self) -> Message:
        """The next message; ``StopAsyncIteration`` once the agent is closed and it is empty."""
        self.start_iterating()
        loop = self.bind_running()
        while True:
            with self._inbox_cond:
                if self._inbox:
                    msg = self._inbox.popleft()
                    self._inbox_cond.notify_all()
                    return msg
                if self._core.closed:
                    raise StopAsyncIteration
                fut: asyncio.Future[None] = loop.create_future()
                self._waiter = fut
            await fut


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
