"""The delivery stream of a HubClient (agentmesh.hub_client.delivery) takes what one read
brought as one list: batches still hold at most 256 deliveries in order (a read's list is split
across batches), what was handled already is acknowledged without being handed over, and every
delivery is acknowledged once, in order."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agentmesh.hub_client.connection import Connection, FrameHandlers
from agentmesh.hub_client.delivery import MAX_BATCH, DeliveryStream
from agentmesh.hub_protocol import FrameDecoder, encode_deliver


def _not_expected(*args: Any) -> None:
    raise AssertionError(f"unexpected frame: {args!r}")


def _connection(stream: DeliveryStream, hub_id: bytes, loop: asyncio.AbstractEventLoop) -> Any:
    handlers = FrameHandlers(
        deliver=stream.on_deliver,
        send_ack=_not_expected,
        send_error=_not_expected,
        send_group_error=_not_expected,
        response=_not_expected,
        writable=lambda: None,
    )
    conn = Connection(handlers, "127.0.0.1:1", loop)
    conn.hub_id = hub_id
    conn.scheduled = True  # (no transport: the acknowledgements stay in conn.acks)
    return conn


def test_one_read_of_300_deliveries_goes_in_batches_of_256_skipping_what_was_handled() -> None:
    hub_id = b"h" * 16
    batches: list[list[tuple[int, bytes]]] = []

    async def on_batch(batch: list[tuple[int, bytes]]) -> None:
        batches.append(list(batch))

    async def go() -> list[int]:
        loop = asyncio.get_running_loop()
        stream = DeliveryStream()
        stream.bind()
        stream.set_handler(on_batch, {hub_id: 3})  # 1 to 3 were handled by an earlier client
        conn = _connection(stream, hub_id, loop)
        read = b"".join(encode_deliver(i, b"env%d" % i) for i in range(1, 304))
        conn.handle_frames(FrameDecoder().feed(read))
        consumer = loop.create_task(stream.consume())
        deadline = time.monotonic() + 10
        while sum(len(b) for b in batches) < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        consumer.cancel()
        return list(conn.acks)

    acks = asyncio.run(go())
    assert [len(b) for b in batches] == [MAX_BATCH, 300 - MAX_BATCH]
    handed = [did for batch in batches for did, _env in batch]
    assert handed == list(range(4, 304))
    assert all(env == b"env%d" % did for batch in batches for did, env in batch)
    assert acks == list(range(1, 304))  # the skipped ones at once, then each batch's


async def _batch_in_flight(
    hub_id: bytes, read: bytes
) -> tuple[DeliveryStream, Any, Any, list[asyncio.Future[None]], list[list[int]]]:
    """A stream whose consumer took the deliveries of ``read`` (on a first connection) as one
    batch that is not durable yet: (stream, consumer task, that connection, the batches'
    durability futures, the batches' delivery ids)."""
    batches: list[list[int]] = []
    durable: list[asyncio.Future[None]] = []

    async def on_batch(batch: list[tuple[int, bytes]]) -> asyncio.Future[None]:
        batches.append([did for did, _env in batch])
        durable.append(asyncio.get_running_loop().create_future())
        return durable[-1]

    loop = asyncio.get_running_loop()
    stream = DeliveryStream()
    stream.bind()
    stream.set_handler(on_batch, {})
    consumer = loop.create_task(stream.consume())
    first = _connection(stream, hub_id, loop)
    first.handle_frames(FrameDecoder().feed(read))
    while not durable:
        await asyncio.sleep(0.01)
    return stream, consumer, first, durable, batches


def _redelivered_while_in_flight(outcome: str) -> tuple[list[int], list[int], list[list[int]]]:
    """Deliveries 1 and 2 handed over; before their batch is durable the connection is
    replaced and the hub delivers both again; then the batch becomes durable, or fails to.
    (acks on the first connection, acks on the second, batches handed over)"""
    hub_id = b"h" * 16
    read = encode_deliver(1, b"a") + encode_deliver(2, b"b")

    async def go() -> tuple[list[int], list[int], list[list[int]]]:
        stream, consumer, first, durable, batches = await _batch_in_flight(hub_id, read)
        second = _connection(stream, hub_id, asyncio.get_running_loop())
        second.handle_frames(FrameDecoder().feed(read))  # a reconnect: the hub delivers both again
        await asyncio.sleep(0.1)
        assert list(second.acks) == [], "a redelivery acknowledged before the batch is durable"
        if outcome == "durable":
            durable[0].set_result(None)
        else:
            durable[0].set_exception(OSError("No space left on device"))
        await asyncio.sleep(0.05)
        consumer.cancel()
        return list(first.acks), list(second.acks), batches

    return asyncio.run(go())


def test_a_redelivery_is_acknowledged_only_once_what_it_repeats_is_durable() -> None:
    first, second, batches = _redelivered_while_in_flight("durable")
    assert batches == [[1, 2]]  # handed over once
    assert first == [1, 2] and second == [1, 2]


def test_a_redelivery_of_a_batch_that_never_became_durable_stays_with_the_hub() -> None:
    # (a crash, or a state write that failed: acknowledged, the hub would have deleted them)
    first, second, batches = _redelivered_while_in_flight("failed")
    assert batches == [[1, 2]]
    assert first == [] and second == []


def test_a_redelivery_read_before_a_failed_batch_lowered_its_position_is_not_acknowledged() -> None:
    # the batch's write failed, and the stream looks at a redelivery before the failure's
    # callbacks have run (the position still covers it): it must stay with the hub
    hub_id = b"h" * 16

    async def go() -> list[int]:
        stream, consumer, first, durable, _batches = await _batch_in_flight(
            hub_id, encode_deliver(1, b"a")
        )
        second = _connection(stream, hub_id, asyncio.get_running_loop())
        durable[0].set_exception(OSError("No space left on device"))
        stream._ack_redelivery(hub_id, second, 1)  # (before the loop runs the callbacks)
        await asyncio.sleep(0.05)
        consumer.cancel()
        return list(first.acks) + list(second.acks)

    assert asyncio.run(go()) == []


def test_reads_waiting_for_the_next_batch_are_kept_as_one_entry_and_come_in_order() -> None:
    """Reads that arrive while a batch is being handled (one or two deliveries each, as in a
    process hosting many agents) wait as one inbox entry per connection, not one per read, and
    come in the next batch in order, each acknowledged once; a read of another connection
    starts an entry of its own."""
    hub_id = b"h" * 16
    batches: list[list[int]] = []
    gate: dict[str, Any] = {}

    async def on_batch(batch: list[tuple[int, bytes]]) -> None:
        batches.append([did for did, _env in batch])
        if len(batches) == 1:
            await gate["open"]

    async def go() -> tuple[list[int], list[int], int]:
        loop = asyncio.get_running_loop()
        gate["open"] = loop.create_future()
        stream = DeliveryStream()
        stream.bind()
        stream.set_handler(on_batch, {})
        conn, other = _connection(stream, hub_id, loop), _connection(stream, hub_id, loop)
        consumer = loop.create_task(stream.consume())
        conn.handle_frames(FrameDecoder().feed(encode_deliver(1, b"e1")))
        while not batches:
            await asyncio.sleep(0.001)
        for did in range(2, 12):  # ten reads while the first batch is handled
            conn.handle_frames(FrameDecoder().feed(encode_deliver(did, b"e%d" % did)))
        entries = len(stream._inbox)
        other.handle_frames(FrameDecoder().feed(encode_deliver(12, b"e12")))
        gate["open"].set_result(None)
        deadline = time.monotonic() + 10
        while sum(len(b) for b in batches) < 12 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        consumer.cancel()
        return list(conn.acks), list(other.acks), entries

    acks, other_acks, entries = asyncio.run(go())
    assert entries == 1
    assert batches == [[1], list(range(2, 13))]
    assert acks == list(range(1, 12)) and other_acks == [12]
