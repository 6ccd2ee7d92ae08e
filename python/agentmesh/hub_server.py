"""The agentmesh network hub: directory, durable store-and-forward and routing over TCP (+TLS).

Run it as ``agentmesh-hub --host H --port P --store PATH`` (or ``python -m agentmesh.hub_server``)
or embed it::

    server = NetworkHubServer(port=0)
    server.start(block=False)      # returns once it listens
    print(server.port)
    ...
    server.stop()

The hub sees public bundles and routes opaque envelopes; it never holds a key that could open or
forge one. The design (framing, registration, group commit, delivery before commit, limits) is
described in ``docs/hub.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

from agentmesh._eventloop import loop_name, new_event_loop
from agentmesh.hub_protocol import (
    CHALLENGE_SIZE,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_PORT,
    PROTOCOL_VERSION,
    UNKNOWN_OP,
    ErrorCode,
    FrameDecoder,
    FrameType,
    Op,
    ProtocolError,
    Welcome,
    check_agent_id,
    decode_hello,
    decode_register,
    decode_request,
    decode_send,
    encode_deliver,
    encode_error,
    encode_frame,
    encode_response,
    encode_send_ack,
    encode_send_error,
    encode_welcome,
    iter_acks,
    parse_prekeys,
)
from agentmesh.hub_store import (
    HubBackend,
    SQLiteBackend,
    StoreError,
    StoreState,
    default_store_path,
    ephemeral_store_path,
)

__all__ = ["HubLimits", "NetworkHubServer", "main"]

log = logging.getLogger("agentmesh.hub")

_T = TypeVar("_T")

MiB = 1024 * 1024


@dataclass
class HubLimits:
    """Every bound the hub enforces. Defaults suit one hub serving thousands of agents."""

    #: Largest frame (type byte + body) accepted from a client. An envelope can be up to this
    #: minus 265 bytes (SEND header and recipient id).
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    #: Open connections (handshaking, lookup and agent); one more gets an ERROR and is closed.
    max_connections: int = 1024
    #: Connections still in their handshake (before READY). They need no proof, so a small
    #: share of ``max_connections``: a flood of them cannot keep agents out.
    max_handshaking: int = 128
    #: Lookup-only connections (unauthenticated, kept alive by answering pings).
    max_lookup_connections: int = 128
    #: Handshaking plus lookup connections from one IP address.
    max_unauthenticated_per_address: int = 32
    #: Outgoing bytes buffered for a handshaking or lookup connection before the hub stops
    #: reading and answering it (agents get ``max_write_buffer`` once registered).
    max_lookup_write_buffer: int = 256 * 1024
    #: Agent ids in one LIST_AGENTS answer (a page; the answer names where the next begins).
    max_list_agents: int = 1000
    #: Seconds from TCP accept to a completed HELLO + REGISTER/LOOKUP (TLS handshake included).
    handshake_timeout: float = 10.0
    #: A connection that sends no complete frame for this long is closed. Clients answer the
    #: hub's pings, so a live idle client is never dropped.
    idle_timeout: float = 60.0
    #: The hub pings a connection that has been silent for this long (must be < idle_timeout).
    ping_interval: float = 20.0
    #: Envelopes queued (not yet acknowledged) for one agent; beyond it sends are refused with
    #: an "inbox full" SEND_ERROR.
    max_queued_per_agent: int = 100_000
    #: Bytes queued for one agent, same treatment.
    max_queued_bytes_per_agent: int = 1024 * MiB
    #: Deliveries in flight (sent, not acknowledged) per recipient connection.
    delivery_window: int = 1024
    #: Envelopes held in memory for an online recipient beyond the window; past it the hub
    #: reads them back from the store when the recipient catches up.
    delivery_buffer: int = 8192
    #: Outgoing bytes buffered per connection before the hub stops delivering to it and stops
    #: reading from it (backpressure).
    max_write_buffer: int = 8 * MiB
    #: Bytes of envelopes received from one connection and not yet committed; past it the hub
    #: stops reading from that connection until the store catches up.
    max_uncommitted_bytes: int = 32 * MiB
    #: Distinct agent ids the directory accepts.
    max_agents: int = 1_000_000
    #: Concurrent lookup requests per connection.
    max_pending_requests: int = 256
    #: One-time prekeys held per agent; the rest of an upload beyond it is ignored (the answer
    #: tells the agent how many are held, and READY the limit).
    max_prekeys_per_agent: int = 100
    #: One-time prekeys one agent id may claim per minute, across all its connections (a
    #: reconnect does not reset it); beyond it, and for a second claim of the same peer within
    #: the minute, the bundle comes without one.
    max_prekey_claims_per_minute: int = 60
    #: One-time prekeys handed out of one agent's stock per minute, whoever asks: many fresh
    #: ids cannot empty a stock faster than this. Beyond it bundles come without one.
    max_prekey_claims_per_target_per_minute: int = 30

    def validate(self) -> HubLimits:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"HubLimits.{f.name} must be a positive number, got {value!r}")
        if self.ping_interval >= self.idle_timeout:
            raise ValueError("HubLimits.ping_interval must be smaller than idle_timeout")
        if self.max_frame_size < 4096:
            raise ValueError("HubLimits.max_frame_size must be at least 4096")
        return self


# Connection states
_AWAIT_HELLO = 0
_AWAIT_AUTH = 1
_LOOKUP = 2
_AGENT = 3
_CLOSING = 4
_CLOSED = 5


class _AgentState:
    """Per known agent: its queue size and its current delivery connection."""

    __slots__ = ("bytes", "conn", "count", "puts", "uncommitted")

    def __init__(self, count: int = 0, nbytes: int = 0) -> None:
        self.count = count  # queued, unacknowledged envelopes
        self.bytes = nbytes
        self.uncommitted = 0  # accepted, not yet committed
        self.puts = 0  # envelopes ever accepted in this run (change detector)
        self.conn: _Conn | None = None


class _Hub:
    """Routing core; lives in the event loop thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        store: HubBackend,
        state: StoreState,
        limits: HubLimits,
        crypto: ModuleType | None,
        on_fatal: Callable[[BaseException], None],
        tls_cert_sha256: bytes | None = None,
    ) -> None:
        self.loop = loop
        self.store = store
        self.limits = limits
        self.crypto = crypto
        self.hub_id = state.hub_id
        #: SHA-256 of the certificate clients see (None without TLS): registration proofs are
        #: bound to it.
        self.tls_cert_sha256 = tls_cert_sha256
        self.conns: set[_Conn] = set()
        self.agents: dict[str, _AgentState] = {a: _AgentState() for a in state.agents}
        for rcpt, (n, b) in state.queues.items():
            st = self.agents.setdefault(rcpt, _AgentState())
            st.count, st.bytes = n, b
        # LIST_AGENTS: ids in order, and encoded pages (by the cursor they start after) reused
        # until the directory changes; a flood of requests costs one copy per answer
        self.sorted_ids = sorted(self.agents)
        self.list_pages: dict[str, bytes] = {}
        self.list_cursors: set[str] = set()
        # unauthenticated connections: "handshake" and "lookup" counts, and per address
        self.unauth = {"handshake": 0, "lookup": 0}
        self.unauth_by_addr: dict[str, int] = {}
        self.progress: dict[str, tuple[bytes, int]] = {}
        # one-time prekey claims of the last minute, by requesting id (time, target) and by
        # target (time, requester): budgets that outlive connections
        self.claims_by_requester: dict[str, deque[tuple[float, str]]] = {}
        self.claims_by_target: dict[str, deque[tuple[float, str]]] = {}
        self.unflushed: list[_Conn] = []  # connections with frames waiting in their `out`
        self.closing = False
        self._on_fatal = on_fatal
        store.on_commit = self._on_commit
        store.on_fatal = on_fatal
        self._housekeeper: asyncio.Task[None] | None = None

    # ---- commits -----------------------------------------------------------------------------

    def _on_commit(self, tokens: list[Any]) -> None:
        touched: dict[_Conn, int] = {}
        recipients: set[_AgentState] = set()
        for conn, cseq, size, ast in tokens:
            conn.uncommitted.popleft()
            conn.uncommitted_bytes -= size
            touched[conn] = cseq
            ast.uncommitted -= 1
            recipients.add(ast)
        for conn, cseq in touched.items():
            if conn.agent_id is not None:
                self.progress[conn.agent_id] = (conn.session, cseq)
            if conn.state != _AGENT:
                continue
            ack = conn.uncommitted[0] - 1 if conn.uncommitted else conn.last_seen_seq
            if ack > conn.last_ack_sent:
                conn.last_ack_sent = ack
                conn.write(encode_send_ack(ack))
            if conn.uncommitted_bytes <= self.limits.max_uncommitted_bytes:
                conn.resume("commit")
        for ast in recipients:
            rc = ast.conn
            if rc is not None and rc.db_mode:
                rc.schedule_fetch()

    def flush_writes(self) -> None:
        """Writes out every connection's pending frames (coalesced: one write per connection
        per batch of work)."""
        conns, self.unflushed = self.unflushed, []
        for c in conns:
            c.flush_out()

    # ---- the directory listing -------------------------------------------------------------

    def add_agent(self, agent_id: str) -> _AgentState:
        ast = self.agents.get(agent_id)
        if ast is None:
            ast = self.agents[agent_id] = _AgentState()
            bisect.insort(self.sorted_ids, agent_id)
            self.list_pages.clear()
            self.list_cursors.clear()
        return ast

    def list_page(self, after: str) -> bytes:
        """The LIST_AGENTS answer for the ids after ``after`` ("" = from the start): JSON
        ``{"agents": [...], "next": cursor or null}``, at most ``max_list_agents`` ids and
        well inside one frame. Pages that start where an earlier page ended are cached."""
        page = self.list_pages.get(after)
        if page is not None:
            return page
        ids = self.sorted_ids
        start = bisect.bisect_right(ids, after) if after else 0
        budget = self.limits.max_frame_size - 4096  # room for the header and "next"
        chosen: list[str] = []
        size = 0
        for agent_id in itertools.islice(ids, start, start + self.limits.max_list_agents):
            size += len(json.dumps(agent_id)) + 1
            if size > budget and chosen:
                break
            chosen.append(agent_id)
        nxt = chosen[-1] if chosen and start + len(chosen) < len(ids) else None
        page = json.dumps({"agents": chosen, "next": nxt}, separators=(",", ":")).encode()
        # only cursors this hub handed out are cached: any other string costs one page build
        # (bounded) and no memory
        if not after or after in self.list_cursors:
            self.list_pages[after] = page
        if nxt is not None:
            self.list_cursors.add(nxt)
        return page

    # ---- one-time prekey claims ----------------------------------------------------------

    def may_claim(self, requester: str, target: str) -> bool:
        """Whether ``requester`` gets one of ``target``'s one-time prekeys now: one per peer and
        at most ``max_prekey_claims_per_minute`` per requesting id, at most
        ``max_prekey_claims_per_target_per_minute`` out of one target's stock. Registration is
        open, so this slows a determined drain rather than preventing it (docs/hub.md)."""
        now = self.loop.time()
        mine = _last_minute(self.claims_by_requester, requester, now)
        theirs = _last_minute(self.claims_by_target, target, now)
        lim = self.limits
        if (
            len(mine) >= lim.max_prekey_claims_per_minute
            or len(theirs) >= lim.max_prekey_claims_per_target_per_minute
            or any(peer == target for _t, peer in mine)
        ):
            return False
        mine.append((now, target))
        theirs.append((now, requester))
        return True

    def _forget_old_claims(self, now: float) -> None:
        for claims in (self.claims_by_requester, self.claims_by_target):
            for key in [k for k, q in claims.items() if not q or now - q[-1][0] >= 60.0]:
                del claims[key]

    # ---- housekeeping --------------------------------------------------------------------

    def start_housekeeping(self) -> None:
        self._housekeeper = self.loop.create_task(self._housekeeping())

    async def _housekeeping(self) -> None:
        lim = self.limits
        tick = max(0.05, min(1.0, lim.ping_interval / 4, lim.handshake_timeout / 4))
        ping = encode_frame(FrameType.PING)
        swept = self.loop.time()
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            if now - swept >= 60.0:
                swept = now
                self._forget_old_claims(now)
            for c in list(self.conns):
                if c.state < _LOOKUP:
                    if now - c.opened > lim.handshake_timeout:
                        c.fail(ErrorCode.HANDSHAKE_TIMEOUT, "handshake timed out")
                elif c.state <= _AGENT:
                    idle = now - c.last_rx
                    if idle > lim.idle_timeout:
                        c.fail(ErrorCode.IDLE_TIMEOUT, f"idle for more than {lim.idle_timeout:g}s")
                    elif idle >= lim.ping_interval and now - c.last_ping >= lim.ping_interval:
                        c.last_ping = now
                        c.write(ping)

    async def shutdown(self) -> None:
        self.closing = True
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
        for c in list(self.conns):
            c.pause("shutdown")
        # Everything accepted gets committed and acknowledged before the connections close.
        with contextlib.suppress(Exception):
            await self.store.barrier()
        for c in list(self.conns):
            c.fail(ErrorCode.SHUTTING_DOWN, "hub is shutting down", level=logging.DEBUG)
        for _ in range(50):
            if not self.conns:
                break
            await asyncio.sleep(0.02)
        for c in list(self.conns):
            c.abort()


_SIGNED_FIELDS = ("identity_key", "exchange_key", "signed_prekey_id", "signed_prekey")


def _older_bundle(current: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """What is wrong with replacing ``current`` (served now) by ``new`` (both verified), if
    anything. Signed prekey ids only grow: an older bundle replayed into a registration or an
    update would make the hub serve a key the agent has deleted. A bundle of another identity
    key is left to the binding check (ID_TAKEN)."""
    if current is None or current.get("identity_key") != new.get("identity_key"):
        return None
    if all(current.get(f) == new.get(f) for f in _SIGNED_FIELDS):
        return None
    new_id, old_id = new.get("signed_prekey_id"), current.get("signed_prekey_id")
    if isinstance(new_id, int) and isinstance(old_id, int) and new_id > old_id:
        return None
    return (
        f"the bundle's signed prekey (id {new_id}) is not newer than the one the hub serves "
        f"(id {old_id})"
    )


def _last_minute(
    claims: dict[str, deque[tuple[float, str]]], key: str, now: float
) -> deque[tuple[float, str]]:
    q = claims.get(key)
    if q is None:
        q = claims[key] = deque()
    while q and now - q[0][0] >= 60.0:
        q.popleft()
    return q


#: Requests only a registered agent connection may make.
_AGENT_OPS = frozenset((Op.CLAIM_BUNDLE, Op.ADD_PREKEYS, Op.UPDATE_BUNDLE))


class _Conn(asyncio.Protocol):
    """One client connection (server side)."""

    def __init__(self, hub: _Hub) -> None:
        self.hub = hub
        self.loop = hub.loop
        self.limits = hub.limits
        self.transport: asyncio.Transport | None = None
        self.state = _AWAIT_HELLO
        self.decoder = FrameDecoder(hub.limits.max_frame_size)
        self.out: list[bytes] = []
        self.out_scheduled = False
        now = self.loop.time()
        self.opened = now
        self.last_rx = now
        self.last_ping = now
        self.peer = "?"
        self.challenge: bytes | None = None
        self.agent_id: str | None = None
        self.agent: _AgentState | None = None
        self.session = b""
        self.blocked = False
        self.backlog: deque[tuple[int, bytes]] = deque()
        self.paused_by: set[str] = set()
        self.write_paused = False
        self.out_bytes = 0  # in `out`, not yet handed to the transport
        self.high_water = hub.limits.max_lookup_write_buffer
        self.requests = 0
        self.addr = "?"
        self.unauth: str | None = None  # "handshake" or "lookup" while counted as such
        # sending side
        self.uncommitted: deque[int] = deque()
        self.uncommitted_bytes = 0
        self.last_seen_seq = 0
        self.last_ack_sent = 0
        self.dedup_floor = 0
        # delivery side
        self.inflight: dict[int, int] = {}
        self.mem: deque[tuple[int, bytes]] = deque()
        self.cursor = 0
        self.db_mode = False
        self.fetching = False
        self.refetch = False

    def __repr__(self) -> str:
        who = self.agent_id if self.agent_id is not None else "-"
        return f"<conn {self.peer} agent={who}>"

    # ---- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
            self.addr = str(peer[0])
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hub = self.hub
        if hub.closing:
            self.fail(ErrorCode.SHUTTING_DOWN, "hub is shutting down", level=logging.DEBUG)
            return
        lim = self.limits
        refusal = None
        if len(hub.conns) >= lim.max_connections:
            refusal = f"too many connections ({len(hub.conns)} open)"
        elif hub.unauth["handshake"] >= lim.max_handshaking:
            refusal = "too many connections in their handshake"
        elif hub.unauth_by_addr.get(self.addr, 0) >= lim.max_unauthenticated_per_address:
            refusal = "too many unauthenticated connections from this address"
        if refusal is not None:
            log.debug("refusing %s: %s", self.peer, refusal)
            self.fail(ErrorCode.TOO_MANY_CONNECTIONS, refusal, level=logging.DEBUG)
            return
        hub.conns.add(self)
        self._count_as("handshake")
        transport.set_write_buffer_limits(high=self.high_water, low=self.high_water // 4)
        log.debug("connection from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        hub = self.hub
        hub.conns.discard(self)
        self._count_as(None)
        ast = self.agent
        if ast is not None and ast.conn is self:
            ast.conn = None
        self.inflight.clear()
        self.mem.clear()
        self.backlog.clear()
        self.out.clear()
        if self.agent_id is not None:
            log.info("agent %r disconnected (%s)", self.agent_id, self.peer)
        else:
            log.debug("connection %s closed", self.peer)

    def _count_as(self, kind: str | None) -> None:
        """Moves this connection between the unauthenticated counts (``None``: an agent, or
        gone)."""
        hub, old = self.hub, self.unauth
        if old == kind:
            return
        by_addr = hub.unauth_by_addr
        if old is not None:
            hub.unauth[old] -= 1
            left = by_addr.get(self.addr, 1) - 1
            if left > 0:
                by_addr[self.addr] = left
            else:
                by_addr.pop(self.addr, None)
        if kind is not None:
            hub.unauth[kind] += 1
            by_addr[self.addr] = by_addr.get(self.addr, 0) + 1
        self.unauth = kind

    def pause_writing(self) -> None:
        self.write_paused = True
        self.pause("write")

    def resume_writing(self) -> None:
        self.write_paused = False
        self.resume("write")
        if self.state == _AGENT:
            self.refill()
        self._drain_backlog()

    def eof_received(self) -> bool:
        # A half-closed client gets nothing more: close our side too.
        return False

    def data_received(self, data: bytes) -> None:
        if self.state >= _CLOSING:
            return
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as exc:
            self.fail(exc.code, exc.message)
            return
        if not frames:
            return
        self.last_rx = self.loop.time()
        if self.blocked or self.backlog or self.write_paused:
            self.backlog.extend(frames)
            return
        self._process(frames)
        # What these frames produced (deliveries to their recipients, acknowledgements) leaves
        # now rather than one loop iteration later: a round trip crosses the hub twice.
        self.hub.flush_writes()

    # ---- frame processing ------------------------------------------------------------------

    def _process(self, frames: list[tuple[int, bytes]] | deque[tuple[int, bytes]]) -> None:
        n = len(frames)
        for i in range(n):
            if self.state >= _CLOSING:
                return
            if self.write_paused or self.out_bytes >= self.high_water:
                # Answers pile up unread: take no more requests until they drain.
                self.backlog.extend(itertools.islice(frames, i, n))
                self.pause("output")
                if not self.write_paused:
                    self.loop.call_soon(self._drain_backlog)  # after this batch's flush
                return
            ftype, body = frames[i]
            try:
                if ftype == FrameType.SEND:
                    self._on_send(body)
                elif ftype == FrameType.DELIVERY_ACK:
                    self._on_acks(body)
                else:
                    coro = self._on_other(ftype, body)
                    if coro is not None:
                        self.blocked = True
                        self.pause("block")
                        for j in range(i + 1, n):
                            self.backlog.append(frames[j])
                        self.loop.create_task(self._run_blocking(coro))
                        return
            except ProtocolError as exc:
                self.fail(exc.code, exc.message)
                return
            except Exception as exc:  # a bug must not take the hub down
                log.exception("internal error on %r", self)
                self.fail(ErrorCode.INTERNAL, f"internal hub error: {type(exc).__name__}")
                return

    async def _run_blocking(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except ProtocolError as exc:
            self.fail(exc.code, exc.message)
        except Exception as exc:
            log.exception("internal error on %r", self)
            self.fail(ErrorCode.INTERNAL, f"internal hub error: {type(exc).__name__}")
        self.blocked = False
        if self.state >= _CLOSING:
            return
        self.resume("block")
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        """Processes frames held back (while a request blocked or writes were paused)."""
        if self.state >= _CLOSING or self.blocked or self.write_paused:
            return
        if self.backlog:
            frames = list(self.backlog)
            self.backlog.clear()
            self._process(frames)
        if not self.backlog:
            self.resume("output")
        self.hub.flush_writes()

    def _on_other(self, ftype: int, body: bytes) -> Coroutine[Any, Any, None] | None:
        state = self.state
        if state == _AWAIT_HELLO and ftype != FrameType.HELLO:
            raise ProtocolError(ErrorCode.PROTOCOL, "expected HELLO")
        if ftype == FrameType.PING:
            if len(body) > 64:
                raise ProtocolError(ErrorCode.PROTOCOL, "PING body longer than 64 bytes")
            self.write(encode_frame(FrameType.PONG, body))
            return None
        if ftype == FrameType.PONG:
            return None
        if state == _AWAIT_HELLO:
            version = decode_hello(body)
            if version != PROTOCOL_VERSION:
                raise ProtocolError(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"hub speaks protocol version {PROTOCOL_VERSION}, client sent {version}",
                )
            self.challenge = os.urandom(CHALLENGE_SIZE)
            lim = self.limits
            self.write(
                encode_welcome(
                    Welcome(
                        PROTOCOL_VERSION,
                        self.challenge,
                        self.hub.hub_id,
                        lim.max_frame_size,
                        lim.ping_interval,
                        lim.delivery_window,
                    )
                )
            )
            self.state = _AWAIT_AUTH
            return None
        if ftype == FrameType.REGISTER:
            if state not in (_AWAIT_AUTH, _LOOKUP):
                raise ProtocolError(ErrorCode.PROTOCOL, "REGISTER not allowed now")
            return self._register(body)
        if ftype == FrameType.LOOKUP:
            if state != _AWAIT_AUTH:
                raise ProtocolError(ErrorCode.PROTOCOL, "LOOKUP not allowed now")
            if self.hub.unauth["lookup"] >= self.limits.max_lookup_connections:
                raise ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, "too many lookup connections")
            self.state = _LOOKUP
            self._count_as("lookup")
            self._ready({"mode": "lookup"})
            log.debug("lookup connection from %s", self.peer)
            return None
        if ftype == FrameType.REQUEST:
            if state not in (_LOOKUP, _AGENT):
                raise ProtocolError(ErrorCode.PROTOCOL, "REQUEST before REGISTER/LOOKUP")
            self._on_request(body)
            return None
        if ftype == FrameType.ERROR:
            self.close()
            return None
        if ftype == FrameType.HELLO:
            raise ProtocolError(ErrorCode.PROTOCOL, "duplicate HELLO")
        raise ProtocolError(
            ErrorCode.PROTOCOL, f"frame type 0x{ftype:02x} is not accepted by the hub"
        )

    def _ready(self, info: dict[str, Any]) -> None:
        self.write(encode_frame(FrameType.READY, json.dumps(info).encode()))

    # ---- registration ------------------------------------------------------------------------

    async def _register(self, body: bytes) -> None:
        signature, session, client_nonce, bundle = decode_register(body)
        challenge = self.challenge
        self.challenge = None
        if challenge is None:
            raise ProtocolError(ErrorCode.PROTOCOL, "challenge already used")
        crypto = self.hub.crypto
        if crypto is None:
            raise ProtocolError(ErrorCode.INTERNAL, "hub has no crypto module")
        try:
            agent_id = crypto.verify_bundle(bundle)
        except Exception as exc:
            raise ProtocolError(ErrorCode.BAD_REGISTRATION, f"invalid bundle: {exc}") from None
        try:
            check_agent_id(agent_id)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_REGISTRATION, f"invalid agent id: {exc}") from None
        hub = self.hub
        try:
            ok = bool(
                crypto.verify_registration(
                    bundle, signature, hub.hub_id, challenge, client_nonce, hub.tls_cert_sha256
                )
            )
        except Exception:
            ok = False
        if not ok:
            log.warning("registration of %r from %s: bad registration proof", agent_id, self.peer)
            raise ProtocolError(
                ErrorCode.BAD_REGISTRATION,
                "registration signature does not verify for this bundle, hub, challenge, nonce "
                "and TLS certificate",
            )
        identity_key = bundle.get("identity_key")
        if not isinstance(identity_key, str):
            raise ProtocolError(ErrorCode.BAD_REGISTRATION, "bundle has no identity_key")
        bundle.pop("one_time_prekey", None)
        problem = _older_bundle(await hub.store.get_bundle(agent_id), bundle)
        if self.state >= _CLOSING:
            return
        if problem is not None:
            raise ProtocolError(ErrorCode.BAD_REGISTRATION, problem)
        if agent_id not in hub.agents and len(hub.agents) >= self.limits.max_agents:
            raise ProtocolError(ErrorCode.TOO_MANY_AGENTS, "the hub's directory is full")
        result = await hub.store.bind_agent(agent_id, identity_key, bundle, session)
        if self.state >= _CLOSING:
            return
        if not result.ok:
            log.warning(
                "refused %s: agent id %r is bound to another identity key", self.peer, agent_id
            )
            raise ProtocolError(
                ErrorCode.ID_TAKEN,
                f"agent id {agent_id!r} is registered with another identity key",
            )
        ast = hub.add_agent(agent_id)
        old = ast.conn
        if old is not None and old is not self:
            ast.conn = None
            old.fail(
                ErrorCode.REPLACED,
                f"agent {agent_id!r} registered again on another connection",
                level=logging.INFO,
            )
            # Every send the old connection had accepted is committed after this barrier.
            await hub.store.barrier()
            if self.state >= _CLOSING:
                return
        prog = hub.progress.get(agent_id)
        # Progress of this run (in memory) is newer than what the store knew at bind time.
        acked = result.acked_seq if prog is None else (prog[1] if prog[0] == session else 0)
        self.agent_id = agent_id
        self.agent = ast
        self.session = session
        self.dedup_floor = acked
        self.last_seen_seq = acked
        self.last_ack_sent = acked
        self.state = _AGENT
        self._count_as(None)
        self.high_water = self.limits.max_write_buffer
        if self.transport is not None:
            self.transport.set_write_buffer_limits(high=self.high_water, low=self.high_water // 4)
        ast.conn = self
        self._ready(
            {
                "mode": "agent",
                "agent_id": agent_id,
                "acked_seq": acked,
                "queued": ast.count,
                "next_seq": hub.store.peek_next_seq(),
                "prekeys": hub.store.prekey_count(agent_id),
                "prekey_limit": self.limits.max_prekeys_per_agent,
            }
        )
        log.info(
            "agent %r registered from %s (%s, %d queued)",
            agent_id,
            self.peer,
            "new" if result.created else "known",
            ast.count,
        )
        # Deliver everything queued, from the store, then switch to live delivery.
        self.cursor = 0
        self.db_mode = True
        self.schedule_fetch()

    # ---- sending -----------------------------------------------------------------------------

    def _on_send(self, body: bytes) -> None:
        cseq, recipient, envelope = decode_send(body)
        if self.state != _AGENT:
            if self.state == _LOOKUP:
                self.write(
                    encode_send_error(
                        cseq,
                        ErrorCode.NOT_AUTHENTICATED,
                        "only registered agents may send envelopes",
                    )
                )
                return
            raise ProtocolError(ErrorCode.PROTOCOL, "SEND before REGISTER")
        if cseq <= self.last_seen_seq:
            if cseq <= self.dedup_floor:
                # Already committed in an earlier connection of this client session.
                if not self.uncommitted:
                    self.write(encode_send_ack(self.last_seen_seq))
                return
            raise ProtocolError(ErrorCode.PROTOCOL, "send sequence numbers must increase")
        self.last_seen_seq = cseq
        hub = self.hub
        ast = hub.agents.get(recipient)
        if ast is None:
            self._reject(cseq, ErrorCode.PEER_NOT_FOUND, f"Peer {recipient!r} not found on hub")
            return
        crypto = hub.crypto
        if crypto is not None:
            try:
                env = crypto.Envelope.from_bytes(envelope)
                sender, stated = env.sender, env.recipient
            except Exception as exc:
                self._reject(cseq, ErrorCode.BAD_ENVELOPE, f"malformed envelope: {exc}")
                return
            if sender != self.agent_id:
                self._reject(
                    cseq,
                    ErrorCode.ENVELOPE_MISMATCH,
                    f"envelope sender {sender!r} is not the registered agent {self.agent_id!r}",
                )
                return
            if stated != recipient:
                self._reject(
                    cseq,
                    ErrorCode.ENVELOPE_MISMATCH,
                    f"envelope is addressed to {stated!r}, not {recipient!r}",
                )
                return
        size = len(envelope)
        lim = self.limits
        if (
            ast.count >= lim.max_queued_per_agent
            or ast.bytes + size > lim.max_queued_bytes_per_agent
        ):
            self._reject(
                cseq,
                ErrorCode.INBOX_FULL,
                f"inbox full: {recipient!r} has {ast.count} envelopes queued",
            )
            return
        store = hub.store
        hseq, early = store.next_seq()
        ast.count += 1
        ast.bytes += size
        ast.uncommitted += 1
        ast.puts += 1
        store.put(recipient, hseq, envelope, (self, cseq, size, ast))
        store.note_progress(self.agent_id, self.session, cseq)  # type: ignore[arg-type]
        self.uncommitted.append(cseq)
        self.uncommitted_bytes += size
        if self.uncommitted_bytes > lim.max_uncommitted_bytes:
            self.pause("commit")
        rc = ast.conn
        if rc is not None and not rc.db_mode:
            if early:
                rc.offer(hseq, envelope)
            else:
                rc.enter_db_mode()

    def _reject(self, cseq: int, code: ErrorCode, message: str) -> None:
        log.debug("send %d from %r refused: %s", cseq, self.agent_id, message)
        self.write(encode_send_error(cseq, code, message))
        if not self.uncommitted and cseq > self.last_ack_sent:
            self.last_ack_sent = cseq
            self.write(encode_send_ack(cseq))

    # ---- delivering --------------------------------------------------------------------------

    def offer(self, hseq: int, envelope: bytes) -> None:
        """A new envelope for this (online, live-mode) recipient."""
        if (
            not self.mem
            and not self.write_paused
            and len(self.inflight) < self.limits.delivery_window
        ):
            self.inflight[hseq] = len(envelope)
            self.cursor = hseq
            self.write(encode_deliver(hseq, envelope))
            return
        self.mem.append((hseq, envelope))
        if len(self.mem) > self.limits.delivery_buffer:
            self.enter_db_mode()

    def enter_db_mode(self) -> None:
        # The envelopes in memory are (or will be) in the store: read them back from there.
        self.mem.clear()
        self.db_mode = True

    def refill(self) -> None:
        window = self.limits.delivery_window
        inflight = self.inflight
        mem = self.mem
        while mem and len(inflight) < window and not self.write_paused:
            hseq, env = mem.popleft()
            inflight[hseq] = len(env)
            self.cursor = hseq
            self.write(encode_deliver(hseq, env))
        if self.db_mode and len(inflight) < window and not self.write_paused:
            self.schedule_fetch()

    def schedule_fetch(self) -> None:
        if self.state != _AGENT:
            return
        if self.fetching:
            self.refetch = True
            return
        self.fetching = True
        self.loop.create_task(self._fetch())

    async def _fetch(self) -> None:
        try:
            while True:
                self.refetch = False
                await self._fetch_once()
                if not self.refetch or self.state != _AGENT:
                    break
        except Exception:
            log.exception("reading the inbox of %r failed", self.agent_id)
            self.fail(ErrorCode.INTERNAL, "hub store read failed")
        finally:
            self.fetching = False

    async def _fetch_once(self) -> None:
        ast = self.agent
        assert ast is not None and self.agent_id is not None
        window = self.limits.delivery_window
        store = self.hub.store
        while self.db_mode and self.state == _AGENT and not self.write_paused:
            room = window - len(self.inflight)
            if room <= 0:
                return
            want = min(room, 512)
            puts_before = ast.puts
            rows = await store.fetch(self.agent_id, self.cursor, want)
            if self.state != _AGENT or ast.conn is not self:
                return
            for hseq, env in rows:
                if hseq > self.cursor:
                    self.inflight[hseq] = len(env)
                    self.cursor = hseq
                    self.write(encode_deliver(hseq, env))
            if len(rows) < want:
                # Caught up with the store. Live delivery may resume if nothing accepted for
                # this recipient is still waiting for its commit (else the commit re-pumps).
                if ast.uncommitted == 0 and ast.puts == puts_before:
                    self.db_mode = False
                return

    def _on_acks(self, body: bytes) -> None:
        ids = iter_acks(body)
        if self.state != _AGENT:
            raise ProtocolError(ErrorCode.PROTOCOL, "DELIVERY_ACK before REGISTER")
        ast = self.agent
        assert ast is not None and self.agent_id is not None
        inflight = self.inflight
        store = self.hub.store
        agent_id = self.agent_id
        for i in ids:
            size = inflight.pop(i, None)
            if size is None:
                continue  # unknown or already acknowledged: ignore
            ast.count -= 1
            ast.bytes -= size
            store.ack(agent_id, i)
        self.refill()

    # ---- lookups -----------------------------------------------------------------------------

    def _on_request(self, body: bytes) -> None:
        rid, op, arg = decode_request(body)
        # Answered from memory at once: no task, no store read, no per-request encoding.
        if op == Op.LIST_AGENTS:
            self.write(encode_response(rid, 0, self.hub.list_page(arg)))
            return
        if op == Op.MESSAGE_COUNT:
            self.write(encode_response(rid, 0, b"%d" % self.hub.store.message_count))
            return
        if self.requests >= self.limits.max_pending_requests:
            self.write(encode_response(rid, ErrorCode.BAD_REQUEST, b"too many concurrent requests"))
            return
        self.requests += 1
        self.loop.create_task(self._answer(rid, op, arg))

    async def _answer(self, rid: int, op: int, arg: str) -> None:
        hub = self.hub
        try:
            result: Any
            if op == Op.GET_BUNDLE:
                result = await hub.store.get_bundle(arg) if arg in hub.agents else None
            elif op in _AGENT_OPS and self.agent_id is None:
                self.write(
                    encode_response(
                        rid, ErrorCode.NOT_AUTHENTICATED, b"only a registered agent may do this"
                    )
                )
                return
            elif op == Op.CLAIM_BUNDLE:
                result = await self._claim_bundle(arg)
            elif op == Op.UPDATE_BUNDLE:
                problem = await self._update_bundle(arg)
                if problem is not None:
                    self.write(encode_response(rid, ErrorCode.BAD_REQUEST, problem.encode()))
                    return
                result = True
            elif op == Op.ADD_PREKEYS:
                try:
                    keys = parse_prekeys(arg)
                except ValueError as exc:
                    self.write(encode_response(rid, ErrorCode.BAD_REQUEST, str(exc).encode()))
                    return
                assert self.agent_id is not None
                limit = self.limits.max_prekeys_per_agent
                held = await hub.store.add_prekeys(self.agent_id, keys, limit)
                result = {"held": held, "limit": limit}
            else:
                self.write(
                    encode_response(rid, ErrorCode.BAD_REQUEST, f"{UNKNOWN_OP} {op}".encode())
                )
                return
            self.write(encode_response(rid, 0, json.dumps(result, separators=(",", ":")).encode()))
        except Exception as exc:
            log.exception("request %d failed", op)
            self.write(encode_response(rid, ErrorCode.INTERNAL, str(exc).encode()))
        finally:
            self.requests -= 1

    async def _update_bundle(self, arg: str) -> str | None:
        """Store the caller's new bundle; returns what is wrong with it, if anything."""
        crypto = self.hub.crypto
        try:
            bundle = json.loads(arg)
            if not isinstance(bundle, dict) or crypto is None:
                raise ValueError("not a bundle object")
            agent_id = crypto.verify_bundle(bundle)
        except Exception as exc:
            return f"invalid bundle: {exc}"
        identity_key = bundle.get("identity_key")
        if agent_id != self.agent_id or not isinstance(identity_key, str):
            return "the bundle is not this agent's"
        bundle.pop("one_time_prekey", None)
        assert self.agent_id is not None
        problem = _older_bundle(await self.hub.store.get_bundle(self.agent_id), bundle)
        if problem is not None:
            return problem
        result = await self.hub.store.bind_agent(self.agent_id, identity_key, bundle, self.session)
        if not result.ok:
            return "the bundle has another identity key than the one this id is bound to"
        log.info("agent %r published a new bundle", self.agent_id)
        return None

    async def _claim_bundle(self, agent_id: str) -> dict[str, Any] | None:
        store = self.hub.store
        if agent_id not in self.hub.agents:
            return None
        bundle = await store.get_bundle(agent_id)
        if (
            bundle is None
            or self.agent_id is None
            or agent_id == self.agent_id
            or not self.hub.may_claim(self.agent_id, agent_id)
        ):
            return bundle
        claimed = await store.claim_prekey(agent_id)
        if claimed is not None:
            bundle["one_time_prekey"] = {"id": claimed[0], "key": claimed[1]}
            log.debug(
                "handed out one-time prekey %d of %r to %r", claimed[0], agent_id, self.agent_id
            )
        return bundle

    # ---- output and closing ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.state >= _CLOSED:
            return
        self.out.append(data)
        self.out_bytes += len(data)
        if not self.out_scheduled:
            self.out_scheduled = True
            self.hub.unflushed.append(self)
            if len(self.hub.unflushed) == 1:
                self.loop.call_soon(self.hub.flush_writes)

    def flush_out(self) -> None:
        self.out_scheduled = False
        self.out_bytes = 0
        out = self.out
        if not out:
            return
        t = self.transport
        if t is None or self.state >= _CLOSED or t.is_closing():
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        t.write(data)

    def pause(self, reason: str) -> None:
        if not self.paused_by and self.transport is not None and self.state < _CLOSING:
            with contextlib.suppress(Exception):
                self.transport.pause_reading()
        self.paused_by.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self.paused_by:
            return
        self.paused_by.discard(reason)
        if not self.paused_by and self.transport is not None and self.state < _CLOSING:
            with contextlib.suppress(Exception):
                self.transport.resume_reading()

    def fail(self, code: int, message: str, level: int = logging.INFO) -> None:
        """Send an ERROR frame and close."""
        if self.state >= _CLOSING:
            return
        log.log(level, "closing %r: %s", self, message)
        self.write(encode_error(code, message))
        self.flush_out()
        self.close()

    def close(self) -> None:
        if self.state >= _CLOSING:
            return
        self.state = _CLOSING
        t = self.transport
        if t is None:
            return
        t.close()
        # A peer that never reads would keep the transport (and its buffer) forever.
        self.loop.call_later(2.0, self.abort)

    def abort(self) -> None:
        if self.state != _CLOSED and self.transport is not None:
            self.transport.abort()


# --------------------------------------------------------------------------------------------
# The server object


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)):
        log.debug("connection error: %s", exc)
        return
    loop.default_exception_handler(context)


class NetworkHubServer:
    """The network hub.

    ``NetworkHubServer(host="127.0.0.1", port=7700, store_path=None, *, tls_cert=None,
    tls_key=None, limits=None, synchronous="FULL", backend=None, **limit_overrides)``

    - ``port=0`` picks a free port; read it from :attr:`port` after :meth:`start`.
    - ``store_path=None``: with a fixed port, a persistent file at
      :func:`agentmesh.hub_store.default_store_path` (``hub-<host>-<port>.sqlite3`` in the
      user data directory); with ``port=0``, a private temporary store removed on clean stop.
    - ``tls_cert``/``tls_key``: PEM files; when given the hub speaks only TLS.
    - ``limits``: a :class:`HubLimits`; keyword overrides of its fields are accepted directly
      (``NetworkHubServer(port=0, idle_timeout=2.0, ping_interval=0.5)``).
    - ``synchronous``: ``"FULL"`` (default: every commit is fsync'ed) or ``"NORMAL"`` (survives a
      killed hub, not a power cut).
    - ``backend``: another :class:`agentmesh.hub_store.HubBackend` instead of SQLite.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        store_path: str | os.PathLike[str] | None = None,
        *,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        limits: HubLimits | None = None,
        synchronous: str = "FULL",
        backend: HubBackend | None = None,
        **limit_overrides: Any,
    ) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        base = limits if limits is not None else HubLimits()
        names = {f.name for f in dataclasses.fields(HubLimits)}
        unknown = set(limit_overrides) - names
        if unknown:
            raise TypeError(f"unknown hub setting(s): {', '.join(sorted(unknown))}")
        self.limits = dataclasses.replace(base, **limit_overrides).validate()
        self.host = host
        self.port = port
        self.requested_port = port
        self.tls_cert = Path(tls_cert) if tls_cert is not None else None
        self.tls_key = Path(tls_key) if tls_key is not None else None
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be 'FULL' or 'NORMAL'")
        self._backend = backend
        self.store_path: Path | None = Path(store_path) if store_path is not None else None
        self._ephemeral = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._hub: _Hub | None = None
        self._server: asyncio.AbstractServer | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._start_error: BaseException | None = None
        self.fatal_error: BaseException | None = None
        self._running = False
        self._client_lock = threading.Lock()
        self._client_hub: Any = None

    # ---- properties ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def running(self) -> bool:
        return self._running

    def __repr__(self) -> str:
        return f"NetworkHubServer({self.host!r}, {self.port})"

    # ---- starting and stopping -------------------------------------------------------------

    def start(self, block: bool = True) -> None:
        """Serve. ``block=True`` runs in this thread until :meth:`stop` (or SIGTERM/SIGINT when
        this is the main thread); ``block=False`` runs in a background thread and returns once
        the hub listens (raising what prevented it from starting)."""
        if self._running or self._thread is not None:
            raise RuntimeError("this hub server is already started")
        if block:
            self._run_blocking()
            return
        self._started.clear()
        self._stopped.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._thread_main, name="agentmesh-hub", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error

    def _run_blocking(self, on_listening: Callable[[NetworkHubServer], None] | None = None) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "start(block=True) cannot run inside a running event loop; "
                "use 'await server.serve()' or start(block=False)"
            )
        loop = new_event_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.serve(on_listening=on_listening, signals=True))
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
        if self.fatal_error is not None:
            raise self.fatal_error

    def _thread_main(self) -> None:
        loop = new_event_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.serve())
        except BaseException as exc:
            if not self._started.is_set():
                self._start_error = exc
            else:
                log.error("hub stopped with an error: %s", exc)
        finally:
            self._started.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._stopped.set()

    async def serve(
        self,
        *,
        on_listening: Callable[[NetworkHubServer], None] | None = None,
        signals: bool = False,
    ) -> None:
        """Run the hub in the current event loop until :meth:`stop` (or a fatal store error,
        which is raised)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        await self._startup()
        installed: list[int] = []
        if signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._signal_stop, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                    pass
        self._running = True
        self._started.set()
        try:
            if on_listening is not None:
                on_listening(self)
            await self._stop_event.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self._shutdown()
            self._running = False
        if self.fatal_error is not None:
            raise self.fatal_error

    def _signal_stop(self, sig: int) -> None:
        log.info("received %s, stopping", signal.Signals(sig).name)
        if self._stop_event is not None:
            self._stop_event.set()

    def _fatal(self, exc: BaseException) -> None:
        log.critical("fatal hub error: %s", exc)
        if self.fatal_error is None:
            self.fatal_error = exc
        if self._stop_event is not None:
            self._stop_event.set()

    async def _startup(self) -> None:
        loop = asyncio.get_running_loop()
        crypto = _load_crypto()
        ssl_ctx = self._server_ssl_context()
        backend = self._backend
        if backend is None:
            path = self.store_path
            if path is None:
                if self.requested_port == 0:
                    path = ephemeral_store_path()
                    self._ephemeral = True
                else:
                    path = default_store_path(self.host, self.requested_port)
            self.store_path = path
            backend = SQLiteBackend(path, synchronous=self.synchronous, ephemeral=self._ephemeral)
        state = await backend.open()
        hub = _Hub(loop, backend, state, self.limits, crypto, self._fatal, self._tls_cert_sha256())
        try:
            server = await loop.create_server(
                lambda: _Conn(hub),
                self.host,
                self.requested_port,
                ssl=ssl_ctx,
                ssl_handshake_timeout=self.limits.handshake_timeout if ssl_ctx else None,
                backlog=min(4096, max(128, self.limits.max_connections)),
                reuse_address=True,
            )
        except BaseException:
            await backend.close()
            raise
        sockets = server.sockets or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._server = server
        self._hub = hub
        hub.start_housekeeping()
        log.info(
            "hub listening on %s:%d (%s%s, %s loop)",
            self.host,
            self.port,
            backend.description,
            ", tls" if ssl_ctx else "",
            loop_name(asyncio.get_running_loop()),
        )

    async def _shutdown(self) -> None:
        server, hub = self._server, self._hub
        if server is not None:
            server.close()
        if hub is not None:
            await hub.shutdown()
            await hub.store.close()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._server = None
        self._hub = None
        log.info("hub stopped")

    def _server_ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        return ctx

    def _tls_cert_sha256(self) -> bytes | None:
        """SHA-256 of the first (leaf) certificate of ``tls_cert``, in DER: what a client's
        ``getpeercert(binary_form=True)`` returns for this hub."""
        if self.tls_cert is None:
            return None
        text = self.tls_cert.read_text("ascii", "replace")
        start = text.find("-----BEGIN CERTIFICATE-----")
        end_marker = "-----END CERTIFICATE-----"
        end = text.find(end_marker, start)
        if start < 0 or end < 0:
            raise ssl.SSLError(f"no PEM certificate in {self.tls_cert}")
        der = ssl.PEM_cert_to_DER_cert(text[start : end + len(end_marker)] + "\n")
        return hashlib.sha256(der).digest()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving: commit and acknowledge what was accepted, close every connection and
        the store. Safe to call from any thread, and more than once."""
        with self._client_lock:
            client_hub, self._client_hub = self._client_hub, None
        if client_hub is not None:
            try:
                client_hub.close()
            except Exception as exc:  # pragma: no cover - best effort
                log.debug("closing the in-process client hub: %s", exc)
        loop, ev = self._loop, self._stop_event
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            self._thread = None

    def __enter__(self) -> NetworkHubServer:
        if not self._running:
            self.start(block=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- read-only views (any thread but the hub's own) ------------------------------------

    def _call(self, fn: Callable[[_Hub], Coroutine[Any, Any, _T]]) -> _T:
        loop, hub = self._loop, self._hub
        if loop is None or hub is None or not self._running:
            raise RuntimeError("the hub server is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("call this from another thread than the hub's event loop")
        return asyncio.run_coroutine_threadsafe(fn(hub), loop).result(30)

    def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        return self._call(lambda hub: hub.store.get_bundle(agent_id))

    # ---- the common hub interface: agents in this process use the server like any hub -----

    def client_hub(self) -> Any:
        """An :class:`agentmesh.hubs.NetworkHub` connected to this server (made on first use),
        through which :meth:`register` and :meth:`deliver` work, so ``Agent(..., hub=server)``
        behaves as with ``NetworkHub(host, server.port)``. For a TLS hub it trusts the server's
        own certificate file (right for a self-signed one)."""
        with self._client_lock:
            if self._client_hub is None:
                if not self._running:
                    raise RuntimeError("the hub server is not running: start() it first")
                from agentmesh.hubs import NetworkHub

                ctx = None
                if self.tls_cert is not None:
                    ctx = ssl.create_default_context(cafile=str(self.tls_cert))
                self._client_hub = NetworkHub(_connect_host(self.host), self.port, ssl=ctx)
            return self._client_hub

    def register(self, agent: Any) -> None:
        self.client_hub().register(agent)

    def unregister(self, agent: Any) -> None:
        if self._client_hub is not None:
            self._client_hub.unregister(agent)

    def deliver(self, envelope: Any) -> None:
        self.client_hub().deliver(envelope)

    def list_agents(self) -> list[str]:
        async def go(hub: _Hub) -> list[str]:
            return sorted(hub.agents)

        return self._call(go)

    def message_count(self) -> int:
        async def go(hub: _Hub) -> int:
            return hub.store.message_count

        return self._call(go)

    def connection_stats(self) -> dict[str, Any]:
        """Open connections: ``total``, ``handshaking``, ``lookup``, ``agents`` and
        ``unauthenticated_addresses`` (addresses holding handshaking or lookup connections)."""

        async def go(hub: _Hub) -> dict[str, Any]:
            unauth = sum(hub.unauth.values())
            return {
                "total": len(hub.conns),
                "handshaking": hub.unauth["handshake"],
                "lookup": hub.unauth["lookup"],
                "agents": len(hub.conns) - unauth,
                "unauthenticated_addresses": len(hub.unauth_by_addr),
            }

        return self._call(go)


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _load_crypto() -> ModuleType:
    from agentmesh import crypto

    return crypto


# --------------------------------------------------------------------------------------------
# Command line


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    d = HubLimits()
    p = argparse.ArgumentParser(
        prog="agentmesh-hub",
        description="Run an agentmesh network hub (directory + durable store-and-forward).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="TCP port; 0 picks a free one (7700)"
    )
    p.add_argument(
        "--store",
        metavar="PATH",
        help="SQLite store file (default: hub-HOST-PORT.sqlite3 in the user data directory; "
        "a temporary store removed on stop with --port 0)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain); enables TLS")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    p.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
    )
    p.add_argument(
        "--synchronous",
        default="full",
        type=str.lower,
        choices=["full", "normal"],
        help="full: fsync every group commit (default); normal: survives a killed hub, "
        "not a power cut",
    )
    p.add_argument("--max-connections", type=_positive(int), default=d.max_connections)
    p.add_argument("--max-frame-size", type=_positive(int), default=d.max_frame_size)
    p.add_argument("--max-queued", type=_positive(int), default=d.max_queued_per_agent)
    p.add_argument("--handshake-timeout", type=_positive(float), default=d.handshake_timeout)
    p.add_argument("--idle-timeout", type=_positive(float), default=d.idle_timeout)
    p.add_argument("--ping-interval", type=_positive(float), default=d.ping_interval)
    p.add_argument("--delivery-window", type=_positive(int), default=d.delivery_window)
    return p


def main(argv: list[str] | None = None) -> int:
    """``agentmesh-hub``: 0 after a clean stop (SIGTERM/SIGINT), 2 on a usage error, 1 when
    the hub cannot start or fails (port in use, store locked or corrupt, bad TLS files)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.print_usage(sys.stderr)
        print("agentmesh-hub: error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        server = NetworkHubServer(
            args.host,
            args.port,
            args.store,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            synchronous=args.synchronous,
            max_connections=args.max_connections,
            max_frame_size=args.max_frame_size,
            max_queued_per_agent=args.max_queued,
            handshake_timeout=args.handshake_timeout,
            idle_timeout=args.idle_timeout,
            ping_interval=args.ping_interval,
            delivery_window=args.delivery_window,
        )
    except (ValueError, TypeError) as exc:
        parser.print_usage(sys.stderr)
        print(f"agentmesh-hub: error: {exc}", file=sys.stderr)
        return 2

    def listening(srv: NetworkHubServer) -> None:
        host = f"[{srv.host}]" if ":" in srv.host else srv.host
        extra = ", tls" if srv.tls else ""
        print(
            f"agentmesh-hub listening on {host}:{srv.port} (store {srv.store_path}{extra})",
            file=sys.stderr,
            flush=True,
        )

    try:
        server._run_blocking(on_listening=listening)
    except (OSError, StoreError, ssl.SSLError, ImportError) as exc:
        log.critical("agentmesh-hub: %s", exc)
        return 1
    except Exception:
        log.critical("agentmesh-hub failed", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
