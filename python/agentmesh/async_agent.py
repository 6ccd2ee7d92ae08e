"""The asyncio face of an agent: ``await agent.send(...)``, ``async for msg in agent``.

It shares the one implementation (:class:`~agentmesh.agent._AgentCore`) with the sync
:class:`~agentmesh.agent.Agent`; only how handlers and iteration meet the event loop is its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from .agent import CLOSE_TIMEOUT, H, _AgentCore, _AgentFacade, _hub_of
from .agent_requests import DEFAULT_REQUEST_TIMEOUT, check_no_meta
from .errors import ReplyTimeoutError
from .link_receive_pool import waiting
from .message import Message

if TYPE_CHECKING:  # pragma: no cover
    from .hubs import Hub

__all__ = ["AsyncAgent"]


def _is_async_callable(handler: Any) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004
    )


class AsyncAgent(_AgentFacade):
    """The asyncio face of an agent: ``await agent.send(...)``, ``async for msg in agent``.

    Same constructor as :class:`Agent`, plus ``inbox_size``. Handlers may be plain functions or
    ``async def``. Messages reach ``async for`` / :meth:`next_message` when the agent has no
    message handler or once iteration has started.
    """

    def __init__(
        self,
        agent_id: str,
        hub: Hub | str | None = None,
        keypair_path: str | os.PathLike[str] | None = None,
        log_level: int = logging.WARNING,
        *,
        passphrase: str | bytes | None = None,
        keypair: Any = None,
        inbox_size: int = 10_000,
        deniable: bool = False,
    ) -> None:
        resolved = _hub_of(hub)  # (a bad address fails before the identity is opened)
        core = _AgentCore(
            agent_id,
            keypair_path=keypair_path,
            passphrase=passphrase,
            keypair=keypair,
            log_level=log_level,
            owner=self,
            deniable=deniable,
        )
        self._core = core
        core._dispatch = self._dispatch
        self._inbox: collections.deque[Message] = collections.deque()
        self._inbox_size = max(1, int(inbox_size))
        self._inbox_cond = threading.Condition()
        self._waiter: asyncio.Future[None] | None = None
        self._iterating = False
        self._has_async = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._loop_bound = threading.Event()
        self._chains: collections.deque[Message] = collections.deque()
        self._chain_task: asyncio.Task[None] | None = None
        self._dropped = 0
        with contextlib.suppress(RuntimeError):
            self._bind(asyncio.get_running_loop())
        if resolved is not None:
            core.register_on(resolved, self, owned=resolved is not hub)

    # -- loop binding ---------------------------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
            self._loop_thread = threading.get_ident()
            self._loop_bound.set()
            if self._chains:
                loop.call_soon(self._ensure_chain_task)

    def _bind_running(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._bind(loop)
        return loop

    def _in_loop_thread(self) -> bool:
        return self._loop is not None and threading.get_ident() == self._loop_thread

    # -- dispatch (called by the core in whichever thread delivered the message) ----------------

    def _dispatch(self, msg: Message) -> None:
        core = self._core
        if not self._has_async:
            core.run_handlers(msg)
            self._offer(msg)
            return
        loop = self._loop
        if loop is not None and not self._in_loop_thread() and not loop.is_closed():
            # a network worker: wait until the handlers ran, so the hub's ack comes after them
            fut = asyncio.run_coroutine_threadsafe(self._run_chain(msg), loop)
            try:
                with waiting():  # an async handler may await a reply: let it through
                    fut.result()
            except Exception:
                core.log.exception("agent %r: async dispatch failed", core.agent_id)
            return
        if loop is None and not self._in_loop_thread():
            with contextlib.suppress(RuntimeError):
                self._bind(asyncio.get_running_loop())
        self._chains.append(msg)
        if self._loop is not None and self._in_loop_thread():
            self._ensure_chain_task()

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
                    self._dropped += 1
                    if self._dropped == 1 or self._dropped % 1000 == 0:
                        self._core.log.warning(
                            "agent %r: inbox full (%d), dropped %d oldest message(s)",
                            self._core.agent_id,
                            self._inbox_size,
                            self._dropped,
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

    # -- iteration ------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Message]:
        self._iterating = True
        self._core.consumer_ready.set()
        return self

    async def __anext__(self) -> Message:
        self._iterating = True
        self._core.consumer_ready.set()
        loop = self._bind_running()
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

    async def next_message(self, timeout: float | None = None) -> Message:
        """The next message (``asyncio.TimeoutError`` after ``timeout`` seconds)."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except StopAsyncIteration:
            raise RuntimeError(f"agent {self.agent_id!r} is closed") from None

    # -- handlers -------------------------------------------------------------------------------

    def on_message(self, handler: H) -> H:
        """Register a handler (sync or ``async def``), as a decorator or a call."""
        if _is_async_callable(handler):
            self._has_async = True
        return self._core.add_handler(handler)

    # -- I/O ------------------------------------------------------------------------------------

    def _needs_thread(self) -> bool:
        transport = self._core._transport
        return transport is not None and not getattr(transport, "local", False)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._bind_running()
        if self._needs_thread():
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def send(self, recipient_id: str, /, text: str = "", **kwargs: Any) -> Any:
        return await self.send_payload(recipient_id, {"text": text, **kwargs})

    async def send_payload(self, recipient_id: str, payload: dict[str, Any]) -> Any:
        self._bind_running()
        if isinstance(payload, dict):
            check_no_meta(payload)
        core = self._core
        if (
            isinstance(recipient_id, str)
            and recipient_id in core._sessions
            and recipient_id not in core._unverified
        ):
            return core.send_payload(recipient_id, payload)  # no I/O before the envelope exists
        return await self._run(core.send_payload, recipient_id, payload)

    async def request(
        self,
        recipient_id: str,
        /,
        text: str = "",
        timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        **kwargs: Any,
    ) -> Message:
        """Send a request and wait for its reply (see :meth:`Agent.request`)."""
        return await self.request_payload(recipient_id, {"text": text, **kwargs}, timeout=timeout)

    async def request_payload(
        self,
        recipient_id: str,
        payload: dict[str, Any],
        timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> Message:
        """:meth:`request` with a whole payload dict."""
        self._bind_running()
        core = self._core
        if recipient_id in core._sessions and recipient_id not in core._unverified:
            env, future = core.open_request(recipient_id, payload)  # no I/O on this path
        else:
            env, future = await self._run(core.open_request, recipient_id, payload)
        request_id = str(env.id)
        reply = asyncio.wrap_future(future)
        try:
            # (asyncio.wait, not wait_for: a timeout must not cancel what a late reply resolves)
            await asyncio.wait({reply}, timeout=timeout)
            if reply.done():
                return reply.result()
            core.finish_request(recipient_id, request_id, timed_out=True)
            if future.done():  # the reply came just as the wait ended
                return future.result()
            raise ReplyTimeoutError(recipient_id, timeout or 0.0, request_id)
        finally:
            core.finish_request(recipient_id, request_id, timed_out=False)

    async def connect(self, peer_id: str) -> str:
        return await self._run(self._core.connect, peer_id)  # type: ignore[no-any-return]

    async def trust_new_identity(self, peer_id: str, fingerprint: str) -> None:
        await self._run(self._core.trust_new_identity, peer_id, fingerprint)

    async def receive(self, envelope: Any) -> Message | None:
        return await self._run(self._core.receive, envelope)  # type: ignore[no-any-return]

    async def list_peers(self) -> list[str]:
        return await self._run(self._core.list_peers)  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        status = self._core.status()
        status["inbox"] = len(self._inbox)
        status["dropped"] = self._dropped
        return status

    async def flush(self, timeout: float | None = None) -> None:
        await self._run(self._core.flush, timeout)

    async def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        try:
            await self._run(self._core.close, timeout)
        finally:
            with self._inbox_cond:
                self._inbox_cond.notify_all()
                self._wake_locked()

    async def wait_for_peer(self, peer_id: str, timeout: float | None = 30.0) -> None:
        """Return once ``peer_id`` is online on the hub (see :meth:`Agent.wait_for_peer`)."""
        await asyncio.to_thread(self._core.wait_for_peer, peer_id, timeout)

    async def run_forever(self, timeout: float | None = None) -> None:
        """Serve until the agent is closed (by a handler or another task), ``timeout`` seconds
        pass, or the task is cancelled; then close the agent."""
        self._bind_running()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while not self._core.closed:
                if deadline is not None and loop.time() >= deadline:
                    break
                await asyncio.sleep(0.1)
        finally:
            await self.close()

    async def __aenter__(self) -> AsyncAgent:
        self._bind_running()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            await self.close()
        else:
            try:
                await self.close()
            except Exception:
                self._core.log.exception("agent %r: error while closing", self.agent_id)

    def __repr__(self) -> str:
        state = " closed" if self._core.closed else ""
        return f"<AsyncAgent {self.agent_id!r} {self.fingerprint}{state}>"


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
