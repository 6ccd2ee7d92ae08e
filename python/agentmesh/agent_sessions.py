"""Sending and first contact: sealing for a peer, setting up sessions from claimed bundles,
connecting ahead of time.

A part of the agent core (:class:`agentmesh.agent_core._AgentCore`), which combines the rooms; its
methods run on the core and share its state."""

from __future__ import annotations

from typing import Any

from . import crypto as _crypto
from .agent_rules import (
    SESSION_RECHECK_S,
    _fingerprint_of_key,
    _public_bundle_copy,
    _recheck_clock,
    validate_agent_id,
)
from .agent_state import AgentCoreState

perform_key_exchange = _crypto.perform_key_exchange
verify_bundle = _crypto.verify_bundle


class _Sessions(AgentCoreState):
    """Sending and first contact (see the module)."""

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
        if _recheck_clock() >= self._next_recheck:
            self._mark_sessions_for_recheck()
        if self._pending_identity or self._unverified:
            self._verify_before_send(peer_id)
            session = self._sessions.get(peer_id)
            if session is None:  # the peer moved to a new identity key (succession)
                return self._seal_first(peer_id, payload)
        dirty = self._dirty
        with self._lock:
            env = session.seal(payload)  # (TypeError, nothing sealed, unless a dict)
            self.sent += 1
            if dirty is not None:
                # (under the lock save_state holds while it exports and clears the marks)
                dirty.add(peer_id)
            if self._inbound_only and peer_id in self._inbound_only:
                del self._inbound_only[peer_id]  # answered: no longer an unknown sender's
        if dirty is not None and self._autosave:
            self._maybe_autosave()
        return env

    def _mark_sessions_for_recheck(self) -> None:
        """Have the next send to every peer with a live session look its bundle up again (at
        most once per SESSION_RECHECK_S): a peer that rotated its identity key is followed and
        a new session set up, even by a sender that never hears back from it (whose retired
        session would otherwise be refused once the peer's grace period ends)."""
        with self._lock:
            self._next_recheck = _recheck_clock() + SESSION_RECHECK_S
            self._unverified.update(self._sessions)

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
                    if peer_id in self._sessions:
                        return str(_crypto.fingerprint_of(bundle))
                    # (the peer moved to a new identity key: set up a session with it)
            if peer_id in self._sessions:
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
