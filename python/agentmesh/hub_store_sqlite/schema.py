"""The SQLite store's file: its schema, opening it (WAL, durability, the meta rows and the
sequence number reservation), what the server needs from it at start-up, and the lock file that
keeps a second hub process off it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agentmesh.errors import StoreError
from agentmesh.hub_store import SCHEMA_VERSION, SEQ_BLOCK, StoreState

__all__ = ["EXPIRY_INDEX", "SCHEMA", "OpenedStore", "lock_store", "open_writer", "unlock_store"]

SCHEMA = """
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
    enqueued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL DEFAULT 0
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


#: Envelopes that carry an expiry, by recipient and expiry: what a purge of one recipient's
#: expired envelopes reads (a partial index: envelopes without an expiry never enter it). Made
#: after the migration below, since a version-1 store gets the column only then.
EXPIRY_INDEX = (
    "CREATE INDEX IF NOT EXISTS inbox_expiring ON inbox (recipient, expires_at) "
    "WHERE expires_at > 0"
)


@dataclass
class OpenedStore:
    """The writer connection of a freshly opened store and what was read from it."""

    db: sqlite3.Connection
    state: StoreState
    #: the first sequence number this run hands out (past everything reserved before)
    next_seq: int
    #: every sequence number below it is reserved on disk
    ceiling: int
    #: agent id -> one-time prekeys held
    prekeys: dict[str, int]


def open_writer(path: Path, synchronous: str) -> OpenedStore:
    """Opens (creating if need be) the store at ``path`` as its one writer and reserves the
    next block of sequence numbers durably."""
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot put {path} in WAL mode (got {mode})")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute("PRAGMA journal_size_limit = 67108864")
        db.execute("PRAGMA busy_timeout = 5000")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(inbox)")}
        if "expires_at" not in columns:  # a store from before expiring envelopes (version 1)
            db.execute("ALTER TABLE inbox ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0")
        db.execute(EXPIRY_INDEX)
        db.execute("BEGIN IMMEDIATE")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema_version")
        if version is not None and int(version) > SCHEMA_VERSION:
            raise StoreError(
                f"store {path} has schema version {version}; this build knows {SCHEMA_VERSION}"
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
                "SELECT recipient, COUNT(*), SUM(LENGTH(envelope)) FROM inbox GROUP BY recipient"
            )
        }
        expiries = {
            r: int(x)
            for r, x in db.execute(
                "SELECT recipient, MIN(expires_at) FROM inbox WHERE expires_at > 0 "
                "GROUP BY recipient"
            )
        }
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open hub store {path}: {exc}") from exc
    state = StoreState(
        hub_id=hub_id, agents=agents, queues=queues, message_count=count, expiries=expiries
    )
    return OpenedStore(db=db, state=state, next_seq=floor, ceiling=ceiling, prekeys=prekeys)


def lock_store(path: Path) -> int:
    """Takes the store's lock file (``<path>.lock``); returns its descriptor. Raises
    :class:`StoreError` while another hub process holds it."""
    lock_path = str(path) + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(
            f"store {path} is in use by another hub process (lock {lock_path})"
        ) from None
    return fd


def unlock_store(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
