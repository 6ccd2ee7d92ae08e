"""The SQLite store's directory tables, written inside the writer's transactions: ``agents``
(the id -> identity key binding and the bundle), ``senders`` (each agent's client session and
the last of its sends committed) and ``prekeys`` (one-time prekeys, each handed out once)."""

from __future__ import annotations

import sqlite3

from agentmesh.hub_store import BindResult

__all__ = ["add_prekeys", "bind_agent", "claim_prekey", "prekeys_of", "rebind_agent"]


def bind_agent(
    db: sqlite3.Connection,
    agent_id: str,
    identity_key: str,
    data: str,
    session: bytes,
    now: int,
) -> BindResult:
    """Binds ``agent_id`` to ``identity_key`` on first sight, refuses another key later, and
    stores the bundle (``data``, JSON); tells how far the client ``session`` got."""
    row = db.execute("SELECT identity_key FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
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


def rebind_agent(
    db: sqlite3.Connection, agent_id: str, old_key: str, new_key: str, data: str, now: int
) -> bool:
    """Moves ``agent_id`` from ``old_key`` to ``new_key`` (its succession was checked by the
    caller) with the bundle ``data``; the old key's one-time prekeys go. False, changing
    nothing, if the id is not bound to ``old_key``."""
    cur = db.execute(
        "UPDATE agents SET identity_key = ?, bundle = ?, updated_at = ? "
        "WHERE agent_id = ? AND identity_key = ?",
        (new_key, data, now, agent_id, old_key),
    )
    if cur.rowcount != 1:
        return False
    db.execute("DELETE FROM prekeys WHERE agent_id = ?", (agent_id,))
    return True


def add_prekeys(
    db: sqlite3.Connection, agent_id: str, keys: list[tuple[int, str]], limit: int
) -> int:
    """Adds one-time prekeys until the agent holds ``limit``; returns how many it holds."""
    count = prekeys_of(db, agent_id)
    for key_id, key in keys:
        if count >= limit:
            break
        cur = db.execute(
            "INSERT OR IGNORE INTO prekeys (agent_id, id, key) VALUES (?, ?, ?)",
            (agent_id, key_id, key),
        )
        count += cur.rowcount
    return count


def claim_prekey(db: sqlite3.Connection, agent_id: str) -> tuple[tuple[int, str] | None, int]:
    """Removes and returns the agent's lowest-numbered one-time prekey (None if it holds
    none), and how many it holds now."""
    row = db.execute(
        "SELECT id, key FROM prekeys WHERE agent_id = ? ORDER BY id LIMIT 1", (agent_id,)
    ).fetchone()
    if row is not None:
        db.execute("DELETE FROM prekeys WHERE agent_id = ? AND id = ?", (agent_id, row[0]))
    count = prekeys_of(db, agent_id)
    return ((int(row[0]), str(row[1])) if row is not None else None), count


def prekeys_of(db: sqlite3.Connection, agent_id: str) -> int:
    row = db.execute("SELECT COUNT(*) FROM prekeys WHERE agent_id = ?", (agent_id,)).fetchone()
    return int(row[0])
