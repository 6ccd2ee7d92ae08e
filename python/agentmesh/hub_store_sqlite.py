"""The network hub's default store: :class:`SQLiteBackend`, a
:class:`~agentmesh.hub_store.HubBackend`.

In one paragraph: one writer connection lives in one worker thread; everything
that changes state (new envelopes, acknowledgements, bindings, sender progress, counters) is
gathered in the event loop into a *batch* while the previous batch commits, then the whole batch
is written in one transaction (group commit) and reported back with :attr:`HubBackend.on_commit`.
The database runs in WAL mode with ``synchronous=FULL`` by default: a COMMIT returns only after
the WAL is fsync'ed, so what was reported committed survives a ``kill -9`` of the hub and a power
cut. ``synchronous="NORMAL"`` skips that fsync (the WAL is synced at checkpoints): it still
survives a killed process (the written WAL pages are in the OS page cache) but a power cut may
lose the last commits. Reads (catching up an inbox, bundles) use a second connection on the
event loop thread; WAL lets them run while the writer commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentmesh.errors import StoreError
from agentmesh.hub_store import (
    SCHEMA_VERSION,
    SEQ_BLOCK,
    BindResult,
    HubBackend,
    StoreState,
)

__all__ = ["SQLiteBackend"]

log = logging.getLogger("agentmesh.hub")


@dataclass
class _Batch:
    inserts: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    deletes: list[int] = field(default_factory=list)
    progress: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    binds: list[tuple[str, str, str, bytes, asyncio.Future[BindResult]]] = field(
        default_factory=list
    )
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
            or self.tokens
            or self.waiters
            or self.ceiling is not None
            or self.message_count is not None
        )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    identity_key TEXT NOT NULL,
    bundle TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY,
    recipient TEXT NOT NULL,
    envelope BLOB NOT NULL,
    enqueued_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_by_recipient ON inbox (recipient, seq);
CREATE TABLE IF NOT EXISTS senders (
    agent_id TEXT PRIMARY KEY,
    session BLOB NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS prekeys (
    agent_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (agent_id, id)
) WITHOUT ROWID;
"""


class SQLiteBackend(HubBackend):
    """The embedded store: one SQLite file (plus its ``-wal``/``-shm`` and a ``.lock`` file)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        ephemeral: bool = False,
    ) -> None:
        sync = synchronous.upper()
        if sync not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be 'FULL', 'NORMAL' or 'EXTRA'")
        self.path = Path(path)
        self.synchronous = sync
        #: Delete the files on close (used for the private store of a ``port=0`` hub).
        self.ephemeral = ephemeral
        self.on_commit = _ignore
        self.on_fatal = _ignore
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._pending = _Batch()
        self._committing = False
        self._scheduled = False
        self._closed = False
        self._commit_task: asyncio.Task[None] | None = None
        self._deleting: set[int] = set()
        self._next_seq = 1
        self._ceiling = 1  # durable reservation: every seq < ceiling is reserved on disk
        self._ceiling_requested = 0
        self._message_count = 0
        self._prekeys: dict[str, int] = {}  # agent id -> one-time prekeys held (a count)

    @property
    def description(self) -> str:
        return f"sqlite:{self.path} (synchronous={self.synchronous})"

    # ---- life cycle ------------------------------------------------------------------------

    async def open(self) -> StoreState:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentmesh-hub-store")
        try:
            state = await self._loop.run_in_executor(self._executor, self._open_writer)
            self._reader = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._reader.execute("PRAGMA query_only = ON")
        except Exception:
            await self._shutdown_executor()
            self._release_lock()
            raise
        return state

    def _acquire_lock(self) -> None:
        lock_path = str(self.path) + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock
            self._lock_fd = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"store {self.path} is in use by another hub process (lock {lock_path})"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def _open_writer(self) -> StoreState:
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot put {self.path} in WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous = {self.synchronous}")
            db.execute("PRAGMA journal_size_limit = 67108864")
            db.execute("PRAGMA busy_timeout = 5000")
            db.executescript(_SCHEMA)
            db.execute("BEGIN IMMEDIATE")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            version = meta.get("schema_version")
            if version is not None and int(version) > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema version {version}; this build knows "
                    f"{SCHEMA_VERSION}"
                )
            hub_id = meta.get("hub_id")
            if not isinstance(hub_id, bytes) or len(hub_id) != 16:
                hub_id = os.urandom(16)
            max_seq = db.execute("SELECT MAX(seq) FROM inbox").fetchone()[0] or 0
            floor = max(int(meta.get("seq_ceiling") or 1), max_seq + 1)
            ceiling = floor + SEQ_BLOCK
            count = int(meta.get("message_count") or 0)
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", SCHEMA_VERSION),
                    ("hub_id", hub_id),
                    ("seq_ceiling", ceiling),
                    ("message_count", count),
                ],
            )
            db.execute("COMMIT")
            agents = {row[0] for row in db.execute("SELECT agent_id FROM agents")}
            prekeys = {
                a: int(n)
                for a, n in db.execute("SELECT agent_id, COUNT(*) FROM prekeys GROUP BY agent_id")
            }
            queues = {
                r: (int(n), int(b or 0))
                for r, n, b in db.execute(
                    "SELECT recipient, COUNT(*), SUM(LENGTH(envelope)) FROM inbox "
                    "GROUP BY recipient"
                )
            }
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open hub store {self.path}: {exc}") from exc
        self._writer = db
        self._next_seq = floor
        self._ceiling = ceiling
        self._ceiling_requested = ceiling
        self._message_count = count
        self._prekeys = prekeys
        return StoreState(hub_id=hub_id, agents=agents, queues=queues, message_count=count)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            try:
                await self._drain()
            except Exception as exc:  # pragma: no cover - reported, then we still close
                log.error("final commit failed: %s", exc)
        if self._executor is not None and self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(self._executor, self._close_writer)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self._shutdown_executor()
        self._release_lock()
        if self.ephemeral:
            for suffix in ("", "-wal", "-shm", ".lock"):
                with contextlib.suppress(OSError):
                    os.unlink(str(self.path) + suffix)
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()

    async def _drain(self) -> None:
        while True:
            task = self._commit_task
            if task is not None and not task.done():
                await asyncio.shield(task)
            elif not self._pending.empty():
                self._start_commit()
            else:
                return

    def _close_writer(self) -> None:
        db = self._writer
        if db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        self._writer = None

    async def _shutdown_executor(self) -> None:
        if self._executor is not None:
            ex = self._executor
            self._executor = None
            await asyncio.get_running_loop().run_in_executor(None, ex.shutdown, True)

    # ---- sequence numbers --------------------------------------------------------------------

    def peek_next_seq(self) -> int:
        return self._next_seq

    def next_seq(self) -> tuple[int, bool]:
        seq = self._next_seq
        self._next_seq = seq + 1
        # Extend the durable reservation when half of the current block is used.
        if seq >= self._ceiling_requested - SEQ_BLOCK // 2:
            self._ceiling_requested += SEQ_BLOCK
            self._pending.ceiling = self._ceiling_requested
            self._kick()
        return seq, seq < self._ceiling

    # ---- inbox -------------------------------------------------------------------------------

    @property
    def message_count(self) -> int:
        return self._message_count

    def put(self, recipient: str, seq: int, envelope: bytes, token: Any) -> None:
        b = self._pending
        b.inserts[seq] = (recipient, envelope)
        b.tokens.append(token)
        self._message_count += 1
        b.message_count = self._message_count
        self._kick()

    def ack(self, recipient: str, seq: int) -> None:
        b = self._pending
        if b.inserts.pop(seq, None) is not None:
            return  # never written: its commit has not started yet
        b.deletes.append(seq)
        self._deleting.add(seq)
        self._kick()

    def note_progress(self, agent_id: str, session: bytes, client_seq: int) -> None:
        self._pending.progress[agent_id] = (session, client_seq)

    async def fetch(self, recipient: str, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        if self._reader is None:
            return []
        rows = self._reader.execute(
            "SELECT seq, envelope FROM inbox WHERE recipient = ? AND seq > ? ORDER BY seq LIMIT ?",
            (recipient, after_seq, limit + len(self._deleting)),
        ).fetchall()
        deleting = self._deleting
        out = [(int(s), bytes(e)) for s, e in rows if s not in deleting]
        return out[:limit]

    async def barrier(self) -> None:
        if self._loop is None:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pending.waiters.append(fut)
        self._kick()
        await fut

    # ---- directory ---------------------------------------------------------------------------

    def prekey_count(self, agent_id: str) -> int:
        return self._prekeys.get(agent_id, 0)

    # Prekey changes are transactions of their own on the writer thread: the one executor
    # thread runs them between group commits, so a claim is exclusive and durable before the
    # key leaves the hub.

    async def add_prekeys(self, agent_id: str, keys: list[tuple[int, str]], limit: int) -> int:
        if not keys:
            return self._prekeys.get(agent_id, 0)
        assert self._loop is not None and self._executor is not None
        count = await self._loop.run_in_executor(
            self._executor, self._add_prekeys_tx, agent_id, keys, limit
        )
        self._prekeys[agent_id] = count
        return count

    async def claim_prekey(self, agent_id: str) -> tuple[int, str] | None:
        if not self._prekeys.get(agent_id):
            return None
        assert self._loop is not None and self._executor is not None
        claimed, count = await self._loop.run_in_executor(
            self._executor, self._claim_prekey_tx, agent_id
        )
        self._prekeys[agent_id] = count
        return claimed

    def _add_prekeys_tx(self, agent_id: str, keys: list[tuple[int, str]], limit: int) -> int:
        with self._transaction() as db:
            count = self._prekeys_of(db, agent_id)
            for key_id, key in keys:
                if count >= limit:
                    break
                cur = db.execute(
                    "INSERT OR IGNORE INTO prekeys (agent_id, id, key) VALUES (?, ?, ?)",
                    (agent_id, key_id, key),
                )
                count += cur.rowcount
        return count

    def _claim_prekey_tx(self, agent_id: str) -> tuple[tuple[int, str] | None, int]:
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, key FROM prekeys WHERE agent_id = ? ORDER BY id LIMIT 1", (agent_id,)
            ).fetchone()
            if row is not None:
                db.execute("DELETE FROM prekeys WHERE agent_id = ? AND id = ?", (agent_id, row[0]))
            count = self._prekeys_of(db, agent_id)
        return ((int(row[0]), str(row[1])) if row is not None else None), count

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the writer connection (writer thread only): committed when
        the block ends, rolled back if it raises."""
        db = self._writer
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

    @staticmethod
    def _prekeys_of(db: sqlite3.Connection, agent_id: str) -> int:
        row = db.execute("SELECT COUNT(*) FROM prekeys WHERE agent_id = ?", (agent_id,)).fetchone()
        return int(row[0])

    async def bind_agent(
        self, agent_id: str, identity_key: str, bundle: dict[str, Any], session: bytes
    ) -> BindResult:
        assert self._loop is not None
        fut: asyncio.Future[BindResult] = self._loop.create_future()
        data = json.dumps(bundle, separators=(",", ":"), sort_keys=True)
        self._pending.binds.append((agent_id, identity_key, data, session, fut))
        self._kick()
        return await fut

    async def get_bundle(self, agent_id: str) -> dict[str, Any] | None:
        if self._reader is None:
            return None
        row = self._reader.execute(
            "SELECT bundle FROM agents WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        if row is None:
            return None
        bundle: dict[str, Any] = json.loads(row[0])
        return bundle

    async def list_agents(self) -> list[str]:
        if self._reader is None:
            return []
        return [r[0] for r in self._reader.execute("SELECT agent_id FROM agents ORDER BY agent_id")]

    # ---- group commit ------------------------------------------------------------------------

    def _kick(self) -> None:
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
        if self._pending.empty():
            self._committing = False
            return
        self._committing = True
        batch = self._pending
        self._pending = _Batch()
        assert self._loop is not None
        self._commit_task = self._loop.create_task(self._commit(batch))

    async def _commit(self, batch: _Batch) -> None:
        assert self._loop is not None and self._executor is not None
        results: list[BindResult] = []
        delay = 0.05
        for attempt in range(4):
            try:
                results = await self._loop.run_in_executor(self._executor, self._write, batch)
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
                    self.on_fatal(err)
                    return
                log.error("hub store commit failed (attempt %d, retrying): %s", attempt + 1, exc)
                await asyncio.sleep(delay)
                delay *= 4
        if batch.ceiling is not None:
            self._ceiling = max(self._ceiling, batch.ceiling)
        self._deleting.difference_update(batch.deletes)
        for (*_, fut), res in zip(batch.binds, results, strict=True):
            if not fut.done():
                fut.set_result(res)
        try:
            if batch.tokens:
                self.on_commit(batch.tokens)
        except Exception:  # pragma: no cover - a server bug must not stop the commits
            log.exception("on_commit callback failed")
        for w in batch.waiters:
            if not w.done():
                w.set_result(None)
        # The next batch (everything that arrived during this commit) starts right away.
        if self._pending.empty():
            self._committing = False
        else:
            self._start_commit()

    def _write(self, batch: _Batch) -> list[BindResult]:
        now = int(time.time() * 1000)
        results: list[BindResult] = []
        with self._transaction() as db:
            if batch.inserts:
                db.executemany(
                    "INSERT OR REPLACE INTO inbox (seq, recipient, envelope, enqueued_at) "
                    "VALUES (?, ?, ?, ?)",
                    [(s, r, e, now) for s, (r, e) in batch.inserts.items()],
                )
            if batch.deletes:
                db.executemany("DELETE FROM inbox WHERE seq = ?", [(s,) for s in batch.deletes])
            if batch.progress:
                db.executemany(
                    "INSERT OR REPLACE INTO senders (agent_id, session, last_seq) VALUES (?, ?, ?)",
                    [(a, s, q) for a, (s, q) in batch.progress.items()],
                )
            for agent_id, identity_key, data, session, _fut in batch.binds:
                results.append(self._bind(db, agent_id, identity_key, data, session, now))
            meta: list[tuple[str, int]] = []
            if batch.ceiling is not None:
                meta.append(("seq_ceiling", batch.ceiling))
            if batch.message_count is not None:
                meta.append(("message_count", batch.message_count))
            if meta:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta)
        return results

    @staticmethod
    def _bind(
        db: sqlite3.Connection,
        agent_id: str,
        identity_key: str,
        data: str,
        session: bytes,
        now: int,
    ) -> BindResult:
        row = db.execute(
            "SELECT identity_key FROM agents WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO agents (agent_id, identity_key, bundle, registered_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (agent_id, identity_key, data, now, now),
            )
            created = True
        elif row[0] != identity_key:
            return BindResult(ok=False)
        else:
            db.execute(
                "UPDATE agents SET bundle = ?, updated_at = ? WHERE agent_id = ?",
                (data, now, agent_id),
            )
            created = False
        prog = db.execute(
            "SELECT session, last_seq FROM senders WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        acked = int(prog[1]) if prog is not None and bytes(prog[0]) == session else 0
        return BindResult(ok=True, acked_seq=acked, created=created)


def _ignore(*_args: Any) -> None:
    return None
