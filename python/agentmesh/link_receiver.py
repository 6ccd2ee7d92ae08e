"""One agent's receive path: batches from its backend, handled on the process's shared
receive workers (:mod:`agentmesh.link_receive_pool`).

The backend hands over a batch on the network thread (``on_batch``); the agent schedules
itself on the pool; a worker takes everything that has accumulated, unseals it with
``_AgentCore.receive_batch`` (grouped by sender, batch signature verification), skips
redeliveries (by position at the backend, by envelope id here), runs the handlers in arrival
order and, for a persistent agent, hands the batches to the state writer, which writes the
state before the backend acknowledges them. One agent's batches are handled one at a time and
in order; different agents' batches may run side by side on different workers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import crypto as _crypto
from .agent import _AgentCore
from .backend import Backend, Delivery
from .link_state_writer import StateWriter, resolve

if TYPE_CHECKING:
    from .link import NetLoop

__all__ = ["RECENT_IDS", "Receiver"]

Envelope = _crypto.Envelope
log = logging.getLogger("agentmesh.link")

#: How many accepted envelope ids an agent remembers to recognise redeliveries.
RECENT_IDS = 4096

# (batch, the store its positions count in, resolved once handled, resolved once durable)
_Item = tuple[list[Delivery], "bytes | None", "asyncio.Future[None]", "asyncio.Future[None] | None"]


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
        self._prekeys_used = prekeys_used
        self._on_closed = on_closed
        # held while a batch is handled: new prekeys are made and written only between
        # batches (the prekey policy saves the state first, so an identity file never lacks a
        # key whose session is not on disk yet)
        self.between_batches = threading.Lock()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: collections.deque[_Item] = collections.deque()
        self._scheduled = False
        self._drainer: int | None = None  # the thread handling this agent's batches now
        self._closing = False
        self._close_after_drain = False
        # ids of envelopes accepted lately, to ignore a redelivery silently
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        core.consumer_ready.when_set(self._consumer_ready)

    # -- on the network thread ------------------------------------------------------------------

    async def on_batch(self, batch: list[Delivery]) -> asyncio.Future[None] | None:
        """Called by the backend with every delivery it has buffered (in inbox order); returns
        once the handlers ran. The backend acknowledges the batch at once, or, for a
        persistent agent, once the future returned completes: when the state that accepting it
        changed is on disk."""
        handled = self.loop.create_future()
        durable = self.loop.create_future() if self.state_writer is not None else None
        with self._lock:
            self._pending.append((batch, self.backend.delivery_hub_id, handled, durable))
            schedule = not self._scheduled and not self._closing
            if schedule:
                self._scheduled = True
        if schedule:
            self.pool.schedule(self)
        await handled
        return durable

    def _consumer_ready(self) -> None:
        with self._lock:
            schedule = bool(self._pending) and not self._scheduled and not self._closing
            if schedule:
                self._scheduled = True
        if schedule:
            self.pool.schedule(self)

    # -- on a receive worker --------------------------------------------------------------------

    def drain(self) -> None:
        core = self.core
        with self._lock:
            if self._closing or not core.consumer_ready.is_set():
                # no handler yet: wait (``_consumer_ready`` schedules again); closing: dropped,
                # never acknowledged, so the backend delivers them again next time
                self._scheduled = False
                return
            items = list(self._pending)
            self._pending.clear()
            self._drainer = threading.get_ident()
        try:
            self._handle(items)
        finally:
            with self._lock:
                self._drainer = None
                again = bool(self._pending) and not self._closing
                if not again:
                    self._scheduled = False
                close_now = self._close_after_drain
                self._idle.notify_all()
            if again:
                self.pool.schedule(self)
            if close_now:
                self._on_closed()

    def _handle(self, items: list[_Item]) -> None:
        core = self.core
        datas = [data for batch, _hub, _handled, _durable in items for _did, data in batch]
        with self.between_batches:
            try:
                handled, prekeys_used = self._process(datas)
            except Exception:  # never leave the backend waiting for an ack
                log.exception("agent %r: receiving a batch failed", core.agent_id)
                handled, prekeys_used = [False] * len(datas), True
            if self.state_writer is not None:
                # persisted after the handlers and before the ack, by the state writer (one
                # write for every batch handled meanwhile): after a crash the backend
                # redelivers instead of the agent holding acked messages whose session
                # advance was lost. The positions go with it, so that a restarted agent skips
                # what a crashed hub redelivers instead of reporting replays.
                self._note_delivered(items, handled)
                self.state_writer.after_batch([d for *_, d in items if d is not None])
        if prekeys_used:
            self._prekeys_used()
        futures = [fut for _batch, _hub, fut, _durable in items]
        with contextlib.suppress(RuntimeError):  # the loop is gone (interpreter exit)
            self.net.call_soon_batched(_resolve_all, futures)

    def _note_delivered(self, items: list[_Item], handled: list[bool]) -> None:
        """Per store, the highest position that was handled (or skipped as a duplicate of a
        handled one): never one that was rejected, so a forged delivery cannot push the saved
        position past real ones."""
        flags = iter(handled)
        for batch, hub_id, _handled, _durable in items:
            top = 0
            for did, _data in batch:
                if next(flags, False):
                    top = did
            if hub_id is not None and top:
                self.core.note_delivered(hub_id, top)

    def _process(self, datas: list[bytes]) -> tuple[list[bool], bool]:
        """Unseal and dispatch delivered envelopes, in order, skipping duplicates. Returns, per
        envelope, whether it was handled now or before (False: rejected), and whether a set-up
        used one of this agent's one-time prekeys."""
        core = self.core
        recent = self._recent
        todo: list[Any] = []
        ids: list[str | None] = []
        where: list[int] = []  # index in datas of each todo item
        handled = [True] * len(datas)
        seen: set[str] = set()
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
                if envelope_id in recent or envelope_id in seen:
                    # delivered again (e.g. a resend after a hub crash): already handled, so
                    # acknowledge it silently instead of reporting a replay
                    log.debug(
                        "agent %r: duplicate delivery of %s ignored", core.agent_id, envelope_id
                    )
                    continue
                seen.add(envelope_id)
            todo.append(env)
            ids.append(envelope_id)
            where.append(index)
        if not todo:
            return handled, False
        # a set-up (prekey message) may use one of this agent's one-time prekeys: look only then
        setups = any(type(e) is Envelope and e.is_prekey for e in todo)
        keys_before = len(core.keypair.one_time_prekey_ids()) if setups else 0
        results = core.receive_batch(todo)
        prekeys_used = setups and len(core.keypair.one_time_prekey_ids()) != keys_before
        for envelope_id, msg, index in zip(ids, results, where, strict=True):
            if msg is None:
                handled[index] = False
            elif envelope_id is not None:
                recent[envelope_id] = None
        while len(recent) > RECENT_IDS:
            recent.popitem(last=False)
        return handled, prekeys_used

    # -- closing --------------------------------------------------------------------------------

    def close(self, timeout: float | None) -> bool:
        """Stop handling batches: the one in progress (if any) is finished first; batches not
        started are dropped (never acknowledged: the backend delivers them again to the next
        connection). Returns True when called from this agent's own handler: then the
        ``on_closed`` callback runs once that batch is done."""
        with self._lock:
            self._closing = True
            self._pending.clear()
            if self._drainer == threading.get_ident():
                self._close_after_drain = True
                return True
            self._idle.wait_for(lambda: self._drainer is None, 30.0 if timeout is None else timeout)
        return False


def _resolve_all(futures: list[asyncio.Future[None]]) -> None:
    for fut in futures:
        resolve(fut)
