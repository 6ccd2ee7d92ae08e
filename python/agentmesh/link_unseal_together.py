"""Several agents' unseal stages in one pass.

A process hosting hundreds of agents receives a few messages per agent at a time: unsealed
agent by agent, each small batch paid for its own pass through the unseal stage, its own native
call and its own Ed25519 batch verification, whose fixed cost a few signatures barely spread.
When several agents' unseal stages wait on the pool, a worker takes them together (up to
:data:`agentmesh.link_receive_pool.MAX_TOGETHER`): their batches are parsed, and those whose
senders all have sessions are unsealed in one native call with one signature verification
(:func:`agentmesh.link_opening.open_together`); then each agent goes on exactly as after an
unseal of its own (:meth:`Receiver._unsealed_now`). A batch with a first contact is opened
after the others have gone on, on its own: looking its sender up at the hub must not hold up
the rest of the pass.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .link_opening import Opening, Outcome, Retry, open_together

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
        log.exception("agent %r: receiving a batch failed", self.receiver.core.agent_id)
        return [Retry(error) for _ in _datas(self.items)], True


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
        alone: list[_Taken] = []
        for one in taken:
            one.receiver.between_batches.acquire()  # (until its batch is unsealed)
            one.locked = True
            try:
                one.opening = Opening(one.receiver.core, one.receiver._recent, _datas(one.items))
            except Exception:
                log.exception("agent %r: reading a batch failed", one.receiver.core.agent_id)
            if one.opening is not None and one.opening.joins():
                joined.append(one)
            else:
                alone.append(one)
        if len(joined) == 1:
            alone.insert(0, joined.pop())
        if joined:
            _open_joined(joined, handle)
        for one in alone:
            _open_alone(one, handle)
    finally:
        for one in taken:  # (only after an unexpected error: dropped, never acknowledged)
            one.release()
            if not one.ended:
                one.ended = True
                one.receiver._end_unseal()
    if handle:
        stages[0].receiver.pool.schedule_next_many(handle)  # (this worker takes them next)


def _open_joined(joined: list[_Taken], handle: list[_Stage]) -> None:
    try:
        opened = open_together([one.opening for one in joined if one.opening is not None])
    except Exception as exc:
        opened = [one.retry(exc) for one in joined]
    finally:
        for one in joined:
            one.release()
    for one, (outcomes, prekeys_used) in zip(joined, opened, strict=True):
        one.went_on(outcomes, prekeys_used, handle)


def _open_alone(one: _Taken, handle: list[_Stage]) -> None:
    try:
        if one.opening is None:
            raise RuntimeError("its batch could not be read")
        outcomes, prekeys_used = one.opening.alone()
    except Exception as exc:
        outcomes, prekeys_used = one.retry(exc)
    finally:
        one.release()
    one.went_on(outcomes, prekeys_used, handle)


def _datas(items: list[_Item]) -> list[bytes]:
    return [data for batch, _hub, _unsealed, _acked in items for _did, data in batch]
