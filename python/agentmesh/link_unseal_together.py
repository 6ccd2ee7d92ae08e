"""Several agents' unseal stages in one pass.

A process hosting hundreds of agents receives a few messages per agent at a time: unsealed
agent by agent, each small batch paid for its own pass through the unseal stage, its own native
call and its own Ed25519 batch verification, whose fixed cost a few signatures barely spread.
When several agents' unseal stages wait on the pool, a worker takes them together (up to
:data:`agentmesh.link_receive_pool.MAX_TOGETHER`): their batches are parsed, and those that
can join are unsealed in one native call with one signature verification
(:func:`agentmesh.link_opening.open_together`); then each agent goes on exactly as after an
unseal of its own (:meth:`Receiver._unsealed_now`).

What the pass must not wait for is given back to its agent, whose unseal stage then runs alone
as its own task on the pool (another worker takes it if this one is busy): a batch that cannot
join (a first contact, whose hub lookup may take seconds; a group message; bytes that do not
parse) and an agent whose ``between_batches`` lock is held right now (its prekey
maintenance writing files). What the pass still does for one agent that can take a while is
bounded and rare: explaining a refused set-up from a known sender (or its move to a new key)
looks its bundle up once (one hub round trip), and a late or expired reply goes to the
agent's error handlers, as when it unseals alone. A failure in one agent's part of the pass
costs only that agent its batch (it comes again); only a failure of the native call itself,
which changes nothing, costs all of them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .link_opening import Opening, Outcome, Retry, datas_of, open_together

if TYPE_CHECKING:
    from .link_receiver import Receiver, _Item, _Stage

__all__ = ["unseal_together"]

log = logging.getLogger("agentmesh.link")


class _Taken:
    """One agent's stage in the pass: its batches, their opening, and where it stands."""

    __slots__ = ("ended", "items", "locked", "opening", "receiver")

    def __init__(self, receiver: Receiver, items: list[_Item]) -> None:
        self.receiver = receiver
        self.items = items
        self.opening: Opening | None = None
        self.locked = False  # holds the agent's ``between_batches``
        self.ended = False

    def release(self) -> None:
        if self.locked:
            self.locked = False
            self.receiver.between_batches.release()

    def give_back(self) -> None:
        """Back to the agent, to unseal alone (see the module docstring)."""
        self.release()
        self.ended = True
        self.receiver._give_back_unseal(self.items)

    def went_on(self, outcomes: list[Outcome], prekeys_used: bool, handle: list[_Stage]) -> None:
        """After the unseal, as :meth:`Receiver._drain_unseal` goes on."""
        receiver = self.receiver
        try:
            if receiver._unsealed_now(self.items, outcomes, prekeys_used):
                handle.append(receiver._handle)
        except Exception:  # (one agent's failure must not leave the others' stages taken)
            log.exception("agent %r: receiving a batch failed", receiver.core.agent_id)
        finally:
            self.ended = True
            receiver._end_unseal()

    def retry(self, error: BaseException) -> tuple[list[Outcome], bool]:
        """Never acknowledged (that would lose it), and the backend not left waiting: the
        batch comes again on the next connection."""
        log.error("agent %r: receiving a batch failed", self.receiver.core.agent_id, exc_info=error)
        return [Retry(error) for _ in datas_of(self.items)], True  # (the prekeys: look anyway)


def unseal_together(stages: list[_Stage]) -> None:
    """Drain the unseal stages of several agents (see the module docstring)."""
    taken: list[_Taken] = []
    for stage in stages:
        receiver = stage.receiver
        try:
            items = receiver._take_unseal()
        except Exception:  # (as when one agent drains alone; the others go on)
            log.exception("agent %r: receiving a batch failed", receiver.core.agent_id)
            continue
        if items is not None:
            taken.append(_Taken(receiver, items))
    handle: list[_Stage] = []
    try:
        joined: list[_Taken] = []
        for one in taken:
            # (never wait for one agent's lock with others held)
            if not one.receiver.between_batches.acquire(blocking=False):
                one.give_back()
                continue
            one.locked = True
            try:
                one.opening = Opening(one.receiver.core, one.receiver._recent, datas_of(one.items))
                joins = one.opening.joins()
            except Exception:
                log.exception("agent %r: reading a batch failed", one.receiver.core.agent_id)
                joins = False
            if joins:
                joined.append(one)
            else:
                one.give_back()
        if joined:
            _open_joined(joined, handle)
    finally:
        for one in taken:  # (only after an unexpected error: dropped, never acknowledged)
            one.release()
            if not one.ended:
                one.ended = True
                one.receiver._end_unseal()
        if handle:
            stages[0].receiver.pool.schedule_next_many(handle)  # (this worker takes them next)


def _open_joined(joined: list[_Taken], handle: list[_Stage]) -> None:
    openings = [one.opening for one in joined if one.opening is not None]
    results: list[list[Any] | BaseException]
    used: list[bool] = []
    try:
        try:
            results = open_together(openings)
        except Exception as exc:  # (the native call itself failed: it changed nothing)
            results = [exc for _ in joined]
        used = [_prekeys_used(one) for one in joined]
    finally:
        for one in joined:
            one.release()
    for one, result, prekeys_used in zip(joined, results, used, strict=True):
        # (taking replies off may run error handlers and interceptors: after the release)
        try:
            if isinstance(result, BaseException):
                raise result
            assert one.opening is not None
            outcomes = one.opening.finish(result)
        except Exception as exc:
            outcomes, prekeys_used = one.retry(exc)
        one.went_on(outcomes, prekeys_used, handle)


def _prekeys_used(one: _Taken) -> bool:
    try:
        return one.opening is not None and one.opening.prekeys_used()
    except Exception:  # (then the prekey maintenance looks anyway)
        return True
