"""The agent's core, :class:`_AgentCore`: one implementation under both faces (the sync
:class:`~agentmesh.agent.Agent` and the asyncio :class:`~agentmesh.async_agent.AsyncAgent`).

The core holds the identity, one ``CryptoSession`` per peer, the pinned peer identity keys (trust
on first use), the handlers and the counters, combining the rooms in ``agent_*.py``. It seals
(``seal_for``), unseals (``accept``) and dispatches; it never does I/O itself except through the
hub it is attached to:

* with a :class:`~agentmesh.hubs.LocalHub` everything runs in the caller's thread: ``send`` seals,
  the hub hands the envelope to the recipient's core, which unseals it and runs its handlers before
  ``send`` returns;
* with a :class:`~agentmesh.hubs.NetworkHub` (or any hub over a backend) a per-agent link
  (:class:`agentmesh.link.AgentLink`) streams sealed envelopes to the backend from the process's
  shared network thread and hands received ones, in batches, to the process's shared receive
  workers (``link_receive_pool.py``), which call the core's batch receive.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import crypto as _crypto
from .agent_groups import _Groups
from .agent_persistence import _Persistence
from .agent_prekeys import _Prekeys
from .agent_receiving import _Receiving
from .agent_recovery import _Recovery
from .agent_requests import PendingRequests, _Requests
from .agent_rotation import _Rotation
from .agent_rules import (
    CLOSE_TIMEOUT,
    MAX_ENVELOPE_BYTES,
    SESSION_RECHECK_S,
    _now_ms,
    _recheck_clock,
    validate_agent_id,
)
from .agent_sessions import _Sessions
from .agent_trust import _Trust
from .errors import MessageTooLargeError
from .keystore import KeyStore
from .message import Message

if TYPE_CHECKING:  # pragma: no cover
    from .hubs import Hub

__all__ = ["ReadyEvent", "_AgentCore", "_core_of"]

H = TypeVar("H", bound=Callable[..., Any])


def _core_of(agent: Any) -> _AgentCore:
    core = getattr(agent, "_core", agent)
    if not isinstance(core, _AgentCore):
        raise TypeError(f"expected an Agent or AsyncAgent, got {type(agent).__name__}")
    return core


#: Longest pause between two presence checks of ``wait_for_peer``.
PRESENCE_POLL_MAX = 0.25


class ReadyEvent(threading.Event):
    """A ``threading.Event`` that also calls back whoever waits for it without a thread (the
    receive path: an agent's first batches wait until it has a handler or an iterator)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def when_set(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def set(self) -> None:
        already = self.is_set()
        super().set()
        if not already:
            for callback in self._callbacks:
                callback()


class _AgentCore(
    _Groups,
    _Rotation,
    _Sessions,
    _Trust,
    _Receiving,
    _Recovery,
    _Persistence,
    _Prekeys,
    _Requests,
):
    """Identity, sessions, pins, handlers and counters of one agent. No I/O of its own."""

    def __init__(
        self,
        agent_id: str,
        *,
        keypair_path: str | os.PathLike[str] | None = None,
        passphrase: str | bytes | None = None,
        keypair: Any = None,
        log_level: int = logging.WARNING,
        owner: Any = None,
        deniable: bool = False,
    ) -> None:
        self.agent_id = validate_agent_id(agent_id)
        if not isinstance(deniable, bool):
            raise TypeError(f"deniable must be a bool, not {type(deniable).__name__}")
        #: the mode of every session this agent sets up (signed unless deniable=True)
        self.deniable = deniable
        self.log = logging.getLogger(f"agentmesh.agent.{agent_id}")
        self.log.setLevel(log_level)
        self.owner = owner
        self._lock = threading.Lock()  # guards sessions/pins and every seal/unseal
        self._save_lock = threading.Lock()  # serialises state writes
        self._rotation_lock = threading.Lock()  # one rotate_identity() at a time
        self._sessions = {}
        self._pins = {}
        self._bundles = {}
        # hub store id -> last delivery id handled from it (persisted: see note_delivered)
        self._delivered = {}
        # when the current signed prekey was made, ms, and its id (persisted together; see
        # rotate_signed_prekey)
        self._signed_prekey_since = _now_ms()
        self._signed_prekey_id = None
        self._pending_identity = {}
        self._unverified = set()  # restored sessions not yet re-checked on the hub
        # (see _mark_sessions_for_recheck)
        self._next_recheck = _recheck_clock() + SESSION_RECHECK_S
        self._handlers: tuple[Callable[[Message], Any], ...] = ()
        self._error_handlers = ()
        self._user_dispatch = self.run_handlers  # (behind the group control filter: _dispatch)
        self._init_groups()
        self._pending = PendingRequests()
        self._unhandled = collections.Counter()
        self._holders = []  # one entry per receive_batch(dispatch=False) running, any thread
        self._interceptors = {}
        self.consumer_ready = ReadyEvent()  # a NetworkHub link runs handlers once this is set
        self.attached = ReadyEvent()  # set once a hub's register attached the agent
        self.sent = 0
        self.received = 0
        self.rejected = 0
        self.handler_errors = 0
        self.closed = False
        self.hub = None
        self._owned_hub: Hub | None = None  # a hub this agent made from an address
        self._closing_link: Any = None  # the network link this agent closed
        self._transport: Any = None
        self._transmit: Callable[[Any], Any] | None = None
        self._transmit_expiring: Callable[[Any, int], Any] | None = None
        self._autosave = False
        self._next_save = 0.0
        # peer id -> its session's export, sealed at rest under the identity (Rust seals it: no
        # session secret is ever held in Python bytes)
        self._exports = {}
        # sessions opened by others and never answered, oldest first (bounded: see
        # _note_inbound_only)
        self._inbound_only = collections.OrderedDict()
        self._inbound_last = None
        self._retired = {}
        self._retired_keypair = None
        self._retired_until = 0
        self._retired_exports = {}
        self._meta_dirty = False
        self.created_identity = False

        self.store = None
        self._released = False  # close() gave up the identity lock: no more state writes
        self._dirty = None
        if keypair_path is not None:
            if keypair is not None:
                raise ValueError("pass either keypair or keypair_path, not both")
            self.store = KeyStore(keypair_path, passphrase=passphrase)
            self.store.acquire()
            try:
                keypair, self.created_identity = self.store.load_or_create_identity(self.agent_id)
            except BaseException:
                self.store.release()
                raise
            self._dirty = set()
        elif passphrase is not None:
            raise ValueError("passphrase needs keypair_path (it encrypts the files at rest)")
        elif keypair is None:
            keypair = _crypto.AgentKeyPair.generate(self.agent_id)
        elif keypair.agent_id != self.agent_id:
            raise ValueError(
                f"keypair belongs to agent {keypair.agent_id!r}, not {self.agent_id!r}"
            )
        self.keypair = keypair
        self.fingerprint: str = keypair.fingerprint
        self._identity_revision = keypair.revision  # what the identity file holds
        if self.store is not None:
            try:
                self._load_state()
            except BaseException:
                self.store.release()
                raise

    # -- identity -------------------------------------------------------------------------------

    @property
    def public_bundle(self) -> dict[str, Any]:
        return dict(self.keypair.public_bundle())

    @property
    def identity_key(self) -> bytes:
        return bytes(self.keypair.identity_key)

    # -- wiring to a hub ------------------------------------------------------------------------

    def register_on(self, hub: Hub, agent: Any, owned: bool = False) -> None:
        """Register ``agent`` (this core's face) on ``hub``; if that fails, the identity is
        given up at once (its lock released), so that a retry can open it again. ``owned``:
        the agent made the hub (from an address) and closes it when it closes."""
        self._owned_hub = hub if owned else None
        try:
            hub.register(agent)
        except BaseException:
            if owned:
                with contextlib.suppress(Exception):
                    hub.close()  # type: ignore[attr-defined]
            self.closed = True
            if self.store is not None:
                with self._save_lock:
                    self._released = True
                    self.store.release()
            raise

    def attach(self, hub: Hub, transport: Any) -> None:
        """Called by a hub's ``register``: route sealed envelopes through ``transport.send``."""
        if self.hub is not None and self.hub is not hub:
            raise ValueError(f"agent {self.agent_id!r} is already registered on another hub")
        self.hub = hub
        self._transport = transport
        self._transmit = transport.send
        self._transmit_expiring = transport.send_expiring
        self._autosave = bool(getattr(transport, "local", False)) and self.store is not None
        self.attached.set()

    def detach(self) -> None:
        self._transmit = None
        self._transmit_expiring = None
        self._transport = None

    # -- handlers -------------------------------------------------------------------------------

    def add_handler(self, handler: H) -> H:
        if not callable(handler):
            raise TypeError(f"on_message needs a callable, got {type(handler).__name__}")
        self._handlers = (*self._handlers, handler)
        self.consumer_ready.set()
        return handler

    def add_error_handler(self, handler: H) -> H:
        if not callable(handler):
            raise TypeError(f"on_error needs a callable, got {type(handler).__name__}")
        self._error_handlers = (*self._error_handlers, handler)
        return handler

    def run_handlers(self, msg: Message) -> None:
        """Run every handler in registration order; one raising does not stop the others."""
        for handler in self._handlers:
            try:
                handler(msg)
            except Exception:
                self.handler_failed(handler, msg)

    def handler_failed(self, handler: Any, msg: Message) -> None:
        self.handler_errors += 1
        self.log.exception(
            "agent %r: message handler %s raised on a message from %r",
            self.agent_id,
            getattr(handler, "__qualname__", repr(handler)),
            msg.sender,
        )

    # -- sending --------------------------------------------------------------------------------

    def send_payload(self, recipient: str, payload: dict[str, Any]) -> Any:
        """Seal ``payload`` for ``recipient`` and hand it to the hub; return the Envelope."""
        env = self.seal_for(recipient, payload)
        transmit = self._transmit
        if transmit is not None and len(env) <= MAX_ENVELOPE_BYTES:
            transmit(env)  # (the common case, without a call to ``transmit``)
        else:
            self.transmit(env)
        return env

    def transmit(self, env: Any, expires_ms: int = 0) -> None:
        """Hand a sealed envelope to the hub (``MessageTooLargeError`` past the one limit
        every hub shares: nothing is sent). ``expires_ms`` (ms since the epoch): the hub
        should not deliver it after that (the sender's ``ttl``)."""
        size = len(env)
        if size > MAX_ENVELOPE_BYTES:
            raise MessageTooLargeError(
                f"message to {env.recipient!r} is {size:,} bytes sealed, over the limit of "
                f"{MAX_ENVELOPE_BYTES:,} bytes per message on every hub; send it in parts, or "
                "pass a reference to where the data is (a path, a URL) instead"
            )
        if expires_ms:
            transmit_expiring = self._transmit_expiring
            if transmit_expiring is not None:
                transmit_expiring(env, expires_ms)
                return
        transmit = self._transmit
        if transmit is not None:
            transmit(env)
        elif self.hub is not None:  # closed
            raise RuntimeError(f"agent {self.agent_id!r} is closed")

    # -- persistence ----------------------------------------------------------------------------

    # -- lifecycle ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        transport = self._transport
        if transport is not None:
            transport.flush(timeout)
        self.save_state()

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        if self.closed:
            # (closed by one of its handlers: its connection shuts down once that handler
            # returns; a close from elsewhere waits for that, so nothing is cut off at exit)
            closing = self._closing_link
            if closing is not None:
                closing.wait_shut_down(timeout)
            return
        error: BaseException | None = None
        transport = self._transport
        if transport is not None:
            try:
                transport.flush(timeout)
            except Exception as exc:
                error = exc
        self.closed = True
        self.consumer_ready.set()
        self._pending.fail_all(
            RuntimeError(f"agent {self.agent_id!r} closed before the reply came")
        )
        hub = self.hub
        try:
            if hub is not None:
                hub.unregister(self)
        except Exception:
            self.log.exception("agent %r: error while leaving the hub", self.agent_id)
        owned = self._owned_hub
        if owned is not None:
            with contextlib.suppress(Exception):
                owned.close()  # type: ignore[attr-defined]
        self._closing_link = transport if hasattr(transport, "wait_shut_down") else None
        self.detach()
        try:
            self.save_state()
        except Exception as exc:
            error = error or exc
        finally:
            if self.store is not None:
                with self._save_lock:  # no state write can be under way while the lock goes
                    self._released = True
                    self.store.release()
        if error is not None:
            raise error

    # -- introspection --------------------------------------------------------------------------

    def wait_for_peer(self, peer_id: str, timeout: float | None) -> None:
        hub = self.hub
        if hub is None:
            raise RuntimeError("No hub configured: there is no one to wait for")
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.02
        while not hub.is_online(peer_id):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"agent {peer_id!r} did not come online within {timeout:g} s")
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, PRESENCE_POLL_MAX)

    def list_peers(self) -> list[str]:
        hub = self.hub
        if hub is None:
            return [p for p in self._bundles if p != self.agent_id]
        return [a for a in hub.list_agents() if a != self.agent_id]

    def counters(self) -> dict[str, int]:
        """The agent's figures as plain numbers; safe to read from any thread (nothing is
        iterated), for a metrics scrape."""
        return {
            "sent": self.sent,
            "received": self.received,
            "rejected": self.rejected,
            "handler_errors": self.handler_errors,
            "active_sessions": len(self._sessions),
            "known_peers": len(self._pins),
        }

    def status(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "fingerprint": self.fingerprint,
            "hub": type(self.hub).__name__ if self.hub is not None else None,
            "active_sessions": sorted(self._sessions),
            "known_peers": sorted(self._pins),
            "handlers": len(self._handlers),
            "error_handlers": len(self._error_handlers),
            "sent": self.sent,
            "received": self.received,
            "rejected": self.rejected,
            "handler_errors": self.handler_errors,
            "persistent": self.store is not None,
            "keypair_path": str(self.store.path) if self.store is not None else None,
            "closed": self.closed,
            "deniable": self.deniable,
        }
