"""Receiving: unsealing envelopes (alone or in batches, first contact included), bounding sessions
unknown agents open, reporting rejections (what a refused envelope may still be is
``agent_recovery.py``).

A part of the agent core (:class:`agentmesh.agent_core._AgentCore`), which combines the rooms; its
methods run on the core and share its state."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from . import crypto as _crypto
from .agent_group_state import GROUP_CONTROL_TYPE
from .agent_rules import (
    MAX_INBOUND_ONLY_SESSIONS,
    UNSEAL_MANY_MAX,
    UNSEAL_MANY_MIN,
)
from .agent_state import AgentCoreState
from .errors import (
    CryptoError,
    FormatError,
    ReplayError,
    UnknownSenderError,
)
from .message import Message, new_message

Envelope = _crypto.Envelope
perform_key_exchange = _crypto.perform_key_exchange


class _Holding(threading.local):
    """``on`` while receive_batch(dispatch=False) runs in this thread: what it unseals is held
    (not saved) until ``handled_from`` says its handlers ran. (A class default, so reading it
    on every message is a plain attribute read.)"""

    on = False


_holding = _Holding()


class Rejected:
    """An envelope ``receive_batch(dispatch=False)`` refused: the error, and the envelope (or
    its bytes), for the caller to report in its place (``reject``)."""

    __slots__ = ("envelope", "error")

    def __init__(self, error: BaseException, envelope: Any) -> None:
        self.error = error
        self.envelope = envelope


def group_by_sender(
    envelopes: list[Any],
) -> tuple[list[Any], list[Any], dict[str, list[int]]]:
    """A batch parsed (``items``), with an error in ``outcomes`` for each envelope that does
    not parse (None elsewhere), and the indexes of each sender's envelopes, in order."""
    outcomes: list[Any] = [None] * len(envelopes)  # Message or the exception that rejected it
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
    return items, outcomes, runs


class _Receiving(AgentCoreState):
    """Receiving (see the module)."""

    def receive(self, envelope: Any) -> Message | None:
        """Unseal, then dispatch; a rejection goes to the error handlers. Returns the message."""
        return self.receive_pairwise(envelope)

    def receive_pairwise(self, envelope: Any) -> Message | None:
        """:meth:`receive` for an envelope known not to be a group message (the in-process
        hub's path: rooms that handle other kinds of envelope override ``receive`` only)."""
        try:
            if type(envelope) is not Envelope:
                envelope = _crypto.as_envelope(envelope)
            msg = self.accept(envelope)
        except CryptoError as exc:
            self.reject(exc, envelope)
            return None
        if msg._meta is None and msg.payload.get("type") != GROUP_CONTROL_TYPE:
            self._user_dispatch(msg)  # (the common case: no reply, no group control message)
        else:
            self.hand_over(msg)
        return msg

    def receive_batch(
        self, envelopes: list[Any], dispatch: bool = True
    ) -> list[Message | Rejected | None]:
        """:meth:`receive` for many envelopes (Envelopes or bytes) delivered together.

        Each sender's envelopes are unsealed together, in order (``unseal_many``: one Ed25519
        batch verification in signed mode); first contact with an unknown sender goes through the
        same path as :meth:`receive`. Then the handlers (or, for a rejection, the error
        handlers) run for each envelope in the order given. Returns what :meth:`receive` would
        have returned for each envelope. With ``dispatch=False`` neither the handlers nor the
        error handlers run: the caller hands the messages over, and reports each
        :class:`Rejected` in its place, itself.
        """
        if not dispatch:
            holders = self._holders
            holders.append(None)  # (accept reads the thread-local only while some batch holds)
            _holding.on = True
            try:
                return self._receive_batch(envelopes, dispatch)
            finally:
                _holding.on = False
                holders.pop()
        return self._receive_batch(envelopes, dispatch)

    def _receive_batch(
        self, envelopes: list[Any], dispatch: bool
    ) -> list[Message | Rejected | None]:
        n = len(envelopes)
        if n == 1:  # the latency path: nothing to group
            item = envelopes[0]
            try:
                if type(item) is not Envelope:
                    item = _crypto.as_envelope(item)
                msg = self.accept(item)
            except Exception as exc:  # a CryptoError, or a hub lookup failing on first contact
                if not dispatch:
                    return [Rejected(exc, item)]
                self.reject(exc, item)
                return [None]
            if dispatch:
                self.hand_over(msg)
            return [msg]
        items, outcomes, runs = group_by_sender(envelopes)
        if len(runs) == 1 and len(next(iter(runs.values()))) == n:
            # (the usual batch: every envelope from one sender)
            outcomes = self._accept_run(next(iter(runs)), items)
        else:
            for sender, indexes in runs.items():
                results = self._accept_run(sender, [items[i] for i in indexes])
                for index, result in zip(indexes, results, strict=True):
                    outcomes[index] = result
        return self.batch_outcomes(items, outcomes, dispatch)

    def batch_outcomes(
        self, items: list[Any], outcomes: list[Any], dispatch: bool
    ) -> list[Message | Rejected | None]:
        """``receive_batch``'s result from each envelope's Message or error (with
        ``dispatch``, the handlers or error handlers run here)."""
        out: list[Message | Rejected | None] = []
        for item, outcome in zip(items, outcomes, strict=True):
            if type(outcome) is Message:
                if dispatch:
                    self.hand_over(outcome)
                out.append(outcome)
            elif dispatch:
                self.reject(outcome, item)
                out.append(None)
            else:
                out.append(Rejected(outcome, item))
        return out

    def _accept_run(self, sender: str, envs: list[Any]) -> list[Any]:
        """Unseal one sender's envelopes in order; each result is a Message or an exception."""
        results, rest = self.open_first_contact(sender, envs)
        if not rest:
            return results
        session = self._sessions.get(sender)
        if session is None or len(rest) < UNSEAL_MANY_MIN or session.deniable:
            # nothing to batch-verify: one call per envelope is as fast (and holds the lock
            # for less time)
            accept = self.accept
            for env in rest:
                try:
                    results.append(accept(env))
                except Exception as exc:  # a CryptoError, or a hub lookup failing
                    results.append(exc)
            return results
        for chunk_start in range(0, len(rest), UNSEAL_MANY_MAX):
            chunk = rest[chunk_start : chunk_start + UNSEAL_MANY_MAX]
            with self._lock:
                # (a handler may have replaced the session meanwhile: trust_new_identity)
                current = self._sessions.get(sender)
                opened = current.unseal_many(chunk) if current is not None else None
                if opened is not None:
                    self.count_opened(sender, opened)
            if opened is None:
                results.extend(self._accept_or_error(env) for env in chunk)
                continue
            results.extend(self.results_of(sender, chunk, opened, current))
        if self._dirty is not None and self._autosave:
            self._maybe_autosave()
        return results

    def open_first_contact(self, sender: str, envs: list[Any]) -> tuple[list[Any], list[Any]]:
        """First contact (or a sender whose first envelopes were rejected): one at a time
        until a session exists, exactly like receive(). Returns their results and the rest."""
        results: list[Any] = []
        start = 0
        while start < len(envs) and self._sessions.get(sender) is None:
            results.append(self._accept_or_error(envs[start]))
            start += 1
        return results, (envs[start:] if start else envs)

    def count_opened(self, sender: str, opened: list[Any]) -> None:
        """The bookkeeping of ``unseal_many`` results from ``sender``'s session (the caller
        holds ``_lock``, taken before the unseal: a save between the two would store the
        session's advance without holding back the messages whose handlers have not run)."""
        count = sum(1 for payload in opened if type(payload) is dict)
        self.received += count
        if _holding.on:
            self._unhandled[sender] += count
        if self._dirty is not None:
            self._dirty.add(sender)
        if self._inbound_only and sender in self._inbound_only:
            self._inbound_only.move_to_end(sender)
            self._inbound_last = sender

    def results_of(
        self, sender: str, envs: list[Any], opened: list[Any], session: Any
    ) -> list[Any]:
        """What ``unseal_many`` results come to (``_lock`` released): a Message per opened
        payload, else the error, or what recovery makes of it (``agent_recovery.py``)."""
        me = self.agent_id
        results: list[Any] = []
        for env, payload in zip(envs, opened, strict=True):
            if type(payload) is dict:
                results.append(new_message(sender, me, payload, env, self))
            elif isinstance(payload, ReplayError):
                results.append(payload)
            elif isinstance(payload, CryptoError):
                results.append(self._recover(env, sender, payload, session))
            elif isinstance(payload, BaseException):
                results.append(payload)
            else:  # pragma: no cover - the binding returns a dict or an exception
                results.append(FormatError(f"unexpected unseal result {type(payload)}"))
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
            if self._retired and sender in self._retired:
                # (a sender that has not heard back yet still sends set-ups on its session: so
                # a set-up is tried on the retired session too, before as a new first contact)
                opened = self._open_retired(env, sender)
                if not isinstance(opened, BaseException):
                    return opened
                if not env.is_prekey:
                    raise opened
            return self._accept_first(env, sender)
        dirty = self._dirty
        try:
            with self._lock:
                payload = session.unseal(env)
                self.received += 1
                if self._holders and _holding.on:
                    self._unhandled[sender] += 1
                if dirty is not None:
                    dirty.add(sender)
                inbound = self._inbound_only
                if inbound and sender != self._inbound_last and sender in inbound:
                    inbound.move_to_end(sender)  # (least recently heard goes first)
                    self._inbound_last = sender
        except ReplayError:
            raise
        except CryptoError as exc:
            outcome = self._recover(env, sender, exc, session)
            if isinstance(outcome, BaseException):
                raise outcome from None
            return outcome
        if dirty is not None and self._autosave:
            self._maybe_autosave()
        return new_message(sender, self.agent_id, payload, env, self)

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
                try:
                    payload = session.unseal(env)
                except CryptoError:
                    opened = self._open_for_retired_identity(env, sender, bundle)
                    if opened is None:
                        raise
                    return opened
                self._commit_session(sender, session, bundle)
                self._note_inbound_only(sender)
            self.received += 1
            if _holding.on:
                self._unhandled[sender] += 1
        self.save_state_quietly()
        return new_message(sender, self.agent_id, payload, env, self)

    def handled_from(self, sender: str, count: int = 1) -> None:
        """``count`` messages of ``sender`` unsealed with ``receive_batch(dispatch=False)``
        have been handled: their session may be saved again. Until then a save keeps the
        session's previous state on disk: a crash before the handlers ran must leave those
        messages readable when the hub delivers them again (saved, they would be replays)."""
        with self._lock:
            left = self._unhandled[sender] - count
            if left > 0:
                self._unhandled[sender] = left
            else:
                del self._unhandled[sender]

    def _note_inbound_only(self, sender: str) -> None:
        """Bound the sessions that other agents opened and this one never answered: any agent
        on the hub can open one, so the one heard from least recently is forgotten past
        MAX_INBOUND_ONLY_SESSIONS (a replay of its set-up stays refused: the identity
        remembers accepted set-ups; so are that peer's further messages on it, until its agent
        starts a new set-up). The caller holds ``_lock``."""
        inbound = self._inbound_only
        inbound[sender] = None
        self._inbound_last = None
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
        self.report(exc)

    def report(self, exc: BaseException) -> None:
        """Tell every error handler (or the log, when there is none)."""
        if not self._error_handlers:
            self.log.warning("agent %r: %s: %s", self.agent_id, type(exc).__name__, exc)
            return
        for handler in self._error_handlers:
            try:
                handler(exc)
            except Exception:
                self.log.exception("agent %r: error handler raised", self.agent_id)
