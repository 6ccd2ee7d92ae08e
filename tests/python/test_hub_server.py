"""The network hub in this process (background thread) with real HubClients: registration,
store and forward, refusals, limits, TLS, the server object's own API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerFactory
from hubutil import (
    HOST,
    Collector,
    crypto,
    make_self_signed_cert,
    new_keypair,
    peer_result,
    read_frames,
    run_peer,
    seal_bytes,
    session,
)

from agentmesh.errors import FlushTimeoutError, HubError
from agentmesh.hub_client import HubClient
from agentmesh.hub_protocol import (
    ErrorCode,
    FrameDecoder,
    FrameType,
    HubRequestError,
    Op,
    PeerNotFoundError,
    decode_error,
    encode_frame,
    encode_hello,
    encode_send,
)
from agentmesh.hub_server import HubLimits, NetworkHubServer
from agentmesh.hub_store import default_store_path


def run(coro: Awaitable[Any], timeout: float = 120.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


@pytest.fixture
def server(make_server: ServerFactory) -> NetworkHubServer:
    return make_server()


def client(srv: NetworkHubServer, **kw: Any) -> HubClient:
    kw.setdefault("max_backoff", 0.5)
    return HubClient(HOST, srv.port, **kw)


# --------------------------------------------------------------------------------------------
# Basics


def test_lookup_answers_before_any_agent_exists(server: NetworkHubServer) -> None:
    async def go() -> None:
        look = client(server)
        await look.connect_lookup()
        assert await look.list_agents() == []
        assert await look.get_bundle("bob") is None
        assert await look.message_count() == 0
        await look.close()

    run(go())
    assert server.list_agents() == []
    assert server.message_count() == 0


def test_register_send_receive_in_order(server: NetworkHubServer) -> None:
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    n = 500

    async def go() -> None:
        a, b = client(server), client(server)
        got = Collector(session(bob_kp, alice_kp))
        await a.register(alice_kp, Collector())
        await b.register(bob_kp, got)
        look = client(server)  # lookups need no registration and see the directory
        assert await look.list_agents() == ["alice", "bob"]
        bundle = await look.get_bundle("bob")
        assert bundle is not None and bundle["agent_id"] == "bob"
        s = session(alice_kp, bob_kp)
        for i in range(n):
            await a.send("bob", seal_bytes(s, {"i": i}))
        await a.flush(60)
        await got.wait_for(n)
        assert [p["i"] for p in got.payloads] == list(range(n))
        assert not got.errors
        assert got.ids == sorted(got.ids)
        assert await look.message_count() == n
        for c in (a, b, look):
            await c.close()

    run(go())
    assert server.message_count() == n
    assert server.list_agents() == ["alice", "bob"]
    bundle = server.get_bundle("alice")
    assert bundle is not None and bundle["agent_id"] == "alice"


def test_offline_agent_receives_what_was_queued(server: NetworkHubServer) -> None:
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")

    async def go() -> None:
        b = client(server)
        await b.register(bob_kp, Collector())
        await b.close()  # bob is known to the hub, and offline
        a = client(server)
        await a.register(alice_kp, Collector())
        s = session(alice_kp, bob_kp)
        for i in range(50):
            await a.send("bob", seal_bytes(s, {"i": i}))
        await a.flush(60)
        got = Collector(session(bob_kp, alice_kp))
        b = client(server)
        await b.register(bob_kp, got)
        await got.wait_for(50)
        assert [p["i"] for p in got.payloads] == list(range(50))
        await b.close()
        # Acknowledged envelopes are gone: a later connection gets only new ones.
        await a.send("bob", seal_bytes(s, {"i": 50}))
        await a.flush(60)
        again = Collector(session(bob_kp, alice_kp))
        again.sess = got.sess
        b = client(server)
        await b.register(bob_kp, again)
        await again.wait_for(1)
        await asyncio.sleep(0.3)
        assert [p["i"] for p in again.payloads] == [50]
        await b.close()
        await a.close()

    run(go())


def test_slow_recipient_and_connecting_mid_stream_keep_order(make_server: ServerFactory) -> None:
    # A tiny window and memory buffer force the switch between live delivery and catching up
    # from the store, many times.
    srv = make_server(delivery_window=4, delivery_buffer=8)
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    n = 600

    async def go() -> None:
        b = client(srv)
        await b.register(bob_kp, Collector())
        await b.close()
        a = client(srv)
        await a.register(alice_kp, Collector())
        s = session(alice_kp, bob_kp)
        got = Collector(session(bob_kp, alice_kp))

        async def slow(batch: list[tuple[int, bytes]]) -> None:
            before = len(got.raw)
            await got(batch)
            if len(got.raw) // 50 > before // 50:  # every 50 envelopes, a pause
                await asyncio.sleep(0.02)

        async def stream() -> None:
            for i in range(n):
                await a.send("bob", seal_bytes(s, {"i": i}))
                if i % 100 == 0:
                    await asyncio.sleep(0.01)

        sender = asyncio.create_task(stream())
        await asyncio.sleep(0.02)
        b = client(srv)
        await b.register(bob_kp, slow)  # comes online in the middle of the stream
        await sender
        await a.flush(60)
        await got.wait_for(n)
        assert [p["i"] for p in got.payloads] == list(range(n))
        assert got.ids == sorted(got.ids)
        # The inbox is empty once everything is acknowledged.
        await asyncio.sleep(0.3)
        await b.close()
        again = Collector()
        b = client(srv)
        await b.register(bob_kp, again)
        await asyncio.sleep(0.5)
        assert again.raw == []
        for c in (a, b):
            await c.close()

    run(go())


def test_batch_consumer(server: NetworkHubServer) -> None:
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    batches: list[list[tuple[int, bytes]]] = []
    done = asyncio.Event

    async def go() -> None:
        finished = done()

        async def on_batch(items: list[tuple[int, bytes]]) -> None:
            batches.append(items)
            if sum(len(x) for x in batches) == 300:
                finished.set()

        a, b = client(server), client(server)
        await a.register(alice_kp, Collector())
        with pytest.raises(TypeError):
            await b.register(bob_kp)
        await b.register(bob_kp, on_batch=on_batch)
        s = session(alice_kp, bob_kp)
        for i in range(300):
            await a.send("bob", seal_bytes(s, {"i": i}))
        await a.flush(30)
        await asyncio.wait_for(finished.wait(), 30)
        r = session(bob_kp, alice_kp)
        flat = [r.unseal(env)["i"] for batch in batches for _did, env in batch]
        assert flat == list(range(300))
        assert all(len(batch) <= 256 for batch in batches)
        for c in (a, b):
            await c.close()

    run(go())


def test_batch_acknowledgements_follow_the_handler(server: NetworkHubServer) -> None:
    """``on_batch`` is the one delivery path: a batch is acknowledged after the handler returns,
    or, when it returns a future, once that future completes; never when the handler raises or
    the future fails (a later client of the agent gets the same deliveries again)."""
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")

    async def wait_until(cond: Any) -> None:
        deadline = time.monotonic() + 30
        while not cond() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert cond()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        b = client(server)
        await b.register(bob_kp, Collector())
        await b.close()
        a = client(server)
        await a.register(alice_kp, Collector())
        s = session(alice_kp, bob_kp)
        await a.send("bob", seal_bytes(s, {"i": 0}))
        await a.flush(30)

        refused: list[int] = []

        async def refuse(batch: list[tuple[int, bytes]]) -> None:
            refused.extend(did for did, _env in batch)
            raise RuntimeError("cannot store these")

        b = client(server)
        await b.register(bob_kp, refuse)
        await wait_until(lambda: refused)
        await b.close()

        later: list[int] = []
        futures: list[asyncio.Future[None]] = []

        async def durable_later(batch: list[tuple[int, bytes]]) -> asyncio.Future[None]:
            later.extend(did for did, _env in batch)
            futures.append(loop.create_future())
            return futures[-1]

        b = client(server)
        await b.register(bob_kp, durable_later)
        await wait_until(lambda: later)
        assert later == refused  # not acknowledged: delivered again, same delivery id
        futures[0].set_exception(RuntimeError("the write failed"))
        await asyncio.sleep(0.2)
        await b.close()

        later.clear()
        futures.clear()
        b = client(server)
        await b.register(bob_kp, durable_later)
        await wait_until(lambda: later)
        assert later == refused  # a failed future acknowledges nothing either
        futures[0].set_result(None)
        await a.send("bob", seal_bytes(s, {"i": 1}))
        await wait_until(lambda: len(later) == 2)
        futures[1].set_result(None)
        await asyncio.sleep(0.2)
        await b.close()

        got = Collector()
        b = client(server)
        await b.register(bob_kp, got)
        await asyncio.sleep(0.3)
        assert got.ids == []  # both were acknowledged once their futures completed
        for c in (a, b):
            await c.close()

    run(go())


def test_handled_positions_skip_redeliveries(server: NetworkHubServer) -> None:
    """``register(handled={hub_id: n})``: deliveries up to n from that hub store are
    acknowledged without reaching the handler (what a restarted persistent agent handled
    before); later ones, and ids of another store, are handed over. The handler sees the
    delivering store's id as ``delivery_hub_id``."""
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")

    async def go() -> None:
        a = client(server)
        await a.register(alice_kp, Collector())
        s = session(alice_kp, bob_kp)
        seen_ids: list[int] = []
        stores: list[bytes | None] = []
        first = client(server)

        async def peek(batch: list[tuple[int, bytes]]) -> None:
            seen_ids.extend(did for did, _env in batch)
            stores.append(first.delivery_hub_id)

        # a position for another store does not apply
        await first.register(bob_kp, on_batch=peek, handled={b"x" * 16: 10**9})
        hub_id = first.hub_id
        assert hub_id is not None and first.delivery_hub_id is None
        for i in range(3):
            await a.send("bob", seal_bytes(s, {"i": i}))
        deadline = time.monotonic() + 30
        while len(seen_ids) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(seen_ids) == 3 and set(stores) == {hub_id}
        await first.close()

        # one sender, one recipient, one hub: the next three get consecutive delivery ids
        for i in range(3, 6):
            await a.send("bob", seal_bytes(s, {"i": i}))
        await a.flush(30)
        got = Collector()
        again = client(server)
        await again.register(bob_kp, got, handled={hub_id: seen_ids[-1] + 2})
        await got.wait_for(1)
        await asyncio.sleep(0.3)
        assert got.ids == [seen_ids[-1] + 3]
        await again.close()
        empty = Collector()
        last = client(server)
        await last.register(bob_kp, empty)  # the two skipped ones were acknowledged too
        await asyncio.sleep(0.3)
        assert empty.ids == []
        await last.close()
        # A position beyond anything this store handed out (a store since rolled back, or a
        # forged delivery) is lowered on registration: it never hides new deliveries.
        fresh = Collector()
        late = client(server)
        await late.register(bob_kp, fresh, handled={hub_id: 2**62})
        await a.send("bob", seal_bytes(s, {"i": 6}))
        await fresh.wait_for(1)
        assert fresh.ids[0] > seen_ids[-1] + 3
        for c in (a, late):
            await c.close()

    run(go())


def test_one_time_prekeys_are_handed_out_once(make_server: ServerFactory, tmp_path: Path) -> None:
    """An agent uploads one-time prekeys; a registered agent that claims its bundle gets the
    oldest one, which the hub never hands out again (also after a restart); lookups get the
    bundle without one and cannot claim; the hub keeps at most its limit; a connection gets
    one key per peer, and at most ``max_prekey_claims_per_minute``."""
    store = tmp_path / "prekeys.db"
    server = make_server(store_path=store, limits=HubLimits(max_prekeys_per_agent=4))
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    bob_prekeys = bob_kp.generate_one_time_prekeys(6)

    async def first() -> None:
        b = client(server)
        await b.register(bob_kp, Collector())
        assert b.prekeys_held == 0
        assert await b.add_prekeys(bob_prekeys[:3]) == 3
        assert await b.add_prekeys(bob_prekeys[1:5]) == 4  # repeats ignored, capped at 4
        assert await b.add_prekeys([]) == 4
        a = client(server)
        await a.register(alice_kp, Collector())
        first_claim = await a.claim_bundle("bob")
        assert first_claim is not None
        assert first_claim["one_time_prekey"] == bob_prekeys[0]
        assert crypto().verify_bundle(first_claim) == "bob"
        assert await b.add_prekeys([]) == 3
        plain = await a.get_bundle("bob")
        assert plain is not None and "one_time_prekey" not in plain
        assert await a.claim_bundle("nobody") is None
        own = await b.claim_bundle("bob")  # an agent's own bundle never costs it a key
        assert own is not None and "one_time_prekey" not in own
        assert b.prekey_limit == 4
        lookup = client(server)
        with pytest.raises(HubRequestError) as info:
            await lookup.claim_bundle("bob")
        assert info.value.code == ErrorCode.NOT_AUTHENTICATED
        with pytest.raises(HubRequestError):
            await lookup.add_prekeys(bob_prekeys[5:])
        for bad in ([{"id": 0, "key": bob_prekeys[5]["key"]}], [{"id": 9, "key": "AAAA"}], [1]):
            with pytest.raises(HubRequestError) as info:
                await b.add_prekeys(bad)
            assert info.value.code == ErrorCode.BAD_REQUEST and "prekeys" in str(info.value)
        for c in (a, b, lookup):
            await c.close()

    run(first())
    server.stop()
    server = make_server(store_path=store, limits=HubLimits(max_prekeys_per_agent=4))

    async def after_restart() -> None:
        b = client(server)
        await b.register(bob_kp, Collector())
        assert b.prekeys_held == 3 and b.prekey_limit == 4
        a = client(server)
        await a.register(alice_kp, Collector())
        got = [await a.claim_bundle("bob") for _ in range(2)]
        # one key per peer per connection: the second claim gets the bundle alone
        assert [g.get("one_time_prekey", {}).get("id") for g in got if g is not None] == [
            bob_prekeys[1]["id"],
            None,
        ]
        others = []
        for name in ("carol", "dave", "erin"):
            c = client(server)
            await c.register(new_keypair(name), Collector())
            others.append(await c.claim_bundle("bob"))
            await c.close()
        ids = [g.get("one_time_prekey", {}).get("id") for g in others if g is not None]
        assert ids == [bob_prekeys[2]["id"], bob_prekeys[3]["id"], None]
        for c in (a, b):
            await c.close()

    run(after_restart())
    server.stop()
    server = make_server(store_path=store, limits=HubLimits(max_prekey_claims_per_minute=2))

    async def rate_limited() -> None:
        peers = []
        for name in ("bob", "frank", "grace"):
            kp = bob_kp if name == "bob" else new_keypair(name)
            p = client(server)
            await p.register(kp, Collector())
            await p.add_prekeys(kp.generate_one_time_prekeys(5))
            peers.append(p)
        a = client(server)
        await a.register(alice_kp, Collector())
        claims = [await a.claim_bundle(peer) for peer in ("bob", "frank", "grace")]
        has_key = ["one_time_prekey" in c for c in claims if c is not None]
        assert has_key == [True, True, False]  # two claims a minute on this server
        for c in (a, *peers):
            await c.close()

    run(rate_limited())


def test_update_bundle_publishes_a_rotated_signed_prekey(server: NetworkHubServer) -> None:
    """A registered agent publishes its new bundle; lookups serve it. Another agent's bundle, a
    damaged one, an older one of its own (a replay), and a lookup connection are refused."""
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")

    async def go() -> None:
        b = client(server)
        await b.register(bob_kp, Collector())
        old = await b.get_bundle("bob")
        assert old is not None
        bob_kp.rotate_signed_prekey()
        await b.update_bundle(bob_kp.public_bundle())
        new = await b.get_bundle("bob")
        assert new is not None and new["signed_prekey_id"] != old["signed_prekey_id"]
        assert new == bob_kp.public_bundle()
        await b.update_bundle(bob_kp.public_bundle())  # the same again: fine (a retry)
        damaged = dict(bob_kp.public_bundle(), signed_prekey_id=old["signed_prekey_id"])
        for bad in (alice_kp.public_bundle(), damaged, old):  # old: a replayed older bundle
            with pytest.raises(HubRequestError) as info:
                await b.update_bundle(bad)
            assert info.value.code == ErrorCode.BAD_REQUEST
        lookup = client(server)
        with pytest.raises(HubRequestError) as info:
            await lookup.update_bundle(bob_kp.public_bundle())
        assert info.value.code == ErrorCode.NOT_AUTHENTICATED
        assert await lookup.get_bundle("bob") == new
        for c in (b, lookup):
            await c.close()

    run(go())


def test_impostor_is_refused_and_gets_nothing(server: NetworkHubServer) -> None:
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    fake_bob = new_keypair("bob")  # same id, other identity key

    async def go() -> None:
        b = client(server)
        await b.register(bob_kp, Collector())
        await b.close()
        a = client(server)
        await a.register(alice_kp, Collector())
        s = session(alice_kp, bob_kp)
        for i in range(5):
            await a.send("bob", seal_bytes(s, {"i": i}))
        await a.flush(60)
        stolen = Collector()
        imp = client(server)
        with pytest.raises(HubRequestError) as info:
            await imp.register(fake_bob, stolen)
        assert info.value.code == ErrorCode.ID_TAKEN
        assert "another identity key" in str(info.value)
        await asyncio.sleep(0.3)
        assert stolen.raw == []
        with pytest.raises(HubError):
            await imp.send("alice", b"x")
        await imp.close()
        # The directory still holds the real bob, and his inbox is intact.
        look = client(server)
        bundle = await look.get_bundle("bob")
        assert bundle is not None
        assert bundle["identity_key"] == bob_kp.public_bundle()["identity_key"]
        got = Collector(session(bob_kp, alice_kp))
        b = client(server)
        await b.register(bob_kp, got)
        await got.wait_for(5)
        assert [p["i"] for p in got.payloads] == list(range(5))
        for c in (a, b, look):
            await c.close()

    run(go())


def test_cannot_send_in_another_agents_name(server: NetworkHubServer) -> None:
    alice_kp, bob_kp, carol_kp = new_keypair("alice"), new_keypair("bob"), new_keypair("carol")

    async def go() -> None:
        a, b, c = client(server), client(server), client(server)
        got = Collector()
        await a.register(alice_kp, Collector())
        await b.register(bob_kp, got)
        await c.register(carol_kp, Collector())
        forged = seal_bytes(session(carol_kp, bob_kp), {"from": "carol"})
        await a.send("bob", forged)  # alice relays an envelope whose sender is carol
        with pytest.raises(HubRequestError) as info:
            await a.flush(30)
        assert info.value.code == ErrorCode.ENVELOPE_MISMATCH
        assert info.value.recipient == "bob"
        misrouted = seal_bytes(session(alice_kp, bob_kp), {"x": 1})
        await a.send("carol", misrouted)  # envelope for bob, stated recipient carol
        with pytest.raises(HubRequestError) as info:
            await a.flush(30)
        assert info.value.code == ErrorCode.ENVELOPE_MISMATCH
        await a.send("bob", b"\x00garbage that is no envelope")
        with pytest.raises(HubRequestError) as info:
            await a.flush(30)
        assert info.value.code == ErrorCode.BAD_ENVELOPE
        await asyncio.sleep(0.3)
        assert got.raw == []
        for x in (a, b, c):
            await x.close()

    run(go())


def test_unknown_peer_is_a_value_error_naming_it(server: NetworkHubServer) -> None:
    alice_kp = new_keypair("alice")
    ghost_kp = new_keypair("ghost")

    async def go() -> None:
        a = client(server)
        await a.register(alice_kp, Collector())
        await a.send("ghost", seal_bytes(session(alice_kp, ghost_kp), {"x": 1}))
        with pytest.raises(ValueError, match="Peer 'ghost' not found on hub") as info:
            await a.flush(30)
        assert isinstance(info.value, PeerNotFoundError)
        assert isinstance(info.value, HubError)
        # Known now: the next send to it fails at once, without a round trip.
        with pytest.raises(PeerNotFoundError, match="ghost"):
            await a.send("ghost", seal_bytes(session(alice_kp, ghost_kp), {"x": 2}))
        await a.close()

    run(go())


def test_lookup_connection_cannot_send(server: NetworkHubServer) -> None:
    async def go() -> None:
        look = client(server)
        await look.connect_lookup()
        with pytest.raises(HubError, match="register"):
            await look.send("bob", b"x")
        await look.close()
        # On the wire too: a SEND on a lookup connection is refused.
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(encode_hello() + encode_frame(FrameType.LOOKUP))
        writer.write(encode_send(1, b"bob", b"envelope"))
        frames = await read_frames(reader, until=FrameType.SEND_ERROR)
        err = [b for t, b in frames if t == FrameType.SEND_ERROR]
        assert err and struct.unpack(">QH", err[0][:10])[1] == ErrorCode.NOT_AUTHENTICATED
        writer.close()

    run(go())


def test_inbox_full_is_refused_not_dropped(make_server: ServerFactory) -> None:
    srv = make_server(max_queued_per_agent=5)
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")

    async def go() -> None:
        b = client(srv)
        await b.register(bob_kp, Collector())
        await b.close()
        a = client(srv)
        await a.register(alice_kp, Collector())
        s = session(alice_kp, bob_kp)
        for i in range(8):
            await a.send("bob", seal_bytes(s, {"i": i}))
        errors = []
        for _ in range(3):
            with pytest.raises(HubRequestError) as info:
                await a.flush(30)
            errors.append(info.value)
        await a.flush(30)
        assert [e.code for e in errors] == [ErrorCode.INBOX_FULL] * 3
        assert "inbox full" in str(errors[0])
        got = Collector(session(bob_kp, alice_kp))
        b = client(srv)
        await b.register(bob_kp, got)
        await got.wait_for(5)
        await asyncio.sleep(0.3)
        assert [p["i"] for p in got.payloads] == [0, 1, 2, 3, 4]
        # Once acknowledged there is room again.
        await a.send("bob", seal_bytes(s, {"i": 8}))
        await a.flush(30)
        await got.wait_for(6)
        for c in (a, b):
            await c.close()

    run(go())


def test_reregistering_with_the_same_key_updates_the_bundle(server: NetworkHubServer) -> None:
    kp = new_keypair("alice")
    if not hasattr(kp, "rotate_signed_prekey"):
        pytest.skip("keypair has no rotate_signed_prekey")

    async def go() -> None:
        c = client(server)
        await c.register(kp, Collector())
        await c.close()
        kp.rotate_signed_prekey()
        c = client(server)
        await c.register(kp, Collector())
        look = client(server)
        bundle = await look.get_bundle("alice")
        assert bundle is not None
        assert bundle["signed_prekey"] == kp.public_bundle()["signed_prekey"]
        await c.close()
        await look.close()

    run(go())


def test_a_newer_connection_replaces_the_older(server: NetworkHubServer) -> None:
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")

    async def go() -> None:
        old, new = Collector(), Collector()
        b1 = client(server)
        await b1.register(bob_kp, old)
        b2 = client(server)
        await b2.register(bob_kp, new)
        a = client(server)
        await a.register(alice_kp, Collector())
        await a.send("bob", seal_bytes(session(alice_kp, bob_kp), {"i": 0}))
        await a.flush(30)
        await new.wait_for(1)
        assert old.raw == []
        refusal: HubRequestError | None = None
        for _ in range(200):  # the old client learns it was replaced and stops
            try:
                await b1.send("alice", b"x")
            except HubRequestError as exc:
                if exc.code == ErrorCode.REPLACED:
                    refusal = exc
                    break
            await asyncio.sleep(0.05)
        assert refusal is not None and refusal.code == ErrorCode.REPLACED
        for c in (a, b2):
            await c.close()
        await b1.close()

    run(go())


def test_envelope_larger_than_the_frame_limit_is_refused_locally(
    make_server: ServerFactory,
) -> None:
    srv = make_server(max_frame_size=8192)
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")

    async def go() -> None:
        a, b = client(srv), client(srv)
        await a.register(alice_kp, Collector())
        got = Collector(session(bob_kp, alice_kp))
        await b.register(bob_kp, got)
        s = session(alice_kp, bob_kp)
        with pytest.raises(HubError, match="frame limit"):
            await a.send("bob", seal_bytes(s, {"blob": "x" * 10_000}))
        await a.send("bob", seal_bytes(s, {"blob": "x" * 6_000}))
        await a.flush(30)
        await got.wait_for(1)
        assert a.connected
        for c in (a, b):
            await c.close()

    run(go())


def test_no_reconnect_means_a_lost_connection_is_final(make_server: ServerFactory) -> None:
    srv = make_server()
    alice_kp = new_keypair("alice")

    async def go() -> None:
        a = client(srv, reconnect=False)
        await a.register(alice_kp, Collector())
        await asyncio.get_running_loop().run_in_executor(None, srv.stop)
        for _ in range(200):
            if not a.connected:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(HubError):
            for _ in range(200):
                await a.send("alice", b"x")
                await asyncio.sleep(0.05)
        with contextlib.suppress(HubError):  # an "x" queued before the loss is reported here
            await a.close()

    run(go())


def test_flush_times_out_while_the_hub_is_gone(make_server: ServerFactory) -> None:
    srv = make_server()
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")

    async def go() -> None:
        b = client(srv)
        await b.register(bob_kp, Collector())
        a = client(srv)
        await a.register(alice_kp, Collector())
        await asyncio.get_running_loop().run_in_executor(None, srv.stop)
        await a.send("bob", seal_bytes(session(alice_kp, bob_kp), {"i": 0}))
        with pytest.raises(FlushTimeoutError, match="1 envelope"):
            await a.flush(0.5)
        assert isinstance(FlushTimeoutError("x"), TimeoutError)
        with pytest.raises(FlushTimeoutError):
            await a.close(timeout=0.2)
        await b.close(timeout=0.2)

    run(go())


def test_idle_registered_client_survives_the_idle_timeout(make_server: ServerFactory) -> None:
    srv = make_server(idle_timeout=1.5, ping_interval=0.3)
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")

    async def go() -> None:
        got = Collector(session(bob_kp, alice_kp))
        a, b = client(srv), client(srv)
        await a.register(alice_kp, Collector())
        await b.register(bob_kp, got)
        await asyncio.sleep(4.0)  # more than twice the idle timeout, doing nothing
        assert a.connected and b.connected
        assert a.reconnects == 0 and b.reconnects == 0
        await a.send("bob", seal_bytes(session(alice_kp, bob_kp), {"i": 1}))
        await a.flush(30)
        await got.wait_for(1)
        for c in (a, b):
            await c.close()

    run(go())


def test_silent_raw_connection_is_dropped_at_the_idle_timeout(make_server: ServerFactory) -> None:
    srv = make_server(idle_timeout=1.0, ping_interval=0.25, handshake_timeout=1.0)

    async def go() -> None:
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        writer.write(encode_hello() + encode_frame(FrameType.LOOKUP))
        t0 = time.monotonic()
        frames = await read_frames(reader, timeout=30)  # never answers the pings
        assert time.monotonic() - t0 < 20
        types = [t for t, _ in frames]
        assert FrameType.PING in types
        assert frames[-1][0] == FrameType.ERROR
        assert decode_error(frames[-1][1])[0] == ErrorCode.IDLE_TIMEOUT
        writer.close()

    run(go())


def test_max_connections(make_server: ServerFactory) -> None:
    srv = make_server(max_connections=20)

    async def go() -> None:
        conns = [await asyncio.open_connection(HOST, srv.port) for _ in range(20)]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        frames = await read_frames(reader, timeout=30)
        assert frames and frames[-1][0] == FrameType.ERROR
        assert decode_error(frames[-1][1])[0] == ErrorCode.TOO_MANY_CONNECTIONS
        writer.close()
        for _r, w in conns:
            w.close()
        await asyncio.sleep(0.3)
        # Slots are free again.
        look = client(srv)
        assert await look.list_agents() == []
        await look.close()

    run(go())


def test_tls(make_server: ServerFactory, tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    srv = make_server(tls_cert=cert, tls_key=key)
    assert srv.tls
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    ctx = ssl.create_default_context(cafile=str(cert))

    async def go() -> None:
        got = Collector(session(bob_kp, alice_kp))
        a, b = client(srv, ssl=ctx), client(srv, ssl=ctx)
        await a.register(alice_kp, Collector())
        await b.register(bob_kp, got)
        s = session(alice_kp, bob_kp)
        for i in range(20):
            await a.send("bob", seal_bytes(s, {"i": i}))
        await a.flush(30)
        await got.wait_for(20)
        assert [p["i"] for p in got.payloads] == list(range(20))
        # Without TLS, or without trusting the certificate, there is no connection.
        plain = client(srv, connect_timeout=3.0)
        with pytest.raises(HubError):
            await plain.connect_lookup()
        untrusting = client(srv, ssl=True, connect_timeout=3.0)
        with pytest.raises(HubError):
            await untrusting.connect_lookup()
        for c in (a, b):
            await c.close()

    run(go())


# --------------------------------------------------------------------------------------------
# The server object


def test_agents_can_use_the_server_object_as_their_hub(server: NetworkHubServer) -> None:
    import threading

    from agentmesh import Agent

    got: list[str] = []
    arrived = threading.Event()
    alice = Agent("alice", hub=server)
    bob = Agent("bob", hub=server)
    try:

        @bob.on_message
        def handle(msg: Any) -> None:
            got.append(f"{msg.sender}:{msg.text}")
            arrived.set()

        assert sorted(server.list_agents()) == ["alice", "bob"]
        alice.send("bob", text="over the network hub")
        alice.flush(30)
        assert arrived.wait(30)
        assert got == ["alice:over the network hub"]
        assert server.message_count() >= 1
    finally:
        alice.close()
        bob.close()


def test_start_in_background_port_zero_and_ephemeral_store() -> None:
    srv = NetworkHubServer(port=0)
    srv.start(block=False)
    try:
        assert srv.port != 0 and srv.running
        assert srv.store_path is not None and srv.store_path.exists()
        with socket.create_connection((HOST, srv.port), timeout=5):
            pass
        port = srv.port
        srv.start(block=False)  # running in the background already: nothing happens
        assert srv.port == port and srv.running
        with pytest.raises(RuntimeError, match="already running"):
            srv.start()  # blocking on a background hub cannot be meant
    finally:
        srv.stop()
    assert not srv.running
    assert not srv.store_path.exists()  # private store of a port-0 hub is removed
    srv.stop()  # idempotent


def test_default_store_location_for_a_fixed_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AGENTMESH_HUB_DIR", str(tmp_path))
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with NetworkHubServer(HOST, port) as srv:
        assert srv.port == port
        assert srv.store_path == default_store_path(HOST, port)
        assert srv.store_path.exists()
    assert srv.store_path.exists()  # persistent


def test_start_errors_are_raised(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        srv = NetworkHubServer(HOST, port, store_path=tmp_path / "a.db")
        with pytest.raises(OSError):
            srv.start(block=False)
    a = NetworkHubServer(HOST, 0, store_path=tmp_path / "b.db")
    a.start(block=False)
    try:
        from agentmesh.hub_store import StoreError

        with pytest.raises(StoreError, match="in use"):
            NetworkHubServer(HOST, 0, store_path=tmp_path / "b.db").start(block=False)
    finally:
        a.stop()


def test_start_block_inside_a_loop_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        with pytest.raises(RuntimeError, match="serve"):
            NetworkHubServer(HOST, 0, store_path=tmp_path / "x.db").start(block=True)

    run(go())


def test_serve_in_an_existing_loop(tmp_path: Path) -> None:
    async def go() -> None:
        srv = NetworkHubServer(HOST, 0, store_path=tmp_path / "x.db")
        listening = asyncio.Event()
        task = asyncio.create_task(srv.serve(on_listening=lambda _s: listening.set()))
        await listening.wait()
        look = client(srv)
        assert await look.message_count() == 0
        await look.close()
        srv.stop()
        await task

    run(go())


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        NetworkHubServer(port=0, idle_timeout=1.0, ping_interval=2.0)
    with pytest.raises(ValueError):
        NetworkHubServer(port=0, max_connections=0)
    with pytest.raises(TypeError):
        NetworkHubServer(port=0, no_such_limit=1)
    with pytest.raises(ValueError):
        NetworkHubServer(port=70000)
    with pytest.raises(ValueError):
        NetworkHubServer(port=0, tls_cert="x.pem")
    assert HubLimits().validate().idle_timeout == 60.0


# --------------------------------------------------------------------------------------------
# Registration proofs are bound to their context (a hostile hub in the middle)

FrameHook = Callable[[int, bytes], Awaitable[bytes | None]]


class _Relay:
    """A hostile hub in front of a real one: accepts agents (over TLS with ``server_ctx``),
    relays their frames to ``port`` (over TLS with ``upstream_ctx``) and back, and lets the
    test rewrite or divert frames. Loopback only."""

    def __init__(
        self,
        port: int,
        *,
        server_ctx: ssl.SSLContext | None = None,
        upstream_ctx: ssl.SSLContext | None = None,
        from_agent: FrameHook | None = None,
        from_hub: FrameHook | None = None,
    ) -> None:
        self.upstream = port
        self.server_ctx, self.upstream_ctx = server_ctx, upstream_ctx
        self.from_agent, self.from_hub = from_agent, from_hub
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> _Relay:
        self._server = await asyncio.start_server(self._serve, HOST, 0, ssl=self.server_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()

    async def _serve(self, ar: asyncio.StreamReader, aw: asyncio.StreamWriter) -> None:
        hr, hw = await asyncio.open_connection(
            HOST, self.upstream, ssl=self.upstream_ctx, server_hostname=None
        )
        for coro in (self._pipe(ar, hw, self.from_agent), self._pipe(hr, aw, self.from_hub)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hook: FrameHook | None
    ) -> None:
        dec = FrameDecoder(1 << 24)
        try:
            while data := await reader.read(65536):
                for ftype, body in dec.feed(data):
                    frame = encode_frame(ftype, body) if hook is None else await hook(ftype, body)
                    if frame is not None:
                        writer.write(frame)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


async def _welcome_of(port: int) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Opens a raw connection to a hub and returns its WELCOME body (challenge and hub id)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(encode_hello(_hub_version()))
    frames = await read_frames(reader, timeout=10, until=FrameType.WELCOME)
    assert frames and frames[-1][0] == FrameType.WELCOME, frames
    return frames[-1][1], reader, writer


def _hub_version() -> int:
    from agentmesh import hub_protocol

    return hub_protocol.PROTOCOL_VERSION


def test_a_relayed_challenge_is_refused_by_the_other_hub(make_server: ServerFactory) -> None:
    """Hub A is hostile: it hands the agent the challenge of hub B (under its own hub id) and
    presents the agent's answer to B, to register there as the agent. B refuses: the proof
    names hub A."""
    hub_a, hub_b = make_server(), make_server()
    bob_kp = new_keypair("bob")

    async def go() -> None:
        welcome_b, br, bw = await _welcome_of(hub_b.port)
        challenge_b = welcome_b[2:34]

        async def swap_challenge(ftype: int, body: bytes) -> bytes:
            if ftype == FrameType.WELCOME:  # A's own id, B's challenge
                body = body[:2] + challenge_b + body[34:]
            return encode_frame(ftype, body)

        async def divert_register(ftype: int, body: bytes) -> bytes | None:
            if ftype == FrameType.REGISTER:
                bw.write(encode_frame(ftype, body))
                return None
            return encode_frame(ftype, body)

        async with _Relay(hub_a.port, from_hub=swap_challenge, from_agent=divert_register) as a:
            agent = client(hub_a, reconnect=False, connect_timeout=3.0)
            agent.port = a.port
            with pytest.raises(HubError):
                await agent.register(bob_kp, Collector())
            frames = await read_frames(br, timeout=10)
            bw.close()
        assert frames, "hub B did not answer the relayed REGISTER"
        assert frames[-1][0] == FrameType.ERROR, frames  # not READY: no registration at B
        code, message = decode_error(frames[-1][1])
        assert code == ErrorCode.BAD_REGISTRATION
        assert "registration signature" in message

    run(go())
    assert hub_b.list_agents() == []


def test_a_tls_relay_cannot_register_at_the_hub_behind_it(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """A relay that the agent trusts over TLS (its own certificate) passes everything on to hub
    B unchanged, hub id and challenge included. B refuses: the proof binds the certificate
    the agent saw, and the relay does not hold B's key."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert_a, key_a = make_self_signed_cert(tmp_path / "a")
    cert_b, key_b = make_self_signed_cert(tmp_path / "b")
    hub_b = make_server(tls_cert=cert_b, tls_key=key_b)
    bob_kp = new_keypair("bob")
    relay_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    relay_ctx.load_cert_chain(str(cert_a), str(key_a))
    to_b = ssl.create_default_context(cafile=str(cert_b))

    async def go() -> None:
        async with _Relay(hub_b.port, server_ctx=relay_ctx, upstream_ctx=to_b) as relay:
            trusts_a = ssl.create_default_context(cafile=str(cert_a))
            agent = client(hub_b, ssl=trusts_a, reconnect=False, connect_timeout=5.0)
            agent.port = relay.port
            with pytest.raises(HubRequestError) as info:
                await agent.register(bob_kp, Collector())
            assert info.value.code == ErrorCode.BAD_REGISTRATION
            # the agent straight to B registers fine
            direct = client(hub_b, ssl=to_b)
            await direct.register(bob_kp, Collector())
            await direct.close()

    run(go())


def test_registration_of_another_bundle_is_refused(server: NetworkHubServer) -> None:
    """Someone in the middle swaps the bundle in the agent's REGISTER for another bundle of the
    same identity (an older one, whose signed prekey the agent is about to delete). The proof
    covers the bundle: refused, and the hub serves nothing for the id."""
    bob_kp = new_keypair("bob")
    older = bob_kp.public_bundle()
    bob_kp.rotate_signed_prekey()
    older_json = json.dumps(older, separators=(",", ":"), sort_keys=True).encode()

    async def swap_bundle(ftype: int, body: bytes) -> bytes:
        if ftype == FrameType.REGISTER:
            body = body[: body.index(b'{"agent_id"')] + older_json
        return encode_frame(ftype, body)

    async def go() -> None:
        async with _Relay(server.port, from_agent=swap_bundle) as relay:
            agent = client(server, reconnect=False)
            agent.port = relay.port
            with pytest.raises(HubRequestError) as info:
                await agent.register(bob_kp, Collector())
            assert info.value.code == ErrorCode.BAD_REGISTRATION

    run(go())
    assert server.get_bundle("bob") is None


def test_registering_an_older_signed_prekey_is_refused(server: NetworkHubServer) -> None:
    """REGISTER, like UPDATE_BUNDLE, never replaces the served bundle by one with an older
    signed prekey (a restored key-file backup, or a replay): the error says why."""
    bob_kp = new_keypair("bob")
    backup = crypto().AgentKeyPair.from_bytes(bob_kp.to_bytes())
    bob_kp.rotate_signed_prekey()

    async def go() -> None:
        current = client(server)
        await current.register(bob_kp, Collector())
        await current.close()
        stale = client(server, reconnect=False)
        with pytest.raises(HubRequestError) as info:
            await stale.register(backup, Collector())
        assert info.value.code == ErrorCode.BAD_REGISTRATION
        assert "not newer" in str(info.value)
        again = client(server)  # the current bundle registers again as before
        await again.register(bob_kp, Collector())
        await again.close()

    run(go())
    assert server.get_bundle("bob") == bob_kp.public_bundle()


# --------------------------------------------------------------------------------------------
# One-time prekey claim budgets belong to ids, not connections


def test_prekey_claim_budget_survives_reconnects(make_server: ServerFactory) -> None:
    """The per-minute claim budget is the requesting id's: a new connection (a reconnect, or
    a second client of the same agent) does not start a fresh one, and the one-key-per-peer
    rule holds across connections too."""
    srv = make_server(limits=HubLimits(max_prekey_claims_per_minute=2))
    alice_kp = new_keypair("alice")

    async def go() -> None:
        peers = []
        for name in ("bob", "frank", "grace"):
            kp = new_keypair(name)
            p = client(srv)
            await p.register(kp, Collector())
            await p.add_prekeys(kp.generate_one_time_prekeys(5))
            peers.append(p)
        got = []
        for target in ("bob", "bob", "frank", "grace"):  # a fresh connection for every claim
            a = client(srv)
            await a.register(alice_kp, Collector())
            bundle = await a.claim_bundle(target)
            assert bundle is not None
            got.append("one_time_prekey" in bundle)
            await a.close()
        assert got == [True, False, True, False]
        # the peers' stocks show it: bob and frank lost one key each, grace none
        assert [await p.add_prekeys([]) for p in peers] == [4, 4, 5]
        for p in peers:
            await p.close()

    run(go())


def test_prekey_claims_against_one_target_are_capped(make_server: ServerFactory) -> None:
    """Many fresh ids claiming one agent's bundle get at most the per-target cap of its one-time
    prekeys per minute (default 30), the rest get the bundle alone; its stock keeps the rest."""
    cap = 30
    srv = make_server()
    bob_kp = new_keypair("bob")

    async def go() -> None:
        b = client(srv)
        await b.register(bob_kp, Collector())
        await b.add_prekeys(bob_kp.generate_one_time_prekeys(cap + 10))
        got = []
        for i in range(cap + 3):
            c = client(srv)
            await c.register(new_keypair(f"drain{i}"), Collector())
            bundle = await c.claim_bundle("bob")
            assert bundle is not None and crypto().verify_bundle(bundle) == "bob"
            got.append("one_time_prekey" in bundle)
            await c.close()
        assert got == [True] * cap + [False] * 3
        assert await b.add_prekeys([]) == 10
        await b.close()

    run(go())
    assert HubLimits().max_prekey_claims_per_target_per_minute == cap


# --------------------------------------------------------------------------------------------
# Unauthenticated connections cannot starve the hub


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(hard, need)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        pytest.skip(f"needs {need} open files, RLIMIT_NOFILE allows {soft} (hard {hard})")


def test_lookup_flood_does_not_starve_agents(make_server: ServerFactory) -> None:
    """Two thousand lookup connections from one address, each pipelining hundreds of
    LIST_AGENTS and never reading, while two agents ping-pong: their round trip stays within
    5x its quiet value (p50), they are never disconnected, and once the flood is gone the hub
    holds only the agents' connections."""
    flood_conns = 2000
    # the flooder's sockets and, with the hub in this process, as many accepted ones here
    _raise_fd_limit(2 * flood_conns + 256)
    srv = make_server()
    alice_kp, bob_kp = new_keypair("alice"), new_keypair("bob")
    to_bob, to_alice = session(alice_kp, bob_kp), session(bob_kp, alice_kp)

    async def go() -> None:
        replies: asyncio.Queue[None] = asyncio.Queue()
        a, b = client(srv), client(srv)

        async def echo(batch: list[tuple[int, bytes]]) -> None:
            for _ in batch:
                await b.send("alice", seal_bytes(to_alice, {"pong": 1}))

        async def on_reply(batch: list[tuple[int, bytes]]) -> None:
            for _ in batch:
                replies.put_nowait(None)

        await a.register(alice_kp, on_reply)
        await b.register(bob_kp, echo)

        async def round_trip() -> float:
            t0 = time.perf_counter()
            await a.send("bob", seal_bytes(to_bob, {"ping": 1}))
            await asyncio.wait_for(replies.get(), 10.0)
            return time.perf_counter() - t0

        for _ in range(50):  # warm up
            await round_trip()
        quiet = sorted([await round_trip() for _ in range(300)])
        flood = run_peer(
            "lookup-flood", "--port", str(srv.port), "--count", str(flood_conns),
            "--requests", "500", "--seconds", "4",
        )  # fmt: skip
        loaded: list[float] = []
        while flood.poll() is None:
            loaded.append(await round_trip())
        result = await asyncio.to_thread(peer_result, flood, 60.0)
        assert result["opened"] + result["failed"] == flood_conns
        loaded.sort()
        q50, l50 = quiet[len(quiet) // 2], loaded[len(loaded) // 2]
        assert len(loaded) >= 100, f"only {len(loaded)} round trips during the flood"
        assert l50 <= 5 * q50, f"p50 {l50 * 1e3:.2f} ms under the flood, {q50 * 1e3:.2f} quiet"
        assert a.reconnects == 0 and b.reconnects == 0
        assert a.connected and b.connected
        await round_trip()
        for c in (a, b):
            await c.close()

    run(go())
    # every flood connection is gone from the hub's books
    deadline = time.monotonic() + 15
    while srv.connection_stats()["total"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert srv.connection_stats() == {
        "total": 0, "handshaking": 0, "lookup": 0, "agents": 0, "unauthenticated_addresses": 0,
    }  # fmt: skip


def test_unauthenticated_connections_are_capped_per_kind_and_address(
    make_server: ServerFactory,
) -> None:
    """Lookup connections beyond ``max_lookup_connections``, and handshaking plus lookup ones
    from one address beyond ``max_unauthenticated_per_address``, get ERROR
    TOO_MANY_CONNECTIONS naming the cap; a registered agent no longer counts."""
    srv = make_server(max_lookup_connections=2, max_unauthenticated_per_address=3)

    async def refusal() -> str:
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        writer.write(encode_hello() + encode_frame(FrameType.LOOKUP))
        frames = await read_frames(reader, timeout=10)
        writer.close()
        assert frames and frames[-1][0] == FrameType.ERROR, frames
        code, message = decode_error(frames[-1][1])
        assert code == ErrorCode.TOO_MANY_CONNECTIONS
        return message

    async def go() -> None:
        looks = [client(srv), client(srv)]
        for look in looks:
            await look.connect_lookup()
        assert "lookup connections" in await refusal()
        _r, silent = await asyncio.open_connection(HOST, srv.port)  # still in its handshake
        await asyncio.sleep(0.1)
        assert "from this address" in await refusal()
        assert srv.connection_stats()["handshaking"] == 1
        silent.close()
        await looks[0].close()
        agent = client(srv)
        await agent.register(new_keypair("alice"), Collector())
        assert srv.connection_stats()["agents"] == 1
        for c in (agent, looks[1]):
            await c.close()

    run(go())


def test_list_agents_comes_in_bounded_pages(make_server: ServerFactory) -> None:
    """LIST_AGENTS answers at most ``max_list_agents`` ids and says where the next page
    starts; the client pages through all of them."""
    srv = make_server(max_list_agents=3)
    names = [f"agent{i}" for i in range(8)]

    async def go() -> None:
        for name in names:
            c = client(srv)
            await c.register(new_keypair(name), Collector())
            await c.close()
        look = client(srv)
        assert await look.list_agents() == names
        first = await look._request(Op.LIST_AGENTS, "")
        assert first == {"agents": names[:3], "next": names[2]}
        last = await look._request(Op.LIST_AGENTS, names[5])
        assert last == {"agents": names[6:], "next": None}
        assert await look._request(Op.LIST_AGENTS, "zzz") == {"agents": [], "next": None}
        await look.close()

    run(go())
