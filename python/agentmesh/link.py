"""The agent side of every backend: one :class:`AgentLink` per registered agent drives its
backend (:mod:`agentmesh.backend`) and holds the rules that must hold whatever carries the
envelopes.

* **Sending**: ``send`` (any thread) queues the sealed envelope; the shared network thread
  hands it to the backend at once (a send crosses threads once). Nothing waits for a state
  write: a session loaded from disk never seals under an old key (docs/protocol.md).
* **Receiving** (:mod:`agentmesh.link_receiver`): the backend hands over batches; the
  process's shared receive workers unseal them, skip redeliveries, run the handlers in arrival
  order and, for a persistent agent, have the state written before the backend acknowledges
  them.
* **Prekeys**: the backend is kept stocked with one-time prekeys, and the signed prekey is
  rotated and published (identity file first).

One event-loop thread per process (:class:`NetLoop`) runs every backend of the process, and
one elastic pool of receive workers (:mod:`agentmesh.link_receive_pool`) runs every agent's
handlers: a process hosting hundreds of agents does not run hundreds of threads.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import crypto as _crypto
from ._eventloop import new_event_loop
from .agent_core import _AgentCore
from .backend import Backend, NewBackend
from .errors import FlushTimeoutError, HubError
from .fanout import GroupUpload
from .link_pacing import PaceClock
from .link_prekeys import (  # noqa: F401 (the policy's bounds keep their old import path)
    PREKEY_CHECK_INTERVAL,
    PREKEY_LOW,
    PREKEY_TARGET,
    SIGNED_PREKEY_ROTATION,
    PrekeyMaintenance,
)
from .link_receive_pool import ReceivePool
from .link_receiver import RECENT_IDS, Receiver  # noqa: F401 (RECENT_IDS: its old import path)
from .link_state_writer import StateWriter

__all__ = ["AgentLink", "NetLoop"]

Envelope = _crypto.Envelope
log = logging.getLogger("agentmesh.link")


# --------------------------------------------------------------------------------------------
# the shared network thread


class NetLoop:
    """One asyncio loop in one daemon thread per process, shared by every agent link, and the
    process's receive workers."""

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
        # links closing whose connection is not shut down yet (see AgentLink.shut_down)
        self.shutting_down: set[AgentLink] = set()
        self.receive_pool = ReceivePool()
        self.pace_clock = PaceClock(self.loop)
        self._batched_lock = threading.Lock()
        self._batched: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

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

    def call_soon_batched(self, callback: Callable[..., Any], *args: Any) -> None:
        """``loop.call_soon_threadsafe`` for calls made often from other threads: the calls
        made before the loop gets to them run in one callback, after one wake-up."""
        with self._batched_lock:
            self._batched.append((callback, args))
            wake = len(self._batched) == 1
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._run_batched)
            except RuntimeError:  # the loop is closed (interpreter exit): nothing will run
                with self._batched_lock:
                    self._batched.clear()
                raise

    def _run_batched(self) -> None:
        with self._batched_lock:
            calls, self._batched = self._batched, []
        for callback, args in calls:
            try:
                callback(*args)
            except Exception:  # one failing callback must not drop the others
                log.exception("agentmesh: a callback on the network thread failed")

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
    # an agent closed by its own handler finishes closing on a receive worker: wait for it,
    # or the interpreter would tear down under its connection's shutdown
    for link in list(inst.shutting_down):
        link.shut_down.wait(5.0)


class _Expiring:
    """An envelope in the outbox with the time (ms since the epoch) after which the backend
    should not deliver it."""

    __slots__ = ("envelope", "expires_ms")

    def __init__(self, envelope: Any, expires_ms: int) -> None:
        self.envelope = envelope
        self.expires_ms = expires_ms

    @property
    def counter(self) -> int:
        return int(self.envelope.counter)


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
        self._error: BaseException | None = None
        self._closing = False
        self._closed = False
        #: set once the backend is closed (after ``close``, or after the handler that closed
        #: its own agent returned)
        self.shut_down = threading.Event()
        # A persistent agent's state writes run on their own thread: the receive workers go on
        # with the next batch while the last one is written, and a send never waits for the
        # disk.
        self._writer_thread = (
            StateWriter(
                core,
                self.loop,
                closing=lambda: self._closing,
                report=self._note_write_error,
            )
            if core.persistent
            else None
        )
        self.receiver = Receiver(
            core,
            net,
            self.backend,
            state_writer=self._writer_thread,
            prekeys_used=lambda: self.prekeys.check_soon(),
            on_closed=self._finish_close,
        )
        self.prekeys = PrekeyMaintenance(core, self.backend, self._between_batches)

    # -- start ----------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        try:
            await self.backend.register(
                self.core.keypair,
                on_batch=self.receiver.on_batch,
                pace=self.receiver.pacing.pace,
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
        with self.receiver.between_batches:
            return work(*args)

    def _note_write_error(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def start(self) -> None:
        try:
            self.net.run(self._start(), timeout=self.connect_timeout + 5.0)
        except BaseException as exc:
            self._closing = True
            self.receiver.close(0)
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
        if self._writer_thread is not None and envelope.counter == 0:  # (an _Expiring too)
            # a new sending chain (a DH step or a set-up): its keys reach the disk right after
            # it leaves, so that the peer's answers to it stay readable after a crash
            self._writer_thread.after_send()
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._kick)

    def send_expiring(self, envelope: Any, expires_ms: int) -> None:
        """:meth:`send` for an envelope the backend should not deliver after ``expires_ms``
        (ms since the epoch)."""
        self.send(_Expiring(envelope, expires_ms))

    def send_group(self, upload: GroupUpload) -> None:
        """Queue one group message for all its recipients: one upload (``Backend.
        send_group_nowait``), in order with this agent's other envelopes."""
        self.send(upload)

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
        if type(env) is GroupUpload:
            return self._try_send_group(env)
        expires_ms = 0
        if type(env) is _Expiring:
            env, expires_ms = env.envelope, env.expires_ms
        recipient, data = env.recipient, env.to_bytes()
        while True:
            try:
                if expires_ms:
                    return bool(self.backend.send_nowait(recipient, data, expires_ms))
                return bool(self.backend.send_nowait(recipient, data))
            except Exception as exc:
                self._note_error(exc, recipient)
                if getattr(exc, "client_seq", None) is not None:
                    continue  # the refusal of an earlier envelope: this one was not queued yet
                return True

    def _try_send_group(self, upload: GroupUpload) -> bool:
        while True:
            try:
                return bool(self.backend.send_group_nowait(upload.recipients, upload.data))
            except Exception as exc:
                self._note_error(exc, ", ".join(upload.recipients))
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

    # -- closing --------------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        self._closing = True
        self._closed = True
        self.net.links.discard(self)
        self.net.shutting_down.add(self)
        # the batch in progress (if any) is finished and acknowledged first; when a handler
        # closes its own agent, its batch's envelopes are unsealed already: every one reaches
        # the handlers and the batch is acknowledged, and then the connection closes
        # (``_finish_close``, called by the receiver)
        if self.receiver.close(timeout):
            return
        self._stop_writer(timeout)
        self._shutdown()

    def _finish_close(self) -> None:
        self._stop_writer(None)
        self._shutdown()

    def wait_shut_down(self, timeout: float | None) -> bool:
        """Wait until the connection is shut down (a close deferred to the end of the
        handler that asked for it finishes on a receive worker)."""
        if threading.current_thread() is self.net.thread or self.receiver.draining_here():
            return self.shut_down.is_set()  # (it waits for this very thread)
        return self.shut_down.wait(timeout)

    def _stop_writer(self, timeout: float | None) -> None:
        if self._writer_thread is not None:
            self._writer_thread.stop(timeout)

    def _shutdown(self) -> None:
        async def shutdown() -> None:
            if self._writer is not None:
                self._writer.cancel()
            self.prekeys.stop()
            # the agent flushed already (core.close); do not wait for the hub again
            await self.backend.close(timeout=0.5)

        try:
            self.net.run(shutdown(), timeout=10.0)
        except Exception as exc:
            log.debug("agent %r: error closing the hub connection: %s", self.core.agent_id, exc)
        finally:
            self.shut_down.set()
            self.net.shutting_down.discard(self)
