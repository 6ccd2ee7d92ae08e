"""Envelopes whose sender-set expiry passed while their recipient was offline are purged from
the hub's store: a send to a full inbox purges it first, a background sweep purges offline
recipients, and only what expired ever goes. Real hubs on 127.0.0.1 with their SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from hubutil import Collector, new_keypair, seal_bytes, session

import agentmesh.hub.expiry
from agentmesh.hub_client import HubClient
from agentmesh.hub_protocol import ErrorCode, HubRequestError
from agentmesh.hub_server import NetworkHubServer

ALICE, BOB = new_keypair("alice"), new_keypair("bob")


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(main())


def start(store: Path, **limits: Any) -> NetworkHubServer:
    server = NetworkHubServer("127.0.0.1", 0, store_path=store, **limits)
    server.start(block=False)
    return server


def stored(store: Path) -> list[tuple[int, int]]:
    """bob's envelopes in the store: (length, expiry) in order."""
    db = sqlite3.connect(str(store))
    try:
        return [
            (int(n), int(x))
            for n, x in db.execute(
                "SELECT LENGTH(envelope), expires_at FROM inbox WHERE recipient = 'bob' "
                "ORDER BY seq"
            )
        ]
    finally:
        db.close()


def queue_of_bob(server: NetworkHubServer) -> tuple[int, int]:
    ast = server._hub.agents["bob"]  # type: ignore[union-attr]
    return ast.count, ast.bytes


def expired(server: NetworkHubServer) -> int:
    return server._hub.stats.expired  # type: ignore[union-attr]


def ms_from_now(seconds: float) -> int:
    return int((time.time() + seconds) * 1000)


async def register_bob_offline(server: NetworkHubServer) -> None:
    bob = HubClient("127.0.0.1", server.port)
    await bob.register(BOB, Collector())
    await bob.close()


async def alice_sends(
    server: NetworkHubServer, texts: list[str], expires_ms: int = 0
) -> list[ErrorCode]:
    """Sends each text to bob; returns the codes of the sends refused, in order."""
    alice = HubClient("127.0.0.1", server.port)
    await alice.register(ALICE, Collector())
    sess = session(ALICE, BOB)
    for text in texts:
        alice.send_nowait("bob", seal_bytes(sess, {"text": text}), expires_ms)
    refused: list[ErrorCode] = []
    while True:
        try:
            await alice.flush(30)
            break
        except HubRequestError as exc:
            refused.append(exc.code)
    await alice.close()
    return refused


async def bob_receives(server: NetworkHubServer, n: int) -> list[str]:
    got = Collector(session(BOB, ALICE))
    bob = HubClient("127.0.0.1", server.port)
    await bob.register(BOB, got)
    await got.wait_for(n)
    await asyncio.sleep(0.3)  # (nothing more comes)
    await bob.close()
    return [p["text"] for p in got.payloads]


def test_a_full_inbox_of_expired_envelopes_takes_a_new_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the purge the new sends are refused INBOX_FULL: the inbox holds only dead mail.
    monkeypatch.setattr(agentmesh.hub.expiry, "PURGE_ROWS", 2)  # (room takes more than one)
    store = tmp_path / "hub.sqlite3"
    server = start(store, max_queued_per_agent=3, expired_sweep_interval=0)
    try:

        async def go() -> None:
            await register_bob_offline(server)
            assert await alice_sends(server, ["a", "b", "c"], ms_from_now(0.2)) == []
            assert await alice_sends(server, ["too early"]) == [ErrorCode.INBOX_FULL]
            await asyncio.sleep(0.3)
            assert await alice_sends(server, ["one", "two", "three"]) == []
            assert expired(server) == 3
            assert queue_of_bob(server) == (3, sum(n for n, _ in stored(store)))
            assert len(stored(store)) == 3
            assert await bob_receives(server, 3) == ["one", "two", "three"]  # in order

        run(go())
    finally:
        server.stop()


def test_unexpired_envelopes_are_never_purged(tmp_path: Path) -> None:
    store = tmp_path / "hub.sqlite3"
    server = start(store, max_queued_per_agent=3, expired_sweep_interval=0.05)
    try:

        async def go() -> None:
            await register_bob_offline(server)
            assert await alice_sends(server, ["stale"], ms_from_now(0.2)) == []
            assert await alice_sends(server, ["fresh"], ms_from_now(60)) == []
            assert await alice_sends(server, ["kept"]) == []
            await asyncio.sleep(0.4)  # (several sweeps)
            # One envelope had expired: room for one, and no more.
            assert await alice_sends(server, ["new", "refused"]) == [ErrorCode.INBOX_FULL]
            assert expired(server) == 1
            assert [x > 0 for _, x in stored(store)] == [True, False, False]
            assert queue_of_bob(server) == (3, sum(n for n, _ in stored(store)))
            assert await bob_receives(server, 3) == ["fresh", "kept", "new"]

        run(go())
    finally:
        server.stop()


def test_the_purge_survives_a_restart_and_a_restarted_hub_knows_what_may_expire(
    tmp_path: Path,
) -> None:
    store = tmp_path / "hub.sqlite3"
    server = start(store, max_queued_per_agent=4, expired_sweep_interval=0)
    try:

        async def fill() -> None:
            await register_bob_offline(server)
            assert await alice_sends(server, ["a", "b"], ms_from_now(0.2)) == []
            assert await alice_sends(server, ["c", "d"], ms_from_now(0.6)) == []
            await asyncio.sleep(0.3)
            assert await alice_sends(server, ["after purge"]) == []  # a and b purged

        run(fill())
        assert expired(server) == 2
    finally:
        server.stop()
    assert len(stored(store)) == 3
    time.sleep(0.4)  # c and d expire while the hub is down

    server = start(store, max_queued_per_agent=4, expired_sweep_interval=0)
    try:
        # The counts come back from the store exact, and the expiries with them.
        assert queue_of_bob(server) == (3, sum(n for n, _ in stored(store)))

        async def after_restart() -> None:
            assert await alice_sends(server, ["x", "y", "z"]) == []  # c and d purged
            assert expired(server) == 2
            assert queue_of_bob(server) == (4, sum(n for n, _ in stored(store)))
            assert await bob_receives(server, 4) == ["after purge", "x", "y", "z"]

        run(after_restart())
    finally:
        server.stop()


def test_the_background_sweep_frees_an_offline_recipients_envelopes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agentmesh.hub.expiry, "PURGE_ROWS", 1)  # (one sweep, three purges)
    store = tmp_path / "hub.sqlite3"
    server = start(store, expired_sweep_interval=0.1)
    try:

        async def go() -> None:
            await register_bob_offline(server)
            assert await alice_sends(server, ["a", "b", "c"], ms_from_now(0.2)) == []
            assert await alice_sends(server, ["kept"]) == []
            assert len(stored(store)) == 4
            deadline = time.monotonic() + 10
            while len(stored(store)) > 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert [x for _, x in stored(store)] == [0]
            assert expired(server) == 3
            assert queue_of_bob(server) == (1, stored(store)[0][0])
            assert await bob_receives(server, 1) == ["kept"]

        run(go())
    finally:
        server.stop()


def test_hub_limits_check_the_sweep_interval() -> None:
    from agentmesh.hub_server import HubLimits

    assert HubLimits(expired_sweep_interval=0).validate().expired_sweep_interval == 0
    with pytest.raises(ValueError, match="expired_sweep_interval"):
        HubLimits(expired_sweep_interval=-1).validate()


# ---- the store's purge, directly ---------------------------------------------------------------


def test_the_store_purges_only_what_expired_and_never_counts_an_acknowledged_one(
    tmp_path: Path,
) -> None:
    from agentmesh.hub_store import SQLiteBackend

    async def go() -> None:
        store = SQLiteBackend(tmp_path / "hub.db", synchronous="NORMAL")
        await store.open()
        past, future = ms_from_now(-1), ms_from_now(60)
        rows = [("bob", past), ("bob", past), ("bob", future), ("bob", 0), ("carol", past)]
        seqs = []
        for recipient, expires_ms in rows:
            seq, _early = store.next_seq()
            seqs.append(seq)
            store.put(recipient, seq, b"x" * seq, None, expires_ms)
        await store.barrier()
        reports: list[tuple[list[tuple[int, int]], int]] = []
        store.purge_expired("bob", ms_from_now(0), 100, lambda *report: reports.append(report))
        while not store._writer._committing:  # the purge's commit has started...
            await asyncio.sleep(0)
        store.ack("bob", seqs[1])  # ...when its recipient acknowledges one of them
        await store.barrier()
        # The acknowledged one is counted out by its acknowledgement, not by the purge.
        assert reports == [([(seqs[0], seqs[0])], future)]
        db = sqlite3.connect(str(tmp_path / "hub.db"))
        left = [int(s) for (s,) in db.execute("SELECT seq FROM inbox ORDER BY seq")]
        db.close()
        assert left == seqs[2:]  # bob's unexpired ones and carol's untouched
        await store.close()
        reopened = SQLiteBackend(tmp_path / "hub.db")
        state = await reopened.open()
        assert state.expiries == {"bob": future, "carol": past}
        await reopened.close()

    run(go())


def test_a_group_send_purges_a_members_full_inbox_first(tmp_path: Path) -> None:
    from agentmesh.crypto import GroupSession

    store = tmp_path / "hub.sqlite3"
    server = start(store, max_queued_per_agent=2, expired_sweep_interval=0)
    carol = new_keypair("carol")
    try:

        async def go() -> None:
            await register_bob_offline(server)
            c = HubClient("127.0.0.1", server.port)
            await c.register(carol, Collector())
            await c.close()
            assert await alice_sends(server, ["a", "b"], ms_from_now(0.2)) == []
            await asyncio.sleep(0.3)
            group = GroupSession(ALICE, "team")
            group.distribution()
            message = bytes(group.seal({"x": "y"}).to_unaddressed_bytes())
            alice = HubClient("127.0.0.1", server.port)
            await alice.register(ALICE, Collector())
            assert alice.send_group_nowait(["bob", "carol"], message)
            await alice.flush(30)  # (a member refused would raise here)
            await alice.close()
            assert expired(server) == 2
            assert [x for _, x in stored(store)] == [0]
            assert queue_of_bob(server) == (1, stored(store)[0][0])

        run(go())
    finally:
        server.stop()


def test_a_hub_process_sweeps_at_the_interval_its_command_line_sets(tmp_path: Path) -> None:
    from agentmesh.testing import HubProcess

    store = tmp_path / "hub.sqlite3"
    extra = ["--expired-sweep-interval", "0.1"]
    with HubProcess(store, log_level="warning", extra_args=extra).start() as proc:

        async def go() -> None:
            bob = HubClient("127.0.0.1", proc.port)
            await bob.register(BOB, Collector())
            await bob.close()
            alice = HubClient("127.0.0.1", proc.port)
            await alice.register(ALICE, Collector())
            sess = session(ALICE, BOB)
            for text in ["a", "b"]:
                alice.send_nowait("bob", seal_bytes(sess, {"text": text}), ms_from_now(0.1))
            await alice.flush(30)
            await alice.close()
            deadline = time.monotonic() + 10
            while stored(store) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert stored(store) == []

        run(go())


def test_a_purge_of_envelopes_in_flight_to_an_online_recipient_counts_them_once(
    tmp_path: Path,
) -> None:
    # Bob holds his first deliveries unacknowledged while their expiry passes; a send to his
    # full inbox purges them, and his late acknowledgements must not count them out again.
    store = tmp_path / "hub.sqlite3"
    server = start(store, max_queued_per_agent=2, expired_sweep_interval=0)
    try:

        async def go() -> None:
            await register_bob_offline(server)
            got = Collector(session(BOB, ALICE))
            release: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def holding(batch: list[tuple[int, bytes]]) -> None:
                await got(batch)
                if not release.done():
                    await release

            bob = HubClient("127.0.0.1", server.port)
            await bob.register(BOB, holding)
            assert await alice_sends(server, ["a", "b"], ms_from_now(0.3)) == []
            await got.wait_for(2)
            await asyncio.sleep(0.4)
            assert await alice_sends(server, ["new"]) == []
            assert expired(server) == 2
            release.set_result(None)
            await got.wait_for(3)
            await asyncio.sleep(0.3)  # (bob's acknowledgements arrive)
            await bob.close()
            assert [p["text"] for p in got.payloads] == ["a", "b", "new"]
            assert queue_of_bob(server) == (0, 0)
            assert stored(store) == []

        run(go())
    finally:
        server.stop()


def test_a_send_waiting_for_a_purge_is_not_acknowledged_before_it_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # alice sends "x" to carol (stored at once) and then "y" to bob, whose inbox is full of
    # expired envelopes: "y" waits for a purge, made slow here. The commit of "x" lands while
    # "y" waits; its SEND_ACK must cover "x" only (a cumulative SEND_ACK covering "y" would tell
    # alice that "y" is stored while it is not, and a crash then would lose it).
    real_purge = agentmesh.hub.expiry.ExpiryPurger.purge

    def slow_purge(self: Any, recipient: str, ast: Any) -> asyncio.Future[None]:
        fut = self.hub.loop.create_future()

        def later() -> None:
            inner = real_purge(self, recipient, ast)
            inner.add_done_callback(lambda _f: fut.done() or fut.set_result(None))

        self.hub.loop.call_later(0.6, later)
        return fut

    monkeypatch.setattr(agentmesh.hub.expiry.ExpiryPurger, "purge", slow_purge)
    carol_kp = new_keypair("carol")
    store = tmp_path / "hub.sqlite3"
    server = start(store, max_queued_per_agent=1, expired_sweep_interval=0)
    try:

        async def go() -> None:
            await register_bob_offline(server)
            carol = HubClient("127.0.0.1", server.port)
            await carol.register(carol_kp, Collector())
            await carol.close()
            assert await alice_sends(server, ["dead"], ms_from_now(0.1)) == []
            await asyncio.sleep(0.2)
            alice = HubClient("127.0.0.1", server.port)
            await alice.register(ALICE, Collector())
            alice.send_nowait("carol", seal_bytes(session(ALICE, carol_kp), {"text": "x"}))
            alice.send_nowait("bob", seal_bytes(session(ALICE, BOB), {"text": "y"}))
            await asyncio.sleep(0.4)  # "x" committed; "y" still waits for the purge
            assert [n for n, _ in stored(store)] and expired(server) == 0
            assert alice.unacked == 1  # "y": not acknowledged while it is not stored
            await alice.flush(30)
            assert alice.unacked == 0 and expired(server) == 1
            await alice.close()
            assert await bob_receives(server, 1) == ["y"]

        run(go())
    finally:
        server.stop()
