"""The threads that run every agent's handlers in a process: one shared, elastic pool.

A platform hosts hundreds of agents in one process. A thread per agent made each received
batch a thread wake-up and a fight for the GIL (at 200 agents the receiving process spent
about five times the CPU per message of one agent). Instead, an agent with work *schedules*
itself here, and a few shared workers take the agents in turn; while a worker is busy, the
next agents' batches accumulate, so a loaded process handles larger batches with fewer
wake-ups, whatever the number of agents.

Two promises hold as before:

* **One agent's batches run one at a time, in order**: an agent is in the ready queue at most
  once and is drained by one worker at a time (see :class:`agentmesh.link_receiver.Receiver`).
* **A handler that blocks does not stop other agents**: when no worker has started a task for
  :data:`STUCK_AFTER` seconds while agents wait, the pool starts another worker (up to
  :data:`MAX_WORKERS`), so a handler waiting for another agent of the same process (a
  request to a neighbour, say) cannot deadlock the process. A worker beyond the first leaves
  once it is not needed: when it ends a task while no other worker is stuck (none has been
  in one task for :data:`STUCK_AFTER` seconds, none waits in :func:`waiting`), or after
  :data:`IDLE_EXIT` seconds without work. A worker started because the process was paused
  (the operating system gave the busy one no time for a while, a long garbage collection)
  so leaves at once instead of sharing the agents for the next :data:`IDLE_EXIT` seconds: two
  workers on a process with plenty of work fight for the interpreter lock and each handles
  smaller batches, at more CPU per message.
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

__all__ = [
    "IDLE_EXIT",
    "MAX_TOGETHER",
    "MAX_WORKERS",
    "STUCK_AFTER",
    "Drainable",
    "ReceivePool",
    "waiting",
    "while_waiting",
]

log = logging.getLogger("agentmesh.link")

#: Seconds with agents waiting and no worker starting a task before another worker starts.
STUCK_AFTER = 0.1
#: Seconds a worker beyond the first waits for work before it leaves.
IDLE_EXIT = 30.0
#: Most workers per process (as many handlers as this may block at once before others wait).
MAX_WORKERS = 1024
#: Most tasks a worker takes in one go when they can run together (agents' unseal stages:
#: one native call and one signature verification for all of them).
MAX_TOGETHER = 64


_this_thread = threading.local()


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Wrap a wait for something another agent of this process must receive first (a reply):
    on a receive worker, the pool then starts another worker at once if every worker waits,
    instead of after :data:`STUCK_AFTER`, and the agent whose handler waits may go on
    unsealing (see :func:`while_waiting`)."""
    pool: ReceivePool | None = getattr(_this_thread, "pool", None)
    hook: Callable[[bool], None] | None = getattr(_this_thread, "on_wait", None)
    if pool is None:
        yield
        return
    if hook is not None:
        hook(True)
    try:
        with pool.waiting():
            yield
    finally:
        if hook is not None:
            hook(False)


class while_waiting:
    """Within this block on a worker, ``waiting()`` calls ``hook(True)`` on entering and
    ``hook(False)`` on leaving (how a receiver learns that its handler waits). (A class, not
    a generator: it wraps every handle stage of every agent.)"""

    __slots__ = ("hook", "previous")

    def __init__(self, hook: Callable[[bool], None]) -> None:
        self.hook = hook
        self.previous: Callable[[bool], None] | None = None

    def __enter__(self) -> None:
        self.previous = getattr(_this_thread, "on_wait", None)
        _this_thread.on_wait = self.hook

    def __exit__(self, *exc: object) -> None:
        _this_thread.on_wait = self.previous


class Drainable(Protocol):
    """A task. One may also have a ``together`` attribute: None, or a function that drains
    several tasks with the same ``together`` in one go (called with every such task waiting
    in the queue, up to :data:`MAX_TOGETHER`, instead of their ``drain``)."""

    def drain(self) -> None:
        """Handle everything pending; called by one worker at a time."""


class ReceivePool:
    """Shared worker threads draining scheduled agents (see the module docstring)."""

    def __init__(self, name: str = "agentmesh-receive") -> None:
        self._name = name
        lock = threading.Lock()
        self._cv = threading.Condition(lock)  # idle workers wait here
        self._watch_cv = threading.Condition(lock)  # the watcher waits here
        self._ready: collections.deque[Drainable] = collections.deque()
        self._idle = 0
        self._waiting = 0  # workers inside ``waiting()``
        self._workers = 0
        self._spawned = 0
        self._last_start = time.monotonic()
        self._started: dict[int, float] = {}  # worker thread -> when its current task began
        self._watcher: threading.Thread | None = None
        self._watch_timed = False  # the watcher waits with a deadline: it looks again anyway

    @property
    def workers(self) -> int:
        with self._cv:
            return self._workers

    def queued(self) -> int:
        """How many tasks wait for a worker now (read without the lock: a hint)."""
        return len(self._ready)

    def schedule(self, task: Drainable) -> None:
        """Queue ``task`` (from any thread); the caller makes sure it is queued once."""
        self.schedule_many((task,))

    def schedule_next(self, task: Drainable) -> None:
        """Queue ``task`` from a worker that goes back for its next task right away: no other
        worker is woken for it (on two cores, waking one only to fight this one for the GIL
        cost more than the task), unless every worker waits in ``waiting()``."""
        with self._cv:
            alone = getattr(_this_thread, "pool", None) is self and not self._ready
            if alone:  # nothing ahead of it: this worker's very next task
                self._ready.append(task)
                if self._workers <= self._waiting:
                    self._spawn()
                return
        self.schedule(task)

    def schedule_next_many(self, tasks: collections.abc.Sequence[Drainable]) -> None:
        """``schedule_next`` for several tasks: they run one after another on this worker,
        and if one of them blocks, the watcher has the others taken by another worker after
        :data:`STUCK_AFTER` (an idle one, else a new one)."""
        with self._cv:
            if getattr(_this_thread, "pool", None) is self and not self._ready:
                self._ready.extend(tasks)
                if self._workers <= self._waiting:
                    self._spawn()
                elif len(tasks) > 1:
                    self._wake_watcher()
                return
        self.schedule_many(tasks)

    def schedule_many(self, tasks: collections.abc.Iterable[Drainable]) -> None:
        """Queue several tasks with at most one wake-up per idle worker they need."""
        with self._cv:
            before = len(self._ready)
            self._ready.extend(tasks)
            added = len(self._ready) - before
            if not added:
                return
            if self._idle:
                self._cv.notify(min(added, self._idle))
            elif self._workers <= self._waiting:
                self._spawn()
            else:
                self._wake_watcher()

    def _wake_watcher(self) -> None:
        """(``_cv`` held) The watcher looks at the queue (started on first use)."""
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name=f"{self._name}-watch", daemon=True
            )
            self._watcher.start()
        # (waking it for every agent queued behind a busy worker cost a thread switch per
        # agent: a process hosting hundreds paid that on nearly every message)
        if not self._watch_timed:
            self._watch_cv.notify()

    def _spawn(self) -> None:
        self._workers += 1
        self._spawned += 1
        threading.Thread(
            target=self._work, name=f"{self._name}-{self._spawned}", daemon=True
        ).start()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        with self._cv:
            self._waiting += 1
            if self._ready:  # what this worker would have taken next goes to another
                if self._idle:
                    self._cv.notify()
                elif self._workers <= self._waiting:
                    self._spawn()
        try:
            yield
        finally:
            with self._cv:
                self._waiting -= 1

    def _surplus(self, now: float) -> bool:
        """Whether one worker fewer would do (``_cv`` held, by a worker between tasks): more
        than one, and more than one plus those stuck in a task or waiting."""
        if self._workers <= 1:
            return False
        stuck = sum(1 for began in self._started.values() if now - began >= STUCK_AFTER)
        return self._workers > 1 + max(stuck, self._waiting)

    def _work(self) -> None:
        _this_thread.pool = self
        me = threading.get_ident()
        cv = self._cv
        while True:
            with cv:
                self._started.pop(me, None)
                if self._surplus(time.monotonic()):
                    self._workers -= 1
                    if self._ready and self._idle:  # (queued for this one by schedule_next)
                        cv.notify()
                    return
                while not self._ready:
                    self._idle += 1
                    woken = cv.wait(IDLE_EXIT)
                    self._idle -= 1
                    if not woken and not self._ready and self._workers > 1:
                        self._workers -= 1
                        return
                task = self._ready.popleft()
                together = getattr(task, "together", None)
                tasks = self._take_together(task, together) if together is not None else None
                self._last_start = self._started[me] = time.monotonic()
            try:
                if tasks is not None and together is not None:
                    together(tasks)
                else:
                    task.drain()
            except Exception:  # a bug in one agent's drain must not take the worker down
                log.exception("agentmesh: receiving for an agent failed")

    def _take_together(
        self, first: Drainable, together: Callable[[list[Drainable]], None]
    ) -> list[Drainable] | None:
        """``first`` and the queued tasks that run together with it, taken off the queue
        (``_cv`` held); None when no other waits."""
        ready = self._ready
        if not ready:
            return None
        tasks = [first]
        rest: collections.deque[Drainable] = collections.deque()
        for task in ready:
            if len(tasks) < MAX_TOGETHER and getattr(task, "together", None) is together:
                tasks.append(task)
            else:
                rest.append(task)
        if len(tasks) == 1:
            return None
        self._ready = rest
        return tasks

    def _watch(self) -> None:
        cv = self._watch_cv
        with cv:
            while True:
                if self._ready:
                    waited = time.monotonic() - self._last_start
                    if waited >= STUCK_AFTER and (self._idle or self._workers < MAX_WORKERS):
                        if self._idle:  # (tasks queued for a worker that is stuck in one)
                            self._cv.notify()
                        else:
                            log.debug("agentmesh: every receive worker is busy; starting another")
                            self._spawn()
                        self._last_start = time.monotonic()
                        continue
                    self._watch_timed = True
                    cv.wait(max(STUCK_AFTER - waited, 0.001))
                    self._watch_timed = False
                else:
                    cv.wait()
