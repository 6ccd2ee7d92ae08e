"""The SQLite store's one writer: a worker thread that owns the writer connection and commits
everything that changes state, gathered into batches (group commit).

While a batch commits, the event loop gathers the next one (new envelopes, acknowledgements,
bindings, sender progress, counters); the batch is written in one transaction and reported back
once it is durable. A failing commit is retried a few times, then reported fatal. Transactions
of their own (prekey changes) run on the same thread, between group commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agentmesh.errors import StoreError
from agentmesh.hub_store import BindResult
from agentmesh.hub_store_sqlite.directory import bind_agent
from agentmesh.hub_store_sqlite.schema import OpenedStore, open_writer

__all__ = ["GATHER_SECONDS", "GATHER_SENDERS", "Batch", "Purge", "StoreWriter"]

log = logging.getLogger("agentmesh.hub")

T = TypeVar("T")

#: A commit writes a progress row for every sender it carries and is answered by a SEND_ACK
#: to each: with hundreds of agents sending, each sends a message or two per commit, and those
#: rows and acknowledgements cost about as much as the messages. So when a commit ends with
#: this many senders gathered for the next one ...
GATHER_SENDERS = 16
#: ... the next starts this long after the previous one started (not at once): a sender's
#: acceptance waits up to this much longer, only then; deliveries do not wait for commits.
GATHER_SECONDS = 0.03


class RowWriter:
    """One statement applied to many rows, ``CHUNK`` rows per execution: SQLite runs one
    statement of many rows for about half the cost per row of one statement per row, and a
    commit of a hub with hundreds of busy agents writes a progress row for each of them."""

    CHUNK = 32

    def __init__(self, head: str, row: str, tail: str = "") -> None:
        self.one = head + row + tail
        self.many = head + ", ".join([row] * self.CHUNK) + tail

    def write(self, db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        chunk = self.CHUNK
        whole = len(rows) - len(rows) % chunk
        for i in range(0, whole, chunk):
            db.execute(self.many, [v for row in rows[i : i + chunk] for v in row])
        if whole < len(rows):
            db.executemany(self.one, rows[whole:])


_INSERT = RowWriter(
    "INSERT OR REPLACE INTO inbox (seq, recipient, envelope, enqueued_at, expires_at) VALUES ",
    "(?, ?, ?, ?, ?)",
)
_DELETE = RowWriter("DELETE FROM inbox WHERE seq IN (", "?", ")")


def progress_writer(sqlite_version: tuple[int, ...]) -> RowWriter:
    """The senders' progress rows: upserted (rewritten in place) where SQLite can (3.24 and
    later), else replaced (the old row deleted, the new one inserted)."""
    head = "INSERT INTO senders (agent_id, session, last_seq) VALUES "
    if sqlite_version >= (3, 24, 0):
        tail = (
            " ON CONFLICT (agent_id) DO UPDATE SET session = excluded.session, "
            "last_seq = excluded.last_seq"
        )
        return RowWriter(head, "(?, ?, ?)", tail)
    return RowWriter(head.replace("INSERT", "INSERT OR REPLACE", 1), "(?, ?, ?)")


_PROGRESS = progress_writer(sqlite3.sqlite_version_info)


@dataclass
class Purge:
    """One recipient's expired envelopes to delete in a commit (``Inbox.purge_expired``)."""

    recipient: str
    now_ms: int
    limit: int
    done: Callable[[list[tuple[int, int]], int], None]


def purge_expired(db: sqlite3.Connection, purge: Purge) -> tuple[list[tuple[int, int]], int]:
    """Deletes up to ``purge.limit`` of the recipient's envelopes whose expiry has passed
    (earliest expiry first); returns their ``(seq, size)`` and the earliest expiry left."""
    rows = db.execute(
        "SELECT seq, LENGTH(envelope) FROM inbox WHERE recipient = ? AND expires_at > 0 "
        "AND expires_at <= ? ORDER BY expires_at LIMIT ?",
        (purge.recipient, purge.now_ms, purge.limit),
    ).fetchall()
    if rows:
        _DELETE.write(db, [(seq,) for seq, _ in rows])
    left = db.execute(
        "SELECT MIN(expires_at) FROM inbox WHERE recipient = ? AND expires_at > 0",
        (purge.recipient,),
    ).fetchone()[0]
    return [(int(seq), int(size)) for seq, size in rows], int(left or 0)


@dataclass
class Batch:
    # seq -> (recipient, envelope, expires ms since the epoch or 0)
    inserts: dict[int, tuple[str, bytes, int]] = field(default_factory=dict)
    deletes: list[int] = field(default_factory=list)
    progress: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    binds: list[tuple[str, str, str, bytes, asyncio.Future[BindResult]]] = field(
        default_factory=list
    )
    #: run after the inserts and deletes, in the same transaction
    purges: list[Purge] = field(default_factory=list)
    tokens: list[Any] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    ceiling: int | None = None
    message_count: int | None = None

    def empty(self) -> bool:
        return not (
            self.inserts
            or self.deletes
            or self.progress
            or self.binds
            or self.purges
            or self.tokens
            or self.waiters
            or self.ceiling is not None
            or self.message_count is not None
        )


class StoreWriter:
    """The writer thread and connection of one SQLite store, and the batch being gathered."""

    def __init__(
        self,
        on_commit: Callable[[list[Any]], None],
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._on_commit = on_commit  # the tokens of the puts a commit made durable
        self._on_fatal = on_fatal
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        #: what the next commit writes (the event loop adds to it, then calls :meth:`kick`)
        self.pending = Batch()
        self._committing = False
        #: commits made and the seconds they took (the hub's metrics)
        self.commits = 0
        self.commit_seconds = 0.0
        self._scheduled = False
        self._commit_task: asyncio.Task[None] | None = None
        self._gathering: asyncio.TimerHandle | None = None  # the next commit's delayed start
        #: sequence numbers whose delete is not committed yet (reads skip them)
        self.deleting: set[int] = set()
        self.ceiling = 1  # durable reservation: every seq < ceiling is reserved on disk

    # ---- life cycle ------------------------------------------------------------------------

    async def open(self, path: Path, synchronous: str) -> OpenedStore:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentmesh-hub-store")
        opened = await self._loop.run_in_executor(self._executor, open_writer, path, synchronous)
        self._db = opened.db
        self.ceiling = opened.ceiling
        return opened

    async def finish(self) -> None:
        """Commits what is pending, then closes the writer connection (checkpointing the WAL)."""
        if self._loop is not None:
            try:
                await self._drain()
            except Exception as exc:  # pragma: no cover - reported, then we still close
                log.error("final commit failed: %s", exc)
        if self._executor is not None and self._db is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(self._executor, self._close_db)

    async def shutdown(self) -> None:
        """Stops the writer thread."""
        if self._executor is not None:
            ex = self._executor
            self._executor = None
            await asyncio.get_running_loop().run_in_executor(None, ex.shutdown, True)

    async def _drain(self) -> None:
        while True:
            task = self._commit_task
            if task is not None and not task.done():
                await asyncio.shield(task)
            elif not self.pending.empty():
                if self._gathering is not None:  # (closing: commit now)
                    self._gathering.cancel()
                    self._gathering = None
                self._start_commit()
            else:
                return

    def _close_db(self) -> None:
        db = self._db
        if db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        self._db = None

    # ---- transactions of their own ---------------------------------------------------------

    # Prekey changes are transactions of their own on the writer thread: the one executor
    # thread runs them between group commits, so a claim is exclusive and durable before the
    # key leaves the hub.

    async def in_transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs ``fn(db, *args)`` in one transaction of its own on the writer thread."""
        assert self._loop is not None and self._executor is not None
        return await self._loop.run_in_executor(self._executor, self._run, fn, *args)

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._transaction() as db:
            return fn(db, *args)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the writer connection (writer thread only): committed when
        the block ends, rolled back if it raises."""
        db = self._db
        if db is None:
            raise StoreError("store is closed")
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    # ---- group commit ------------------------------------------------------------------------

    async def bind(self, agent_id: str, identity_key: str, data: str, session: bytes) -> BindResult:
        """Binds an agent in the next commit; returns once that commit is durable."""
        assert self._loop is not None
        fut: asyncio.Future[BindResult] = self._loop.create_future()
        self.pending.binds.append((agent_id, identity_key, data, session, fut))
        self.kick()
        return await fut

    async def barrier(self) -> None:
        """Returns once everything gathered so far is committed."""
        if self._loop is None:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self.pending.waiters.append(fut)
        self.kick()
        await fut

    def kick(self) -> None:
        """Something was added to :attr:`pending`: commit it soon."""
        if self._committing or self._scheduled or self._loop is None:
            return
        self._scheduled = True
        # Two hops: start after everything the current loop iteration still submits, and after
        # the socket writes it scheduled (live deliveries leave before the commit work starts).
        self._loop.call_soon(self._loop.call_soon, self._scheduled_start)

    def _scheduled_start(self) -> None:
        self._scheduled = False
        if not self._committing:
            self._start_commit()

    def _start_commit(self) -> None:
        if self.pending.empty():
            self._committing = False
            return
        self._committing = True
        batch = self.pending
        self.pending = Batch()
        assert self._loop is not None
        self._commit_task = self._loop.create_task(self._commit(batch))

    async def _commit(self, batch: Batch) -> None:
        assert self._loop is not None and self._executor is not None
        results: list[BindResult] = []
        purged: list[tuple[list[tuple[int, int]], int]] = []
        delay = 0.05
        began = self._loop.time()
        for attempt in range(4):
            try:
                started = time.perf_counter()
                results, purged = await self._loop.run_in_executor(
                    self._executor, self._write, batch
                )
                self.commits += 1
                self.commit_seconds += time.perf_counter() - started
                break
            except Exception as exc:
                if attempt == 3:
                    log.critical("hub store commit failed for good: %s", exc)
                    err = StoreError(f"hub store commit failed: {exc}")
                    for *_, fut in batch.binds:
                        if not fut.done():
                            fut.set_exception(err)
                    for w in batch.waiters:
                        if not w.done():
                            w.set_exception(err)
                    self._committing = False
                    self._on_fatal(err)
                    return
                log.error("hub store commit failed (attempt %d, retrying): %s", attempt + 1, exc)
                await asyncio.sleep(delay)
                delay *= 4
        if batch.ceiling is not None:
            self.ceiling = max(self.ceiling, batch.ceiling)
        self.deleting.difference_update(batch.deletes)
        deleting = self.deleting
        for purge, (removed, left) in zip(batch.purges, purged, strict=True):
            # (an envelope acknowledged since is counted out by its acknowledgement)
            fresh = [row for row in removed if row[0] not in deleting] if deleting else removed
            try:
                purge.done(fresh, left)
            except Exception:  # pragma: no cover - a server bug must not stop the commits
                log.exception("purge callback failed")
        for (*_, fut), res in zip(batch.binds, results, strict=True):
            if not fut.done():
                fut.set_result(res)
        try:
            if batch.tokens:
                self._on_commit(batch.tokens)
        except Exception:  # pragma: no cover - a server bug must not stop the commits
            log.exception("on_commit callback failed")
        for w in batch.waiters:
            if not w.done():
                w.set_result(None)
        # The next batch (everything that arrived during this commit) starts right away,
        # unless many senders are in it (GATHER_SENDERS).
        if self.pending.empty():
            self._committing = False
        elif len(self.pending.progress) >= GATHER_SENDERS:
            wait = began + GATHER_SECONDS - self._loop.time()
            if wait > 0:
                self._gathering = self._loop.call_later(wait, self._gathered)
            else:
                self._start_commit()
        else:
            self._start_commit()

    def _gathered(self) -> None:
        self._gathering = None
        self._start_commit()

    def _write(
        self, batch: Batch
    ) -> tuple[list[BindResult], list[tuple[list[tuple[int, int]], int]]]:
        now = int(time.time() * 1000)
        results: list[BindResult] = []
        purged: list[tuple[list[tuple[int, int]], int]] = []
        with self._transaction() as db:
            if batch.inserts:
                _INSERT.write(db, [(s, r, e, now, x) for s, (r, e, x) in batch.inserts.items()])
            if batch.deletes:
                _DELETE.write(db, [(s,) for s in batch.deletes])
            for purge in batch.purges:
                purged.append(purge_expired(db, purge))
            if batch.progress:
                _PROGRESS.write(db, [(a, s, q) for a, (s, q) in batch.progress.items()])
            for agent_id, identity_key, data, session, _fut in batch.binds:
                results.append(bind_agent(db, agent_id, identity_key, data, session, now))
            meta: list[tuple[str, int]] = []
            if batch.ceiling is not None:
                meta.append(("seq_ceiling", batch.ceiling))
            if batch.message_count is not None:
                meta.append(("message_count", batch.message_count))
            if meta:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta)
        return results, purged
