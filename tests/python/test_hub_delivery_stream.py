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
