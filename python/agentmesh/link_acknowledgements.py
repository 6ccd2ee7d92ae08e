"""How one agent's handled batches are acknowledged to its backend.

A batch is acknowledged once its handlers ran; for a persistent agent only after the state
writer has written the state that accepting it changed, with its delivery positions, so that
after a crash the backend delivers again whatever the agent had not made durable (instead of
the agent holding acknowledged messages whose session advance was lost). A batch holding an
envelope that must come again (:class:`agentmesh.link_opening.Retry`: a hub lookup failed) is
failed instead, never acknowledged, and then no position is noted, so a restart does not skip
it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from .link_opening import Outcome, Retry
from .link_state_writer import StateWriter, resolve
from .message import Message

if TYPE_CHECKING:
    from .agent_core import _AgentCore
    from .link import NetLoop
    from .link_receiver import _Item

__all__ = ["Acknowledgements", "resolve_all"]


class Acknowledgements:
    """The acknowledgements of one agent's batches (see the module docstring)."""

    __slots__ = ("core", "net", "state_writer")

    def __init__(self, core: _AgentCore, net: NetLoop, state_writer: StateWriter | None) -> None:
        self.core = core
        self.net = net
        self.state_writer = state_writer

    def handled(
        self, items: list[_Item], outcomes: list[Outcome], note_positions: bool = True
    ) -> None:
        """``items`` were handled (``outcomes``, one per delivery, in order): acknowledge each
        batch, through the state writer for a persistent agent, or fail it if one of its
        envelopes must come again. ``note_positions``: note the delivery positions (not when
        something before them still waits for its handlers: a restart must not skip that)."""
        handled = [o is True or type(o) is Message for o in outcomes]
        retry: dict[int, BaseException] = {}  # item index -> why it must come again
        at = 0
        for index, (batch, _hub, _unsealed, _acked) in enumerate(items):
            for outcome in outcomes[at : at + len(batch)]:
                if type(outcome) is Retry:
                    retry.setdefault(index, outcome.error)
            at += len(batch)
        if retry:
            note_positions = False  # (a restart must not skip what comes again)
            self.fail([(items[i][3], error) for i, error in retry.items()])
        acked = [item[3] for index, item in enumerate(items) if index not in retry]
        if self.state_writer is not None:
            # (one write for every batch handled meanwhile; the positions go with it, so that
            # a restarted agent skips what a crashed hub redelivers instead of reporting
            # replays)
            if note_positions:
                self.note_delivered(items, handled)
            self.state_writer.after_batch(acked)
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone (interpreter exit)
            self.net.call_soon_batched(resolve_all, acked)

    def note_delivered(self, items: list[_Item], handled: list[bool]) -> None:
        """Per store, the highest position that was handled (or skipped as a duplicate of a
        handled one): never one that was rejected, so a forged delivery cannot push the saved
        position past real ones."""
        flags = iter(handled)
        for batch, hub_id, _unsealed, _acked in items:
            top = 0
            for did, _data in batch:
                if next(flags, False):
                    top = did
            if hub_id is not None and top:
                self.core.note_delivered(hub_id, top)

    def fail(self, failed: list[tuple[asyncio.Future[None], BaseException]]) -> None:
        """Never acknowledged: each future fails with its error (the batch comes again)."""
        with contextlib.suppress(RuntimeError):  # the loop is gone (interpreter exit)
            self.net.call_soon_batched(_fail_all, failed)


def _fail_all(failed: list[tuple[asyncio.Future[None], BaseException]]) -> None:
    for fut, error in failed:
        resolve(fut, error)


def resolve_all(futures: list[asyncio.Future[None]]) -> None:
    for fut in futures:
        resolve(fut)
