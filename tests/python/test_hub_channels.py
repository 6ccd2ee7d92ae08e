"""Agents sharing one hub connection as channels (agentmesh.hub_channels): the hub's cap counts
the connection once, one channel's error leaves the others' traffic alone, each agent gets its
own redelivery after the connection is lost, each registration is checked against its own
challenge, and a hub that offers no channels gets a connection per agent."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ServerFactory
from hubutil import HOST, Collector, new_keypair, read_frames, seal_bytes, session
from test_hub_server import run

from agentmesh import Agent
from agentmesh.hub_channels import by_channel, decode_channel, wrap, wrap_deliver
from agentmesh.hub_client import HubClient
from agentmesh.hub_client.channels import CarrierPool
from agentmesh.hub_protocol import (
    CLIENT_NONCE_SIZE,
    SESSION_ID_SIZE,
    ErrorCode,
    FrameDecoder,
    FrameType,
    ProtocolError,
    decode_error,
    decode_welcome,
    encode_deliver,
    encode_frame,
    encode_hello,
    encode_register,
    encode_send,
)
from agentmesh.hub_server import NetworkHubServer
from agentmesh.network_hub import NetworkHub


def shared(srv: NetworkHubServer) -> tuple[CarrierPool, Callable[[], HubClient]]:
    pool = CarrierPool(HOST, srv.port, None, 5.0, first_alone=False)
    return pool, lambda: HubClient(HOST, srv.port, max_backoff=0.2, carriers=pool)


async def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_agents_of_a_process_share_one_connection_counted_once(make_server: ServerFactory):
    """Six agents on a hub that takes two connections: all register on one shared connection
    and exchange messages; the hub counts one agent connection."""
    srv = make_server(max_connections=2)
    keys = [new_keypair(f"a{i}") for i in range(6)]

    async def go() -> None:
        _pool, make = shared(srv)
        clients = [make() for _ in keys]
        inboxes = [Collector(session(keys[i], keys[(i - 1) % 6])) for i in range(6)]
        for c, kp, inbox in zip(clients, keys, inboxes, strict=True):
            await c.register(kp, inbox)
        assert srv.connection_stats()["total"] == 1
        assert srv.connection_stats()["agents"] == 1
        for i, c in enumerate(clients):
            sess = session(keys[i], keys[(i + 1) % 6])
            for n in range(20):
                await c.send(f"a{(i + 1) % 6}", seal_bytes(sess, {"n": n, "from": i}))
        for c in clients:
            await c.flush(30)
        for i, inbox in enumerate(inboxes):
            await inbox.wait_for(20)
            assert [p["n"] for p in inbox.payloads] == list(range(20))
            assert {p["from"] for p in inbox.payloads} == {(i - 1) % 6}
        for c in clients:
            await c.close()

    run(go())


def test_one_agents_bad_frame_closes_its_channel_alone(make_server: ServerFactory):
    """A malformed frame on alice's channel closes that channel (ERROR inside it): bob, on
    the same connection, keeps sending and receiving without a reconnect, and alice comes back
    on a new channel of the same connection."""
    srv = make_server()
    alice_kp, bob_kp, carol_kp = new_keypair("alice"), new_keypair("bob"), new_keypair("carol")

    async def go() -> None:
        _pool, make = shared(srv)
        alice, bob = make(), make()
        carol = HubClient(HOST, srv.port, max_backoff=0.2)  # a connection of its own
        at_bob, at_carol = Collector(), Collector()
        await alice.register(alice_kp, Collector())
        await bob.register(bob_kp, at_bob)
        await carol.register(carol_kp, at_carol)
        to_carol, to_bob = session(bob_kp, carol_kp), session(carol_kp, bob_kp)
        for n in range(10):
            await bob.send("carol", seal_bytes(to_carol, {"n": n}))
        alice._conn.write(encode_frame(FrameType.SEND, b"\x00"))  # type: ignore[union-attr]
        for n in range(10, 20):
            await bob.send("carol", seal_bytes(to_carol, {"n": n}))
            await carol.send("bob", seal_bytes(to_bob, {"n": n}))
        await bob.flush(30)
        await carol.flush(30)
        await at_carol.wait_for(20)
        await at_bob.wait_for(10)
        await wait_until(lambda: alice.reconnects == 1 and alice.connected)
        assert bob.reconnects == 0
        assert srv.connection_stats()["total"] == 2  # the shared one and carol's
        await alice.send("carol", seal_bytes(session(alice_kp, carol_kp), {"n": "alice"}))
        await alice.flush(30)
        await at_carol.wait_for(21)
        for c in (alice, bob, carol):
            await c.close()

    run(go())


class Unacknowledging(Collector):
    """Records deliveries and makes them durable only when told (until then the hub keeps
    them)."""

    def __init__(self) -> None:
        super().__init__()
        self.durable: list[asyncio.Future[None]] = []

    async def __call__(self, batch: list[tuple[int, bytes]]) -> Any:  # type: ignore[override]
        await super().__call__(batch)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.durable.append(fut)
        return fut

    def fail_all(self) -> None:
        for fut in self.durable:
            if not fut.done():
                fut.set_exception(RuntimeError("never made durable"))


def test_each_agent_gets_its_own_redelivery_after_the_shared_connection_is_lost(
    make_server: ServerFactory,
):
    """Two receivers on one shared connection leave their deliveries unacknowledged (their
    work never becomes durable); the connection is lost; each registers again on the next
    shared connection and is sent again exactly its own envelopes, in order."""
    srv = make_server()
    sender_kp = new_keypair("sender")
    kps = [new_keypair("r0"), new_keypair("r1")]

    async def go() -> None:
        pool, make = shared(srv)
        sender = HubClient(HOST, srv.port)
        await sender.register(sender_kp, Collector())
        receivers = [make(), make()]
        inboxes = [Unacknowledging(), Unacknowledging()]
        for c, kp, inbox in zip(receivers, kps, inboxes, strict=True):
            await c.register(kp, inbox)
        sent: list[list[bytes]] = [[], []]
        for i, kp in enumerate(kps):
            sess = session(sender_kp, kp)
            for n in range(5):
                env = seal_bytes(sess, {"n": n})
                sent[i].append(env)
                await sender.send(f"r{i}", env)
        await sender.flush(30)
        for inbox in inboxes:
            await inbox.wait_for(5)
        first = pool.carrier
        assert first is not None
        first.abort()  # the shared connection is lost
        for inbox in inboxes:
            inbox.fail_all()
        for i, inbox in enumerate(inboxes):
            await inbox.wait_for(10)
            assert inbox.raw == sent[i] + sent[i]
            assert inbox.ids[5:] == inbox.ids[:5]
        # (a redelivery may reach its inbox before the reconnect is counted)
        await wait_until(lambda: [c.reconnects for c in receivers] == [1, 1])
        assert pool.carrier is not None and pool.carrier is not first
        for c in (*receivers, sender):
            await c.close()

    run(go())


def test_a_hub_without_channels_gets_a_connection_per_agent(make_server: ServerFactory):
    """A hub that offers no channels (as an older one): every agent connects alone."""
    srv = make_server(max_channels_per_connection=0)
    keys = [new_keypair(f"b{i}") for i in range(3)]

    async def go() -> None:
        pool, make = shared(srv)
        clients = [make() for _ in keys]
        inbox = Collector()
        for c, kp in zip(clients, keys, strict=True):
            await c.register(kp, inbox if kp is keys[0] else Collector())
        assert pool.offered is False
        assert srv.connection_stats()["agents"] == 3
        await clients[1].send("b0", seal_bytes(session(keys[1], keys[0]), {"n": 1}))
        await clients[1].flush(30)
        await inbox.wait_for(1)
        for c in clients:
            await c.close()

    run(go())


def test_a_connection_full_of_channels_is_joined_by_another(make_server: ServerFactory):
    """A connection carries at most ``max_channels_per_connection`` agents: the next agent's
    channel goes on a second shared connection."""
    srv = make_server(max_channels_per_connection=2)
    keys = [new_keypair(f"c{i}") for i in range(3)]

    async def go() -> None:
        _pool, make = shared(srv)
        clients = [make() for _ in keys]
        for c, kp in zip(clients, keys, strict=True):
            await c.register(kp, Collector())
        assert srv.connection_stats()["agents"] == 2
        for c in clients:
            await c.close()
        await wait_until(lambda: srv.connection_stats()["total"] == 0)

    run(go())


class RawChannels:
    """A shared connection spoken frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(1 << 24)
        self.pending: list[tuple[int, bytes]] = []

    async def frame(self) -> tuple[int, bytes]:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            assert data, "the hub closed the connection"
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    async def channel_frame(self) -> tuple[int, int, bytes]:
        ftype, body = await self.frame()
        assert ftype == FrameType.CHANNEL, ftype
        return decode_channel(body)


def register_frame(kp: Any, welcome_body: bytes) -> bytes:
    welcome = decode_welcome(welcome_body)
    bundle = kp.public_bundle()
    nonce = os.urandom(CLIENT_NONCE_SIZE)
    sig = kp.sign_registration(bundle, welcome.hub_id, welcome.challenge, nonce, None)
    return encode_register(bytes(sig), os.urandom(SESSION_ID_SIZE), nonce, bundle)


def test_each_channel_registers_with_its_own_challenge(make_server: ServerFactory):
    """Every channel gets a fresh challenge: a proof made for channel 1's challenge is refused
    on channel 2 (BAD_REGISTRATION, that channel alone), and is good on channel 1."""
    srv = make_server()
    kp = new_keypair("dave")

    async def go() -> None:
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        raw = RawChannels(reader, writer)
        writer.write(encode_hello() + encode_frame(FrameType.LOOKUP))
        assert (await raw.frame())[0] == FrameType.WELCOME
        ftype, body = await raw.frame()
        assert ftype == FrameType.READY and b'"channels"' in body
        writer.write(wrap(1, encode_hello()) + wrap(2, encode_hello()))
        welcomes = {}
        for _ in range(2):
            ch, inner, body = await raw.channel_frame()
            assert inner == FrameType.WELCOME
            welcomes[ch] = body
        assert decode_welcome(welcomes[1]).challenge != decode_welcome(welcomes[2]).challenge
        proof = register_frame(kp, welcomes[1])
        writer.write(wrap(2, proof))
        ch, inner, body = await raw.channel_frame()
        assert (ch, inner) == (2, FrameType.ERROR)
        code, message = decode_error(body)
        assert code == ErrorCode.BAD_REGISTRATION and "does not verify" in message
        writer.write(wrap(1, proof))
        ch, inner, body = await raw.channel_frame()
        assert (ch, inner) == (1, FrameType.READY), decode_error(body)
        assert b'"dave"' in body
        writer.close()

    run(go())


def test_a_frame_on_a_channel_never_opened_closes_the_connection(make_server: ServerFactory):
    """What cannot belong to any agent is the connection's error: a SEND on a channel that
    never said HELLO gets ERROR PROTOCOL, and the connection closes."""
    srv = make_server()

    async def go() -> None:
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        writer.write(encode_hello() + encode_frame(FrameType.LOOKUP))
        writer.write(wrap(7, encode_send(1, b"someone", b"x" * 40)))
        frames = await read_frames(reader, timeout=10)
        assert frames[-1][0] == FrameType.ERROR
        code, message = decode_error(frames[-1][1])
        assert code == ErrorCode.PROTOCOL and "channel 7" in message
        writer.close()

    run(go())


def test_a_network_hubs_first_agent_connects_alone_and_the_others_share(
    make_server: ServerFactory,
):
    """Through a NetworkHub, the first agent holds a connection of its own (one agent per
    process pays nothing for channels) and every further agent shares one: four agents, two
    connections, messages both ways between the lone agent and the sharing ones."""
    srv = make_server()
    hub = NetworkHub(HOST, srv.port)
    got: dict[str, list[Any]] = {}
    agents = [Agent(f"n{i}", hub=hub) for i in range(4)]
    try:
        for agent in agents:
            inbox = got.setdefault(agent.agent_id, [])
            agent.on_message(lambda msg, inbox=inbox: inbox.append(msg.payload))
        for i, agent in enumerate(agents):
            agent.send_payload(f"n{(i + 1) % 4}", {"from": i})
        for agent in agents:
            agent.flush(30)
        deadline = time.monotonic() + 30
        while any(len(v) < 1 for v in got.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == {
            f"n{(i + 1) % 4}": [{"from": i}] for i in range(4)
        }
        assert srv.connection_stats()["agents"] == 2
    finally:
        hub.close()


def test_the_hub_command_sets_the_channels_a_connection_may_carry(tmp_path):
    """``agentmesh-hub --max-channels 0``: the hub offers no channels (each agent connects on
    its own); a negative number is a usage error naming the flag."""
    from agentmesh.hub.cli import main
    from agentmesh.testing import HubProcess

    assert main(["--max-channels", "-1"]) == 2
    keys = [new_keypair(f"c{i}") for i in range(2)]
    with HubProcess(tmp_path / "hub.sqlite3", extra_args=["--max-channels", "0"]) as hub:

        async def go() -> None:
            pool = CarrierPool(HOST, hub.port, None, 5.0, first_alone=False)
            clients = [HubClient(HOST, hub.port, carriers=pool) for _ in keys]
            for c, kp in zip(clients, keys, strict=True):
                await c.register(kp, Collector())
            assert pool.offered is False
            for c in clients:
                await c.close()

        run(go())


def test_a_batch_of_interleaved_channels_is_grouped_per_channel_in_order():
    """Agents taking turns interleave their frames; each channel's frames of one read are handed
    over together, in their order, and the connection's own frames keep their place."""
    frames = FrameDecoder().feed(
        b"".join(
            [
                wrap(1, encode_frame(FrameType.SEND, b"1a")),
                wrap(2, encode_frame(FrameType.SEND, b"2a")),
                wrap(1, encode_frame(FrameType.SEND, b"1b")),
                encode_frame(FrameType.PING, b"p"),
                wrap(2, encode_frame(FrameType.SEND, b"2b")),
                wrap(3, encode_frame(FrameType.HELLO, b"3")),
                wrap(2, encode_frame(FrameType.SEND, b"2c")),
            ]
        )
    )
    send, hello, ping = int(FrameType.SEND), int(FrameType.HELLO), int(FrameType.PING)
    assert by_channel(frames) == [
        (1, [(send, b"1a"), (send, b"1b")]),
        (2, [(send, b"2a")]),
        (0, [(ping, b"p")]),
        (2, [(send, b"2b"), (send, b"2c")]),
        (3, [(hello, b"3")]),
    ]
    with pytest.raises(ProtocolError, match="channel 0"):
        by_channel([(FrameType.CHANNEL, b"\0\0\0\0" + bytes([FrameType.SEND]))])


def test_a_delivery_wrapped_in_one_piece_is_the_wrapped_deliver_frame():
    for channel, did, envelope in [(1, 1, b""), (7, 2**40 + 3, b"envelope"), (2**32 - 1, 5, b"x")]:
        assert wrap_deliver(channel, did, envelope) == wrap(channel, encode_deliver(did, envelope))
