"""The asyncio face of an agent: ``await agent.send(...)``, ``async for msg in agent``.

It shares the one implementation (:class:`~agentmesh.agent_core._AgentCore`) with the sync
:class:`~agentmesh.agent.Agent`; only how handlers and iteration meet the event loop is its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from .agent_core import H, _AgentCore
from .agent_facade import _AgentFacade, _hub_of
from .agent_requests import DEFAULT_REQUEST_TIMEOUT, check_no_meta
from .agent_rules import CLOSE_TIMEOUT, _recheck_clock
from .async_delivery import AsyncDelivery, is_async_callable
from .errors import ReplyTimeoutError
from .groups import AsyncGroup
from .message import Message

if TYPE_CHECKING:  # pragma: no cover
    from .hubs import Hub

__all__ = ["AsyncAgent"]


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
        self._delivery = AsyncDelivery(core, inbox_size)
        core._user_dispatch = self._delivery.dispatch
        if resolved is not None:
            core.register_on(resolved, self, owned=resolved is not hub)

    # -- iteration (the inbox and the loop binding: async_delivery.py) ------------------------

    def __aiter__(self) -> AsyncIterator[Message]:
        self._delivery.start_iterating()
        return self

    async def __anext__(self) -> Message:
        return await self._delivery.next()

    async def next_message(self, timeout: float | None = None) -> Message:
        """The next message (``asyncio.TimeoutError`` after ``timeout`` seconds)."""
        try:
            return await asyncio.wait_for(self._delivery.next(), timeout)
        except StopAsyncIteration:
            raise RuntimeError(f"agent {self.agent_id!r} is closed") from None

    def _bind_running(self) -> asyncio.AbstractEventLoop:
        return self._delivery.bind_running()

    # -- handlers -------------------------------------------------------------------------------

    def on_message(self, handler: H) -> H:
        """Register a handler (sync or ``async def``), as a decorator or a call."""
        if is_async_callable(handler):
            self._delivery.has_async = True
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

    async def send_payload(
        self, recipient_id: str, payload: dict[str, Any], *, ttl: float | None = None
    ) -> Any:
        """See :meth:`Agent.send_payload` (``ttl`` too)."""
        self._bind_running()
        core = self._core
        send: Any = core.send_payload
        if isinstance(payload, dict):
            check_no_meta(payload)
            if ttl is not None:
                send = functools.partial(core.send_expiring, ttl=ttl)
        if _recheck_clock() >= core._next_recheck:
            core._mark_sessions_for_recheck()  # (the send below then looks bundles up: off-loop)
        if (
            isinstance(recipient_id, str)
            and recipient_id in core._sessions
            and recipient_id not in core._unverified
        ):
            return send(recipient_id, payload)  # no I/O before the envelope exists
        return await self._run(send, recipient_id, payload)

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
        if _recheck_clock() >= core._next_recheck:
            core._mark_sessions_for_recheck()
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

    async def create_group(self, group_id: str, members: Any = ()) -> AsyncGroup:
        """Create group ``group_id`` with this agent as its creator (see ``Agent.create_group``)."""
        await self._run(self._core.create_group, group_id, members)
        return AsyncGroup(self._core, group_id, self._run)

    def group(self, group_id: str) -> AsyncGroup:
        """A group this agent is a member of (``ValueError`` otherwise)."""
        self._core.group_members(group_id)
        return AsyncGroup(self._core, group_id, self._run)

    def groups(self) -> list[AsyncGroup]:
        """Every group this agent is a member of, by id."""
        return [AsyncGroup(self._core, g, self._run) for g in self._core.groups()]

    async def connect(self, peer_id: str) -> str:
        return await self._run(self._core.connect, peer_id)  # type: ignore[no-any-return]

    async def trust_new_identity(self, peer_id: str, fingerprint: str) -> None:
        await self._run(self._core.trust_new_identity, peer_id, fingerprint)

    async def rotate_identity(self) -> str:
        return await self._run(self._core.rotate_identity)  # type: ignore[no-any-return]

    async def receive(self, envelope: Any) -> Message | None:
        return await self._run(self._core.receive, envelope)  # type: ignore[no-any-return]

    async def list_peers(self) -> list[str]:
        return await self._run(self._core.list_peers)  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        status = self._core.status()
        status["inbox"] = self._delivery.queued
        status["dropped"] = self._delivery.dropped
        return status

    async def flush(self, timeout: float | None = None) -> None:
        await self._run(self._core.flush, timeout)

    async def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        try:
            await self._run(self._core.close, timeout)
        finally:
            self._delivery.wake_all()

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

