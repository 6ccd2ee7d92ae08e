"""The network hub's fan-out (SEND_GROUP): one upload of a group message, a copy stored for
each member in one commit, one acknowledgement; counted by the hub; bad frames get an error
frame naming the problem, never a crash."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hubutil import HOST, Collector, new_keypair, read_frames, seal_bytes, session

from agentmesh import Agent
from agentmesh.crypto import GroupSession
from agentmesh.errors import HubRequestError
from agentmesh.fanout import address
from agentmesh.hub_client import HubClient
from agentmesh.hub_protocol import (
    ErrorCode,
    FrameType,
    decode_error,
    decode_send_error,
    encode_frame,
    encode_hello,
    encode_send_group,
)
from agentmesh.hub_server import HubLimits, NetworkHubServer
from agentmesh.hubs import NetworkHub


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NetworkHubServer]:
    srv = NetworkHubServer(HOST, 0, store_path=tmp_path / "hub.db")
    srv.start(block=False)
    yield srv
    srv.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def group_message(sender: Any, n: int = 0, size: int = 10) -> bytes:
    sess = GroupSession(sender, "team")
    sess.distribution()
    for _ in range(n):
        sess.seal({"skip": 1})
    return bytes(sess.seal({"x": "y" * size}).to_unaddressed_bytes())


def stats(srv: NetworkHubServer) -> Any:
    return srv._hub.stats  # type: ignore[union-attr]


async def registered(port: int, keys: list[Any]) -> tuple[list[HubClient], list[Collector]]:
    """A registered client and its inbox for each of ``keys``."""
    clients, collectors = [], []
    for kp in keys:
        c, got = HubClient(HOST, port), Collector()
        await c.register(kp, got)
        clients.append(c)
        collectors.append(got)
    return clients, collectors


def test_one_upload_stores_a_copy_for_each_member_in_one_commit(server: NetworkHubServer) -> None:
    alice = new_keypair("alice")
    members = [new_keypair(f"m{i}") for i in range(10)]

    async def go() -> None:
        clients, collectors = await registered(server.port, members)
        a = HubClient(HOST, server.port)
        await a.register(alice, Collector())
        message = group_message(alice)
        assert a.send_group_nowait([kp.agent_id for kp in members], message)
        await a.flush(30)
        for kp, got in zip(members, collectors, strict=True):
            await got.wait_for(1)
            assert got.raw == [address(message, kp.agent_id)]
        assert (stats(server).fanout_uploads, stats(server).fanout_copies) == (1, 10)
        assert stats(server).accepted == 10
        assert a.sent == 1
        for c in [a, *clients]:
            await c.close()

    run(go())


def test_an_agents_group_send_is_one_upload_however_many_members(server: NetworkHubServer) -> None:
    net = NetworkHub(HOST, server.port)
    members = [Agent(f"g{i}", hub=net) for i in range(12)]
    got: list[str] = []
    for member in members:
        member.on_message(lambda msg: got.append(msg.text))
    alice = Agent("alice", hub=net)
    try:
        team = alice.create_group("team", members=[m.agent_id for m in members])
        team.send(text="first")  # (also hands each member alice's sender key, pairwise)
        alice.flush(30)
        before = (stats(server).fanout_uploads, stats(server).fanout_copies)
        for i in range(5):
            team.send(text=f"m{i}")
        alice.flush(30)
        after = (stats(server).fanout_uploads, stats(server).fanout_copies)
        assert (after[0] - before[0], after[1] - before[1]) == (5, 60)
        deadline = time.monotonic() + 30
        while len(got) < 72 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(got) == 72
    finally:
        for agent in [alice, *members]:
            agent.close()
        net.close()


def test_an_upload_that_is_no_group_message_of_the_sender_is_refused(
    server: NetworkHubServer,
) -> None:
    alice, bob, carol = new_keypair("alice"), new_keypair("bob"), new_keypair("carol")

    async def go() -> None:
        a, b = HubClient(HOST, server.port), HubClient(HOST, server.port)
        got = Collector()
        await a.register(alice, Collector())
        await b.register(bob, got)
        pairwise = seal_bytes(session(alice, bob), {"x": 1})
        a.send_group_nowait(["bob"], pairwise)
        with pytest.raises(HubRequestError, match="not a group message") as info:
            await a.flush(30)
        assert info.value.code == ErrorCode.BAD_ENVELOPE
        a.send_group_nowait(["bob"], group_message(carol))  # carol's, uploaded by alice
        with pytest.raises(HubRequestError, match="not the registered agent") as info:
            await a.flush(30)
        assert info.value.code == ErrorCode.ENVELOPE_MISMATCH
        await asyncio.sleep(0.3)
        assert got.raw == []
        for c in (a, b):
            await c.close()

    run(go())


def test_a_fan_out_over_the_hubs_size_bound_is_refused_as_a_whole(tmp_path: Path) -> None:
    srv = NetworkHubServer(
        HOST, 0, store_path=tmp_path / "hub.db", limits=HubLimits(max_fanout_bytes=20_000)
    )
    srv.start(block=False)
    alice = new_keypair("alice")
    members = [new_keypair(f"m{i}") for i in range(20)]

    async def go() -> None:
        for kp in members:
            c = HubClient(HOST, srv.port)
            await c.register(kp, Collector())
            await c.close()
        a = HubClient(HOST, srv.port)
        await a.register(alice, Collector())
        assert a.hub_fanout_bytes == 20_000
        a.hub_fanout_bytes = 16 * 1024 * 1024  # (a client that does not read it from READY)
        a.send_group_nowait([kp.agent_id for kp in members], group_message(alice, size=2000))
        with pytest.raises(HubRequestError, match="exceeds the hub's limit of 20000 bytes"):
            await a.flush(30)
        assert stats(srv).fanout_copies == 0
        await a.close()

    try:
        run(go())
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\x00" * 8 + b"\x00\x00" + b"envelope", "names 0 recipients"),
        (b"\x00" * 8 + b"\x03\xe9" + b"\x01a" * 1001 + b"envelope", "names 1001 recipients"),
        (b"\x00" * 8 + b"\x00\x02" + b"\x03bob" + b"\x03bob" + b"envelope", "twice"),
        (b"\x00" * 8 + b"\x00\x02" + b"\x03bob" + b"\x09ca", "bad recipient"),
        (b"\x00" * 8 + b"\x00\x01" + b"\x02\xff\xfe" + b"envelope", "not UTF-8"),
        (b"\x00" * 8 + b"\x00\x01" + b"\x03bob", "without an envelope"),
        (b"\x00" * 9, "short SEND_GROUP"),
    ],
)
def test_a_malformed_send_group_gets_an_error_frame_naming_the_problem(
    server: NetworkHubServer, body: bytes, problem: str
) -> None:
    async def go() -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(encode_hello() + encode_frame(FrameType.LOOKUP))
        writer.write(encode_frame(FrameType.SEND_GROUP, body))
        frames = await read_frames(reader, timeout=10, until=FrameType.ERROR)
        writer.close()
        errors = [decode_error(b) for t, b in frames if t == FrameType.ERROR]
        assert errors and errors[0][0] == ErrorCode.PROTOCOL, frames
        assert problem in errors[0][1]
        # the hub goes on serving
        look = HubClient(HOST, server.port)
        await look.connect_lookup()
        assert await look.list_agents() == []
        await look.close()

    run(go())


def test_a_lookup_connection_cannot_fan_out(server: NetworkHubServer) -> None:
    async def go() -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        frame = encode_send_group(7, [b"bob"], group_message(new_keypair("alice")))
        writer.write(encode_hello() + encode_frame(FrameType.LOOKUP) + frame)
        frames = await read_frames(reader, timeout=10, until=FrameType.SEND_ERROR)
        writer.close()
        refusals = [decode_send_error(b) for t, b in frames if t == FrameType.SEND_ERROR]
        assert refusals and refusals[0][:2] == (7, ErrorCode.NOT_AUTHENTICATED)

    run(go())


def test_a_hub_that_does_not_say_fanout_gets_one_send_per_member(server: NetworkHubServer) -> None:
    """A hub of an earlier version knows no SEND_GROUP (its READY has no ``fanout``): the
    client sends each member's copy as an ordinary SEND."""
    alice, bob, carol = new_keypair("alice"), new_keypair("bob"), new_keypair("carol")

    async def go() -> None:
        b, c, a = (HubClient(HOST, server.port) for _ in range(3))
        got_b, got_c = Collector(), Collector()
        await b.register(bob, got_b)
        await c.register(carol, got_c)
        await a.register(alice, Collector())
        assert a.hub_fanout
        a.hub_fanout = False  # (as READY from an earlier hub leaves it)
        message = group_message(alice)
        assert a.send_group_nowait(["bob", "carol"], message)
        await a.flush(30)
        await got_b.wait_for(1)
        await got_c.wait_for(1)
        assert got_b.raw == [address(message, "bob")]
        assert got_c.raw == [address(message, "carol")]
        assert (stats(server).fanout_uploads, stats(server).accepted) == (0, 2)
        # a member the hub just reported unknown is named, and the others still get theirs
        a.send_group_nowait(["ghost"], message)
        with pytest.raises(HubRequestError, match="ghost"):
            await a.flush(30)
        second = group_message(alice, n=1)
        assert a.send_group_nowait(["bob", "ghost"], second)
        with pytest.raises(HubRequestError, match="ghost") as info:
            a.send_group_nowait(["bob"], second)  # (the refusal comes with the next send)
        assert info.value.client_seq is not None  # (so it is not this upload's)
        await a.flush(30)
        await got_b.wait_for(2)
        assert got_b.raw[1] == address(second, "bob")
        for x in (a, b, c):
            await x.close()

    run(go())


def test_a_recipient_list_changed_in_place_is_read_again(server: NetworkHubServer) -> None:
    """The client keeps the last recipient list's encoding (a group sends to the same members
    again and again) but compares the list in full each time."""
    alice, bob, carol = new_keypair("alice"), new_keypair("bob"), new_keypair("carol")

    async def go() -> None:
        b, c, a = (HubClient(HOST, server.port) for _ in range(3))
        got_b, got_c = Collector(), Collector()
        await b.register(bob, got_b)
        await c.register(carol, got_c)
        await a.register(alice, Collector())
        members = ["bob", "carol"]
        first, second = group_message(alice), group_message(alice, n=1)
        a.send_group_nowait(members, first)
        members.remove("carol")
        a.send_group_nowait(members, second)
        await a.flush(30)
        await got_b.wait_for(2)
        await got_c.wait_for(1)
        await asyncio.sleep(0.3)
        assert got_b.raw == [address(first, "bob"), address(second, "bob")]
        assert got_c.raw == [address(first, "carol")]
        for x in (a, b, c):
            await x.close()

    run(go())


def test_a_fan_out_past_16_mib_of_copies_is_split_into_several_uploads(
    server: NetworkHubServer,
) -> None:
    alice = new_keypair("alice")
    members = [new_keypair(f"big{i}") for i in range(5)]

    async def go() -> None:
        clients, collectors = await registered(server.port, members)
        a = HubClient(HOST, server.port)
        await a.register(alice, Collector())
        message = group_message(alice, size=3_500_000)  # 5 copies: past 16 MiB in all
        assert a.send_group_nowait([kp.agent_id for kp in members], message)
        await a.flush(60)
        for kp, got in zip(members, collectors, strict=True):
            await got.wait_for(1, timeout=60)
            assert got.raw == [address(message, kp.agent_id)]
        assert (stats(server).fanout_uploads, stats(server).fanout_copies) == (2, 5)
        for c in [a, *clients]:
            await c.close()

    run(go())


def test_a_hub_with_a_lower_fanout_bound_gets_the_upload_split_to_fit(tmp_path: Path) -> None:
    """READY says the hub's ``max_fanout_bytes``; the client splits a larger fan-out into
    uploads under it (before, it split at a fixed 16 MiB, and such a hub refused it whole)."""
    srv = NetworkHubServer(HOST, 0, store_path=tmp_path / "hub.db", max_fanout_bytes=64 * 1024)
    srv.start(block=False)
    alice = new_keypair("alice")
    members = [new_keypair(f"m{i}") for i in range(8)]

    async def go() -> None:
        clients, collectors = await registered(srv.port, members)
        a = HubClient(HOST, srv.port)
        await a.register(alice, Collector())
        assert a.hub_fanout_bytes == 64 * 1024
        message = group_message(alice, size=20_000)  # 8 copies: about 160 KB
        assert a.send_group_nowait([kp.agent_id for kp in members], message)
        await a.flush(30)
        for kp, got in zip(members, collectors, strict=True):
            await got.wait_for(1)
            assert got.raw == [address(message, kp.agent_id)]
        assert stats(srv).fanout_uploads >= 3
        for c in [a, *clients]:
            await c.close()

    try:
        run(go())
    finally:
        srv.stop()


def test_a_hub_with_fanout_off_gets_a_send_per_member(tmp_path: Path) -> None:
    srv = NetworkHubServer(HOST, 0, store_path=tmp_path / "hub.db", max_fanout_bytes=0)
    srv.start(block=False)
    alice, bob = new_keypair("alice"), new_keypair("bob")

    async def go() -> None:
        b, a = HubClient(HOST, srv.port), HubClient(HOST, srv.port)
        got = Collector()
        await b.register(bob, got)
        await a.register(alice, Collector())
        assert not a.hub_fanout
        message = group_message(alice)
        assert a.send_group_nowait(["bob"], message)
        await a.flush(30)
        await got.wait_for(1)
        assert (stats(srv).fanout_uploads, stats(srv).accepted) == (0, 1)
        for c in (a, b):
            await c.close()

    try:
        run(go())
    finally:
        srv.stop()
    with pytest.raises(ValueError, match="max_frame_size must be a positive number"):
        HubLimits(max_frame_size=0).validate()
    with pytest.raises(ValueError, match="max_fanout_bytes must be 0 or more"):
        HubLimits(max_fanout_bytes=-1).validate()


def test_what_waits_for_a_hub_that_took_an_older_ones_place_is_fitted_to_it(
    tmp_path: Path,
) -> None:
    """A hub replaced, between a send and its acknowledgement, by one that no longer offers
    fan-out or expiry: the client's resend turns a SEND_EXPIRING into the same SEND under the
    same number, and refuses a SEND_GROUP naming its members, instead of writing frames the
    hub refuses at every reconnect."""
    alice, bob = new_keypair("alice"), new_keypair("bob")
    store = tmp_path / "hub.db"
    first = NetworkHubServer(HOST, 0, store_path=store)
    first.start(block=False)
    port = first.port

    async def go() -> None:
        nonlocal first
        b, a = HubClient(HOST, port), HubClient(HOST, port)
        got = Collector()
        await b.register(bob, got)
        await a.register(alice, Collector())
        assert a.hub_fanout and a.hub_expiry
        await b.close()
        first.stop()
        await asyncio.sleep(0.2)
        sess = session(alice, bob)
        expiring = seal_bytes(sess, {"text": "expiring"})
        # (sent while no hub runs: they wait in the window, in the old hub's frames)
        assert a.send_nowait("bob", expiring, expires_ms=int(time.time() * 1000) + 600_000)
        assert a.send_group_nowait(["bob"], group_message(alice))
        window = a._sends
        seqs = list(window._unacked)
        # every hub of this version says expiry: the SEND_EXPIRING's turn, by hand
        window._fit_to_older_hub(fanout=True, expiry=False)
        assert list(window._unacked) == seqs
        assert window._unacked[seqs[0]][1][4] == FrameType.SEND
        assert window._unacked[seqs[1]][1][4] == FrameType.SEND_GROUP
        older = NetworkHubServer(HOST, port, store_path=store, max_fanout_bytes=0)
        older.start(block=False)
        try:
            with pytest.raises(HubRequestError, match="group message to bob not sent"):
                await a.flush(30)
            await a.flush(30)
            b2 = HubClient(HOST, port)
            got2 = Collector()
            await b2.register(bob, got2)
            await got2.wait_for(1)
            assert got2.raw == [expiring]
            await b2.close()
            await a.close()
        finally:
            older.stop()

    run(go())
