"""How MCP travels between two agents: one JSON-RPC message is one agentmesh message.

Every MCP message is an ordinary end-to-end encrypted agentmesh message of the kind ``"mcp"``
(sent with the core's ``send_kind``, taken by its interceptor before any message handler runs),
whose payload is a *frame*::

    {"to": "server" | "client", "session": "<16 hex>", "jsonrpc": {...}}   one JSON-RPC message
    {"to": "server" | "client", "session": "<16 hex>", "end": true, "reason": "..."}

``to`` says which side of the receiving agent the frame is for (an agent may serve MCP and be a
client of the same peer at once); ``session`` tells one MCP session between the two agents from
another. The hub sees only envelopes; the sender of a frame is the authenticated ``msg.sender``.

:class:`Router` is the one interceptor of an agent for that kind: it hands each frame to the
client session or the served server it belongs to. It runs on the agent's receive path, so it
never blocks: the endpoints hand frames to their own event loops.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import mcp_types
from mcp.shared.message import SessionMessage

from ..agent import _AgentFacade
from ..message import Message

__all__ = [
    "KIND",
    "FrameWriter",
    "Router",
    "core_of",
    "decode_jsonrpc",
    "encode_jsonrpc",
    "error_response",
    "router_for",
]

log = logging.getLogger("agentmesh.mcp")

#: The agentmesh message kind that carries MCP.
KIND = "mcp"

#: The longest session id a frame may carry (ours are 16 hex digits).
MAX_SESSION_ID = 64

#: JSON-RPC error codes of this transport (the server-error range -32000..-32099).
NOT_ALLOWED = -32003
NO_SERVER = -32004
SEND_FAILED = -32005


def core_of(agent: Any) -> Any:
    """The agent core behind ``agent`` (an :class:`~agentmesh.Agent` or ``AsyncAgent``)."""
    if not isinstance(agent, _AgentFacade):
        raise TypeError(f"expected an agentmesh Agent or AsyncAgent, got {type(agent).__name__}")
    core = agent._core
    if core.closed:
        raise RuntimeError(f"agent {core.agent_id!r} is closed")
    return core


def encode_jsonrpc(message: mcp_types.JSONRPCMessage) -> dict[str, Any]:
    """A JSON-RPC message as the JSON-safe dict a frame carries (as the stdio transport writes
    it: by alias, unset fields left out)."""
    return message.model_dump(mode="json", by_alias=True, exclude_unset=True)  # type: ignore[no-any-return]


def decode_jsonrpc(data: Any) -> SessionMessage | Exception:
    """The frame's JSON-RPC message, or the exception that says why it is not one (handed to
    the session like a transport's parse error)."""
    try:
        return SessionMessage(
            mcp_types.jsonrpc_message_adapter.validate_python(data, by_name=False)
        )
    except Exception as exc:
        return exc


def request_id_of(data: Any) -> Any:
    """The id of a JSON-RPC request (a dict with ``method`` and ``id``), else None."""
    if isinstance(data, dict) and "method" in data and "id" in data:
        return data["id"]
    return None


def error_response(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def frame(to: str, session: str, **fields: Any) -> dict[str, Any]:
    return {"to": to, "session": session, **fields}


class FrameWriter:
    """The write stream of one MCP session (the SDK's ``WriteStream``): each message is sealed
    for the peer as one frame, at once (no task, no queue: sealing never waits for the network
    once the session with the peer exists). ``end()`` tells the peer the session ended."""

    def __init__(
        self,
        core: Any,
        peer: str,
        to: str,
        session: str,
        on_failure: Callable[[dict[str, Any], Exception], None] | None = None,
    ) -> None:
        self._core = core
        self._peer = peer
        self._to = to
        self._session = session
        self._on_failure = on_failure
        self._closed = False
        self._ended = False

    async def send(self, item: SessionMessage, /) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        data = encode_jsonrpc(item.message)
        try:
            self._core.send_kind(self._peer, KIND, frame(self._to, self._session, jsonrpc=data))
        except Exception as exc:
            if self._on_failure is None:
                raise
            self._on_failure(data, exc)

    def end(self, reason: str | None = None) -> None:
        """Tell the peer this session ended (once; best effort: a closed agent sends nothing,
        and the peer's side then ends when it closes or times out)."""
        if self._ended:
            return
        self._ended = True
        if self._core.closed:
            return
        fields: dict[str, Any] = {"end": True}
        if reason is not None:
            fields["reason"] = reason
        try:
            self._core.send_kind(self._peer, KIND, frame(self._to, self._session, **fields))
        except Exception as exc:
            log.debug("could not tell agent %r an MCP session ended: %s", self._peer, exc)

    def peer_ended(self) -> None:
        """The peer ended the session: nothing to tell it."""
        self._ended = True

    def close(self) -> None:
        self._closed = True
        self.end()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> FrameWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


#: A receiving endpoint: called on the receive path with each frame's message; must not block.
Endpoint = Callable[[Message], None]


class Router:
    """The ``"mcp"`` interceptor of one agent: frames to the client sessions it opened and to
    the MCP server it serves (at most one)."""

    def __init__(self, core: Any) -> None:
        self._core_ref = weakref.ref(core)
        self._agent_id: str = core.agent_id
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], Endpoint] = {}
        self._server: Endpoint | None = None

    # -- registration -----------------------------------------------------------------------

    def add_client(self, peer: str, session: str, endpoint: Endpoint) -> None:
        with self._lock:
            self._clients[(peer, session)] = endpoint

    def remove_client(self, peer: str, session: str) -> None:
        with self._lock:
            self._clients.pop((peer, session), None)

    def set_server(self, endpoint: Endpoint) -> None:
        with self._lock:
            if self._server is not None:
                raise RuntimeError(
                    f"agent {self._agent_id!r} already serves an MCP server: close that one first"
                )
            self._server = endpoint

    def clear_server(self, endpoint: Endpoint) -> None:
        with self._lock:
            if self._server is endpoint:
                self._server = None

    # -- the receive path -------------------------------------------------------------------

    def take(self, msg: Message) -> None:
        payload = msg.payload
        to = payload.get("to")
        session = payload.get("session")
        if (
            not isinstance(session, str)
            or not 0 < len(session) <= MAX_SESSION_ID
            or to not in ("server", "client")
        ):
            log.warning(
                "agent %r: dropped a malformed MCP frame from %r", self._agent_id, msg.sender
            )
            return
        if to == "client":
            with self._lock:
                endpoint = self._clients.get((msg.sender, session))
            if endpoint is None:
                # a session this agent closed (or never opened): nothing waits for it
                log.debug(
                    "agent %r: MCP frame from %r for no open session", self._agent_id, msg.sender
                )
                return
            endpoint(msg)
            return
        with self._lock:
            server = self._server
        if server is not None:
            server(msg)
            return
        # Nobody serves here: answer a request at once rather than let its caller time out.
        request_id = request_id_of(payload.get("jsonrpc"))
        if request_id is None:
            return
        reply = frame(
            "client",
            session,
            jsonrpc=error_response(
                request_id, NO_SERVER, f"agent {self._agent_id!r} serves no MCP server"
            ),
        )
        core = self._core_ref()
        if core is None:
            return
        try:  # the session with the sender exists (it just sent): sending only seals and queues
            core.send_kind(msg.sender, KIND, reply)
        except Exception as exc:
            log.warning(
                "agent %r: could not refuse an MCP call from %r: %s",
                self._agent_id,
                msg.sender,
                exc,
            )


_routers: weakref.WeakKeyDictionary[Any, Router] = weakref.WeakKeyDictionary()
_routers_lock = threading.Lock()


def router_for(core: Any) -> Router:
    """The agent's router, made and registered as its ``"mcp"`` interceptor on first use."""
    with _routers_lock:
        router = _routers.get(core)
        if router is None:
            router = Router(core)
            core.intercept(KIND, router.take)
            _routers[core] = router
        return router
