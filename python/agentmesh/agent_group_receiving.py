"""Groups, receiving: group messages told from pairwise envelopes, opened in arrival order,
and the early ones (their membership record or sender key is still on the way) held back in
memory, bounded, until what explains them arrives.

A room of the agent core (see ``agent_group_state.py``).
"""

from __future__ import annotations

import collections
from typing import Any

from . import crypto as _crypto
from .agent_group_state import (
    GROUP_CONTROL_TYPE,
    MAX_HELD_BYTES,
    MAX_PENDING_GROUPS,
    MAX_PENDING_PER_UNKNOWN_GROUP,
    GroupRecord,
    GroupState,
    _Effects,
)
from .agent_receiving import Rejected
from .errors import AuthenticationError, CryptoError
from .message import META_KEY, Message, new_message

Envelope = _crypto.Envelope
GroupEnvelope = _crypto.GroupEnvelope
_PAIRWISE_ONLY = {Envelope}


def _is_group_envelope(item: Any) -> bool:
    kind = type(item)
    if kind is Envelope:
        return False
    if kind is GroupEnvelope:
        return True
    if isinstance(item, bytes):
        return bool(GroupEnvelope.is_group_message(item))
    if isinstance(item, (bytearray, memoryview)):
        return bool(GroupEnvelope.is_group_message(bytes(item)))
    return False



class _GroupReceiving(GroupState):
    """Opening group messages (see the module)."""

    def receive(self, envelope: Any) -> Message | None:
        if type(envelope) is Envelope:  # (parsed: pairwise)
            return self.receive_pairwise(envelope)  # type: ignore[attr-defined, no-any-return]
        if _is_group_envelope(envelope):
            return self._receive_group(envelope)
        return super().receive(envelope)  # type: ignore[misc, no-any-return]

    def receive_batch(
        self, envelopes: list[Any], dispatch: bool = True
    ) -> list[Message | Rejected | None]:
        """The receiving room's ``receive_batch``, with group messages opened here. With
        ``dispatch=False`` (the network receive path, which runs the handlers later) a group
        message counts as unhandled like a pairwise one, so no group state is saved past it
        before its handlers ran (``_group_exports``)."""
        if {*map(type, envelopes)} == _PAIRWISE_ONLY:  # (the usual batch: parsed, pairwise)
            return super().receive_batch(envelopes, dispatch)  # type: ignore[misc, no-any-return]
        kinds = [_is_group_envelope(e) for e in envelopes]
        if not any(kinds):
            return super().receive_batch(envelopes, dispatch)  # type: ignore[misc, no-any-return]
        # in runs, in order (the handlers of one run before the next run is opened)
        out: list[Message | Rejected | None] = []
        start = 0
        n = len(envelopes)
        while start < n:
            end = start
            while end < n and kinds[end] == kinds[start]:
                end += 1
            run = envelopes[start:end]
            if not kinds[start]:
                out.extend(super().receive_batch(run, dispatch))  # type: ignore[misc]
            elif dispatch:
                out.extend(self._receive_group(e) for e in run)
            else:
                out.extend(self._open_held(e) for e in run)
            start = end
        return out

    def _receive_group(self, item: Any) -> Message | None:
        """Open one group message and run the handlers (None: refused, or held back until its
        membership record or sender key arrives)."""
        effects = _Effects()
        with self._group_lock:
            outcome = self._open_group(item, effects)
        if isinstance(outcome, Rejected):
            self.reject(outcome.error, outcome.envelope)
        self._run_effects(effects)
        return outcome if isinstance(outcome, Message) else None

    def _open_held(self, item: Any) -> Message | Rejected | None:
        """Open one group message whose handlers run later (``receive_batch(dispatch=False)``)."""
        effects = _Effects()
        with self._group_lock:
            outcome = self._open_group(item, effects, dispatch=False)
            if isinstance(outcome, Message):
                with self._lock:
                    self._unhandled[outcome.sender] += 1  # (handled_from counts it down)
        self._run_effects(effects)
        return outcome

    def _open_group(
        self, item: Any, effects: _Effects, dispatch: bool = True
    ) -> Message | Rejected | None:
        """(The caller holds _group_lock.) The message if it opened (with ``dispatch``, also
        queued in ``effects`` for the handlers), a rejection, or None: held back."""
        env = item
        try:
            if type(env) is not GroupEnvelope:
                env = GroupEnvelope.from_bytes(bytes(item))
            group = self._groups.get(env.group)
            if (
                group is None
                or env.sender not in group.members
                or not group.session.knows_chain(env.sender, env.chain_id)
            ):
                # early: its membership record or its sender key is still on the way
                if len(env.to_bytes()) > MAX_HELD_BYTES:
                    raise AuthenticationError(
                        f"group message from {env.sender!r} on a chain this member does not "
                        f"hold, too large ({MAX_HELD_BYTES} bytes at most) to wait for its key"
                    )
                self._hold(env.group, group, ("msg", env))
                return None
            payload = group.session.open(env)
            self.received += 1
            self._touch(env.group)
        except CryptoError as exc:
            return Rejected(exc, env)
        if payload.get("type") == GROUP_CONTROL_TYPE or META_KEY in payload:
            error = AuthenticationError(
                "a group message may not carry a control payload or agentmesh's own fields"
            )
            return Rejected(error, env)
        msg = new_message(env.sender, self.agent_id, payload, env, self, {}, env.group)
        if dispatch:
            effects.messages.append(msg)
        return msg


    def _hold(self, group_id: str, group: GroupRecord | None, item: tuple[Any, ...]) -> None:
        if group is not None:
            group.pending.append(item)
            return
        pending = self._pending_groups
        queue = pending.get(group_id)
        if queue is None:
            queue = pending[group_id] = collections.deque(maxlen=MAX_PENDING_PER_UNKNOWN_GROUP)
            while len(pending) > MAX_PENDING_GROUPS:
                pending.popitem(last=False)
        queue.append(item)

    def _retry_pending(self, group_id: str, group: GroupRecord, effects: _Effects) -> None:
        if not group.pending:
            return
        items = list(group.pending)
        group.pending.clear()
        for item in items:
            if item[0] == "key":
                self._on_sender_key(item[1], group_id, item[2], effects)
            else:
                outcome = self._open_group(item[1], effects)
                if isinstance(outcome, Rejected):
                    effects.rejections.append(outcome)

