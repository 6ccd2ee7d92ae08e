"""The agent's core and its sync face, :class:`Agent` (the asyncio face, :class:`AsyncAgent`, is in
``async_agent.py``; the :class:`Message` in ``message.py``).

Both agent classes are thin drivers over one sans-IO core, :class:`_AgentCore`, which holds the
identity, one ``CryptoSession`` per peer, the pinned peer identity keys (trust on first use), the
handlers and the counters. The core seals (``seal_for``), unseals (``accept``) and dispatches; it
never does I/O itself except through the hub it is attached to:

* with a :class:`~agentmesh.hubs.LocalHub` everything runs in the caller's thread: ``send`` seals,
  the hub hands the envelope to the recipient's core, which unseals it and runs its handlers before
  ``send`` returns;
* with a :class:`~agentmesh.hubs.NetworkHub` (or any hub over a backend) a per-agent link
  (:class:`agentmesh.link.AgentLink`) streams sealed envelopes to the backend from a shared
  background event loop and feeds received ones, in batches, to a per-agent worker thread,
  which calls :meth:`_AgentCore.receive_batch`.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import crypto as _crypto
from .errors import (
    CryptoError,
    FormatError,
    IdentityChangedError,
    IdentityError,
    ReplayError,
    UnknownSenderError,
)
from .keystore import KeyStore, PersistedState
from .message import Message, _message_from_bytes  # noqa: F401 (old pickles name it here)

if TYPE_CHECKING:  # pragma: no cover
    from .hubs import Hub

__all__ = ["Agent", "Message", "validate_agent_id"]  # (and AsyncAgent: see __getattr__)

Envelope = _crypto.Envelope
AgentKeyPair = _crypto.AgentKeyPair
CryptoSession = _crypto.CryptoSession
perform_key_exchange = _crypto.perform_key_exchange
verify_bundle = _crypto.verify_bundle

H = TypeVar("H", bound=Callable[..., Any])

MAX_AGENT_ID_BYTES = 255
#: How often (seconds) a persistent agent on a LocalHub writes its state while it is busy.
AUTOSAVE_INTERVAL = 1.0
#: Default time ``close()`` waits for the hub to acknowledge what was sent.
CLOSE_TIMEOUT = 30.0
#: ``receive_batch``: a signed-mode run of at least this many envelopes from one sender is
#: unsealed with one ``unseal_many`` call (batch signature verification); shorter runs, and
#: deniable sessions (no signature to batch), one envelope at a time, which is faster there.
UNSEAL_MANY_MIN = 2
#: ... and at most this many per call, so the agent's lock is never held for long.
UNSEAL_MANY_MAX = 64
#: A persistent agent remembers its last handled delivery id for this many hub stores (the
#: ones it used most recently); see ``note_delivered``.
MAX_DELIVERED_HUBS = 16
#: Most sessions an agent keeps that other agents opened and it never answered (any agent on
#: the hub can open one); past it the oldest is forgotten.
MAX_INBOUND_ONLY_SESSIONS = 1000
#: One-time prekeys a hub handed out and no set-up used yet that an agent keeps; older ones are
#: deleted when it makes new ones (see ``new_prekeys``).
KEEP_HANDED_OUT_PREKEYS = 200


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------------------------
# helpers


def validate_agent_id(agent_id: object, what: str = "agent_id") -> str:
    """Return ``agent_id`` if it is a valid agent id, else raise ``ValueError`` naming the problem.

    Valid: a non-empty ``str`` of at most 255 UTF-8 bytes without control characters.
    """
    # The rule lives in the Rust core (keys.rs, agent_id_problem); the hub and the envelope
    # codec apply the same one.
    _crypto.check_agent_id(agent_id, what)
    assert isinstance(agent_id, str)  # for the type checker: anything else was refused
    return agent_id


def _fingerprint_of_key(identity_key_b64: str) -> str:
    """The spec's fingerprint of a base64 Ed25519 public key."""
    try:
        raw = base64.b64decode(identity_key_b64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return "?"
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def _same_key(a: str, b: object) -> bool:
    if a == b:
        return True
    if not isinstance(b, str):
        return False
    try:
        return base64.b64decode(a, validate=True) == base64.b64decode(b, validate=True)
    except (binascii.Error, ValueError):
        return False


def _normalize_fingerprint(fp: str) -> str:
    return "".join(ch for ch in str(fp).lower() if ch in "0123456789abcdef")


def _public_bundle_copy(bundle: dict[str, Any]) -> dict[str, Any]:
    """A bundle to remember: without the one-time prekey the hub handed out (used once)."""
    return {k: v for k, v in bundle.items() if k != "one_time_prekey"}


def _core_of(agent: Any) -> _AgentCore:
    core = getattr(agent, "_core", agent)
    if not isinstance(core, _AgentCore):
        raise TypeError(f"expected an Agent or AsyncAgent, got {type(agent).__name__}")
    return core


# --------------------------------------------------------------------------------------------
# Message


class _AgentCore:
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
        self._sessions: dict[str, Any] = {}
        self._pins: dict[str, str] = {}
        self._bundles: dict[str, dict[str, Any]] = {}
        # hub store id -> last delivery id handled from it (persisted: see note_delivered)
        self._delivered: dict[bytes, int] = {}
        # when the current signed prekey was made, ms, and its id (persisted together; see
        # rotate_signed_prekey)
        self._signed_prekey_since = _now_ms()
        self._signed_prekey_id: int | None = None
        self._pending_identity: dict[str, dict[str, Any]] = {}
        self._unverified: set[str] = set()  # restored sessions not yet re-checked on the hub
        self._handlers: tuple[Callable[[Message], Any], ...] = ()
        self._error_handlers: tuple[Callable[[BaseException], Any], ...] = ()
        self._dispatch: Callable[[Message], Any] = self.run_handlers
        self.consumer_ready = threading.Event()  # a NetworkHub link delivers once this is set
        self.sent = 0
        self.received = 0
        self.rejected = 0
        self.handler_errors = 0
        self.closed = False
        self.hub: Hub | None = None
        self._transport: Any = None
        self._transmit: Callable[[Any], Any] | None = None
        self._autosave = False
        self._next_save = 0.0
        # peer id -> its session's export, sealed at rest under the identity (Rust seals it: no
        # session secret is ever held in Python bytes)
        self._exports: dict[str, bytes] = {}
        # sessions opened by others and never answered, oldest first (bounded: see
        # _note_inbound_only)
        self._inbound_only: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._meta_dirty = False
        self.created_identity = False

        self.store: KeyStore | None = None
        self._released = False  # close() gave up the identity lock: no more state writes
        self._dirty: set[str] | None = None
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
            keypair = AgentKeyPair.generate(self.agent_id)
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

    def register_on(self, hub: Hub, agent: Any) -> None:
        """Register ``agent`` (this core's face) on ``hub``; if that fails, the identity is
        given up at once (its lock released), so that a retry can open it again."""
        try:
            hub.register(agent)
        except BaseException:
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
        self._autosave = bool(getattr(transport, "local", False)) and self.store is not None

    def detach(self) -> None:
        self._transmit = None
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
        if transmit is not None:
            transmit(env)
        elif self.hub is not None:  # closed
            raise RuntimeError(f"agent {self.agent_id!r} is closed")
        return env

    def seal_for(self, peer_id: str, payload: dict[str, Any]) -> Any:
        """Seal ``payload`` for ``peer_id`` (connects on first contact; no I/O on the fast path)."""
        if self.closed:
            raise RuntimeError(f"agent {self.agent_id!r} is closed")
        try:
            session = self._sessions.get(peer_id)
        except TypeError:
            session = None  # unhashable id: validated (and refused) below
        if session is None:
            return self._seal_first(peer_id, payload)
        if self._pending_identity or self._unverified:
            self._verify_before_send(peer_id)
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
        dirty = self._dirty
        with self._lock:
            env = session.seal(payload)
            self.sent += 1
            if dirty is not None:
                # (under the lock save_state holds while it exports and clears the marks)
                dirty.add(peer_id)
            if self._inbound_only and peer_id in self._inbound_only:
                del self._inbound_only[peer_id]  # answered: no longer an unknown sender's
        if dirty is not None and self._autosave:
            self._maybe_autosave()
        return env

    def _verify_before_send(self, peer_id: str) -> None:
        """Refuse to send while a peer presents an identity not (yet) trusted; check sessions
        restored from disk against the hub once per process."""
        pending = self._pending_identity.get(peer_id)
        if pending is not None:
            raise IdentityChangedError(
                peer_id,
                _fingerprint_of_key(self._pins.get(peer_id, "")),
                _fingerprint_of_key(str(pending.get("identity_key"))),
            )
        if peer_id in self._unverified:
            session = self._sessions.get(peer_id)
            renews = session is not None and session.renews_on_send
            # a loaded session starts a new set-up at its first send: claimed, not just looked
            # up, so that the hub may add a one-time prekey, and with the peer's current
            # signed prekey (it may have rotated while this agent was down)
            bundle = self._fetch_bundle(peer_id, claim=renews)
            if bundle is not None:
                self._check_bundle(peer_id, bundle)
                if renews and session is not None:
                    session.refresh_peer(bundle)
            self._unverified.discard(peer_id)

    def _seal_first(self, peer_id: str, payload: dict[str, Any]) -> Any:
        validate_agent_id(peer_id, "recipient id")
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
        session, bundle = self._new_session_for_send(peer_id)
        with self._lock:
            existing = self._sessions.get(peer_id)
            if existing is not None:  # another thread connected meanwhile: use its session
                env = existing.seal(payload)
            else:
                env = session.seal(payload)  # TypeError here leaves no trace: nothing committed
                self._commit_session(peer_id, session, bundle)
            self.sent += 1
            if self._dirty is not None:
                self._dirty.add(peer_id)
        self.save_state_quietly()
        return env

    def _new_session_for_send(self, peer_id: str) -> tuple[Any, dict[str, Any]]:
        if peer_id == self.agent_id:
            raise ValueError(f"agent {self.agent_id!r} cannot send to itself")
        bundle = self._bundles.get(peer_id)
        hub = self.hub
        if hub is not None:
            fresh = self._fetch_bundle(peer_id, claim=True)
            if fresh is not None:
                bundle = fresh
            elif bundle is None:
                raise ValueError(f"Peer {peer_id!r} not found on hub")
        elif bundle is None:
            raise RuntimeError(
                f"No hub configured: agent {self.agent_id!r} cannot reach peer {peer_id!r}; "
                "pass hub=... or hand it the peer's bundle with connect_with_bundle(bundle)"
            )
        self._check_bundle(peer_id, bundle)
        return perform_key_exchange(self.keypair, bundle, self.deniable), bundle

    def _fetch_bundle(self, peer_id: str, *, claim: bool) -> dict[str, Any] | None:
        """The peer's bundle from the hub (None without a hub or if it does not know the peer).
        ``claim``: for a set-up, so the hub may add a one-time prekey (a hub written against the
        spec's five methods only has get_bundle)."""
        hub = self.hub
        if hub is None:
            return None
        claim_bundle = getattr(hub, "claim_bundle", None) if claim else None
        if claim_bundle is not None:
            return claim_bundle(self.agent_id, peer_id)  # type: ignore[no-any-return]
        return hub.get_bundle(peer_id)

    def _commit_session(self, peer_id: str, session: Any, bundle: dict[str, Any]) -> None:
        """Store a new session and pin the peer (caller holds ``_lock``)."""
        self._sessions[peer_id] = session
        key = bundle.get("identity_key")
        if isinstance(key, str) and peer_id not in self._pins:
            self._pins[peer_id] = key
        self._bundles[peer_id] = _public_bundle_copy(bundle)
        self._pending_identity.pop(peer_id, None)
        self._meta_dirty = True
        if self._dirty is not None:
            self._dirty.add(peer_id)

    def _check_bundle(self, peer_id: str, bundle: Any) -> None:
        """Verify a bundle's self-signature, its id, and the pinned identity key (TOFU)."""
        if not isinstance(bundle, dict):
            raise FormatError(f"bundle for {peer_id!r} must be a dict, not {type(bundle).__name__}")
        bundle_id = verify_bundle(bundle)
        if bundle_id != peer_id:
            raise IdentityError(f"the bundle offered for peer {peer_id!r} belongs to {bundle_id!r}")
        key = bundle.get("identity_key")
        pinned = self._pins.get(peer_id)
        if pinned is not None and not _same_key(pinned, key):
            self._pending_identity[peer_id] = _public_bundle_copy(bundle)
            raise IdentityChangedError(
                peer_id, _fingerprint_of_key(pinned), _fingerprint_of_key(str(key))
            )

    def _lookup_bundle(self, peer_id: str) -> dict[str, Any] | None:
        hub = self.hub
        if hub is not None:
            bundle = hub.get_bundle(peer_id)
            if bundle is not None:
                return bundle
        return self._bundles.get(peer_id)

    def connect(self, peer_id: str) -> str:
        """Make sure a session with ``peer_id`` exists; re-check its identity on the hub."""
        if self.closed:
            raise RuntimeError(f"agent {self.agent_id!r} is closed")
        validate_agent_id(peer_id, "peer id")
        if peer_id in self._sessions:
            if peer_id in self._unverified:
                # a session loaded from disk: checked on the hub, and its bundle refreshed for
                # the new set-up its first send makes (as before a send)
                self._verify_before_send(peer_id)
                return _fingerprint_of_key(self._pins.get(peer_id, ""))
            if self.hub is not None:
                bundle = self.hub.get_bundle(peer_id)
                if bundle is not None:
                    self._check_bundle(peer_id, bundle)
                    self._unverified.discard(peer_id)
                    return str(_crypto.fingerprint_of(bundle))
            return _fingerprint_of_key(self._pins.get(peer_id, ""))
        session, bundle = self._new_session_for_send(peer_id)
        with self._lock:
            if peer_id not in self._sessions:
                self._commit_session(peer_id, session, bundle)
        self.save_state_quietly()
        return str(_crypto.fingerprint_of(bundle))

    def connect_with_bundle(self, bundle: dict[str, Any]) -> str:
        """Set up a session from a bundle handed over out of band; returns its fingerprint."""
        if self.closed:
            raise RuntimeError(f"agent {self.agent_id!r} is closed")
        if not isinstance(bundle, dict):
            raise TypeError(f"bundle must be a dict, not {type(bundle).__name__}")
        peer_id = verify_bundle(bundle)
        if peer_id == self.agent_id:
            raise ValueError(f"agent {self.agent_id!r} cannot connect to itself")
        self._check_bundle(peer_id, bundle)
        with self._lock:
            if peer_id not in self._sessions:
                session = perform_key_exchange(self.keypair, bundle, self.deniable)
                self._commit_session(peer_id, session, bundle)
            else:
                self._bundles[peer_id] = _public_bundle_copy(bundle)
                self._meta_dirty = True
        self.save_state_quietly()
        return str(_crypto.fingerprint_of(bundle))

    def trust_new_identity(self, peer_id: str, fingerprint: str) -> None:
        """Accept a changed identity key for ``peer_id`` after its fingerprint was checked."""
        validate_agent_id(peer_id, "peer id")
        wanted = _normalize_fingerprint(fingerprint)
        if len(wanted) != 32:
            raise ValueError(
                f"{fingerprint!r} is not a fingerprint (xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx)"
            )
        candidates = []
        pending = self._pending_identity.get(peer_id)
        if pending is not None:
            candidates.append(pending)
        if self.hub is not None:
            fresh = self.hub.get_bundle(peer_id)
            if fresh is not None:
                candidates.append(fresh)
        bundle = None
        for candidate in candidates:
            key = candidate.get("identity_key")
            if _normalize_fingerprint(_fingerprint_of_key(str(key))) == wanted:
                bundle = candidate
                break
        if bundle is None:
            presented = ", ".join(
                sorted({_fingerprint_of_key(str(c.get("identity_key"))) for c in candidates})
            )
            raise ValueError(
                f"peer {peer_id!r} does not present the identity {fingerprint!r}"
                + (f" (it presents {presented})" if presented else " (no new identity seen)")
            )
        if verify_bundle(bundle) != peer_id:
            raise IdentityError(f"the bundle offered for peer {peer_id!r} belongs to another id")
        session = perform_key_exchange(self.keypair, bundle, self.deniable)
        with self._lock:
            self._pins[peer_id] = str(bundle["identity_key"])
            self._sessions[peer_id] = session
            self._bundles[peer_id] = _public_bundle_copy(bundle)
            self._pending_identity.pop(peer_id, None)
            self._unverified.discard(peer_id)
            self._meta_dirty = True
            if self._dirty is not None:
                self._dirty.add(peer_id)
        self.log.warning(
            "agent %r now trusts the new identity %s of peer %r",
            self.agent_id,
            _fingerprint_of_key(str(bundle["identity_key"])),
            peer_id,
        )
        self.save_state()

    # -- receiving ------------------------------------------------------------------------------

    def receive(self, envelope: Any) -> Message | None:
        """Unseal, then dispatch; a rejection goes to the error handlers. Returns the message."""
        try:
            if type(envelope) is not Envelope:
                envelope = _crypto.as_envelope(envelope)
            msg = self.accept(envelope)
        except CryptoError as exc:
            self.reject(exc, envelope)
            return None
        self._dispatch(msg)
        return msg

    def receive_batch(self, envelopes: list[Any]) -> list[Message | None]:
        """:meth:`receive` for many envelopes (Envelopes or bytes) delivered together.

        Each sender's envelopes are unsealed together, in order (``unseal_many``: one Ed25519
        batch verification in signed mode); first contact with an unknown sender goes through the
        same path as :meth:`receive`. Then the handlers (or, for a rejection, the error
        handlers) run for each envelope in the order given. Returns what :meth:`receive` would
        have returned for each envelope.
        """
        n = len(envelopes)
        if n == 1:  # the latency path: nothing to group
            item = envelopes[0]
            try:
                if type(item) is not Envelope:
                    item = _crypto.as_envelope(item)
                msg = self.accept(item)
            except Exception as exc:  # a CryptoError, or a hub lookup failing on first contact
                self.reject(exc, item)
                return [None]
            self._dispatch(msg)
            return [msg]
        outcomes: list[Any] = [None] * n  # Message or the exception that rejected it
        items: list[Any] = list(envelopes)
        runs: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            if type(item) is not Envelope:
                try:
                    item = items[index] = _crypto.as_envelope(item)
                except Exception as exc:
                    outcomes[index] = exc
                    continue
            try:
                runs.setdefault(item.sender, []).append(index)
            except TypeError:  # pragma: no cover - the codec guarantees str ids
                outcomes[index] = FormatError("envelope without a sender id")
        for sender, indexes in runs.items():
            results = self._accept_run(sender, [items[i] for i in indexes])
            for index, result in zip(indexes, results, strict=True):
                outcomes[index] = result
        out: list[Message | None] = []
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, Message):
                self._dispatch(outcome)
                out.append(outcome)
            else:
                self.reject(outcome, item)
                out.append(None)
        return out

    def _accept_run(self, sender: str, envs: list[Any]) -> list[Any]:
        """Unseal one sender's envelopes in order; each result is a Message or an exception."""
        results: list[Any] = []
        start = 0
        # First contact (or a sender whose first envelopes were rejected): one at a time until
        # a session exists, exactly like receive().
        while start < len(envs) and self._sessions.get(sender) is None:
            results.append(self._accept_or_error(envs[start]))
            start += 1
        rest = envs[start:] if start else envs
        if not rest:
            return results
        session = self._sessions.get(sender)
        if session is None or len(rest) < UNSEAL_MANY_MIN or session.deniable:
            # nothing to batch-verify: one call per envelope is as fast (and holds the lock
            # for less time)
            results.extend(self._accept_or_error(env) for env in rest)
            return results
        me = self.agent_id
        dirty = self._dirty
        for chunk_start in range(0, len(rest), UNSEAL_MANY_MAX):
            chunk = rest[chunk_start : chunk_start + UNSEAL_MANY_MAX]
            with self._lock:
                # (a handler may have replaced the session meanwhile: trust_new_identity)
                current = self._sessions.get(sender)
                opened = current.unseal_many(chunk) if current is not None else None
                if opened is not None:
                    self.received += sum(1 for payload in opened if type(payload) is dict)
                    if dirty is not None:
                        dirty.add(sender)
                    if self._inbound_only and sender in self._inbound_only:
                        self._inbound_only.move_to_end(sender)
            if opened is None:
                results.extend(self._accept_or_error(env) for env in chunk)
                continue
            for env, payload in zip(chunk, opened, strict=True):
                if type(payload) is dict:
                    results.append(Message(sender, me, payload, env))
                elif isinstance(payload, ReplayError):
                    results.append(payload)
                elif isinstance(payload, CryptoError):
                    results.append(self._explain_rejection(env, sender, payload))
                elif isinstance(payload, BaseException):
                    results.append(payload)
                else:  # pragma: no cover - the binding returns a dict or an exception
                    results.append(FormatError(f"unexpected unseal result {type(payload)}"))
        if dirty is not None and self._autosave:
            self._maybe_autosave()
        return results

    def _accept_or_error(self, env: Any) -> Any:
        try:
            return self.accept(env)
        except Exception as exc:  # a CryptoError, or a hub lookup failing on first contact
            return exc

    def accept(self, env: Any) -> Message:
        """Unseal one envelope addressed to this agent; raises a CryptoError subclass."""
        sender = env.sender
        session = self._sessions.get(sender)
        if session is None:
            return self._accept_first(env, sender)
        dirty = self._dirty
        try:
            with self._lock:
                payload = session.unseal(env)
                self.received += 1
                if dirty is not None:
                    dirty.add(sender)
                if self._inbound_only and sender in self._inbound_only:
                    self._inbound_only.move_to_end(sender)  # (least recently heard goes first)
        except ReplayError:
            raise
        except CryptoError as exc:
            raise self._explain_rejection(env, sender, exc) from None
        if dirty is not None and self._autosave:
            self._maybe_autosave()
        return Message(sender, self.agent_id, payload, env)

    def _accept_first(self, env: Any, sender: str) -> Message:
        if self.closed:
            raise UnknownSenderError(f"agent {self.agent_id!r} is closed")
        bundle = self._lookup_bundle(sender)
        if bundle is None:
            raise UnknownSenderError(
                f"Unknown sender {sender!r}: no bundle for it on the hub"
                if self.hub is not None
                else f"Unknown sender {sender!r}: no hub configured and no bundle for it"
            )
        self._check_bundle(sender, bundle)
        session = perform_key_exchange(self.keypair, bundle, self.deniable)
        with self._lock:
            existing = self._sessions.get(sender)
            if existing is not None:
                payload = existing.unseal(env)
            else:
                payload = session.unseal(env)
                self._commit_session(sender, session, bundle)
                self._note_inbound_only(sender)
            self.received += 1
        self.save_state_quietly()
        return Message(sender, self.agent_id, payload, env)

    def _note_inbound_only(self, sender: str) -> None:
        """Bound the sessions that other agents opened and this one never answered: any agent
        on the hub can open one, so the one heard from least recently is forgotten past
        MAX_INBOUND_ONLY_SESSIONS (a replay of its set-up stays refused: the identity
        remembers accepted set-ups; so are that peer's further messages on it, until its agent
        starts a new set-up). The caller holds ``_lock``."""
        inbound = self._inbound_only
        inbound[sender] = None
        while len(inbound) > MAX_INBOUND_ONLY_SESSIONS:
            evicted = next(iter(inbound))
            del inbound[evicted]
            self._sessions.pop(evicted, None)
            self._unverified.discard(evicted)
            self._meta_dirty = True
            if self._dirty is not None:
                self._dirty.add(evicted)  # (save_state drops the export of a missing session)
            self.log.info(
                "agent %r forgot the unanswered session %r opened (over %d such sessions)",
                self.agent_id,
                evicted,
                MAX_INBOUND_ONLY_SESSIONS,
            )

    def _explain_rejection(self, env: Any, sender: str, exc: CryptoError) -> CryptoError:
        """A session-initiating envelope the current session refused may come from a peer that
        now presents another identity key: say so (IdentityChangedError) rather than a bare
        signature error. A peer that lost its state and starts over with the same identity is
        handled inside the session itself, with its replay memory."""
        if not env.is_prekey:
            return exc
        try:
            bundle = self._lookup_bundle(sender)
            if bundle is not None:
                self._check_bundle(sender, bundle)
        except IdentityChangedError as changed:
            return changed
        except Exception:
            return exc
        return exc

    def reject(self, exc: BaseException, envelope: Any = None) -> None:
        """Count a rejected envelope and tell every error handler."""
        self.rejected += 1
        sender = None
        if envelope is not None and not isinstance(envelope, (bytes, bytearray, memoryview)):
            with contextlib.suppress(Exception):
                sender = envelope.sender
        with contextlib.suppress(Exception):
            exc.sender = sender  # type: ignore[attr-defined]
            exc.envelope = envelope  # type: ignore[attr-defined]
        if not self._error_handlers:
            self.log.warning(
                "agent %r rejected an envelope from %r: %s: %s",
                self.agent_id,
                sender,
                type(exc).__name__,
                exc,
            )
            return
        for handler in self._error_handlers:
            try:
                handler(exc)
            except Exception:
                self.log.exception("agent %r: error handler raised", self.agent_id)

    # -- persistence ----------------------------------------------------------------------------

    @property
    def persistent(self) -> bool:
        return self.store is not None

    def _load_state(self) -> None:
        assert self.store is not None
        state = self.store.load_state(self.keypair)
        sessions = {}
        for peer, data in state.sessions.items():
            try:
                sessions[peer] = CryptoSession.import_state(self.keypair, data)
            except Exception as exc:
                from .errors import KeyFileError

                raise KeyFileError(
                    f"state file {str(self.store.state_path)!r}: the session with {peer!r} "
                    f"cannot be restored ({exc}); the file was left untouched"
                ) from exc
        self._sessions = sessions
        self._unverified = set(sessions)
        # (re-sealed: a state file written before exports were sealed holds them in the clear)
        self._exports = {peer: session.export_sealed() for peer, session in sessions.items()}
        self._inbound_only = collections.OrderedDict(
            (peer, None) for peer in state.inbound_only if peer in sessions
        )
        self._pins = dict(state.pins)
        self._bundles = dict(state.bundles)
        self._delivered = dict(state.delivered)
        self._signed_prekey_id = int(self.keypair.public_bundle()["signed_prekey_id"])
        if (
            state.signed_prekey_since is not None
            and state.signed_prekey_id == self._signed_prekey_id
        ):
            # (never in the future: a clock set back must not stop rotation)
            self._signed_prekey_since = min(state.signed_prekey_since, _now_ms())
        else:
            # no record (an older state file), or the identity file was rotated and the state
            # not written after it (a crash in between): count from now rather than rotate at
            # once past a key the hub may still be serving
            self._meta_dirty = True

    def _maybe_autosave(self) -> None:
        now = time.monotonic()
        if now >= self._next_save:
            self._next_save = now + AUTOSAVE_INTERVAL
            self.save_state_quietly()

    def save_state(self) -> None:
        """Write sessions and pins (only what changed is re-exported), then the identity file
        if accepted set-ups changed it. No-op without a store. Raises StateWriteError."""
        with self._save_lock:
            self._save_state_locked()

    def _save_state_locked(self) -> None:
        store = self.store
        if store is None or self._released:
            # (after close() released the identity lock, another agent may own the files: a
            # late write, e.g. by a worker finishing its batch, must not clobber them; close()
            # wrote everything that was unsealed)
            return
        dirty = self._dirty
        assert dirty is not None
        with self._lock:
            # every set-up counted in this revision has its session in this export: both
            # change under _lock (the binding settles a set-up inside unseal)
            revision = self.keypair.revision
            state = None
            if dirty or self._meta_dirty:
                for peer in dirty:
                    session = self._sessions.get(peer)
                    if session is None:
                        self._exports.pop(peer, None)
                    else:
                        self._exports[peer] = session.export_sealed()
                dirty.clear()
                self._meta_dirty = False
                state = PersistedState(
                    sessions=dict(self._exports),
                    pins=dict(self._pins),
                    bundles=dict(self._bundles),
                    delivered=dict(self._delivered),
                    signed_prekey_since=self._signed_prekey_since,
                    signed_prekey_id=self._signed_prekey_id,
                    inbound_only=list(self._inbound_only),
                )
        if state is not None:
            try:
                store.save_state(self.keypair, state)
            except BaseException:
                self._meta_dirty = True  # try again next time
                raise
        # The identity file forgets used one-time prekeys and remembers accepted set-ups
        # (replays stay refused). It is written only as of a revision whose sessions are all in
        # a state file on disk: the other way round, a crash in between would turn the
        # redelivered set-up into a "replay" and lose it. A set-up settled after the export
        # waits for the next save (the keypair refuses to write another revision).
        if revision != self._identity_revision and store.save_identity(self.keypair, revision):
            self._identity_revision = revision

    @property
    def identity_unsaved(self) -> bool:
        """Whether the identity file lags behind the keypair (see save_state)."""
        if self.store is None or self._released:
            return False
        return bool(self.keypair.revision != self._identity_revision)

    def new_prekeys(self, hub_holds: int, n: int) -> list[dict[str, Any]]:
        """``n`` new one-time prekeys for the hub, written to the identity file first (so that a
        restarted agent can still answer set-ups that use them).

        The hub hands out the lowest ids first, so of the keys held here all but the newest
        ``hub_holds`` were handed out already; of those, only the newest
        ``KEEP_HANDED_OUT_PREKEYS`` are kept for set-ups still to arrive (bounded memory and
        file size: a set-up that arrives later than that fails, and the peer starts anew)."""
        with self._save_lock:
            # first the sessions of every set-up settled so far: the identity file written
            # below no longer holds their one-time prekeys, and remembers their base keys
            self._save_state_locked()
            with self._lock:
                keypair = self.keypair
                ids = keypair.one_time_prekey_ids()
                handed_out = ids[: max(0, len(ids) - hub_holds)]
                stale = handed_out[: max(0, len(handed_out) - KEEP_HANDED_OUT_PREKEYS)]
                if stale:
                    keypair.forget_one_time_prekeys(stale)
                fresh: list[dict[str, Any]] = keypair.generate_one_time_prekeys(n)
            self._write_identity()
        return fresh

    def signed_prekey_due(self, max_age: float) -> bool:
        """Whether the signed prekey is older than ``max_age`` seconds, or has remembered so
        many set-ups that it would soon refuse new ones (MAX_SETUPS_PER_SIGNED_PREKEY)."""
        if self.keypair.setups_remembered >= _crypto.MAX_SETUPS_PER_SIGNED_PREKEY * 4 // 5:
            return True
        return _now_ms() - self._signed_prekey_since > max_age * 1000

    def rotate_signed_prekey(self) -> None:
        """Make a new signed prekey (the previous one keeps serving set-ups already in flight;
        the one before it is deleted, from memory and from the identity file). The identity
        file is written before the state and before anyone can see the new bundle, so a
        restarted agent can answer every set-up made with it."""
        with self._save_lock:
            self._save_state_locked()  # (as in new_prekeys)
            with self._lock:
                self.keypair.rotate_signed_prekey()
                self._signed_prekey_since = _now_ms()
                self._signed_prekey_id = int(self.keypair.public_bundle()["signed_prekey_id"])
                self._meta_dirty = True
            self._write_identity()
        self.save_state_quietly()

    def save_identity(self) -> None:
        """Rewrite the identity file (its prekeys changed). No-op without a store."""
        with self._save_lock:
            self._save_state_locked()
            self._write_identity()

    def _write_identity(self) -> None:
        # (the caller holds _save_lock and has saved the state; after close() released the
        # identity lock, another agent may own the file)
        if self.store is not None and not self._released:
            revision = self.keypair.revision  # (read first: a later change is written again)
            self.store.save_identity(self.keypair)
            self._identity_revision = revision

    def note_delivered(self, hub_id: bytes, delivery_id: int) -> None:
        """Remember, with the next state write, that every delivery up to ``delivery_id`` from
        the hub store ``hub_id`` was handled. A restarted agent hands this to its hub client, so
        a redelivery that a hub crash caused (the acknowledgement was not committed yet) is
        skipped silently rather than reported as a replay."""
        with self._lock:
            delivered = self._delivered
            delivered.pop(hub_id, None)  # most recently used last: the bound drops the oldest
            delivered[hub_id] = delivery_id
            while len(delivered) > MAX_DELIVERED_HUBS:
                del delivered[next(iter(delivered))]
            self._meta_dirty = True

    def delivered_positions(self) -> dict[bytes, int]:
        with self._lock:
            return dict(self._delivered)

    def save_state_quietly(self) -> None:
        try:
            self.save_state()
        except Exception:
            self.log.exception("agent %r: could not save its state", self.agent_id)

    # -- lifecycle ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        transport = self._transport
        if transport is not None:
            transport.flush(timeout)
        self.save_state()

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        if self.closed:
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
        hub = self.hub
        try:
            if hub is not None:
                hub.unregister(self)
        except Exception:
            self.log.exception("agent %r: error while leaving the hub", self.agent_id)
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

    def list_peers(self) -> list[str]:
        hub = self.hub
        if hub is None:
            return [p for p in self._bundles if p != self.agent_id]
        return [a for a in hub.list_agents() if a != self.agent_id]

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


# --------------------------------------------------------------------------------------------
# the sync face


class _AgentFacade:
    """What Agent and AsyncAgent expose identically: identity facts and the calls that never
    wait (both delegate to the same :class:`_AgentCore`)."""

    _core: _AgentCore

    @property
    def agent_id(self) -> str:
        return self._core.agent_id

    @property
    def fingerprint(self) -> str:
        """``xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx``: SHA-256 of the identity key, 16 bytes."""
        return self._core.fingerprint

    @property
    def public_bundle(self) -> dict[str, Any]:
        """The JSON-safe, self-certifying public bundle a peer needs to reach this agent."""
        return self._core.public_bundle

    @property
    def keypair(self) -> Any:
        """The agent's :class:`~agentmesh.crypto.AgentKeyPair` (secret: handle with care)."""
        return self._core.keypair

    @property
    def hub(self) -> Hub | None:
        return self._core.hub

    @property
    def log(self) -> logging.Logger:
        return self._core.log

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def deniable(self) -> bool:
        """True if this agent sets up deniable sessions (no per-message signature)."""
        return self._core.deniable

    def on_error(self, handler: H) -> H:
        """Register a handler called with the exception of every rejected envelope."""
        return self._core.add_error_handler(handler)

    def connect_with_bundle(self, bundle: dict[str, Any]) -> str:
        """Set up a session from a bundle handed over out of band; returns its fingerprint."""
        return self._core.connect_with_bundle(bundle)


class Agent(_AgentFacade):
    """An agent with an end-to-end encrypted identity (sync API).

    ``Agent(agent_id, hub=None, keypair_path=None, log_level=logging.WARNING, *,
    passphrase=None, keypair=None, deniable=False)``. See docs/agents.md.
    """

    def __init__(
        self,
        agent_id: str,
        hub: Hub | None = None,
        keypair_path: str | os.PathLike[str] | None = None,
        log_level: int = logging.WARNING,
        *,
        passphrase: str | bytes | None = None,
        keypair: Any = None,
        deniable: bool = False,
    ) -> None:
        self._core = _AgentCore(
            agent_id,
            keypair_path=keypair_path,
            passphrase=passphrase,
            keypair=keypair,
            log_level=log_level,
            owner=self,
            deniable=deniable,
        )
        if hub is not None:
            self._core.register_on(hub, self)

    # sending
    def send(self, recipient_id: str, /, text: str = "", **kwargs: Any) -> Any:
        """Send ``{"text": text, **kwargs}``; returns the sealed Envelope."""
        return self._core.send_payload(recipient_id, {"text": text, **kwargs})

    def send_payload(self, recipient_id: str, payload: dict[str, Any]) -> Any:
        """Send a payload dict as it is; ``TypeError`` (nothing sent) if it cannot be serialised."""
        return self._core.send_payload(recipient_id, payload)

    # handlers
    def on_message(self, handler: H) -> H:
        """Register a message handler (decorator or call); returns it unchanged."""
        return self._core.add_handler(handler)

    # sessions
    def connect(self, peer_id: str) -> str:
        """Pre-establish (or re-verify) a session; returns the peer's fingerprint."""
        return self._core.connect(peer_id)

    def trust_new_identity(self, peer_id: str, fingerprint: str) -> None:
        """Accept that ``peer_id`` now has the identity ``fingerprint`` (check it first!)."""
        self._core.trust_new_identity(peer_id, fingerprint)

    def receive(self, envelope: Any) -> Message | None:
        """Process an envelope handed over out of band (bytes or Envelope), like a hub would.

        Returns the Message after the handlers ran, or ``None`` if it was rejected (the error
        handlers got the exception).
        """
        return self._core.receive(envelope)

    # introspection
    def list_peers(self) -> list[str]:
        """Ids of the other agents on the hub (never this agent)."""
        return self._core.list_peers()

    def status(self) -> dict[str, Any]:
        return self._core.status()

    # lifecycle
    def flush(self, timeout: float | None = None) -> None:
        """Wait until the hub acknowledged every envelope sent so far (FlushTimeoutError)."""
        self._core.flush(timeout)

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Flush, save state, leave the hub. Idempotent."""
        self._core.close(timeout)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            try:
                self.close()
            except Exception:
                self._core.log.exception("agent %r: error while closing", self.agent_id)

    def __repr__(self) -> str:
        state = " closed" if self._core.closed else ""
        return f"<Agent {self.agent_id!r} {self.fingerprint}{state}>"


def __getattr__(name: str) -> Any:
    # (the asyncio face lives in agentmesh.async_agent; this import path keeps working)
    if name == "AsyncAgent":
        from .async_agent import AsyncAgent

        return AsyncAgent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
