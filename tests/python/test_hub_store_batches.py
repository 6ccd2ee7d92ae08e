"""The SQLite store's commits of many rows at once: inserts, deletes and senders' progress are
written many rows per statement (``RowWriter.CHUNK``), and a DELIVERY_ACK frame's ids are
acknowledged together (``ack_many``): every row lands, every acknowledged row goes, whatever the
count's remainder by the chunk size, and progress rows are updated in place."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_hub_store import Recorder, run

from agentmesh.hub_store import HubBackend, SQLiteBackend
from agentmesh.hub_store_sqlite import writer
from agentmesh.hub_store_sqlite.schema import SCHEMA
from agentmesh.hub_store_sqlite.writer import RowWriter, progress_writer

CHUNK = RowWriter.CHUNK
COUNTS = [1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5]


async def opened_store(path: Path) -> tuple[SQLiteBackend, Recorder]:
    """A store at ``path`` with a recorder of its commits."""
    store = SQLiteBackend(path, synchronous="NORMAL")
    await store.open()
    rec = Recorder()
    store.on_commit = rec
    return store, rec


def inbox_seqs(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [int(s) for (s,) in db.execute("SELECT seq FROM inbox ORDER BY seq")]
    finally:
        db.close()


@pytest.mark.parametrize("n", COUNTS)
def test_a_commit_of_n_rows_writes_them_all_and_deletes_the_acknowledged(
    tmp_path: Path, n: int
) -> None:
    async def go() -> None:
        store, rec = await opened_store(tmp_path / "hub.db")
        seqs = []
        for i in range(n):
            seq, _early = store.next_seq()
            seqs.append(seq)
            store.put(f"r{i % 7}", seq, b"env%d" % i, i)
        await rec.wait(n)
        assert rec.tokens == list(range(n))
        assert inbox_seqs(tmp_path / "hub.db") == seqs
        # every other row, acknowledged per recipient as a DELIVERY_ACK frame would
        gone = seqs[::2]
        for r in range(7):
            store.ack_many(f"r{r}", [s for i, s in enumerate(seqs) if i % 7 == r and s in gone])
        await store.barrier()
        assert inbox_seqs(tmp_path / "hub.db") == seqs[1::2]
        await store.close()
        reopened = SQLiteBackend(tmp_path / "hub.db")
        state = await reopened.open()
        assert sum(count for count, _bytes in state.queues.values()) == len(seqs[1::2])
        await reopened.close()

    run(go)


@pytest.mark.parametrize("ack_many", [SQLiteBackend.ack_many, HubBackend.ack_many])
def test_ack_many_deletes_committed_rows_and_never_writes_uncommitted_ones(
    tmp_path: Path, ack_many: object
) -> None:
    """The SQLite store's own ``ack_many`` and the interface's (``ack`` for each) agree."""

    async def go() -> None:
        store, rec = await opened_store(tmp_path / "hub.db")
        committed = []
        for i in range(CHUNK + 3):
            seq, _early = store.next_seq()
            committed.append(seq)
            store.put("bob", seq, b"old%d" % i, ("old", i))
        await rec.wait(len(committed))
        fresh = []
        for i in range(5):
            seq, _early = store.next_seq()
            fresh.append(seq)
            store.put("bob", seq, b"new%d" % i, ("new", i))
        # (same loop iteration as the puts: their commit has not started)
        ack_many(store, "bob", committed[:CHUNK + 1] + fresh)  # type: ignore[operator]
        assert [s for s, _e, _x in await store.fetch("bob", 0, 100)] == committed[CHUNK + 1 :]
        await rec.wait(len(committed) + len(fresh))  # their senders are acknowledged all the same
        await store.barrier()
        assert inbox_seqs(tmp_path / "hub.db") == committed[CHUNK + 1 :]
        await store.close()

    run(go)


def test_progress_of_many_senders_is_durable_and_updated_in_place(tmp_path: Path) -> None:
    agents = [f"s{i}" for i in range(2 * CHUNK + 3)]

    async def go() -> None:
        store = SQLiteBackend(tmp_path / "hub.db", synchronous="NORMAL")
        await store.open()
        for i, agent in enumerate(agents):
            store.note_progress(agent, b"first", i + 1)
        await store.barrier()
        for i, agent in enumerate(agents[: CHUNK + 1]):  # rows that exist: updated
            store.note_progress(agent, b"second", 1000 + i)
        await store.barrier()
        await store.close()
        db = sqlite3.connect(tmp_path / "hub.db")
        rows = dict(
            (a, (bytes(s), int(q)))
            for a, s, q in db.execute("SELECT agent_id, session, last_seq FROM senders")
        )
        db.close()
        expected = {a: (b"first", i + 1) for i, a in enumerate(agents)}
        expected.update({a: (b"second", 1000 + i) for i, a in enumerate(agents[: CHUNK + 1])})
        assert rows == expected

    run(go)


def test_a_bound_sender_learns_its_progress_from_the_upserted_row(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteBackend(tmp_path / "hub.db", synchronous="NORMAL")
        await store.open()
        bound = await store.bind_agent("alice", "key-a", {"identity_key": "key-a"}, b"sess")
        assert bound.ok and bound.acked_seq == 0
        store.note_progress("alice", b"sess", 7)
        await store.barrier()
        store.note_progress("alice", b"sess", 9)
        await store.barrier()
        again = await store.bind_agent("alice", "key-a", {"identity_key": "key-a"}, b"sess")
        assert again.ok and again.acked_seq == 9
        other = await store.bind_agent("alice", "key-a", {"identity_key": "key-a"}, b"new")
        assert other.acked_seq == 0  # another client session starts afresh
        await store.close()

    run(go)


@pytest.mark.parametrize("version", [(3, 24, 0), (3, 23, 1)])
def test_progress_rows_are_written_alike_with_and_without_upsert(version: tuple[int, ...]) -> None:
    """An SQLite older than 3.24 (no upsert) replaces the rows instead: the same rows result."""
    writer = progress_writer(version)
    assert ("ON CONFLICT" in writer.one) == (version >= (3, 24, 0))
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    first = [(f"s{i}", b"one", i) for i in range(CHUNK + 2)]
    writer.write(db, first)
    writer.write(db, [(f"s{i}", b"two", 100 + i) for i in range(3)])
    rows = {a: (bytes(s), q) for a, s, q in db.execute("SELECT * FROM senders")}
    assert rows == {f"s{i}": (b"two", 100 + i) if i < 3 else (b"one", i) for i in range(CHUNK + 2)}
    db.close()


def _gathered_commit(tmp_path: Path, senders: int, close_early: bool = False) -> tuple[float, int]:
    """One sender's put starts a commit; while it runs, ``senders`` others put one each.
    Returns the seconds from before the first put until the second commit was durable (or the
    store closed), and how many puts were durable after reopening."""
    tmp_path.mkdir()
    result: dict[str, Any] = {}

    async def go() -> None:
        store, rec = await opened_store(tmp_path / "hub.db")
        loop = asyncio.get_running_loop()
        start = loop.time()
        seq, _early = store.next_seq()
        store.put("r", seq, b"first", 0)
        store.note_progress("s-first", b"s", 1)
        for _ in range(3):  # (the first commit starts: two hops, then the task)
            await asyncio.sleep(0)
        for i in range(senders):
            seq, _early = store.next_seq()
            store.put("r", seq, b"env%d" % i, i + 1)
            store.note_progress(f"s{i}", b"s", 1)
        if close_early:
            await rec.wait(1)
            await asyncio.sleep(0.01)  # (the first commit ended: the second one gathers)
            await store.close()
        else:
            await rec.wait(senders + 1)
            await store.close()
        result["took"] = loop.time() - start

    run(go)
    return result["took"], len(inbox_seqs(tmp_path / "hub.db"))


def test_a_commit_carrying_many_senders_waits_to_gather_and_closing_commits_it_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next commit starts GATHER_SECONDS after the previous one started when it carries
    GATHER_SENDERS senders or more (one progress row and one SEND_ACK per sender per commit);
    with fewer, at once; and closing the store commits a gathering batch without waiting."""
    gather = 1.0  # (long enough that a loaded machine's commits of the other two cases fit)
    monkeypatch.setattr(writer, "GATHER_SECONDS", gather)
    took, durable = _gathered_commit(tmp_path / "few", writer.GATHER_SENDERS - 1)
    assert took < gather and durable == writer.GATHER_SENDERS
    took, durable = _gathered_commit(tmp_path / "many", writer.GATHER_SENDERS)
    assert took >= gather and durable == writer.GATHER_SENDERS + 1
    took, durable = _gathered_commit(tmp_path / "closing", writer.GATHER_SENDERS, True)
    assert took < gather and durable == writer.GATHER_SENDERS + 1
