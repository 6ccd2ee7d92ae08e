"""The client side: an MCP transport to the MCP server another agent serves.

:class:`AgentTransport` is a transport in the SDK's sense (an async context manager that yields
the read and write streams of SessionMessages), so it goes wherever the SDK takes one:
``mcp.Client(AgentTransport(agent, "tools"))`` or ``ClientSession(*streams)``.
:func:`connect` is the short way: an initialized ``ClientSession``.

Runs on asyncio (the frames reach the session's event loop with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import mcp_types
from anyio.streams.memory import MemoryObjectReceiveStream
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from ..message import Message

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup
from ._wire import (
    SEND_FAILED,
    FrameWriter,
    core_of,
    decode_jsonrpc,
    error_response,
    request_id_of,
    router_for,
)

__all__ = ["DEFAULT_TIMEOUT", "INBOUND_BUFFER", "AgentTransport", "connect"]

log = logging.getLogger("agentmesh.mcp")

#: Seconds :func:`connect` waits for any one answer of the remote server by default.
DEFAULT_TIMEOUT = 30.0
#: Messages from the server that may wait for the session to read them; past that the
#: session ends (the receive path cannot wait, and a session that stopped reading is broken).
INBOUND_BUFFER = 1024

Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], FrameWriter]


class AgentTransport:
    """An MCP client transport from ``agent`` to the MCP server ``server_agent_id`` serves.

    Entering it makes sure ``agent`` can reach the peer (first contact, its identity checked:
    an unknown peer is the usual ``ValueError``), opens a new MCP session id and yields
    ``(read_stream, write_stream)``. Leaving it tells the server the session ended.
    """

    def __init__(self, agent: Any, server_agent_id: str) -> None:
        self._core = core_of(agent)
        if not isinstance(server_agent_id, str):
            raise TypeError(f"server_agent_id must be a str, not {type(server_agent_id).__name__}")
        if server_agent_id == self._core.agent_id:
            raise ValueError(f"agent {server_agent_id!r} cannot be its own MCP client")
        self.peer = server_agent_id
        self.session_id = secrets.token_hex(8)
        self._cm: AbstractAsyncContextManager[Streams] | None = None

    async def __aenter__(self) -> Streams:
        if self._cm is not None:
            raise RuntimeError("an AgentTransport is entered once; make a new one per session")
        self._cm = self._open()
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._cm is not None:
            await self._cm.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Streams]:
        core, peer, session = self._core, self.peer, self.session_id
        # First contact may ask the hub for the peer's bundle: off the event loop.
        await anyio.to_thread.run_sync(core.connect, peer)
        loop = asyncio.get_running_loop()
        inbound_send, inbound = anyio.create_memory_object_stream[SessionMessage | Exception](
            INBOUND_BUFFER
        )

        def on_frame(msg: Message) -> None:  # on the event loop
            payload = msg.payload
            if payload.get("end"):
                writer.peer_ended()
                log.warning(
                    "MCP session with agent %r ended by the server: %s",
                    peer,
                    payload.get("reason") or "its session ended",
                )
                inbound_send.close()  # the session's waiting calls fail at once
                return
            try:
                inbound_send.send_nowait(decode_jsonrpc(payload.get("jsonrpc")))
            except anyio.WouldBlock:
                log.warning(
                    "MCP session with agent %r ended: more than %d messages unread",
                    peer,
                    INBOUND_BUFFER,
                )
                inbound_send.close()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the session is gone

        def take(msg: Message) -> None:  # on the receive path: never block
            if not loop.is_closed():
                loop.call_soon_threadsafe(on_frame, msg)

        def on_failure(data: dict[str, Any], exc: Exception) -> None:
            """A message that could not be sent: its caller gets the reason now, not a
            timeout."""
            log.warning("MCP message to agent %r not sent: %s", peer, exc)
            request_id = request_id_of(data)
            if request_id is None:
                return
            error = error_response(
                request_id, SEND_FAILED, f"could not send to agent {peer!r}: {exc}"
            )
            with contextlib.suppress(
                anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
            ):
                inbound_send.send_nowait(decode_jsonrpc(error))

        writer = FrameWriter(core, peer, "server", session, on_failure)
        router = router_for(core)
        router.add_client(peer, session, take)
        try:
            yield inbound, writer
        finally:
            router.remove_client(peer, session)
            writer.close()
            inbound_send.close()


@asynccontextmanager
async def connect(
    agent: Any,
    server_agent_id: str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    **session_options: Any,
) -> AsyncIterator[ClientSession]:
    """An initialized MCP ``ClientSession`` with the MCP server ``server_agent_id`` serves.

    ``timeout`` bounds the wait for each answer (the session's read timeout; None waits
    forever); a server agent that never answers the handshake is a ``TimeoutError`` naming it.
    ``session_options`` go to ``ClientSession`` (``logging_callback``, ``message_handler``,
    ``sampling_callback``, ``client_info``...).
    """
    try:
        async with (
            AgentTransport(agent, server_agent_id) as (read_stream, write_stream),
            ClientSession(
                read_stream, write_stream, read_timeout_seconds=timeout, **session_options
            ) as session,
        ):
            try:
                await session.initialize()
            except MCPError as exc:
                if exc.error.code == mcp_types.REQUEST_TIMEOUT:
                    raise TimeoutError(
                        f"agent {server_agent_id!r} did not answer the MCP handshake within "
                        f"{timeout} s (is it online, and serving MCP?)"
                    ) from None
                raise
            yield session
    except BaseExceptionGroup as group:
        # The session's task group wraps what its body raised: one error is raised as itself.
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise
