"""The operator's way to give an id back: forget its binding, its bundle, its one-time
prekeys, its sender progress and what is queued for it (sealed for the identity key that is
gone), so that an agent whose identity file was lost can register the id with a new key. Its
peers, which pinned the old key, then see the identity-changed error and decide (as designed:
``trust_new_identity`` after checking the new fingerprint).

Done offline, on a stopped hub's store (the store's lock says whether a hub runs on it): a
running hub keeps the directory in memory and would not see the change.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agentmesh.errors import StoreError

from .schema import lock_store, unlock_store

__all__ = ["release_ids"]


def release_ids(path: str | Path, agent_ids: list[str]) -> dict[str, int]:
    """Release ``agent_ids`` in the store at ``path``; returns, per id, how many queued
    envelopes were dropped. StoreError if the store is missing, in use by a hub, or does not
    know one of the ids (then nothing is changed)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no hub store at {path}")
    fd = lock_store(path)
    try:
        db = sqlite3.connect(str(path), isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            dropped: dict[str, int] = {}
            for agent_id in agent_ids:
                known = db.execute(
                    "SELECT 1 FROM agents WHERE agent_id = ?", (agent_id,)
                ).fetchone()
                if known is None:
                    db.execute("ROLLBACK")
                    raise StoreError(f"the store at {path} knows no agent {agent_id!r}")
                (queued,) = db.execute(
                    "SELECT COUNT(*) FROM inbox WHERE recipient = ?", (agent_id,)
                ).fetchone()
                db.execute("DELETE FROM inbox WHERE recipient = ?", (agent_id,))
                db.execute("DELETE FROM prekeys WHERE agent_id = ?", (agent_id,))
                db.execute("DELETE FROM senders WHERE agent_id = ?", (agent_id,))
                db.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))
                dropped[agent_id] = int(queued)
            db.execute("COMMIT")
            return dropped
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot change the hub store {path}: {exc}") from exc
        finally:
            db.close()
    finally:
        unlock_store(fd)
