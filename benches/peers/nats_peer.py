"""A peer process of the network section: plain NATS pub/sub with nats-py (127.0.0.1 only), the
broker ceiling next to the agentmesh hub. No encryption, no signature, no persistence: the
payload bytes ({"text": ...} as JSON, encoded once) go through as they are.

    python -m benches.peers.nats_peer sub  --port P --subject S --count N
    python -m benches.peers.nats_peer pub  --port P --subject S --count N --size B
    python -m benches.peers.nats_peer echo --port P --subject S --count N
    python -m benches.peers.nats_peer ping --port P --subject S --count N --size B

Same output conventions as ``hub_peer``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any


def _data(size: int) -> bytes:
    return json.dumps({"text": "a" * size}, separators=(",", ":")).encode()


async def _connect(ns: argparse.Namespace) -> Any:
    import nats

    return await nats.connect(
        f"nats://127.0.0.1:{ns.port}", connect_timeout=10, max_reconnect_attempts=0
    )


async def sub(ns: argparse.Namespace, echo: bool) -> dict[str, Any]:
    nc = await _connect(ns)
    done = asyncio.Event()
    times: list[float] = []

    async def on_msg(msg: Any) -> None:
        times.append(time.time())
        if echo:
            await msg.respond(msg.data)
        if len(times) >= ns.count:
            done.set()

    await nc.subscribe(
        ns.subject, cb=on_msg, pending_msgs_limit=1_000_000, pending_bytes_limit=2**31
    )
    await nc.flush()
    print("READY", flush=True)
    try:
        await asyncio.wait_for(done.wait(), ns.timeout)
    finally:
        await nc.drain()
    return {"count": len(times), "first": times[0], "last": times[-1], "errors": 0}


async def pub(ns: argparse.Namespace) -> dict[str, Any]:
    nc = await _connect(ns)
    data = _data(ns.size)
    t0 = time.time()
    for _ in range(ns.count):
        await nc.publish(ns.subject, data)
    t_sent = time.time()
    await nc.flush(timeout=ns.timeout)
    t_flushed = time.time()
    await nc.drain()
    return {"start": t0, "sent": t_sent, "flushed": t_flushed}


async def ping(ns: argparse.Namespace) -> dict[str, Any]:
    nc = await _connect(ns)
    data = _data(ns.size)
    rtts: list[float] = []
    for i in range(ns.count + ns.warmup):
        t0 = time.perf_counter()
        await nc.request(ns.subject, data, timeout=ns.timeout)
        if i >= ns.warmup:
            rtts.append(time.perf_counter() - t0)
    await nc.drain()
    return {"rtts": rtts}


def _run(coro: Any) -> Any:
    """On the event loop agentmesh's own network threads use (uvloop where installed), so that
    both sides of the comparison pay the same loop."""
    from agentmesh._eventloop import new_event_loop

    loop = new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.peers.nats_peer")
    p.add_argument("role", choices=["sub", "pub", "echo", "ping"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--timeout", type=float, default=120.0)
    ns = p.parse_args(argv)
    watchdog = threading.Timer(ns.timeout + 30, lambda: __import__("os")._exit(3))
    watchdog.daemon = True
    watchdog.start()
    if ns.role in ("sub", "echo"):
        out = _run(sub(ns, echo=ns.role == "echo"))
    elif ns.role == "pub":
        out = _run(pub(ns))
    else:
        out = _run(ping(ns))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
