"""One agent's receive path: batches from its backend, handled on the process's shared
receive workers (:mod:`agentmesh.link_receive_pool`), in two stages.

1. **Unseal** (``on_batch`` schedules it): a worker takes every batch that has accumulated,
   skips redeliveries (by position at the backend, by envelope id here), unseals them with
   ``_AgentCore.receive_batch`` (grouped by sender, batch signature verification; rejections
   reported) and takes the replies a ``request()`` waits for off the path. Then the backend may
   hand over the next batch. When several agents' unseal stages wait on the pool, a worker
   drains them in one pass (:mod:`agentmesh.link_unseal_together`), each agent's result the
   same.
2. **Handle**: the handlers run for the other messages, in arrival order; then the batch is
   acknowledged (:mod:`agentmesh.link_acknowledgements`), for a persistent agent once the state
   writer has written the state.

Unsealing waits while the handlers run, and until the agent has a consumer (a handler or an
iterator) unless it waits for replies, so in the normal flow nothing is unsealed ahead of its
handlers. The exception is a handler that waits for a reply (a coordinator asking a worker
while handling a task): then the unseal stage goes on, so that the reply is not stuck behind
the handler waiting for it. Whatever is unsealed before its handlers ran is *held*: a state
saved meanwhile keeps those sessions' previous state (``_AgentCore.handled_from``), so that
after a crash they are read again rather than refused as replays. One agent's handlers still
run one at a time and in order; other agents' batches run on other workers meanwhile. Nothing
is acknowledged before its handlers ran, so a crash redelivers it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .agent_core import _AgentCore
from .agent_receiving import Rejected
from .backend import Backend, Delivery
from .errors import HandlersNotRunError
from .link_acknowledgements import Acknowledgements, resolve_all
from .link_opening import RECENT_IDS, Outcome, RecentIds, Retry, datas_of, open_deliveries
from .link_pacing import Pacing
from .link_receive_pool import while_waiting
from .link_state_writer import StateWriter
from .link_unseal_together import unseal_together
from .message import Message

if TYPE_CHECKING:
    from .link import NetLoop

__all__ = ["RECENT_IDS", "Receiver"]  # (RECENT_IDS: from link_opening)

log = logging.getLogger("agentmesh.link")


# (batch, the store its positions count in, resolved once unsealed, resolved for the ack)
#: Seconds between the log lines of a ``close`` that waits for a running handler.
CLOSE_WAIT_NOTICE = 30.0

_Item = tuple[list[Delivery], "bytes | None", "asyncio.Future[None]", "asyncio.Future[None]"]


class _Stage:
    """One of the receiver's two tasks on the pool. The unseal stages of several agents
    waiting at once run together (``together``:
    :func:`agentmesh.link_unseal_together.unseal_together`)."""

    __slots__ = ("drain", "receiver", "together")

    def __init__(
        self,
        drain: Callable[[], None],
        receiver: Receiver,
        together: Callable[[list[_Stage]], None] | None = None,
    ) -> None:
        self.drain = drain
        self.receiver = receiver
        self.together = together


class Receiver:
    """The receive path of one agent (see the module docstring)."""

    def __init__(
        self,
        core: _AgentCore,
        net: NetLoop,
        backend: Backend,
        *,
        state_writer: StateWriter | None,
        prekeys_used: Callable[[], None],
        on_closed: Callable[[], None],
    ) -> None:
        self.core = core
        self.net = net
        self.loop = net.loop
        self.pool = net.receive_pool
        self.backend = backend
        self.state_writer = state_writer
        self._acks = Acknowledgements(core, net, state_writer)
        self._prekeys_used = prekeys_used
        self._on_closed = on_closed
        # held while a batch is unsealed: new prekeys are made and written only between
        # batches (the prekey policy saves the state first, so an identity file never lacks a
        # key whose session is not on disk yet)
        self.between_batches = threading.Lock()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unseal = _Stage(self._drain_unseal, self, unseal_together)
        # the same stage, scheduled to run alone (what a pass gave back: link_unseal_together)
        self._unseal_alone = _Stage(self._drain_unseal, self)
        self._handle = _Stage(self._drain_handle, self)
        self._pending: collections.deque[_Item] = collections.deque()
        self._unsealed: collections.deque[tuple[list[_Item], list[Outcome]]] = collections.deque()
        # a stage is scheduled from when it is queued until its drain ends; the drainer is the
        # thread running it
        self._scheduled = {self._unseal: False, self._handle: False}
        self._drainer: dict[_Stage, int | None] = {self._unseal: None, self._handle: None}
        self._closing = False
        self._close_after_drain = False
        self._handler_waits = False  # a handler of this agent is inside ``waiting()``
        # "unsealed" futures of batches whose handlers run next (see _drain_unseal)
        self._opened_waiting: list[asyncio.Future[None]] = []
        # ids of envelopes accepted lately, to ignore a redelivery silently
        self._recent = RecentIds()
        #: what the backend awaits between batches (:mod:`agentmesh.link_pacing`)
        self.pacing = Pacing(net, self.pool, self._never_paced)
        core.consumer_ready.when_set(self._consumer_ready)
        core.attached.when_set(self._attached)
        core.on_reads_needed(self._replies_awaited)

    # -- on the network thread ------------------------------------------------------------------

    async def on_batch(self, batch: list[Delivery]) -> asyncio.Future[None] | None:
        """Called by the backend with every delivery it has buffered (in inbox order); returns
        once the batch is unsealed, with the future the backend acknowledges it on: complete
        once the handlers ran (and, for a persistent agent, the state that accepting it changed
        is on disk)."""
        unsealed = self.loop.create_future()
        acked = self.loop.create_future()
        with self._lock:
            self._pending.append((batch, self.backend.delivery_hub_id, unsealed, acked))
            schedule = self._may_unseal() and self._claim(self._unseal)
        if schedule:
            self.pool.schedule(self._unseal)
        await unsealed
        return acked

    def _claim(self, stage: _Stage) -> bool:
        """Whether the caller must schedule ``stage`` (it holds ``_lock``)."""
        if self._scheduled[stage] or (self._closing and stage is self._unseal):
            return False
        self._scheduled[stage] = True
        return True

    def _may_unseal(self) -> bool:
        """Unsealing waits until the agent is attached to its hub (a first contact looks the
        sender up there), until it has a consumer or waits for replies (a send-only agent
        leaves its backlog at the hub for the listener of its identity; an interceptor counts as a
        consumer of its kind), and while the handlers are due (their stage scheduled or
        running: what arrives meanwhile is unsealed after them, in one batch), unless a handler
        waits for a reply (``_lock`` held). Every change that lets it go on schedules it."""
        core = self.core
        return (
            core.attached.is_set()
            and (core.consumer_ready.is_set() or core.reads_without_consumer)
            and (not self._scheduled[self._handle] or self._handler_waits)
        )

    def _consumer_ready(self) -> None:
        with self._lock:
            handle = bool(self._unsealed) and self._claim(self._handle)
            unseal = bool(self._pending) and self._claim(self._unseal)
        if handle:
            self.pool.schedule(self._handle)
        if unseal:
            self.pool.schedule(self._unseal)

    def _never_paced(self) -> bool:
        return self._closing or self._handler_waits or self.core.reads_without_consumer

    def _replies_awaited(self) -> None:
        self.pacing.cut()
        with self._lock:
            schedule = bool(self._pending) and self._claim(self._unseal)
        if schedule:
            self.pool.schedule(self._unseal)

    def _attached(self) -> None:
        with self._lock:
            schedule = bool(self._pending) and self._claim(self._unseal)
        if schedule:
            self.pool.schedule(self._unseal)

    def _on_handler_wait(self, waits: bool) -> None:
        if waits:
            self.pacing.cut()
        with self._lock:
            self._handler_waits = waits
            schedule = waits and bool(self._pending) and self._claim(self._unseal)
            opened, self._opened_waiting = (self._opened_waiting, []) if waits else ([], [])
        if opened:
            self._release_opened(opened)  # (the reply it waits for may be in the next batch)
        if schedule:
            self.pool.schedule(self._unseal)

    def _release_opened(self, futures: list[asyncio.Future[None]]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (interpreter exit)
            self.net.call_soon_batched(resolve_all, futures)

    # -- stage 1: unseal --------------------------------------------------------------------------

    def _drain_unseal(self) -> None:
        items = self._take_unseal()
        if items is None:
            return
        try:
            datas = datas_of(items)
            with self.between_batches:
                try:
                    outcomes, prekeys_used = open_deliveries(self.core, self._recent, datas)
                except Exception as exc:
                    # never acknowledged (that would lose it), and the backend not left
                    # waiting: the batch comes again on the next connection
                    log.exception("agent %r: receiving a batch failed", self.core.agent_id)
                    outcomes, prekeys_used = [Retry(exc) for _ in datas], True
            if self._unsealed_now(items, outcomes, prekeys_used):
                self.pool.schedule_next(self._handle)  # (this worker takes it next)
        finally:
            self._end_unseal()

    def _take_unseal(self) -> list[_Item] | None:
        """The batches to unseal now, this thread their drainer; None: none now (the stage
        ends)."""
        with self._lock:
            if self._closing or not self._may_unseal():
                # closing: dropped, never acknowledged, so the backend delivers them again next
                # time; handlers running: after them (the handle stage schedules this again)
                self._scheduled[self._unseal] = False
                return None
            items = list(self._pending)
            self._pending.clear()
            self._drainer[self._unseal] = threading.get_ident()
        return items

    def _give_back_unseal(self, items: list[_Item]) -> None:
        """``items`` (taken by ``_take_unseal``) go back in front of what came since, and the
        unseal stage, still scheduled, runs again alone as a task of its own."""
        with self._lock:
            self._pending.extendleft(reversed(items))
            self._drainer[self._unseal] = None
            if self._closing:
                self._idle.notify_all()
        self.pool.schedule(self._unseal_alone)

    def _end_unseal(self) -> None:
        self._end(self._unseal)

    def _unsealed_now(
        self, items: list[_Item], outcomes: list[Outcome], prekeys_used: bool
    ) -> bool:
        """After the unseal: acknowledge what needs no handler, queue the rest for the
        handlers, let the backend hand over the next batch. Returns whether the caller must
        schedule the handle stage."""
        core = self.core
        if prekeys_used:
            self._prekeys_used()
        # A batch with nothing for the handlers (replies, redeliveries) is acknowledged
        # now: an agent with no handler that only asks questions, or whose handler waits
        # for a reply, must not leave its replies unacknowledged (redelivered later, they
        # would be refused as replays). Its position is noted only when nothing before it
        # waits for the handlers (a restart must not skip those).
        direct: list[tuple[_Item, int, bool]] = []  # (batch, size, in order)
        queued: list[_Item] = []
        queued_outcomes: list[Outcome] = []
        at = 0
        with self._lock:
            in_order = not self._unsealed and self._drainer[self._handle] is None
            for item in items:
                size = len(item[0])
                mine = outcomes[at : at + size]
                at += size
                if all(outcome is True for outcome in mine):
                    direct.append((item, size, in_order and not queued))
                else:
                    queued.append(item)
                    queued_outcomes.extend(mine)
            if queued:
                self._unsealed.append((queued, queued_outcomes))
            schedule = bool(queued) and core.consumer_ready.is_set() and self._claim(self._handle)
            # The backend hands over the next batch once this one is unsealed: at once when
            # no handler runs it next; else with the handlers' end (one wake-up of the network
            # thread per batch, as when the two stages were one), or as soon as a handler
            # waits for a reply (which may be in that next batch).
            opened = [item[2] for item in items]
            later = schedule and not self._handler_waits
            if later:
                self._opened_waiting.extend(opened)
        for item, size, note in direct:
            self._acks.handled([item], [True] * size, note_positions=note)
        if not later:
            self._release_opened(opened)
        return schedule

    # -- stage 2: handle --------------------------------------------------------------------------

    def _drain_handle(self) -> None:
        with self._lock:
            if not self.core.consumer_ready.is_set() or self._closing or self.core.closed:
                # no handler (nor iterator) yet: wait (``_consumer_ready`` schedules this
                # again); closed: what waits here is never acknowledged, and its sessions were
                # never saved past it, so it is read again from the next connection
                self._scheduled[self._handle] = False
                return
            work = list(self._unsealed)
            self._unsealed.clear()
            self._drainer[self._handle] = threading.get_ident()
        try:
            core = self.core
            dispatch = core._dispatch
            with while_waiting(self._on_handler_wait):
                for at, (items, outcomes) in enumerate(work):
                    # per sender, the messages whose handlers ran: counted down together
                    # before the acknowledgement (one take of the core's lock per batch)
                    handled: dict[str, int] = {}
                    try:
                        for index, outcome in enumerate(outcomes):
                            if type(outcome) is Message:
                                sender = outcome.sender
                                try:
                                    dispatch(outcome)
                                except HandlersNotRunError as exc:
                                    self._give_back(work[at:], index, exc)
                                    return
                                except BaseException:
                                    handled[sender] = handled.get(sender, 0) + 1
                                    raise
                                handled[sender] = handled.get(sender, 0) + 1
                            elif type(outcome) is Rejected:
                                core.reject(outcome.error, outcome.envelope)
                    finally:
                        for sender, count in handled.items():
                            core.handled_from(sender, count)
                    self._acks.handled(items, outcomes)
        finally:
            with self._lock:
                opened, self._opened_waiting = self._opened_waiting, []
                again, close_now = self._ended(self._handle)
                # (unsealing waited for the handlers)
                unseal = bool(self._pending) and self._claim(self._unseal)
            if opened:
                self._release_opened(opened)
            if again:
                self.pool.schedule_next(self._handle)
            if close_now:
                self._on_closed()
            if unseal:
                self.pool.schedule_next(self._unseal)

    def _give_back(
        self, rest: list[tuple[list[_Item], list[Outcome]]], index: int, error: BaseException
    ) -> None:
        """The handlers could not run ``rest[0]``'s outcome ``index`` (their event loop is
        gone): it and everything after it stay unacknowledged for the next connection, their
        sessions held back from every save (``handled_from`` is never called for them), and
        this receiver stops taking batches: acknowledging a later message while an earlier one
        waits would let a save move its session past the one that must come again."""
        log.error("%s; agent %r stops receiving until it is restarted", error, self.core.agent_id)
        with self._lock:
            self._closing = True
            self._pending.clear()
            self._unsealed.clear()
        items, outcomes = rest[0]
        if self.state_writer is not None:
            # what ran before it is skipped by position when the batch comes again
            done = [o is True or type(o) is Message for o in outcomes[:index]]
            self._acks.note_delivered(items, done + [False] * (len(outcomes) - index))
        self._acks.fail([(item[3], error) for group, _outcomes in rest for item in group])

    # -- both stages ----------------------------------------------------------------------------

    def _end(self, stage: _Stage) -> None:
        """After a drain: schedule the stage again if work came meanwhile; close if asked."""
        with self._lock:
            again, close_now = self._ended(stage)
        if again:
            self.pool.schedule_next(stage)
        if close_now:
            self._on_closed()

    def _ended(self, stage: _Stage) -> tuple[bool, bool]:
        """(``_lock`` held) The drain of ``stage`` ends: whether it must run again (work came
        meanwhile) and whether the agent closes now (``close`` from its own handler)."""
        self._drainer[stage] = None
        if stage is self._unseal:
            again = bool(self._pending) and not self._closing and self._may_unseal()
        else:
            again = bool(self._unsealed)
        if not again:
            self._scheduled[stage] = False
        close_now = self._close_after_drain and self._quiet()
        if close_now:
            self._close_after_drain = False
        if self._closing:  # (only ``close`` waits on it, once it has set ``_closing``)
            self._idle.notify_all()
        return again, close_now

    def draining_here(self) -> bool:
        """Whether this thread runs one of this agent's stages now (a handler of its own)."""
        return threading.get_ident() in self._drainer.values()

    def _quiet(self) -> bool:
        """No stage runs, and nothing unsealed waits for handlers that will still run
        (``_lock`` held; once closing, what an unseal finishing late queued is dropped, never
        acknowledged: waiting for it would only stall ``close`` for its whole timeout)."""
        return (self._closing or not self._unsealed) and all(
            d is None for d in self._drainer.values()
        )

    # -- closing --------------------------------------------------------------------------------

    def close(self, timeout: float | None) -> bool:
        """Stop taking batches: the handlers running now finish (and their batches are
        acknowledged); batches they have not started are dropped: never acknowledged, so the
        backend delivers them again to the next connection, and readable then (their
        sessions' advance was held back from every save). Returns True when called from this
        agent's own handler: then the ``on_closed`` callback runs once the handlers are done.

        ``timeout=None`` waits for running handlers however long they take (logging while it
        waits): one that returned after the agent let go of its connection and its state
        would have run without its acknowledgement or its session's advance being kept, so
        the next start would hand it the same message again."""
        with self._lock:
            self._closing = True
            self._pending.clear()
            self._unsealed.clear()  # (held: see _drain_handle)
            opened, self._opened_waiting = self._opened_waiting, []
        self.pacing.cut()
        if opened:
            self._release_opened(opened)
        with self._lock:
            if threading.get_ident() in self._drainer.values():
                self._close_after_drain = True
                return True
            if timeout is not None:
                self._idle.wait_for(self._quiet, timeout)
                return False
            waited = 0.0
            while not self._idle.wait_for(self._quiet, CLOSE_WAIT_NOTICE):
                waited += CLOSE_WAIT_NOTICE
                log.warning(
                    "agent %r: closing waits for its running handler (%.0f s so far); it "
                    "cannot be interrupted, and its message must be kept as handled",
                    self.core.agent_id,
                    waited,
                )
        return False
