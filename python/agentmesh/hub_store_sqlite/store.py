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

The rooms: this one (the store's face: life cycle, sequence numbers, inbox and directory
operations, the reads), :mod:`.writer` (the writer thread and group commit), :mod:`.schema`
(the file: schema, opening, the lock) and :mod:`.directory` (the directory tables' writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentmesh.hub_store import SEQ_BLOCK, BindResult, HubBackend, StoreState
from agentmesh.hub_store_sqlite.directory import add_prekeys, claim_prekey, rebind_agent
from agentmesh.hub_store_sqlite.schema import lock_store, unlock_store
from agentmesh.hub_store_sqlite.writer import Purge, StoreWriter

__all__ = ["SQLiteBackend"]

log = logging.getLogger("agentmesh.hub")


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
        # (through lambdas: the server sets on_commit and on_fatal after construction)
        self._writer = StoreWriter(
            lambda tokens: self.on_commit(tokens), lambda err: self.on_fatal(err)
        )
        self._reader: sqlite3.Connection | None = None
        self._ages_reader: sqlite3.Connection | None = None  # (metrics, on a worker thread)
        self._ages_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._closed = False
        self._next_seq = 1
        self._ceiling_requested = 0
        self._message_count = 0
        self._prekeys: dict[str, int] = {}  # agent id -> one-time prekeys held (a count)

    @property
    def description(self) -> str:
        return f"sqlite:{self.path} (synchronous={self.synchronous})"

    # ---- life cycle ------------------------------------------------------------------------

    async def open(self) -> StoreState:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
            log.info("created the store's directory %s", parent)
        self._lock_fd = lock_store(self.path)
        try:
            opened = await self._writer.open(self.path, self.synchronous)
            self._reader = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._reader.execute("PRAGMA query_only = ON")
        except Exception:
            await self._writer.shutdown()
            self._release_lock()
            raise
        self._next_seq = opened.next_seq
        self._ceiling_requested = opened.ceiling
        self._message_count = opened.state.message_count
        self._prekeys = opened.prekeys
        return opened.state

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            unlock_store(self._lock_fd)
            self._lock_fd = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._writer.finish()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        with self._ages_lock:
            if self._ages_reader is not None:
                self._ages_reader.close()
                self._ages_reader = None
        await self._writer.shutdown()
        self._release_lock()
        if self.ephemeral:
            for suffix in ("", "-wal", "-shm", ".lock"):
                with contextlib.suppress(OSError):
                    os.unlink(str(self.path) + suffix)
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()

    # ---- sequence numbers --------------------------------------------------------------------

    def peek_next_seq(self) -> int:
        return self._next_seq

    def next_seq(self) -> tuple[int, bool]:
        seq = self._next_seq
        self._next_seq = seq + 1
        # Extend the durable reservation when half of the current block is used.
        if seq >= self._ceiling_requested - SEQ_BLOCK // 2:
            self._ceiling_requested += SEQ_BLOCK
            self._writer.pending.ceiling = self._ceiling_requested
            self._writer.kick()
        return seq, seq < self._writer.ceiling

    # ---- inbox -------------------------------------------------------------------------------

    @property
    def message_count(self) -> int:
        return self._message_count

    def commit_stats(self) -> tuple[int, float]:
        return self._writer.commits, self._writer.commit_seconds

    def put(
        self, recipient: str, seq: int, envelope: bytes, token: Any, expires_ms: int = 0
    ) -> None:
        b = self._writer.pending
        b.inserts[seq] = (recipient, envelope, expires_ms)
        b.tokens.append(token)
        self._message_count += 1
        b.message_count = self._message_count
        self._writer.kick()

    def put_many(self, rows: list[tuple[int, str, bytes]], token: Any) -> None:
        # (one batch: every row goes into the same transaction, see writer.py)
        b = self._writer.pending
        for seq, recipient, envelope in rows:
            b.inserts[seq] = (recipient, envelope, 0)
        b.tokens.append(token)
        self._message_count += len(rows)
        b.message_count = self._message_count
        self._writer.kick()

    def ack(self, recipient: str, seq: int) -> None:
        self.ack_many(recipient, [seq])

    def ack_many(self, recipient: str, seqs: list[int]) -> None:
        w = self._writer
        inserts = w.pending.inserts
        deletes = w.pending.deletes
        deleting = w.deleting
        before = len(deletes)
        for seq in seqs:
            # (an insert whose commit has not started yet is dropped: never written)
            if inserts.pop(seq, None) is None:
                deletes.append(seq)
                deleting.add(seq)
        if len(deletes) > before:
            w.kick()

    def purge_expired(
        self,
        recipient: str,
        now_ms: int,
        limit: int,
        done: Callable[[list[tuple[int, int]], int], None],
    ) -> None:
        # (in the group commit, after its inserts and deletes: an insert still waiting for its
        # commit is never raced, and an envelope acknowledged meanwhile is not counted twice)
        self._writer.pending.purges.append(Purge(recipient, now_ms, limit, done))
        self._writer.kick()

    def note_progress(self, agent_id: str, session: bytes, client_seq: int) -> None:
        self._writer.pending.progress[agent_id] = (session, client_seq)

    async def fetch(
        self, recipient: str, after_seq: int, limit: int
    ) -> list[tuple[int, bytes, int]]:
        if self._reader is None:
            return []
        deleting = self._writer.deleting
        rows = self._reader.execute(
            "SELECT seq, envelope, expires_at FROM inbox WHERE recipient = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (recipient, after_seq, limit + len(deleting)),
        ).fetchall()
        out = [(int(s), bytes(e), int(x)) for s, e, x in rows if s not in deleting]
        return out[:limit]

    async def barrier(self) -> None:
        await self._writer.barrier()

    async def oldest_enqueued(self, recipients: list[str]) -> dict[str, int]:
        if self._reader is None:
            return {}
        # up to a thousand index probes: on a thread of their own, with a connection of
        # their own, so that a metrics scrape never stalls the hub's event loop
        deleting = frozenset(self._writer.deleting)
        return await asyncio.to_thread(self._oldest_enqueued, recipients, deleting)

    def _oldest_enqueued(self, recipients: list[str], deleting: frozenset[int]) -> dict[str, int]:
        with self._ages_lock:
            if self._closed:
                return {}
            if self._ages_reader is None:
                self._ages_reader = sqlite3.connect(
                    str(self.path), isolation_level=None, check_same_thread=False
                )
                self._ages_reader.execute("PRAGMA query_only = ON")
            reader = self._ages_reader
            out: dict[str, int] = {}
            for recipient in recipients:  # (each an index probe on (recipient, seq))
                rows = reader.execute(
                    "SELECT seq, enqueued_at FROM inbox WHERE recipient = ? ORDER BY seq LIMIT ?",
                    (recipient, min(1 + len(deleting), 256)),
                ).fetchall()
                oldest = next((int(at) for seq, at in rows if seq not in deleting), None)
                if oldest is not None:
                    out[recipient] = oldest
            return out

    # ---- directory ---------------------------------------------------------------------------

    def prekey_count(self, agent_id: str) -> int:
        return self._prekeys.get(agent_id, 0)

    async def add_prekeys(self, agent_id: str, keys: list[tuple[int, str]], limit: int) -> int:
        if not keys:
            return self._prekeys.get(agent_id, 0)
        count = await self._writer.in_transaction(add_prekeys, agent_id, keys, limit)
        self._prekeys[agent_id] = count
        return count

    async def claim_prekey(self, agent_id: str) -> tuple[int, str] | None:
        if not self._prekeys.get(agent_id):
            return None
        claimed, count = await self._writer.in_transaction(claim_prekey, agent_id)
        self._prekeys[agent_id] = count
        return claimed

    async def bind_agent(
        self, agent_id: str, identity_key: str, bundle: dict[str, Any], session: bytes
    ) -> BindResult:
        data = json.dumps(bundle, separators=(",", ":"), sort_keys=True)
        return await self._writer.bind(agent_id, identity_key, data, session)

    async def rebind_agent(
        self, agent_id: str, old_key: str, new_key: str, bundle: dict[str, Any]
    ) -> bool:
        data = json.dumps(bundle, separators=(",", ":"), sort_keys=True)
        now = int(time.time() * 1000)
        moved = await self._writer.in_transaction(
            rebind_agent, agent_id, old_key, new_key, data, now
        )
        if moved:
            self._prekeys[agent_id] = 0
        return bool(moved)

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


def _ignore(*_args: Any) -> None:
    return None
