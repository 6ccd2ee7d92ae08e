"""The agent side of every backend: one :class:`AgentLink` per registered agent drives its
backend (:mod:`agentmesh.backend`) and holds the rules that must hold whatever carries the
envelopes.

* **Sending**: ``send`` (any thread) queues the sealed envelope; the shared network thread
  hands it to the backend at once (a send crosses threads once). Nothing waits for a state
  write: a session loaded from disk never seals under an old key (docs/protocol.md).
* **Receiving**: the backend hands over batches; a per-agent worker thread unseals a batch with
  ``_AgentCore.receive_batch`` (grouped by sender, batch signature verification), skips
  redeliveries (by position at the backend, by envelope id here), runs the handlers in arrival
  order, and, for a persistent agent, hands the batch to the state writer thread, which
  writes the state (one write for every batch handled meanwhile) before the backend
  acknowledges them.
* **Prekeys**: the backend is kept stocked with one-time prekeys, and the signed prekey is
  rotated and published (identity file first).

One event-loop thread per process (:class:`NetLoop`) runs every backend of the process.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import crypto as _crypto
from ._eventloop import new_event_loop
from .agent import _AgentCore
from .backend import Backend, NewBackend
from .errors import FlushTimeoutError, HubError
from .link_prekeys import (  # noqa: F401 (the policy's bounds keep their old import path)
    PREKEY_CHECK_INTERVAL,
    PREKEY_LOW,
    PREKEY_TARGET,
    SIGNED_PREKEY_ROTATION,
    PrekeyMaintenance,
)
from .link_state_writer import StateWriter, resolve

__all__ = ["AgentLink", "NetLoop"]

Envelope = _crypto.Envelope
log = logging.getLogger("agentmesh.link")

#: How many accepted envelope ids an agent's link remembers to recognise redeliveries.
RECENT_IDS = 4096


# --------------------------------------------------------------------------------------------
# the shared network thread


class NetLoop:
    """One asyncio loop in one daemon thread per process, shared by every agent link."""

    _instance: NetLoop | None = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(started,), name="agentmesh-network", daemon=True
        )
        self.thread.start()
        started.wait()
        self.links: weakref.WeakSet[AgentLink] = weakref.WeakSet()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    @classmethod
    def get(cls) -> NetLoop:
        with cls._guard:
            inst = cls._instance
            if inst is None or inst.pid != os.getpid() or not inst.thread.is_alive():
                inst = cls._instance = NetLoop()
            return inst

    def in_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the network loop and wait for its result (from any other thread)."""
        if self.in_thread():
            coro.close()
            raise RuntimeError("blocking agentmesh call made from inside its network thread")
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise


@atexit.register
def _close_links_at_exit() -> None:
    inst = NetLoop._instance
    if inst is None or inst.pid != os.getpid():
        return
    for link in list(inst.links):
        core = link.core
        if not core.closed:
            with contextlib.suppress(Exception):
                core.close(timeout=5.0)


def hub_error(exc: BaseException, what: str) -> HubError:
    if isinstance(exc, HubError):
        return exc
    return HubError(f"{what}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------
# the per-agent network link


class AgentLink:
    """One agent driving one backend (see :mod:`agentmesh.backend`): its send queue, its
    receive worker and state writer, and its prekey maintenance. The rules every backend must
    be driven by live here, once.

    ``new_backend()`` makes the agent's backend (for example a ``HubClient``), ``where`` names
    it in errors ("the hub at 127.0.0.1:7700"), ``connect_timeout`` bounds registration."""

    local = False

    def __init__(
        self,
        core: _AgentCore,
        net: NetLoop,
        new_backend: NewBackend,
        *,
        where: str,
        connect_timeout: float,
    ) -> None:
        self.core = core
        self.net = net
        self.loop = net.loop
        self.where = where
        self.connect_timeout = connect_timeout
        self.backend: Backend = new_backend()
        self._outbox: collections.deque[Any] = collections.deque()
        self._scheduled = False
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        # held by the worker while it handles a batch: new prekeys are made and written only
        # between batches (the prekey policy saves the state first, so an identity file never
        # lacks a key whose session is not on disk yet)
        self._receiving = threading.Lock()
        self.prekeys = PrekeyMaintenance(core, self.backend, self._between_batches)
        self._error: BaseException | None = None
        self._inq: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # ids of envelopes accepted lately, to ignore a redelivery silently
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._closing = False
        self._closed = False
        self._shutdown_pending = False
        self._worker = threading.Thread(
            target=self._work, name=f"agentmesh-agent-{core.agent_id[:40]}", daemon=True
        )
        # A persistent agent's state writes run on their own thread: the worker goes on with
        # the next batch while the last one is written, and a send never waits for the disk.
        self._writer_thread = (
            StateWriter(
                core, self.loop, closing=lambda: self._closing, report=self._note_write_error
            )
            if core.persistent
            else None
        )

    # -- start ----------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        try:
            await self.backend.register(
                self.core.keypair,
                on_batch=self._on_batch,
                handled=self.core.delivered_positions(),
            )
        except BaseException:
            self._writer.cancel()
            with contextlib.suppress(Exception):
                await self.backend.close()
            raise
        self.prekeys.start()

    def _between_batches(self, work: Callable[..., Any], *args: Any) -> Any:
        """Run ``work`` while no received batch is being handled (for anything that changes
        the identity's keys)."""
        with self._receiving:
            return work(*args)

    def _note_write_error(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def start(self) -> None:
        self._worker.start()
        try:
            self.net.run(self._start(), timeout=self.connect_timeout + 5.0)
        except BaseException as exc:
            self._closing = True
            self._inq.put(None)
            if isinstance(exc, (concurrent.futures.TimeoutError, TimeoutError)):
                raise HubError(
                    f"could not register {self.core.agent_id!r} on {self.where}: timed out"
                ) from exc
            if isinstance(exc, Exception):
                raise hub_error(
                    exc, f"could not register {self.core.agent_id!r} on {self.where}"
                ) from exc
            raise
        if self._writer_thread is not None:  # (only now: a failed start leaves no thread)
            self._writer_thread.start()
        self.net.links.add(self)

    # -- sending (any thread) -------------------------------------------------------------------

    def send(self, envelope: Any) -> None:
        if self._closing:
            raise RuntimeError(f"agent {self.core.agent_id!r} is closed")
        self._outbox.append(envelope)
        if self._writer_thread is not None and envelope.counter == 0:
            # a new sending chain (a DH step or a set-up): its keys reach the disk right after
            # it leaves, so that the peer's answers to it stay readable after a crash
            self._writer_thread.after_send()
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._kick)

    def _kick(self) -> None:
        self._scheduled = False
        assert self._wake is not None and self._idle is not None
        if self._idle.is_set():
            # The writer is idle: hand the envelopes to the client in this callback and write
            # them now. A send crosses threads once and costs no extra loop iterations (the
            # round trip's latency is made of these). Nothing waits for a state write: a
            # session loaded from disk never seals under its old sending chain (it starts a
            # new set-up), so a state file that lags behind what was sent reuses no key.
            outbox = self._outbox
            while outbox:
                if not self._try_send(outbox[0]):
                    break  # no room: the writer task waits for it
                outbox.popleft()
            self.backend.push()
            if not outbox:
                return
        self._wake.set()

    async def _write_loop(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                self._idle.clear()
                batch = []
                while self._outbox:
                    batch.append(self._outbox.popleft())
                for env in batch:
                    await self._send_one(env)
            self._idle.set()

    async def _send_one(self, env: Any) -> None:
        while not self._try_send(env):
            await self.backend.wait_for_room()

    def _try_send(self, env: Any) -> bool:
        """Hands ``env`` to the client; False if the client has no room for it yet. A refusal
        is reported (see flush) and ends the envelope's journey."""
        recipient, data = env.recipient, env.to_bytes()
        while True:
            try:
                return bool(self.backend.send_nowait(recipient, data))
            except Exception as exc:
                self._note_error(exc, recipient)
                if getattr(exc, "client_seq", None) is not None:
                    continue  # the refusal of an earlier envelope: this one was not queued yet
                return True

    def _note_error(self, exc: BaseException, recipient: str) -> None:
        if self._error is None:
            self._error = exc if isinstance(exc, HubError) else hub_error(exc, "sending failed")
        log.warning(
            "agent %r: the hub refused or lost an envelope for %r: %s",
            self.core.agent_id,
            getattr(exc, "recipient", None) or recipient,
            exc,
        )

    async def _aflush(self, timeout: float | None) -> None:
        assert self._idle is not None

        async def drained() -> None:
            assert self._idle is not None
            while self._outbox or self._scheduled or not self._idle.is_set():
                if self._outbox or self._scheduled:
                    await asyncio.sleep(0)
                else:
                    await self._idle.wait()
            await self.backend.flush(None)

        try:
            await asyncio.wait_for(drained(), timeout)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            if isinstance(exc, FlushTimeoutError):
                raise
            raise FlushTimeoutError(
                f"flush timed out after {timeout} s: the hub has not acknowledged every "
                f"envelope agent {self.core.agent_id!r} sent"
            ) from None

    def flush(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        if self.net.in_thread():
            raise RuntimeError("flush() cannot be called from the network thread")
        self.net.run(self._aflush(timeout))
        error, self._error = self._error, None
        if error is not None:
            raise error

    # -- receiving ------------------------------------------------------------------------------

    async def _on_batch(self, batch: list[tuple[int, bytes]]) -> asyncio.Future[None] | None:
        """Called by the HubClient with every delivery it has buffered (in inbox order, at most
        256); returns once the handlers ran. One hand-off to the worker per batch: a batch of
        one goes at once, and while the worker handles it the next batch accumulates. The
        client acknowledges the batch at once, or, for a persistent agent, once the future
        returned completes: when the state that accepting it changed is on disk."""
        handled = self.loop.create_future()
        durable = self.loop.create_future() if self._writer_thread is not None else None
        self._inq.put((batch, self.backend.delivery_hub_id, handled, durable))
        await handled
        return durable

    def _work(self) -> None:
        try:
            self._work_loop()
        finally:
            if self._shutdown_pending:
                self._stop_writer(None)
                self._shutdown()

    def _work_loop(self) -> None:
        core = self.core
        while not core.consumer_ready.wait(0.5):
            if self._closing:
                return
        inq = self._inq
        while True:
            item = inq.get()
            if item is None or self._closing:
                return
            items = [item]
            while True:  # (the client hands over one batch at a time; take whatever is here)
                try:
                    more = inq.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    inq.put(None)
                    break
                items.append(more)
            datas = [data for batch, _hub, _handled, _durable in items for _did, data in batch]
            with self._receiving:
                try:
                    handled, prekeys_used = self._process(datas)
                except Exception:  # never leave the client waiting for an ack
                    log.exception("agent %r: receiving a batch failed", core.agent_id)
                    handled, prekeys_used = [False] * len(datas), True
                if self._writer_thread is not None:
                    # persisted after the handlers and before the ack, by the persister (one
                    # write for every batch handled meanwhile): after a crash the hub
                    # redelivers instead of the agent holding acked messages whose session
                    # advance was lost. The delivery ids go with it, so that a restarted agent
                    # skips what a crashed hub redelivers instead of reporting replays.
                    self._note_delivered(items, handled)
                    self._writer_thread.after_batch([d for *_, d in items if d is not None])
            if prekeys_used:
                self.prekeys.check_soon()
            for _batch, _hub, fut, _durable in items:
                with contextlib.suppress(RuntimeError):  # the loop is gone (interpreter exit)
                    self.loop.call_soon_threadsafe(resolve, fut)

    def _note_delivered(self, items: list[Any], handled: list[bool]) -> None:
        """Per hub store, the highest delivery id that was handled (or skipped as a duplicate
        of a handled one): never one that was rejected, so a forged delivery cannot push the
        saved position past real ones."""
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
                    # the hub delivered it again (e.g. a resend after a hub crash): already
                    # handled, so acknowledge it silently instead of reporting a replay
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

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        self._closing = True
        self._closed = True
        self._inq.put(None)
        self.net.links.discard(self)
        if threading.current_thread() is self._worker:
            # A handler closes its own agent: the worker first finishes the batch in progress
            # (its envelopes are unsealed already: every one reaches the handlers, and the
            # batch is acknowledged), then closes the connection itself (see _work).
            self._shutdown_pending = True
            return
        if self._worker.is_alive():
            # the batch in progress (if any) is finished and acknowledged first
            self._worker.join(timeout if timeout is not None else 30.0)
        self._stop_writer(timeout)
        self._shutdown()

    def _stop_writer(self, timeout: float | None) -> None:
        if self._writer_thread is not None:
            self._writer_thread.stop(timeout)

    def _shutdown(self) -> None:
        async def shutdown() -> None:
            if self._writer is not None:
                self._writer.cancel()
            self.prekeys.stop()
            if True:
                # the agent flushed already (core.close); do not wait for the hub again
                await self.backend.close(timeout=0.5)

        try:
            self.net.run(shutdown(), timeout=10.0)
        except Exception as exc:
            log.debug("agent %r: error closing the hub connection: %s", self.core.agent_id, exc)
