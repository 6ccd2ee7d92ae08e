"""The sync face of an agent, :class:`Agent` (the asyncio face, :class:`AsyncAgent`, is in
``async_agent.py``; the :class:`Message` in ``message.py``).

``Agent`` is a thin driver over the one implementation both faces share, the core
(:class:`~agentmesh.agent_core._AgentCore`, ``agent_core.py``): each call here waits in the
caller's thread for what the core does. What both faces share beyond the core is in
``agent_facade.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from . import crypto as _crypto
from .agent_core import H, _AgentCore
from .agent_facade import _AgentFacade, _hub_of, _stop_on_sigterm
from .agent_requests import DEFAULT_REQUEST_TIMEOUT, check_no_meta
from .agent_rules import (  # noqa: F401 (the bounds keep their old import path)
    AUTOSAVE_INTERVAL,
    CLOSE_TIMEOUT,
    KEEP_HANDED_OUT_PREKEYS,
    MAX_AGENT_ID_BYTES,
    MAX_DELIVERED_HUBS,
    MAX_ENVELOPE_BYTES,
    MAX_INBOUND_ONLY_SESSIONS,
    SESSION_RECHECK_S,
    UNSEAL_MANY_MAX,
    UNSEAL_MANY_MIN,
    validate_agent_id,
)
from .groups import Group
from .message import META_KEY, Message, _message_from_bytes  # noqa: F401 (old pickles name it here)

if TYPE_CHECKING:  # pragma: no cover
    from .hubs import Hub

__all__ = ["Agent", "Message", "validate_agent_id"]  # (and AsyncAgent: see __getattr__)

# (names this module has always offered)
Envelope = _crypto.Envelope
AgentKeyPair = _crypto.AgentKeyPair
CryptoSession = _crypto.CryptoSession
perform_key_exchange = _crypto.perform_key_exchange
verify_bundle = _crypto.verify_bundle

class Agent(_AgentFacade):
    """An agent with an end-to-end encrypted identity (sync API).

    ``Agent(agent_id, hub=None, keypair_path=None, log_level=logging.WARNING, *,
    passphrase=None, keypair=None, deniable=False)``. See docs/agents.md.
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
        deniable: bool = False,
    ) -> None:
        resolved = _hub_of(hub)  # (a bad address fails before the identity is opened)
        self._core = _AgentCore(
            agent_id,
            keypair_path=keypair_path,
            passphrase=passphrase,
            keypair=keypair,
            log_level=log_level,
            owner=self,
            deniable=deniable,
        )
        if resolved is not None:
            self._core.register_on(resolved, self, owned=resolved is not hub)

    # sending
    def send(self, recipient_id: str, /, text: str = "", **kwargs: Any) -> Any:
        """Send ``{"text": text, **kwargs}``; returns the sealed Envelope."""
        if kwargs:
            check_no_meta(kwargs)
            return self._core.send_payload(recipient_id, {"text": text, **kwargs})
        return self._core.send_payload(recipient_id, {"text": text})

    def send_payload(
        self, recipient_id: str, payload: dict[str, Any], *, ttl: float | None = None
    ) -> Any:
        """Send a payload dict as it is; ``TypeError`` (nothing sent) if it cannot be serialised.
        ``ttl``: seconds within which it must be handled, or not at all (the recipient drops
        a late one and reports ``MessageExpiredError``; the expiry is under the signature)."""
        if type(payload) is dict and ttl is None and META_KEY not in payload:
            return self._core.send_payload(recipient_id, payload)  # (the common case)
        if isinstance(payload, dict):
            check_no_meta(payload)
            if ttl is not None:
                return self._core.send_expiring(recipient_id, payload, ttl)
        return self._core.send_payload(recipient_id, payload)

    # handlers
    def request(
        self,
        recipient_id: str,
        /,
        text: str = "",
        timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        **kwargs: Any,
    ) -> Message:
        """Send a request and wait for the reply (``msg.reply(...)`` at the peer); returns the
        reply :class:`Message`. Every keyword beyond ``text`` and ``timeout`` lands in the
        payload. ``ReplyTimeoutError`` (a ``TimeoutError``) when no reply comes within
        ``timeout`` seconds; ``RemoteError`` when the peer answers with ``reply_error``. Any
        thread may wait, many requests at once; a handler may wait too."""
        return self.request_payload(recipient_id, {"text": text, **kwargs}, timeout=timeout)

    def request_payload(
        self,
        recipient_id: str,
        payload: dict[str, Any],
        timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> Message:
        """:meth:`request` with a whole payload dict."""
        return self._core.request_payload(recipient_id, payload, timeout)

    # groups
    def create_group(self, group_id: str, members: Any = ()) -> Group:
        """Create group ``group_id`` with this agent as its creator (administrator) and
        ``members``; each member is told over its pairwise session."""
        self._core.create_group(group_id, members)
        return Group(self._core, group_id)

    def group(self, group_id: str) -> Group:
        """A group this agent is a member of (``ValueError`` otherwise)."""
        self._core.group_members(group_id)
        return Group(self._core, group_id)

    def groups(self) -> list[Group]:
        """Every group this agent is a member of, by id."""
        return [Group(self._core, g) for g in self._core.groups()]

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

    def rotate_identity(self) -> str:
        """Move to a new identity key, signed over by the current one (peers follow without
        the identity-changed error); returns the new fingerprint."""
        return self._core.rotate_identity()

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

    def wait_for_peer(self, peer_id: str, timeout: float | None = 30.0) -> None:
        """Return once ``peer_id`` is online on the hub (registered and connected);
        ``TimeoutError`` naming it after ``timeout`` seconds. For a coordinator that must not
        start before its workers are up."""
        self._core.wait_for_peer(peer_id, timeout)

    def run_forever(self, timeout: float | None = None) -> None:
        """Serve: block while the handlers answer what comes, until the agent is closed (by a
        handler or another thread), ``timeout`` seconds pass, Ctrl-C, or SIGTERM (when called
        from the main thread); then close the agent and return."""
        core = self._core
        stop = threading.Event()
        restore = _stop_on_sigterm(stop)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not core.closed and not stop.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                # (short waits: Ctrl-C reaches the main thread only between them)
                stop.wait(0.2 if left is None else min(0.2, left))
        except KeyboardInterrupt:
            pass
        finally:
            restore()
        self.close()

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
