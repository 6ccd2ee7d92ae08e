"""The serving side: any MCP server reachable by other agents through one agent.

:func:`serve` starts a background thread with its own event loop. Each MCP session a calling
agent opens gets its own pair of streams and its own ``server.run(...)`` (as a stdio server
process would per client); it ends when the caller ends it, when the server's run ends, or when
the service closes. Every frame is checked against the access policy before it reaches the
server: a caller that is not admitted gets a JSON-RPC error for each request, nothing more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared.message import SessionMessage

from .._eventloop import new_event_loop
from ..message import Message
from ._wire import (
    KIND,
    NOT_ALLOWED,
    FrameWriter,
    core_of,
    decode_jsonrpc,
    error_response,
    frame,
    request_id_of,
    router_for,
)
from .access import AccessPolicy, AllowCallable

__all__ = ["MAX_SESSIONS_PER_AGENT", "MCPService", "caller", "serve"]

log = logging.getLogger("agentmesh.mcp")

#: MCP sessions one calling agent may hold open at once; opening one more ends its oldest (a
#: caller that crashed never says its sessions ended: this bounds what it leaves behind).
MAX_SESSIONS_PER_AGENT = 16
#: Messages from one caller that may wait for its session to read them (see client.py).
INBOUND_BUFFER = 1024
#: Seconds a session's server gets to finish after its input ended, before it is cancelled.
SESSION_END_GRACE = 2.0


_caller: contextvars.ContextVar[str] = contextvars.ContextVar("agentmesh_mcp_caller")


def caller() -> str:
    """Inside a tool (resource, prompt...) served with :func:`serve`: the id of the agent that
    called it, as authenticated by its messages. ``LookupError`` outside a served call."""
    try:
        return _caller.get()
    except LookupError:
        raise LookupError(
            "agentmesh.mcp.caller() is only known inside a call served by serve()"
        ) from None


def lowlevel_server(server: Any) -> Server[Any]:
    """The low-level ``Server`` that runs over streams (an ``MCPServer`` wraps one)."""
    if isinstance(server, MCPServer):
        # the SDK's own in-memory transport unwraps it the same way
        return server._lowlevel_server  # type: ignore[no-any-return]
    if isinstance(server, Server):
        return server
    raise TypeError(
        f"expected an MCP server (mcp.server.Server or MCPServer), got {type(server).__name__}"
    )


class _Session:
    """One MCP session of one calling agent: its streams and its ``server.run``."""

    def __init__(self, peer: str, session_id: str, writer: FrameWriter) -> None:
        self.peer = peer
        self.session_id = session_id
        self.inbound_send: MemoryObjectSendStream[SessionMessage | Exception]
        self.inbound: MemoryObjectReceiveStream[SessionMessage | Exception]
        self.inbound_send, self.inbound = anyio.create_memory_object_stream[
            SessionMessage | Exception
        ](INBOUND_BUFFER)
        self.writer = writer
        self.done = anyio.Event()
        self.cancel_scope = anyio.CancelScope()
        self.ending = False

    def end_input(self) -> None:
        """No more messages from the caller: the server's run sees the end of its input."""
        self.inbound_send.close()


class MCPService:
    """An MCP server served through an agent (see :func:`serve`). ``close()`` stops it; it is
    a context manager, sync and async."""

    def __init__(
        self,
        agent: Any,
        server: Any,
        policy: AccessPolicy,
        *,
        raise_exceptions: bool = False,
        max_sessions_per_agent: int = MAX_SESSIONS_PER_AGENT,
    ) -> None:
        self._core = core_of(agent)
        self.agent_id: str = self._core.agent_id
        self._server = lowlevel_server(server)
        self._policy = policy
        self._raise_exceptions = raise_exceptions
        if max_sessions_per_agent < 1:
            raise ValueError("max_sessions_per_agent must be at least 1")
        self._max_sessions = max_sessions_per_agent
        self._sessions: collections.OrderedDict[tuple[str, str], _Session] = (
            collections.OrderedDict()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._started = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        self._failure: BaseException | None = None
        self._router = router_for(self._core)
        self._endpoint = self._take  # one bound method: the router tells it apart by identity
        self._router.set_server(self._endpoint)  # refuses a second server on this agent
        self._thread = threading.Thread(
            target=self._run_thread, name=f"agentmesh-mcp-{self.agent_id}", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            self._router.clear_server(self._endpoint)
            raise RuntimeError(f"the MCP service of {self.agent_id!r} did not start") from (
                self._failure
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def sessions(self) -> list[tuple[str, str]]:
        """The open MCP sessions, as (calling agent id, session id), oldest first."""
        return list(self._sessions)

    # -- the service's thread and loop --------------------------------------------------------

    def _run_thread(self) -> None:
        # the loop agentmesh's network threads run (uvloop where installed): each hand-off
        # into it is part of every call's round trip
        loop = new_event_loop()
        try:
            loop.run_until_complete(self._main())
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException as exc:  # reported by the constructor, or logged
            self._failure = exc
            if self._started.is_set():
                log.exception("agent %r: the MCP service stopped", self.agent_id)
        finally:
            loop.close()
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            self._started.set()
            await self._stop.wait()
            for session in list(self._sessions.values()):
                self._end_session(session, "the MCP server was closed")
            with anyio.move_on_after(SESSION_END_GRACE):
                for session in list(self._sessions.values()):
                    await session.done.wait()
            tg.cancel_scope.cancel()

    def _take(self, msg: Message) -> None:
        """On the receive path: to the service's loop, never blocking."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_frame, msg)

    def _on_frame(self, msg: Message) -> None:  # on the service's loop
        peer, payload = msg.sender, msg.payload
        session_id = payload["session"]
        data = payload.get("jsonrpc")
        if not self._admits(peer):
            request_id = request_id_of(data)
            if request_id is not None:
                log.warning("agent %r: refused an MCP call from agent %r", self.agent_id, peer)
                refusal = f"agent {peer!r} is not allowed to call this MCP server"
                self._send(
                    peer,
                    frame(
                        "client",
                        session_id,
                        jsonrpc=error_response(request_id, NOT_ALLOWED, refusal),
                    ),
                )
            return
        session = self._sessions.get((peer, session_id))
        if payload.get("end"):
            if session is not None:
                session.ending = True
                session.writer.peer_ended()
                session.end_input()
            return
        if data is None or self._stop is None or self._stop.is_set():
            return
        if session is None:
            session = self._open_session(peer, session_id)
        try:
            session.inbound_send.send_nowait(decode_jsonrpc(data))
        except anyio.WouldBlock:
            self._end_session(session, f"more than {INBOUND_BUFFER} messages unread")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the session is ending

    def _admits(self, peer: str) -> bool:
        try:
            return self._policy.admits(peer, self._core._pins.get(peer))
        except Exception:  # a policy that fails admits nobody
            log.exception("agent %r: the MCP access policy failed for %r", self.agent_id, peer)
            return False

    def _open_session(self, peer: str, session_id: str) -> _Session:
        mine = [s for s in self._sessions.values() if s.peer == peer and not s.ending]
        if len(mine) >= self._max_sessions:
            self._end_session(
                mine[0], f"agent {peer!r} opened more than {self._max_sessions} sessions"
            )
        writer = FrameWriter(self._core, peer, "client", session_id, self._log_failure)
        session = _Session(peer, session_id, writer)
        self._sessions[(peer, session_id)] = session
        assert self._task_group is not None
        self._task_group.start_soon(self._run_session, session)
        return session

    def _end_session(self, session: _Session, reason: str) -> None:
        """End a session from this side: its caller is told at once, then its input ends."""
        if session.ending or (session.peer, session.session_id) not in self._sessions:
            return
        session.ending = True
        session.writer.end(reason)
        session.end_input()

    async def _run_session(self, session: _Session) -> None:
        server = self._server
        _caller.set(session.peer)  # this task's context: every handler of the session sees it
        try:
            with session.cancel_scope:
                await server.run(
                    session.inbound,
                    session.writer,
                    server.create_initialization_options(),
                    raise_exceptions=self._raise_exceptions,
                )
        except Exception as exc:
            log.exception(
                "agent %r: the MCP session of agent %r failed", self.agent_id, session.peer
            )
            session.writer.end(f"the MCP server failed: {type(exc).__name__}")
        finally:
            session.inbound_send.close()
            session.writer.close()
            self._sessions.pop((session.peer, session.session_id), None)
            session.done.set()

    def _log_failure(self, data: dict[str, Any], exc: Exception) -> None:
        log.warning("agent %r: an MCP message was not sent: %s", self.agent_id, exc)

    def _send(self, peer: str, payload: dict[str, Any]) -> None:
        """Seal and queue one frame (the session with the caller exists: no I/O here)."""
        try:
            self._core.send_kind(peer, KIND, payload)
        except Exception as exc:
            log.warning("agent %r: MCP frame to agent %r not sent: %s", self.agent_id, peer, exc)

    # -- closing ----------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Stop serving: open sessions end (their callers are told), the thread stops.
        Idempotent; safe from any thread but the service's own."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._router.clear_server(self._endpoint)
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> MCPService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> MCPService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await anyio.to_thread.run_sync(self.close)

    def __repr__(self) -> str:
        state = " closed" if self._closed else f" {len(self._sessions)} sessions"
        return f"<MCPService of {self.agent_id!r}{state}>"


def serve(
    agent: Any,
    server: Any,
    *,
    allow: Iterable[str] | AllowCallable | None = None,
    allow_fingerprints: Iterable[str] | None = None,
    raise_exceptions: bool = False,
    max_sessions_per_agent: int = MAX_SESSIONS_PER_AGENT,
) -> MCPService:
    """Make ``server`` (an ``MCPServer`` or a low-level ``mcp.server.Server``) callable by other
    agents through ``agent`` (an ``Agent`` or ``AsyncAgent``), in a background thread.

    ``allow``: the agent ids that may call, or ``allow(agent_id, fingerprint) -> bool``;
    ``allow_fingerprints``: identity fingerprints that may call (either admits a caller; one of
    them is required, ``allow=any_agent`` admits every agent). Returns the running
    :class:`MCPService`; ``close()`` it (or use it as a context manager) to stop.
    """
    policy = AccessPolicy(allow, allow_fingerprints)
    return MCPService(
        agent,
        server,
        policy,
        raise_exceptions=raise_exceptions,
        max_sessions_per_agent=max_sessions_per_agent,
    )
