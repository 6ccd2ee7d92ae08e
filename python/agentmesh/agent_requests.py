"""Request and reply: ``request()`` sends a message and waits for the reply that names it.

A request is an ordinary message whose encrypted payload carries a mark
(``{"_agentmesh": {"request": true}}``); a reply is an ordinary message whose payload carries
``reply_to`` (the request's id) and, for ``reply_error``, ``error``. The hub cannot tell them
from any other message. A reply resolves a waiting ``request()`` only if it comes from the peer
the request went to; it never reaches the message handlers then. A reply whose caller gave up
(timed out) goes to the error handlers as a :class:`~agentmesh.errors.LateReplyError`; a
reply nobody asked for (an answer to a plain message) reaches the handlers like any message.

On the network, replies are taken off the receive path before the handlers run, so a handler
may itself wait for a reply (see :mod:`agentmesh.link_receiver`).

A part of the agent core (:class:`agentmesh.agent_core._AgentCore`), which combines the rooms; its
methods run on the core and share its state."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from .agent_rules import _now_ms
from .agent_state import AgentCoreState
from .errors import LateReplyError, MessageExpiredError, RemoteError, ReplyTimeoutError
from .link_receive_pool import waiting
from .message import META_KEY, Message

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "LATE_REPLIES_REMEMBERED", "PendingRequests"]

#: Seconds ``request()`` waits by default.
DEFAULT_REQUEST_TIMEOUT = 30.0
#: How many timed-out requests an agent remembers, to report their late replies.
LATE_REPLIES_REMEMBERED = 4096


class PendingRequests:
    """The requests an agent waits on: request id -> (peer, future of the reply)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[str, concurrent.futures.Future[Message]]] = {}
        self._late: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._on_open: list[Callable[[], None]] = []

    @property
    def any(self) -> bool:
        return bool(self._waiting)

    def on_open(self, callback: Callable[[], None]) -> None:
        self._on_open.append(callback)

    def open(self, peer: str, request_id: str) -> concurrent.futures.Future[Message]:
        future: concurrent.futures.Future[Message] = concurrent.futures.Future()
        with self._lock:
            self._waiting[request_id] = (peer, future)
        self.opened()
        return future

    def opened(self) -> None:
        for callback in self._on_open:
            callback()

    def give_up(self, request_id: str, timed_out: bool) -> None:
        with self._lock:
            entry = self._waiting.pop(request_id, None)
            if entry is not None and timed_out:
                self._late[request_id] = entry[0]
                while len(self._late) > LATE_REPLIES_REMEMBERED:
                    self._late.popitem(last=False)

    def take(self, msg: Message) -> str:
        """What ``msg`` (a reply) is: "answered" (a waiting caller got it), "late" (its caller
        gave up), or "unasked" (no request of ours from this peer)."""
        reply_to = msg.reply_to
        if reply_to is None:
            return "unasked"
        with self._lock:
            entry = self._waiting.get(reply_to)
            if entry is not None and entry[0] == msg.sender:
                del self._waiting[reply_to]
                future = entry[1]
            else:
                return "late" if self._late.get(reply_to) == msg.sender else "unasked"
        error = (msg._meta or {}).get("error")
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # (a cancelled wait)
            if isinstance(error, str):
                future.set_exception(RemoteError(msg.sender, error, reply_to))
            else:
                future.set_result(msg)
        return "answered"

    def fail_all(self, exc: BaseException) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for _peer, future in waiting.values():
            if not future.done():
                future.set_exception(exc)


class _Requests(AgentCoreState):
    """Request and reply (see the module)."""

    def open_request(
        self, peer: str, payload: dict[str, Any]
    ) -> tuple[Any, concurrent.futures.Future[Message]]:
        """Seal ``payload`` as a request to ``peer``, start waiting for its reply, and hand it to
        the hub. Returns the request's envelope and the future of the reply."""
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
        check_no_meta(payload)
        env = self.seal_for(peer, {**payload, META_KEY: {"request": True}})
        future = self._pending.open(peer, str(env.id))
        try:
            self.transmit(env)
        except BaseException:
            self._pending.give_up(str(env.id), timed_out=False)
            raise
        return env, future

    def finish_request(self, peer: str, request_id: str, timed_out: bool) -> None:
        self._pending.give_up(request_id, timed_out)

    def request_payload(
        self, peer: str, payload: dict[str, Any], timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    ) -> Message:
        env, future = self.open_request(peer, payload)
        request_id = str(env.id)
        try:
            with waiting():  # a handler waiting here lets the reply through (another worker)
                return future.result(timeout)
        except concurrent.futures.TimeoutError:
            self.finish_request(peer, request_id, timed_out=True)
            if future.done():  # the reply came just as the wait ended
                return future.result()
            raise ReplyTimeoutError(peer, timeout or 0.0, request_id) from None
        finally:
            self.finish_request(peer, request_id, timed_out=False)

    def send_reply(self, request: Message, payload: dict[str, Any], error: str | None) -> Any:
        """Seal and send the answer to ``request`` (``Message.reply`` and friends)."""
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
        check_no_meta(payload)
        meta: dict[str, Any] = {"reply_to": request.id}
        if error is not None:
            meta["error"] = error
        return self.send_payload(request.sender, {**payload, META_KEY: meta})

    @property
    def reads_without_consumer(self) -> bool:
        """Deliveries must be read even with no handler or iterator: a ``request()`` waits
        for its reply, or an interceptor takes a kind of message."""
        return self._pending.any or bool(self._interceptors)

    def on_reads_needed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever ``reads_without_consumer`` may have become true."""
        self._pending.on_open(callback)

    def intercept(self, kind: str, take: Callable[[Message], None]) -> None:
        """Messages of ``kind`` (sent with :meth:`send_kind`) go to ``take`` instead of the
        handlers: how a protocol carried between agents (MCP, say) keeps its own traffic.
        ``take`` runs on the receive path, before the handlers: it must not block."""
        self._interceptors = {**self._interceptors, kind: take}
        self._pending.opened()

    def send_expiring(self, peer: str, payload: dict[str, Any], ttl: float) -> Any:
        """Send ``payload`` to be handled within ``ttl`` seconds of now, or not at all (the
        recipient drops it later, reporting it to its error handlers)."""
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        check_no_meta(payload)
        ttl_ms = round(ttl * 1000)
        env = self.seal_for(peer, {**payload, META_KEY: {"ttl_ms": ttl_ms}})
        # (the hub drops it undelivered after the expiry; the recipient checks it itself too,
        # against the sender's signed time stamp and ttl)
        self.transmit(env, int(env.timestamp) + ttl_ms)
        return env

    def send_kind(self, peer: str, kind: str, payload: dict[str, Any]) -> Any:
        """Send ``payload`` as a message of ``kind`` (taken by the peer's interceptor)."""
        return self.send_payload(peer, {**payload, META_KEY: {"kind": kind}})

    def take_reply(self, msg: Message) -> bool:
        """True when ``msg`` must not reach the message handlers: a reply that answered a
        waiting ``request()`` or came too late (reported to the error handlers), or a message
        of a kind an interceptor takes (one of a kind nobody takes is dropped, logged)."""
        meta = msg._meta
        if meta is None:
            return False
        ttl_ms = meta.get("ttl_ms")
        if type(ttl_ms) is int and _now_ms() > msg.timestamp + ttl_ms:
            # (the sender's time stamp and ttl are both under its signature)
            self.report(MessageExpiredError(msg, msg.sender, ttl_ms))
            return True
        kind = meta.get("kind")
        if kind is not None:
            take = self._interceptors.get(kind) if isinstance(kind, str) else None
            if take is None:
                self.log.warning(
                    "agent %r: dropped a %r message from %r: nothing here takes that kind",
                    self.agent_id,
                    kind,
                    msg.sender,
                )
                return True
            try:
                take(msg)
            except Exception:
                self.log.exception("agent %r: taking a %r message failed", self.agent_id, kind)
            return True
        if msg.reply_to is None:
            return False
        outcome = self._pending.take(msg)
        if outcome == "late":
            self.report(LateReplyError(msg, msg.sender, msg.reply_to))
            return True
        return outcome == "answered"

    def hand_over(self, msg: Message) -> None:
        """A message unsealed here: to its waiting caller if it is a reply, else to the
        handlers."""
        if msg._meta is None or not self.take_reply(msg):
            self._dispatch(msg)


def check_no_meta(payload: dict[str, Any]) -> None:
    if META_KEY in payload:
        raise ValueError(f"the payload key {META_KEY!r} is reserved for agentmesh's own fields")
