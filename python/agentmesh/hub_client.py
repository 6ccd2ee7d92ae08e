"""asyncio client of the agentmesh network hub (the agent layer's ``NetworkHub`` drives it).

One :class:`HubClient` is one connection to the hub: either an unauthenticated *lookup*
connection (:meth:`HubClient.connect_lookup`: bundles, agent list, message count) or an
*agent* connection (:meth:`HubClient.register`: proves possession of the identity key, then
sends and receives envelopes, and answers lookups too).

Sends stream: :meth:`HubClient.send` returns once the envelope is queued and written; the
envelope stays in the client's memory until the hub acknowledges that it is durably stored,
and is resent after a reconnect. :meth:`HubClient.flush` waits for those acknowledgements.
Deliveries are handed to ``on_batch`` in batches, in inbox order, and acknowledged to the hub
once it has handled them. See ``docs/hub.md`` for the protocol and the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import socket
import ssl as _ssl
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any, cast

from agentmesh.backend import OnBatch
from agentmesh.crypto import check_agent_id
from agentmesh.errors import FlushTimeoutError, HubError
from agentmesh.hub_protocol import (
    CLIENT_NONCE_SIZE,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_PORT,
    PROTOCOL_VERSION,
    SESSION_ID_SIZE,
    ErrorCode,
    FrameDecoder,
    FrameType,
    HubRequestError,
    Op,
    PeerNotFoundError,
    ProtocolError,
    Welcome,
    decode_deliver,
    decode_error,
    decode_response,
    decode_send_ack,
    decode_send_error,
    decode_welcome,
    encode_acks,
    encode_frame,
    encode_hello,
    encode_register,
    encode_request,
    encode_send,
    error_for_code,
)

__all__ = ["HubClient", "HubRequestError", "PeerNotFoundError"]

log = logging.getLogger("agentmesh.hub_client")


#: Errors after which reconnecting cannot help: the client stops and reports them.
FATAL_CODES = frozenset(
    {
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.BAD_REGISTRATION,
        ErrorCode.ID_TAKEN,
        ErrorCode.REPLACED,
        ErrorCode.TOO_MANY_AGENTS,
    }
)

_PING = encode_frame(FrameType.PING)
# Reconnect jitter from a generator of our own: a library must not move the global `random`
# state that its users (and their seeded tests) rely on.
_jitter = random.Random()
_PEER_MISSING_TTL = 2.0


class _Proto(asyncio.Protocol):
    """One TCP (or TLS) connection of a HubClient."""

    def __init__(self, client: HubClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(64 * 1024)
        self.welcome: asyncio.Future[Welcome] = loop.create_future()
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.error: HubRequestError | None = None
        self.hub_id = b""
        self.out: list[bytes] = []
        self.acks: list[int] = []
        self.scheduled = False
        self.write_paused = False
        self.last_rx = loop.time()
        self.is_closed = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.ping_interval = 20.0

    # ---- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)

    def tls_certificate_sha256(self) -> bytes | None:
        """SHA-256 of the hub's certificate (DER) on a TLS connection, None on plain TCP.

        Python's ssl module has no keying-material exporter (RFC 5705) before 3.13, so the
        registration proof binds the certificate the client verified instead: a hub without
        that certificate's private key cannot present this proof elsewhere."""
        # (a TLS hub refuses a proof without the binding, so a missing ssl_object fails closed)
        obj = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        return hashlib.sha256(der).digest() if der else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        err: BaseException = self.error or HubError(
            f"connection to hub {self.client.host}:{self.client.port} lost"
            + (f": {exc}" if exc else "")
        )
        for fut in (self.welcome, self.ready):
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved
        if not self.closed.done():
            self.closed.set_result(None)
        self.client._on_writable(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.client._on_writable(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as exc:
            log.error("bad data from the hub: %s", exc)
            self.abort()
            return
        if not frames:
            return
        self.last_rx = self.loop.time()
        client = self.client
        try:
            for ftype, body in frames:
                if ftype == FrameType.DELIVER:
                    did, env = decode_deliver(body)
                    client._on_deliver(self, did, env)
                elif ftype == FrameType.SEND_ACK:
                    client._on_send_ack(decode_send_ack(body))
                elif ftype == FrameType.SEND_ERROR:
                    seq, code, msg = decode_send_error(body)
                    client._on_send_error(seq, code, msg)
                elif ftype == FrameType.PING:
                    self.write(encode_frame(FrameType.PONG, body[:64]))
                elif ftype == FrameType.PONG:
                    pass
                elif ftype == FrameType.RESPONSE:
                    rid, status, payload = decode_response(body)
                    client._on_response(rid, status, payload)
                elif ftype == FrameType.WELCOME:
                    w = decode_welcome(body)
                    self.hub_id = w.hub_id
                    self.ping_interval = w.ping_interval
                    self.decoder.max_frame_size = max(w.max_frame_size, 64 * 1024) + 1024
                    if not self.welcome.done():
                        self.welcome.set_result(w)
                    self._arm_watchdog()
                elif ftype == FrameType.READY:
                    info = json.loads(body.decode("utf-8"))
                    if not self.ready.done():
                        self.ready.set_result(info if isinstance(info, dict) else {})
                elif ftype == FrameType.ERROR:
                    code, msg = decode_error(body)
                    self.error = error_for_code(code, msg)
                    level = logging.DEBUG if code == ErrorCode.SHUTTING_DOWN else logging.WARNING
                    log.log(level, "hub closed the connection: %s", msg)
                    self.close()
                    return
                else:
                    raise ProtocolError(ErrorCode.PROTOCOL, f"unexpected frame 0x{ftype:02x}")
        except (ProtocolError, ValueError) as exc:
            log.error("bad frame from the hub: %s", exc)
            self.abort()

    # ---- liveness ----------------------------------------------------------------------------

    def _arm_watchdog(self) -> None:
        self._watchdog = self.loop.call_later(max(0.05, self.ping_interval / 2), self._watch)

    def _watch(self) -> None:
        if self.is_closed:
            return
        idle = self.loop.time() - self.last_rx
        if idle > max(3 * self.ping_interval, 1.0):
            log.warning("hub silent for %.1fs: reconnecting", idle)
            self.abort()
            return
        if idle >= self.ping_interval:
            self.write(_PING)
        self._arm_watchdog()

    # ---- output ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.is_closed:
            return
        self.out.append(data)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def ack(self, delivery_id: int) -> None:
        if self.is_closed:
            return
        self.acks.append(delivery_id)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        t = self.transport
        if t is None or self.is_closed or t.is_closing():
            self.out.clear()
            self.acks.clear()
            return
        if self.acks:
            self.out.append(encode_acks(self.acks))
            self.acks = []
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            t.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _ack_all(acks: list[tuple[_Proto, int]]) -> None:
    for proto, did in acks:
        proto.ack(did)  # on the connection it came from (a no-op if that one is gone)


async def _cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task (if any) and wait until it has really stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class HubClient:
    """Client of one agentmesh network hub (asyncio; use it from one event loop).

    ``ssl``: ``None``/``False`` for plain TCP, ``True`` for TLS with the system's trust store
    and host name check, or an :class:`ssl.SSLContext` (e.g. one that trusts a private CA or a
    self-signed hub certificate).
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        ssl: _ssl.SSLContext | bool | None = None,
        connect_timeout: float = 10.0,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        request_timeout: float = 30.0,
        max_unacked: int = 100_000,
    ) -> None:
        self.host = host
        self.port = port
        if ssl is True:
            self._ssl: _ssl.SSLContext | None = _ssl.create_default_context()
        elif isinstance(ssl, _ssl.SSLContext):
            self._ssl = ssl
        elif ssl is None or ssl is False:
            self._ssl = None
        else:
            raise TypeError("ssl must be an ssl.SSLContext, True, False or None")
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        self.max_unacked = max_unacked
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mode: str | None = None  # None, "lookup" or "agent"
        self._proto: _Proto | None = None
        self._welcome: Welcome | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._keypair: Any = None
        self._on_batch: OnBatch | None = None
        self._agent_id: str | None = None
        self._session = os.urandom(SESSION_ID_SIZE)
        self._seq = 0
        self._unacked: OrderedDict[int, tuple[str, bytes]] = OrderedDict()
        self._errors: deque[HubRequestError] = deque()
        self._missing: dict[str, float] = {}
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._room: asyncio.Event | None = None
        self._requests: dict[int, tuple[asyncio.Future[Any], bytes]] = {}
        self._next_rid = 0
        self._inbox: deque[tuple[_Proto, int, bytes]] = deque()
        self._inbox_event: asyncio.Event | None = None
        self._seen_hub = b""
        self._seen_id = 0
        # hub_id -> last delivery id handled before this client existed (restored by the owner)
        self._handled: dict[bytes, int] = {}
        self._delivery_hub_id: bytes | None = None
        self._ready_event: asyncio.Event | None = None
        self._fatal: HubError | None = None
        self._closing = False
        self._closed = False
        self.sent = 0
        self.received = 0
        self.reconnects = 0
        #: One-time prekeys the hub held for this agent at the last registration or upload, and
        #: how many it keeps (None before one, or from a hub that keeps none).
        self.prekeys_held: int | None = None
        self.prekey_limit: int | None = None
        #: Called (in the event loop) after every registration, also after a reconnect: the
        #: hub may be a different one now (a recreated store keeps no prekeys, for example).
        self.on_registered: Callable[[], None] | None = None

    def __repr__(self) -> str:
        who = self._agent_id or self._mode or "unconnected"
        return f"<HubClient {self.host}:{self.port} {who}>"

    # ---- properties ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection is established and registered (or in lookup mode)."""
        p = self._proto
        return p is not None and not p.is_closed

    @property
    def agent_id(self) -> str | None:
        return self._agent_id

    @property
    def delivery_hub_id(self) -> bytes | None:
        """The ``hub_id`` of the store the deliveries being handled came from: set while
        ``on_batch`` runs (``None`` otherwise). Delivery ids count per hub
        store, so an owner that persists what it handled keys the ids by it."""
        return self._delivery_hub_id

    @property
    def hub_id(self) -> bytes | None:
        """Random id of the hub's store (changes only when the store is recreated)."""
        return self._welcome.hub_id if self._welcome is not None else None

    @property
    def unacked(self) -> int:
        """Envelopes sent and not yet acknowledged by the hub."""
        return len(self._unacked)

    # ---- connecting --------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._room = asyncio.Event()
            self._room.set()
            self._inbox_event = asyncio.Event()
            self._ready_event = asyncio.Event()
        elif self._loop is not loop:
            raise RuntimeError("a HubClient must be used from a single event loop")
        return loop

    def _check_usable(self) -> None:
        if self._closed or self._closing:
            raise HubError("hub client is closed")
        if self._fatal is not None:
            raise self._fatal

    async def connect_lookup(self) -> None:
        """Open an unauthenticated connection for get_bundle/list_agents/message_count.

        Raises :class:`HubError` if the hub cannot be reached within ``connect_timeout``. A
        registered client answers lookups too; then this does nothing.
        """
        self._bind_loop()
        self._check_usable()
        if self._mode is not None:
            return
        self._mode = "lookup"
        try:
            await self._establish()
        except BaseException as exc:
            self._mode = None
            # Lookups that were waiting for this connection fail with it.
            for fut, _frame in self._requests.values():
                if not fut.done():
                    fut.set_exception(
                        exc if isinstance(exc, HubError) else HubError("cannot reach the hub")
                    )
            raise

    async def register(
        self,
        keypair: Any,
        on_batch: OnBatch,
        *,
        handled: Mapping[bytes, int] | None = None,
    ) -> None:
        """Register as ``keypair.agent_id``, proving possession of its identity key.

        ``on_batch(deliveries)`` is awaited with every delivery already received (a list of
        ``(delivery_id, envelope_bytes)`` in inbox order, at most 256, all from one hub store),
        one batch at a time. They are acknowledged to the hub (and deleted there) after it
        returns; if it returns an ``asyncio.Future``, once that completes (not at all if it
        fails), and the next batch is handed over meanwhile. If it raises, the batch is not
        acknowledged: the hub delivers it again on the next connection.
        ``handled`` maps a hub store's ``hub_id`` to the last delivery id an earlier client of
        this agent handled from it (a persistent owner saves :attr:`delivery_hub_id` and the
        delivery ids it handled): redeliveries at or below it, which a hub that crashed before
        committing the acknowledgements sends again, are acknowledged without being handed over.
        Raises :class:`HubRequestError` if the hub refuses (``code`` ``ID_TAKEN`` when the id
        belongs to another identity key) and :class:`HubError` if it cannot be reached.
        """
        if on_batch is None:
            raise TypeError("register() needs an on_batch handler")
        self._bind_loop()
        self._check_usable()
        if self._mode == "agent":
            raise HubError(f"this client is already registered as {self._agent_id!r}")
        if self._mode == "lookup":
            await self._drop_connection()
        self._keypair = keypair
        self._on_batch = on_batch
        self._handled = {bytes(h): int(d) for h, d in (handled or {}).items()}
        self._agent_id = str(keypair.agent_id)
        self._mode = "agent"
        try:
            await self._establish()
        except BaseException:
            self._mode = None
            self._agent_id = None
            raise
        self._consumer = asyncio.get_running_loop().create_task(self._consume())

    async def _establish(self) -> None:
        proto, welcome, info = await self._connect_once()
        self._activate(proto, welcome, info)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _drop_connection(self) -> None:
        sup, self._supervisor = self._supervisor, None
        await _cancel_and_wait(sup)
        p, self._proto = self._proto, None
        if p is not None:
            p.close()
        self._mode = None
        if self._ready_event is not None:
            self._ready_event.clear()

    async def _connect_once(self) -> tuple[_Proto, Welcome, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        proto = _Proto(self, loop)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: proto,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                ),
                self.connect_timeout,
            )
            proto.write(encode_hello())
            welcome = await asyncio.wait_for(asyncio.shield(proto.welcome), self.connect_timeout)
            if welcome.version != PROTOCOL_VERSION:
                # An earlier version's proof covers the challenge alone: a hub could relay it
                # to another hub and register there as this agent.
                raise HubRequestError(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"hub {self.host}:{self.port} speaks protocol version {welcome.version}; "
                    f"this client speaks only version {PROTOCOL_VERSION}",
                )
            if self._mode == "agent":
                proto.write(self._register_frame(proto, welcome))
            else:
                proto.write(encode_frame(FrameType.LOOKUP))
            info = await asyncio.wait_for(asyncio.shield(proto.ready), self.connect_timeout)
        except HubError:
            proto.abort()
            raise
        except (asyncio.TimeoutError, TimeoutError):
            proto.abort()
            raise HubError(f"hub {self.host}:{self.port} did not answer in time") from None
        except (OSError, _ssl.SSLError) as exc:
            proto.abort()
            raise HubError(f"cannot connect to hub {self.host}:{self.port}: {exc}") from exc
        except BaseException:
            proto.abort()
            raise
        return proto, welcome, info

    def _register_frame(self, proto: _Proto, welcome: Welcome) -> bytes:
        """REGISTER with a proof bound to this hub (its id and, over TLS, the certificate this
        connection was made with), this challenge, a nonce of ours, and the bundle sent."""
        kp = self._keypair
        bundle = kp.public_bundle()
        nonce = os.urandom(CLIENT_NONCE_SIZE)
        signature = kp.sign_registration(
            bundle, welcome.hub_id, welcome.challenge, nonce, proto.tls_certificate_sha256()
        )
        return encode_register(bytes(signature), self._session, nonce, bundle)

    def _activate(self, proto: _Proto, welcome: Welcome, info: dict[str, Any]) -> None:
        self._proto = proto
        self._welcome = welcome
        if self._mode == "agent":
            prekeys, limit = info.get("prekeys"), info.get("prekey_limit")
            self.prekeys_held = prekeys if type(prekeys) is int else None
            self.prekey_limit = limit if type(limit) is int else None
            self._clamp_positions(welcome.hub_id, info.get("next_seq"))
            acked = int(info.get("acked_seq") or 0)
            u = self._unacked
            while u:
                seq = next(iter(u))
                if seq > acked:
                    break
                del u[seq]
            for _recipient, frame in u.values():
                proto.write(frame)
            self._wake_flushers()
            log.debug(
                "registered %r on %s:%d (%d resent, %s queued)",
                self._agent_id,
                self.host,
                self.port,
                len(u),
                info.get("queued"),
            )
        for _fut, frame in self._requests.values():
            proto.write(frame)
        self._update_room()
        if self._ready_event is not None:
            self._ready_event.set()
        if self._mode == "agent" and self.on_registered is not None:
            try:
                self.on_registered()
            except Exception:
                log.exception("on_registered failed")

    async def _supervise(self) -> None:
        while True:
            proto = self._proto
            if proto is None:
                return
            await asyncio.shield(proto.closed)
            if self._closing:
                return
            if self._ready_event is not None:
                self._ready_event.clear()
            err = proto.error
            if err is not None and err.code in FATAL_CODES:
                self._set_fatal(err)
                return
            if not self.reconnect:
                self._set_fatal(err or HubError(f"connection to hub {self.host}:{self.port} lost"))
                return
            backoff = 0.05
            while not self._closing:
                try:
                    new, welcome, info = await self._connect_once()
                except HubRequestError as exc:
                    if exc.code in FATAL_CODES:
                        self._set_fatal(exc)
                        return
                    log.info("reconnect to %s:%d refused: %s", self.host, self.port, exc)
                except HubError as exc:
                    log.debug("reconnect to %s:%d failed: %s", self.host, self.port, exc)
                else:
                    if self._closing:
                        new.close()
                        return
                    self.reconnects += 1
                    self._activate(new, welcome, info)
                    log.info("reconnected to hub %s:%d", self.host, self.port)
                    break
                await asyncio.sleep(backoff * (0.5 + _jitter.random()))
                backoff = min(backoff * 2, self.max_backoff)

    def _set_fatal(self, err: HubError) -> None:
        log.error("hub connection failed for good: %s", err)
        self._fatal = err
        for _seq, fut in self._flush_waiters:
            if not fut.done():
                fut.set_exception(err)
        self._flush_waiters.clear()
        for fut, _frame in self._requests.values():
            if not fut.done():
                fut.set_exception(err)
        if self._room is not None:
            self._room.set()
        if self._ready_event is not None:
            self._ready_event.set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the client is connected (e.g. after a hub restart)."""
        self._check_usable()
        if self._ready_event is None or self._mode is None:
            raise HubError("not connected: call register() or connect_lookup() first")
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise HubError(f"not reconnected to hub within {timeout}s") from None
        self._check_usable()

    # ---- sending -----------------------------------------------------------------------------

    async def send(self, recipient: str, envelope: bytes) -> None:
        """Queue ``envelope`` for ``recipient`` and write it; returns without waiting for the
        hub (see :meth:`flush`). Raises at once a pending refusal of an earlier send (the
        error's ``recipient`` names its peer; *this* envelope is then not queued) and
        :class:`PeerNotFoundError` (a ValueError) for a recipient the hub reported unknown in
        the last two seconds. Waits while the client has too much unacknowledged."""
        while not self.send_nowait(recipient, envelope):
            await self.wait_for_room()

    async def wait_for_room(self) -> None:
        """Returns once :meth:`send_nowait` can queue another envelope (or the client failed:
        then the next send raises)."""
        room = self._room
        assert room is not None
        await room.wait()

    def send_nowait(self, recipient: str, envelope: bytes) -> bool:
        """:meth:`send` without waiting: False (nothing queued) when the client has no room
        for another unacknowledged envelope; from the client's event loop thread only."""
        self._check_usable()
        if self._errors:
            raise self._errors.popleft()
        if self._mode != "agent":
            raise HubError("only a registered client can send: call register() first")
        missing = self._missing.get(recipient)
        if missing is not None:
            assert self._loop is not None
            if self._loop.time() - missing < _PEER_MISSING_TTL:
                raise PeerNotFoundError(
                    ErrorCode.PEER_NOT_FOUND,
                    f"Peer {recipient!r} not found on hub",
                    recipient=recipient,
                )
            del self._missing[recipient]
        check_agent_id(recipient, "recipient id")
        rb = recipient.encode("utf-8")
        if not isinstance(envelope, (bytes, bytearray, memoryview)):
            raise TypeError("envelope must be bytes")
        w = self._welcome
        max_frame = w.max_frame_size if w is not None else DEFAULT_MAX_FRAME_SIZE
        if 1 + 8 + 1 + len(rb) + len(envelope) > max_frame:
            raise HubError(
                f"envelope of {len(envelope)} bytes exceeds the hub's frame limit of "
                f"{max_frame} bytes"
            )
        room = self._room
        assert room is not None
        if not room.is_set():
            return False
        self._seq += 1
        seq = self._seq
        frame = encode_send(seq, rb, bytes(envelope))
        self._unacked[seq] = (recipient, frame)
        self.sent += 1
        p = self._proto
        if p is not None and not p.is_closed:
            p.write(frame)
        if len(self._unacked) >= self.max_unacked or (p is not None and p.write_paused):
            room.clear()
        return True

    def push(self) -> None:
        """Writes what :meth:`send_nowait` queued now instead of in the next loop iteration
        (for a caller that has handed over a whole batch)."""
        p = self._proto
        if p is not None and p.scheduled:
            p.flush()

    def _update_room(self) -> None:
        room = self._room
        if room is None:
            return
        p = self._proto
        if len(self._unacked) < self.max_unacked and not (p is not None and p.write_paused):
            room.set()

    def _on_writable(self, proto: _Proto) -> None:
        self._update_room()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every envelope sent so far is durably stored by the hub (or refused).

        Raises :class:`FlushTimeoutError` on timeout, the first pending refusal
        (:class:`HubRequestError`, :class:`PeerNotFoundError`) if any send was refused, and
        :class:`HubError` if the connection failed for good.
        """
        if self._errors:
            raise self._errors.popleft()
        target = self._seq
        u = self._unacked
        if u and next(iter(u)) <= target:
            if self._fatal is not None:
                raise self._fatal
            if self._closed:
                raise HubError("hub client is closed")
            assert self._loop is not None
            fut: asyncio.Future[None] = self._loop.create_future()
            entry = (target, fut)
            self._flush_waiters.append(entry)
            try:
                await asyncio.wait_for(fut, timeout)
            except (asyncio.TimeoutError, TimeoutError):
                n = sum(1 for s in u if s <= target)
                raise FlushTimeoutError(
                    f"{n} envelope(s) not acknowledged by the hub {self.host}:{self.port} "
                    f"within {timeout}s"
                ) from None
            finally:
                with contextlib.suppress(ValueError):
                    self._flush_waiters.remove(entry)
        if self._errors:
            raise self._errors.popleft()

    def _wake_flushers(self) -> None:
        if not self._flush_waiters:
            return
        u = self._unacked
        first = next(iter(u)) if u else None
        keep = []
        for target, fut in self._flush_waiters:
            if first is None or first > target:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self._flush_waiters[:] = keep

    def _on_send_ack(self, acked: int) -> None:
        u = self._unacked
        while u:
            seq = next(iter(u))
            if seq > acked:
                break
            del u[seq]
        self._wake_flushers()
        room = self._room
        if room is not None and not room.is_set():
            self._update_room()

    def _on_send_error(self, seq: int, code: int, message: str) -> None:
        item = self._unacked.pop(seq, None)
        recipient = item[0] if item is not None else None
        err = error_for_code(code, message, recipient=recipient, client_seq=seq)
        if code == ErrorCode.PEER_NOT_FOUND and recipient is not None and self._loop is not None:
            self._missing[recipient] = self._loop.time()
        log.info("hub refused an envelope for %r: %s", recipient, message)
        self._errors.append(err)
        self._wake_flushers()
        self._update_room()

    # ---- receiving ---------------------------------------------------------------------------

    def _on_deliver(self, proto: _Proto, delivery_id: int, envelope: bytes) -> None:
        self._inbox.append((proto, delivery_id, envelope))
        ev = self._inbox_event
        if ev is not None and not ev.is_set():
            ev.set()

    async def _consume(self) -> None:
        inbox = self._inbox
        ev = self._inbox_event
        assert ev is not None
        while True:
            if not inbox:
                ev.clear()
                await ev.wait()
                continue
            await self._consume_batch()

    def _clamp_positions(self, hub_id: bytes, next_seq: Any) -> None:
        """Every delivery id this store handed out is below its ``next_seq``. A remembered
        position at or above it came from a store since rolled back (restored from a backup),
        whose new deliveries reuse those ids, or from a forged frame: skipping by it would drop
        real messages, so it is lowered to what the store can have delivered."""
        if type(next_seq) is not int or next_seq < 1:
            return
        ceiling = next_seq - 1
        lowered = self._handled.get(hub_id, 0) > ceiling
        if lowered:
            self._handled[hub_id] = ceiling
        if self._seen_hub == hub_id and self._seen_id > ceiling:
            lowered, self._seen_id = True, ceiling
        if lowered:
            log.warning("hub store rolled back: handled position lowered to %d", ceiling)

    def _last_handled(self, hub_id: bytes) -> int:
        if hub_id == self._seen_hub:
            return self._seen_id
        return self._handled.get(hub_id, 0)

    async def _consume_batch(self) -> None:
        """Hands the next batch to ``on_batch``: up to 256 deliveries of one hub store, less
        the redeliveries of what was handled already (acknowledged at once, skipped by
        position); acknowledges each on the connection it came from."""
        inbox = self._inbox
        batch: list[tuple[int, bytes]] = []
        protos: list[_Proto] = []
        hub_id = inbox[0][0].hub_id
        seen = self._last_handled(hub_id)
        while inbox and len(batch) < 256 and inbox[0][0].hub_id == hub_id:
            proto, did, env = inbox.popleft()
            if did <= seen:
                proto.ack(did)
                continue
            batch.append((did, env))
            protos.append(proto)
            seen = did
        if not batch:
            return
        handler = self._on_batch
        assert handler is not None
        self._delivery_hub_id = hub_id
        try:
            durable = await handler(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # the handler could not make its work durable: no acknowledgement, so the hub keeps
            # the envelopes and delivers them again (on the next connection)
            log.error("%d deliveries left unacknowledged: %s", len(batch), exc)
            return
        finally:
            self._delivery_hub_id = None
        self.received += len(batch)
        self._seen_hub = hub_id
        self._seen_id = batch[-1][0]
        acks = [(proto, did) for proto, (did, _env) in zip(protos, batch, strict=True)]
        if durable is None:
            _ack_all(acks)
        else:
            durable.add_done_callback(functools.partial(self._ack_when_durable, hub_id, acks))

    def _ack_when_durable(
        self, hub_id: bytes, acks: list[tuple[_Proto, int]], durable: asyncio.Future[None]
    ) -> None:
        if not durable.cancelled() and durable.exception() is None:
            _ack_all(acks)
            return
        # Never made durable: no acknowledgement, so the hub delivers them again after a
        # reconnect; the position goes back before them, or that redelivery would be skipped
        # (and acknowledged) as already handled.
        log.error("%d deliveries left unacknowledged: %s", len(acks), durable.exception())
        if self._seen_hub == hub_id:
            self._seen_id = min(self._seen_id, acks[0][1] - 1)
        if self._handled.get(hub_id, 0) >= acks[0][1]:
            self._handled[hub_id] = acks[0][1] - 1

    # ---- lookups -----------------------------------------------------------------------------

    async def _request(self, op: Op, arg: str = "") -> Any:
        self._bind_loop()
        self._check_usable()
        if self._mode is None:
            await self.connect_lookup()
        assert self._loop is not None
        self._next_rid = (self._next_rid + 1) & 0xFFFFFFFF
        rid = self._next_rid
        frame = encode_request(rid, op, arg)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._requests[rid] = (fut, frame)
        p = self._proto
        if p is not None and not p.is_closed:
            p.write(frame)
        try:
            return await asyncio.wait_for(fut, self.request_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise HubError(
                f"hub {self.host}:{self.port} did not answer within {self.request_timeout}s"
            ) from None
        finally:
            self._requests.pop(rid, None)

    def _on_response(self, rid: int, status: int, payload: bytes) -> None:
        entry = self._requests.get(rid)
        if entry is None or entry[0].done():
            return
        fut = entry[0]
        if status == 0:
            try:
                fut.set_result(json.loads(payload.decode("utf-8")))
            except ValueError as exc:
                fut.set_exception(HubError(f"bad answer from the hub: {exc}"))
        else:
            fut.set_exception(error_for_code(status, payload.decode("utf-8", "replace")))

    async def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        """The public bundle the hub holds for ``agent_id``, or None if it never registered.

        The hub is not trusted with it: check it with ``agentmesh.crypto.verify_bundle`` (and
        pin its identity key) before use."""
        return await self._bundle_request(Op.GET_BUNDLE, agent_id)

    async def claim_bundle(self, agent_id: str) -> dict[str, Any] | None:
        """:meth:`get_bundle` for setting up a session (registered agents only): the hub adds
        one of ``agent_id``'s one-time prekeys (``"one_time_prekey"``), if it holds any, and
        never hands that one out again. Verify the bundle as for :meth:`get_bundle`."""
        return await self._bundle_request(Op.CLAIM_BUNDLE, agent_id)

    async def _bundle_request(self, op: Op, agent_id: str) -> dict[str, Any] | None:
        result = await self._request(op, agent_id)
        if result is not None and not isinstance(result, dict):
            raise HubError("bad answer from the hub: bundle is not an object")
        if result is not None:
            self._missing.pop(agent_id, None)
        return result

    async def add_prekeys(self, prekeys: list[dict[str, Any]]) -> int:
        """Give the hub this agent's one-time prekeys (``AgentKeyPair.generate_one_time_prekeys``
        output) to hand out; an empty list only asks. Returns how many the hub holds now; it
        keeps at most :attr:`prekey_limit` (the rest of an upload is ignored)."""
        arg = json.dumps(list(prekeys), separators=(",", ":"))
        answer = await self._request(Op.ADD_PREKEYS, arg)
        held = answer.get("held") if isinstance(answer, dict) else None
        limit = answer.get("limit") if isinstance(answer, dict) else None
        if type(held) is not int or type(limit) is not int:
            raise HubError("bad answer from the hub: expected {'held': int, 'limit': int}")
        self.prekeys_held, self.prekey_limit = held, limit
        return held

    async def update_bundle(self, bundle: dict[str, Any]) -> None:
        """Publish this agent's new bundle (same id and identity key; for example after
        ``AgentKeyPair.rotate_signed_prekey``). A reconnect registers with the keypair's
        current bundle anyway."""
        await self._request(Op.UPDATE_BUNDLE, json.dumps(bundle, separators=(",", ":")))

    async def list_agents(self, limit: int = 1_000_000) -> list[str]:
        """Ids of every agent that ever registered on the hub, sorted, page by page (the hub
        answers at most ``max_list_agents`` per request). Raises :class:`HubError` past
        ``limit`` ids or for an answer that does not move on (a hostile or broken hub)."""
        agents: list[str] = []
        after = ""
        while True:
            page = await self._request(Op.LIST_AGENTS, after)
            ids = page.get("agents") if isinstance(page, dict) else None
            nxt = page.get("next") if isinstance(page, dict) else None
            if not isinstance(ids, list) or not (nxt is None or isinstance(nxt, str)):
                raise HubError("bad answer from the hub: expected {'agents': [...], 'next': ...}")
            agents.extend(str(a) for a in ids)
            if len(agents) > limit:
                raise HubError(f"the hub lists more than {limit} agents")
            if nxt is None:
                return agents
            if nxt <= after:
                raise HubError("bad answer from the hub: the agent list does not advance")
            after = nxt

    async def message_count(self) -> int:
        """Envelopes the hub has accepted for delivery since its store was created."""
        return int(await self._request(Op.MESSAGE_COUNT))

    # ---- closing -----------------------------------------------------------------------------

    async def close(self, timeout: float | None = 30.0) -> None:
        """Flush (up to ``timeout`` seconds), then close the connection. Raises what flush
        raised (after closing), so a refused or unacknowledged envelope is not silent."""
        if self._closed:
            return
        error: BaseException | None = None
        if self._mode == "agent" and self._loop is not None:
            if self._fatal is None:
                try:
                    await self.flush(timeout)
                except HubError as exc:
                    error = exc
            elif self._unacked:
                error = HubError(
                    f"{len(self._unacked)} envelope(s) were never acknowledged by the hub: "
                    f"{self._fatal}"
                )
        self._closing = True
        self._closed = True
        sup, self._supervisor = self._supervisor, None
        await _cancel_and_wait(sup)
        con, self._consumer = self._consumer, None
        await _cancel_and_wait(con)
        p, self._proto = self._proto, None
        if p is not None:
            p.close()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(p.closed), 2.0)
            p.abort()
        closed = HubError("hub client is closed")
        for fut, _frame in self._requests.values():
            if not fut.done():
                fut.set_exception(closed)
        for _t, fut in self._flush_waiters:
            if not fut.done():
                fut.set_exception(closed)
        self._flush_waiters.clear()
        if self._room is not None:
            self._room.set()
        if error is not None:
            raise error

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
