"""The SQLite hub store: group commit, acknowledgement, binding, sequence numbers, locking."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentmesh.hub_store import (
    SEQ_BLOCK,
    HubBackend,
    SQLiteBackend,
    StoreError,
    default_store_path,
)


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 60))  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.tokens: list[Any] = []
        self.event = asyncio.Event()

    def __call__(self, tokens: list[Any]) -> None:
        self.tokens.extend(tokens)
        self.event.set()

    async def wait(self, n: int) -> None:
        while len(self.tokens) < n:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 30)


def test_backend_is_the_interface() -> None:
    assert issubclass(SQLiteBackend, HubBackend)


def test_put_commit_fetch_ack(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteBackend(tmp_path / "hub.db")
        state = await store.open()
        assert state.agents == set() and state.queues == {} and len(state.hub_id) == 16
        rec = Recorder()
        store.on_commit = rec
        seqs = []
        for i in range(100):
            seq, early = store.next_seq()
            assert early
            seqs.append(seq)
            store.put("bob", seq, b"env%d" % i, ("t", i))
        await rec.wait(100)
        assert rec.tokens == [("t", i) for i in range(100)]  # in submission order
        assert seqs == sorted(seqs) and len(set(seqs)) == 100
        rows = await store.fetch("bob", 0, 10)
        assert [e for _, e, _ in rows] == [b"env%d" % i for i in range(10)]
        assert {x for _, _, x in rows} == {0}  # (no expiry given)
        rows = await store.fetch("bob", rows[-1][0], 1000)
        assert len(rows) == 90
        assert await store.fetch("carol", 0, 10) == []
        # Acknowledged: gone from fetches at once, and from disk after the next commit.
        for s in seqs[:50]:
            store.ack("bob", s)
        assert len(await store.fetch("bob", 0, 1000)) == 50
        await store.barrier()
        assert store.message_count == 100
        await store.close()
        db = sqlite3.connect(tmp_path / "hub.db")
        assert db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0] == 50
        db.close()
        # Reopened: the queue is known, the count persisted.
        store2 = SQLiteBackend(tmp_path / "hub.db")
        state2 = await store2.open()
        assert state2.queues == {"bob": (50, sum(len(b"env%d" % i) for i in range(50, 100)))}
        assert state2.message_count == 100
        assert state2.hub_id == state.hub_id
        await store2.close()

    run(go)


def test_ack_before_commit_means_never_written(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteBackend(tmp_path / "hub.db")
        await store.open()
        rec = Recorder()
        store.on_commit = rec
        seq, _ = store.next_seq()
        store.put("bob", seq, b"quick", "tok")
        store.ack("bob", seq)  # same loop iteration: the insert has not started
        await rec.wait(1)  # the sender is still acknowledged
        assert rec.tokens == ["tok"]
        assert await store.fetch("bob", 0, 10) == []
        await store.close()

    run(go)


def test_a_fan_outs_rows_commit_together_under_one_token(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteBackend(tmp_path / "hub.db")
        await store.open()
        commits: list[list[Any]] = []
        store.on_commit = commits.append
        rows = []
        for member in ("bob", "carol", "dave"):
            seq, _early = store.next_seq()
            rows.append((seq, member, b"copy for " + member.encode()))
        store.put_many(rows, "upload")
        await store.barrier()
        assert commits == [["upload"]]  # one commit, reported once
        for seq, member, copy in rows:
            assert await store.fetch(member, 0, 10) == [(seq, copy, 0)]
        assert store.message_count == 3
        await store.close()
        reopened = SQLiteBackend(tmp_path / "hub.db")
        state = await reopened.open()
        assert set(state.queues) == {"bob", "carol", "dave"}
        await reopened.close()

    run(go)


def test_group_commit_batches(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteBackend(tmp_path / "hub.db", synchronous="NORMAL")
        await store.open()
        batches: list[int] = []
        store.on_commit = lambda tokens: batches.append(len(tokens))
        for _round in range(20):
            for _ in range(500):
                seq, _early = store.next_seq()
                store.put("bob", seq, b"x" * 64, None)
            await asyncio.sleep(0)
        await store.barrier()
        assert sum(batches) == 10_000
        assert len(batches) < 10_000 // 10  # many envelopes per transaction
        await store.close()

    run(go)


def test_bind_agent_keeps_first_identity(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteBackend(tmp_path / "hub.db")
        await store.open()
        s1, s2 = b"1" * 16, b"2" * 16
        r = await store.bind_agent("alice", "KEY-A", {"agent_id": "alice", "v": 1}, s1)
        assert r.ok and r.created and r.acked_seq == 0
        r = await store.bind_agent("alice", "KEY-EVIL", {"agent_id": "alice", "v": 9}, s2)
        assert not r.ok
        assert (await store.get_bundle("alice")) == {"agent_id": "alice", "v": 1}
        r = await store.bind_agent("alice", "KEY-A", {"agent_id": "alice", "v": 2}, s1)
        assert r.ok and not r.created
        assert (await store.get_bundle("alice")) == {"agent_id": "alice", "v": 2}
        assert await store.get_bundle("nobody") is None
        assert await store.list_agents() == ["alice"]
        # Sender progress is reported to the same client session only.
        seq, _ = store.next_seq()
        store.put("alice", seq, b"e", None)
        store.note_progress("alice", s1, 41)
        r = await store.bind_agent("alice", "KEY-A", {"agent_id": "alice", "v": 2}, s1)
        assert r.acked_seq == 41
        r = await store.bind_agent("alice", "KEY-A", {"agent_id": "alice", "v": 2}, s2)
        assert r.acked_seq == 0
        await store.close()
        store = SQLiteBackend(tmp_path / "hub.db")
        state = await store.open()
        assert state.agents == {"alice"}
        r = await store.bind_agent("alice", "KEY-EVIL", {}, s2)
        assert not r.ok  # the binding is durable
        await store.close()

    run(go)


def test_sequence_numbers_never_reused_across_crashes(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteBackend(tmp_path / "hub.db")
        await store.open()
        first, _ = store.next_seq()
        # Simulate a crash: no close(), the process state is just dropped.
        store._release_lock()
        store2 = SQLiteBackend(tmp_path / "hub.db")
        await store2.open()
        second, early = store2.next_seq()
        assert second >= first + SEQ_BLOCK  # the whole reserved block is skipped
        assert early
        await store2.close()

    run(go)


def test_reservation_extends_before_running_out(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteBackend(tmp_path / "hub.db")
        await store.open()
        start, _ = store.next_seq()
        store._next_seq = start + SEQ_BLOCK - 2  # near the end of the block
        _, early = store.next_seq()
        assert early
        await store.barrier()
        seq, early = store.next_seq()
        seq, early = store.next_seq()
        assert seq >= start + SEQ_BLOCK and early  # the extension is committed
        await store.close()

    run(go)


def test_second_hub_on_the_same_store_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        a = SQLiteBackend(tmp_path / "hub.db")
        await a.open()
        b = SQLiteBackend(tmp_path / "hub.db")
        with pytest.raises(StoreError, match="in use"):
            await b.open()
        await a.close()
        await b.open()  # free again
        await b.close()

    run(go)


def test_corrupt_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    path.write_bytes(b"this is not a database" * 100)

    async def go() -> None:
        with pytest.raises(StoreError, match="cannot open"):
            await SQLiteBackend(path).open()

    run(go)


def test_ephemeral_store_is_removed(tmp_path: Path) -> None:
    async def go() -> None:
        d = tmp_path / "eph"
        d.mkdir()
        store = SQLiteBackend(d / "hub.db", ephemeral=True)
        await store.open()
        await store.close()
        assert not d.exists()

    run(go)


def test_default_store_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTMESH_HUB_DIR", str(tmp_path))
    assert default_store_path("127.0.0.1", 7700) == tmp_path / "hub-127.0.0.1-7700.sqlite3"
    monkeypatch.delenv("AGENTMESH_HUB_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    p = default_store_path("::1", 7701)
    assert p.name == "hub-__1-7701.sqlite3"


def test_bad_synchronous_setting() -> None:
    with pytest.raises(ValueError):
        SQLiteBackend("x.db", synchronous="OFF")


def test_a_store_from_before_expiries_is_migrated_and_keeps_its_envelopes(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(str(path))  # the version-1 layout of the inbox, one envelope queued
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
        CREATE TABLE inbox (seq INTEGER PRIMARY KEY, recipient TEXT NOT NULL,
                            envelope BLOB NOT NULL, enqueued_at INTEGER NOT NULL);
        INSERT INTO meta VALUES ('schema_version', 1);
        INSERT INTO inbox VALUES (7, 'bob', x'656e76', 1);
        """
    )
    db.commit()
    db.close()

    async def go() -> None:
        store = SQLiteBackend(path)
        state = await store.open()
        assert state.queues == {"bob": (1, 3)}
        assert await store.fetch("bob", 0, 10) == [(7, b"env", 0)]
        seq, _ = store.next_seq()
        store.put("bob", seq, b"later", None, 123)
        await store.barrier()
        assert await store.fetch("bob", 7, 10) == [(seq, b"later", 123)]
        await store.close()

    run(go)
    version = sqlite3.connect(str(path)).execute(
        "SELECT value FROM meta WHERE key = 'schema_version'"
    ).fetchone()[0]
    assert version == 2
