"""Recovering refused envelopes: what a session refused may still be a message for the session
that replaced it, one sealed before a succession (opened by the retired session), a set-up for
this agent's previous identity key (before its rotation), or a set-up by a peer that moved to a
new identity key; else the refusal, explained (an identity change rather than a bare signature
error).

A part of the agent core (:class:`agentmesh.agent_core._AgentCore`), which combines the rooms; its
methods run on the core and share its state."""

from __future__ import annotations

from typing import Any

from . import crypto as _crypto
from .agent_receiving import _holding
from .agent_rules import RETIRED_GRACE_MS, _now_ms
from .agent_state import AgentCoreState
from .errors import CryptoError, IdentityChangedError, UnknownSenderError
from .message import Message, new_message

__all__ = ["_Recovery"]


class _Recovery(AgentCoreState):
    def _recover(
        self, env: Any, sender: str, exc: CryptoError, refused_by: Any
    ) -> Message | BaseException:
        """An envelope the sender's session ``refused_by`` refused: one for the session that
        replaced it meanwhile (an earlier envelope of the batch made it), a message sealed
        before a succession (opened by the retired session), a set-up by a peer that moved to
        a new identity key with statements signed by the pinned one (followed, then accepted
        like a first contact), or else the refusal, explained (:meth:`_explain_rejection`)."""
        current = self._sessions.get(sender)
        if current is not None and current is not refused_by:
            try:
                return self.accept(env)
            except Exception as again:
                return again
        if not env.is_prekey:
            if self._retired and sender in self._retired:
                return self._open_retired(env, sender)
            return exc
        explained = self._explain_rejection(env, sender, exc)
        if explained is exc and sender not in self._sessions:
            # (the bundle check followed a succession and retired the session)
            try:
                return self._accept_first(env, sender)
            except Exception as again:
                return again
        if explained is exc and self._retired_keypair is not None:
            bundle = self._bundles.get(sender)
            if bundle is not None:
                with self._lock:
                    opened = self._open_for_retired_identity(env, sender, bundle)
                if opened is not None:
                    return opened
        return explained

    def _open_for_retired_identity(
        self, env: Any, sender: str, bundle: dict[str, Any]
    ) -> Message | None:
        """A set-up sealed for this agent's previous identity key (before its rotation): a
        session of the retired identity opens it and, retired, what follows on it. None when
        it does not open. The caller holds ``_lock`` and has checked ``bundle``."""
        old = self._retired_keypair
        if old is None:
            return None
        try:
            session = _crypto.perform_key_exchange(old, bundle, self.deniable)
            payload = session.unseal(env)
        except CryptoError:
            return None
        self._retired[sender] = session
        self._retired_until = max(self._retired_until, _now_ms() + RETIRED_GRACE_MS)
        self.received += 1
        if _holding.on:
            self._unhandled[sender] += 1
        self._meta_dirty = True
        return new_message(sender, self.agent_id, payload, env, self)

    def _open_retired(self, env: Any, sender: str) -> Message | CryptoError:
        """Open ``env`` with the session a succession retired (the refusal otherwise); the
        retired session is written with the next state write, for its grace period."""
        with self._lock:
            retired = self._retired.get(sender)
            if retired is None:
                return UnknownSenderError(f"no session with {sender!r} opens this envelope")
            try:
                payload = retired.unseal(env)
            except CryptoError as exc:
                return exc
            self.received += 1
            if _holding.on:  # (counted like any other, so handled_from stays balanced)
                self._unhandled[sender] += 1
            self._meta_dirty = True  # (its export is written before the acknowledgement)
        return new_message(sender, self.agent_id, payload, env, self)

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
