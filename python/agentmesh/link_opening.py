"""The unseal stage's work on one agent's batch of deliveries (or on several agents' batches
at once): what each envelope comes to.

An envelope delivered again (a resend after a hub crash, a redelivery) is recognised by its
envelope id among those accepted lately and acknowledged silently; the others are unsealed
together (``_AgentCore.receive_batch`` without dispatch: the handlers run later, in the handle
stage of :mod:`agentmesh.link_receiver`); replies a ``request()`` waits for are taken off here.
A new sender whose lookup failed must come again (:class:`Retry`), never be rejected.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import crypto as _crypto
from .agent_receiving import Rejected
from .agent_receiving_together import receive_batches_together
from .errors import HubError
from .message import Message

if TYPE_CHECKING:
    from .agent_core import _AgentCore
    from .link_receiver import _Item

__all__ = [
    "RECENT_IDS",
    "Opening",
    "Outcome",
    "RecentIds",
    "Retry",
    "datas_of",
    "open_deliveries",
    "open_together",
]

Envelope = _crypto.Envelope
log = logging.getLogger("agentmesh.link")

#: How many accepted envelope ids an agent remembers to recognise redeliveries.
RECENT_IDS = 4096


class RecentIds:
    """Envelope ids accepted lately: the last :data:`RECENT_IDS` at least, in two generations
    (the older is dropped when the newer fills), so each id costs one set insertion."""

    __slots__ = ("newer", "older")

    def __init__(self) -> None:
        self.newer: set[str] = set()
        self.older: set[str] = set()

    def __contains__(self, envelope_id: object) -> bool:
        return envelope_id in self.newer or envelope_id in self.older

    def __len__(self) -> int:
        return len(self.newer) + len(self.older)

    def add_all(self, envelope_ids: list[str]) -> None:
        newer = self.newer
        newer.update(envelope_ids)
        if len(newer) >= RECENT_IDS:
            self.older, self.newer = newer, set()


class Retry:
    """An envelope that could not be read now, and must come again: the hub lookup of a new
    sender failed (the hub unreachable, a cluster electing a leader), or reading the batch
    failed unexpectedly. Its batch is not acknowledged, so the backend delivers it again (on
    its next connection); rejecting it would lose it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


# Per delivery of a batch: the Message for the handlers, the rejection to report in its
# place, an envelope that must come again, or True (handled here or before: a reply, a
# redelivery).
Outcome = Message | Rejected | Retry | bool


class Opening:
    """One agent's batch on its way through the unseal stage: parsed, redeliveries set aside,
    the rest (``todo``) to unseal (made while the agent's ``between_batches`` lock is held)."""

    __slots__ = ("core", "ids", "keys_before", "outcomes", "recent", "setups", "todo", "where")

    def __init__(self, core: _AgentCore, recent: RecentIds, datas: list[bytes]) -> None:
        self.core = core
        self.recent = recent
        todo: list[Any] = []
        ids: list[str | None] = []
        where: list[int] = []  # index in datas of each todo item
        self.outcomes: list[Outcome] = [True] * len(datas)
        seen: set[str] = set()
        newer, older = recent.newer, recent.older
        # a set-up (prekey message) may use one of this agent's one-time prekeys: look only then
        setups = False
        for index, data in enumerate(datas):
            try:
                env = Envelope.from_bytes(data)
            except Exception:
                todo.append(data)  # rejected, in its place, by receive_batch
                ids.append(None)
                where.append(index)
                continue
            try:
                envelope_id = env.id
            except Exception:
                envelope_id = None
            if envelope_id is not None:
                if envelope_id in newer or envelope_id in older or envelope_id in seen:
                    # delivered again (e.g. a resend after a hub crash): already handled, so
                    # acknowledge it silently instead of reporting a replay
                    log.debug(
                        "agent %r: duplicate delivery of %s ignored", core.agent_id, envelope_id
                    )
                    continue
                seen.add(envelope_id)
            if env.is_prekey:
                setups = True
            todo.append(env)
            ids.append(envelope_id)
            where.append(index)
        self.todo, self.ids, self.where, self.setups = todo, ids, where, setups
        self.keys_before = len(core.keypair.one_time_prekey_ids()) if setups else 0

    def prekeys_used(self) -> bool:
        """Whether a set-up of the batch used one of this agent's one-time prekeys (asked
        while ``between_batches`` is held: new prekeys are made only between batches)."""
        if not self.setups:
            return False
        return len(self.core.keypair.one_time_prekey_ids()) != self.keys_before

    def finish(self, results: list[Any]) -> list[Outcome]:
        """The outcomes, from what ``receive_batch(todo, dispatch=False)`` returned (taking
        replies off may run error handlers and interceptors)."""
        core = self.core
        outcomes = self.outcomes
        accepted: list[str] = []
        for envelope_id, msg, index in zip(self.ids, results, self.where, strict=True):
            if not isinstance(msg, Message):
                if isinstance(msg, Rejected) and isinstance(msg.error, HubError):
                    log.warning(
                        "agent %r: could not look up a new sender now (%s); its envelope stays "
                        "unacknowledged and comes again",
                        core.agent_id,
                        msg.error,
                    )
                    outcomes[index] = Retry(msg.error)
                    continue
                outcomes[index] = msg if msg is not None else False
                continue
            if envelope_id is not None:
                accepted.append(envelope_id)
            if msg._meta is not None and core.take_reply(msg):
                core.handled_from(msg.sender)  # (a reply, or a message of an intercepted kind)
            else:
                outcomes[index] = msg
        self.recent.add_all(accepted)
        return outcomes

    def alone(self) -> tuple[list[Outcome], bool]:
        """The batch unsealed on its own (the agent's ``receive_batch``): the outcomes, and
        whether a set-up used one of this agent's one-time prekeys."""
        if not self.todo:
            return self.outcomes, False
        results = self.core.receive_batch(self.todo, dispatch=False)
        return self.finish(results), self.prekeys_used()

    def joins(self) -> bool:
        """Whether the batch may be unsealed together with other agents' batches: envelopes
        to unseal, all parsed, all from senders with a session (a first contact looks its
        sender up at the hub, which must not hold up the other agents of a pass)."""
        sessions = self.core._sessions
        return bool(self.todo) and all(
            type(env) is Envelope and env.sender in sessions for env in self.todo
        )


def datas_of(items: list[_Item]) -> list[bytes]:
    """The envelopes of an unseal stage's batches (``Receiver``'s items), in order."""
    return [data for batch, _hub, _unsealed, _acked in items for _did, data in batch]


def open_deliveries(
    core: _AgentCore, recent: RecentIds, datas: list[bytes]
) -> tuple[list[Outcome], bool]:
    """Unseal delivered envelopes, in order, skipping redeliveries (by envelope id) and
    taking replies (and intercepted kinds) off. Returns an outcome per envelope, and
    whether a set-up used one of this agent's one-time prekeys."""
    return Opening(core, recent, datas).alone()


def open_together(openings: list[Opening]) -> list[list[Any] | BaseException]:
    """The unseal of several agents' batches that :meth:`~Opening.joins` (each agent at most
    once), their signed messages in one native call
    (:mod:`agentmesh.agent_receiving_together`). Returns, per batch, what
    :meth:`Opening.finish` makes outcomes of, or the exception that failed that agent's part
    (its batch must come again)."""
    return receive_batches_together([(opening.core, opening.todo) for opening in openings])
