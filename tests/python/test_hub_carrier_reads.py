"""What a shared connection (agentmesh.hub_client.channels.Carrier) makes of its reads: the
deliveries it decodes straight from the bytes read reach each channel in order and whole, and
its SEND_ACKs as the highest of each read, however the stream is cut into reads and whatever
other frames come between them; a malformed or oversized frame still closes the connection;
acknowledgements leave as the wrapped DELIVERY_ACK."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from agentmesh.hub_channels import wrap, wrap_deliver
from agentmesh.hub_client.channels import PARTIAL_KEPT, Carrier, channel_acks
from agentmesh.hub_client.connection import FrameHandlers
from agentmesh.hub_protocol import FrameDecoder, FrameType, encode_acks, encode_frame

Event = tuple[str, Any]


def _handlers(events: list[Event] | None = None) -> FrameHandlers:
    def record(kind: str) -> Callable[..., None]:
        def handle(*args: Any) -> None:
            assert events is not None, f"unexpected {kind} outside any channel"
            events.append((kind, args if kind != "deliver" else list(args[1])))

        return handle

    return FrameHandlers(
        deliver=record("deliver"),
        send_ack=record("send_ack"),
        send_error=record("send_error"),
        send_group_error=record("send_group_error"),
        response=record("response"),
        writable=lambda: None,
    )


async def _carrier(channels: int) -> tuple[Carrier, list[list[Event]], socket.socket]:
    """A carrier on a real socket pair (its writes reach the returned socket), with
    ``channels`` links recording what each is handed."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    carrier = Carrier(_handlers(), "127.0.0.1:1", loop)
    await loop.create_connection(lambda: carrier, sock=ours)
    carrier.room = channels
    events: list[list[Event]] = [[] for _ in range(channels + 1)]
    for channel in range(1, channels + 1):
        assert carrier.open_link(_handlers(events[channel])).channel == channel
    theirs.setblocking(False)
    return carrier, events, theirs


def _send_ack(seq: int) -> bytes:
    return encode_frame(FrameType.SEND_ACK, struct.pack(">Q", seq))


def _stream() -> tuple[bytes, list[list[Event]]]:
    """Deliveries of three channels interleaved, with a SEND_ACK inside a channel and PINGs on
    the connection itself between them; and what each channel must be handed, in order."""
    rng = random.Random(7)
    frames: list[bytes] = []
    expected: list[list[Event]] = [[] for _ in range(4)]
    ids = [0, 0, 0, 0]
    for n in range(60):
        channel = rng.randint(1, 3)
        if n % 17 == 5:
            frames.append(wrap(channel, _send_ack(n)))
            expected[channel].append(("send_ack", (n,)))
            continue
        if n % 23 == 11:
            frames.append(encode_frame(FrameType.PING, b"p%d" % n))
            continue
        ids[channel] += 1
        envelope = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        frames.append(wrap_deliver(channel, ids[channel], envelope))
        expected[channel].append(("deliver", (ids[channel], envelope)))
    return b"".join(frames), expected


def _flatten(events: list[Event]) -> list[Event]:
    """One ("deliver", (id, envelope)) per delivery, whatever reads they came in."""
    out: list[Event] = []
    for kind, args in events:
        if kind == "deliver":
            out.extend(("deliver", tuple(d)) for d in args)
        else:
            out.append((kind, args))
    return out


@pytest.mark.parametrize("cuts", ["whole", "every byte", "random"])
def test_deliveries_reach_each_channel_in_order_however_the_reads_are_cut(cuts: str) -> None:
    data, expected = _stream()
    if cuts == "whole":
        reads = [data]
    elif cuts == "every byte":
        reads = [data[i : i + 1] for i in range(len(data))]
    else:
        rng = random.Random(3)
        bounds = sorted(rng.sample(range(1, len(data)), 40))
        reads = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]

    async def go() -> tuple[list[list[Event]], bytes]:
        carrier, events, theirs = await _carrier(3)
        for read in reads:
            carrier.data_received(read)
        await asyncio.sleep(0.05)
        pongs = theirs.recv(1 << 16)
        carrier.close()
        theirs.close()
        return events, pongs

    events, pongs = asyncio.run(go())
    for channel in (1, 2, 3):
        got, want = _flatten(events[channel]), expected[channel]
        assert [e for e in got if e[0] == "deliver"] == [e for e in want if e[0] == "deliver"]
        # a read's SEND_ACKs of one channel are handed over as the highest (each covers every
        # send up to its own), after that read's deliveries
        acked = [args[0] for kind, args in got if kind == "send_ack"]
        sent = [args[0] for kind, args in want if kind == "send_ack"]
        assert set(acked) <= set(sent) and acked == sorted(acked)
        assert acked[-1:] == sent[-1:]
    answered = [body for ftype, body in FrameDecoder().feed(pongs) if ftype == FrameType.PONG]
    assert answered == [b"p11", b"p34", b"p57"]


def test_a_whole_read_of_deliveries_reaches_each_channel_in_one_call() -> None:
    async def go() -> list[list[Event]]:
        carrier, events, theirs = await _carrier(2)
        carrier.data_received(
            wrap_deliver(1, 1, b"a") + wrap_deliver(2, 1, b"b") + wrap_deliver(1, 2, b"c")
        )
        carrier.close()
        theirs.close()
        return events

    events = asyncio.run(go())
    assert events[1] == [("deliver", [(1, b"a"), (2, b"c")])]
    assert events[2] == [("deliver", [(1, b"b")])]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(struct.pack(">IBIBQ", 1 << 30, FrameType.CHANNEL, 1, FrameType.DELIVER, 9),
                     id="over the size limit"),
        pytest.param(wrap_deliver(0, 1, b"x"), id="channel 0"),
        pytest.param(struct.pack(">IBIB", 6, FrameType.CHANNEL, 1, 0x7F), id="unknown inner type"),
    ],
)
def test_a_malformed_frame_after_deliveries_closes_the_connection(bad: bytes) -> None:
    async def go() -> tuple[list[list[Event]], bool]:
        carrier, events, theirs = await _carrier(1)
        carrier.data_received(wrap_deliver(1, 1, b"a") + bad + wrap_deliver(1, 2, b"b"))
        await asyncio.sleep(0.05)
        closed = carrier.is_closed
        theirs.close()
        return events, closed

    events, closed = asyncio.run(go())
    assert closed
    assert _flatten(events[1]) == [("deliver", (1, b"a"))]


def test_a_channels_acknowledgements_leave_as_the_wrapped_delivery_ack() -> None:
    for channel in (1, 77, 2**32 - 1):
        for ids in ([1], [2**64 - 1], [5, 6, 9], list(range(1, 300))):
            assert channel_acks(channel, ids) == wrap(channel, encode_acks(ids))


def test_a_short_frame_ending_a_read_is_handled_without_waiting_for_the_next() -> None:
    """A PING (shorter than any delivery) at the end of a read is answered at once: the hub
    pings a quiet connection, and no further read may come before it gives up on it."""

    async def go() -> bytes:
        carrier, _events, theirs = await _carrier(1)
        carrier.data_received(wrap_deliver(1, 1, b"a") + encode_frame(FrameType.PING, b"q"))
        await asyncio.sleep(0.05)
        pongs = theirs.recv(1 << 16)
        carrier.close()
        theirs.close()
        return pongs

    assert FrameDecoder().feed(asyncio.run(go())) == [(FrameType.PONG, b"q")]


def test_a_reads_send_acks_reach_each_channel_once_as_the_highest() -> None:
    async def go() -> list[list[Event]]:
        carrier, events, theirs = await _carrier(2)
        carrier.data_received(
            wrap(1, _send_ack(4)) + wrap(2, _send_ack(9)) + wrap(1, _send_ack(6))
            + wrap(1, _send_ack(5))  # (a hub going back: ignored, as the window would)
        )
        carrier.data_received(wrap(2, _send_ack(10)))
        carrier.close()
        theirs.close()
        return events

    events = asyncio.run(go())
    assert events[1] == [("send_ack", (6,))]
    assert events[2] == [("send_ack", (9,)), ("send_ack", (10,))]


def test_a_large_delivery_read_in_small_pieces_arrives_whole_without_being_kept_in_pieces() -> None:
    """A delivery far larger than a read arrives whole, and its start waits in the frame
    decoder's growing buffer, not in pieces the carrier joins at every read (which would copy
    what came so far each time)."""
    big = bytes(range(256)) * 4096  # 1 MiB
    data = wrap_deliver(1, 1, big) + wrap_deliver(1, 2, b"after")

    async def go() -> tuple[list[list[Event]], int]:
        carrier, events, theirs = await _carrier(1)
        carrier.decoder.max_frame_size = 2 * len(big)  # (as a WELCOME would set it)
        kept = 0
        for at in range(0, len(data), 4096):
            carrier.data_received(data[at : at + 4096])
            kept = max(kept, len(carrier._partial))
        carrier.close()
        theirs.close()
        return events, kept

    events, kept = asyncio.run(go())
    assert _flatten(events[1]) == [("deliver", (1, big)), ("deliver", (2, b"after"))]
    assert kept <= PARTIAL_KEPT
